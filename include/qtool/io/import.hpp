// Reading the serving stacks' quantised checkpoints (GPTQ, AWQ, compressed-tensors, bitsandbytes,
// FP8 with block scales) as qtool reads its own: each quantised weight is transcoded, code for
// code, into the stored tensors of the qtool codec that holds the same grid (docs/EXPORT.md,
// "Reading"), so that decoding it is qtool's own decoding and `convert` can write it into another
// format without going through float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qtool/io/checkpoint.hpp"

namespace qtool {

enum class ImportFormat { kGptq, kAwq, kCompressedTensors, kBnb, kFp8 };

/// What config.json's `quantization_config` says of a checkpoint written by another tool.
struct ImportScheme {
  ImportFormat format = ImportFormat::kGptq;
  int bits = 4;
  bool symmetric = true;
  int64_t group_size = 0;      // 0: one group per row (GPTQ's -1, a channel strategy)
  bool gptq_v2 = false;        // GPTQ: zero-points stored as they are (v1 stores z - 1)
  std::string ct_format;       // compressed-tensors: pack-quantized, int-quantized, float-quantized
  std::string strategy;        // compressed-tensors: tensor, channel, group or block
  std::vector<int64_t> block;  // FP8 / compressed-tensors block: [rows, cols] of a scale block
  bool int8_activations = false;  // compressed-tensors W8A8: dynamic per-token INT8 inputs
  // compressed-tensors W8A8-FP8: static per-tensor FP8 E4M3 inputs, each module's scale in
  // "<module>.input_scale"
  bool fp8_static_activations = false;
  // bitsandbytes LLM.int8: input values at or above this run in float (config
  // `llm_int8_threshold`, 6 where absent, as transformers' BitsAndBytesConfig has it)
  float llm_int8_threshold = 0;
  DType dtype = DType::kF32;  // the weights' type before quantisation (config `torch_dtype`)

  /// One line for `inspect`: the format and its parameters.
  std::string Describe() const;
};

/// The scheme of a checkpoint whose config.json has a `quantization_config` from GPTQ, AWQ,
/// compressed-tensors, bitsandbytes or an FP8 block-scaled model; nullopt for a float checkpoint
/// or one written by qtool. Throws FormatError naming config.json and the key for a quantisation
/// config this build does not read.
std::optional<ImportScheme> DetectImportScheme(const Checkpoint& ck);

/// A checkpoint of another tool viewed as qtool's quantised checkpoints are: its weights under
/// their original names, each quantised one with the qtool record and stored tensors of its grid.
/// Opening it checks every quantised weight's tensors (presence, dtype, shape, g_idx range)
/// against the scheme: FormatError naming the file, the tensor and what is wrong.
class ImportedCheckpoint {
 public:
  /// nullopt when `ck` is not another tool's quantised checkpoint (see DetectImportScheme).
  static std::optional<ImportedCheckpoint> Open(const Checkpoint& ck);
  /// Open(ck) made once per checkpoint and kept with it (Checkpoint::Derived), for readers of
  /// its tensors one at a time; null where Open gives nullopt.
  static std::shared_ptr<const ImportedCheckpoint> Shared(const Checkpoint& ck);
  ImportedCheckpoint(const Checkpoint& ck, ImportScheme scheme);

  const ImportScheme& scheme() const { return scheme_; }
  /// The weights as the original model named them (quantised weights' stored tensors hidden).
  std::vector<std::string> LogicalNames() const;
  bool IsQuantized(const std::string& name) const { return weights_.contains(name); }
  /// Names of the quantised weights, in name order.
  std::vector<std::string> QuantizedNames() const;
  std::vector<int64_t> Shape(const std::string& name) const;
  /// The qtool tensor record of quantised weight `name` (codec record with the original "shape"
  /// and "dtype"), or null where no qtool codec holds its grid (bitsandbytes' FP4, a 4-bit map
  /// other than NF4's, LLM.int8): such a weight is only decoded.
  nlohmann::json Record(const std::string& name) const;
  /// qtool's stored tensors of quantised weight `name`, in its codec's Layout order, transcoded
  /// from the checkpoint's own (FormatError for a zero-point or index outside the grid,
  /// NumericError for a scale that is not finite). Record(name) must not be null.
  std::vector<std::vector<std::byte>> Stored(const std::string& name) const;
  /// Bytes the checkpoint stores for weight `name` (all of its tensors).
  uint64_t StoredBytes(const std::string& name) const;
  /// Weight `name` as f32: a quantised one decoded by qtool's codec from Stored(name) (or by the
  /// bitsandbytes map for a weight without a record), another one converted.
  std::vector<float> ReadF32(const std::string& name, int threads = 1) const;

 private:
  struct Weight {
    std::string module;  // the name without ".weight"
    int64_t rows = 0, cols = 0;
    std::vector<const CheckpointTensor*> parts;  // the format's tensors, in its order
    nlohmann::json codec;                        // qtool codec record, or null
    bool act_order = false;                      // GPTQ: g_idx other than c / group_size
  };
  void AddWeight(const std::string& module);
  std::string Where(const CheckpointTensor& t) const;

  const Checkpoint* ck_;
  ImportScheme scheme_;
  std::map<std::string, Weight> weights_;  // by logical name
  std::map<std::string, bool> hidden_;     // stored tensors of quantised weights
};

}  // namespace qtool
