// Integer quantisation specs and the affine (uniform) grid.
//
// Conventions (all integer codecs):
// - Weights are matrices [rows, cols] with rows = output channels, cols = input elements.
// - Granularity: per-tensor (one scale), per-channel (one scale per row), or per-group of
//   `group_size` consecutive input elements within a row; a row whose length is not a multiple
//   of the group size ends in a shorter group.
// - Symmetric, b bits: scale = max|x| / (2^(b-1) - 1), q = clamp(rne(x / scale), -2^(b-1),
// 2^(b-1)-1),
//   x^ = q * scale.
// - Asymmetric, b bits: the range is widened to include 0 (lo = min(min x, 0), hi = max(max x, 0)),
//   scale = (hi - lo) / (2^b - 1), zero = clamp(rne(-lo / scale), 0, 2^b - 1),
//   q = clamp(rne(x / scale) + zero, 0, 2^b - 1), x^ = (q - zero) * scale.
// - rne is round half to even. A group whose range is 0 (all zeros) gets scale 1, never 0 or NaN.
// - Stored codes are unsigned, u in [0, 2^b): asymmetric u = q; symmetric u = q + 2^(b-1)
//   (offset binary), so x^ = (u - z) * scale with z = 2^(b-1) for symmetric specs.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>

#include "qtool/core/error.hpp"
#include "qtool/format/format.hpp"
#include "qtool/format/traits.hpp"

namespace qtool {

struct QuantSpec {
  int bits = 4;
  bool symmetric = true;
  Granularity granularity = Granularity::kGroup;
  int64_t group_size = 128;  // used when granularity == kGroup
  /// Groups of `group_size` consecutive elements of the row-major flattened matrix, which span two
  /// rows when group_size does not divide the row length (the definition of bitsandbytes-style
  /// blockwise and of "reshape(-1, g)" reference scripts). Integer codec only.
  bool flat_groups = false;

  /// Throws OptionError for bits outside 2..8 or a group size below 1.
  void Validate() const {
    QTOOL_CHECK(bits >= 2 && bits <= 8, OptionError, "bits must be in 2..8, got {}", bits);
    QTOOL_CHECK(granularity != Granularity::kGroup || group_size >= 1, OptionError,
                "group size must be at least 1, got {}", group_size);
    QTOOL_CHECK(!flat_groups || granularity == Granularity::kGroup, OptionError,
                "flat groups need per-group granularity");
  }
  /// Elements per group along a row of `cols` elements (cols itself for per-channel/per-tensor).
  int64_t GroupLen(int64_t cols) const {
    return granularity == Granularity::kGroup && group_size < cols ? group_size : cols;
  }
  /// Groups per row of `cols` elements.
  int64_t GroupsPerRow(int64_t cols) const {
    const int64_t g = GroupLen(cols);
    return g == 0 ? 0 : (cols + g - 1) / g;
  }
  int32_t qmin() const { return symmetric ? -(1 << (bits - 1)) : 0; }
  int32_t qmax() const { return symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1; }
  /// Offset from the signed code to the stored unsigned code (2^(b-1) symmetric, 0 asymmetric).
  int32_t code_offset() const { return symmetric ? 1 << (bits - 1) : 0; }
  /// "int4 sym g128", "int8 asym per-channel", ...
  std::string ToString() const {
    const std::string g = granularity == Granularity::kTensor ? "per-tensor"
                          : granularity == Granularity::kChannel
                              ? "per-channel"
                              : fmt::format("g{}{}", group_size, flat_groups ? " flat" : "");
    return fmt::format("int{} {} {}", bits, symmetric ? "sym" : "asym", g);
  }
};

/// Parameters for a group whose chosen range is [lo, hi] (lo <= 0 <= hi is enforced by widening).
/// Symmetric specs use max(|lo|, |hi|). Observers choose the range; min-max uses the data's range.
inline GroupParams ParamsFromRange(float lo, float hi, const QuantSpec& spec) {
  return FormatTraits<IntFormat>::Params(lo, hi, spec.bits, spec.symmetric);
}

/// The integer format's scalar reference (format/traits.hpp, FormatTraits<IntFormat>) under the
/// names the kernels and solvers use.
inline float RoundHalfEvenSmall(float v) { return FormatTraits<IntFormat>::RoundHalfEven(v); }
inline uint8_t QuantizeValue(float x, GroupParams p, int32_t umax) {
  return FormatTraits<IntFormat>::Encode(x, p, umax);
}
inline float DequantizeValue(uint8_t u, GroupParams p) {
  return FormatTraits<IntFormat>::Decode(u, p);
}

/// The QuantSpec of an integer format (its observer and g_idx aside).
inline QuantSpec IntSpec(const IntFormat& f) {
  return {.bits = f.bits,
          .symmetric = f.symmetric,
          .granularity = f.granularity,
          .group_size = f.group,
          .flat_groups = f.flat};
}

}  // namespace qtool
