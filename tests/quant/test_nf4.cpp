// NF4 against the bitsandbytes definition: the tables, and the codes and (double-quantised) absmax
// bytes of a fixed seeded tensor. The pinned values were produced by bitsandbytes 0.50.2 on CPU
// (tests/quant/bnb_nf4_reference.py prints them); the test itself needs no Python. The
// brute-force checks below follow the definition independently of the codec.
//
// Two known, documented differences: (1) bitsandbytes' native CPU library picks the absmax code of
// block 235 one step off the nearest value (its table search; the torch reference backend and CUDA
// pick the nearest), so the pinned absmax hash is the reference backend's; (2) the offset is the
// correctly rounded mean, torch's f32 summation lands one ulp away here.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "codec_test_util.hpp"
#include "qtool/quant/nf4_codec.hpp"

namespace qtool {
namespace {

using testing::DecodeMatrix;
using testing::EncodeMatrix;
using testing::Fnv1a;

constexpr int64_t kRows = 67, kCols = 999;  // odd: blocks straddle rows, last block is partial

// The reference tensor of bnb_nf4_reference.py: seeded values, every 97th scaled by 8.
std::vector<float> ReferenceTensor() {
  std::vector<float> x = testing::SeededNormal(kRows * kCols, 2024, 0.05);
  for (size_t i = 0; i < x.size(); i += 97) x[i] *= 8.0f;
  return x;
}

// Codes of all elements in flattened order (the high nibble holds the even column).
std::vector<uint8_t> UnpackCodes(const std::vector<std::byte>& q) {
  std::vector<uint8_t> codes;
  const int64_t row_bytes = (kCols + 1) / 2;
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) {
      const auto b = static_cast<uint8_t>(q[static_cast<size_t>(r * row_bytes + c / 2)]);
      codes.push_back(c % 2 == 0 ? b >> 4 : b & 0xf);
    }
  }
  return codes;
}

// Definition: the index of the nearest table value (brute force, in double).
int Nearest(const float* table, int n, double v) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    if (std::fabs(v - table[i]) < std::fabs(v - table[best])) best = i;
  }
  return best;
}

TEST(Nf4, TablesMatchBitsandbytes) {
  EXPECT_EQ(Fnv1a(Nf4Values().data(), 16 * 4), 0x38e10558c37c2c71ull);
  EXPECT_EQ(Fnv1a(DynamicMap8().data(), 256 * 4), 0xd677f22a96665bc4ull);
  EXPECT_EQ(Nf4Values()[7], 0.0f);
  EXPECT_TRUE(std::is_sorted(DynamicMap8().begin(), DynamicMap8().end()));
  EXPECT_EQ(DynamicMap8()[255], 1.0f);
}

TEST(Nf4, EveryNibbleDecodesToItsValueAndReencodesToItself) {
  // One block of 16 values, the NF4 table itself: absmax is 1, so value k must get code k.
  const auto& v = Nf4Values();
  for (int64_t cols : {16, 17}) {
    std::vector<float> w(v.begin(), v.end());
    if (cols == 17) w.push_back(0.5f);
    Nf4Codec codec({.block = 32}, 1, cols);
    const auto enc = EncodeMatrix(codec, w);
    const auto codes = std::vector<std::byte>(enc.parts[0]);
    for (int k = 0; k < 16; ++k) {
      const auto b = static_cast<uint8_t>(codes[static_cast<size_t>(k / 2)]);
      EXPECT_EQ(k % 2 == 0 ? b >> 4 : b & 0xf, k);
      EXPECT_EQ(enc.dequant[static_cast<size_t>(k)], v[static_cast<size_t>(k)]);
    }
    EXPECT_EQ(DecodeMatrix(codec, enc), enc.dequant);
  }
}

TEST(Nf4, CodesAndAbsmaxMatchBitsandbytes) {
  const std::vector<float> x = ReferenceTensor();
  EXPECT_EQ(x[0], -0.3460959494113922f);  // the generator agrees with the Python one
  EXPECT_EQ(x[1], 0.005804848857223988f);
  for (bool dq : {false, true}) {
    SCOPED_TRACE(dq ? "double quant" : "f32 absmax");
    Nf4Codec codec({.double_quant = dq}, kRows, kCols);
    const auto enc = EncodeMatrix(codec, x, 7);
    const auto codes = UnpackCodes(enc.parts[0]);
    EXPECT_EQ(Fnv1a(codes.data(), codes.size()), 0xb2adbbf657aa06f3ull);
    ASSERT_EQ(codec.num_blocks(), (kRows * kCols + 63) / 64);
    if (!dq) {
      EXPECT_EQ(Fnv1a(enc.parts[1].data(), enc.parts[1].size()), 0x5684f690f0bccd88ull);
    } else {
      EXPECT_EQ(Fnv1a(enc.parts[1].data(), enc.parts[1].size()), 0x0fc78e9e96457f8aull);
      EXPECT_EQ(static_cast<uint8_t>(enc.parts[1][235]), 58);  // native CPU library: 59
      uint32_t offset;
      std::memcpy(&offset, enc.parts[3].data(), 4);
      EXPECT_LE(std::max(offset, 0x3e1aecc4u) - std::min(offset, 0x3e1aecc4u), 1u);
      const uint32_t absmax2[] = {0x3eddf76a, 0x3edbe402, 0x3f09b711, 0x3eeeb874, 0x3eb5c432};
      ASSERT_EQ(enc.parts[2].size(), sizeof(absmax2));
      EXPECT_EQ(std::memcmp(enc.parts[2].data(), absmax2, sizeof(absmax2)), 0);
    }
    EXPECT_EQ(DecodeMatrix(codec, enc, 4), enc.dequant);
  }
}

// The same tensor checked against the definition written out here: block absmax, nearest NF4
// value; offset = mean absmax, chunks of 256, nearest dynamic-map value; decode = value * scale.
TEST(Nf4, DoubleQuantFollowsTheDefinition) {
  const std::vector<float> x = ReferenceTensor();
  Nf4Codec codec({.double_quant = true}, kRows, kCols);
  const auto enc = EncodeMatrix(codec, x);
  const auto codes = UnpackCodes(enc.parts[0]);
  const int64_t n = kRows * kCols, nb = (n + 63) / 64;
  std::vector<double> absmax(static_cast<size_t>(nb), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    absmax[static_cast<size_t>(i / 64)] =
        std::max(absmax[static_cast<size_t>(i / 64)], std::fabs(static_cast<double>(x[i])));
  }
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i] / absmax[static_cast<size_t>(i / 64)];
    ASSERT_EQ(codes[static_cast<size_t>(i)], Nearest(Nf4Values().data(), 16, v)) << "element " << i;
  }
  double mean = 0;
  for (double a : absmax) mean += a;
  mean /= static_cast<double>(nb);
  float offset, scale;
  std::memcpy(&offset, enc.parts[3].data(), 4);
  EXPECT_NEAR(offset, mean, 1e-6 * mean);
  for (int64_t b = 0; b < nb; ++b) {
    std::memcpy(&scale, enc.parts[2].data() + b / 256 * 4, 4);
    double chunk_max = 0;
    for (int64_t j = b / 256 * 256; j < std::min(nb, b / 256 * 256 + 256); ++j) {
      chunk_max = std::max(chunk_max, std::fabs(absmax[static_cast<size_t>(j)] - offset));
    }
    EXPECT_EQ(scale, static_cast<float>(chunk_max));
    const auto q = static_cast<uint8_t>(enc.parts[1][static_cast<size_t>(b)]);
    EXPECT_EQ(q,
              Nearest(DynamicMap8().data(), 256, (absmax[static_cast<size_t>(b)] - offset) / scale))
        << "block " << b;
    // Decoding: NF4 value * (map value * absmax2 + offset).
    const float a = DynamicMap8()[q] * scale + offset;
    const int64_t i = b * 64;
    EXPECT_EQ(enc.dequant[static_cast<size_t>(i)], Nf4Values()[codes[static_cast<size_t>(i)]] * a);
  }
}

TEST(Nf4, ZeroBlockAndBitsPerWeight) {
  std::vector<float> w(128, 0.0f);
  w[100] = 1.0f;
  Nf4Codec codec({}, 2, 64);
  const auto enc = EncodeMatrix(codec, w);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(static_cast<uint8_t>(enc.parts[0][i]), 0x77);  // zeros
  EXPECT_EQ(DecodeMatrix(codec, enc), w);
  Nf4Codec big({}, 4096, 4096), big_dq({.double_quant = true}, 4096, 4096);
  EXPECT_DOUBLE_EQ(big.BitsPerWeight(), 4.5);  // 4 + 32 / 64
  const double n = 4096.0 * 4096.0;  // codes, u8 absmax, f32 absmax2 per 256 blocks, f32 offset
  EXPECT_DOUBLE_EQ(big_dq.BitsPerWeight(), 4.0 + 8.0 / 64 + 32.0 / (64 * 256) + 32.0 / n);
}

}  // namespace
}  // namespace qtool
