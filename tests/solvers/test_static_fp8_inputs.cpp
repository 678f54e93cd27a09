// Static FP8 inputs (W8A8-FP8, `--activations fp8-static`): the input scales measured on
// calibration data, the runtime's rounding of a Linear's input, and the checkpoint's round trip
// through compressed-tensors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/export.hpp"
#include "qtool/io/import.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/model.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/quant/activation.hpp"
#include "qtool/solvers/input_scales.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::ScratchDir;

// The E4M3 value nearest to v by exhaustive search over the finite codes (ties to the even
// code, i.e. the even mantissa), |v| beyond 448 clamped first: compressed-tensors' fake
// quantisation, clamp(v, -448, 448).to(float8_e4m3fn), written from its definition.
float NearestE4M3(float v) {
  const float c = std::clamp(v, -448.0f, 448.0f);
  float best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  uint32_t best_code = 0;
  for (uint32_t code = 0; code < 256; ++code) {
    const float x = DecodeMinifloat(code, kE4M3);
    if (!std::isfinite(x)) continue;
    const double d = std::fabs(static_cast<double>(x) - static_cast<double>(c));
    if (d < best_d || (d == best_d && (code & 1u) == 0 && (best_code & 1u) == 1)) {
      best = x;
      best_d = d;
      best_code = code;
    }
  }
  return best == 0 ? std::copysign(0.0f, c) : best;
}

TEST(Fp8Static, ScaleIsMaxAbsOver448) {
  EXPECT_EQ(solvers::Fp8InputScale(448.0f), 1.0f);
  EXPECT_EQ(solvers::Fp8InputScale(7.0f), 7.0f / 448.0f);
  EXPECT_EQ(solvers::Fp8InputScale(0.0f), 1.0f);  // an input that is zero throughout
}

// The runtime's rounding of a static FP8 input against the scalar reference: every value on
// both sides of every rounding boundary, ties, subnormals, saturation.
TEST(Fp8Static, RoundingMatchesTheScalarReference) {
  std::vector<float> x;
  for (uint32_t code = 0; code < 256; ++code) {
    const float v = DecodeMinifloat(code, kE4M3);
    if (!std::isfinite(v)) continue;
    for (const float f : {1.0f, 1.0f + 0x1p-4f, 1.0f + 0x1p-5f, 1.0f - 0x1p-6f, 1.0f + 0x1p-20f}) {
      x.push_back(v * f);
      x.push_back(std::nextafter(v * f, 0.0f));
    }
  }
  for (const float v : {460.0f, 464.0f, 469.0f, 1e6f, -1e6f, 0x1p-10f, 0x1p-9f, 3 * 0x1p-10f}) {
    x.push_back(v);
  }
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 100.0f);
  for (int i = 0; i < 4096; ++i) x.push_back(dist(rng));
  for (const float scale : {1.0f, 0.37f, 1e-3f, 3.5f}) {
    SCOPED_TRACE(scale);
    std::vector<float> in(x.size()), out(x.size());
    for (size_t i = 0; i < x.size(); ++i) in[i] = x[i] * scale;
    FakeQuantizeStaticFp8(in.data(), static_cast<int64_t>(in.size()), scale, out.data());
    for (size_t i = 0; i < in.size(); ++i) {
      const float want = NearestE4M3(in[i] / scale) * scale;
      ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(want))
          << "x = " << in[i] << " (x / s = " << in[i] / scale << "): " << out[i] << " vs " << want;
    }
  }
}

fs::path TinyModel() { return *testing::SharedDir() / "models" / "babyllama-tok105" / "hf"; }

QuantizeOptions Fp8Options() {
  QuantizeOptions o;
  o.format = FloatFormat{.element = Element::kE4M3, .granularity = Granularity::kChannel};
  return o;
}

// Calibration on a token-id file of one repeated token: the first block's q/k/v see the normed
// embeddings of that token and of BOS only, so their scale is known from the checkpoint alone.
TEST(Fp8Static, FirstBlockScaleIsTheNormedEmbeddingsMaxOver448) {
  QTOOL_REQUIRE_SHARED();
  ScratchDir d;
  constexpr int32_t kToken = 9;
  std::string ids;
  for (int i = 0; i < 200; ++i) ids += std::to_string(kToken) + "\n";
  testing::WriteFile(d / "calib.ids", ids);
  solvers::CalibratedOptions c;
  c.calib_text = d / "calib.ids";
  c.calib.num_samples = 2;
  c.calib.seq_len = 16;
  const std::map<std::string, float> scales =
      solvers::MeasureFp8InputScales(TinyModel(), Fp8Options(), c);

  const Checkpoint ck = Checkpoint::Open(TinyModel());
  const json& config = *ck.config();
  const int64_t h = config.at("hidden_size").get<int64_t>();
  const double eps = config.at("rms_norm_eps").get<double>();
  const std::vector<float> emb = ReadTensorF32(ck, "model.embed_tokens.weight");
  const std::vector<float> norm = ReadTensorF32(ck, "model.layers.0.input_layernorm.weight");
  float amax = 0;
  for (const int32_t t : {kToken, config.at("bos_token_id").get<int32_t>()}) {
    const float* e = emb.data() + static_cast<int64_t>(t) * h;
    double ss = 0;
    for (int64_t i = 0; i < h; ++i) ss += static_cast<double>(e[i]) * e[i];
    const float r =
        1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(h)) + static_cast<float>(eps));
    for (int64_t i = 0; i < h; ++i) {
      amax = std::max(amax, std::fabs(e[i] * r * norm[static_cast<size_t>(i)]));
    }
  }
  for (const char* m : {"q_proj", "k_proj", "v_proj"}) {
    const std::string module = std::string("model.layers.0.self_attn.") + m;
    ASSERT_TRUE(scales.contains(module)) << module;
    EXPECT_FLOAT_EQ(scales.at(module), amax / 448.0f) << module;
  }
  // Every Linear of every block has its scale, and nothing else.
  const int64_t layers = config.at("num_hidden_layers").get<int64_t>();
  EXPECT_EQ(scales.size(), static_cast<size_t>(layers * 7));
  for (const auto& [module, s] : scales) EXPECT_TRUE(std::isfinite(s) && s > 0) << module;
}

// quantize -> qtool checkpoint with input scales -> compressed-tensors -> qtool: the scheme, the
// scales and the weights survive, and the runtime runs both checkpoints alike, quantising inputs.
TEST(Fp8Static, RoundTripThroughCompressedTensors) {
  QTOOL_REQUIRE_SHARED();
  ScratchDir d;
  solvers::CalibratedOptions c;
  c.calib_text = *testing::SharedDir() / "data" / "stories-calib.txt";
  c.calib.num_samples = 4;
  c.calib.seq_len = 64;
  QuantizeOptions o = Fp8Options();
  o.activations = Fp8StaticActivations();
  o.input_scales = solvers::MeasureFp8InputScales(TinyModel(), o, c);
  QuantizeCheckpoint(Checkpoint::Open(TinyModel()), d / "q", o);
  QuantizeOptions weights_only = Fp8Options();
  QuantizeCheckpoint(Checkpoint::Open(TinyModel()), d / "w", weights_only);

  const Checkpoint q = Checkpoint::Open(d / "q");
  EXPECT_EQ(InputQuantizationOf(q), InputQuantization::kFp8Static);
  EXPECT_EQ((*q.config())["quantization_config"]["activations"], Fp8StaticActivations());
  for (const auto& [module, s] : o.input_scales) EXPECT_EQ(StaticInputScale(q, module), s);

  ExportOptions e;
  e.format = ExportFormat::kCompressedTensors;
  ConvertCheckpoint(q, d / "ct", e);
  const Checkpoint ct = Checkpoint::Open(d / "ct");
  const json group = (*ct.config())["quantization_config"]["config_groups"]["group_0"];
  EXPECT_EQ(group["input_activations"]["type"], "float");
  EXPECT_EQ(group["input_activations"]["strategy"], "tensor");
  EXPECT_EQ(group["input_activations"]["dynamic"], false);
  EXPECT_EQ(group["input_activations"]["num_bits"], 8);
  const auto imported = ImportedCheckpoint::Open(ct);
  ASSERT_TRUE(imported.has_value());
  EXPECT_TRUE(imported->scheme().fp8_static_activations);
  EXPECT_FALSE(imported->scheme().int8_activations);
  EXPECT_EQ(InputQuantizationOf(ct), InputQuantization::kFp8Static);
  for (const auto& [module, s] : o.input_scales) {
    EXPECT_EQ(StaticInputScale(ct, module), s);
    const std::vector<float> a = ReadTensorF32(q, module + ".weight");
    EXPECT_EQ(a, ReadTensorF32(ct, module + ".weight")) << module;
  }
  // Back to qtool and out again: the same compressed-tensors file, byte for byte.
  e.format = ExportFormat::kQtool;
  ConvertCheckpoint(ct, d / "back", e);
  EXPECT_EQ(InputQuantizationOf(Checkpoint::Open(d / "back")), InputQuantization::kFp8Static);
  e.format = ExportFormat::kCompressedTensors;
  ConvertCheckpoint(Checkpoint::Open(d / "back"), d / "ct2", e);
  EXPECT_EQ(testing::ReadFile(d / "ct" / "model.safetensors"),
            testing::ReadFile(d / "ct2" / "model.safetensors"));

  // Dequantised, it is a float checkpoint: no input scales, the decoded weights.
  DequantizeCheckpoint(ct, d / "deq", false);
  const Checkpoint deq = Checkpoint::Open(d / "deq");
  for (const auto& [module, s] : o.input_scales) {
    EXPECT_EQ(deq.Find(module + kInputScaleSuffix), nullptr) << module;
    EXPECT_EQ(ReadTensorF32(deq, module + ".weight"), ReadTensorF32(q, module + ".weight"));
  }
  EXPECT_EQ(InputQuantizationOf(deq), InputQuantization::kNone);

  const std::vector<int32_t> tokens = {1, 40, 52, 7, 99, 3, 21, 60, 14, 5};
  const RowMatrixXf lq = Model(d / "q").Logits(tokens);
  const RowMatrixXf lct = Model(d / "ct").Logits(tokens);
  EXPECT_EQ((lq - lct).cwiseAbs().maxCoeff(), 0.0f);
  // The same FP8 weights with float inputs give other logits: the inputs were quantised.
  const RowMatrixXf lw = Model(d / "w").Logits(tokens);
  EXPECT_GT((lq - lw).cwiseAbs().maxCoeff(), 1e-4f * lw.cwiseAbs().maxCoeff());
}

// A missing or damaged input scale, and input schemes qtool does not run, are refused by name.
TEST(Fp8Static, DamagedScalesAndOtherSchemesAreRefused) {
  QTOOL_REQUIRE_SHARED();
  ScratchDir d;
  QuantizeOptions o = Fp8Options();
  o.activations = Fp8StaticActivations();
  solvers::CalibratedOptions c;
  c.calib_text = *testing::SharedDir() / "data" / "stories-calib.txt";
  c.calib.num_samples = 2;
  c.calib.seq_len = 32;
  o.input_scales = solvers::MeasureFp8InputScales(TinyModel(), o, c);
  // The writer needs one scale per quantised Linear.
  QuantizeOptions missing = o;
  missing.input_scales.erase("model.layers.0.self_attn.q_proj");
  EXPECT_THROW(QuantizeCheckpoint(Checkpoint::Open(TinyModel()), d / "m", missing), OptionError);
  QuantizeOptions int_weights = o;
  int_weights.format = IntFormat{.bits = 8, .granularity = Granularity::kChannel};
  EXPECT_THROW(QuantizeCheckpoint(Checkpoint::Open(TinyModel()), d / "i", int_weights),
               OptionError);
  QuantizeCheckpoint(Checkpoint::Open(TinyModel()), d / "q", o);
  ExportOptions e;
  e.format = ExportFormat::kGptq;
  EXPECT_THROW(ConvertCheckpoint(Checkpoint::Open(d / "q"), d / "g", e), OptionError);
  e.format = ExportFormat::kCompressedTensors;
  ConvertCheckpoint(Checkpoint::Open(d / "q"), d / "ct", e);

  // Rewrites the compressed-tensors checkpoint with `edit` applied to its tensors and config.
  const auto rewrite = [&](const std::string& name, auto edit_tensor, auto edit_config) {
    const Checkpoint ck = Checkpoint::Open(d / "ct");
    std::vector<TensorSpec> specs;
    std::vector<std::vector<std::byte>> data;
    for (const CheckpointTensor& t : ck.tensors()) {
      TensorSpec s = *t.info;
      std::vector<std::byte> b(t.data().begin(), t.data().end());
      if (!edit_tensor(s, b)) continue;
      specs.push_back(s);
      data.push_back(std::move(b));
    }
    CheckpointWriterOptions wo;
    wo.metadata = {{"format", "pt"}};
    CheckpointWriter w(d / name, specs, wo);
    for (const auto& b : data) w.Write(b);
    json config = *ck.config();
    edit_config(config);
    w.WriteTextFile("config.json", config.dump());
    w.Commit();
    return d / name;
  };
  const auto keep = [](TensorSpec&, std::vector<std::byte>&) { return true; };
  const auto same = [](json&) {};
  const std::string q0 = "model.layers.0.self_attn.q_proj.input_scale";
  const fs::path no_scale = rewrite(
      "no-scale", [&](TensorSpec& s, std::vector<std::byte>&) { return s.name != q0; }, same);
  std::string err;
  try {
    Model m(no_scale);
  } catch (const FormatError& ex) {
    err = ex.what();
  }
  EXPECT_NE(err.find(q0), std::string::npos) << err;
  const fs::path negative = rewrite(
      "negative",
      [&](TensorSpec& s, std::vector<std::byte>& b) {
        if (s.name == q0) {
          const float v = -1.0f;
          std::memcpy(b.data(), &v, 4);
        }
        return true;
      },
      same);
  EXPECT_THROW(StaticInputScale(Checkpoint::Open(negative), "model.layers.0.self_attn.q_proj"),
               NumericError);
  // Dynamic FP8 inputs (and per-token ones) are not run: refused, naming the scheme.
  const fs::path dynamic = rewrite("dynamic", keep, [](json& config) {
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"]["dynamic"] =
        true;
  });
  err.clear();
  try {
    InputQuantizationOf(Checkpoint::Open(dynamic));
  } catch (const FormatError& ex) {
    err = ex.what();
  }
  EXPECT_NE(err.find("\"input_activations\" = {"), std::string::npos) << err;
  EXPECT_NE(err.find("\"dynamic\":true"), std::string::npos) << err;
}

// The CLI's refusals: exit code 3 (bad option) with one message each.
TEST(Fp8Static, CliRefusals) {
  QTOOL_REQUIRE_SHARED();
  ScratchDir d;
  const std::string calib = (*testing::SharedDir() / "data" / "stories-calib.txt").string();
  const std::string model = TinyModel().string();
  struct Refusal {
    std::vector<std::string> extra;
    std::string says;
  };
  const Refusal refusals[] = {
      {{"--format", "fp8-e4m3"}, "--calib"},
      {{"--format", "int8", "--calib", calib}, "fp8-e4m3"},
      {{"--format", "fp8-e5m2", "--calib", calib}, "fp8-e4m3"},
      {{"--format", "fp8-e4m3", "--calib", calib, "--output-format", "gptq"}, "gptq"},
      {{"--format", "fp8-e4m3", "--calib", calib, "--method", "gptq"}, "--method gptq"},
  };
  int i = 0;
  for (const Refusal& r : refusals) {
    std::vector<std::string> args = {
        "quantize",      model,        "-o",         (d / std::to_string(i++)).string(),
        "--activations", "fp8-static", "--nsamples", "2",
        "--seqlen",      "32"};
    args.insert(args.end(), r.extra.begin(), r.extra.end());
    const testing::CliResult res = testing::RunCli(args);
    EXPECT_EQ(res.exit_code, 3) << res.err;
    EXPECT_NE(res.err.find(r.says), std::string::npos) << res.err;
  }
  const testing::CliResult ok =
      testing::RunCli({"quantize", model, "-o", (d / "ok").string(), "-q", "--format", "fp8-e4m3",
                       "--activations", "fp8-static", "--calib", calib, "--nsamples", "2",
                       "--seqlen", "32", "--output-format", "compressed-tensors"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(InputQuantizationOf(Checkpoint::Open(d / "ok")), InputQuantization::kFp8Static);
}

}  // namespace
}  // namespace qtool
