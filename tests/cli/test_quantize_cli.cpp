// End-to-end tests of qtool quantize / dequantize / inspect through the real binary.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "qtool/core/error.hpp"
#include "qtool/format/spec.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/kernels/convert.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::RunCli;
using testing::ScratchDir;

// The independent RTN definition (reference-numbers.json / models README): symmetric,
// scale = max|w| / qmax (1 for an all-zero group), q = clamp(rne(w / scale), -qmax-1, qmax).
std::vector<float> ReferenceRtn(const std::vector<float>& w, int64_t cols, int bits,
                                int64_t group) {
  std::vector<float> out(w.size());
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  const int64_t g = group > 0 ? group : cols;
  for (size_t r = 0; r < w.size() / static_cast<size_t>(cols); ++r) {
    for (int64_t g0 = 0; g0 < cols; g0 += g) {
      const size_t b = r * static_cast<size_t>(cols) + static_cast<size_t>(g0);
      const size_t e = b + static_cast<size_t>(std::min(g, cols - g0));
      float amax = 0;
      for (size_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(w[i]));
      const float scale = amax == 0 ? 1.0f : amax / qmax;
      for (size_t i = b; i < e; ++i) {
        out[i] = std::clamp(std::nearbyint(w[i] / scale), -qmax - 1, qmax) * scale;
      }
    }
  }
  return out;
}

double Sqnr(const std::vector<float>& x, const std::vector<float>& y) {
  double s = 0, e = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    s += double(x[i]) * x[i];
    e += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
  }
  return 10 * std::log10(s / e);
}

struct RtnCase {
  const char* granularity;
  int bits;
  int64_t group;  // 0: per channel
};

TEST(QuantizeCli, RealModelsMatchIndependentRtn) {
  QTOOL_REQUIRE_SHARED();
  const auto models = testing::SharedModels();
  ASSERT_FALSE(models.empty()) << "../shared/models holds no checkpoint";
  for (const fs::path& model : models) {
    const Checkpoint base = Checkpoint::Open(model);
    for (const RtnCase c :
         {RtnCase{"channel", 8, 0}, RtnCase{"group", 4, 32}, RtnCase{"group", 4, 16},
          RtnCase{"group", 3, 32}, RtnCase{"group", 2, 128}}) {
      SCOPED_TRACE(model.string() + " int" + std::to_string(c.bits) + " g" +
                   std::to_string(c.group));
      ScratchDir dir;
      const auto r = RunCli({"quantize", model.string(), "-o", (dir / "q").string(), "--bits",
                             std::to_string(c.bits), "--granularity", c.granularity, "--group",
                             std::to_string(c.group > 0 ? c.group : 128), "--json",
                             (dir / "r.json").string()});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const json report = json::parse(testing::ReadFile(dir / "r.json"));
      const Checkpoint q = Checkpoint::Open(dir / "q");
      int quantized = 0;
      for (const json& t : report["tensors"]) {
        const std::string name = t["name"];
        const bool in_block = name.find(".layers.") != std::string::npos;
        const bool matrix = t["shape"].size() == 2;
        ASSERT_EQ(t["quantized"].get<bool>(), in_block && matrix) << name;
        const std::vector<float> w = ReadTensorF32(base, name);
        const std::vector<float> got = ReadTensorF32(q, name);
        if (!t["quantized"].get<bool>()) {
          EXPECT_EQ(got, w) << name << " must be copied unchanged";
          continue;
        }
        ++quantized;
        const int64_t cols = t["shape"][1];
        EXPECT_EQ(got, ReferenceRtn(w, cols, c.bits, c.group)) << name;
        const double sqnr = Sqnr(w, got);
        EXPECT_NEAR(t["metrics"]["sqnr_db"].get<double>(), sqnr, 1e-6 * std::fabs(sqnr)) << name;
        if (c.bits == 8) {
          EXPECT_GE(sqnr, 38.0) << name;
        }
      }
      EXPECT_EQ(quantized, 35);  // 5 blocks x 7 projections
      // The quantised model keeps its other files and records the scheme in config.json.
      EXPECT_TRUE(fs::exists(dir / "q" / "tokenizer.model"));
      const json config = json::parse(testing::ReadFile(dir / "q" / "config.json"));
      EXPECT_EQ(config["quantization_config"]["quant_method"], "qtool");
      EXPECT_EQ(config["quantization_config"]["bits"], c.bits);
    }
  }
}

TEST(QuantizeCli, DequantizeWritesPlainCheckpointInOriginalDtype) {
  QTOOL_REQUIRE_SHARED();
  for (const fs::path& model : testing::SharedModels()) {
    SCOPED_TRACE(model.string());
    ScratchDir dir;
    ASSERT_EQ(RunCli({"quantize", model.string(), "-o", (dir / "q").string(), "--bits", "4",
                      "--group", "32", "--asym", "-q"})
                  .exit_code,
              0);
    const auto r = RunCli({"dequantize", (dir / "q").string(), "-o", (dir / "d").string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Checkpoint base = Checkpoint::Open(model);
    const Checkpoint q = Checkpoint::Open(dir / "q");
    const Checkpoint d = Checkpoint::Open(dir / "d");
    EXPECT_FALSE(QuantizationRecord(d).has_value());
    ASSERT_EQ(d.tensors().size(), base.tensors().size());
    for (size_t i = 0; i < base.tensors().size(); ++i) {
      const TensorInfo& b = *base.tensors()[i].info;
      const TensorInfo& t = *d.tensors()[i].info;
      EXPECT_EQ(t.name, b.name);
      EXPECT_EQ(t.dtype, b.dtype);
      EXPECT_EQ(t.shape, b.shape);
      // Decoded values, rounded to the original dtype.
      std::vector<float> want = ReadTensorF32(q, t.name);
      std::vector<std::byte> bytes(b.nbytes());
      ConvertFromF32(want.data(), b.dtype, b.numel(), bytes.data());
      ConvertToF32(bytes.data(), b.dtype, b.numel(), want.data());
      EXPECT_EQ(ReadTensorF32(d, t.name), want) << t.name;
    }
    EXPECT_FALSE(
        json::parse(testing::ReadFile(dir / "d" / "config.json")).contains("quantization_config"));
  }
}

TEST(QuantizeCli, ShardedOutputAndIncludeExcludeRules) {
  QTOOL_REQUIRE_SHARED();
  const fs::path model = testing::SharedModels().front();
  ScratchDir dir;
  const auto r =
      RunCli({"quantize", model.string(), "-o", (dir / "q").string(), "--bits", "8",
              "--granularity", "channel", "--include", "embed_tokens", "--exclude", "layers\\.0\\.",
              "--max-shard-size", "100kB", "--json", (dir / "r.json").string(), "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "q" / "model.safetensors.index.json"));
  const json report = json::parse(testing::ReadFile(dir / "r.json"));
  for (const json& t : report["tensors"]) {
    const std::string name = t["name"];
    const bool want = name == "model.embed_tokens.weight" ||
                      (name.find(".layers.") != std::string::npos && t["shape"].size() == 2 &&
                       name.find(".layers.0.") == std::string::npos);
    EXPECT_EQ(t["quantized"].get<bool>(), want) << name;
  }
  const Checkpoint q = Checkpoint::Open(dir / "q");
  EXPECT_GT(q.files().size(), 1u);
  EXPECT_EQ(LogicalTensorNames(q).size(), Checkpoint::Open(model).tensors().size());
}

TEST(InspectCli, ReportsArchitectureMemoryAndKvCache) {
  QTOOL_REQUIRE_SHARED();
  const fs::path model = *testing::SharedDir() / "models" / "stories260K" / "hf";
  ScratchDir dir;
  const auto r = RunCli({"inspect", model.string(), "--json", (dir / "i.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("model.layers.0.mlp.down_proj.weight"), std::string::npos);
  const json j = json::parse(testing::ReadFile(dir / "i.json"));
  EXPECT_EQ(j["params"], 260032 - 0);  // tied embeddings: no lm_head tensor
  EXPECT_EQ(j["architecture"]["num_key_value_heads"], 4);
  EXPECT_EQ(j["architecture"]["head_dim"], 8);
  // 2 (k and v) x 5 layers x 4 kv heads x 8 dims x 2 bytes.
  EXPECT_EQ(j["kv_cache"]["fp16"]["bytes_per_token"], 2 * 5 * 4 * 8 * 2);
  EXPECT_EQ(j["kv_cache"]["fp16"]["ctx_32768"], 2 * 5 * 4 * 8 * 2 * 32768);
  EXPECT_EQ(j["weight_memory_bytes"]["int4"], 260032 / 2.0);
}

// ---- Bad input: one clear line, a distinct exit code, no output left behind. ----

struct BadInput {
  const char* what;
  std::string header;  // safetensors header text ("" = use `raw` as the whole file)
  std::string data;
  std::string raw;
  int exit_code;
  const char* message;
};

// A valid single-tensor file inside a decoder block, so the default rules quantise it.
const char* kTensor = "model.layers.0.mlp.up_proj.weight";

std::string FloatBytes(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

void ExpectFailsCleanly(const ScratchDir& dir, const std::vector<std::string>& args, int code,
                        const std::string& message, const std::string& what) {
  const auto r = RunCli(args);
  EXPECT_EQ(r.exit_code, code) << what << ": " << r.err;
  EXPECT_NE(r.err.find(message), std::string::npos) << what << ": " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
  EXPECT_FALSE(fs::exists(dir / "out")) << what;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find("qtool-tmp"), std::string::npos)
        << what << ": left " << e.path();
  }
}

TEST(QuantizeCli, BadInputFailsCleanly) {
  const std::string good_header =
      fmt::format(R"({{"{}":{{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}}})", kTensor);
  const std::string good_data = FloatBytes({1, 2, 3, 4, 5, 6, 7, 8});
  const std::string good = testing::SafetensorsImage(good_header, good_data);
  const std::vector<BadInput> cases = {
      {"truncated file", "", "", good.substr(0, good.size() - 5), 4, "truncated"},
      {"header length beyond the file", "", "", good.substr(0, 20), 4, "runs past the end"},
      {"invalid json", "{\"a\": [1,", "", "", 4, "not valid JSON"},
      {"unknown dtype",
       fmt::format(R"({{"{}":{{"dtype":"Q7","shape":[2,4],"data_offsets":[0,32]}}}})", kTensor),
       good_data, "", 4, "unknown dtype"},
      {"shape disagrees with span",
       fmt::format(R"({{"{}":{{"dtype":"F32","shape":[3,4],"data_offsets":[0,32]}}}})", kTensor),
       good_data, "", 4, "needs 48 bytes"},
      {"overlapping offsets",
       fmt::format(
           R"({{"{}":{{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}},"b":{{"dtype":"F32","shape":[2],"data_offsets":[24,32]}}}})",
           kTensor),
       good_data, "", 4, "overlap"},
      {"offsets out of range",
       fmt::format(R"({{"{}":{{"dtype":"F32","shape":[2,4],"data_offsets":[8,40]}}}})", kTensor),
       good_data, "", 4, "run past the data section"},
      {"NaN in a weight", good_header, FloatBytes({1, 2, 3, NAN, 5, 6, 7, 8}), "", 6,
       "non-finite value (nan) at [0, 3]"},
      {"Inf in a weight", good_header, FloatBytes({1, 2, 3, 4, 5, 6, 7, -INFINITY}), "", 6,
       "non-finite value (-inf) at [1, 3]"},
  };
  for (const BadInput& c : cases) {
    ScratchDir dir;
    const fs::path in = dir / "in.safetensors";
    testing::WriteFile(in, c.raw.empty() ? testing::SafetensorsImage(c.header, c.data) : c.raw);
    ExpectFailsCleanly(dir, {"quantize", in.string(), "-o", (dir / "out").string()}, c.exit_code,
                       c.message, c.what);
    if (c.exit_code == 4) {  // the file itself is broken: every command refuses it
      ExpectFailsCleanly(dir, {"inspect", in.string()}, 4, c.message, c.what);
    }
    EXPECT_EQ(testing::ReadFile(in),
              c.raw.empty() ? testing::SafetensorsImage(c.header, c.data) : c.raw)
        << c.what << ": the input changed";
  }
}

TEST(QuantizeCli, ImpossibleOptionsAndOutputsFailCleanly) {
  ScratchDir dir;
  const fs::path in = dir / "in.safetensors";
  testing::WriteFile(
      in,
      testing::SafetensorsImage(
          fmt::format(R"({{"{}":{{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}}})", kTensor),
          FloatBytes({1, 2, 3, 4, 5, 6, 7, 8})));
  const std::string out = (dir / "out").string();
  ExpectFailsCleanly(dir, {"quantize", in.string(), "-o", out, "--bits", "9"}, 3,
                     "bits must be in 2..8, got 9", "bits 9");
  ExpectFailsCleanly(dir, {"quantize", in.string(), "-o", out, "--bits", "1"}, 3,
                     "bits must be in 2..8, got 1", "bits 1");
  ExpectFailsCleanly(dir, {"quantize", in.string(), "-o", out, "--group", "0"}, 3,
                     "--group must be at least 1", "group 0");
  ExpectFailsCleanly(dir, {"quantize", in.string(), "-o", out, "--include", "(["}, 3,
                     "not a valid regular expression", "bad regex");
  ExpectFailsCleanly(dir, {"quantize", (dir / "missing.safetensors").string(), "-o", out}, 7,
                     "no such file", "missing input");
  ExpectFailsCleanly(dir, {"quantize", in.string(), "-o", (dir / "no" / "out").string()}, 7,
                     "does not exist", "missing parent directory");
  ExpectFailsCleanly(dir, {"quantize", in.string(), "-o", (in / "out").string()}, 7,
                     "does not exist", "parent is a file");

  // An existing output is refused without --force and left as it was; --force replaces it.
  fs::create_directories(dir / "out");
  testing::WriteFile(dir / "out" / "keep", "precious");
  const auto r = RunCli({"quantize", in.string(), "-o", out});
  EXPECT_EQ(r.exit_code, 8) << r.err;
  EXPECT_NE(r.err.find("output exists"), std::string::npos) << r.err;
  EXPECT_EQ(testing::ReadFile(dir / "out" / "keep"), "precious");
  ASSERT_EQ(RunCli({"quantize", in.string(), "-o", out, "--force", "-q"}).exit_code, 0);
  EXPECT_FALSE(fs::exists(dir / "out" / "keep"));
  EXPECT_TRUE(fs::exists(dir / "out" / "model.safetensors"));
  // The output may not be the input's own directory.
  const auto self = RunCli({"quantize", out, "-o", out, "--force"});
  EXPECT_EQ(self.exit_code, 3) << self.err;
  EXPECT_TRUE(fs::exists(dir / "out" / "model.safetensors"));
}

TEST(QuantizeCli, IncludingANonMatrixIsAShapeError) {
  ScratchDir dir;
  const fs::path in = dir / "in.safetensors";
  testing::WriteFile(
      in, testing::SafetensorsImage(
              R"({"model.layers.0.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
              FloatBytes({1, 2, 3, 4})));
  ExpectFailsCleanly(dir,
                     {"quantize", in.string(), "-o", (dir / "out").string(), "--include", "norm"},
                     5, "is not a 2-D float matrix", "1-D include");
}

}  // namespace
}  // namespace qtool
