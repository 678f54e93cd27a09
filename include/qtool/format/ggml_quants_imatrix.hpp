// Importance-weighted ggml quantisers: what llama-quantize runs for a tensor when it is given an
// importance matrix (`--imatrix`), for the types whose weighted search ggml_quants.hpp does not
// hold, and QuantizeWeighted, which picks the weighted or the reference quantiser by type.
//
// Importances are llama.cpp's: per input column, the mean of the squared activations that the
// column multiplies (in_sum2 / counts of an imatrix file). The searches follow llama.cpp's
// `quantize_row_*_impl` in float32, step for step:
//  - Q4_0/Q5_0: the symmetric search (SymmetricSearch, make_qx_quants) on 8/16 levels each side,
//  with
//    weights imatrix[j] * sqrt(sigma^2 + x^2), sigma^2 the mean square of the whole row;
//  - Q4_1/Q5_1: the scale-and-min search (make_qkx3_quants: rmin -0.9, step 0.05, 36 steps) with
//    the same weights;
//  - Q5_K: Q4_K's weighted search with 31 levels (see QuantizeQ4_K);
//  - Q6_K: QuantizeQ6_K's own imatrix argument.
// Q8_0, TQ1_0, TQ2_0, MXFP4 and the float types ignore importances in llama.cpp too.
//
// The row-wide sigma^2 makes a row the unit: `n` is one row's length (a multiple of the block
// size) and `imatrix` has n importances.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "qtool/format/ggml_quants.hpp"

namespace qtool::ggml {

namespace detail {

// Mean square of a row, summed in float in order (llama.cpp's sigma2 for the legacy types).
inline float RowMeanSquare(const float* x, int64_t n) {
  float sum_x2 = 0;
  for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
  return sum_x2 / static_cast<float>(n);
}

// weight[j] = imatrix[j] * sqrt(sigma2 + x[j]^2) for one block of 32.
inline void LegacyWeights(const float* x, const float* imatrix, float sigma2, float* weight) {
  for (int j = 0; j < kQK32; ++j) weight[j] = imatrix[j] * std::sqrt(sigma2 + x[j] * x[j]);
}

}  // namespace detail

/// Q4_0 with importances (one row of n values).
inline void QuantizeQ4_0Weighted(const float* x, BlockQ4_0* b, int64_t n, const float* imatrix) {
  const float sigma2 = detail::RowMeanSquare(x, n);
  float weight[kQK32];
  int8_t L[kQK32];
  for (int64_t i = 0; i < n / kQK32; ++i) {
    const float* xb = x + i * kQK32;
    detail::LegacyWeights(xb, imatrix + i * kQK32, sigma2, weight);
    const float d = detail::SymmetricSearch(kQK32, 8, xb, L, weight);
    b[i].d = F32ToF16(d);
    for (int j = 0; j < 16; ++j) b[i].qs[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
  }
}

/// Q5_0 with importances (one row of n values).
inline void QuantizeQ5_0Weighted(const float* x, BlockQ5_0* b, int64_t n, const float* imatrix) {
  const float sigma2 = detail::RowMeanSquare(x, n);
  float weight[kQK32];
  int8_t L[kQK32];
  for (int64_t i = 0; i < n / kQK32; ++i) {
    const float* xb = x + i * kQK32;
    detail::LegacyWeights(xb, imatrix + i * kQK32, sigma2, weight);
    const float d = detail::SymmetricSearch(kQK32, 16, xb, L, weight);
    b[i].d = F32ToF16(d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const auto q0 = static_cast<uint8_t>(L[j]);
      const auto q1 = static_cast<uint8_t>(L[j + 16]);
      b[i].qs[j] = static_cast<uint8_t>((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
    }
    std::memcpy(b[i].qh, &qh, 4);
  }
}

/// Q4_1 with importances (one row of n values).
inline void QuantizeQ4_1Weighted(const float* x, BlockQ4_1* b, int64_t n, const float* imatrix) {
  const float sigma2 = detail::RowMeanSquare(x, n);
  float weight[kQK32];
  uint8_t L[kQK32];
  uint8_t Laux[kQK32];
  for (int64_t i = 0; i < n / kQK32; ++i) {
    const float* xb = x + i * kQK32;
    detail::LegacyWeights(xb, imatrix + i * kQK32, sigma2, weight);
    float min = 0;
    const float d =
        detail::ScaleMinSearch(kQK32, 15, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
    b[i].d = F32ToF16(d);
    b[i].m = F32ToF16(-min);
    for (int j = 0; j < 16; ++j) b[i].qs[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
  }
}

/// Q5_1 with importances (one row of n values).
inline void QuantizeQ5_1Weighted(const float* x, BlockQ5_1* b, int64_t n, const float* imatrix) {
  const float sigma2 = detail::RowMeanSquare(x, n);
  float weight[kQK32];
  uint8_t L[kQK32];
  uint8_t Laux[kQK32];
  for (int64_t i = 0; i < n / kQK32; ++i) {
    const float* xb = x + i * kQK32;
    detail::LegacyWeights(xb, imatrix + i * kQK32, sigma2, weight);
    float min = 0;
    const float d =
        detail::ScaleMinSearch(kQK32, 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
    b[i].d = F32ToF16(d);
    b[i].m = F32ToF16(-min);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      b[i].qs[j] = static_cast<uint8_t>((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
      qh |= static_cast<uint32_t>((L[j] >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((L[j + 16] >> 4) & 1) << (j + 16);
    }
    std::memcpy(b[i].qh, &qh, 4);
  }
}

/// Q5_K with importances: Q4_K's weighted search (QuantizeQ4_K) on 32 levels.
inline void QuantizeQ5_KWeighted(const float* x, BlockQ5_K* b, int64_t n, const float* imatrix) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    // rmin and nstep are the reference search's; the weighted branch uses its own sweep.
    detail::QuantizeScaleMinK(x, &b[i].d, &b[i].dmin, b[i].scales, L, 31, -0.5f, 15,
                              imatrix + i * kQKK);
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int g = 0; g < 4; ++g) {  // groups of 64 values: fifth bits at bits 2g and 2g + 1
      const uint8_t* Lg = L + 64 * g;
      for (int l = 0; l < 32; ++l) {
        b[i].qh[l] |=
            static_cast<uint8_t>(((Lg[l] >> 4) << (2 * g)) | ((Lg[l + 32] >> 4) << (2 * g + 1)));
        b[i].qs[32 * g + l] = static_cast<uint8_t>((Lg[l] & 0xF) | ((Lg[l + 32] & 0xF) << 4));
      }
    }
  }
}

/// Encodes one row of `n` values as `type` into `dst` as llama.cpp's quantiser does: with
/// `imatrix` (n importances) the importance-weighted search of the types that have one, the
/// reference quantiser (Quantize) for the others and when `imatrix` is null.
inline void QuantizeWeighted(Type type, const float* x, void* dst, int64_t n,
                             const float* imatrix) {
  if (imatrix == nullptr) return Quantize(type, x, dst, n);
  QTOOL_DASSERT(n % Traits(type).block_size == 0);
  switch (type) {
    case Type::kQ4_0:
      return QuantizeQ4_0Weighted(x, static_cast<BlockQ4_0*>(dst), n, imatrix);
    case Type::kQ4_1:
      return QuantizeQ4_1Weighted(x, static_cast<BlockQ4_1*>(dst), n, imatrix);
    case Type::kQ5_0:
      return QuantizeQ5_0Weighted(x, static_cast<BlockQ5_0*>(dst), n, imatrix);
    case Type::kQ5_1:
      return QuantizeQ5_1Weighted(x, static_cast<BlockQ5_1*>(dst), n, imatrix);
    case Type::kQ2_K:
      return QuantizeQ2_K(x, static_cast<BlockQ2_K*>(dst), n, imatrix);
    case Type::kQ3_K:
      return QuantizeQ3_K(x, static_cast<BlockQ3_K*>(dst), n, imatrix);
    case Type::kQ4_K:
      return QuantizeQ4_K(x, static_cast<BlockQ4_K*>(dst), n, imatrix);
    case Type::kQ5_K:
      return QuantizeQ5_KWeighted(x, static_cast<BlockQ5_K*>(dst), n, imatrix);
    case Type::kQ6_K:
      return QuantizeQ6_K(x, static_cast<BlockQ6_K*>(dst), n, imatrix);
    case Type::kIQ4_NL:
      return QuantizeIQ4_NL(x, static_cast<BlockIQ4_NL*>(dst), n, imatrix);
    case Type::kIQ4_XS:
      return QuantizeIQ4_XS(x, static_cast<BlockIQ4_XS*>(dst), n, imatrix);
    default:
      return Quantize(type, x, dst, n);
  }
}

}  // namespace qtool::ggml
