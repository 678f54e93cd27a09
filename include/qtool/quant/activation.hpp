// Dynamic per-token activation quantisation: each token (row of [tokens, channels]) gets its own
// scale from its own absmax at run time, as in LLM.int8()'s vector-wise and FP8 inference
// recipes. Static (calibrated) activation ranges come from ActivationObserver (observer.hpp).
//
//   INT8: scale_t = max_c |x_tc| / 127, q = clamp(rne(x / scale_t), -127, 127), x^ = q * scale_t
//   FP8:  scale_t = max_c |x_tc| / max(format), code = Encode(x / scale_t) (saturating, RNE),
//         x^ = Decode(code) * scale_t
// An all-zero token gets scale 1.
//
// Static FP8 (W8A8-FP8, one calibrated scale s per tensor), as compressed-tensors fake-quantises a
// Linear's input (quantization/lifecycle/forward_helpers.py) and vLLM's static FP8 kernels
// compute it: x^ = Decode(Encode(clamp(x / s, -max, max))) * s, the division in f32, the cast
// round to nearest even (saturating: clamping first changes nothing).
//
// LLM.int8 (bitsandbytes' MatMul8bitLt on its default backend: int8_vectorwise_quant and
// int8_mixed_scaled_mm), as a product with the weight bitsandbytes dequantises: x is rounded to
// f16; with a threshold t > 0, every column holding a value |x16| >= t (in any token of the call)
// runs in float, x itself; each token's other values are quantised to
// q = rne(x16 * (127 / m)), m the token's largest |x16| below t, and run as q * (m / 127).
#pragma once

#include <cstdint>

#include "qtool/format/format.hpp"
#include "qtool/format/minifloat.hpp"

namespace qtool {

void QuantizePerTokenInt8(const float* x, int64_t tokens, int64_t channels, int8_t* q,
                          float* scales);
void DequantizePerTokenInt8(const int8_t* q, const float* scales, int64_t tokens, int64_t channels,
                            float* out);
/// QuantizePerTokenInt8 then DequantizePerTokenInt8: the values a W8A8 product sees (out may not
/// alias x).
void FakeQuantizePerTokenInt8(const float* x, int64_t tokens, int64_t channels, float* out);

/// LLM.int8's inputs (above) with outlier threshold `threshold` (>= 0; 0: no float columns), for
/// the `tokens` rows of one product (out may not alias x). A token whose values are all outliers
/// or zero runs its quantised part as zeros.
void FakeQuantizeLlmInt8(const float* x, int64_t tokens, int64_t channels, float threshold,
                         float* out);

/// Throws OptionError unless `weights` is FP8 E4M3, the weight format that static FP8 input
/// scales go with.
void CheckFp8StaticWeights(const Format& weights);
/// Static per-tensor FP8 (E4M3) inputs: out[i] = Decode(Encode(x[i] / scale)) * scale for n
/// values (out may alias x). `scale` must be positive and finite.
void FakeQuantizeStaticFp8(const float* x, int64_t n, float scale, float* out);

void QuantizePerTokenFp8(const float* x, int64_t tokens, int64_t channels,
                         const MinifloatFormat& format, uint8_t* codes, float* scales);
void DequantizePerTokenFp8(const uint8_t* codes, const float* scales, int64_t tokens,
                           int64_t channels, const MinifloatFormat& format, float* out);

}  // namespace qtool
