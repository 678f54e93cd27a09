// The f32 operations on 8 lanes that the AVX2 and AVX-512 units share: the vector operations of
// ErrorLanes and FirstNonFiniteWith (see common_inl.hpp), whose error sums have 8 lanes on every
// family. Include it only from units compiled for AVX2 or more; everything here has internal
// linkage.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace qtool::kernels::detail {
namespace {

struct YmmOps {
  using Vec = __m256;
  static constexpr int64_t kWidth = 8;
  static Vec Zero() { return _mm256_setzero_ps(); }
  static Vec LoadRuns(const float* p) { return _mm256_loadu2_m128(p + 8, p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec Fma(Vec acc, Vec a, Vec b) { return _mm256_fmadd_ps(a, b, acc); }
  static Vec Abs(Vec v) {
    return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  }
  // MAXPS returns its second operand unless the first is larger: std::max(acc, v).
  static Vec Max(Vec acc, Vec v) { return _mm256_max_ps(v, acc); }
  static bool AnyNonFinite(const float* p) {
    const __m256i e = _mm256_set1_epi32(0x7f800000);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_and_si256(v, e), e)) != 0;
  }
};

}  // namespace
}  // namespace qtool::kernels::detail

// The first entries of an x86 family's table, by name: functions its unit defines under these
// names, with `Ops` its vector operations (see GemmW4A16With). The unit's table goes on with the
// entries it has of the rest of QTOOL_KERNEL_LIST (designated initialisers keep the list's order).
#define QTOOL_X86_TABLE_ENTRIES(Ops)                                                         \
  .bf16_to_f32 = Bf16ToF32, .f16_to_f32 = F16ToF32, .f32_to_bf16 = F32ToBf16,                \
  .f32_to_f16 = F32ToF16, .first_non_finite = FirstNonFiniteWith<YmmOps>,                    \
  .accumulate_errors = AccumulateErrorsWith<YmmOps>, .min_max = MinMax,                      \
  .quantize_groups = QuantizeGroupsWith<MinMax, QuantizeCodes, DequantizeCodes>,             \
  .quantize_stored_rows = QuantizeStoredRows, .quantize_codes = QuantizeCodes,               \
  .dequantize_codes = DequantizeCodes, .pack_codes = PackCodes, .unpack_codes = UnpackCodes, \
  .quantize_activations = QuantizeActivations, .gemm_w8a8 = GemmW8A8, .gemm_w4a8 = GemmW4A8, \
  .gemm_w4a16 = GemmW4A16With<Ops>, .gemv_nf4 = GemvNf4With<Ops>
