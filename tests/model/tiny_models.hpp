// Tiny random models written as checkpoints for tests: a one-block Llama-shaped trunk and
// tensors by name, to which a test adds its feed-forward (dense, experts) and its config.json.
#pragma once

#include <cmath>
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

// The standard deviation of the random Linear weights of a model `hidden` wide: 0.2 at kHidden,
// scaled as 1 / sqrt(hidden) so that the layers' gains do not grow with the width.
inline float WeightSd(int64_t hidden) {
  return 0.2f * std::sqrt(static_cast<float>(kHidden) / static_cast<float>(hidden));
}

// A one-block Llama-shaped model `hidden` wide (4 heads, 2 kv heads) with `vocab` tokens:
// embeddings, attention and norms (the feed-forward is added by the caller). Other sizes than
// kHidden and kVocab need their hidden_size and vocab_size in the config.
inline Tensors Trunk(std::mt19937& rng, int64_t hidden = kHidden, int64_t vocab = kVocab) {
  const int64_t kv = hidden / 2;
  const float sd = WeightSd(hidden);
  Tensors t;
  t.Add("model.embed_tokens.weight", {vocab, hidden}, Random(rng, vocab * hidden, 1.0f));
  t.Add("model.norm.weight", {hidden}, Random(rng, hidden, 0, 1.0f));
  t.Add("lm_head.weight", {vocab, hidden}, Random(rng, vocab * hidden, sd));
  const std::string p = "model.layers.0.";
  t.Add(p + "input_layernorm.weight", {hidden}, Random(rng, hidden, 0, 1.0f));
  t.Add(p + "post_attention_layernorm.weight", {hidden}, Random(rng, hidden, 0, 1.0f));
  t.Add(p + "self_attn.q_proj.weight", {hidden, hidden}, Random(rng, hidden * hidden, sd));
  t.Add(p + "self_attn.k_proj.weight", {kv, hidden}, Random(rng, kv * hidden, sd));
  t.Add(p + "self_attn.v_proj.weight", {kv, hidden}, Random(rng, kv * hidden, sd));
  t.Add(p + "self_attn.o_proj.weight", {hidden, hidden}, Random(rng, hidden * hidden, sd));
  return t;
}

// The width and the vocabulary of a Trunk, in `cfg`.
inline int64_t Width(Tensors& t) { return static_cast<int64_t>(t.Get("model.norm.weight").size()); }
inline void SetSizes(Tensors& t, json& cfg) {
  cfg["hidden_size"] = Width(t);
  cfg["vocab_size"] = static_cast<int64_t>(t.Get("model.embed_tokens.weight").size()) / Width(t);
}

// A one-block Mixtral: `t` (a Trunk) with `router` ([experts, width]) and each expert's w1, w3
// and w2 drawn from `rng` (`ffn` wide), top-2.
inline fs::path WriteMixtral(const fs::path& dir, std::mt19937& rng, Tensors t,
                             std::vector<float> router, int64_t ffn = kFfn) {
  const int64_t hidden = Width(t);
  const float sd = WeightSd(hidden);
  const auto experts = static_cast<int64_t>(router.size()) / hidden;
  const std::string p = "model.layers.0.block_sparse_moe.";
  t.Add(p + "gate.weight", {experts, hidden}, std::move(router));
  for (int64_t e = 0; e < experts; ++e) {
    const std::string x = p + "experts." + std::to_string(e) + ".";
    t.Add(x + "w1.weight", {ffn, hidden}, Random(rng, ffn * hidden, sd));
    t.Add(x + "w2.weight", {hidden, ffn}, Random(rng, hidden * ffn, sd));
    t.Add(x + "w3.weight", {ffn, hidden}, Random(rng, ffn * hidden, sd));
  }
  json cfg = BaseConfig("MixtralForCausalLM", "mixtral");
  SetSizes(t, cfg);
  cfg["intermediate_size"] = ffn;
  cfg["num_local_experts"] = experts;
  cfg["num_experts_per_tok"] = 2;
  return t.Write(dir, cfg);
}

// A one-block Qwen2-MoE: `t` (a Trunk) with q/k/v biases, a router of `experts` (top-2, without
// renormalisation unless `norm_topk_prob`), each expert's gate/up/down `ffn` wide, the shared
// expert `shared_ffn` wide and its one-row gate, all drawn from `rng`.
inline fs::path WriteQwen2Moe(const fs::path& dir, std::mt19937& rng, Tensors t, int64_t experts,
                              int64_t ffn, int64_t shared_ffn, bool norm_topk_prob = false) {
  const int64_t hidden = Width(t), kv = hidden / 2;
  const float sd = WeightSd(hidden);
  const std::string p = "model.layers.0.";
  t.Add(p + "self_attn.q_proj.bias", {hidden}, Random(rng, hidden, 0.1f));
  t.Add(p + "self_attn.k_proj.bias", {kv}, Random(rng, kv, 0.1f));
  t.Add(p + "self_attn.v_proj.bias", {kv}, Random(rng, kv, 0.1f));
  t.Add(p + "mlp.gate.weight", {experts, hidden}, Random(rng, experts * hidden, 1));
  for (int64_t e = 0; e <= experts; ++e) {  // the experts, then the shared expert
    const std::string x =
        e < experts ? p + "mlp.experts." + std::to_string(e) + "." : p + "mlp.shared_expert.";
    const int64_t f = e < experts ? ffn : shared_ffn;
    t.Add(x + "gate_proj.weight", {f, hidden}, Random(rng, f * hidden, sd));
    t.Add(x + "up_proj.weight", {f, hidden}, Random(rng, f * hidden, sd));
    t.Add(x + "down_proj.weight", {hidden, f}, Random(rng, hidden * f, sd));
  }
  t.Add(p + "mlp.shared_expert_gate.weight", {1, hidden}, Random(rng, hidden, 0.5f));
  json cfg = BaseConfig("Qwen2MoeForCausalLM", "qwen2_moe");
  SetSizes(t, cfg);
  cfg["num_experts"] = experts;
  cfg["num_experts_per_tok"] = 2;
  cfg["moe_intermediate_size"] = ffn;
  cfg["shared_expert_intermediate_size"] = shared_ffn;
  cfg["norm_topk_prob"] = norm_topk_prob;
  return t.Write(dir, cfg);
}

}  // namespace qtool::testing::tiny
