// config.json reading: both RoPE styles, every key of the supported architectures' configs
// accounted for, unknown computation-changing keys refused, types and ranges checked.
#include <gtest/gtest.h>

#include <fstream>
#include <limits>
#include <string>

#include "qtool/core/error.hpp"
#include "qtool/model/model.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

using nlohmann::json;

json SmolLm2Config() {
  const auto shared = testing::SharedDir();
  std::ifstream f(*shared / "models" / "smollm2-135m" / "config.json");
  return json::parse(f);
}

// A small Qwen2 config in the form transformers 5 writes it.
json Qwen2Config() {
  return {{"architectures", {"Qwen2ForCausalLM"}},
          {"model_type", "qwen2"},
          {"attention_dropout", 0.0},
          {"bos_token_id", 151643},
          {"eos_token_id", 151645},
          {"hidden_act", "silu"},
          {"hidden_size", 896},
          {"initializer_range", 0.02},
          {"intermediate_size", 4864},
          {"layer_types", json::array({"full_attention", "full_attention"})},
          {"max_position_embeddings", 32768},
          {"max_window_layers", 24},
          {"num_attention_heads", 14},
          {"num_hidden_layers", 2},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-6},
          {"rope_parameters", {{"rope_theta", 1000000.0}, {"rope_type", "default"}}},
          {"sliding_window", nullptr},
          {"tie_word_embeddings", true},
          {"dtype", "bfloat16"},
          {"transformers_version", "5.0.0"},
          {"use_cache", true},
          {"use_sliding_window", false},
          {"vocab_size", 151936}};
}

json MistralConfig() {
  return {{"architectures", {"MistralForCausalLM"}},
          {"model_type", "mistral"},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"hidden_act", "silu"},
          {"hidden_size", 64},
          {"intermediate_size", 128},
          {"max_position_embeddings", 1024},
          {"num_attention_heads", 4},
          {"num_hidden_layers", 2},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"sliding_window", 256},
          {"tie_word_embeddings", false},
          {"torch_dtype", "bfloat16"},
          {"transformers_version", "4.44.0"},
          {"use_cache", true},
          {"vocab_size", 1000}};
}

// The error message of FromJson on `j`, which must throw E.
template <typename E>
std::string ErrorOf(const json& j) {
  SCOPED_TRACE(j.dump());
  return testing::ErrorOf<E>([&] { LlamaConfig::FromJson(j); });
}

TEST(ModelConfig, RopeParametersAloneGiveTheBase) {
  QTOOL_REQUIRE_SHARED();
  json j = SmolLm2Config();
  EXPECT_EQ(LlamaConfig::FromJson(j).rope_theta, 100000.0);
  j.erase("rope_theta");  // as transformers 5 writes it
  const LlamaConfig c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_TRUE(c.tie_word_embeddings);
  j["rope_theta"] = 10000.0;  // both styles, disagreeing
  EXPECT_NE(ErrorOf<FormatError>(j).find("rope_theta"), std::string::npos);
}

TEST(ModelConfig, RopeParametersCarryTheScaling) {
  QTOOL_REQUIRE_SHARED();
  json j = SmolLm2Config();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                          {"factor", 8.0},           {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  LlamaConfig c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  // Per layer type, identical sets: one table serves every layer.
  const json params = j["rope_parameters"];
  j["rope_parameters"] = {{"full_attention", params}, {"sliding_attention", params}};
  c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_FALSE(c.rope_local);
  // The sliding layers' set is read (a model without sliding layers never uses it).
  j["rope_parameters"]["sliding_attention"]["rope_theta"] = 10000.0;
  c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.rope_local_theta, 10000.0);
  EXPECT_FALSE(c.rope_local);
  // A layer type the runtime does not know.
  j["rope_parameters"]["chunked_attention"] = params;
  EXPECT_NE(ErrorOf<OptionError>(j).find("rope_parameters.chunked_attention"), std::string::npos);
  // YaRN is not implemented: refused, naming the key and the value.
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 4.0}};
  const std::string e = ErrorOf<OptionError>(j);
  EXPECT_NE(e.find("rope_parameters.rope_type"), std::string::npos) << e;
  EXPECT_NE(e.find("yarn"), std::string::npos) << e;
  // An unknown parameter inside a known type.
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"beta_fast", 32}};
  EXPECT_NE(ErrorOf<OptionError>(j).find("rope_parameters.beta_fast"), std::string::npos);
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"partial_rotary_factor", 0.5}};
  EXPECT_NE(ErrorOf<OptionError>(j).find("partial_rotary_factor"), std::string::npos);
  j["rope_parameters"]["partial_rotary_factor"] = 1.0;
  EXPECT_EQ(LlamaConfig::FromJson(j).rope_scaling.type, RopeScaling::Type::kLinear);
}

TEST(ModelConfig, OlderRopeScalingIsRead) {
  json j = MistralConfig();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const LlamaConfig c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.sliding_window, 256);
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 4.0}};
  EXPECT_NE(ErrorOf<OptionError>(j).find("rope_scaling.type"), std::string::npos);
}

// Every key of the supported architectures' configs is accepted as they are published, and each
// key that would change the computation, set to a value the runtime does not implement, is
// refused with an error naming it.
TEST(ModelConfig, EveryKeyOfTheSupportedConfigsIsAccountedFor) {
  std::vector<json> configs = {Qwen2Config(), MistralConfig()};
  if (const auto shared = testing::SharedDir()) {
    configs.push_back(SmolLm2Config());
    for (const auto& dir : testing::SharedModels()) {
      std::ifstream f(dir / "config.json");
      configs.push_back(json::parse(f));
    }
  }
  for (const json& j : configs) {
    SCOPED_TRACE(j.dump());
    EXPECT_NO_THROW(LlamaConfig::FromJson(j));
  }
  // Mutations: (key, value) pairs that change the computation in transformers and that the
  // runtime does not implement.
  const std::vector<std::pair<std::string, json>> refused = {
      {"hidden_act", "gelu_pytorch_tanh"},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"partial_rotary_factor", 0.5},
      {"attn_logit_softcapping", 50.0},
      {"final_logit_softcapping", 30.0},
      {"query_pre_attn_scalar", 256},
      {"use_qk_norm", true},
      {"num_local_experts", 8},
      {"num_experts_per_tok", 2},
      {"embedding_multiplier", 12.0},
      {"logits_scaling", 8.0},
      {"some_future_key", 1},
  };
  for (json j : configs) {
    for (const auto& [key, value] : refused) {
      json m = j;
      m[key] = value;
      const std::string e = ErrorOf<OptionError>(m);
      EXPECT_NE(e.find(key), std::string::npos) << e;
      EXPECT_NE(e.find("config.json"), std::string::npos) << e;
    }
    // Neutral values of keys of other architectures are accepted.
    json m = j;
    m["partial_rotary_factor"] = 1.0;
    m["use_qk_norm"] = false;
    m["attn_logit_softcapping"] = nullptr;
    EXPECT_NO_THROW(LlamaConfig::FromJson(m));
  }
  // Llama does not read the sliding-window keys; Mistral and Qwen2 do.
  json llama = configs.size() > 2 ? configs[2] : json();
  if (!llama.is_null()) {
    llama["sliding_window"] = 4096;
    EXPECT_NE(ErrorOf<OptionError>(llama).find("sliding_window"), std::string::npos);
  }
}

TEST(ModelConfig, Qwen2SlidingWindowFollowsLayerTypes) {
  json j = Qwen2Config();
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_window, 0);
  EXPECT_EQ(LlamaConfig::FromJson(j).rope_theta, 1000000.0);
  j["layer_types"] = {"sliding_attention", "sliding_attention"};
  j["sliding_window"] = 4096;
  // use_sliding_window false: transformers sets no window, and cannot run sliding layer types.
  EXPECT_NE(ErrorOf<OptionError>(j).find("use_sliding_window"), std::string::npos);
  j["use_sliding_window"] = true;
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_window, 4096);
  j["layer_types"] = {"full_attention", "sliding_attention"};
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_layers, std::vector<bool>({false, true}));
  j["layer_types"] = {"full_attention", "chunked_attention"};
  EXPECT_NE(ErrorOf<OptionError>(j).find("layer_types[1]"), std::string::npos);
  // Without layer_types: layers from max_window_layers on slide when use_sliding_window is set.
  j.erase("layer_types");
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 1;
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_layers, std::vector<bool>({false, true}));
  j["max_window_layers"] = 0;
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_window, 4096);
  j["max_window_layers"] = 2;
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_window, 0);
  // Absent keys take the config class's defaults: max_window_layers 28, sliding_window 4096.
  j.erase("max_window_layers");
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_window, 0);
  j["num_hidden_layers"] = 30;
  j.erase("sliding_window");
  std::vector<bool> from_28(30, false);
  from_28[28] = from_28[29] = true;
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_layers, from_28);
  EXPECT_EQ(LlamaConfig::FromJson(j).sliding_window, 4096);
  // use_sliding_window false leaves every layer full whatever the window keys say (Qwen3 too).
  j["use_sliding_window"] = false;
  j["sliding_window"] = 32;
  j["max_window_layers"] = 0;
  for (const char* type : {"qwen2", "qwen3"}) {
    j["model_type"] = type;
    j["architectures"] = {std::string(type == std::string("qwen2") ? "Qwen2" : "Qwen3") +
                          "ForCausalLM"};
    if (std::string(type) == "qwen3") j["head_dim"] = 64;
    EXPECT_EQ(LlamaConfig::FromJson(j).sliding_window, 0) << type;
    EXPECT_EQ(LlamaConfig::FromJson(j).sliding_layers, std::vector<bool>(30, false)) << type;
  }
}

TEST(ModelConfig, TypesAndRangesAreChecked) {
  const json base = MistralConfig();
  const std::vector<std::pair<std::string, json>> bad = {
      {"hidden_size", std::numeric_limits<int64_t>::min()},
      {"hidden_size", "576"},
      {"hidden_size", 576.5},
      {"hidden_size", int64_t{1} << 40},
      {"hidden_size", std::numeric_limits<uint64_t>::max()},
      {"num_attention_heads", -1},
      {"num_attention_heads", 0},
      {"num_key_value_heads", 8},  // more than the heads
      {"num_hidden_layers", int64_t{1} << 30},
      {"vocab_size", int64_t{1} << 40},
      {"max_position_embeddings", int64_t{1} << 40},
      {"intermediate_size", json::array()},
      {"rms_norm_eps", "1e-5"},
      {"rms_norm_eps", -1.0},
      {"rope_theta", -5.0},
      {"rope_theta", json::object()},
      {"eos_token_id", json::array({"2"})},
      {"eos_token_id", -3},
      {"bos_token_id", 1000},  // outside the vocabulary
      {"tie_word_embeddings", "yes"},
      {"architectures", "MistralForCausalLM"},
      {"model_type", 5},
      {"rope_parameters", 5},
      {"rope_scaling", {{"type", "linear"}, {"factor", "2"}}},
      {"sliding_window", -1},
      {"head_dim", 7},
  };
  for (const auto& [key, value] : bad) {
    json j = base;
    j[key] = value;
    SCOPED_TRACE(key + " = " + value.dump());
    const std::string e = ErrorOf<FormatError>(j);
    EXPECT_NE(e.find(key), std::string::npos) << e;
    EXPECT_NE(e.find("config.json"), std::string::npos) << e;
  }
  // Sizes that fit each limit but whose RoPE table would not.
  json j = base;
  j["max_position_embeddings"] = int64_t{1} << 24;
  j["head_dim"] = 128;
  EXPECT_NE(ErrorOf<FormatError>(j).find("max_position_embeddings"), std::string::npos);
}

TEST(ModelConfig, EosTokenIdForms) {
  json j = MistralConfig();
  j["eos_token_id"] = json::array();
  EXPECT_EQ(LlamaConfig::FromJson(j).eos_token_id, -1);
  j["eos_token_id"] = {128001, 128009};
  EXPECT_EQ(LlamaConfig::FromJson(j).eos_token_id, 128001);
  j["eos_token_id"] = nullptr;
  EXPECT_EQ(LlamaConfig::FromJson(j).eos_token_id, 2);
}

}  // namespace
}  // namespace qtool
