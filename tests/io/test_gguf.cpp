// GGUF container: write -> read round trips of every value type and tensor type, streaming in
// arbitrary pieces, byte-exact header encoding, and refusal of malformed files with FormatError.
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/temp_path.hpp"
#include "test_support.hpp"

namespace qtool::gguf {
namespace {

using KV = std::vector<std::pair<std::string, Value>>;

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

KV EveryValueType() {
  KV kv;
  kv.emplace_back("general.architecture", std::string("llama"));
  kv.emplace_back("u8", uint8_t{200});
  kv.emplace_back("i8", int8_t{-100});
  kv.emplace_back("u16", uint16_t{60000});
  kv.emplace_back("i16", int16_t{-30000});
  kv.emplace_back("u32", uint32_t{4000000000u});
  kv.emplace_back("i32", int32_t{-2000000000});
  kv.emplace_back("f32", 1.5f);
  kv.emplace_back("bool", true);
  kv.emplace_back("u64", uint64_t{1} << 63);
  kv.emplace_back("i64", int64_t{-1} << 62);
  kv.emplace_back("f64", 0.1);
  kv.emplace_back("empty string", std::string());
  kv.emplace_back("tokens", Value::Array(ValueType::kString, {std::string("<s>"), std::string(""),
                                                              std::string("\xe2\x96\x81the")}));
  kv.emplace_back("scores", Value::Array(ValueType::kF32, {-1.f, 0.f, 2.5f}));
  kv.emplace_back("types", Value::Array(ValueType::kI32, {int32_t{1}, int32_t{3}}));
  kv.emplace_back("flags", Value::Array(ValueType::kBool, {true, false}));
  kv.emplace_back("wide", Value::Array(ValueType::kU64, {uint64_t{7}}));
  kv.emplace_back("none", Value::Array(ValueType::kF64, {}));
  return kv;
}

bool SameValue(const Value& a, const Value& b) {
  return a.is_array == b.is_array && a.scalar == b.scalar &&
         (!a.is_array || (a.elem_type == b.elem_type && a.items == b.items));
}

struct Written {
  std::vector<TensorSpec> specs;
  std::vector<std::vector<std::byte>> data;
};

// One tensor of each type with random content (quantised from Gaussian values), shapes with 1-4
// dimensions.
Written SomeTensors() {
  Written w;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  int i = 0;
  for (const ggml::TypeTraits& t : ggml::kTypes) {
    const uint64_t row = static_cast<uint64_t>(t.block_size == 1 ? 7 : t.block_size) * (1 + i % 2);
    std::vector<uint64_t> ne = {row};
    for (int d = 1; d <= i % 4; ++d) ne.push_back(static_cast<uint64_t>(1 + (i + d) % 3));
    TensorSpec spec{fmt::format("t{}.{}", i, t.name), ne, t.type};
    std::vector<float> x(spec.nbytes() / static_cast<uint64_t>(t.type_size) *
                         static_cast<uint64_t>(t.block_size));
    for (float& v : x) v = dist(rng);
    std::vector<std::byte> q(spec.nbytes());
    ggml::Quantize(t.type, x.data(), q.data(), static_cast<int64_t>(x.size()));
    w.specs.push_back(spec);
    w.data.push_back(std::move(q));
    ++i;
  }
  return w;
}

TEST(Gguf, RoundTripEveryValueAndTensorType) {
  for (uint32_t alignment : {32u, 64u, 1u}) {
    testing::ScratchDir dir;
    const auto path = dir / "m.gguf";
    KV kv = EveryValueType();
    if (alignment != 32) kv.emplace_back("general.alignment", alignment);
    const Written w = SomeTensors();
    {
      Writer writer(path, kv, w.specs);
      EXPECT_FALSE(std::filesystem::exists(path));
      // Stream in pieces of 5 bytes, across tensor boundaries.
      std::vector<std::byte> all;
      for (const auto& d : w.data) all.insert(all.end(), d.begin(), d.end());
      for (size_t p = 0; p < all.size(); p += 5) {
        writer.Write(std::span(all).subspan(p, std::min<size_t>(5, all.size() - p)));
      }
      writer.Commit();
    }
    const File f(path);
    const Header& h = f.header();
    EXPECT_EQ(h.version, 3u);
    EXPECT_EQ(h.alignment, alignment);
    ASSERT_EQ(h.kv.size(), kv.size());
    for (size_t i = 0; i < kv.size(); ++i) {
      EXPECT_EQ(h.kv[i].first, kv[i].first);
      EXPECT_TRUE(SameValue(h.kv[i].second, kv[i].second)) << kv[i].first;
    }
    EXPECT_EQ(h.Find("i32")->AsInt(), -2000000000);
    EXPECT_EQ(h.Find("u64")->AsInt(), std::nullopt);  // 2^63 does not fit
    EXPECT_EQ(h.Find("f32")->AsFloat(), 1.5);
    EXPECT_EQ(*h.Find("general.architecture")->AsString(), "llama");
    ASSERT_EQ(h.tensors.size(), w.specs.size());
    for (size_t i = 0; i < w.specs.size(); ++i) {
      const TensorInfo& t = h.tensors[i];
      EXPECT_EQ(t.name, w.specs[i].name);
      EXPECT_EQ(t.ne, w.specs[i].ne);
      EXPECT_EQ(t.type, w.specs[i].type);
      EXPECT_EQ(t.offset % alignment, 0u);
      const auto bytes = f.Data(t);
      ASSERT_EQ(bytes.size(), w.data[i].size());
      EXPECT_EQ(std::memcmp(bytes.data(), w.data[i].data(), bytes.size()), 0) << t.name;
      std::vector<float> a(t.numel());
      std::vector<float> b(t.numel());
      f.Dequantize(t, a);
      ggml::Dequantize(t.type, w.data[i].data(), b.data(), static_cast<int64_t>(b.size()));
      EXPECT_EQ(a, b);
    }
    // The file is the encoded header, then each tensor padded to the alignment.
    const std::string file = testing::ReadFile(path);
    const std::string header = Writer::EncodeHeader(kv, w.specs);
    EXPECT_EQ(file.substr(0, header.size()), header);
    EXPECT_EQ(h.data_offset, header.size());
    // Nothing else is left in the directory (no temporary file).
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
  }
}

// A run interrupted while a GGUF file is half written leaves nothing behind: the writer's
// temporary is registered for the signal cleanup, as the safetensors writer's is.
TEST(GgufDeathTest, WriterTemporaryIsRemovedOnSignals) {
  testing::ScratchDir dir;
  const auto path = dir / "m.gguf";
  EXPECT_EXIT(
      {
        CleanUpTempsOnSignals();
        Writer w(path, {}, {{"a", {32}, ggml::Type::kQ8_0}});
        w.Write(std::vector<std::byte>(10));
        ::kill(::getpid(), SIGTERM);
        ::pause();
      },
      ::testing::ExitedWithCode(128 + SIGTERM), "");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 0);
}

TEST(Gguf, WriterRefusesTooMuchOrTooLittleAndLeavesNothing) {
  testing::ScratchDir dir;
  const auto path = dir / "m.gguf";
  const std::vector<TensorSpec> specs = {{"a", {32}, ggml::Type::kQ8_0}};
  const std::vector<std::byte> block(34);
  {
    Writer w(path, {}, specs);
    w.Write(std::span(block).first(10));
    EXPECT_THROW(w.Commit(), OptionError);
  }
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 0);
  {
    Writer w(path, {}, specs);
    const std::vector<std::byte> more(35);
    EXPECT_THROW(w.Write(more), OptionError);
  }
  EXPECT_THROW(Writer(path, {}, {{"a", {33}, ggml::Type::kQ8_0}}), ShapeError);
  EXPECT_THROW(Writer(path, {}, {{"a", {32}, ggml::Type::kF32}, {"a", {32}, ggml::Type::kF32}}),
               OptionError);
  EXPECT_THROW(Writer(path, {{"general.alignment", uint32_t{48}}}, {}), OptionError);
  EXPECT_THROW(Writer(path, {{"general.alignment", uint64_t{32}}}, {}), OptionError);
  EXPECT_THROW(Value::Array(ValueType::kU32, {int32_t{1}}), OptionError);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 0);
}

// A small valid image: two tensors, a string array.
std::string SmallImage() {
  const KV kv = {
      {"general.architecture", std::string("llama")},
      {"tokens", Value::Array(ValueType::kString, {std::string("a"), std::string("b")})}};
  const std::vector<TensorSpec> specs = {{"x", {32, 2}, ggml::Type::kQ8_0},
                                         {"y", {4}, ggml::Type::kF32}};
  std::string s = Writer::EncodeHeader(kv, specs);
  s.append(68, '\1');
  s.append(28, '\0');  // padding to 96
  s.append(16, '\2');
  return s;
}

// Overwrites the bytes at `pos` with those of v.
template <typename T>
std::string Patched(std::string s, size_t pos, T v) {
  std::memcpy(s.data() + pos, &v, sizeof(T));
  return s;
}

void ExpectRefused(const std::string& image, const std::string& needle) {
  try {
    Parse(Bytes(image), "bad.gguf");
    ADD_FAILURE() << "accepted; expected an error mentioning '" << needle << "'";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.gguf"), std::string::npos) << e.what();
  }
}

TEST(Gguf, ParsesTheSmallImage) {
  const Header h = Parse(Bytes(SmallImage()), "small");
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[1].offset, 96u);
  EXPECT_EQ(h.tensors[0].nbytes, 68u);
}

TEST(Gguf, EveryTruncationIsRefused) {
  const std::string image = SmallImage();
  for (size_t n = 0; n < image.size(); ++n) {
    EXPECT_THROW(Parse(Bytes(image.substr(0, n)), "cut"), FormatError) << n;
  }
}

TEST(Gguf, MalformedHeadersAreRefused) {
  const std::string ok = SmallImage();
  // Offsets in SmallImage: magic 0, version 4, n_tensors 8, n_kv 16, first key length 24.
  ExpectRefused("GGUG" + ok.substr(4), "not a GGUF file");
  ExpectRefused(Patched(ok, 4, uint32_t{1}), "version 1");
  ExpectRefused(Patched(ok, 4, uint32_t{0x03000000}), "big-endian");
  ExpectRefused(Patched(ok, 8, uint64_t{1} << 60), "tensor infos cannot fit");
  ExpectRefused(Patched(ok, 16, uint64_t{1} << 60), "key-value pairs cannot fit");
  ExpectRefused(Patched(ok, 24, uint64_t{1} << 62), "truncated");
  // The first value's type follows its key "general.architecture" (20 bytes).
  const size_t type_pos = 24 + 8 + 20;
  ExpectRefused(Patched(ok, type_pos, uint32_t{13}), "unknown value type 13");
  // The second key "tokens": its array header follows.
  const size_t arr = type_pos + 4 + 8 + 5 + 8 + 6 + 4;
  ExpectRefused(Patched(ok, arr, uint32_t{9}), "nested arrays");
  ExpectRefused(Patched(ok, arr + 4, uint64_t{1} << 61), "does not fit");
  // Tensor "x": name at arr + 4 + 8 + (8 + 1) * 2.
  const size_t x = arr + 4 + 8 + 18;
  const size_t x_dims = x + 8 + 1;
  ExpectRefused(Patched(ok, x_dims, uint32_t{5}), "5 dimensions");
  ExpectRefused(Patched(ok, x_dims, uint32_t{0}), "0 dimensions");
  ExpectRefused(Patched(ok, x_dims + 4, uint64_t{33}), "not a multiple of the q8_0 block size");
  ExpectRefused(Patched(Patched(ok, x_dims + 4, uint64_t{1} << 40), x_dims + 12, uint64_t{1} << 40),
                "overflows");
  ExpectRefused(Patched(ok, x_dims + 20, uint32_t{4}), "unsupported ggml type 4");
  ExpectRefused(Patched(ok, x_dims + 24, uint64_t{16}), "not a multiple of the alignment");
  ExpectRefused(Patched(ok, x_dims + 24, uint64_t{96}), "outside");
  ExpectRefused(Patched(ok, x_dims + 24, uint64_t{1} << 63), "outside");
  // Tensor "y" moved onto "x".
  const size_t y_offset = x_dims + 32 + 8 + 1 + 4 + 8 + 4;
  ExpectRefused(Patched(ok, y_offset, uint64_t{64}), "overlap");
  // Same name twice.
  ExpectRefused(Patched(ok, x + 8, 'y'), "appears twice");
}

TEST(Gguf, BadAlignmentAndDuplicateKeysAreRefused) {
  const std::vector<TensorSpec> none;
  std::string dup = Writer::EncodeHeader({{"a", uint8_t{1}}, {"b", uint8_t{1}}}, none);
  dup[24 + 8] = 'b';  // key "a" -> "b"
  ExpectRefused(dup, "appears twice");
  std::string align = Writer::EncodeHeader({{"general.alignment", uint32_t{32}}}, none);
  ExpectRefused(Patched(align, align.find("general.alignment") + 17 + 4, uint32_t{24}),
                "power of two");
  ExpectRefused(Patched(align, align.find("general.alignment") + 17, uint32_t{10}), "power of two");
  std::string b = Writer::EncodeHeader({{"flag", true}}, none);
  ExpectRefused(Patched(b, 24 + 8 + 4 + 4, uint8_t{2}), "bool");  // the value byte
}

// Replays the fuzzing seed corpus (tests/fuzz/gguf-corpus): each input parses or is refused.
TEST(Gguf, FuzzCorpusParsesOrIsRefused) {
  const std::filesystem::path dir =
      std::filesystem::path(QTOOL_SOURCE_DIR) / "tests/fuzz/gguf-corpus";
  int n = 0;
  int parsed = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string bytes = testing::ReadFile(e.path());
    try {
      Parse(Bytes(bytes), e.path().string());
      ++parsed;
    } catch (const FormatError&) {
    }
    ++n;
  }
  EXPECT_GE(n, 6) << "the corpus in " << dir << " is missing";
  EXPECT_GE(parsed, 1);
}

}  // namespace
}  // namespace qtool::gguf
