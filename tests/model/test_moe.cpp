// Mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE): the runtime against dense
// equivalents, config.json accounting, the routers kept in full precision, and calibration that
// reaches an expert the router never selects (the fallback, named in the report, not RTN).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "qtool/core/error.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/capture.hpp"
#include "qtool/model/model.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/solvers/calibrated.hpp"
#include "test_support.hpp"
#include "tiny_models.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::tiny::BaseConfig;
using testing::tiny::kExperts;
using testing::tiny::kFfn;
using testing::tiny::kHidden;
using testing::tiny::kVocab;
using testing::tiny::Random;
using testing::tiny::Tensors;
using testing::tiny::Trunk;
using testing::tiny::WriteMixtral;

// Mixtral with kExperts experts, top-2, whose router reads channel 0 only: logits
// (2, 1, 0, -1, -2) * h_0, so a token goes to experts {0, 1} or {3, 4} and expert 2 never
// receives one.
fs::path StarvedMixtral(const fs::path& dir) {
  std::mt19937 rng(5);
  Tensors t = Trunk(rng);
  std::vector<float> router(kExperts * kHidden, 0.0f);
  for (int64_t e = 0; e < kExperts; ++e) router[static_cast<size_t>(e * kHidden)] = 2.0f - e;
  return WriteMixtral(dir, rng, std::move(t), std::move(router));
}

std::vector<int32_t> Sequence(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> s = {1};
  for (int64_t i = 1; i < n; ++i) s.push_back(static_cast<int32_t>(3 + rng() % (kVocab - 3)));
  return s;
}

float MaxRel(const RowMatrixXf& a, const RowMatrixXf& b) {
  return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

TEST(Moe, OneExpertMixtralEqualsTheDenseModel) {
  // Top-1 of one expert, renormalised: weight 1, so the block is the dense SwiGLU block.
  testing::ScratchDir tmp;
  std::mt19937 rng(1);
  Tensors dense = Trunk(rng);
  const auto gate = Random(rng, kFfn * kHidden, 0.2f), up = Random(rng, kFfn * kHidden, 0.2f),
             down = Random(rng, kHidden * kFfn, 0.2f);
  Tensors moe = dense;
  dense.Add("model.layers.0.mlp.gate_proj.weight", {kFfn, kHidden}, gate);
  dense.Add("model.layers.0.mlp.up_proj.weight", {kFfn, kHidden}, up);
  dense.Add("model.layers.0.mlp.down_proj.weight", {kHidden, kFfn}, down);
  const std::string p = "model.layers.0.block_sparse_moe.";
  moe.Add(p + "gate.weight", {1, kHidden}, Random(rng, kHidden, 1.0f));
  moe.Add(p + "experts.0.w1.weight", {kFfn, kHidden}, gate);
  moe.Add(p + "experts.0.w3.weight", {kFfn, kHidden}, up);
  moe.Add(p + "experts.0.w2.weight", {kHidden, kFfn}, down);
  json mcfg = BaseConfig("MixtralForCausalLM", "mixtral");
  mcfg["num_local_experts"] = 1;
  mcfg["num_experts_per_tok"] = 1;
  const auto tokens = Sequence(20, 3);
  const RowMatrixXf a =
      Model(dense.Write(tmp / "dense", BaseConfig("MistralForCausalLM", "mistral"))).Logits(tokens);
  const RowMatrixXf b = Model(moe.Write(tmp / "moe", mcfg)).Logits(tokens);
  EXPECT_LT(MaxRel(b, a), 1e-5);
}

TEST(Moe, Qwen3MoeWithIdenticalExpertsEqualsOneExpert) {
  // Two identical experts, both chosen, renormalised (norm_topk_prob): weights sum to 1, so the
  // output is one expert's whatever the router says. Without renormalisation it is scaled by the
  // two probabilities' sum (< 1 with four experts), and the logits differ.
  testing::ScratchDir tmp;
  std::mt19937 rng(2);
  Tensors t = Trunk(rng);
  t.Add("model.layers.0.self_attn.q_norm.weight", {8}, Random(rng, 8, 0.3f, 0));
  t.Add("model.layers.0.self_attn.k_norm.weight", {8}, Random(rng, 8, 0.3f, 0));
  for (float& v : t.Get("model.layers.0.self_attn.q_norm.weight")) v += 1.0f;
  for (float& v : t.Get("model.layers.0.self_attn.k_norm.weight")) v += 1.0f;
  const auto gate = Random(rng, 24 * kHidden, 0.2f), up = Random(rng, 24 * kHidden, 0.2f),
             down = Random(rng, kHidden * 24, 0.2f);
  Tensors one = t, four = t;
  one.Add("model.layers.0.mlp.gate.weight", {1, kHidden}, Random(rng, kHidden, 1.0f));
  four.Add("model.layers.0.mlp.gate.weight", {4, kHidden}, Random(rng, 4 * kHidden, 1.0f));
  for (int e = 0; e < 4; ++e) {
    const std::string x = "model.layers.0.mlp.experts." + std::to_string(e) + ".";
    for (Tensors* m : {&one, &four}) {
      if (m == &one && e > 0) continue;
      m->Add(x + "gate_proj.weight", {24, kHidden}, gate);
      m->Add(x + "up_proj.weight", {24, kHidden}, up);
      m->Add(x + "down_proj.weight", {kHidden, 24}, down);
    }
  }
  json cfg = BaseConfig("Qwen3MoeForCausalLM", "qwen3_moe");
  cfg["head_dim"] = 8;
  cfg["moe_intermediate_size"] = 24;
  cfg["num_experts"] = 1;
  cfg["num_experts_per_tok"] = 1;
  cfg["norm_topk_prob"] = true;
  const auto tokens = Sequence(20, 4);
  const RowMatrixXf a = Model(one.Write(tmp / "one", cfg)).Logits(tokens);
  cfg["num_experts"] = 4;
  cfg["num_experts_per_tok"] = 2;
  const RowMatrixXf b = Model(four.Write(tmp / "norm", cfg)).Logits(tokens);
  EXPECT_LT(MaxRel(b, a), 1e-5);
  cfg["norm_topk_prob"] = false;
  const RowMatrixXf c = Model(four.Write(tmp / "raw", cfg)).Logits(tokens);
  EXPECT_GT(MaxRel(c, a), 1e-3);
}

TEST(Moe, ConfigKeysAreAccountedFor) {
  auto parse = [](const json& j) { return LlamaConfig::FromJson(j); };
  json q = BaseConfig("Qwen2MoeForCausalLM", "qwen2_moe");
  q.update({{"num_experts", 8},
            {"num_experts_per_tok", 2},
            {"moe_intermediate_size", 16},
            {"shared_expert_intermediate_size", 40},
            {"decoder_sparse_step", 2},
            {"mlp_only_layers", json::array()},
            {"norm_topk_prob", false},
            {"qkv_bias", true},
            {"router_aux_loss_coef", 0.001},
            {"output_router_logits", false},
            {"use_sliding_window", false},
            {"sliding_window", 4096},
            {"max_window_layers", 28}});
  q["num_hidden_layers"] = 4;
  const LlamaConfig c = parse(q);
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.shared_intermediate_size, 40);
  EXPECT_EQ(c.sliding_window, 0);
  // decoder_sparse_step 2: layers 1 and 3 are sparse.
  EXPECT_FALSE(c.IsMoeLayer(0));
  EXPECT_TRUE(c.IsMoeLayer(1));
  EXPECT_FALSE(c.IsMoeLayer(2));
  EXPECT_TRUE(c.IsMoeLayer(3));
  q["mlp_only_layers"] = {3};
  EXPECT_FALSE(parse(q).IsMoeLayer(3));
  json bad = q;
  bad["use_sliding_window"] = true;
  EXPECT_THROW(parse(bad), OptionError);
  bad = q;
  bad["num_experts_per_tok"] = 9;  // more than the experts
  EXPECT_THROW(parse(bad), FormatError);
  bad = q;
  bad["moe_router_bias"] = true;  // unknown: refused
  EXPECT_THROW(parse(bad), OptionError);
  bad = q;
  bad.erase("shared_expert_intermediate_size");
  EXPECT_THROW(parse(bad), FormatError);
  // Mixtral keys are not Qwen's.
  json m = BaseConfig("MixtralForCausalLM", "mixtral");
  m.update({{"num_local_experts", 8},
            {"num_experts_per_tok", 2},
            {"router_jitter_noise", 0.0},
            {"sliding_window", nullptr}});
  EXPECT_EQ(parse(m).moe.expert_intermediate_size, kFfn);
  EXPECT_TRUE(parse(m).moe.norm_topk_prob);
  m["moe_intermediate_size"] = 16;
  EXPECT_THROW(parse(m), OptionError);
  // Qwen3-MoE as transformers 5 writes it: num_local_experts; q/k norms implied.
  json q3 = BaseConfig("Qwen3MoeForCausalLM", "qwen3_moe");
  q3.update({{"num_local_experts", 4}, {"num_experts_per_tok", 2}, {"moe_intermediate_size", 8}});
  EXPECT_EQ(parse(q3).moe.num_experts, 4);
  EXPECT_TRUE(parse(q3).qk_norm);
  q3["num_experts"] = 5;
  EXPECT_THROW(parse(q3), FormatError);
}

// Calibration on the model whose expert 2 the router never selects.
struct Starved {
  testing::ScratchDir tmp;
  fs::path model = StarvedMixtral(tmp / "model");
  fs::path calib = tmp / "calib.tokens";
  Starved() {
    std::ofstream f(calib);
    for (const int32_t t : Sequence(3000, 9)) f << t << "\n";
  }
  solvers::CalibratedOptions Options(solvers::Method m, std::vector<solvers::ExpertReport>* out) {
    solvers::CalibratedOptions c;
    c.method = m;
    c.calib_text = calib;
    c.calib.num_samples = 8;
    c.calib.seq_len = 32;
    c.moe_min_tokens = 16;  // experts 0, 1, 3 and 4 each see about 128 of the 256 tokens
    c.on_expert = [out](const solvers::ExpertReport& e) { out->push_back(e); };
    return c;
  }
  QuantizeOptions Int4() const {
    QuantizeOptions q;
    q.format = IntFormat{.group = 16};
    q.threads = 2;
    return q;
  }
};

std::string ExpertWeight(int e, const char* w) {
  return "model.layers.0.block_sparse_moe.experts." + std::to_string(e) + "." + w + ".weight";
}

RowMatrixXf Read(const fs::path& dir, const std::string& name) {
  const Checkpoint ck = Checkpoint::Open(dir);
  const std::vector<int64_t> shape = LogicalShape(ck, name);
  const std::vector<float> v = ReadTensorF32(ck, name);
  return Eigen::Map<const RowMatrixXf>(v.data(), shape[0], shape[1]);
}

TEST(Moe, GptqCalibratesAnExpertNoTokenReachesOnAllTokens) {
  Starved s;
  std::vector<solvers::ExpertReport> experts;
  std::vector<solvers::LayerReport> layers;
  solvers::QuantizeCalibrated(s.model, s.tmp / "gptq", s.Int4(),
                              s.Options(solvers::Method::kGptq, &experts),
                              [&](const solvers::LayerReport& l) { layers.push_back(l); });
  QuantizeCheckpoint(Checkpoint::Open(s.model), s.tmp / "rtn", s.Int4());

  // The report: 256 tokens x top-2 over experts {0, 1} and {3, 4}; expert 2 none, with the
  // fallback on all 256 tokens.
  ASSERT_EQ(experts.size(), static_cast<size_t>(kExperts));
  int64_t routed = 0;
  for (const auto& e : experts) {
    routed += e.tokens;
    EXPECT_EQ(e.fallback, e.expert == 2) << e.expert;
  }
  EXPECT_EQ(routed, 8 * 32 * 2);
  EXPECT_EQ(experts[2].tokens, 0);
  EXPECT_EQ(experts[0].tokens, experts[1].tokens);
  EXPECT_EQ(experts[3].tokens, experts[4].tokens);
  EXPECT_GT(experts[0].tokens, 0);
  EXPECT_GT(experts[3].tokens, 0);
  EXPECT_EQ(experts[2].fallback_tokens, 8 * 32);
  EXPECT_EQ(experts[0].fallback_tokens, 0);
  bool named = false;
  for (const auto& l : layers) {
    if (l.name == "block_sparse_moe.experts.2.w2") {
      named = l.detail.find("fallback: all 256 tokens") != std::string::npos;
    }
  }
  EXPECT_TRUE(named);

  // Expert 2's weights come from GPTQ on the block's tokens: not the RTN weights, and a smaller
  // output error than RTN's on those tokens (the router's input, which every expert reads).
  const Model fp(s.model);
  CalibrationRunner run(fp, DrawCalibrationSamples(
                                [&] {
                                  std::vector<int32_t> ids;
                                  std::ifstream f(s.calib);
                                  for (int32_t t; f >> t;) ids.push_back(t);
                                  return ids;
                                }(),
                                {.num_samples = 8, .seq_len = 32, .bos = 1}));
  struct Keep : ActivationConsumer {
    RowMatrixXf x;
    void Consume(const Eigen::Ref<const RowMatrixXf>& r) override {
      x.conservativeResize(x.rows() + r.rows(), r.cols());
      x.bottomRows(r.rows()) = r;
    }
  } keep;
  run.Capture({{"block_sparse_moe.gate", {&keep}}});
  for (const char* w : {"w1", "w3"}) {
    const RowMatrixXf orig = Read(s.model, ExpertWeight(2, w));
    const RowMatrixXf gptq = Read(s.tmp / "gptq", ExpertWeight(2, w));
    const RowMatrixXf rtn = Read(s.tmp / "rtn", ExpertWeight(2, w));
    EXPECT_GT((gptq - rtn).cwiseAbs().maxCoeff(), 1e-4) << w;
    const double e_gptq = (keep.x * (gptq - orig).transpose()).squaredNorm();
    const double e_rtn = (keep.x * (rtn - orig).transpose()).squaredNorm();
    EXPECT_LT(e_gptq, e_rtn) << w;
  }
  const RowMatrixXf down_gptq = Read(s.tmp / "gptq", ExpertWeight(2, "w2"));
  EXPECT_GT((down_gptq - Read(s.tmp / "rtn", ExpertWeight(2, "w2"))).cwiseAbs().maxCoeff(), 1e-4);

  // The router is kept in full precision by default, and quantised when --include names it.
  const Checkpoint out = Checkpoint::Open(s.tmp / "gptq");
  EXPECT_NE(out.Find("model.layers.0.block_sparse_moe.gate.weight"), nullptr);
  EXPECT_EQ(out.Find("model.layers.0.self_attn.q_proj.weight"), nullptr);  // stored as parts
  QuantizeOptions with_router = s.Int4();
  with_router.include = {R"(block_sparse_moe\.gate\.weight$)"};
  QuantizeCheckpoint(Checkpoint::Open(s.model), s.tmp / "router", with_router);
  EXPECT_EQ(Checkpoint::Open(s.tmp / "router").Find("model.layers.0.block_sparse_moe.gate.weight"),
            nullptr);
}

TEST(Moe, AwqCalibratesAnExpertNoTokenReachesOnAllTokens) {
  Starved s;
  std::vector<solvers::ExpertReport> experts;
  std::vector<solvers::LayerReport> layers;
  solvers::QuantizeCalibrated(s.model, s.tmp / "awq", s.Int4(),
                              s.Options(solvers::Method::kAwq, &experts),
                              [&](const solvers::LayerReport& l) { layers.push_back(l); });
  ASSERT_EQ(experts.size(), static_cast<size_t>(kExperts));
  EXPECT_TRUE(experts[2].fallback);
  // Expert 2's up -> down scaling is scored on all 256 tokens: a positive output error (on its
  // routed tokens, none, it would be 0).
  bool named = false;
  for (const auto& l : layers) {
    if (l.name == "block_sparse_moe.experts.2.w2") {
      named = l.detail.find("fallback: all 256 tokens") != std::string::npos;
      EXPECT_GT(l.loss, 0);
    }
  }
  EXPECT_TRUE(named);
  // The router stays unquantised (its columns carry the post-attention norm's scaling exactly),
  // so the AWQ model is the original up to the experts' and attention's rounding.
  EXPECT_NE(Checkpoint::Open(s.tmp / "awq").Find("model.layers.0.block_sparse_moe.gate.weight"),
            nullptr);
  QuantizeCheckpoint(Checkpoint::Open(s.model), s.tmp / "rtn", s.Int4());
  const auto tokens = Sequence(24, 11);
  const RowMatrixXf a = Model(s.model).Logits(tokens), b = Model(s.tmp / "awq").Logits(tokens);
  const RowMatrixXf r = Model(s.tmp / "rtn").Logits(tokens);
  EXPECT_LT((b - a).norm(), (r - a).norm());
}

TEST(Moe, AwqLeavesOutTheValueFoldWhenValuesHaveABias) {
  // Qwen2-MoE (qkv_bias): scaling v_proj's rows by 1/s would need its bias scaled too.
  testing::ScratchDir tmp;
  std::mt19937 rng(8);
  Tensors t = Trunk(rng);
  for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
    const int64_t n = std::string(p) == "q_proj" ? kHidden : 16;
    t.Add(std::string("model.layers.0.self_attn.") + p + ".bias", {n}, Random(rng, n, 0.5f));
  }
  t.Add("model.layers.0.mlp.gate_proj.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
  t.Add("model.layers.0.mlp.up_proj.weight", {kFfn, kHidden}, Random(rng, kFfn * kHidden, 0.2f));
  t.Add("model.layers.0.mlp.down_proj.weight", {kHidden, kFfn}, Random(rng, kHidden * kFfn, 0.2f));
  const fs::path model = t.Write(tmp / "qwen2", BaseConfig("Qwen2ForCausalLM", "qwen2"));
  {
    std::ofstream f(tmp / "calib.tokens");
    for (const int32_t id : Sequence(1000, 12)) f << id << "\n";
  }
  solvers::CalibratedOptions c;
  c.method = solvers::Method::kAwq;
  c.calib_text = tmp / "calib.tokens";
  c.calib.num_samples = 8;
  c.calib.seq_len = 32;
  std::vector<solvers::LayerReport> layers;
  QuantizeOptions q8;
  q8.format = IntFormat{.bits = 8, .group = 16};
  solvers::QuantizeCalibrated(model, tmp / "awq", q8, c,
                              [&](const solvers::LayerReport& l) { layers.push_back(l); });
  bool skipped = false;
  for (const auto& l : layers) {
    if (l.name == "self_attn.o_proj") skipped = l.detail == "no scaling: v_proj has a bias";
  }
  EXPECT_TRUE(skipped);
  // At 8 bits AWQ's model is the original up to rounding.
  const auto tokens = Sequence(24, 13);
  EXPECT_LT(MaxRel(Model(tmp / "awq").Logits(tokens), Model(model).Logits(tokens)), 0.02);
}

TEST(Moe, SmoothQuantRefusesMoeBlocks) {
  Starved s;
  std::vector<solvers::ExpertReport> experts;
  QuantizeOptions q8 = s.Int4();
  q8.format = IntFormat{.bits = 8, .granularity = Granularity::kChannel};
  EXPECT_THROW(solvers::QuantizeCalibrated(s.model, s.tmp / "sq", q8,
                                           s.Options(solvers::Method::kSmoothQuant, &experts)),
               OptionError);
}

}  // namespace
}  // namespace qtool
