// OCP Microscaling (MX v1.0) codec: MXFP8 (E4M3, E5M2), MXFP6 (E2M3, E3M2), MXFP4 (E2M1), MXINT8.
//
// Each row is cut into blocks of k = 32 consecutive elements (the last block of a row may be
// shorter when cols % 32 != 0; the spec itself requires whole blocks). A block shares one E8M0
// scale X = 2^(floor(log2(amax)) - emax_elem) (minifloat.hpp, E8M0ScaleForBlock); its elements
// are P_i = V_i / X converted to the element format with round to nearest even and saturation to
// the element's max (spec section 6.3). MXINT8 elements are 8-bit two's complement with an
// implicit scale of 2^-6 (values -2 .. 127/64), emax_elem = 0: q = clamp(rne(P * 64), -128, 127).
// Decoding gives element value * X (NaN for a block whose scale is NaN).
//
// Stored tensors for weight NAME [rows, cols], B = ceil(cols / k):
//   NAME.qweight  U8 [rows, ceil(cols * bits / 8)]  element codes packed per row (pack.hpp):
//                 8 bits one per byte, 6 bits four per three bytes, 4 bits low nibble first
//   NAME.scales   F8_E8M0 [rows, B]                 shared exponents
// Record: {"codec": "mx", "element": "e4m3"|"e5m2"|"e2m3"|"e3m2"|"e2m1"|"int8", "block": 32}.
#pragma once

#include "qtool/format/minifloat.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

inline constexpr int64_t kMxBlock = FormatTraits<MxFormat>::kDefaultBlock;

/// MXINT8's scalar reference (FormatTraits<MxFormat>) under the names the kernels use.
inline uint8_t EncodeMxInt8(float p) { return FormatTraits<MxFormat>::EncodeInt8(p); }
inline float MxInt8Value(uint8_t code) { return FormatTraits<MxFormat>::DecodeInt8(code); }

class MxCodec final : public WeightCodec {
 public:
  MxCodec(const MxFormat& format, int64_t rows, int64_t cols);
  Format format() const override { return format_desc_; }
  void EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                  float* dequant) const override;
  void DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const override;

  int element_bits() const { return format_ ? format_->bits() : 8; }
  int emax_elem() const { return format_ ? format_->emax() : 0; }

 private:
  MxFormat format_desc_;
  const MinifloatFormat* format_;  // nullptr for int8
  int64_t block_;
  kernels::MinifloatCodes codes_;  // the element format, saturating
};

}  // namespace qtool
