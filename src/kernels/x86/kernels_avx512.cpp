// AVX-512 kernels (F, BW, DQ, VL, VNNI). Integer dot products use VPDPBUSD, which multiplies
// unsigned by signed bytes and adds groups of four into int32 lanes without saturation.
#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 reports its own _mm512_undefined_* placeholders as uninitialized (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "../common_inl.hpp"
#include "qtool/kernels.hpp"
#include "ymm_ops_inl.hpp"

namespace qtool::kernels::detail {
namespace {

inline __mmask16 Mask16(int64_t r) { return static_cast<__mmask16>((1u << r) - 1); }
inline __mmask32 Mask32(int64_t r) { return static_cast<__mmask32>((1ull << r) - 1); }
inline __mmask64 Mask64(int64_t r) { return r >= 64 ? ~0ull : (1ull << r) - 1; }

// ---- Conversions ----

void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : Mask16(n - i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, in + i);
    const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    _mm512_mask_storeu_ps(out + i, m, _mm512_castsi512_ps(w));
  }
}

// F16C rounds exactly like the reference but quietens signalling NaNs; the reference keeps the
// payload as is, so NaN lanes are rebuilt from their bits.
void F16ToF32(const uint16_t* in, int64_t n, float* out) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fff), inf = _mm512_set1_epi32(0x7c00);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : Mask16(n - i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, in + i);
    const __m512i h32 = _mm512_cvtepu16_epi32(h);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(h32, abs_mask), inf);
    const __m512i sign = _mm512_slli_epi32(_mm512_andnot_si512(abs_mask, h32), 16);
    const __m512i nan_bits =
        _mm512_or_si512(_mm512_or_si512(sign, _mm512_set1_epi32(0x7f800000)),
                        _mm512_slli_epi32(_mm512_and_si512(h32, _mm512_set1_epi32(0x3ff)), 13));
    const __m512 f = _mm512_mask_blend_ps(nan, _mm512_cvtph_ps(h), _mm512_castsi512_ps(nan_bits));
    _mm512_mask_storeu_ps(out + i, m, f);
  }
}

// Round to nearest even on the bits (VCVTNEPS2BF16 flushes subnormals, so it is not used).
void F32ToBf16(const float* in, int64_t n, uint16_t* out) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : Mask16(n - i);
    const __m512i u = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, in + i));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
    const __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    _mm512_mask_cvtepi32_storeu_epi16(out + i, m, _mm512_mask_blend_epi32(nan, r, q));
  }
}

void F32ToF16(const float* in, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : Mask16(n - i);
    const __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, in + i),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(out + i, m, h);
  }
}

// ---- Integer quantisation ----

// MIN/MAXPS return their second operand unless the first is strictly smaller/larger: exactly
// std::min(acc, x) / std::max(acc, x) of the reference, NaN inputs ignored the same way.
void MinMax(const float* x, int64_t n, float* lo, float* hi) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
    a0 = _mm512_min_ps(v0, a0);
    b0 = _mm512_max_ps(v0, b0);
    a1 = _mm512_min_ps(v1, a1);
    b1 = _mm512_max_ps(v1, b1);
  }
  for (; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(n - i >= 16 ? 0xffff : Mask16(n - i), x + i);
    a0 = _mm512_min_ps(v, a0);
    b0 = _mm512_max_ps(v, b0);
  }
  *lo = _mm512_reduce_min_ps(_mm512_min_ps(a0, a1));
  *hi = _mm512_reduce_max_ps(_mm512_max_ps(b0, b1));
}

// u = clamp(rne(x / scale), -zero, umax - zero) + zero, as QuantizeValue: true division, the
// clamp before rounding, and rounding by adding and subtracting 1.5 * 2^23.
struct CodeQuantizer {
  __m512 scale, lo, hi, magic;
  __m512i zero;
  CodeQuantizer(GroupParams p, int32_t umax)
      : scale(_mm512_set1_ps(p.scale)),
        lo(_mm512_set1_ps(static_cast<float>(-p.zero))),
        hi(_mm512_set1_ps(static_cast<float>(umax - p.zero))),
        magic(_mm512_set1_ps(12582912.0f)),
        zero(_mm512_set1_epi32(p.zero)) {}
  __m512i operator()(__m512 x) const {
    __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(x, scale), lo), hi);
    v = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
    return _mm512_add_epi32(_mm512_cvttps_epi32(v), zero);
  }
};

void QuantizeCodes(const float* x, int64_t n, GroupParams p, int32_t umax, uint8_t* c) {
  const CodeQuantizer quant(p, umax);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : Mask16(n - i);
    _mm512_mask_cvtepi32_storeu_epi8(c + i, m, quant(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void DequantizeCodes(const uint8_t* c, int64_t n, GroupParams p, float* out) {
  const __m512 scale = _mm512_set1_ps(p.scale);
  const __m512i zero = _mm512_set1_epi32(p.zero);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : Mask16(n - i);
    const __m512i u = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, c + i));
    const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(u, zero));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(f, scale));
  }
}

// 64 codes -> 32 bytes: each 16-bit word holds codes 2j (low byte) and 2j+1 (high byte); the low
// byte of w | w >> 4 is code 2j | code 2j+1 << 4.
void PackCodes(const uint8_t* c, int64_t n, int bits, uint8_t* out) {
  if (bits != 4 && bits != 8) return ScalarTable()->pack_codes(c, n, bits, out);
  if (bits == 8) {
    std::memcpy(out, c, static_cast<size_t>(n));
    return;
  }
  for (int64_t i = 0; i < n; i += 64) {
    const int64_t r = std::min<int64_t>(64, n - i);
    const __m512i w = _mm512_maskz_loadu_epi8(Mask64(r), c + i);
    const __m512i b = _mm512_or_si512(w, _mm512_srli_epi16(w, 4));
    _mm256_mask_storeu_epi8(out + i / 2, Mask32((r + 1) / 2), _mm512_cvtepi16_epi8(b));
  }
}

void UnpackCodes(const uint8_t* in, int64_t n, int bits, uint8_t* c) {
  if (bits != 4 && bits != 8) return ScalarTable()->unpack_codes(in, n, bits, c);
  if (bits == 8) {
    std::memcpy(c, in, static_cast<size_t>(n));
    return;
  }
  const __m512i lo = _mm512_set1_epi16(0x000f), hi = _mm512_set1_epi16(0x0f00);
  for (int64_t i = 0; i < n; i += 64) {
    const int64_t r = std::min<int64_t>(64, n - i);
    const __m512i b =
        _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(Mask32((r + 1) / 2), in + i / 2));
    const __m512i u =
        _mm512_or_si512(_mm512_and_si512(b, lo), _mm512_and_si512(_mm512_slli_epi16(b, 4), hi));
    _mm512_mask_storeu_epi8(c + i, Mask64(r), u);
  }
}

void QuantizeActivations(const float* x, int64_t m, int64_t k, int8_t* q, float* s) {
  const QuantSpec spec{8, true, Granularity::kChannel, 0};
  const __m512i floor = _mm512_set1_epi32(-127), offset = _mm512_set1_epi32(128);
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x + t * k;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(k - i >= 16 ? 0xffff : Mask16(k - i), xt + i);
      amax = _mm512_max_ps(_mm512_abs_ps(v), amax);
    }
    const float a = _mm512_reduce_max_ps(amax);
    const GroupParams p = qtool::detail::GroupParamsFromRange(-a, a, spec);
    s[t] = p.scale;
    const CodeQuantizer quant(p, 255);
    for (int64_t i = 0; i < k; i += 16) {
      const __mmask16 mk = k - i >= 16 ? 0xffff : Mask16(k - i);
      const __m512i u = quant(_mm512_maskz_loadu_ps(mk, xt + i));
      _mm512_mask_cvtepi32_storeu_epi8(q + t * k + i, mk,
                                       _mm512_max_epi32(_mm512_sub_epi32(u, offset), floor));
    }
  }
}

// ---- W8A8 ----

int32_t SumQ(const int8_t* q, int64_t k) {
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += q[i];
  return s;
}

// One token against rows [n0, n1): 64 products per VPDPBUSD, rows two at a time.
void W8A8Rows(const int8_t* q, float sa, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols;
  const int32_t sq = SumQ(q, k);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.codes + n * k;
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0;
    int64_t i = 0;
    for (; i + 128 <= k; i += 128) {
      acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(row + i), _mm512_loadu_si512(q + i));
      acc1 = _mm512_dpbusd_epi32(acc1, _mm512_loadu_si512(row + i + 64),
                                 _mm512_loadu_si512(q + i + 64));
    }
    for (; i < k; i += 64) {
      const __mmask64 m = Mask64(k - i);
      acc0 = _mm512_dpbusd_epi32(acc0, _mm512_maskz_loadu_epi8(m, row + i),
                                 _mm512_maskz_loadu_epi8(m, q + i));
    }
    const int32_t dot =
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1)) - ZeroOf(w, n, 0) * sq;
    y[n] = static_cast<float>(dot) * sa * w.scales[n];
  }
}

// GEMM: weights are packed into panels of 16 rows x 4 bytes per 64-byte vector so that one
// VPDPBUSD with a broadcast of 4 activation bytes advances 16 outputs by 4 products each. The
// micro-kernel keeps 8 tokens x 48 outputs in 24 named accumulators (GCC spills arrays of vector
// accumulators); token counts are padded to 8 with zero rows. Both operands are interleaved so
// that each step reads one contiguous 192-byte run of weights and 32 bytes of activations:
//   weights [k4 / 4][3 panels][16 rows][4 bytes], activations [m / 8][k4 / 4][8 tokens][4 bytes].
constexpr int kPanel = 16, kPanels = 3, kMr = 8;

// Rounds 1 and 2 of a dword transpose, on the 4 rows r[0..3]: afterwards r[s] holds, in its
// 128-bit lane l, element 4l + s of each of the 4 rows.
inline void TransposeDwords4(__m512i* r) {
  const __m512i a0 = _mm512_unpacklo_epi32(r[0], r[1]), a1 = _mm512_unpackhi_epi32(r[0], r[1]);
  const __m512i a2 = _mm512_unpacklo_epi32(r[2], r[3]), a3 = _mm512_unpackhi_epi32(r[2], r[3]);
  r[0] = _mm512_unpacklo_epi64(a0, a2);
  r[1] = _mm512_unpackhi_epi64(a0, a2);
  r[2] = _mm512_unpacklo_epi64(a1, a3);
  r[3] = _mm512_unpackhi_epi64(a1, a3);
}

// Panel j (rows nb .. nb + 15) of the interleaved weight block: the dwords of 16 rows, 16 at a
// time, transposed in registers so that each store holds one group of 4 bytes of every row.
void PackPanel(const QuantWeights& w, int64_t nb, int64_t n1, int64_t k4, uint8_t* panel) {
  const int64_t k = w.cols;
  const int64_t rows = std::clamp<int64_t>(n1 - nb, 0, kPanel);
  const uint8_t* base = w.codes + std::min(nb, n1) * k;
  const int64_t full = k / 4;
  int64_t kk = 0;
  for (; kk + 16 <= full; kk += 16) {
    __m512i r[16];
    for (int i = 0; i < 16; ++i) {
      r[i] = i < rows ? _mm512_loadu_si512(base + i * k + 4 * kk) : _mm512_setzero_si512();
    }
    for (int g = 0; g < 4; ++g) TransposeDwords4(r + 4 * g);
    // r[4g + s] lane l: element 4l + s of rows 4g .. 4g + 3; gather the four row groups' lanes.
    for (int s = 0; s < 4; ++s) {
      const __m512i d0 = _mm512_shuffle_i32x4(r[s], r[4 + s], 0x44);
      const __m512i d1 = _mm512_shuffle_i32x4(r[s], r[4 + s], 0xee);
      const __m512i d2 = _mm512_shuffle_i32x4(r[8 + s], r[12 + s], 0x44);
      const __m512i d3 = _mm512_shuffle_i32x4(r[8 + s], r[12 + s], 0xee);
      uint8_t* dst = panel + (kk + s) * 64 * kPanels;
      _mm512_store_si512(dst, _mm512_shuffle_i32x4(d0, d2, 0x88));
      _mm512_store_si512(dst + 4 * 64 * kPanels, _mm512_shuffle_i32x4(d0, d2, 0xdd));
      _mm512_store_si512(dst + 8 * 64 * kPanels, _mm512_shuffle_i32x4(d1, d3, 0x88));
      _mm512_store_si512(dst + 12 * 64 * kPanels, _mm512_shuffle_i32x4(d1, d3, 0xdd));
    }
  }
  for (; kk < k4 / 4; ++kk) {  // the last groups of 4, the final one possibly partial
    uint8_t* dst = panel + kk * 64 * kPanels;
    std::memset(dst, 0, 64);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < 4 && 4 * kk + j < k; ++j) dst[r * 4 + j] = base[r * k + 4 * kk + j];
    }
  }
}

// Tokens t .. t + 7 of q (rows of k bytes) into the micro-kernel's layout [k4 / 4][8][4 bytes]:
// 16 groups of 4 bytes of each token at a time, transposed in registers; padding tokens and the
// bytes past k are zero. sums[i] = sum of token t + i's codes, for the tokens that exist.
void InterleaveTokens(const int8_t* q, int64_t m, int64_t k, int64_t t, int8_t* block,
                      int32_t* sums) {
  const int64_t rows = std::min<int64_t>(kMr, m - t), full = k / 4;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i sum[kMr];
  for (auto& v : sum) v = _mm512_setzero_si512();
  int64_t kk = 0;
  for (; kk + 16 <= full; kk += 16) {
    __m512i r[kMr];
    for (int i = 0; i < kMr; ++i) {
      r[i] = i < rows ? _mm512_loadu_si512(q + (t + i) * k + 4 * kk) : _mm512_setzero_si512();
      sum[i] = _mm512_dpbusd_epi32(sum[i], ones, r[i]);
    }
    TransposeDwords4(r);
    TransposeDwords4(r + 4);
    // r[s] and r[4 + s], lane l: element 4l + s of tokens 0..3 and 4..7. Output vector j holds
    // elements 2j and 2j + 1 of the 8 tokens.
    for (int s = 0; s < 4; s += 2) {
      const __m512i lo0 = _mm512_shuffle_i32x4(r[s], r[4 + s], 0x44);
      const __m512i hi0 = _mm512_shuffle_i32x4(r[s], r[4 + s], 0xee);
      const __m512i lo1 = _mm512_shuffle_i32x4(r[s + 1], r[5 + s], 0x44);
      const __m512i hi1 = _mm512_shuffle_i32x4(r[s + 1], r[5 + s], 0xee);
      int8_t* dst = block + (kk + s) * 32;
      _mm512_storeu_si512(dst, _mm512_shuffle_i32x4(lo0, lo1, 0x88));
      _mm512_storeu_si512(dst + 4 * 32, _mm512_shuffle_i32x4(lo0, lo1, 0xdd));
      _mm512_storeu_si512(dst + 8 * 32, _mm512_shuffle_i32x4(hi0, hi1, 0x88));
      _mm512_storeu_si512(dst + 12 * 32, _mm512_shuffle_i32x4(hi0, hi1, 0xdd));
    }
  }
  for (int64_t r = 0; r < rows; ++r) sums[r] = _mm512_reduce_add_epi32(sum[r]);
  for (; kk < (k + 3) / 4; ++kk) {
    int8_t* dst = block + kk * 32;
    std::memset(dst, 0, 32);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < 4 && 4 * kk + j < k; ++j) {
        const int8_t v = q[(t + r) * k + 4 * kk + j];
        dst[r * 4 + j] = v;
        sums[r] += v;
      }
    }
  }
}

// Four tokens' steps of the micro-kernel: acc(r, j) += panel_j * broadcast(4 activation bytes of
// token r), with the broadcast embedded in VPDPBUSD's memory operand ({1to16}). A separate
// broadcast into a register would cost a shuffle per token and step, a quarter of the work.
#define QTOOL_DP(off, j, acc) "vpdpbusd " #off "(%[a])%{1to16%}, %[w" #j "], %" #acc "\n\t"
#define QTOOL_TOKEN(off, a0, a1, a2) QTOOL_DP(off, 0, a0) QTOOL_DP(off, 1, a1) QTOOL_DP(off, 2, a2)
#define QTOOL_ACC(r) "+v"(c##r##0), "+v"(c##r##1), "+v"(c##r##2)

// The scaling of a whole tile, 8 tokens x 48 rows, done on the accumulators in registers:
// y = float(acc - zero * sum(q)) * a_scale * w_scale, the reference's order of products.
struct W8A8Tile {
  __m512i zero[kPanels];
  __m512 w_scale[kPanels];
  const int32_t* sums;  // of the tile's 8 tokens
  const float* a_scales;
  float* y;  // the tile's first output; tokens are w.rows apart
  int64_t ldy;
};

inline void W8A8TileRow(const W8A8Tile& o, int r, __m512i c0, __m512i c1, __m512i c2) {
  const __m512i sum = _mm512_set1_epi32(o.sums[r]);
  const __m512 sa = _mm512_set1_ps(o.a_scales[r]);
  float* y = o.y + r * o.ldy;
  const __m512i c[kPanels] = {c0, c1, c2};
  for (int j = 0; j < kPanels; ++j) {
    const __m512i dot = _mm512_sub_epi32(c[j], _mm512_mullo_epi32(o.zero[j], sum));
    _mm512_storeu_ps(y + j * kPanel,
                     _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), sa), o.w_scale[j]));
  }
}

// acc[r][j] = sum_k panel_j[k] * a_r[k] over the padded length k4, for 8 tokens and 3 panels.
// With `tile`, the outputs are scaled and stored from registers instead, and acc is unused.
void W8A8Micro(const uint8_t* panels, const int8_t* a, int64_t k4, const W8A8Tile* tile,
               __m512i (*acc)[kPanels]) {
#define QTOOL_ROW(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = c##r##0, c##r##2 = c##r##0
  QTOOL_ROW(0);
  QTOOL_ROW(1);
  QTOOL_ROW(2);
  QTOOL_ROW(3);
  QTOOL_ROW(4);
  QTOOL_ROW(5);
  QTOOL_ROW(6);
  QTOOL_ROW(7);
#undef QTOOL_ROW
  for (int64_t kk = 0; kk < k4 / 4; ++kk) {
    const uint8_t* p = panels + kk * 64 * kPanels;
    const int8_t* ap = a + kk * 32;
    const __m512i w0 = _mm512_load_si512(p), w1 = _mm512_load_si512(p + 64),
                  w2 = _mm512_load_si512(p + 128);
    asm(QTOOL_TOKEN(0, 0, 1, 2) QTOOL_TOKEN(4, 3, 4, 5) QTOOL_TOKEN(8, 6, 7, 8)
            QTOOL_TOKEN(12, 9, 10, 11)
        : QTOOL_ACC(0), QTOOL_ACC(1), QTOOL_ACC(2), QTOOL_ACC(3)
        : [a] "r"(ap), [w0] "v"(w0), [w1] "v"(w1), [w2] "v"(w2));
    asm(QTOOL_TOKEN(16, 0, 1, 2) QTOOL_TOKEN(20, 3, 4, 5) QTOOL_TOKEN(24, 6, 7, 8)
            QTOOL_TOKEN(28, 9, 10, 11)
        : QTOOL_ACC(4), QTOOL_ACC(5), QTOOL_ACC(6), QTOOL_ACC(7)
        : [a] "r"(ap), [w0] "v"(w0), [w1] "v"(w1), [w2] "v"(w2));
  }
  const auto out = [&](int r, __m512i c0, __m512i c1, __m512i c2) {
    if (tile) {
      W8A8TileRow(*tile, r, c0, c1, c2);
    } else {
      acc[r][0] = c0, acc[r][1] = c1, acc[r][2] = c2;
    }
  };
#define QTOOL_OUT(r) out(r, c##r##0, c##r##1, c##r##2)
  QTOOL_OUT(0);
  QTOOL_OUT(1);
  QTOOL_OUT(2);
  QTOOL_OUT(3);
  QTOOL_OUT(4);
  QTOOL_OUT(5);
  QTOOL_OUT(6);
  QTOOL_OUT(7);
#undef QTOOL_OUT
}
#undef QTOOL_ACC
#undef QTOOL_TOKEN
#undef QTOOL_DP

// y = float(acc - zero * sum(q)) * a_scale * w_scale, the reference's order of products.
void W8A8Store(__m512i (*acc)[kPanels], const Int8Acts& a, const int32_t* sums,
               const QuantWeights& w, int64_t t0, int64_t nb, int64_t n1, float* y) {
  const int64_t rows = std::min<int64_t>(kMr, a.m - t0);
  for (int j = 0; j < kPanels; ++j) {
    const int64_t c0 = nb + j * kPanel;
    if (c0 >= n1) break;
    const __mmask16 m = n1 - c0 >= 16 ? 0xffff : Mask16(n1 - c0);
    const __m512i zero = w.zeros ? _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, w.zeros + c0))
                                 : _mm512_set1_epi32(128);
    const __m512 sw = _mm512_maskz_loadu_ps(m, w.scales + c0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = t0 + r;
      const __m512i dot =
          _mm512_sub_epi32(acc[r][j], _mm512_mullo_epi32(zero, _mm512_set1_epi32(sums[t])));
      const __m512 v =
          _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(a.scales[t])), sw);
      _mm512_mask_storeu_ps(y + t * w.rows + c0, m, v);
    }
  }
}

void GemmW8A8(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols;
  if (a.m < kGemmTokens) {
    for (int64_t t = 0; t < a.m; ++t) {
      W8A8Rows(a.q + t * k, a.scales[t], w, n0, n1, y + t * w.rows);
    }
    return;
  }
  // The activations are interleaved once. Then, chunk by chunk of kChunkBlocks weight blocks
  // (packed together, a few hundred KB that stay in L2), each 8-token activation block is read
  // once from memory and stays in L1 while it meets every weight block of the chunk.
  constexpr int64_t kChunkBlocks = 8;
  const int64_t k4 = (k + 3) / 4 * 4, m8 = (a.m + kMr - 1) / kMr * kMr;
  const int64_t block_cols = kPanels * kPanel, block_bytes = block_cols * k4;
  Scratch panels(0, kChunkBlocks * block_bytes), acts(1, m8 * k4), sums(2, a.m * 4);
  auto* ap = acts.as<int8_t>();
  for (int64_t t = 0; t < a.m; t += kMr) {
    InterleaveTokens(a.q, a.m, k, t, ap + t * k4, sums.as<int32_t>() + t);
  }
  __m512i acc[kMr][kPanels];
  for (int64_t c0 = n0; c0 < n1; c0 += kChunkBlocks * block_cols) {
    const int64_t c1 = std::min(n1, c0 + kChunkBlocks * block_cols);
    const int64_t nblocks = (c1 - c0 + block_cols - 1) / block_cols;
    for (int64_t b = 0; b < nblocks; ++b) {
      for (int j = 0; j < kPanels; ++j) {
        PackPanel(w, c0 + b * block_cols + j * kPanel, c1, k4,
                  panels.as<uint8_t>() + b * block_bytes + j * 64);
      }
    }
    for (int64_t t = 0; t < a.m; t += kMr) {
      for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t nb = c0 + b * block_cols;
        const uint8_t* block = panels.as<uint8_t>() + b * block_bytes;
        if (t + kMr <= a.m && nb + block_cols <= c1) {
          W8A8Tile tile{{}, {}, sums.as<int32_t>() + t, a.scales + t, y + t * w.rows + nb, w.rows};
          for (int j = 0; j < kPanels; ++j) {
            const int64_t r0 = nb + j * kPanel;
            tile.zero[j] = w.zeros ? _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                         reinterpret_cast<const __m128i*>(w.zeros + r0)))
                                   : _mm512_set1_epi32(128);
            tile.w_scale[j] = _mm512_loadu_ps(w.scales + r0);
          }
          // The tile's outputs are fetched into cache now, so the stores at its end need not wait
          // for memory.
          for (int r = 0; r < kMr; ++r) {
            for (int j = 0; j < kPanels; ++j) {
              _mm_prefetch(reinterpret_cast<const char*>(tile.y + r * tile.ldy + j * kPanel),
                           _MM_HINT_T0);
            }
          }
          W8A8Micro(block, ap + t * k4, k4, &tile, acc);
        } else {
          W8A8Micro(block, ap + t * k4, k4, nullptr, acc);
          W8A8Store(acc, a, sums.as<int32_t>(), w, t, nb, c1, y);
        }
      }
    }
  }
}

// ---- W4A8 ----

// One chunk of `bytes` packed bytes (2 * bytes codes): low nibbles against the even activations,
// high nibbles against the odd ones (see PermuteForNibbles).
template <int MB>
inline void W4A8Chunk(const uint8_t* codes, const int8_t* const* acts, int64_t off, int64_t bytes,
                      __m512i* dot) {
  const __mmask64 m = Mask64(bytes);
  const __m512i b = _mm512_maskz_loadu_epi8(m, codes + off / 2);
  const __m512i nib = _mm512_set1_epi8(0x0f);
  const __m512i lo = _mm512_and_si512(b, nib);
  const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), nib);
  for (int t = 0; t < MB; ++t) {
    dot[t] = _mm512_dpbusd_epi32(dot[t], lo, _mm512_maskz_loadu_epi8(m, acts[t] + off));
    dot[t] = _mm512_dpbusd_epi32(dot[t], hi, _mm512_maskz_loadu_epi8(m, acts[t] + off + bytes));
  }
}

constexpr int64_t kW4A8MaxCodes = 128;

// MB tokens (permuted activations, group sums) against rows [n0, n1).
template <int MB>
void W4A8Tokens(const int8_t* const* acts, const int32_t* const* sums, const float* sa,
                const QuantWeights& w, int64_t n0, int64_t n1, float* const* y) {
  const int64_t k = w.cols, ng = w.groups_per_row(), rb = w.row_bytes();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.codes + n * rb;
    __m512 acc[MB];
    for (int t = 0; t < MB; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t g0 = g * w.group, len = std::min(w.group, k - g0);
      const int32_t z = ZeroOf(w, n, g);
      __m512i dot[MB];
      // Lane 0 starts at -z * sum(q): the lanes then add up to the exact group dot product.
      for (int t = 0; t < MB; ++t)
        dot[t] = _mm512_zextsi128_si512(_mm_cvtsi32_si128(-z * sums[t][g]));
      for (int64_t off = 0; off < len;) {
        const int64_t c = ChunkCodes(len - off, kW4A8MaxCodes);
        W4A8Chunk<MB>(row, acts, g0 + off, c / 2, dot);
        off += c;
      }
      const __m512 s = _mm512_set1_ps(w.scales[n * ng + g]);
      for (int t = 0; t < MB; ++t) acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), s, acc[t]);
    }
    for (int t = 0; t < MB; ++t) y[t][n] = _mm512_reduce_add_ps(acc[t]) * sa[t];
  }
}

void GemmW4A8(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols, ng = w.groups_per_row();
  Scratch perm(0, a.m * k), sums(1, a.m * ng * 4);
  for (int64_t t = 0; t < a.m; ++t) {
    PermuteForNibbles(a.q + t * k, k, w.group, kW4A8MaxCodes, perm.as<int8_t>() + t * k);
    GroupSums(a.q + t * k, k, w.group, sums.as<int32_t>() + t * ng);
  }
  constexpr int kMb = 4;
  for (int64_t t0 = 0; t0 < a.m; t0 += kMb) {
    const int mb = static_cast<int>(std::min<int64_t>(kMb, a.m - t0));
    const int8_t* acts[kMb];
    const int32_t* gs[kMb];
    float* ys[kMb];
    for (int t = 0; t < mb; ++t) {
      acts[t] = perm.as<int8_t>() + (t0 + t) * k;
      gs[t] = sums.as<int32_t>() + (t0 + t) * ng;
      ys[t] = y + (t0 + t) * w.rows;
    }
    const float* sa = a.scales + t0;
    switch (mb) {
      case 4:
        W4A8Tokens<4>(acts, gs, sa, w, n0, n1, ys);
        break;
      case 3:
        W4A8Tokens<3>(acts, gs, sa, w, n0, n1, ys);
        break;
      case 2:
        W4A8Tokens<2>(acts, gs, sa, w, n0, n1, ys);
        break;
      default:
        W4A8Tokens<1>(acts, gs, sa, w, n0, n1, ys);
    }
  }
}

// ---- W4A16 and NF4: 32 codes (16 bytes) per step against permuted f32 activations ----

struct Avx512Ops {
  using Vec = __m512;
  static Vec Zero() { return _mm512_setzero_ps(); }
  static Vec MulAdd(Vec acc, Vec dot, float s) {
    return _mm512_fmadd_ps(dot, _mm512_set1_ps(s), acc);
  }
  static float Sum(Vec v) { return _mm512_reduce_add_ps(v); }
  static void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
    detail::Bf16ToF32(in, n, out);
  }
  template <typename Lut>
  static Vec NibbleDot(const uint8_t* row, const float* x, int64_t g0, int64_t len, Lut lut) {
    Vec dot = Zero();
    const __m128i nib = _mm_set1_epi8(0x0f);
    for (int64_t off = g0; off < g0 + len; off += 32) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + off / 2));
      const __m512i lo = _mm512_cvtepu8_epi32(_mm_and_si128(b, nib));
      const __m512i hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), nib));
      dot = _mm512_fmadd_ps(lut(lo), _mm512_loadu_ps(x + off), dot);
      dot = _mm512_fmadd_ps(lut(hi), _mm512_loadu_ps(x + off + 16), dot);
    }
    return dot;
  }
  static auto ZeroLut(int32_t z) {
    return [zv = _mm512_set1_epi32(z)](__m512i u) {
      return _mm512_cvtepi32_ps(_mm512_sub_epi32(u, zv));
    };
  }
  static auto Nf4Lut(const float* values) {
    return [table = _mm512_loadu_ps(values)](__m512i u) { return _mm512_permutexvar_ps(u, table); };
  }
};

// ---- Quantisation straight from stored rows ----

// 16 stored values from element i of x, as f32.
inline __m512 LoadStored(const void* x, StoredFloat type, int64_t i) {
  switch (type) {
    case StoredFloat::kBf16: {
      const __m256i h =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + i));
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case StoredFloat::kF16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + i)));
    case StoredFloat::kF32:
      break;
  }
  return _mm512_loadu_ps(static_cast<const float*>(x) + i);
}

// A group's range as MinMax keeps it (lanes from 0, MINPS/MAXPS with the value first), and
// whether any value is NaN or Inf.
struct StoredRange {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  __mmask16 bad = 0;
  void Add(__m512 v) {
    bad |= _mm512_fpclass_ps_mask(v, 0x99);  // QNaN, +Inf, -Inf, SNaN
    lo = _mm512_min_ps(v, lo);
    hi = _mm512_max_ps(v, hi);
  }
};

// Quantises, decodes, compares and packs (4 or 8 bits) one group's values 16 at a time, in order
// from the start of the call; the error sums follow AccumulateErrors' blocks over all of them.
class StoredCoder {
 public:
  StoredCoder(const QuantSpec& spec, uint8_t* packed, ErrorStats* s)
      : spec_(spec), out_(packed), s_(s) {}
  // Starts a group: its parameters from the range, stored at scales[g] (and zeros[g]).
  void Begin(const StoredRange& range, int64_t g, float* scales, uint8_t* zeros) {
    const GroupParams p = qtool::detail::GroupParamsFromRange(
        _mm512_reduce_min_ps(range.lo), _mm512_reduce_max_ps(range.hi), spec_);
    scales[g] = p.scale;
    if (zeros) zeros[g] = static_cast<uint8_t>(p.zero);
    scale_ = _mm512_set1_ps(p.scale);
    qlo_ = _mm512_set1_ps(static_cast<float>(-p.zero));
    qhi_ = _mm512_set1_ps(static_cast<float>((1 << spec_.bits) - 1 - p.zero));
    zero_ = _mm512_set1_epi32(p.zero);
  }
  // QuantizeValue with the rounding done by VRNDSCALEPS: r = rne(clamp(x / scale)) is an
  // integer in float, so the decoded value (u - zero) * scale is r * scale.
  void Code(__m512 v) {
    const __m512 r =
        _mm512_roundscale_ps(_mm512_min_ps(_mm512_max_ps(_mm512_div_ps(v, scale_), qlo_), qhi_),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 y = _mm512_mul_ps(r, scale_);
    // The error sums' halves of the step: runs 0 and 2 of the 16 values, then runs 1 and 3.
    const __m512 vr = _mm512_shuffle_f32x4(v, v, 0xd8), yr = _mm512_shuffle_f32x4(y, y, 0xd8);
    lanes_.Step(_mm512_castps512_ps256(vr), _mm512_castps512_ps256(yr));
    lanes_.Step(_mm512_extractf32x8_ps(vr, 1), _mm512_extractf32x8_ps(yr, 1));
    in_block_ += 16;
    if (in_block_ == kErrorBlock) {
      lanes_.Flush(s_);
      in_block_ = 0;
    }
    const __m128i c = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvttps_epi32(r), zero_));
    if (spec_.bits == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out_), c);
      out_ += 16;
    } else {
      // Byte pairs as 16-bit words: the low byte of w | w >> 4 is code 2i | code 2i+1 << 4.
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out_),
                       _mm_cvtepi16_epi8(_mm_or_si128(c, _mm_srli_epi16(c, 4))));
      out_ += 8;
    }
  }
  // Ends the call: the last partial block of error sums, and the count of n values.
  void Finish(int64_t n) {
    if (in_block_ > 0) lanes_.Flush(s_);
    s_->n += n;
  }

 private:
  const QuantSpec& spec_;
  uint8_t* out_;
  ErrorStats* s_;
  ErrorLanes<YmmOps> lanes_;
  int64_t in_block_ = 0;
  __m512 scale_, qlo_, qhi_;
  __m512i zero_;
};

// Index into x of the first non-finite value among the n at x + i0.
int64_t FirstNonFiniteStored(const void* x, StoredFloat type, int64_t i0, int64_t n) {
  for (int64_t i = i0; i < i0 + n; i += 16) {
    alignas(64) float w[16];
    _mm512_store_ps(w, LoadStored(x, type, i));
    for (int k = 0; k < 16; ++k) {
      if (!std::isfinite(w[k])) return i + k;
    }
  }
  return -1;
}

// Groups of 16 * NV values held in registers from load to packed codes: one pass over x. Needs
// cols to be a multiple of the group length.
template <int NV>
int64_t StoredGroupsInRegisters(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                                const QuantSpec& spec, uint8_t* packed, float* scales,
                                uint8_t* zeros, ErrorStats* s) {
  constexpr int64_t kLen = 16 * NV;
  const int64_t groups = rows * cols / kLen;
  StoredCoder coder(spec, packed, s);
  for (int64_t g = 0; g < groups; ++g) {
    __m512 v[NV];
    StoredRange range;
    for (int j = 0; j < NV; ++j) {
      v[j] = LoadStored(x, type, g * kLen + 16 * j);
      range.Add(v[j]);
    }
    if (range.bad) return FirstNonFiniteStored(x, type, g * kLen, kLen);
    coder.Begin(range, g, scales, zeros);
    for (int j = 0; j < NV; ++j) coder.Code(v[j]);
  }
  coder.Finish(rows * cols);
  return -1;
}

// Any group length: each group read twice (range, then codes), the second time from cache.
int64_t StoredGroupsTwoPass(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                            int64_t glen, const QuantSpec& spec, uint8_t* packed, float* scales,
                            uint8_t* zeros, ErrorStats* s) {
  const int64_t ng = (cols + glen - 1) / glen;
  StoredCoder coder(spec, packed, s);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t i0 = r * cols + g * glen, len = std::min(glen, cols - g * glen);
      StoredRange range;
      for (int64_t i = i0; i < i0 + len; i += 16) range.Add(LoadStored(x, type, i));
      if (range.bad) return FirstNonFiniteStored(x, type, i0, len);
      coder.Begin(range, r * ng + g, scales, zeros);
      for (int64_t i = i0; i < i0 + len; i += 16) coder.Code(LoadStored(x, type, i));
    }
  }
  coder.Finish(rows * cols);
  return -1;
}

int64_t QuantizeStoredRows(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                           int64_t glen, const QuantSpec& spec, uint8_t* packed, float* scales,
                           uint8_t* zeros, ErrorStats* s) {
  if (spec.bits != 4 && spec.bits != 8) {
    return QuantizeStoredRowsWith<YmmOps, Bf16ToF32, F16ToF32, MinMax, QuantizeCodes,
                                  DequantizeCodes, PackCodes>(x, type, rows, cols, glen, spec,
                                                              packed, scales, zeros, s);
  }
  if (cols % glen == 0) {
    switch (glen) {
      case 32:
        return StoredGroupsInRegisters<2>(x, type, rows, cols, spec, packed, scales, zeros, s);
      case 64:
        return StoredGroupsInRegisters<4>(x, type, rows, cols, spec, packed, scales, zeros, s);
      case 128:
        return StoredGroupsInRegisters<8>(x, type, rows, cols, spec, packed, scales, zeros, s);
      case 256:
        return StoredGroupsInRegisters<16>(x, type, rows, cols, spec, packed, scales, zeros, s);
      default:
        break;
    }
  }
  return StoredGroupsTwoPass(x, type, rows, cols, glen, spec, packed, scales, zeros, s);
}

}  // namespace

const KernelTable* Avx512Table() {
  static constexpr KernelTable kTable{QTOOL_X86_TABLE_ENTRIES(Avx512Ops),
                                      .f32_gemm_panels = PanelsAvx512,
                                      .f32_gemm_micro = MicroKernelAvx512};
  return &kTable;
}

}  // namespace qtool::kernels::detail

#else
#include "../table.hpp"
const qtool::kernels::detail::KernelTable* qtool::kernels::detail::Avx512Table() { return nullptr; }
#endif
