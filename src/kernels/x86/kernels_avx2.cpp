// AVX2 kernels (with FMA and F16C). Integer dot products use VPMADDUBSW (unsigned x signed bytes,
// pairs summed to int16 with saturation) then VPMADDWD by ones into int32; operands are arranged so
// that no pair sum can reach the int16 limit. Tails run through a zero-padded block on the stack.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <utility>

#include "../common_inl.hpp"
#include "../float_codes_inl.hpp"
#include "int_gemm_avx2_inl.hpp"
#include "qtool/kernels.hpp"
#include "ymm_ops_inl.hpp"

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

// QuantizeValue on 8 lanes: true division, clamp before rounding, round half to even by
// VROUNDPS (on the clamped value, the same result as the reference's +-1.5 * 2^23).
struct CodeQuantizer {
  __m256 scale, lo, hi;
  __m256i zero;
  CodeQuantizer(GroupParams p, int32_t umax)
      : scale(_mm256_set1_ps(p.scale)),
        lo(_mm256_set1_ps(static_cast<float>(-p.zero))),
        hi(_mm256_set1_ps(static_cast<float>(umax - p.zero))),
        zero(_mm256_set1_epi32(p.zero)) {}
  __m256i operator()(const float* x) const {
    const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_loadu_ps(x), scale), lo), hi);
    return _mm256_add_epi32(
        _mm256_cvttps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
        zero);
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
    const GroupParams p = qtool::detail::GroupParamsFromRange(-a, a, spec);
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

// Dot steps from VPMADDUBSW (u8 x s8 pairs summed to int16 with saturation), then VPMADDWD by ones
// into int32 (see int_gemm_avx2_inl.hpp). W8A8 weights enter as s = u ^ 0x80 = u - 128 in
// [-128, 127]: maddubs(|s|, sign(q, s)) = sum s * q per pair, and |pair| <= 2 * 128 * 127 < 2^15
// because the activations never reach -128. 4-bit codes u in [0, 15] are the unsigned operand as
// they are: |pair| <= 2 * 15 * 127, and two such pair sums still fit int16.
struct MaddubsDot {
  static constexpr int32_t kW8Offset = 128;
  struct W8 {
    __m256i s, mag;
  };
  static W8 W8Weights(__m256i u) {
    const __m256i s = _mm256_xor_si256(u, _mm256_set1_epi8(static_cast<char>(0x80)));
    return {s, _mm256_abs_epi8(s)};
  }
  static __m256i W8Step(__m256i acc, const W8& w, __m256i q) {
    return Widen(acc, _mm256_maddubs_epi16(w.mag, _mm256_sign_epi8(q, w.s)));
  }
  static __m256i U4Step(__m256i acc, __m256i u, __m256i a) {
    return Widen(acc, _mm256_maddubs_epi16(u, a));
  }
  static __m256i U4Steps(__m256i acc, __m256i u0, __m256i a0, __m256i u1, __m256i a1) {
    return Widen(acc, _mm256_add_epi16(_mm256_maddubs_epi16(u0, a0), _mm256_maddubs_epi16(u1, a1)));
  }
  // acc + the int16 pair sums p added in pairs into int32.
  static __m256i Widen(__m256i acc, __m256i p) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  }
};

// ---- W4A16 and NF4: 32 codes (16 bytes) per step against permuted f32 activations ----

struct Avx2Ops : YmmOps {
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

// ---- Quantisation straight from stored rows ----

// 16 stored values from element i of x as f32, in two vectors interleaved by 128-bit lane: `a`
// holds elements 0-3 and 8-11, `b` 4-7 and 12-15 (the halves of the error sums' steps, see
// ErrorLanes). That is the order in which VPUNPCKLWD and VPUNPCKHWD widen bf16; f16 (F16C, exact
// for every finite half) and f32 are moved into it.
struct Stored16 {
  __m256 a, b;
};
template <StoredFloat kType>
inline Stored16 LoadStored16(const void* x, int64_t i) {
  if constexpr (kType == StoredFloat::kBf16) {
    const __m256i h =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + i));
    return {_mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), h)),
            _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), h))};
  } else {
    __m256 v0, v1;
    if constexpr (kType == StoredFloat::kF16) {
      const auto* h = reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i);
      v0 = _mm256_cvtph_ps(_mm_loadu_si128(h));
      v1 = _mm256_cvtph_ps(_mm_loadu_si128(h + 1));
    } else {
      v0 = _mm256_loadu_ps(static_cast<const float*>(x) + i);
      v1 = _mm256_loadu_ps(static_cast<const float*>(x) + i + 8);
    }
    return {_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v0, v1, 0x31)};
  }
}

// The stored type's bits with the sign cleared: magnitudes, ordered as unsigned integers, and
// NaN or Inf exactly from kNonFinite up.
template <StoredFloat kType>
struct Magnitude {
  static constexpr bool kHalf = kType != StoredFloat::kF32;
  static constexpr uint32_t kNonFinite = kType == StoredFloat::kF32    ? 0x7f800000u
                                         : kType == StoredFloat::kBf16 ? 0x7f80u
                                                                       : 0x7c00u;
  static uint32_t At(const void* x, int64_t i) {
    if constexpr (kHalf) return static_cast<const uint16_t*>(x)[i] & 0x7fffu;
    uint32_t u;
    std::memcpy(&u, static_cast<const float*>(x) + i, 4);
    return u & 0x7fffffffu;
  }
  static float Value(uint32_t m) {
    if constexpr (kType == StoredFloat::kF16) return _cvtsh_ss(static_cast<uint16_t>(m));
    return std::bit_cast<float>(kHalf ? m << 16 : m);
  }
  // The largest magnitude of elements [i0, i1), 16 a step.
  static uint32_t Max(const void* x, int64_t i0, int64_t i1) {
    __m256i acc = _mm256_setzero_si256();
    if constexpr (kHalf) {
      const __m256i mask = _mm256_set1_epi16(0x7fff);
      const auto* h = static_cast<const uint16_t*>(x);
      for (int64_t i = i0; i < i1; i += 16) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i));
        acc = _mm256_max_epu16(acc, _mm256_and_si256(v, mask));
      }
      // The largest of 8 words is the complement of PHMINPOSUW's smallest complement.
      const __m128i m =
          _mm_max_epu16(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
      return ~static_cast<uint32_t>(
                 _mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(m, _mm_set1_epi32(-1))))) &
             0xffffu;
    } else {
      const __m256i mask = _mm256_set1_epi32(0x7fffffff);
      const auto* f = static_cast<const float*>(x);
      for (int64_t i = i0; i < i1; i += 8) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(f + i));
        acc = _mm256_max_epi32(acc, _mm256_and_si256(v, mask));
      }
      __m128i m = _mm_max_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
      m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4e));
      m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xb1));
      return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
    }
  }
};

// Quantises, decodes, compares and packs (4 or 8 bits) groups of values in order from the start of
// the call, 32 values a step (16 at the end of a run); the error sums follow AccumulateErrors'
// blocks over all of them. The rounding is VROUNDPS (the same round half to even as the
// reference's +-1.5 * 2^23): r = rne(clamp(x / scale)) is an integer in float, so the decoded
// value (u - zero) * scale is r * scale.
template <StoredFloat kType, int kBits>
class StoredCoder {
 public:
  StoredCoder(const void* x, uint8_t* packed, ErrorStats* s) : x_(x), out_(packed), s_(s) {}
  // Codes the group of n values (a multiple of 16) from element i of x under p. The clamp to the
  // code range can be left out where no quotient can leave it: a symmetric scale of a normal
  // float is max|x| / qmax to within 2^-23, so every |x / scale| rounds to at most qmax.
  void Code(GroupParams p, int64_t i, int64_t n, bool clamp) {
    if (clamp) {
      Run<true>(p, i, n);
    } else {
      Run<false>(p, i, n);
    }
  }
  // Ends the call: the last partial block of error sums, and the count of n values.
  void Finish(int64_t n) {
    if (in_block_ > 0) lanes_.Flush(s_);
    s_->n += n;
  }

 private:
  // Runs end where a block of error sums ends.
  template <bool kClamp>
  void Run(GroupParams p, int64_t i, int64_t n) {
    const __m256 scale = _mm256_set1_ps(p.scale);
    const __m256 qlo = _mm256_set1_ps(static_cast<float>(-p.zero));
    const __m256 qhi = _mm256_set1_ps(static_cast<float>((1 << kBits) - 1 - p.zero));
    const __m256i zero = _mm256_set1_epi16(static_cast<int16_t>(p.zero));
    auto round = [&](__m256 v) {
      __m256 q = _mm256_div_ps(v, scale);
      if constexpr (kClamp) q = _mm256_min_ps(_mm256_max_ps(q, qlo), qhi);
      return _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    };
    // Codes u = r + zero of 16 values in order, as words.
    auto words = [&](__m256 ra, __m256 rb) {
      return _mm256_add_epi16(_mm256_packs_epi32(_mm256_cvttps_epi32(ra), _mm256_cvttps_epi32(rb)),
                              zero);
    };
    while (n > 0) {
      const int64_t len = std::min(n, kErrorBlock - in_block_);
      // A local copy of the lanes, which the compiler keeps in registers through the run.
      ErrorLanes<YmmOps> lanes = lanes_;
      uint8_t* out = out_;
      int64_t j = i;
      for (; j + 32 <= i + len; j += 32) {
        const Stored16 v0 = LoadStored16<kType>(x_, j), v1 = LoadStored16<kType>(x_, j + 16);
        const __m256 r0 = round(v0.a), r1 = round(v0.b), r2 = round(v1.a), r3 = round(v1.b);
        lanes.Step(v0.a, _mm256_mul_ps(r0, scale));
        lanes.Step(v0.b, _mm256_mul_ps(r1, scale));
        lanes.Step(v1.a, _mm256_mul_ps(r2, scale));
        lanes.Step(v1.b, _mm256_mul_ps(r3, scale));
        // Bytes: codes 0-7 and 16-23 in the low 128-bit lane, 8-15 and 24-31 in the high one.
        const __m256i b = _mm256_packus_epi16(words(r0, r1), words(r2, r3));
        if constexpr (kBits == 8) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute4x64_epi64(b, 0xd8));
          out += 32;
        } else {
          // Pairs u0 + 16 u1 as words, then bytes: dwords 0 and 1 hold pairs 0-3 and 8-11, dwords
          // 4 and 5 pairs 4-7 and 12-15.
          const __m256i t = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001));
          const __m256i pairs = _mm256_permutevar8x32_epi32(
              _mm256_packus_epi16(t, t), _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(pairs));
          out += 16;
        }
      }
      if (j < i + len) {
        const Stored16 v = LoadStored16<kType>(x_, j);
        const __m256 r0 = round(v.a), r1 = round(v.b);
        lanes.Step(v.a, _mm256_mul_ps(r0, scale));
        lanes.Step(v.b, _mm256_mul_ps(r1, scale));
        const __m256i w = words(r0, r1);
        const __m128i b =
            _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        if constexpr (kBits == 8) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out), b);
          out += 16;
        } else {
          const __m128i t = _mm_maddubs_epi16(b, _mm_set1_epi16(0x1001));
          _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(t, t));
          out += 8;
        }
      }
      lanes_ = lanes;
      out_ = out;
      i += len;
      n -= len;
      in_block_ += len;
      if (in_block_ == kErrorBlock) {
        lanes_.Flush(s_);
        in_block_ = 0;
      }
    }
  }

  const void* x_;
  uint8_t* out_;
  ErrorStats* s_;
  ErrorLanes<YmmOps> lanes_;
  int64_t in_block_ = 0;
};

// Each group read twice: its range and finiteness, then (from L1) its codes. A symmetric range
// needs only max|x|, which the stored bits give as integers. Groups go in batches of about
// kBatchValues values: the ranges and parameters of a whole batch first, then its codes, so that
// no group's coding waits on the latency of its own range and scale.
template <StoredFloat kType, int kBits>
int64_t StoredGroups(const void* x, int64_t rows, int64_t cols, int64_t glen, const QuantSpec& spec,
                     uint8_t* packed, float* scales, uint8_t* zeros, ErrorStats* s) {
  using M = Magnitude<kType>;
  constexpr int64_t kBatchValues = 4096, kMaxBatch = kBatchValues / 16;
  const int64_t ng = (cols + glen - 1) / glen, groups = rows * ng;
  const int64_t batch = std::clamp<int64_t>(kBatchValues / glen, 1, kMaxBatch);
  // Group k (row k / ng, the (k % ng)-th of the row): its first element and its length.
  auto group = [&](int64_t k) {
    const int64_t g = k % ng;
    return std::pair{k / ng * cols + g * glen, std::min(glen, cols - g * glen)};
  };
  GroupParams params[kMaxBatch];
  StoredCoder<kType, kBits> coder(x, packed, s);
  for (int64_t k0 = 0; k0 < groups; k0 += batch) {
    const int64_t nb = std::min(batch, groups - k0);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k = k0 + b;
      const auto [i0, len] = group(k);
      const int64_t i1 = i0 + len;
      const uint32_t m = M::Max(x, i0, i1);
      if (m >= M::kNonFinite) {
        for (int64_t i = i0; i < i1; ++i) {
          if (M::At(x, i) >= M::kNonFinite) return i;
        }
      }
      float lo = 0.0f, hi = 0.0f;
      if (spec.symmetric) {
        hi = M::Value(m);
      } else {
        // MinMax's lanes (from 0, MINPS/MAXPS with the value first) in two chains each; min and
        // max of finite values do not depend on the order.
        __m256 lo0 = _mm256_setzero_ps(), lo1 = lo0, hi0 = lo0, hi1 = lo0;
        for (int64_t i = i0; i < i1; i += 16) {
          const Stored16 v = LoadStored16<kType>(x, i);
          lo0 = _mm256_min_ps(v.a, lo0);
          hi0 = _mm256_max_ps(v.a, hi0);
          lo1 = _mm256_min_ps(v.b, lo1);
          hi1 = _mm256_max_ps(v.b, hi1);
        }
        alignas(32) float lanes[2][8];
        _mm256_store_ps(lanes[0], _mm256_min_ps(lo0, lo1));
        _mm256_store_ps(lanes[1], _mm256_max_ps(hi0, hi1));
        for (int j = 0; j < 8; ++j) {
          lo = lanes[0][j] < lo ? lanes[0][j] : lo;
          hi = lanes[1][j] > hi ? lanes[1][j] : hi;
        }
      }
      params[b] = qtool::detail::GroupParamsFromRange(lo, hi, spec);
      scales[k] = params[b].scale;
      if (zeros) zeros[k] = static_cast<uint8_t>(params[b].zero);
    }
    for (int64_t b = 0; b < nb; ++b) {
      const GroupParams p = params[b];
      const auto [i0, len] = group(k0 + b);
      coder.Code(p, i0, len, !spec.symmetric || !(p.scale >= FLT_MIN));
    }
  }
  coder.Finish(rows * cols);
  return -1;
}

template <int kBits>
int64_t StoredGroupsOf(const void* x, StoredFloat type, int64_t rows, int64_t cols, int64_t glen,
                       const QuantSpec& spec, uint8_t* packed, float* scales, uint8_t* zeros,
                       ErrorStats* s) {
  switch (type) {
    case StoredFloat::kBf16:
      return StoredGroups<StoredFloat::kBf16, kBits>(x, rows, cols, glen, spec, packed, scales,
                                                     zeros, s);
    case StoredFloat::kF16:
      return StoredGroups<StoredFloat::kF16, kBits>(x, rows, cols, glen, spec, packed, scales,
                                                    zeros, s);
    case StoredFloat::kF32:
      break;
  }
  return StoredGroups<StoredFloat::kF32, kBits>(x, rows, cols, glen, spec, packed, scales, zeros,
                                                s);
}

int64_t QuantizeStoredRows(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                           int64_t glen, const QuantSpec& spec, uint8_t* packed, float* scales,
                           uint8_t* zeros, ErrorStats* s) {
  if (spec.bits == 4) {
    return StoredGroupsOf<4>(x, type, rows, cols, glen, spec, packed, scales, zeros, s);
  }
  if (spec.bits == 8) {
    return StoredGroupsOf<8>(x, type, rows, cols, glen, spec, packed, scales, zeros, s);
  }
  return QuantizeStoredRowsWith<Avx2Ops, Bf16ToF32, F16ToF32, MinMax, QuantizeCodes,
                                DequantizeCodes, PackCodes>(x, type, rows, cols, glen, spec, packed,
                                                            scales, zeros, s);
}

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
  explicit Avx2Nf4Encoder(Bnb4Map map) : Avx2Nf4Encoder(Nf4MidpointTable(map), Nf4Table(map)) {}
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
  Avx2Nf4Encoder(const float* m, const float* values)
      : m3_(_mm256_set1_ps(m[3])),
        m7_(_mm256_set1_ps(m[7])),
        m11_(_mm256_set1_ps(m[11])),
        quarter_(_mm256_setr_ps(m[1], m[5], m[9], m[13], 0, 0, 0, 0)),
        even_(_mm256_setr_ps(m[0], m[2], m[4], m[6], m[8], m[10], m[12], m[14])),
        lut_(Avx2Ops::Nf4Lut(values)) {}

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

constexpr auto GemmW8A8 = GemmW8A8With<MaddubsDot>;
constexpr auto GemmW4A8 = GemmW4A8With<MaddubsDot>;

}  // namespace

// With AVX-VNNI the integer GEMMs take VPDPBUSD steps (kernels_avxvnni.cpp).
const KernelTable* Avx2Table(bool avx_vnni) {
  static constexpr KernelTable kTable{
      QTOOL_X86_TABLE_ENTRIES(Avx2Ops),
      .quantize_nf4 = QuantizeNf4With<Avx2Codes>,
      .dequantize_nf4 = DequantizeNf4With<Avx2Codes>,
      .quantize_minifloat = QuantizeMinifloatWith<Avx2Codes>,
      .dequantize_minifloat = DequantizeMinifloatWith<Avx2Codes>,
      .quantize_mx = QuantizeMxWith<Avx2Codes>,
      .dequantize_mx = DequantizeMxWith<Avx2Codes>,
      .f32_gemm_panels = PanelsAvx2,
      .transpose_f32 = TransposeSse2,
      .transpose_u8 = TransposeSse2,
  };
  static const KernelTable kAvxVnni = WithAvxVnniGemms(kTable);
  return avx_vnni ? &kAvxVnni : &kTable;
}

}  // namespace qtool::kernels::detail

#else
#include "../table.hpp"
const qtool::kernels::detail::KernelTable* qtool::kernels::detail::Avx2Table(bool) {
  return nullptr;
}
#endif
