// Ternary codec {-1, 0, +1} with BitNet b1.58's absmean scale (Ma et al. 2024, arXiv:2402.17764):
//   gamma = max(mean |W|, 1e-5) over the scale group (the whole tensor in BitNet; per-channel and
//   per-group are offered too), q = clamp(rne(W / gamma), -1, 1), W^ = q * gamma.
//
// Stored tensors for weight NAME [rows, cols] with G groups per row:
//   NAME.qweight  U8  [rows, ceil(cols / 4)]  2-bit codes u = q + 1 packed per row (pack.hpp: four
//                                             codes per byte from the low bits up)
//   NAME.scales   F32 [rows, G]               gamma ([1, 1] per-tensor)
// Record: {"codec": "ternary", "granularity": "tensor"|"channel"|"group", "group_size": g}.
#pragma once

#include "qtool/format/spec.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

inline constexpr float kTernaryMinScale = FormatTraits<TernaryFormat>::kMinScale;

class TernaryCodec final : public WeightCodec {
 public:
  /// Only spec.granularity and spec.group_size are used.
  TernaryCodec(const QuantSpec& spec, int64_t rows, int64_t cols);
  Format format() const override {
    return TernaryFormat{.granularity = spec_.granularity, .group = spec_.group_size};
  }
  bool needs_observe() const override { return spec_.granularity == Granularity::kTensor; }
  void Observe(const float* w, int64_t r0, int64_t nrows) override;
  void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                  float* dequant) const override;
  void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const override;

 private:
  QuantSpec spec_;
  double tensor_abs_sum_ = 0;
};

}  // namespace qtool
