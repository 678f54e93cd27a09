// Kernel benchmarks with their baselines measured in the same run: a stream read and a memcpy of
// the same bytes (the memory limit), and Eigen f32 GEMV/GEMM on the same shapes (what a user would
// otherwise run). Throughput is reported as bytes/s of f32-equivalent data (4 bytes per weight or
// element) and as op/s (2 ops per multiply-add). Single thread unless the name says otherwise.
//
// Short CI mode: qtool_bench --benchmark_filter=Kernel --benchmark_min_time=0.05
//                --benchmark_out=kernels.json --benchmark_out_format=json
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "qtool/format/minifloat.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/mx_codec.hpp"

namespace qtool::kernels {
namespace {

// 64 M elements: far out of every cache level.
constexpr int64_t kBigRows = 16384, kBigCols = 4096, kBig = kBigRows * kBigCols;

const std::vector<float>& BigInput() {
  static const std::vector<float> v = [] {
    std::vector<float> x(kBig);
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0.0f, 0.02f);
    for (auto& e : x) e = d(rng);
    return x;
  }();
  return v;
}

void SetF32Bytes(benchmark::State& state, int64_t elements) {
  state.SetBytesProcessed(state.iterations() * elements * 4);
}

void KernelBaselineStreamRead(benchmark::State& state) {
  const auto& x = BigInput();
  for (auto _ : state) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = 0; i < kBig; i += 4) {
      s0 += x[i];
      s1 += x[i + 1];
      s2 += x[i + 2];
      s3 += x[i + 3];
    }
    benchmark::DoNotOptimize(s0 + s1 + s2 + s3);
  }
  SetF32Bytes(state, kBig);
}
BENCHMARK(KernelBaselineStreamRead)->Unit(benchmark::kMillisecond);

void KernelBaselineMemcpy(benchmark::State& state) {
  const auto& x = BigInput();
  std::vector<float> y(kBig);
  for (auto _ : state) {
    std::memcpy(y.data(), x.data(), kBig * 4);
    benchmark::ClobberMemory();
  }
  SetF32Bytes(state, kBig);
}
BENCHMARK(KernelBaselineMemcpy)->Unit(benchmark::kMillisecond);

void QuantizeBig(benchmark::State& state, const QuantSpec& spec) {
  const auto& x = BigInput();
  const int64_t ng = spec.GroupsPerRow(kBigCols);
  std::vector<uint8_t> codes(kBigRows * PackedBytes(kBigCols, spec.bits)), zeros(kBigRows * ng);
  std::vector<float> scales(kBigRows * ng);
  for (auto _ : state) {
    QuantizeRows(x.data(), kBigRows, kBigCols, spec, codes.data(), scales.data(), zeros.data(),
                 static_cast<int>(state.range(0)));
    benchmark::ClobberMemory();
  }
  SetF32Bytes(state, kBig);
}

void KernelQuantizeInt8Channel(benchmark::State& state) {
  QuantizeBig(state, {8, true, Granularity::kChannel, 0});
}
BENCHMARK(KernelQuantizeInt8Channel)->Arg(1)->Unit(benchmark::kMillisecond);

void KernelQuantizeInt4G128(benchmark::State& state) {
  QuantizeBig(state, {4, true, Granularity::kGroup, 128});
}
BENCHMARK(KernelQuantizeInt4G128)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(KernelQuantizeInt4G128)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

void KernelDequantizeInt4G128(benchmark::State& state) {
  const QuantSpec spec{4, true, Granularity::kGroup, 128};
  const int64_t ng = spec.GroupsPerRow(kBigCols);
  std::vector<uint8_t> codes(kBigRows * PackedBytes(kBigCols, 4));
  std::vector<float> scales(kBigRows * ng), out(kBig);
  QuantizeRows(BigInput().data(), kBigRows, kBigCols, spec, codes.data(), scales.data(), nullptr);
  const QuantWeights w{codes.data(), scales.data(), nullptr, kBigRows, kBigCols, 128, 4};
  for (auto _ : state) {
    DequantizeRows(w, out.data(), static_cast<int>(state.range(0)));
    benchmark::ClobberMemory();
  }
  SetF32Bytes(state, kBig);  // f32 written
}
BENCHMARK(KernelDequantizeInt4G128)->Arg(1)->Unit(benchmark::kMillisecond);

void KernelBf16ToF32(benchmark::State& state) {
  std::vector<uint16_t> h(kBig);
  F32ToBf16(BigInput().data(), kBig, h.data());
  std::vector<float> out(kBig);
  for (auto _ : state) {
    Bf16ToF32(h.data(), kBig, out.data());
    benchmark::ClobberMemory();
  }
  SetF32Bytes(state, kBig);
}
BENCHMARK(KernelBf16ToF32)->Unit(benchmark::kMillisecond);

// QuantizeStoredRows on one chunk of a bf16 tensor as a `qtool quantize` worker reads it (16 rows
// of 4096: 128 KB, in L2), INT4 g128 with the error sums; bytes/s of bf16 read.
void KernelQuantizeStoredRowsBf16(benchmark::State& state) {
  constexpr int64_t kRows = 16, kCols = 4096;
  const QuantSpec spec{4, true, Granularity::kGroup, 128};
  std::vector<uint16_t> h(kRows * kCols);
  F32ToBf16(BigInput().data(), kRows * kCols, h.data());
  std::vector<uint8_t> packed(kRows * PackedBytes(kCols, 4));
  std::vector<float> scales(kRows * spec.GroupsPerRow(kCols));
  for (auto _ : state) {
    ErrorStats stats;
    benchmark::DoNotOptimize(QuantizeStoredRows(h.data(), StoredFloat::kBf16, kRows, kCols, 128,
                                                spec, packed.data(), scales.data(), nullptr,
                                                &stats));
    benchmark::DoNotOptimize(stats);
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * 2);
}
BENCHMARK(KernelQuantizeStoredRowsBf16);

// ---- Float codes: NF4, FP8, FP4 and MX rows of the 64 M inputs, codes and decoded values both
// written, as the codecs need them. One scale for all rows of FP8 (per tensor) and one per group
// of 32 columns for FP4; NF4 blocks of 64 with their absmax; MX blocks of 32. ----

// Runs fn() per iteration; rates in f32 bytes of the 64 M elements coded or decoded.
template <typename Fn>
void OverBig(benchmark::State& state, Fn&& fn) {
  for (auto _ : state) {
    fn();
    benchmark::ClobberMemory();
  }
  SetF32Bytes(state, kBig);
}

// NF4 blocks of 64 over the big input: absmax as the codec's Observe finds it.
const std::vector<float>& BigNf4Absmax() {
  static const std::vector<float> a = [] {
    std::vector<float> m(kBig / 64);
    const auto& x = BigInput();
    for (int64_t i = 0; i < kBig; ++i) m[i / 64] = std::max(m[i / 64], std::fabs(x[i]));
    return m;
  }();
  return a;
}

void KernelQuantizeNf4B64(benchmark::State& state) {
  const Nf4Blocks b{64, kBig, 0, BigNf4Absmax().data(), BigNf4Absmax().data()};
  std::vector<uint8_t> packed(kBig / 2);
  std::vector<float> deq(kBig);
  OverBig(state, [&] {
    QuantizeNf4Rows(BigInput().data(), kBigRows, kBigCols, b, packed.data(), deq.data());
  });
}
BENCHMARK(KernelQuantizeNf4B64)->Unit(benchmark::kMillisecond);

void KernelDequantizeNf4B64(benchmark::State& state) {
  const Nf4Blocks b{64, kBig, 0, BigNf4Absmax().data(), BigNf4Absmax().data()};
  std::vector<uint8_t> packed(kBig / 2);
  std::vector<float> out(kBig);
  QuantizeNf4Rows(BigInput().data(), kBigRows, kBigCols, b, packed.data(), out.data());
  OverBig(state, [&] { DequantizeNf4Rows(packed.data(), kBigRows, kBigCols, b, out.data()); });
}
BENCHMARK(KernelDequantizeNf4B64)->Unit(benchmark::kMillisecond);

// Scales for a format with max `max`: per tensor (group == cols) or per group of columns.
std::vector<float> BigScales(int64_t group, float max) {
  return std::vector<float>(kBigCols / group, 0.02f * 5 / max);
}

void QuantizeMinifloatBig(benchmark::State& state, const MinifloatFormat& f, int64_t group) {
  const MinifloatCodes codes(f, true);
  const auto scales = BigScales(group, f.max());
  std::vector<uint8_t> packed(kBigRows * PackedBytes(kBigCols, f.bits()));
  std::vector<float> deq(kBig);
  OverBig(state, [&] {
    QuantizeMinifloatRows(BigInput().data(), kBigRows, kBigCols, scales.data(), group, codes,
                          packed.data(), deq.data());
  });
}

void DequantizeMinifloatBig(benchmark::State& state, const MinifloatFormat& f, int64_t group) {
  const MinifloatCodes codes(f, true);
  const auto scales = BigScales(group, f.max());
  std::vector<uint8_t> packed(kBigRows * PackedBytes(kBigCols, f.bits()));
  std::vector<float> out(kBig);
  QuantizeMinifloatRows(BigInput().data(), kBigRows, kBigCols, scales.data(), group, codes,
                        packed.data(), out.data());
  OverBig(state, [&] {
    DequantizeMinifloatRows(packed.data(), kBigRows, kBigCols, scales.data(), group, codes,
                            out.data());
  });
}

void KernelQuantizeFp8E4M3(benchmark::State& state) {
  QuantizeMinifloatBig(state, kE4M3, kBigCols);
}
BENCHMARK(KernelQuantizeFp8E4M3)->Unit(benchmark::kMillisecond);
void KernelQuantizeFp8E5M2(benchmark::State& state) {
  QuantizeMinifloatBig(state, kE5M2, kBigCols);
}
BENCHMARK(KernelQuantizeFp8E5M2)->Unit(benchmark::kMillisecond);
void KernelDequantizeFp8E4M3(benchmark::State& state) {
  DequantizeMinifloatBig(state, kE4M3, kBigCols);
}
BENCHMARK(KernelDequantizeFp8E4M3)->Unit(benchmark::kMillisecond);
void KernelQuantizeFp4G32(benchmark::State& state) { QuantizeMinifloatBig(state, kE2M1, 32); }
BENCHMARK(KernelQuantizeFp4G32)->Unit(benchmark::kMillisecond);

void KernelQuantizeMxfp4(benchmark::State& state) {
  const MinifloatCodes fp4(kE2M1, true);
  std::vector<uint8_t> packed(kBig / 2), scales(kBig / kMxBlock);
  std::vector<float> deq(kBig);
  OverBig(state, [&] {
    QuantizeMxRows(BigInput().data(), kBigRows, kBigCols, kMxBlock, &fp4, packed.data(),
                   scales.data(), deq.data());
  });
}
BENCHMARK(KernelQuantizeMxfp4)->Unit(benchmark::kMillisecond);

void KernelDequantizeMxfp4(benchmark::State& state) {
  const MinifloatCodes fp4(kE2M1, true);
  std::vector<uint8_t> packed(kBig / 2), scales(kBig / kMxBlock);
  std::vector<float> out(kBig);
  QuantizeMxRows(BigInput().data(), kBigRows, kBigCols, kMxBlock, &fp4, packed.data(),
                 scales.data(), out.data());
  OverBig(state, [&] {
    DequantizeMxRows(packed.data(), scales.data(), kBigRows, kBigCols, kMxBlock, &fp4, out.data());
  });
}
BENCHMARK(KernelDequantizeMxfp4)->Unit(benchmark::kMillisecond);

// ---- GEMV / GEMM: args (rows N, cols K, tokens M, threads) ----

struct IntWeights {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  QuantWeights view;
  IntWeights(int64_t n, int64_t k, int bits, int64_t group) {
    std::vector<float> w(n * k);
    std::mt19937 rng(2);
    std::normal_distribution<float> d(0.0f, 0.02f);
    for (auto& e : w) e = d(rng);
    const QuantSpec spec{bits, true, group == k ? Granularity::kChannel : Granularity::kGroup,
                         group};
    codes.resize(n * PackedBytes(k, bits));
    scales.resize(n * spec.GroupsPerRow(k));
    QuantizeRows(w.data(), n, k, spec, codes.data(), scales.data(), nullptr, 0);
    view = {codes.data(), scales.data(), nullptr, n, k, group, bits};
  }
};

std::vector<float> Activations(int64_t m, int64_t k) {
  std::vector<float> x(m * k);
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& e : x) e = d(rng);
  return x;
}

void SetGemmCounters(benchmark::State& state, int64_t m, int64_t n, int64_t k) {
  SetF32Bytes(state, n * k);  // weights, f32-equivalent
  state.counters["op/s"] = benchmark::Counter(static_cast<double>(2 * m * n * k),
                                              benchmark::Counter::kIsIterationInvariantRate);
}

// The integer GEMMs take int8 activations with per-token scales. With `quantize_acts`, the
// dynamic quantisation of the f32 activations is part of each timed call, as at inference.
void IntGemm(benchmark::State& state, int bits, int64_t group, bool quantize_acts = true) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  const IntWeights w(n, k, bits, group == 0 ? k : group);
  const auto x = Activations(m, k);
  std::vector<int8_t> q(m * k);
  std::vector<float> sa(m), y(m * n);
  QuantizeActivations(x.data(), m, k, q.data(), sa.data());
  for (auto _ : state) {
    if (quantize_acts) QuantizeActivations(x.data(), m, k, q.data(), sa.data());
    if (bits == 8) {
      GemmW8A8(q.data(), sa.data(), m, w.view, y.data(), threads);
    } else {
      GemmW4A8(q.data(), sa.data(), m, w.view, y.data(), threads);
    }
    benchmark::ClobberMemory();
  }
  SetGemmCounters(state, m, n, k);
}

void KernelGemvW4A8G128(benchmark::State& state) { IntGemm(state, 4, 128); }
BENCHMARK(KernelGemvW4A8G128)
    ->Args({4096, 4096, 1, 1})
    ->Args({11008, 4096, 1, 1})
    ->Unit(benchmark::kMicrosecond);
// Several threads: rates from wall time (CPU time would add up the threads).
BENCHMARK(KernelGemvW4A8G128)
    ->Args({11008, 4096, 1, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void KernelGemmW8A8(benchmark::State& state) { IntGemm(state, 8, 0, false); }
BENCHMARK(KernelGemmW8A8)
    ->Args({4096, 4096, 1, 1})
    ->Args({2048, 2048, 2048, 1})
    ->Unit(benchmark::kMillisecond);
void KernelGemmW8A8QuantizingActs(benchmark::State& state) { IntGemm(state, 8, 0); }
BENCHMARK(KernelGemmW8A8QuantizingActs)->Args({2048, 2048, 2048, 1})->Unit(benchmark::kMillisecond);

// Dynamic per-token INT8 quantisation of f32 activations [m, k]; bytes/s of f32 read.
void KernelQuantizeActivations(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1);
  const auto x = Activations(m, k);
  std::vector<int8_t> q(m * k);
  std::vector<float> sa(m);
  for (auto _ : state) {
    QuantizeActivations(x.data(), m, k, q.data(), sa.data());
    benchmark::ClobberMemory();
  }
  SetF32Bytes(state, m * k);
}
BENCHMARK(KernelQuantizeActivations)->Args({2048, 2048})->Unit(benchmark::kMillisecond);

#if defined(__x86_64__)
// The VNNI peak of this core: 24 independent chains of register-only VPDPBUSD on 512-bit vectors,
// 128 integer operations each. The W8A8 GEMM's op/s are to be read against it.
#define QTOOL_DP(r) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #r "\n\t"
__attribute__((target("avx512f,avx512vnni"))) void VnniPeakLoop(int64_t iterations) {
  for (int64_t i = 0; i < iterations; ++i) {
    asm volatile(QTOOL_DP(0) QTOOL_DP(1) QTOOL_DP(2) QTOOL_DP(3) QTOOL_DP(4) QTOOL_DP(5) QTOOL_DP(6)
                     QTOOL_DP(7) QTOOL_DP(8) QTOOL_DP(9) QTOOL_DP(10) QTOOL_DP(11) QTOOL_DP(12)
                         QTOOL_DP(13) QTOOL_DP(14) QTOOL_DP(15) QTOOL_DP(16) QTOOL_DP(17)
                             QTOOL_DP(18) QTOOL_DP(19) QTOOL_DP(20) QTOOL_DP(21) QTOOL_DP(22)
                                 QTOOL_DP(23)
                 :
                 :
                 : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                   "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
                   "xmm19", "xmm20", "xmm21", "xmm22", "xmm23");
  }
}
#undef QTOOL_DP

void KernelBaselineVnniPeak(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx512vnni")) {
    state.SkipWithError("this CPU has no AVX-512 VNNI");
    return;
  }
  constexpr int64_t kIterations = 1 << 20;
  for (auto _ : state) VnniPeakLoop(kIterations);
  state.counters["op/s"] = benchmark::Counter(static_cast<double>(kIterations * 24 * 128),
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(KernelBaselineVnniPeak)->Unit(benchmark::kMillisecond);
#endif

void KernelGemvW4A16G128(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1);
  const IntWeights w(n, k, 4, 128);
  const auto x = Activations(1, k);
  std::vector<uint16_t> a(k);
  F32ToBf16(x.data(), k, a.data());
  std::vector<float> y(n);
  for (auto _ : state) {
    GemmW4A16(a.data(), 1, w.view, y.data(), 1);
    benchmark::ClobberMemory();
  }
  SetGemmCounters(state, 1, n, k);
}
BENCHMARK(KernelGemvW4A16G128)->Args({4096, 4096})->Unit(benchmark::kMicrosecond);

void KernelGemvNf4G64(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1);
  const IntWeights w(n, k, 4, 64);  // random nibbles serve as NF4 indices
  const Nf4Weights nf{w.codes.data(), w.scales.data(), n, k, 64};
  const auto x = Activations(1, k);
  std::vector<float> y(n);
  for (auto _ : state) {
    GemvNf4(x.data(), nf, y.data(), 1);
    benchmark::ClobberMemory();
  }
  SetGemmCounters(state, 1, n, k);
}
BENCHMARK(KernelGemvNf4G64)->Args({4096, 4096})->Unit(benchmark::kMicrosecond);

// ---- Eigen f32 baselines on the same shapes ----

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

RowMatrix RandomMatrix(int64_t r, int64_t c) {
  RowMatrix a(r, c);
  std::mt19937 rng(4);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t i = 0; i < a.size(); ++i) a.data()[i] = d(rng);
  return a;
}

void KernelBaselineEigenGemvF32(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1);
  const RowMatrix w = RandomMatrix(n, k);
  const Eigen::VectorXf x = RandomMatrix(k, 1);
  Eigen::VectorXf y(n);
  for (auto _ : state) {
    y.noalias() = w * x;
    benchmark::DoNotOptimize(y.data());
  }
  SetGemmCounters(state, 1, n, k);
}
BENCHMARK(KernelBaselineEigenGemvF32)
    ->Args({4096, 4096})
    ->Args({11008, 4096})
    ->Unit(benchmark::kMicrosecond);

void KernelBaselineEigenGemmF32(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const RowMatrix w = RandomMatrix(n, k), a = RandomMatrix(m, k);
  RowMatrix y(m, n);
  for (auto _ : state) {
    y.noalias() = a * w.transpose();
    benchmark::DoNotOptimize(y.data());
  }
  SetGemmCounters(state, m, n, k);
}
BENCHMARK(KernelBaselineEigenGemmF32)->Args({2048, 2048, 2048})->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace qtool::kernels
