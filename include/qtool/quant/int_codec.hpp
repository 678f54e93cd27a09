// Integer (affine) codec: INT2..INT8, symmetric or asymmetric, per-tensor/channel/group.
//
// Stored tensors for weight NAME [rows, cols] with G = groups per row:
//   NAME.qweight  U8  [rows, ceil(cols * bits / 8)]   codes packed per row (see pack.hpp)
//   NAME.scales   F32 [rows, G]                       (per-tensor: [1, 1])
//   NAME.zeros    U8  [rows, G]                       asymmetric only (per-tensor: [1, 1])
//   NAME.g_idx    I32 [cols]                          record "g_idx": true only: column c uses
//                                                     group g_idx[c] (GPTQ's act-order)
// With flat groups (record "flat_groups": true) scales and zeros are [ceil(rows * cols / g), 1],
// one per group of the flattened matrix, and row chunks start on group boundaries (row_block).
// Record: {"codec": "int", "bits": b, "symmetric": bool, "granularity": "tensor"|"channel"|"group",
//          "group_size": g, "flat_groups": bool (absent means false), "g_idx": bool (groups
//          only; absent means false: column c is in group c / g), "observer":
//          "minmax"|"percentile:P"|"mse[:p]"|"kl" (observer.hpp; absent means minmax)}. Every range
//          comes from ChooseRange on the values it covers (a per-tensor range other than min-max
//          keeps an f32 copy of the tensor during Observe).
#pragma once

#include <vector>

#include "qtool/format/spec.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/observer.hpp"

namespace qtool {

/// Reference quantisation of one row with min-max ranges: stored codes (one per byte, unpacked),
/// group parameters, and the decoded row. Every faster path must reproduce it bit for bit.
void QuantizeRowRef(const float* x, int64_t cols, const QuantSpec& spec, uint8_t* codes,
                    GroupParams* params, float* dequant);

/// Min-max range of n values (lo <= 0 <= hi after widening to include 0).
void MinMaxRange(const float* x, int64_t n, float* lo, float* hi);

class IntCodec final : public WeightCodec {
 public:
  /// With `g_idx` (group granularity, groups inside rows), the stored g_idx tensor assigns each
  /// column its group; EncodeRows writes column order (c / g), solvers store their own.
  IntCodec(const QuantSpec& spec, int64_t rows, int64_t cols, const ObserverSpec& observer = {},
           bool g_idx = false);

  Format format() const override;
  bool needs_observe() const override { return spec_.granularity == Granularity::kTensor; }
  int64_t row_block() const override;
  void Observe(const float* w, int64_t r0, int64_t nrows) override;
  void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                  float* dequant) const override;
  /// Min-max ranges per group or channel, rows of bf16, f16 or f32 with cols and group lengths
  /// multiples of 16: kernels::QuantizeStoredRows.
  bool EncodeStoredRows(const std::byte* x, DType dtype, int64_t r0, int64_t nrows,
                        std::byte* const* out, ErrorStats* stats, int64_t* bad) const override;
  void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const override;

  const QuantSpec& spec() const { return spec_; }

 private:
  // A run of `n` consecutive elements, the first being element `e0` of a numbering in which groups
  // start at multiples of `glen`; group parameters are stored at index base + (e0 + k) / glen.
  // Rows are such runs (e0 = 0, base = row * groups per row); with flat groups a chunk of rows is
  // one run numbered from the matrix's first element.
  struct Run {
    int64_t e0, n, glen, base;
  };
  void EncodeRun(const float* x, Run run, uint8_t* codes, float* y, std::byte* scales,
                 uint8_t* zeros) const;
  void DecodeRun(const uint8_t* codes, Run run, const std::byte* scales, const uint8_t* zeros,
                 float* y) const;
  // The parts of the output that EncodeRows writes once, with the chunk at row 0: g_idx, and the
  // parameters of a per-tensor spec.
  void EncodeOnce(std::byte* const* out) const;

  // Index of the g_idx tensor in Layout() (with g_idx_).
  size_t g_idx_part() const { return spec_.symmetric ? 2 : 3; }
  void DecodeRowsByIndex(const uint8_t* codes, const std::byte* const* in, int64_t r0,
                         int64_t nrows, float* out) const;

  QuantSpec spec_;
  ObserverSpec observer_;
  bool g_idx_ = false;
  float tensor_lo_ = 0, tensor_hi_ = 0;  // per-tensor range seen by Observe
  std::vector<float> tensor_values_;     // per-tensor, observers other than minmax
};

}  // namespace qtool
