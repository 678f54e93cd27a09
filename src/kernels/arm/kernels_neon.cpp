// Advanced SIMD (NEON) kernels for AArch64. The integer dot products use SDOT (Armv8.2 dot
// product extension), compiled for it with a function attribute and installed only when the CPU
// reports it (HWCAP_ASIMDDP).
#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>

#include "../common_inl.hpp"
#include "../float_codes_inl.hpp"
#include "qtool/kernels.hpp"

namespace qtool::kernels::detail {
namespace {

void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
  Blocks<8>(in, n, out, [](const uint16_t* s, float* d) {
    const uint16x8_t h = vld1q_u16(s);
    vst1q_f32(d, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)));
    vst1q_f32(d + 4, vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)));
  });
}

// FCVT quietens signalling NaNs; the reference keeps NaN payloads, so NaN lanes are rebuilt from
// their bits.
void F16ToF32(const uint16_t* in, int64_t n, float* out) {
  Blocks<4>(in, n, out, [](const uint16_t* s, float* d) {
    const uint16x4_t h = vld1_u16(s);
    const uint32x4_t h32 = vmovl_u16(h);
    const uint32x4_t abs = vandq_u32(h32, vdupq_n_u32(0x7fff));
    const uint32x4_t nan = vcgtq_u32(abs, vdupq_n_u32(0x7c00));
    const uint32x4_t bits =
        vorrq_u32(vorrq_u32(vshlq_n_u32(vbicq_u32(h32, abs), 16), vdupq_n_u32(0x7f800000)),
                  vshlq_n_u32(vandq_u32(h32, vdupq_n_u32(0x3ff)), 13));
    const float32x4_t f = vcvt_f32_f16(vreinterpret_f16_u16(h));
    vst1q_f32(d, vbslq_f32(nan, vreinterpretq_f32_u32(bits), f));
  });
}

void F32ToF16(const float* in, int64_t n, uint16_t* out) {
  Blocks<4>(in, n, out, [](const float* s, uint16_t* d) {
    vst1_u16(d, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(s))));
  });
}

// Round to nearest even on the bits; NaN keeps its sign and becomes quiet, as the reference.
void F32ToBf16(const float* in, int64_t n, uint16_t* out) {
  Blocks<4>(in, n, out, [](const float* s, uint16_t* d) {
    const uint32x4_t u = vreinterpretq_u32_f32(vld1q_f32(s));
    const uint32x4_t nan =
        vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fffffff)), vdupq_n_u32(0x7f800000));
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(vdupq_n_u32(0x7fff), lsb)), 16);
    const uint32x4_t q = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
    vst1_u16(d, vmovn_u32(vbslq_u32(nan, q, r)));
  });
}

// 32 codes <-> 16 bytes: LD2/ST2 split and merge the even and odd codes.
void PackCodes(const uint8_t* c, int64_t n, int bits, uint8_t* out) {
  if (bits != 4 && bits != 8) return ScalarTable()->pack_codes(c, n, bits, out);
  if (bits == 8) {
    std::memcpy(out, c, static_cast<size_t>(n));
    return;
  }
  const int64_t whole = n / 32 * 32;
  for (int64_t i = 0; i < whole; i += 32) {
    const uint8x16x2_t v = vld2q_u8(c + i);
    vst1q_u8(out + i / 2, vorrq_u8(v.val[0], vshlq_n_u8(v.val[1], 4)));
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
    const uint8x16_t b = vld1q_u8(in + i / 2);
    vst2q_u8(c + i, (uint8x16x2_t{{vandq_u8(b, vdupq_n_u8(0x0f)), vshrq_n_u8(b, 4)}}));
  }
  if (whole < n) ScalarTable()->unpack_codes(in + whole / 2, n - whole, 4, c + whole);
}

// Compare-and-select keeps the reference's exact std::min(acc, x) / std::max(acc, x) semantics
// (FMIN/FMAX would order -0 below +0 and propagate NaN).
void MinMax(const float* x, int64_t n, float* lo, float* hi) {
  float32x4_t a = vdupq_n_f32(0.0f), b = a;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t v = vld1q_f32(x + i);
    a = vbslq_f32(vcltq_f32(v, a), v, a);
    b = vbslq_f32(vcgtq_f32(v, b), v, b);
  }
  float l = 0.0f, h = 0.0f;
  for (int j = 0; j < 4; ++j) {
    l = a[j] < l ? a[j] : l;
    h = b[j] > h ? b[j] : h;
  }
  for (; i < n; ++i) {
    l = x[i] < l ? x[i] : l;
    h = x[i] > h ? x[i] : h;
  }
  *lo = l;
  *hi = h;
}

// QuantizeValue on 4 lanes: true division, clamp before rounding, round by +-1.5 * 2^23.
struct CodeQuantizer {
  float32x4_t scale, lo, hi, magic;
  int32x4_t zero;
  CodeQuantizer(GroupParams p, int32_t umax)
      : scale(vdupq_n_f32(p.scale)),
        lo(vdupq_n_f32(static_cast<float>(-p.zero))),
        hi(vdupq_n_f32(static_cast<float>(umax - p.zero))),
        magic(vdupq_n_f32(12582912.0f)),
        zero(vdupq_n_s32(p.zero)) {}
  int32x4_t operator()(const float* x) const {
    float32x4_t v = vminq_f32(vmaxq_f32(vdivq_f32(vld1q_f32(x), scale), lo), hi);
    v = vsubq_f32(vaddq_f32(v, magic), magic);
    return vaddq_s32(vcvtq_s32_f32(v), zero);
  }
};

// 16 int32 lanes in [-128, 255] -> 16 bytes (two's complement truncation).
uint8x16_t Narrow(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
  const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
  const int16x8_t cd = vcombine_s16(vmovn_s32(c), vmovn_s32(d));
  return vreinterpretq_u8_s8(vcombine_s8(vmovn_s16(ab), vmovn_s16(cd)));
}

void QuantizeCodes(const float* x, int64_t n, GroupParams p, int32_t umax, uint8_t* c) {
  const CodeQuantizer quant(p, umax);
  Blocks<16>(x, n, c, [&quant](const float* s, uint8_t* d) {
    vst1q_u8(d, Narrow(quant(s), quant(s + 4), quant(s + 8), quant(s + 12)));
  });
}

void DequantizeCodes(const uint8_t* c, int64_t n, GroupParams p, float* out) {
  const float32x4_t scale = vdupq_n_f32(p.scale);
  const int32x4_t zero = vdupq_n_s32(p.zero);
  Blocks<8>(c, n, out, [&](const uint8_t* s, float* d) {
    const uint16x8_t u = vmovl_u8(vld1_u8(s));
    const int32x4_t lo = vsubq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(u))), zero);
    const int32x4_t hi = vsubq_s32(vreinterpretq_s32_u32(vmovl_high_u16(u)), zero);
    vst1q_f32(d, vmulq_f32(vcvtq_f32_s32(lo), scale));
    vst1q_f32(d + 4, vmulq_f32(vcvtq_f32_s32(hi), scale));
  });
}

void QuantizeActivations(const float* x, int64_t m, int64_t k, int8_t* q, float* s) {
  const QuantSpec spec{8, true, Granularity::kChannel, 0};
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x + t * k;
    float a = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      const float v = xt[i] < 0 ? -xt[i] : xt[i];
      a = v > a ? v : a;
    }
    const GroupParams p = qtool::detail::GroupParamsFromRange(-a, a, spec);
    s[t] = p.scale;
    const CodeQuantizer quant(p, 255);
    const int32x4_t offset = vdupq_n_s32(128), floor = vdupq_n_s32(-127);
    auto code = [&](const float* v) { return vmaxq_s32(vsubq_s32(quant(v), offset), floor); };
    Blocks<16>(xt, k, reinterpret_cast<uint8_t*>(q + t * k), [&](const float* v, uint8_t* d) {
      vst1q_u8(d, Narrow(code(v), code(v + 4), code(v + 8), code(v + 12)));
    });
  }
}

int32_t SumQ(const int8_t* q, int64_t k) {
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += q[i];
  return s;
}

// sum (u - z) q = sum (u - 128) q + (128 - z) sum q, with u - 128 = u ^ 0x80 as a signed byte.
__attribute__((target("arch=armv8.2-a+dotprod"))) void GemmW8A8(const Int8Acts& a,
                                                                const QuantWeights& w, int64_t n0,
                                                                int64_t n1, float* y) {
  const int64_t k = w.cols, whole = k / 16 * 16;
  for (int64_t t = 0; t < a.m; ++t) {
    const int8_t* q = a.q + t * k;
    const int32_t sq = SumQ(q, k);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = w.codes + n * k;
      int32x4_t acc = vdupq_n_s32(0);
      for (int64_t i = 0; i < whole; i += 16) {
        const int8x16_t s = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(row + i), vdupq_n_u8(0x80)));
        acc = vdotq_s32(acc, s, vld1q_s8(q + i));
      }
      int32_t dot = vaddvq_s32(acc) + (128 - ZeroOf(w, n, 0)) * sq;
      for (int64_t i = whole; i < k; ++i) dot += (row[i] - 128) * q[i];
      y[t * w.rows + n] = static_cast<float>(dot) * a.scales[t] * w.scales[n];
    }
  }
}

// 32 codes (16 bytes) per step: low nibbles against the 16 even activations, high nibbles
// against the 16 odd ones (see PermuteForNibbles); codes 0..15 are valid signed bytes for SDOT.
__attribute__((target("arch=armv8.2-a+dotprod"))) void GemmW4A8(const Int8Acts& a,
                                                                const QuantWeights& w, int64_t n0,
                                                                int64_t n1, float* y) {
  const int64_t k = w.cols, ng = w.groups_per_row(), rb = w.row_bytes();
  Scratch perm(0, k), sums(1, ng * 4);
  const uint8x16_t nib = vdupq_n_u8(0x0f);
  for (int64_t t = 0; t < a.m; ++t) {
    PermuteForNibbles(a.q + t * k, k, w.group, 32, perm.as<int8_t>());
    GroupSums(a.q + t * k, k, w.group, sums.as<int32_t>());
    const int8_t* act = perm.as<int8_t>();
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = w.codes + n * rb;
      float32x4_t acc = vdupq_n_f32(0.0f);
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t g0 = g * w.group, end = g0 + std::min(w.group, k - g0);
        // Lane 0 starts at -z * sum(q), so the lanes add up to the exact group dot product.
        int32x4_t dot = vsetq_lane_s32(-ZeroOf(w, n, g) * sums.as<int32_t>()[g], vdupq_n_s32(0), 0);
        for (int64_t off = g0; off < end; off += 32) {
          const uint8x16_t b = vld1q_u8(row + off / 2);
          dot = vdotq_s32(dot, vreinterpretq_s8_u8(vandq_u8(b, nib)), vld1q_s8(act + off));
          dot = vdotq_s32(dot, vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), vld1q_s8(act + off + 16));
        }
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(dot), w.scales[n * ng + g]);
      }
      y[t * w.rows + n] = vaddvq_f32(acc) * a.scales[t];
    }
  }
}

// ---- W4A16 and NF4: 32 codes (16 bytes) per step against permuted f32 activations ----

struct NeonOps {
  using Vec = float32x4_t;
  static constexpr int64_t kWidth = 4;
  static Vec Zero() { return vdupq_n_f32(0.0f); }
  static Vec LoadRuns(const float* p) { return vld1q_f32(p); }
  static void Store(float* p, Vec v) { vst1q_f32(p, v); }
  static Vec Sub(Vec a, Vec b) { return vsubq_f32(a, b); }
  static Vec Fma(Vec acc, Vec a, Vec b) { return vfmaq_f32(acc, a, b); }
  static Vec Abs(Vec v) { return vabsq_f32(v); }
  // std::max(acc, v): v where it is larger, acc otherwise (NaN in v included).
  static Vec Max(Vec acc, Vec v) { return vbslq_f32(vcgtq_f32(v, acc), v, acc); }
  static bool AnyNonFinite(const float* p) {
    const uint32x4_t e = vdupq_n_u32(0x7f800000);
    return vmaxvq_u32(vceqq_u32(vandq_u32(vreinterpretq_u32_f32(vld1q_f32(p)), e), e)) != 0;
  }
  static Vec MulAdd(Vec acc, Vec dot, float s) { return vmlaq_n_f32(acc, dot, s); }
  static float Sum(Vec v) { return vaddvq_f32(v); }
  static void Bf16ToF32(const uint16_t* in, int64_t n, float* out) {
    detail::Bf16ToF32(in, n, out);
  }
  template <typename Lut>
  static Vec NibbleDot(const uint8_t* row, const float* x, int64_t g0, int64_t len, Lut lut) {
    Vec dot = Zero();
    for (int64_t off = g0; off < g0 + len; off += 32) {
      const uint8x16_t b = vld1q_u8(row + off / 2);
      const uint8x16_t halves[2] = {vandq_u8(b, vdupq_n_u8(0x0f)), vshrq_n_u8(b, 4)};
      for (int h = 0; h < 2; ++h) {
        const uint16x8_t lo = vmovl_u8(vget_low_u8(halves[h])), hi = vmovl_high_u8(halves[h]);
        const uint32x4_t u[4] = {vmovl_u16(vget_low_u16(lo)), vmovl_high_u16(lo),
                                 vmovl_u16(vget_low_u16(hi)), vmovl_high_u16(hi)};
        for (int j = 0; j < 4; ++j) {
          dot = vfmaq_f32(dot, lut(u[j]), vld1q_f32(x + off + 16 * h + 4 * j));
        }
      }
    }
    return dot;
  }
  static auto ZeroLut(int32_t z) {
    return [zv = vdupq_n_s32(z)](uint32x4_t u) {
      return vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(u), zv));
    };
  }
  // The 16 values (64 bytes) are a 4-register TBL table: code u selects bytes 4u .. 4u + 3.
  static auto Nf4Lut(const float* values) {
    uint8x16x4_t table;
    std::memcpy(&table, values, sizeof(table));
    return [table](uint32x4_t u) {
      const uint32x4_t idx = vaddq_u32(vmulq_n_u32(u, 0x04040404u), vdupq_n_u32(0x03020100u));
      return vreinterpretq_f32_u8(vqtbl4q_u8(table, vreinterpretq_u8_u32(idx)));
    };
  }
};

// ---- Float codes: NF4, small floats (FP8, FP6, FP4) and MX, 16 values a step ----

// The lanes of MinifloatEncoderWith (USHL by a negative count shifts right), and its row loops:
// 16 values a step, codes narrowed to bytes.
struct NeonLanes {
  using U = uint32x4_t;
  using F = float32x4_t;
  static U Set(uint32_t v) { return vdupq_n_u32(v); }
  static F SetF(float v) { return vdupq_n_f32(v); }
  static F AsF(U v) { return vreinterpretq_f32_u32(v); }
  static U AsU(F v) { return vreinterpretq_u32_f32(v); }
  static U And(U a, U b) { return vandq_u32(a, b); }
  static U AndNot(U a, U b) { return vbicq_u32(a, b); }
  static U Or(U a, U b) { return vorrq_u32(a, b); }
  static U Add(U a, U b) { return vaddq_u32(a, b); }
  static U Sub(U a, U b) { return vsubq_u32(a, b); }
  static U Shr(U a, int n) { return vshlq_u32(a, vdupq_n_s32(-n)); }
  static U Shl(U a, int n) { return vshlq_u32(a, vdupq_n_s32(n)); }
  static U Greater(U a, U b) { return vcgtq_u32(a, b); }
  static U Equal(U a, U b) { return vceqq_u32(a, b); }
  static U Select(U mask, U a, U b) { return vbslq_u32(mask, a, b); }
  static F AddF(F a, F b) { return vaddq_f32(a, b); }
  static F MulF(F a, F b) { return vmulq_f32(a, b); }
  static F DivF(F a, F b) { return vdivq_f32(a, b); }
  static F ToF(U v) { return vcvtq_f32_u32(v); }
  static auto Lut16(const float* values) { return NeonOps::Nf4Lut(values); }  // any 16 values

  // c = code(x) on each 4 lanes, deq = value(c) * scale.
  template <typename CodeFn, typename ValueFn>
  static void EncodeBy(const float* x, int64_t n, float scale, uint8_t* codes, float* deq,
                       CodeFn code, ValueFn value) {
    const F s = SetF(scale);
    EncodeSteps<16>(x, n, codes, deq, [&](const float* xs, uint8_t* cs, float* ds) {
      int32x4_t c[4];
      for (int q = 0; q < 4; ++q) {
        const U u = code(vld1q_f32(xs + 4 * q));
        c[q] = vreinterpretq_s32_u32(u);
        vst1q_f32(ds + 4 * q, MulF(value(u), s));
      }
      vst1q_u8(cs, Narrow(c[0], c[1], c[2], c[3]));
    });
  }
  // out = value(code) * scale.
  template <typename ValueFn>
  static void DecodeBy(const uint8_t* codes, int64_t n, float scale, float* out, ValueFn value) {
    const F s = SetF(scale);
    Blocks<16>(codes, n, out, [&](const uint8_t* c, float* d) {
      const uint8x16_t b = vld1q_u8(c);
      const uint16x8_t lo = vmovl_u8(vget_low_u8(b)), hi = vmovl_high_u8(b);
      const U u[4] = {vmovl_u16(vget_low_u16(lo)), vmovl_high_u16(lo), vmovl_u16(vget_low_u16(hi)),
                      vmovl_high_u16(hi)};
      for (int q = 0; q < 4; ++q) vst1q_f32(d + 4 * q, MulF(value(u[q]), s));
    });
  }
};

// NF4 code of v = the number of midpoints below it, counted by 15 compares: FCMGT is false for
// NaN, which so gets code 0 as lower_bound gives it, and the codec's clamp to [-1, 1] changes no
// count, every midpoint lying inside.
class NeonNf4Encoder {
 public:
  explicit NeonNf4Encoder(Bnb4Map map) : lut_(NeonOps::Nf4Lut(Nf4Table(map))) {
    for (int k = 0; k < 15; ++k) mid_[k] = vdupq_n_f32(Nf4MidpointTable(map)[k]);
  }
  // v = x * (1 / a) in a whole block, x / a in the matrix's shorter last block.
  void Run(const float* x, int64_t n, bool whole, float a, float scale, uint8_t* codes,
           float* deq) const {
    const float32x4_t d = vdupq_n_f32(whole ? 1.0f / a : a);
    const auto code = [&](float32x4_t x4) {
      const float32x4_t v = whole ? vmulq_f32(x4, d) : vdivq_f32(x4, d);
      uint32x4_t count = vdupq_n_u32(0);
      for (const float32x4_t& m : mid_) count = vsubq_u32(count, vcltq_f32(m, v));
      return count;
    };
    NeonLanes::EncodeBy(x, n, scale, codes, deq, code, lut_);
  }
  void Decode(const uint8_t* codes, int64_t n, float scale, float* out) const {
    NeonLanes::DecodeBy(codes, n, scale, out, lut_);
  }

 private:
  float32x4_t mid_[15];
  decltype(NeonOps::Nf4Lut(nullptr)) lut_;
};

struct NeonCodes {
  using Nf4Encoder = NeonNf4Encoder;
  using MinifloatEncoder = MinifloatEncoderWith<NeonLanes>;

  static uint32_t AbsMaxBits(const float* x, int64_t n) {
    uint32x4_t m = vdupq_n_u32(0);
    BlocksIn<4>(x, n, [&](const float* p) {
      m = vmaxq_u32(m, vandq_u32(vreinterpretq_u32_f32(vld1q_f32(p)), vdupq_n_u32(0x7fffffff)));
    });
    return vmaxvq_u32(m);
  }
  // 32 codes <-> 16 bytes, the even code in the high nibble: LD2/ST2 split and merge the even
  // and odd codes.
  static void PackNibblesHighFirst(const uint8_t* c, int64_t n, uint8_t* out) {
    const int64_t whole = n / 32 * 32;
    for (int64_t i = 0; i < whole; i += 32) {
      const uint8x16x2_t v = vld2q_u8(c + i);
      vst1q_u8(out + i / 2, vorrq_u8(vshlq_n_u8(v.val[0], 4), v.val[1]));
    }
    PackHighFirstFrom(c, whole, n, out);
  }
  static void UnpackNibblesHighFirst(const uint8_t* in, int64_t n, uint8_t* c) {
    const int64_t whole = n / 32 * 32;
    for (int64_t i = 0; i < whole; i += 32) {
      const uint8x16_t b = vld1q_u8(in + i / 2);
      vst2q_u8(c + i, (uint8x16x2_t{{vshrq_n_u8(b, 4), vandq_u8(b, vdupq_n_u8(0x0f))}}));
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

constexpr KernelTable kBase{
    .bf16_to_f32 = Bf16ToF32,
    .f16_to_f32 = F16ToF32,
    .f32_to_bf16 = F32ToBf16,
    .f32_to_f16 = F32ToF16,
    .first_non_finite = FirstNonFiniteWith<NeonOps>,
    .accumulate_errors = AccumulateErrorsWith<NeonOps>,
    .min_max = MinMax,
    .quantize_groups = QuantizeGroupsWith<MinMax, QuantizeCodes, DequantizeCodes>,
    .quantize_stored_rows = QuantizeStoredRowsWith<NeonOps, Bf16ToF32, F16ToF32, MinMax,
                                                   QuantizeCodes, DequantizeCodes, PackCodes>,
    .quantize_codes = QuantizeCodes,
    .dequantize_codes = DequantizeCodes,
    .pack_codes = PackCodes,
    .unpack_codes = UnpackCodes,
    .quantize_activations = QuantizeActivations,
    .gemm_w4a16 = GemmW4A16With<NeonOps>,
    .gemv_nf4 = GemvNf4With<NeonOps>,
    .quantize_nf4 = QuantizeNf4With<NeonCodes>,
    .dequantize_nf4 = DequantizeNf4With<NeonCodes>,
    .quantize_minifloat = QuantizeMinifloatWith<NeonCodes>,
    .dequantize_minifloat = DequantizeMinifloatWith<NeonCodes>,
    .quantize_mx = QuantizeMxWith<NeonCodes>,
    .dequantize_mx = DequantizeMxWith<NeonCodes>};

constexpr KernelTable WithDotProduct(KernelTable t) {
  t.gemm_w8a8 = GemmW8A8;
  t.gemm_w4a8 = GemmW4A8;
  return t;
}

}  // namespace

// Without SDOT the integer GEMMs run on the reference.
const KernelTable* NeonTable(bool dotprod) {
  static constexpr KernelTable kDot = WithDotProduct(kBase);
  return dotprod ? &kDot : &kBase;
}

}  // namespace qtool::kernels::detail

#else
#include "../table.hpp"
const qtool::kernels::detail::KernelTable* qtool::kernels::detail::NeonTable(bool) {
  return nullptr;
}
#endif
