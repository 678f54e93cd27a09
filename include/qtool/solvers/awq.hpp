// The per-layer pieces of AWQ (Lin et al. 2023, "Activation-aware Weight Quantization") and
// SmoothQuant (Xiao et al. 2022): per-input-channel scales, and AWQ's clipping search. The block
// level search (which alpha, folding into the preceding operation) is in calibrated.cpp.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <functional>
#include <vector>

#include "qtool/solvers/grid.hpp"
#include "qtool/solvers/linalg.hpp"

namespace qtool::solvers {

/// SmoothQuant's scales for layers sharing an input: s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha),
/// the weight maximum taken over all the layers' column j; clamped to at least 1e-5 (and 1 where a
/// channel is dead in either). Folding: the preceding op's output / s, the layers' columns * s.
Eigen::VectorXf SmoothQuantScales(const Eigen::VectorXf& act_max,
                                  const std::vector<RowMatrixXf>& weights, double alpha);

/// AWQ's candidate scales for exponent alpha: s = mean|x|^alpha, normalised by sqrt(max s min s)
/// (so that they straddle 1); a channel with mean |x| = 0 is treated as the smallest non-zero one.
Eigen::VectorXf AwqScales(const Eigen::VectorXf& mean_abs, double alpha);

/// Rounds the columns of one group of a weight, every row [rows, group columns], as its codec
/// rounds them.
using GroupRounder = std::function<RowMatrixXf(const RowMatrixXf&)>;

/// AWQ's clipping search: for each output row and group, the clipping threshold
/// t = (1 - i / grid) max|w| (i < max_shrink * grid) whose weights, clamped to [-t, t] and rounded
/// by `round`, give the smallest mean squared error of that group's contribution to the outputs on
/// the sample inputs x [tokens, cols]. Returns w clamped to [-t, t] per group (the caller then
/// rounds it).
RowMatrixXf AwqClip(const RowMatrixXf& w, const RowMatrixXf& x, const GroupRounder& round,
                    int64_t group_size, int grid_points = 20, double max_shrink = 0.5);
/// AwqClip rounding each row of a group with `grid` over its min-max range.
RowMatrixXf AwqClip(const RowMatrixXf& w, const RowMatrixXf& x, const Grid& grid,
                    int64_t group_size, int grid_points = 20, double max_shrink = 0.5);

}  // namespace qtool::solvers
