#include "qtool/solvers/hessian.hpp"

#include <algorithm>

#include "qtool/core/error.hpp"

namespace qtool::solvers {

HessianAccumulator::HessianAccumulator(int64_t cols, int threads)
    : sum_(LargeMatrix(cols, cols)), threads_(threads) {
  std::fill_n(sum_.data(), sum_.size(), 0.0f);
}

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
  RowMatrixXf h = LargeMatrix(cols(), cols());
  const float scale = samples_ == 0 ? 0.0f : 2.0f / static_cast<float>(samples_);
  ForEachTiled(cols(), cols(), threads_, [&](int64_t i, int64_t j) {
    h(i, j) = sum_(std::max(i, j), std::min(i, j)) * scale;
  });
  return h;
}

}  // namespace qtool::solvers
