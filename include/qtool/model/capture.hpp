// Calibration capture: runs calibration samples through a model one decoder block at a time and
// shows each Linear layer's input rows to consumers (Hessian accumulators, channel statistics, or
// anything a solver defines). This is what GPTQ, AWQ and SmoothQuant build on.
//
// The flow for a solver that quantises block by block ("sequential" calibration, as GPTQ does):
//
//   Model model("llama");
//   Tokenizer tok = Tokenizer::Load(model.checkpoint().dir() / "tokenizer.model");
//   CalibrationRunner run(model, DrawCalibrationSamples(tok.Encode(text), {.num_samples = 128,
//                                                                          .seq_len = 512}));
//   for (; !run.done(); ) {
//     HessianAccumulator h_qkv(run.in_features("self_attn.q_proj"));
//     ChannelStats s_down(run.in_features("mlp.down_proj"));
//     run.Run({{"self_attn.q_proj", {&h_qkv}}, {"mlp.down_proj", {&s_down}}});
//     WeightOverrides q;  // quantised weights of this block, by short name
//     q["self_attn.q_proj"] = Quantise(run.Weight("self_attn.q_proj"), h_qkv.Hessian());
//     ...
//     run.Advance(q);  // next block's inputs come from the quantised block
//   }
//
// Linear layers are named relative to their block ("self_attn.q_proj", "self_attn.k_proj",
// "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"); the
// checkpoint's name is BlockTensorName(block, name) + ".weight". Layers that share an input
// (q/k/v; gate/up) are shown identical rows, so one accumulator registered on q_proj serves all
// three. Within Run(), layers are fed in execution order; rows arrive in chunks of whole samples,
// so a consumer's Consume() is called several times per block.
//
// Memory: the calibration activations (num_samples x seq_len x hidden_size floats, twice while a
// block runs: its inputs and its outputs), one decoder block's weights (plus the replaced weights
// of an override), and the intermediate activations of one chunk of about kCaptureChunkTokens
// tokens. Consumers add their own state (a Hessian is in_features^2 doubles).
#pragma once

#include <Eigen/Core>
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qtool/model/model.hpp"

namespace qtool {

/// Tokens per chunk in which Run() feeds a block (rounded to whole samples, at least one).
inline constexpr int64_t kCaptureChunkTokens = 4096;

/// Short names of the Linear layers of a decoder block, in execution order.
const std::vector<std::string>& BlockLinearNames();
/// The same for a model of `cfg`'s architecture: Phi-3's fused layers are "self_attn.qkv_proj"
/// (rows q, k, v) and "mlp.gate_up_proj" (rows gate, up), each shown its own input.
const std::vector<std::string>& BlockLinearNames(const LlamaConfig& cfg);
/// The same for block `block` of a model with `cfg`: in a mixture-of-experts block, the attention's
/// four, then the router, each expert's gate, up and down projections, and the shared expert's
/// ("mlp.gate", "mlp.experts.0.gate_proj", ..., "mlp.shared_expert_gate"; Mixtral's are
/// "block_sparse_moe.gate", "block_sparse_moe.experts.0.w1", ...). An expert's layers are shown the
/// rows of the tokens the router sends to it (possibly none), in token order.
std::vector<std::string> BlockLinearNames(const LlamaConfig& cfg, int64_t block);

/// Block-relative names of the layers of a mixture-of-experts block of a model with `cfg`.
struct MoeLayerNames {
  std::string router;                               // "mlp.gate", "block_sparse_moe.gate"
  std::vector<std::array<std::string, 3>> experts;  // gate, up, down of each expert
  bool has_shared = false;                          // Qwen2-MoE's shared expert:
  std::array<std::string, 3> shared;                //   its gate, up, down
  std::string shared_gate;                          //   and its sigmoid gate
};
MoeLayerNames MoeNames(const LlamaConfig& cfg);

/// The Linear layers of a block of a model with `cfg` in the groups that share one input, in
/// execution order: q/k/v, o, gate/up, down (Phi-3: qkv, o, gate_up, down). A group's first layer
/// is the one whose input a capture names.
const std::vector<std::vector<std::string>>& LinearInputGroups(const LlamaConfig& cfg);
/// The same for block `block`: a mixture-of-experts block has the attention's two groups, then the
/// router with the shared expert's gate, up and sigmoid gate (all read every token), the shared
/// expert's down, and each expert's gate/up and down (which read the rows routed to it).
std::vector<std::vector<std::string>> LinearInputGroups(const LlamaConfig& cfg, int64_t block);

/// "model.layers.{block}.{name}": the checkpoint name of a block tensor without ".weight"/".bias".
std::string BlockTensorName(int64_t block, const std::string& name);

/// Receives the input rows of a Linear layer: `x` is [rows, in_features], one token per row.
/// Consume() is called from the thread that called CalibrationRunner::Run(), never concurrently.
class ActivationConsumer {
 public:
  virtual ~ActivationConsumer() = default;
  virtual void Consume(const Eigen::Ref<const RowMatrixXf>& x) = 0;
};

/// Accumulates H = 2/n * sum over rows of x x^T (n = rows seen), the GPTQ Hessian of the layer-wise
/// squared error ||W X^T - W' X^T||^2. Sums are kept in double.
class HessianAccumulator : public ActivationConsumer {
 public:
  explicit HessianAccumulator(int64_t in_features, int threads = 0);
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override;
  /// 2/n * sum x x^T ([in_features, in_features], symmetric); zero before any row is seen.
  Eigen::MatrixXd Hessian() const;
  int64_t rows() const { return rows_; }

 private:
  Eigen::MatrixXd sum_;  // sum x x^T
  int64_t rows_ = 0;
  int threads_;
};

/// Per input channel: mean |x|, mean x^2 and max |x| over all rows seen (AWQ uses the mean
/// magnitude, SmoothQuant the maximum).
class ChannelStats : public ActivationConsumer {
 public:
  explicit ChannelStats(int64_t in_features);
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override;
  Eigen::VectorXd MeanAbs() const;
  Eigen::VectorXd MeanSquare() const;
  const Eigen::VectorXd& MaxAbs() const { return max_abs_; }
  int64_t rows() const { return rows_; }

 private:
  Eigen::VectorXd sum_abs_, sum_sq_, max_abs_;
  int64_t rows_ = 0;
};

/// Consumers by short Linear name.
using ConsumerMap = std::map<std::string, std::vector<ActivationConsumer*>>;

/// Replacement tensors of the current block by short name: a Linear's weight as [out, in]
/// ("mlp.down_proj"), or a norm's weight as [1, size] ("input_layernorm",
/// "post_attention_layernorm", Gemma's "pre_feedforward_layernorm", ...) in the form the runtime
/// multiplies by (Gemma's 1 + w). Anything not named keeps the checkpoint's value.
using WeightOverrides = std::map<std::string, RowMatrixXf>;

struct CalibrationOptions {
  int64_t num_samples = 128;
  int64_t seq_len = 512;  // tokens per sample, BOS included when `bos` is not negative
  uint64_t seed = 0;
  int32_t bos = 1;  // prefixed to every sample; negative: none
};

/// Draws `num_samples` windows of the token stream deterministically from `seed` (the same on
/// every platform: a 64-bit Mersenne Twister, start = draw mod (tokens - window + 1)). Throws
/// OptionError when the stream is shorter than one window.
std::vector<std::vector<int32_t>> DrawCalibrationSamples(const std::vector<int32_t>& tokens,
                                                         const CalibrationOptions& options);

/// Runs calibration samples through a model block by block. Block 0's inputs are the token
/// embeddings; Advance() makes the current block's outputs the next block's inputs.
class CalibrationRunner {
 public:
  /// Every sample must have the same length (DrawCalibrationSamples gives that).
  CalibrationRunner(const Model& model, std::vector<std::vector<int32_t>> samples);

  int64_t num_blocks() const;
  /// The block Run() and Advance() act on; num_blocks() once every block is done.
  int64_t block() const { return block_; }
  bool done() const { return block_ >= num_blocks(); }
  int64_t num_samples() const { return static_cast<int64_t>(samples_.size()); }
  int64_t seq_len() const { return seq_len_; }

  /// Inputs of the current block: [num_samples * seq_len, hidden_size], sample after sample.
  const RowMatrixXf& inputs() const { return inputs_; }
  /// The current block's tensor `name` (a Linear's weight [out, in] or a norm's [1, size]) as
  /// the checkpoint holds it, decoded to float; a norm in the form the runtime multiplies by
  /// (Gemma's stored w as 1 + w).
  RowMatrixXf Weight(const std::string& name) const;
  int64_t in_features(const std::string& linear) const;
  int64_t out_features(const std::string& linear) const;
  /// BlockLinearNames of the current block.
  std::vector<std::string> LinearNames() const;

  /// Runs the current block on inputs() with `overrides` applied, shows each Linear's inputs to
  /// its consumers, and returns the block's outputs (same shape as inputs()). Call it as often as
  /// a solver needs (e.g. again after quantising q/k/v, to capture o_proj's inputs from the
  /// quantised attention; or to score a candidate scaling by the block's output error). With
  /// `int8_inputs`, every Linear's input is quantised per token to INT8 first, as the W8A8
  /// runtime does.
  RowMatrixXf Run(const ConsumerMap& consumers = {}, const WeightOverrides& overrides = {},
                  bool int8_inputs = false) const;
  /// Run() for the consumers only: the block stops after the last consumed layer's input (in
  /// execution order), so capturing q/k/v's inputs costs a norm, o_proj's the attention.
  void Capture(const ConsumerMap& consumers, const WeightOverrides& overrides = {}) const;
  /// Moves to the next block; its inputs are this block's outputs with `overrides` applied (pass
  /// the quantised weights for sequential calibration, nothing to follow the original model).
  void Advance(const WeightOverrides& overrides = {});

 private:
  // Runs the block; `stop_after` as for runtime::RunBlock, and `out` (when not null) receives the
  // block's outputs.
  void Forward(const ConsumerMap& consumers, const WeightOverrides& overrides, bool int8_inputs,
               const std::string& stop_after, RowMatrixXf* out) const;

  const Model& model_;
  std::vector<std::vector<int32_t>> samples_;
  int64_t seq_len_ = 0;
  int64_t block_ = 0;
  RowMatrixXf inputs_;
};

}  // namespace qtool
