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

struct RtnCase {
  const char* key;  // suffix of ppl_eval_rtn_* in reference-numbers.json
  int bits;
  int64_t group;  // 0: one scale per row
  std::vector<std::string> args;
};

const std::vector<RtnCase>& RtnCases() {
  static const std::vector<RtnCase> cases = {
      {"int8_g0", 8, 0, {"--bits", "8", "--granularity", "channel"}},
      {"int4_g0", 4, 0, {"--bits", "4", "--granularity", "channel"}},
      {"int4_g32", 4, 32, {"--bits", "4", "--group", "32"}},
      {"int4_g16", 4, 16, {"--bits", "4", "--group", "16"}},
      {"int3_g32", 3, 32, {"--bits", "3", "--group", "32"}},
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

// Round-to-nearest fake quantisation of every block projection, written as a float checkpoint.
// The reference cut each tensor, flattened row-major, into groups of G (`flat`: a group may span
// two rows when G does not divide the row length); qtool's codec keeps groups inside a row and
// ends a row in a shorter group. The two agree whenever G divides every row length.
fs::path FakeQuantize(const fs::path& model, int bits, int64_t group, bool flat,
                      const fs::path& out) {
  const Checkpoint ck = Checkpoint::Open(model);
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  const std::regex selected(R"(^model\.layers\..*proj\.weight$)");
  std::vector<TensorSpec> specs;
  std::vector<std::vector<float>> values;
  for (const CheckpointTensor& t : ck.tensors()) {
    std::vector<float> w = ReadTensorF32(ck, t.info->name);
    auto quantize = [&](float* p, int64_t n) {
      float m = 0;
      for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(p[i]));
      const float scale = m == 0 ? 1.0f : m / qmax;
      for (int64_t i = 0; i < n; ++i) {
        p[i] = std::clamp(std::nearbyint(p[i] / scale), -qmax - 1, qmax) * scale;
      }
    };
    if (std::regex_search(t.info->name, selected)) {
      const int64_t n = static_cast<int64_t>(w.size()), cols = t.info->shape[1];
      const int64_t len = flat ? n : cols;
      for (int64_t r0 = 0; r0 < n; r0 += len) {
        for (int64_t i = 0; i < len; i += group) quantize(&w[r0 + i], std::min(group, len - i));
      }
    }
    specs.push_back({t.info->name, DType::kF32, t.info->shape});
    values.push_back(std::move(w));
  }
  CheckpointWriter writer(out, specs, {});
  for (const auto& v : values) writer.Write(std::as_bytes(std::span(v)));
  for (const char* f : {"config.json", "tokenizer.model"}) writer.CopyFile(model / f, f);
  writer.Commit();
  return out;
}

bool GroupsDivideRows(const fs::path& model, int64_t group) {
  const Checkpoint ck = Checkpoint::Open(model);
  for (const CheckpointTensor& t : ck.tensors()) {
    if (t.info->shape.size() == 2 && t.info->name.find("proj.weight") != std::string::npos &&
        group > 0 && t.info->shape[1] % group != 0) {
      return false;
    }
  }
  return true;
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
      if (GroupsDivideRows(dir, c.group)) {
        EXPECT_NEAR(cli / want, 1.0, 1e-3);
        continue;
      }
      // Groups would cross rows: the reference number follows from the flattened grouping, the
      // CLI's from row-local groups; each is checked against its own definition.
      const Model flat(FakeQuantize(dir, c.bits, c.group, true, tmp / "flat"));
      const Model rows(FakeQuantize(dir, c.bits, c.group, false, tmp / "rows"));
      const std::vector<int32_t> ids =
          EncodeTextFile(LoadModelTokenizer(dir), *SharedDir() / "data" / "stories-eval.txt");
      const double flat_ppl = Evaluate(flat, ids, {}).ppl, rows_ppl = Evaluate(rows, ids, {}).ppl;
      std::printf("  row length not a multiple of %lld: flattened groups %.6f, row groups %.6f\n",
                  static_cast<long long>(c.group), flat_ppl, rows_ppl);
      EXPECT_NEAR(flat_ppl / want, 1.0, 1e-3);
      EXPECT_NEAR(cli / rows_ppl, 1.0, 1e-4);
      fs::remove_all(tmp / "flat");
      fs::remove_all(tmp / "rows");
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
  EXPECT_EQ(bad_id.exit_code, 3) << bad_id.err;
  EXPECT_NE(bad_id.err.find("999999"), std::string::npos) << bad_id.err;
}

}  // namespace
}  // namespace qtool
