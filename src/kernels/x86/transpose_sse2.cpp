// The transposes of the x86 families: SSE2 register transposes (x86-64's baseline, so this unit
// takes no ISA flags) inside the 64 x 64 tiles of TransposeTiled. Entries of the AVX2 table, which
// the AVX-512 family falls back to.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>

#include "../table.hpp"
#include "../transpose_inl.hpp"

namespace qtool::kernels::detail {

void TransposeSse2(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                   int64_t dst_stride) {
  TransposeTiled<4>(src, src_stride, rows, cols, dst, dst_stride, [&](const float* s, float* d) {
    __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + src_stride);
    __m128 r2 = _mm_loadu_ps(s + 2 * src_stride), r3 = _mm_loadu_ps(s + 3 * src_stride);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(d, r0);
    _mm_storeu_ps(d + dst_stride, r1);
    _mm_storeu_ps(d + 2 * dst_stride, r2);
    _mm_storeu_ps(d + 3 * dst_stride, r3);
  });
}

void TransposeSse2(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint8_t* dst,
                   int64_t dst_stride) {
  TransposeTiled<16>(
      src, src_stride, rows, cols, dst, dst_stride, [&](const uint8_t* s, uint8_t* d) {
        // Four rounds of interleaving row i with row i + 8: each rotates the bits of (row, column)
        // by one, so four of them swap row and column.
        __m128i x[16], y[16];
        for (int i = 0; i < 16; ++i) {
          x[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * src_stride));
        }
        for (int round = 0; round < 4; ++round) {
          for (int i = 0; i < 8; ++i) {
            y[2 * i] = _mm_unpacklo_epi8(x[i], x[i + 8]);
            y[2 * i + 1] = _mm_unpackhi_epi8(x[i], x[i + 8]);
          }
          std::copy(y, y + 16, x);
        }
        for (int i = 0; i < 16; ++i) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i * dst_stride), x[i]);
        }
      });
}

}  // namespace qtool::kernels::detail
#endif
