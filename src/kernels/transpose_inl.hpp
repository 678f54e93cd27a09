// The tiling of the transposes (the reference and the SSE2 entries of the kernel table). Light
// header: included by kernel translation units.
#pragma once

#include <algorithm>
#include <cstdint>

#include "qtool/kernels/gemm.hpp"

namespace qtool::kernels::detail {

/// Transposes in 64 x 64 tiles (4 KB to 16 KB read and written, both in L1), each tile in blocks
/// of kBlock x kBlock by `block` (pointers to the block's first source and destination elements),
/// the edges by TransposeRef.
template <int64_t kBlock, typename T, typename BlockFn>
void TransposeTiled(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst,
                    int64_t dst_stride, BlockFn&& block) {
  constexpr int64_t kTile = 64;
  for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
    const int64_t i1 = std::min(rows, i0 + kTile);
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t j1 = std::min(cols, j0 + kTile);
      int64_t i = i0;
      for (; i + kBlock <= i1; i += kBlock) {
        const T* s = src + i * src_stride;
        int64_t j = j0;
        for (; j + kBlock <= j1; j += kBlock) block(s + j, dst + j * dst_stride + i);
        gemm::TransposeRef(s + j, src_stride, kBlock, j1 - j, dst + j * dst_stride + i, dst_stride);
      }
      gemm::TransposeRef(src + i * src_stride + j0, src_stride, i1 - i, j1 - j0,
                         dst + j0 * dst_stride + i, dst_stride);
    }
  }
}

}  // namespace qtool::kernels::detail
