// Hugging Face Llama-family checkpoints to GGUF files that llama.cpp runs.
//
// The file holds what llama.cpp's loader reads for the `llama` architecture (also used for
// Mistral and Mixtral), `qwen2`, `qwen3`, `qwen2moe`, `qwen3moe`, `gemma2`, `gemma3` and `phi3`
// (docs/GGUF.md lists each one's keys and tensors): the shape keys (`<arch>.block_count`,
// `.embedding_length`, ...), RoPE
// (`<arch>.rope.freq_base`, linear scaling keys, or a `rope_freqs.weight` tensor of per-frequency
// factors for Llama 3 scaling), `general.file_type` and `general.quantization_version`, and the
// tokenizer: a SentencePiece `tokenizer.model` as the `llama` tokenizer model (tokens, scores,
// token types) or a byte-level BPE `tokenizer.json` as `gpt2` (tokens, types, merges and the
// pre-tokenizer's name), the special-token ids and the chat template when the model has one.
// Tensors get ggml's names (blk.N.attn_q.weight, ...); the rows of the Llama query and key
// projections are permuted from Hugging Face's rotate-half order to ggml's interleaved RoPE pairs;
// tied embeddings are stored once (no output.weight). Tensors are converted one at a time and
// streamed to the file, so memory stays at about two copies of the largest tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/format/ggml.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/imatrix.hpp"

namespace qtool::gguf {

/// A llama-quantize file type: its default ggml type, `general.file_type` (llama_ftype) and
/// whether llama.cpp's per-tensor recipe applies (the ggml types that are no llama_ftype, Q3_K,
/// Q4_K, Q5_K and MXFP4, are stored "pure": the type everywhere).
struct Recipe {
  std::string_view name;  // as llama-quantize spells it: "Q4_K_M", "IQ4_XS", ...
  ggml::Type base;
  uint32_t file_type;
  bool mix;
};

/// The recipe named `name` (case-insensitive), or nothing.
std::optional<Recipe> FindRecipe(std::string_view name);

/// The names FindRecipe knows, comma separated (for help and errors).
std::string RecipeNames();

/// What llama.cpp's quantiser (llama_tensor_get_type, for dense Llama-family models) stores the
/// 2-D weight `name` as: the output head (or the tied embeddings) Q6_K (Q8_0 when its rows do not
/// fit 256-blocks or the type is Q8_0); attn_v, ffn_down and attn_output raised for the mixes
/// (Q2_K: Q3_K, or Q4_K for attn_v at 4+ query heads per kv head; Q3_K_M: attn_v Q5_K in the
/// first two layers then Q4_K, ffn_down Q5_K in the first 1/16 then Q4_K, attn_output Q4_K;
/// Q3_K_L: Q5_K; Q4_K_M/Q5_K_M: Q6_K in the layers use_more_bits picks (the first and last
/// eighth, and every third between); Q4_K_S: Q5_K in the first layers; IQ4_*: attn_v Q5_K at 4+
/// query heads per kv head, ffn_down Q5_K in the first eighth; TQ*: embeddings Q4_K), then
/// FallbackType for rows that are not whole blocks. `pure` applies the base type everywhere
/// (llama-quantize --pure). 1-D tensors are not asked about (they stay F32). `has_imatrix` (an
/// importance matrix is given) changes two ffn_down rules as in llama.cpp: IQ4_NL/IQ4_XS keep
/// their type in the first eighth of the layers, and Q4_0/Q5_0 store those layers as Q4_1/Q5_1.
/// With `n_expert` == 8 (Mixtral's count) llama.cpp stores attn_v and attn_k as Q8_0 and raises
/// attn_output to Q5_K for Q2_K, Q3_K_S/M, Q4_K_S/M, IQ4_NL and IQ4_XS; fused attn_qkv (Phi-3)
/// follows the attn_v rules; the experts' router (ffn_gate_inp) is never quantised (F32).
ggml::Type TensorType(const Recipe& r, bool pure, const std::string& name, uint64_t ne0,
                      int64_t layer, int64_t n_layers, int64_t n_gqa, bool has_output,
                      bool has_imatrix = false, int64_t n_expert = 0);

struct ExportOptions {
  /// A recipe name (see FindRecipe): a llama-quantize file type or a ggml type.
  std::string type = "F16";
  bool pure = false;       // the base type for every 2-D weight
  int threads = 0;         // 0: all cores
  bool overwrite = false;  // replace an existing output file
  /// > 0: split the file as llama-gguf-split --split-max-size does (io/gguf_split.hpp): files
  /// OUT-00001-of-0000N.gguf ... of at most this many bytes of tensor data each.
  uint64_t split_max_bytes = 0;
  /// Importances (llama.cpp's imatrix, by GGUF tensor name) for the weighted searches of the k-,
  /// i- and legacy quants (ggml::Quantize with an importance matrix), or nullptr. A weight without
  /// an entry is quantised without one, as llama-quantize does; an entry whose length is not the
  /// weight's row length is a ShapeError (except for token_embd, which llama.cpp never reads one
  /// for).
  const imatrix::Matrix* imatrix = nullptr;
  std::string imatrix_file = {};  // its name, for the quantize.imatrix.file key
  /// Optional: called for each weight of the checkpoint with its name and the type the recipe
  /// stores it in; returning true with `data` holding the tensor in that type (rows in the
  /// checkpoint's order; the export permutes them as it permutes the weights) writes `data`
  /// instead of the reference quantiser's blocks (GPTQ's, see solvers/gguf_calibrated.hpp).
  std::function<bool(const std::string& source, ggml::Type type, std::vector<std::byte>& data)>
      quantized = nullptr;
};

/// One tensor of the written file and its round-trip error.
struct ExportedTensor {
  std::string name;          // GGUF name
  std::string source;        // checkpoint name ("" for computed tensors)
  std::vector<uint64_t> ne;  // GGUF shape, ne[0] = row length
  ggml::Type type = ggml::Type::kF32;
  uint64_t bytes = 0;
  double rel_rms_error = 0;  // sqrt(sum (dequant - x)^2 / sum x^2)
  bool imatrix = false;      // quantised with importances
};

struct ExportReport {
  std::vector<ExportedTensor> tensors;
  std::string architecture;     // GGUF architecture name
  std::string tokenizer_model;  // "llama", "gpt2" or "" (none found)
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;                 // size of the files
  std::vector<std::filesystem::path> files;  // written: `out`, or the files of the split
  double seconds = 0;
};

/// Where a checkpoint tensor goes in a GGUF file.
struct GgufTensorRef {
  std::string name;     // GGUF name, "" for a tensor the file does not keep (rotary inv_freq)
  int64_t layer = -1;   // -1 outside the blocks
  int64_t expert = -1;  // >= 0: this expert's slice of a stacked 3-D blk.N.ffn_*_exps tensor
};

/// The GGUF place of the checkpoint tensor `hf`. `sandwich_norms` (Gemma 2/3): the checkpoint's
/// post_attention_layernorm is the attention output's norm (post_attention_norm), its
/// pre_feedforward_layernorm the MLP's input norm (ffn_norm). Throws FormatError for a name
/// without a GGUF equivalent.
GgufTensorRef GgufTensor(const std::string& hf, bool sandwich_norms);

/// The type llama.cpp's quantiser uses for a weight whose row length `ne0` is not a multiple of
/// `type`'s block size (tensor_type_fallback of the llama.cpp in llama-cpp-python 0.3.36):
/// Q2_K, Q3_K, TQ1_0, TQ2_0 -> Q4_0; IQ4_XS -> IQ4_NL; Q4_K -> Q5_0;
/// Q5_K -> Q5_1; Q6_K -> Q8_0; and F16 when that does not fit either (so also for the 32-block
/// types, which have nothing smaller to fall back to).
ggml::Type FallbackType(ggml::Type type, uint64_t ne0);

/// The GGUF name of a Hugging Face tensor of a Llama-family checkpoint
/// ("model.layers.3.mlp.down_proj.weight" -> "blk.3.ffn_down.weight"), "" for a tensor GGUF does
/// not keep (rotary inv_freq). Throws FormatError for a name without a GGUF equivalent.
std::string TensorName(const std::string& hf);

/// Llama 3 RoPE scaling as the per-frequency divisors llama.cpp reads from `rope_freqs.weight`,
/// one per rotary pair i of `rot_dims` rotated dimensions: with wavelength 2 pi
/// theta^(2i/rot_dims), 1 below original_context / high_freq_factor, `factor` above
/// original_context / low_freq_factor, and 1 / ((1 - s) / factor + s) between, s =
/// (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).
std::vector<float> Llama3RopeDivisors(double theta, int64_t rot_dims, double factor,
                                      double low_freq_factor, double high_freq_factor,
                                      double original_context);

/// The model's shape and RoPE settings as the GGUF metadata records them (from its config.json by
/// GgufModelParams, qtool/model/gguf_params.hpp).
struct ModelParams {
  // GGUF architecture: llama (also Mistral and Mixtral), qwen2, qwen3, gemma2, gemma3, phi3,
  // qwen2moe or qwen3moe.
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t context_length = 0;  // max_position_embeddings
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t intermediate_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 0;
  double rope_theta = 0;
  std::optional<double> linear_rope_factor;  // linear RoPE scaling
  std::vector<float> rope_freqs;  // Llama 3 RoPE scaling's per-frequency divisors, or empty
  bool tie_word_embeddings = false;
  int64_t rotary_dim = 0;  // rope.dimension_count when RoPE rotates part of a head; 0: head_dim
  /// The architecture's other keys, without the "<arch>." prefix ("attention.sliding_window",
  /// "expert_count", ...).
  std::vector<std::pair<std::string, Value>> keys;
  bool sandwich_norms = false;  // Gemma 2/3 (see GgufTensor)
  bool norm_plus_one = false;   // Gemma: llama.cpp multiplies by the stored norm, which is 1 + w
  int64_t num_experts = 0;      // > 0: expert tensors are stacked per layer
};

/// Writes `in` (a checkpoint with config.json whose model is `params`) as a GGUF file at `out`.
/// `progress` (optional) is called after each tensor. Throws FormatError for an architecture
/// other than llama/qwen2 or an unsupported tokenizer, NumericError for a non-finite weight
/// (naming the tensor), OutputExistsError when `out` exists without `overwrite`, OptionError for
/// an unknown type. qtool/model/gguf_params.hpp has the overload that reads `params` from the
/// checkpoint's config.json.
ExportReport ExportGguf(
    const Checkpoint& in, const ModelParams& params, const std::filesystem::path& out,
    const ExportOptions& options,
    const std::function<void(size_t, size_t, const std::string&)>& progress = {});

/// The tokenizer metadata (tokenizer.* keys) of the model directory `dir` with `vocab_size`
/// entries: from tokenizer.model (SentencePiece) when present, else tokenizer.json (byte-level
/// BPE); empty when neither exists. `config` supplies fallback special-token ids.
std::vector<std::pair<std::string, Value>> TokenizerMetadata(const std::filesystem::path& dir,
                                                             int64_t vocab_size,
                                                             const nlohmann::json& config);

}  // namespace qtool::gguf
