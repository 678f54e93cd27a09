// Error statistics of a reconstruction x^ of x.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace qtool {

/// Sums from which every reported error metric follows; merge partial sums from threads with +=.
/// AccumulateErrorsReference (below) and kernels::AccumulateErrors add n pairs (x, x^) to them.
struct ErrorStats {
  double sum_x2 = 0;  // sum x^2
  double sum_e2 = 0;  // sum (x - x^)^2
  double sum_y2 = 0;  // sum x^^2
  double sum_xy = 0;  // sum x * x^
  double max_abs_err = 0;
  int64_t n = 0;

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

/// The layout of the error sums, which every kernel path follows so that all give the same bits:
/// partial sums in 8 f32 lanes, filled 16 values a step, added to the f64 totals in lane order at
/// the end of each block of 1024 values. Element i of a block goes to lane ErrorLane(i): the 16
/// values of a step are four runs of 4, runs 0 and 1 go to lanes 0-3 and runs 2 and 3 to lanes 4-7
/// (so an 8-lane vector takes a step as two vectors holding runs 2q + h in its halves q, the order
/// in which AVX2 widens 16 bf16 values, and a 4-lane one as four runs). Each product is added with
/// one rounding (a fused multiply-add).
inline constexpr int64_t kErrorLanes = 8;
inline constexpr int64_t kErrorStep = 16;
inline constexpr int64_t kErrorBlock = 1024;
constexpr int64_t ErrorLane(int64_t i) { return i % 4 + 4 * (i / 8 % 2); }

/// Ends a block: the lanes' partial sums added to the totals in lane order. Always inlined: the
/// per-ISA kernel units call it too, and an out-of-line copy compiled with one unit's instruction
/// set must never serve another's.
[[gnu::always_inline]] inline void AddErrorLanes(const float* xx, const float* ee, const float* yy,
                                                 const float* xy, const float* m, ErrorStats* s) {
  float max_err = 0.0f;
  for (int64_t l = 0; l < kErrorLanes; ++l) {
    s->sum_x2 += xx[l];
    s->sum_e2 += ee[l];
    s->sum_y2 += yy[l];
    s->sum_xy += xy[l];
    max_err = std::max(max_err, m[l]);
  }
  s->max_abs_err = std::max(s->max_abs_err, static_cast<double>(max_err));
}

/// Adds the error sums of y against x (n pairs) to *s: the scalar definition of
/// kernels::AccumulateErrors, which the header-only templates and the reference kernels run.
inline void AccumulateErrorsReference(const float* x, const float* y, int64_t n, ErrorStats* s) {
  for (int64_t i0 = 0; i0 < n; i0 += kErrorBlock) {
    const int64_t len = std::min(kErrorBlock, n - i0);
    float xx[kErrorLanes] = {}, ee[kErrorLanes] = {}, yy[kErrorLanes] = {}, xy[kErrorLanes] = {},
          m[kErrorLanes] = {};
    for (int64_t i = 0; i < len; ++i) {
      const int64_t l = ErrorLane(i);
      const float a = x[i0 + i], b = y[i0 + i], e = a - b;
      xx[l] = std::fma(a, a, xx[l]);
      ee[l] = std::fma(e, e, ee[l]);
      yy[l] = std::fma(b, b, yy[l]);
      xy[l] = std::fma(a, b, xy[l]);
      m[l] = std::max(m[l], std::fabs(e));
    }
    AddErrorLanes(xx, ee, yy, xy, m, s);
  }
  s->n += n;
}

}  // namespace qtool
