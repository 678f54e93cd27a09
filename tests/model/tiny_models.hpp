// Tiny random models written as checkpoints for tests: a one-block Llama-shaped trunk and
// tensors by name, to which a test adds its feed-forward (dense, experts) and its config.json.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "qtool/io/checkpoint.hpp"

namespace qtool::testing::tiny {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int64_t kHidden = 32, kFfn = 48, kVocab = 64, kExperts = 5;

// A random tensor (normal, standard deviation `sd`), or `fill` when sd is 0.
inline std::vector<float> Random(std::mt19937& rng, int64_t n, float sd, float fill = 0) {
  std::normal_distribution<float> d(0, sd);
  std::vector<float> v(static_cast<size_t>(n), fill);
  if (sd > 0) {
    for (float& x : v) x = d(rng);
  }
  return v;
}

// Tensors by name, written as F32 with `config` into `dir`.
struct Tensors {
  std::vector<std::pair<TensorSpec, std::vector<float>>> list;
  void Add(const std::string& name, std::vector<int64_t> shape, std::vector<float> v) {
    list.push_back({{name, DType::kF32, std::move(shape)}, std::move(v)});
  }
  std::vector<float>& Get(const std::string& name) {
    for (auto& [spec, v] : list) {
      if (spec.name == name) return v;
    }
    throw std::runtime_error("no tensor " + name);
  }
  fs::path Write(const fs::path& dir, const json& config) const {
    std::vector<TensorSpec> specs;
    for (const auto& [spec, v] : list) specs.push_back(spec);
    CheckpointWriter w(dir, specs, {});
    for (const auto& [spec, v] : list) w.Write(std::as_bytes(std::span(v)));
    w.WriteTextFile("config.json", config.dump(2));
    w.Commit();
    return dir;
  }
};

inline json BaseConfig(const char* arch, const char* type) {
  return {
      {"architectures", {arch}},   {"model_type", type},           {"hidden_size", kHidden},
      {"intermediate_size", kFfn}, {"num_hidden_layers", 1},       {"num_attention_heads", 4},
      {"num_key_value_heads", 2},  {"vocab_size", kVocab},         {"max_position_embeddings", 64},
      {"rms_norm_eps", 1e-5},      {"tie_word_embeddings", false}, {"bos_token_id", 1},
      {"eos_token_id", 2}};
}

// A one-block Llama-shaped model: embeddings, attention and norms (the feed-forward is added by
// the caller).
inline Tensors Trunk(std::mt19937& rng) {
  Tensors t;
  t.Add("model.embed_tokens.weight", {kVocab, kHidden}, Random(rng, kVocab * kHidden, 1.0f));
  t.Add("model.norm.weight", {kHidden}, Random(rng, kHidden, 0, 1.0f));
  t.Add("lm_head.weight", {kVocab, kHidden}, Random(rng, kVocab * kHidden, 0.2f));
  const std::string p = "model.layers.0.";
  t.Add(p + "input_layernorm.weight", {kHidden}, Random(rng, kHidden, 0, 1.0f));
  t.Add(p + "post_attention_layernorm.weight", {kHidden}, Random(rng, kHidden, 0, 1.0f));
  t.Add(p + "self_attn.q_proj.weight", {kHidden, kHidden}, Random(rng, kHidden * kHidden, 0.2f));
  t.Add(p + "self_attn.k_proj.weight", {16, kHidden}, Random(rng, 16 * kHidden, 0.2f));
  t.Add(p + "self_attn.v_proj.weight", {16, kHidden}, Random(rng, 16 * kHidden, 0.2f));
  t.Add(p + "self_attn.o_proj.weight", {kHidden, kHidden}, Random(rng, kHidden * kHidden, 0.2f));
  return t;
}

// A one-block Mixtral: `t` (a Trunk) with `router` ([experts, kHidden]) and each expert's w1, w2
// and w3 drawn from `rng` (kFfn wide), top-2.
inline fs::path WriteMixtral(const fs::path& dir, std::mt19937& rng, Tensors t,
                             std::vector<float> router) {
  const auto experts = static_cast<int64_t>(router.size()) / kHidden;
  const std::string p = "model.layers.0.block_sparse_moe.";
  t.Add(p + "gate.weight", {experts, kHidden}, std::move(router));
  for (int64_t e = 0; e < experts; ++e) {
    const std::string x = p + "experts." + std::to_string(e) + ".";
    t.Add(x + "w1.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
    t.Add(x + "w2.weight", {kHidden, kFfn}, Random(rng, kHidden * kFfn, 0.2f));
    t.Add(x + "w3.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
  }
  json cfg = BaseConfig("MixtralForCausalLM", "mixtral");
  cfg["num_local_experts"] = experts;
  cfg["num_experts_per_tok"] = 2;
  return t.Write(dir, cfg);
}

}  // namespace qtool::testing::tiny
