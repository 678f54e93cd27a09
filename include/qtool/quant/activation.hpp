// Dynamic per-token activation quantisation: each token (row of [tokens, channels]) gets its own
// scale from its own absmax at run time, as in LLM.int8()'s vector-wise and FP8 inference
// recipes. Static (calibrated) activation ranges come from ActivationObserver (observer.hpp).
//
//   INT8: scale_t = max_c |x_tc| / 127, q = clamp(rne(x / scale_t), -127, 127), x^ = q * scale_t
//   FP8:  scale_t = max_c |x_tc| / max(format), code = Encode(x / scale_t) (saturating, RNE),
//         x^ = Decode(code) * scale_t
// An all-zero token gets scale 1.
#pragma once

#include <cstdint>

#include "qtool/format/minifloat.hpp"

namespace qtool {

void QuantizePerTokenInt8(const float* x, int64_t tokens, int64_t channels, int8_t* q,
                          float* scales);
void DequantizePerTokenInt8(const int8_t* q, const float* scales, int64_t tokens, int64_t channels,
                            float* out);
/// QuantizePerTokenInt8 then DequantizePerTokenInt8: the values a W8A8 product sees (out may not
/// alias x).
void FakeQuantizePerTokenInt8(const float* x, int64_t tokens, int64_t channels, float* out);

void QuantizePerTokenFp8(const float* x, int64_t tokens, int64_t channels,
                         const MinifloatFormat& format, uint8_t* codes, float* scales);
void DequantizePerTokenFp8(const uint8_t* codes, const float* scales, int64_t tokens,
                           int64_t channels, const MinifloatFormat& format, float* out);

}  // namespace qtool
