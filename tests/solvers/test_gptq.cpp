// GPTQ against a plain per-column implementation of the paper's equations, its quality against
// round-to-nearest on heavy-tailed inputs with outlier channels, and its options.
#include <gtest/gtest.h>

#include <Eigen/Cholesky>
#include <Eigen/LU>
#include <random>

#include "qtool/core/error.hpp"
#include "qtool/solvers/gptq.hpp"
#include "qtool/solvers/hessian.hpp"
#include "solvers/synthetic_layer.hpp"

namespace qtool::solvers {
namespace {

using synthetic::GaussianWeights;
using synthetic::HeavyTailedInputs;
using synthetic::OutputError;

using MatrixXd = Eigen::MatrixXd;

RowMatrixXf HessianOf(const RowMatrixXf& x) {
  HessianAccumulator acc(x.cols(), 2);
  acc.Add(x);
  return acc.Hessian();
}

// The paper's algorithm without blocking or Cholesky: for each column q, quantise, spread the
// error with the inverse Hessian (dF = -(w_q - quant(w_q)) / [H^-1]_qq * H^-1_{:,q}), then remove q
// from the inverse (H^-1 <- H^-1 - H^-1_{:,q} H^-1_{q,:} / [H^-1]_qq). In double precision.
struct Plain {
  RowMatrixXf q;
  std::vector<uint8_t> codes;
};
Plain PlainGptq(const RowMatrixXf& w, const RowMatrixXf& h, const Grid& grid, int64_t g,
                double damp) {
  const int64_t rows = w.rows(), cols = w.cols();
  MatrixXd hd = h.cast<double>();
  hd.diagonal().array() += damp * hd.diagonal().mean();
  MatrixXd hinv = hd.inverse();
  MatrixXd wd = w.cast<double>();
  Plain out{RowMatrixXf(rows, cols), std::vector<uint8_t>(static_cast<size_t>(rows * cols))};
  std::vector<GridParams> p(static_cast<size_t>(rows));
  for (int64_t c = 0; c < cols; ++c) {
    if (c % g == 0) {
      const RowMatrixXf group = wd.middleCols(c, std::min(g, cols - c)).transpose().cast<float>();
      FitGroups(grid, group.data(), rows, group.rows(), rows, false, p.data());
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float x = static_cast<float>(wd(r, c));
      float deq;
      uint8_t code;
      grid.Quantize(&x, 1, &p[static_cast<size_t>(r)], &code, &deq);
      out.q(r, c) = deq;
      out.codes[static_cast<size_t>(r * cols + c)] = code;
      const double e = (wd(r, c) - deq) / hinv(c, c);
      wd.row(r) -= e * hinv.row(c);
    }
    hinv -= hinv.col(c) * hinv.row(c) / hinv(c, c);
  }
  return out;
}

TEST(GptqTest, MatchesThePlainPerColumnAlgorithm) {
  for (const bool nf4 : {false, true}) {
    const RowMatrixXf x = HeavyTailedInputs(600, 160, 11);
    const RowMatrixXf w = GaussianWeights(48, 160, 12);
    const RowMatrixXf h = HessianOf(x);
    std::unique_ptr<Grid> grid = nf4 ? MakeGrid("nf4", 4, true) : MakeGrid("int", 4, false);
    GptqOptions opt;
    opt.group_size = 32;
    opt.block_size = 64;
    const GptqResult got = Gptq(w, h, *grid, opt);
    const Plain want = PlainGptq(w, h, *grid, 32, opt.damp);
    int64_t same = 0;
    for (size_t i = 0; i < want.codes.size(); ++i) same += got.q.codes[i] == want.codes[i];
    EXPECT_GE(static_cast<double>(same) / static_cast<double>(want.codes.size()), 0.99)
        << grid->Name();
    const double e_got = OutputError(x, w, got.q.dequant), e_want = OutputError(x, w, want.q);
    EXPECT_NEAR(e_got, e_want, 0.02 * e_want) << grid->Name();
  }
}

TEST(GptqTest, CodesAndParametersDecodeToTheResult) {
  const RowMatrixXf x = HeavyTailedInputs(300, 100, 13);
  const RowMatrixXf w = GaussianWeights(24, 100, 14);
  const IntGrid grid(3, true);
  GptqOptions opt;
  opt.group_size = 16;
  opt.act_order = true;
  const GptqResult r = Gptq(w, HessianOf(x), grid, opt);
  ASSERT_EQ(r.q.groups, 7);
  for (int64_t i = 0; i < w.rows(); ++i) {
    for (int64_t c = 0; c < w.cols(); ++c) {
      const GridParams p =
          r.q.params[static_cast<size_t>(i * r.q.groups + r.q.g_idx[static_cast<size_t>(c)])];
      EXPECT_EQ(grid.Decode(r.q.codes[static_cast<size_t>(i * w.cols() + c)], p),
                r.q.dequant(i, c));
    }
  }
  // Act-order without static groups: every group still holds exactly 16 columns (the last 4).
  std::vector<int> count(7, 0);
  for (int32_t gi : r.q.g_idx) ++count[static_cast<size_t>(gi)];
  EXPECT_EQ(count[0], 16);
  EXPECT_EQ(count[6], 4);
}

struct QualityCase {
  const char* grid;
  int bits;
  bool sym;
  bool act_order, static_groups, mse;
};

class GptqQualityTest : public ::testing::TestWithParam<QualityCase> {};

// The synthetic check of the issue at a smaller size (512 x 1024, 512 input rows as in the
// reference's 2:1 ratio of inputs to rows, g128): GPTQ's relative output error is at most 0.3x
// round-to-nearest's. The reference at 4096 x 4096 with 2048 rows: RTN 1.96e-2, GPTQ 4.17e-3
// (0.21x).
TEST_P(GptqQualityTest, BeatsRoundToNearestOnHeavyTailedInputs) {
  const QualityCase c = GetParam();
  const RowMatrixXf x = HeavyTailedInputs(512, 1024, 21);
  const RowMatrixXf w = GaussianWeights(512, 1024, 22);
  const std::unique_ptr<Grid> grid = MakeGrid(c.grid, c.bits, c.sym);
  GptqOptions opt;
  opt.group_size = 128;
  opt.act_order = c.act_order;
  opt.static_groups = c.static_groups;
  opt.mse = c.mse;
  const GptqResult r = Gptq(w, HessianOf(x), *grid, opt);
  const double e_gptq = OutputError(x, w, r.q.dequant);
  const double e_rtn = OutputError(x, w, QuantizeRtn(w, *grid, 128).dequant);
  RecordProperty("rtn", std::to_string(e_rtn));
  RecordProperty("gptq", std::to_string(e_gptq));
  std::printf("%s act_order=%d static=%d mse=%d: RTN %.3e GPTQ %.3e (%.3fx), loss %.4g\n",
              grid->Name().c_str(), c.act_order, c.static_groups, c.mse, e_rtn, e_gptq,
              e_gptq / e_rtn, r.stats.loss);
  EXPECT_LE(e_gptq, 0.3 * e_rtn);
}

INSTANTIATE_TEST_SUITE_P(Grids, GptqQualityTest,
                         ::testing::Values(QualityCase{"int", 4, true, false, false, false},
                                           QualityCase{"int", 4, false, false, false, false},
                                           QualityCase{"int", 4, true, true, false, false},
                                           QualityCase{"int", 4, true, true, true, false},
                                           QualityCase{"int", 4, true, false, false, true},
                                           QualityCase{"int", 3, false, false, false, false},
                                           QualityCase{"nf4", 4, true, false, false, false},
                                           QualityCase{"fp4", 4, true, false, false, false}));

TEST(GptqTest, DeadInputsAreZeroed) {
  RowMatrixXf x = HeavyTailedInputs(200, 64, 31);
  x.col(5).setZero();
  x.col(40).setZero();
  const RowMatrixXf w = GaussianWeights(16, 64, 32);
  const IntGrid grid(4, true);
  GptqOptions opt;
  opt.group_size = 32;
  const GptqResult r = Gptq(w, HessianOf(x), grid, opt);
  EXPECT_EQ(r.stats.dead_inputs, 2);
  EXPECT_TRUE(r.q.dequant.col(5).isZero());
  EXPECT_TRUE(r.q.dequant.col(40).isZero());
}

TEST(GptqTest, RetriesWithMoreDampeningWhenCholeskyFails) {
  // Rank-deficient and slightly indefinite: fewer samples than inputs, minus a little diagonal.
  const RowMatrixXf x = HeavyTailedInputs(20, 64, 33);
  RowMatrixXf h = HessianOf(x);
  h.diagonal().array() -= 0.02f * h.diagonal().mean();
  const RowMatrixXf w = GaussianWeights(8, 64, 34);
  const IntGrid grid(4, true);
  GptqOptions opt;
  opt.damp = 0.001;
  const GptqResult r = Gptq(w, h, grid, opt);
  EXPECT_GE(r.stats.damp_retries, 1);
  EXPECT_GT(r.stats.damp, 0.02);
  EXPECT_TRUE(r.q.dequant.allFinite());
}

TEST(GptqTest, ThrowsWhenNoDampeningHelps) {
  RowMatrixXf h = RowMatrixXf::Identity(8, 8);
  h(3, 3) = -1e9f;
  const RowMatrixXf w = GaussianWeights(4, 8, 35);
  EXPECT_THROW(Gptq(w, h, IntGrid(4, true), GptqOptions{}), NumericError);
}

TEST(GptqTest, RejectsAMismatchedHessian) {
  const RowMatrixXf w = GaussianWeights(4, 8, 36);
  EXPECT_THROW(Gptq(w, RowMatrixXf::Identity(9, 9), IntGrid(4, true), GptqOptions{}), ShapeError);
}

}  // namespace
}  // namespace qtool::solvers
