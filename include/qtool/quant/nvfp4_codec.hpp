// NVFP4 codec, as compressed-tensors defines the format (nvfp4-pack-quantized): E2M1 elements,
// one FP8 E4M3 scale per block of 16 consecutive elements of a row (a row's last block may be
// shorter), and one F32 global scale g per tensor that every block scale is divided by.
//
// Encoding (compressed-tensors' observers and quantiser, from the whole tensor's and each
// block's largest magnitude):
//   g = 448 * 6 / amax(tensor)                  (1 where not a positive finite number)
//   S = E4M3(g * (amax(block) / 6))             (round to nearest even, saturating; a scale that
//                                                rounds to 0 becomes 0.125, E4M3's "eps")
//   s = S / g                                   (f32)
//   code = E2M1(x / s)                          (round to nearest even, saturating at 6)
// Decoding: value(code) * (S / g), the product compressed-tensors' dequantize computes.
//
// Stored tensors for weight NAME [rows, cols], B = ceil(cols / 16):
//   NAME.qweight       U8 [rows, ceil(cols / 2)]  E2M1 codes, code 2j in the low nibble of byte j
//                                                 (pack.hpp; compressed-tensors' weight_packed)
//   NAME.scales        F8_E4M3 [rows, B]           block scales S (weight_scale)
//   NAME.global_scale  F32 [1]                     g (weight_global_scale)
// Record: {"codec": "nvfp4"}.
#pragma once

#include "qtool/format/minifloat.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

/// The E4M3 code of a block's scale for block absmax `amax` under global scale `g`.
inline uint8_t Nvfp4BlockScaleCode(float amax, float g) {
  using T = FormatTraits<Nvfp4Format>;
  const auto s = static_cast<uint8_t>(EncodeMinifloat(T::BlockScaleInput(amax, g), kE4M3, true));
  return s == 0 ? T::kZeroBlockScaleCode : s;
}

/// The f32 scale of a block's elements: DecodeMinifloat(code, E4M3) / g.
inline float Nvfp4ElementScale(uint8_t scale_code, float g) {
  return DecodeMinifloat(scale_code, kE4M3) / g;
}

class Nvfp4Codec final : public WeightCodec {
 public:
  Nvfp4Codec(int64_t rows, int64_t cols);
  Format format() const override { return Nvfp4Format{}; }
  bool needs_observe() const override { return true; }
  /// Accumulates the tensor's largest magnitude (NaN where any element is NaN).
  void Observe(const float* w, int64_t r0, int64_t nrows) override;
  void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                  float* dequant) const override;
  void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const override;

 private:
  float tensor_amax_ = 0;
  kernels::MinifloatCodes codes_;  // E2M1, saturating
};

}  // namespace qtool
