// Every entry of one instruction-set family's kernel table against the scalar reference table, on
// the inputs of the kernel tests (tests/kernels/kernel_inputs.hpp): the same bits where
// include/qtool/kernels.hpp promises them, |y - y_ref| <= 1e-5 * sum_k |w_k a_k| for the kernels
// that accumulate in f32 (the float GEMMs of qtool/kernels/gemm.hpp among them). A plain program
// (no gtest, no threads, linked statically) so that tests/emu/run_emulated.py can run it on an
// emulated CPU with AVX-512; on a CPU that has the family it runs as it is.
//
// Usage: qtool_emu_kernels [avx512|avx2]   (default avx512)
// Prints a line per operation, one per failed case, and "N passed, M failed" last. Exit status:
// 0 when every case passes, 1 when one fails, 2 when this CPU (or build) cannot run the family.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernel_inputs.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/kernels.hpp"
#include "qtool/kernels/gemm.hpp"
#include "qtool/quant/int_codec.hpp"
#include "table.hpp"

namespace qtool::kernels {
namespace {

using detail::Int8Acts;
using detail::KernelTable;

// The cases of one family's entries against the reference entries.
class Checker {
 public:
  Checker(const KernelTable& test_table, const KernelTable& ref_table)
      : test(test_table), ref(ref_table) {}
  const KernelTable& test;  // the family under test
  const KernelTable& ref;   // the scalar reference

  void Begin(const char* op) {
    op_ = op;
    op_cases_ = op_failed_ = 0;
    start_ = std::chrono::steady_clock::now();
  }
  // The operation's line, with its time (on an emulated CPU, the emulator's).
  void End() {
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start_;
    std::printf("%-22s %4d cases%s %7.2f s\n", op_, op_cases_,
                op_failed_ ? fmt::format(", {} failed", op_failed_).c_str() : "", took.count());
    std::fflush(stdout);
  }
  int passed() const { return passed_; }
  int failed() const { return failed_; }

  // A case passes when got and want hold the same bits, element by element.
  template <typename T>
  void Same(const std::string& what, const std::vector<T>& got, const std::vector<T>& want) {
    size_t i = 0;
    while (i < got.size() && i < want.size() && std::memcmp(&got[i], &want[i], sizeof(T)) == 0) ++i;
    if (got.size() != want.size()) {
      Fail(what, fmt::format("{} values, want {}", got.size(), want.size()));
    } else if (i < got.size()) {
      Fail(what, fmt::format("first difference at {} of {}: {}, want {}", i, got.size(),
                             Show(got[i]), Show(want[i])));
    } else {
      Pass();
    }
  }
  template <typename T>
  void Same(const std::string& what, T got, T want) {
    Same(what, std::vector<T>{got}, std::vector<T>{want});
  }

  // A case passes when |got - want| <= 1e-5 * l1 for every output, l1 = sum_k |w_k a_k|.
  void Close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
             const std::vector<double>& l1) {
    for (size_t i = 0; i < got.size(); ++i) {
      const double tol = 1e-5 * l1[i] + 1e-30;
      if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol)) {
        Fail(what, fmt::format("output {} of {}: {}, want {} (tolerance {:.3g})", i, got.size(),
                               got[i], want[i], tol));
        return;
      }
    }
    Pass();
  }

 private:
  template <typename T>
  static std::string Show(T v) {
    if constexpr (std::is_floating_point_v<T>) {
      using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
      Bits bits;
      std::memcpy(&bits, &v, sizeof(T));
      return fmt::format("{} ({:#x})", v, bits);
    } else if constexpr (std::is_same_v<T, uint16_t>) {
      return fmt::format("{:#06x}", v);  // f16 and bf16 bits
    } else {
      return fmt::format("{}", +v);
    }
  }
  void Pass() {
    ++passed_;
    ++op_cases_;
  }
  void Fail(const std::string& what, const std::string& detail) {
    std::printf("FAIL %s %s: %s\n", op_, what.c_str(), detail.c_str());
    ++failed_;
    ++op_failed_;
    ++op_cases_;
  }

  const char* op_ = "";
  std::chrono::steady_clock::time_point start_;
  int passed_ = 0, failed_ = 0, op_cases_ = 0, op_failed_ = 0;
};

// The output columns [0, rows) of a GEMM entry: in one call, and in two at a multiple of 48 (the
// column block of the AVX-512 W8A8 kernel), as the dispatcher splits them between threads.
template <typename Fn>
std::vector<std::vector<float>> ByColumns(int64_t m, int64_t rows, Fn&& fn) {
  std::vector<std::vector<float>> out;
  out.emplace_back(m * rows);
  fn(0, rows, out.back().data());
  const int64_t split = (rows + 95) / 96 * 48;
  if (split < rows) {
    out.emplace_back(m * rows);
    fn(0, split, out.back().data());
    fn(split, rows, out.back().data());
  }
  return out;
}

// The dispatcher gives the 4-bit entries of the vector families only shapes whose group and
// cols are multiples of 32 (the others go to the reference), so only those are tried here.
std::vector<int64_t> FourBitVectorCols() {
  std::vector<int64_t> cols;
  for (const int64_t k : kFourBitCols) {
    if (k % 32 == 0) cols.push_back(k);
  }
  return cols;
}

// One function per kernel table entry, named as the entry: the list below is generated from
// QTOOL_KERNEL_LIST, so an entry without a test here does not compile.
namespace op_tests {

using HalfToF32Fn = decltype(KernelTable::bf16_to_f32);
using F32ToHalfFn = decltype(KernelTable::f32_to_bf16);

void HalfToF32(Checker& c, HalfToF32Fn KernelTable::*entry) {
  std::vector<uint16_t> all(65536);
  std::iota(all.begin(), all.end(), uint16_t{0});
  Unaligned<uint16_t> in(all);
  for (const int64_t n : {int64_t{65536}, int64_t{1}, int64_t{7}, int64_t{33}}) {
    Unaligned<float> got(static_cast<size_t>(n));
    std::vector<float> want(static_cast<size_t>(n));
    (c.test.*entry)(in.data(), n, got.data());
    (c.ref.*entry)(all.data(), n, want.data());
    c.Same(fmt::format("n {}", n), got.vec(), want);
  }
}

void F32ToHalf(Checker& c, F32ToHalfFn KernelTable::*entry) {
  const std::vector<float> v = HalfConversionInputs();
  Unaligned<float> in(v);
  std::vector<int64_t> lengths(std::begin(kLengths), std::end(kLengths));
  lengths.push_back(static_cast<int64_t>(v.size()));
  for (const int64_t n : lengths) {
    Unaligned<uint16_t> got(static_cast<size_t>(n));
    std::vector<uint16_t> want(static_cast<size_t>(n));
    (c.test.*entry)(in.data(), n, got.data());
    (c.ref.*entry)(v.data(), n, want.data());
    c.Same(fmt::format("n {}", n), got.vec(), want);
  }
}

void bf16_to_f32(Checker& c) { HalfToF32(c, &KernelTable::bf16_to_f32); }
void f16_to_f32(Checker& c) { HalfToF32(c, &KernelTable::f16_to_f32); }
void f32_to_bf16(Checker& c) { F32ToHalf(c, &KernelTable::f32_to_bf16); }
void f32_to_f16(Checker& c) { F32ToHalf(c, &KernelTable::f32_to_f16); }

void first_non_finite(Checker& c) {
  for (const int64_t n : kLengths) {
    const auto x = FiniteValues(n);
    Unaligned<float> clean(x);
    c.Same(fmt::format("n {} finite", n), c.test.first_non_finite(clean.data(), n),
           c.ref.first_non_finite(x.data(), n));
    ForNonFinite(x, [&](int64_t at, float bad, const std::vector<float>& y) {
      Unaligned<float> in(y);
      c.Same(fmt::format("n {} {} at {}", n, bad, at), c.test.first_non_finite(in.data(), n),
             c.ref.first_non_finite(y.data(), n));
    });
  }
}

void accumulate_errors(Checker& c) {
  for (const int64_t n : kErrorLengths) {
    const auto [x, y] = NoisyPair(n);
    Unaligned<float> ux(x), uy(y);
    ErrorStats got, want;
    got.sum_x2 = want.sum_x2 = 1.0;  // the sums add to what is there
    c.test.accumulate_errors(ux.data(), uy.data(), n, &got);
    c.ref.accumulate_errors(x.data(), y.data(), n, &want);
    c.Same(fmt::format("n {}", n), ErrorSums(got), ErrorSums(want));
  }
}

void min_max(Checker& c) {
  for (const int64_t n : kLengths) {
    const auto x = TiedValues(n);
    Unaligned<float> in(x);
    std::vector<float> got(2), want(2);
    c.test.min_max(in.data(), n, &got[0], &got[1]);
    c.ref.min_max(x.data(), n, &want[0], &want[1]);
    c.Same(fmt::format("n {}", n), got, want);
  }
}

// The (bits, symmetric) combinations of the code kernels, with parameters from the range of x;
// for odd n a scale of 0.005 puts the ties of TiedValues exactly on x / scale = k + 0.5.
template <typename Fn>
void ForCodeParams(const KernelTable& ref, const std::vector<float>& x, Fn&& fn) {
  const int64_t n = static_cast<int64_t>(x.size());
  float lo, hi;
  ref.min_max(x.data(), n, &lo, &hi);
  for (const int bits : kCodeBits) {
    for (const bool sym : {true, false}) {
      GroupParams p = ParamsFromRange(lo, hi, QuantSpec{bits, sym, Granularity::kChannel, 0});
      if (n % 2) p.scale = 0.005f;
      fn(bits, p, fmt::format("n {} bits {} {}", n, bits, sym ? "sym" : "asym"));
    }
  }
}

void quantize_codes(Checker& c) {
  for (const int64_t n : kLengths) {
    const auto x = TiedValues(n);
    Unaligned<float> in(x);
    ForCodeParams(c.ref, x, [&](int bits, GroupParams p, const std::string& what) {
      Unaligned<uint8_t> got(static_cast<size_t>(n));
      std::vector<uint8_t> want(static_cast<size_t>(n));
      c.test.quantize_codes(in.data(), n, p, (1 << bits) - 1, got.data());
      c.ref.quantize_codes(x.data(), n, p, (1 << bits) - 1, want.data());
      c.Same(what, got.vec(), want);
    });
  }
}

void dequantize_codes(Checker& c) {
  for (const int64_t n : kLengths) {
    const auto x = TiedValues(n);
    ForCodeParams(c.ref, x, [&](int bits, GroupParams p, const std::string& what) {
      std::vector<uint8_t> codes(static_cast<size_t>(n));
      c.ref.quantize_codes(x.data(), n, p, (1 << bits) - 1, codes.data());
      Unaligned<uint8_t> in(codes);
      Unaligned<float> got(static_cast<size_t>(n));
      std::vector<float> want(static_cast<size_t>(n));
      c.test.dequantize_codes(in.data(), n, p, got.data());
      c.ref.dequantize_codes(codes.data(), n, p, want.data());
      c.Same(what, got.vec(), want);
    });
  }
}

void pack_codes(Checker& c) {
  for (const int64_t n : kLengths) {
    for (const int bits : kCodeBits) {
      const auto codes = RandomBytes(n, static_cast<uint32_t>(n * bits), (1 << bits) - 1);
      Unaligned<uint8_t> in(codes), got(static_cast<size_t>(PackedBytes(n, bits)));
      std::vector<uint8_t> want(static_cast<size_t>(PackedBytes(n, bits)));
      c.test.pack_codes(in.data(), n, bits, got.data());
      c.ref.pack_codes(codes.data(), n, bits, want.data());
      c.Same(fmt::format("n {} bits {}", n, bits), got.vec(), want);
    }
  }
}

void unpack_codes(Checker& c) {
  for (const int64_t n : kLengths) {
    for (const int bits : kCodeBits) {
      const auto codes = RandomBytes(n, static_cast<uint32_t>(n * bits), (1 << bits) - 1);
      std::vector<uint8_t> packed(static_cast<size_t>(PackedBytes(n, bits)));
      c.ref.pack_codes(codes.data(), n, bits, packed.data());
      Unaligned<uint8_t> in(packed), got(static_cast<size_t>(n));
      std::vector<uint8_t> want(static_cast<size_t>(n));
      c.test.unpack_codes(in.data(), n, bits, got.data());
      c.ref.unpack_codes(packed.data(), n, bits, want.data());
      c.Same(fmt::format("n {} bits {}", n, bits), got.vec(), want);
    }
  }
}

// Codes, parameters and decoded values of quantize_groups, compared part by part.
struct GroupsOut {
  std::vector<uint8_t> codes, zeros;
  std::vector<float> scales, deq;
};

void SameGroups(Checker& c, const std::string& what, const GroupsOut& got, const GroupsOut& want) {
  c.Same(what + " codes", got.codes, want.codes);
  c.Same(what + " scales", got.scales, want.scales);
  c.Same(what + " zeros", got.zeros, want.zeros);
  c.Same(what + " decoded", got.deq, want.deq);
}

void quantize_groups(Checker& c) {
  const int64_t rows = 3;
  for (const auto& spec : kRowSpecs) {
    for (const int64_t cols : kLengths) {
      const auto x = RandomFloats(rows * cols, static_cast<uint32_t>(cols), 0.02f);
      const int64_t glen = spec.GroupLen(cols), ng = spec.GroupsPerRow(cols);
      const std::string what = spec.ToString() + " cols " + std::to_string(cols);
      Unaligned<float> in(x);
      // Row by row without the decoded values, as QuantizeRows calls it.
      auto by_rows = [&](const KernelTable& k, const float* px) {
        GroupsOut o{std::vector<uint8_t>(rows * cols),
                    std::vector<uint8_t>(rows * ng),
                    std::vector<float>(rows * ng),
                    {}};
        for (int64_t r = 0; r < rows; ++r) {
          k.quantize_groups(px + r * cols, cols, glen, spec, o.codes.data() + r * cols,
                            o.scales.data() + r * ng,
                            spec.symmetric ? nullptr : o.zeros.data() + r * ng, nullptr);
        }
        return o;
      };
      SameGroups(c, what + " rows", by_rows(c.test, in.data()), by_rows(c.ref, x.data()));
      if (cols % glen) continue;
      // The whole matrix as one run of groups, with its decoded copy.
      auto run = [&](const KernelTable& k, const float* px) {
        GroupsOut o{std::vector<uint8_t>(rows * cols), std::vector<uint8_t>(rows * ng),
                    std::vector<float>(rows * ng), std::vector<float>(rows * cols)};
        k.quantize_groups(px, rows * cols, glen, spec, o.codes.data(), o.scales.data(),
                          spec.symmetric ? nullptr : o.zeros.data(), o.deq.data());
        return o;
      };
      SameGroups(c, what + " run", run(c.test, in.data()), run(c.ref, x.data()));
    }
  }
}

void quantize_stored_rows(Checker& c) {
  constexpr StoredFloat kTypes[] = {StoredFloat::kBf16, StoredFloat::kF16, StoredFloat::kF32};
  constexpr const char* kTypeNames[] = {"bf16", "f16", "f32"};
  for (const auto& [spec, rows, cols] : kStoredRowsCases) {
    const int64_t n = rows * cols, ng = spec.GroupsPerRow(cols), rb = PackedBytes(cols, spec.bits);
    auto call = [&](const KernelTable& k, const StoredRows& in, StoredFloat type) {
      GroupsOut o{std::vector<uint8_t>(rows * rb),
                  std::vector<uint8_t>(rows * ng),
                  std::vector<float>(rows * ng),
                  {}};
      ErrorStats stats;
      const int64_t bad = k.quantize_stored_rows(
          in.data(type), type, rows, cols, spec.GroupLen(cols), spec, o.codes.data(),
          o.scales.data(), spec.symmetric ? nullptr : o.zeros.data(), &stats);
      return std::tuple{o, ErrorSums(stats), bad};
    };
    const StoredRows in = StoredRows::Seeded(n);
    for (size_t ti = 0; ti < std::size(kTypes); ++ti) {
      const std::string what =
          fmt::format("{} {}x{} {}", spec.ToString(), rows, cols, kTypeNames[ti]);
      const auto [got, got_sums, got_bad] = call(c.test, in, kTypes[ti]);
      const auto [want, want_sums, want_bad] = call(c.ref, in, kTypes[ti]);
      SameGroups(c, what, got, want);
      c.Same(what + " error sums", got_sums, want_sums);
      c.Same(what + " result", got_bad, want_bad);
    }
    // The first non-finite value is reported, wherever it is; the outputs are then unspecified.
    for (const int64_t at : {int64_t{0}, n / 3, n - 1}) {
      auto y = in.f32;
      y[static_cast<size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
      if (at + 1 < n) y[static_cast<size_t>(at + 1)] = std::numeric_limits<float>::infinity();
      const StoredRows bad(y);
      for (size_t ti = 0; ti < std::size(kTypes); ++ti) {
        c.Same(
            fmt::format("{} {}x{} {} NaN at {}", spec.ToString(), rows, cols, kTypeNames[ti], at),
            std::get<2>(call(c.test, bad, kTypes[ti])), std::get<2>(call(c.ref, bad, kTypes[ti])));
      }
    }
  }
}

void quantize_activations(Checker& c) {
  for (const int64_t k : kLengths) {
    const int64_t m = 3;
    auto x = RandomFloats(m * k, static_cast<uint32_t>(k), 3.0f);
    std::fill(x.begin() + 2 * k, x.end(), 0.0f);  // an all-zero token gets scale 1
    Unaligned<float> in(x);
    std::vector<int8_t> got(m * k), want(m * k);
    std::vector<float> got_s(m), want_s(m);
    c.test.quantize_activations(in.data(), m, k, got.data(), got_s.data());
    c.ref.quantize_activations(x.data(), m, k, want.data(), want_s.data());
    c.Same(fmt::format("k {} q", k), got, want);
    c.Same(fmt::format("k {} scales", k), got_s, want_s);
  }
}

// Quantised activations of m seeded tokens of length k, through the reference.
struct Acts {
  std::vector<int8_t> q;
  std::vector<float> scales;
  Acts(const KernelTable& ref, int64_t m, int64_t k, uint32_t seed) : q(m * k), scales(m) {
    const auto x = RandomFloats(m * k, seed);
    ref.quantize_activations(x.data(), m, k, q.data(), scales.data());
  }
};

void gemm_w8a8(Checker& c) {
  for (const int64_t k : kLengths) {
    for (const bool sym : {true, false}) {
      for (const int64_t m : kW8A8Tokens) {
        const int64_t n = W8A8Rows(m);
        const TestWeights w(n, k, k, 8, sym, static_cast<uint32_t>(k + m));
        const Acts acts(c.ref, m, k, static_cast<uint32_t>(k * 3 + m));
        Unaligned<int8_t> qa(acts.q);
        const Int8Acts a{qa.data(), acts.scales.data(), m};
        std::vector<float> want(m * n);
        c.ref.gemm_w8a8(a, w.view, 0, n, want.data());
        const auto got = ByColumns(m, n, [&](int64_t n0, int64_t n1, float* y) {
          c.test.gemm_w8a8(a, w.view, n0, n1, y);
        });
        for (size_t i = 0; i < got.size(); ++i) {
          c.Same(fmt::format("k {} {} m {} n {} calls {}", k, sym ? "sym" : "asym", m, n, i + 1),
                 got[i], want);
        }
      }
    }
  }
}

void gemm_w4a8(Checker& c) {
  for (const int64_t k : FourBitVectorCols()) {
    for (const int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, k}) {
      for (const bool sym : {true, false}) {
        for (const int64_t m : kW4A8Tokens) {
          const int64_t n = 19;
          const TestWeights w(n, k, group, 4, sym, static_cast<uint32_t>(k + group + m));
          const Acts acts(c.ref, m, k, static_cast<uint32_t>(k + m));
          Unaligned<int8_t> qa(acts.q);
          const Int8Acts a{qa.data(), acts.scales.data(), m};
          std::vector<float> want(m * n);
          c.ref.gemm_w4a8(a, w.view, 0, n, want.data());
          const auto l1 = w.L1Products(
              m, [&](int64_t t, int64_t i) { return acts.q[t * k + i] * acts.scales[t]; });
          const auto got = ByColumns(m, n, [&](int64_t n0, int64_t n1, float* y) {
            c.test.gemm_w4a8(a, w.view, n0, n1, y);
          });
          for (const auto& y : got) {
            c.Close(fmt::format("k {} group {} {} m {}", k, group, sym ? "sym" : "asym", m), y,
                    want, l1);
          }
        }
      }
    }
  }
}

void gemm_w4a16(Checker& c) {
  for (const int64_t k : FourBitVectorCols()) {
    for (const int64_t group : {int64_t{32}, int64_t{128}, k}) {
      for (const bool sym : {true, false}) {
        const int64_t m = 3, n = 21;
        const TestWeights w(n, k, group, 4, sym, static_cast<uint32_t>(k * 7 + group));
        const auto x = RandomFloats(m * k, static_cast<uint32_t>(k));
        std::vector<uint16_t> a(m * k);
        qtool::F32ToBf16(x.data(), a.data(), a.size());
        Unaligned<uint16_t> aa(a);
        std::vector<float> want(m * n);
        c.ref.gemm_w4a16(a.data(), m, w.view, 0, n, want.data());
        const auto l1 =
            w.L1Products(m, [&](int64_t t, int64_t i) { return qtool::Bf16ToF32(a[t * k + i]); });
        const auto got = ByColumns(m, n, [&](int64_t n0, int64_t n1, float* y) {
          c.test.gemm_w4a16(aa.data(), m, w.view, n0, n1, y);
        });
        for (const auto& y : got) {
          c.Close(fmt::format("k {} group {} {}", k, group, sym ? "sym" : "asym"), y, want, l1);
        }
      }
    }
  }
}

void gemv_nf4(Checker& c) {
  for (const int64_t k : FourBitVectorCols()) {
    for (const int64_t group : {int64_t{32}, int64_t{64}, k}) {
      const int64_t n = 23;
      const TestWeights tw(n, k, group, 4, true, static_cast<uint32_t>(k + group));
      const Nf4Weights w{tw.codes.data(), tw.scales.data(), n, k, group};
      const auto x = RandomFloats(k, static_cast<uint32_t>(k + 1));
      Unaligned<float> xa(x);
      std::vector<float> want(n);
      c.ref.gemv_nf4(x.data(), w, 0, n, want.data());
      std::vector<double> l1(n);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t i = 0; i < k; ++i) l1[j] += std::fabs(tw.Nf4Weight(j, i, group) * x[i]);
      }
      const auto got = ByColumns(1, n, [&](int64_t n0, int64_t n1, float* y) {
        c.test.gemv_nf4(xa.data(), w, n0, n1, y);
      });
      for (const auto& y : got) c.Close(fmt::format("k {} group {}", k, group), y, want, l1);
    }
  }
}

// The float codecs' rows: one row of n values, random with zeros, ties and outliers, against the
// reference entry on the same inputs.
std::vector<float> CodecRow(int64_t n, uint32_t seed) {
  auto x = RandomFloats(n, seed);
  for (int64_t i = 0; i < n; i += 5) x[static_cast<size_t>(i)] = 0.0f;
  if (n > 2) x[static_cast<size_t>(n / 2)] = 40.0f;
  if (n > 3) x[static_cast<size_t>(n / 3)] = -0.0f;
  return x;
}

// NF4 rows of a 2-row matrix of n columns in blocks of 64 (blocks run across the rows; the last
// one is shorter unless 64 divides 2n); the second row starts at flat element n.
template <typename Fn>
void ForNf4Rows(Fn&& fn) {
  for (const int64_t n : kLengths) {
    auto x = CodecRow(2 * n, static_cast<uint32_t>(n));
    const int64_t block = 64, nblocks = (2 * n + block - 1) / block;
    std::vector<float> absmax(static_cast<size_t>(nblocks), 0.0f);
    for (int64_t i = 0; i < 2 * n; ++i) {
      absmax[i / block] = std::max(absmax[i / block], std::fabs(x[i]));
    }
    const Nf4Blocks b{block, 2 * n, 0, absmax.data(), absmax.data()};
    for (const int64_t start : {int64_t{0}, n}) {
      fn(fmt::format("n {} start {}", n, start),
         std::vector<float>(x.begin() + start, x.begin() + start + n), start, b);
    }
  }
}

void quantize_nf4(Checker& c) {
  ForNf4Rows(
      [&](const std::string& what, const std::vector<float>& x, int64_t start, const Nf4Blocks& b) {
        const int64_t n = static_cast<int64_t>(x.size()), rb = (n + 1) / 2;
        Unaligned<float> in(x), deq(x.size());
        Unaligned<uint8_t> packed(static_cast<size_t>(rb));
        std::vector<float> want_deq(x.size());
        std::vector<uint8_t> want(static_cast<size_t>(rb));
        c.test.quantize_nf4(in.data(), n, start, b, packed.data(), deq.data());
        c.ref.quantize_nf4(x.data(), n, start, b, want.data(), want_deq.data());
        c.Same(what + " codes", packed.vec(), want);
        c.Same(what + " decoded", deq.vec(), want_deq);
      });
}

void dequantize_nf4(Checker& c) {
  ForNf4Rows(
      [&](const std::string& what, const std::vector<float>& x, int64_t start, const Nf4Blocks& b) {
        const int64_t n = static_cast<int64_t>(x.size());
        std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
        std::vector<float> deq(x.size()), want(x.size());
        c.ref.quantize_nf4(x.data(), n, start, b, packed.data(), deq.data());
        Unaligned<uint8_t> in(packed);
        Unaligned<float> got(x.size());
        c.test.dequantize_nf4(in.data(), n, start, b, got.data());
        c.ref.dequantize_nf4(packed.data(), n, start, b, want.data());
        c.Same(what, got.vec(), want);
      });
}

// Every small float format, saturating or not, with scales per group of 32 columns or per row;
// NaN and Inf among the values, which the format encodes by its overflow and NaN rules.
template <typename Fn>
void ForMinifloatRows(Fn&& fn) {
  for (const MinifloatFormat* format : {&kE4M3, &kE5M2, &kE3M2, &kE2M3, &kE2M1}) {
    for (const bool saturate : {true, false}) {
      const MinifloatCodes f(*format, saturate);
      for (const int64_t n : kLengths) {
        auto x = CodecRow(n, static_cast<uint32_t>(n + format->bits()));
        if (n > 6) {
          x[5] = std::numeric_limits<float>::quiet_NaN();
          x[6] = -std::numeric_limits<float>::infinity();
        }
        for (const int64_t group : {int64_t{32}, n}) {
          std::vector<float> scales(static_cast<size_t>((n + group - 1) / group));
          for (size_t g = 0; g < scales.size(); ++g) scales[g] = 0.5f / format->max() + g;
          fn(fmt::format("{} saturate {} n {} group {}", format->name, saturate, n, group), x,
             scales, group, f);
        }
      }
    }
  }
}

void quantize_minifloat(Checker& c) {
  ForMinifloatRows([&](const std::string& what, const std::vector<float>& x,
                       const std::vector<float>& scales, int64_t group, const MinifloatCodes& f) {
    const int64_t n = static_cast<int64_t>(x.size()), rb = PackedBytes(n, f.bits);
    Unaligned<float> in(x), deq(x.size());
    Unaligned<uint8_t> packed(static_cast<size_t>(rb));
    std::vector<float> want_deq(x.size());
    std::vector<uint8_t> want(static_cast<size_t>(rb));
    c.test.quantize_minifloat(in.data(), n, scales.data(), group, f, packed.data(), deq.data());
    c.ref.quantize_minifloat(x.data(), n, scales.data(), group, f, want.data(), want_deq.data());
    c.Same(what + " codes", packed.vec(), want);
    c.Same(what + " decoded", deq.vec(), want_deq);
  });
}

void dequantize_minifloat(Checker& c) {
  ForMinifloatRows([&](const std::string& what, const std::vector<float>& x,
                       const std::vector<float>& scales, int64_t group, const MinifloatCodes& f) {
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<uint8_t> packed(static_cast<size_t>(PackedBytes(n, f.bits)));
    std::vector<float> deq(x.size()), want(x.size());
    c.ref.quantize_minifloat(x.data(), n, scales.data(), group, f, packed.data(), deq.data());
    Unaligned<uint8_t> in(packed);
    Unaligned<float> got(x.size());
    c.test.dequantize_minifloat(in.data(), n, scales.data(), group, f, got.data());
    c.ref.dequantize_minifloat(packed.data(), n, scales.data(), group, f, want.data());
    c.Same(what, got.vec(), want);
  });
}

// MX blocks of 32 with FP4, FP6 and FP8 elements and MXINT8 (no element format); one block holds
// NaN, so its scale is 0xff.
template <typename Fn>
void ForMxRows(Fn&& fn) {
  const MinifloatCodes fp4(kE2M1, true), fp6(kE3M2, true), fp8(kE4M3, true);
  for (const MinifloatCodes* e : {&fp4, &fp6, &fp8, static_cast<const MinifloatCodes*>(nullptr)}) {
    for (const int64_t n : kLengths) {
      auto x = CodecRow(n, static_cast<uint32_t>(3 * n));
      if (n > 40) x[40] = std::numeric_limits<float>::quiet_NaN();
      fn(fmt::format("{} n {}", e ? e->format->name : "int8", n), x, e);
    }
  }
}

void quantize_mx(Checker& c) {
  ForMxRows([&](const std::string& what, const std::vector<float>& x, const MinifloatCodes* e) {
    const int64_t n = static_cast<int64_t>(x.size()), rb = PackedBytes(n, e ? e->bits : 8);
    const size_t nb = static_cast<size_t>((n + 31) / 32);
    Unaligned<float> in(x), deq(x.size());
    Unaligned<uint8_t> packed(static_cast<size_t>(rb)), scales(nb);
    std::vector<float> want_deq(x.size());
    std::vector<uint8_t> want(static_cast<size_t>(rb)), want_scales(nb);
    c.test.quantize_mx(in.data(), n, 32, e, packed.data(), scales.data(), deq.data());
    c.ref.quantize_mx(x.data(), n, 32, e, want.data(), want_scales.data(), want_deq.data());
    c.Same(what + " codes", packed.vec(), want);
    c.Same(what + " scales", scales.vec(), want_scales);
    c.Same(what + " decoded", deq.vec(), want_deq);
  });
}

void dequantize_mx(Checker& c) {
  ForMxRows([&](const std::string& what, const std::vector<float>& x, const MinifloatCodes* e) {
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<uint8_t> packed(static_cast<size_t>(PackedBytes(n, e ? e->bits : 8))),
        scales(static_cast<size_t>((n + 31) / 32));
    std::vector<float> deq(x.size()), want(x.size());
    c.ref.quantize_mx(x.data(), n, 32, e, packed.data(), scales.data(), deq.data());
    Unaligned<uint8_t> in(packed);
    Unaligned<float> got(x.size());
    c.test.dequantize_mx(in.data(), scales.data(), n, 32, e, got.data());
    c.ref.dequantize_mx(packed.data(), scales.data(), n, 32, e, want.data());
    c.Same(what, got.vec(), want);
  });
}

// The runtime's float GEMM: the panel kernel against the reference at shapes around the tiles (6
// and 8 rows), strips (16 and 32 columns), row blocks (120 and 128) and the depth block (256), each
// panel on its own into a Y one column wider than the product, whose extra column must stay as it
// was.
void f32_gemm_panels(Checker& c) {
  for (const int64_t m : {1, 6, 7, 9, 121, 130}) {
    for (const int64_t n : {1, 9, 17, 32, 33}) {
      for (const int64_t k : {1, 17, 257}) {
        const uint32_t seed = static_cast<uint32_t>(m * 10007 + n * 101 + k);
        const std::vector<float> x = RandomFloats(m * k, seed), b = RandomFloats(n * k, seed + 1);
        const gemm::PackedMatrix packed = gemm::Pack(b.data(), n, k);
        const int64_t ldy = n + 1;
        std::vector<float> got(static_cast<size_t>(m * ldy), -7.0f), want = got;
        std::vector<double> l1(got.size(), 0.0);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            for (int64_t kk = 0; kk < k; ++kk) {
              l1[static_cast<size_t>(i * ldy + j)] +=
                  std::fabs(static_cast<double>(x[static_cast<size_t>(i * k + kk)]) *
                            b[static_cast<size_t>(j * k + kk)]);
            }
          }
        }
        for (int64_t p = 0; p < packed.panels(); ++p) {
          c.test.f32_gemm_panels(x.data(), k, m, packed, p, p + 1, got.data(), ldy);
        }
        c.ref.f32_gemm_panels(x.data(), k, m, packed, 0, packed.panels(), want.data(), ldy);
        c.Close(fmt::format("{}x{}x{}", m, n, k), got, want, l1);
      }
    }
  }
}

// The solvers' micro-kernel: c0 + alpha * A * B at depths around the solvers' (16) and the cache
// block's (192), into a C three columns wider than the tile whose extra columns must keep their
// values; the tolerance adds |c0| (the kernels may fuse the final multiply-add).
void f32_gemm_micro(Checker& c) {
  using gemm::kMr;
  using gemm::kNr;
  for (const int64_t kc : {1, 16, 17, 192}) {
    for (const float alpha : {1.0f, -0.375f}) {
      const uint32_t seed = static_cast<uint32_t>(kc * 31 + 7);
      const std::vector<float> a = RandomFloats(kc * kMr, seed),
                               b = RandomFloats(kc * kNr, seed + 1);
      const int64_t ldc = kNr + 3;
      const std::vector<float> c0 = RandomFloats(kMr * ldc, seed + 2);
      std::vector<float> got = c0, want = c0;
      std::vector<double> l1(c0.size(), 0.0);
      for (int64_t i = 0; i < kMr; ++i) {
        for (int64_t j = 0; j < kNr; ++j) {
          double sum = 0.0;
          for (int64_t p = 0; p < kc; ++p) {
            sum += std::fabs(static_cast<double>(a[static_cast<size_t>(p * kMr + i)]) *
                             b[static_cast<size_t>(p * kNr + j)]);
          }
          l1[static_cast<size_t>(i * ldc + j)] =
              std::fabs(alpha) * sum + std::fabs(c0[static_cast<size_t>(i * ldc + j)]);
        }
      }
      c.test.f32_gemm_micro(kc, a.data(), b.data(), got.data(), ldc, alpha);
      c.ref.f32_gemm_micro(kc, a.data(), b.data(), want.data(), ldc, alpha);
      c.Close(fmt::format("kc {} alpha {}", kc, alpha), got, want, l1);
    }
  }
}

// The transposes at sizes around their register blocks and 64 x 64 tiles, inside strided buffers
// (the destination's padding must keep its value): the same bits as the reference.
template <typename T, typename Fn>
void Transposes(Checker& c, Fn KernelTable::*entry) {
  for (const int64_t rows : {1, 4, 5, 16, 17, 64, 65, 130}) {
    for (const int64_t cols : {1, 4, 7, 16, 33, 66}) {
      const int64_t ss = cols + 3, ds = rows + 5;
      const std::vector<uint8_t> bytes = RandomBytes(rows * ss, 11, 200);
      const std::vector<T> src(bytes.begin(), bytes.end());
      std::vector<T> got(static_cast<size_t>(cols * ds), T{7}), want = got;
      (c.test.*entry)(src.data(), ss, rows, cols, got.data(), ds);
      (c.ref.*entry)(src.data(), ss, rows, cols, want.data(), ds);
      c.Same(fmt::format("{}x{}", rows, cols), got, want);
    }
  }
}

void transpose_f32(Checker& c) { Transposes<float>(c, &KernelTable::transpose_f32); }
void transpose_u8(Checker& c) { Transposes<uint8_t>(c, &KernelTable::transpose_u8); }

}  // namespace op_tests

struct OpTest {
  const char* name;
  bool (*present)(const KernelTable&);
  void (*run)(Checker&);
};

constexpr OpTest kOpTests[] = {
#define QTOOL_OP_TEST(name, ret, args) \
  {#name, [](const KernelTable& t) { return t.name != nullptr; }, op_tests::name},
    QTOOL_KERNEL_LIST(QTOOL_OP_TEST)
#undef QTOOL_OP_TEST
};

int Main(int argc, char** argv) {
  const std::string_view family = argc == 2 ? argv[1] : "avx512";
  if (argc > 2 || (family != "avx512" && family != "avx2")) {
    std::fprintf(stderr, "usage: %s [avx512|avx2]\n", argv[0]);
    return 2;
  }
  const Isa isa = ParseIsa(family);
  const KernelTable* table = isa == Isa::kAvx512 ? detail::Avx512Table() : detail::Avx2Table(false);
  const auto supported = SupportedIsas();
  if (std::find(supported.begin(), supported.end(), isa) == supported.end()) {
    std::fprintf(
        stderr,
        "qtool_emu_kernels: this CPU or build cannot run the %s kernels (CPU features: %s); "
        "tests/emu/run_emulated.py runs this program on an emulated CPU with AVX-512\n",
        IsaName(isa), CpuFeatures().c_str());
    return 2;
  }
  std::printf("%s kernel table against the scalar reference (CPU features: %s)\n", IsaName(isa),
              CpuFeatures().c_str());
  Checker c(*table, *detail::ScalarTable());
  for (const OpTest& op : kOpTests) {
    c.Begin(op.name);
    if (!op.present(*table)) {
      std::printf("%-22s no %s code (the next family down runs it)\n", op.name, IsaName(isa));
      continue;
    }
    op.run(c);
    c.End();
  }
  std::printf("%d passed, %d failed\n", c.passed(), c.failed());
  return c.failed() ? 1 : 0;
}

}  // namespace
}  // namespace qtool::kernels

int main(int argc, char** argv) { return qtool::kernels::Main(argc, argv); }
