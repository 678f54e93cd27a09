// Internal pieces of the runtime: decoded block weights and the decoder block's forward pass.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qtool/io/quantized.hpp"
#include "qtool/kernels/gemm.hpp"
#include "qtool/model/capture.hpp"
#include "qtool/model/model.hpp"

namespace qtool::runtime {

/// A Linear layer y = x W^T + b, W packed for the kernels.
struct Linear {
  gemm::PackedMatrix w;
  Eigen::VectorXf bias;  // empty: no bias
  // How x is quantised (and decoded) before the product, as the checkpoint's runtime sees it:
  // kInt8Token (W8A8) per token to INT8; kFp8Static (W8A8-FP8) as E4M3(x / s) * s with the static
  // scale fp8_input_scale (FakeQuantizeStaticFp8), as compressed-tensors and vLLM run it;
  // kLlmInt8 as bitsandbytes' LLM.int8 with llm_int8_threshold (FakeQuantizeLlmInt8).
  InputQuantization inputs = InputQuantization::kNone;
  float fp8_input_scale = 0;
  float llm_int8_threshold = 0;
  int64_t in() const { return w.k; }
  int64_t out() const { return w.n; }
  /// y [rows, out] = x [rows, in] W^T (+ b).
  void Apply(const RowMatrixXf& x, RowMatrixXf& y, int threads) const;
  uint64_t bytes() const;
};

struct MoeWeights;  // moe.hpp

/// One decoder block, decoded to float. Norm weights are held as the runtime multiplies by them:
/// Gemma's stored w as 1 + w.
struct BlockWeights {
  Eigen::VectorXf input_norm, post_attention_norm;
  // Gemma 2/3 (LlamaConfig::sandwich_norms): the MLP's input norm and its output norm.
  Eigen::VectorXf pre_feedforward_norm, post_feedforward_norm;
  Eigen::VectorXf q_norm, k_norm;  // [head_dim] (LlamaConfig::qk_norm)
  Linear q, k, v, o, gate, up, down;
  Linear qkv, gate_up;   // Phi-3's fused layers (LlamaConfig::fused_projections) in place of q/k/v
                         // and gate/up: rows [q; k; v] and [gate; up]
  bool sliding = false;  // the layer attends within LlamaConfig::sliding_window
  // A mixture-of-experts feed-forward in place of gate/up/down (which are then empty). Shared
  // between copies of the block until Apply() changes one of its layers.
  std::shared_ptr<MoeWeights> moe;

  /// The Linear named by its short name ("self_attn.q_proj", ...); nullptr when unknown.
  const Linear* Find(const std::string& name) const;
  Linear* Find(const std::string& name);
  /// The norm named by its short name ("input_layernorm", "self_attn.q_norm", ...); nullptr when
  /// unknown or absent from this architecture.
  const Eigen::VectorXf* FindNorm(const std::string& name) const;
  uint64_t bytes() const;
  /// Replaces the tensors named in `overrides` (checked against their shapes).
  void Apply(const WeightOverrides& overrides);
};

/// Reads the Linear `prefix`.weight (and `prefix`.bias where the checkpoint has it), checking its
/// shape [out, in]. When it is quantised, its input is quantised as `inputs` says (the
/// checkpoint's InputQuantizationOf; static FP8 reads `prefix`.input_scale, LLM.int8 the
/// checkpoint's LlmInt8Threshold).
Linear LoadLinear(const Checkpoint& ck, const std::string& prefix, int64_t out, int64_t in,
                  InputQuantization inputs, int threads);

/// Reads block `i` through ReadTensorF32 (quantised or not). In a checkpoint that quantises
/// activations (InputQuantizationOf: W8A8, W8A8-FP8, LLM.int8) its quantised Linear layers quantise
/// their inputs.
BlockWeights LoadBlock(const Checkpoint& ck, const LlamaConfig& cfg, int64_t i, int threads);

/// cos/sin of every position and frequency, computed in float32 as the reference implementation
/// does: inv_freq[i] = 1 / theta^(2i/d) (d: the rotated dimensions, with rope_scaling applied),
/// angle = pos * inv_freq.
struct RopeTable {
  RowMatrixXf cos, sin;  // [positions, rotary_dim / 2]
  /// The table of layers without a sliding window, or with `local`, of the sliding-window layers.
  RopeTable(const LlamaConfig& cfg, int64_t positions, bool local = false);
};

/// Called with each Linear's short name and its input rows, in execution order.
using LinearInputFn = std::function<void(const std::string&, const RowMatrixXf&)>;

/// RMSNorm: y = w * x / sqrt(mean(x^2) + eps), row by row.
void RmsNorm(const RowMatrixXf& x, const Eigen::VectorXf& w, double eps, RowMatrixXf& y);

/// cap * tanh(x / cap) on every element, in float32 as transformers computes it.
void SoftCap(float* x, int64_t n, float cap);

/// The norm weight as the runtime applies it: w, or 1 + w where the config says so (Gemma).
Eigen::VectorXf EffectiveNorm(const Eigen::VectorXf& stored, const LlamaConfig& cfg);

/// Keys and values of the positions a block has seen, for incremental decoding of one sequence.
struct KvCache {
  RowMatrixXf k, v;  // [capacity, kv_heads * head_dim], rows [0, len) filled
  int64_t len = 0;
  KvCache(int64_t capacity, int64_t width) : k(capacity, width), v(capacity, width) {}
};

/// Runs one decoder block in place (`rope`: the table for the block's kind of layer) on x [tokens,
/// hidden], which holds sequences of `lengths` tokens back to back, each starting at position 0.
/// With `kv`, x holds one sequence that continues the kv->len positions already cached; its keys
/// and values are appended to the cache. With `stop_after` (a Linear's short name), the block stops
/// once that layer's input has been observed, leaving x unspecified: for captures that need no
/// output.
void RunBlock(const BlockWeights& w, const LlamaConfig& cfg, const RopeTable& rope,
              const std::vector<int64_t>& lengths, RowMatrixXf& x, int threads,
              const LinearInputFn& observe = {}, KvCache* kv = nullptr,
              const std::string& stop_after = {});

}  // namespace qtool::runtime
