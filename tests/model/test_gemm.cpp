// The runtime's matrix product: every kernel this CPU runs, and the threaded product, against the
// portable reference and a double-precision product, at sizes around the tiles (6 and 8 rows),
// half panel (16 columns), panel (32 columns), row block (120 and 128) and depth block (256)
// boundaries.
#include <gtest/gtest.h>

#include <random>

#include "../../src/model/gemm.hpp"
#include "qtool/kernels.hpp"
#include "qtool/model/model.hpp"

namespace qtool {
namespace {

TEST(Gemm, KernelsMatchReferenceAndDoubleProduct) {
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
        for (const kernels::Isa isa : kernels::SupportedIsas()) {
          // Each panel written on its own, in a Y one column wider than the product, so that a
          // store past a panel's last column shows in the column after it.
          RowMatrixXf y = RowMatrixXf::Constant(m, n + 1, -7.0f);
          for (int64_t p = 0; p < packed.panels(); ++p) {
            gemm::KernelFor(isa)(x.data(), k, m, packed, p, p + 1, y.data(), n + 1);
          }
          EXPECT_LE((y.leftCols(n).cast<double>() - exact).cwiseAbs().maxCoeff(), tol)
              << kernels::IsaName(isa);
          EXPECT_TRUE((y.col(n).array() == -7.0f).all()) << kernels::IsaName(isa);
        }
        std::vector<float> row(static_cast<size_t>(k));
        packed.UnpackRow(n - 1, row.data());
        EXPECT_EQ(Eigen::Map<const Eigen::RowVectorXf>(row.data(), k), b.row(n - 1));
      }
    }
  }
}

}  // namespace
}  // namespace qtool
