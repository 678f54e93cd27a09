#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>

#include "qtool/core/half.hpp"

namespace qtool {
namespace {

bool IsNanF16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

// Every f16 decodes to the value its fields define, and re-encodes to itself (NaNs stay NaN).
TEST(Half, F16AllInputsRoundTrip) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const float f = F16ToF32(h);
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    const float sign = (h & 0x8000) ? -1.0f : 1.0f;
    if (e == 31) {
      EXPECT_TRUE(m ? std::isnan(f) : std::isinf(f)) << i;
    } else {
      const double expect =
          e == 0 ? sign * std::ldexp(m, -24) : sign * std::ldexp(1024 + m, e - 25);
      EXPECT_EQ(static_cast<double>(f), expect) << i;
    }
    const uint16_t back = F32ToF16(f);
    if (IsNanF16(h)) {
      EXPECT_TRUE(IsNanF16(back)) << i;
      EXPECT_EQ(back & 0x8000, h & 0x8000) << i;
    } else {
      EXPECT_EQ(back, h) << i;
    }
  }
}

// Between each pair of neighbouring f16 values: the midpoint rounds to the even one, and one f32
// ulp either side of it rounds to the nearer one.
TEST(Half, F16RoundsToNearestEven) {
  for (uint32_t i = 0; i < 0x7bff; ++i) {
    for (const uint32_t sign : {0u, 0x8000u}) {
      const auto lo = static_cast<uint16_t>(i | sign), hi = static_cast<uint16_t>((i + 1) | sign);
      const double a = F16ToF32(lo), b = F16ToF32(hi);
      const auto mid = static_cast<float>((a + b) / 2);  // exact: f16 has 11 significant bits
      ASSERT_EQ(static_cast<double>(mid), (a + b) / 2);
      const uint16_t even = (lo & 1) ? hi : lo;
      EXPECT_EQ(F32ToF16(mid), even) << i;
      EXPECT_EQ(F32ToF16(std::nextafter(mid, static_cast<float>(a))), lo) << i;
      EXPECT_EQ(F32ToF16(std::nextafter(mid, static_cast<float>(b))), hi) << i;
    }
  }
}

TEST(Half, F16Overflow) {
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(65519.99f), 0x7bff);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);  // the tie rounds to even, which is past the largest
  EXPECT_EQ(F32ToF16(1e30f), 0x7c00);
  EXPECT_EQ(F32ToF16(-1e30f), 0xfc00);
  EXPECT_EQ(F32ToF16(INFINITY), 0x7c00);
  EXPECT_EQ(F32ToF16(0x1p-25f), 0x0000);                   // half the smallest subnormal: to even
  EXPECT_EQ(F32ToF16(std::nextafter(0x1p-25f, 1.0f)), 1);  // just above: up
  EXPECT_EQ(F32ToF16(0x1p-24f * 1.5f), 2);                 // 1.5 ulp: to even (2)
}

TEST(Half, Bf16AllInputsRoundTrip) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const float f = Bf16ToF32(h);
    EXPECT_EQ(std::bit_cast<uint32_t>(f), i << 16);
    const uint16_t back = F32ToBf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToF32(back))) << i;
      EXPECT_EQ(back & 0x8000, h & 0x8000) << i;
    } else {
      EXPECT_EQ(back, h) << i;
    }
  }
}

TEST(Half, Bf16RoundsToNearestEven) {
  for (uint32_t i = 0; i < 0x7f7f; ++i) {
    for (const uint32_t sign : {0u, 0x8000u}) {
      const uint32_t lo = i | sign, hi = (i + 1) | sign;
      const uint32_t mid_bits = (lo << 16) | 0x8000u;  // exactly halfway (same sign and exponent)
      const uint16_t even = (lo & 1) ? static_cast<uint16_t>(hi) : static_cast<uint16_t>(lo);
      EXPECT_EQ(F32ToBf16(std::bit_cast<float>(mid_bits)), even) << i;
      EXPECT_EQ(F32ToBf16(std::bit_cast<float>(mid_bits - 1)), lo) << i;
      EXPECT_EQ(F32ToBf16(std::bit_cast<float>(mid_bits + 1)), hi) << i;
    }
  }
  EXPECT_EQ(F32ToBf16(3.4e38f), 0x7f80);  // rounds past the largest finite bf16
  EXPECT_EQ(F32ToBf16(-INFINITY), 0xff80);
}

}  // namespace
}  // namespace qtool
