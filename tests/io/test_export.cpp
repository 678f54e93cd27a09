// Layouts of the serving stacks' checkpoints (io/export_layouts.hpp): fixed bit patterns from
// each format's definition, pack-then-unpack equal to qtool's own decoding for every bit width
// and option, the refusals, and whole-checkpoint conversion (io/export.hpp).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/text.hpp"
#include "qtool/io/export.hpp"
#include "qtool/io/export_layouts.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/quant/codec.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::ScratchDir;

// A weight quantised by qtool's codec: its stored tensors, with every f32 scale rounded to an f16
// value (GPTQ and AWQ store f16 scales, so only such a grid passes through them unchanged).
struct Quantised {
  json record;
  int64_t rows, cols;
  std::unique_ptr<WeightCodec> codec;
  std::vector<std::vector<std::byte>> parts;
  std::vector<const std::byte*> ptrs;

  Quantised(json rec, int64_t r, int64_t c, uint32_t seed = 1)
      : record(std::move(rec)), rows(r), cols(c) {
    codec = MakeCodec(record, rows, cols);
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    std::vector<float> w(static_cast<size_t>(rows * cols));
    for (float& x : w) x = dist(rng);
    std::vector<std::byte*> out;
    for (const TensorSpec& t : codec->Layout("w")) {
      parts.emplace_back(t.nbytes());
      out.push_back(parts.back().data());
    }
    if (codec->needs_observe()) codec->Observe(w.data(), 0, rows);
    std::vector<float> dequant(w.size());
    codec->EncodeRows(w.data(), 0, rows, out.data(), dequant.data());
    if (record.at("codec") == "int") {
      std::vector<std::byte>& s = parts[1];
      for (size_t i = 0; i + 4 <= s.size(); i += 4) {
        float v;
        std::memcpy(&v, s.data() + i, 4);
        v = F16ToF32(F32ToF16(v));
        std::memcpy(s.data() + i, &v, 4);
      }
    }
    for (const auto& p : parts) ptrs.push_back(p.data());
  }

  // Regroups the columns: column c goes to group (c * 7) % groups, as act-order may.
  void ScrambleGroups(int64_t groups) {
    std::vector<std::byte>& g = parts.back();
    for (int64_t c = 0; c < cols; ++c) {
      const int32_t v = static_cast<int32_t>((c * 7) % groups);
      std::memcpy(g.data() + c * 4, &v, 4);
    }
  }

  std::vector<float> Decode() const {
    std::vector<float> out(static_cast<size_t>(rows * cols));
    codec->DecodeRows(ptrs.data(), 0, rows, out.data());
    return out;
  }

  IntWeight Int() const { return IntWeightFromQtool("w", record, rows, cols, ptrs.data()); }
};

json IntRecord(int bits, bool sym, int64_t group, bool g_idx = false) {
  json r = {{"codec", "int"}, {"bits", bits}, {"symmetric", sym}};
  if (group > 0) {
    r["granularity"] = "group";
    r["group_size"] = group;
  } else {
    r["granularity"] = group == 0 ? "channel" : "tensor";
  }
  if (g_idx) r["g_idx"] = true;
  return r;
}

void ExpectSameBits(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i]))
        << "element " << i << ": " << a[i] << " vs " << b[i];
  }
}

void ExpectSameGrid(const IntWeight& a, const IntWeight& b) {
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.zeros, b.zeros);
  EXPECT_EQ(a.g_idx, b.g_idx);
  ExpectSameBits(a.scales, b.scales);
}

// A weight with codes given per element, one group per row.
IntWeight Handmade(int64_t rows, int64_t cols, int bits,
                   const std::function<int(int64_t, int64_t)>& code) {
  IntWeight w;
  w.name = "h";
  w.rows = rows;
  w.cols = cols;
  w.bits = bits;
  w.symmetric = false;
  w.group_size = cols;
  w.groups = 1;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) w.codes.push_back(static_cast<uint8_t>(code(r, c)));
  }
  w.scales.assign(static_cast<size_t>(rows), 1.0f);
  for (int64_t r = 0; r < rows; ++r)
    w.zeros.push_back(static_cast<uint8_t>(r % ((1 << bits) - 1) + 1));
  w.g_idx.assign(static_cast<size_t>(cols), 0);
  return w;
}

TEST(ExportLayouts, QtoolIntWeightDecodesAsTheCodec) {
  for (const json& rec : {IntRecord(4, true, 32), IntRecord(3, false, 16), IntRecord(8, true, 0),
                          IntRecord(4, false, -1), IntRecord(2, false, 8)}) {
    const Quantised q(rec, 24, 64);
    ExpectSameBits(q.Int().Decode(), q.Decode());
  }
}

TEST(ExportLayouts, GptqWordsFollowTheDefinition) {
  // 4 bits: input rows 0..7 of output column r in word 0, code c in bits [4c, 4c + 4).
  const IntWeight w = Handmade(32, 64, 4, [](int64_t r, int64_t c) { return (c + r) % 16; });
  const auto t = PackGptq(w, "m", /*v2=*/false);
  ASSERT_EQ(t[0].spec.shape, (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(Words(t[0])[0], 0x76543210u);                       // column 0, inputs 0..7
  EXPECT_EQ(Words(t[0])[1], 0x87654321u);                       // column 1
  EXPECT_EQ(Words(t[0])[32], 0xfedcba98u);                      // column 0, inputs 8..15
  EXPECT_EQ(Words(t[1])[0], 0x76543210u);                       // zeros 1..8 stored minus one (v1)
  EXPECT_EQ(Words(PackGptq(w, "m", true)[1])[0], 0x87654321u);  // v2: as they are
  // 3 bits: ten codes per word, the eleventh straddling words 0 and 1.
  const IntWeight w3 = Handmade(32, 32, 3, [](int64_t, int64_t c) { return c == 10 ? 7 : 0; });
  const auto t3 = PackGptq(w3, "m", false);
  EXPECT_EQ(Words(t3[0])[0], 0xc0000000u);
  EXPECT_EQ(Words(t3[0])[32], 0x00000001u);
}

TEST(ExportLayouts, AwqWordsInterleaveOutputs) {
  const IntWeight w = Handmade(8, 16, 4, [](int64_t r, int64_t) { return static_cast<int>(r); });
  const auto t = PackAwq(w, "m");
  ASSERT_EQ(t[0].spec.shape, (std::vector<int64_t>{16, 1}));
  EXPECT_EQ(Words(t[0])[0], 0x75316420u);  // nibble k holds output kAwqOrder[k]
  EXPECT_EQ(Words(t[1])[0], 0x86427531u);  // zeros r + 1, same order, not minus one
}

TEST(ExportLayouts, CompressedTensorsWordsAreDenseStreams) {
  const IntWeight w = Handmade(16, 16, 4, [](int64_t, int64_t c) { return static_cast<int>(c); });
  const auto t = PackCompressedTensorsInt(w, "m");
  ASSERT_EQ(t[0].spec.name, "m.weight_packed");
  EXPECT_EQ(Words(t[0])[0], 0x76543210u);
  EXPECT_EQ(Words(t[2])[0], 0x87654321u);  // zero-points of rows 0..7 (z = r + 1)
  const IntWeight w3 = Handmade(4, 12, 3, [](int64_t, int64_t c) { return c == 10 ? 5 : 0; });
  const auto t3 = PackCompressedTensorsInt(w3, "m");
  ASSERT_EQ(t3[0].spec.shape, (std::vector<int64_t>{4, 2}));  // ceil(12 * 3 / 32)
  EXPECT_EQ(Words(t3[0])[0], 0x40000000u);                    // 5 = 0b101: bits 30, 32
  EXPECT_EQ(Words(t3[0])[1], 0x00000001u);
}

TEST(ExportLayouts, GptqRoundTripsEveryWidth) {
  for (const int bits : {2, 3, 4, 8}) {
    for (const bool sym : {true, false}) {
      for (const bool v2 : {false, true}) {
        SCOPED_TRACE(fmt::format("bits {} sym {} v2 {}", bits, sym, v2));
        Quantised q(IntRecord(bits, sym, 32, /*g_idx=*/true), 32, 96, 3);
        q.ScrambleGroups(3);
        IntWeight w = q.Int();
        if (!v2) {
          for (uint8_t& z : w.zeros) z = std::max<uint8_t>(z, 1);  // v1 cannot hold 0
        }
        const IntWeight back = UnpackGptq(PackGptq(w, "m", v2), bits, sym, v2);
        ExpectSameGrid(back, w);
        EXPECT_TRUE(back.act_order);
        if (v2) ExpectSameBits(back.Decode(), q.Decode());
      }
    }
  }
}

TEST(ExportLayouts, AwqRoundTrips) {
  for (const bool sym : {true, false}) {
    const Quantised q(IntRecord(4, sym, 32), 24, 64, 5);
    const IntWeight w = q.Int();
    const IntWeight back = UnpackAwq(PackAwq(w, "m"), 32);
    ExpectSameGrid(back, w);
    ExpectSameBits(back.Decode(), q.Decode());
  }
}

TEST(ExportLayouts, CompressedTensorsRoundTrips) {
  for (const int bits : {2, 3, 4, 5, 8}) {
    for (const bool sym : {true, false}) {
      for (const int64_t group : {int64_t{16}, int64_t{0}}) {
        SCOPED_TRACE(fmt::format("bits {} sym {} group {}", bits, sym, group));
        // 21 rows: partial zero-point words; 50 columns (per channel): partial weight words.
        const Quantised q(IntRecord(bits, sym, group), 21, group ? 48 : 50, 7);
        const IntWeight w = q.Int();
        const IntWeight back =
            UnpackCompressedTensorsInt(PackCompressedTensorsInt(w, "m"), bits, sym, w.group_size);
        ExpectSameGrid(back, w);
        ExpectSameBits(back.Decode(), q.Decode());
        if (bits == 8) {  // the W8A8 layout: I8 values, unpacked
          const auto t = PackCompressedTensorsInt(w, "m", true);
          EXPECT_EQ(t[0].spec.dtype, DType::kI8);
          ExpectSameGrid(UnpackCompressedTensorsInt(t, bits, sym, w.group_size, true), w);
        }
      }
    }
  }
}

// The packed-word paths (qtool's packed rows moved word by word, as convert runs them) write the
// same bytes as packing the codes one by one.
TEST(ExportLayouts, PackedWordsEqualCodeByCode) {
  for (const int bits : {2, 3, 4, 5, 8}) {
    for (const bool sym : {true, false}) {
      SCOPED_TRACE(fmt::format("bits {} sym {}", bits, sym));
      // 96 columns: whole words at 2, 3, 4 and 8 bits (GPTQ); 50 columns at 5 bits: a padded
      // last word (compressed-tensors).
      const int64_t cols = bits == 5 ? 50 : 96;
      const Quantised q(IntRecord(bits, sym, bits == 5 ? 0 : 32), 32, cols, 11);
      const IntWeight codes = q.Int();
      const IntWeight packed = IntWeightFromQtool("w", q.record, 32, cols, q.ptrs.data(), true,
                                                  /*unpack=*/false);
      EXPECT_TRUE(packed.codes.empty());
      const auto a = PackCompressedTensorsInt(codes, "m"),
                 b = PackCompressedTensorsInt(packed, "m");
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].data, b[i].data) << a[i].spec.name;
      if (bits == 5) continue;
      const auto c = PackGptq(codes, "m", true), d = PackGptq(packed, "m", true);
      ASSERT_EQ(c.size(), d.size());
      for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(c[i].data, d[i].data) << c[i].spec.name;
    }
  }
}

TEST(ExportLayouts, BnbNf4DecodesAsQtool) {
  for (const Bnb4Map map : {Bnb4Map::kNf4, Bnb4Map::kFp4}) {
    for (const bool dq : {false, true}) {
      const Nf4Format f{.block = 64, .double_quant = dq, .map = map};
      SCOPED_TRACE(FormatToString(f));
      const Quantised q(CodecRecord(*MakeCodec(f, 1, 1)), 40, 96, 9);
      const auto t = PackBnbNf4("w", 40, 96, f, q.ptrs.data(), "m", "float32");
      ExpectSameBits(DecodeBnbNf4(t, 40, 96), q.Decode());
      const std::string js(reinterpret_cast<const char*>(t.back().data.data()),
                           t.back().data.size());
      EXPECT_EQ(json::parse(js).at("shape"), json::array({40, 96}));
      const std::string type(NameOf(kBnb4MapNames, map));
      EXPECT_EQ(json::parse(js).at("quant_type"), type);
      EXPECT_EQ(t.back().spec.name, "m.weight.quant_state.bitsandbytes__" + type);
    }
  }
  // bitsandbytes' FP4 codes (get_4bit_type("fp4"): 0, 0.0625, 8, 12, 4, 6, 2, 3, then the
  // negatives, code 8 a second +0, all divided by 12) and qtool's ascending indices.
  const std::array<float, 16> fp4 = BnbQuantMap(Bnb4Map::kFp4);
  const float want[16] = {0, 0.0625f, 8, 12, 4, 6, 2, 3, 0, -0.0625f, -8, -12, -4, -6, -2, -3};
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(std::bit_cast<uint32_t>(fp4[c]), std::bit_cast<uint32_t>(want[c] / 12.0f)) << c;
  }
  const std::array<uint8_t, 256> to = BnbCodeBytes(Bnb4Map::kFp4, true),
                                 back = BnbCodeBytes(Bnb4Map::kFp4, false);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(back[to[b]], b);
    // Index i holds the i-th smallest value: bitsandbytes' code to[i] decodes to it.
    EXPECT_EQ(fp4[to[b] >> 4], FormatTraits<Nf4Format>::kFp4Values[static_cast<size_t>(b >> 4)]);
  }
}

TEST(ExportLayouts, BnbInt8DecodesAsQtoolWithinItsRoundings) {
  for (const json& rec : {IntRecord(8, true, 0), IntRecord(8, true, -1)}) {
    SCOPED_TRACE(rec.dump());
    Quantised q(rec, 40, 96, 5);
    // Scales off the f16 grid too (Quantised rounds them to f16 values), as RTN's f32 scales are.
    for (size_t i = 0; i < q.parts[1].size(); i += 4) {
      float v;
      std::memcpy(&v, q.parts[1].data() + i, 4);
      v *= 1.0f + 0x1.234p-13f;
      std::memcpy(q.parts[1].data() + i, &v, 4);
    }
    const IntWeight w = IntWeightFromQtool("w", q.record, 40, 96, q.ptrs.data(), true, false);
    double change = 0;
    const auto t = PackBnbInt8(w, "m", &change);
    ASSERT_EQ(t.size(), 3u);
    EXPECT_EQ(t[0].spec.name, "m.weight");
    EXPECT_EQ(t[0].spec.dtype, DType::kI8);
    EXPECT_EQ(t[1].spec.shape, (std::vector<int64_t>{40}));
    EXPECT_EQ(t[2].spec.name, "m.weight_format");
    EXPECT_TRUE(t[2].spec.shape.empty());
    EXPECT_EQ(t[2].data, std::vector<std::byte>{std::byte{0}});
    const std::vector<float> want = q.Decode();
    const auto* codes = reinterpret_cast<const int8_t*>(t[0].data.data());
    double worst = 0;
    int64_t misses = 0, naive_misses = 0;
    for (int64_t r = 0; r < 40; ++r) {
      float scb;
      std::memcpy(&scb, t[1].data.data() + r * 4, 4);
      const float scale = w.scales[static_cast<size_t>(r)];
      for (int64_t c = 0; c < 96; ++c) {
        const size_t i = static_cast<size_t>(r * 96 + c);
        // The signed code is qtool's unsigned one less its zero-point, 128.
        ASSERT_EQ(codes[i], std::to_integer<int>(w.packed[i]) - 128);
        const float got = BnbInt8Value(codes[i], scb);
        if (got != want[i]) {
          ++misses;
          worst = std::max(worst, std::abs(static_cast<double>(got) - want[i]) / std::abs(want[i]));
        }
        naive_misses += BnbInt8Value(codes[i], 127.0f * scale) != want[i];
      }
    }
    // A few f32 roundings at most, the largest reported, and no more codes off qtool's value
    // than with the plain 127 * scale.
    EXPECT_LE(worst, change);
    EXPECT_LE(change, 3e-7);
    EXPECT_LE(misses, naive_misses);
  }
}

TEST(ExportLayouts, RefusesWhatATargetCannotHold) {
  Quantised q(IntRecord(4, false, 32), 32, 64);
  IntWeight w = q.Int();
  w.zeros[5] = 0;
  EXPECT_NE(testing::ErrorOf<OptionError>([&] { PackGptq(w, "m", false); }).find("zero-point 0"),
            std::string::npos);
  EXPECT_NO_THROW(PackGptq(w, "m", true));
  const IntWeight w3 = Quantised(IntRecord(3, true, 32), 32, 48).Int();
  EXPECT_NE(
      testing::ErrorOf<OptionError>([&] { PackGptq(w3, "m", false); }).find("multiples of 32"),
      std::string::npos);
  EXPECT_NE(testing::ErrorOf<OptionError>([&] { PackAwq(w3, "m"); }).find("4-bit"),
            std::string::npos);
  const IntWeight partial = Quantised(IntRecord(4, true, 48), 32, 64).Int();
  EXPECT_NE(testing::ErrorOf<OptionError>([&] { PackAwq(partial, "m"); }).find("whole groups"),
            std::string::npos);
  const IntWeight odd_rows = Quantised(IntRecord(4, true, 32), 12, 64).Int();
  EXPECT_NE(testing::ErrorOf<OptionError>([&] { PackAwq(odd_rows, "m"); }).find("multiple of 8"),
            std::string::npos);
  EXPECT_NE(testing::ErrorOf<OptionError>([&] {
              PackCompressedTensorsInt(partial, "m");
            }).find("whole groups"),
            std::string::npos);
  Quantised act(IntRecord(4, true, 32, true), 32, 64);
  EXPECT_NE(testing::ErrorOf<OptionError>([&] {
              PackCompressedTensorsInt(act.Int(), "m");
            }).find("g_idx"),
            std::string::npos);
  const Quantised odd({{"codec", "nf4"}, {"block", 64}, {"double_quant", false}}, 4, 63);
  EXPECT_NE(testing::ErrorOf<OptionError>([&] {
              PackBnbNf4("w", 4, 63, Nf4Format{}, odd.ptrs.data(), "m", "float32");
            }).find("odd"),
            std::string::npos);
  EXPECT_NE(testing::ErrorOf<OptionError>([&] {
              BnbNf4Layout("w", 4, 64, Nf4Format{.block = 32}, "m", "float32");
            }).find("64 to 4096"),
            std::string::npos);
  for (const json& rec : {IntRecord(4, true, 0), IntRecord(8, false, 0), IntRecord(8, true, 32)}) {
    EXPECT_NE(testing::ErrorOf<OptionError>([&] {
                BnbInt8Layout(Quantised(rec, 8, 64).Int(), "m");
              }).find("LLM.int8 holds 8-bit symmetric weights with one scale per row"),
              std::string::npos)
        << rec.dump();
  }
}

// A float checkpoint with two decoder blocks' projections (64 x 64), a norm and an embedding.
fs::path WriteFloatModel(const fs::path& dir) {
  fs::create_directories(dir / "in");
  std::vector<TensorSpec> specs;
  for (int l = 0; l < 2; ++l) {
    for (const char* p : {"mlp.down_proj", "mlp.up_proj", "self_attn.q_proj"})
      specs.push_back({fmt::format("model.layers.{}.{}.weight", l, p), DType::kF32, {64, 64}});
    specs.push_back({fmt::format("model.layers.{}.input_layernorm.weight", l), DType::kF32, {64}});
  }
  specs.push_back({"model.embed_tokens.weight", DType::kF32, {32, 64}});
  std::sort(specs.begin(), specs.end(),
            [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  {
    SafetensorsWriter w(dir / "in" / "model.safetensors", specs, {});
    std::mt19937 rng(11);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    for (const TensorSpec& s : specs) {
      std::vector<float> v(static_cast<size_t>(s.numel()));
      for (float& x : v) x = dist(rng);
      w.Write(std::as_bytes(std::span(v)));
    }
    w.Commit();
  }
  testing::WriteFile(dir / "in" / "config.json", R"({"model_type": "llama"})");
  return dir / "in";
}

TEST(ExportCheckpoint, EveryFormatWithItsConfig) {
  ScratchDir d;
  const Checkpoint in = Checkpoint::Open(WriteFloatModel(d.path()));
  QuantizeOptions o;
  o.format = FormatFromRecord(IntRecord(4, false, 32));
  o.exclude = {"layers\\.1\\.mlp\\.down_proj"};
  QuantizeCheckpoint(in, d.path() / "q", o);
  const Checkpoint q = Checkpoint::Open(d.path() / "q");

  ConvertCheckpoint(q, d.path() / "gptq",
                    {.format = ExportFormat::kGptq, .gptq_checkpoint_format = "gptq_v2"});
  const Checkpoint g = Checkpoint::Open(d.path() / "gptq");
  const json& gc = g.config()->at("quantization_config");
  EXPECT_EQ(gc.at("quant_method"), "gptq");
  EXPECT_EQ(gc.at("checkpoint_format"), "gptq_v2");
  EXPECT_EQ(gc.at("group_size"), 32);
  EXPECT_EQ(gc.at("sym"), false);
  EXPECT_TRUE(gc.at("dynamic").contains("-:^model\\.layers\\.1\\.mlp\\.down_proj$"));
  const json& listed = gc.at("modules_in_block_to_quantize").at(0);
  EXPECT_EQ(listed.size(), 5u);
  EXPECT_EQ(std::count(listed.begin(), listed.end(), "model.layers.1.mlp.down_proj"), 0);
  EXPECT_EQ(g.Get("model.layers.0.mlp.up_proj.qweight").info->shape, (std::vector<int64_t>{8, 64}));
  EXPECT_EQ(g.Get("model.layers.1.mlp.down_proj.weight").info->dtype, DType::kF32);
  EXPECT_EQ(g.Find("model.layers.0.mlp.up_proj.weight"), nullptr);
  // The converted codes decode to the qtool checkpoint's values with f16 scales.
  const IntWeight back = UnpackGptq(
      [&] {
        std::vector<ExportTensor> t;
        for (const char* p : {"qweight", "qzeros", "scales", "g_idx"}) {
          const CheckpointTensor& ct = g.Get(std::string("model.layers.0.mlp.up_proj.") + p);
          t.push_back({*ct.info, {ct.data().begin(), ct.data().end()}});
        }
        return t;
      }(),
      4, false, true);
  const std::vector<float> ref = ReadTensorF32(q, "model.layers.0.mlp.up_proj.weight");
  const std::vector<float> got = back.Decode();
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-3f * 0.2f) << i;

  ConvertCheckpoint(q, d.path() / "ct", {.format = ExportFormat::kCompressedTensors});
  const json ctc = Checkpoint::Open(d.path() / "ct").config()->at("quantization_config");
  EXPECT_EQ(ctc.at("format"), "pack-quantized");
  EXPECT_EQ(ctc.at("ignore"), json({"model.layers.1.mlp.down_proj", "lm_head"}));
  EXPECT_EQ(ctc.at("config_groups").at("group_0").at("weights").at("strategy"), "group");

  ConvertCheckpoint(q, d.path() / "awq", {.format = ExportFormat::kAwq});
  EXPECT_EQ(Checkpoint::Open(d.path() / "awq")
                .config()
                ->at("quantization_config")
                .at("modules_to_not_convert"),
            json({"model.layers.1.mlp.down_proj"}));

  // Grouped INT4 is refused by bitsandbytes, whose LLM.int8 holds INT8 per row, naming what it
  // holds.
  EXPECT_NE(testing::ErrorOf<OptionError>([&] {
              ConvertCheckpoint(q, d.path() / "bnb", {.format = ExportFormat::kBnb});
            }).find("LLM.int8 holds 8-bit symmetric"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(d.path() / "bnb"));

  // qtool to qtool is a byte copy.
  ConvertCheckpoint(q, d.path() / "copy", {.format = ExportFormat::kQtool});
  EXPECT_EQ(testing::ReadFile(d.path() / "copy" / "model.safetensors"),
            testing::ReadFile(d.path() / "q" / "model.safetensors"));
}

TEST(ExportCheckpoint, Nf4ToBitsandbytes) {
  ScratchDir d;
  const Checkpoint in = Checkpoint::Open(WriteFloatModel(d.path()));
  QuantizeOptions o;
  o.format = Nf4Format{.block = 64, .double_quant = true};
  QuantizeCheckpoint(in, d.path() / "q", o);
  const Checkpoint q = Checkpoint::Open(d.path() / "q");
  EXPECT_NE(testing::ErrorOf<OptionError>([&] {
              ConvertCheckpoint(q, d.path() / "g", {.format = ExportFormat::kGptq});
            }).find("gptq cannot hold qtool's nf4"),
            std::string::npos);
  ConvertCheckpoint(q, d.path() / "bnb", {.format = ExportFormat::kBnb});
  const Checkpoint b = Checkpoint::Open(d.path() / "bnb");
  const json& qc = b.config()->at("quantization_config");
  EXPECT_EQ(qc.at("bnb_4bit_use_double_quant"), true);
  EXPECT_EQ(qc.at("llm_int8_skip_modules"), json({"lm_head"}));
  std::vector<ExportTensor> t;
  for (const char* p : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                        ".quant_state.bitsandbytes__nf4"}) {
    const CheckpointTensor& ct = b.Get(std::string("model.layers.0.mlp.up_proj.weight") + p);
    t.push_back({*ct.info, {ct.data().begin(), ct.data().end()}});
  }
  ExpectSameBits(DecodeBnbNf4(t, 64, 64), ReadTensorF32(q, "model.layers.0.mlp.up_proj.weight"));
}

TEST(ExportCheckpoint, Int8PerChannelToLlmInt8) {
  ScratchDir d;
  const Checkpoint in = Checkpoint::Open(WriteFloatModel(d.path()));
  QuantizeOptions o;
  o.format = FormatFromRecord(IntRecord(8, true, 0));
  o.exclude = {"layers\\.1\\.mlp\\.down_proj"};
  QuantizeCheckpoint(in, d.path() / "q", o);
  const Checkpoint q = Checkpoint::Open(d.path() / "q");
  const ExportReport r = ConvertCheckpoint(q, d.path() / "bnb", {.format = ExportFormat::kBnb});
  EXPECT_EQ(r.weights_converted, 5);
  EXPECT_GT(r.max_weight_change, 0);
  EXPECT_LE(r.max_weight_change, 3e-7);
  const Checkpoint b = Checkpoint::Open(d.path() / "bnb");
  const json& qc = b.config()->at("quantization_config");
  EXPECT_EQ(qc.at("quant_method"), "bitsandbytes");
  EXPECT_EQ(qc.at("load_in_8bit"), true);
  EXPECT_EQ(qc.at("load_in_4bit"), false);
  EXPECT_EQ(qc.at("llm_int8_skip_modules"), json({"model.layers.1.mlp.down_proj", "lm_head"}));
  EXPECT_FALSE(qc.contains("bnb_4bit_quant_type"));
  EXPECT_EQ(b.Get("model.layers.1.mlp.down_proj.weight").info->dtype, DType::kF32);
  // qtool reads it back as bitsandbytes decodes it, within the report's change of its source.
  const std::string name = "model.layers.0.mlp.up_proj";
  const auto codes = b.Get(name + ".weight").data();
  const auto scb = b.Get(name + ".SCB").data();
  const std::vector<float> got = ReadTensorF32(b, name + ".weight");
  const std::vector<float> src = ReadTensorF32(q, name + ".weight");
  for (size_t i = 0; i < got.size(); ++i) {
    float s;
    std::memcpy(&s, scb.data() + (i / 64) * 4, 4);
    ASSERT_EQ(got[i], BnbInt8Value(static_cast<int8_t>(codes[i]), s)) << i;
    ASSERT_LE(std::abs(got[i] - src[i]), r.max_weight_change * std::abs(src[i])) << i;
  }
}

TEST(ExportCli, QuantizeWithOutputFormatEqualsQuantizeThenConvert) {
  QTOOL_REQUIRE_SHARED();
  const fs::path model = *testing::SharedDir() / "models" / "stories260K" / "hf";
  ScratchDir d;
  const auto q = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"quantize",      model.string(), "--format", "int4",
                                     "--granularity", "channel",      "--asym",   "-q"};
    args.insert(args.end(), extra.begin(), extra.end());
    return testing::RunCli(args);
  };
  ASSERT_EQ(q({"-o", (d / "qtool").string()}).exit_code, 0);
  ASSERT_EQ(testing::RunCli({"convert", (d / "qtool").string(), "-o", (d / "ct").string(),
                             "--output-format", "compressed-tensors", "-q"})
                .exit_code,
            0);
  const auto direct = q({"-o", (d / "direct").string(), "--output-format", "compressed-tensors"});
  ASSERT_EQ(direct.exit_code, 0) << direct.err;
  EXPECT_EQ(testing::ReadFile(d / "direct" / "model.safetensors"),
            testing::ReadFile(d / "ct" / "model.safetensors"));
  EXPECT_EQ(testing::ReadFile(d / "direct" / "config.json"),
            testing::ReadFile(d / "ct" / "config.json"));
  // stories260K's 172-column down_proj cannot be packed by GPTQ at 4 bits: exit 3, the tensor
  // named, no output and no temporary left beside it.
  const auto gptq = q({"-o", (d / "gptq").string(), "--output-format", "gptq"});
  EXPECT_EQ(gptq.exit_code, 3);
  EXPECT_NE(gptq.err.find("down_proj.weight"), std::string::npos) << gptq.err;
  EXPECT_NE(gptq.err.find("multiples of 8"), std::string::npos) << gptq.err;
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(d.path())) ++entries;
  EXPECT_EQ(entries, 3u);  // qtool, ct, direct
}

}  // namespace
}  // namespace qtool
