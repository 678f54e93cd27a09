// Qwen3, Gemma 2, Gemma 3 and Phi-3 configs (both styles transformers writes), the keys of theirs
// the runtime refuses, and the runtime's Gemma pieces against their scalar formulas. Logits against
// transformers are checked by tests/interop/check_architectures.py.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "../../src/model/block.hpp"
#include "qtool/core/error.hpp"
#include "qtool/model/model.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {
namespace dense_architectures {  // names of its own within a unity build

using nlohmann::json;

// Small configs as transformers 5.25 writes them (save_pretrained of tests/interop's models).
json Gemma3Config() {
  return json::parse(R"({"_sliding_window_pattern": 3, "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null,
    "bos_token_id": 2, "dtype": "float32", "eos_token_id": 1, "final_logit_softcapping": null,
    "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64,
    "initializer_range": 0.25, "intermediate_size": 96,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                    "sliding_attention", "sliding_attention"],
    "max_position_embeddings": 128, "model_type": "gemma3_text", "num_attention_heads": 4,
    "num_hidden_layers": 5, "num_key_value_heads": 2, "pad_token_id": 0,
    "query_pre_attn_scalar": 32, "rms_norm_eps": 1e-06,
    "rope_parameters": {"full_attention": {"factor": 4.0, "rope_theta": 1000000.0,
                                           "rope_type": "linear"},
                        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    "sliding_window": 8, "sliding_window_pattern": 3, "tie_word_embeddings": true,
    "transformers_version": "5.25.0", "use_bidirectional_attention": false, "use_cache": true,
    "vocab_size": 320})");
}

// The same model in the older style: top-level RoPE keys, a window pattern, no layer types.
json Gemma3OlderConfig() {
  json j = Gemma3Config();
  for (const char* k : {"rope_parameters", "layer_types", "_sliding_window_pattern"}) j.erase(k);
  j["rope_theta"] = 1000000.0;
  j["rope_local_base_freq"] = 10000.0;
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 4.0}};
  return j;
}

json Gemma2Config() {
  return json::parse(R"({"architectures": ["Gemma2ForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "attn_logit_softcapping": 1.5, "bos_token_id": 2,
    "dtype": "float32", "eos_token_id": 1, "final_logit_softcapping": 2.0, "head_dim": 16,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64, "initializer_range": 0.25,
    "intermediate_size": 96,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "max_position_embeddings": 128, "model_type": "gemma2", "num_attention_heads": 4,
    "num_hidden_layers": 4, "num_key_value_heads": 2, "pad_token_id": 0,
    "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "sliding_window": 9,
    "tie_word_embeddings": true, "transformers_version": "5.25.0",
    "use_bidirectional_attention": null, "use_cache": true, "vocab_size": 320})");
}

json Qwen3Config() {
  return json::parse(R"({"architectures": ["Qwen3ForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "bos_token_id": null, "dtype": "float32", "eos_token_id": null,
    "head_dim": 16, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.25,
    "intermediate_size": 96,
    "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
    "max_position_embeddings": 128, "max_window_layers": 1, "model_type": "qwen3",
    "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 2,
    "pad_token_id": null, "rms_norm_eps": 1e-06,
    "rope_parameters": {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "linear"},
    "sliding_window": 7, "tie_word_embeddings": true, "transformers_version": "5.25.0",
    "use_cache": true, "use_sliding_window": true, "vocab_size": 320})");
}

json Phi3Config() {
  return json::parse(R"({"architectures": ["Phi3ForCausalLM"], "attention_dropout": 0.0,
    "bos_token_id": 1, "dtype": "float32", "embd_pdrop": 0.0, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.25, "intermediate_size": 96,
    "max_position_embeddings": 128, "model_type": "phi3", "num_attention_heads": 4,
    "num_hidden_layers": 3, "num_key_value_heads": 2, "original_max_position_embeddings": 4096,
    "pad_token_id": 0, "resid_pdrop": 0.0, "rms_norm_eps": 1e-06,
    "rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 10000.0,
                        "rope_type": "default"},
    "sliding_window": 11, "tie_word_embeddings": false, "transformers_version": "5.25.0",
    "use_cache": true, "vocab_size": 320})");
}

// The error message of FromJson on `j`, which must throw E.
template <typename E>
std::string ErrorOf(const json& j) {
  SCOPED_TRACE(j.dump());
  return testing::ErrorOf<E>([&] { LlamaConfig::FromJson(j); });
}

TEST(DenseArchitectures, Gemma3ConfigInBothStyles) {
  for (const json& j : {Gemma3Config(), Gemma3OlderConfig()}) {
    SCOPED_TRACE(j.dump());
    const LlamaConfig c = LlamaConfig::FromJson(j);
    EXPECT_EQ(c.model_type, "gemma3_text");
    EXPECT_EQ(c.activation, Activation::kGeluTanh);
    EXPECT_TRUE(c.norm_plus_one && c.scale_embeddings && c.sandwich_norms && c.qk_norm);
    EXPECT_FALSE(c.fused_projections);
    EXPECT_EQ(c.head_dim, 32);
    EXPECT_EQ(c.rotary_dim, 32);
    EXPECT_EQ(c.query_pre_attn_scalar, 32);
    EXPECT_EQ(c.attn_logit_softcapping, 0);
    EXPECT_EQ(c.final_logit_softcapping, 0);
    EXPECT_EQ(c.rope_theta, 1e6);
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLinear);
    EXPECT_EQ(c.rope_scaling.factor, 4.0);
    EXPECT_TRUE(c.rope_local);
    EXPECT_EQ(c.rope_local_theta, 1e4);
    EXPECT_EQ(c.rope_local_scaling.type, RopeScaling::Type::kNone);
    EXPECT_EQ(c.sliding_window, 8);
    EXPECT_EQ(c.sliding_layers, std::vector<bool>({true, true, false, true, true}));
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(c.bos_token_id, 2);
    EXPECT_EQ(c.eos_token_id, 1);
  }
  // The config class's defaults: a window pattern of 6, bases of 1e6 and 1e4, head_dim 256.
  json j = Gemma3OlderConfig();
  for (const char* k : {"sliding_window_pattern", "rope_theta", "rope_local_base_freq",
                        "rope_scaling", "head_dim", "query_pre_attn_scalar"}) {
    j.erase(k);
  }
  j["num_hidden_layers"] = 7;
  const LlamaConfig c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.sliding_layers, std::vector<bool>({true, true, true, true, true, false, true}));
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_local_theta, 1e4);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.query_pre_attn_scalar, 256);
  // Both styles, disagreeing.
  j = Gemma3Config();
  j["rope_local_base_freq"] = 20000.0;
  EXPECT_NE(ErrorOf<FormatError>(j).find("rope_local_base_freq"), std::string::npos);
  j = Gemma3Config();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  EXPECT_NE(ErrorOf<FormatError>(j).find("rope_parameters"), std::string::npos);
}

TEST(DenseArchitectures, Gemma2SoftCapsAndAlternatingWindows) {
  json j = Gemma2Config();
  LlamaConfig c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.attn_logit_softcapping, 1.5);
  EXPECT_EQ(c.final_logit_softcapping, 2.0);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.rope_local);
  EXPECT_EQ(c.sliding_layers, std::vector<bool>({true, false, true, false}));
  // Absent: Gemma 2's defaults (50 and 30); null: none.
  j.erase("attn_logit_softcapping");
  j["final_logit_softcapping"] = nullptr;
  j.erase("layer_types");
  j["num_hidden_layers"] = 3;
  c = LlamaConfig::FromJson(j);
  EXPECT_EQ(c.attn_logit_softcapping, 50.0);
  EXPECT_EQ(c.final_logit_softcapping, 0.0);
  EXPECT_EQ(c.sliding_layers, std::vector<bool>({true, false, true}));
  // Older configs: hidden_act (not read by transformers' Gemma classes) and sliding_window_size.
  j["hidden_act"] = "gelu_pytorch_tanh";
  j["sliding_window_size"] = 9;
  j["cache_implementation"] = "hybrid";
  EXPECT_NO_THROW(LlamaConfig::FromJson(j));
  j["sliding_window_size"] = 4096;
  EXPECT_NE(ErrorOf<FormatError>(j).find("sliding_window_size"), std::string::npos);
  j = Gemma2Config();
  j["attn_logit_softcapping"] = 0.0;
  EXPECT_NE(ErrorOf<FormatError>(j).find("attn_logit_softcapping"), std::string::npos);
}

TEST(DenseArchitectures, Qwen3AndPhi3Configs) {
  LlamaConfig c = LlamaConfig::FromJson(Qwen3Config());
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.norm_plus_one || c.sandwich_norms || c.fused_projections);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.sliding_layers, std::vector<bool>({false, true, true}));
  json j = Qwen3Config();
  j.erase("head_dim");
  EXPECT_EQ(LlamaConfig::FromJson(j).head_dim, 128);  // Qwen3Config's default

  c = LlamaConfig::FromJson(Phi3Config());
  EXPECT_TRUE(c.fused_projections);
  EXPECT_FALSE(c.qk_norm || c.norm_plus_one);
  EXPECT_EQ(c.rotary_dim, 8);
  EXPECT_EQ(c.sliding_window, 11);
  EXPECT_EQ(c.sliding_layers, std::vector<bool>({true, true, true}));
  // The older style: the factor at the top level.
  j = Phi3Config();
  j.erase("rope_parameters");
  j["rope_theta"] = 10000.0;
  j["partial_rotary_factor"] = 0.5;
  EXPECT_EQ(LlamaConfig::FromJson(j).rotary_dim, 8);
  j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.75}};
  EXPECT_NE(ErrorOf<FormatError>(j).find("partial_rotary_factor"), std::string::npos);
  // longrope is not implemented: refused naming the key.
  j = Phi3Config();
  j["rope_parameters"]["rope_type"] = "longrope";
  const std::string e = ErrorOf<OptionError>(j);
  EXPECT_NE(e.find("rope_parameters.rope_type"), std::string::npos) << e;
  EXPECT_NE(e.find("longrope"), std::string::npos) << e;
  // transformers' Phi-3 refuses linear and llama3 scaling; so does qtool, naming the type.
  for (const char* type : {"linear", "llama3"}) {
    j = Phi3Config();
    j["rope_parameters"]["rope_type"] = type;
    j["rope_parameters"]["factor"] = 2.0;
    const std::string why = ErrorOf<OptionError>(j);
    EXPECT_NE(why.find(std::string("\"") + type + "\" is not implemented for Phi-3"),
              std::string::npos)
        << why;
  }
  // A factor that leaves an odd number of rotated dimensions.
  j = Phi3Config();
  j["rope_parameters"]["partial_rotary_factor"] = 0.1;
  EXPECT_NE(ErrorOf<FormatError>(j).find("partial rotary"), std::string::npos);
}

// Keys of these architectures, or of others, set to values the runtime does not implement: each
// refused with an error naming it.
TEST(DenseArchitectures, UnimplementedKeysAreRefusedByName) {
  const std::vector<std::pair<std::string, json>> everywhere = {
      {"use_bidirectional_attention", true},
      {"some_future_key", 1},
      {"num_experts", 8},
      {"use_parallel_residual", true},
  };
  const std::vector<std::pair<std::string, json>> gemma = {
      {"hidden_activation", "gelu"},
      {"partial_rotary_factor", 0.5},
      {"use_qk_norm", true},
  };
  const std::vector<std::pair<std::string, json>> others = {
      {"hidden_act", "gelu_pytorch_tanh"}, {"attn_logit_softcapping", 50.0},
      {"final_logit_softcapping", 30.0},   {"query_pre_attn_scalar", 256},
      {"rope_local_base_freq", 10000.0},   {"sliding_window_pattern", 6},
  };
  const std::vector<std::pair<json, bool>> configs = {{Gemma3Config(), true},
                                                      {Gemma2Config(), true},
                                                      {Qwen3Config(), false},
                                                      {Phi3Config(), false}};
  for (const auto& [config, is_gemma] : configs) {
    SCOPED_TRACE(config["model_type"].dump());
    std::vector<std::pair<std::string, json>> refused = everywhere;
    const auto& more = is_gemma ? gemma : others;
    refused.insert(refused.end(), more.begin(), more.end());
    if (config["model_type"] == "qwen3") refused.emplace_back("partial_rotary_factor", 0.5);
    for (const auto& [key, value] : refused) {
      json m = config;
      m[key] = value;
      const std::string e = ErrorOf<OptionError>(m);
      EXPECT_NE(e.find(key), std::string::npos) << e;
    }
    json m = config;
    m["layer_types"] = json::array();
    for (int64_t i = 0; i < config["num_hidden_layers"].get<int64_t>(); ++i) {
      m["layer_types"].push_back("chunked_attention");
    }
    EXPECT_NE(ErrorOf<OptionError>(m).find("layer_types"), std::string::npos);
  }
}

// RMSNorm with Gemma's (1 + w) weight against x / sqrt(mean(x^2) + eps) * (1 + w) in double.
TEST(DenseArchitectures, GemmaNormIsOnePlusW) {
  LlamaConfig gemma, llama;
  gemma.norm_plus_one = true;
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0, 1);
  const int64_t h = 48;
  RowMatrixXf x(3, h);
  Eigen::VectorXf w(h);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = n(rng) * 3;
  for (Eigen::Index i = 0; i < h; ++i) w[i] = n(rng) * 0.5f;
  EXPECT_EQ(runtime::EffectiveNorm(w, llama), w);
  RowMatrixXf y;
  runtime::RmsNorm(x, runtime::EffectiveNorm(w, gemma), 1e-6, y);
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    double ms = 0;
    for (int64_t i = 0; i < h; ++i) ms += double(x(r, i)) * x(r, i) / h;
    for (int64_t i = 0; i < h; ++i) {
      const double want = x(r, i) / std::sqrt(ms + 1e-6) * (1.0 + w[i]);
      EXPECT_NEAR(y(r, i), want, 1e-5 * (1 + std::abs(want)));
    }
  }
}

// Soft-capping against cap * tanh(x / cap) in double, over a range that saturates.
TEST(DenseArchitectures, SoftCapMatchesTheFormula) {
  for (const float cap : {50.0f, 30.0f, 1.5f}) {
    std::vector<float> x;
    for (int i = -400; i <= 400; ++i) x.push_back(static_cast<float>(i) * cap / 50.0f);
    const std::vector<float> in = x;
    runtime::SoftCap(x.data(), static_cast<int64_t>(x.size()), cap);
    for (size_t i = 0; i < x.size(); ++i) {
      const double want = cap * std::tanh(static_cast<double>(in[i]) / cap);
      EXPECT_NEAR(x[i], want, 2e-6 * cap) << in[i];
      EXPECT_LT(std::abs(x[i]), cap * (1 + 1e-6));
    }
  }
}

}  // namespace dense_architectures
}  // namespace
}  // namespace qtool
