// HQQ's block algorithm: each selected Linear layer solved on its own, with no calibration.
#include <chrono>
#include <vector>

#include "blocks.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/solvers/hqq.hpp"

namespace qtool::solvers::detail {

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

}  // namespace qtool::solvers::detail
