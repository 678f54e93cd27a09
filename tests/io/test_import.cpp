// Reading the serving stacks' checkpoints (io/import.hpp): for every format, qtool's export then
// qtool's import decodes to the same bits as qtool's own checkpoint and converts back to the same
// bytes; hand-made FP8 (weight_scale_inv) and bitsandbytes FP4 checkpoints decode as their
// definitions say; hostile and truncated inputs are refused with the file, tensor and fault.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <span>

#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/io/export.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/import.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/quant/codec.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::IntRecord;
using testing::ScratchDir;

// Weights of the test model: [rows, cols] inside the decoder blocks. 96 columns make a partial
// last group of 64; every width here packs into whole 32-bit words at 2, 3, 4 and 8 bits.
const std::vector<std::pair<std::string, std::vector<int64_t>>> kWeights = {
    {"model.layers.0.mlp.down_proj.weight", {64, 96}},
    {"model.layers.0.self_attn.q_proj.weight", {32, 64}},
    {"model.layers.1.mlp.up_proj.weight", {96, 64}},
};

// Writes a qtool quantised checkpoint straight from codec record `codec`: every weight above
// encoded from seeded normal values, integer scales rounded to f16 values (so that GPTQ and AWQ
// hold them), act-order groups scrambled when `scramble`, beside a float norm and embedding.
fs::path WriteQtool(const fs::path& dir, const json& codec, bool scramble = false,
                    const json& activations = nullptr) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::map<std::string, std::vector<TensorSpec>> groups;  // by logical name, in Layout order
  std::map<std::string, std::vector<std::byte>> data;
  json tensors = json::object();
  const auto add_float = [&](const std::string& name, std::vector<int64_t> shape) {
    TensorSpec s{name, DType::kF32, std::move(shape)};
    std::vector<float> v(static_cast<size_t>(s.numel()));
    for (float& x : v) x = dist(rng);
    data[name].resize(s.nbytes());
    std::memcpy(data[name].data(), v.data(), s.nbytes());
    groups[name].push_back(s);
  };
  add_float("model.embed_tokens.weight", {16, 64});
  add_float("model.layers.0.input_layernorm.weight", {64});
  for (const auto& [name, shape] : kWeights) {
    const int64_t rows = shape[0], cols = shape[1];
    json rec = codec;
    if (scramble) rec["g_idx"] = true;
    auto c = MakeCodec(rec, rows, cols);
    std::vector<float> w(static_cast<size_t>(rows * cols));
    for (float& x : w) x = dist(rng);
    const std::vector<TensorSpec> layout = c->Layout(name);
    std::vector<std::byte*> out;
    for (const TensorSpec& t : layout) {
      data[t.name].assign(t.nbytes(), std::byte{0});
      out.push_back(data[t.name].data());
      groups[name].push_back(t);
    }
    if (c->needs_observe()) c->Observe(w.data(), 0, rows);
    std::vector<float> deq(w.size());
    c->EncodeRows(w.data(), 0, rows, out.data(), deq.data());
    if (codec.at("codec") == "int") {
      std::vector<std::byte>& s = data[layout[1].name];
      for (size_t i = 0; i + 4 <= s.size(); i += 4) {
        float v;
        std::memcpy(&v, s.data() + i, 4);
        v = F16ToF32(F32ToF16(v));
        std::memcpy(s.data() + i, &v, 4);
      }
      if (scramble) {
        const int64_t g = codec.at("group_size").get<int64_t>();
        const int64_t groups = (cols + g - 1) / g;
        std::vector<std::byte>& gi = data[layout.back().name];
        for (int64_t col = 0; col < cols; ++col) {
          const int32_t v = static_cast<int32_t>((col * 7) % groups);
          std::memcpy(gi.data() + col * 4, &v, 4);
        }
      }
    }
    tensors[name] = QuantizedTensorRecord(*c, {name, DType::kF32, shape});
  }
  // The order QuantizeCheckpoint writes: logical names in order, each weight's parts in Layout
  // order.
  std::vector<TensorSpec> specs;
  for (const auto& [name, parts] : groups) specs.insert(specs.end(), parts.begin(), parts.end());
  QuantizeOptions options;
  options.activations = activations;
  const json codec_record = CodecRecord(*MakeCodec(codec, 1, 1));
  CheckpointWriter writer(dir, specs, QuantizedWriterOptions(options, codec_record, tensors));
  for (const TensorSpec& s : specs) writer.Write(data[s.name]);
  json config = {{"model_type", "llama"}, {"torch_dtype", "float32"}};
  config["quantization_config"] = QuantizationConfig(codec_record, options);
  writer.WriteTextFile("config.json", config.dump(2) + "\n");
  writer.Commit();
  return dir;
}

fs::path Convert(const fs::path& in, const fs::path& out, ExportFormat f, bool v2 = false) {
  ExportOptions o;
  o.format = f;
  if (v2) o.gptq_checkpoint_format = "gptq_v2";
  ConvertCheckpoint(Checkpoint::Open(in), out, o);
  return out;
}

// Every logical weight of `b` decodes to the same bits as `a`'s.
void ExpectSameWeights(const fs::path& a, const fs::path& b) {
  const Checkpoint ca = Checkpoint::Open(a), cb = Checkpoint::Open(b);
  const std::vector<std::string> names = LogicalTensorNames(ca);
  ASSERT_EQ(names, LogicalTensorNames(cb));
  for (const std::string& n : names) {
    ASSERT_EQ(LogicalShape(ca, n), LogicalShape(cb, n)) << n;
    const std::vector<float> x = ReadTensorF32(ca, n), y = ReadTensorF32(cb, n);
    ASSERT_EQ(x.size(), y.size()) << n;
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * 4), 0) << n << " differs in " << b;
  }
}

void ExpectSameFiles(const fs::path& a, const fs::path& b) {
  EXPECT_EQ(testing::ReadFile(a / "model.safetensors"), testing::ReadFile(b / "model.safetensors"))
      << a << " vs " << b;
  EXPECT_EQ(testing::ReadFile(a / "config.json"), testing::ReadFile(b / "config.json"));
}

struct Case {
  std::string label;
  json codec;
  ExportFormat format;
  bool v2 = false, scramble = false;
  json activations = nullptr;
};

class ImportRoundTrip : public ::testing::TestWithParam<Case> {};

// Export then import: the same decoded bits as qtool's checkpoint, the scheme detected from
// config.json, and back to qtool byte for byte.
TEST_P(ImportRoundTrip, DecodesAsQtoolAndConvertsBack) {
  const Case& c = GetParam();
  ScratchDir d;
  const fs::path a = WriteQtool(d / "a", c.codec, c.scramble, c.activations);
  const fs::path x = Convert(a, d / "x", c.format, c.v2);
  const Checkpoint cx = Checkpoint::Open(x);
  const auto imported = ImportedCheckpoint::Open(cx);
  ASSERT_TRUE(imported.has_value());
  EXPECT_EQ(imported->QuantizedNames().size(), kWeights.size());
  EXPECT_EQ(imported->scheme().int8_activations, !c.activations.is_null());
  EXPECT_EQ(QuantizesActivations(cx), !c.activations.is_null());
  ExpectSameWeights(a, x);
  ExpectSameFiles(a, Convert(x, d / "back", ExportFormat::kQtool));
}

INSTANTIATE_TEST_SUITE_P(
    Formats, ImportRoundTrip,
    ::testing::Values(
        Case{"gptq_int2_g64", IntRecord(2, 64), ExportFormat::kGptq},
        Case{"gptq_int3_g64", IntRecord(3, 64), ExportFormat::kGptq},
        Case{"gptq_int4_g64", IntRecord(4, 64), ExportFormat::kGptq},
        Case{"gptq_int8_channel", IntRecord(8, 0), ExportFormat::kGptq},
        Case{"gptq_v2_int4_asym_g32", IntRecord(4, 32, false), ExportFormat::kGptq, true},
        Case{"gptq_v2_int3_asym_g64", IntRecord(3, 64, false), ExportFormat::kGptq, true},
        Case{"gptq_act_order", IntRecord(4, 32), ExportFormat::kGptq, false, true},
        Case{"awq_g32", IntRecord(4, 32, false), ExportFormat::kAwq},
        Case{"ct_int4_sym_g32", IntRecord(4, 32), ExportFormat::kCompressedTensors},
        Case{"ct_int3_asym_g32", IntRecord(3, 32, false), ExportFormat::kCompressedTensors},
        Case{"ct_int8_channel", IntRecord(8, 0), ExportFormat::kCompressedTensors},
        Case{"ct_w8a8", IntRecord(8, 0), ExportFormat::kCompressedTensors, false, false,
             Int8TokenActivations()},
        Case{"ct_fp8_channel",
             {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "channel"}},
             ExportFormat::kCompressedTensors},
        Case{"ct_fp8_block",
             {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "block"}, {"block", {16, 32}}},
             ExportFormat::kCompressedTensors},
        Case{"ct_nvfp4", {{"codec", "nvfp4"}}, ExportFormat::kCompressedTensors},
        Case{"ct_mxfp4",
             {{"codec", "mx"}, {"element", "e2m1"}, {"block", 32}},
             ExportFormat::kCompressedTensors},
        Case{"bnb_nf4",
             {{"codec", "nf4"}, {"block", 64}, {"double_quant", false}},
             ExportFormat::kBnb},
        Case{"bnb_nf4_dq",
             {{"codec", "nf4"}, {"block", 64}, {"double_quant", true}},
             ExportFormat::kBnb},
        Case{"bnb_fp4",
             {{"codec", "nf4"}, {"block", 64}, {"double_quant", false}, {"map", "fp4"}},
             ExportFormat::kBnb},
        Case{"bnb_fp4_dq",
             {{"codec", "nf4"}, {"block", 128}, {"double_quant", true}, {"map", "fp4"}},
             ExportFormat::kBnb}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.label; });

// The chain the formats share: qtool -> GPTQ -> compressed-tensors -> qtool, byte for byte; and
// AWQ <-> GPTQ (asymmetric) without going through float.
TEST(ImportConvert, ChainsAreByteIdentical) {
  ScratchDir d;
  const fs::path a = WriteQtool(d / "a", IntRecord(4, 32));
  const fs::path g = Convert(a, d / "g", ExportFormat::kGptq);
  const fs::path ct = Convert(g, d / "ct", ExportFormat::kCompressedTensors);
  ExpectSameFiles(a, Convert(ct, d / "back", ExportFormat::kQtool));
  ExpectSameFiles(g, Convert(ct, d / "g2", ExportFormat::kGptq));

  const fs::path b = WriteQtool(d / "b", IntRecord(4, 32, false));
  const fs::path awq = Convert(b, d / "awq", ExportFormat::kAwq);
  const fs::path gv2 = Convert(awq, d / "gv2", ExportFormat::kGptq, true);
  ExpectSameFiles(awq, Convert(gv2, d / "awq2", ExportFormat::kAwq));
  ExpectSameWeights(b, gv2);
}

TEST(ImportConvert, RefusesWhatTheTargetCannotHold) {
  ScratchDir d;
  const fs::path nf4 =
      Convert(WriteQtool(d / "n", {{"codec", "nf4"}, {"block", 64}, {"double_quant", false}}),
              d / "bnb", ExportFormat::kBnb);
  std::string e =
      testing::ErrorOf<OptionError>([&] { Convert(nf4, d / "x", ExportFormat::kGptq); });
  EXPECT_NE(e.find("GPTQ holds int"), std::string::npos) << e;
  const fs::path act =
      Convert(WriteQtool(d / "a", IntRecord(4, 32), true), d / "act", ExportFormat::kGptq);
  e = testing::ErrorOf<OptionError>([&] { Convert(act, d / "y", ExportFormat::kAwq); });
  EXPECT_NE(e.find("act-order"), std::string::npos) << e;
  const fs::path v2 =
      Convert(WriteQtool(d / "b", IntRecord(8, 0, false)), d / "v2", ExportFormat::kGptq, true);
  e = testing::ErrorOf<OptionError>([&] { Convert(v2, d / "z", ExportFormat::kAwq); });
  EXPECT_NE(e.find("4-bit"), std::string::npos) << e;
  const fs::path nv = Convert(WriteQtool(d / "c", {{"codec", "nvfp4"}}), d / "nv",
                              ExportFormat::kCompressedTensors);
  e = testing::ErrorOf<OptionError>([&] { Convert(nv, d / "w", ExportFormat::kGptq); });
  EXPECT_NE(e.find("GPTQ holds int"), std::string::npos) << e;
  const fs::path mx16 = WriteQtool(d / "m", {{"codec", "mx"}, {"element", "e2m1"}, {"block", 16}});
  e = testing::ErrorOf<OptionError>(
      [&] { Convert(mx16, d / "v", ExportFormat::kCompressedTensors); });
  EXPECT_NE(e.find("mxfp4 (blocks of 32)"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(d / "x") || fs::exists(d / "y") || fs::exists(d / "z") ||
               fs::exists(d / "w") || fs::exists(d / "v"));
}

// Tensors of a checkpoint, changed by `edit` (which may rename, retype or rewrite any of them),
// written with config.json changed by `config`.
void Rewrite(const fs::path& in, const fs::path& out,
             const std::function<void(TensorSpec&, std::vector<std::byte>&)>& edit,
             const std::function<void(json&)>& config = {}) {
  const Checkpoint ck = Checkpoint::Open(in);
  std::vector<TensorSpec> specs;
  std::vector<std::vector<std::byte>> data;
  for (const CheckpointTensor& t : ck.tensors()) {
    TensorSpec s = *t.info;
    std::vector<std::byte> b(t.data().begin(), t.data().end());
    edit(s, b);
    if (s.name.empty()) continue;
    specs.push_back(s);
    data.push_back(std::move(b));
  }
  CheckpointWriterOptions o;
  o.metadata = {{"format", "pt"}};
  CheckpointWriter w(out, specs, o);
  for (const auto& b : data) w.Write(b);
  json c = *ck.config();
  if (config) config(c);
  w.WriteTextFile("config.json", c.dump());
  w.Commit();
}

// DeepSeek-V3 / Qwen3-FP8: `quant_method` fp8, FP8 E4M3 weights with f32 (or bf16) block scales
// `weight_scale_inv` that multiply. Decodes as qtool's FP8 block codec, and quantises from there.
TEST(ImportFp8, BlockScaledCheckpointDecodesAsQtool) {
  ScratchDir d;
  const fs::path a = WriteQtool(
      d / "a", {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "block"}, {"block", {16, 16}}});
  const auto fp8_config = [](json& c) {
    c["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"weight_block_size", {16, 16}}};
  };
  Rewrite(
      a, d / "ds",
      [](TensorSpec& s, std::vector<std::byte>&) {
        if (s.name.ends_with(".weight.qweight")) s.name.resize(s.name.size() - 8);
        if (s.name.ends_with(".weight.scales"))
          s.name.replace(s.name.size() - 14, 14, ".weight_scale_inv");
      },
      fp8_config);
  ExpectSameWeights(a, d / "ds");
  ExpectSameFiles(a, Convert(d / "ds", d / "back", ExportFormat::kQtool));
  // bf16 scales (as some FP8 models store them): the f32 ones truncated to bf16.
  Rewrite(
      d / "ds", d / "bf16",
      [](TensorSpec& s, std::vector<std::byte>& b) {
        if (!s.name.ends_with("_scale_inv")) return;
        std::vector<std::byte> h(b.size() / 2);
        for (size_t i = 0; i < b.size() / 4; ++i) {
          float v;
          std::memcpy(&v, b.data() + 4 * i, 4);
          uint32_t u;
          std::memcpy(&u, &v, 4);
          const uint16_t top = static_cast<uint16_t>(u >> 16);  // truncated to bf16
          std::memcpy(h.data() + 2 * i, &top, 2);
        }
        s.dtype = DType::kBF16;
        b = std::move(h);
      },
      fp8_config);
  // Against the definition: element = E4M3(code) * scale of its 16 x 16 block.
  const Checkpoint bf = Checkpoint::Open(d / "bf16");
  const Checkpoint ds = Checkpoint::Open(d / "ds");
  const std::string n = kWeights[0].first;  // [64, 96]: blocks [4, 6]
  const auto q = ds.Get("model.layers.0.mlp.down_proj.weight").data();
  const auto s32 = ds.Get("model.layers.0.mlp.down_proj.weight_scale_inv").data();
  const auto s16 = bf.Get("model.layers.0.mlp.down_proj.weight_scale_inv").data();
  const std::vector<float> x32 = ReadTensorF32(ds, n), x16 = ReadTensorF32(bf, n);
  for (int64_t i = 0; i < 64 * 96; ++i) {
    const auto b = static_cast<uint8_t>(q[static_cast<size_t>(i)]);
    const int e = (b >> 3) & 15, m = b & 7;
    const float mag = e == 0 ? std::ldexp(static_cast<float>(m) / 8, -6)
                             : std::ldexp(1 + static_cast<float>(m) / 8, e - 7);
    const float v = b & 0x80 ? -mag : mag;
    const int64_t blk = (i / 96 / 16) * 6 + (i % 96) / 16;
    float f32;
    std::memcpy(&f32, s32.data() + 4 * blk, 4);
    uint16_t h;
    std::memcpy(&h, s16.data() + 2 * blk, 2);
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float bf16;
    std::memcpy(&bf16, &u, 4);
    ASSERT_EQ(x32[static_cast<size_t>(i)], v * f32) << i;
    ASSERT_EQ(x16[static_cast<size_t>(i)], v * bf16) << i;
  }
  // As input to quantisation: the library refuses it (the CLI decodes it first).
  const std::string e =
      testing::ErrorOf<OptionError>([&] { QuantizeCheckpoint(ds, d / "q", QuantizeOptions{}); });
  EXPECT_NE(e.find("dequantize it first"), std::string::npos) << e;
  const auto r = testing::RunCli(
      {"quantize", (d / "ds").string(), "-o", (d / "q4").string(), "--format", "int4:g32", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(d / "q4.float"));
  EXPECT_TRUE(QuantizationRecord(Checkpoint::Open(d / "q4")).has_value());
}

// A 4-bit map that is neither bitsandbytes' NF4 nor its FP4 (here its FP4 values rounded to
// seven digits, as a hand-written table would give them): no qtool codec holds it, so it is
// decoded as bitsandbytes does, quant_map[code] * absmax, and refused by convert.
TEST(ImportBnb, AnotherMapDecodesThroughItself) {
  ScratchDir d;
  const fs::path b =
      Convert(WriteQtool(d / "n", {{"codec", "nf4"}, {"block", 64}, {"double_quant", false}}),
              d / "bnb", ExportFormat::kBnb);
  // bitsandbytes' FP4 values (code 0b0SEE M: sign, 2 exponent and 1 mantissa bits, normalised),
  // rounded.
  const float fp4[16] = {0.0f,        0.0052083f, 0.6666667f,  1.0f,        0.3333333f,  0.5f,
                         0.1666667f,  0.25f,      -0.0f,       -0.0052083f, -0.6666667f, -1.0f,
                         -0.3333333f, -0.5f,      -0.1666667f, -0.25f};
  Rewrite(b, d / "fp4", [&](TensorSpec& s, std::vector<std::byte>& data) {
    if (s.name.ends_with(".quant_map")) std::memcpy(data.data(), fp4, 64);
    if (s.name.ends_with("bitsandbytes__nf4")) {
      s.name.replace(s.name.size() - 3, 3, "fp4");
      std::string js(reinterpret_cast<const char*>(data.data()), data.size());
      js.replace(js.find("\"nf4\""), 5, "\"fp4\"");
      std::memcpy(data.data(), js.data(), js.size());
    }
  });
  const Checkpoint ck = Checkpoint::Open(d / "fp4");
  const std::string n = kWeights[1].first;  // [32, 64]
  const std::vector<float> x = ReadTensorF32(ck, n);
  const auto packed = ck.Get("model.layers.0.self_attn.q_proj.weight").data();
  const auto absmax = ck.Get("model.layers.0.self_attn.q_proj.weight.absmax").data();
  for (size_t i = 0; i < x.size(); ++i) {
    const int code = (static_cast<uint8_t>(packed[i / 2]) >> (i % 2 ? 0 : 4)) & 0xf;
    float a;
    std::memcpy(&a, absmax.data() + 4 * (i / 64), 4);
    ASSERT_EQ(x[i], fp4[code] * a) << i;
  }
  EXPECT_TRUE(ImportedCheckpoint::Open(ck)->Record(n).is_null());
  const std::string e =
      testing::ErrorOf<OptionError>([&] { Convert(d / "fp4", d / "x", ExportFormat::kQtool); });
  EXPECT_NE(e.find("no qtool codec holds"), std::string::npos) << e;
}

// bitsandbytes LLM.int8 (weight I8, SCB F32 per row): decoded as int8_vectorwise_dequant does,
// q * SCB[row] * f32(1/127), and refused by convert.
TEST(ImportBnb, Int8DecodesAsBitsandbytes) {
  ScratchDir d;
  const int64_t rows = 8, cols = 40;
  std::vector<int8_t> q(static_cast<size_t>(rows * cols));
  std::vector<float> scb(static_cast<size_t>(rows));
  std::mt19937 rng(3);
  for (int8_t& v : q) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
  for (float& v : scb) v = 0.01f + static_cast<float>(rng() % 1000) / 997.0f;
  const std::string m = "model.layers.0.mlp.up_proj";
  std::vector<TensorSpec> specs = {{m + ".SCB", DType::kF32, {rows}},
                                   {m + ".weight", DType::kI8, {rows, cols}},
                                   {m + ".weight_format", DType::kU8, {1}}};
  CheckpointWriterOptions o;
  CheckpointWriter w(d / "int8", specs, o);
  w.Write(std::as_bytes(std::span(scb)));
  w.Write(std::as_bytes(std::span(q)));
  w.Write(std::vector<std::byte>{std::byte{0}});
  w.WriteTextFile(
      "config.json",
      json({{"model_type", "llama"},
            {"quantization_config",
             {{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}, {"load_in_4bit", false}}}})
          .dump());
  w.Commit();
  const Checkpoint ck = Checkpoint::Open(d / "int8");
  EXPECT_EQ(LogicalTensorNames(ck), std::vector<std::string>{m + ".weight"});
  const std::vector<float> x = ReadTensorF32(ck, m + ".weight");
  for (size_t i = 0; i < x.size(); ++i) {
    const float v = static_cast<float>(q[i]) * scb[i / static_cast<size_t>(cols)];
    ASSERT_EQ(x[i], v * 7.874015718698502e-3f) << i;
  }
  const std::string e =
      testing::ErrorOf<OptionError>([&] { Convert(d / "int8", d / "x", ExportFormat::kQtool); });
  EXPECT_NE(e.find("LLM.int8"), std::string::npos) << e;
}

// Hostile or damaged input: one FormatError (or NumericError) naming the file or config key, the
// tensor and what is wrong, on open or on decoding the weight.
TEST(ImportErrors, NameTheTensorAndTheFault) {
  ScratchDir d;
  const fs::path g = Convert(WriteQtool(d / "a", IntRecord(4, 32)), d / "g", ExportFormat::kGptq);
  const std::string w = "model.layers.0.mlp.down_proj";
  int n = 0;
  const auto open_error = [&](auto edit, auto config) {
    const fs::path p = d / fmt::format("bad{}", n++);
    Rewrite(g, p, edit, config);
    return testing::ErrorOf<FormatError>([&] {
      const Checkpoint ck = Checkpoint::Open(p);
      for (const std::string& name : LogicalTensorNames(ck)) ReadTensorF32(ck, name);
    });
  };
  const auto none = [](TensorSpec&, std::vector<std::byte>&) {};
  const auto same = [](json&) {};
  // A truncated qzeros (one group row short).
  std::string e = open_error(
      [&](TensorSpec& s, std::vector<std::byte>& b) {
        if (s.name == w + ".qzeros") {
          s.shape[0] -= 1;
          b.resize(s.nbytes());
        }
      },
      same);
  EXPECT_NE(e.find(w + ".qzeros"), std::string::npos) << e;
  EXPECT_NE(e.find("needs I32 [3,8]"), std::string::npos) << e;
  // scales of a type GPTQ does not store (I32 in the bytes of [3, 64] F16).
  e = open_error(
      [&](TensorSpec& s, std::vector<std::byte>&) {
        if (s.name == w + ".scales") {
          s.dtype = DType::kI32;
          s.shape = {3, 32};
        }
      },
      same);
  EXPECT_NE(e.find("is I32 [3,32]"), std::string::npos) << e;
  // A g_idx entry outside the groups.
  e = open_error(
      [&](TensorSpec& s, std::vector<std::byte>& b) {
        if (s.name == w + ".g_idx") {
          const int32_t v = 99;
          std::memcpy(b.data() + 8, &v, 4);
        }
      },
      same);
  EXPECT_NE(e.find("group 99 at column 2"), std::string::npos) << e;
  // A missing tensor.
  e = open_error(
      [&](TensorSpec& s, std::vector<std::byte>&) {
        if (s.name == w + ".scales") s.name.clear();
      },
      same);
  EXPECT_NE(e.find("no tensor \"" + w + ".scales\""), std::string::npos) << e;
  // v1 stores zero - 1: a stored 15 is zero 16, outside the 4-bit grid.
  e = open_error(
      [&](TensorSpec& s, std::vector<std::byte>& b) {
        if (s.name == w + ".qzeros") std::memset(b.data(), 0xff, 4);
      },
      same);
  EXPECT_NE(e.find("zero-point of row 0 group 0 is 16"), std::string::npos) << e;
  // Symmetric by config, but a zero-point off the middle.
  e = open_error(
      [&](TensorSpec& s, std::vector<std::byte>& b) {
        if (s.name == w + ".qzeros") std::memset(b.data(), 0x11, 4);
      },
      same);
  EXPECT_NE(e.find("symmetric by config.json"), std::string::npos) << e;
  // config.json: a width GPTQ lacks, a key of the wrong type, an unknown method.
  e = open_error(none, [](json& c) { c["quantization_config"]["bits"] = 5; });
  EXPECT_NE(e.find("\"bits\" = 5"), std::string::npos) << e;
  e = open_error(none, [](json& c) { c["quantization_config"]["group_size"] = "32"; });
  EXPECT_NE(e.find("\"group_size\""), std::string::npos) << e;
  e = open_error(none, [](json& c) { c["quantization_config"]["quant_method"] = "eetq"; });
  EXPECT_NE(e.find("\"eetq\""), std::string::npos) << e;
  // A bits value whose packing disagrees with the tensors.
  e = open_error(none, [](json& c) { c["quantization_config"]["bits"] = 8; });
  EXPECT_NE(e.find(w), std::string::npos) << e;
  // A non-finite scale.
  const fs::path nan = d / "nan";
  Rewrite(g, nan, [&](TensorSpec& s, std::vector<std::byte>& b) {
    if (s.name == w + ".scales") {
      const uint16_t inf = 0x7c00;
      std::memcpy(b.data() + 6, &inf, 2);
    }
  });
  e = testing::ErrorOf<NumericError>([&] { ReadTensorF32(Checkpoint::Open(nan), w + ".weight"); });
  EXPECT_NE(e.find(w + ".scales"), std::string::npos) << e;
  // The CLI: exit code 4 (invalid file) and the one message.
  const auto r = testing::RunCli({"dequantize", (d / "bad0").string(), "-o", (d / "o").string()});
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_NE(r.err.find(w + ".qzeros"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "o"));
}

// dequantize, inspect and eval take the formats on the command line.
TEST(ImportCli, DequantizeAndInspect) {
  ScratchDir d;
  const fs::path a = WriteQtool(d / "a", IntRecord(4, 32, false));
  const fs::path awq = Convert(a, d / "awq", ExportFormat::kAwq);
  ASSERT_EQ(testing::RunCli({"dequantize", a.string(), "-o", (d / "da").string()}).exit_code, 0);
  const auto r = testing::RunCli({"dequantize", awq.string(), "-o", (d / "dw").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // AWQ's f16 scales are qtool's here (WriteQtool rounds them), so the floats are the same.
  EXPECT_EQ(testing::ReadFile(d / "da" / "model.safetensors"),
            testing::ReadFile(d / "dw" / "model.safetensors"));
  const auto i = testing::RunCli({"inspect", awq.string()});
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_NE(i.out.find("quantisation: awq gemm, int4 asym, group 32"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("model.layers.0.mlp.down_proj.weight"), std::string::npos) << i.out;
  EXPECT_EQ(i.out.find(".qzeros"), std::string::npos) << i.out;
}

// A NaN block scale or a global scale that is not positive is refused when the weight is read
// (exit code 6): compressed-tensors would decode it to NaN or Inf weights.
TEST(ImportFp4, RefusesNanScales) {
  ScratchDir d;
  const fs::path nv = Convert(WriteQtool(d / "a", {{"codec", "nvfp4"}}), d / "nv",
                              ExportFormat::kCompressedTensors);
  const std::string w = "model.layers.0.self_attn.q_proj.weight";
  Rewrite(nv, d / "nan", [](TensorSpec& s, std::vector<std::byte>& b) {
    if (s.name == "model.layers.0.self_attn.q_proj.weight_scale") b[3] = std::byte{0x7f};
  });
  const Checkpoint c1 = Checkpoint::Open(d / "nan");
  std::string e = testing::ErrorOf<NumericError>([&] { ImportedCheckpoint::Open(c1)->ReadF32(w); });
  EXPECT_NE(e.find("q_proj.weight_scale\" holds a NaN scale (0x7f) at index 3"), std::string::npos)
      << e;
  Rewrite(nv, d / "zero", [](TensorSpec& s, std::vector<std::byte>& b) {
    if (s.name == "model.layers.0.self_attn.q_proj.weight_global_scale")
      std::fill(b.begin(), b.end(), std::byte{0});
  });
  const Checkpoint c2 = Checkpoint::Open(d / "zero");
  e = testing::ErrorOf<NumericError>([&] { ImportedCheckpoint::Open(c2)->ReadF32(w); });
  EXPECT_NE(e.find("global scale 0"), std::string::npos) << e;
  const fs::path mx = Convert(WriteQtool(d / "b", {{"codec", "mx"}, {"element", "e2m1"}}), d / "mx",
                              ExportFormat::kCompressedTensors);
  Rewrite(mx, d / "mxnan", [](TensorSpec& s, std::vector<std::byte>& b) {
    if (s.name == "model.layers.0.self_attn.q_proj.weight_scale") b[0] = std::byte{0xff};
  });
  const Checkpoint c3 = Checkpoint::Open(d / "mxnan");
  e = testing::ErrorOf<NumericError>([&] { ImportedCheckpoint::Open(c3)->ReadF32(w); });
  EXPECT_NE(e.find("NaN scale (0xff) at index 0"), std::string::npos) << e;
}

// A foreign checkpoint is opened and validated once per Checkpoint: the readers of its tensors
// share one ImportedCheckpoint, made again only once the Checkpoint has moved (it points at it).
TEST(ImportShared, OpensOncePerCheckpoint) {
  ScratchDir d;
  const fs::path g = Convert(WriteQtool(d / "a", IntRecord(4, 32)), d / "g", ExportFormat::kGptq);
  Checkpoint ck = Checkpoint::Open(g);
  const auto first = ImportedCheckpoint::Shared(ck);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(ImportedCheckpoint::Shared(ck).get(), first.get());
  const Checkpoint moved = std::move(ck);
  const auto again = ImportedCheckpoint::Shared(moved);
  ASSERT_NE(again, nullptr);
  EXPECT_NE(again.get(), first.get());
  EXPECT_EQ(ImportedCheckpoint::Shared(moved).get(), again.get());
  const std::string w = kWeights[0].first;
  const std::vector<float> x = again->ReadF32(w), y = ReadTensorF32(moved, w);
  EXPECT_EQ(x, y);
  // A qtool checkpoint has no foreign view.
  EXPECT_EQ(ImportedCheckpoint::Shared(Checkpoint::Open(d / "a")), nullptr);
}

// llm-compressor names 8-bit weights that need no packing naive-quantized: the tensors of
// float-quantized (FP8) and int-quantized (INT8), read as those.
TEST(ImportCompressedTensors, NaiveQuantizedIsReadAsItsTensors) {
  ScratchDir d;
  struct NaiveCase {
    const char* name;
    json codec, activations;
  };
  const NaiveCase cases[] = {
      {"fp8", {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "channel"}}, nullptr},
      {"w8a8", IntRecord(8, 0), Int8TokenActivations()}};
  for (const NaiveCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string n = c.name;
    const fs::path a = WriteQtool(d / n, c.codec, false, c.activations);
    const fs::path ct = Convert(a, d / (n + "-ct"), ExportFormat::kCompressedTensors);
    Rewrite(
        ct, d / (n + "-naive"), [](TensorSpec&, std::vector<std::byte>&) {},
        [](json& config) { config["quantization_config"]["format"] = "naive-quantized"; });
    ExpectSameWeights(a, d / (n + "-naive"));
  }
}

// llm-compressor's GPTQ writes actorder "static" by default: an alias of "weight" (columns
// ordered during GPTQ, groups kept in place), read as is; "group" and its alias "dynamic" need a
// g_idx that compressed-tensors does not store, and are refused by name.
TEST(ImportCompressedTensors, ActOrderAliases) {
  ScratchDir d;
  const fs::path a = WriteQtool(d / "a", IntRecord(4, 32));
  const fs::path ct = Convert(a, d / "ct", ExportFormat::kCompressedTensors);
  const auto with_actorder = [&](const std::string& order) {
    const fs::path p = d / order;
    Rewrite(
        ct, p, [](TensorSpec&, std::vector<std::byte>&) {},
        [&](json& config) {
          config["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] = order;
        });
    return p;
  };
  for (const std::string order : {"weight", "static"}) {
    SCOPED_TRACE(order);
    ExpectSameWeights(a, with_actorder(order));
  }
  for (const std::string order : {"group", "dynamic"}) {
    const std::string e = testing::ErrorOf<FormatError>([&] {
      const Checkpoint ck = Checkpoint::Open(with_actorder(order));
      for (const std::string& name : LogicalTensorNames(ck)) ReadTensorF32(ck, name);
    });
    EXPECT_NE(e.find("\"actorder\" = \"" + order + "\""), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace qtool
