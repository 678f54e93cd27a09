// GPTQ's block algorithm: the Hessians of each input group, captured with the earlier groups
// quantised, and mixture-of-experts feed-forwards expert by expert.
#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>

#include "blocks.hpp"
#include "qtool/solvers/gptq.hpp"

namespace qtool::solvers::detail {
namespace {

// Mixture-of-experts blocks. GPTQ holds the Hessians of this many bytes of experts at once (at
// least one expert's).
constexpr int64_t kMoeHessianBytes = int64_t{1} << 30;

// The int grid's step: quantises the selected layers of `group` with the Hessian of their shared
// input (factored once for them all); `detail` heads each layer's report.
void SolveGroup(const Context& ctx, const CalibrationRunner& run, const IntGrid& grid,
                const GptqOptions& opt, const std::vector<std::string>& group,
                const HessianConsumer& h, const std::string& detail, WeightOverrides* overrides,
                BlockSolution& sol) {
  const int64_t b = run.block();
  std::optional<GptqHessian> hessian;
  for (const std::string& name : group) {
    const std::string full = WeightName(b, name);
    if (!ctx.Selected(full)) continue;
    const auto t0 = std::chrono::steady_clock::now();
    if (!hessian) hessian = PrepareGptq(h.Hessian(), opt);
    GptqResult r = Gptq(run.Weight(name), *hessian, grid, opt);
    std::string d = detail;
    if (r.stats.damp_retries) d += fmt::format("{}damp {:g}", d.empty() ? "" : ", ", r.stats.damp);
    ctx.Report({b, name, r.stats.loss, Since(t0), d});
    (*overrides)[name] = r.q.dequant;
    sol.exact.emplace(full, std::move(r.q));
  }
}

// GPTQ on the feed-forward of a MoE block, after its attention: the router and the shared
// expert's gate/up/gate (all reading every token), then the experts in batches (gate/up from
// their tokens' inputs; down from the intermediate activations of the quantised gate/up), then
// the shared expert's down. Each step's inputs come from the block with the earlier steps
// quantised by `solve`.
void GptqMoe(const Context& ctx, CalibrationRunner& run, const GptqGroupFn& solve,
             const WeightOverrides& overrides) {
  const int64_t b = run.block();
  const MoeLayerNames names = MoeNames(ctx.cfg);
  auto selected = [&](const std::vector<std::string>& group) {
    return std::any_of(group.begin(), group.end(),
                       [&](const std::string& n) { return ctx.Selected(WeightName(b, n)); });
  };
  auto current = [&](const std::string& name) {
    const auto it = overrides.find(name);
    return it != overrides.end() ? it->second : run.Weight(name);
  };
  const int64_t hidden = ctx.cfg.hidden_size, f = ctx.cfg.moe.expert_intermediate_size;
  std::vector<std::string> dense_in = {names.router};
  if (names.has_shared) {
    dense_in.insert(dense_in.end(), {names.shared[0], names.shared[1], names.shared_gate});
  }
  if (selected(dense_in)) {
    HessianConsumer h(hidden, ctx.threads);
    run.Capture({{names.router, {&h}}}, overrides);
    solve(dense_in, h, "");
  }
  const MoeRouting routing = RouteExperts(ctx, run, names, overrides);
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
    run.Capture(consumers, overrides);
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
    run.Capture(consumers, overrides);
    for (int64_t e = e0; e < e1; ++e) {
      const auto i = static_cast<size_t>(e);
      solve({names.experts[i][2]}, *hs[i - static_cast<size_t>(e0)],
            routing.Detail(i, ctx.method.moe_min_tokens));
    }
  }
  if (names.has_shared && selected({names.shared[2]})) {
    HessianConsumer h(ctx.cfg.moe.shared_intermediate_size, ctx.threads);
    run.Capture({{names.shared[2], {&h}}}, overrides);
    solve({names.shared[2]}, h, "");
  }
}

}  // namespace

void GptqLayers(const Context& ctx, CalibrationRunner& run, const GptqGroupFn& solve,
                const WeightOverrides& overrides) {
  const bool moe = ctx.cfg.IsMoeLayer(run.block());
  for (const auto& group : LinearInputGroups(ctx.cfg)) {
    if (moe && group[0].starts_with("mlp.")) {
      GptqMoe(ctx, run, solve, overrides);
      break;
    }
    HessianConsumer h(run.in_features(group[0]), ctx.threads);
    run.Capture({{group[0], {&h}}}, overrides);
    solve(group, h, "");
  }
}

BlockSolution GptqBlock(const Context& ctx, CalibrationRunner& run, WeightOverrides* overrides) {
  const IntGrid grid(ctx.spec.bits, ctx.spec.symmetric);
  GptqOptions opt = ctx.method.gptq;
  opt.group_size = ctx.spec.granularity == Granularity::kGroup ? ctx.spec.group_size : 0;
  opt.threads = ctx.threads;
  BlockSolution sol;
  GptqLayers(
      ctx, run,
      [&](const std::vector<std::string>& group, const HessianConsumer& h,
          const std::string& detail) {
        SolveGroup(ctx, run, grid, opt, group, h, detail, overrides, sol);
      },
      *overrides);
  return sol;
}

}  // namespace qtool::solvers::detail
