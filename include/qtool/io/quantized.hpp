// Quantised checkpoints as files: the records their metadata and config.json carry, reading their
// weights back, and dequantising a whole checkpoint. Writing one from a float checkpoint is the
// pipeline's (pipeline/quantize.hpp). The on-disk format is described in docs/FORMAT.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
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
  /// Activation quantisation the checkpoint asks of the runtime: null (weights only),
  /// Int8TokenActivations() or Fp8StaticActivations(). Recorded in the metadata and in config.json.
  nlohmann::json activations;
  /// Fp8StaticActivations(): each quantised Linear's input scale by module name (the weight's name
  /// without ".weight"), written as the F32 [1] tensor "<module>.input_scale" (the name
  /// llm-compressor and vLLM use). Empty otherwise.
  std::map<std::string, float> input_scales;
  uint64_t max_shard_bytes = 0;  // 0: one model.safetensors
  bool overwrite = false;
};

/// W8A8's activations: each quantised Linear's input quantised per token (row) at run time to
/// symmetric INT8 with its own absmax scale (quant/activation.hpp).
inline nlohmann::json Int8TokenActivations() {
  return {{"bits", 8}, {"granularity", "token"}, {"dynamic", true}};
}

/// Static FP8 inputs (W8A8-FP8): each quantised Linear's input x is run as
/// E4M3(x / s) * s (saturating at 448, round to nearest even) with the one scale s per layer
/// that calibration measured, s = max |x| / 448 over the calibration tokens, stored as
/// "<module>.input_scale" (quant/activation.hpp, FakeQuantizeStaticFp8).
inline nlohmann::json Fp8StaticActivations() {
  return {{"bits", 8}, {"type", "fp8-e4m3"}, {"granularity", "tensor"}, {"dynamic", false}};
}

/// What a checkpoint asks the runtime to do with its quantised Linear layers' inputs.
enum class InputQuantization {
  kNone,       // run in float (weight-only quantisation)
  kInt8Token,  // Int8TokenActivations()
  kFp8Static,  // Fp8StaticActivations(), the scales in "<module>.input_scale"
  kLlmInt8,    // bitsandbytes' LLM.int8 (FakeQuantizeLlmInt8) with LlmInt8Threshold(ck)
};

/// Suffix of a module's static input scale tensor.
inline constexpr const char* kInputScaleSuffix = ".input_scale";

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

/// How the runtime is to quantise the inputs of `ck`'s quantised Linear layers (qtool's record or
/// an imported scheme). Throws FormatError for an activation record it does not implement.
InputQuantization InputQuantizationOf(const Checkpoint& ck);
/// InputQuantizationOf(ck) != kNone.
bool QuantizesActivations(const Checkpoint& ck);
/// The outlier threshold of an LLM.int8 checkpoint's inputs (config `llm_int8_threshold`).
float LlmInt8Threshold(const Checkpoint& ck);
/// The static FP8 input scale of module `module` (its "<module>.input_scale", F32, F16 or BF16 with
/// one element): FormatError naming the tensor when it is absent, of another shape or type, or not
/// positive and finite.
float StaticInputScale(const Checkpoint& ck, const std::string& module);

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
