// Element conversion between stored dtypes and f32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtool/core/dtype.hpp"

namespace qtool {

/// Converts n elements of `type` (F32, F16, BF16 or F64) at `src` to f32. `src` need not be
/// aligned. Returns the index of the first non-finite result, or -1 when all are finite.
int64_t ConvertToF32(const std::byte* src, DType type, int64_t n, float* dst);

/// Converts n f32 values to `type` (F32, F16, BF16 or F64), rounding to nearest even.
void ConvertFromF32(const float* src, DType type, int64_t n, std::byte* dst);

}  // namespace qtool
