// The GPTQ Hessian of a linear layer's inputs, H = 2/n sum_i x_i x_i^T over n input rows.
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "qtool/solvers/linalg.hpp"

namespace qtool::solvers {

/// Accumulates sum x x^T from batches of input rows (a symmetric rank-k update on the solvers'
/// GEMM, lower triangle only: cols^2 * n flop per n rows).
///
///   HessianAccumulator acc(4096);
///   acc.Add(x);                        // x: [tokens, 4096], any number of calls
///   RowMatrixXf h = acc.Hessian();     // 2/n X^T X
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t cols, int threads = 0);
  /// Adds the rows of x (each one input vector of length cols). Throws ShapeError on a width
  /// mismatch.
  void Add(const Eigen::Ref<const RowMatrixXf>& x);
  int64_t samples() const { return samples_; }
  int64_t cols() const { return sum_.rows(); }
  /// 2/n sum x x^T (full symmetric matrix); zero when no rows were added.
  RowMatrixXf Hessian() const;

 private:
  RowMatrixXf sum_;  // lower triangle of sum x x^T
  int64_t samples_ = 0;
  int threads_;
};

}  // namespace qtool::solvers
