// AVX-512 micro-kernel of the solvers' GEMM: an 8 x 32 tile in 16 zmm accumulators, one broadcast
// of A and two loads of B per step.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "../table.hpp"

namespace qtool::kernels::detail {

using gemm::kMr;
using gemm::kNr;

void MicroKernelAvx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                       float alpha) {
  // C is touched only after the k loop: fetch its lines now so that the misses overlap the work.
  for (int i = 0; i < kMr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
  __m512 acc[kMr][2];
  for (int i = 0; i < kMr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_loadu_ps(b + p * kNr);
    const __m512 b1 = _mm512_loadu_ps(b + p * kNr + 16);
    const float* ap = a + p * kMr;
    for (int i = 0; i < kMr; ++i) {
      const __m512 ai = _mm512_set1_ps(ap[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
  for (int i = 0; i < kMr; ++i) {
    float* ci = c + i * ldc;
    _mm512_storeu_ps(ci, _mm512_fmadd_ps(va, acc[i][0], _mm512_loadu_ps(ci)));
    _mm512_storeu_ps(ci + 16, _mm512_fmadd_ps(va, acc[i][1], _mm512_loadu_ps(ci + 16)));
  }
}

}  // namespace qtool::kernels::detail
#endif
