// Float32 matrix products of the runtime: Y = X * B^T with B pre-packed into column panels.
// Light header (no Eigen): it is included by the per-ISA kernel translation units.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace qtool::kernels {
enum class Isa;
}  // namespace qtool::kernels

namespace qtool::gemm {

/// Columns of Y (rows of B) per packed panel: two AVX-512 vectors.
inline constexpr int64_t kPanel = 32;

/// B [n, k] (row-major, as a Linear weight [out, in] is stored) rearranged for the kernels: panel p
/// holds rows p*32 .. p*32+31 of B, k-major: data[(p*k + kk)*32 + j] = B[p*32 + j][kk], rows past
/// n zero. A panel's k-th 32 floats are the 32 columns of Y that one FMA pair updates.
struct PackedMatrix {
  int64_t n = 0, k = 0;
  std::vector<float> data;

  int64_t panels() const { return (n + kPanel - 1) / kPanel; }
  /// Row r of B, unpacked.
  void UnpackRow(int64_t r, float* out) const;
};

/// Packs B [n, k] whose rows lie `ldb` floats apart (0: ldb = k).
PackedMatrix Pack(const float* b, int64_t n, int64_t k, int64_t ldb = 0);

/// Y[m, n] = X[m, k] * B^T over panels [p0, p1) (columns p0*32 .. min(n, p1*32)). X and Y
/// row-major with leading dimensions ldx and ldy. Sums run over k in increasing order, blocked.
using PanelKernel = void (*)(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b,
                             int64_t p0, int64_t p1, float* y, int64_t ldy);

/// The vector kernels' blocking of Y[m, panels p0 .. p1) = X * B^T: blocks of kRowBlock rows of X
/// and kDepthBlock of k (so that a block of X stays in L2 and a panel's slice in L1 while they are
/// reused), then panels, then strips of kStrip of a panel's columns, then tiles of up to kTileRows
/// rows. Calls tile(x, strip, depth, y, rows, cols, accumulate) with X, the strip's k-slice of the
/// packed panel and Y at the tile's first row and the strip's first column, `cols` the strip's
/// columns inside Y (up to kStrip), and `accumulate` false on the first slice of k (Y is then
/// written, not added to).
template <int64_t kRowBlock, int kTileRows, int64_t kStrip, typename Tile>
void ForEachTile(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
                 int64_t p1, float* y, int64_t ldy, Tile&& tile) {
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

/// Portable reference of the panel kernel (normative; the vector kernels match it to rounding).
void PanelsRef(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
               int64_t p1, float* y, int64_t ldy);
#if defined(__x86_64__)
void PanelsAvx2(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
                int64_t p1, float* y, int64_t ldy);
void PanelsAvx512(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
                  int64_t p1, float* y, int64_t ldy);
#endif

/// The kernel of a kernel family: AVX2 (with FMA) or AVX-512; the reference for the others.
PanelKernel KernelFor(kernels::Isa isa);
/// The kernel of the library's active family (kernels::ActiveIsa).
PanelKernel BestKernel();

/// Y = X * B^T with `threads` workers splitting the panels (fewer for small products).
void MatMul(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, float* y, int64_t ldy,
            int threads);

}  // namespace qtool::gemm
