// Every code of every small float format, round-to-nearest-even at every tie, saturation edges,
// and the E8M0 shared scale.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>

#include "qtool/core/half.hpp"
#include "qtool/format/minifloat.hpp"

namespace qtool {
namespace {

// The value of a code from the format's definition, written independently of DecodeMinifloat:
// (-1)^s 2^(e - bias) (1 + m / 2^M), subnormal 2^(1 - bias) m / 2^M; specials checked separately.
double DefinitionValue(uint32_t code, const MinifloatFormat& f) {
  const uint32_t m = code & ((1u << f.man_bits) - 1);
  const uint32_t e = (code >> f.man_bits) & ((1u << f.exp_bits) - 1);
  const double frac = static_cast<double>(m) / (1 << f.man_bits);
  const double mag = e == 0 ? std::pow(2.0, 1 - f.bias) * frac
                            : std::pow(2.0, static_cast<int>(e) - f.bias) * (1.0 + frac);
  return (code & f.sign_bit()) ? -mag : mag;
}

bool IsNanCode(uint32_t code, const MinifloatFormat& f) {
  const uint32_t a = code & (f.sign_bit() - 1);
  if (&f == &kE4M3) return a == 0x7f;
  if (&f == &kE5M2) return a > 0x7c;
  return false;
}

bool IsInfCode(uint32_t code, const MinifloatFormat& f) {
  return &f == &kE5M2 && (code & 0x7f) == 0x7c;
}

const MinifloatFormat* const kAll[] = {&kE4M3, &kE5M2, &kE3M2, &kE2M3, &kE2M1};

// Round to nearest even by search, in double: the nearest finite code, ties to the even code,
// then the overflow rule (a value beyond max rounds to max unless it lies at or past the midpoint
// between max and the next binade step, max + 2^(emax - M)); NaN handled by the caller.
uint32_t SearchEncode(float x, const MinifloatFormat& f, bool saturate) {
  const double a = std::fabs(static_cast<double>(x));
  const uint32_t sign = std::signbit(x) ? f.sign_bit() : 0u;
  const uint32_t max_code = MaxFiniteCode(f);
  const double max = f.max(), next = max + std::ldexp(1.0, f.emax() - f.man_bits);
  if (a > max) {
    const bool overflow = a > (max + next) / 2 || (a == (max + next) / 2 && (max_code & 1));
    if (!overflow || saturate || !(f.has_inf || f.has_nan)) return sign | max_code;
    return sign | (f.has_inf ? 0x7cu : 0x7fu);
  }
  uint32_t best = 0;
  for (uint32_t c = 1; c <= max_code; ++c) {
    const double d = std::fabs(DecodeMinifloat(c, f) - a),
                 db = std::fabs(DecodeMinifloat(best, f) - a);
    if (d < db || (d == db && (c & 1) == 0)) best = c;
  }
  return sign | best;
}

TEST(Minifloat, MaxAndEmaxFollowTheSpec) {
  EXPECT_EQ(kE4M3.max(), 448.0f);
  EXPECT_EQ(kE5M2.max(), 57344.0f);
  EXPECT_EQ(kE3M2.max(), 28.0f);
  EXPECT_EQ(kE2M3.max(), 7.5f);
  EXPECT_EQ(kE2M1.max(), 6.0f);
  EXPECT_EQ(kE4M3.emax(), 8);
  EXPECT_EQ(kE5M2.emax(), 15);
  EXPECT_EQ(kE3M2.emax(), 4);
  EXPECT_EQ(kE2M3.emax(), 2);
  EXPECT_EQ(kE2M1.emax(), 2);
}

TEST(Minifloat, Fp4ValuesAreTheOcpList) {
  const float expected[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (uint32_t c = 0; c < 16; ++c) {
    const float want = (c & 8) ? -expected[c & 7] : expected[c & 7];
    EXPECT_EQ(std::bit_cast<uint32_t>(DecodeMinifloat(c, kE2M1)), std::bit_cast<uint32_t>(want))
        << "code " << c;
  }
}

TEST(Minifloat, E5M2IsTheTopByteOfF16) {
  for (uint32_t c = 0; c < 256; ++c) {
    const float want = F16ToF32(static_cast<uint16_t>(c << 8));
    const float got = DecodeMinifloat(c, kE5M2);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << c;
    }
  }
}

TEST(Minifloat, EveryCodeDecodesToItsDefinitionAndReencodesToItself) {
  for (const MinifloatFormat* f : kAll) {
    for (uint32_t c = 0; c < static_cast<uint32_t>(f->num_codes()); ++c) {
      const float v = DecodeMinifloat(c, *f);
      SCOPED_TRACE(::testing::Message() << f->name << " code " << c);
      if (IsNanCode(c, *f)) {
        EXPECT_TRUE(std::isnan(v));
        const uint32_t canonical = (c & f->sign_bit()) | (f == &kE4M3 ? 0x7fu : 0x7eu);
        EXPECT_EQ(EncodeMinifloat(v, *f, false), canonical);
        continue;
      }
      if (IsInfCode(c, *f)) {
        EXPECT_TRUE(std::isinf(v));
        EXPECT_EQ(EncodeMinifloat(v, *f, /*saturate=*/false), c);
        EXPECT_EQ(EncodeMinifloat(v, *f, /*saturate=*/true), (c & 0x80) | 0x7b);
        continue;
      }
      EXPECT_EQ(static_cast<double>(v), DefinitionValue(c, *f));
      EXPECT_EQ(std::signbit(v), (c & f->sign_bit()) != 0);  // -0 keeps its sign
      EXPECT_EQ(EncodeMinifloat(v, *f, true), c);
      EXPECT_EQ(EncodeMinifloat(v, *f, false), c);
    }
  }
}

// Between every two neighbouring finite codes of one sign: the midpoint rounds to the code with
// the even mantissa, and one ulp (of f32) either side rounds to the nearer code.
TEST(Minifloat, RoundsToNearestEvenAtEveryTie) {
  for (const MinifloatFormat* f : kAll) {
    const uint32_t half = static_cast<uint32_t>(f->num_codes() / 2);
    for (uint32_t sign : {0u, f->sign_bit()}) {
      for (uint32_t c = 0; c + 1 < half; ++c) {
        const uint32_t lo = sign | c, hi = sign | (c + 1);
        if (IsNanCode(hi, *f) || IsInfCode(hi, *f)) continue;
        const float a = DecodeMinifloat(lo, *f), b = DecodeMinifloat(hi, *f);
        const float mid = (a + b) / 2;  // exact: both have few significant bits
        ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(a) + b) / 2);
        SCOPED_TRACE(::testing::Message() << f->name << " between " << a << " and " << b);
        const uint32_t even = (lo & 1) == 0 ? lo : hi;
        for (bool sat : {true, false}) {
          EXPECT_EQ(EncodeMinifloat(mid, *f, sat), even);
          EXPECT_EQ(EncodeMinifloat(std::nextafter(mid, a), *f, sat), lo);
          EXPECT_EQ(EncodeMinifloat(std::nextafter(mid, b), *f, sat), hi);
        }
      }
    }
  }
}

TEST(Minifloat, RandomValuesMatchTheNearestEvenSearch) {
  uint64_t state = 99;
  for (const MinifloatFormat* f : kAll) {
    for (int i = 0; i < 20000; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      // Magnitudes from far below the subnormals to far above the max.
      const float x =
          std::ldexp(static_cast<float>(state >> 40) * 0x1p-24f * ((state >> 20) & 1 ? -1 : 1),
                     static_cast<int>((state >> 8) % 48) - 30);
      for (bool sat : {true, false}) {
        ASSERT_EQ(EncodeMinifloat(x, *f, sat), SearchEncode(x, *f, sat))
            << f->name << " x=" << x << " saturate=" << sat;
      }
    }
  }
}

TEST(Minifloat, E4M3SaturationEdges) {
  const float inf = std::numeric_limits<float>::infinity();
  // 464 is half-way between 448 (mantissa 110, even) and the unrepresentable 480: it rounds to 448.
  for (bool sat : {true, false}) {
    EXPECT_EQ(EncodeMinifloat(448.0f, kE4M3, sat), 0x7eu);
    EXPECT_EQ(EncodeMinifloat(464.0f, kE4M3, sat), 0x7eu);
    EXPECT_EQ(EncodeMinifloat(-464.0f, kE4M3, sat), 0xfeu);
  }
  const float above = std::nextafter(464.0f, inf);
  EXPECT_EQ(EncodeMinifloat(above, kE4M3, true), 0x7eu);
  EXPECT_EQ(EncodeMinifloat(above, kE4M3, false), 0x7fu);
  EXPECT_EQ(EncodeMinifloat(-above, kE4M3, false), 0xffu);
  EXPECT_EQ(EncodeMinifloat(1e30f, kE4M3, true), 0x7eu);
  EXPECT_EQ(EncodeMinifloat(inf, kE4M3, true), 0x7eu);
  EXPECT_EQ(EncodeMinifloat(-inf, kE4M3, true), 0xfeu);
  EXPECT_EQ(EncodeMinifloat(inf, kE4M3, false), 0x7fu);
  // Subnormal edge: 2^-10 is half of the smallest subnormal 2^-9 and rounds to 0 (even).
  EXPECT_EQ(EncodeMinifloat(0x1p-10f, kE4M3), 0x00u);
  EXPECT_EQ(EncodeMinifloat(-0x1p-10f, kE4M3), 0x80u);
  EXPECT_EQ(EncodeMinifloat(std::nextafter(0x1p-10f, 1.0f), kE4M3), 0x01u);
  EXPECT_EQ(EncodeMinifloat(1e-30f, kE4M3), 0x00u);
  EXPECT_EQ(EncodeMinifloat(std::numeric_limits<float>::denorm_min(), kE4M3), 0x00u);
}

TEST(Minifloat, E5M2SaturationEdges) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(EncodeMinifloat(57344.0f, kE5M2, false), 0x7bu);
  // 61440 is half-way between 57344 (mantissa 11, odd) and 65536: RNE goes up, which overflows.
  EXPECT_EQ(EncodeMinifloat(61440.0f, kE5M2, false), 0x7cu);
  EXPECT_EQ(EncodeMinifloat(-61440.0f, kE5M2, false), 0xfcu);
  EXPECT_EQ(EncodeMinifloat(61440.0f, kE5M2, true), 0x7bu);
  EXPECT_EQ(EncodeMinifloat(std::nextafter(61440.0f, 0.0f), kE5M2, false), 0x7bu);
  EXPECT_EQ(EncodeMinifloat(inf, kE5M2, false), 0x7cu);
  EXPECT_EQ(EncodeMinifloat(-inf, kE5M2, true), 0xfbu);
  EXPECT_EQ(EncodeMinifloat(std::numeric_limits<float>::quiet_NaN(), kE5M2), 0x7eu);
  EXPECT_EQ(EncodeMinifloat(0x1p-17f, kE5M2), 0x00u);    // half the smallest subnormal 2^-16
  EXPECT_EQ(EncodeMinifloat(0x1.8p-16f, kE5M2), 0x02u);  // 1.5 quanta: tie to even (2)
}

TEST(Minifloat, FormatsWithoutSpecialsAlwaysSaturate) {
  for (const MinifloatFormat* f : {&kE3M2, &kE2M3, &kE2M1}) {
    const uint32_t max_code = static_cast<uint32_t>(f->num_codes() / 2 - 1);
    for (bool sat : {true, false}) {
      EXPECT_EQ(EncodeMinifloat(f->max() * 4, *f, sat), max_code) << f->name;
      EXPECT_EQ(EncodeMinifloat(-std::numeric_limits<float>::infinity(), *f, sat),
                max_code | f->sign_bit())
          << f->name;
    }
    EXPECT_EQ(EncodeMinifloat(std::numeric_limits<float>::quiet_NaN(), *f), 0u) << f->name;
  }
  // FP4: 5 is half-way between 4 (code 6, even) and 6 (code 7); 2.5 between 2 (4) and 3 (5).
  EXPECT_EQ(EncodeMinifloat(5.0f, kE2M1), 6u);
  EXPECT_EQ(EncodeMinifloat(2.5f, kE2M1), 4u);
  EXPECT_EQ(EncodeMinifloat(0.25f, kE2M1), 0u);
  EXPECT_EQ(EncodeMinifloat(0.75f, kE2M1), 2u);
}

TEST(E8M0, DecodeEdges) {
  EXPECT_EQ(DecodeE8M0(127), 1.0f);
  EXPECT_EQ(DecodeE8M0(0), std::ldexp(1.0f, -127));
  EXPECT_GT(DecodeE8M0(0), 0.0f);
  EXPECT_EQ(DecodeE8M0(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(DecodeE8M0(255)));
  for (int e = 0; e < 255; ++e) {
    EXPECT_EQ(DecodeE8M0(static_cast<uint8_t>(e)), std::ldexp(1.0f, e - 127)) << e;
  }
}

TEST(E8M0, BlockScaleEdges) {
  const float inf = std::numeric_limits<float>::infinity();
  // Zeros: the smallest scale; NaN or Inf in the block: the NaN scale.
  EXPECT_EQ(E8M0ScaleForBlock(0.0f, 2), 0);
  EXPECT_EQ(E8M0ScaleForBlock(std::numeric_limits<float>::quiet_NaN(), 2), kE8M0Nan);
  EXPECT_EQ(E8M0ScaleForBlock(inf, 8), kE8M0Nan);
  // floor(log2(amax)) - emax: 6 with E2M1 (emax 2) gives 2^0; 448 with E4M3 (emax 8) too.
  EXPECT_EQ(E8M0ScaleForBlock(6.0f, kE2M1.emax()), 127);
  EXPECT_EQ(E8M0ScaleForBlock(448.0f, kE4M3.emax()), 127);
  EXPECT_EQ(E8M0ScaleForBlock(std::nextafter(8.0f, 0.0f), kE2M1.emax()), 127);
  EXPECT_EQ(E8M0ScaleForBlock(8.0f, kE2M1.emax()), 128);
  // Tiny: the subnormal 2^-149 would need 2^-151: clamped to 2^-127.
  EXPECT_EQ(E8M0ScaleForBlock(std::numeric_limits<float>::denorm_min(), kE2M1.emax()), 0);
  EXPECT_EQ(E8M0ScaleForBlock(0x1p-126f, 0), 1);
  // Huge: FLT_MAX = 1.99 * 2^127; MXINT8 (emax 0) gives 2^127, E4M3 2^119.
  EXPECT_EQ(E8M0ScaleForBlock(std::numeric_limits<float>::max(), 0), 254);
  EXPECT_EQ(E8M0ScaleForBlock(std::numeric_limits<float>::max(), kE4M3.emax()), 246);
}

}  // namespace
}  // namespace qtool
