// `qtool quantize --method ...` end to end: the output is readable by `qtool dequantize` and
// `qtool eval`, the JSON report carries the per-layer solver losses, and bad options are refused
// with the option error's exit code.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "qtool/core/error.hpp"
#include "test_support.hpp"

namespace qtool::solvers {
namespace {

namespace fs = std::filesystem;
using testing::RunCli;

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

  const testing::CliResult d =
      RunCli({"dequantize", (dir / "q").string(), "-o", (dir / "d").string()});
  EXPECT_EQ(d.exit_code, 0) << d.err;
  const testing::CliResult e =
      RunCli({"eval", (dir / "q").string(), "--text",
              (shared / "data" / "stories-eval.txt").string(), "--json", "-"});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  const double ppl = nlohmann::json::parse(e.out)["ppl"].get<double>();
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
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace qtool::solvers
