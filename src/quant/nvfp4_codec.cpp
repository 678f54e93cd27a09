#include "qtool/quant/nvfp4_codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "qtool/format/pack.hpp"

namespace qtool {

using Traits = FormatTraits<Nvfp4Format>;

Nvfp4Codec::Nvfp4Codec(int64_t rows, int64_t cols)
    : WeightCodec(rows, cols), codes_(kE2M1, /*saturate=*/true) {}

void Nvfp4Codec::Observe(const float* w, int64_t r0, int64_t nrows) {
  if (r0 == 0) tensor_amax_ = 0;
  if (std::isnan(tensor_amax_)) return;
  const float a = FormatTraits<MxFormat>::BlockAmax(w, nrows * cols());
  tensor_amax_ = std::isnan(a) ? a : std::max(tensor_amax_, a);
}

void Nvfp4Codec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                            float* dequant) const {
  const int64_t cols = this->cols(), nb = (cols + Traits::kBlock - 1) / Traits::kBlock;
  const int64_t row_bytes = PackedBytes(cols, Traits::kBits);
  const float g = Traits::GlobalScale(tensor_amax_);
  if (r0 == 0) std::memcpy(out[2], &g, 4);
  auto* qweight = reinterpret_cast<uint8_t*>(out[0]);
  auto* scale_codes = reinterpret_cast<uint8_t*>(out[1]);
  std::vector<float> scales(static_cast<size_t>(nb));
  for (int64_t r = r0; r < r0 + nrows; ++r) {
    const float* x = w + (r - r0) * cols;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t c0 = j * Traits::kBlock, c1 = std::min(cols, c0 + Traits::kBlock);
      const uint8_t s = Nvfp4BlockScaleCode(FormatTraits<MxFormat>::BlockAmax(x + c0, c1 - c0), g);
      scale_codes[r * nb + j] = s;
      scales[static_cast<size_t>(j)] = Nvfp4ElementScale(s, g);
    }
    kernels::QuantizeMinifloatRows(x, 1, cols, scales.data(), Traits::kBlock, codes_,
                                   qweight + r * row_bytes, dequant + (r - r0) * cols);
  }
}

void Nvfp4Codec::DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows,
                            float* out) const {
  const int64_t cols = this->cols(), nb = (cols + Traits::kBlock - 1) / Traits::kBlock;
  const int64_t row_bytes = PackedBytes(cols, Traits::kBits);
  float g;
  std::memcpy(&g, in[2], 4);
  const auto* qweight = reinterpret_cast<const uint8_t*>(in[0]);
  const auto* scale_codes = reinterpret_cast<const uint8_t*>(in[1]);
  std::vector<float> scales(static_cast<size_t>(nb));
  for (int64_t r = r0; r < r0 + nrows; ++r) {
    for (int64_t j = 0; j < nb; ++j)
      scales[static_cast<size_t>(j)] = Nvfp4ElementScale(scale_codes[r * nb + j], g);
    kernels::DequantizeMinifloatRows(qweight + r * row_bytes, 1, cols, scales.data(),
                                     Traits::kBlock, codes_, out + (r - r0) * cols);
  }
}

}  // namespace qtool
