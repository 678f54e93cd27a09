// GGUF files back to Hugging Face checkpoints.
#pragma once

#include <filesystem>

#include "qtool/io/gguf.hpp"

namespace qtool::gguf {

/// Writes the model of a GGUF file (architecture `llama` or `qwen2`, any tensor type) as a
/// Hugging Face model directory: every tensor decoded to F32 under its Hugging Face name
/// (query/key rows of `llama` permuted back to the rotate-half order, so that export then import
/// gives back the original weights), and a config.json built from the metadata (no lm_head when
/// the file has no output.weight: tied embeddings). The tokenizer is not reconstructed. Throws
/// FormatError for another architecture or a tensor without a Hugging Face name.
void ImportGguf(const File& file, const std::filesystem::path& out_dir, bool overwrite);

}  // namespace qtool::gguf
