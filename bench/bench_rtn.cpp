// RTN quantisation of a 4096 x 4096 bf16 matrix through the library's pipeline path (convert,
// quantise, pack, error statistics), next to a plain memcpy of the same bytes.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "qtool/core/half.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/pipeline/quantize.hpp"

namespace qtool {
namespace {

constexpr int64_t kRows = 4096, kCols = 4096;

const std::vector<uint16_t>& Bf16Matrix() {
  static const std::vector<uint16_t> m = [] {
    std::mt19937 rng(1);
    std::student_t_distribution<float> d(4.0f);  // heavy-tailed, like trained weights
    std::vector<uint16_t> v(static_cast<size_t>(kRows * kCols));
    for (auto& x : v) x = F32ToBf16(0.02f * d(rng));
    return v;
  }();
  return m;
}

void BM_Memcpy(benchmark::State& state) {
  const auto& src = Bf16Matrix();
  std::vector<uint16_t> dst(src.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), src.size() * 2);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(src.size() * 2));
}
BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();

void Rtn(benchmark::State& state, const nlohmann::json& record) {
  const auto& src = Bf16Matrix();
  const auto codec = MakeCodec(record, kRows, kCols);
  std::vector<std::vector<std::byte>> parts;
  std::vector<std::byte*> ptrs;
  for (const TensorSpec& t : codec->Layout("w")) {
    parts.emplace_back(t.nbytes());
    ptrs.push_back(parts.back().data());
  }
  const int threads = static_cast<int>(state.range(0));
  for (auto _ : state) {
    const ErrorStats s = QuantizeMatrix(reinterpret_cast<const std::byte*>(src.data()),
                                        DType::kBF16, *codec, ptrs.data(), threads, "bench");
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(src.size() * 2));
  state.counters["threads"] = threads;
}

void BM_RtnInt8PerChannel(benchmark::State& state) {
  Rtn(state, {{"codec", "int"}, {"bits", 8}, {"symmetric", true}, {"granularity", "channel"}});
}
BENCHMARK(BM_RtnInt8PerChannel)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_RtnInt4G128(benchmark::State& state) {
  Rtn(state, {{"codec", "int"},
              {"bits", 4},
              {"symmetric", true},
              {"granularity", "group"},
              {"group_size", 128}});
}
BENCHMARK(BM_RtnInt4G128)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace qtool
