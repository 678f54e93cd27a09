// GPTQ against ggml's block grids (GgmlGrid), and GPTQ into GGUF:
// - with an identity Hessian (no error feedback) the blocks are byte for byte the reference
//   quantiser's (the RTN writer's) for every swept type: the grid, its parameters and its
//   roundings are the stored ones;
// - with a real Hessian the written blocks decode (ggml::Dequantize) to exactly the values the
//   sweep chose, and the output error on the calibration inputs is below RTN's for every type;
// - on a shared model, every Linear layer's output error on its calibration activations is lower
//   with GPTQ-GGUF than with RTN-GGUF;
// - the CLI writes a GGUF file with the RTN file's tensor types (GPTQ: other blocks in every
//   Linear layer, the rest identical; AWQ: rescaled weights and norms), and refuses --act-order
//   and the methods GGUF output does not take.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "qtool/core/error.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/model/capture.hpp"
#include "qtool/model/model.hpp"
#include "qtool/model/tokenizer.hpp"
#include "qtool/solvers/ggml_grid.hpp"
#include "qtool/solvers/gptq.hpp"
#include "synthetic_layer.hpp"
#include "test_support.hpp"

namespace qtool::solvers {
namespace {

namespace fs = std::filesystem;
using ggml::Type;

constexpr Type kSwept[] = {Type::kQ4_0, Type::kQ4_1, Type::kQ5_0,   Type::kQ5_1,
                           Type::kQ8_0, Type::kQ2_K, Type::kQ3_K,   Type::kQ4_K,
                           Type::kQ5_K, Type::kQ6_K, Type::kIQ4_NL, Type::kIQ4_XS};

// The reference quantiser's blocks of w, row by row (what the RTN GGUF writer stores).
std::vector<std::byte> ReferenceBlocks(Type type, const RowMatrixXf& w) {
  const size_t row_bytes = ggml::RowBytes(type, static_cast<uint64_t>(w.cols()));
  std::vector<std::byte> out(row_bytes * static_cast<size_t>(w.rows()));
  for (int64_t r = 0; r < w.rows(); ++r) {
    ggml::Quantize(type, &w(r, 0), out.data() + static_cast<size_t>(r) * row_bytes, w.cols());
  }
  return out;
}

RowMatrixXf Decode(Type type, const std::vector<std::byte>& blocks, int64_t rows, int64_t cols) {
  const size_t row_bytes = ggml::RowBytes(type, static_cast<uint64_t>(cols));
  RowMatrixXf y(rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    ggml::Dequantize(type, blocks.data() + static_cast<size_t>(r) * row_bytes, &y(r, 0), cols);
  }
  return y;
}

// Weights with what exercises the searches' corners: Gaussian values, a few outliers, an all-zero
// block, a sub-block of zeros and one of tiny values (sub-block scales that round to 0).
RowMatrixXf TestWeights(int64_t rows, int64_t cols, uint32_t seed) {
  RowMatrixXf w = synthetic::GaussianWeights(rows, cols, seed);
  std::mt19937 rng(seed);
  for (int k = 0; k < rows; ++k) w(k, static_cast<int64_t>(rng() % cols)) *= 12.0f;
  w.block(0, 0, 1, 256).setZero();
  w.block(1, 32, 1, 32).setZero();
  w.block(2, 64, 1, 16) *= 1e-4f;
  return w;
}

bool SameBits(const RowMatrixXf& a, const RowMatrixXf& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), static_cast<size_t>(a.size()) * sizeof(float)) == 0;
}

class GgmlGridTypeTest : public ::testing::TestWithParam<Type> {};

TEST_P(GgmlGridTypeTest, IdentityHessianGivesTheReferenceQuantisersBytes) {
  const Type type = GetParam();
  const int64_t rows = 24, cols = 512;
  const RowMatrixXf w = TestWeights(rows, cols, 7);
  const RowMatrixXf h = RowMatrixXf::Identity(cols, cols);
  GgmlGrid grid(type, rows, cols);
  GptqOptions opt;
  opt.threads = 2;
  const GptqResult r = Gptq(w, PrepareGptq(h, opt), grid, opt);
  const std::vector<std::byte> blocks = grid.Write(r.q.codes);
  const std::vector<std::byte> ref = ReferenceBlocks(type, w);
  ASSERT_EQ(blocks.size(), ref.size());
  size_t first_diff = blocks.size();
  for (size_t i = 0; i < blocks.size() && first_diff == blocks.size(); ++i) {
    if (blocks[i] != ref[i]) first_diff = i;
  }
  EXPECT_EQ(first_diff, blocks.size()) << ggml::Traits(type).name << ": first differing byte";
  EXPECT_TRUE(SameBits(Decode(type, blocks, rows, cols), r.q.dequant));
}

TEST_P(GgmlGridTypeTest, BlocksDecodeToTheSweepsValuesAndBeatRtn) {
  const Type type = GetParam();
  const int64_t rows = 64, cols = 512;
  const RowMatrixXf w = TestWeights(rows, cols, 11);
  const RowMatrixXf x = synthetic::HeavyTailedInputs(2048, cols, 3);
  const RowMatrixXf h = (2.0f / static_cast<float>(x.rows())) * (x.transpose() * x);
  GgmlGrid grid(type, rows, cols);
  GptqOptions opt;
  opt.threads = 2;
  const GptqResult r = Gptq(w, PrepareGptq(h, opt), grid, opt);
  const std::vector<std::byte> blocks = grid.Write(r.q.codes);
  const RowMatrixXf decoded = Decode(type, blocks, rows, cols);
  EXPECT_TRUE(SameBits(decoded, r.q.dequant)) << ggml::Traits(type).name;
  const RowMatrixXf rtn = Decode(type, ReferenceBlocks(type, w), rows, cols);
  const double e_gptq = synthetic::OutputError(x, w, decoded);
  const double e_rtn = synthetic::OutputError(x, w, rtn);
  EXPECT_LT(e_gptq, e_rtn) << ggml::Traits(type).name;
  RecordProperty("gptq_over_rtn", std::to_string(e_gptq / e_rtn));
}

INSTANTIATE_TEST_SUITE_P(Types, GgmlGridTypeTest, ::testing::ValuesIn(kSwept),
                         [](const ::testing::TestParamInfo<Type>& i) {
                           return std::string(ggml::Traits(i.param).name);
                         });

TEST(GgmlGridTest, RefusesWhatItCannotSweep) {
  EXPECT_THROW(GgmlGrid(Type::kF16, 4, 64), OptionError);
  EXPECT_THROW(GgmlGrid(Type::kTQ2_0, 4, 256), OptionError);
  EXPECT_THROW(GgmlGrid(Type::kQ4_K, 4, 288), ShapeError);
  GgmlGrid grid(Type::kQ4_0, 4, 64);
  const RowMatrixXf w = RowMatrixXf::Ones(4, 64);
  GptqOptions opt;
  opt.act_order = true;
  EXPECT_THROW(Gptq(w, PrepareGptq(RowMatrixXf::Identity(64, 64), opt), grid, opt), OptionError);
}

// A Linear layer's calibration inputs, all rows.
class RowCollector final : public ActivationConsumer {
 public:
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override {
    const int64_t n = rows_.rows();
    rows_.conservativeResize(n + x.rows(), x.cols());
    rows_.bottomRows(x.rows()) = x;
  }
  const RowMatrixXf& rows() const { return rows_; }

 private:
  RowMatrixXf rows_;
};

class GgufGptqModelTest : public ::testing::TestWithParam<Type> {};

// Each block's inputs come from the full-precision model, each Linear layer is solved on its own
// inputs: GPTQ's output error is below RTN's for every layer.
TEST_P(GgufGptqModelTest, EveryLayerBeatsRtnOnItsCalibrationInputs) {
  QTOOL_REQUIRE_SHARED();
  const Type type = GetParam();
  const fs::path dir = testing::SharedDir().value() / "models" / "babyllama-tok105" / "hf";
  const Model model(dir);
  const Tokenizer tok = LoadModelTokenizer(dir);
  const std::vector<int32_t> tokens =
      tok.Encode(testing::ReadFile(testing::SharedDir().value() / "data" / "stories-calib.txt"));
  CalibrationRunner run(model, DrawCalibrationSamples(tokens, {.num_samples = 16, .seq_len = 128}));
  const std::vector<std::vector<std::string>> groups = {
      {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
      {"self_attn.o_proj"},
      {"mlp.gate_proj", "mlp.up_proj"},
      {"mlp.down_proj"}};
  int layers = 0;
  while (!run.done()) {
    for (const auto& group : groups) {
      RowCollector x;
      run.Capture({{group[0], {&x}}});
      const RowMatrixXf h =
          (2.0f / static_cast<float>(x.rows().rows())) * (x.rows().transpose() * x.rows());
      GptqOptions opt;
      opt.threads = 2;
      const GptqHessian hessian = PrepareGptq(h, opt);
      for (const std::string& name : group) {
        const RowMatrixXf w = run.Weight(name);
        GgmlGrid grid(type, w.rows(), w.cols());
        const GptqResult r = Gptq(w, hessian, grid, opt);
        const RowMatrixXf q = Decode(type, grid.Write(r.q.codes), w.rows(), w.cols());
        const RowMatrixXf rtn = Decode(type, ReferenceBlocks(type, w), w.rows(), w.cols());
        EXPECT_LT(synthetic::OutputError(x.rows(), w, q), synthetic::OutputError(x.rows(), w, rtn))
            << "block " << run.block() << " " << name;
        ++layers;
      }
    }
    run.Advance();
  }
  EXPECT_EQ(layers, 7 * model.config().num_layers);
}

// babyllama's rows (128 and 352 values) are whole 32-blocks, not 256-blocks: the 32-block types.
INSTANTIATE_TEST_SUITE_P(Types, GgufGptqModelTest,
                         ::testing::Values(Type::kQ4_0, Type::kQ4_1, Type::kQ5_0, Type::kQ5_1,
                                           Type::kQ8_0, Type::kIQ4_NL),
                         [](const ::testing::TestParamInfo<Type>& i) {
                           return std::string(ggml::Traits(i.param).name);
                         });

TEST(GgufGptqCliTest, WritesTheRtnFilesTypesWithOtherBlocks) {
  QTOOL_REQUIRE_SHARED();
  const fs::path model = testing::SharedDir().value() / "models" / "babyllama-tok105" / "hf";
  const std::string calib = (testing::SharedDir().value() / "data" / "stories-calib.txt").string();
  testing::ScratchDir dir;
  const std::string rtn = (dir / "rtn.gguf").string(), gptq = (dir / "gptq.gguf").string();
  const auto a = testing::RunCli(
      {"quantize", model.string(), "-o", rtn, "--output-format", "gguf", "--gguf-type", "Q4_1"});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto b = testing::RunCli({"quantize", model.string(), "-o", gptq, "--output-format", "gguf",
                                  "--gguf-type", "Q4_1", "--method", "gptq", "--calib", calib,
                                  "--nsamples", "8", "--seqlen", "64"});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const gguf::File f_rtn(rtn), f_gptq(gptq);
  ASSERT_EQ(f_rtn.header().tensors.size(), f_gptq.header().tensors.size());
  int differ = 0;
  for (size_t i = 0; i < f_rtn.header().tensors.size(); ++i) {
    const gguf::TensorInfo& t = f_rtn.header().tensors[i];
    const gguf::TensorInfo& u = f_gptq.header().tensors[i];
    EXPECT_EQ(t.name, u.name);
    EXPECT_EQ(t.type, u.type) << t.name;
    EXPECT_EQ(t.ne, u.ne) << t.name;
    const bool linear = t.name.find("blk.") == 0 && t.ne.size() == 2;
    const auto x = f_rtn.Data(t), y = f_gptq.Data(u);
    const bool same = x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size()) == 0;
    if (linear) {
      differ += !same;
    } else {
      EXPECT_TRUE(same) << t.name << ": not a Linear layer, written by the export in both";
    }
  }
  EXPECT_EQ(differ, 7 * 5);
  // AWQ: rescaled weights and norms, the same tensor types.
  const std::string awq = (dir / "awq.gguf").string();
  const auto c = testing::RunCli({"quantize", model.string(), "-o", awq, "--output-format", "gguf",
                                  "--gguf-type", "Q4_1", "--method", "awq", "--calib", calib,
                                  "--nsamples", "8", "--seqlen", "64"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const gguf::File f_awq(awq);
  ASSERT_EQ(f_awq.tensors().size(), f_rtn.tensors().size());
  for (size_t i = 0; i < f_rtn.tensors().size(); ++i) {
    EXPECT_EQ(f_awq.tensors()[i].name, f_rtn.tensors()[i].name);
    EXPECT_EQ(f_awq.tensors()[i].type, f_rtn.tensors()[i].type);
  }
  const int option = static_cast<int>(ExitCode::kOption);
  EXPECT_EQ(testing::RunCli({"quantize", model.string(), "-o", (dir / "x.gguf").string(),
                             "--output-format", "gguf", "--gguf-type", "Q4_0", "--method", "gptq",
                             "--calib", calib, "--act-order"})
                .exit_code,
            option);
  EXPECT_EQ(testing::RunCli({"quantize", model.string(), "-o", (dir / "y.gguf").string(),
                             "--output-format", "gguf", "--gguf-type", "Q4_0", "--method",
                             "smoothquant", "--calib", calib})
                .exit_code,
            option);
  EXPECT_FALSE(fs::exists(dir / "x.gguf"));
}

}  // namespace
}  // namespace qtool::solvers
