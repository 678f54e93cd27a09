// The quantisation engine: one matrix into a codec's stored tensors, and a whole checkpoint into
// a quantised checkpoint directory (round to nearest; the calibrated methods are solvers/).
#pragma once

#include <filesystem>
#include <string>

#include "qtool/format/metrics.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/pipeline/report.hpp"
#include "qtool/pipeline/selection.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

/// Quantises one matrix stored as `dtype` (row-major, codec.rows() x codec.cols()), whose bytes
/// `read` gives, into the codec's stored tensors (`parts[k]` sized as Layout()[k]), in parallel
/// over chunks of rows, and returns the error statistics of the decoded values. Each worker reads
/// a chunk of rows into its own small buffer (so that a file is read with pread, not through page
/// faults) and converts it from there. Runs the codec's Observe pass first when it needs one.
/// `label` names the tensor in errors: a non-finite value throws NumericError with its position.
ErrorStats QuantizeMatrix(const ByteSource& read, DType dtype, WeightCodec& codec,
                          std::byte* const* parts, int threads, const std::string& label);
/// QuantizeMatrix of a matrix in memory at `data` (unaligned allowed).
ErrorStats QuantizeMatrix(const std::byte* data, DType dtype, WeightCodec& codec,
                          std::byte* const* parts, int threads, const std::string& label);

/// Quantises the selected tensors of `in` and writes a quantised checkpoint directory to `out`
/// (tensors not selected and the model directory's other files are copied; config.json gains a
/// "quantization_config"). Output is written under a temporary name and appears complete or not at
/// all. Throws NumericError for a NaN/Inf weight, ShapeError for a selected tensor that is not a
/// 2-D float matrix, OptionError for a bad codec.
QuantizeReport QuantizeCheckpoint(const Checkpoint& in, const std::filesystem::path& out,
                                  const QuantizeOptions& options, const ProgressFn& progress = {});

}  // namespace qtool
