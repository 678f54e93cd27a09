// Converting a qtool quantised checkpoint into the checkpoint formats that serving stacks load
// (GPTQ, AWQ, compressed-tensors, bitsandbytes), straight from the stored codes: no weight goes
// through float. Layouts and metadata: docs/EXPORT.md; packings: qtool/io/export_layouts.hpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "qtool/io/checkpoint.hpp"
#include "qtool/io/quantized.hpp"

namespace qtool {

enum class ExportFormat { kQtool, kGptq, kAwq, kCompressedTensors, kBnb };

/// "qtool", "gptq", "awq", "compressed-tensors", "bnb"; throws OptionError for another name.
ExportFormat ParseExportFormat(const std::string& name);
const char* ExportFormatName(ExportFormat f);

struct ExportOptions {
  ExportFormat format = ExportFormat::kQtool;
  /// GPTQ only: "gptq" (v1: zero-points stored minus one, what most loaders expect) or
  /// "gptq_v2" (zero-points as they are; holds a zero-point 0).
  std::string gptq_checkpoint_format = "gptq";
  uint64_t max_shard_bytes = 0;  // 0: one model.safetensors
  bool overwrite = false;
};

struct ExportReport {
  int64_t weights_converted = 0, tensors_copied = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  /// The largest relative change of a weight's value where the target's grid differs from qtool's
  /// (0 where it holds qtool's grid exactly): GPTQ and AWQ store f16 scales, and bitsandbytes'
  /// LLM.int8 decodes with two f32 roundings (BnbInt8Value).
  double max_weight_change = 0;
  double seconds = 0;
};

/// Writes the qtool quantised checkpoint `in` to `out` in `options.format`, weight by weight
/// (memory: one weight's tensors). Tensors that are not quantised are copied; config.json gets the
/// target's `quantization_config` (kept Linear layers inside the decoder blocks listed as the
/// target's readers expect). Throws OptionError naming the weight and the constraint where the
/// target cannot hold qtool's grid (codec, bits, group size, shape, zero-point), FormatError for
/// an input that is not a qtool quantised checkpoint. Output is atomic, as QuantizeCheckpoint's.
ExportReport ConvertCheckpoint(const Checkpoint& in, const std::filesystem::path& out,
                               const ExportOptions& options, const ProgressFn& progress = {});

}  // namespace qtool
