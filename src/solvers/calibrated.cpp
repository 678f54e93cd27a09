#include "qtool/solvers/calibrated.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include "qtool/core/enum_names.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/model/tokenizer.hpp"
#include "qtool/pipeline/writer.hpp"
#include "qtool/quant/activation.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/quant/pack.hpp"
#include "qtool/solvers/awq.hpp"
#include "qtool/solvers/ggml_grid.hpp"
#include "qtool/solvers/gguf_calibrated.hpp"
#include "qtool/solvers/hessian.hpp"

namespace qtool::solvers {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Calibration sample length when none is asked for (seq_len 0), or the model's context when that is
// shorter.
constexpr int64_t kDefaultSeqLen = 512;

double Since(std::chrono::steady_clock::time_point t0) {
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

std::string WeightName(int64_t block, const std::string& linear) {
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

// The Linear layers of a block in the groups that share an input, in execution order.
const std::vector<std::vector<std::string>>& InputGroups(const LlamaConfig& cfg) {
  static const std::vector<std::vector<std::string>> groups = {
      {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
      {"self_attn.o_proj"},
      {"mlp.gate_proj", "mlp.up_proj"},
      {"mlp.down_proj"}};
  static const std::vector<std::vector<std::string>> fused = {
      {"self_attn.qkv_proj"}, {"self_attn.o_proj"}, {"mlp.gate_up_proj"}, {"mlp.down_proj"}};
  return cfg.fused_projections ? fused : groups;
}

// The norm whose output is the MLP's input: Gemma's pre_feedforward_layernorm (its
// post_attention_layernorm normalises the attention's output before the residual add, so no scale
// folds into it).
std::string MlpNorm(const LlamaConfig& cfg) {
  return cfg.sandwich_norms ? "pre_feedforward_layernorm" : "post_attention_layernorm";
}

// A norm's weight as the checkpoint stores it, from the form the runtime multiplies by: Gemma's
// (1 + w) norms store w, so folding 1/s into one stores (1 + w) / s - 1.
RowMatrixXf StoredNorm(const LlamaConfig& cfg, RowMatrixXf effective) {
  if (cfg.norm_plus_one) effective.array() -= 1.0f;
  return effective;
}

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

// Mixture-of-experts blocks. GPTQ holds the Hessians of this many bytes of experts at once (at
// least one expert's).
constexpr int64_t kMoeHessianBytes = int64_t{1} << 30;

// Counts the rows a layer is shown.
class RowCounter final : public ActivationConsumer {
 public:
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override { rows_ += x.rows(); }
  int64_t rows() const { return rows_; }

 private:
  int64_t rows_ = 0;
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
                        const MoeLayerNames& names, const WeightOverrides& overrides) {
  std::vector<RowCounter> counters(names.experts.size());
  ConsumerMap consumers;
  for (size_t e = 0; e < names.experts.size(); ++e) consumers[names.experts[e][0]] = {&counters[e]};
  run.Capture(consumers, overrides);
  MoeRouting r;
  r.all = run.num_samples() * run.seq_len();
  for (size_t e = 0; e < counters.size(); ++e) {
    r.tokens.push_back(counters[e].rows());
    r.fallback.push_back(counters[e].rows() < ctx.method.moe_min_tokens);
    if (ctx.method.on_expert) {
      ctx.method.on_expert({run.block(), static_cast<int64_t>(e), r.tokens.back(),
                            r.fallback.back(), r.fallback.back() ? r.all : 0});
    }
  }
  return r;
}

// GPTQ on the feed-forward of a MoE block, after its attention: the router and the shared
// expert's gate/up/gate (all reading every token), then the experts in batches (gate/up from
// their tokens' inputs; down from the intermediate activations of the quantised gate/up), then
// the shared expert's down. Each step's inputs come from the block with the earlier steps
// quantised.
void GptqMoe(const Context& ctx, CalibrationRunner& run, const IntGrid& grid,
             const GptqOptions& opt, WeightOverrides* overrides, BlockSolution& sol) {
  const int64_t b = run.block();
  const MoeLayerNames names = MoeNames(ctx.cfg);
  auto selected = [&](const std::vector<std::string>& group) {
    return std::any_of(group.begin(), group.end(),
                       [&](const std::string& n) { return ctx.Selected(WeightName(b, n)); });
  };
  // Quantises the selected layers of `group` with the Hessian of their shared input.
  auto solve = [&](const std::vector<std::string>& group, const HessianConsumer& h,
                   const std::string& detail) {
    std::optional<GptqHessian> hessian;
    for (const std::string& name : group) {
      const std::string full = WeightName(b, name);
      if (!ctx.Selected(full)) continue;
      const auto t0 = std::chrono::steady_clock::now();
      if (!hessian) hessian = PrepareGptq(h.Hessian(), opt);
      GptqResult r = Gptq(run.Weight(name), *hessian, grid, opt);
      std::string d = detail;
      if (r.stats.damp_retries)
        d += fmt::format("{}damp {:g}", d.empty() ? "" : ", ", r.stats.damp);
      ctx.Report({b, name, r.stats.loss, Since(t0), d});
      (*overrides)[name] = r.q.dequant;
      sol.exact.emplace(full, std::move(r.q));
    }
  };
  auto current = [&](const std::string& name) {
    const auto it = overrides->find(name);
    return it != overrides->end() ? it->second : run.Weight(name);
  };
  const int64_t hidden = ctx.cfg.hidden_size, f = ctx.cfg.moe.expert_intermediate_size;
  std::vector<std::string> dense_in = {names.router};
  if (names.has_shared) {
    dense_in.insert(dense_in.end(), {names.shared[0], names.shared[1], names.shared_gate});
  }
  if (selected(dense_in)) {
    HessianConsumer h(hidden, ctx.threads);
    run.Capture({{names.router, {&h}}}, *overrides);
    solve(dense_in, h, "");
  }
  const MoeRouting routing = RouteExperts(ctx, run, names, *overrides);
  const int64_t width = std::max(hidden, f);
  const auto n = static_cast<int64_t>(names.experts.size());
  const int64_t batch = std::max<int64_t>(1, kMoeHessianBytes / (width * width * 8));
  for (int64_t e0 = 0; e0 < n; e0 += batch) {
    const int64_t e1 = std::min(n, e0 + batch);
    std::vector<std::unique_ptr<HessianConsumer>> hs;
    ConsumerMap consumers;
    for (int64_t e = e0; e < e1; ++e) {
      const auto i = static_cast<size_t>(e);
      hs.push_back(std::make_unique<HessianConsumer>(hidden, ctx.threads));
      consumers[routing.fallback[i] ? names.router : names.experts[i][0]].push_back(
          hs.back().get());
    }
    run.Capture(consumers, *overrides);
    for (int64_t e = e0; e < e1; ++e) {
      const auto i = static_cast<size_t>(e);
      solve({names.experts[i][0], names.experts[i][1]}, *hs[i - static_cast<size_t>(e0)],
            routing.Detail(i, ctx.method.moe_min_tokens));
    }
    hs.clear();
    consumers.clear();
    std::vector<std::unique_ptr<ExpertIntermediate>> fallbacks;
    for (int64_t e = e0; e < e1; ++e) {
      const auto i = static_cast<size_t>(e);
      hs.push_back(std::make_unique<HessianConsumer>(f, ctx.threads));
      if (routing.fallback[i]) {
        fallbacks.push_back(std::make_unique<ExpertIntermediate>(
            current(names.experts[i][0]), current(names.experts[i][1]),
            std::vector<ActivationConsumer*>{hs.back().get()}));
        consumers[names.router].push_back(fallbacks.back().get());
      } else {
        consumers[names.experts[i][2]].push_back(hs.back().get());
      }
    }
    run.Capture(consumers, *overrides);
    for (int64_t e = e0; e < e1; ++e) {
      const auto i = static_cast<size_t>(e);
      solve({names.experts[i][2]}, *hs[i - static_cast<size_t>(e0)],
            routing.Detail(i, ctx.method.moe_min_tokens));
    }
  }
  if (names.has_shared && selected({names.shared[2]})) {
    HessianConsumer h(ctx.cfg.moe.shared_intermediate_size, ctx.threads);
    run.Capture({{names.shared[2], {&h}}}, *overrides);
    solve({names.shared[2]}, h, "");
  }
}

BlockSolution GptqBlock(const Context& ctx, CalibrationRunner& run, WeightOverrides* overrides) {
  const IntGrid grid(ctx.spec.bits, ctx.spec.symmetric);
  GptqOptions opt = ctx.method.gptq;
  opt.group_size = ctx.spec.granularity == Granularity::kGroup ? ctx.spec.group_size : 0;
  opt.threads = ctx.threads;
  const int64_t b = run.block();
  BlockSolution sol;
  const bool moe = ctx.cfg.IsMoeLayer(b);
  for (const auto& group : InputGroups(ctx.cfg)) {
    if (moe && group[0].starts_with("mlp.")) {
      GptqMoe(ctx, run, grid, opt, overrides, sol);
      break;
    }
    HessianConsumer h(run.in_features(group[0]), ctx.threads);
    run.Capture({{group[0], {&h}}}, *overrides);
    std::optional<GptqHessian> hessian;  // factored once for the layers sharing the input
    for (const std::string& name : group) {
      const std::string full = WeightName(b, name);
      if (!ctx.Selected(full)) continue;
      const auto t0 = std::chrono::steady_clock::now();
      if (!hessian) hessian = PrepareGptq(h.Hessian(), opt);
      GptqResult r = Gptq(run.Weight(name), *hessian, grid, opt);
      ctx.Report({b, name, r.stats.loss, Since(t0),
                  r.stats.damp_retries ? fmt::format("damp {:g}", r.stats.damp) : ""});
      (*overrides)[name] = r.q.dequant;
      sol.exact.emplace(full, std::move(r.q));
    }
  }
  return sol;
}

BlockSolution HqqBlock(const Context& ctx, int64_t b) {
  HqqOptions opt = ctx.method.hqq;
  opt.bits = ctx.spec.bits;
  opt.group_size = ctx.spec.granularity == Granularity::kGroup ? ctx.spec.group_size : 0;
  opt.threads = ctx.threads;
  opt.integer_zero = true;
  BlockSolution sol;
  for (const std::string& name : BlockLinearNames(ctx.cfg, b)) {
    const std::string full = WeightName(b, name);
    if (!ctx.Selected(full)) continue;
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<int64_t> shape = ctx.ck.Get(full).info->shape;
    const std::vector<float> w = ReadTensorF32(ctx.ck, full, ctx.threads);
    const Eigen::Map<const RowMatrixXf> wm(w.data(), shape[0], shape[1]);
    HqqStats st;
    QuantizedMatrix q = Hqq(wm, opt, &st);
    ctx.Report({b, name, st.final_error, Since(t0), fmt::format("{} iterations", st.iterations)});
    sol.exact.emplace(full, std::move(q));
  }
  return sol;
}

// Keeps an evenly strided subset of a Linear layer's input rows (AWQ's clipping search runs on
// a few hundred tokens).
class RowSampler final : public ActivationConsumer {
 public:
  RowSampler(int64_t total_rows, int64_t keep)
      : stride_(std::max<int64_t>(1, total_rows / std::max<int64_t>(keep, 1))), keep_(keep) {}
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override {
    for (int64_t r = 0; r < x.rows(); ++r, ++seen_) {
      if (seen_ % stride_ != 0 || static_cast<int64_t>(rows_.size()) >= keep_) continue;
      rows_.emplace_back(x.row(r));
    }
  }
  RowMatrixXf Rows() const {
    RowMatrixXf m(static_cast<int64_t>(rows_.size()), rows_.empty() ? 0 : rows_[0].size());
    for (size_t i = 0; i < rows_.size(); ++i) m.row(static_cast<int64_t>(i)) = rows_[i];
    return m;
  }

 private:
  int64_t stride_, keep_, seen_ = 0;
  std::vector<Eigen::RowVectorXf> rows_;
};

// SmoothQuant (Xiao et al. 2022): s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha) over the layers that
// share the input, folded into the preceding RMSNorm (x / s) and the layers' columns (W * s).
// With the alpha search, fold after fold takes the alpha in {0, 0.05, ..., 1}, or no smoothing at
// all, whose block runs closest to the full-precision block (output MSE) as the W8A8 runtime runs
// it: every Linear's input quantised per token, every weight rounded as the codec rounds it.
BlockSolution SmoothBlock(const Context& ctx, CalibrationRunner& run) {
  const int64_t b = run.block();
  QTOOL_CHECK(!ctx.cfg.IsMoeLayer(b), OptionError,
              "SmoothQuant is not implemented for mixture-of-experts blocks (block {})", b);
  const IntGrid grid(ctx.spec.bits, ctx.spec.symmetric, /*codec_range=*/true);
  const int64_t g = ctx.spec.granularity == Granularity::kGroup ? ctx.spec.group_size : 0;
  const auto& groups = InputGroups(ctx.cfg);
  const std::vector<std::pair<std::string, std::vector<std::string>>> folds = {
      {"input_layernorm", groups[0]}, {MlpNorm(ctx.cfg), groups[2]}};
  std::vector<std::unique_ptr<ChannelStats>> stats;
  ConsumerMap consumers;
  for (const auto& [norm, layers] : folds) {
    stats.push_back(std::make_unique<ChannelStats>(run.in_features(layers[0])));
    consumers[layers[0]].push_back(stats.back().get());
  }
  const bool search = ctx.method.alpha_search;
  RowMatrixXf ref;
  if (search) {
    ref = run.Run(consumers);
  } else {
    run.Capture(consumers);
  }
  // The block as the search runs it: every Linear rounded, in the basis of the folds so far.
  WeightOverrides rounded;
  if (search) {
    for (const std::string& n : BlockLinearNames(ctx.cfg)) {
      rounded[n] = QuantizeRtn(run.Weight(n), grid, g).dequant;
    }
  }
  auto block_error = [&](const WeightOverrides& trial) {
    return (run.Run({}, trial, /*int8_inputs=*/true) - ref).squaredNorm() /
           static_cast<double>(ref.size());
  };
  BlockSolution sol;
  for (size_t f = 0; f < folds.size(); ++f) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto& [norm, layers] = folds[f];
    const RowMatrixXf norm_w = run.Weight(norm);
    std::vector<RowMatrixXf> w;
    for (const std::string& l : layers) w.push_back(run.Weight(l));
    const Eigen::VectorXf act_max = stats[f]->MaxAbs().cast<float>();
    Eigen::VectorXf s = SmoothQuantScales(act_max, w, ctx.method.alpha);
    double loss = 0;
    std::string detail = fmt::format("alpha {:.2f}", ctx.method.alpha);
    if (search) {
      loss = block_error(rounded);
      s = Eigen::VectorXf::Ones(act_max.size());
      detail = "no smoothing";
      for (int k = 0; k <= kSmoothAlphaGrid; ++k) {
        const double alpha = static_cast<double>(k) / kSmoothAlphaGrid;
        const Eigen::VectorXf cand = SmoothQuantScales(act_max, w, alpha);
        WeightOverrides trial = rounded;
        trial[norm] = norm_w.array().rowwise() / cand.transpose().array();
        for (size_t i = 0; i < layers.size(); ++i) {
          trial[layers[i]] =
              QuantizeRtn(w[i].array().rowwise() * cand.transpose().array(), grid, g).dequant;
        }
        const double err = block_error(trial);
        if (err < loss) {
          loss = err;
          s = cand;
          detail = fmt::format("alpha {:.2f}", alpha);
        }
      }
    }
    RowMatrixXf nw = norm_w.array().rowwise() / s.transpose().array();
    if (search) rounded[norm] = nw;
    sol.values[BlockTensorName(b, norm) + ".weight"] = StoredNorm(ctx.cfg, nw);
    for (size_t i = 0; i < layers.size(); ++i) {
      w[i].array().rowwise() *= s.transpose().array();
      if (search) rounded[layers[i]] = QuantizeRtn(w[i], grid, g).dequant;
      sol.rescaled[WeightName(b, layers[i])] = {Eigen::VectorXf::Ones(w[i].rows()), s};
      sol.values[WeightName(b, layers[i])] = std::move(w[i]);
    }
    ctx.Report({b, norm, loss, Since(t0),
                fmt::format("{}, scales {:.3g}..{:.3g}", detail, s.minCoeff(), s.maxCoeff())});
  }
  return sol;
}

// AWQ on one block. Each scaling (the preceding op, the layers after it, their shared input):
// for alpha in {0, 1/grid, ...}, scales s = AwqScales(mean|x|, alpha) are tried by running the
// block with those layers replaced by Q(W diag(s)) diag(s)^-1 and measuring the block's output
// MSE against the full-precision block; the best s is folded (preceding op / s, layers' columns
// * s). With grouped-query attention the v -> o scales are shared by the heads that read the same
// kv head (v's output channel). Then the clipping search on every layer but q and k (as the
// reference, whose attention scores are sensitive to clipping).
BlockSolution AwqBlock(const Context& ctx, CalibrationRunner& run) {
  const int64_t b = run.block();
  // The codec rounds AWQ's output, so the search rounds as the codec does.
  const IntGrid grid(ctx.spec.bits, ctx.spec.symmetric, /*codec_range=*/true);
  const int64_t g = ctx.spec.granularity == Granularity::kGroup ? ctx.spec.group_size : 0;
  const int64_t total_rows = run.num_samples() * run.seq_len();
  const LlamaConfig& cfg = ctx.cfg;
  const std::string mlp_norm = MlpNorm(cfg);
  const int64_t kv_dim = cfg.num_kv_heads * cfg.head_dim;
  // The op before each group: a norm, or the Linear whose output rows [row0, row0 + n) are the
  // group's input (v in Phi-3's fused qkv_proj follows q and k; up in gate_up_proj follows gate).
  struct Fold {
    std::string prev;
    size_t group;
    bool norm;
    int64_t row0 = 0;
    bool local = false;  // scored by the group's own output error, not the block's
  };
  const bool fused = cfg.fused_projections;
  std::vector<std::vector<std::string>> groups = InputGroups(cfg);
  std::vector<Fold> folds = {
      {"input_layernorm", 0, true},
      {fused ? "self_attn.qkv_proj" : "self_attn.v_proj", 1, false,
       fused ? cfg.num_heads * cfg.head_dim + kv_dim : 0},
      {mlp_norm, 2, true},
      {fused ? "mlp.gate_up_proj" : "mlp.up_proj", 3, false, fused ? cfg.intermediate_size : 0}};
  const bool moe = ctx.cfg.IsMoeLayer(b);
  MoeLayerNames names;
  MoeRouting routing;
  if (moe) {
    // The post-attention norm feeds the router, every expert and the shared expert; each
    // expert's (and the shared expert's) up -> down pair is scaled on its own tokens.
    names = MoeNames(ctx.cfg);
    routing = RouteExperts(ctx, run, names, {});
    groups.resize(2);
    folds.resize(2);
    std::vector<std::string> in = {names.router};
    for (const auto& e : names.experts) in.insert(in.end(), {e[0], e[1]});
    if (names.has_shared)
      in.insert(in.end(), {names.shared[0], names.shared[1], names.shared_gate});
    groups.push_back(in);
    folds.push_back({mlp_norm, 2, true});
    for (const auto& e : names.experts) {
      groups.push_back({e[2]});
      folds.push_back({e[1], groups.size() - 1, false, 0, true});
    }
    if (names.has_shared) {
      groups.push_back({names.shared[2]});
      folds.push_back({names.shared[1], groups.size() - 1, false, 0, true});
    }
  }
  // Per group: statistics and a sample of its input rows. Per expert gate/up (MoE): a sample of
  // the expert's own input rows for the clipping search.
  std::vector<std::unique_ptr<ChannelStats>> stats;
  std::vector<std::unique_ptr<RowSampler>> samples;
  std::vector<std::unique_ptr<ExpertIntermediate>> fallbacks;
  std::map<std::string, RowSampler*> clip_rows;
  ConsumerMap consumers;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const std::string& first = groups[gi][0];
    stats.push_back(std::make_unique<ChannelStats>(run.in_features(first)));
    // An expert's down projection sees its tokens, or with the fallback every token.
    int64_t rows = total_rows;
    size_t expert = names.experts.size();
    for (size_t e = 0; e < names.experts.size(); ++e) {
      if (first == names.experts[e][2]) expert = e;
    }
    const bool fallback = expert < names.experts.size() && routing.fallback[expert];
    if (expert < names.experts.size() && !fallback) rows = routing.tokens[expert];
    samples.push_back(std::make_unique<RowSampler>(rows, ctx.method.awq_clip_tokens));
    if (fallback) {
      fallbacks.push_back(std::make_unique<ExpertIntermediate>(
          run.Weight(names.experts[expert][0]), run.Weight(names.experts[expert][1]),
          std::vector<ActivationConsumer*>{stats.back().get(), samples.back().get()}));
      consumers[names.router].push_back(fallbacks.back().get());
    } else {
      consumers[first].insert(consumers[first].end(), {stats.back().get(), samples.back().get()});
    }
    for (const std::string& l : groups[gi]) clip_rows[l] = samples.back().get();
  }
  std::vector<std::unique_ptr<RowSampler>> expert_samples;
  for (size_t e = 0; e < names.experts.size(); ++e) {
    if (routing.fallback[e]) continue;  // the router's sample: every token
    expert_samples.push_back(
        std::make_unique<RowSampler>(routing.tokens[e], ctx.method.awq_clip_tokens));
    consumers[names.experts[e][0]].push_back(expert_samples.back().get());
    clip_rows[names.experts[e][0]] = clip_rows[names.experts[e][1]] = expert_samples.back().get();
  }
  const RowMatrixXf ref = run.Run(consumers);
  WeightOverrides cur;  // every weight of the block, in the current (rescaled) basis
  std::map<std::string, Rescaling> rescaled;
  for (const std::string& n : run.LinearNames()) {
    cur[n] = run.Weight(n);
    rescaled[n] = {Eigen::VectorXf::Ones(cur[n].rows()), Eigen::VectorXf::Ones(cur[n].cols())};
  }
  for (const std::string& n : {std::string("input_layernorm"), mlp_norm}) cur[n] = run.Weight(n);

  // o_proj input channel j reads v_proj output channel kv_of[j].
  const int64_t o_in = run.in_features("self_attn.o_proj");
  std::vector<int64_t> kv_of(static_cast<size_t>(o_in));
  const int64_t rep = std::max<int64_t>(1, cfg.num_heads / std::max<int64_t>(cfg.num_kv_heads, 1));
  for (int64_t j = 0; j < o_in; ++j) {
    kv_of[static_cast<size_t>(j)] = (j / cfg.head_dim / rep) * cfg.head_dim + j % cfg.head_dim;
  }
  auto selected = [&](const std::string& l) { return ctx.Selected(WeightName(b, l)); };
  std::vector<Eigen::VectorXf> input_scale(groups.size());
  for (const Fold& f : folds) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<std::string>& layers = groups[f.group];
    Eigen::VectorXf mean = stats[f.group]->MeanAbs().cast<float>();
    const bool v_to_o = f.group == 1;
    if (v_to_o && ctx.ck.Find(BlockTensorName(b, f.prev) + ".bias") != nullptr) {
      // Folding 1/s into v's rows (in qkv_proj's with fused layers) would need its bias scaled
      // too (Qwen2); this fold is left out.
      input_scale[f.group] = Eigen::VectorXf::Ones(o_in);
      ctx.Report({b, layers.front(), 0, Since(t0), "no scaling: v_proj has a bias"});
      continue;
    }
    Eigen::VectorXf mean_prev = mean;  // per output channel of the preceding op
    if (v_to_o) {
      mean_prev = Eigen::VectorXf::Zero(kv_dim);
      for (int64_t j = 0; j < o_in; ++j) mean_prev[kv_of[static_cast<size_t>(j)]] += mean[j] / rep;
    }
    auto expand = [&](const Eigen::VectorXf& s_prev) {
      if (!v_to_o) return s_prev;
      Eigen::VectorXf s(o_in);
      for (int64_t j = 0; j < o_in; ++j) s[j] = s_prev[kv_of[static_cast<size_t>(j)]];
      return s;
    };
    double best = INFINITY, best_alpha = 0;
    Eigen::VectorXf best_s = Eigen::VectorXf::Ones(mean_prev.size());
    for (int k = 0; k < ctx.method.awq_grid; ++k) {
      const double alpha = static_cast<double>(k) / ctx.method.awq_grid;
      const Eigen::VectorXf s_prev = AwqScales(mean_prev, alpha);
      const Eigen::RowVectorXf s = expand(s_prev).transpose();
      WeightOverrides trial = cur;
      for (const std::string& l : layers) {
        if (!selected(l)) continue;  // kept in full precision: the scaling is exact
        const RowMatrixXf scaled = cur[l].array().rowwise() * s.array();
        trial[l] = QuantizeRtn(scaled, grid, g).dequant.array().rowwise() / s.array();
      }
      double err = 0;
      if (f.local) {
        const RowMatrixXf x = samples[f.group]->Rows();
        for (const std::string& l : layers) {
          err += (x * (cur[l] - trial[l]).transpose()).squaredNorm() /
                 static_cast<double>(std::max<Eigen::Index>(1, x.rows() * cur[l].rows()));
        }
      } else {
        err = (run.Run({}, trial) - ref).squaredNorm() / static_cast<double>(ref.size());
      }
      if (err < best) {
        best = err;
        best_alpha = alpha;
        best_s = s_prev;
      }
    }
    const Eigen::RowVectorXf s = expand(best_s).transpose();
    for (const std::string& l : layers) {
      cur[l].array().rowwise() *= s.array();
      rescaled[l].cols.array() *= s.transpose().array();
    }
    if (f.norm) {
      cur[f.prev].array().rowwise() /= best_s.transpose().array();
    } else {
      // The preceding Linear's output rows.
      const auto n = static_cast<int64_t>(best_s.size());
      cur[f.prev].middleRows(f.row0, n).array().colwise() /= best_s.array();
      rescaled[f.prev].rows.segment(f.row0, n).array() /= best_s.array();
    }
    input_scale[f.group] = s.transpose();
    std::string detail = fmt::format("alpha {:.2f}", best_alpha);
    for (size_t e = 0; e < names.experts.size(); ++e) {
      if (layers.front() == names.experts[e][2]) {
        detail += ", " + routing.Detail(e, ctx.method.moe_min_tokens);
      }
    }
    ctx.Report({b, layers.front(), best, Since(t0), detail});
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    for (const std::string& l : groups[gi]) {
      if (l == "self_attn.q_proj" || l == "self_attn.k_proj" || l == "self_attn.qkv_proj" ||
          !selected(l)) {
        continue;
      }
      const RowMatrixXf x =
          clip_rows[l]->Rows().array().rowwise() / input_scale[gi].transpose().array();
      cur[l] = AwqClip(cur[l], x, grid, g, ctx.method.awq_clip_grid, ctx.method.awq_max_shrink);
    }
  }
  BlockSolution sol;
  for (auto& [name, w] : cur) {
    const bool is_norm = name == "input_layernorm" || name == mlp_norm;
    sol.values[BlockTensorName(b, name) + ".weight"] =
        is_norm ? StoredNorm(cfg, std::move(w)) : std::move(w);
  }
  for (auto& [name, r] : rescaled) sol.rescaled[WeightName(b, name)] = std::move(r);
  return sol;
}

// Codes and group parameters in the "int" codec's layout: qweight, scales, [zeros], [g_idx].
std::vector<std::vector<std::byte>> StoreExact(const Context& ctx, const QuantizedMatrix& q) {
  const auto cols = static_cast<int64_t>(q.g_idx.size());
  const int64_t rows = cols ? static_cast<int64_t>(q.codes.size()) / cols : 0;
  const QuantSpec& spec = ctx.spec;
  const int64_t glen = spec.GroupLen(cols), groups = spec.GroupsPerRow(cols);
  QTOOL_CHECK(q.groups == groups, OptionError,
              "solver produced {} groups per row, the codec stores {}", q.groups, groups);
  std::vector<std::vector<std::byte>> parts;
  for (const TensorSpec& p : MakeCodec(ctx.options.codec, rows, cols)->Layout("")) {
    parts.emplace_back(p.nbytes());
  }
  if (ctx.options.codec.value("g_idx", false)) {
    std::memcpy(parts.back().data(), q.g_idx.data(), q.g_idx.size() * 4);  // g_idx: the last part
  } else {
    for (int64_t c = 0; c < cols; ++c) {
      QTOOL_CHECK(q.g_idx[static_cast<size_t>(c)] == c / glen, OptionError,
                  "the codec record has no g_idx: groups must be in column order");
    }
  }
  const int64_t row_bytes = PackedBytes(cols, spec.bits);
  auto* qweight = reinterpret_cast<uint8_t*>(parts[0].data());
  auto* scales = reinterpret_cast<float*>(parts[1].data());
  for (int64_t r = 0; r < rows; ++r) {
    PackCodes(&q.codes[static_cast<size_t>(r * cols)], cols, spec.bits, qweight + r * row_bytes);
    for (int64_t g = 0; g < groups; ++g) {
      const GridParams& p = q.params[static_cast<size_t>(r * groups + g)];
      scales[r * groups + g] = p.scale;
      if (!spec.symmetric) {
        reinterpret_cast<uint8_t*>(parts[2].data())[r * groups + g] = static_cast<uint8_t>(p.zero);
      } else {
        QTOOL_DASSERT(p.zero == static_cast<float>(spec.code_offset()));
      }
    }
  }
  return parts;
}

// What the writer takes of a block's solution: the exact codes in the codec's layout, the values
// and rescalings viewed in `sol`.
SolvedTensors Solved(const Context& ctx, const BlockSolution& sol) {
  SolvedTensors out;
  for (const auto& [name, q] : sol.exact) out[name].stored = StoreExact(ctx, q);
  for (const auto& [name, v] : sol.values) {
    out[name].values = {v.data(), static_cast<size_t>(v.size())};
  }
  for (const auto& [name, r] : sol.rescaled) {
    out[name].row_scale = {r.rows.data(), static_cast<size_t>(r.rows.size())};
    out[name].col_scale = {r.cols.data(), static_cast<size_t>(r.cols.size())};
  }
  return out;
}

std::vector<std::vector<int32_t>> CalibrationSamples(const fs::path& model_dir, const Model& model,
                                                     const CalibratedOptions& method) {
  const CalibrationData data =
      ReadCalibrationData(method.calib_text, model_dir, model.config().bos_token_id);
  CalibrationOptions c = method.calib;
  c.bos = data.bos;
  if (c.seq_len == 0) {
    c.seq_len = std::min<int64_t>(kDefaultSeqLen, model.config().max_position_embeddings);
  }
  std::vector<std::vector<int32_t>> samples = DrawCalibrationSamples(data.tokens, c);
  if (method.on_calibration_data) method.on_calibration_data(data, samples);
  return samples;
}

}  // namespace

namespace {

constexpr EnumName<Method> kMethodNames[] = {{Method::kGptq, "gptq"},
                                             {Method::kAwq, "awq"},
                                             {Method::kSmoothQuant, "smoothquant"},
                                             {Method::kHqq, "hqq"}};

}  // namespace

Method ParseMethod(const std::string& name) {
  if (const auto m = ValueOf(kMethodNames, name)) return *m;
  throw OptionError(
      fmt::format("unknown method \"{}\" (known: rtn, {})", name, JoinNames(kMethodNames)));
}

const char* MethodName(Method m) { return NameOf(kMethodNames, m); }

QuantizeReport QuantizeCalibrated(const fs::path& model_dir, const fs::path& out,
                                  const QuantizeOptions& options, const CalibratedOptions& method,
                                  const LayerFn& on_layer, const ProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  QTOOL_CHECK(options.codec.value("codec", "") == "int", OptionError,
              "--method {} writes the int codec (--format int), not {}", MethodName(method.method),
              options.codec.dump());
  const QuantSpec spec = IntCodec::SpecFromRecord(options.codec);
  QTOOL_CHECK(spec.granularity != Granularity::kTensor, OptionError,
              "--method {} needs group or channel granularity", MethodName(method.method));
  QTOOL_CHECK(!spec.flat_groups, OptionError,
              "--method {} keeps groups inside rows: drop --flat-groups",
              MethodName(method.method));
  QTOOL_CHECK(method.method != Method::kHqq || !spec.symmetric, OptionError,
              "HQQ optimises zero-points: use an asymmetric format (--asym)");
  QTOOL_CHECK(method.moe_min_tokens >= 1, OptionError,
              "the minimum of calibration tokens per expert must be at least 1, got {}",
              method.moe_min_tokens);
  CheckpointWriter::CheckOutputPath(out, options.overwrite);
  ModelOptions mopts;
  mopts.threads = options.threads;
  mopts.weight_cache_bytes = 0;  // one block at a time
  const Model model(model_dir, mopts);
  const Checkpoint& ck = model.checkpoint();
  QuantizeOptions write_options = options;
  // W8A8: SmoothQuant's point is the activations, quantised per token at run time.
  if (method.method == Method::kSmoothQuant) write_options.activations = Int8TokenActivations();
  // GPTQ's act-order with groups fitted on the way: each column's group is stored (g_idx).
  if (method.method == Method::kGptq && method.gptq.act_order && !method.gptq.static_groups &&
      spec.granularity == Granularity::kGroup) {
    write_options.codec["g_idx"] = true;
  }
  const Context ctx{
      ck, model.config(), write_options, method, on_layer, ResolveThreads(options.threads), spec};
  QuantizedCheckpointWriter writer(ck, out, write_options, WriteOrder::kBlocks, progress);
  writer.WriteThrough(-1);
  const int64_t blocks = model.config().num_layers;
  if (!NeedsCalibration(method.method)) {
    for (int64_t b = 0; b < blocks; ++b) writer.WriteThrough(b, Solved(ctx, HqqBlock(ctx, b)));
    return writer.Finish(start);
  }
  CalibrationRunner run(model, CalibrationSamples(model_dir, model, method));
  while (!run.done()) {
    const int64_t b = run.block();
    WeightOverrides overrides;
    BlockSolution sol;
    switch (method.method) {
      case Method::kGptq:
        sol = GptqBlock(ctx, run, &overrides);
        break;
      case Method::kAwq:
        sol = AwqBlock(ctx, run);
        break;
      case Method::kSmoothQuant:
        sol = SmoothBlock(ctx, run);
        break;
      case Method::kHqq:
        break;
    }
    writer.WriteThrough(b, Solved(ctx, sol));
    run.Advance(overrides);
  }
  return writer.Finish(start);
}

void SolveGgufCalibrated(const Model& model, const fs::path& model_dir,
                         const CalibratedOptions& method, int threads, const GgmlTypeFn& type_of,
                         const GgmlBlocksFn& sink, const LayerFn& on_layer) {
  QTOOL_CHECK(method.method == Method::kGptq || method.method == Method::kAwq, OptionError,
              "--method {} cannot write GGUF (gptq and awq can)", MethodName(method.method));
  QTOOL_CHECK(!method.gptq.act_order, OptionError,
              "--act-order cannot be written to GGUF: a block's scales belong to consecutive "
              "columns and llama.cpp has no column permutation (g_idx)");
  GptqOptions opt = method.gptq;
  opt.static_groups = false;
  opt.threads = ResolveThreads(threads);
  CalibrationRunner run(model, CalibrationSamples(model_dir, model, method));
  if (method.method == Method::kAwq) {
    // AWQ's scale and clipping searches round with the int grid of as many bits as the query
    // projection's type has per weight (rounded down), asymmetric, in groups of 32 (a proxy of each
    // ggml type's rounding); the rescaled weights are then written by each tensor's reference
    // quantiser and the rescaled norms in F32.
    const RowMatrixXf q0 = run.Weight("self_attn.q_proj");
    const ggml::Type t0 = type_of(WeightName(0, "self_attn.q_proj"), q0.rows(), q0.cols());
    QuantSpec spec;
    const ggml::TypeTraits& tr = ggml::Traits(t0);
    spec.bits = std::clamp(8 * tr.type_size / tr.block_size, 2, 8);  // bits per weight, floor
    spec.symmetric = false;
    spec.group_size = 32;
    QuantizeOptions qopts;
    qopts.threads = threads;
    const Context ctx{model.checkpoint(), model.config(), qopts, method,
                      on_layer,           opt.threads,    spec};
    while (!run.done()) {
      BlockSolution sol = AwqBlock(ctx, run);
      for (const auto& [full, w] : sol.values) {
        const ggml::Type type =
            w.rows() == 1 ? ggml::Type::kF32 : type_of(full, w.rows(), w.cols());
        const size_t row_bytes = ggml::RowBytes(type, static_cast<uint64_t>(w.cols()));
        std::vector<std::byte> blocks(row_bytes * static_cast<size_t>(w.rows()));
        for (int64_t r = 0; r < w.rows(); ++r) {
          ggml::Quantize(type, &w(r, 0), blocks.data() + static_cast<size_t>(r) * row_bytes,
                         w.cols());
        }
        sink(full, type, std::move(blocks));
      }
      run.Advance();
    }
    return;
  }
  while (!run.done()) {
    const int64_t b = run.block();
    WeightOverrides overrides;
    QTOOL_CHECK(!model.config().IsMoeLayer(b), OptionError,
                "--method gptq with --output-format gguf does not handle mixture-of-experts blocks "
                "(block {})",
                b);
    for (const auto& group : InputGroups(model.config())) {
      HessianConsumer h(run.in_features(group[0]), opt.threads);
      run.Capture({{group[0], {&h}}}, overrides);
      std::optional<GptqHessian> hessian;  // factored once for the layers sharing the input
      for (const std::string& name : group) {
        const std::string full = WeightName(b, name);
        const RowMatrixXf w = run.Weight(name);
        const ggml::Type type = type_of(full, w.rows(), w.cols());
        const auto t0 = std::chrono::steady_clock::now();
        if (!GgmlGrid::Supports(type)) {
          // Stored as the export writes it: later layers see those values.
          RowMatrixXf back(w.rows(), w.cols());
          std::vector<std::byte> q(ggml::RowBytes(type, static_cast<uint64_t>(w.cols())));
          for (int64_t r = 0; r < w.rows(); ++r) {
            ggml::Quantize(type, &w(r, 0), q.data(), w.cols());
            ggml::Dequantize(type, q.data(), &back(r, 0), w.cols());
          }
          overrides[name] = std::move(back);
          if (on_layer) on_layer({b, name, 0, Since(t0), std::string(ggml::Traits(type).name)});
          continue;
        }
        if (!hessian) hessian = PrepareGptq(h.Hessian(), opt);
        GgmlGrid grid(type, w.rows(), w.cols());
        GptqResult r = Gptq(w, *hessian, grid, opt);
        std::string detail(ggml::Traits(type).name);
        if (r.stats.damp_retries) detail += fmt::format(", damp {:g}", r.stats.damp);
        if (on_layer) on_layer({b, name, r.stats.loss, Since(t0), detail});
        sink(full, type, grid.Write(r.q.codes));
        overrides[name] = std::move(r.q.dequant);
      }
    }
    run.Advance(overrides);
  }
}

}  // namespace qtool::solvers
