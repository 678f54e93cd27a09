// ParamsFromRange (format/spec.hpp) with internal linkage: each kernel unit inlines its own copy,
// compiled with that unit's instruction set, so no unit calls a copy that another unit's ISA
// flags compiled (and a call per group into another unit costs several percent of a group pass).
#pragma once

#include <cstdint>

#include "qtool/format/spec.hpp"

namespace qtool::detail {
namespace {

inline GroupParams GroupParamsFromRange(float lo, float hi, const QuantSpec& spec) {
  return FormatTraits<IntFormat>::Params(lo, hi, spec.bits, spec.symmetric);
}

}  // namespace
}  // namespace qtool::detail
