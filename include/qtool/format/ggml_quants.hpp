// Scalar reference quantisers and dequantisers of the ggml block types (ggml.hpp).
//
// The dequantisers evaluate each value with the same float operations, in the same order, as
// ggml's `dequantize_row_*` (for example Q4_K: (d * sc) * q - dmin * m), so their results are
// identical to ggml's and to the `gguf` Python package's. The quantisers follow the search that
// ggml's reference quantisers (`quantize_row_*_ref`, used by llama-quantize without an importance
// matrix) define, step for step in float32:
//  - Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: scale from the block's (signed) absolute maximum or range, one
//    rounding; results are byte-identical to llama.cpp's.
//  - Q2_K/Q4_K/Q5_K: per sub-block, a weighted least-squares scale and min chosen over a sweep of
//    candidate scales (weights |x| for Q2_K, rms + |x| for Q4_K/Q5_K), then the sub-block scales
//    and mins quantised to 4/6 bits against the super-block's and the values requantised with the
//    stored scales.
//  - Q3_K/Q6_K: per sub-block, a symmetric scale refined by x^2-weighted least squares (Q3_K:
//    coordinate-wise changes of single codes; Q6_K: a sweep of 18 candidate scales), scales
//    quantised to 6/8 bits, values requantised.
//  - IQ4_NL/IQ4_XS: nearest non-linear code for a sweep of 15 candidate scales, each followed by a
//    weighted least-squares scale; the weights are x^2, or with an importance matrix imatrix[i] *
//    sqrt(sigma^2 + x^2) (sigma^2 = twice the mean square of the super-block), as llama.cpp.
//  - TQ1_0/TQ2_0: scale = max |x|, codes round(x / scale) in {-1, 0, 1}.
//  - MXFP4: shared exponent floor(log2 max|x|) - 2, then the nearest E2M1 value.
// With an importance matrix (an optional `imatrix` argument: one importance per column), the
// quantisers follow llama.cpp's importance-weighted searches (`quantize_row_*_impl`) instead:
//  - Q4_0/Q5_0: the symmetric search (SymmetricSearch, make_qx_quants) on 8/16 levels each side,
//    weights imatrix[j] * sqrt(sigma^2 + x^2), sigma^2 the mean square of the whole row;
//  - Q4_1/Q5_1: the scale-and-min search (make_qkx3_quants) with the same weights;
//  - Q2_K–Q6_K, IQ4_NL, IQ4_XS: as each function's comment says.
// Rounding: ggml's nearest_int rounds half to even (here std::lrint in the default rounding mode),
// Q8_0 uses roundf and TQ* lroundf (half away from zero); the legacy types truncate x + 0.5.
//
// Sizes: every function takes a whole number of blocks (n a multiple of the type's block size);
// callers check shapes, these functions only assert.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/ggml.hpp"

namespace qtool::ggml {

namespace detail {

// ggml's nearest_int: round to nearest, ties to even (|x| < 2^22 in every use).
inline int NearestInt(float x) { return static_cast<int>(std::lrint(x)); }

// Scales smaller than this count as an all-zero group (ggml's GROUP_MAX_EPS).
inline constexpr float kGroupMaxEps = 1e-15f;

// E8M0 exponent e -> 2^(e - 128), half the E8M0 value, exact for every e (MXFP4's scale with its
// doubled code values).
inline float E8m0Half(uint8_t e) {
  const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e - 1) << 23);
  return std::bit_cast<float>(bits);
}

// Symmetric search with nmax levels each side (codes l + nmax in [0, 2 nmax)): start from
// -nmax / max, the weighted least-squares scale for those codes, then 18 more candidate inverse
// scales -(nmax + 0.1 is) / max, keeping the one with the largest (sum w x l)^2 / sum w l^2.
// Weights: qw when given, else x^2. Returns the scale; L gets the codes.
inline float SymmetricSearch(int n, int nmax, const float* x, int8_t* L, const float* qw) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t{0});
    return 0.f;
  }
  auto code = [nmax](float v) { return std::clamp(NearestInt(v), -nmax, nmax - 1); };
  auto weight = [qw, x](int i) { return qw ? qw[i] : x[i] * x[i]; };
  float iscale = -nmax / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = code(iscale * x[i]);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = weight(i);
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = code(iscale * x[i]);
      const float w = weight(i);
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(nmax + code(iscale * x[i]));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q3_K's symmetric search: codes in [-nmax, nmax) from -nmax / max, then up to 5 passes that move
// single codes to the value the x^2-weighted least-squares scale of the others asks for, keeping
// each move that raises (sum w x l)^2 / sum w l^2. L gets codes + nmax; returns the scale.
inline float Q3Search(int n, int nmax, const float* x, int8_t* L) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t{0});
    return 0.f;
  }
  const float iscale = -nmax / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx <= 0) continue;
      float sl2 = suml2 - w * L[i] * L[i];
      const int l = std::clamp(NearestInt(x[i] * sl2 / slx), -nmax, nmax - 1);
      if (l == L[i]) continue;
      slx += w * x[i] * l;
      sl2 += w * l * l;
      if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = static_cast<int8_t>(l);
        sumlx = slx;
        suml2 = sl2;
        ++changed;
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Scale-and-min search (ggml's make_qkx2_quants): codes in [0, nmax] for x = scale * l - min_out.
// Starts from the range [min(x, 0), max x]; then for nstep + 1 candidate inverse scales
// (rmin + rdelta * is + nmax) / range, fits scale and min by weighted least squares for the codes
// they give (min clamped to <= 0) and keeps the candidate with the smallest weighted error
// (absolute with use_mad, squared otherwise). Returns the scale; *min_out gets -min.
inline float ScaleMinSearch(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                            float* min_out, uint8_t* Laux, float rmin, float rdelta, int nstep,
                            bool use_mad) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, uint8_t{0});
    *min_out = -min;
    return 0.f;
  }
  auto err = [use_mad](float d) { return use_mad ? std::fabs(d) : d * d; };
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<uint8_t>(std::clamp(NearestInt(iscale * (x[i] - min)), 0, nmax));
    best_error += weights[i] * err(scale * L[i] + min - x[i]);
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0;
    float sum_l2 = 0;
    float sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D <= 0) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    float cur_error = 0;
    for (int i = 0; i < n; ++i)
      cur_error += weights[i] * err(this_scale * Laux[i] + this_min - x[i]);
    if (cur_error < best_error) {
      std::copy(Laux, Laux + n, L);
      best_error = cur_error;
      scale = this_scale;
      min = this_min;
    }
  }
  *min_out = -min;
  return scale;
}

// Non-negative values x (sub-block scales or mins) on nmax + 1 levels of one scale, weighted by
// w (ggml's make_qp_quants): from nmax / max, 8 more candidate inverse scales (nmax + 0.1 is) /
// max by weighted squared error, then up to 5 passes moving single codes as Q3Search does.
// Returns the scale; L gets the codes.
inline float PositiveSearch(int n, int nmax, const float* x, uint8_t* L, const float* w) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (max < kGroupMaxEps) {
    std::fill(L, L + n, uint8_t{0});
    return 0.f;
  }
  float iscale = nmax / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(NearestInt(iscale * x[i]));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * L[i];
    best_mse += w[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * is + nmax) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, NearestInt(iscale_is * x[i]));
      const float diff = x[i] - scale_is * l;
      mse += w[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, NearestInt(iscale * x[i]));
    L[i] = static_cast<uint8_t>(l);
    sumlx += w[i] * x[i] * l;
    suml2 += w[i] * l * l;
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      float slx = sumlx - w[i] * x[i] * L[i];
      float sl2 = suml2 - w[i] * L[i] * L[i];
      if (slx <= 0 || sl2 <= 0) continue;
      const int l = std::min(nmax, NearestInt(x[i] * sl2 / slx));
      if (l == L[i]) continue;
      slx += w[i] * x[i] * l;
      sl2 += w[i] * l * l;
      if (slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = static_cast<uint8_t>(l);
        sumlx = slx;
        suml2 = sl2;
        ++changed;
      }
    }
    if (changed == 0) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Scale and min of sub-block j of a Q4_K/Q5_K block (6 bits each; layout in BlockQ4_K).
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Stores 6-bit scales ls and mins lm of Q4_K/Q5_K sub-block j (scales must start zeroed for j >= 4
// to find the bytes of j - 4 already written).
inline void SetScaleMinK4(int j, uint8_t ls, uint8_t lm, uint8_t* q) {
  if (j < 4) {
    q[j] = ls;
    q[j + 4] = lm;
  } else {
    q[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
    q[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
    q[j] |= static_cast<uint8_t>((lm >> 4) << 6);
  }
}

// Signed 6-bit scale (offset 32 removed) of Q3_K sub-block j.
inline int Q3Scale(const uint8_t* s, int j) {
  const int low = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
  return (low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

// Packs 256 2-bit codes as Q2_K/Q3_K/TQ2_0 store them.
inline void Pack2Bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQKK; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                           (L[j + l + 96] << 6));
    }
  }
}

// Index of the IQ4 value nearest to x (ties between two neighbours go to the upper one).
inline int NearestIq4(float x) {
  const int8_t* v = kIq4nlValues;
  if (x <= v[0]) return 0;
  if (x >= v[15]) return 15;
  int lo = 0;
  int hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < v[mid]) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return x - v[hi - 1] < v[hi] - x ? hi - 1 : hi;
}

// The unrounded IQ4 scale of one block of 32 values with weights `weight`: the best of a sweep
// of 15 candidate inverse scales, each followed by the weighted least-squares scale of its codes;
// 0 for a block whose absolute maximum is below kGroupMaxEps.
inline float Iq4BlockScale(const float* xb, const float* weight) {
  constexpr int kBlock = 32;
  constexpr int kTries = 7;
  const int8_t* values = kIq4nlValues;
  float amax = 0;
  float max = 0;
  for (int j = 0; j < kBlock; ++j) {
    const float ax = std::fabs(xb[j]);
    if (ax > amax) {
      amax = ax;
      max = xb[j];
    }
  }
  if (amax < kGroupMaxEps) return 0;
  float d = -max / values[0];
  float id = 1 / d;
  float sumqx = 0;
  float sumq2 = 0;
  for (int j = 0; j < kBlock; ++j) {
    const float q = values[NearestIq4(id * xb[j])];
    sumqx += weight[j] * q * xb[j];
    sumq2 += weight[j] * q * q;
  }
  d = sumqx / sumq2;
  float best = d * sumqx;
  for (int t = -kTries; t <= kTries; ++t) {
    id = (t + values[0]) / max;
    sumqx = sumq2 = 0;
    for (int j = 0; j < kBlock; ++j) {
      const float q = values[NearestIq4(id * xb[j])];
      sumqx += weight[j] * q * xb[j];
      sumq2 += weight[j] * q * q;
    }
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

// IQ4_NL (super = 32, one sub-block) and IQ4_XS (super = 256, sub-blocks of 32) share this
// search. Writes the codes into q4, the fp16 scale into *dh and, for IQ4_XS, the 6-bit sub-block
// scales into scales_h/scales_l. imatrix (optional) has `super` importances.
inline void Iq4Search(int super, const float* x, uint16_t* dh, uint8_t* q4, uint16_t* scales_h,
                      uint8_t* scales_l, const float* imatrix) {
  constexpr int kBlock = 32;
  float scales[kQKK / kBlock] = {};
  float weight[kBlock];
  uint8_t L[kQKK];
  float sigma2 = 0;
  for (int j = 0; j < super; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.f / super;
  std::memset(q4, 0, super / 2);
  *dh = F32ToF16(0.f);
  float max_scale = 0;
  float amax_scale = 0;
  for (int ib = 0; ib < super / kBlock; ++ib) {
    const float* xb = x + ib * kBlock;
    for (int j = 0; j < kBlock; ++j) {
      weight[j] =
          imatrix ? imatrix[ib * kBlock + j] * std::sqrt(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
    }
    const float d = Iq4BlockScale(xb, weight);
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) {
      amax_scale = std::fabs(d);
      max_scale = d;
    }
  }
  if (super > kBlock) {
    *scales_h = 0;
    const float d = -max_scale / 32;
    *dh = F32ToF16(d);
    const float id = d != 0 ? 1 / d : 0.f;
    for (int ib = 0; ib < super / kBlock; ++ib) {
      int l = std::clamp(NearestInt(id * scales[ib]), -32, 31);
      const float dl = d * l;
      const float idl = dl != 0 ? 1 / dl : 0.f;
      for (int j = 0; j < kBlock; ++j) {
        L[ib * kBlock + j] = static_cast<uint8_t>(NearestIq4(idl * x[ib * kBlock + j]));
      }
      l += 32;
      if (ib % 2 == 0) {
        scales_l[ib / 2] = static_cast<uint8_t>(l & 0xF);
      } else {
        scales_l[ib / 2] |= static_cast<uint8_t>((l & 0xF) << 4);
      }
      *scales_h |= static_cast<uint16_t>((l >> 4) << (2 * ib));
    }
  } else {
    *dh = F32ToF16(scales[0]);
    const float id = scales[0] != 0 ? 1 / scales[0] : 0;
    for (int j = 0; j < super; ++j) L[j] = static_cast<uint8_t>(NearestIq4(id * x[j]));
  }
  for (int i = 0; i < super / 32; ++i) {
    for (int j = 0; j < 16; ++j) {
      q4[16 * i + j] = static_cast<uint8_t>(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
    }
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Dequantisers: `n` values from the blocks at `src` into `y`.

inline void DequantizeQ4_0(const BlockQ4_0* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, y += kQK32) {
    const float d = F16ToF32(b[i].d);
    for (int j = 0; j < kQK32 / 2; ++j) {
      y[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
      y[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

inline void DequantizeQ4_1(const BlockQ4_1* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, y += kQK32) {
    const float d = F16ToF32(b[i].d);
    const float m = F16ToF32(b[i].m);
    for (int j = 0; j < kQK32 / 2; ++j) {
      y[j] = (b[i].qs[j] & 0x0F) * d + m;
      y[j + 16] = (b[i].qs[j] >> 4) * d + m;
    }
  }
}

inline void DequantizeQ5_0(const BlockQ5_0* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, y += kQK32) {
    const float d = F16ToF32(b[i].d);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, 4);
    for (int j = 0; j < kQK32 / 2; ++j) {
      const int hi0 = ((qh >> j) & 1) << 4;
      const int hi1 = ((qh >> (j + 16)) & 1) << 4;
      y[j] = (((b[i].qs[j] & 0x0F) | hi0) - 16) * d;
      y[j + 16] = (((b[i].qs[j] >> 4) | hi1) - 16) * d;
    }
  }
}

inline void DequantizeQ5_1(const BlockQ5_1* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, y += kQK32) {
    const float d = F16ToF32(b[i].d);
    const float m = F16ToF32(b[i].m);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, 4);
    for (int j = 0; j < kQK32 / 2; ++j) {
      const int hi0 = ((qh >> j) & 1) << 4;
      const int hi1 = ((qh >> (j + 16)) & 1) << 4;
      y[j] = ((b[i].qs[j] & 0x0F) | hi0) * d + m;
      y[j + 16] = ((b[i].qs[j] >> 4) | hi1) * d + m;
    }
  }
}

inline void DequantizeQ8_0(const BlockQ8_0* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, y += kQK32) {
    const float d = F16ToF32(b[i].d);
    for (int j = 0; j < kQK32; ++j) y[j] = b[i].qs[j] * d;
  }
}

inline void DequantizeQ2_K(const BlockQ2_K* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    const float dmin = F16ToF32(b[i].dmin);
    const uint8_t* q = b[i].qs;
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part) {
          const uint8_t sc = b[i].scales[is++];
          const float dl = d * (sc & 0xF);
          const float ml = dmin * (sc >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16 * part] >> shift) & 3) - ml;
        }
      }
    }
  }
}

inline void DequantizeQ3_K(const BlockQ3_K* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    const uint8_t* q = b[i].qs;
    int is = 0;
    int bit = 0;  // index of the hmask bit: value e has bit e / 32 of hmask[e % 32]
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, ++bit) {
        for (int part = 0; part < 2; ++part) {
          const float dl = d * detail::Q3Scale(b[i].scales, is++);
          const uint8_t* hm = b[i].hmask + 16 * part;
          for (int l = 0; l < 16; ++l) {
            *y++ = dl * (((q[l + 16 * part] >> shift) & 3) - (((hm[l] >> bit) & 1) ? 0 : 4));
          }
        }
      }
    }
  }
}

inline void DequantizeQ4_K(const BlockQ4_K* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    const float dmin = F16ToF32(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int is = 0; is < 8; is += 2, q += 32) {
      uint8_t sc;
      uint8_t m;
      detail::ScaleMinK4(is, b[i].scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = dmin * m;
      detail::ScaleMinK4(is + 1, b[i].scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    }
  }
}

inline void DequantizeQ5_K(const BlockQ5_K* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    const float dmin = F16ToF32(b[i].dmin);
    const uint8_t* ql = b[i].qs;
    const uint8_t* qh = b[i].qh;
    for (int is = 0; is < 8; is += 2, ql += 32) {
      uint8_t sc;
      uint8_t m;
      detail::ScaleMinK4(is, b[i].scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = dmin * m;
      detail::ScaleMinK4(is + 1, b[i].scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (((qh[l] >> is) & 1) << 4)) - m1;
      for (int l = 0; l < 32; ++l) {
        *y++ = d2 * ((ql[l] >> 4) + (((qh[l] >> (is + 1)) & 1) << 4)) - m2;
      }
    }
  }
}

inline void DequantizeQ6_K(const BlockQ6_K* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

inline void DequantizeIQ4_NL(const BlockIQ4_NL* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, y += kQK32) {
    const float d = F16ToF32(b[i].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * kIq4nlValues[b[i].qs[j] & 0xF];
      y[j + 16] = d * kIq4nlValues[b[i].qs[j] >> 4];
    }
  }
}

inline void DequantizeIQ4_XS(const BlockIQ4_XS* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    const uint8_t* qs = b[i].qs;
    for (int ib = 0; ib < kQKK / 32; ++ib, y += 32, qs += 16) {
      const int ls = ((b[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) |
                     (((b[i].scales_h >> (2 * ib)) & 3) << 4);
      const float dl = d * (ls - 32);
      for (int j = 0; j < 16; ++j) {
        y[j] = dl * kIq4nlValues[qs[j] & 0xF];
        y[j + 16] = dl * kIq4nlValues[qs[j] >> 4];
      }
    }
  }
}

// TQ1_0 trit k (0 = most significant) of byte q: the byte is ceil(256 * T / 3^5) for the base-3
// number T, so multiplying by 3^k (mod 256) brings trit k to the top and (q * 3) >> 8 reads it.
inline int Tq1Trit(uint8_t q, int k) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const uint8_t shifted = static_cast<uint8_t>(q * kPow3[k]);
  return (shifted * 3) >> 8;
}

inline void DequantizeTQ1_0(const BlockTQ1_0* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    // qs[0..32): five runs of 32 values; qs[32..48): five runs of 16; qh: four runs of 4.
    for (int k = 0; k < 5; ++k) {
      for (int m = 0; m < 32; ++m) *y++ = static_cast<float>(Tq1Trit(b[i].qs[m], k) - 1) * d;
    }
    for (int k = 0; k < 5; ++k) {
      for (int m = 0; m < 16; ++m) *y++ = static_cast<float>(Tq1Trit(b[i].qs[32 + m], k) - 1) * d;
    }
    for (int k = 0; k < 4; ++k) {
      for (int m = 0; m < 4; ++m) *y++ = static_cast<float>(Tq1Trit(b[i].qh[m], k) - 1) * d;
    }
  }
}

inline void DequantizeTQ2_0(const BlockTQ2_0* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = F16ToF32(b[i].d);
    for (int j = 0; j < 64; j += 32) {
      for (int l = 0; l < 4; ++l) {
        for (int m = 0; m < 32; ++m) {
          *y++ = static_cast<float>(((b[i].qs[j + m] >> (2 * l)) & 3) - 1) * d;
        }
      }
    }
  }
}

inline void DequantizeMXFP4(const BlockMXFP4* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, y += kQK32) {
    const float d = detail::E8m0Half(b[i].e);
    for (int j = 0; j < 16; ++j) {
      y[j] = kMxfp4Values[b[i].qs[j] & 0xF] * d;
      y[j + 16] = kMxfp4Values[b[i].qs[j] >> 4] * d;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reference quantisers: `n` finite values of `x` into blocks at `b`.

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

// The symmetric legacy types (Q4_0: levels = 8, Q5_0: 16): the block's scale and codes 0..2 *
// levels - 1 into L. Without importances ggml's reference: d = (signed absolute maximum) /
// -levels, codes by truncating x / d + levels + 0.5 (x / d is in [-levels, levels], so this
// rounds ties up). With them llama.cpp's weighted SymmetricSearch.
inline float LegacySymmetricBlock(const float* x, int levels, const float* weight, uint8_t* L) {
  if (weight != nullptr) {
    int8_t Ls[kQK32];
    const float d = SymmetricSearch(kQK32, levels, x, Ls, weight);
    for (int j = 0; j < kQK32; ++j) L[j] = static_cast<uint8_t>(Ls[j]);
    return d;
  }
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < kQK32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / static_cast<float>(-levels);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  const float offset = static_cast<float>(levels) + 0.5f;
  for (int j = 0; j < kQK32; ++j) {
    L[j] = static_cast<uint8_t>(std::min(2 * levels - 1, static_cast<int>(x[j] * id + offset)));
  }
  return d;
}

// The legacy types with a min (Q4_1: nmax = 15, Q5_1: 31): the block's scale into *d and min
// into *min, codes into L. Without importances ggml's reference: the range over nmax, codes by
// truncating (x - min) / d + 0.5 (Q4_1 clamps to 15; Q5_1 does not, as in ggml, whose fifth bit
// keeps the code mod 32). With them llama.cpp's weighted make_qkx3_quants (rmin -0.9, step 0.05,
// 36 steps).
inline void LegacyScaleMinBlock(const float* x, int nmax, const float* weight, float* d, float* min,
                                uint8_t* L) {
  if (weight != nullptr) {
    uint8_t Laux[kQK32];
    float neg_min = 0;
    *d = ScaleMinSearch(kQK32, nmax, x, weight, L, &neg_min, Laux, -0.9f, 0.05f, 36, false);
    *min = -neg_min;
    return;
  }
  const auto [lo, hi] = std::minmax_element(x, x + kQK32);
  *min = *lo;
  *d = (*hi - *min) / static_cast<float>(nmax);
  const float id = *d != 0 ? 1.0f / *d : 0.0f;
  for (int j = 0; j < kQK32; ++j) {
    const auto q = static_cast<uint8_t>((x[j] - *min) * id + 0.5f);
    L[j] = nmax == 15 ? std::min<uint8_t>(15, q) : q;
  }
}

// Four-bit codes: L[j] in the low and L[j + 16] in the high nibble of qs[j].
inline void PackNibbles(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < 16; ++j)
    qs[j] = static_cast<uint8_t>((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
}

// Five-bit codes: the low four bits as PackNibbles, the fifth bit of L[j] at bit j of qh.
inline void PackFiveBits(const uint8_t* L, uint8_t* qs, uint8_t* qh) {
  PackNibbles(L, qs);
  uint32_t bits = 0;
  for (int j = 0; j < kQK32; ++j) bits |= static_cast<uint32_t>((L[j] >> 4) & 1) << j;
  std::memcpy(qh, &bits, 4);
}

// The legacy quantisers' loop: one block of 32 at a time, with the block's importance weights
// (imatrix[j] * sqrt(sigma2 + x^2), sigma2 the row's mean square) when imatrix is given.
template <typename Block, typename QuantizeBlock>
void QuantizeLegacy(const float* x, Block* b, int64_t n, const float* imatrix,
                    QuantizeBlock quantize_block) {
  const float sigma2 = imatrix != nullptr ? RowMeanSquare(x, n) : 0.0f;
  float weight[kQK32];
  for (int64_t i = 0; i < n / kQK32; ++i) {
    if (imatrix != nullptr) LegacyWeights(x + i * kQK32, imatrix + i * kQK32, sigma2, weight);
    quantize_block(x + i * kQK32, imatrix != nullptr ? weight : nullptr, b[i]);
  }
}

}  // namespace detail

// The legacy quantisers below take an optional `imatrix`: the importance of each of the n
// columns (llama.cpp's in_sum2 / counts). Without it ggml's reference quantiser; with it
// llama.cpp's weighted search, whose weights use the mean square of the whole of `x`, so `x` is
// then one row (n its length).

inline void QuantizeQ4_0(const float* x, BlockQ4_0* b, int64_t n, const float* imatrix = nullptr) {
  detail::QuantizeLegacy(x, b, n, imatrix, [](const float* xb, const float* w, BlockQ4_0& out) {
    uint8_t L[kQK32];
    out.d = F32ToF16(detail::LegacySymmetricBlock(xb, 8, w, L));
    detail::PackNibbles(L, out.qs);
  });
}

inline void QuantizeQ4_1(const float* x, BlockQ4_1* b, int64_t n, const float* imatrix = nullptr) {
  detail::QuantizeLegacy(x, b, n, imatrix, [](const float* xb, const float* w, BlockQ4_1& out) {
    uint8_t L[kQK32];
    float d = 0;
    float min = 0;
    detail::LegacyScaleMinBlock(xb, 15, w, &d, &min, L);
    out.d = F32ToF16(d);
    out.m = F32ToF16(min);
    detail::PackNibbles(L, out.qs);
  });
}

inline void QuantizeQ5_0(const float* x, BlockQ5_0* b, int64_t n, const float* imatrix = nullptr) {
  detail::QuantizeLegacy(x, b, n, imatrix, [](const float* xb, const float* w, BlockQ5_0& out) {
    uint8_t L[kQK32];
    out.d = F32ToF16(detail::LegacySymmetricBlock(xb, 16, w, L));
    detail::PackFiveBits(L, out.qs, out.qh);
  });
}

inline void QuantizeQ5_1(const float* x, BlockQ5_1* b, int64_t n, const float* imatrix = nullptr) {
  detail::QuantizeLegacy(x, b, n, imatrix, [](const float* xb, const float* w, BlockQ5_1& out) {
    uint8_t L[kQK32];
    float d = 0;
    float min = 0;
    detail::LegacyScaleMinBlock(xb, 31, w, &d, &min, L);
    out.d = F32ToF16(d);
    out.m = F32ToF16(min);
    detail::PackFiveBits(L, out.qs, out.qh);
  });
}

inline void QuantizeQ8_0(const float* x, BlockQ8_0* b, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, x += kQK32) {
    float amax = 0.0f;
    for (int j = 0; j < kQK32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    b[i].d = F32ToF16(d);
    for (int j = 0; j < kQK32; ++j) b[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

/// imatrix: optional importance of each of the n columns. Without it, ggml's reference
/// quantiser; with it, llama.cpp's importance-weighted one (weights imatrix[i] * sqrt(sigma^2 +
/// x^2), sigma^2 the super-block's mean square; a longer scale/min sweep; the 4-bit scales and
/// mins by PositiveSearch weighted by each sub-block's total weight).
inline void QuantizeQ2_K(const float* x, BlockQ2_K* b, int64_t n, const float* imatrix = nullptr) {
  uint8_t L[kQKK];
  uint8_t Laux[16];
  float weights[16];
  float mins[kQKK / 16];
  float scales[kQKK / 16];
  float sw[kQKK / 16];
  uint8_t Ls[kQKK / 16];
  uint8_t Lm[kQKK / 16];
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    if (imatrix != nullptr) {
      float sumx2 = 0;
      for (int j = 0; j < kQKK; ++j) sumx2 += x[j] * x[j];
      const float sigma2 = sumx2 / kQKK;
      for (int j = 0; j < kQKK / 16; ++j) {
        const float* qw = imatrix + i * kQKK + 16 * j;
        sw[j] = 0;
        for (int l = 0; l < 16; ++l) {
          weights[l] = qw[l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
        }
        for (int l = 0; l < 16; ++l) sw[j] += weights[l];
        scales[j] = detail::ScaleMinSearch(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                           -0.9f, 0.05f, 36, false);
      }
      b[i].d = F32ToF16(detail::PositiveSearch(kQKK / 16, 15, scales, Ls, sw));
      b[i].dmin = F32ToF16(detail::PositiveSearch(kQKK / 16, 15, mins, Lm, sw));
      for (int j = 0; j < kQKK / 16; ++j)
        b[i].scales[j] = static_cast<uint8_t>(Ls[j] | (Lm[j] << 4));
    } else {
      float max_scale = 0;
      float max_min = 0;
      for (int j = 0; j < kQKK / 16; ++j) {
        for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
        scales[j] = detail::ScaleMinSearch(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                           -0.5f, 0.1f, 15, true);
        max_scale = std::max(max_scale, scales[j]);
        max_min = std::max(max_min, mins[j]);
      }
      if (max_scale > 0) {
        const float iscale = 15.f / max_scale;
        for (int j = 0; j < kQKK / 16; ++j) {
          b[i].scales[j] = static_cast<uint8_t>(detail::NearestInt(iscale * scales[j]));
        }
        b[i].d = F32ToF16(max_scale / 15.f);
      } else {
        std::fill(b[i].scales, b[i].scales + kQKK / 16, uint8_t{0});
        b[i].d = F32ToF16(0.f);
      }
      if (max_min > 0) {
        const float iscale = 15.f / max_min;
        for (int j = 0; j < kQKK / 16; ++j) {
          b[i].scales[j] |= static_cast<uint8_t>(detail::NearestInt(iscale * mins[j]) << 4);
        }
        b[i].dmin = F32ToF16(max_min / 15.f);
      } else {
        b[i].dmin = F32ToF16(0.f);
      }
    }
    for (int j = 0; j < kQKK / 16; ++j) {
      const float d = F16ToF32(b[i].d) * (b[i].scales[j] & 0xF);
      if (d == 0) continue;
      const float dm = F16ToF32(b[i].dmin) * (b[i].scales[j] >> 4);
      for (int l = 0; l < 16; ++l) {
        L[16 * j + l] =
            static_cast<uint8_t>(std::clamp(detail::NearestInt((x[16 * j + l] + dm) / d), 0, 3));
      }
    }
    detail::Pack2Bit(L, b[i].qs);
  }
}

/// imatrix: optional importance of each of the n columns. Without it this is ggml's reference
/// quantiser; with it, llama.cpp's importance-weighted one: sub-block codes by the symmetric
/// search weighted by imatrix[i] * sqrt(sigma^2 + x^2) (sigma^2 = twice the super-block's mean
/// square), and the 6-bit sub-block scales themselves by the same search over the scales, each
/// weighted by its sub-block's total weight.
inline void QuantizeQ3_K(const float* x, BlockQ3_K* b, int64_t n, const float* imatrix = nullptr) {
  int8_t L[kQKK];
  float scales[kQKK / 16];
  float weight[16];
  float sw[kQKK / 16];
  int8_t Ls[kQKK / 16];
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    std::memset(b[i].scales, 0, 12);
    auto set_scale = [&b, i](int j, int l) {  // l: 6-bit scale with its offset of 32
      if (j < 8) {
        b[i].scales[j] = static_cast<uint8_t>(l & 0xF);
      } else {
        b[i].scales[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
      }
      b[i].scales[j % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
    };
    if (imatrix != nullptr) {
      const float* qw_block = imatrix + i * kQKK;
      float sumx2 = 0;
      for (int j = 0; j < kQKK; ++j) sumx2 += x[j] * x[j];
      const float sigma2 = 2 * sumx2 / kQKK;
      for (int j = 0; j < kQKK / 16; ++j) {
        for (int l = 0; l < 16; ++l) {
          weight[l] = qw_block[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
        }
        float sumw = 0;
        for (int l = 0; l < 16; ++l) sumw += weight[l];
        sw[j] = sumw;
        scales[j] = detail::SymmetricSearch(16, 4, x + 16 * j, L + 16 * j, weight);
      }
      const float d_block = detail::SymmetricSearch(kQKK / 16, 32, scales, Ls, sw);
      for (int j = 0; j < kQKK / 16; ++j) set_scale(j, Ls[j]);
      b[i].d = F32ToF16(d_block);
    } else {
      float max_scale = 0;
      float amax = 0;
      for (int j = 0; j < kQKK / 16; ++j) {
        scales[j] = detail::Q3Search(16, 4, x + 16 * j, L + 16 * j);
        if (std::fabs(scales[j]) > amax) {
          amax = std::fabs(scales[j]);
          max_scale = scales[j];
        }
      }
      if (max_scale != 0) {
        const float iscale = -32.f / max_scale;
        for (int j = 0; j < kQKK / 16; ++j) {
          set_scale(j, std::clamp(detail::NearestInt(iscale * scales[j]), -32, 31) + 32);
        }
        b[i].d = F32ToF16(1 / iscale);
      } else {
        b[i].d = F32ToF16(0.f);
      }
    }
    for (int j = 0; j < kQKK / 16; ++j) {
      const float d = F16ToF32(b[i].d) * detail::Q3Scale(b[i].scales, j);
      if (d == 0) continue;
      for (int l = 0; l < 16; ++l) {
        L[16 * j + l] =
            static_cast<int8_t>(std::clamp(detail::NearestInt(x[16 * j + l] / d), -4, 3) + 4);
      }
    }
    // High bit of value e into bit e / 32 of hmask[e % 32], then the low two bits as Q2_K.
    std::memset(b[i].hmask, 0, sizeof(b[i].hmask));
    uint8_t low[kQKK];
    for (int e = 0; e < kQKK; ++e) {
      if (L[e] > 3) b[i].hmask[e % 32] |= static_cast<uint8_t>(1 << (e / 32));
      low[e] = static_cast<uint8_t>(L[e] & 3);
    }
    detail::Pack2Bit(low, b[i].qs);
  }
}

namespace detail {

// Q4_K and Q5_K share everything but the code width (nmax 15 / 31) and the sweep.
// With `imatrix` (Q4_K only): llama.cpp's importance-weighted variant (see QuantizeQ4_K).
inline void QuantizeScaleMinK(const float* x, uint16_t* d_out, uint16_t* dmin_out,
                              uint8_t* scales_out, uint8_t* L, int nmax, float rmin, int nstep,
                              const float* imatrix = nullptr) {
  uint8_t Laux[32];
  float weights[32];
  float mins[kQKK / 32];
  float scales[kQKK / 32];
  std::memset(scales_out, 0, 12);
  if (imatrix != nullptr) {
    float sum_x2 = 0;
    for (int l = 0; l < kQKK; ++l) sum_x2 += x[l] * x[l];
    const float sigma2 = 2 * sum_x2 / kQKK;
    float sw[kQKK / 32];
    uint8_t Ls[kQKK / 32];
    uint8_t Lm[kQKK / 32];
    for (int j = 0; j < kQKK / 32; ++j) {
      for (int l = 0; l < 32; ++l) {
        weights[l] = imatrix[32 * j + l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
      }
      float sumw = 0;
      for (int l = 0; l < 32; ++l) sumw += weights[l];
      sw[j] = sumw;
      scales[j] = ScaleMinSearch(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f,
                                 0.05f, 36, false);
    }
    const float d_block = PositiveSearch(kQKK / 32, 63, scales, Ls, sw);
    const float m_block = PositiveSearch(kQKK / 32, 63, mins, Lm, sw);
    for (int j = 0; j < kQKK / 32; ++j) SetScaleMinK4(j, Ls[j], Lm[j], scales_out);
    *d_out = F32ToF16(d_block);
    *dmin_out = F32ToF16(m_block);
  } else {
    float max_scale = 0;
    float max_min = 0;
    for (int j = 0; j < kQKK / 32; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = ScaleMinSearch(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin,
                                 0.1f, nstep, false);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < kQKK / 32; ++j) {
      // ggml stores nearest_int into a uint8_t before the clamp (mod 256; never hit for finite x).
      const auto ls =
          std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_scale * scales[j])));
      const auto lm = std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_min * mins[j])));
      SetScaleMinK4(j, ls, lm, scales_out);
    }
    *d_out = F32ToF16(max_scale / 63.f);
    *dmin_out = F32ToF16(max_min / 63.f);
  }
  for (int j = 0; j < kQKK / 32; ++j) {
    uint8_t sc;
    uint8_t m;
    ScaleMinK4(j, scales_out, &sc, &m);
    const float d = F16ToF32(*d_out) * sc;
    if (d == 0) continue;
    const float dm = F16ToF32(*dmin_out) * m;
    for (int l = 0; l < 32; ++l) {
      L[32 * j + l] =
          static_cast<uint8_t>(std::clamp(NearestInt((x[32 * j + l] + dm) / d), 0, nmax));
    }
  }
}

}  // namespace detail

/// imatrix: optional importance of each of the n columns. Without it, ggml's reference
/// quantiser; with it, llama.cpp's importance-weighted one (weights imatrix[i] * sqrt(sigma^2 +
/// x^2), sigma^2 twice the super-block's mean square; a longer scale/min sweep; 6-bit scales and
/// mins by PositiveSearch weighted by each sub-block's total weight).
inline void QuantizeQ4_K(const float* x, BlockQ4_K* b, int64_t n, const float* imatrix = nullptr) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    detail::QuantizeScaleMinK(x, &b[i].d, &b[i].dmin, b[i].scales, L, 15, -1.f, 20,
                              imatrix ? imatrix + i * kQKK : nullptr);
    for (int j = 0; j < kQKK; j += 64) {
      for (int l = 0; l < 32; ++l) {
        b[i].qs[j / 2 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
      }
    }
  }
}

/// imatrix: optional importances as for QuantizeQ4_K (llama.cpp's weighted search on 32 levels).
inline void QuantizeQ5_K(const float* x, BlockQ5_K* b, int64_t n, const float* imatrix = nullptr) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    // rmin and nstep are the reference search's; the weighted branch uses its own sweep.
    detail::QuantizeScaleMinK(x, &b[i].d, &b[i].dmin, b[i].scales, L, 31, -0.5f, 15,
                              imatrix ? imatrix + i * kQKK : nullptr);
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

/// imatrix: optional importance of each of the n columns. Without it ggml's reference quantiser;
/// with it llama.cpp's weighted one: each sub-block's symmetric search weighted by its 16
/// importances themselves (llama.cpp leaves the sigma term out for Q6_K).
inline void QuantizeQ6_K(const float* x, BlockQ6_K* b, int64_t n, const float* imatrix = nullptr) {
  int8_t L[kQKK];
  float scales[kQKK / 16];
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      const float* qw = imatrix != nullptr ? imatrix + i * kQKK + 16 * ib : nullptr;
      scales[ib] = detail::SymmetricSearch(16, 32, x + 16 * ib, L + 16 * ib, qw);
      if (std::fabs(scales[ib]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[ib]);
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < detail::kGroupMaxEps) {
      std::memset(&b[i], 0, sizeof(BlockQ6_K));
      continue;
    }
    const float iscale = -128.f / max_scale;
    b[i].d = F32ToF16(1 / iscale);
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      b[i].scales[ib] = static_cast<int8_t>(std::min(127, detail::NearestInt(iscale * scales[ib])));
    }
    for (int j = 0; j < kQKK / 16; ++j) {
      const float d = F16ToF32(b[i].d) * b[i].scales[j];
      if (d == 0) continue;
      for (int l = 0; l < 16; ++l) {
        L[16 * j + l] =
            static_cast<int8_t>(std::clamp(detail::NearestInt(x[16 * j + l] / d), -32, 31) + 32);
      }
    }
    for (int half = 0; half < 2; ++half) {
      const int8_t* Lh = L + 128 * half;
      uint8_t* ql = b[i].ql + 64 * half;
      uint8_t* qh = b[i].qh + 32 * half;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) |
                                     ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

/// imatrix: optional importance of each of the n columns (llama.cpp's imatrix), or nullptr.
inline void QuantizeIQ4_NL(const float* x, BlockIQ4_NL* b, int64_t n,
                           const float* imatrix = nullptr) {
  for (int64_t i = 0; i < n / kQK32; ++i) {
    detail::Iq4Search(kQK32, x + i * kQK32, &b[i].d, b[i].qs, nullptr, nullptr,
                      imatrix ? imatrix + i * kQK32 : nullptr);
  }
}

/// imatrix: optional importance of each of the n columns (llama.cpp's imatrix), or nullptr.
inline void QuantizeIQ4_XS(const float* x, BlockIQ4_XS* b, int64_t n,
                           const float* imatrix = nullptr) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    detail::Iq4Search(kQKK, x + i * kQKK, &b[i].d, b[i].qs, &b[i].scales_h, b[i].scales_l,
                      imatrix ? imatrix + i * kQKK : nullptr);
  }
}

namespace detail {

// Ternary code of x / d: round half away from zero, then +1 (0, 1, 2).
inline int Trit(float v, float id) { return static_cast<int>(std::lround(v * id)) + 1; }

// Max |x| of a super-block, the ternary scale of TQ1_0 and TQ2_0.
inline float AbsMax(const float* x, int n) {
  float amax = 0;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}

// The byte holding k trits t_0..t_{k-1} (t_0 most significant, padded with zero trits to five):
// ceil(256 * T / 243), so that Tq1Trit reads them back.
inline uint8_t PackTrits(int value) { return static_cast<uint8_t>((value * 256 + 242) / 243); }

}  // namespace detail

inline void QuantizeTQ1_0(const float* x, BlockTQ1_0* b, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    const float d = detail::AbsMax(x, kQKK);
    const float id = d != 0 ? 1 / d : 0;
    b[i].d = F32ToF16(d);
    // Values 0..160: byte m of qs[0..32) holds values m, m + 32, ..., m + 128.
    for (int m = 0; m < 32; ++m) {
      int t = 0;
      for (int k = 0; k < 5; ++k) t = t * 3 + detail::Trit(x[m + 32 * k], id);
      b[i].qs[m] = detail::PackTrits(t);
    }
    // Values 160..240: byte m of qs[32..48) holds values 160 + m, 160 + m + 16, ...
    for (int m = 0; m < 16; ++m) {
      int t = 0;
      for (int k = 0; k < 5; ++k) t = t * 3 + detail::Trit(x[160 + m + 16 * k], id);
      b[i].qs[32 + m] = detail::PackTrits(t);
    }
    // Values 240..256: byte m of qh holds values 240 + m, 244 + m, 248 + m, 252 + m.
    for (int m = 0; m < 4; ++m) {
      int t = 0;
      for (int k = 0; k < 4; ++k) t = t * 3 + detail::Trit(x[240 + m + 4 * k], id);
      b[i].qh[m] = detail::PackTrits(t * 3);
    }
  }
}

inline void QuantizeTQ2_0(const float* x, BlockTQ2_0* b, int64_t n) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    const float d = detail::AbsMax(x, kQKK);
    const float id = d != 0 ? 1 / d : 0;
    b[i].d = F32ToF16(d);
    for (int j = 0; j < kQKK; ++j) L[j] = static_cast<uint8_t>(detail::Trit(x[j], id) & 3);
    detail::Pack2Bit(L, b[i].qs);
  }
}

inline void QuantizeMXFP4(const float* x, BlockMXFP4* b, int64_t n) {
  for (int64_t i = 0; i < n / kQK32; ++i, x += kQK32) {
    const float amax = detail::AbsMax(x, kQK32);
    // The largest E2M1 magnitude is 6 = 1.5 * 2^2: the shared exponent is floor(log2 amax) - 2,
    // biased by 127 (clamped to the E8M0 range for values no weight has).
    const int e = amax > 0.0f
                      ? std::clamp(static_cast<int>(std::floor(std::log2(amax))) - 2 + 127, 0, 254)
                      : 0;
    b[i].e = static_cast<uint8_t>(e);
    const float d = detail::E8m0Half(b[i].e);
    auto nearest = [d](float v) {
      int best = 0;
      float best_err = std::fabs(kMxfp4Values[0] * d - v);
      for (int c = 1; c < 16; ++c) {
        const float err = std::fabs(kMxfp4Values[c] * d - v);
        if (err < best_err) {
          best = c;
          best_err = err;
        }
      }
      return best;
    };
    for (int j = 0; j < 16; ++j) {
      b[i].qs[j] = static_cast<uint8_t>(nearest(x[j]) | (nearest(x[j + 16]) << 4));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// By type id.

/// Decodes `n` values of `type` (a multiple of its block size) from `src` into `y`.
inline void Dequantize(Type type, const void* src, float* y, int64_t n) {
  QTOOL_DASSERT(n % Traits(type).block_size == 0);
  if (n == 0) return;  // an empty tensor: `y` may be null
  // The block structs hold fp16 and fp32 fields, but a GGUF file's alignment may be 1: blocks at
  // an address that is not 4-byte aligned are decoded from an aligned copy.
  if (type != Type::kF32 && type != Type::kF16 && type != Type::kBF16 &&
      reinterpret_cast<std::uintptr_t>(src) % alignof(float) != 0) {
    const size_t bytes = static_cast<size_t>(n / Traits(type).block_size) *
                         static_cast<size_t>(Traits(type).type_size);
    std::vector<float> aligned((bytes + sizeof(float) - 1) / sizeof(float));
    std::memcpy(aligned.data(), src, bytes);
    return Dequantize(type, aligned.data(), y, n);
  }
  switch (type) {
    case Type::kF32:
      std::memcpy(y, src, static_cast<size_t>(n) * 4);
      return;
    case Type::kF16:
    case Type::kBF16: {
      // Element by element through memcpy: a GGUF file's alignment may be 1, so `src` need not
      // be 2-byte aligned.
      const auto* bytes = static_cast<const std::byte*>(src);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        y[i] = type == Type::kF16 ? F16ToF32(h) : Bf16ToF32(h);
      }
      return;
    }
    case Type::kQ4_0:
      return DequantizeQ4_0(static_cast<const BlockQ4_0*>(src), y, n);
    case Type::kQ4_1:
      return DequantizeQ4_1(static_cast<const BlockQ4_1*>(src), y, n);
    case Type::kQ5_0:
      return DequantizeQ5_0(static_cast<const BlockQ5_0*>(src), y, n);
    case Type::kQ5_1:
      return DequantizeQ5_1(static_cast<const BlockQ5_1*>(src), y, n);
    case Type::kQ8_0:
      return DequantizeQ8_0(static_cast<const BlockQ8_0*>(src), y, n);
    case Type::kQ2_K:
      return DequantizeQ2_K(static_cast<const BlockQ2_K*>(src), y, n);
    case Type::kQ3_K:
      return DequantizeQ3_K(static_cast<const BlockQ3_K*>(src), y, n);
    case Type::kQ4_K:
      return DequantizeQ4_K(static_cast<const BlockQ4_K*>(src), y, n);
    case Type::kQ5_K:
      return DequantizeQ5_K(static_cast<const BlockQ5_K*>(src), y, n);
    case Type::kQ6_K:
      return DequantizeQ6_K(static_cast<const BlockQ6_K*>(src), y, n);
    case Type::kIQ4_NL:
      return DequantizeIQ4_NL(static_cast<const BlockIQ4_NL*>(src), y, n);
    case Type::kIQ4_XS:
      return DequantizeIQ4_XS(static_cast<const BlockIQ4_XS*>(src), y, n);
    case Type::kTQ1_0:
      return DequantizeTQ1_0(static_cast<const BlockTQ1_0*>(src), y, n);
    case Type::kTQ2_0:
      return DequantizeTQ2_0(static_cast<const BlockTQ2_0*>(src), y, n);
    case Type::kMXFP4:
      return DequantizeMXFP4(static_cast<const BlockMXFP4*>(src), y, n);
  }
}

/// Encodes `n` values of `x` (a multiple of the block size) as `type` into `dst`
/// (RowBytes(type, n) bytes) as llama.cpp's quantiser does: the reference quantiser, or with
/// `imatrix` (n importances; `x` is then one row) the importance-weighted search of the types that
/// have one. Q8_0, TQ1_0, TQ2_0, MXFP4 and the float types ignore importances, as in llama.cpp.
/// F16/BF16 round to nearest even.
inline void Quantize(Type type, const float* x, void* dst, int64_t n,
                     const float* imatrix = nullptr) {
  QTOOL_DASSERT(n % Traits(type).block_size == 0);
  switch (type) {
    case Type::kF32:
      std::memcpy(dst, x, static_cast<size_t>(n) * 4);
      return;
    case Type::kF16:
      return F32ToF16(x, static_cast<uint16_t*>(dst), static_cast<size_t>(n));
    case Type::kBF16:
      return F32ToBf16(x, static_cast<uint16_t*>(dst), static_cast<size_t>(n));
    case Type::kQ4_0:
      return QuantizeQ4_0(x, static_cast<BlockQ4_0*>(dst), n, imatrix);
    case Type::kQ4_1:
      return QuantizeQ4_1(x, static_cast<BlockQ4_1*>(dst), n, imatrix);
    case Type::kQ5_0:
      return QuantizeQ5_0(x, static_cast<BlockQ5_0*>(dst), n, imatrix);
    case Type::kQ5_1:
      return QuantizeQ5_1(x, static_cast<BlockQ5_1*>(dst), n, imatrix);
    case Type::kQ8_0:
      return QuantizeQ8_0(x, static_cast<BlockQ8_0*>(dst), n);
    case Type::kQ2_K:
      return QuantizeQ2_K(x, static_cast<BlockQ2_K*>(dst), n, imatrix);
    case Type::kQ3_K:
      return QuantizeQ3_K(x, static_cast<BlockQ3_K*>(dst), n, imatrix);
    case Type::kQ4_K:
      return QuantizeQ4_K(x, static_cast<BlockQ4_K*>(dst), n, imatrix);
    case Type::kQ5_K:
      return QuantizeQ5_K(x, static_cast<BlockQ5_K*>(dst), n, imatrix);
    case Type::kQ6_K:
      return QuantizeQ6_K(x, static_cast<BlockQ6_K*>(dst), n, imatrix);
    case Type::kIQ4_NL:
      return QuantizeIQ4_NL(x, static_cast<BlockIQ4_NL*>(dst), n, imatrix);
    case Type::kIQ4_XS:
      return QuantizeIQ4_XS(x, static_cast<BlockIQ4_XS*>(dst), n, imatrix);
    case Type::kTQ1_0:
      return QuantizeTQ1_0(x, static_cast<BlockTQ1_0*>(dst), n);
    case Type::kTQ2_0:
      return QuantizeTQ2_0(x, static_cast<BlockTQ2_0*>(dst), n);
    case Type::kMXFP4:
      return QuantizeMXFP4(x, static_cast<BlockMXFP4*>(dst), n);
  }
}

}  // namespace qtool::ggml
