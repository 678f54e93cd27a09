// Replays the fuzzing corpora and every input that once crashed a parser (tests/fuzz/corpus*),
// through the functions the libFuzzer targets in tests/fuzz call: each input must parse or be
// refused with the qtool::Error its target allows.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/io/safetensors.hpp"
#include "qtool/model/model.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;

// Calls `parse` on every file of tests/fuzz/`corpus`; returns how many there were.
int Replay(const std::string& corpus,
           const std::function<void(const fs::path&, const std::string&)>& parse) {
  const fs::path dir = fs::path(QTOOL_SOURCE_DIR) / "tests/fuzz" / corpus;
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    SCOPED_TRACE(e.path().string());
    parse(e.path(), testing::ReadFile(e.path()));
    ++n;
  }
  return n;
}

TEST(FuzzCorpus, EveryInputParsesOrIsRefused) {
  const int n = Replay("corpus", [](const fs::path& path, const std::string& bytes) {
    try {
      ParseSafetensors(std::as_bytes(std::span(bytes.data(), bytes.size())), path.string());
    } catch (const FormatError&) {
    }
  });
  EXPECT_GE(n, 8) << "the safetensors corpus is missing";
}

TEST(FuzzCorpus, ConfigInputsParseOrAreRefused) {
  const int n = Replay("corpus_config", [](const fs::path& path, const std::string& bytes) {
    try {
      LlamaConfig::FromJson(ParseJsonBounded(bytes, path.string())).FlopsPerToken(0);
    } catch (const Error&) {
    }
  });
  EXPECT_GE(n, 8) << "the config.json corpus is missing";
}

TEST(FuzzCorpus, IndexInputsParseOrAreRefused) {
  const int n = Replay("corpus_index", [](const fs::path& path, const std::string& bytes) {
    try {
      for (const auto& [tensor, file] : ParseShardIndex(bytes, path.string())) {
        EXPECT_FALSE(fs::path(file).has_parent_path()) << file;
      }
    } catch (const FormatError&) {
    }
  });
  EXPECT_GE(n, 5) << "the index corpus is missing";
}

TEST(FuzzCorpus, QuantisationRecordInputsDecodeOrAreRefused) {
  const int n = Replay("corpus_quant_record", [](const fs::path& path, const std::string&) {
    try {
      const Checkpoint ck = Checkpoint::Open(path);
      QuantizesActivations(ck);
      for (const std::string& name : LogicalTensorNames(ck)) {
        LogicalShape(ck, name);
        ReadTensorF32(ck, name);
      }
    } catch (const Error&) {
    }
  });
  EXPECT_GE(n, 6) << "the quantisation record corpus is missing";
}

TEST(FuzzCorpus, TokenIdInputsParseOrAreRefused) {
  const int n = Replay("corpus_token_ids", [](const fs::path& path, const std::string&) {
    try {
      ReadTokenIds(path);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    }
  });
  EXPECT_GE(n, 5) << "the token-id corpus is missing";
}

}  // namespace
}  // namespace qtool
