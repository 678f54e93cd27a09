// `qtool quantize --method ...` end to end: the output is readable by `qtool dequantize` and
// `qtool eval`, the JSON report carries the per-layer solver losses and the weights' error in the
// checkpoint's basis, and bad options are refused with the option error's exit code.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/io/quantized.hpp"
#include "test_support.hpp"

namespace qtool::solvers {
namespace {

namespace fs = std::filesystem;
using testing::RunCli;

// Perplexity of `model` on the shared evaluation text by `qtool eval` (-1 when it fails).
double EvalPerplexity(const fs::path& model) {
  const testing::CliResult e = RunCli(
      {"eval", model.string(), "--text",
       (testing::SharedDir().value() / "data" / "stories-eval.txt").string(), "--json", "-"});
  EXPECT_EQ(e.exit_code, 0) << e.err;
  return e.exit_code == 0 ? nlohmann::json::parse(e.out)["ppl"].get<double>() : -1.0;
}

class QuantizeMethodCliTest : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizeMethodCliTest, WritesACheckpointDequantizeAndEvalRead) {
  QTOOL_REQUIRE_SHARED();
  const fs::path shared = testing::SharedDir().value();
  const fs::path model = shared / "models" / "stories260K" / "hf";
  testing::ScratchDir dir;
  const std::string method = GetParam();
  std::vector<std::string> args = {"quantize",   model.string(),
                                   "-o",         (dir / "q").string(),
                                   "--method",   method,
                                   "--calib",    (shared / "data" / "stories-calib.txt").string(),
                                   "--nsamples", "4",
                                   "--seqlen",   "64",
                                   "--group",    "32",
                                   "--json",     (dir / "report.json").string()};
  if (method == "hqq") args.push_back("--asym");
  const testing::CliResult q = RunCli(args);
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const nlohmann::json report = nlohmann::json::parse(testing::ReadFile(dir / "report.json"));
  EXPECT_EQ(report["solver"]["method"], method);
  EXPECT_FALSE(report["solver"]["layers"].empty());
  EXPECT_GT(report["summary"]["params_quantized"].get<int64_t>(), 0);
  // The error report compares in the checkpoint's basis, a solver's rescaling undone: about what
  // rounding alone gives (RTN at INT4-g32: 19-22 dB; INT8 per channel: 43-45 dB).
  for (const nlohmann::json& t : report["tensors"]) {
    if (t.value("quantized", false)) {
      EXPECT_GT(t["metrics"]["sqnr_db"].get<double>(), 15.0) << t;
    }
  }

  const testing::CliResult d =
      RunCli({"dequantize", (dir / "q").string(), "-o", (dir / "d").string()});
  EXPECT_EQ(d.exit_code, 0) << d.err;
  const double ppl = EvalPerplexity(dir / "q");
  EXPECT_GT(ppl, 5.0);
  EXPECT_LT(ppl, 7.0);
}

INSTANTIATE_TEST_SUITE_P(Methods, QuantizeMethodCliTest,
                         ::testing::Values("gptq", "awq", "smoothquant", "hqq"));

TEST(QuantizeMethodCliTest, RefusesBadOptions) {
  QTOOL_REQUIRE_SHARED();
  const fs::path model = testing::SharedDir().value() / "models" / "stories260K" / "hf";
  testing::ScratchDir dir;
  const std::string out = (dir / "q").string();
  const int option = static_cast<int>(ExitCode::kOption);
  EXPECT_EQ(RunCli({"quantize", model.string(), "-o", out, "--method", "gptq"}).exit_code, option);
  EXPECT_EQ(RunCli({"quantize", model.string(), "-o", out, "--method", "magic"}).exit_code, option);
  const std::string calib = (testing::SharedDir().value() / "data" / "stories-calib.txt").string();
  EXPECT_EQ(RunCli({"quantize", model.string(), "-o", out, "--method", "gptq", "--calib", calib,
                    "--damp", "-1"})
                .exit_code,
            option);
  EXPECT_EQ(RunCli({"quantize", model.string(), "-o", out, "--method", "awq", "--calib", calib,
                    "--granularity", "tensor"})
                .exit_code,
            option);
  for (const char* alpha : {"1.5", "-0.1", "half", "0.5x"}) {
    EXPECT_EQ(RunCli({"quantize", model.string(), "-o", out, "--method", "smoothquant", "--calib",
                      calib, "--alpha", alpha})
                  .exit_code,
              option)
        << alpha;
  }
  EXPECT_EQ(RunCli({"quantize", model.string(), "-o", out, "--activations", "int4"}).exit_code,
            option);
  EXPECT_FALSE(fs::exists(out));
}

// GPTQ with act-order fits each group on the columns it processes together: the checkpoint
// stores every column's group (g_idx), and eval and dequantize decode through it.
TEST(QuantizeMethodCliTest, GptqActOrderStoresEachColumnsGroup) {
  QTOOL_REQUIRE_SHARED();
  const fs::path shared = testing::SharedDir().value();
  const fs::path model = shared / "models" / "stories260K" / "hf";
  testing::ScratchDir dir;
  const testing::CliResult q =
      RunCli({"quantize", model.string(), "-o", (dir / "q").string(), "--method", "gptq",
              "--act-order", "--calib", (shared / "data" / "stories-calib.txt").string(),
              "--nsamples", "4", "--seqlen", "64", "--group", "32", "-q"});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const Checkpoint ck = Checkpoint::Open(dir / "q");
  EXPECT_TRUE(QuantizationRecord(ck).value()["codec"].value("g_idx", false));
  const CheckpointTensor& g = ck.Get("model.layers.0.mlp.down_proj.weight.g_idx");
  std::vector<int32_t> g_idx(static_cast<size_t>(g.info->numel()));
  std::memcpy(g_idx.data(), g.data().data(), g_idx.size() * 4);
  bool column_order = true;
  for (size_t c = 0; c < g_idx.size(); ++c)
    column_order &= g_idx[c] == static_cast<int32_t>(c / 32);
  EXPECT_FALSE(column_order);
  EXPECT_EQ(RunCli({"dequantize", (dir / "q").string(), "-o", (dir / "d").string()}).exit_code, 0);
  const double ppl = EvalPerplexity(dir / "q");
  EXPECT_GT(ppl, 5.0);
  EXPECT_LT(ppl, 6.0);
}

// A W8A8 checkpoint records its activation quantisation in the metadata and config.json, and the
// runtime honours it: the same weights evaluate differently with and without it.
TEST(QuantizeMethodCliTest, W8A8RecordsActivationsAndEvalQuantisesThem) {
  QTOOL_REQUIRE_SHARED();
  const fs::path shared = testing::SharedDir().value();
  const fs::path model = shared / "models" / "stories260K" / "hf";
  testing::ScratchDir dir;
  const std::vector<std::string> w8 = {"--bits", "8", "--granularity", "channel", "-q"};
  auto quantize = [&](const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> args = {"quantize", model.string(), "-o", (dir / name).string()};
    args.insert(args.end(), extra.begin(), extra.end());
    const testing::CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  };
  quantize("w8", w8);
  std::vector<std::string> a8 = w8;
  a8.insert(a8.end(), {"--activations", "int8"});
  quantize("w8a8", a8);
  quantize("sq",
           {"--method", "smoothquant", "--calib", (shared / "data" / "stories-calib.txt").string(),
            "--nsamples", "4", "--seqlen", "64", "--alpha", "auto", "-q"});
  for (const char* name : {"w8a8", "sq"}) {
    const Checkpoint ck = Checkpoint::Open(dir / name);
    EXPECT_TRUE(QuantizesActivations(ck)) << name;
    EXPECT_EQ((*ck.config())["quantization_config"]["activations"], Int8TokenActivations());
  }
  EXPECT_FALSE(QuantizesActivations(Checkpoint::Open(dir / "w8")));
  EXPECT_NE(EvalPerplexity(dir / "w8"), EvalPerplexity(dir / "w8a8"));
}

}  // namespace
}  // namespace qtool::solvers
