// Helpers of the float-code kernels (NF4, scaled small floats, MX) shared by the reference and the
// per-ISA units, and the row drivers that the vector families fill with their own steps. Internal
// linkage, as in common_inl.hpp: each unit compiles its own copy with its own flags.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "common_inl.hpp"

namespace qtool::kernels::detail {
namespace {

/// Calls fn(c0, c1, j, whole) for each run [c0, c1) of a row's elements that lie in one NF4 block,
/// in order. The row holds the flat elements [start, start + n) of its matrix; j indexes b.absmax
/// and b.scales; whole is false in the matrix's shorter last block.
template <typename Fn>
void ForEachNf4Run(int64_t n, int64_t start, const Nf4Blocks& b, Fn&& fn) {
  const int64_t whole_blocks = b.numel / b.block, base = b.first / b.block;
  for (int64_t c = 0; c < n;) {
    const int64_t blk = (start + c) / b.block;
    const int64_t end = std::min(n, (blk + 1) * b.block - start);
    fn(c, end, blk - base, blk < whole_blocks);
    c = end;
  }
}

/// f32 bits of 2^k for k in [-127, 127]: a normal number, or the subnormal 2^-127.
constexpr uint32_t Pow2Bits(int k) {
  return k > -127 ? static_cast<uint32_t>(k + 127) << 23 : 0x00400000u;
}

/// E8M0ScaleForBlock (minifloat.hpp) from the block's largest |x| taken on the bits: with the sign
/// cleared, f32 bits order like the magnitudes and any NaN lies above Inf, so an integer maximum
/// gives amax, or a NaN when the block holds one. For a normal amax, floor(log2(amax)) is the
/// exponent field minus 127; a subnormal or zero amax gives 0, as the clamp to -127 does there
/// (emax >= 0). Exponent field 255 (Inf or NaN) is the NaN scale.
inline uint8_t E8M0FromAbsBits(uint32_t amax_bits, int emax) {
  const int field = static_cast<int>(amax_bits >> 23);
  return field == 255 ? 0xff : static_cast<uint8_t>(std::clamp(field - emax, 0, 254));
}

/// DecodeE8M0(e) as f32 bits: 2^(e - 127), and the quiet NaN for 0xff.
inline uint32_t E8M0Bits(uint8_t e) { return e == 0xff ? 0x7fc00000u : Pow2Bits(e - 127); }

/// 1 / DecodeE8M0(e) for e < 0xff, exact (a power of two in f32's range), so that multiplying by
/// it rounds exactly as the division by the scale does.
inline float E8M0Reciprocal(uint8_t e) { return std::bit_cast<float>(Pow2Bits(127 - e)); }

/// Codes [i0, n) of a row packed two per byte with the even code in the high nibble (the NF4
/// codec's order), and their unpacking: the tails of the vector loops, i0 even.
inline void PackHighFirstFrom(const uint8_t* c, int64_t i0, int64_t n, uint8_t* out) {
  for (int64_t i = i0; i < n; ++i) {
    out[i / 2] =
        i % 2 == 0 ? static_cast<uint8_t>(c[i] << 4) : static_cast<uint8_t>(out[i / 2] | c[i]);
  }
}
inline void UnpackHighFirstFrom(const uint8_t* in, int64_t i0, int64_t n, uint8_t* c) {
  for (int64_t i = i0; i < n; ++i) c[i] = i % 2 == 0 ? in[i / 2] >> 4 : in[i / 2] & 0xf;
}

/// Runs body(x, codes, deq) over n elements in steps of B; the last partial step reads a
/// zero-padded copy of x and writes through copies, so the body only sees whole steps.
template <int B, typename Body>
void EncodeSteps(const float* x, int64_t n, uint8_t* codes, float* deq, Body body) {
  int64_t i = 0;
  for (; i + B <= n; i += B) body(x + i, codes + i, deq + i);
  if (i < n) {
    alignas(32) float tx[B] = {}, td[B];
    alignas(32) uint8_t tc[B];
    std::memcpy(tx, x + i, static_cast<size_t>(n - i) * sizeof(float));
    body(tx, tc, td);
    std::memcpy(codes + i, tc, static_cast<size_t>(n - i));
    std::memcpy(deq + i, td, static_cast<size_t>(n - i) * sizeof(float));
  }
}

/// EncodeMinifloat and DecodeMinifloat on vectors of f32 bit fields with MinifloatCodes'
/// constants (see there): both rounding paths are computed and one kept per lane. `V` supplies the
/// lanes: U (u32) and F (f32) vectors; Set(u32), SetF(float); AsF(U), AsU(F) (the same bits);
/// And, AndNot(a, b) = a & ~b, Or, Add, Sub; Shr(U, int), Shl(U, int); Greater(a, b) and
/// Equal(a, b), all-ones lanes where true, for operands below 2^31; Select(mask, a, b); AddF,
/// MulF, DivF; ToF(U) (exact for small integers); Lut16(values), a lookup of codes below 16 in 16
/// floats; and the row loops EncodeBy(x, n, scale, codes, deq, code, value) and
/// DecodeBy(codes, n, scale, out, value). Formats of 4 bits take their values from a Lut16 of the
/// prepared values, a few instructions in place of the bit-field decoding.
template <typename V>
class MinifloatEncoderWith {
 public:
  using U = typename V::U;
  using F = typename V::F;

  explicit MinifloatEncoderWith(const MinifloatCodes& f)
      : small_(f.bits <= 4),
        lut_(V::Lut16(f.value)),
        shift_(f.shift),
        sign_shift_(f.sign_shift),
        sign_bit_(V::Set(f.sign_bit)),
        min_normal_(V::Set(f.min_normal)),
        sub_magic_(V::Set(f.sub_magic)),
        round_half_(V::Set(f.round_half)),
        rebias_(V::Set(f.rebias)),
        max_code_(V::Set(f.max_code)),
        overflow_code_(V::Set(f.overflow_code)),
        nan_code_(V::Set(f.nan_code)),
        nan_sign_(V::Set(f.nan_sign)),
        min_normal_code_(V::Set(f.min_normal_code)),
        exp_rebias_(V::Set(f.exp_rebias)),
        inf_code_(V::Set(f.inf_code)),
        below_nan_(V::Set(f.nan_from - 1)),
        sub_unit_(V::SetF(f.sub_unit)) {}

  // Codes of x / s (a true division, as the scaled-float codec divides), deq = value * s.
  void Divided(const float* x, int64_t n, float s, uint8_t* codes, float* deq) const {
    const F d = V::SetF(s);
    const auto code = [&](F v) { return Code(V::DivF(v, d)); };
    WithValues([&](auto value) { V::EncodeBy(x, n, s, codes, deq, code, value); });
  }
  // Codes of x * r, deq = value * s.
  void Multiplied(const float* x, int64_t n, float r, float s, uint8_t* codes, float* deq) const {
    const F m = V::SetF(r);
    const auto code = [&](F v) { return Code(V::MulF(v, m)); };
    WithValues([&](auto value) { V::EncodeBy(x, n, s, codes, deq, code, value); });
  }
  void Decode(const uint8_t* codes, int64_t n, float scale, float* out) const {
    WithValues([&](auto value) { V::DecodeBy(codes, n, scale, out, value); });
  }

 private:
  // fn(value) with the decoder of this format's codes.
  template <typename Fn>
  void WithValues(Fn&& fn) const {
    if (small_) {
      fn([this](U c) { return lut_(c); });
    } else {
      fn([this](U c) { return Value(c); });
    }
  }
  U Code(F v) const {
    const U u = V::AsU(v);
    const U a = V::And(u, V::Set(0x7fffffff));
    const U sign = V::And(V::Shr(u, sign_shift_), sign_bit_);
    const U sub = V::Sub(V::AsU(V::AddF(V::AsF(a), V::AsF(sub_magic_))), sub_magic_);
    const U odd = V::And(V::Shr(a, shift_), V::Set(1));
    const U normal = V::Sub(V::Shr(V::Add(V::Add(a, round_half_), odd), shift_), rebias_);
    U r = V::Select(V::Greater(min_normal_, a), sub, normal);
    r = V::Select(V::Greater(r, max_code_), overflow_code_, r);  // Inf lands here too
    r = V::Or(r, sign);
    const U nan = V::Or(nan_code_, V::And(sign, nan_sign_));
    return V::Select(V::Greater(a, V::Set(0x7f800000)), nan, r);
  }
  F Value(U c) const {
    const U em = V::AndNot(c, sign_bit_);
    const U sign = V::Shl(V::And(c, sign_bit_), sign_shift_);
    const U normal = V::Add(V::Shl(em, shift_), exp_rebias_);
    const U sub = V::AsU(V::MulF(V::ToF(em), sub_unit_));
    U mag = V::Select(V::Greater(min_normal_code_, em), sub, normal);
    mag = V::Select(V::Equal(em, inf_code_), V::Set(0x7f800000), mag);
    mag = V::Select(V::Greater(em, below_nan_), V::Set(0x7fc00000), mag);
    return V::AsF(V::Or(mag, sign));
  }

  bool small_;
  decltype(V::Lut16(nullptr)) lut_;
  int shift_, sign_shift_;
  U sign_bit_, min_normal_, sub_magic_, round_half_, rebias_, max_code_, overflow_code_, nan_code_,
      nan_sign_, min_normal_code_, exp_rebias_, inf_code_, below_nan_;
  F sub_unit_;
};

// ---- Row drivers over a family's vector steps ----
//
// `Ops` supplies:
//   Nf4Encoder(map): Run(x, n, whole, a, scale, codes, deq): codes as Nf4Code of v = x * (1 / a)
//     (whole block) or x / a in the map, deq = values[code] * scale; Decode(codes, n, scale, out).
//   MinifloatEncoder(f): MinifloatEncoderWith over the family's lanes.
//   AbsMaxBits(x, n): the largest of the n values' bits with the sign cleared.
//   PackNibblesHighFirst and UnpackNibblesHighFirst of n codes, PackCodes and UnpackCodes.

template <typename Ops>
void QuantizeNf4With(const float* x, int64_t n, int64_t start, const Nf4Blocks& b, uint8_t* packed,
                     float* deq) {
  Scratch codes(0, n);
  const typename Ops::Nf4Encoder enc(b.map);
  ForEachNf4Run(n, start, b, [&](int64_t c0, int64_t c1, int64_t j, bool whole) {
    enc.Run(x + c0, c1 - c0, whole, std::max(b.absmax[j], kNf4AbsmaxFloor), b.scales[j],
            codes.as<uint8_t>() + c0, deq + c0);
  });
  Ops::PackNibblesHighFirst(codes.as<uint8_t>(), n, packed);
}

template <typename Ops>
void DequantizeNf4With(const uint8_t* packed, int64_t n, int64_t start, const Nf4Blocks& b,
                       float* out) {
  Scratch codes(0, n);
  Ops::UnpackNibblesHighFirst(packed, n, codes.as<uint8_t>());
  const typename Ops::Nf4Encoder enc(b.map);
  ForEachNf4Run(n, start, b, [&](int64_t c0, int64_t c1, int64_t j, bool) {
    enc.Decode(codes.as<uint8_t>() + c0, c1 - c0, b.scales[j], out + c0);
  });
}

template <typename Ops>
void QuantizeMinifloatWith(const float* x, int64_t n, const float* scales, int64_t group,
                           const MinifloatCodes& f, uint8_t* packed, float* deq) {
  Scratch scratch(0, n);
  uint8_t* codes = f.bits == 8 ? packed : scratch.as<uint8_t>();
  const typename Ops::MinifloatEncoder enc(f);
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    enc.Divided(x + g0, std::min(group, n - g0), scales[g0 / group], codes + g0, deq + g0);
  }
  if (f.bits != 8) Ops::PackCodes(codes, n, f.bits, packed);
}

// A row of f's codes, unpacked first when they are packed below 8 bits, decoded a group at a time:
// out = value * scale(j) in group j.
template <typename Ops, typename ScaleFn>
void DecodeGroupsWith(const uint8_t* packed, int64_t n, int64_t group, const MinifloatCodes& f,
                      ScaleFn scale, float* out) {
  Scratch scratch(0, n);
  const uint8_t* codes = packed;
  if (f.bits != 8) {
    Ops::UnpackCodes(packed, n, f.bits, scratch.as<uint8_t>());
    codes = scratch.as<uint8_t>();
  }
  const typename Ops::MinifloatEncoder enc(f);
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    enc.Decode(codes + g0, std::min(group, n - g0), scale(g0 / group), out + g0);
  }
}

template <typename Ops>
void DequantizeMinifloatWith(const uint8_t* packed, int64_t n, const float* scales, int64_t group,
                             const MinifloatCodes& f, float* out) {
  const auto scale = [scales](int64_t j) { return scales[j]; };
  DecodeGroupsWith<Ops>(packed, n, group, f, scale, out);
}

// MXINT8 elements (element == nullptr) run on the reference.
template <typename Ops>
void QuantizeMxWith(const float* x, int64_t n, int64_t block, const MinifloatCodes* e,
                    uint8_t* packed, uint8_t* scales, float* deq) {
  if (!e) return ScalarTable()->quantize_mx(x, n, block, e, packed, scales, deq);
  Scratch scratch(0, n);
  uint8_t* codes = e->bits == 8 ? packed : scratch.as<uint8_t>();
  const typename Ops::MinifloatEncoder enc(*e);
  for (int64_t c0 = 0, j = 0; c0 < n; c0 += block, ++j) {
    const int64_t len = std::min(block, n - c0);
    const uint8_t s = E8M0FromAbsBits(Ops::AbsMaxBits(x + c0, len), e->emax);
    scales[j] = s;
    if (s == 0xff) {
      // Code 0 (the value +0) times the NaN scale: that NaN.
      std::memset(codes + c0, 0, static_cast<size_t>(len));
      std::fill(deq + c0, deq + c0 + len, std::bit_cast<float>(E8M0Bits(s)));
      continue;
    }
    enc.Multiplied(x + c0, len, E8M0Reciprocal(s), std::bit_cast<float>(E8M0Bits(s)), codes + c0,
                   deq + c0);
  }
  if (e->bits != 8) Ops::PackCodes(codes, n, e->bits, packed);
}

template <typename Ops>
void DequantizeMxWith(const uint8_t* packed, const uint8_t* scales, int64_t n, int64_t block,
                      const MinifloatCodes* e, float* out) {
  if (!e) return ScalarTable()->dequantize_mx(packed, scales, n, block, e, out);
  const auto scale = [scales](int64_t j) { return std::bit_cast<float>(E8M0Bits(scales[j])); };
  DecodeGroupsWith<Ops>(packed, n, block, *e, scale, out);
}

}  // namespace
}  // namespace qtool::kernels::detail
