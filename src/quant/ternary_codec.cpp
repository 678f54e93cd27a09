#include "qtool/quant/ternary_codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/quant/pack.hpp"

namespace qtool {
namespace {

constexpr int kTernaryBits = FormatTraits<TernaryFormat>::kBits;

float AbsmeanScale(double abs_sum, int64_t n) {
  const double mean = n > 0 ? abs_sum / static_cast<double>(n) : 0.0;
  return std::max(static_cast<float>(mean), kTernaryMinScale);
}

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
  const float tensor_scale = AbsmeanScale(tensor_abs_sum_, rows() * cols);
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
        double sum = 0;
        for (int64_t c = c0; c < c1; ++c) sum += std::fabs(x[c]);
        scale = AbsmeanScale(sum, c1 - c0);
        std::memcpy(out[1] + (r * ngroups + g) * 4, &scale, 4);
      }
      for (int64_t c = c0; c < c1; ++c) {
        const float q = RoundHalfEvenSmall(std::clamp(x[c] / scale, -1.0f, 1.0f));
        codes[static_cast<size_t>(c)] = static_cast<uint8_t>(static_cast<int>(q) + 1);
        y[c] = q * scale;
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
      y[c] = static_cast<float>(static_cast<int>(codes[static_cast<size_t>(c)]) - 1) * scale;
    }
  }
}

}  // namespace qtool
