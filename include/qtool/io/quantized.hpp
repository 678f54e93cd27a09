// Quantised checkpoints as files: the records their metadata and config.json carry, reading their
// weights back, and dequantising a whole checkpoint. Writing one from a float checkpoint is the
// pipeline's (pipeline/quantize.hpp). The on-disk format is described in docs/FORMAT.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qtool/io/checkpoint.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {

/// Metadata key under which a quantised checkpoint records its format and every quantised tensor.
inline constexpr const char* kQtoolMetadataKey = "qtool.quantization";
inline constexpr int kQtoolFormatVersion = 1;

/// The weights inside the decoder blocks: what the pipeline quantises by default
/// (pipeline/selection.hpp) and what an export lists as kept or quantised Linear layers. An RE2
/// regular expression (core/name_pattern.hpp) searched in the tensor name.
inline constexpr const char* kDefaultInclude = R"(\.layers\.\d+\..*\.weight$)";

/// Output waiting for a BackgroundWriter while a quantised or dequantised checkpoint is written:
/// enough to overlap a tensor's writing with the next one's work, small enough to keep memory
/// bounded (and fresh pages are slow to get).
inline constexpr uint64_t kMaxQueuedBytes = 32ull << 20;

/// How a quantised checkpoint is written: what its metadata and config.json record besides the
/// codec and tensors, and its files.
struct QuantizedWriteOptions {
  /// Activation quantisation the checkpoint asks of the runtime: null (weights only) or
  /// Int8TokenActivations(). Recorded in the metadata and in config.json.
  nlohmann::json activations;
  uint64_t max_shard_bytes = 0;  // 0: one model.safetensors
  bool overwrite = false;
};

/// W8A8's activations: each quantised Linear's input quantised per token (row) at run time to
/// symmetric INT8 with its own absmax scale (quant/activation.hpp).
inline nlohmann::json Int8TokenActivations() {
  return {{"bits", 8}, {"granularity", "token"}, {"dynamic", true}};
}

/// Called after each tensor: (tensors done, tensors in all, name of the tensor just done).
using ProgressFn = std::function<void(size_t, size_t, const std::string&)>;

/// Record of a quantised tensor in a checkpoint's metadata: the codec's record with the original
/// shape and dtype.
nlohmann::json QuantizedTensorRecord(const WeightCodec& codec, const TensorSpec& original);

/// Writer options of a quantised checkpoint: the options' sharding and overwrite, and metadata
/// holding the format version, `codec_record`, `tensors_record` (name -> tensor record) and the
/// options' activation quantisation when there is one.
CheckpointWriterOptions QuantizedWriterOptions(const QuantizedWriteOptions& options,
                                               const nlohmann::json& codec_record,
                                               const nlohmann::json& tensors_record);

/// The `quantization_config` that config.json gets for a checkpoint written with `codec_record`
/// and `options`' activation quantisation.
nlohmann::json QuantizationConfig(const nlohmann::json& codec_record,
                                  const QuantizedWriteOptions& options);

/// Whether the runtime is to quantise the inputs of `ck`'s quantised Linear layers per token to
/// INT8 (a W8A8 checkpoint). Throws FormatError for an activation record it does not implement.
bool QuantizesActivations(const Checkpoint& ck);

/// Copies the model directory's other files (tokenizer, ...) and writes its config.json with
/// `quantization_config` set to `qc`, or removed when `qc` is null.
void CopyModelFiles(const Checkpoint& in, const nlohmann::json& qc, CheckpointWriter& writer);

/// The quantisation record of a checkpoint written by qtool (nullopt for a plain checkpoint).
std::optional<nlohmann::json> QuantizationRecord(const Checkpoint& ck);
/// The format of quantised tensor `name` from its record in ck's quantisation metadata (the codec
/// record with the original "shape" and "dtype"): FormatError naming the checkpoint, the tensor
/// and the key when the record is not one FormatFromRecord accepts.
Format TensorRecordFormat(const Checkpoint& ck, const std::string& name,
                          const nlohmann::json& record);

/// Names of the weights a checkpoint holds, as the original model named them (quantised weights
/// under their original names, their stored parts hidden).
std::vector<std::string> LogicalTensorNames(const Checkpoint& ck);

/// Shape of a logical weight (quantised or not).
std::vector<int64_t> LogicalShape(const Checkpoint& ck, const std::string& name);

/// Reads weight `name` as f32, decoding it when it is stored quantised. Throws FormatError when
/// absent. The file pages it read are then released from the memory map (they stay in the page
/// cache), so reading tensor after tensor does not grow the resident set.
std::vector<float> ReadTensorF32(const Checkpoint& ck, const std::string& name, int threads = 1);

/// Writes a plain float checkpoint with every quantised weight decoded to its original dtype.
void DequantizeCheckpoint(const Checkpoint& in, const std::filesystem::path& out, bool overwrite,
                          int threads = 0, const ProgressFn& progress = {});

}  // namespace qtool
