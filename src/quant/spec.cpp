#include "qtool/quant/spec.hpp"

#include <cmath>

#include "qtool/core/error.hpp"

namespace qtool {

void QuantSpec::Validate() const {
  QTOOL_CHECK(bits >= 2 && bits <= 8, OptionError, "bits must be in 2..8, got {}", bits);
  QTOOL_CHECK(granularity != Granularity::kGroup || group_size >= 1, OptionError,
              "group size must be at least 1, got {}", group_size);
  QTOOL_CHECK(!flat_groups || granularity == Granularity::kGroup, OptionError,
              "flat groups need per-group granularity");
}

std::string QuantSpec::ToString() const {
  std::string g = granularity == Granularity::kTensor ? "per-tensor"
                  : granularity == Granularity::kChannel
                      ? "per-channel"
                      : fmt::format("g{}{}", group_size, flat_groups ? " flat" : "");
  return fmt::format("int{} {} {}", bits, symmetric ? "sym" : "asym", g);
}

GroupParams ParamsFromRange(float lo, float hi, const QuantSpec& spec) {
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  GroupParams p;
  if (spec.symmetric) {
    const float amax = std::max(-lo, hi);
    p.scale = amax / static_cast<float>(spec.qmax());
    p.zero = spec.code_offset();
  } else {
    const int32_t umax = spec.qmax();
    p.scale = (hi - lo) / static_cast<float>(umax);
    if (std::isinf(p.scale)) {  // hi - lo overflowed float; the quotient itself is finite
      p.scale = static_cast<float>((static_cast<double>(hi) - lo) / umax);
    }
    if (p.scale > 0.0f && std::isfinite(p.scale)) {
      const float z = RoundHalfEvenSmall(std::min(-lo / p.scale, static_cast<float>(umax)));
      p.zero = static_cast<int32_t>(z);
    }
  }
  if (!(p.scale > 0.0f) || !std::isfinite(p.scale)) {
    p.scale = 1.0f;  // an all-zero group (or one too small to scale): any finite scale is exact
    p.zero = spec.code_offset();
  }
  return p;
}

}  // namespace qtool
