// Golden output test: `qtool quantize` of the shared models in every format, observer and method
// must write exactly the files (SHA-256 of each) recorded in tests/golden/golden_hashes.json.
// Formats, observers and RTN are exact on every instruction set, so their hashes are "portable";
// calibrated methods run the float GEMMs of the model runtime and the solvers, whose summation
// order depends on the kernel family, so their hashes are kept per family (the family
// `qtool --version` reports under the current QTOOL_ISA). A family with no recorded hashes skips
// those cases and says so. Re-record with tests/golden/record.sh after an intended change.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "golden/sha256.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct GoldenCase {
  std::string model;  // folder under ../shared/models
  std::vector<std::string> args;
  bool calibrated;  // runs the float GEMMs: hashes per kernel family
  std::string name;
};

void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.name; }

// Short names of the models used: stories260K in f32, babyllama-tok105 in bf16 (the stored-bf16
// paths) and in f32.
const std::map<std::string, std::string>& ModelTags() {
  static const std::map<std::string, std::string> tags = {{"stories260K/hf", "s260k"},
                                                          {"babyllama-tok105/hf-bf16", "baby_bf16"},
                                                          {"babyllama-tok105/hf", "baby"}};
  return tags;
}

std::string CaseName(const std::string& model, const std::vector<std::string>& args) {
  std::string name = ModelTags().at(model);
  for (const std::string& a : args) {
    if (a == "--calib") break;  // the calibration options are the same for every case
    name += '_';
    for (const char c : a) {
      if (std::isalnum(static_cast<unsigned char>(c))) name += c;
    }
  }
  return name;
}

std::vector<GoldenCase> Cases() {
  std::vector<GoldenCase> cases;
  const auto add = [&](const std::string& model, std::vector<std::string> args, bool calibrated) {
    const std::string name = CaseName(model, args);
    cases.push_back({model, std::move(args), calibrated, name});
  };
  // Formats and observers (RTN) on an f32 and a bf16 checkpoint.
  for (const std::string model : {"stories260K/hf", "babyllama-tok105/hf-bf16"}) {
    for (int bits = 2; bits <= 8; ++bits) {
      const std::string f = "int" + std::to_string(bits);
      add(model, {"--format", f, "--group", "32"}, false);
      add(model, {"--format", f, "--group", "32", "--asym"}, false);
    }
    add(model, {"--format", "int", "--bits", "5", "--group", "48"}, false);
    add(model, {"--format", "int4"}, false);
    add(model, {"--format", "int3", "--group", "48", "--asym"}, false);
    for (const std::string g : {"channel", "tensor"}) {
      add(model, {"--format", "int4", "--granularity", g}, false);
      add(model, {"--format", "int4", "--granularity", g, "--asym"}, false);
      add(model, {"--format", "int8", "--granularity", g}, false);
    }
    add(model, {"--format", "int4", "--group", "48", "--flat-groups"}, false);
    add(model, {"--format", "int4", "--group", "48", "--flat-groups", "--asym"}, false);
    add(model, {"--format", "ternary"}, false);
    add(model, {"--format", "ternary", "--granularity", "channel"}, false);
    add(model, {"--format", "ternary", "--granularity", "group", "--group", "32"}, false);
    add(model, {"--format", "nf4"}, false);
    add(model, {"--format", "nf4", "--block", "32"}, false);
    add(model, {"--format", "nf4", "--double-quant"}, false);
    add(model, {"--format", "nf4", "--block", "128", "--double-quant"}, false);
    add(model, {"--format", "fp4"}, false);
    add(model, {"--format", "fp4", "--block", "16"}, false);
    add(model, {"--format", "fp4", "--block", "4x16"}, false);
    for (const std::string f : {"fp8-e4m3", "fp8-e5m2"}) {
      add(model, {"--format", f}, false);
      add(model, {"--format", f, "--granularity", "tensor"}, false);
      add(model, {"--format", f, "--granularity", "group", "--group", "32"}, false);
      add(model, {"--format", f, "--block", "48"}, false);
      add(model, {"--format", f, "--block", "16x32"}, false);
      add(model, {"--format", f, "--no-saturate"}, false);
    }
    for (const std::string f :
         {"mxfp4", "mxfp6-e2m3", "mxfp6-e3m2", "mxfp8-e4m3", "mxfp8-e5m2", "mxint8"}) {
      add(model, {"--format", f}, false);
    }
    add(model, {"--format", "mxfp4", "--block", "16"}, false);
    for (const std::string o : {"percentile:99", "mse", "mse:2.4", "kl"}) {
      add(model, {"--format", "int4", "--group", "32", "--observer", o}, false);
      add(model, {"--format", "int3", "--group", "32", "--asym", "--observer", o}, false);
      add(model, {"--format", "int4", "--granularity", "tensor", "--observer", o}, false);
    }
    add(model, {"--format", "int8", "--granularity", "channel", "--activations", "int8"}, false);
    add(model, {"--format", "int4", "--group", "32", "--method", "rtn"}, false);
    add(model, {"--format", "int4", "--group", "32", "--max-shard-size", "100KB"}, false);
  }
  // Methods: short calibration (4 samples of 64 tokens).
  const std::vector<std::string> calib = {"--calib", "CALIB", "--nsamples", "4", "--seqlen", "64"};
  const auto method = [&](const std::string& model, std::vector<std::string> args,
                          bool calibrated) {
    if (calibrated) args.insert(args.end(), calib.begin(), calib.end());
    add(model, std::move(args), calibrated);
  };
  for (const std::string model : {"stories260K/hf", "babyllama-tok105/hf"}) {
    method(model, {"--method", "gptq", "--format", "int4", "--group", "32"}, true);
    method(model, {"--method", "gptq", "--format", "int3", "--group", "32", "--asym"}, true);
    method(model, {"--method", "gptq", "--format", "int4", "--group", "32", "--act-order"}, true);
    method(
        model,
        {"--method", "gptq", "--format", "int4", "--group", "32", "--act-order", "--static-groups"},
        true);
    method(model, {"--method", "gptq", "--format", "int4", "--group", "32", "--mse"}, true);
    method(model, {"--method", "gptq", "--format", "int8", "--granularity", "channel"}, true);
    method(model, {"--method", "awq", "--format", "int4", "--group", "32"}, true);
    method(model, {"--method", "awq", "--format", "int3", "--group", "32", "--asym"}, true);
    method(model, {"--method", "smoothquant"}, true);
    method(model, {"--method", "smoothquant", "--alpha", "auto"}, true);
    method(model, {"--method", "hqq", "--format", "int4", "--group", "32"}, false);
    method(model, {"--method", "hqq", "--format", "int3", "--group", "64"}, false);
    method(model,
           {"--method", "gptq", "--format", "int8", "--granularity", "channel", "--activations",
            "int8"},
           true);
  }
  return cases;
}

fs::path HashFile() {
  return fs::path(QTOOL_SOURCE_DIR) / "tests" / "golden" / "golden_hashes.json";
}

// The kernel family the CLI runs under the current environment: the first word of
// `qtool --version`'s "kernels: NAME [(forced by QTOOL_ISA)]" line.
const std::string& Family() {
  static const std::string family = [] {
    const testing::CliResult r = testing::RunCli({"--version"});
    const std::string key = "\nkernels: ";
    const size_t at = r.out.find(key);
    if (r.exit_code != 0 || at == std::string::npos) return std::string();
    const size_t begin = at + key.size();
    return r.out.substr(begin, r.out.find_first_of(" \n", begin) - begin);
  }();
  return family;
}

// SHA-256 of every regular file under dir, by path relative to it.
json HashTree(const fs::path& dir) {
  json out = json::object();
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    out[fs::relative(e.path(), dir).generic_string()] =
        testing::Sha256Hex(testing::ReadFile(e.path()));
  }
  return out;
}

class GoldenOutput : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenOutput, SameBytes) {
  QTOOL_REQUIRE_SHARED();
  const GoldenCase& c = GetParam();
  const fs::path shared = *testing::SharedDir();
  const fs::path model = shared / "models" / c.model;
  if (!fs::exists(model / "model.safetensors")) {
    GTEST_SKIP() << model << " is absent from ../shared";
  }
  ASSERT_FALSE(Family().empty()) << "qtool --version names no kernel family";
  const std::string section = c.calibrated ? Family() : "portable";
  const bool record = std::getenv("QTOOL_GOLDEN_RECORD") != nullptr;

  testing::ScratchDir dir;
  std::vector<std::string> args = {
      "quantize", model.string(), "-o", (dir / "q").string(), "--threads", "2", "-q"};
  for (const std::string& a : c.args) {
    args.push_back(a == "CALIB" ? (shared / "data" / "stories-calib.txt").string() : a);
  }
  const testing::CliResult r = testing::RunCli(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json actual = HashTree(dir / "q");

  json golden =
      fs::exists(HashFile()) ? json::parse(testing::ReadFile(HashFile())) : json::object();
  const json* expected = nullptr;
  if (golden.contains(section) && golden[section].contains(c.name)) {
    expected = &golden[section][c.name];
  }
  if (record) {
    // A portable case already recorded under another family must come out the same here.
    if (expected != nullptr) {
      EXPECT_EQ(*expected, actual) << c.name << " differs between kernel families";
      return;
    }
    golden[section][c.name] = actual;
    std::ofstream(HashFile()) << golden.dump(1) << '\n';
    return;
  }
  if (expected == nullptr) {
    if (!c.calibrated) FAIL() << "no golden hashes for " << c.name << " in " << HashFile();
    GTEST_SKIP() << "no golden hashes for kernel family " << Family() << " (" << c.name
                 << "): record them on such a machine with tests/golden/record.sh";
  }
  EXPECT_EQ(*expected, actual) << c.name << " (" << section << "): qtool quantize "
                               << fmt::format("{}", fmt::join(c.args, " "));
}

INSTANTIATE_TEST_SUITE_P(Quantize, GoldenOutput, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace qtool
