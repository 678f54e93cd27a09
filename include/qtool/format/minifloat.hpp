// Small floating point formats (FP8, FP6, FP4) and the E8M0 shared scale of the OCP MX formats.
//
// A format with E exponent bits, M mantissa bits and bias B stores sign s, exponent field e and
// mantissa field m; its value is (-1)^s * 2^(e-B) * (1 + m/2^M) for e > 0 and
// (-1)^s * 2^(1-B) * (m/2^M) for e == 0 (subnormals). Sources: OCP 8-bit Floating Point
// Specification (OFP8) rev 1.0 and OCP Microscaling Formats (MX) v1.0, section 5.3.
//
//   format   E M bias  max       special values
//   E4M3fn   4 3  7    448       no infinities; NaN = S.1111.111 (0x7f, 0xff)
//   E5M2     5 2 15    57344     IEEE-like: +-Inf = S.11111.00, NaN = S.11111.{01,10,11}
//   E3M2     3 2  3    28        none (MX FP6)
//   E2M3     2 3  1    7.5       none (MX FP6)
//   E2M1     2 1  1    6         none (MX FP4: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives)
//
// Encoding f32 -> format rounds to nearest, ties to even, as if the exponent range were unbounded
// (IEEE 754 section 4.3); a rounded magnitude above the format's max then overflows:
//   saturating:     +-max (also for +-Inf input);
//   non-saturating: +-Inf for E5M2, NaN for E4M3fn; formats without Inf/NaN always saturate.
// So for E4M3fn the value 464 (half-way between 448 and the would-be 480) rounds to 448 (even
// mantissa) and anything above 464 overflows. NaN input encodes to the canonical NaN (0x7f | sign
// for E4M3fn, 0x7e | sign for E5M2) and to +0 in the formats that have no NaN. Negative values
// that round to zero keep their sign (-0).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>

namespace qtool {

struct MinifloatFormat {
  std::string_view name;
  int exp_bits;
  int man_bits;
  int bias;
  bool has_inf;  // top exponent field reserved for Inf/NaN (IEEE-like)
  bool has_nan;  // E4M3fn: only the all-ones code is NaN

  constexpr int bits() const { return 1 + exp_bits + man_bits; }
  constexpr int num_codes() const { return 1 << bits(); }
  constexpr uint32_t sign_bit() const { return 1u << (exp_bits + man_bits); }
  /// Exponent of the largest binade holding finite values (emax of the MX spec).
  constexpr int emax() const {
    const int top = (1 << exp_bits) - 1;
    return (has_inf ? top - 1 : top) - bias;
  }
  /// Largest finite magnitude.
  float max() const {
    // Mantissa of the max: all ones, except E4M3fn where all ones at the top exponent is NaN.
    const int mmax = (1 << man_bits) - 1 - (has_nan && !has_inf ? 1 : 0);
    return std::ldexp(1.0f + static_cast<float>(mmax) / static_cast<float>(1 << man_bits), emax());
  }
  /// Exponent of the smallest normal binade (1 - bias).
  constexpr int emin() const { return 1 - bias; }
};

inline constexpr MinifloatFormat kE4M3 = {"e4m3", 4, 3, 7, false, true};
inline constexpr MinifloatFormat kE5M2 = {"e5m2", 5, 2, 15, true, true};
inline constexpr MinifloatFormat kE3M2 = {"e3m2", 3, 2, 3, false, false};
inline constexpr MinifloatFormat kE2M3 = {"e2m3", 2, 3, 1, false, false};
inline constexpr MinifloatFormat kE2M1 = {"e2m1", 2, 1, 1, false, false};

/// The format named "e4m3", "e5m2", "e3m2", "e2m3" or "e2m1"; nullptr for another name.
inline const MinifloatFormat* FindMinifloat(std::string_view name) {
  for (const MinifloatFormat* f : {&kE4M3, &kE5M2, &kE3M2, &kE2M3, &kE2M1}) {
    if (f->name == name) return f;
  }
  return nullptr;
}

/// Value of `code` (its low bits() bits) in format `f`.
inline float DecodeMinifloat(uint32_t code, const MinifloatFormat& f) {
  const uint32_t man_mask = (1u << f.man_bits) - 1;
  const uint32_t exp_field = (code >> f.man_bits) & ((1u << f.exp_bits) - 1);
  const uint32_t man = code & man_mask;
  const bool neg = (code & f.sign_bit()) != 0;
  const uint32_t top = (1u << f.exp_bits) - 1;
  float v;
  if (f.has_inf && exp_field == top) {
    v = man == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else if (f.has_nan && !f.has_inf && exp_field == top && man == man_mask) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (exp_field == 0) {
    v = std::ldexp(static_cast<float>(man), f.emin() - f.man_bits);
  } else {
    v = std::ldexp(static_cast<float>(man | (1u << f.man_bits)),
                   static_cast<int>(exp_field) - f.bias - f.man_bits);
  }
  return neg ? -v : v;
}

/// Code of the largest finite magnitude (sign bit clear).
constexpr uint32_t MaxFiniteCode(const MinifloatFormat& f) {
  const uint32_t top = (1u << f.exp_bits) - 1, mant = (1u << f.man_bits) - 1;
  if (f.has_inf) return ((top - 1) << f.man_bits) | mant;
  return (top << f.man_bits) | (f.has_nan ? mant - 1 : mant);
}

/// Code of `x` in format `f`: round to nearest even, overflow as described at the top of the file.
/// Works on the f32 bit fields, like F32ToF16 (half.hpp), in the default rounding mode.
inline uint32_t EncodeMinifloat(float x, const MinifloatFormat& f, bool saturate = true) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (bits >> 31) ? f.sign_bit() : 0u;
  const uint32_t a = bits & 0x7fffffffu;
  const uint32_t top = (1u << f.exp_bits) - 1, mant = (1u << f.man_bits) - 1;
  const uint32_t nan_code =
      f.has_inf ? (top << f.man_bits) | (1u << (f.man_bits - 1)) : (top << f.man_bits) | mant;
  if (a > 0x7f800000u) return f.has_nan ? sign | nan_code : 0u;
  uint32_t r;
  const int emin = 1 - f.bias;
  if (a < static_cast<uint32_t>(emin + 127) << 23) {
    // Below the smallest normal: count quanta of 2^(emin - M). Adding 2^(emin - M + 23) puts
    // that quantum at the last f32 mantissa bit, so the FPU's add rounds to nearest even there;
    // the count 2^M (rounded up to the smallest normal) is also the right code.
    const uint32_t magic_bits = static_cast<uint32_t>(emin - f.man_bits + 23 + 127) << 23;
    const float v = std::bit_cast<float>(a) + std::bit_cast<float>(magic_bits);
    r = std::bit_cast<uint32_t>(v) - magic_bits;
  } else {
    // Normal: round the 23 - M dropped mantissa bits to even, then rebias the exponent. A carry
    // out of the mantissa moves up one binade, which is the right code.
    const int shift = 23 - f.man_bits;
    const uint32_t rounded = a + ((1u << (shift - 1)) - 1) + ((a >> shift) & 1u);
    r = (rounded >> shift) - (static_cast<uint32_t>(127 - f.bias) << f.man_bits);
    if (a >= 0x7f800000u) r = ~0u;  // Inf
  }
  const uint32_t max_code = MaxFiniteCode(f);
  if (r <= max_code) return sign | r;
  if (saturate || !(f.has_inf || f.has_nan)) return sign | max_code;
  return sign | (f.has_inf ? top << f.man_bits : nan_code);
}

/// Table of the values of every code of `f` (num_codes() entries).
struct MinifloatTable {
  float value[256];
  explicit MinifloatTable(const MinifloatFormat& f) {
    for (int c = 0; c < f.num_codes(); ++c) value[c] = DecodeMinifloat(static_cast<uint32_t>(c), f);
  }
};

// E8M0 (OCP MX v1.0, section 5.4.1): an unsigned biased exponent, value 2^(e - 127) for e in
// 0..254 and NaN for 0xff. It has no zero and no sign.
inline constexpr uint8_t kE8M0Nan = 0xff;

inline float DecodeE8M0(uint8_t e) {
  if (e == kE8M0Nan) return std::numeric_limits<float>::quiet_NaN();
  // 2^(e-127): e = 0 is 2^-127, an f32 subnormal, so build it with ldexp rather than bit fields.
  return std::ldexp(1.0f, static_cast<int>(e) - 127);
}

/// Shared scale of an MX block (OCP MX v1.0, section 6.3): X = 2^(floor(log2(amax)) - emax_elem),
/// where amax is the largest magnitude in the block and emax_elem the element format's largest
/// exponent. The exponent is clamped to E8M0's range [-127, 127]. An all-zero block (amax = 0)
/// gets the smallest scale 2^-127; a block holding NaN or Inf gets the NaN scale.
inline uint8_t E8M0ScaleForBlock(float amax, int emax_elem) {
  if (!std::isfinite(amax)) return kE8M0Nan;
  if (amax == 0.0f) return 0;
  // floor(log2(amax)) read from the f32 fields: exact for normal and subnormal inputs.
  int e;
  std::frexp(amax, &e);
  const int shared = std::clamp(e - 1 - emax_elem, -127, 127);
  return static_cast<uint8_t>(shared + 127);
}

}  // namespace qtool
