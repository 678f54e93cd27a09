// The GGUF form of the architectures beyond Llama: Mixtral's and Qwen2-MoE's experts stacked into
// 3-D tensors, their routers kept in F32, Qwen2-MoE's shared expert, Gemma 3's (1 + w) norms and
// four norm names; each written, read back by the import, and run by the runtime with the
// original's logits. llama.cpp itself runs these files in
// tests/interop/check_gguf_architectures.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "qtool/core/error.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/gguf_import.hpp"
#include "qtool/io/imatrix.hpp"
#include "qtool/model/gguf_params.hpp"
#include "qtool/model/model.hpp"
#include "test_support.hpp"
#include "tiny_models.hpp"

namespace qtool {
namespace {
namespace gguf_models {  // names of its own within a unity build

namespace fs = std::filesystem;
using nlohmann::json;
using testing::tiny::BaseConfig;
using testing::tiny::kFfn;
using testing::tiny::kHidden;
using testing::tiny::kVocab;
using testing::tiny::Random;
using testing::tiny::Tensors;
using testing::tiny::Trunk;
using testing::tiny::WriteMixtral;
using testing::tiny::WriteQwen2Moe;

constexpr int64_t kMixtralExperts = 8, kQwenExperts = 4, kExpertFfn = 24, kSharedFfn = 40;

std::vector<int32_t> Tokens() {
  std::mt19937 rng(11);
  std::vector<int32_t> s = {1};
  for (int i = 1; i < 24; ++i) s.push_back(static_cast<int32_t>(3 + rng() % (kVocab - 3)));
  return s;
}

fs::path Mixtral(const fs::path& dir) {
  std::mt19937 rng(3);
  Tensors t = Trunk(rng);
  std::vector<float> router = Random(rng, kMixtralExperts * kHidden, 1);
  return WriteMixtral(dir, rng, std::move(t), std::move(router));
}

fs::path Qwen2Moe(const fs::path& dir, bool norm_topk_prob = false) {
  std::mt19937 rng(4);
  Tensors t = Trunk(rng);
  return WriteQwen2Moe(dir, rng, std::move(t), kQwenExperts, kExpertFfn, kSharedFfn,
                       norm_topk_prob);
}

json Gemma3Config() {
  json cfg = BaseConfig("Gemma3ForCausalLM", "gemma3_text");
  cfg["head_dim"] = 8;
  cfg["query_pre_attn_scalar"] = 8;
  cfg["hidden_activation"] = "gelu_pytorch_tanh";
  cfg["sliding_window"] = 5;
  cfg["layer_types"] = {"sliding_attention"};
  cfg["rope_theta"] = 1000000.0;
  cfg["rope_local_base_freq"] = 10000.0;
  return cfg;
}

fs::path Gemma3(const fs::path& dir, const json& cfg) {
  std::mt19937 rng(6);
  Tensors t = Trunk(rng);
  const std::string p = "model.layers.0.";
  for (const char* norm : {"input_layernorm", "post_attention_layernorm"}) {
    std::ranges::copy(Random(rng, kHidden, 0.3f), t.Get(p + norm + ".weight").begin());
  }
  for (const char* norm : {"pre_feedforward_layernorm", "post_feedforward_layernorm"}) {
    t.Add(p + norm + ".weight", {kHidden}, Random(rng, kHidden, 0.3f));
  }
  std::ranges::copy(Random(rng, kHidden, 0.3f), t.Get("model.norm.weight").begin());
  t.Add(p + "self_attn.q_norm.weight", {8}, Random(rng, 8, 0.3f));
  t.Add(p + "self_attn.k_norm.weight", {8}, Random(rng, 8, 0.3f));
  t.Add(p + "mlp.gate_proj.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
  t.Add(p + "mlp.up_proj.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
  t.Add(p + "mlp.down_proj.weight", {kHidden, kFfn}, Random(rng, kHidden * kFfn, 0.2f));
  return t.Write(dir, cfg);
}

// Writes `model` as GGUF `type`, reads it back into a checkpoint; returns the file.
gguf::File RoundTrip(const fs::path& model, const std::string& type, const fs::path& back) {
  gguf::ExportOptions o;
  o.type = type;
  const fs::path out = back.string() + ".gguf";
  gguf::ExportGguf(Checkpoint::Open(model), out, o);
  gguf::ImportGguf(gguf::SplitFile(out), back, false);
  return gguf::File(out);
}

const gguf::TensorInfo& Find(const gguf::File& f, const std::string& name) {
  const gguf::TensorInfo* t = f.header().FindTensor(name);
  if (t == nullptr) throw std::runtime_error("no tensor " + name);
  return *t;
}

std::vector<float> Decode(const gguf::File& f, const std::string& name) {
  const gguf::TensorInfo& t = Find(f, name);
  std::vector<float> v(t.numel());
  f.Dequantize(t, v);
  return v;
}

// An F32 checkpoint tensor's values.
std::vector<float> Values(const Checkpoint& ck, const std::string& name) {
  const auto bytes = ck.Get(name).data();
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

float MaxRel(const RowMatrixXf& a, const RowMatrixXf& b) {
  return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

TEST(GgufModels, MixtralExpertsStackIntoOneTensorPerPart) {
  testing::ScratchDir tmp;
  const fs::path model = Mixtral(tmp / "mixtral");
  const gguf::File f = RoundTrip(model, "F32", tmp / "back");
  EXPECT_EQ(*f.header().Find("general.architecture")->AsString(), "llama");
  EXPECT_EQ(f.header().Find("llama.expert_count")->AsInt(), kMixtralExperts);
  EXPECT_EQ(f.header().Find("llama.expert_used_count")->AsInt(), 2);
  const gguf::TensorInfo& gate = Find(f, "blk.0.ffn_gate_exps.weight");
  EXPECT_EQ(gate.ne, (std::vector<uint64_t>{kHidden, kFfn, kMixtralExperts}));
  EXPECT_EQ(Find(f, "blk.0.ffn_down_exps.weight").ne,
            (std::vector<uint64_t>{kFfn, kHidden, kMixtralExperts}));
  // Expert 5's w3 is the sixth slice of ffn_up_exps.
  const std::vector<float> up = Decode(f, "blk.0.ffn_up_exps.weight");
  const Checkpoint ck = Checkpoint::Open(model);
  const std::vector<float> w3 = Values(ck, "model.layers.0.block_sparse_moe.experts.5.w3.weight");
  EXPECT_TRUE(std::equal(w3.begin(), w3.end(), up.begin() + 5 * kFfn * kHidden));
  const auto tokens = Tokens();
  EXPECT_EQ(MaxRel(Model(tmp / "back").Logits(tokens), Model(model).Logits(tokens)), 0.0f);

  // Q4_K_M: the experts quantised slice by slice, the router kept in F32, and with eight experts
  // attn_v and attn_k in Q8_0 whatever the mix (llama.cpp's rule for Mixtral).
  const gguf::File q = RoundTrip(model, "Q4_K_M", tmp / "q");
  EXPECT_EQ(Find(q, "blk.0.ffn_gate_inp.weight").type, ggml::Type::kF32);
  EXPECT_EQ(Find(q, "blk.0.attn_v.weight").type, ggml::Type::kQ8_0);
  EXPECT_EQ(Find(q, "blk.0.attn_k.weight").type, ggml::Type::kQ8_0);
  const gguf::TensorInfo& qup = Find(q, "blk.0.ffn_up_exps.weight");
  ASSERT_EQ(qup.type, ggml::Type::kQ5_0);  // 32-wide rows: Q4_K's fallback
  std::vector<std::byte> blocks(ggml::RowBytes(qup.type, kHidden));
  std::vector<float> want(kHidden);
  const std::vector<float> got = Decode(q, "blk.0.ffn_up_exps.weight");
  for (int64_t r = 0; r < kFfn; ++r) {
    ggml::Quantize(qup.type, w3.data() + r * kHidden, blocks.data(), kHidden);
    ggml::Dequantize(qup.type, blocks.data(), want.data(), kHidden);
    const float* row = got.data() + (5 * kFfn + r) * kHidden;
    ASSERT_TRUE(std::equal(want.begin(), want.end(), row)) << "row " << r;
  }
}

TEST(GgufModels, Qwen2MoeSharedExpertAndItsGate) {
  testing::ScratchDir tmp;
  const fs::path model = Qwen2Moe(tmp / "qwen2moe");
  const gguf::File f = RoundTrip(model, "F32", tmp / "back");
  EXPECT_EQ(*f.header().Find("general.architecture")->AsString(), "qwen2moe");
  EXPECT_EQ(f.header().Find("qwen2moe.expert_feed_forward_length")->AsInt(), kExpertFfn);
  EXPECT_EQ(f.header().Find("qwen2moe.expert_shared_feed_forward_length")->AsInt(), kSharedFfn);
  EXPECT_EQ(Find(f, "blk.0.ffn_gate_inp_shexp.weight").ne, (std::vector<uint64_t>{kHidden}));
  EXPECT_EQ(Find(f, "blk.0.ffn_down_shexp.weight").ne,
            (std::vector<uint64_t>{kSharedFfn, kHidden}));
  const auto tokens = Tokens();
  EXPECT_EQ(MaxRel(Model(tmp / "back").Logits(tokens), Model(model).Logits(tokens)), 0.0f);

  // llama.cpp's qwen2moe graph never renormalises the chosen experts' weights.
  const fs::path bad = Qwen2Moe(tmp / "renorm", true);
  gguf::ExportOptions o;
  o.type = "F32";
  EXPECT_THROW(
      {
        try {
          gguf::ExportGguf(Checkpoint::Open(bad), tmp / "renorm.gguf", o);
        } catch (const FormatError& e) {
          EXPECT_NE(std::string(e.what()).find("norm_topk_prob"), std::string::npos) << e.what();
          throw;
        }
      },
      FormatError);
  EXPECT_FALSE(fs::exists(tmp / "renorm.gguf"));
}

TEST(GgufModels, Gemma3NormsAreStoredAsOnePlusW) {
  testing::ScratchDir tmp;
  const fs::path model = Gemma3(tmp / "gemma3", Gemma3Config());
  const gguf::File f = RoundTrip(model, "F32", tmp / "back");
  const Checkpoint ck = Checkpoint::Open(model);
  const std::pair<const char*, const char*> norms[] = {
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.0.post_attention_layernorm.weight", "blk.0.post_attention_norm.weight"},
      {"model.layers.0.pre_feedforward_layernorm.weight", "blk.0.ffn_norm.weight"},
      {"model.layers.0.post_feedforward_layernorm.weight", "blk.0.post_ffw_norm.weight"},
      {"model.layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight"},
      {"model.layers.0.self_attn.k_norm.weight", "blk.0.attn_k_norm.weight"},
      {"model.norm.weight", "output_norm.weight"}};
  for (const auto& [hf, name] : norms) {
    const std::vector<float> w = Values(ck, hf);
    const std::vector<float> g = Decode(f, name);
    ASSERT_EQ(g.size(), w.size()) << name;
    for (size_t i = 0; i < w.size(); ++i) EXPECT_EQ(g[i], 1.0f + w[i]) << name << " " << i;
  }
  const gguf::Value* pattern = f.header().Find("gemma3.attention.sliding_window_pattern");
  ASSERT_NE(pattern, nullptr);
  ASSERT_EQ(pattern->items.size(), 1u);
  EXPECT_TRUE(std::get<bool>(pattern->items[0]));
  EXPECT_EQ(f.header().Find("gemma3.attention.sliding_window")->AsInt(), 5);
  EXPECT_EQ(*f.header().Find("gemma3.rope.freq_base_swa")->AsFloat(), 10000.0);
  const auto tokens = Tokens();
  EXPECT_LT(MaxRel(Model(tmp / "back").Logits(tokens), Model(model).Logits(tokens)), 1e-6f);

  // llama.cpp scales Gemma's queries by head_dim^-1/2 whatever query_pre_attn_scalar says.
  json other = Gemma3Config();
  other["query_pre_attn_scalar"] = 12;
  EXPECT_THROW(gguf::GgufModelParams(LlamaConfig::FromJson(other), "gemma3"), FormatError);
}

// qtool imatrix on Mixtral: an expert's sums are one row of the stacked tensor's entry, counted
// over the tokens routed to it (top-2 of 8: every token counts twice across the experts), and
// quantize --imatrix weights each expert's slice with its own row.
TEST(GgufModels, ImatrixOfExpertsStacksOneRowPerExpert) {
  testing::ScratchDir tmp;
  const fs::path model = Mixtral(tmp / "mixtral");
  std::string ids;
  for (const int32_t t : Tokens()) ids += std::to_string(t) + "\n";
  testing::WriteFile(tmp / "calib.tokens", ids);
  const fs::path out = tmp / "m.imatrix";
  auto r = testing::RunCli({"imatrix", model.string(), "--calib", (tmp / "calib.tokens").string(),
                            "--sequential", "--seqlen", "24", "-o", out.string(), "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const imatrix::Matrix m = imatrix::Read(out);
  const imatrix::Entry& gate = m.entries.at("blk.0.ffn_gate_exps.weight");
  EXPECT_EQ(gate.nmat, kMixtralExperts);
  EXPECT_EQ(gate.ncols, kHidden);
  float routed = 0;
  for (const float c : gate.counts) routed += c;
  EXPECT_EQ(routed, 2.0f * 24);
  EXPECT_EQ(m.entries.at("blk.0.ffn_up_exps.weight").counts, gate.counts);
  EXPECT_EQ(m.entries.at("blk.0.ffn_down_exps.weight").ncols, kFfn);
  EXPECT_EQ(m.entries.at("blk.0.attn_q.weight").counts, std::vector<float>{24});
  r = testing::RunCli({"quantize", model.string(), "-o", (tmp / "q.gguf").string(),
                       "--output-format", "gguf", "--gguf-type", "Q4_K_M", "--imatrix",
                       out.string(), "-q", "--json", (tmp / "q.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(testing::ReadFile(tmp / "q.json"));
  int weighted = 0;  // gate and up (rows of 32 in Q5_0); down's rows of 48 fall back to F16
  for (const json& t : report["tensors"]) {
    if (t["name"].get<std::string>().ends_with("_exps.weight")) {
      EXPECT_EQ(t["imatrix"].get<bool>(), t["type"] != "f16") << t.dump();
      weighted += t["imatrix"].get<bool>();
    }
  }
  EXPECT_EQ(weighted, 2);
}

// Llama 3 RoPE scaling: llama.cpp reads it as the per-frequency divisors of rope_freqs.weight,
// written second (after the embeddings, before the output norm and head, then the blocks); the
// import recovers the scaling from them, so the decoded model runs with the same logits.
TEST(GgufModels, Llama3RopeScalingTravelsAsDivisors) {
  testing::ScratchDir tmp;
  std::mt19937 rng(8);
  Tensors t = Trunk(rng);
  const std::string p = "model.layers.0.mlp.";
  t.Add(p + "gate_proj.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
  t.Add(p + "up_proj.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
  t.Add(p + "down_proj.weight", {kHidden, kFfn}, Random(rng, kHidden * kFfn, 0.2f));
  json cfg = BaseConfig("LlamaForCausalLM", "llama");
  cfg["rope_theta"] = 500000.0;
  cfg["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 16}};
  const fs::path model = t.Write(tmp / "llama3", cfg);
  const gguf::File f = RoundTrip(model, "F32", tmp / "back");
  std::vector<std::string> order;
  for (const gguf::TensorInfo& ti : f.tensors()) order.push_back(ti.name);
  ASSERT_GE(order.size(), 5u);
  EXPECT_EQ(
      std::vector<std::string>(order.begin(), order.begin() + 5),
      (std::vector<std::string>{"token_embd.weight", "rope_freqs.weight", "output_norm.weight",
                                "output.weight", "blk.0.attn_norm.weight"}));
  const std::vector<float> divisors = Decode(f, "rope_freqs.weight");
  EXPECT_EQ(divisors, gguf::Llama3RopeDivisors(500000.0, 8, 8.0, 1.0, 4.0, 16));
  int blended = 0;
  for (const float d : divisors) blended += d > 1.0f && d < 8.0f;
  EXPECT_GE(blended, 1);  // the case the recovery has to solve
  const auto tokens = Tokens();
  EXPECT_LT(MaxRel(Model(tmp / "back").Logits(tokens), Model(model).Logits(tokens)), 1e-5f);
  // Without the scaling the logits differ: the check above can fail.
  json plain = json::parse(testing::ReadFile(tmp / "back/config.json"));
  ASSERT_TRUE(plain.contains("rope_scaling"));
  plain.erase("rope_scaling");
  testing::WriteFile(tmp / "back/config.json", plain.dump());
  EXPECT_GT(MaxRel(Model(tmp / "back").Logits(tokens), Model(model).Logits(tokens)), 1e-3f);
}

}  // namespace gguf_models
}  // namespace
}  // namespace qtool
