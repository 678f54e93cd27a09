// Replays the fuzzing corpus and every input that once crashed the parser (tests/fuzz/corpus):
// each must parse or be refused with a FormatError.
#include <gtest/gtest.h>

#include <filesystem>

#include "qtool/core/error.hpp"
#include "qtool/io/safetensors.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

TEST(FuzzCorpus, EveryInputParsesOrIsRefused) {
  const std::filesystem::path dir = std::filesystem::path(QTOOL_SOURCE_DIR) / "tests/fuzz/corpus";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string bytes = testing::ReadFile(e.path());
    try {
      ParseSafetensors(std::as_bytes(std::span(bytes.data(), bytes.size())), e.path().string());
    } catch (const FormatError&) {
    }
    ++n;
  }
  EXPECT_GE(n, 8) << "the corpus in " << dir << " is missing";
}

}  // namespace
}  // namespace qtool
