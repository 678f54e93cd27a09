// Integer (affine) codec: INT2..INT8, symmetric or asymmetric, per-tensor/channel/group.
//
// Stored tensors for weight NAME [rows, cols] with G = groups per row:
//   NAME.qweight  U8  [rows, ceil(cols * bits / 8)]   codes packed per row (see pack.hpp)
//   NAME.scales   F32 [rows, G]                       (per-tensor: [1, 1])
//   NAME.zeros    U8  [rows, G]                       asymmetric only (per-tensor: [1, 1])
// Record: {"codec": "int", "bits": b, "symmetric": bool, "granularity": "tensor"|"channel"|"group",
//          "group_size": g, "observer": "minmax"|"percentile:P"|"mse[:p]"|"kl" (observer.hpp;
//          absent means minmax)}. Every range comes from ChooseRange on the values it covers (a
//          per-tensor range other than min-max keeps an f32 copy of the tensor during Observe).
#pragma once

#include <vector>

#include "qtool/quant/codec.hpp"
#include "qtool/quant/observer.hpp"
#include "qtool/quant/spec.hpp"

namespace qtool {

/// Reference quantisation of one row with min-max ranges: stored codes (one per byte, unpacked),
/// group parameters, and the decoded row. Every faster path must reproduce it bit for bit.
void QuantizeRowRef(const float* x, int64_t cols, const QuantSpec& spec, uint8_t* codes,
                    GroupParams* params, float* dequant);

/// Min-max range of n values (lo <= 0 <= hi after widening to include 0).
void MinMaxRange(const float* x, int64_t n, float* lo, float* hi);

class IntCodec final : public WeightCodec {
 public:
  IntCodec(const QuantSpec& spec, int64_t rows, int64_t cols, const ObserverSpec& observer = {});

  nlohmann::json Record() const override;
  std::vector<TensorSpec> Layout(const std::string& name) const override;
  bool needs_observe() const override { return spec_.granularity == Granularity::kTensor; }
  void Observe(const float* w, int64_t r0, int64_t nrows) override;
  void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                  float* dequant) const override;
  void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const override;

  const QuantSpec& spec() const { return spec_; }
  static QuantSpec SpecFromRecord(const nlohmann::json& record);
  static ObserverSpec ObserverFromRecord(const nlohmann::json& record);

 private:
  QuantSpec spec_;
  ObserverSpec observer_;
  float tensor_lo_ = 0, tensor_hi_ = 0;  // per-tensor range seen by Observe
  std::vector<float> tensor_values_;     // per-tensor, observers other than minmax
};

}  // namespace qtool
