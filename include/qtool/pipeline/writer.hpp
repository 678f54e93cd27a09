// The one streaming writer of quantised checkpoints, used by round to nearest (QuantizeCheckpoint)
// and by the calibrated methods (solvers/calibrated.hpp): it plans the output's tensors and records
// once, then writes tensor after tensor, quantising each selected one (or storing what a solver
// made of it) while the previous tensor's bytes go to disk on a background thread, and builds the
// report. Output is written under a temporary name and appears complete or not at all.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "qtool/io/checkpoint.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/pipeline/report.hpp"
#include "qtool/pipeline/selection.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

/// The order of the output's tensors (and so its bytes and shards).
enum class WriteOrder {
  /// The input checkpoint's order.
  kCheckpoint,
  /// Tensors outside the decoder blocks first, then block 0, 1, ..., each part by name: a
  /// calibrated run writes each block as soon as it is solved.
  kBlocks,
};

/// What a solver made of one tensor, given to QuantizedCheckpointWriter::WriteThrough.
struct SolvedTensor {
  /// The codec's stored tensors, each sized as its Layout() says (exact codes: GPTQ, HQQ), or empty
  /// when `values` holds the tensor.
  std::vector<std::vector<std::byte>> stored;
  /// Float values of the tensor's shape, row-major, viewed: for a quantised tensor rounded by the
  /// codec (rescaled weights), for another one written in its dtype (rescaled norms).
  std::span<const float> values;
  /// A solver's rescaling (AWQ, SmoothQuant), empty for none: what is stored is
  /// diag(row_scale) W diag(col_scale) for the checkpoint's W, which the report undoes.
  std::span<const float> row_scale, col_scale;
};
/// By full tensor name.
using SolvedTensors = std::map<std::string, SolvedTensor>;

class QuantizedCheckpointWriter {
 public:
  /// Plans the quantised checkpoint `out` of `in` under `options` (its selection, codec, sharding
  /// and activation record) in `order`; `progress` is called after each tensor. Throws OptionError
  /// for an input quantised already, an output that is the input or exists (without overwrite), or
  /// a bad codec, and ShapeError for a tensor an include rule names that is not a 2-D float matrix.
  QuantizedCheckpointWriter(const Checkpoint& in, const std::filesystem::path& out,
                            const QuantizeOptions& options, WriteOrder order,
                            ProgressFn progress = {});
  ~QuantizedCheckpointWriter();
  QuantizedCheckpointWriter(const QuantizedCheckpointWriter&) = delete;
  QuantizedCheckpointWriter& operator=(const QuantizedCheckpointWriter&) = delete;

  /// Writes, in order, the tensors up to the end of decoder block `block` (-1: those outside the
  /// blocks; in checkpoint order every tensor counts as outside), each from its entry in `solved`
  /// or, without one, rounded to nearest (selected) or copied (the others).
  void WriteThrough(int64_t block, const SolvedTensors& solved = {});

  /// Writes the tensors left, the model directory's other files and config.json, and commits the
  /// checkpoint. The report's time is counted from `start`.
  QuantizeReport Finish(std::chrono::steady_clock::time_point start);

 private:
  class BufferPool;
  struct Entry {
    size_t index;  // in the input checkpoint
    int64_t block;
    std::unique_ptr<WeightCodec> codec;  // null: not quantised
  };

  void WriteEntry(Entry& e, const SolvedTensor* solved);
  // Static FP8 inputs: checks that options_.input_scales holds one positive scale per quantised
  // weight of `tensors_record` (and none besides), and appends their tensors to `specs`.
  void PlanInputScales(std::vector<TensorSpec>& specs, const nlohmann::json& tensors_record);

  const Checkpoint& in_;
  QuantizeOptions options_;
  int threads_;
  ProgressFn progress_;
  std::vector<Entry> order_;
  size_t next_ = 0;
  nlohmann::json codec_record_;
  std::vector<float> input_scales_;  // in the order of their tensors, written last
  QuantizeReport report_;
  // Declared in this order so that the background thread stops before the buffers it releases
  // and the writer it writes to are destroyed.
  std::unique_ptr<CheckpointWriter> writer_;
  std::unique_ptr<BufferPool> pool_;
  std::unique_ptr<BackgroundWriter> background_;
};

}  // namespace qtool
