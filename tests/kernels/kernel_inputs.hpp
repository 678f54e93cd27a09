// The inputs of the kernel tests: sizes around every vector width and group length, seeded random
// data, weights in the codec layout. Shared by the gtest suite (tests/kernels/test_kernels.cpp)
// and the emulator program (tests/emu/emu_kernels.cpp), so that both try the same cases. No gtest
// here: the emulator program is built without it. Test code only, in the kernels' namespace like
// the tests themselves.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "qtool/core/half.hpp"
#include "qtool/format/spec.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/nf4_codec.hpp"

namespace qtool::kernels {

// Lengths around every vector width and group size; 4096 + 17 crosses many full blocks.
inline constexpr int64_t kLengths[] = {1, 7, 31, 32, 33, 63, 64, 65, 127, 128, 129, 4096 + 17};

// Shapes for the 4-bit kernels: multiples of 32 (vector paths) and others (reference fallback).
inline constexpr int64_t kFourBitCols[] = {32, 64, 96, 128, 160, 4096 + 32, 33, 4096 + 17};

// Code widths: 4 and 8 bits have their own vector paths, the others share the generic ones.
inline constexpr int kCodeBits[] = {2, 3, 4, 5, 6, 7, 8};

// Tokens of the integer GEMMs: below, at and above the register tiles of every family.
inline constexpr int64_t kW8A8Tokens[] = {1, 3, 4, 6, 9, 17};
// 7 tokens: a block of 4 and one of 3, so with 1 and 2 every block size of the W4A8 kernels.
inline constexpr int64_t kW4A8Tokens[] = {1, 2, 7};
// Output rows of a W8A8 case: for m == 9, 400 rows (two threads, each with more than one block of
// weight rows).
inline int64_t W8A8Rows(int64_t m) { return m == 9 ? 400 : 37; }

inline std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<uint8_t> RandomBytes(int64_t n, uint32_t seed, int max_value = 255) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, max_value);
  std::vector<uint8_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<uint8_t>(d(rng));
  return v;
}

// Inputs of the f32 -> f16/bf16 conversions: random bit patterns (NaN payloads, subnormals, every
// exponent), exact rounding ties, and Inf, a signalling NaN and the f16 overflow threshold.
inline std::vector<float> HalfConversionInputs() {
  std::mt19937 rng(7);
  std::vector<float> v(200000);
  for (auto& x : v) x = std::bit_cast<float>(static_cast<uint32_t>(rng()));
  for (uint32_t i = 0; i < 4096; ++i) v[i] = std::bit_cast<float>(0x3f800000u + (i << 12));
  for (uint32_t i = 0; i < 4096; ++i) v[4096 + i] = std::bit_cast<float>(0x00008000u * i);
  v[9000] = std::numeric_limits<float>::infinity();
  v[9001] = std::numeric_limits<float>::signaling_NaN();
  v[9002] = 65520.0f;
  return v;
}

// n seeded finite values, the largest float first and the smallest negative subnormal last.
inline std::vector<float> FiniteValues(int64_t n) {
  auto x = RandomFloats(n, static_cast<uint32_t>(n));
  x[0] = std::numeric_limits<float>::max();
  x[static_cast<size_t>(n - 1)] = -std::numeric_limits<float>::denorm_min();
  return x;
}

// Calls fn(at, bad, y) for copies y of the finite values x with +Inf, -Inf or NaN (`bad`) put
// first, in the middle and last (`at`), and a NaN 3 places later, which is not the first.
template <typename Fn>
void ForNonFinite(const std::vector<float>& x, Fn&& fn) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t n = static_cast<int64_t>(x.size());
  for (const int64_t at : {int64_t{0}, n / 2, n - 1}) {
    for (const float bad : {inf, -inf, nan}) {
      auto y = x;
      y[static_cast<size_t>(at)] = bad;
      if (at + 3 < n) y[static_cast<size_t>(at + 3)] = nan;
      fn(at, bad, y);
    }
  }
}

// n seeded values, a third of them exact rounding ties for the codes (multiples of half a step
// of 0.01).
inline std::vector<float> TiedValues(int64_t n) {
  auto x = RandomFloats(n, static_cast<uint32_t>(n), 0.05f);
  for (int64_t i = 0; i < n; i += 3) x[i] = 0.5f * static_cast<float>(i % 41 - 20) * 0.01f;
  return x;
}

// Lengths of the error sums: around a step of 16 values and the blocks of 1024.
inline constexpr int64_t kErrorLengths[] = {0, 1, 15, 17, 1023, 1024, 1025, 3 * 1024 + 33};

// n seeded values x and y = x plus noise, for the error sums.
inline std::pair<std::vector<float>, std::vector<float>> NoisyPair(int64_t n) {
  const auto x = RandomFloats(n, static_cast<uint32_t>(n), 3.0f);
  auto y = x;
  std::mt19937 rng(static_cast<uint32_t>(n) + 7);
  std::normal_distribution<float> noise(0.0f, 0.1f);
  for (auto& v : y) v += noise(rng);
  return {x, y};
}

// A copy of `v` starting one element past an aligned address, so no vector load is aligned.
template <typename T>
class Unaligned {
 public:
  explicit Unaligned(const std::vector<T>& v) {
    buf_.reserve(v.size() + 1);
    buf_.push_back(T{});
    buf_.insert(buf_.end(), v.begin(), v.end());
  }
  explicit Unaligned(size_t n) : buf_(n + 1) {}
  T* data() { return buf_.data() + 1; }
  std::vector<T> vec() const { return {buf_.begin() + 1, buf_.end()}; }

 private:
  std::vector<T> buf_;
};

// Row quantisation specs: per group and per channel, symmetric and asymmetric, 3 to 8 bits.
inline const QuantSpec kRowSpecs[] = {
    {4, true, Granularity::kGroup, 128},  {4, false, Granularity::kGroup, 32},
    {8, true, Granularity::kChannel, 0},  {8, false, Granularity::kChannel, 0},
    {4, false, Granularity::kChannel, 0}, {3, true, Granularity::kGroup, 64},
    {8, false, Granularity::kGroup, 128}, {5, false, Granularity::kGroup, 32},
    {6, true, Granularity::kChannel, 0},  {7, false, Granularity::kGroup, 64}};

struct StoredRowsCase {
  QuantSpec spec;
  int64_t rows, cols;
};
// Group lengths of 32, 64, 128 and 256 dividing cols, with 4 or 8 bits, and the others, with
// every width.
inline const StoredRowsCase kStoredRowsCases[] = {
    {{4, true, Granularity::kGroup, 128}, 5, 4096},
    {{4, true, Granularity::kGroup, 128}, 5, 4096 + 16},
    {{4, false, Granularity::kGroup, 32}, 3, 96},
    {{8, false, Granularity::kGroup, 64}, 3, 256},
    {{4, true, Granularity::kGroup, 256}, 2, 512},
    {{8, true, Granularity::kGroup, 128}, 9, 128},
    {{8, true, Granularity::kChannel, 0}, 3, 1040},
    {{8, false, Granularity::kGroup, 48}, 7, 144},
    // Groups of 48 across the 1024-value blocks of error sums, split 16 values in.
    {{8, false, Granularity::kGroup, 48}, 5, 480},
    {{4, true, Granularity::kGroup, 48}, 4, 528},
    {{3, true, Granularity::kGroup, 64}, 2, 640},
    {{2, false, Granularity::kGroup, 16}, 9, 16},
    {{4, false, Granularity::kChannel, 0}, 1, 16},
    {{5, true, Granularity::kGroup, 32}, 3, 96},
    {{6, false, Granularity::kGroup, 64}, 2, 256},
    {{7, true, Granularity::kChannel, 0}, 2, 48}};

// The rows of a stored-rows case in each stored type.
struct StoredRows {
  std::vector<float> f32;
  std::vector<uint16_t> bf16, f16;
  explicit StoredRows(std::vector<float> x) : f32(std::move(x)) {
    for (const float v : f32) {
      bf16.push_back(qtool::F32ToBf16(v));
      f16.push_back(qtool::F32ToF16(v));
    }
  }
  // n seeded values with an outlier, an all-zero group and, from 512 values, negative zeros and
  // two groups of 128 of f32 subnormals: multiples of 2^-149 up to 10 and up to 190 (their
  // symmetric scales, 1 * 2^-149 at 4 and at 8 bits, put quotients past the code range).
  static StoredRows Seeded(int64_t n) {
    auto x = RandomFloats(n, static_cast<uint32_t>(n), 0.02f);
    x[static_cast<size_t>(n / 2)] = 0.5f;
    std::fill(x.begin(), x.begin() + 16, 0.0f);
    if (n >= 512) {
      for (int k = 16; k < 256; ++k) {
        const int units = k < 128 ? k % 21 - 10 : (k - 128) * 3 % 381 - 190;
        x[k] = std::ldexp(static_cast<float>(units), -149);
      }
      x[40] = x[41] = -0.0f;
    }
    return StoredRows(std::move(x));
  }
  const void* data(StoredFloat type) const {
    switch (type) {
      case StoredFloat::kBf16:
        return bf16.data();
      case StoredFloat::kF16:
        return f16.data();
      case StoredFloat::kF32:
        break;
    }
    return f32.data();
  }
  // Element i as the kernels read it.
  float at(StoredFloat type, int64_t i) const {
    return type == StoredFloat::kF32    ? f32[i]
           : type == StoredFloat::kBf16 ? qtool::Bf16ToF32(bf16[i])
                                        : qtool::F16ToF32(f16[i]);
  }
};

// The error sums in one vector, to compare bit by bit.
inline std::vector<double> ErrorSums(const ErrorStats& e) {
  return {e.sum_x2, e.sum_e2, e.sum_y2, e.sum_xy, e.max_abs_err, static_cast<double>(e.n)};
}

// Random integer weights in the codec layout with positive scales.
struct TestWeights {
  std::vector<uint8_t> codes, zeros;
  std::vector<float> scales;
  QuantWeights view;
  TestWeights(int64_t rows, int64_t cols, int64_t group, int bits, bool sym, uint32_t seed) {
    view = {nullptr, nullptr, nullptr, rows, cols, group, bits};
    codes = RandomBytes(rows * view.row_bytes(), seed);
    if (bits == 4 && cols % 2) {
      for (int64_t r = 0; r < rows; ++r) codes[r * view.row_bytes() + cols / 2] &= 0x0f;
    }
    const int64_t ng = view.groups_per_row();
    zeros = RandomBytes(rows * ng, seed + 1, (1 << bits) - 1);
    std::mt19937 rng(seed + 2);
    std::uniform_real_distribution<float> d(0.001f, 0.02f);
    scales.resize(rows * ng);
    for (auto& s : scales) s = d(rng);
    view.codes = codes.data();
    view.scales = scales.data();
    view.zeros = sym ? nullptr : zeros.data();
  }
  float Weight(int64_t n, int64_t k) const {
    const uint8_t* row = codes.data() + n * view.row_bytes();
    const int32_t u = view.bits == 8 ? row[k] : (row[k / 2] >> ((k & 1) * 4)) & 0xf;
    const int64_t g = k / view.group, ng = view.groups_per_row();
    const int32_t z = view.zeros ? view.zeros[n * ng + g] : 1 << (view.bits - 1);
    return static_cast<float>(u - z) * view.scales[n * ng + g];
  }
  // The weight at (n, k) when the codes and scales are read as NF4 weights in groups of `group`:
  // the NF4 codec's packing puts the even column in the high nibble.
  double Nf4Weight(int64_t n, int64_t k, int64_t group) const {
    const int64_t cols = view.cols, ng = (cols + group - 1) / group;
    const int u = (codes[n * ((cols + 1) / 2) + k / 2] >> ((~k & 1) * 4)) & 0xf;
    return static_cast<double>(qtool::Nf4Values()[u]) * scales[n * ng + k / group];
  }
  // sum_k |w[n,k] * act(t, k)| for every token t < m and row n: the scale of the tolerance.
  // Each weight is decoded once for all tokens (this runs on emulated CPUs too).
  template <typename Act>
  std::vector<double> L1Products(int64_t m, Act act) const {
    std::vector<double> l1(m * view.rows);
    for (int64_t n = 0; n < view.rows; ++n) {
      for (int64_t i = 0; i < view.cols; ++i) {
        const double w = Weight(n, i);
        for (int64_t t = 0; t < m; ++t) l1[t * view.rows + n] += std::fabs(w * act(t, i));
      }
    }
    return l1;
  }
};

}  // namespace qtool::kernels
