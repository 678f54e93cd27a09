#include "qtool/quant/fp_codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/quant/pack.hpp"

namespace qtool {
namespace {

const MinifloatFormat& FormatOrThrow(const std::string& name) {
  const MinifloatFormat* f = FindMinifloat(name);
  QTOOL_CHECK(f != nullptr, OptionError,
              "unknown float format \"{}\" (known: e4m3, e5m2, e3m2, e2m3, e2m1)", name);
  return *f;
}

float ScaleForAmax(float amax, const MinifloatFormat& f) {
  const float s = amax / f.max();
  return s > 0.0f && std::isfinite(s) ? s : 1.0f;
}

}  // namespace

FpSpec FpSpec::FromRecord(const nlohmann::json& r) {
  FpSpec s;
  try {
    s.format = &FormatOrThrow(r.at("format").get<std::string>());
    const std::string g = r.value("scale", std::string("channel"));
    if (g == "tensor") {
      s.granularity = ScaleGranularity::kTensor;
    } else if (g == "channel") {
      s.granularity = ScaleGranularity::kChannel;
    } else if (g == "block") {
      s.granularity = ScaleGranularity::kBlock;
      const auto b = r.at("block").get<std::vector<int64_t>>();
      QTOOL_CHECK(b.size() == 2, OptionError, "\"block\" must be [rows, cols]");
      s.block_rows = b[0];
      s.block_cols = b[1];
    } else {
      throw OptionError(fmt::format("unknown scale granularity \"{}\"", g));
    }
    s.saturate = r.value("saturate", true);
  } catch (const nlohmann::json::exception& e) {
    throw OptionError(fmt::format("invalid fp codec record {}: {}", r.dump(), e.what()));
  }
  QTOOL_CHECK(s.block_rows >= 1 && s.block_cols >= 1, OptionError,
              "scale blocks must be at least 1 x 1, got {} x {}", s.block_rows, s.block_cols);
  return s;
}

nlohmann::json FpSpec::ToRecord() const {
  nlohmann::json r = {{"codec", "fp"}, {"format", std::string(format->name)}};
  switch (granularity) {
    case ScaleGranularity::kTensor:
      r["scale"] = "tensor";
      break;
    case ScaleGranularity::kChannel:
      r["scale"] = "channel";
      break;
    case ScaleGranularity::kBlock:
      r["scale"] = "block";
      r["block"] = {block_rows, block_cols};
      break;
  }
  r["saturate"] = saturate;
  return r;
}

FpCodec::FpCodec(const FpSpec& spec, int64_t rows, int64_t cols)
    : WeightCodec(rows, cols), spec_(spec), codes_(*spec.format, spec.saturate) {
  switch (spec.granularity) {
    case ScaleGranularity::kTensor:  // one scale (from Observe); chunks need no alignment
    case ScaleGranularity::kChannel:
      br_ = 1;
      bc_ = std::max<int64_t>(cols, 1);
      break;
    case ScaleGranularity::kBlock:
      br_ = spec.block_rows;
      bc_ = spec.block_cols;
      break;
  }
}

std::vector<TensorSpec> FpCodec::Layout(const std::string& name) const {
  const MinifloatFormat& f = *spec_.format;
  TensorSpec q{name + ".qweight", DType::kU8, {rows(), PackedBytes(cols(), f.bits())}};
  if (&f == &kE4M3) q.dtype = DType::kF8E4M3;
  if (&f == &kE5M2) q.dtype = DType::kF8E5M2;
  std::vector<int64_t> sshape = {1, 1};
  if (spec_.granularity != ScaleGranularity::kTensor) {
    sshape = {(rows() + br_ - 1) / br_, (cols() + bc_ - 1) / bc_};
  }
  return {q, {name + ".scales", DType::kF32, sshape}};
}

void FpCodec::Observe(const float* w, int64_t r0, int64_t nrows) {
  if (r0 == 0) tensor_amax_ = 0;
  tensor_amax_ = std::max(tensor_amax_, kernels::AbsMax(w, nrows * cols()));
}

void FpCodec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                         float* dequant) const {
  const MinifloatFormat& f = *spec_.format;
  const int64_t cols = this->cols(), row_bytes = PackedBytes(cols, f.bits());
  const int64_t nbc = (cols + bc_ - 1) / bc_;
  const bool tensor = spec_.granularity == ScaleGranularity::kTensor;
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
  const int64_t cols = this->cols(), row_bytes = PackedBytes(cols, spec_.format->bits());
  const int64_t nbc = (cols + bc_ - 1) / bc_;
  const bool tensor = spec_.granularity == ScaleGranularity::kTensor;
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
