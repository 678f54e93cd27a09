// AVX-512 panel kernel of the runtime's product (only light headers here, so nothing compiled with
// AVX-512 is shared with the portable code): an 8 x 32 register tile of Y (16 accumulators), X
// broadcast one element at a time, B read as two vectors per k from its packed panel; blocked as
// ForEachTile blocks.
#if defined(__x86_64__)
#include <immintrin.h>

#include "../table.hpp"
#include "panel_tiles_inl.hpp"

namespace qtool::kernels::detail {
namespace {

using gemm::kPanel;
using gemm::PackedMatrix;

constexpr int kTileRows = 8;

template <int kRows>
void Tile(const float* x, int64_t ldx, const float* panel, int64_t depth, float* y, int64_t ldy,
          __mmask16 m0, __mmask16 m1, bool accumulate) {
  __m512 acc[kRows][2];
  for (int r = 0; r < kRows; ++r) {
    acc[r][0] = accumulate ? _mm512_maskz_loadu_ps(m0, y + r * ldy) : _mm512_setzero_ps();
    acc[r][1] = accumulate ? _mm512_maskz_loadu_ps(m1, y + r * ldy + 16) : _mm512_setzero_ps();
  }
  for (int64_t kk = 0; kk < depth; ++kk) {
    const __m512 b0 = _mm512_loadu_ps(panel + kk * kPanel);
    const __m512 b1 = _mm512_loadu_ps(panel + kk * kPanel + 16);
    for (int r = 0; r < kRows; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * ldx + kk]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, __mmask16,
                        __mmask16, bool);
constexpr TileFn kTiles[kTileRows + 1] = {nullptr, Tile<1>, Tile<2>, Tile<3>, Tile<4>,
                                          Tile<5>, Tile<6>, Tile<7>, Tile<8>};

__mmask16 MaskFor(int64_t cols) {
  if (cols <= 0) return 0;
  return cols >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << cols) - 1);
}

}  // namespace

void PanelsAvx512(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
                  int64_t p1, float* y, int64_t ldy) {
  ForEachTile<128, kTileRows, kPanel>(x, ldx, m, b, p0, p1, y, ldy,
                                      [&](const float* xt, const float* strip, int64_t depth,
                                          float* yt, int rows, int64_t cols, bool accumulate) {
                                        kTiles[rows](xt, ldx, strip, depth, yt, ldy, MaskFor(cols),
                                                     MaskFor(cols - 16), accumulate);
                                      });
}

}  // namespace qtool::kernels::detail
#endif
