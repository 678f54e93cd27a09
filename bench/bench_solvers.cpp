// GPTQ on one 4096 x 4096 layer with its Hessian given (INT4 g128), per phase GFLOP/s, timed as
// a layer after the first of its shape (scratch buffers reused; the first layer's time is reported
// too), and the Hessian accumulation of 2048 input rows. Baseline: round-to-nearest on the same
// weights. The layer is the tests' synthetic one (heavy-tailed correlated inputs with outlier
// channels); the GPTQ benchmark also reports both methods' relative output error
// ||X W^T - X W^^T||^2/||X W^T||^2.
#include <benchmark/benchmark.h>

#include <chrono>
#include <random>

#include "../tests/solvers/synthetic_layer.hpp"
#include "qtool/solvers/gptq.hpp"
#include "qtool/solvers/hessian.hpp"

namespace qtool::solvers {
namespace {

constexpr int kThreads = 2;

void BM_HessianAccumulate(benchmark::State& state) {
  const int64_t n = state.range(0), cols = state.range(1);
  const RowMatrixXf x = synthetic::HeavyTailedInputs(n, cols, 1);
  for (auto _ : state) {
    HessianAccumulator acc(cols, kThreads);
    acc.Add(x);
    benchmark::DoNotOptimize(acc.Hessian().data());
  }
  const double flop = static_cast<double>(cols) * cols * n;  // lower triangle only
  state.counters["GFLOP/s"] = benchmark::Counter(flop * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_HessianAccumulate)->Args({2048, 4096})->Unit(benchmark::kMillisecond)->UseRealTime();

// ||X D^T||^2 = n/2 tr(D H D^T) for D = W - W^, relative to the same for W.
double RelativeOutputError(const RowMatrixXf& w, const RowMatrixXf& wq, const RowMatrixXf& h) {
  auto energy = [&](const RowMatrixXf& d) {
    RowMatrixXf dh = RowMatrixXf::Zero(d.rows(), d.cols());
    Gemm(d.rows(), d.cols(), d.cols(), 1.0f, {d.data(), d.cols(), 1}, {h.data(), h.cols(), 1},
         dh.data(), dh.cols(), kThreads);
    return dh.cwiseProduct(d).cast<double>().sum();
  };
  const RowMatrixXf d = w - wq;
  return energy(d) / energy(w);
}

void BM_Gptq(benchmark::State& state) {
  const int64_t n = state.range(0);
  const RowMatrixXf w = synthetic::GaussianWeights(n, n, 2);
  const RowMatrixXf x = synthetic::HeavyTailedInputs(2048, n, 3);
  HessianAccumulator acc(n, kThreads);
  acc.Add(x);
  const RowMatrixXf h = acc.Hessian();
  const IntGrid grid(4, true);
  GptqOptions opt;
  opt.group_size = 128;
  opt.threads = kThreads;
  GptqStats st;
  // One layer untimed first: a model's layers of one shape reuse its scratch buffers (the first
  // layer's allocation is reported apart, as first_layer_s).
  const auto t0 = std::chrono::steady_clock::now();
  RowMatrixXf wq = Gptq(w, h, grid, opt).q.dequant;
  const double first_layer =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (auto _ : state) {
    GptqResult r = Gptq(w, h, grid, opt);
    st = r.stats;
    wq = std::move(r.q.dequant);
  }
  state.counters["err_gptq"] = RelativeOutputError(w, wq, h);
  state.counters["err_rtn"] = RelativeOutputError(w, QuantizeRtn(w, grid, 128).dequant, h);
  state.counters["first_layer_s"] = first_layer;
  state.counters["chol_s"] = st.seconds_cholesky;
  state.counters["chol_GFLOP/s"] = st.flop_cholesky / st.seconds_cholesky * 1e-9;
  state.counters["sweep_s"] = st.seconds_sweep;
  state.counters["sweep_GFLOP/s"] = st.flop_sweep / st.seconds_sweep * 1e-9;
}
BENCHMARK(BM_Gptq)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

void BM_Rtn(benchmark::State& state) {
  const int64_t n = state.range(0);
  const RowMatrixXf w = synthetic::GaussianWeights(n, n, 2);
  const IntGrid grid(4, true);
  for (auto _ : state) benchmark::DoNotOptimize(QuantizeRtn(w, grid, 128).dequant.data());
}
BENCHMARK(BM_Rtn)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace qtool::solvers
