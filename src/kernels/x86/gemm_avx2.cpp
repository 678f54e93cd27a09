// AVX2 + FMA panel kernel of the runtime's product (only light headers here, so nothing compiled
// with AVX2 is shared with the portable code). Sixteen vector registers hold a 6 x 16 tile of Y (12
// accumulators), half a packed panel's row (two vectors) and one broadcast element of X, so a panel
// is two column halves; blocked as ForEachTile blocks.
#if defined(__x86_64__)
#include <immintrin.h>

#include "../table.hpp"
#include "panel_tiles_inl.hpp"

namespace qtool::kernels::detail {
namespace {

using gemm::kPanel;
using gemm::PackedMatrix;

constexpr int kTileRows = 6;

// Lanes [0, cols) of an 8-float vector, for VMASKMOVPS.
__m256i MaskFor(int64_t cols) {
  const int64_t c = std::clamp<int64_t>(cols, 0, 8);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(c)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Y[kRows, 16] (+)= X[kRows, depth] * the half panel's [depth, 16], columns under the masks.
template <int kRows>
void Tile(const float* x, int64_t ldx, const float* half, int64_t depth, float* y, int64_t ldy,
          __m256i m0, __m256i m1, bool accumulate) {
  // Two arrays of at most 6 vectors rather than one of 12: GCC keeps arrays up to 256 bytes in
  // registers, and spills a larger one to the stack on every step.
  __m256 lo[kRows], hi[kRows];
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < depth; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(half + kk * kPanel);
    const __m256 b1 = _mm256_loadu_ps(half + kk * kPanel + 8);
#pragma GCC unroll 6
    for (int r = 0; r < kRows; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + kk);
      lo[r] = _mm256_fmadd_ps(a, b0, lo[r]);
      hi[r] = _mm256_fmadd_ps(a, b1, hi[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    if (accumulate) {
      lo[r] = _mm256_add_ps(_mm256_maskload_ps(y + r * ldy, m0), lo[r]);
      hi[r] = _mm256_add_ps(_mm256_maskload_ps(y + r * ldy + 8, m1), hi[r]);
    }
    _mm256_maskstore_ps(y + r * ldy, m0, lo[r]);
    _mm256_maskstore_ps(y + r * ldy + 8, m1, hi[r]);
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, __m256i,
                        __m256i, bool);
constexpr TileFn kTiles[kTileRows + 1] = {nullptr, Tile<1>, Tile<2>, Tile<3>,
                                          Tile<4>, Tile<5>, Tile<6>};

}  // namespace

void PanelsAvx2(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
                int64_t p1, float* y, int64_t ldy) {
  // Row blocks of 120: a whole number of tiles.
  ForEachTile<120, kTileRows, kPanel / 2>(
      x, ldx, m, b, p0, p1, y, ldy,
      [&](const float* xt, const float* strip, int64_t depth, float* yt, int rows, int64_t cols,
          bool accumulate) {
        kTiles[rows](xt, ldx, strip, depth, yt, ldy, MaskFor(cols), MaskFor(cols - 8), accumulate);
      });
}

}  // namespace qtool::kernels::detail
#endif
