// HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning Models"):
// calibration-free optimisation of each group's zero-point for an asymmetric integer grid.
//
// With W_q = clamp(round(W s + z), 0, 2^b - 1) and W_r = (W_q - z) / s (s the inverse scale from
// the group's min-max range), each iteration takes the lp-norm (p < 1) proximal step on the
// error, W_e = shrink_p(W - W_r, beta) = sign(e) max(|e| - |e|^(p-1) / beta, 0), then the
// closed-form zero-point z = mean(W_q - (W - W_e) s) per group, and beta *= kappa. The reference's
// defaults: p = 0.7, beta = 10, kappa = 1.01, 20 iterations, stopping early as soon as the mean
// |W - W_r| over the whole matrix stops decreasing (keeping the best zero-points).
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "qtool/solvers/grid.hpp"
#include "qtool/solvers/linalg.hpp"

namespace qtool::solvers {

struct HqqOptions {
  int bits = 4;
  int64_t group_size = 64;  // <= 0 or >= cols: one group per row
  float lp_norm = 0.7f;
  float beta = 10.0f;
  float kappa = 1.01f;
  int iters = 20;
  bool early_stop = true;
  // Round the zero-points to integers in [0, 2^b - 1] at the end (and re-round the codes), so that
  // the result is exactly representable by the asymmetric "int" codec.
  bool integer_zero = true;
  int threads = 0;
};

struct HqqStats {
  int iterations = 0;        // zero-point updates applied
  double initial_error = 0;  // mean |W - W_r| with the min-max zero-points
  double final_error = 0;    // the same with the chosen zero-points (before integer rounding)
};

/// HQQ of w [rows, cols]. The result's parameters follow IntGrid's convention
/// (x^ = (u - zero) * scale); zero is fractional unless options.integer_zero.
QuantizedMatrix Hqq(const Eigen::Ref<const RowMatrixXf>& w, const HqqOptions& options,
                    HqqStats* stats = nullptr);

}  // namespace qtool::solvers
