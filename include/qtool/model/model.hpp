// The model runtime: a decoder (Llama, Llama 3, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text,
// Phi-3, and the mixture-of-experts Mixtral, Qwen2-MoE and Qwen3-MoE) in float32, used to evaluate
// checkpoints and to produce calibration activations. Weights are read through ReadTensorF32, so a
// checkpoint quantised by qtool runs with its weights decoded on load.
//
// Memory: the token embedding, the final norm and the output head stay resident; decoder blocks are
// decoded from the memory map when they are needed and kept only while the decoded total fits
// ModelOptions::weight_cache_bytes. With a cache of 0 the runtime holds one block's weights plus
// the activations of the tokens in flight, so a model larger than RAM can be evaluated.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qtool/io/checkpoint.hpp"

namespace qtool {

/// Row-major float matrix: one token (or one output channel of a weight) per row.
using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Rotary embedding frequency scaling (`rope_scaling` in config.json).
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
  bool operator==(const RopeScaling&) const = default;
};

/// The mixture-of-experts feed-forward of Mixtral, Qwen2-MoE and Qwen3-MoE (src/model/moe.hpp):
/// a router picks `top_k` of `num_experts` SwiGLU experts per token, weighted by their softmax
/// probabilities (renormalised over the chosen ones when `norm_topk_prob`); Qwen2-MoE adds a
/// shared expert that every token passes through, scaled by sigmoid(shared_expert_gate x).
struct MoeConfig {
  int64_t num_experts = 0;  // 0: a dense model
  int64_t top_k = 0;
  int64_t expert_intermediate_size = 0;
  bool norm_topk_prob = false;
  int64_t shared_intermediate_size = 0;  // 0: no shared expert
  // Qwen: layer i is sparse unless listed in mlp_only_layers, when (i + 1) % step == 0.
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  bool operator==(const MoeConfig&) const = default;
};

/// The MLP's activation: SiLU (SwiGLU) or GELU with the tanh approximation (GeGLU, Gemma's
/// gelu_pytorch_tanh).
enum class Activation { kSilu, kGeluTanh };

/// The shape of a dense decoder, as config.json describes it.
struct LlamaConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;  // "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_heads unless config.json gives head_dim
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t rotary_dim = 0;  // leading dimensions of each head that RoPE rotates (Phi-3's partial
                           // rotary factor); head_dim unless the config says otherwise
  // Sliding-window layers: `sliding_window` is the number of positions a query sees (itself
  // included) in the layers marked in sliding_layers; 0 when no layer slides.
  int64_t sliding_window = 0;
  std::vector<bool> sliding_layers;  // num_layers entries
  // RoPE of the sliding-window layers where it differs from the others' (Gemma 3's local base).
  double rope_local_theta = 10000.0;
  RopeScaling rope_local_scaling;
  bool rope_local = false;  // the sliding-window layers use rope_local_theta / rope_local_scaling
  Activation activation = Activation::kSilu;
  // Gemma: every RMSNorm multiplies by (1 + w), and the embeddings are scaled by sqrt(hidden_size)
  // rounded to float32 (the runtime's dtype; transformers rounds it to the embedding's dtype).
  bool norm_plus_one = false;
  bool scale_embeddings = false;
  // Gemma 2/3: a norm on the attention's and the MLP's outputs before each residual add
  // (post_attention_layernorm, post_feedforward_layernorm); the MLP's input norm is
  // pre_feedforward_layernorm.
  bool sandwich_norms = false;
  bool qk_norm = false;  // Qwen3(-MoE), Gemma 3: RMSNorm of each query and key head before RoPE
  bool fused_projections = false;    // Phi-3: self_attn.qkv_proj and mlp.gate_up_proj
  double query_pre_attn_scalar = 0;  // attention scores scaled by its -1/2 power; 0: head_dim's
  // Soft-capping (Gemma 2): x -> cap * tanh(x / cap) on the attention scores and on the logits;
  // 0: none.
  double attn_logit_softcapping = 0;
  double final_logit_softcapping = 0;
  bool tie_word_embeddings = false;
  int32_t bos_token_id = 1;
  int32_t eos_token_id = 2;
  MoeConfig moe;

  /// True when decoder layer `layer` has a mixture-of-experts feed-forward.
  bool IsMoeLayer(int64_t layer) const;
  /// Parses config.json. Throws FormatError for a missing or inconsistent field and OptionError
  /// naming the architecture when it is not one the runtime implements.
  static LlamaConfig FromJson(const nlohmann::json& j);
  /// Multiply-adds x2 of one forward pass per token at context position `pos` (0-based):
  /// every Linear layer, the output head and the attention products.
  double FlopsPerToken(int64_t pos) const;
  /// Whether layer `i` uses sliding-window attention.
  bool Sliding(int64_t i) const {
    return sliding_window > 0 && sliding_layers[static_cast<size_t>(i)];
  }
};

struct ModelOptions {
  int threads = 0;  // 0: every hardware thread
  /// Decoded block weights kept in memory between uses; -1: half of physical memory, 0: none
  /// (every use decodes the block again from the memory map).
  int64_t weight_cache_bytes = -1;
};

/// Called with (sequence index, logits [sequence length, vocab]) for each sequence, in order.
using LogitsFn = std::function<void(size_t, const RowMatrixXf&)>;

class CalibrationRunner;

/// A loaded model. Not thread-safe: one call at a time (each call uses `threads` workers).
///
///   Model m("models/llama");
///   RowMatrixXf logits = m.Logits({1, 450, 4996});
class Model {
 public:
  /// Opens a model directory (config.json + safetensors), plain or quantised by qtool.
  explicit Model(const std::filesystem::path& path, ModelOptions options = {});
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;

  const LlamaConfig& config() const;
  const Checkpoint& checkpoint() const;
  int threads() const;

  /// Runs each sequence from position 0 through the whole model, block by block (each block's
  /// weights are loaded once for all the sequences of the call), and hands each sequence's logits
  /// to `on_logits`. Memory: one block plus the activations of every token of the call.
  void Forward(const std::vector<std::vector<int32_t>>& sequences, const LogitsFn& on_logits) const;
  /// Logits [tokens, vocab] of one sequence.
  RowMatrixXf Logits(const std::vector<int32_t>& tokens) const;

 private:
  friend class CalibrationRunner;
  friend std::vector<int32_t> GenerateGreedy(const Model&, const std::vector<int32_t>&, int64_t,
                                             int32_t);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Greedy decoding: appends up to `n` argmax tokens to `prompt` (stopping after `eos` when it is
/// not negative, or at the model's context) and returns the new tokens. Keys and values are
/// cached, so each new token costs one token's forward pass.
std::vector<int32_t> GenerateGreedy(const Model& model, const std::vector<int32_t>& prompt,
                                    int64_t n, int32_t eos = -1);

}  // namespace qtool
