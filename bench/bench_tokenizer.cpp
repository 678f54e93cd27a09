// Tokenisation speed of tokenizer.json's byte-level BPE (SmolLM2's tokenizer, GPT-2 style) on
// English text, one core. bench/tokenizer_speed.sh runs it beside Hugging Face tokenizers on the
// same text. The text: QTOOL_BENCH_TEXT, else the repository's README and docs.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "qtool/model/tokenizer.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string BenchText() {
  if (const char* env = std::getenv("QTOOL_BENCH_TEXT"); env != nullptr && *env != '\0') {
    return ReadAll(env);
  }
  const fs::path root = fs::path(__FILE__).parent_path() / "..";
  std::string text = ReadAll(root / "README.md");
  for (const auto& e : fs::directory_iterator(root / "docs")) {
    if (e.path().extension() == ".md") text += ReadAll(e.path());
  }
  return text;
}

void BM_TokenizeByteLevelBpe(benchmark::State& state) {
  const char* shared = std::getenv("QTOOL_SHARED_DIR");
  const fs::path path =
      (shared != nullptr ? fs::path(shared)
                         : fs::path(__FILE__).parent_path() / ".." / ".." / "shared") /
      "models" / "smollm2-135m" / "tokenizer.json";
  if (!fs::exists(path)) {
    state.SkipWithError(("SmolLM2's tokenizer.json absent: " + path.string()).c_str());
    return;
  }
  const Tokenizer tok = Tokenizer::Load(path);
  const std::string text = BenchText();
  size_t tokens = 0;
  for (auto _ : state) {
    const std::vector<int32_t> ids = tok.Encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["text_bytes"] = static_cast<double>(text.size());
  state.counters["tokens"] = static_cast<double>(tokens);
}
BENCHMARK(BM_TokenizeByteLevelBpe)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace qtool
