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
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>

#include "qtool/quant/spec.hpp"

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
const MinifloatFormat* FindMinifloat(std::string_view name);

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

/// Code of `x` in format `f`: round to nearest even, overflow as described at the top of the file.
inline uint32_t EncodeMinifloat(float x, const MinifloatFormat& f, bool saturate = true) {
  const uint32_t sign = std::signbit(x) ? f.sign_bit() : 0u;
  const uint32_t top = (1u << f.exp_bits) - 1;
  if (std::isnan(x)) {
    if (!f.has_nan) return 0;
    return sign | (f.has_inf ? (top << f.man_bits) | (1u << (f.man_bits - 1))
                             : (top << f.man_bits) | ((1u << f.man_bits) - 1));
  }
  const float a = std::fabs(x);
  const float max = f.max();
  const bool overflow_to_special = !saturate && (f.has_inf || f.has_nan);
  auto overflow = [&]() -> uint32_t {
    if (!overflow_to_special) return sign | EncodeMinifloat(max, f);
    return sign | (f.has_inf ? top << f.man_bits : (top << f.man_bits) | ((1u << f.man_bits) - 1));
  };
  if (std::isinf(a)) return overflow();
  // Quantum of a's binade (the subnormal quantum below the normal range); scaling by a power of
  // two is exact, so r is the exact RNE of a in units of the quantum (r <= 2^(M+1)).
  int e;
  std::frexp(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
  const int qexp = std::max(e - 1, f.emin()) - f.man_bits;
  const float r = RoundHalfEvenSmall(std::ldexp(a, -qexp));
  const float v = std::ldexp(r, qexp);
  if (v > max) return overflow();
  if (r == 0.0f) return sign;
  // Re-derive the fields from the rounded value (it may have moved up one binade).
  int ve;
  std::frexp(v, &ve);
  const int unbiased = ve - 1;
  if (unbiased < f.emin()) return sign | static_cast<uint32_t>(r);  // subnormal: m = r
  const uint32_t exp_field = static_cast<uint32_t>(unbiased + f.bias);
  const uint32_t man =
      static_cast<uint32_t>(std::ldexp(v, f.man_bits - unbiased)) - (1u << f.man_bits);
  return sign | (exp_field << f.man_bits) | man;
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
