// The AVX-VNNI integer GEMMs are the AVX2 unit's drivers (src/kernels/x86/int_gemm_avx2_inl.hpp)
// with VPDPBUSD as their dot step. On a CPU with AVX-VNNI they run as the AVX2 family's GEMMs in
// KernelTest. On one without it (and no emulator at hand has AVX-VNNI), the drivers are run here
// with an exact AVX2 rendering of VPDPBUSD and checked against the reference, so that everything
// but the instruction itself is what an AVX-VNNI CPU runs.
#include <gtest/gtest.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common_inl.hpp"
#include "kernel_inputs.hpp"
#include "qtool/kernels.hpp"
#include "table.hpp"

// Only what follows is compiled for AVX2: the drivers and the rendering of VPDPBUSD, all with
// internal linkage, so no AVX2 code can stand in for a function the rest of the binary shares.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi2")
#include "x86/int_gemm_avx2_inl.hpp"

namespace qtool::kernels::detail {
namespace {

// VPDPBUSD: acc + the four u8 x s8 products of each dword lane. The bytes are split into their
// even and odd halves as int16 (u zero-extended, s sign-extended), and VPMADDWD adds each half's
// two products into int32: |255 * 128 * 2| cannot overflow.
__m256i Dpbusd(__m256i acc, __m256i u, __m256i s) {
  const __m256i ue = _mm256_and_si256(u, _mm256_set1_epi16(0x00ff)), uo = _mm256_srli_epi16(u, 8);
  const __m256i se = _mm256_srai_epi16(_mm256_slli_epi16(s, 8), 8), so = _mm256_srai_epi16(s, 8);
  return _mm256_add_epi32(acc,
                          _mm256_add_epi32(_mm256_madd_epi16(ue, se), _mm256_madd_epi16(uo, so)));
}

// The AVX-VNNI unit's dot step (kernels_avxvnni.cpp) with Dpbusd for the instruction.
struct RenderedVnniDot {
  static constexpr int32_t kW8Offset = 0;
  using W8 = __m256i;
  static W8 W8Weights(__m256i u) { return u; }
  static __m256i W8Step(__m256i acc, W8 u, __m256i q) { return Dpbusd(acc, u, q); }
  static __m256i U4Step(__m256i acc, __m256i u, __m256i a) { return Dpbusd(acc, u, a); }
  static __m256i U4Steps(__m256i acc, __m256i u0, __m256i a0, __m256i u1, __m256i a1) {
    return Dpbusd(Dpbusd(acc, u0, a0), u1, a1);
  }
};

}  // namespace
}  // namespace qtool::kernels::detail
#pragma GCC pop_options

namespace qtool::kernels {
namespace {

bool HasAvx2() {
  const auto isas = SupportedIsas();
  return std::find(isas.begin(), isas.end(), Isa::kAvx2) != isas.end();
}

// Token activations, quantised, and the GEMM entry `fn` over all rows in one call and in two
// halves (as two threads split them), each against the reference entry.
struct Acts {
  std::vector<int8_t> q;
  std::vector<float> scales;
  Acts(int64_t m, int64_t k) : q(m * k), scales(m) {
    const auto x = RandomFloats(m * k, static_cast<uint32_t>(k * 3 + m));
    QuantizeActivations(x.data(), m, k, q.data(), scales.data());
  }
};

using GemmEntry = void (*)(const detail::Int8Acts&, const QuantWeights&, int64_t, int64_t, float*);

std::vector<std::vector<float>> RunSplits(GemmEntry fn, const detail::Int8Acts& a,
                                          const QuantWeights& w) {
  std::vector<std::vector<float>> out(2, std::vector<float>(a.m * w.rows));
  fn(a, w, 0, w.rows, out[0].data());
  fn(a, w, 0, w.rows / 2, out[1].data());
  fn(a, w, w.rows / 2, w.rows, out[1].data());
  return out;
}

TEST(AvxVnniDrivers, W8A8IsExact) {
  if (!HasAvx2()) GTEST_SKIP() << "this CPU has no AVX2, which the rendering of VPDPBUSD needs";
  for (const int64_t k : kLengths) {
    for (const bool sym : {true, false}) {
      for (const int64_t m : kW8A8Tokens) {
        const int64_t n = W8A8Rows(m);
        TestWeights w(n, k, k, 8, sym, static_cast<uint32_t>(k + m));
        const Acts acts(m, k);
        const detail::Int8Acts a{acts.q.data(), acts.scales.data(), m};
        std::vector<float> want(m * n);
        detail::ScalarTable()->gemm_w8a8(a, w.view, 0, n, want.data());
        SCOPED_TRACE("k " + std::to_string(k) + " m " + std::to_string(m) + " sym " +
                     std::to_string(sym));
        for (const auto& got :
             RunSplits(detail::GemmW8A8With<detail::RenderedVnniDot>, a, w.view)) {
          ASSERT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(float)));
        }
      }
    }
  }
}

TEST(AvxVnniDrivers, W4A8WithinTolerance) {
  if (!HasAvx2()) GTEST_SKIP() << "this CPU has no AVX2, which the rendering of VPDPBUSD needs";
  for (const int64_t k : kFourBitCols) {
    if (k % 32 != 0) continue;  // other shapes go to the reference (see the dispatcher)
    for (const int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, k}) {
      for (const bool sym : {true, false}) {
        for (const int64_t m : kW4A8Tokens) {
          const int64_t n = 19;
          TestWeights w(n, k, group, 4, sym, static_cast<uint32_t>(k + group + m));
          const Acts acts(m, k);
          const detail::Int8Acts a{acts.q.data(), acts.scales.data(), m};
          std::vector<float> want(m * n);
          detail::ScalarTable()->gemm_w4a8(a, w.view, 0, n, want.data());
          const auto l1 = w.L1Products(
              m, [&](int64_t t, int64_t i) { return acts.q[t * k + i] * acts.scales[t]; });
          SCOPED_TRACE("k " + std::to_string(k) + " group " + std::to_string(group));
          for (const auto& got :
               RunSplits(detail::GemmW4A8With<detail::RenderedVnniDot>, a, w.view)) {
            for (size_t i = 0; i < want.size(); ++i) {
              ASSERT_LE(std::fabs(static_cast<double>(got[i]) - want[i]), 1e-5 * l1[i] + 1e-30)
                  << "output " << i;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace qtool::kernels
#endif
