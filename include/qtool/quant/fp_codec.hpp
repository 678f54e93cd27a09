// Scaled small-float codec: FP8 (E4M3fn, E5M2) and FP4/FP6 elements with f32 scales.
//
// The matrix is cut into scale blocks of block_rows x block_cols (per-tensor: the whole matrix;
// per-channel: 1 x cols; 2-D blocks such as 128 x 128; groups as 1 x g). Each block's scale is
// s = amax / max(format) (s = 1 for an all-zero block); elements are stored as
// code = Encode(x / s) (round to nearest even, see minifloat.hpp) and decode to Decode(code) * s.
//
// Stored tensors for weight NAME [rows, cols], block grid [BR, BC] = [ceil(rows/br),
// ceil(cols/bc)]:
//   NAME.qweight  F8_E4M3 / F8_E5M2 [rows, cols]       FP8 elements, one per byte
//                 U8 [rows, ceil(cols * bits / 8)]       FP4/FP6 codes packed per row (pack.hpp)
//   NAME.scales   F32 [BR, BC]                           ([1, 1] per-tensor, [rows, 1] per-channel)
// Record: {"codec": "fp", "format": "e4m3"|"e5m2"|"e3m2"|"e2m3"|"e2m1",
//          "scale": "tensor"|"channel"|"block", "block": [br, bc], "saturate": bool}.
#pragma once

#include "qtool/format/minifloat.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

class FpCodec final : public WeightCodec {
 public:
  /// Scale blocks: FloatFormat's granularity (kGroup: block_rows x block_cols).
  FpCodec(const FloatFormat& spec, int64_t rows, int64_t cols);

  Format format() const override { return spec_; }
  int64_t row_block() const override { return br_; }
  bool needs_observe() const override { return spec_.granularity == Granularity::kTensor; }
  void Observe(const float* w, int64_t r0, int64_t nrows) override;
  void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                  float* dequant) const override;
  void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const override;

 private:
  FloatFormat spec_;
  const MinifloatFormat* format_;
  int64_t br_, bc_;  // effective block shape
  float tensor_amax_ = 0;
  kernels::MinifloatCodes codes_;
};

}  // namespace qtool
