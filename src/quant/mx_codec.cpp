#include "qtool/quant/mx_codec.hpp"

#include "qtool/core/error.hpp"
#include "qtool/format/pack.hpp"

namespace qtool {
namespace {

// The minifloat of an MX element, nullptr for int8.
const MinifloatFormat* ElementFormat(Element e) {
  return e == Element::kInt8 ? nullptr : FindMinifloat(ElementName(e));
}

}  // namespace

MxCodec::MxCodec(const MxFormat& format, int64_t rows, int64_t cols)
    : WeightCodec(rows, cols),
      format_desc_((FormatTraits<MxFormat>::Validate(format), format)),
      format_(ElementFormat(format.element)),
      block_(format.block),
      codes_(format_ ? *format_ : kE4M3, /*saturate=*/true) {}

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
