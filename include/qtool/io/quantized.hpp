// Quantised checkpoints: writing them from a float checkpoint, reading weights back, and
// dequantising a whole checkpoint. The on-disk format is described in docs/FORMAT.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qtool/io/checkpoint.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/metrics.hpp"

namespace qtool {

/// Metadata key under which a quantised checkpoint records its format and every quantised tensor.
inline constexpr const char* kQtoolMetadataKey = "qtool.quantization";
inline constexpr int kQtoolFormatVersion = 1;

/// Which tensors are quantised: by default every 2-D floating point weight inside the decoder
/// blocks (names matching kDefaultInclude). `include` rules add tensors, `exclude` rules remove
/// them (exclusion wins). Rules are RE2 regular expressions (core/name_pattern.hpp) searched in the
/// tensor name.
inline constexpr const char* kDefaultInclude = R"(\.layers\.\d+\..*\.weight$)";
/// Mixture-of-experts routers and Qwen2-MoE's shared-expert gate: tiny layers whose rounding would
/// move the routing (and that the Python quantisers keep in full precision). They are kept unless
/// an `include` rule names them.
inline constexpr const char* kDefaultExclude =
    R"(\.layers\.\d+\.(mlp\.gate|block_sparse_moe\.gate|mlp\.shared_expert_gate)\.weight$)";

struct QuantizeOptions {
  nlohmann::json codec = {{"codec", "int"},
                          {"bits", 4},
                          {"symmetric", true},
                          {"granularity", "group"},
                          {"group_size", 128}};
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  /// Activation quantisation the checkpoint asks of the runtime: null (weights only) or
  /// Int8TokenActivations(). Recorded in the metadata and in config.json.
  nlohmann::json activations;
  int threads = 0;               // 0: every hardware thread
  uint64_t max_shard_bytes = 0;  // 0: one model.safetensors
  bool overwrite = false;
};

/// W8A8's activations: each quantised Linear's input quantised per token (row) at run time to
/// symmetric INT8 with its own absmax scale (quant/activation.hpp).
inline nlohmann::json Int8TokenActivations() {
  return {{"bits", 8}, {"granularity", "token"}, {"dynamic", true}};
}

struct TensorReport {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;       // input dtype
  bool quantized = false;  // false: copied unchanged
  double bits_per_weight = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  double seconds = 0;
  ErrorStats stats;

  /// The report of input tensor t before it is written (name, shape, dtype, bytes in), its clock
  /// started. The writer then sets bytes_out, and for a quantised tensor `stats` and MarkQuantized.
  static TensorReport Begin(const TensorInfo& t);
  /// A quantised tensor, stored at the codec's bits per weight.
  void MarkQuantized(double codec_bits_per_weight) {
    quantized = true;
    bits_per_weight = codec_bits_per_weight;
  }

 private:
  friend struct QuantizeReport;
  int64_t numel_ = 0;
  std::chrono::steady_clock::time_point start_;
};

struct QuantizeReport {
  std::vector<TensorReport> tensors;
  nlohmann::json codec;
  uint64_t bytes_in = 0, bytes_out = 0;
  int64_t params_total = 0, params_quantized = 0;
  uint64_t quantized_bytes_out = 0;  // stored bytes of the quantised tensors (scales included)
  double seconds = 0;
  int threads = 1;

  /// Adds a written tensor (begun by TensorReport::Begin) to the list and the totals, its time
  /// taken until now.
  void Add(TensorReport tr);
  /// Bits per quantised weight, scales and zero-points included.
  double bits_per_weight() const;
  nlohmann::json ToJson() const;
};

/// Called after each tensor: (tensors done, tensors in all, name of the tensor just done).
using ProgressFn = std::function<void(size_t, size_t, const std::string&)>;

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

/// Record of a quantised tensor in a checkpoint's metadata: the codec's record with the original
/// shape and dtype.
nlohmann::json QuantizedTensorRecord(const WeightCodec& codec, const TensorSpec& original);

/// Writer options of a quantised checkpoint: the options' sharding and overwrite, and metadata
/// holding the format version, `codec_record`, `tensors_record` (name -> tensor record) and the
/// options' activation quantisation when there is one.
CheckpointWriterOptions QuantizedWriterOptions(const QuantizeOptions& options,
                                               const nlohmann::json& codec_record,
                                               const nlohmann::json& tensors_record);

/// The `quantization_config` that config.json gets for a checkpoint written with `codec_record`
/// and `options`' activation quantisation.
nlohmann::json QuantizationConfig(const nlohmann::json& codec_record,
                                  const QuantizeOptions& options);

/// Whether the runtime is to quantise the inputs of `ck`'s quantised Linear layers per token to
/// INT8 (a W8A8 checkpoint). Throws FormatError for an activation record it does not implement.
bool QuantizesActivations(const Checkpoint& ck);

/// Copies the model directory's other files (tokenizer, ...) and writes its config.json with
/// `quantization_config` set to `qc`, or removed when `qc` is null.
void CopyModelFiles(const Checkpoint& in, const nlohmann::json& qc, CheckpointWriter& writer);

/// Returns true when `name` (with its shape and dtype) is quantised under `options`' rules.
bool SelectedForQuantization(const TensorSpec& t, const QuantizeOptions& options);

/// Quantises the selected tensors of `in` and writes a quantised checkpoint directory to `out`
/// (tensors not selected and the model directory's other files are copied; config.json gains a
/// "quantization_config"). Output is written under a temporary name and appears complete or not at
/// all. Throws NumericError for a NaN/Inf weight, ShapeError for a selected tensor that is not a
/// 2-D float matrix, OptionError for a bad codec.
QuantizeReport QuantizeCheckpoint(const Checkpoint& in, const std::filesystem::path& out,
                                  const QuantizeOptions& options, const ProgressFn& progress = {});

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
