// Encode and decode throughput of every codec on the kernel path QTOOL_ISA selects (scalar: the
// reference), in bytes of f32 weights per second, on a 1024 x 1024 matrix of Gaussian values. The
// baseline in the same binary is a plain copy of the f32 matrix (the memory-bound ceiling).
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "qtool/io/format_record.hpp"
#include "qtool/quant/codec.hpp"

namespace qtool {
namespace {

using json = nlohmann::json;

constexpr int64_t kRows = 1024, kCols = 1024;

const std::vector<float>& Weights() {
  static const std::vector<float> w = [] {
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<float> v(static_cast<size_t>(kRows * kCols));
    for (float& x : v) x = normal(rng);
    return v;
  }();
  return w;
}

struct Buffers {
  std::vector<std::vector<std::byte>> parts;
  std::vector<std::byte*> out;
  std::vector<const std::byte*> in;
  explicit Buffers(const WeightCodec& codec) {
    for (const TensorSpec& t : codec.Layout("w")) parts.emplace_back(t.nbytes());
    for (auto& p : parts) {
      out.push_back(p.data());
      in.push_back(p.data());
    }
  }
};

void Observe(WeightCodec& codec, const std::vector<float>& w) {
  if (codec.needs_observe()) codec.Observe(w.data(), 0, kRows);
}

void BM_Encode(benchmark::State& state, const json& record) {
  const auto& w = Weights();
  auto codec = MakeCodec(record, kRows, kCols);
  Buffers b(*codec);
  std::vector<float> deq(w.size());
  for (auto _ : state) {
    Observe(*codec, w);
    codec->EncodeRows(w.data(), 0, kRows, b.out.data(), deq.data());
    benchmark::DoNotOptimize(deq.data());
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * 4);
  state.counters["bpw"] = codec->BitsPerWeight();
}

void BM_Decode(benchmark::State& state, const json& record) {
  const auto& w = Weights();
  auto codec = MakeCodec(record, kRows, kCols);
  Buffers b(*codec);
  std::vector<float> y(w.size());
  Observe(*codec, w);
  codec->EncodeRows(w.data(), 0, kRows, b.out.data(), y.data());
  for (auto _ : state) {
    codec->DecodeRows(b.in.data(), 0, kRows, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * 4);
}

void BM_CopyBaseline(benchmark::State& state) {
  const auto& w = Weights();
  std::vector<float> y(w.size());
  for (auto _ : state) {
    std::memcpy(y.data(), w.data(), w.size() * 4);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * 4);
}
BENCHMARK(BM_CopyBaseline);

const std::vector<std::pair<const char*, json>>& Codecs() {
  static const std::vector<std::pair<const char*, json>> c = {
      {"int8_g128", {{"codec", "int"}, {"bits", 8}, {"group_size", 128}}},
      {"int4_g128", {{"codec", "int"}, {"bits", 4}, {"group_size", 128}}},
      {"int3_g128", {{"codec", "int"}, {"bits", 3}, {"group_size", 128}}},
      {"int2_g128", {{"codec", "int"}, {"bits", 2}, {"group_size", 128}}},
      {"int4_g128_mse", {{"codec", "int"}, {"bits", 4}, {"group_size", 128}, {"observer", "mse"}}},
      {"ternary", {{"codec", "ternary"}, {"granularity", "tensor"}}},
      {"nf4_b64", {{"codec", "nf4"}, {"block", 64}}},
      {"nf4_b64_dq", {{"codec", "nf4"}, {"block", 64}, {"double_quant", true}}},
      {"fp4_1x32", {{"codec", "fp"}, {"format", "e2m1"}, {"scale", "block"}, {"block", {1, 32}}}},
      {"fp8_e4m3_channel", {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "channel"}}},
      {"fp8_e5m2_channel", {{"codec", "fp"}, {"format", "e5m2"}, {"scale", "channel"}}},
      {"fp8_e4m3_128x128",
       {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "block"}, {"block", {128, 128}}}},
      {"mxfp4", {{"codec", "mx"}, {"element", "e2m1"}}},
      {"mxfp6_e2m3", {{"codec", "mx"}, {"element", "e2m3"}}},
      {"mxfp6_e3m2", {{"codec", "mx"}, {"element", "e3m2"}}},
      {"mxfp8_e4m3", {{"codec", "mx"}, {"element", "e4m3"}}},
      {"mxfp8_e5m2", {{"codec", "mx"}, {"element", "e5m2"}}},
      {"mxint8", {{"codec", "mx"}, {"element", "int8"}}},
  };
  return c;
}

const bool kRegistered = [] {
  for (const auto& [name, record] : Codecs()) {
    benchmark::RegisterBenchmark((std::string("BM_Encode/") + name).c_str(), BM_Encode, record)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((std::string("BM_Decode/") + name).c_str(), BM_Decode, record)
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
}  // namespace qtool
