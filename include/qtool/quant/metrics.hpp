// Error statistics of a reconstruction x^ of x.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

  /// Accumulates n pairs. Partial sums run in float over 8 lanes (two 4-wide vectors per sum,
  /// which fit the registers of every x86-64 and Arm CPU) and are added in double every block, so
  /// the loop is vectorised on the baseline ISA and the totals stay accurate for any tensor size.
  void Add(const float* x, const float* y, int64_t count) {
    using V4 = float __attribute__((vector_size(16)));
    using V4u = uint32_t __attribute__((vector_size(16)));
    constexpr int64_t kBlock = 1024;
    const V4u abs_mask = {0x7fffffffu, 0x7fffffffu, 0x7fffffffu, 0x7fffffffu};
    auto load = [](const float* p) {
      V4 v;
      std::memcpy(&v, p, sizeof(v));
      return v;
    };
    for (int64_t i0 = 0; i0 < count; i0 += kBlock) {
      const int64_t i1 = std::min(count, i0 + kBlock);
      V4 xx[2] = {}, ee[2] = {}, yy[2] = {}, xy[2] = {}, m[2] = {};
      int64_t i = i0;
      for (; i + 8 <= i1; i += 8) {
        for (int h = 0; h < 2; ++h) {
          const V4 a = load(x + i + 4 * h), b = load(y + i + 4 * h), e = a - b;
          const V4 ae = reinterpret_cast<V4>(reinterpret_cast<V4u>(e) & abs_mask);
          xx[h] += a * a;
          ee[h] += e * e;
          yy[h] += b * b;
          xy[h] += a * b;
          m[h] = m[h] < ae ? ae : m[h];
        }
      }
      float max_err = 0;
      for (int l = 0; l < 4; ++l) {
        for (int h = 0; h < 2; ++h) {
          sum_x2 += xx[h][l];
          sum_e2 += ee[h][l];
          sum_y2 += yy[h][l];
          sum_xy += xy[h][l];
          max_err = std::max(max_err, m[h][l]);
        }
      }
      for (; i < i1; ++i) {
        const float a = x[i], b = y[i], e = a - b;
        sum_x2 += a * a;
        sum_e2 += e * e;
        sum_y2 += b * b;
        sum_xy += a * b;
        max_err = std::max(max_err, std::fabs(e));
      }
      max_abs_err = std::max(max_abs_err, static_cast<double>(max_err));
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
