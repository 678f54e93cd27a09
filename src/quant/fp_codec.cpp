#include "qtool/quant/fp_codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "qtool/core/error.hpp"
#include "qtool/format/pack.hpp"

namespace qtool {
namespace {

// The minifloat of a float format's element (FormatTraits<FloatFormat>::Validate has refused
// int8).
const MinifloatFormat& ElementFormat(Element e) {
  const MinifloatFormat* f = FindMinifloat(ElementName(e));
  QTOOL_CHECK(f != nullptr, OptionError, "fp: \"{}\" is not a float element", ElementName(e));
  return *f;
}

float ScaleForAmax(float amax, const MinifloatFormat& f) {
  const float s = amax / f.max();
  return s > 0.0f && std::isfinite(s) ? s : 1.0f;
}

}  // namespace

FpCodec::FpCodec(const FloatFormat& spec, int64_t rows, int64_t cols)
    : WeightCodec(rows, cols),
      spec_(spec),
      format_(&ElementFormat(spec.element)),
      codes_(*format_, spec.saturate) {
  FormatTraits<FloatFormat>::Validate(spec);
  // Per-tensor scales come from Observe; chunks of rows need no alignment.
  std::tie(br_, bc_) = FormatTraits<FloatFormat>::Block(spec, cols);
}

void FpCodec::Observe(const float* w, int64_t r0, int64_t nrows) {
  if (r0 == 0) tensor_amax_ = 0;
  tensor_amax_ = std::max(tensor_amax_, kernels::AbsMax(w, nrows * cols()));
}

void FpCodec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                         float* dequant) const {
  const MinifloatFormat& f = *format_;
  const int64_t cols = this->cols(), row_bytes = PackedBytes(cols, f.bits());
  const int64_t nbc = (cols + bc_ - 1) / bc_;
  const bool tensor = spec_.granularity == Granularity::kTensor;
  auto* qweight = reinterpret_cast<uint8_t*>(out[0]);
  std::vector<float> scales(static_cast<size_t>(nbc));
  for (int64_t b0 = r0; b0 < r0 + nrows; b0 += br_) {
    const int64_t b1 = std::min(r0 + nrows, b0 + br_);
    // Scales of the blocks in this band of rows.
    for (int64_t cb = 0; cb < nbc; ++cb) {
      float amax = tensor_amax_;
      if (!tensor) {
        amax = 0;
        const int64_t c0 = cb * bc_, c1 = std::min(cols, c0 + bc_);
        for (int64_t r = b0; r < b1; ++r) {
          amax = std::max(amax, kernels::AbsMax(w + (r - r0) * cols + c0, c1 - c0));
        }
      }
      scales[static_cast<size_t>(cb)] = ScaleForAmax(amax, f);
      if (!tensor || b0 == 0) {
        std::memcpy(out[1] + ((tensor ? 0 : b0 / br_ * nbc) + cb) * 4, &scales[cb], 4);
      }
    }
    kernels::QuantizeMinifloatRows(w + (b0 - r0) * cols, b1 - b0, cols, scales.data(), bc_, codes_,
                                   qweight + b0 * row_bytes, dequant + (b0 - r0) * cols);
  }
}

void FpCodec::DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const {
  const int64_t cols = this->cols(), row_bytes = PackedBytes(cols, format_->bits());
  const int64_t nbc = (cols + bc_ - 1) / bc_;
  const bool tensor = spec_.granularity == Granularity::kTensor;
  const auto* qweight = reinterpret_cast<const uint8_t*>(in[0]);
  std::vector<float> scales(static_cast<size_t>(nbc));
  // Rows in bands that share their scales: all of them for a per-tensor scale, else block rows.
  for (int64_t b0 = r0; b0 < r0 + nrows;) {
    const int64_t b1 = tensor ? r0 + nrows : std::min(r0 + nrows, (b0 / br_ + 1) * br_);
    std::memcpy(scales.data(), in[1] + (tensor ? 0 : b0 / br_ * nbc) * 4, scales.size() * 4);
    kernels::DequantizeMinifloatRows(qweight + b0 * row_bytes, b1 - b0, cols, scales.data(), bc_,
                                     codes_, out + (b0 - r0) * cols);
    b0 = b1;
  }
}

}  // namespace qtool
