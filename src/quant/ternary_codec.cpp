#include "qtool/quant/ternary_codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/quant/int_codec.hpp"

namespace qtool {
namespace {

constexpr int kTernaryBits = FormatTraits<TernaryFormat>::kBits;

}  // namespace

TernaryCodec::TernaryCodec(const QuantSpec& spec, int64_t rows, int64_t cols)
    : WeightCodec(rows, cols), spec_(spec) {
  spec_.bits = kTernaryBits;
  spec_.symmetric = true;
  spec_.Validate();
}

void TernaryCodec::Observe(const float* w, int64_t r0, int64_t nrows) {
  if (r0 == 0) tensor_abs_sum_ = 0;
  for (int64_t i = 0; i < nrows * cols(); ++i) tensor_abs_sum_ += std::fabs(w[i]);
}

void TernaryCodec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                              float* dequant) const {
  const int64_t cols = this->cols(), glen = spec_.GroupLen(cols);
  const int64_t ngroups = spec_.GroupsPerRow(cols), row_bytes = PackedBytes(cols, kTernaryBits);
  const bool tensor = spec_.granularity == Granularity::kTensor;
  const float tensor_scale = FormatTraits<TernaryFormat>::Scale(tensor_abs_sum_, rows() * cols);
  if (tensor && r0 == 0) std::memcpy(out[1], &tensor_scale, 4);
  auto* qweight = reinterpret_cast<uint8_t*>(out[0]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = r0; r < r0 + nrows; ++r) {
    const float* x = w + (r - r0) * cols;
    float* y = dequant + (r - r0) * cols;
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * glen, c1 = std::min(cols, c0 + glen);
      float scale = tensor_scale;
      if (!tensor) {
        scale = FormatTraits<TernaryFormat>::GroupScale(x + c0, c1 - c0);
        std::memcpy(out[1] + (r * ngroups + g) * 4, &scale, 4);
      }
      for (int64_t c = c0; c < c1; ++c) {
        const uint8_t u = FormatTraits<TernaryFormat>::Encode(x[c], scale);
        codes[static_cast<size_t>(c)] = u;
        y[c] = FormatTraits<TernaryFormat>::Decode(u, scale);
      }
    }
    PackCodes(codes.data(), cols, kTernaryBits, qweight + r * row_bytes);
  }
}

void TernaryCodec::DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows,
                              float* out) const {
  const int64_t cols = this->cols(), glen = spec_.GroupLen(cols);
  const int64_t ngroups = spec_.GroupsPerRow(cols), row_bytes = PackedBytes(cols, kTernaryBits);
  const bool tensor = spec_.granularity == Granularity::kTensor;
  const auto* qweight = reinterpret_cast<const uint8_t*>(in[0]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = r0; r < r0 + nrows; ++r) {
    UnpackCodes(qweight + r * row_bytes, cols, kTernaryBits, codes.data());
    float* y = out + (r - r0) * cols;
    for (int64_t c = 0; c < cols; ++c) {
      float scale;
      std::memcpy(&scale, in[1] + (tensor ? 0 : r * ngroups + c / glen) * 4, 4);
      y[c] = FormatTraits<TernaryFormat>::Decode(codes[static_cast<size_t>(c)], scale);
    }
  }
}

}  // namespace qtool
