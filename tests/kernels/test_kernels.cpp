// Every kernel on every instruction set this CPU runs, against the scalar reference: bit-exact for
// conversion, quantisation, packing and integer dot products; for kernels that accumulate in f32,
// |y - y_ref| <= 1e-5 * sum_k |w_k a_k| (summation order is all that may differ).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string_view>
#include <vector>

#include "kernel_inputs.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/quant/mx_codec.hpp"
#include "qtool/quant/nf4_codec.hpp"

namespace qtool::kernels {
namespace {

template <typename T>
void ExpectSameBits(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      FAIL() << what << ": first difference at " << i << " of " << got.size();
    }
  }
}

class KernelTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    saved_ = ActiveIsa();
    SelectIsa(GetParam());
  }
  void TearDown() override { SelectIsa(saved_); }

  // Runs fn under the scalar reference, then restores the ISA under test.
  template <typename Fn>
  auto Reference(Fn&& fn) {
    SelectIsa(Isa::kScalar);
    auto r = fn();
    SelectIsa(GetParam());
    return r;
  }

 private:
  Isa saved_ = Isa::kScalar;
};

TEST_P(KernelTest, HalfToF32AllValues) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  Unaligned<uint16_t> in(all);
  for (auto [fn, ref] :
       {std::pair{&F16ToF32, static_cast<float (*)(uint16_t)>(&qtool::F16ToF32)},
        std::pair{&Bf16ToF32, static_cast<float (*)(uint16_t)>(&qtool::Bf16ToF32)}}) {
    for (const int64_t n : {int64_t{65536}, int64_t{1}, int64_t{7}, int64_t{33}}) {
      Unaligned<float> out(static_cast<size_t>(n));
      fn(in.data(), n, out.data());
      std::vector<float> want(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) want[i] = ref(all[i]);
      ExpectSameBits(out.vec(), want, "half -> f32");
    }
  }
}

TEST_P(KernelTest, F32ToHalfMatchesReference) {
  const std::vector<float> v = HalfConversionInputs();
  Unaligned<float> in(v);
  for (const int64_t n : kLengths) {
    for (auto [fn, ref] :
         {std::pair{&F32ToF16, static_cast<uint16_t (*)(float)>(&qtool::F32ToF16)},
          std::pair{&F32ToBf16, static_cast<uint16_t (*)(float)>(&qtool::F32ToBf16)}}) {
      Unaligned<uint16_t> out(static_cast<size_t>(n));
      fn(in.data(), n, out.data());
      std::vector<uint16_t> want(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) want[i] = ref(v[i]);
      ExpectSameBits(out.vec(), want, "f32 -> half");
    }
  }
  Unaligned<uint16_t> out(v.size());
  F32ToF16(in.data(), static_cast<int64_t>(v.size()), out.data());
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(out.data()[i], qtool::F32ToF16(v[i])) << i;
  F32ToBf16(in.data(), static_cast<int64_t>(v.size()), out.data());
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(out.data()[i], qtool::F32ToBf16(v[i])) << i;
}

TEST_P(KernelTest, FirstNonFiniteFindsTheFirstNanOrInf) {
  for (const int64_t n : kLengths) {
    const auto x = FiniteValues(n);
    Unaligned<float> clean(x);
    EXPECT_EQ(FirstNonFinite(clean.data(), n), -1) << n;
    ForNonFinite(x, [&](int64_t at, float bad, const std::vector<float>& y) {
      Unaligned<float> in(y);
      EXPECT_EQ(FirstNonFinite(in.data(), n), at) << n << " " << bad;
    });
  }
}

TEST_P(KernelTest, AccumulateErrorsIsBitExact) {
  for (const int64_t n : kErrorLengths) {
    const auto [x, y] = NoisyPair(n);
    Unaligned<float> ux(x), uy(y);
    ErrorStats got;
    got.sum_x2 = 1.0;  // adds to what is there
    AccumulateErrors(ux.data(), uy.data(), n, &got);
    const ErrorStats want = Reference([&] {
      ErrorStats s;
      s.sum_x2 = 1.0;
      AccumulateErrors(x.data(), y.data(), n, &s);
      return s;
    });
    EXPECT_EQ(got.n, n);
    EXPECT_EQ(got.sum_x2, want.sum_x2) << n;
    EXPECT_EQ(got.sum_e2, want.sum_e2) << n;
    EXPECT_EQ(got.sum_y2, want.sum_y2) << n;
    EXPECT_EQ(got.sum_xy, want.sum_xy) << n;
    EXPECT_EQ(got.max_abs_err, want.max_abs_err) << n;
    // The definition itself, in f64 throughout: the f32 lanes stay within rounding of it.
    double x2 = 1.0, e2 = 0, y2 = 0, xy = 0, m = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = x[i], b = y[i];
      x2 += a * a;
      e2 += (a - b) * (a - b);
      y2 += b * b;
      xy += a * b;
      m = std::max(m, std::fabs(static_cast<double>(x[i] - y[i])));
    }
    EXPECT_NEAR(got.sum_x2, x2, 1e-5 * x2) << n;
    EXPECT_NEAR(got.sum_e2, e2, 1e-5 * e2 + 1e-12) << n;
    EXPECT_NEAR(got.sum_y2, y2, 1e-5 * y2) << n;
    EXPECT_NEAR(got.sum_xy, xy, 1e-5 * std::fabs(xy) + 1e-5 * x2) << n;
    EXPECT_EQ(got.max_abs_err, m) << n;
  }
}

TEST_P(KernelTest, MinMaxAndCodesMatchCodecDefinition) {
  for (const int64_t n : kLengths) {
    const auto x = TiedValues(n);
    Unaligned<float> in(x);
    float lo, hi, rlo, rhi;
    MinMax(in.data(), n, &lo, &hi);
    MinMaxRange(x.data(), n, &rlo, &rhi);
    EXPECT_EQ(std::bit_cast<uint32_t>(lo), std::bit_cast<uint32_t>(rlo)) << n;
    EXPECT_EQ(std::bit_cast<uint32_t>(hi), std::bit_cast<uint32_t>(rhi)) << n;
    for (const int bits : kCodeBits) {
      for (const bool sym : {true, false}) {
        QuantSpec spec{bits, sym, Granularity::kChannel, 0};
        GroupParams p = ParamsFromRange(rlo, rhi, spec);
        if (n % 2) p.scale = 0.005f;  // ties fall exactly on x / scale = k + 0.5
        const int32_t umax = (1 << bits) - 1;
        Unaligned<uint8_t> codes(static_cast<size_t>(n));
        QuantizeCodes(in.data(), n, p, bits, codes.data());
        std::vector<uint8_t> want(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) want[i] = QuantizeValue(x[i], p, umax);
        ExpectSameBits(codes.vec(), want, "codes");
        Unaligned<float> back(static_cast<size_t>(n));
        DequantizeCodes(codes.data(), n, p, back.data());
        std::vector<float> wantf(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) wantf[i] = DequantizeValue(want[i], p);
        ExpectSameBits(back.vec(), wantf, "dequantised");
      }
    }
  }
}

TEST_P(KernelTest, PackUnpackMatchCodec) {
  for (const int64_t n : kLengths) {
    for (const int bits : kCodeBits) {
      const auto codes = RandomBytes(n, static_cast<uint32_t>(n * bits), (1 << bits) - 1);
      Unaligned<uint8_t> in(codes), packed(static_cast<size_t>(PackedBytes(n, bits)));
      PackCodes(in.data(), n, bits, packed.data());
      std::vector<uint8_t> want(static_cast<size_t>(PackedBytes(n, bits)));
      qtool::PackCodes(codes.data(), n, bits, want.data());
      ExpectSameBits(packed.vec(), want, "packed");
      Unaligned<uint8_t> back(static_cast<size_t>(n));
      UnpackCodes(packed.data(), n, bits, back.data());
      ExpectSameBits(back.vec(), codes, "unpacked");
    }
  }
}

// The fused row quantiser reproduces the codec's reference (QuantizeRowRef + PackCodes) exactly.
TEST_P(KernelTest, QuantizeRowsMatchesCodec) {
  const int64_t rows = 3;
  for (const auto& spec : kRowSpecs) {
    for (const int64_t cols : kLengths) {
      const auto x = RandomFloats(rows * cols, static_cast<uint32_t>(cols), 0.02f);
      const int64_t ng = spec.GroupsPerRow(cols), rb = PackedBytes(cols, spec.bits);
      std::vector<uint8_t> want(rows * rb), wzeros(rows * ng), codes(cols);
      std::vector<float> wscales(rows * ng), deq(cols), want_deq(rows * cols);
      std::vector<GroupParams> params(ng);
      for (int64_t r = 0; r < rows; ++r) {
        QuantizeRowRef(x.data() + r * cols, cols, spec, codes.data(), params.data(),
                       want_deq.data() + r * cols);
        qtool::PackCodes(codes.data(), cols, spec.bits, want.data() + r * rb);
        for (int64_t g = 0; g < ng; ++g) {
          wscales[r * ng + g] = params[g].scale;
          wzeros[r * ng + g] = static_cast<uint8_t>(params[g].zero);
        }
      }
      Unaligned<float> in(x);
      Unaligned<uint8_t> got(static_cast<size_t>(rows * rb)), zeros(static_cast<size_t>(rows * ng));
      Unaligned<float> scales(static_cast<size_t>(rows * ng));
      QuantizeRows(in.data(), rows, cols, spec, got.data(), scales.data(), zeros.data(), 2);
      SCOPED_TRACE(spec.ToString() + " cols " + std::to_string(cols));
      ExpectSameBits(got.vec(), want, "codes");
      ExpectSameBits(scales.vec(), wscales, "scales");
      if (!spec.symmetric) ExpectSameBits(zeros.vec(), wzeros, "zeros");

      QuantWeights w{got.data(), scales.data(), spec.symmetric ? nullptr : zeros.data(),
                     rows,       cols,          spec.GroupLen(cols),
                     spec.bits};
      Unaligned<float> back(static_cast<size_t>(rows * cols));
      DequantizeRows(w, back.data(), 2);
      ExpectSameBits(back.vec(), want_deq, "dequantised rows");

      // The whole matrix as one run of groups, with its decoded copy.
      const int64_t glen = spec.GroupLen(cols);
      if (cols % glen == 0) {
        Unaligned<uint8_t> run_codes(static_cast<size_t>(rows * cols));
        Unaligned<float> run_deq(static_cast<size_t>(rows * cols));
        QuantizeGroups(in.data(), rows * cols, glen, spec, run_codes.data(), scales.data(),
                       spec.symmetric ? nullptr : zeros.data(), run_deq.data());
        ExpectSameBits(scales.vec(), wscales, "run scales");
        if (!spec.symmetric) ExpectSameBits(zeros.vec(), wzeros, "run zeros");
        ExpectSameBits(run_deq.vec(), want_deq, "run decoded");
        std::vector<uint8_t> packed(static_cast<size_t>(rows * rb));
        for (int64_t r = 0; r < rows; ++r) {
          qtool::PackCodes(run_codes.data() + r * cols, cols, spec.bits, packed.data() + r * rb);
        }
        ExpectSameBits(packed, want, "run codes");
      }
    }
  }
}

// QuantizeStoredRows against its definition: conversion, QuantizeRowRef and PackCodes per row,
// and ErrorStats::Add over all values, composed here on the scalar reference.
TEST_P(KernelTest, QuantizeStoredRowsMatchesItsSteps) {
  for (const auto& [spec, rows, cols] : kStoredRowsCases) {
    const int64_t n = rows * cols, ng = spec.GroupsPerRow(cols), rb = PackedBytes(cols, spec.bits);
    const StoredRows in = StoredRows::Seeded(n);
    for (const StoredFloat type : {StoredFloat::kBf16, StoredFloat::kF16, StoredFloat::kF32}) {
      const void* src = in.data(type);
      struct Out {
        std::vector<uint8_t> packed, zeros;
        std::vector<float> scales;
        ErrorStats stats;
        int64_t bad;
      };
      auto fused = [&] {
        Out o{std::vector<uint8_t>(rows * rb),
              std::vector<uint8_t>(rows * ng),
              std::vector<float>(rows * ng),
              {},
              0};
        o.bad = QuantizeStoredRows(src, type, rows, cols, spec.GroupLen(cols), spec,
                                   o.packed.data(), o.scales.data(),
                                   spec.symmetric ? nullptr : o.zeros.data(), &o.stats);
        return o;
      };
      auto steps = [&] {
        Out o{std::vector<uint8_t>(rows * rb),
              std::vector<uint8_t>(rows * ng),
              std::vector<float>(rows * ng),
              {},
              -1};
        std::vector<float> w(n), deq(n);
        std::vector<uint8_t> codes(cols);
        std::vector<GroupParams> params(ng);
        for (int64_t i = 0; i < n; ++i) w[i] = in.at(type, i);
        for (int64_t r = 0; r < rows; ++r) {
          QuantizeRowRef(w.data() + r * cols, cols, spec, codes.data(), params.data(),
                         deq.data() + r * cols);
          qtool::PackCodes(codes.data(), cols, spec.bits, o.packed.data() + r * rb);
          for (int64_t g = 0; g < ng; ++g) {
            o.scales[r * ng + g] = params[g].scale;
            if (!spec.symmetric) o.zeros[r * ng + g] = static_cast<uint8_t>(params[g].zero);
          }
        }
        AccumulateErrorsReference(w.data(), deq.data(), n, &o.stats);
        return o;
      };
      SCOPED_TRACE(spec.ToString() + " " + std::to_string(rows) + "x" + std::to_string(cols) +
                   " type " + std::to_string(static_cast<int>(type)));
      const Out want = Reference(steps), got = fused();
      EXPECT_EQ(got.bad, -1);
      ExpectSameBits(got.packed, want.packed, "codes");
      ExpectSameBits(got.scales, want.scales, "scales");
      ExpectSameBits(got.zeros, want.zeros, "zeros");
      ExpectSameBits(ErrorSums(got.stats), ErrorSums(want.stats), "error sums");
    }
    // The first non-finite value is reported, wherever it is: a NaN before an Inf, or -Inf alone.
    constexpr float kInf = std::numeric_limits<float>::infinity();
    for (const int64_t at : {int64_t{0}, n / 3, n - 1}) {
      for (const bool nan : {true, false}) {
        auto y = in.f32;
        y[static_cast<size_t>(at)] = nan ? std::numeric_limits<float>::quiet_NaN() : -kInf;
        if (nan && at + 1 < n) y[static_cast<size_t>(at + 1)] = kInf;
        const StoredRows bad(y);
        for (const StoredFloat type : {StoredFloat::kBf16, StoredFloat::kF16, StoredFloat::kF32}) {
          std::vector<uint8_t> packed(rows * rb), zeros(rows * ng);
          std::vector<float> scales(rows * ng);
          ErrorStats stats;
          EXPECT_EQ(QuantizeStoredRows(bad.data(type), type, rows, cols, spec.GroupLen(cols), spec,
                                       packed.data(), scales.data(), zeros.data(), &stats),
                    at)
              << spec.ToString() << " type " << static_cast<int>(type) << " nan " << nan;
        }
      }
    }
  }
}

// The error sums' lanes hold the elements the definition gives them and end in lane order,
// however a family holds them: 1 at element 4 goes to lane 0 and 2^-27 at elements 8-11 to lanes
// 4-7. Each square 2^-54 added to 1 rounds away and the sum of squares is 1; the four added
// before the 1, as they would be from lanes 0-3, would make 1 + 2^-52.
TEST_P(KernelTest, QuantizeStoredRowsEndsLanesInOrder) {
  std::vector<float> x(16, 0.0f);
  x[4] = 1.0f;
  std::fill(x.begin() + 8, x.begin() + 12, std::ldexp(1.0f, -27));
  const StoredRows in(x);
  for (const StoredFloat type : {StoredFloat::kBf16, StoredFloat::kF32}) {
    std::vector<uint8_t> packed(8);
    std::vector<float> scales(1);
    ErrorStats stats;
    ASSERT_EQ(QuantizeStoredRows(in.data(type), type, 1, 16, 16, {4, true, Granularity::kGroup, 16},
                                 packed.data(), scales.data(), nullptr, &stats),
              -1);
    EXPECT_EQ(stats.sum_x2, 1.0) << static_cast<int>(type);
  }
}

TEST_P(KernelTest, ActivationQuantisationMatchesReference) {
  for (const int64_t k : kLengths) {
    const int64_t m = 3;
    auto x = RandomFloats(m * k, static_cast<uint32_t>(k), 3.0f);
    std::fill(x.begin() + 2 * k, x.end(), 0.0f);  // an all-zero token gets scale 1
    Unaligned<float> in(x);
    auto run = [&] {
      std::pair<std::vector<int8_t>, std::vector<float>> r{std::vector<int8_t>(m * k),
                                                           std::vector<float>(m)};
      QuantizeActivations(in.data(), m, k, r.first.data(), r.second.data());
      return r;
    };
    const auto want = Reference(run);
    const auto got = run();
    ExpectSameBits(got.first, want.first, "q");
    ExpectSameBits(got.second, want.second, "scales");
    EXPECT_EQ(want.second[2], 1.0f);
    for (const int8_t q : want.first) ASSERT_GE(q, -127);
  }
}

// |got - want| <= 1e-5 * sum_k |w_k a_k| for every output.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want,
                 const std::vector<double>& l1) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - want[i]), 1e-5 * l1[i] + 1e-30) << "output " << i;
  }
}

TEST_P(KernelTest, GemmW8A8IsExact) {
  for (const int64_t k : kLengths) {
    for (const bool sym : {true, false}) {
      for (const int64_t m : kW8A8Tokens) {
        const int64_t n = W8A8Rows(m);
        TestWeights w(n, k, k, 8, sym, static_cast<uint32_t>(k + m));
        const auto x = RandomFloats(m * k, static_cast<uint32_t>(k * 3 + m));
        std::vector<int8_t> q(m * k);
        std::vector<float> sa(m);
        QuantizeActivations(x.data(), m, k, q.data(), sa.data());
        Unaligned<int8_t> qa(q);
        auto run = [&] {
          std::vector<float> y(m * n);
          GemmW8A8(qa.data(), sa.data(), m, w.view, y.data(), 2);
          return y;
        };
        SCOPED_TRACE("k " + std::to_string(k) + " m " + std::to_string(m));
        ExpectSameBits(run(), Reference(run), "y");
      }
    }
  }
}

TEST_P(KernelTest, GemmW4A8WithinTolerance) {
  for (const int64_t k : kFourBitCols) {
    for (const int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, k}) {
      for (const bool sym : {true, false}) {
        for (const int64_t m : kW4A8Tokens) {
          const int64_t n = 19;
          TestWeights w(n, k, group, 4, sym, static_cast<uint32_t>(k + group + m));
          const auto x = RandomFloats(m * k, static_cast<uint32_t>(k + m));
          std::vector<int8_t> q(m * k);
          std::vector<float> sa(m);
          QuantizeActivations(x.data(), m, k, q.data(), sa.data());
          Unaligned<int8_t> qa(q);
          auto run = [&] {
            std::vector<float> y(m * n);
            GemmW4A8(qa.data(), sa.data(), m, w.view, y.data(), 2);
            return y;
          };
          const auto l1 =
              w.L1Products(m, [&](int64_t t, int64_t i) { return q[t * k + i] * sa[t]; });
          SCOPED_TRACE("k " + std::to_string(k) + " group " + std::to_string(group));
          ExpectClose(run(), Reference(run), l1);
        }
      }
    }
  }
}

TEST_P(KernelTest, GemmW4A16WithinTolerance) {
  for (const int64_t k : kFourBitCols) {
    for (const int64_t group : {int64_t{32}, int64_t{128}, k}) {
      for (const bool sym : {true, false}) {
        const int64_t m = 3, n = 21;
        TestWeights w(n, k, group, 4, sym, static_cast<uint32_t>(k * 7 + group));
        const auto x = RandomFloats(m * k, static_cast<uint32_t>(k));
        std::vector<uint16_t> a(m * k);
        qtool::F32ToBf16(x.data(), a.data(), a.size());
        Unaligned<uint16_t> aa(a);
        auto run = [&] {
          std::vector<float> y(m * n);
          GemmW4A16(aa.data(), m, w.view, y.data(), 2);
          return y;
        };
        const auto l1 =
            w.L1Products(m, [&](int64_t t, int64_t i) { return qtool::Bf16ToF32(a[t * k + i]); });
        SCOPED_TRACE("k " + std::to_string(k) + " group " + std::to_string(group));
        ExpectClose(run(), Reference(run), l1);
      }
    }
  }
}

TEST_P(KernelTest, GemvNf4WithinTolerance) {
  for (const int64_t k : kFourBitCols) {
    for (const int64_t group : {int64_t{32}, int64_t{64}, k}) {
      const int64_t n = 23;
      TestWeights tw(n, k, group, 4, true, static_cast<uint32_t>(k + group));
      const Nf4Weights w{tw.codes.data(), tw.scales.data(), n, k, group};
      const auto x = RandomFloats(k, static_cast<uint32_t>(k + 1));
      Unaligned<float> xa(x);
      auto run = [&] {
        std::vector<float> y(n);
        GemvNf4(xa.data(), w, y.data(), 2);
        return y;
      };
      const auto want = Reference(run);
      std::vector<double> l1(n);
      for (int64_t j = 0; j < n; ++j) {
        double exact = 0;
        for (int64_t i = 0; i < k; ++i) {
          const double wv = tw.Nf4Weight(j, i, group);
          l1[j] += std::fabs(wv * x[i]);
          exact += wv * x[i];
        }
        EXPECT_NEAR(want[j], exact, 1e-5 * l1[j]) << "reference vs f64, row " << j;
      }
      SCOPED_TRACE("k " + std::to_string(k) + " group " + std::to_string(group));
      ExpectClose(run(), want, l1);
    }
  }
}

// The GEMV reads the NF4 codec's own tensors (NF4 and bitsandbytes' FP4 values): qweight as
// packed, absmax as block scales.
TEST_P(KernelTest, GemvNf4ReadsTheNf4CodecLayout) {
  const int64_t rows = 37, cols = 256, block = 64;
  const auto w = RandomFloats(rows * cols, 11, 0.02f);
  for (const Bnb4Map map : {Bnb4Map::kNf4, Bnb4Map::kFp4}) {
    SCOPED_TRACE(NameOf(kBnb4MapNames, map));
    Nf4Codec codec({.block = block, .map = map}, rows, cols);
    codec.Observe(w.data(), 0, rows);
    const auto layout = codec.Layout("w");
    std::vector<std::vector<std::byte>> parts;
    std::vector<std::byte*> ptrs;
    for (const auto& t : layout) parts.emplace_back(t.nbytes());
    for (auto& p : parts) ptrs.push_back(p.data());
    std::vector<float> decoded(rows * cols);
    codec.EncodeRows(w.data(), 0, rows, ptrs.data(), decoded.data());
    ASSERT_EQ(layout[1].dtype, DType::kF32);

    const auto x = RandomFloats(cols, 12);
    const Nf4Weights nf{reinterpret_cast<const uint8_t*>(parts[0].data()),
                        reinterpret_cast<const float*>(parts[1].data()),
                        rows,
                        cols,
                        block,
                        map};
    std::vector<float> y(rows);
    GemvNf4(x.data(), nf, y.data(), 2);
    for (int64_t n = 0; n < rows; ++n) {
      double want = 0, l1 = 0;
      for (int64_t i = 0; i < cols; ++i) {
        want += static_cast<double>(decoded[n * cols + i]) * x[i];
        l1 += std::fabs(static_cast<double>(decoded[n * cols + i]) * x[i]);
      }
      EXPECT_NEAR(y[n], want, 1e-5 * l1) << "row " << n;
    }
  }
}

// ---- Float codes: NF4, scaled small floats and MX, against the codecs' per-value definitions ----

const float kInf = std::numeric_limits<float>::infinity();
const float kNan = std::numeric_limits<float>::quiet_NaN();

// Copies `special` over the start of x (as much as fits).
void Overwrite(std::vector<float>& x, const std::vector<float>& special) {
  std::copy_n(special.begin(), std::min(special.size(), x.size()), x.begin());
}

// AbsMax is the codecs' std::max(amax, |x|) from 0: NaN ignored, Inf kept.
TEST_P(KernelTest, AbsMaxIgnoresNanLikeTheCodecs) {
  for (const int64_t n : kLengths) {
    auto x = RandomFloats(n, static_cast<uint32_t>(n) + 5);
    x[static_cast<size_t>(n / 2)] = kNan;
    for (const int64_t at : {int64_t{0}, n - 1}) {
      for (const float v : {-1e30f, -0.0f, kInf, -kInf}) {
        auto y = x;
        y[static_cast<size_t>(at)] = v;
        float want = 0;
        for (const float e : y) want = std::max(want, std::fabs(e));
        Unaligned<float> in(y);
        EXPECT_EQ(std::bit_cast<uint32_t>(AbsMax(in.data(), n)), std::bit_cast<uint32_t>(want))
            << n << " " << v;
      }
    }
  }
  EXPECT_EQ(AbsMax(nullptr, 0), 0.0f);
}

// Every value of the map and every midpoint between two (the ties) for a block absmax of 2, one
// f32 ulp either side of each midpoint, signed zeros and subnormals.
std::vector<float> Nf4EdgeValues(Bnb4Map map) {
  std::vector<float> v = {0.0f, -0.0f, 1e-45f, -1e-40f, 2.0f, -2.0f};
  for (const float a : FormatTraits<Nf4Format>::Values(map)) v.push_back(2.0f * a);
  for (const float m : FormatTraits<Nf4Format>::Midpoints(map)) {
    v.push_back(2.0f * m);
    v.push_back(std::nextafter(2.0f * m, -kInf));
    v.push_back(std::nextafter(2.0f * m, kInf));
  }
  return v;
}

// The NF4 codec's output for the flat elements [first, numel) of x, from its per-value rule.
struct Nf4Rows {
  std::vector<uint8_t> packed;
  std::vector<float> deq;
};
Nf4Rows Nf4Definition(const std::vector<float>& x, int64_t cols, int64_t block, int64_t first,
                      const std::vector<float>& absmax, const std::vector<float>& scales,
                      Bnb4Map map) {
  const int64_t numel = static_cast<int64_t>(x.size()), rows = (numel - first) / cols;
  const int64_t rb = (cols + 1) / 2;
  Nf4Rows d{std::vector<uint8_t>(static_cast<size_t>(rows * rb)),
            std::vector<float>(static_cast<size_t>(rows * cols))};
  for (int64_t i = 0; i < rows * cols; ++i) {
    const int64_t r = i / cols, c = i % cols, blk = (first + i) / block;
    const uint8_t code =
        FormatTraits<Nf4Format>::Code(x[first + i], absmax[blk], blk < numel / block, map);
    d.deq[i] = FormatTraits<Nf4Format>::Values(map)[code] * scales[blk];
    d.packed[r * rb + c / 2] |= static_cast<uint8_t>(c % 2 == 0 ? code << 4 : code);
  }
  return d;
}

TEST_P(KernelTest, Nf4RowsMatchTheCodecDefinition) {
  for (const Bnb4Map map : {Bnb4Map::kNf4, Bnb4Map::kFp4}) {
    for (const int64_t block : {int64_t{64}, int64_t{32}, int64_t{33}}) {
      for (const int64_t cols : kLengths) {
        const int64_t rows = 3, numel = rows * cols, nb = (numel + block - 1) / block;
        auto x = RandomFloats(numel, static_cast<uint32_t>(cols + block), 0.02f);
        Overwrite(x, Nf4EdgeValues(map));
        if (nb >= 4) std::fill_n(x.begin() + 2 * block, block, 0.0f);  // an all-zero block
        if (numel > 200) {
          x[static_cast<size_t>(numel - 70)] = kNan;  // NaN: code 0, absmax ignores it
          x[static_cast<size_t>(numel - 3)] = -kInf;  // an infinite absmax
        }
        // absmax as Observe computes it; the decoded scales differ, as after double quantisation.
        std::vector<float> absmax(static_cast<size_t>(nb)), scales(static_cast<size_t>(nb));
        for (int64_t i = 0; i < numel; ++i) {
          absmax[i / block] = std::max(absmax[i / block], std::fabs(x[i]));
        }
        for (int64_t j = 0; j < nb; ++j) scales[j] = absmax[j] * 0.75f + 0.125f;
        for (const int64_t r0 : {int64_t{0}, int64_t{1}}) {
          SCOPED_TRACE(::testing::Message() << NameOf(kBnb4MapNames, map) << " block " << block
                                            << " cols " << cols << " r0 " << r0);
          const int64_t first = r0 * cols, n = numel - first;
          const Nf4Blocks b{
              block, numel, first, absmax.data() + first / block, scales.data() + first / block,
              map};
          const Nf4Rows want = Nf4Definition(x, cols, block, first, absmax, scales, map);
          Unaligned<float> in(std::vector<float>(x.begin() + first, x.end()));
          Unaligned<uint8_t> packed(want.packed.size());
          Unaligned<float> deq(static_cast<size_t>(n)), back(static_cast<size_t>(n));
          QuantizeNf4Rows(in.data(), rows - r0, cols, b, packed.data(), deq.data(), 2);
          ExpectSameBits(packed.vec(), want.packed, "NF4 codes");
          ExpectSameBits(deq.vec(), want.deq, "NF4 decoded");
          DequantizeNf4Rows(packed.data(), rows - r0, cols, b, back.data(), 2);
          ExpectSameBits(back.vec(), want.deq, "NF4 dequantised");
        }
      }
    }
  }
}

// Every nibble decodes to its value and, scaled back into a block, re-encodes to itself.
TEST_P(KernelTest, EveryNf4CodeRoundTrips) {
  const int64_t cols = 16, rows = 5;
  std::vector<uint8_t> packed(static_cast<size_t>(rows * cols / 2));
  for (size_t i = 0; i < packed.size(); ++i) {
    packed[i] = static_cast<uint8_t>(((2 * i) % 16) << 4 | (2 * i + 1) % 16);
  }
  std::vector<float> absmax(static_cast<size_t>(rows)), scales(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    absmax[r] = scales[r] = std::ldexp(1.0f, 3 * static_cast<int>(r) - 4);
  for (const Bnb4Map map : {Bnb4Map::kNf4, Bnb4Map::kFp4}) {
    SCOPED_TRACE(NameOf(kBnb4MapNames, map));
    const Nf4Blocks b{cols, rows * cols, 0, absmax.data(), scales.data(), map};
    Unaligned<float> values(static_cast<size_t>(rows * cols));
    DequantizeNf4Rows(packed.data(), rows, cols, b, values.data());
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float want = FormatTraits<Nf4Format>::Values(map)[i % 16] * scales[i / cols];
      ASSERT_EQ(std::bit_cast<uint32_t>(values.data()[i]), std::bit_cast<uint32_t>(want)) << i;
    }
    Unaligned<uint8_t> again(packed.size());
    Unaligned<float> deq(static_cast<size_t>(rows * cols));
    QuantizeNf4Rows(values.data(), rows, cols, b, again.data(), deq.data());
    // FP4's second zero (index 8, bitsandbytes' code 8) encodes as the first (index 7, its code
    // 0), as bitsandbytes' quantiser gives it.
    std::vector<uint8_t> want = packed;
    if (map == Bnb4Map::kFp4) {
      for (uint8_t& byte : want) {
        if (byte >> 4 == 8) byte = static_cast<uint8_t>(0x70 | (byte & 0xf));
        if ((byte & 0xf) == 8) byte = static_cast<uint8_t>((byte & 0xf0) | 7);
      }
    }
    ExpectSameBits(again.vec(), want, "re-encoded codes");
    ExpectSameBits(deq.vec(), values.vec(), "re-encoded values");
  }
}

const MinifloatFormat* const kMinifloats[] = {&kE4M3, &kE5M2, &kE3M2, &kE2M3, &kE2M1};

// For format f at scale 1: every code's value, every tie between neighbouring codes with one f32
// ulp either side, values at and past the max, beyond the f32 range of the format, NaN and Inf.
std::vector<float> MinifloatEdgeValues(const MinifloatFormat& f) {
  std::vector<float> v;
  const uint32_t half = static_cast<uint32_t>(f.num_codes() / 2);
  for (uint32_t c = 0; c < static_cast<uint32_t>(f.num_codes()); ++c) {
    v.push_back(DecodeMinifloat(c, f));
    if ((c + 1) % half == 0) continue;
    const float a = DecodeMinifloat(c, f), b = DecodeMinifloat(c + 1, f);
    if (!std::isfinite(a) || !std::isfinite(b)) continue;
    const float mid = (a + b) / 2;
    v.insert(v.end(), {mid, std::nextafter(mid, a), std::nextafter(mid, b)});
  }
  const float max = f.max(), step = std::ldexp(1.0f, f.emax() - f.man_bits);
  for (const float m : {max, max + step / 4, max + step / 2, std::nextafter(max + step / 2, kInf),
                        max + step, 2 * max, 1e30f, std::numeric_limits<float>::max(), kInf, kNan,
                        1e-45f, 1e-38f, 1.5e-38f, std::ldexp(1.0f, f.emin() - f.man_bits - 1)}) {
    v.push_back(m);
    v.push_back(-m);
  }
  return v;
}

// The scaled-float codec's output for rows of x sharing `scales`, from EncodeMinifloat.
struct FloatRows {
  std::vector<uint8_t> packed;
  std::vector<float> deq;
};
FloatRows MinifloatDefinition(const std::vector<float>& x, int64_t cols, const float* scales,
                              int64_t group, const MinifloatFormat& f, bool saturate) {
  const int64_t rows = static_cast<int64_t>(x.size()) / cols, rb = PackedBytes(cols, f.bits());
  FloatRows d{std::vector<uint8_t>(static_cast<size_t>(rows * rb)), std::vector<float>(x.size())};
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float s = scales[c / group];
      codes[c] = static_cast<uint8_t>(EncodeMinifloat(x[r * cols + c] / s, f, saturate));
      d.deq[r * cols + c] = DecodeMinifloat(codes[c], f) * s;
    }
    qtool::PackCodes(codes.data(), cols, f.bits(), d.packed.data() + r * rb);
  }
  return d;
}

// QuantizeMinifloatRows and DequantizeMinifloatRows against the definition; returns the codes.
std::vector<uint8_t> CheckMinifloatRows(const std::vector<float>& x, int64_t cols,
                                        const std::vector<float>& scales, int64_t group,
                                        const MinifloatCodes& f) {
  const int64_t rows = static_cast<int64_t>(x.size()) / cols;
  const FloatRows want = MinifloatDefinition(x, cols, scales.data(), group, *f.format, f.saturate);
  Unaligned<float> in(x), s(scales), deq(x.size()), back(x.size());
  Unaligned<uint8_t> packed(want.packed.size());
  QuantizeMinifloatRows(in.data(), rows, cols, s.data(), group, f, packed.data(), deq.data(), 2);
  ExpectSameBits(packed.vec(), want.packed, "codes");
  ExpectSameBits(deq.vec(), want.deq, "decoded");
  DequantizeMinifloatRows(packed.data(), rows, cols, s.data(), group, f, back.data(), 2);
  ExpectSameBits(back.vec(), want.deq, "dequantised");
  return packed.vec();
}

TEST_P(KernelTest, MinifloatRowsMatchTheCodecDefinition) {
  for (const MinifloatFormat* f : kMinifloats) {
    for (const bool saturate : {true, false}) {
      const MinifloatCodes codes(*f, saturate);
      for (const int64_t cols : kLengths) {
        for (const int64_t group : {int64_t{32}, int64_t{7}, cols}) {
          SCOPED_TRACE(::testing::Message() << f->name << (saturate ? " sat" : " nonsat")
                                            << " cols " << cols << " group " << group);
          const int64_t rows = 2, ng = (cols + group - 1) / group;
          auto x = RandomFloats(rows * cols, static_cast<uint32_t>(cols * 3 + group), 0.05f);
          Overwrite(x, MinifloatEdgeValues(*f));
          // Scales as the codec sets them (amax / max), the first group's 1 (exact edges).
          std::vector<float> scales(static_cast<size_t>(ng), 1.0f);
          for (int64_t g = 1; g < ng; ++g) scales[g] = 0.2f * static_cast<float>(g) / f->max();
          CheckMinifloatRows(x, cols, scales, group, codes);
        }
      }
    }
  }
}

// Every code (every FP8 byte, every FP4 nibble) decodes to its value and re-encodes to itself, but
// for NaN codes (the canonical NaN) and E5M2's infinities when saturating (the max).
TEST_P(KernelTest, EveryMinifloatCodeRoundTrips) {
  for (const MinifloatFormat* f : kMinifloats) {
    for (const bool saturate : {true, false}) {
      SCOPED_TRACE(::testing::Message() << f->name << (saturate ? " sat" : " nonsat"));
      const MinifloatCodes codes(*f, saturate);
      const int64_t n = f->num_codes();
      std::vector<uint8_t> all(static_cast<size_t>(n));
      for (int64_t c = 0; c < n; ++c) all[c] = static_cast<uint8_t>(c);
      std::vector<uint8_t> packed(static_cast<size_t>(PackedBytes(n, f->bits())));
      qtool::PackCodes(all.data(), n, f->bits(), packed.data());
      const std::vector<float> one = {1.0f};
      Unaligned<float> values(static_cast<size_t>(n));
      DequantizeMinifloatRows(packed.data(), 1, n, one.data(), n, codes, values.data());
      for (int64_t c = 0; c < n; ++c) {
        const float want = DecodeMinifloat(static_cast<uint32_t>(c), *f);
        ASSERT_EQ(std::bit_cast<uint32_t>(values.data()[c]), std::bit_cast<uint32_t>(want)) << c;
      }
      const auto again = CheckMinifloatRows(values.vec(), n, one, n, codes);
      std::vector<uint8_t> back(static_cast<size_t>(n));
      qtool::UnpackCodes(again.data(), n, f->bits(), back.data());
      for (int64_t c = 0; c < n; ++c) {
        const float v = values.data()[c];
        if (std::isnan(v) || (std::isinf(v) && saturate)) continue;
        EXPECT_EQ(back[c], c) << "code " << c;
      }
    }
  }
}

// The MX codec's output for rows of x, from E8M0ScaleForBlock and the element rules.
struct MxRows {
  std::vector<uint8_t> packed, scales;
  std::vector<float> deq;
};
MxRows MxDefinition(const std::vector<float>& x, int64_t cols, int64_t block,
                    const MinifloatFormat* f) {
  const int bits = f ? f->bits() : 8;
  const int64_t rows = static_cast<int64_t>(x.size()) / cols, nb = (cols + block - 1) / block;
  const int64_t rb = PackedBytes(cols, bits);
  MxRows d{std::vector<uint8_t>(static_cast<size_t>(rows * rb)),
           std::vector<uint8_t>(static_cast<size_t>(rows * nb)), std::vector<float>(x.size())};
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t c0 = j * block, c1 = std::min(cols, c0 + block);
      float amax = 0;
      bool nan = false;
      for (int64_t c = c0; c < c1; ++c) {
        amax = std::max(amax, std::fabs(x[r * cols + c]));
        nan |= std::isnan(x[r * cols + c]);
      }
      const uint8_t e = E8M0ScaleForBlock(nan ? kNan : amax, f ? f->emax() : 0);
      d.scales[r * nb + j] = e;
      const float scale = DecodeE8M0(e);
      for (int64_t c = c0; c < c1; ++c) {
        const float p = x[r * cols + c] / scale;
        codes[c] = e == kE8M0Nan ? 0
                   : f           ? static_cast<uint8_t>(EncodeMinifloat(p, *f, true))
                                 : EncodeMxInt8(p);
        const float value = f ? DecodeMinifloat(codes[c], *f) : MxInt8Value(codes[c]);
        d.deq[r * cols + c] = value * scale;
      }
    }
    qtool::PackCodes(codes.data(), cols, bits, d.packed.data() + r * rb);
  }
  return d;
}

// Exact element values and ties at scale 1: each block starts with the element max, so that its
// scale is 2^0, and goes on with the finite values and ties of MinifloatEdgeValues (for MXINT8,
// every q / 64 and (q + 1/2) / 64).
std::vector<float> MxEdgeValues(const MinifloatFormat* f, int64_t block) {
  std::vector<float> finite;
  const float max = f ? f->max() : 127.0f / 64;
  if (f) {
    for (const float v : MinifloatEdgeValues(*f)) {
      if (std::fabs(v) <= max) finite.push_back(v);
    }
  } else {
    for (int q = -128; q < 128; ++q) {
      finite.push_back(static_cast<float>(q) / 64);
      finite.push_back((static_cast<float>(q) + 0.5f) / 64);
    }
  }
  std::vector<float> v;
  for (size_t i = 0; i < finite.size(); ++i) {
    if (v.size() % static_cast<size_t>(block) == 0) v.push_back(max);
    v.push_back(finite[i]);
  }
  return v;
}

// Blocks at every scale: each block of `block` values scaled by its own power of two, from f32
// subnormal magnitudes to near the f32 max, then exact values and ties at the start, and an
// all-zero, a NaN and an Inf block at the end.
std::vector<float> MxTestValues(int64_t rows, int64_t cols, int64_t block, const MinifloatFormat* f,
                                uint32_t seed) {
  auto x = RandomFloats(rows * cols, seed);
  const int64_t n = rows * cols, nb = (cols + block - 1) / block;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t blk = (i / cols) * nb + (i % cols) / block;
    x[i] = std::ldexp(x[i], blk % 9 == 8 ? 125 : static_cast<int>((blk * 37) % 250) - 140);
  }
  if (cols % block == 0) Overwrite(x, MxEdgeValues(f, block));
  if (n >= 4 * block && cols % block == 0) {
    std::fill_n(x.begin() + n - 3 * block, block, 0.0f);
    x[static_cast<size_t>(n - 2 * block + 1)] = kNan;
    x[static_cast<size_t>(n - block)] = -kInf;
  }
  return x;
}

TEST_P(KernelTest, MxRowsMatchTheCodecDefinition) {
  for (const MinifloatFormat* f :
       {&kE2M1, &kE4M3, &kE5M2, &kE2M3, &kE3M2, static_cast<const MinifloatFormat*>(nullptr)}) {
    const MinifloatCodes prepared(f ? *f : kE4M3, true);
    const MinifloatCodes* element = f ? &prepared : nullptr;
    const int bits = f ? f->bits() : 8;
    for (const int64_t block : {int64_t{32}, int64_t{7}}) {
      // Whole blocks around the vector widths, then rows ending in a shorter block.
      std::vector<int64_t> widths;
      for (const int64_t nb : {1, 2, 3, 7, 8, 9, 31, 32, 33, 129}) widths.push_back(nb * block);
      widths.insert(widths.end(), std::begin(kLengths), std::end(kLengths));
      for (const int64_t cols : widths) {
        SCOPED_TRACE(::testing::Message()
                     << (f ? f->name : "int8") << " block " << block << " cols " << cols);
        const int64_t rows = 3;
        const auto x = MxTestValues(rows, cols, block, f, static_cast<uint32_t>(cols + block));
        const MxRows want = MxDefinition(x, cols, block, f);
        Unaligned<float> in(x), deq(x.size()), back(x.size());
        Unaligned<uint8_t> packed(want.packed.size()), scales(want.scales.size());
        QuantizeMxRows(in.data(), rows, cols, block, element, packed.data(), scales.data(),
                       deq.data(), 2);
        ExpectSameBits(scales.vec(), want.scales, "E8M0 scales");
        ExpectSameBits(packed.vec(), want.packed, "element codes");
        ExpectSameBits(deq.vec(), want.deq, "decoded");
        DequantizeMxRows(packed.data(), scales.data(), rows, cols, block, element, back.data(), 2);
        ExpectSameBits(back.vec(), want.deq, "dequantised");
        // Any stored bytes decode as the codec does: every scale, NaN codes under finite scales.
        auto codes =
            RandomBytes(static_cast<int64_t>(want.packed.size()), static_cast<uint32_t>(cols));
        auto e8m0 = RandomBytes(static_cast<int64_t>(want.scales.size()),
                                static_cast<uint32_t>(cols) + 1, 254);
        e8m0[0] = 0;
        e8m0.back() = 254;
        if (bits < 8) {  // codes above the format's range do not occur
          std::vector<uint8_t> u(static_cast<size_t>(rows * cols));
          for (int64_t r = 0; r < rows; ++r) {
            qtool::UnpackCodes(codes.data() + r * PackedBytes(cols, bits), cols, bits,
                               u.data() + r * cols);
            qtool::PackCodes(u.data() + r * cols, cols, bits,
                             codes.data() + r * PackedBytes(cols, bits));
          }
        }
        Unaligned<uint8_t> ucodes(codes), uscales(e8m0);
        DequantizeMxRows(ucodes.data(), uscales.data(), rows, cols, block, element, back.data(), 2);
        std::vector<float> wantf(x.size());
        std::vector<uint8_t> u(static_cast<size_t>(cols));
        const int64_t nb = (cols + block - 1) / block;
        for (int64_t r = 0; r < rows; ++r) {
          qtool::UnpackCodes(codes.data() + r * PackedBytes(cols, bits), cols, bits, u.data());
          for (int64_t c = 0; c < cols; ++c) {
            const float value = f ? DecodeMinifloat(u[c], *f) : MxInt8Value(u[c]);
            wantf[r * cols + c] = value * DecodeE8M0(e8m0[r * nb + c / block]);
          }
        }
        ExpectSameBits(back.vec(), wantf, "stored bytes dequantised");
      }
    }
  }
}

std::string IsaParamName(const ::testing::TestParamInfo<Isa>& info) { return IsaName(info.param); }

INSTANTIATE_TEST_SUITE_P(Isa, KernelTest, ::testing::ValuesIn(SupportedIsas()), IsaParamName);

TEST(KernelDispatch, UnknownAndUnsupportedIsasAreRefused) {
  EXPECT_THROW(ParseIsa("sse9"), OptionError);
  const auto supported = SupportedIsas();
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (std::find(supported.begin(), supported.end(), isa) == supported.end()) {
      EXPECT_THROW(SelectIsa(isa), OptionError) << IsaName(isa);
    }
  }
  EXPECT_EQ(supported.front(), Isa::kScalar);
  EXPECT_EQ(KernelPaths().size(), 28u);
}

constexpr std::string_view kFloatCodeOps[] = {"quantize_nf4",       "dequantize_nf4",
                                              "quantize_minifloat", "dequantize_minifloat",
                                              "quantize_mx",        "dequantize_mx"};

// Each operation runs on the selected family or on one it falls back to (AVX-512 to AVX2, any
// to the reference); the float-code kernels have vector code on AVX2 and NEON, none of their own
// on AVX-512, where the AVX2 code runs.
TEST(KernelDispatch, PathsFollowTheFallbackChain) {
  const Isa saved = ActiveIsa();
  for (const Isa isa : SupportedIsas()) {
    SelectIsa(isa);
    std::vector<Isa> chain = {isa};
    if (isa == Isa::kAvx512) chain.push_back(Isa::kAvx2);
    if (isa != Isa::kScalar) chain.push_back(Isa::kScalar);
    for (const auto& [op, path] : KernelPaths()) {
      EXPECT_NE(std::find(chain.begin(), chain.end(), path), chain.end())
          << op << " runs on " << IsaName(path) << " under " << IsaName(isa);
      if (std::find(std::begin(kFloatCodeOps), std::end(kFloatCodeOps), op) !=
          std::end(kFloatCodeOps)) {
        EXPECT_EQ(path, isa == Isa::kAvx512 ? Isa::kAvx2 : isa) << op;
      }
    }
  }
  SelectIsa(saved);
}

}  // namespace
}  // namespace qtool::kernels
