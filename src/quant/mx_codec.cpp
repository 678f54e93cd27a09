#include "qtool/quant/mx_codec.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

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
      table_(format_ ? *format_ : kE4M3) {
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

uint8_t MxCodec::EncodeElement(float p) const {
  if (format_) return static_cast<uint8_t>(EncodeMinifloat(p, *format_, /*saturate=*/true));
  return EncodeMxInt8(p);
}

float MxCodec::ElementValue(uint8_t code) const {
  if (format_) return table_.value[code];
  return MxInt8Value(code);
}

void MxCodec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                         float* dequant) const {
  const int64_t cols = this->cols(), nb = (cols + block_ - 1) / block_;
  const int64_t row_bytes = PackedBytes(cols, element_bits());
  auto* qweight = reinterpret_cast<uint8_t*>(out[0]);
  auto* scales = reinterpret_cast<uint8_t*>(out[1]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = r0; r < r0 + nrows; ++r) {
    const float* x = w + (r - r0) * cols;
    float* y = dequant + (r - r0) * cols;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * block_, c1 = std::min(cols, c0 + block_);
      float amax = 0;
      bool nan = false;
      for (int64_t c = c0; c < c1; ++c) {
        amax = std::max(amax, std::fabs(x[c]));
        nan |= std::isnan(x[c]);
      }
      if (nan) amax = std::numeric_limits<float>::quiet_NaN();
      const uint8_t e = E8M0ScaleForBlock(amax, emax_elem());
      scales[r * nb + b] = e;
      const float scale = DecodeE8M0(e);
      for (int64_t c = c0; c < c1; ++c) {
        // Division by a power of two is exact; a NaN scale leaves code 0 (decoded as NaN).
        const uint8_t code = e == kE8M0Nan ? 0 : EncodeElement(x[c] / scale);
        codes[static_cast<size_t>(c)] = code;
        y[c] = ElementValue(code) * scale;
      }
    }
    PackCodes(codes.data(), cols, element_bits(), qweight + r * row_bytes);
  }
}

void MxCodec::DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const {
  const int64_t cols = this->cols(), nb = (cols + block_ - 1) / block_;
  const int64_t row_bytes = PackedBytes(cols, element_bits());
  const auto* qweight = reinterpret_cast<const uint8_t*>(in[0]);
  const auto* scales = reinterpret_cast<const uint8_t*>(in[1]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = r0; r < r0 + nrows; ++r) {
    UnpackCodes(qweight + r * row_bytes, cols, element_bits(), codes.data());
    float* y = out + (r - r0) * cols;
    for (int64_t b = 0; b < nb; ++b) {
      const float scale = DecodeE8M0(scales[r * nb + b]);
      for (int64_t c = b * block_; c < std::min(cols, (b + 1) * block_); ++c) {
        y[c] = ElementValue(codes[static_cast<size_t>(c)]) * scale;
      }
    }
  }
}

}  // namespace qtool
