// Every registered codec: decode reproduces what encode reported, chunking does not matter, the
// stored layout and bits per weight are as documented, and codec-specific rules hold.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "codec_test_util.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/metrics.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/kernels.hpp"
#include "qtool/quant/fp_codec.hpp"
#include "qtool/quant/mx_codec.hpp"
#include "qtool/quant/nvfp4_codec.hpp"

namespace qtool {
namespace {

using json = nlohmann::json;
using testing::DecodeMatrix;
using testing::EncodeMatrix;

// One record per format family and scale arrangement.
std::vector<json> AllRecords() {
  std::vector<json> r;
  for (int bits = 2; bits <= 8; ++bits) {
    r.push_back({{"codec", "int"}, {"bits", bits}, {"granularity", "group"}, {"group_size", 32}});
  }
  r.push_back({{"codec", "int"}, {"bits", 4}, {"granularity", "tensor"}, {"observer", "mse"}});
  r.push_back({{"codec", "int"},
               {"bits", 3},
               {"symmetric", false},
               {"granularity", "channel"},
               {"observer", "percentile:99"}});
  r.push_back({{"codec", "int"}, {"bits", 8}, {"granularity", "tensor"}, {"observer", "kl"}});
  r.push_back({{"codec", "int"}, {"bits", 4}, {"group_size", 32}, {"g_idx", true}});
  r.push_back(
      {{"codec", "int"}, {"bits", 3}, {"symmetric", false}, {"group_size", 16}, {"g_idx", true}});
  r.push_back({{"codec", "ternary"}, {"granularity", "tensor"}});
  r.push_back({{"codec", "ternary"}, {"granularity", "group"}, {"group_size", 16}});
  r.push_back({{"codec", "nf4"}, {"block", 64}, {"double_quant", false}});
  r.push_back({{"codec", "nf4"}, {"block", 32}, {"double_quant", true}});
  r.push_back({{"codec", "nf4"}, {"block", 64}, {"double_quant", true}, {"map", "fp4"}});
  for (const char* f : {"e4m3", "e5m2", "e2m1", "e2m3", "e3m2"}) {
    r.push_back({{"codec", "fp"}, {"format", f}, {"scale", "tensor"}});
    r.push_back({{"codec", "fp"}, {"format", f}, {"scale", "channel"}});
    r.push_back({{"codec", "fp"}, {"format", f}, {"scale", "block"}, {"block", {2, 16}}});
  }
  for (const char* e : {"e4m3", "e5m2", "e2m3", "e3m2", "e2m1", "int8"}) {
    r.push_back({{"codec", "mx"}, {"element", e}, {"block", 32}});
  }
  r.push_back({{"codec", "nvfp4"}});
  return r;
}

class CodecRoundTrip : public ::testing::TestWithParam<json> {};

TEST_P(CodecRoundTrip, DecodeMatchesEncodeAtEverySize) {
  for (int64_t rows : {1, 3, 5}) {
    for (int64_t cols : {1, 7, 31, 32, 33, 63, 64, 65, 4096 + 17}) {
      SCOPED_TRACE(::testing::Message() << rows << " x " << cols);
      const auto w = testing::SeededNormal(rows * cols, 7 + rows * cols, 0.02);
      auto codec = MakeCodec(GetParam(), rows, cols);
      EXPECT_EQ(CodecRecord(*MakeCodec(CodecRecord(*codec), rows, cols)), CodecRecord(*codec));
      const auto a = EncodeMatrix(*codec, w, 1);
      const auto b = EncodeMatrix(*codec, w, 4);
      EXPECT_EQ(a.parts, b.parts) << "chunking changed the stored bytes";
      const auto y = DecodeMatrix(*codec, a);
      ASSERT_EQ(y.size(), w.size());
      EXPECT_EQ(std::memcmp(y.data(), a.dequant.data(), y.size() * 4), 0);
      ErrorStats s;
      kernels::AccumulateErrors(w.data(), y.data(), static_cast<int64_t>(w.size()), &s);
      EXPECT_GT(s.cosine(), 0.6);  // even ternary and INT2 keep the direction of Gaussian data
      // Bits per weight is the stored size, scales included.
      uint64_t bytes = 0;
      for (const auto& t : codec->Layout("x")) bytes += t.nbytes();
      EXPECT_DOUBLE_EQ(codec->BitsPerWeight(),
                       8.0 * static_cast<double>(bytes) / static_cast<double>(rows * cols));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, CodecRoundTrip, ::testing::ValuesIn(AllRecords()),
                         [](const auto& info) {
                           std::string n = std::to_string(info.index) + "_" +
                                           info.param["codec"].template get<std::string>();
                           return n;
                         });

TEST(Codecs, RegistryListsEveryFamily) {
  const auto names = CodecNames();
  for (const char* n : {"fp", "int", "mx", "nf4", "nvfp4", "ternary"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  EXPECT_THROW(MakeCodec({{"codec", "fp"}, {"format", "e9m9"}}, 2, 2), OptionError);
  EXPECT_THROW(MakeCodec({{"codec", "mx"}, {"element", "int4"}}, 2, 2), OptionError);
  EXPECT_THROW(MakeCodec({{"codec", "nf4"}, {"block", 16}}, 2, 2), OptionError);
  EXPECT_THROW(MakeCodec({{"codec", "nvfp4"}, {"block", 32}}, 2, 2), OptionError);
  EXPECT_THROW(MakeCodec({{"codec", "int"}, {"bits", 4}, {"observer", "median"}}, 2, 2),
               OptionError);
}

// The packed layout of INT3 and INT2 (pack.hpp): one little-endian bit stream per row.
TEST(Codecs, Int3AndInt2Packing) {
  const uint8_t codes3[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  uint8_t out3[3];
  PackCodes(codes3, 8, 3, out3);
  EXPECT_EQ(out3[0], 0x88);  // code 0 in bits 0-2, code 1 in 3-5, low two bits of code 2 in 6-7
  EXPECT_EQ(out3[1], 0xc6);
  EXPECT_EQ(out3[2], 0xfa);
  const uint8_t codes2[5] = {0, 1, 2, 3, 1};
  uint8_t out2[2];
  PackCodes(codes2, 5, 2, out2);
  EXPECT_EQ(out2[0], 0xe4);
  EXPECT_EQ(out2[1], 0x01);  // padded with zero bits
  for (int bits = 2; bits <= 8; ++bits) {
    for (int64_t n : {1, 7, 8, 9, 31, 33, 64, 65}) {
      std::vector<uint8_t> c(static_cast<size_t>(n)), back(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) c[static_cast<size_t>(i)] = (i * 5 + 3) % (1 << bits);
      std::vector<uint8_t> packed(static_cast<size_t>(PackedBytes(n, bits)));
      PackCodes(c.data(), n, bits, packed.data());
      UnpackCodes(packed.data(), n, bits, back.data());
      EXPECT_EQ(c, back) << bits << " bits, " << n;
    }
  }
  // Stored size: INT3 g128 is 3 bits + one f32 per 128 weights.
  auto int3 = MakeCodec({{"codec", "int"}, {"bits", 3}, {"group_size", 128}}, 256, 1024);
  EXPECT_DOUBLE_EQ(int3->BitsPerWeight(), 3.25);
}

// With a g_idx, column c decodes with the parameters of group g_idx[c]: moving the codes of
// column p[c] to column c along with its group gives the decoded column p[c] at c. A g_idx entry
// outside [0, G) is refused.
TEST(Codecs, IntGroupIndexPicksEachColumnsGroup) {
  for (const bool symmetric : {true, false}) {
    const json rec = {{"codec", "int"},
                      {"bits", 4},
                      {"symmetric", symmetric},
                      {"group_size", 8},
                      {"g_idx", true}};
    const int64_t rows = 3, cols = 37;
    auto codec = MakeCodec(rec, rows, cols);
    const auto w = testing::SeededNormal(rows * cols, 99, 0.02);
    testing::Encoded e = testing::EncodeMatrix(*codec, w);
    const std::vector<float> plain = testing::DecodeMatrix(*codec, e);
    std::vector<int64_t> p(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) p[static_cast<size_t>(c)] = (c * 11 + 5) % cols;
    const int64_t row_bytes = PackedBytes(cols, 4);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<uint8_t> codes(static_cast<size_t>(cols)), moved(codes.size());
      UnpackCodes(reinterpret_cast<const uint8_t*>(e.parts[0].data()) + r * row_bytes, cols, 4,
                  codes.data());
      for (int64_t c = 0; c < cols; ++c) moved[static_cast<size_t>(c)] = codes[p[c]];
      PackCodes(moved.data(), cols, 4,
                reinterpret_cast<uint8_t*>(e.parts[0].data()) + r * row_bytes);
    }
    auto* g_idx = reinterpret_cast<int32_t*>(e.parts.back().data());
    for (int64_t c = 0; c < cols; ++c) g_idx[c] = static_cast<int32_t>(p[c] / 8);
    const std::vector<float> moved = testing::DecodeMatrix(*codec, e);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        ASSERT_EQ(moved[r * cols + c], plain[r * cols + p[c]]) << r << ", " << c;
      }
    }
    g_idx[5] = 5;  // 37 columns in groups of 8: groups 0..4
    EXPECT_THROW(testing::DecodeMatrix(*codec, e), FormatError);
    g_idx[5] = -1;
    EXPECT_THROW(testing::DecodeMatrix(*codec, e), FormatError);
  }
  EXPECT_THROW(
      MakeCodec({{"codec", "int"}, {"bits", 4}, {"granularity", "channel"}, {"g_idx", true}}, 2, 2),
      OptionError);
}

// The one-pass path from stored rows writes what EncodeRows writes and the error sums of what it
// decodes; codecs, specs and rows it does not cover are declined without any output.
TEST(Codecs, IntStoredRowsMatchEncodeRows) {
  const int64_t rows = 6, cols = 96;
  const auto w32 = testing::SeededNormal(rows * cols, 5, 0.02);
  std::vector<uint16_t> bf16(w32.size() + 1);
  for (size_t i = 0; i < w32.size(); ++i) bf16[i] = F32ToBf16(w32[i]);
  std::vector<float> w(w32.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = Bf16ToF32(bf16[i]);
  const auto* x = reinterpret_cast<const std::byte*>(bf16.data());
  for (const json& rec :
       {json{{"codec", "int"}, {"bits", 4}, {"group_size", 32}},
        json{{"codec", "int"}, {"bits", 4}, {"group_size", 16}, {"g_idx", true}},
        json{{"codec", "int"}, {"bits", 8}, {"granularity", "channel"}},
        json{{"codec", "int"}, {"bits", 3}, {"symmetric", false}, {"group_size", 128}}}) {
    SCOPED_TRACE(rec.dump());
    auto codec = MakeCodec(rec, rows, cols);
    const testing::Encoded want = testing::EncodeMatrix(*codec, w, 4);
    std::vector<std::vector<std::byte>> parts;
    std::vector<std::byte*> ptrs;
    for (const TensorSpec& t : codec->Layout("w")) parts.emplace_back(t.nbytes());
    for (auto& p : parts) ptrs.push_back(p.data());
    for (const int64_t r0 : {int64_t{4}, int64_t{0}}) {
      const int64_t nrows = std::min<int64_t>(4, rows - r0);
      ErrorStats got, expected;
      int64_t bad = 7;
      ASSERT_TRUE(codec->EncodeStoredRows(x + r0 * cols * 2, DType::kBF16, r0, nrows, ptrs.data(),
                                          &got, &bad));
      EXPECT_EQ(bad, -1);
      kernels::AccumulateErrors(w.data() + r0 * cols, want.dequant.data() + r0 * cols, nrows * cols,
                                &expected);
      EXPECT_EQ(got.sum_e2, expected.sum_e2);
      EXPECT_EQ(got.sum_xy, expected.sum_xy);
      EXPECT_EQ(got.max_abs_err, expected.max_abs_err);
      EXPECT_EQ(got.n, expected.n);
    }
    EXPECT_EQ(parts, want.parts);
    int64_t bad = 0;
    ErrorStats stats;
    EXPECT_FALSE(codec->EncodeStoredRows(x + 1, DType::kBF16, 0, 1, ptrs.data(), &stats, &bad));
    EXPECT_FALSE(codec->EncodeStoredRows(x, DType::kF64, 0, 1, ptrs.data(), &stats, &bad));
    EXPECT_EQ(stats.n, 0);
  }
  for (const json& rec :
       {json{{"codec", "int"}, {"bits", 4}, {"granularity", "tensor"}},
        json{{"codec", "int"}, {"bits", 4}, {"group_size", 24}},
        json{{"codec", "int"}, {"bits", 4}, {"group_size", 32}, {"observer", "mse"}},
        json{{"codec", "nf4"}}}) {
    SCOPED_TRACE(rec.dump());
    auto codec = MakeCodec(rec, rows, cols);
    std::vector<std::vector<std::byte>> parts;
    std::vector<std::byte*> ptrs;
    for (const TensorSpec& t : codec->Layout("w")) parts.emplace_back(t.nbytes());
    for (auto& p : parts) ptrs.push_back(p.data());
    ErrorStats stats;
    int64_t bad = 0;
    EXPECT_FALSE(codec->EncodeStoredRows(x, DType::kBF16, 0, rows, ptrs.data(), &stats, &bad));
  }
  auto codec = MakeCodec({{"codec", "int"}, {"bits", 4}, {"group_size", 32}}, 1, 32);
  std::vector<std::vector<std::byte>> parts;
  std::vector<std::byte*> ptrs;
  for (const TensorSpec& t : codec->Layout("w")) parts.emplace_back(t.nbytes());
  for (auto& p : parts) ptrs.push_back(p.data());
  std::vector<uint16_t> nan_row(32, F32ToBf16(0.5f));
  nan_row[9] = 0x7fc0;  // bf16 NaN
  ErrorStats stats;
  int64_t bad = -1;
  ASSERT_TRUE(codec->EncodeStoredRows(reinterpret_cast<const std::byte*>(nan_row.data()),
                                      DType::kBF16, 0, 1, ptrs.data(), &stats, &bad));
  EXPECT_EQ(bad, 9);
}

TEST(Codecs, TernaryUsesTheAbsmeanScale) {
  const std::vector<float> w = {0.9f, -0.1f, 0.4f, -2.0f, 0.0f, 0.6f, -0.5f, 0.2f};
  auto codec = MakeCodec({{"codec", "ternary"}, {"granularity", "tensor"}}, 2, 4);
  const auto e = EncodeMatrix(*codec, w);
  float gamma;
  std::memcpy(&gamma, e.parts[1].data(), 4);
  EXPECT_FLOAT_EQ(gamma, 4.7f / 8);               // mean |w|
  const float q[8] = {1, 0, 1, -1, 0, 1, -1, 0};  // rne(w / gamma) clipped to [-1, 1]
  for (int i = 0; i < 8; ++i) EXPECT_EQ(e.dequant[static_cast<size_t>(i)], q[i] * gamma) << i;
  EXPECT_EQ(static_cast<uint8_t>(e.parts[0][0]), 2 | 1 << 2 | 2 << 4 | 0 << 6);  // u = q + 1
}

TEST(Codecs, FpBlockScalesAreAmaxOverMax) {
  // 4 x 4 matrix with 2 x 2 blocks; block (1, 0) holds the largest value 896 = 2 * 448.
  std::vector<float> w(16, 1.0f);
  w[2 * 4 + 1] = 896.0f;
  FpCodec codec({.granularity = Granularity::kGroup, .block_rows = 2, .block_cols = 2}, 4, 4);
  const auto e = EncodeMatrix(codec, w);
  const auto* scales = reinterpret_cast<const float*>(e.parts[1].data());
  EXPECT_EQ(scales[0], 1.0f / 448);
  EXPECT_EQ(scales[2], 2.0f);
  EXPECT_EQ(e.dequant[2 * 4 + 1], 896.0f);
  EXPECT_EQ(static_cast<uint8_t>(e.parts[0][2 * 4 + 1]), 0x7e);  // max code: 448 * 2
  EXPECT_EQ(e.dequant[2 * 4 + 0], 1.0f);                         // 1 / 2 = 0.5 is an E4M3 value
  EXPECT_EQ(static_cast<uint8_t>(e.parts[0][0]), 0x7e);  // 1 / (1 / 448) = 448, the max code
}

TEST(Codecs, MxBlocksFollowTheSpec) {
  // One row, two blocks: the first scaled by 2^-3, the second holding a NaN.
  std::vector<float> w(64);
  for (int i = 0; i < 32; ++i)
    w[static_cast<size_t>(i)] = 1.5f * std::ldexp(1.0f, -3) * (i % 3 - 1);
  w[5] = 6.0f * std::ldexp(1.0f, -3);  // amax 0.75 = 6 * 2^-3: floor(log2) = -1, minus emax 2
  for (int i = 32; i < 64; ++i) w[static_cast<size_t>(i)] = 1.0f;
  w[40] = std::numeric_limits<float>::quiet_NaN();
  MxCodec codec({.element = Element::kE2M1, .block = 32}, 1, 64);
  const auto e = EncodeMatrix(codec, w);
  EXPECT_EQ(static_cast<uint8_t>(e.parts[1][0]), 127 - 3);
  EXPECT_EQ(static_cast<uint8_t>(e.parts[1][1]), kE8M0Nan);
  for (int i = 0; i < 32; ++i)
    EXPECT_EQ(e.dequant[static_cast<size_t>(i)], w[static_cast<size_t>(i)]);
  for (int i = 32; i < 64; ++i) EXPECT_TRUE(std::isnan(e.dequant[static_cast<size_t>(i)]));
  // MXINT8: elements are q / 64; amax 1.5 gives X = 1 and 1.5 -> 96.
  MxCodec int8({.element = Element::kInt8, .block = 32}, 1, 2);
  const auto e8 = EncodeMatrix(int8, {1.5f, -0.01f});
  EXPECT_EQ(static_cast<uint8_t>(e8.parts[1][0]), 127);
  EXPECT_EQ(static_cast<int8_t>(e8.parts[0][0]), 96);
  EXPECT_EQ(static_cast<int8_t>(e8.parts[0][1]), -1);  // rne(-0.64)
  EXPECT_EQ(e8.dequant[1], -1.0f / 64);
}

// NVFP4 as compressed-tensors defines it: g = 448 * 6 / amax, block scales E4M3(g * amax / 6),
// elements E2M1(x / (S / g)), decoded as value * (S / g).
TEST(Codecs, Nvfp4ScalesFollowCompressedTensors) {
  // One row, three blocks of 16 (the last one 4 long): amax 3 (the tensor's), 0.75, and zeros.
  std::vector<float> w(36, 0.0f);
  for (int i = 0; i < 16; ++i) w[static_cast<size_t>(i)] = 0.1875f * static_cast<float>(i % 5);
  w[3] = -3.0f;
  w[16] = 0.75f;
  w[17] = 0.3f;
  Nvfp4Codec codec(1, 36);
  const auto e = EncodeMatrix(codec, w);
  float g;
  std::memcpy(&g, e.parts[2].data(), 4);
  EXPECT_EQ(g, 2688.0f / 3.0f);
  // Block 0: g * 3 / 6 = 448 exactly; block 1: g * 0.75 / 6 = 112; block 2: 0 -> 0.125 (0x20).
  EXPECT_EQ(static_cast<uint8_t>(e.parts[1][0]), 0x7e);
  EXPECT_EQ(DecodeMinifloat(static_cast<uint8_t>(e.parts[1][1]), kE4M3), 112.0f);
  EXPECT_EQ(static_cast<uint8_t>(e.parts[1][2]), 0x20);
  const float s0 = 448.0f / g, s1 = 112.0f / g;
  EXPECT_EQ(e.dequant[3], -6.0f * s0);  // E2M1 -6: code 0xf, the high nibble of byte 1
  EXPECT_EQ(static_cast<uint8_t>(e.parts[0][1]) >> 4, 0xf);
  EXPECT_EQ(e.dequant[16], 6.0f * s1);
  // 0.3 / s1 = 2.4 rounds to the E2M1 value 2 (code 4, the high nibble of byte 8).
  EXPECT_EQ(e.dequant[17], 2.0f * s1);
  EXPECT_EQ(static_cast<uint8_t>(e.parts[0][8]) >> 4, 4);
  for (int i = 20; i < 36; ++i) EXPECT_EQ(e.dequant[static_cast<size_t>(i)], 0.0f);
  // An all-zero tensor: global scale 1, every block scale 0.125.
  const auto z = EncodeMatrix(codec, std::vector<float>(36, 0.0f));
  std::memcpy(&g, z.parts[2].data(), 4);
  EXPECT_EQ(g, 1.0f);
  EXPECT_EQ(static_cast<uint8_t>(z.parts[1][0]), 0x20);
}

}  // namespace
}  // namespace qtool
