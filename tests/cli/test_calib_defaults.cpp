// Defaults of the calibrated methods that depend on the model: without --seqlen a calibration
// sample is 512 tokens, or the model's whole context when that is shorter.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;

// Output of `qtool quantize MODEL --method gptq` with a short calibration and `extra` options.
std::string GptqOutput(const fs::path& model, const std::vector<std::string>& extra,
                       const testing::ScratchDir& dir, const std::string& name) {
  std::vector<std::string> args = {"quantize",
                                   model.string(),
                                   "-o",
                                   (dir / name).string(),
                                   "-q",
                                   "--method",
                                   "gptq",
                                   "--calib",
                                   (*testing::SharedDir() / "data" / "stories-calib.txt").string(),
                                   "--nsamples",
                                   "2",
                                   "--group",
                                   "32"};
  args.insert(args.end(), extra.begin(), extra.end());
  const testing::CliResult r = testing::RunCli(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? testing::ReadFile(dir / name / "model.safetensors") : std::string();
}

TEST(CalibDefaults, SeqlenIsTheSmallerOf512AndTheContext) {
  QTOOL_REQUIRE_SHARED();
  const fs::path models = *testing::SharedDir() / "models";
  // babyllama-tok105 has a context of 256 tokens, stories260K one of 512.
  for (const auto& [model, context] :
       {std::pair<std::string, std::string>{"babyllama-tok105/hf", "256"},
        {"stories260K/hf", "512"}}) {
    SCOPED_TRACE(model);
    testing::ScratchDir dir;
    const std::string by_default = GptqOutput(models / model, {}, dir, "default");
    ASSERT_FALSE(by_default.empty());
    EXPECT_EQ(by_default, GptqOutput(models / model, {"--seqlen", context}, dir, "context"));
    // A shorter sample gives other weights, so the comparison above can tell the two apart.
    EXPECT_NE(by_default, GptqOutput(models / model, {"--seqlen", "64"}, dir, "short"));
  }
  testing::ScratchDir dir;
  const testing::CliResult too_long = testing::RunCli(
      {"quantize", (models / "babyllama-tok105" / "hf").string(), "-o", (dir / "x").string(),
       "--method", "gptq", "--calib",
       (*testing::SharedDir() / "data" / "stories-calib.txt").string(), "--seqlen", "512"});
  EXPECT_EQ(too_long.exit_code, 3) << too_long.err;
  const testing::CliResult too_short = testing::RunCli(
      {"quantize", (models / "babyllama-tok105" / "hf").string(), "-o", (dir / "y").string(),
       "--method", "gptq", "--calib",
       (*testing::SharedDir() / "data" / "stories-calib.txt").string(), "--seqlen", "1"});
  EXPECT_EQ(too_short.exit_code, 3) << too_short.err;
}

}  // namespace
}  // namespace qtool
