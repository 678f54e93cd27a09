// The blocking shared by the x86 panel kernels of the runtime's product (gemm_avx2.cpp,
// gemm_avx512.cpp). Light header: included by translation units compiled for one ISA.
#pragma once

#include <algorithm>
#include <cstdint>

#include "qtool/kernels/gemm.hpp"

namespace qtool::kernels::detail {

/// The vector kernels' blocking of Y[m, panels p0 .. p1) = X * B^T: blocks of kRowBlock rows of X
/// and kDepthBlock of k (so that a block of X stays in L2 and a panel's slice in L1 while they are
/// reused), then panels, then strips of kStrip of a panel's columns, then tiles of up to kTileRows
/// rows. Calls tile(x, strip, depth, y, rows, cols, accumulate) with X, the strip's k-slice of the
/// packed panel and Y at the tile's first row and the strip's first column, `cols` the strip's
/// columns inside Y (up to kStrip), and `accumulate` false on the first slice of k (Y is then
/// written, not added to).
template <int64_t kRowBlock, int kTileRows, int64_t kStrip, typename Tile>
void ForEachTile(const float* x, int64_t ldx, int64_t m, const gemm::PackedMatrix& b, int64_t p0,
                 int64_t p1, float* y, int64_t ldy, Tile&& tile) {
  using gemm::kPanel;
  static_assert(kPanel % kStrip == 0);
  constexpr int64_t kDepthBlock = 256;
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t i1 = std::min(m, i0 + kRowBlock);
    for (int64_t k0 = 0; k0 < b.k; k0 += kDepthBlock) {
      const int64_t depth = std::min(b.k - k0, kDepthBlock);
      for (int64_t p = p0; p < p1; ++p) {
        const float* panel = b.data.data() + (p * b.k + k0) * kPanel;
        for (int64_t c0 = p * kPanel; c0 < std::min(b.n, (p + 1) * kPanel); c0 += kStrip) {
          const int64_t cols = std::min(kStrip, b.n - c0);
          for (int64_t i = i0; i < i1; i += kTileRows) {
            tile(x + i * ldx + k0, panel + c0 % kPanel, depth, y + i * ldy + c0,
                 static_cast<int>(std::min<int64_t>(kTileRows, i1 - i)), cols, k0 > 0);
          }
        }
      }
    }
  }
}

}  // namespace qtool::kernels::detail
