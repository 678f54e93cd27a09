// The integer GEMMs of the AVX2 family with AVX-VNNI (Alder Lake and later client cores, Sierra
// Forest and later E-core Xeons): VPDPBUSD on 256-bit vectors adds four u8 x s8 products into
// each int32 lane without saturation, one instruction per step where AVX2 takes three or four.
// The drivers are those of the AVX2 unit (int_gemm_avx2_inl.hpp).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "int_gemm_avx2_inl.hpp"

namespace qtool::kernels::detail {
namespace {

// W8A8 weights enter as they are stored (kW8Offset 0): the zero point is taken off afterwards.
struct VnniDot {
  static constexpr int32_t kW8Offset = 0;
  using W8 = __m256i;
  static W8 W8Weights(__m256i u) { return u; }
  static __m256i W8Step(__m256i acc, W8 u, __m256i q) { return _mm256_dpbusd_avx_epi32(acc, u, q); }
  static __m256i U4Step(__m256i acc, __m256i u, __m256i a) {
    return _mm256_dpbusd_avx_epi32(acc, u, a);
  }
  static __m256i U4Steps(__m256i acc, __m256i u0, __m256i a0, __m256i u1, __m256i a1) {
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, u0, a0), u1, a1);
  }
};

}  // namespace

KernelTable WithAvxVnniGemms(const KernelTable& t) {
  KernelTable out = t;
  out.gemm_w8a8 = GemmW8A8With<VnniDot>;
  out.gemm_w4a8 = GemmW4A8With<VnniDot>;
  return out;
}

}  // namespace qtool::kernels::detail
#endif
