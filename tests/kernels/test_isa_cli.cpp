// The CLI's output does not depend on the instruction set: `qtool quantize` writes the same bytes
// under every QTOOL_ISA this CPU supports, for the integer, NF4, FP8/FP4 and MX formats, and
// `qtool --version` reports the chosen paths.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>

#include "qtool/kernels.hpp"
#include "test_support.hpp"

namespace qtool::kernels {
namespace {

namespace fs = std::filesystem;
using qtool::testing::ReadFile;
using qtool::testing::RunCli;
using qtool::testing::ScratchDir;

// Sets QTOOL_ISA for the CLI runs of one scope.
class ScopedIsaEnv {
 public:
  explicit ScopedIsaEnv(const char* isa) { setenv("QTOOL_ISA", isa, 1); }
  ~ScopedIsaEnv() { unsetenv("QTOOL_ISA"); }
};

std::map<std::string, std::string> ReadTree(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = ReadFile(e.path());
  }
  return files;
}

TEST(KernelCli, QuantizeOutputIsIdenticalOnEveryIsa) {
  QTOOL_REQUIRE_SHARED();
  const auto models = qtool::testing::SharedModels();
  ASSERT_FALSE(models.empty());
  const std::vector<std::vector<std::string>> formats = {
      {"--bits", "4", "--group", "32", "--asym"},
      {"--bits", "8", "--granularity", "channel"},
      {"--bits", "3", "--group", "64"},
      {"--format", "nf4"},
      {"--format", "nf4", "--double-quant", "--block", "96"},
      {"--format", "fp8-e4m3"},
      {"--format", "fp8-e5m2", "--no-saturate", "--block", "16x32"},
      {"--format", "fp4"},
      {"--format", "mxfp4"},
      {"--format", "mxfp6-e3m2"},
      {"--format", "mxfp8-e4m3", "--block", "48"}};
  ScratchDir tmp;
  // The models come in F32 and BF16 (the BF16 ones exercise the conversion kernels).
  for (size_t m = 0; m < models.size(); ++m) {
    for (size_t f = 0; f < formats.size(); ++f) {
      std::map<std::string, std::string> first;
      for (const Isa isa : SupportedIsas()) {
        ScopedIsaEnv env(IsaName(isa));
        const fs::path out = tmp / fmt::format("m{}f{}{}", m, f, IsaName(isa));
        std::vector<std::string> args = {"quantize", models[m].string(), "-o", out.string(),
                                         "-q",       "--threads",        "2"};
        args.insert(args.end(), formats[f].begin(), formats[f].end());
        const auto r = RunCli(args);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        const auto files = ReadTree(out);
        ASSERT_FALSE(files.empty());
        if (first.empty()) {
          first = files;
        } else {
          EXPECT_TRUE(files == first)
              << models[m] << " format " << f << ": output differs under " << IsaName(isa);
        }
      }
    }
  }
}

TEST(KernelCli, VersionListsFeaturesAndPaths) {
  const auto r = RunCli({"--version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("cpu features:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("gemm_w8a8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(IsaName(SupportedIsas().back())), std::string::npos) << r.out;
  // One line per operation with the family that runs it.
  for (const auto& [op, isa] : KernelPaths()) {
    EXPECT_NE(r.out.find(fmt::format("\n  {:<22} {}", op, IsaName(isa))), std::string::npos)
        << op << " on " << IsaName(isa) << "\n"
        << r.out;
  }
}

TEST(KernelCli, UnsupportedIsaIsRefused) {
  const auto supported = SupportedIsas();
  for (const Isa isa : {Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (std::find(supported.begin(), supported.end(), isa) != supported.end()) continue;
    ScopedIsaEnv env(IsaName(isa));
    const auto r = RunCli({"--version"});
    EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
    EXPECT_NE(r.err.find("not supported"), std::string::npos) << r.err;
  }
  ScopedIsaEnv env("sse9");
  const auto r = RunCli({"--version"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("unknown instruction set"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace qtool::kernels
