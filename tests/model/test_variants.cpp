// Qwen2 and Mistral configurations through the same code: a shared Llama checkpoint rewritten with
// zero q/k/v biases, or with a sliding window, must give the Llama logits where the difference
// cannot matter, and other logits where it must.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "qtool/io/checkpoint.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/model.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;

// Copies `model`'s tensors as F32 into `out` with `config` merged into its config.json, adding
// q/k/v biases of `bias` (when not NaN) to every block.
fs::path Rewrite(const fs::path& model, const fs::path& out, const nlohmann::json& config,
                 float bias) {
  const Checkpoint ck = Checkpoint::Open(model);
  std::vector<TensorSpec> specs;
  std::vector<std::vector<float>> values;
  for (const CheckpointTensor& t : ck.tensors()) {
    specs.push_back({t.info->name, DType::kF32, t.info->shape});
    values.push_back(ReadTensorF32(ck, t.info->name));
  }
  nlohmann::json cfg = *ck.config();
  cfg.merge_patch(config);
  if (!std::isnan(bias)) {
    const int64_t d = cfg["hidden_size"].get<int64_t>() / cfg["num_attention_heads"].get<int64_t>();
    for (int64_t i = 0; i < cfg["num_hidden_layers"].get<int64_t>(); ++i) {
      for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
        const int64_t heads = std::string(p) == "q_proj"
                                  ? cfg["num_attention_heads"].get<int64_t>()
                                  : cfg["num_key_value_heads"].get<int64_t>();
        const std::string name = "model.layers." + std::to_string(i) + ".self_attn." + p + ".bias";
        specs.push_back({name, DType::kF32, {heads * d}});
        values.emplace_back(static_cast<size_t>(heads * d), bias);
      }
    }
  }
  CheckpointWriter w(out, specs, {});
  for (const auto& v : values) w.Write(std::as_bytes(std::span(v)));
  w.WriteTextFile("config.json", cfg.dump(2));
  w.Commit();
  return out;
}

const std::vector<int32_t> kTokens = {1, 7, 3, 99, 42, 5, 17, 23, 8, 60, 11, 2, 9, 31, 4, 50};

TEST(ModelVariants, Qwen2BiasesAreApplied) {
  QTOOL_REQUIRE_SHARED();
  const fs::path dir = testing::SharedModels().front();
  testing::ScratchDir tmp;
  const nlohmann::json qwen = {{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}};
  const RowMatrixXf llama = Model(dir).Logits(kTokens);
  const RowMatrixXf zero = Model(Rewrite(dir, tmp / "zero", qwen, 0.0f)).Logits(kTokens);
  const RowMatrixXf some = Model(Rewrite(dir, tmp / "some", qwen, 0.25f)).Logits(kTokens);
  EXPECT_EQ(llama, zero);
  EXPECT_GT((llama - some).cwiseAbs().maxCoeff(), 1e-3);
}

TEST(ModelVariants, MistralSlidingWindowMasksDistantKeys) {
  QTOOL_REQUIRE_SHARED();
  const fs::path dir = testing::SharedModels().front();
  testing::ScratchDir tmp;
  const auto mistral = [](int window) {
    return nlohmann::json{{"architectures", {"MistralForCausalLM"}},
                          {"model_type", "mistral"},
                          {"sliding_window", window}};
  };
  const RowMatrixXf llama = Model(dir).Logits(kTokens);
  const RowMatrixXf wide = Model(Rewrite(dir, tmp / "wide", mistral(64), NAN)).Logits(kTokens);
  const RowMatrixXf narrow = Model(Rewrite(dir, tmp / "narrow", mistral(4), NAN)).Logits(kTokens);
  EXPECT_EQ(llama, wide);
  // Positions 0..3 see at most 4 keys either way; later ones lose the distant keys.
  EXPECT_EQ(llama.topRows(4), narrow.topRows(4));
  EXPECT_GT((llama.bottomRows(8) - narrow.bottomRows(8)).cwiseAbs().maxCoeff(), 1e-3);
}

}  // namespace
}  // namespace qtool
