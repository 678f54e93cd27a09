// GPTQ into GGUF for mixture-of-experts blocks (Mixtral, Qwen2-MoE with its shared expert), on
// tiny random models 256 wide (every Linear a whole number of k-quant super-blocks) whose token
// embeddings have a low-rank structure plus noise (correlated Linear inputs, as real activations):
// - the file has the RTN export's tensors (names, types, shapes), the routers and the shared
//   expert's gate in F32 as RTN writes them, and every expert's slice of every stacked tensor
//   solved (other blocks than RTN's), with each expert reported on its routed tokens or, below
//   --moe-min-tokens, on the fallback;
// - read back by the GGUF import and run by the runtime, its next-token distributions on
//   held-out tokens are closer to the float model's (mean KL) than the RTN file's: on these
//   models 0.61x to 0.75x of RTN's at Q3_K and Q4_K_M, and below 0.86x with every other seed
//   of the models tried (ten).
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <span>

#include "model/tiny_models.hpp"
#include "qtool/format/ggml.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/gguf_import.hpp"
#include "qtool/model/gguf_params.hpp"
#include "qtool/model/model.hpp"
#include "qtool/solvers/gguf_calibrated.hpp"
#include "test_support.hpp"

namespace qtool::solvers {
namespace {
namespace gguf_moe_gptq {  // names of its own within a unity build

namespace fs = std::filesystem;
using testing::tiny::Random;
using testing::tiny::Tensors;
using testing::tiny::Trunk;

constexpr int64_t kWidth = 256, kVocabSize = 1024, kExperts = 4, kSamples = 48, kSeqLen = 64;

enum class Arch { kMixtral, kQwen2Moe };

struct Case {
  Arch arch;
  const char* type;
  // Calibration tokens below which an expert falls back to every token: with 48 x 64 tokens and
  // top-2 of 4, each expert is routed about 1536.
  int64_t moe_min_tokens;
};

fs::path WriteModel(Arch arch, const fs::path& dir) {
  std::mt19937 rng(arch == Arch::kMixtral ? 21 : 22);
  Tensors t = Trunk(rng, kWidth, kVocabSize);
  // Embeddings of a rank-16 structure plus noise: correlated inputs (a Hessian far from
  // diagonal, where GPTQ's error feedback counts) of full rank, as real models' are.
  const std::vector<float> u = Random(rng, kVocabSize * 16, 1), v = Random(rng, 16 * kWidth, 0.25f);
  std::vector<float>& e = t.Get("model.embed_tokens.weight");
  Eigen::Map<RowMatrixXf>(e.data(), kVocabSize, kWidth) =
      Eigen::Map<const RowMatrixXf>(u.data(), kVocabSize, 16) *
          Eigen::Map<const RowMatrixXf>(v.data(), 16, kWidth) +
      0.3f * Eigen::Map<RowMatrixXf>(e.data(), kVocabSize, kWidth);
  if (arch == Arch::kMixtral) {
    return testing::tiny::WriteMixtral(dir, rng, std::move(t), Random(rng, kExperts * kWidth, 1),
                                       kWidth);
  }
  return testing::tiny::WriteQwen2Moe(dir, rng, std::move(t), kExperts, kWidth, kWidth);
}

std::vector<int32_t> Sequence(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> s = {1};
  for (int64_t i = 1; i < n; ++i) s.push_back(static_cast<int32_t>(3 + rng() % (kVocabSize - 3)));
  return s;
}

// Mean KL divergence of the model at `dir`'s next-token distributions from the float model's over
// the held-out windows.
double MeanKl(const fs::path& dir, const Model& base) {
  const Model m(dir);
  double kl = 0;
  int64_t n = 0;
  for (uint32_t seed = 100; seed < 104; ++seed) {
    const std::vector<int32_t> tokens = Sequence(kSeqLen, seed);
    const Eigen::MatrixXd p = base.Logits(tokens).cast<double>(),
                          q = m.Logits(tokens).cast<double>();
    for (int64_t r = 0; r < p.rows(); ++r) {
      const Eigen::VectorXd lp = p.row(r).array() - p.row(r).maxCoeff();
      const Eigen::VectorXd lq = q.row(r).array() - q.row(r).maxCoeff();
      const Eigen::ArrayXd a = lp.array() - std::log(lp.array().exp().sum());
      const Eigen::ArrayXd b = lq.array() - std::log(lq.array().exp().sum());
      kl += (a.exp() * (a - b)).sum();
      ++n;
    }
  }
  return kl / static_cast<double>(n);
}

bool SameBytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

class GgufMoeGptqTest : public ::testing::TestWithParam<Case> {};

TEST_P(GgufMoeGptqTest, SolvesEveryExpertAndBeatsRtn) {
  const Case c = GetParam();
  testing::ScratchDir tmp;
  const fs::path model = WriteModel(c.arch, tmp / "model");
  {
    std::ofstream f(tmp / "calib.tokens");
    for (const int32_t t : Sequence(4000, 9)) f << t << "\n";
  }
  gguf::ExportOptions o;
  o.type = c.type;
  o.threads = 2;
  const fs::path rtn = tmp / "rtn.gguf", gptq = tmp / "gptq.gguf";
  gguf::ExportGguf(Checkpoint::Open(model), rtn, o);

  CalibratedOptions m;
  m.method = Method::kGptq;
  m.calib_text = tmp / "calib.tokens";
  m.calib.num_samples = kSamples;
  m.calib.seq_len = kSeqLen;
  m.moe_min_tokens = c.moe_min_tokens;
  std::vector<ExpertReport> experts;
  m.on_expert = [&](const ExpertReport& e) { experts.push_back(e); };
  std::vector<LayerReport> layers;
  QuantizeCalibratedGguf(model, gptq, o, m, [&](const LayerReport& r) { layers.push_back(r); });

  // Each expert on its routed tokens, or on all the block's tokens below the minimum.
  ASSERT_EQ(experts.size(), static_cast<size_t>(kExperts));
  int64_t routed = 0;
  for (const ExpertReport& e : experts) {
    EXPECT_EQ(e.fallback, e.tokens < c.moe_min_tokens) << "expert " << e.expert;
    EXPECT_EQ(e.fallback_tokens, e.fallback ? kSamples * kSeqLen : 0);
    routed += e.tokens;
  }
  EXPECT_EQ(routed, 2 * kSamples * kSeqLen);  // top-2
  // Every Linear of the block solved once; the experts' layers with their routing in the report.
  const size_t dense_layers = c.arch == Arch::kMixtral ? 5 : 9;  // attention, router, shared
  ASSERT_EQ(layers.size(), dense_layers + 3 * kExperts);
  int expert_layers = 0;
  for (const LayerReport& r : layers) {
    if (r.name.find("experts.") == std::string::npos) continue;
    ++expert_layers;
    EXPECT_NE(r.detail.find("expert "), std::string::npos) << r.name << ": " << r.detail;
    EXPECT_GT(r.loss, 0) << r.name;
  }
  EXPECT_EQ(expert_layers, 3 * kExperts);

  const gguf::File a(rtn), b(gptq);
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  int solved = 0;
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    const gguf::TensorInfo& t = a.tensors()[i];
    const gguf::TensorInfo& u = b.tensors()[i];
    ASSERT_EQ(t.name, u.name);
    EXPECT_EQ(t.type, u.type) << t.name;
    EXPECT_EQ(t.ne, u.ne) << t.name;
    const bool router = t.name.find("ffn_gate_inp") != std::string::npos;
    const bool linear = t.name.starts_with("blk.") && t.ne.size() >= 2 && !router;
    if (router) {
      EXPECT_EQ(t.type, ggml::Type::kF32) << t.name;
    }
    if (!linear) {
      EXPECT_TRUE(SameBytes(a.Data(t), b.Data(u))) << t.name << ": written by the export in both";
      continue;
    }
    ++solved;
    // Every slice (expert) of a stacked tensor differs from RTN's.
    const size_t slices = t.ne.size() == 3 ? t.ne[2] : 1, slice = t.nbytes / slices;
    for (size_t e = 0; e < slices; ++e) {
      EXPECT_FALSE(
          SameBytes(a.Data(t).subspan(e * slice, slice), b.Data(u).subspan(e * slice, slice)))
          << t.name << " slice " << e;
    }
  }
  EXPECT_EQ(solved, c.arch == Arch::kMixtral ? 7 : 10);
  if (c.arch == Arch::kQwen2Moe) {
    const gguf::TensorInfo* gate = b.header().FindTensor("blk.0.ffn_gate_inp_shexp.weight");
    ASSERT_NE(gate, nullptr);
    EXPECT_EQ(gate->type, ggml::Type::kF32);
    EXPECT_EQ(gate->ne, std::vector<uint64_t>{kWidth});
  }

  // Read back by the import and run: GPTQ's logits are closer to the float model's.
  gguf::ImportGguf(gguf::SplitFile(rtn), tmp / "rtn", false);
  gguf::ImportGguf(gguf::SplitFile(gptq), tmp / "gptq", false);
  const Model base(model);
  const double e_rtn = MeanKl(tmp / "rtn", base), e_gptq = MeanKl(tmp / "gptq", base);
  RecordProperty("rtn", std::to_string(e_rtn));
  RecordProperty("gptq", std::to_string(e_gptq));
  std::printf("%s %s: mean KL from the float model: RTN %.6g, GPTQ %.6g (%.2fx)\n",
              c.arch == Arch::kMixtral ? "Mixtral" : "Qwen2-MoE", c.type, e_rtn, e_gptq,
              e_gptq / e_rtn);
  EXPECT_LT(e_gptq, 0.9 * e_rtn);
}

INSTANTIATE_TEST_SUITE_P(Models, GgufMoeGptqTest,
                         ::testing::Values(Case{Arch::kMixtral, "Q3_K", kDefaultMoeMinTokens},
                                           Case{Arch::kMixtral, "Q4_K_M", 100000},
                                           Case{Arch::kQwen2Moe, "Q3_K", 100000},
                                           Case{Arch::kQwen2Moe, "Q4_K_M", kDefaultMoeMinTokens}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(i.param.arch == Arch::kMixtral ? "Mixtral"
                                                                             : "Qwen2Moe") +
                                  "_" + i.param.type +
                                  (i.param.moe_min_tokens > kSamples * kSeqLen ? "_Fallback" : "");
                         });

}  // namespace gguf_moe_gptq
}  // namespace
}  // namespace qtool::solvers
