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

// ---- Row drivers over a family's vector steps ----
//
// `Ops` supplies, for B = Ops::kStep elements a step:
//   Nf4Encoder(): Run(x, n, whole, a, scale, codes, deq): v = whole ? x * (1 / a) : x / a, codes
//     as Nf4Code, deq = Nf4 value * scale; Decode(codes, n, scale, out).
//   MinifloatEncoder(f): Divided(x, n, s, codes, deq): codes of x / s, deq = value * s;
//     Multiplied(x, n, r, s, codes, deq): codes of x * r, deq = value * s; Decode(codes, n, s,
//     out).
//   AbsMaxBits(x, n): the largest of the n values' bits with the sign cleared.
//   PackNibblesHighFirst / UnpackNibblesHighFirst(n codes), PackCodes, UnpackCodes.

template <typename Ops>
void QuantizeNf4With(const float* x, int64_t n, int64_t start, const Nf4Blocks& b, uint8_t* packed,
                     float* deq) {
  Scratch codes(0, n);
  const typename Ops::Nf4Encoder enc;
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
  const typename Ops::Nf4Encoder enc;
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
  DecodeGroupsWith<Ops>(
      packed, n, group, f, [scales](int64_t j) { return scales[j]; }, out);
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
  DecodeGroupsWith<Ops>(
      packed, n, block, *e,
      [scales](int64_t j) { return std::bit_cast<float>(E8M0Bits(scales[j])); }, out);
}

}  // namespace
}  // namespace qtool::kernels::detail
