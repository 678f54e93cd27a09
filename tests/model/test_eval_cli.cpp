// The quantiser, the checkpoint format and the runtime tied to an independent implementation:
// `qtool quantize` with the reference RTN definition, then `qtool eval`, must reproduce the
// reference perplexities; KL against the original model must order the bit widths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "qtool/io/checkpoint.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/eval.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using testing::RunCli;
using testing::SharedDir;
using testing::SharedModels;

// The reference quantised each tensor flattened row-major in groups of G, so a group may span two
// rows when G does not divide the row length (stories260K's MLP rows have 172 elements):
// --flat-groups is that definition.
struct RtnCase {
  const char* key;  // suffix of ppl_eval_rtn_* in reference-numbers.json
  std::vector<std::string> args;
};

const std::vector<RtnCase>& RtnCases() {
  static const std::vector<RtnCase> cases = {
      {"int8_g0", {"--bits", "8", "--granularity", "channel"}},
      {"int4_g0", {"--bits", "4", "--granularity", "channel"}},
      {"int4_g32", {"--bits", "4", "--group", "32", "--flat-groups"}},
      {"int4_g16", {"--bits", "4", "--group", "16", "--flat-groups"}},
      {"int3_g32", {"--bits", "3", "--group", "32", "--flat-groups"}},
  };
  return cases;
}

nlohmann::json RunEval(std::vector<std::string> args) {
  args.insert(args.begin(), "eval");
  args.insert(args.end(),
              {"--text", (*SharedDir() / "data" / "stories-eval.txt").string(), "--json", "-"});
  const testing::CliResult r = RunCli(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json::object();
}

fs::path Quantize(const fs::path& model, const RtnCase& c, const testing::ScratchDir& tmp) {
  const fs::path out = tmp / c.key;
  std::vector<std::string> args = {"quantize", model.string(), "-o", out.string(), "-q"};
  args.insert(args.end(), c.args.begin(), c.args.end());
  const testing::CliResult r = RunCli(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return out;
}

TEST(EvalCli, RtnPerplexitiesMatchReference) {
  QTOOL_REQUIRE_SHARED();
  std::ifstream f(*SharedDir() / "models" / "reference-numbers.json");
  const nlohmann::json ref = nlohmann::json::parse(f);
  for (const fs::path& dir : SharedModels()) {
    const std::string key = dir.parent_path().filename().string() + "/" + dir.filename().string();
    testing::ScratchDir tmp;
    for (const RtnCase& c : RtnCases()) {
      SCOPED_TRACE(key + " " + c.key);
      const double cli = RunEval({Quantize(dir, c, tmp).string()}).value("ppl", 0.0);
      const double want = ref.at(key).at(std::string("ppl_eval_rtn_") + c.key).get<double>();
      std::printf("%s rtn %s: qtool quantize + eval ppl %.6f, reference %.6f\n", key.c_str(), c.key,
                  cli, want);
      EXPECT_NEAR(cli / want, 1.0, 1e-3);
    }
  }
}

TEST(EvalCli, KlIsZeroAgainstItselfAndRisesAsBitsFall) {
  QTOOL_REQUIRE_SHARED();
  for (const fs::path& dir : SharedModels()) {
    SCOPED_TRACE(dir.string());
    const nlohmann::json self = RunEval({dir.string(), "--ref", dir.string()});
    EXPECT_EQ(self.value("kl_mean", -1.0), 0.0);
    EXPECT_EQ(self.value("kl_p99", -1.0), 0.0);
    EXPECT_EQ(self.value("top1_agreement", 0.0), 1.0);
    EXPECT_EQ(self.value("delta_ppl", -1.0), 0.0);
    testing::ScratchDir tmp;
    double previous = 0;
    for (const char* key : {"int8_g0", "int4_g32", "int3_g32"}) {
      const auto& c = *std::find_if(RtnCases().begin(), RtnCases().end(),
                                    [&](const RtnCase& x) { return std::string(x.key) == key; });
      const nlohmann::json r = RunEval({Quantize(dir, c, tmp).string(), "--ref", dir.string()});
      const double kl = r.value("kl_mean", 0.0);
      std::printf("%s %s: KL mean %.3g median %.3g p99 %.3g top-1 %.4f dPPL %+.4f\n",
                  dir.string().c_str(), key, kl, r.value("kl_median", 0.0), r.value("kl_p99", 0.0),
                  r.value("top1_agreement", 0.0), r.value("delta_ppl", 0.0));
      EXPECT_GT(kl, previous) << key;
      EXPECT_NEAR(r.value("base_ppl", 0.0), self.value("ppl", -1.0), 1e-9);
      previous = kl;
    }
  }
}

TEST(EvalCli, GenerateAndErrors) {
  QTOOL_REQUIRE_SHARED();
  const fs::path dir = SharedModels().front();
  const testing::CliResult g =
      RunCli({"generate", dir.string(), "--prompt", "Once upon a time", "-n", "8"});
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(g.out.rfind("Once upon a time", 0), 0u) << g.out;
  EXPECT_GT(g.out.size(), std::string("Once upon a time\n").size());
  const testing::CliResult no_input = RunCli({"eval", dir.string()});
  EXPECT_EQ(no_input.exit_code, 3) << no_input.err;
  testing::ScratchDir tmp;
  // Token ids of the eval text in a file give the same perplexity as the text itself.
  std::string ids;
  for (const int32_t t :
       EncodeTextFile(LoadModelTokenizer(dir), *SharedDir() / "data" / "stories-eval.txt")) {
    ids += std::to_string(t) + "\n";
  }
  testing::WriteFile(tmp / "eval-ids.txt", ids);
  const testing::CliResult by_ids =
      RunCli({"eval", dir.string(), "--tokens", (tmp / "eval-ids.txt").string(), "--json", "-"});
  ASSERT_EQ(by_ids.exit_code, 0) << by_ids.err;
  EXPECT_EQ(nlohmann::json::parse(by_ids.out).at("ppl"), RunEval({dir.string()}).at("ppl"));
  testing::WriteFile(tmp / "ids.txt", "1\n2\n999999\n");
  const testing::CliResult bad_id =
      RunCli({"eval", dir.string(), "--tokens", (tmp / "ids.txt").string()});
  EXPECT_EQ(bad_id.exit_code, 4) << bad_id.err;
  EXPECT_NE(bad_id.err.find("999999"), std::string::npos) << bad_id.err;
  EXPECT_NE(bad_id.err.find("ids.txt"), std::string::npos) << bad_id.err;
}

}  // namespace
}  // namespace qtool
