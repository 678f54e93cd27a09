// SmolLM2-135M-Instruct end to end: qtool's own tokenisation of stories-eval.txt, the tokens of
// transformers' reference logits, and the perplexity transformers gives (float32, context 512).
// The model is materialised by scripts/test.sh (../shared/models/smollm2-135m/materialize.py)
// and found through QTOOL_SMOLLM2_DIR.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "qtool/io/safetensors.hpp"
#include "qtool/model/eval.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;

// transformers 5.25, float32, eager attention (../shared/models/smollm2-135m/README.md).
constexpr double kReferencePpl = 9.464076;

std::optional<fs::path> SmolLm2Dir() {
  const char* env = std::getenv("QTOOL_SMOLLM2_DIR");
  if (env == nullptr || *env == '\0' || !fs::exists(fs::path(env) / "model.safetensors")) {
    return std::nullopt;
  }
  return fs::path(env);
}

#define QTOOL_REQUIRE_SMOLLM2()                                                            \
  QTOOL_REQUIRE_SHARED();                                                                  \
  if (!SmolLm2Dir()) {                                                                     \
    GTEST_SKIP() << "QTOOL_SMOLLM2_DIR is unset or has no model.safetensors: materialise " \
                    "SmolLM2 with ../shared/models/smollm2-135m/materialize.py DIR";       \
  }

TEST(SmolLm2, TokensMatchTheReferenceLogitsFile) {
  QTOOL_REQUIRE_SHARED();
  const fs::path model = *testing::SharedDir() / "models" / "smollm2-135m";
  const SafetensorsFile ref(model / "ref" / "smollm2-hf-f32-logits64.safetensors");
  const TensorInfo* t = ref.Find("tokens");
  ASSERT_NE(t, nullptr);
  std::vector<int32_t> want(t->nbytes() / 4);
  std::memcpy(want.data(), ref.Data(*t).data(), t->nbytes());
  const std::vector<int32_t> ids = EncodeTextFile(
      LoadModelTokenizer(model), *testing::SharedDir() / "data" / "stories-eval.txt");
  std::vector<int32_t> got = {1};  // BOS, then the text's first 63 tokens
  got.insert(got.end(), ids.begin(), ids.begin() + 63);
  EXPECT_EQ(got, want);
}

TEST(SmolLm2, PerplexityMatchesTransformersInBothConfigStyles) {
  QTOOL_REQUIRE_SMOLLM2();
  const fs::path dir = *SmolLm2Dir();
  const std::vector<int32_t> ids =
      EncodeTextFile(LoadModelTokenizer(dir), *testing::SharedDir() / "data" / "stories-eval.txt");
  const EvalReport r = Evaluate(Model(dir), ids, {.ctx = 512});
  EXPECT_EQ(r.tokens, 404);
  EXPECT_NEAR(r.ppl, kReferencePpl, 1e-4 * kReferencePpl);

  // config.json as transformers 5 writes it: the RoPE base only inside rope_parameters. The
  // other files are hard links (copies across file systems): a symlink leading out of the model
  // directory is refused.
  testing::ScratchDir copy;
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    std::error_code ec;
    fs::create_hard_link(dir / f, copy / f, ec);
    if (ec) fs::copy_file(dir / f, copy / f);
  }
  std::ifstream in(dir / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config.erase("rope_theta");
  ASSERT_EQ(config["rope_parameters"]["rope_theta"], 100000.0);
  testing::WriteFile(copy / "config.json", config.dump(2));
  const EvalReport v5 = Evaluate(Model(copy.path()), ids, {.ctx = 512});
  EXPECT_NEAR(v5.ppl, kReferencePpl, 1e-4 * kReferencePpl);
}

}  // namespace
}  // namespace qtool
