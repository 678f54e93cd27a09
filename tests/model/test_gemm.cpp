// The runtime's matrix product: the vector kernel against the portable reference and against a
// double-precision product, at sizes around the tile (8 rows), panel (32 columns) and depth block
// (256) boundaries.
#include <gtest/gtest.h>

#include <random>

#include "../../src/model/gemm.hpp"
#include "qtool/model/model.hpp"

namespace qtool {
namespace {

TEST(Gemm, KernelsMatchReferenceAndDoubleProduct) {
  std::mt19937 rng(42);
  std::normal_distribution<float> dist;
  for (const int64_t m : {1, 7, 8, 9, 33, 130}) {
    for (const int64_t n : {1, 31, 32, 33, 65}) {
      for (const int64_t k : {1, 17, 256, 257, 600}) {
        SCOPED_TRACE(::testing::Message() << m << "x" << n << "x" << k);
        RowMatrixXf x(m, k), b(n, k);
        for (auto* v : {&x, &b}) {
          for (Eigen::Index i = 0; i < v->size(); ++i) v->data()[i] = dist(rng);
        }
        const gemm::PackedMatrix packed = gemm::Pack(b.data(), n, k);
        RowMatrixXf ref(m, n), fast(m, n);
        gemm::PanelsRef(x.data(), k, m, packed, 0, packed.panels(), ref.data(), n);
        gemm::MatMul(x.data(), k, m, packed, fast.data(), n, 2);
        const Eigen::MatrixXd exact = x.cast<double>() * b.cast<double>().transpose();
        const double tol = 1e-5 * std::sqrt(static_cast<double>(k)) + 1e-6;
        EXPECT_LE((ref.cast<double>() - exact).cwiseAbs().maxCoeff(), tol);
        EXPECT_LE((fast.cast<double>() - exact).cwiseAbs().maxCoeff(), tol);
        std::vector<float> row(static_cast<size_t>(k));
        packed.UnpackRow(n - 1, row.data());
        EXPECT_EQ(Eigen::Map<const Eigen::RowVectorXf>(row.data(), k), b.row(n - 1));
      }
    }
  }
}

}  // namespace
}  // namespace qtool
