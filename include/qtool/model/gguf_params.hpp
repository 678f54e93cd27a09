// The model's config.json as GGUF metadata values: the model layer's side of the GGUF export
// (io/gguf_export.hpp writes the file from plain values).
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "qtool/io/checkpoint.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/model/model.hpp"

namespace qtool::gguf {

/// The GGUF architecture and metadata values of a model: `llama` for Llama and Mistral, `qwen2`
/// for Qwen2; linear RoPE scaling as its factor, Llama 3 scaling as per-frequency divisors (what
/// llama.cpp reads from `rope_freqs.weight`: 1 for wavelengths below original_context /
/// high_freq_factor, `factor` above original_context / low_freq_factor, a smooth blend between).
/// Throws FormatError, naming `label`, for a model type the GGUF export does not write (Qwen3,
/// Gemma, Phi-3 and the mixture-of-experts models).
ModelParams GgufModelParams(const LlamaConfig& config, const std::string& label);

/// ExportGguf with the parameters of the checkpoint's config.json (GgufModelParams). Throws
/// FormatError when `in` has no config.json, and as both.
ExportReport ExportGguf(
    const Checkpoint& in, const std::filesystem::path& out, const ExportOptions& options,
    const std::function<void(size_t, size_t, const std::string&)>& progress = {});

}  // namespace qtool::gguf
