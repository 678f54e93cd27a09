// The checks shared by test_quantized.cpp (the templates linked with the kernels) and
// test_quantized_header_only.cpp (the scalar references): for every format family, Quantize must
// write the same bytes as the codec (quant/codec.hpp, encoded in chunks as a checkpoint run does),
// Dequantize and the decoded values of Quantize must equal the codec's, bit for bit, and
// MeasureError must equal ErrorStats::Add. Include after choosing the mode.
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qtool/format/text.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/quantized.hpp"
#include "quant/codec_test_util.hpp"

namespace {

// The formats every test runs: each family, its granularities, odd groups and blocks.
inline std::vector<std::string> QuantizedCaseFormats() {
  return {"int4",
          "int4:g64:asym",
          "int8:channel",
          "int3:g48:flat",
          "int2:tensor",
          "int5:tensor:asym",
          "int4:g32:gidx",
          "int6:g20:asym",
          "ternary",
          "ternary:g16",
          "ternary:channel",
          "nf4",
          "nf4:b64:dq",
          "nf4:b128",
          "bnb-fp4:b64:dq",
          "fp8-e4m3",
          "fp8-e5m2:tensor",
          "fp8-e4m3:4x16",
          "fp6-e3m2:g16",
          "fp6-e2m3",
          "fp4:g16",
          "mxfp4",
          "mxfp8-e5m2",
          "mxfp6-e2m3:b16",
          "mxint8:b16",
          "nvfp4"};
}

// Seeded Gaussian weights with a few outliers, exact zeros and (with `special`) NaN and Inf.
inline std::vector<float> QuantizedCaseData(int64_t n, uint32_t seed, bool special) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(n));
  for (float& v : w) v = normal(rng);
  for (int64_t i = 0; i < n; i += 37) w[static_cast<size_t>(i)] *= 20.0f;
  for (int64_t i = 5; i < n; i += 53) w[static_cast<size_t>(i)] = 0.0f;
  if (special && n > 40) {
    w[17] = std::numeric_limits<float>::quiet_NaN();
    w[40] = std::numeric_limits<float>::infinity();
  }
  return w;
}

// Bitwise equality of two float arrays (NaN payloads and signs included).
inline void ExpectSameBits(const std::vector<float>& a, const std::vector<float>& b,
                           const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool nan = std::isnan(a[i]) && std::isnan(b[i]);
    if (!nan && std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) {
      FAIL() << what << ": element " << i << " is " << a[i] << ", the codec's " << b[i];
    }
  }
}

// Quantize / Dequantize of `text` on a [rows, cols] matrix against the codec.
inline void CheckAgainstCodec(const std::string& text, int64_t rows, int64_t cols, bool special) {
  const qtool::Format format = qtool::ParseFormat(text);
  const std::string what = text + " " + std::to_string(rows) + "x" + std::to_string(cols);
  const std::vector<float> w =
      QuantizedCaseData(rows * cols, 7 + static_cast<uint32_t>(cols), special);
  const auto codec = qtool::MakeCodec(format, rows, cols);
  const qtool::testing::Encoded want = qtool::testing::EncodeMatrix(*codec, w);
  std::visit(
      [&](const auto& f) {
        std::vector<float> deq(w.size());
        const auto q = qtool::Quantize(f, std::span<const float>(w), rows, cols, deq);
        ASSERT_EQ(q.num_parts(), want.parts.size()) << what;
        for (size_t k = 0; k < q.num_parts(); ++k) {
          const auto got = q.part(k);
          ASSERT_EQ(got.size(), want.parts[k].size()) << what << " part " << k;
          EXPECT_EQ(std::memcmp(got.data(), want.parts[k].data(), got.size()), 0)
              << what << ": part " << q.layout()[k].suffix << " differs from the codec's";
        }
        ExpectSameBits(deq, want.dequant, what + " decoded by Quantize");
        ExpectSameBits(qtool::Dequantize(q), qtool::testing::DecodeMatrix(*codec, want),
                       what + " Dequantize");
        if (!special) {
          qtool::ErrorStats add;
          qtool::kernels::AccumulateErrors(w.data(), deq.data(), static_cast<int64_t>(w.size()),
                                           &add);
          const qtool::ErrorStats got = qtool::MeasureError(w, deq);
          EXPECT_EQ(got.sum_e2, add.sum_e2) << what;
          EXPECT_EQ(got.sum_xy, add.sum_xy) << what;
          EXPECT_EQ(got.max_abs_err, add.max_abs_err) << what;
          EXPECT_EQ(got.n, add.n) << what;
          EXPECT_GT(got.sqnr_db(), 0.0) << what;
        }
      },
      format);
}

// Sizes around vector widths and group ends, a single row and a single column. With `special`
// (NaN and Inf among the weights), only the float-code families, whose kernels define the result
// of non-finite inputs (qtool/kernels.hpp); for integer and ternary grids it is unspecified, and
// a checkpoint run refuses such weights before quantising.
inline void CheckEveryFormat(bool special) {
  const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 64}, {7, 33}, {16, 128}, {9, 257}, {33, 96}};
  for (const std::string& text : QuantizedCaseFormats()) {
    if (special && (text.starts_with("int") || text.starts_with("ternary"))) continue;
    for (const auto& s : shapes) {
      if (special && s[0] * s[1] <= 40) continue;
      CheckAgainstCodec(text, s[0], s[1], special);
    }
  }
}

}  // namespace
