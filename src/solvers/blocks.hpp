// Internal pieces of the calibrated methods (solvers/calibrated.hpp): what a block's solver gets
// and gives back, the helpers the block algorithms share, and the block algorithms, each in its
// own file (gptq_block.cpp, hqq_block.cpp, smoothquant_block.cpp, awq_block.cpp).
#pragma once

#include <fmt/format.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "qtool/format/spec.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/model/capture.hpp"
#include "qtool/pipeline/selection.hpp"
#include "qtool/solvers/calibrated.hpp"
#include "qtool/solvers/grid.hpp"
#include "qtool/solvers/hessian.hpp"

namespace qtool::solvers::detail {

inline double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// How a solver rescaled a Linear (AWQ, SmoothQuant): the values it stores are
// diag(rows) W diag(cols), before rounding, for the checkpoint's W.
struct Rescaling {
  Eigen::VectorXf rows, cols;
};

// What a block's solver produced, by full tensor name: exact codes (GPTQ, HQQ), or float values
// (rescaled weights, which the codec then rounds, and rescaled norms, written as they are).
struct BlockSolution {
  std::map<std::string, QuantizedMatrix> exact;
  std::map<std::string, RowMatrixXf> values;
  std::map<std::string, Rescaling> rescaled;  // by tensor name, for the error report
};

// The calibration windows of `method` (its data read against the model's tokenizer and drawn as
// its options say; seq_len 0: the smaller of 512 and the model's context); calls
// method.on_calibration_data.
std::vector<std::vector<int32_t>> CalibrationSamples(const std::filesystem::path& model_dir,
                                                     const Model& model,
                                                     const CalibratedOptions& method);

inline std::string WeightName(int64_t block, const std::string& linear) {
  return BlockTensorName(block, linear) + ".weight";
}

// Feeds a Linear layer's inputs to the solvers' Hessian accumulator.
class HessianConsumer final : public ActivationConsumer {
 public:
  HessianConsumer(int64_t cols, int threads) : acc_(cols, threads) {}
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override { acc_.Add(x); }
  RowMatrixXf Hessian() const { return acc_.Hessian(); }

 private:
  solvers::HessianAccumulator acc_;
};

// The norm whose output is the MLP's input: Gemma's pre_feedforward_layernorm (its
// post_attention_layernorm normalises the attention's output before the residual add, so no scale
// folds into it).
std::string MlpNorm(const LlamaConfig& cfg);

// A norm's weight as the checkpoint stores it, from the form the runtime multiplies by: Gemma's
// (1 + w) norms store w, so folding 1/s into one stores (1 + w) / s - 1.
RowMatrixXf StoredNorm(const LlamaConfig& cfg, RowMatrixXf effective);

// w [rows, cols] rounded by `format`'s codec: encoded as the writer encodes it, then decoded
// (`label` names the tensor in errors).
RowMatrixXf RoundedByCodec(const RowMatrixXf& w, const Format& format, int threads,
                           const std::string& label);

// What a block algorithm is given: the checkpoint and its model, the run's options (the codec
// record, with g_idx where GPTQ stores it, and the selection) and method, and the integer format.
struct Context {
  const Checkpoint& ck;
  const LlamaConfig& cfg;
  const QuantizeOptions& options;
  const CalibratedOptions& method;
  const LayerFn& on_layer;
  int threads;
  QuantSpec spec;
  bool Selected(const std::string& name) const {
    const CheckpointTensor* t = ck.Find(name);
    return t != nullptr && SelectedForQuantization(*t->info, options);
  }
  void Report(LayerReport r) const {
    if (on_layer) on_layer(r);
  }
};

// Shows `next` an expert's intermediate activations silu(x Wg^T) * (x Wu^T) of the rows x it is
// given: what the expert's down projection would see if every row were routed to it (the
// fallback of an expert with too few tokens; x is the router's input).
class ExpertIntermediate final : public ActivationConsumer {
 public:
  ExpertIntermediate(RowMatrixXf gate, RowMatrixXf up, std::vector<ActivationConsumer*> next)
      : gate_(std::move(gate)), up_(std::move(up)), next_(std::move(next)) {}
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override {
    const RowMatrixXf g = x * gate_.transpose(), u = x * up_.transpose();
    const RowMatrixXf a = (g.array() / (1.0f + (-g.array()).exp()) * u.array()).matrix();
    for (ActivationConsumer* c : next_) c->Consume(a);
  }

 private:
  RowMatrixXf gate_, up_;
  std::vector<ActivationConsumer*> next_;
};

// Tokens routed to each expert of the current MoE block, and which experts take the fallback.
struct MoeRouting {
  std::vector<int64_t> tokens;
  std::vector<bool> fallback;
  int64_t all = 0;  // tokens of the block
  std::string Detail(size_t e, int64_t min_tokens) const {
    return fallback[e] ? fmt::format("expert {}: {} tokens < {}, fallback: all {} tokens", e,
                                     tokens[e], min_tokens, all)
                       : fmt::format("expert {}: {} tokens", e, tokens[e]);
  }
};

// Runs the block to its experts (with `overrides`) to count each expert's tokens; reports them.
MoeRouting RouteExperts(const Context& ctx, const CalibrationRunner& run,
                        const MoeLayerNames& names, const WeightOverrides& overrides);

// GPTQ's step on a group of block run.block()'s Linear layers (short names) that share an input,
// given the Hessian of that input and the head of each layer's report: quantises the layers and
// records their quantised values in the overrides the block loop runs with.
using GptqGroupFn = std::function<void(const std::vector<std::string>& group,
                                       const HessianConsumer& h, const std::string& detail)>;

// GPTQ's loop over block run.block(): each group of layers sharing an input handed to `solve` with
// the Hessian of its inputs captured with the earlier groups quantised (`overrides`, which `solve`
// fills). A mixture-of-experts feed-forward, after the attention: the router and the shared
// expert's gate/up/gate on every token, then the experts in batches whose Hessians take at most
// 1 GiB (or one expert: gate/up on their routed tokens' inputs, or on every token when fewer than
// moe_min_tokens were routed; down on the intermediate activations of the quantised gate/up),
// then the shared expert's down.
void GptqLayers(const Context& ctx, CalibrationRunner& run, const GptqGroupFn& solve,
                const WeightOverrides& overrides);

/// GPTQ on block run.block() with the int grid (GptqLayers); `overrides` gets the quantised
/// weights for the next groups and block.
BlockSolution GptqBlock(const Context& ctx, CalibrationRunner& run, WeightOverrides* overrides);

/// HQQ on block b's selected Linear layers: no calibration.
BlockSolution HqqBlock(const Context& ctx, int64_t b);

// SmoothQuant (Xiao et al. 2022): s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha) over the layers that
// share the input, folded into the preceding RMSNorm (x / s) and the layers' columns (W * s).
// With the alpha search, fold after fold takes the alpha in {0, 0.05, ..., 1}, or no smoothing at
// all, whose block runs closest to the full-precision block (output MSE) as the W8A8 runtime runs
// it: every Linear's input quantised per token, every weight rounded as the codec rounds it.
BlockSolution SmoothBlock(const Context& ctx, CalibrationRunner& run);

// AWQ on one block. Each scaling (the preceding op, the layers after it, their shared input):
// for alpha in {0, 1/grid, ...}, scales s = AwqScales(mean|x|, alpha) are tried by running the
// block with those layers replaced by Q(W diag(s)) diag(s)^-1 and measuring the block's output
// MSE against the full-precision block; the best s is folded (preceding op / s, layers' columns
// * s). With grouped-query attention the v -> o scales are shared by the heads that read the same
// kv head (v's output channel). Then the clipping search on every layer but q and k (as the
// reference, whose attention scores are sensitive to clipping).
BlockSolution AwqBlock(const Context& ctx, CalibrationRunner& run);

}  // namespace qtool::solvers::detail
