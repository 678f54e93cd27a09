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

  /// Accumulates n pairs. Partial sums run in float over independent lanes (so the compiler can
  /// vectorise the loop without reassociating) and are added in double every block, which keeps the
  /// totals accurate for any tensor size.
  void Add(const float* x, const float* y, int64_t count) {
    constexpr int kLanes = 16;
    constexpr int64_t kBlock = 1024;
    for (int64_t i0 = 0; i0 < count; i0 += kBlock) {
      const int64_t i1 = std::min(count, i0 + kBlock);
      float xx[kLanes] = {}, ee[kLanes] = {}, yy[kLanes] = {}, xy[kLanes] = {}, m[kLanes] = {};
      int64_t i = i0;
      for (; i + kLanes <= i1; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const float a = x[i + l], b = y[i + l], e = a - b;
          xx[l] += a * a;
          ee[l] += e * e;
          yy[l] += b * b;
          xy[l] += a * b;
          m[l] = std::max(m[l], std::fabs(e));
        }
      }
      for (int l = 0; i < i1; ++i, ++l) {
        const float a = x[i], b = y[i], e = a - b;
        xx[l] += a * a;
        ee[l] += e * e;
        yy[l] += b * b;
        xy[l] += a * b;
        m[l] = std::max(m[l], std::fabs(e));
      }
      for (int l = 0; l < kLanes; ++l) {
        sum_x2 += xx[l];
        sum_e2 += ee[l];
        sum_y2 += yy[l];
        sum_xy += xy[l];
        max_abs_err = std::max(max_abs_err, static_cast<double>(m[l]));
      }
    }
    n += count;
  }

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
