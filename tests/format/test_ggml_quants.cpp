// The ggml block types: geometry, every code value decoded, exact round trips of values on each
// type's grid, and quantise -> dequantise error bands on seeded Gaussian data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "qtool/format/ggml.hpp"
#include "qtool/format/ggml_quants.hpp"

namespace qtool::ggml {
namespace {

std::vector<uint8_t> Quantized(Type type, const std::vector<float>& x) {
  std::vector<uint8_t> q(RowBytes(type, x.size()));
  Quantize(type, x.data(), q.data(), static_cast<int64_t>(x.size()));
  return q;
}

std::vector<float> Decoded(Type type, const std::vector<uint8_t>& q, size_t n) {
  std::vector<float> y(n);
  Dequantize(type, q.data(), y.data(), static_cast<int64_t>(n));
  return y;
}

std::vector<float> Gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

TEST(GgmlTypes, GeometryMatchesGgml) {
  // (id, block size, bytes per block) as ggml's type traits list them.
  struct Row {
    uint32_t id;
    int block;
    int bytes;
  };
  const Row rows[] = {{0, 1, 4},      {1, 1, 2},      {2, 32, 18},   {3, 32, 20},    {6, 32, 22},
                      {7, 32, 24},    {8, 32, 34},    {10, 256, 84}, {11, 256, 110}, {12, 256, 144},
                      {13, 256, 176}, {14, 256, 210}, {20, 32, 18},  {23, 256, 136}, {30, 1, 2},
                      {34, 256, 54},  {35, 256, 66},  {39, 32, 17}};
  EXPECT_EQ(std::size(rows), std::size(kTypes));
  for (const Row& r : rows) {
    const TypeTraits* t = FindType(r.id);
    ASSERT_NE(t, nullptr) << r.id;
    EXPECT_EQ(t->block_size, r.block) << t->name;
    EXPECT_EQ(t->type_size, r.bytes) << t->name;
    EXPECT_EQ(TypeFromName(t->name), t->type);
  }
  EXPECT_EQ(FindType(4), nullptr);  // Q4_2, removed from ggml
  EXPECT_EQ(TypeFromName("Q4_K"), Type::kQ4_K);
  EXPECT_EQ(TypeFromName("IQ4_XS"), Type::kIQ4_XS);
  EXPECT_FALSE(TypeFromName("q4_k_m").has_value());
  EXPECT_EQ(RowBytes(Type::kQ4_K, 256 * 9), 144u * 9);
  EXPECT_EQ(RowBytes(Type::kF16, 7), 14u);
}

// Every code of the 32-value types decodes to its value: a block holding each code (in every
// position across the 16 blocks) against the format's formula written out here.
TEST(GgmlCodes, LegacyAndNonLinearCodesDecode) {
  const float d = 0.375f;  // exact in fp16
  const uint16_t dh = F32ToF16(d);
  const uint16_t mh = F32ToF16(-1.5f);
  for (int rot = 0; rot < 32; ++rot) {
    auto code = [rot](int j, int bits) { return (j + rot) % (1 << bits); };
    BlockQ4_0 q40{};
    BlockQ4_1 q41{};
    BlockQ5_0 q50{};
    BlockQ5_1 q51{};
    BlockQ8_0 q80{};
    BlockIQ4_NL nl{};
    BlockMXFP4 mx{};
    q40.d = q41.d = q50.d = q51.d = q80.d = nl.d = dh;
    q41.m = q51.m = mh;
    mx.e = 125;  // 2^(125 - 127) = 0.25, E2M1 values halved
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const int lo4 = code(j, 4);
      const int hi4 = code(j + 16, 4);
      q40.qs[j] = q41.qs[j] = nl.qs[j] = mx.qs[j] = static_cast<uint8_t>(lo4 | (hi4 << 4));
      const int lo5 = code(j, 5);
      const int hi5 = code(j + 16, 5);
      q50.qs[j] = q51.qs[j] = static_cast<uint8_t>((lo5 & 15) | ((hi5 & 15) << 4));
      qh |= static_cast<uint32_t>(lo5 >> 4) << j | static_cast<uint32_t>(hi5 >> 4) << (j + 16);
    }
    std::memcpy(q50.qh, &qh, 4);
    std::memcpy(q51.qh, &qh, 4);
    for (int j = 0; j < 32; ++j) q80.qs[j] = static_cast<int8_t>(code(j, 8) - 128);
    float y[32];
    const float e2m1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
    DequantizeQ4_0(&q40, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (code(j, 4) - 8) * d);
    DequantizeQ4_1(&q41, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], code(j, 4) * d - 1.5f);
    DequantizeQ5_0(&q50, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (code(j, 5) - 16) * d);
    DequantizeQ5_1(&q51, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], code(j, 5) * d - 1.5f);
    DequantizeQ8_0(&q80, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (code(j, 8) - 128) * d);
    DequantizeIQ4_NL(&nl, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], kIq4nlValues[code(j, 4)] * d);
    DequantizeMXFP4(&mx, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], e2m1[code(j, 4)] * 0.25f);
  }
}

TEST(GgmlCodes, Mxfp4ScaleCoversEveryExponent) {
  BlockMXFP4 b{};
  b.qs[0] = 2;  // code 2 = E2M1 1.0
  for (int e = 0; e < 255; ++e) {
    b.e = static_cast<uint8_t>(e);
    float y[32];
    DequantizeMXFP4(&b, y, 32);
    EXPECT_EQ(y[0], std::ldexp(1.0f, e - 127)) << e;
  }
}

// Values exactly on a type's grid, holding every code, come back bit for bit.
void ExpectExactRoundTrip(Type type, const std::vector<float>& x) {
  const std::vector<float> y = Decoded(type, Quantized(type, x), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(y[i], x[i]) << Traits(type).name << " value " << i;
  }
}

TEST(GgmlRoundTrip, GridValuesComeBackExactly) {
  std::mt19937 rng(7);
  const int n = 4 * kQKK;
  // Each block (32) or sub-block (16) holds codes lo, hi (the extremes, which fix the scale) and
  // then a rotation through the range, shuffled; across blocks every code appears.
  auto grid = [&](int period, int lo, int hi, float step) {
    std::vector<float> x(n);
    std::vector<int> codes(period);
    const int range = hi - lo + 1;
    for (int i = 0; i < n; i += period) {
      for (int k = 0; k < period; ++k) codes[k] = lo + (k + i) % range;
      codes[0] = lo;
      codes[1] = hi;
      std::shuffle(codes.begin(), codes.end(), rng);
      for (int k = 0; k < period; ++k) x[i + k] = codes[k] * step;
    }
    return x;
  };
  ExpectExactRoundTrip(Type::kQ4_0, grid(32, -8, 7, 0.25f));
  ExpectExactRoundTrip(Type::kQ5_0, grid(32, -16, 15, 0.125f));
  ExpectExactRoundTrip(Type::kQ8_0, grid(32, -127, 127, 0.5f));
  ExpectExactRoundTrip(Type::kQ4_1, grid(32, 0, 15, 1.0f));
  ExpectExactRoundTrip(Type::kQ5_1, grid(32, 0, 31, 1.0f));
  ExpectExactRoundTrip(Type::kQ6_K, grid(16, -32, 31, 1.0f));
  ExpectExactRoundTrip(Type::kQ3_K, grid(16, -4, 3, 1.0f));
  ExpectExactRoundTrip(Type::kTQ2_0, grid(32, -1, 1, 1.0f));
  ExpectExactRoundTrip(Type::kTQ1_0, grid(32, -1, 1, 1.0f));
  ExpectExactRoundTrip(Type::kF32, grid(32, -100, 100, 0.1f));
  ExpectExactRoundTrip(Type::kF16, grid(32, -100, 100, 0.125f));
  ExpectExactRoundTrip(Type::kBF16, grid(32, -100, 100, 0.5f));
  // IQ4_NL: the non-linear values themselves, 16 per half block, times 1/128.
  std::vector<float> nl(n);
  for (int i = 0; i < n; ++i) nl[i] = kIq4nlValues[(i * 7 + i / 32) % 16] / 128.f;
  ExpectExactRoundTrip(Type::kIQ4_NL, nl);
  // MXFP4: every E2M1 value times 2^-3 (the largest, 6, sets the exponent).
  std::vector<float> mx(n);
  for (int i = 0; i < n; ++i) mx[i] = kMxfp4Values[(i + i / 32) % 16] * 0.0625f;
  ExpectExactRoundTrip(Type::kMXFP4, mx);
}

// TQ1_0 packs five trits a byte: every one of the 243 patterns, at every byte position of qs
// (pattern (48 b + m) mod 243 in byte m of block b), comes back.
TEST(GgmlRoundTrip, EveryTq1PatternComesBack) {
  const int blocks = 243;
  std::vector<float> x(static_cast<size_t>(blocks) * kQKK);
  for (int b = 0; b < blocks; ++b) {
    float* xb = x.data() + static_cast<size_t>(b) * kQKK;
    for (int m = 0; m < 48; ++m) {
      int p = (48 * b + m) % 243;
      // Byte m < 32 holds values m + 32 k, byte 32 + m' values 160 + m' + 16 k; trit k = 0 is
      // the most significant.
      for (int k = 4; k >= 0; --k, p /= 3) {
        xb[m < 32 ? m + 32 * k : 160 + (m - 32) + 16 * k] = static_cast<float>(p % 3 - 1);
      }
    }
    for (int j = 240; j < kQKK; ++j) xb[j] = static_cast<float>((j + b) % 3 - 1);
    xb[255] = 1;  // the block's scale is 1
  }
  ExpectExactRoundTrip(Type::kTQ1_0, x);
}

// k-quants with mins, whose stored scales are d * sc with d in fp16 and sc in 4 or 6 bits: values
// l * step, every code present, with step chosen so d * sc is exact, decode to within 1e-3 step.
TEST(GgmlRoundTrip, KQuantsWithMinsReproduceGridValues) {
  std::mt19937 rng(3);
  struct Case {
    Type type;
    int period;
    int levels;
    float step;
  };
  for (const Case c : {Case{Type::kQ2_K, 16, 4, 15.f / 16}, Case{Type::kQ4_K, 32, 16, 63.f / 64},
                       Case{Type::kQ5_K, 32, 32, 63.f / 64}}) {
    std::vector<float> x(4 * kQKK);
    std::vector<int> codes(c.period);
    for (size_t i = 0; i < x.size(); i += c.period) {
      for (int k = 0; k < c.period; ++k) codes[k] = k % c.levels;
      std::shuffle(codes.begin(), codes.end(), rng);
      for (int k = 0; k < c.period; ++k) x[i + k] = codes[k] * c.step;
    }
    const std::vector<float> y = Decoded(c.type, Quantized(c.type, x), x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_NEAR(y[i], x[i], 1e-3 * c.step) << Traits(c.type).name << " value " << i;
    }
  }
}

TEST(GgmlRoundTrip, IQ4XsGridValues) {
  // Sub-block scales (s - 32) * d with d = 1/64: sub-block k uses scale (k - 4) / 64 when
  // nonzero, values on the IQ4 grid; the largest |scale| sets d, so every scale is exact.
  std::vector<float> x(kQKK);
  const int subs[8] = {-32, 31, -7, 5, 12, -20, 1, 30};
  for (int ib = 0; ib < 8; ++ib) {
    for (int j = 0; j < 32; ++j) {
      x[ib * 32 + j] = subs[ib] / 64.f * kIq4nlValues[(j * 5 + ib) % 16];
    }
  }
  const std::vector<float> y = Decoded(Type::kIQ4_XS, Quantized(Type::kIQ4_XS, x), x.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-6f * std::fabs(x[i])) << i;
}

TEST(GgmlRoundTrip, ZeroAndConstantBlocks) {
  for (const TypeTraits& t : kTypes) {
    const size_t n = 2 * kQKK;
    std::vector<float> zero(n, 0.f);
    for (float v : Decoded(t.type, Quantized(t.type, zero), n)) ASSERT_EQ(v, 0.f) << t.name;
    std::vector<float> c(n, 0.5f);
    for (float v : Decoded(t.type, Quantized(t.type, c), n)) {
      ASSERT_NEAR(v, 0.5f, 0.5f * 0.07f) << t.name;  // MXFP4 and TQ*: exact; fp16 scales: 0.1%
    }
  }
}

// Quantise -> dequantise on seeded Gaussian rows of every block-multiple length around the block
// widths: relative RMS error within each type's band, and a whole-number-of-blocks output.
TEST(GgmlQuality, ErrorBandsPerType) {
  struct Band {
    Type type;
    double max_rel_rms;  // sqrt(sum e^2 / sum x^2)
  };
  // Bands ~1.15x the values measured on this data (Gaussian: no outliers).
  // Bands ~1.15x the largest value measured over the four lengths (Gaussian, no outliers).
  const Band bands[] = {
      {Type::kF32, 0.0},      {Type::kF16, 2.6e-4},  {Type::kBF16, 2.2e-3}, {Type::kQ8_0, 0.0065},
      {Type::kQ6_K, 0.021},   {Type::kQ5_1, 0.045},  {Type::kQ5_0, 0.050},  {Type::kQ5_K, 0.043},
      {Type::kQ4_1, 0.092},   {Type::kQ4_0, 0.100},  {Type::kQ4_K, 0.085},  {Type::kIQ4_NL, 0.086},
      {Type::kIQ4_XS, 0.090}, {Type::kMXFP4, 0.135}, {Type::kQ3_K, 0.175},  {Type::kQ2_K, 0.365},
      {Type::kTQ2_0, 0.96},   {Type::kTQ1_0, 0.96},
  };
  std::map<Type, double> at17;
  for (const Band& band : bands) {
    const int block = Traits(band.type).block_size == 1 ? 32 : Traits(band.type).block_size;
    for (int blocks : {1, 2, 3, 17}) {
      const size_t n = static_cast<size_t>(block) * blocks;
      const std::vector<float> x = Gaussian(n, 1000 + blocks);
      const std::vector<uint8_t> q = Quantized(band.type, x);
      EXPECT_EQ(q.size(), static_cast<size_t>(blocks) * block / Traits(band.type).block_size *
                              Traits(band.type).type_size);
      const std::vector<float> y = Decoded(band.type, q, n);
      double se = 0;
      double sx = 0;
      for (size_t i = 0; i < n; ++i) {
        se += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
        sx += double(x[i]) * x[i];
      }
      const double rel = std::sqrt(se / sx);
      if (blocks == 17) {
        at17[band.type] = rel;
        RecordProperty(std::string(Traits(band.type).name), std::to_string(rel));
      }
      EXPECT_LE(rel, band.max_rel_rms) << Traits(band.type).name << " n=" << n;
      if (band.type == Type::kF32) {
        EXPECT_EQ(rel, 0.0);
      }
    }
  }
  // More bits, less error; the searched k-quants beat the one-shot legacy types of their width.
  EXPECT_LT(at17[Type::kQ6_K], at17[Type::kQ5_K]);
  EXPECT_LT(at17[Type::kQ5_K], at17[Type::kQ4_K]);
  EXPECT_LT(at17[Type::kQ4_K], at17[Type::kQ3_K]);
  EXPECT_LT(at17[Type::kQ3_K], at17[Type::kQ2_K]);
  EXPECT_LT(at17[Type::kQ5_K], at17[Type::kQ5_0]);
  EXPECT_LT(at17[Type::kQ4_K], at17[Type::kQ4_0]);
  EXPECT_LT(at17[Type::kIQ4_NL], at17[Type::kQ4_0]);
}

// The importance-weighted quantisers (IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K): large importances on some
// columns must lower the importance-weighted error against the unweighted reference quantiser.
TEST(GgmlQuality, Iq4ImportanceWeightsLowerWeightedError) {
  const size_t n = 64 * kQKK;
  const std::vector<float> x = Gaussian(n, 99);
  std::vector<float> imp(n);
  for (size_t i = 0; i < n; ++i) imp[i] = (i % 7 == 0) ? 50.f : 1.f;
  for (Type type : {Type::kIQ4_NL, Type::kIQ4_XS, Type::kQ3_K, Type::kQ2_K, Type::kQ4_K}) {
    std::vector<uint8_t> plain(RowBytes(type, n));
    std::vector<uint8_t> weighted(RowBytes(type, n));
    if (type == Type::kIQ4_NL) {
      QuantizeIQ4_NL(x.data(), reinterpret_cast<BlockIQ4_NL*>(plain.data()), n);
      QuantizeIQ4_NL(x.data(), reinterpret_cast<BlockIQ4_NL*>(weighted.data()), n, imp.data());
    } else if (type == Type::kIQ4_XS) {
      QuantizeIQ4_XS(x.data(), reinterpret_cast<BlockIQ4_XS*>(plain.data()), n);
      QuantizeIQ4_XS(x.data(), reinterpret_cast<BlockIQ4_XS*>(weighted.data()), n, imp.data());
    } else if (type == Type::kQ3_K) {
      QuantizeQ3_K(x.data(), reinterpret_cast<BlockQ3_K*>(plain.data()), n);
      QuantizeQ3_K(x.data(), reinterpret_cast<BlockQ3_K*>(weighted.data()), n, imp.data());
    } else if (type == Type::kQ2_K) {
      QuantizeQ2_K(x.data(), reinterpret_cast<BlockQ2_K*>(plain.data()), n);
      QuantizeQ2_K(x.data(), reinterpret_cast<BlockQ2_K*>(weighted.data()), n, imp.data());
    } else {
      QuantizeQ4_K(x.data(), reinterpret_cast<BlockQ4_K*>(plain.data()), n);
      QuantizeQ4_K(x.data(), reinterpret_cast<BlockQ4_K*>(weighted.data()), n, imp.data());
    }
    const std::vector<float> yp = Decoded(type, plain, n);
    const std::vector<float> yw = Decoded(type, weighted, n);
    double ep = 0;
    double ew = 0;
    for (size_t i = 0; i < n; ++i) {
      ep += imp[i] * (yp[i] - x[i]) * (yp[i] - x[i]);
      ew += imp[i] * (yw[i] - x[i]) * (yw[i] - x[i]);
    }
    EXPECT_LT(ew, 0.97 * ep) << Traits(type).name;
  }
}

}  // namespace
}  // namespace qtool::ggml
