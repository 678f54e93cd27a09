// AVX2 kernels (with FMA and F16C). Integer dot products use VPMADDUBSW (unsigned x signed bytes,
// pairs summed to int16 with saturation) then VPMADDWD by ones into int32; operands are arranged so
// that no pair sum can reach the int16 limit. Tails run through a zero-padded block on the stack.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>

#include "../common_inl.hpp"
#include "../float_codes_inl.hpp"
#include "qtool/kernels.hpp"

namespace qtool::kernels::detail {
namespace {

// ---- Conversions ----

void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
  Blocks<8>(in, n, out, [](const uint16_t* s, float* d) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d),
                        _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  });
}

// F16C quietens signalling NaNs; the reference keeps NaN payloads, so NaN lanes are rebuilt.
void F16ToF32(const uint16_t* in, int64_t n, float* out) {
  Blocks<8>(in, n, out, [](const uint16_t* s, float* d) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m256i h32 = _mm256_cvtepu16_epi32(h);
    const __m256i abs = _mm256_and_si256(h32, _mm256_set1_epi32(0x7fff));
    const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7c00));
    const __m256i bits =
        _mm256_or_si256(_mm256_or_si256(_mm256_slli_epi32(_mm256_andnot_si256(abs, h32), 16),
                                        _mm256_set1_epi32(0x7f800000)),
                        _mm256_slli_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x3ff)), 13));
    _mm256_storeu_ps(d, _mm256_blendv_ps(_mm256_cvtph_ps(h), _mm256_castsi256_ps(bits),
                                         _mm256_castsi256_ps(nan)));
  });
}

void F32ToBf16(const float* in, int64_t n, uint16_t* out) {
  Blocks<8>(in, n, out, [](const float* s, uint16_t* d) {
    const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(s));
    const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
    const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i v = _mm256_blendv_epi8(r, q, nan);
    const __m128i packed =
        _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), packed);
  });
}

void F32ToF16(const float* in, int64_t n, uint16_t* out) {
  Blocks<8>(in, n, out, [](const float* s, uint16_t* d) {
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(d),
        _mm256_cvtps_ph(_mm256_loadu_ps(s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  });
}

// ---- Integer quantisation ----

// MIN/MAXPS keep their second operand unless the first is strictly smaller/larger: exactly the
// reference's std::min(acc, x) / std::max(acc, x). Zero padding cannot change a range that
// includes 0.
void MinMax(const float* x, int64_t n, float* lo, float* hi) {
  __m256 a = _mm256_setzero_ps(), b = a;
  BlocksIn<8>(x, n, [&](const float* s) {
    const __m256 v = _mm256_loadu_ps(s);
    a = _mm256_min_ps(v, a);
    b = _mm256_max_ps(v, b);
  });
  alignas(32) float la[8], lb[8];
  _mm256_store_ps(la, a);
  _mm256_store_ps(lb, b);
  float l = 0.0f, h = 0.0f;
  for (int i = 0; i < 8; ++i) {
    l = la[i] < l ? la[i] : l;
    h = lb[i] > h ? lb[i] : h;
  }
  *lo = l;
  *hi = h;
}

// QuantizeValue on 8 lanes: true division, clamp before rounding, round by +-1.5 * 2^23.
struct CodeQuantizer {
  __m256 scale, lo, hi, magic;
  __m256i zero;
  CodeQuantizer(GroupParams p, int32_t umax)
      : scale(_mm256_set1_ps(p.scale)),
        lo(_mm256_set1_ps(static_cast<float>(-p.zero))),
        hi(_mm256_set1_ps(static_cast<float>(umax - p.zero))),
        magic(_mm256_set1_ps(12582912.0f)),
        zero(_mm256_set1_epi32(p.zero)) {}
  __m256i operator()(const float* x) const {
    __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_loadu_ps(x), scale), lo), hi);
    v = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
    return _mm256_add_epi32(_mm256_cvttps_epi32(v), zero);
  }
};

// Four vectors of 8 int32 in [lo, hi] -> 32 bytes in order (the packs work per 128-bit lane).
__m256i NarrowToBytes(__m256i a, __m256i b, __m256i c, __m256i d, bool is_signed) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  const __m256i v = is_signed ? _mm256_packs_epi16(ab, cd) : _mm256_packus_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void QuantizeCodes(const float* x, int64_t n, GroupParams p, int32_t umax, uint8_t* c) {
  const CodeQuantizer quant(p, umax);
  Blocks<32>(x, n, c, [&quant](const float* s, uint8_t* d) {
    const __m256i v = NarrowToBytes(quant(s), quant(s + 8), quant(s + 16), quant(s + 24), false);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), v);
  });
}

void DequantizeCodes(const uint8_t* c, int64_t n, GroupParams p, float* out) {
  const __m256 scale = _mm256_set1_ps(p.scale);
  const __m256i zero = _mm256_set1_epi32(p.zero);
  Blocks<8>(c, n, out, [&](const uint8_t* s, float* d) {
    const __m256i u = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
    _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(u, zero)), scale));
  });
}

// 64 codes -> 32 bytes: in each 16-bit word (codes 2j, 2j+1) the low byte of w | w >> 4 is
// code 2j | code 2j+1 << 4.
void PackCodes(const uint8_t* c, int64_t n, int bits, uint8_t* out) {
  if (bits != 4 && bits != 8) return ScalarTable()->pack_codes(c, n, bits, out);
  if (bits == 8) {
    std::memcpy(out, c, static_cast<size_t>(n));
    return;
  }
  const __m256i low = _mm256_set1_epi16(0x00ff);
  const int64_t whole = n / 64 * 64;
  for (int64_t i = 0; i < whole; i += 64) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 32));
    const __m256i p0 = _mm256_and_si256(_mm256_or_si256(w0, _mm256_srli_epi16(w0, 4)), low);
    const __m256i p1 = _mm256_and_si256(_mm256_or_si256(w1, _mm256_srli_epi16(w1, 4)), low);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i / 2),
                        _mm256_permute4x64_epi64(_mm256_packus_epi16(p0, p1), 0xd8));
  }
  if (whole < n) ScalarTable()->pack_codes(c + whole, n - whole, 4, out + whole / 2);
}

void UnpackCodes(const uint8_t* in, int64_t n, int bits, uint8_t* c) {
  if (bits != 4 && bits != 8) return ScalarTable()->unpack_codes(in, n, bits, c);
  if (bits == 8) {
    std::memcpy(c, in, static_cast<size_t>(n));
    return;
  }
  const int64_t whole = n / 32 * 32;
  for (int64_t i = 0; i < whole; i += 32) {
    const __m256i b =
        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i / 2)));
    const __m256i u =
        _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi16(0x000f)),
                        _mm256_and_si256(_mm256_slli_epi16(b, 4), _mm256_set1_epi16(0x0f00)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i), u);
  }
  if (whole < n) ScalarTable()->unpack_codes(in + whole / 2, n - whole, 4, c + whole);
}

void QuantizeActivations(const float* x, int64_t m, int64_t k, int8_t* q, float* s) {
  const QuantSpec spec{8, true, Granularity::kChannel, 0};
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x + t * k;
    __m256 amax = _mm256_setzero_ps();
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    BlocksIn<8>(xt, k, [&](const float* v) {
      amax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v), abs), amax);
    });
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, amax);
    float a = 0.0f;
    for (const float l : lanes) a = l > a ? l : a;
    const GroupParams p = ParamsFromRange(-a, a, spec);
    s[t] = p.scale;
    const CodeQuantizer quant(p, 255);
    const __m256i offset = _mm256_set1_epi32(128), floor = _mm256_set1_epi32(-127);
    auto code = [&](const float* v) {
      return _mm256_max_epi32(_mm256_sub_epi32(quant(v), offset), floor);
    };
    Blocks<32>(xt, k, q + t * k, [&](const float* v, int8_t* d) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d),
                          NarrowToBytes(code(v), code(v + 8), code(v + 16), code(v + 24), true));
    });
  }
}

// ---- Integer dot products ----

inline int32_t HorizontalSum(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
}

// sum (u - 128) * q over 32 bytes for MB tokens. With s = u ^ 0x80 = u - 128 in [-128, 127]:
// maddubs(|s|, sign(q, s)) = sum s * q per pair, and |pair| <= 2 * 128 * 127 < 2^15 because the
// activations never reach -128.
template <int MB>
inline void W8Step(__m256i u, const int8_t* const* q, int64_t off, __m256i* acc) {
  const __m256i s = _mm256_xor_si256(u, _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i mag = _mm256_abs_epi8(s), ones = _mm256_set1_epi16(1);
  for (int t = 0; t < MB; ++t) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[t] + off));
    const __m256i p = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(a, s));
    acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p, ones));
  }
}

int32_t SumQ(const int8_t* q, int64_t k) {
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += q[i];
  return s;
}

template <int MB>
void W8A8Tokens(const int8_t* const* q, const float* sa, const int32_t* sq, const QuantWeights& w,
                int64_t n0, int64_t n1, float* const* y) {
  const int64_t k = w.cols, whole = k / 32 * 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.codes + n * k;
    __m256i acc[MB];
    for (int t = 0; t < MB; ++t) acc[t] = _mm256_setzero_si256();
    for (int64_t i = 0; i < whole; i += 32) {
      W8Step<MB>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i)), q, i, acc);
    }
    // sum (u - z) q = sum (u - 128) q + (128 - z) sum q.
    const int32_t z = ZeroOf(w, n, 0);
    for (int t = 0; t < MB; ++t) {
      int32_t dot = HorizontalSum(acc[t]) + (128 - z) * sq[t];
      for (int64_t i = whole; i < k; ++i) dot += (row[i] - 128) * q[t][i];
      y[t][n] = static_cast<float>(dot) * sa[t] * w.scales[n];
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

void GemmW8A8(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols;
  OverTokenBlocks(a.m, [&]<int MB>(int64_t t0) {
    const int8_t* q[MB];
    int32_t sq[MB];
    float* ys[MB];
    for (int t = 0; t < MB; ++t) {
      q[t] = a.q + (t0 + t) * k;
      sq[t] = SumQ(q[t], k);
      ys[t] = y + (t0 + t) * w.rows;
    }
    W8A8Tokens<MB>(q, a.scales + t0, sq, w, n0, n1, ys);
  });
}

// 4-bit codes u in [0, 15] are the unsigned maddubs operand: |pair| <= 2 * 15 * 128, no saturation.
template <int MB>
inline void W4Chunk(const uint8_t* row, const int8_t* const* acts, int64_t off, int64_t bytes,
                    __m256i* dot) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (bytes == 32) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + off / 2));
    const __m256i nib = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(b, nib),
                  hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), nib);
    for (int t = 0; t < MB; ++t) {
      const auto* a = reinterpret_cast<const __m256i*>(acts[t] + off);
      const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256(a)),
                                         _mm256_maddubs_epi16(hi, _mm256_loadu_si256(a + 1)));
      dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(p, ones));
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
    const __m256i p = _mm256_maddubs_epi16(
        u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acts[t] + off)));
    dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(p, ones));
  }
}

constexpr int64_t kW4A8MaxCodes = 64;

void GemmW4A8(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols, ng = w.groups_per_row(), rb = w.row_bytes();
  Scratch perm(0, a.m * k), sums(1, a.m * ng * 4);
  for (int64_t t = 0; t < a.m; ++t) {
    PermuteForNibbles(a.q + t * k, k, w.group, kW4A8MaxCodes, perm.as<int8_t>() + t * k);
    GroupSums(a.q + t * k, k, w.group, sums.as<int32_t>() + t * ng);
  }
  OverTokenBlocks(a.m, [&]<int MB>(int64_t t0) {
    const int8_t* acts[MB];
    const int32_t* gs[MB];
    for (int t = 0; t < MB; ++t) {
      acts[t] = perm.as<int8_t>() + (t0 + t) * k;
      gs[t] = sums.as<int32_t>() + (t0 + t) * ng;
    }
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = w.codes + n * rb;
      __m256 acc[MB];
      for (int t = 0; t < MB; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t g0 = g * w.group, len = std::min(w.group, k - g0);
        const int32_t z = ZeroOf(w, n, g);
        __m256i dot[MB];
        // Lane 0 starts at -z * sum(q), so the lanes add up to the exact group dot product.
        for (int t = 0; t < MB; ++t) dot[t] = _mm256_setr_epi32(-z * gs[t][g], 0, 0, 0, 0, 0, 0, 0);
        for (int64_t off = 0; off < len;) {
          const int64_t c = ChunkCodes(len - off, kW4A8MaxCodes);
          W4Chunk<MB>(row, acts, g0 + off, c / 2, dot);
          off += c;
        }
        const __m256 s = _mm256_set1_ps(w.scales[n * ng + g]);
        for (int t = 0; t < MB; ++t)
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), s, acc[t]);
      }
      for (int t = 0; t < MB; ++t) {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, acc[t]);
        float sum = 0.0f;
        for (const float l : lanes) sum += l;
        y[(t0 + t) * w.rows + n] = sum * a.scales[t0 + t];
      }
    }
  });
}

// ---- W4A16 and NF4: 32 codes (16 bytes) per step against permuted f32 activations ----

struct Avx2Ops {
  using Vec = __m256;
  static constexpr int64_t kWidth = 8;
  static Vec Zero() { return _mm256_setzero_ps(); }
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
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
  static Vec MulAdd(Vec acc, Vec dot, float s) {
    return _mm256_fmadd_ps(dot, _mm256_set1_ps(s), acc);
  }
  static float Sum(Vec v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
  }
  static void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
    detail::Bf16ToF32(in, n, out);
  }
  template <typename Lut>
  static Vec NibbleDot(const uint8_t* row, const float* x, int64_t g0, int64_t len, Lut lut) {
    Vec dot = Zero();
    const __m128i nib = _mm_set1_epi8(0x0f);
    for (int64_t off = g0; off < g0 + len; off += 32) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + off / 2));
      const __m128i halves[2] = {_mm_and_si128(b, nib), _mm_and_si128(_mm_srli_epi16(b, 4), nib)};
      for (int h = 0; h < 2; ++h) {
        const __m256i u0 = _mm256_cvtepu8_epi32(halves[h]);
        const __m256i u1 = _mm256_cvtepu8_epi32(_mm_srli_si128(halves[h], 8));
        dot = _mm256_fmadd_ps(lut(u0), _mm256_loadu_ps(x + off + 16 * h), dot);
        dot = _mm256_fmadd_ps(lut(u1), _mm256_loadu_ps(x + off + 16 * h + 8), dot);
      }
    }
    return dot;
  }
  static auto ZeroLut(int32_t z) {
    return [zv = _mm256_set1_epi32(z)](__m256i u) {
      return _mm256_cvtepi32_ps(_mm256_sub_epi32(u, zv));
    };
  }
  // Two 8-lane permutes; bit 3 of the code, moved to the sign bit, picks one.
  static auto Nf4Lut(const float* values) {
    return [lo = _mm256_loadu_ps(values), hi = _mm256_loadu_ps(values + 8)](__m256i u) {
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, u), _mm256_permutevar8x32_ps(hi, u),
                              _mm256_castsi256_ps(_mm256_slli_epi32(u, 28)));
    };
  }
};

// ---- Float codes: NF4, small floats (FP8, FP6, FP4) and MX, 32 values a step ----

// The lanes of MinifloatEncoderWith, and its row loops: 32 values a step, codes narrowed to bytes.
struct Avx2Lanes {
  using U = __m256i;
  using F = __m256;
  static U Set(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static F SetF(float v) { return _mm256_set1_ps(v); }
  static F AsF(U v) { return _mm256_castsi256_ps(v); }
  static U AsU(F v) { return _mm256_castps_si256(v); }
  static U And(U a, U b) { return _mm256_and_si256(a, b); }
  static U AndNot(U a, U b) { return _mm256_andnot_si256(b, a); }
  static U Or(U a, U b) { return _mm256_or_si256(a, b); }
  static U Add(U a, U b) { return _mm256_add_epi32(a, b); }
  static U Sub(U a, U b) { return _mm256_sub_epi32(a, b); }
  static U Shr(U a, int n) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(n)); }
  static U Shl(U a, int n) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(n)); }
  static U Greater(U a, U b) { return _mm256_cmpgt_epi32(a, b); }
  static U Equal(U a, U b) { return _mm256_cmpeq_epi32(a, b); }
  static U Select(U mask, U a, U b) { return _mm256_blendv_epi8(b, a, mask); }
  static F AddF(F a, F b) { return _mm256_add_ps(a, b); }
  static F MulF(F a, F b) { return _mm256_mul_ps(a, b); }
  static F DivF(F a, F b) { return _mm256_div_ps(a, b); }
  static F ToF(U v) { return _mm256_cvtepi32_ps(v); }
  static auto Lut16(const float* values) { return Avx2Ops::Nf4Lut(values); }  // any 16 values

  // c = code(x) on each 8 lanes, deq = value(c) * scale.
  template <typename CodeFn, typename ValueFn>
  static void EncodeBy(const float* x, int64_t n, float scale, uint8_t* codes, float* deq,
                       CodeFn code, ValueFn value) {
    const F s = SetF(scale);
    EncodeSteps<32>(x, n, codes, deq, [&](const float* xs, uint8_t* cs, float* ds) {
      U c[4];
      for (int q = 0; q < 4; ++q) {
        c[q] = code(_mm256_loadu_ps(xs + 8 * q));
        _mm256_storeu_ps(ds + 8 * q, MulF(value(c[q]), s));
      }
      _mm256_storeu_si256(reinterpret_cast<U*>(cs), NarrowToBytes(c[0], c[1], c[2], c[3], false));
    });
  }
  // out = value(code) * scale.
  template <typename ValueFn>
  static void DecodeBy(const uint8_t* codes, int64_t n, float scale, float* out, ValueFn value) {
    const F s = SetF(scale);
    Blocks<8>(codes, n, out, [&](const uint8_t* c, float* d) {
      const U u = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
      _mm256_storeu_ps(d, MulF(value(u), s));
    });
  }
};

// NF4 code of v = the number of midpoints m[0..14] below it, found by binary search: 8 if m[7] < v,
// plus 4 if the midpoint below the upper half of what is left (m[3] or m[11]) is below v, plus 2
// (one of m[1], m[5], m[9], m[13], a permute by code / 4), plus 1 (an even midpoint, a permute by
// code / 2). The midpoints ascend, so this is the count; CMPLT is false for NaN, which so gets
// code 0 as lower_bound gives it, and the codec's clamp to [-1, 1] changes no comparison, every
// midpoint lying inside.
class Avx2Nf4Encoder {
 public:
  Avx2Nf4Encoder() : Avx2Nf4Encoder(Nf4MidpointTable()) {}
  // v = x * (1 / a) in a whole block, x / a in the matrix's shorter last block.
  void Run(const float* x, int64_t n, bool whole, float a, float scale, uint8_t* codes,
           float* deq) const {
    const __m256 d = _mm256_set1_ps(whole ? 1.0f / a : a);
    const auto code = [&](__m256 v) {
      return Code(whole ? _mm256_mul_ps(v, d) : _mm256_div_ps(v, d));
    };
    Avx2Lanes::EncodeBy(x, n, scale, codes, deq, code, lut_);
  }
  void Decode(const uint8_t* codes, int64_t n, float scale, float* out) const {
    Avx2Lanes::DecodeBy(codes, n, scale, out, lut_);
  }

 private:
  explicit Avx2Nf4Encoder(const float* m)
      : m3_(_mm256_set1_ps(m[3])),
        m7_(_mm256_set1_ps(m[7])),
        m11_(_mm256_set1_ps(m[11])),
        quarter_(_mm256_setr_ps(m[1], m[5], m[9], m[13], 0, 0, 0, 0)),
        even_(_mm256_setr_ps(m[0], m[2], m[4], m[6], m[8], m[10], m[12], m[14])),
        lut_(Avx2Ops::Nf4Lut(Nf4Table())) {}

  __m256i Code(__m256 v) const {
    const __m256 below8 = _mm256_cmp_ps(m7_, v, _CMP_LT_OQ);
    __m256i c = _mm256_and_si256(_mm256_castps_si256(below8), _mm256_set1_epi32(8));
    const __m256 m4 = _mm256_blendv_ps(m3_, m11_, below8);
    const __m256 below4 = _mm256_cmp_ps(m4, v, _CMP_LT_OQ);
    c = _mm256_add_epi32(c, _mm256_and_si256(_mm256_castps_si256(below4), _mm256_set1_epi32(4)));
    const __m256 m2 = _mm256_permutevar8x32_ps(quarter_, _mm256_srli_epi32(c, 2));
    const __m256 below2 = _mm256_cmp_ps(m2, v, _CMP_LT_OQ);
    c = _mm256_add_epi32(c, _mm256_and_si256(_mm256_castps_si256(below2), _mm256_set1_epi32(2)));
    const __m256 m1 = _mm256_permutevar8x32_ps(even_, _mm256_srli_epi32(c, 1));
    return _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(m1, v, _CMP_LT_OQ)));
  }

  __m256 m3_, m7_, m11_, quarter_, even_;
  decltype(Avx2Ops::Nf4Lut(nullptr)) lut_;
};

struct Avx2Codes {
  using Nf4Encoder = Avx2Nf4Encoder;
  using MinifloatEncoder = MinifloatEncoderWith<Avx2Lanes>;

  static uint32_t AbsMaxBits(const float* x, int64_t n) {
    __m256i m = _mm256_setzero_si256();
    BlocksIn<8>(x, n, [&](const float* p) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      m = _mm256_max_epu32(m, _mm256_and_si256(v, _mm256_set1_epi32(0x7fffffff)));
    });
    __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0xb1));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(h));
  }
  // 64 codes -> 32 bytes, the even code in the high nibble: in each 16-bit word (codes 2j, 2j+1)
  // the low byte of w << 4 | w >> 8 is code 2j << 4 | code 2j+1.
  static void PackNibblesHighFirst(const uint8_t* c, int64_t n, uint8_t* out) {
    const __m256i low = _mm256_set1_epi16(0x00ff);
    const int64_t whole = n / 64 * 64;
    for (int64_t i = 0; i < whole; i += 64) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 32));
      const __m256i p0 = _mm256_and_si256(
          _mm256_or_si256(_mm256_slli_epi16(w0, 4), _mm256_srli_epi16(w0, 8)), low);
      const __m256i p1 = _mm256_and_si256(
          _mm256_or_si256(_mm256_slli_epi16(w1, 4), _mm256_srli_epi16(w1, 8)), low);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i / 2),
                          _mm256_permute4x64_epi64(_mm256_packus_epi16(p0, p1), 0xd8));
    }
    PackHighFirstFrom(c, whole, n, out);
  }
  // 16 bytes -> 32 codes: each byte's high nibble to the even code, its low nibble to the odd one.
  static void UnpackNibblesHighFirst(const uint8_t* in, int64_t n, uint8_t* c) {
    const int64_t whole = n / 32 * 32;
    for (int64_t i = 0; i < whole; i += 32) {
      const __m256i b =
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i / 2)));
      const __m256i u =
          _mm256_or_si256(_mm256_srli_epi16(b, 4),
                          _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x000f)), 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i), u);
    }
    UnpackHighFirstFrom(in, whole, n, c);
  }
  static void PackCodes(const uint8_t* c, int64_t n, int bits, uint8_t* out) {
    detail::PackCodes(c, n, bits, out);
  }
  static void UnpackCodes(const uint8_t* in, int64_t n, int bits, uint8_t* c) {
    detail::UnpackCodes(in, n, bits, c);
  }
};

}  // namespace

const KernelTable* Avx2Table() {
  static constexpr KernelTable kTable{
      Bf16ToF32,
      F16ToF32,
      F32ToBf16,
      F32ToF16,
      FirstNonFiniteWith<Avx2Ops>,
      AccumulateErrorsWith<Avx2Ops>,
      MinMax,
      QuantizeGroupsWith<MinMax, QuantizeCodes, DequantizeCodes>,
      QuantizeStoredRowsWith<Avx2Ops, Bf16ToF32, F16ToF32, MinMax, QuantizeCodes, DequantizeCodes,
                             PackCodes>,
      QuantizeCodes,
      DequantizeCodes,
      PackCodes,
      UnpackCodes,
      QuantizeActivations,
      GemmW8A8,
      GemmW4A8,
      GemmW4A16With<Avx2Ops>,
      GemvNf4With<Avx2Ops>,
      QuantizeNf4With<Avx2Codes>,
      DequantizeNf4With<Avx2Codes>,
      QuantizeMinifloatWith<Avx2Codes>,
      DequantizeMinifloatWith<Avx2Codes>,
      QuantizeMxWith<Avx2Codes>,
      DequantizeMxWith<Avx2Codes>};
  return &kTable;
}

}  // namespace qtool::kernels::detail

#else
#include "../table.hpp"
const qtool::kernels::detail::KernelTable* qtool::kernels::detail::Avx2Table() { return nullptr; }
#endif
