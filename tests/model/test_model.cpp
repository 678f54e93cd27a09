// The runtime against the reference numbers of ../shared/models (computed by Hugging Face
// transformers in float32): logits, perplexities and greedy text.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "qtool/core/error.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/eval.hpp"
#include "qtool/model/model.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using testing::SharedDir;
using testing::SharedModels;

// "stories260K/hf": the key of a model directory in reference-numbers.json.
std::string RefKey(const fs::path& model) {
  return model.parent_path().filename().string() + "/" + model.filename().string();
}

nlohmann::json Reference(const fs::path& model) {
  std::ifstream f(*SharedDir() / "models" / "reference-numbers.json");
  return nlohmann::json::parse(f).at(RefKey(model));
}

std::vector<int32_t> EncodeShared(const fs::path& model, const char* text) {
  return EncodeTextFile(LoadModelTokenizer(model), *SharedDir() / "data" / text);
}

TEST(ModelReference, LogitsMatchTransformers) {
  QTOOL_REQUIRE_SHARED();
  ASSERT_FALSE(SharedModels().empty());
  for (const fs::path& dir : SharedModels()) {
    SCOPED_TRACE(dir.string());
    const Checkpoint ref = Checkpoint::Open(
        dir.parent_path() / "ref" / (dir.filename().string() + "-logits-eval64.safetensors"));
    const CheckpointTensor& t = ref.Get("tokens");
    ASSERT_EQ(t.info->dtype, DType::kI32);
    std::vector<int32_t> tokens(static_cast<size_t>(t.info->numel()));
    std::memcpy(tokens.data(), t.data().data(), tokens.size() * sizeof(int32_t));
    const std::vector<float> want = ReadTensorF32(ref, "logits");
    const Model model(dir);
    const RowMatrixXf got = model.Logits(tokens);
    ASSERT_EQ(got.size(), static_cast<Eigen::Index>(want.size()));
    const float max_diff =
        (got - Eigen::Map<const RowMatrixXf>(want.data(), got.rows(), got.cols()))
            .cwiseAbs()
            .maxCoeff();
    std::printf("%s: max |logit diff| %.3g\n", RefKey(dir).c_str(), max_diff);
    EXPECT_LE(max_diff, 1e-4);
  }
}

TEST(ModelReference, PerplexityMatchesTransformers) {
  QTOOL_REQUIRE_SHARED();
  for (const fs::path& dir : SharedModels()) {
    SCOPED_TRACE(dir.string());
    const nlohmann::json ref = Reference(dir);
    const Model model(dir);
    for (const auto& [text, key] :
         {std::pair{"stories-eval.txt", "eval"}, std::pair{"stories-calib.txt", "calib"}}) {
      const EvalReport r = Evaluate(model, EncodeShared(dir, text), {});
      const double want = ref.at(std::string("ppl_") + key).get<double>();
      std::printf("%s %s: ppl %.7f reference %.7f\n", RefKey(dir).c_str(), key, r.ppl, want);
      EXPECT_EQ(r.tokens, ref.at(std::string("ntok_") + key).get<int64_t>());
      EXPECT_NEAR(r.ppl / want, 1.0, 1e-4);
    }
  }
}

TEST(ModelReference, PerplexityDoesNotDependOnBatching) {
  QTOOL_REQUIRE_SHARED();
  const fs::path dir = SharedModels().front();
  const Model model(dir, {.threads = 2});
  const std::vector<int32_t> ids = EncodeShared(dir, "stories-eval.txt");
  const EvalReport one = Evaluate(model, ids, {.ctx = 100, .batch_tokens = 1});
  const EvalReport all = Evaluate(model, ids, {.ctx = 100, .batch_tokens = 1 << 20});
  EXPECT_EQ(one.windows, all.windows);
  EXPECT_NEAR(one.ppl, all.ppl, 1e-6 * all.ppl);
}

TEST(ModelReference, GreedyTextMatchesTransformers) {
  QTOOL_REQUIRE_SHARED();
  for (const fs::path& dir : SharedModels()) {
    SCOPED_TRACE(dir.string());
    const Model model(dir);
    const std::vector<int32_t> out = GenerateGreedy(model, {model.config().bos_token_id}, 80);
    EXPECT_EQ(LoadModelTokenizer(dir).Decode(out), Reference(dir).at("greedy").get<std::string>());
  }
}

TEST(ModelReference, CachedDecodingEqualsFullRecomputation) {
  QTOOL_REQUIRE_SHARED();
  for (const fs::path& dir : SharedModels()) {
    SCOPED_TRACE(dir.string());
    const Model model(dir);
    const std::vector<int32_t> prompt = {1, 3, 17, 40, 12};
    std::vector<int32_t> seq = prompt, naive;
    for (int i = 0; i < 24; ++i) {
      const RowMatrixXf logits = model.Logits(seq);
      Eigen::Index next = 0;
      logits.row(logits.rows() - 1).maxCoeff(&next);
      naive.push_back(static_cast<int32_t>(next));
      seq.push_back(static_cast<int32_t>(next));
    }
    EXPECT_EQ(GenerateGreedy(model, prompt, 24), naive);
  }
}

TEST(ModelReference, StreamedWeightsGiveTheSameLogits) {
  QTOOL_REQUIRE_SHARED();
  const fs::path dir = SharedModels().front();
  const std::vector<int32_t> tokens = {1, 5, 9, 30, 2, 7, 7, 11};
  const RowMatrixXf cached = Model(dir).Logits(tokens);
  const RowMatrixXf streamed = Model(dir, {.threads = 1, .weight_cache_bytes = 0}).Logits(tokens);
  EXPECT_EQ((cached - streamed).cwiseAbs().maxCoeff(), 0.0f);
}

TEST(ModelConfig, RefusesUnknownArchitectureByName) {
  nlohmann::json j = {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}};
  try {
    LlamaConfig::FromJson(j);
    FAIL() << "accepted an unsupported architecture";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("GPT2LMHeadModel"), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, ReadsLlama3AndQwen2Fields) {
  const nlohmann::json llama3 = {{"architectures", {"LlamaForCausalLM"}},
                                 {"hidden_size", 64},
                                 {"intermediate_size", 128},
                                 {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4},
                                 {"num_key_value_heads", 2},
                                 {"head_dim", 32},
                                 {"vocab_size", 100},
                                 {"max_position_embeddings", 256},
                                 {"rope_theta", 500000.0},
                                 {"eos_token_id", {128001, 128009}},
                                 {"rope_scaling",
                                  {{"rope_type", "llama3"},
                                   {"factor", 8.0},
                                   {"low_freq_factor", 1.0},
                                   {"high_freq_factor", 4.0},
                                   {"original_max_position_embeddings", 8192}}}};
  const LlamaConfig c = LlamaConfig::FromJson(llama3);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c.eos_token_id, 128001);
  nlohmann::json qwen = llama3;
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen.erase("rope_scaling");
  EXPECT_EQ(LlamaConfig::FromJson(qwen).model_type, "qwen2");
}

TEST(TokenIds, ReadsTextAndBinary) {
  testing::ScratchDir tmp;
  testing::WriteFile(tmp / "ids.txt", "1 2\n300\n-4\n");
  EXPECT_EQ(ReadTokenIds(tmp / "ids.txt"), (std::vector<int32_t>{1, 2, 300, -4}));
  const int32_t raw[] = {1, 2, 300, 70000};
  testing::WriteFile(tmp / "ids.bin", std::string(reinterpret_cast<const char*>(raw), sizeof(raw)));
  EXPECT_EQ(ReadTokenIds(tmp / "ids.bin"), (std::vector<int32_t>{1, 2, 300, 70000}));
  testing::WriteFile(tmp / "bad.bin", std::string("\x01\x02\x03", 3));
  EXPECT_THROW(ReadTokenIds(tmp / "bad.bin"), FormatError);
}

}  // namespace
}  // namespace qtool
