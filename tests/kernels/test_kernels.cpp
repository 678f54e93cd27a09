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
#include <vector>

#include "kernel_inputs.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/int_codec.hpp"
#include "qtool/quant/nf4_codec.hpp"
#include "qtool/quant/pack.hpp"

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
        o.stats.Add(w.data(), deq.data(), n);
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
    // The first non-finite value is reported, wherever it is.
    for (const int64_t at : {int64_t{0}, n / 3, n - 1}) {
      auto y = in.f32;
      y[static_cast<size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
      if (at + 1 < n) y[static_cast<size_t>(at + 1)] = std::numeric_limits<float>::infinity();
      std::vector<uint8_t> packed(rows * rb), zeros(rows * ng);
      std::vector<float> scales(rows * ng);
      ErrorStats stats;
      EXPECT_EQ(QuantizeStoredRows(y.data(), StoredFloat::kF32, rows, cols, spec.GroupLen(cols),
                                   spec, packed.data(), scales.data(), zeros.data(), &stats),
                at);
    }
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

// The GEMV reads the NF4 codec's own tensors: qweight as packed, absmax as block scales.
TEST_P(KernelTest, GemvNf4ReadsTheNf4CodecLayout) {
  const int64_t rows = 37, cols = 256, block = 64;
  const auto w = RandomFloats(rows * cols, 11, 0.02f);
  Nf4Codec codec(block, /*double_quant=*/false, rows, cols);
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
                      reinterpret_cast<const float*>(parts[1].data()), rows, cols, block};
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
  EXPECT_EQ(KernelPaths().size(), 18u);
}

}  // namespace
}  // namespace qtool::kernels
