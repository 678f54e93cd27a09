// The body of ParamsFromRange with internal linkage: spec.cpp defines the public function with
// it, and each kernel unit inlines its own copy, compiled with that unit's instruction set (a
// call per group into another unit costs several percent of a group pass).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "qtool/quant/spec.hpp"

namespace qtool::detail {
namespace {

inline GroupParams GroupParamsFromRange(float lo, float hi, const QuantSpec& spec) {
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

}  // namespace
}  // namespace qtool::detail
