#include "qtool/solvers/hessian.hpp"

#include "qtool/core/error.hpp"

namespace qtool::solvers {

HessianAccumulator::HessianAccumulator(int64_t cols, int threads)
    : sum_(RowMatrixXf::Zero(cols, cols)), threads_(threads) {}

void HessianAccumulator::Add(const Eigen::Ref<const RowMatrixXf>& x) {
  QTOOL_CHECK(x.cols() == cols(), ShapeError, "Hessian of {} inputs given rows of {}", cols(),
              x.cols());
  const int64_t ld = x.outerStride();
  // sum += X^T X: A = X^T (element (i, p) = x(p, i)), B = X.
  Gemm(cols(), cols(), x.rows(), 1.0f, {x.data(), 1, ld}, {x.data(), ld, 1}, sum_.data(), cols(),
       threads_, /*lower_only=*/true);
  samples_ += x.rows();
}

RowMatrixXf HessianAccumulator::Hessian() const {
  RowMatrixXf h = RowMatrixXf::Zero(cols(), cols());
  if (samples_ == 0) return h;
  h.triangularView<Eigen::Lower>() = sum_ * (2.0f / static_cast<float>(samples_));
  h.triangularView<Eigen::StrictlyUpper>() = h.transpose();
  return h;
}

}  // namespace qtool::solvers
