// Static FP8 input scales from calibration data (W8A8-FP8, `qtool quantize --activations
// fp8-static`): the one scale per quantised Linear that compressed-tensors stores as
// "<module>.input_scale" and that the runtime divides the layer's input by before rounding it to
// FP8 E4M3 (quant/activation.hpp, FakeQuantizeStaticFp8).
//
// The scales are measured on the model as it will be served, as far as its weights go: the
// calibration samples run block by block through the model with every selected Linear's weight
// rounded by the codec (the FP8 weights the checkpoint stores), so each layer sees the inputs the
// quantised earlier layers give it. The inputs themselves run in float while they are measured:
// a layer's scale then does not depend on the scales before it (one pass per block), and FP8's
// rounding of the earlier inputs (relative error at most 2^-4 per element, unbiased) moves a
// maximum over the calibration tokens by far less than the factor of 2 that would change its
// binade. Each scale is s = max |x| / 448 over every calibration token's input x (E4M3's largest
// value 448 then holds the largest input seen), as llm-compressor's min-max observer computes it;
// an input that is zero on every token gets s = 1.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "qtool/pipeline/quantize.hpp"
#include "qtool/solvers/calibrated.hpp"

namespace qtool::solvers {

/// The static FP8 input scale of every Linear of the model at `model_dir` that `options` selects
/// for quantisation, by module name (the weight's name without ".weight"), measured on the
/// calibration data of `method` (calib_text, calib; on_calibration_data is called) with the
/// weights rounded to options.format. Throws OptionError for a format other than FP8 E4M3.
std::map<std::string, float> MeasureFp8InputScales(const std::filesystem::path& model_dir,
                                                   const QuantizeOptions& options,
                                                   const CalibratedOptions& method);

/// max_abs / 448 (E4M3's largest value), or 1 when max_abs is 0.
float Fp8InputScale(float max_abs);

}  // namespace qtool::solvers
