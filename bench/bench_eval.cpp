// Eval throughput of the model runtime: tokens/s and GFLOP/s on the shared models and on a
// synthetic ~1.1B-parameter Llama (TinyLlama's shape, random BF16 weights in a temporary file),
// plus the runtime's f32 matrix product against Eigen's (the stated baseline). Compare GFLOP/s with
// the 2-thread f32 FMA peak of about 400 GFLOP/s of the development machine.
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "qtool/core/half.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/kernels/gemm.hpp"
#include "qtool/model/eval.hpp"
#include "qtool/model/model.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;

// CPU seconds used by every thread of the process. On a shared machine, GFLOP per CPU-second
// ("GFLOP/cpu-s") shows the kernels' efficiency when other work takes the cores; wall-clock
// GFLOP/s equals it times the cores actually obtained.
double ProcessCpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * t.tv_usec; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

void SetFlopCounters(benchmark::State& state, double flops_per_iteration, double cpu_seconds) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iteration / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/cpu-s"] =
      flops_per_iteration * static_cast<double>(state.iterations()) / 1e9 / cpu_seconds;
}

// Runs `windows` once per iteration and reports tokens/s and GFLOP/s.
void RunWindows(benchmark::State& state, const Model& model,
                const std::vector<std::vector<int32_t>>& windows) {
  double tokens = 0, flops = 0;
  for (const auto& w : windows) {
    tokens += static_cast<double>(w.size());
    for (size_t p = 0; p < w.size(); ++p) {
      flops += model.config().FlopsPerToken(static_cast<int64_t>(p));
    }
  }
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    model.Forward(windows, [](size_t, const RowMatrixXf& logits) {
      benchmark::DoNotOptimize(logits.data());
    });
  }
  const double cpu = ProcessCpuSeconds() - cpu0;
  state.counters["tokens/s"] =
      benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  SetFlopCounters(state, flops, cpu);
}

fs::path SharedModelsDir() {
  const char* env = std::getenv("QTOOL_SHARED_DIR");
  // ../shared beside the source tree, as the tests find it.
  return (env != nullptr ? fs::path(env)
                         : fs::path(__FILE__).parent_path() / ".." / ".." / "shared") /
         "models";
}

void BM_EvalShared(benchmark::State& state, const std::string& name) {
  const fs::path dir = SharedModelsDir() / name / "hf";
  if (!fs::exists(dir / "config.json")) {
    state.SkipWithError(("shared model absent: " + dir.string()).c_str());
    return;
  }
  const Model model(dir);
  // Eval-shaped work: full windows of the model's context over a deterministic token stream.
  std::vector<int32_t> tokens(static_cast<size_t>(2 * model.config().max_position_embeddings));
  std::mt19937 rng(1);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % model.config().vocab_size);
  RunWindows(state, model, PerplexityWindows(tokens, model.config().max_position_embeddings, 1));
}
BENCHMARK_CAPTURE(BM_EvalShared, stories260K, std::string("stories260K"))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EvalShared, babyllama, std::string("babyllama-tok105"))
    ->Unit(benchmark::kMillisecond);

// TinyLlama-1.1B's shape: 22 blocks of hidden 2048, MLP 5632, 32 heads over 4 key/value heads,
// 32000-entry vocabulary, untied head: 1.10e9 parameters, 2.2 GB as BF16.
const nlohmann::json kSyntheticConfig = {{"architectures", {"LlamaForCausalLM"}},
                                         {"model_type", "llama"},
                                         {"hidden_size", 2048},
                                         {"intermediate_size", 5632},
                                         {"num_hidden_layers", 22},
                                         {"num_attention_heads", 32},
                                         {"num_key_value_heads", 4},
                                         {"vocab_size", 32000},
                                         {"max_position_embeddings", 2048},
                                         {"rms_norm_eps", 1e-5},
                                         {"rope_theta", 10000.0},
                                         {"tie_word_embeddings", false}};

// The synthetic model's directory, written on first use and removed at exit.
class SyntheticModel {
 public:
  static const fs::path& Dir() {
    static SyntheticModel m;
    return m.dir_;
  }

 private:
  SyntheticModel()
      : dir_(fs::temp_directory_path() / ("qtool-bench-1b-" + std::to_string(::getpid()))) {
    const nlohmann::json& c = kSyntheticConfig;
    const int64_t h = c["hidden_size"], f = c["intermediate_size"], v = c["vocab_size"];
    const int64_t kv =
        h / c["num_attention_heads"].get<int64_t>() * c["num_key_value_heads"].get<int64_t>();
    std::vector<TensorSpec> specs = {{"model.embed_tokens.weight", DType::kBF16, {v, h}},
                                     {"model.norm.weight", DType::kBF16, {h}},
                                     {"lm_head.weight", DType::kBF16, {v, h}}};
    for (int64_t i = 0; i < c["num_hidden_layers"].get<int64_t>(); ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      for (const auto& [n, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
               {"input_layernorm.weight", {h}},
               {"post_attention_layernorm.weight", {h}},
               {"self_attn.q_proj.weight", {h, h}},
               {"self_attn.k_proj.weight", {kv, h}},
               {"self_attn.v_proj.weight", {kv, h}},
               {"self_attn.o_proj.weight", {h, h}},
               {"mlp.gate_proj.weight", {f, h}},
               {"mlp.up_proj.weight", {f, h}},
               {"mlp.down_proj.weight", {h, f}}}) {
        specs.push_back({p + n, DType::kBF16, shape});
      }
    }
    CheckpointWriter w(dir_, specs, {});
    uint64_t state = 0x9E3779B97F4A7C15ull;
    std::vector<uint16_t> chunk;
    for (const TensorSpec& t : specs) {
      const bool norm = t.shape.size() == 1;
      for (int64_t left = t.numel(); left > 0;) {
        const int64_t n = std::min<int64_t>(left, 1 << 20);
        chunk.resize(static_cast<size_t>(n));
        for (auto& x : chunk) {
          state ^= state << 13;  // xorshift64: uniform weights in [-0.03, 0.03]
          state ^= state >> 7;
          state ^= state << 17;
          const float u = static_cast<float>(state >> 40) / static_cast<float>(1 << 24);
          x = F32ToBf16(norm ? 1.0f : 0.06f * (u - 0.5f));
        }
        w.Write(std::as_bytes(std::span(chunk)));
        left -= n;
      }
    }
    w.WriteTextFile("config.json", c.dump(2));
    w.Commit();
  }
  ~SyntheticModel() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
};

// state.range(0): tokens per window (one window per iteration); state.range(1): 1 to keep the
// decoded weights in memory, 0 to decode every block from the file on every pass (streaming).
void BM_EvalSynthetic1B(benchmark::State& state) {
  const bool cached = state.range(1) != 0;
  const Model model(SyntheticModel::Dir(), {.threads = 0, .weight_cache_bytes = cached ? -1 : 0});
  std::vector<int32_t> window(static_cast<size_t>(state.range(0)));
  for (size_t i = 0; i < window.size(); ++i) window[i] = static_cast<int32_t>(1 + 7 * i % 31999);
  if (cached) model.Forward({window}, [](size_t, const RowMatrixXf&) {});  // decode once, untimed
  RunWindows(state, model, {window});
}
BENCHMARK(BM_EvalSynthetic1B)
    ->Args({256, 1})
    ->Args({256, 0})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Y [m, n] = X [m, k] W^T (range(0) = m, range(1) = threads): the runtime's packed kernel against
// Eigen's product in a portable translation unit (the baseline).
void BM_MatMul(benchmark::State& state, bool eigen) {
  const int64_t m = state.range(0), n = 2048, k = 2048;
  const RowMatrixXf x = RowMatrixXf::Random(m, k), w = RowMatrixXf::Random(n, k);
  const gemm::PackedMatrix packed = gemm::Pack(w.data(), n, k);
  RowMatrixXf y(m, n);
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    if (eigen) {
      y.noalias() = x * w.transpose();
    } else {
      gemm::MatMul(x.data(), k, m, packed, y.data(), n, static_cast<int>(state.range(1)));
    }
    benchmark::DoNotOptimize(y.data());
  }
  SetFlopCounters(state, 2.0 * static_cast<double>(m * n * k), ProcessCpuSeconds() - cpu0);
}
BENCHMARK_CAPTURE(BM_MatMul, packed, false)
    ->Args({256, 1})
    ->Args({256, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_MatMul, eigen_baseline, true)
    ->Args({256, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace qtool
