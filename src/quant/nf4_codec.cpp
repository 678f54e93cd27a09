#include "qtool/quant/nf4_codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/kernels.hpp"

namespace qtool {
namespace {

// Midpoints between consecutive ascending table values, computed in f32 as bitsandbytes does;
// the code of v is the number of midpoints strictly below it (torch.bucketize, right=False), so a
// value exactly on a midpoint takes the lower index.
template <size_t N>
std::array<float, N - 1> Midpoints(const std::array<float, N>& t) {
  std::array<float, N - 1> m{};
  for (size_t i = 0; i + 1 < N; ++i) m[i] = (t[i] + t[i + 1]) / 2.0f;
  return m;
}

template <size_t M>
uint8_t Bucketize(const std::array<float, M>& midpoints, float v) {
  return static_cast<uint8_t>(std::lower_bound(midpoints.begin(), midpoints.end(), v) -
                              midpoints.begin());
}

const std::array<float, 255>& DynamicMidpoints() {
  static const std::array<float, 255> m = Midpoints(DynamicMap8());
  return m;
}

}  // namespace

const std::array<float, 16>& Nf4Values() { return FormatTraits<Nf4Format>::kValues; }

const std::array<float, 256>& DynamicMap8() { return FormatTraits<Nf4Format>::DynamicMap8(); }

Nf4Codec::Nf4Codec(const Nf4Format& f, int64_t rows, int64_t cols)
    : WeightCodec(rows, cols), format_(f) {
  FormatTraits<Nf4Format>::Validate(f);
}

int64_t Nf4Codec::num_blocks() const {
  return (rows() * cols() + format_.block - 1) / format_.block;
}

void Nf4Codec::Observe(const float* w, int64_t r0, int64_t nrows) {
  if (r0 == 0) absmax_.assign(static_cast<size_t>(num_blocks()), 0.0f);
  // Each block's part of these rows; a block running across chunks takes the larger absmax.
  const int64_t i0 = r0 * cols(), n = nrows * cols();
  for (int64_t i = 0; i < n;) {
    const int64_t b = (i0 + i) / format_.block, end = std::min(n, (b + 1) * format_.block - i0);
    float& a = absmax_[static_cast<size_t>(b)];
    a = std::max(a, kernels::AbsMax(w + i, end - i));
    i = end;
  }
  if (r0 + nrows < rows()) return;
  // All blocks seen: the scales as decoding will see them.
  dq_absmax_ = absmax_;
  if (!format_.double_quant) return;
  const size_t nb = absmax_.size();
  double sum = 0;
  for (float a : absmax_) sum += a;
  offset_ = nb ? static_cast<float>(sum / static_cast<double>(nb)) : 0.0f;
  const auto& map = DynamicMap8();
  qabsmax_.resize(nb);
  absmax2_.assign((nb + kNf4DoubleQuantBlock - 1) / kNf4DoubleQuantBlock, 0.0f);
  for (size_t c = 0; c < absmax2_.size(); ++c) {
    const size_t j0 = c * kNf4DoubleQuantBlock, j1 = std::min(nb, j0 + kNf4DoubleQuantBlock);
    float m = 0;
    for (size_t j = j0; j < j1; ++j) m = std::max(m, std::fabs(absmax_[j] - offset_));
    absmax2_[c] = m;
    const bool whole = j1 - j0 == static_cast<size_t>(kNf4DoubleQuantBlock);
    for (size_t j = j0; j < j1; ++j) {
      qabsmax_[j] = Bucketize(DynamicMidpoints(), Nf4ScaleToUnit(absmax_[j] - offset_, m, whole));
      dq_absmax_[j] = map[qabsmax_[j]] * m + offset_;
    }
  }
}

void Nf4Codec::WriteScales(std::byte* const* out) const {
  if (!format_.double_quant) {
    std::memcpy(out[1], absmax_.data(), absmax_.size() * 4);
    return;
  }
  std::memcpy(out[1], qabsmax_.data(), qabsmax_.size());
  std::memcpy(out[2], absmax2_.data(), absmax2_.size() * 4);
  std::memcpy(out[3], &offset_, 4);
}

void Nf4Codec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                          float* dequant) const {
  if (r0 == 0) WriteScales(out);  // every scale is known from Observe
  const int64_t cols = this->cols(), first = r0 * cols;
  const kernels::Nf4Blocks b{format_.block,
                             rows() * cols,
                             first,
                             absmax_.data() + first / format_.block,
                             dq_absmax_.data() + first / format_.block,
                             format_.map};
  kernels::QuantizeNf4Rows(w, nrows, cols, b,
                           reinterpret_cast<uint8_t*>(out[0]) + r0 * ((cols + 1) / 2), dequant);
}

float Nf4Codec::StoredAbsmax(const std::byte* const* in, int64_t b) const {
  if (!format_.double_quant) {
    float a;
    std::memcpy(&a, in[1] + b * 4, 4);
    return a;
  }
  float scale, offset;
  std::memcpy(&scale, in[2] + b / kNf4DoubleQuantBlock * 4, 4);
  std::memcpy(&offset, in[3], 4);
  return DynamicMap8()[static_cast<uint8_t>(in[1][b])] * scale + offset;
}

void Nf4Codec::DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const {
  const int64_t cols = this->cols(), first = r0 * cols;
  // The decoded absmax of the blocks these rows touch.
  const int64_t b0 = first / format_.block,
                b1 = (first + nrows * cols + format_.block - 1) / format_.block;
  std::vector<float> scales(static_cast<size_t>(b1 - b0));
  for (int64_t b = b0; b < b1; ++b) scales[static_cast<size_t>(b - b0)] = StoredAbsmax(in, b);
  const kernels::Nf4Blocks b{format_.block, rows() * cols, first,
                             nullptr,       scales.data(), format_.map};
  kernels::DequantizeNf4Rows(reinterpret_cast<const uint8_t*>(in[0]) + r0 * ((cols + 1) / 2), nrows,
                             cols, b, out);
}

}  // namespace qtool
