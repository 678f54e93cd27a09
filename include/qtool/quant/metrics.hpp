// Error statistics of a reconstruction x^ of x.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace qtool {

/// Sums from which every reported error metric follows; merge partial sums from threads with +=.
struct ErrorStats {
  double sum_x2 = 0;  // sum x^2
  double sum_e2 = 0;  // sum (x - x^)^2
  double sum_y2 = 0;  // sum x^^2
  double sum_xy = 0;  // sum x * x^
  double max_abs_err = 0;
  int64_t n = 0;

  /// Accumulates n pairs (x, x^): partial sums in f32 over 8 lanes, added in f64 every 1024
  /// elements, so the sums are accurate for any tensor size and vectorised on every CPU
  /// (qtool::kernels::AccumulateErrors).
  void Add(const float* x, const float* y, int64_t count);

  ErrorStats& operator+=(const ErrorStats& o) {
    sum_x2 += o.sum_x2;
    sum_e2 += o.sum_e2;
    sum_y2 += o.sum_y2;
    sum_xy += o.sum_xy;
    max_abs_err = std::max(max_abs_err, o.max_abs_err);
    n += o.n;
    return *this;
  }

  double mse() const { return n ? sum_e2 / static_cast<double>(n) : 0.0; }
  double rmse() const { return std::sqrt(mse()); }
  /// Signal-to-quantisation-noise ratio, 10 log10(sum x^2 / sum e^2); +inf for an exact copy.
  double sqnr_db() const {
    if (sum_e2 == 0) return std::numeric_limits<double>::infinity();
    return 10.0 * std::log10(sum_x2 / sum_e2);
  }
  /// Cosine similarity of x and x^ (1 when both are zero).
  double cosine() const {
    if (sum_x2 == 0 && sum_y2 == 0) return 1.0;
    if (sum_x2 == 0 || sum_y2 == 0) return 0.0;
    return sum_xy / std::sqrt(sum_x2 * sum_y2);
  }
  /// ||x - x^||_F / ||x||_F (0 when x is zero and x^ equals it).
  double rel_frobenius() const {
    if (sum_x2 == 0) return sum_e2 == 0 ? 0.0 : std::numeric_limits<double>::infinity();
    return std::sqrt(sum_e2 / sum_x2);
  }
};

}  // namespace qtool
