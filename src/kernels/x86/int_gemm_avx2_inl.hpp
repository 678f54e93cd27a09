// The integer GEMMs of the 256-bit x86 units (W8A8 and W4A8), written once over the unit's integer
// dot step `Dot`: the AVX2 unit's VPMADDUBSW steps and the AVX-VNNI unit's VPDPBUSD. Include it
// only from units compiled for AVX2 or more; everything here has internal linkage.
//
// Dot supplies, on 8 int32 lanes:
//   kW8Offset            W8A8 steps sum (u - kW8Offset) * q for unsigned weight bytes u;
//   W8, W8Weights(u)     a row's 32 weight bytes as the W8A8 steps take them;
//   W8Step(acc, w, q)    acc + the lanes of sum (u - kW8Offset) * q over 32 bytes;
//   U4Step(acc, u, a)    acc + the lanes of sum u * a over 32 bytes, u in [0, 15];
//   U4Steps(acc, u0, a0, u1, a1)  two U4Steps.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common_inl.hpp"

namespace qtool::kernels::detail {
namespace {

inline int32_t HorizontalSum(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
}

int32_t SumQ(const int8_t* q, int64_t k) {
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += q[i];
  return s;
}

// ---- W8A8 ----

// Each block of up to 4 tokens is interleaved once per call, [k / 32][tokens][32 bytes]
// (4 tokens, or m when m < 4), so that a step of its tokens is one contiguous run, and a
// micro-kernel advances 2 rows x T tokens per 32-byte step. Rows go in chunks of kW8A8ChunkRows,
// whose weights stay in L2 while every token block meets them.
constexpr int kW8A8Tokens = 4;
constexpr int64_t kW8A8ChunkRows = 128;

// acc[r][t] += sum (u - Dot::kW8Offset) * q over the whole 32-byte steps of row r and token t.
template <typename Dot, int R, int T>
inline void W8A8Micro(const uint8_t* row, int64_t k, const int8_t* acts, int64_t ld, int64_t steps,
                      __m256i (&acc)[R][T]) {
  for (int64_t st = 0; st < steps; ++st) {
    typename Dot::W8 wr[R];
    for (int r = 0; r < R; ++r) {
      wr[r] = Dot::W8Weights(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + r * k + 32 * st)));
    }
    const int8_t* a = acts + st * ld;
    for (int t = 0; t < T; ++t) {
      const __m256i q = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + 32 * t));
      for (int r = 0; r < R; ++r) acc[r][t] = Dot::W8Step(acc[r][t], wr[r], q);
    }
  }
}

// Rows [n, n + R) against the token block of T tokens from t0, into y: the exact integer dot
// (sum (u - z) q = sum (u - o) q + (o - z) sum q with o = Dot::kW8Offset, plus the bytes past the
// whole steps), then the reference's float products.
template <typename Dot, int R, int T>
inline void W8A8Tile(const Int8Acts& a, const QuantWeights& w, const int8_t* acts, int64_t ld,
                     const int32_t* sq, int64_t t0, int64_t n, float* y) {
  const int64_t k = w.cols, steps = k / 32;
  __m256i acc[R][T];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_si256();
  }
  const uint8_t* codes = w.codes + n * k;
  W8A8Micro<Dot, R, T>(codes, k, acts, ld, steps, acc);
  for (int r = 0; r < R; ++r) {
    const int32_t z = ZeroOf(w, n + r, 0);
    for (int t = 0; t < T; ++t) {
      const int8_t* q = a.q + (t0 + t) * k;
      int32_t dot = HorizontalSum(acc[r][t]) + (Dot::kW8Offset - z) * sq[t];
      for (int64_t i = steps * 32; i < k; ++i) dot += (codes[r * k + i] - Dot::kW8Offset) * q[i];
      y[(t0 + t) * w.rows + n + r] = static_cast<float>(dot) * a.scales[t0 + t] * w.scales[n + r];
    }
  }
}

template <typename Dot, int T>
void W8A8Rows(const Int8Acts& a, const QuantWeights& w, const int8_t* acts, int64_t ld,
              const int32_t* sq, int64_t t0, int64_t n0, int64_t n1, float* y) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) W8A8Tile<Dot, 2, T>(a, w, acts, ld, sq, t0, n, y);
  if (n < n1) W8A8Tile<Dot, 1, T>(a, w, acts, ld, sq, t0, n, y);
}

template <typename Dot>
void GemmW8A8With(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols, steps = k / 32, ld = 32 * std::min<int64_t>(kW8A8Tokens, a.m);
  const int64_t block_bytes = steps * ld;
  const int64_t blocks = (a.m + kW8A8Tokens - 1) / kW8A8Tokens;
  Scratch acts(0, blocks * block_bytes), sums(1, a.m * 4);
  int32_t* sq = sums.as<int32_t>();
  for (int64_t t = 0; t < a.m; ++t) {
    const int8_t* q = a.q + t * k;
    sq[t] = SumQ(q, k);
    int8_t* dst = acts.as<int8_t>() + t / kW8A8Tokens * block_bytes + t % kW8A8Tokens * 32;
    for (int64_t st = 0; st < steps; ++st) std::memcpy(dst + st * ld, q + st * 32, 32);
  }
  for (int64_t c0 = n0; c0 < n1; c0 += kW8A8ChunkRows) {
    const int64_t c1 = std::min(n1, c0 + kW8A8ChunkRows);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t t0 = b * kW8A8Tokens;
      const int8_t* block = acts.as<int8_t>() + b * block_bytes;
      switch (std::min<int64_t>(kW8A8Tokens, a.m - t0)) {
        case 4:
          W8A8Rows<Dot, 4>(a, w, block, ld, sq + t0, t0, c0, c1, y);
          break;
        case 3:
          W8A8Rows<Dot, 3>(a, w, block, ld, sq + t0, t0, c0, c1, y);
          break;
        case 2:
          W8A8Rows<Dot, 2>(a, w, block, ld, sq + t0, t0, c0, c1, y);
          break;
        default:
          W8A8Rows<Dot, 1>(a, w, block, ld, sq + t0, t0, c0, c1, y);
      }
    }
  }
}

// Calls fn.template operator()<MB>(t0, mb) for token blocks of up to 4.
template <typename Fn>
void OverTokenBlocks(int64_t m, Fn&& fn) {
  for (int64_t t0 = 0; t0 < m; t0 += 4) {
    switch (std::min<int64_t>(4, m - t0)) {
      case 4:
        fn.template operator()<4>(t0);
        break;
      case 3:
        fn.template operator()<3>(t0);
        break;
      case 2:
        fn.template operator()<2>(t0);
        break;
      default:
        fn.template operator()<1>(t0);
    }
  }
}

// ---- W4A8 ----

// dot[t] += lanes of sum u * a over one chunk of `bytes` packed bytes: low nibbles against the
// even activations, high nibbles against the odd ones (see PermuteForNibbles).
template <typename Dot, int MB>
inline void W4Chunk(const uint8_t* row, const int8_t* const* acts, int64_t off, int64_t bytes,
                    __m256i* dot) {
  if (bytes == 32) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + off / 2));
    const __m256i nib = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(b, nib),
                  hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), nib);
    for (int t = 0; t < MB; ++t) {
      const auto* a = reinterpret_cast<const __m256i*>(acts[t] + off);
      dot[t] = Dot::U4Steps(dot[t], lo, _mm256_loadu_si256(a), hi, _mm256_loadu_si256(a + 1));
    }
    return;
  }
  // 16 bytes: low nibbles in the low half, high nibbles in the high half, matching the
  // activation order (16 evens, then 16 odds).
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + off / 2));
  const __m128i nib = _mm_set1_epi8(0x0f);
  const __m256i u =
      _mm256_setr_m128i(_mm_and_si128(b, nib), _mm_and_si128(_mm_srli_epi16(b, 4), nib));
  for (int t = 0; t < MB; ++t) {
    dot[t] =
        Dot::U4Step(dot[t], u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acts[t] + off)));
  }
}

constexpr int64_t kW4A8MaxCodes = 64;

// sums[t] += scale * (the exact dot product of group g of row n with token t). kGroup, when not 0,
// is the group length, known to divide the row: the chunk loop then unrolls, which more than
// halves the time of a GEMV with the common group lengths.
template <typename Dot, int MB, int64_t kGroup>
[[gnu::always_inline]] inline void W4A8Group(const int8_t* const* acts, const int32_t* const* gs,
                                             const QuantWeights& w, int64_t n, int64_t g,
                                             __m256* sums) {
  const uint8_t* row = w.codes + n * w.row_bytes();
  const int64_t g0 = g * (kGroup ? kGroup : w.group);
  const int64_t len = kGroup ? kGroup : std::min(w.group, w.cols - g0);
  const int32_t z = ZeroOf(w, n, g);
  __m256i dot[MB];
  // Lane 0 starts at -z * sum(q), so the lanes add up to the exact group dot product.
  for (int t = 0; t < MB; ++t) dot[t] = _mm256_setr_epi32(-z * gs[t][g], 0, 0, 0, 0, 0, 0, 0);
  // The chunks of PermuteForNibbles: 64 codes while they fit, then 32.
  int64_t off = 0;
  for (; off + kW4A8MaxCodes <= len; off += kW4A8MaxCodes) {
    W4Chunk<Dot, MB>(row, acts, g0 + off, kW4A8MaxCodes / 2, dot);
  }
  if (off < len) W4Chunk<Dot, MB>(row, acts, g0 + off, kW4A8MaxCodes / 4, dot);
  const __m256 s = _mm256_set1_ps(w.scales[n * w.groups_per_row() + g]);
  for (int t = 0; t < MB; ++t) sums[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), s, sums[t]);
}

// Rows [n0, n1) for MB tokens: acts and gs are each token's permuted activations and group sums.
template <typename Dot, int MB, int64_t kGroup>
void W4A8Rows(const int8_t* const* acts, const int32_t* const* gs, const float* sa,
              const QuantWeights& w, int64_t n0, int64_t n1, float* const* y) {
  const int64_t ng = w.groups_per_row();
  for (int64_t n = n0; n < n1; ++n) {
    // Even and odd groups in separate sums, so that the FMA latency does not bound a row.
    __m256 even[MB], odd[MB];
    for (int t = 0; t < MB; ++t) even[t] = odd[t] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= ng; g += 2) {
      W4A8Group<Dot, MB, kGroup>(acts, gs, w, n, g, even);
      W4A8Group<Dot, MB, kGroup>(acts, gs, w, n, g + 1, odd);
    }
    if (g < ng) W4A8Group<Dot, MB, kGroup>(acts, gs, w, n, g, even);
    for (int t = 0; t < MB; ++t) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, _mm256_add_ps(even[t], odd[t]));
      float sum = 0.0f;
      for (const float l : lanes) sum += l;
      y[t][n] = sum * sa[t];
    }
  }
}

template <typename Dot>
void GemmW4A8With(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols, ng = w.groups_per_row();
  Scratch perm(0, a.m * k), sums(1, a.m * ng * 4);
  for (int64_t t = 0; t < a.m; ++t) {
    PermuteForNibbles(a.q + t * k, k, w.group, kW4A8MaxCodes, perm.as<int8_t>() + t * k);
    GroupSums(a.q + t * k, k, w.group, sums.as<int32_t>() + t * ng);
  }
  const int64_t group = k % w.group == 0 ? w.group : 0;
  OverTokenBlocks(a.m, [&]<int MB>(int64_t t0) {
    const int8_t* acts[MB];
    const int32_t* gs[MB];
    float* ys[MB];
    for (int t = 0; t < MB; ++t) {
      acts[t] = perm.as<int8_t>() + (t0 + t) * k;
      gs[t] = sums.as<int32_t>() + (t0 + t) * ng;
      ys[t] = y + (t0 + t) * w.rows;
    }
    const float* sa = a.scales + t0;
    switch (group) {
      case 32:
        return W4A8Rows<Dot, MB, 32>(acts, gs, sa, w, n0, n1, ys);
      case 64:
        return W4A8Rows<Dot, MB, 64>(acts, gs, sa, w, n0, n1, ys);
      case 128:
        return W4A8Rows<Dot, MB, 128>(acts, gs, sa, w, n0, n1, ys);
      case 256:
        return W4A8Rows<Dot, MB, 256>(acts, gs, sa, w, n0, n1, ys);
      default:
        return W4A8Rows<Dot, MB, 0>(acts, gs, sa, w, n0, n1, ys);
    }
  });
}

}  // namespace
}  // namespace qtool::kernels::detail
