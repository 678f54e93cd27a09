// qtool_gptq_reference_data: writes the seeded synthetic layer of the solvers' benchmark (Gaussian
// W, heavy-tailed calibration inputs X with outlier channels) and qtool's INT4 results on it, for
// bench/gptq_reference_check.py, which runs the GPTQ reference implementation (IST-DASLab/gptq)
// on the same W and X and compares the relative output errors.
//
// Output: DIR/gptq_reference_data.safetensors, all F32:
//   w [rows, cols], x [samples, cols],
//   rtn_{sym,asym}, gptq_{sym,asym}{,_act,_act_static} [rows, cols]: dequantised weights, INT4
//   with groups of 128 (IntGrid(4, symmetric)), GPTQ with block 128 and dampening 0.01 (the
//   reference's defaults), in natural order, with act-order, and with act-order and static groups;
//   the metadata NAME_seconds holds the wall time of each Gptq() call (Cholesky and sweep, the
//   Hessian given; the fastest of --repeat runs).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <span>

#include "../tests/solvers/synthetic_layer.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/safetensors.hpp"
#include "qtool/solvers/gptq.hpp"
#include "qtool/solvers/hessian.hpp"

namespace {

using qtool::DType;
using qtool::TensorSpec;
using qtool::solvers::RowMatrixXf;

constexpr int64_t kGroupSize = 128;

struct Named {
  std::string name;
  RowMatrixXf m;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Write W, X and qtool's INT4 GPTQ/RTN results for the GPTQ reference check"};
  std::string dir;
  int64_t rows = 4096, cols = 4096, samples = 2048;
  int threads = 0, repeat = 3;
  app.add_option("dir", dir, "Output directory")->required();
  app.add_option("--rows", rows, "Output features of W")->capture_default_str();
  app.add_option("--cols", cols, "Input features of W (a multiple of 128)")->capture_default_str();
  app.add_option("--samples", samples, "Calibration rows of X")->capture_default_str();
  app.add_option("--threads", threads, "0: all cores")->capture_default_str();
  app.add_option("--repeat", repeat, "Runs of each GPTQ; the fastest is reported")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  namespace s = qtool::solvers;
  try {
    QTOOL_CHECK(rows > 0 && samples > 0 && cols > 0 && cols % kGroupSize == 0, qtool::OptionError,
                "rows and samples must be positive and cols a positive multiple of {}", kGroupSize);
    // The benchmark's seeds (bench/bench_solvers.cpp).
    std::vector<Named> out;
    std::map<std::string, std::string> metadata = {
        {"generator", "qtool_gptq_reference_data"},
        {"options", "int4 g128, gptq block 128 damp 0.01, seeds w 2 x 3"}};
    out.push_back({"w", s::synthetic::GaussianWeights(rows, cols, 2)});
    out.push_back({"x", s::synthetic::HeavyTailedInputs(samples, cols, 3)});
    const RowMatrixXf& w = out[0].m;
    s::HessianAccumulator acc(cols, threads);
    acc.Add(out[1].m);
    const RowMatrixXf h = acc.Hessian();
    s::GptqOptions opt;
    opt.group_size = kGroupSize;
    opt.block_size = 128;
    opt.damp = 0.01;
    opt.threads = threads;
    // The reference's fasterquant options: actorder, static_groups.
    struct Variant {
      const char* suffix;
      bool act_order, static_groups;
    };
    constexpr Variant kVariants[] = {
        {"", false, false}, {"_act", true, false}, {"_act_static", true, true}};
    for (const bool sym : {true, false}) {
      const s::IntGrid grid(4, sym);
      const char* kind = sym ? "sym" : "asym";
      for (const Variant& v : kVariants) {
        opt.act_order = v.act_order;
        opt.static_groups = v.static_groups;
        const std::string name = fmt::format("gptq_{}{}", kind, v.suffix);
        s::GptqResult r;
        double sec = 0;
        for (int i = 0; i < repeat; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          r = s::Gptq(w, h, grid, opt);
          const double t =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          sec = i == 0 ? t : std::min(sec, t);
        }
        std::printf("%s: %.2f s, loss %.6g, damp %g\n", name.c_str(), sec, r.stats.loss,
                    r.stats.damp);
        metadata[name + "_seconds"] = fmt::format("{:.3f}", sec);
        out.push_back({name, std::move(r.q.dequant)});
      }
      out.push_back({fmt::format("rtn_{}", kind), s::QuantizeRtn(w, grid, kGroupSize).dequant});
    }
    std::vector<TensorSpec> specs;
    for (const Named& t : out) specs.push_back({t.name, DType::kF32, {t.m.rows(), t.m.cols()}});
    std::filesystem::create_directories(dir);
    const std::filesystem::path path =
        std::filesystem::path(dir) / "gptq_reference_data.safetensors";
    qtool::SafetensorsWriter writer(path, specs, metadata);
    for (const Named& t : out) {
      writer.Write(std::as_bytes(std::span(t.m.data(), static_cast<size_t>(t.m.size()))));
    }
    writer.Commit();
    std::printf("%s\n", path.c_str());
  } catch (const qtool::Error& e) {
    std::fprintf(stderr, "qtool_gptq_reference_data: %s\n", e.what());
    return static_cast<int>(e.exit_code());
  }
  return 0;
}
