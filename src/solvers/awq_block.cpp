// AWQ's block algorithm: the activation-aware scale search of each fold, then the clipping
// search.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <variant>

#include "blocks.hpp"
#include "qtool/solvers/awq.hpp"

namespace qtool::solvers::detail {
namespace {

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

// The clipping search's groups for a codec other than int: the columns one of its scales covers in
// each row, where it covers whole groups of them (NVFP4's 16, MX's block, NF4's block where the
// rows are whole blocks); 0 for the others (FP8's per-channel or per-tensor scale, ...), which are
// not clipped. A group's candidates are rounded as a matrix of their own, so NVFP4's global scale
// is then the group's, not the whole weight's: an approximation of its block scales' rounding.
int64_t CodecClipGroup(const Format& format, int64_t cols) {
  if (std::holds_alternative<Nvfp4Format>(format)) return 16;
  if (const auto* mx = std::get_if<MxFormat>(&format)) return mx->block;
  if (const auto* nf4 = std::get_if<Nf4Format>(&format)) {
    return cols % nf4->block == 0 ? nf4->block : 0;
  }
  return 0;
}

}  // namespace

BlockSolution AwqBlock(const Context& ctx, CalibrationRunner& run) {
  const int64_t b = run.block();
  // The codec rounds AWQ's output, so the search rounds as the codec does: the int codec's grid
  // per group, any other codec (NF4, FP8, NVFP4, MXFP4, ...) through the codec itself.
  std::optional<IntGrid> grid;
  if (std::holds_alternative<IntFormat>(ctx.options.format)) {
    grid.emplace(ctx.spec.bits, ctx.spec.symmetric, /*codec_range=*/true);
  }
  const int64_t g = ctx.spec.granularity == Granularity::kGroup ? ctx.spec.group_size : 0;
  auto rounded = [&](const RowMatrixXf& w, const std::string& layer) -> RowMatrixXf {
    if (grid) return QuantizeRtn(w, *grid, g).dequant;
    return RoundedByCodec(
        w, ctx.options.format, ctx.threads,
        fmt::format("{}: tensor \"{}\"", ctx.ck.dir().string(), WeightName(b, layer)));
  };
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
  std::vector<std::vector<std::string>> groups = LinearInputGroups(cfg);
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
        trial[l] = rounded(scaled, l).array().rowwise() / s.array();
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
  // The clipping search: a threshold per row and group of the columns one scale covers, the
  // candidates rounded by the int grid or by the codec itself.
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    for (const std::string& l : groups[gi]) {
      if (l == "self_attn.q_proj" || l == "self_attn.k_proj" || l == "self_attn.qkv_proj" ||
          !selected(l)) {
        continue;
      }
      const int64_t codec_group = grid ? 0 : CodecClipGroup(ctx.options.format, cur[l].cols());
      if (!grid && codec_group == 0) continue;
      const RowMatrixXf x =
          clip_rows[l]->Rows().array().rowwise() / input_scale[gi].transpose().array();
      const GroupRounder by_codec = [&](const RowMatrixXf& group) { return rounded(group, l); };
      cur[l] =
          grid ? AwqClip(cur[l], x, *grid, g, ctx.method.awq_clip_grid, ctx.method.awq_max_shrink)
               : AwqClip(cur[l], x, by_codec, codec_group, ctx.method.awq_clip_grid,
                         ctx.method.awq_max_shrink);
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

}  // namespace qtool::solvers::detail
