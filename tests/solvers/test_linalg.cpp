// The solvers' dense kernels against Eigen's: GEMM over tile edges and strided views, the blocked
// Cholesky factorisation, the small triangular inverse, the tiled walk, the Hessian accumulator.
#include <gtest/gtest.h>

#include <Eigen/Cholesky>
#include <algorithm>
#include <random>
#include <utility>
#include <vector>

#include "qtool/solvers/hessian.hpp"
#include "qtool/solvers/linalg.hpp"

namespace qtool::solvers {
namespace {

using MatrixXd = Eigen::MatrixXd;

RowMatrixXf RandomMatrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  RowMatrixXf m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
  return m;
}

RowMatrixXf RandomSpd(int64_t n, uint32_t seed) {
  const RowMatrixXf x = RandomMatrix(2 * n + 3, n, seed);
  RowMatrixXf h = (x.transpose() * x) / static_cast<float>(x.rows());
  h.diagonal().array() += 0.05f;
  return h;
}

double RelErr(const MatrixXd& a, const MatrixXd& b) { return (a - b).norm() / b.norm(); }

struct GemmCase {
  int64_t m, n, k;
};

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmTest, MatchesEigenForEveryOperandLayout) {
  const auto [m, n, k] = GetParam();
  const RowMatrixXf a = RandomMatrix(m, k, 1), b = RandomMatrix(k, n, 2);
  const RowMatrixXf at = a.transpose(), bt = b.transpose();
  const RowMatrixXf c0 = RandomMatrix(m, n, 3);
  const MatrixXd want = c0.cast<double>() - 0.5 * a.cast<double>() * b.cast<double>();
  for (int layout = 0; layout < 4; ++layout) {
    const StridedView av = layout & 1 ? StridedView{at.data(), 1, m} : StridedView{a.data(), k, 1};
    const StridedView bv = layout & 2 ? StridedView{bt.data(), 1, k} : StridedView{b.data(), n, 1};
    RowMatrixXf c = c0;
    Gemm(m, n, k, -0.5f, av, bv, c.data(), n, 2);
    EXPECT_LT(RelErr(c.cast<double>(), want), 1e-5) << "layout " << layout;
  }
}

TEST_P(GemmTest, LowerOnlyComputesTheLowerTriangle) {
  const auto [m, n, k] = GetParam();
  const RowMatrixXf a = RandomMatrix(m, k, 4);
  RowMatrixXf c = RowMatrixXf::Zero(m, m);
  Gemm(m, m, k, 1.0f, {a.data(), k, 1}, {a.data(), 1, k}, c.data(), m, 2, true);
  const MatrixXd want = a.cast<double>() * a.cast<double>().transpose();
  MatrixXd got = c.cast<double>();
  got.triangularView<Eigen::StrictlyUpper>() = want.triangularView<Eigen::StrictlyUpper>();
  EXPECT_LT(RelErr(got, want), 1e-5);
  (void)n;
}

INSTANTIATE_TEST_SUITE_P(Sizes, GemmTest,
                         ::testing::Values(GemmCase{1, 1, 1}, GemmCase{7, 31, 5},
                                           GemmCase{8, 32, 192}, GemmCase{9, 33, 193},
                                           GemmCase{65, 63, 64}, GemmCase{97, 513, 200},
                                           GemmCase{300, 1100, 17}));

class FactorTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(FactorTest, CholeskyMatchesEigen) {
  const int64_t n = GetParam();
  const RowMatrixXf h = RandomSpd(n, 5);
  RowMatrixXf l = h;
  ASSERT_TRUE(CholeskyInPlace(l, 2));
  const MatrixXd want = Eigen::LLT<MatrixXd>(h.cast<double>()).matrixL();
  EXPECT_LT(RelErr(l.cast<double>(), want), 1e-4);
}

TEST_P(FactorTest, InvertLowerMatchesEigen) {
  const int64_t n = GetParam();
  RowMatrixXf l = RandomSpd(n, 6);
  ASSERT_TRUE(CholeskyInPlace(l, 2));
  const RowMatrixXf x = InvertLower(l);
  const MatrixXd ld = l.cast<double>();
  const MatrixXd want = ld.triangularView<Eigen::Lower>().solve(MatrixXd::Identity(n, n));
  EXPECT_LT(RelErr(x.cast<double>(), want), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Sizes, FactorTest, ::testing::Values(1, 7, 33, 128, 130, 300));

TEST(TiledTest, VisitsEveryIndexOnce) {
  for (const auto& [rows, cols] :
       {std::pair<int64_t, int64_t>{1, 1}, {31, 33}, {64, 7}, {100, 65}}) {
    std::vector<int> seen(static_cast<size_t>(rows * cols), 0);
    ForEachTiled(rows, cols, 2,
                 [&](int64_t i, int64_t j) { ++seen[static_cast<size_t>(i * cols + j)]; });
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), rows * cols) << rows << " x " << cols;
  }
}

TEST(FactorTest, CholeskyRejectsAnIndefiniteMatrix) {
  RowMatrixXf h = RandomSpd(40, 7);
  h(20, 20) = -1.0f;
  EXPECT_FALSE(CholeskyInPlace(h, 1));
}

TEST(HessianTest, AccumulatesTwoOverNXtX) {
  const RowMatrixXf x1 = RandomMatrix(50, 70, 8), x2 = RandomMatrix(13, 70, 9);
  HessianAccumulator acc(70, 2);
  acc.Add(x1);
  acc.Add(x2);
  EXPECT_EQ(acc.samples(), 63);
  MatrixXd x(63, 70);
  x << x1.cast<double>(), x2.cast<double>();
  const MatrixXd want = 2.0 / 63 * x.transpose() * x;
  EXPECT_LT(RelErr(acc.Hessian().cast<double>(), want), 1e-5);
}

}  // namespace
}  // namespace qtool::solvers
