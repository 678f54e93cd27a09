// The runtime's matrix product: the reference panel kernel and the threaded product of the active
// family against a double-precision product, at sizes around the tiles (6 and 8 rows), half panel
// (16 columns), panel (32 columns), row block (120 and 128) and depth block (256) boundaries. Each
// family's panel kernel against the reference: tests/kernels/test_float_kernels.cpp.
#include <gtest/gtest.h>

#include <random>

#include "qtool/kernels/gemm.hpp"
#include "qtool/model/model.hpp"

namespace qtool {
namespace {

TEST(Gemm, ReferenceAndThreadedProductMatchTheDoubleProduct) {
  std::mt19937 rng(42);
  std::normal_distribution<float> dist;
  for (const int64_t m : {1, 5, 6, 7, 8, 9, 33, 121, 130}) {
    for (const int64_t n : {1, 9, 16, 17, 31, 32, 33, 65}) {
      for (const int64_t k : {1, 17, 256, 257, 600}) {
        SCOPED_TRACE(::testing::Message() << m << "x" << n << "x" << k);
        RowMatrixXf x(m, k), b(n, k);
        for (auto* v : {&x, &b}) {
          for (Eigen::Index i = 0; i < v->size(); ++i) v->data()[i] = dist(rng);
        }
        const gemm::PackedMatrix packed = gemm::Pack(b.data(), n, k);
        RowMatrixXf ref(m, n), threaded(m, n);
        gemm::PanelsRef(x.data(), k, m, packed, 0, packed.panels(), ref.data(), n);
        gemm::MatMul(x.data(), k, m, packed, threaded.data(), n, 2);
        const Eigen::MatrixXd exact = x.cast<double>() * b.cast<double>().transpose();
        const double tol = 1e-5 * std::sqrt(static_cast<double>(k)) + 1e-6;
        EXPECT_LE((ref.cast<double>() - exact).cwiseAbs().maxCoeff(), tol);
        EXPECT_LE((threaded.cast<double>() - exact).cwiseAbs().maxCoeff(), tol);
        std::vector<float> row(static_cast<size_t>(k));
        packed.UnpackRow(n - 1, row.data());
        EXPECT_EQ(Eigen::Map<const Eigen::RowVectorXf>(row.data(), k), b.row(n - 1));
      }
    }
  }
}

}  // namespace
}  // namespace qtool
