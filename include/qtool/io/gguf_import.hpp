// GGUF files back to Hugging Face checkpoints.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_split.hpp"

namespace qtool::gguf {

/// Writes the model of a GGUF file or split (the architectures the export writes: llama, qwen2,
/// qwen3, qwen2moe, qwen3moe, gemma2, gemma3, phi3; any tensor type) as a Hugging Face model
/// directory: every tensor decoded to F32 under its Hugging Face name, with the export's
/// transforms undone (query/key rows of `llama` permuted back to the rotate-half order, Gemma's
/// 1 + w norms back to w, stacked experts split into one tensor per expert), so that export then
/// import gives back the original weights; a config.json built from the metadata (no lm_head when
/// the file has no output.weight: tied embeddings), and the tokenizer rebuilt from the metadata
/// (RebuildTokenizer). Throws FormatError for another architecture, a tensor without a Hugging
/// Face name, or tokenizer metadata RebuildTokenizer refuses.
void ImportGguf(const SplitFile& file, const std::filesystem::path& out_dir, bool overwrite);

/// A file of a Hugging Face model directory: its name and contents.
struct ModelFile {
  std::string name;
  std::string contents;
};

/// The tokenizer of a GGUF file's `tokenizer.*` metadata as Hugging Face model files, empty when
/// the file has no `tokenizer.ggml.model`:
/// - `llama` (SentencePiece): a `tokenizer.model` (a SentencePiece BPE ModelProto: the tokens
///   with their scores and types, byte fallback when byte tokens exist, the unknown/BOS/EOS/pad
///   pieces, and the normalizer's add_dummy_prefix and remove_extra_whitespaces from
///   `add_space_prefix` / `remove_extra_whitespaces`; no other normalisation, as llama.cpp);
/// - `gpt2` (byte-level BPE): a `tokenizer.json` with the tokens, merges, control and
///   user-defined tokens as added tokens, and the pre-tokenizer `tokenizer.ggml.pre` names
///   (`gpt-2`: the GPT-2 regex; `smollm`: single digits, then that regex);
/// and a `tokenizer_config.json` with the special tokens, `add_bos_token`/`add_eos_token` (when
/// the file sets them; a `llama` tokenizer adds BOS by default) and the chat template. Throws
/// FormatError (naming `label` and the key) for another tokenizer model or pre-tokenizer, arrays
/// of the wrong type or length, a special-token id outside the tokens, or a `llama` tokenizer
/// without an unknown token.
std::vector<ModelFile> RebuildTokenizer(const Header& h, const std::string& label);

}  // namespace qtool::gguf
