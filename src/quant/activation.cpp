#include "qtool/quant/activation.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/spec.hpp"
#include "qtool/format/text.hpp"

namespace qtool {
namespace {

float TokenScale(const float* x, int64_t channels, float qmax) {
  float amax = 0;
  for (int64_t c = 0; c < channels; ++c) amax = std::max(amax, std::fabs(x[c]));
  const float s = amax / qmax;
  return s > 0.0f && std::isfinite(s) ? s : 1.0f;
}

constexpr float kInt8Max = 127.0f;

}  // namespace

void QuantizePerTokenInt8(const float* x, int64_t tokens, int64_t channels, int8_t* q,
                          float* scales) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * channels;
    const float s = TokenScale(row, channels, kInt8Max);
    scales[t] = s;
    for (int64_t c = 0; c < channels; ++c) {
      const float v = std::clamp(row[c] / s, -kInt8Max, kInt8Max);
      q[t * channels + c] = static_cast<int8_t>(RoundHalfEvenSmall(v));
    }
  }
}

void DequantizePerTokenInt8(const int8_t* q, const float* scales, int64_t tokens, int64_t channels,
                            float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < channels; ++c) {
      out[t * channels + c] = static_cast<float>(q[t * channels + c]) * scales[t];
    }
  }
}

void FakeQuantizePerTokenInt8(const float* x, int64_t tokens, int64_t channels, float* out) {
  std::vector<int8_t> q(static_cast<size_t>(tokens * channels));
  std::vector<float> scales(static_cast<size_t>(tokens));
  QuantizePerTokenInt8(x, tokens, channels, q.data(), scales.data());
  DequantizePerTokenInt8(q.data(), scales.data(), tokens, channels, out);
}

void FakeQuantizeLlmInt8(const float* x, int64_t tokens, int64_t channels, float threshold,
                         float* out) {
  const auto n = static_cast<size_t>(tokens * channels);
  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = F16ToF32(F32ToF16(x[i]));
  auto outlier = [threshold](float v) { return threshold > 0 && std::fabs(v) >= threshold; };
  std::vector<char> in_float(static_cast<size_t>(channels), 0);
  for (size_t i = 0; i < n; ++i) {
    if (outlier(h[i])) in_float[i % static_cast<size_t>(channels)] = 1;
  }
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = h.data() + t * channels;
    float m = 0;
    for (int64_t c = 0; c < channels; ++c) {
      if (!outlier(row[c])) m = std::max(m, std::fabs(row[c]));
    }
    const float inv = 127.0f / m, step = m / 127.0f;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t i = t * channels + c;
      if (in_float[static_cast<size_t>(c)]) {
        out[i] = x[i];
      } else {
        out[i] = m > 0 ? RoundHalfEvenSmall(row[c] * inv) * step : 0.0f;
      }
    }
  }
}

void CheckFp8StaticWeights(const Format& weights) {
  const auto* fp = std::get_if<FloatFormat>(&weights);
  QTOOL_CHECK(fp != nullptr && fp->element == Element::kE4M3, OptionError,
              "static FP8 input activations need FP8 E4M3 weights (--format fp8-e4m3), not {}",
              FormatToString(weights));
}

void FakeQuantizeStaticFp8(const float* x, int64_t n, float scale, float* out) {
  static const MinifloatTable table(kE4M3);  // once, not per Linear per forward
  for (int64_t i = 0; i < n; ++i) {
    out[i] = table.value[EncodeMinifloat(x[i] / scale, kE4M3, true)] * scale;
  }
}

void QuantizePerTokenFp8(const float* x, int64_t tokens, int64_t channels,
                         const MinifloatFormat& format, uint8_t* codes, float* scales) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * channels;
    const float s = TokenScale(row, channels, format.max());
    scales[t] = s;
    for (int64_t c = 0; c < channels; ++c) {
      codes[t * channels + c] = static_cast<uint8_t>(EncodeMinifloat(row[c] / s, format, true));
    }
  }
}

void DequantizePerTokenFp8(const uint8_t* codes, const float* scales, int64_t tokens,
                           int64_t channels, const MinifloatFormat& format, float* out) {
  const MinifloatTable table(format);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < channels; ++c) {
      out[t * channels + c] = table.value[codes[t * channels + c]] * scales[t];
    }
  }
}

}  // namespace qtool
