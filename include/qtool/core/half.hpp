// IEEE binary16 (fp16) and bfloat16 conversions to and from binary32.
//
// f32 -> f16/bf16 rounds to nearest, ties to even; NaN stays NaN (quiet, sign kept); values past
// the largest finite f16 become +-Inf; subnormals are produced and read exactly. These scalar
// functions are the reference that every vectorised conversion must match bit for bit.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace qtool {

/// bf16 bits -> f32: the bf16 bits are the top half of the f32 bits, so this is exact.
inline float Bf16ToF32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

/// f32 -> bf16 bits, round to nearest even. NaN keeps its sign and becomes quiet.
inline uint16_t F32ToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

/// f16 bits -> f32, exact (every f16 value, subnormals included, is an f32 value).
inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // Inf or NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {
    // Subnormal: value = man * 2^-24. Converting the integer is exact.
    const float v = static_cast<float>(man) * 0x1p-24f;
    bits = sign | std::bit_cast<uint32_t>(v);
  }
  return std::bit_cast<float>(bits);
}

/// f32 -> f16 bits, round to nearest even; overflow gives +-Inf, NaN stays a quiet NaN.
inline uint16_t F32ToF16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x1ffu));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (a < 0x38800000u) {
    // Result is subnormal or zero: the value in units of 2^-24, rounded to nearest even.
    // Adding 0.5 (2^-1) in f32 lets the hardware do the rounding at the right bit position.
    const float v = std::bit_cast<float>(a) + 0.5f;
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(v) - 0x3f000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

/// Bulk conversions (reference loops; the kernels library provides vectorised equivalents).
inline void Bf16ToF32(const uint16_t* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = Bf16ToF32(in[i]);
}
inline void F16ToF32(const uint16_t* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = F16ToF32(in[i]);
}
inline void F32ToBf16(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = F32ToBf16(in[i]);
}
inline void F32ToF16(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = F32ToF16(in[i]);
}

}  // namespace qtool
