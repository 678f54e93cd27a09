// NF4 (4-bit NormalFloat) codec, as QLoRA (Dettmers et al. 2023, arXiv:2305.14314, appendix E)
// and bitsandbytes define it, with optional double quantisation of the block scales.
//
// Quantisation, over the row-major flattened tensor (blocks cross row boundaries):
//   absmax_b = max |x| over block b of `block` elements (64 by default; the last may be shorter)
//   code_i   = the index of the NF4 value nearest to x_i * (1 / absmax_b) (clamped to [-1, 1]; the
//              reciprocal is taken first, in f32, as bitsandbytes does; on an exact tie the lower
//              index wins, as argmin does); an all-zero block stores code 7 (the value 0).
// Double quantisation (bitsandbytes compress_statistics) then stores the absmax values as
//   offset     = mean(absmax)                                  (f32)
//   a_j        = absmax_j - offset
//   absmax2_c  = max |a_j| over chunk c of 256 absmax values
//   qabsmax_j  = index of the value of the signed dynamic 8-bit map (DynamicMap8) nearest to
//                a_j * (1 / absmax2_c), clamped to [-1, 1]
// and decoding uses absmax'_j = DynamicMap8()[qabsmax_j] * absmax2_c + offset. The codes are
// always computed from the exact absmax (double quantisation affects only the stored scales).
// x^_i = NF4[code_i] * absmax_b.
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
// Record: {"codec": "nf4", "block": 64, "double_quant": bool}.
#pragma once

#include <array>

#include "qtool/quant/codec.hpp"

namespace qtool {

/// The 16 NF4 values, ascending (QLoRA appendix E; bitsandbytes' NF4 table).
const std::array<float, 16>& Nf4Values();
/// bitsandbytes' signed dynamic 8-bit map (create_dynamic_map(signed=True)), 256 ascending values.
const std::array<float, 256>& DynamicMap8();

inline constexpr int64_t kNf4DoubleQuantBlock = 256;

class Nf4Codec final : public WeightCodec {
 public:
  Nf4Codec(int64_t block, bool double_quant, int64_t rows, int64_t cols);
  static std::unique_ptr<WeightCodec> FromRecord(const nlohmann::json& r, int64_t rows,
                                                 int64_t cols);

  nlohmann::json Record() const override;
  std::vector<TensorSpec> Layout(const std::string& name) const override;
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

  int64_t block_;
  bool double_quant_;
  std::vector<float> absmax_;     // exact, from Observe
  std::vector<float> dq_absmax_;  // as decoding will see it
  std::vector<uint8_t> qabsmax_;  // double quantisation
  std::vector<float> absmax2_;
  float offset_ = 0;
};

}  // namespace qtool
