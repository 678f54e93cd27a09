// The body of ParamsFromRange with internal linkage: spec.cpp defines the public function with
// it, and each kernel unit inlines its own copy, compiled with that unit's instruction set (a
// call per group into another unit costs several percent of a group pass).
#pragma once

#include <cstdint>

#include "qtool/quant/spec.hpp"

namespace qtool::detail {
namespace {

inline GroupParams GroupParamsFromRange(float lo, float hi, const QuantSpec& spec) {
  return FormatTraits<IntFormat>::Params(lo, hi, spec.bits, spec.symmetric);
}

}  // namespace
}  // namespace qtool::detail
