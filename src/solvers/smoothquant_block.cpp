// SmoothQuant's block algorithm: the per-channel scales folded into the norms and the layers
// after them, with the optional alpha search.
#include <chrono>
#include <memory>
#include <utility>

#include "blocks.hpp"
#include "qtool/core/error.hpp"
#include "qtool/solvers/awq.hpp"

namespace qtool::solvers::detail {

BlockSolution SmoothBlock(const Context& ctx, CalibrationRunner& run) {
  const int64_t b = run.block();
  QTOOL_CHECK(!ctx.cfg.IsMoeLayer(b), OptionError,
              "SmoothQuant is not implemented for mixture-of-experts blocks (block {})", b);
  const IntGrid grid(ctx.spec.bits, ctx.spec.symmetric, /*codec_range=*/true);
  const int64_t g = ctx.spec.granularity == Granularity::kGroup ? ctx.spec.group_size : 0;
  const auto& groups = LinearInputGroups(ctx.cfg);
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

}  // namespace qtool::solvers::detail
