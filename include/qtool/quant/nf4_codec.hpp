// NF4 (4-bit NormalFloat) codec, as QLoRA (Dettmers et al. 2023, arXiv:2305.14314, appendix E)
// and bitsandbytes define it, with optional double quantisation of the block scales; the same
// codec holds bitsandbytes' FP4 (map "fp4": FormatTraits<Nf4Format>::kFp4Values in place of the
// NF4 values, everything else alike).
//
// Quantisation, over the row-major flattened tensor (blocks cross row boundaries):
//   absmax_b = max |x| over block b of `block` elements (64 by default; the last may be shorter)
//   code_i   = the number of f32 midpoints between consecutive NF4 values lying below
//              v = clamp(x_i * (1 / absmax_b), -1, 1) (x_i / absmax_b in a shorter last block, as
//              bitsandbytes computes it): the nearest value, a value exactly on a midpoint taking
//              the lower code; an all-zero block stores code 7 (the value 0).
// Double quantisation (bitsandbytes compress_statistics) then stores the absmax values as
//   offset     = mean(absmax)                                  (f32)
//   a_j        = absmax_j - offset
//   absmax2_c  = max |a_j| over chunk c of 256 absmax values
//   qabsmax_j  = code of a_j * (1 / absmax2_c), clamped to [-1, 1], in the signed dynamic 8-bit
//                map (DynamicMap8), by the same midpoint rule
// and decoding uses absmax'_j = DynamicMap8()[qabsmax_j] * absmax2_c + offset. The codes are
// always computed from the exact absmax (double quantisation affects only the stored scales).
// x^_i = NF4[code_i] * absmax_b (absmax'_b with double quantisation).
//
// Stored tensors for weight NAME [rows, cols], N = ceil(rows * cols / block):
//   NAME.qweight         U8  [rows, ceil(cols / 2)]  two codes per byte, the even column in the
//                                                    HIGH nibble (bitsandbytes' order: for an even
//                                                    cols these bytes equal bitsandbytes' packed
//                                                    tensor); an odd row ends in a padded byte
//   NAME.absmax          F32 [N]                     without double quantisation
//   NAME.absmax          U8  [N]                     with double quantisation: qabsmax
//   NAME.absmax_scale    F32 [ceil(N / 256)]         absmax2
//   NAME.absmax_offset   F32 [1]                     offset
// Record: {"codec": "nf4", "block": 64, "double_quant": bool}, and "map": "fp4" for FP4.
#pragma once

#include <algorithm>
#include <array>

#include "qtool/format/traits.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

/// The 16 NF4 values, ascending (QLoRA appendix E; bitsandbytes' NF4 table).
const std::array<float, 16>& Nf4Values();
/// bitsandbytes' signed dynamic 8-bit map (create_dynamic_map(signed=True)), 256 ascending values.
const std::array<float, 256>& DynamicMap8();

inline constexpr int64_t kNf4DoubleQuantBlock = FormatTraits<Nf4Format>::kDoubleQuantBlock;

/// Midpoints between consecutive NF4 values (FormatTraits<Nf4Format>::kMidpoints).
inline const std::array<float, 15>& Nf4Midpoints() { return FormatTraits<Nf4Format>::kMidpoints; }

/// Smallest absmax used as a divisor (FormatTraits<Nf4Format>::kMinAbsmax).
inline constexpr float kNf4MinAbsmax = FormatTraits<Nf4Format>::kMinAbsmax;

/// FormatTraits<Nf4Format>::ScaleToUnit: x scaled into its block, clamped to [-1, 1].
inline float Nf4ScaleToUnit(float x, float absmax, bool whole_block) {
  return FormatTraits<Nf4Format>::ScaleToUnit(x, absmax, whole_block);
}

/// NF4 code of x in a block with this absmax: the number of midpoints strictly below the scaled
/// value (torch.bucketize, right=False), so a value exactly on a midpoint takes the lower code.
/// Example: Nf4Code(0.0f, 1.0f, true) == 7, Nf4Code(-3.0f, 2.0f, true) == 0.
inline uint8_t Nf4Code(float x, float absmax, bool whole_block) {
  return FormatTraits<Nf4Format>::Code(x, absmax, whole_block);
}

class Nf4Codec final : public WeightCodec {
 public:
  Nf4Codec(const Nf4Format& f, int64_t rows, int64_t cols);
  Format format() const override { return format_; }
  bool needs_observe() const override { return true; }
  void Observe(const float* w, int64_t r0, int64_t nrows) override;
  void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                  float* dequant) const override;
  void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const override;

  int64_t num_blocks() const;

 private:
  // Writes the scale tensors (all known after Observe).
  void WriteScales(std::byte* const* out) const;
  // Decoded absmax of block b from the stored tensors.
  float StoredAbsmax(const std::byte* const* in, int64_t b) const;

  Nf4Format format_;
  std::vector<float> absmax_;     // exact, from Observe
  std::vector<float> dq_absmax_;  // as decoding will see it
  std::vector<uint8_t> qabsmax_;  // double quantisation
  std::vector<float> absmax2_;
  float offset_ = 0;
};

}  // namespace qtool
