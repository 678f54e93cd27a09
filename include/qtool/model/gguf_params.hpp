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

/// The GGUF architecture and metadata values of a model: `llama` for Llama, Mistral and Mixtral,
/// `qwen2`, `qwen3`, `qwen2moe`, `qwen3moe`, `gemma2`, `gemma3` (gemma3_text) and `phi3`, with
/// each architecture's keys as llama.cpp reads them (experts, sliding windows and their per-layer
/// pattern, Gemma's soft-caps and local RoPE base); linear RoPE scaling as its factor, Llama 3
/// scaling as per-frequency divisors (what llama.cpp reads from `rope_freqs.weight`: 1 for
/// wavelengths below original_context / high_freq_factor, `factor` above original_context /
/// low_freq_factor, a smooth blend between). Throws FormatError, naming `label`, for a model type
/// the GGUF export does not write, and for settings llama.cpp's graph of the architecture does
/// not run (so the file would compute something else): sliding windows in Qwen and Mixtral,
/// Gemma's query_pre_attn_scalar other than the one llama.cpp hard-codes, dense layers between
/// expert layers, norm_topk_prob other than llama.cpp's fixed choice (false for Qwen2-MoE, true
/// for the others), Llama 3 RoPE scaling outside `llama`. Phi-3's sliding window is written, as
/// llama.cpp's converter does, though llama.cpp does not apply it.
ModelParams GgufModelParams(const LlamaConfig& config, const std::string& label);

/// ExportGguf with the parameters of the checkpoint's config.json (GgufModelParams). Throws
/// FormatError when `in` has no config.json, and as both.
ExportReport ExportGguf(
    const Checkpoint& in, const std::filesystem::path& out, const ExportOptions& options,
    const std::function<void(size_t, size_t, const std::string&)>& progress = {});

}  // namespace qtool::gguf
