#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/format/spec.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/quant/int_codec.hpp"

namespace qtool {
namespace {

const int64_t kLengths[] = {1, 7, 31, 32, 33, 63, 64, 65, 127, 128, 129, 4096 + 17};

QuantSpec Spec(int bits, bool sym, Granularity g, int64_t group = 128) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = sym;
  s.granularity = g;
  s.group_size = group;
  return s;
}

std::vector<float> Gaussian(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

TEST(QuantSpec, RejectsImpossibleOptions) {
  EXPECT_THROW(Spec(1, true, Granularity::kGroup).Validate(), OptionError);
  EXPECT_THROW(Spec(9, true, Granularity::kGroup).Validate(), OptionError);
  EXPECT_THROW(Spec(4, true, Granularity::kGroup, 0).Validate(), OptionError);
  EXPECT_NO_THROW(Spec(4, true, Granularity::kChannel, 0).Validate());
  for (int b = 2; b <= 8; ++b) EXPECT_NO_THROW(Spec(b, false, Granularity::kGroup, 1).Validate());
}

TEST(QuantSpec, Grid) {
  const QuantSpec s4 = Spec(4, true, Granularity::kGroup);
  EXPECT_EQ(s4.qmin(), -8);
  EXPECT_EQ(s4.qmax(), 7);
  EXPECT_EQ(s4.code_offset(), 8);
  const QuantSpec a3 = Spec(3, false, Granularity::kGroup);
  EXPECT_EQ(a3.qmin(), 0);
  EXPECT_EQ(a3.qmax(), 7);
  EXPECT_EQ(Spec(4, true, Granularity::kGroup, 32).GroupsPerRow(100), 4);  // last group: 4 elements
  EXPECT_EQ(Spec(4, true, Granularity::kChannel).GroupsPerRow(100), 1);
}

TEST(QuantSpec, ZeroRangeGivesFiniteScale) {
  for (const bool sym : {true, false}) {
    const GroupParams p = ParamsFromRange(0.0f, 0.0f, Spec(4, sym, Granularity::kGroup));
    EXPECT_EQ(p.scale, 1.0f);
    EXPECT_EQ(DequantizeValue(QuantizeValue(0.0f, p, 15), p), 0.0f);
  }
  // A range too small to give a normal scale still decodes to (nearly) the data, never NaN.
  const GroupParams tiny = ParamsFromRange(0.0f, 1e-45f, Spec(8, true, Granularity::kGroup));
  EXPECT_TRUE(std::isfinite(tiny.scale));
  EXPECT_GT(tiny.scale, 0.0f);
}

TEST(QuantSpec, AsymmetricRangeIncludesZero) {
  const QuantSpec s = Spec(4, false, Granularity::kGroup);
  const GroupParams p = ParamsFromRange(2.0f, 5.0f, s);  // widened to [0, 5]
  EXPECT_FLOAT_EQ(p.scale, 5.0f / 15.0f);
  EXPECT_EQ(p.zero, 0);
  const GroupParams n = ParamsFromRange(-3.0f, -1.0f, s);  // widened to [-3, 0]
  EXPECT_EQ(n.zero, 15);
  EXPECT_EQ(DequantizeValue(QuantizeValue(0.0f, n, 15), n), 0.0f);  // zero is exact
}

// Round half to even at the ties of the grid: x / scale = k + 0.5 goes to the even neighbour.
TEST(QuantSpec, RoundsHalfToEven) {
  const GroupParams p{1.0f, 8};
  EXPECT_EQ(QuantizeValue(0.5f, p, 15), 8);     // 0
  EXPECT_EQ(QuantizeValue(1.5f, p, 15), 10);    // 2
  EXPECT_EQ(QuantizeValue(2.5f, p, 15), 10);    // 2
  EXPECT_EQ(QuantizeValue(-0.5f, p, 15), 8);    // -0
  EXPECT_EQ(QuantizeValue(-1.5f, p, 15), 6);    // -2
  EXPECT_EQ(QuantizeValue(-7.5f, p, 15), 0);    // -8 (clamped range edge, even)
  EXPECT_EQ(QuantizeValue(100.0f, p, 15), 15);  // clamped to qmax
  EXPECT_EQ(QuantizeValue(-100.0f, p, 15), 0);  // clamped to qmin
}

TEST(Pack, RoundTripEveryWidthAndLength) {
  std::mt19937 rng(7);
  for (int bits = 2; bits <= 8; ++bits) {
    for (const int64_t n : kLengths) {
      std::vector<uint8_t> codes(static_cast<size_t>(n)), back(static_cast<size_t>(n));
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      std::vector<uint8_t> packed(static_cast<size_t>(PackedBytes(n, bits)) + 1, 0xAB);
      PackCodes(codes.data(), n, bits, packed.data());
      EXPECT_EQ(packed.back(), 0xAB) << "wrote past the packed size, bits " << bits << " n " << n;
      UnpackCodes(packed.data(), n, bits, back.data());
      ASSERT_EQ(codes, back) << "bits " << bits << " n " << n;
    }
  }
}

TEST(Pack, DocumentedBitLayout) {
  const uint8_t c4[3] = {0x1, 0xA, 0x7};
  uint8_t p4[2];
  PackCodes(c4, 3, 4, p4);
  EXPECT_EQ(p4[0], 0xA1);  // code 0 low nibble, code 1 high nibble
  EXPECT_EQ(p4[1], 0x07);  // odd tail padded with zero bits
  const uint8_t c2[4] = {1, 2, 3, 0};
  uint8_t p2;
  PackCodes(c2, 4, 2, &p2);
  EXPECT_EQ(p2, 0b00111001);
  const uint8_t c3[8] = {1, 2, 3, 4, 5, 6, 7, 0};
  uint8_t p3[3];
  PackCodes(c3, 8, 3, p3);
  // Stream (LSB first): 001 010 011 100 101 110 111 000 -> bits 0..23.
  const uint32_t stream = 1u | 2u << 3 | 3u << 6 | 4u << 9 | 5u << 12 | 6u << 15 | 7u << 18;
  EXPECT_EQ(p3[0], stream & 0xff);
  EXPECT_EQ(p3[1], (stream >> 8) & 0xff);
  EXPECT_EQ(p3[2], (stream >> 16) & 0xff);
}

// The RTN definition, written independently of the library: per group, scale from the group's
// max |x| (symmetric) or range (asymmetric), round half to even with nearbyint, clamp, decode.
std::vector<float> IndependentRtn(const std::vector<float>& x, int64_t cols, const QuantSpec& s) {
  std::vector<float> out(x.size());
  const int64_t rows = static_cast<int64_t>(x.size()) / cols;
  const int64_t g = s.granularity == Granularity::kGroup ? std::min(s.group_size, cols) : cols;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g0 = 0; g0 < cols; g0 += g) {
      const int64_t g1 = std::min(cols, g0 + g);
      float mn = 0, mx = 0;
      for (int64_t i = g0; i < g1; ++i) {
        mn = std::min(mn, x[static_cast<size_t>(r * cols + i)]);
        mx = std::max(mx, x[static_cast<size_t>(r * cols + i)]);
      }
      float scale, zero = 0;
      float qlo, qhi;
      if (s.symmetric) {
        const float qmax = static_cast<float>((1 << (s.bits - 1)) - 1);
        scale = std::max(-mn, mx) / qmax;
        qlo = -qmax - 1;
        qhi = qmax;
      } else {
        scale = (mx - mn) / static_cast<float>((1 << s.bits) - 1);
        qlo = 0;
        qhi = static_cast<float>((1 << s.bits) - 1);
      }
      if (scale == 0) scale = 1;
      if (!s.symmetric) zero = std::min(qhi, std::nearbyint(-mn / scale));
      for (int64_t i = g0; i < g1; ++i) {
        const float v = x[static_cast<size_t>(r * cols + i)];
        const float q = std::clamp(std::nearbyint(v / scale) + zero, qlo, qhi);
        out[static_cast<size_t>(r * cols + i)] = (q - zero) * scale;
      }
    }
  }
  return out;
}

struct CodecCase {
  int bits;
  bool sym;
  Granularity gran;
  int64_t group;
};

class IntCodecTest : public ::testing::TestWithParam<CodecCase> {};

TEST_P(IntCodecTest, MatchesIndependentDefinitionAndDecodes) {
  const CodecCase c = GetParam();
  const QuantSpec spec = Spec(c.bits, c.sym, c.gran, c.group);
  for (const int64_t cols : {int64_t{1}, int64_t{33}, int64_t{100}, int64_t{129}}) {
    const int64_t rows = 5;
    std::vector<float> w = Gaussian(rows * cols, static_cast<uint32_t>(cols * 31 + c.bits));
    w[3 % w.size()] = 9.0f;  // an outlier
    IntCodec codec(spec, rows, cols);
    std::vector<std::vector<std::byte>> parts;
    std::vector<std::byte*> out;
    for (const TensorSpec& t : codec.Layout("w")) {
      parts.emplace_back(t.nbytes());
      out.push_back(parts.back().data());
    }
    if (codec.needs_observe()) codec.Observe(w.data(), 0, rows);
    std::vector<float> deq(w.size()), decoded(w.size());
    // Encode in two uneven chunks, as the parallel pipeline does.
    codec.EncodeRows(w.data(), 0, 2, out.data(), deq.data());
    codec.EncodeRows(w.data() + 2 * cols, 2, rows - 2, out.data(), deq.data() + 2 * cols);
    std::vector<const std::byte*> in(out.begin(), out.end());
    codec.DecodeRows(in.data(), 0, rows, decoded.data());
    EXPECT_EQ(deq, decoded) << "cols " << cols;
    if (c.gran != Granularity::kTensor) {
      EXPECT_EQ(deq, IndependentRtn(w, cols, spec)) << "cols " << cols;
    }
    // Row-wise reference agrees with the codec's rows.
    if (c.gran != Granularity::kTensor) {
      std::vector<uint8_t> codes(static_cast<size_t>(cols));
      std::vector<GroupParams> params(static_cast<size_t>(spec.GroupsPerRow(cols)));
      std::vector<float> row(static_cast<size_t>(cols));
      QuantizeRowRef(w.data() + cols, cols, spec, codes.data(), params.data(), row.data());
      EXPECT_TRUE(std::equal(row.begin(), row.end(), deq.begin() + cols));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Specs, IntCodecTest,
                         ::testing::Values(CodecCase{8, true, Granularity::kChannel, 0},
                                           CodecCase{8, false, Granularity::kChannel, 0},
                                           CodecCase{4, true, Granularity::kGroup, 32},
                                           CodecCase{4, false, Granularity::kGroup, 32},
                                           CodecCase{3, true, Granularity::kGroup, 16},
                                           CodecCase{3, false, Granularity::kGroup, 7},
                                           CodecCase{2, true, Granularity::kGroup, 128},
                                           CodecCase{2, false, Granularity::kChannel, 0},
                                           CodecCase{5, true, Granularity::kGroup, 1},
                                           CodecCase{4, true, Granularity::kTensor, 0},
                                           CodecCase{6, false, Granularity::kTensor, 0}));

TEST(IntCodec, PerTensorUsesOneScale) {
  const int64_t rows = 4, cols = 8;
  std::vector<float> w = Gaussian(rows * cols, 3);
  w[5] = -4.0f;  // the tensor's max |x|
  IntCodec codec(Spec(8, true, Granularity::kTensor), rows, cols);
  const auto layout = codec.Layout("w");
  ASSERT_EQ(layout[1].shape, (std::vector<int64_t>{1, 1}));
  std::vector<std::vector<std::byte>> parts;
  std::vector<std::byte*> out;
  for (const auto& t : layout) {
    parts.emplace_back(t.nbytes());
    out.push_back(parts.back().data());
  }
  codec.Observe(w.data(), 0, rows);
  std::vector<float> deq(w.size());
  codec.EncodeRows(w.data(), 0, rows, out.data(), deq.data());
  float scale;
  std::memcpy(&scale, parts[1].data(), 4);
  EXPECT_FLOAT_EQ(scale, 4.0f / 127.0f);
  EXPECT_FLOAT_EQ(deq[5], -4.0f);
}

// Quality bands on fixed seeded Gaussian data: each extra bit is worth about 6 dB.
TEST(IntCodec, SqnrBands) {
  const int64_t rows = 64, cols = 512;
  const std::vector<float> w = Gaussian(rows * cols, 11, 0.02f);
  double prev = 0;
  for (int bits = 2; bits <= 8; ++bits) {
    const QuantSpec spec = Spec(bits, true, Granularity::kGroup, 64);
    const std::vector<float> deq = IndependentRtn(w, cols, spec);
    double s = 0, e = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      s += double(w[i]) * w[i];
      e += double(w[i] - deq[i]) * (w[i] - deq[i]);
    }
    const double sqnr = 10 * std::log10(s / e);
    // INT2 symmetric has only the levels -2..1 (scale = max / 1): a low but positive SQNR.
    EXPECT_GT(sqnr, bits == 2 ? 1.0 : prev + 4.5) << bits;
    prev = sqnr;
  }
  EXPECT_GT(prev, 40.0);  // INT8 g64 on Gaussian data
}

}  // namespace
}  // namespace qtool

namespace qtool {
namespace {

// Flat groups: groups of g over the row-major flattened matrix, spanning rows when g does not
// divide the row length; chunks of rows start on group boundaries (row_block).
TEST(IntCodec, FlatGroupsSpanRows) {
  const int64_t rows = 24, cols = 172, g = 32;
  QuantSpec spec = Spec(4, true, Granularity::kGroup, g);
  spec.flat_groups = true;
  const std::vector<float> w = Gaussian(rows * cols, 5);
  IntCodec codec(spec, rows, cols);
  ASSERT_EQ(codec.row_block(), 8);  // 8 rows of 172 = 43 groups of 32
  const auto layout = codec.Layout("w");
  ASSERT_EQ(layout[1].shape, (std::vector<int64_t>{(rows * cols + g - 1) / g, 1}));
  std::vector<std::vector<std::byte>> parts;
  std::vector<std::byte*> out;
  for (const auto& t : layout) {
    parts.emplace_back(t.nbytes());
    out.push_back(parts.back().data());
  }
  std::vector<float> deq(w.size()), decoded(w.size());
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    codec.EncodeRows(w.data() + r0 * cols, r0, 8, out.data(), deq.data() + r0 * cols);
  }
  // The whole matrix as one row of rows * cols elements is the same definition.
  EXPECT_EQ(deq, IndependentRtn(w, rows * cols, Spec(4, true, Granularity::kGroup, g)));
  // Decoding works from any row, not only group-aligned ones.
  std::vector<const std::byte*> in(out.begin(), out.end());
  codec.DecodeRows(in.data(), 0, 3, decoded.data());
  codec.DecodeRows(in.data(), 3, rows - 3, decoded.data() + 3 * cols);
  EXPECT_EQ(deq, decoded);
  EXPECT_EQ(MakeCodec(CodecRecord(codec), rows, cols)->row_block(), 8);
}

}  // namespace
}  // namespace qtool
