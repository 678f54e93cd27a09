#include "qtool/quant/mx_codec.hpp"

#include "qtool/core/error.hpp"
#include "qtool/quant/pack.hpp"

namespace qtool {
namespace {

const MinifloatFormat* ElementFormat(const std::string& element) {
  if (element == "int8") return nullptr;
  const MinifloatFormat* f = FindMinifloat(element);
  QTOOL_CHECK(f != nullptr && f->bits() >= 4, OptionError,
              "unknown MX element \"{}\" (known: e4m3, e5m2, e2m3, e3m2, e2m1, int8)", element);
  return f;
}

}  // namespace

MxCodec::MxCodec(const std::string& element, int64_t block, int64_t rows, int64_t cols)
    : WeightCodec(rows, cols),
      element_(element),
      format_(ElementFormat(element)),
      block_(block),
      codes_(format_ ? *format_ : kE4M3, /*saturate=*/true) {
  QTOOL_CHECK(block >= 1 && block <= 4096, OptionError, "MX block must be in 1..4096, got {}",
              block);
}

std::unique_ptr<WeightCodec> MxCodec::FromRecord(const nlohmann::json& r, int64_t rows,
                                                 int64_t cols) {
  try {
    return std::make_unique<MxCodec>(r.at("element").get<std::string>(), r.value("block", kMxBlock),
                                     rows, cols);
  } catch (const nlohmann::json::exception& e) {
    throw OptionError(fmt::format("invalid mx codec record {}: {}", r.dump(), e.what()));
  }
}

nlohmann::json MxCodec::Record() const {
  return {{"codec", "mx"}, {"element", element_}, {"block", block_}};
}

std::vector<TensorSpec> MxCodec::Layout(const std::string& name) const {
  return {{name + ".qweight", DType::kU8, {rows(), PackedBytes(cols(), element_bits())}},
          {name + ".scales", DType::kF8E8M0, {rows(), (cols() + block_ - 1) / block_}}};
}

void MxCodec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                         float* dequant) const {
  const int64_t cols = this->cols(), nb = (cols + block_ - 1) / block_;
  kernels::QuantizeMxRows(
      w, nrows, cols, block_, format_ ? &codes_ : nullptr,
      reinterpret_cast<uint8_t*>(out[0]) + r0 * PackedBytes(cols, element_bits()),
      reinterpret_cast<uint8_t*>(out[1]) + r0 * nb, dequant);
}

void MxCodec::DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const {
  const int64_t cols = this->cols(), nb = (cols + block_ - 1) / block_;
  kernels::DequantizeMxRows(
      reinterpret_cast<const uint8_t*>(in[0]) + r0 * PackedBytes(cols, element_bits()),
      reinterpret_cast<const uint8_t*>(in[1]) + r0 * nb, nrows, cols, block_,
      format_ ? &codes_ : nullptr, out);
}

}  // namespace qtool
