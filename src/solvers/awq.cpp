#include "qtool/solvers/awq.hpp"

#include <algorithm>
#include <cmath>

#include "qtool/core/error.hpp"

namespace qtool::solvers {

Eigen::VectorXf SmoothQuantScales(const Eigen::VectorXf& act_max,
                                  const std::vector<RowMatrixXf>& weights, double alpha) {
  const int64_t n = act_max.size();
  Eigen::VectorXf w_max = Eigen::VectorXf::Zero(n);
  for (const RowMatrixXf& w : weights) {
    QTOOL_CHECK(w.cols() == n, ShapeError, "SmoothQuant: a layer has {} inputs, expected {}",
                w.cols(), n);
    w_max = w_max.cwiseMax(w.cwiseAbs().colwise().maxCoeff().transpose());
  }
  Eigen::VectorXf s(n);
  for (int64_t j = 0; j < n; ++j) {
    if (!(act_max[j] > 0) || !(w_max[j] > 0)) {
      s[j] = 1.0f;
      continue;
    }
    const double v = std::pow(static_cast<double>(act_max[j]), alpha) /
                     std::pow(static_cast<double>(w_max[j]), 1.0 - alpha);
    s[j] = static_cast<float>(std::max(v, 1e-5));
  }
  return s;
}

Eigen::VectorXf AwqScales(const Eigen::VectorXf& mean_abs, double alpha) {
  float floor = INFINITY;
  for (float v : mean_abs) {
    if (v > 0) floor = std::min(floor, v);
  }
  if (!std::isfinite(floor)) return Eigen::VectorXf::Ones(mean_abs.size());
  Eigen::VectorXf s(mean_abs.size());
  for (int64_t j = 0; j < s.size(); ++j) {
    s[j] = static_cast<float>(std::pow(static_cast<double>(std::max(mean_abs[j], floor)), alpha));
  }
  s /= std::sqrt(s.maxCoeff() * s.minCoeff());
  return s;
}

RowMatrixXf AwqClip(const RowMatrixXf& w, const RowMatrixXf& x, const Grid& grid,
                    int64_t group_size, int grid_points, double max_shrink) {
  std::vector<GridParams> p;
  std::vector<uint8_t> codes;
  const GroupRounder round = [&](const RowMatrixXf& cand) {
    const int64_t len = cand.cols();
    RowMatrixXf qc(cand.rows(), len);
    p.resize(static_cast<size_t>(len));
    codes.resize(static_cast<size_t>(len));
    for (int64_t r = 0; r < cand.rows(); ++r) {
      const GridParams gp = grid.FromRange(cand.row(r).minCoeff(), cand.row(r).maxCoeff());
      std::fill(p.begin(), p.end(), gp);
      grid.Quantize(&cand(r, 0), len, p.data(), codes.data(), &qc(r, 0));
    }
    return qc;
  };
  return AwqClip(w, x, round, group_size, grid_points, max_shrink);
}

RowMatrixXf AwqClip(const RowMatrixXf& w, const RowMatrixXf& x, const GroupRounder& round,
                    int64_t group_size, int grid_points, double max_shrink) {
  const int64_t rows = w.rows(), cols = w.cols();
  QTOOL_CHECK(x.cols() == cols, ShapeError, "AWQ clip: inputs have {} channels, weights {}",
              x.cols(), cols);
  const int64_t g = group_size > 0 && group_size < cols ? group_size : std::max<int64_t>(cols, 1);
  RowMatrixXf out = w;
  const int steps = std::max(1, static_cast<int>(max_shrink * grid_points));
  for (int64_t g0 = 0; g0 < cols; g0 += g) {
    const int64_t len = std::min(g, cols - g0);
    const auto xg = x.middleCols(g0, len);
    const RowMatrixXf wg = w.middleCols(g0, len);
    const RowMatrixXf ref = xg * wg.transpose();  // [tokens, rows]
    const Eigen::VectorXf amax = wg.cwiseAbs().rowwise().maxCoeff();
    Eigen::VectorXf best_err = Eigen::VectorXf::Constant(rows, INFINITY);
    Eigen::VectorXf best_t = amax;
    RowMatrixXf cand(rows, len);
    for (int i = 0; i < steps; ++i) {
      const float shrink = static_cast<float>(1.0 - static_cast<double>(i) / grid_points);
      for (int64_t r = 0; r < rows; ++r) {
        const float t = amax[r] * shrink;
        for (int64_t c = 0; c < len; ++c) cand(r, c) = std::clamp(wg(r, c), -t, t);
      }
      const RowMatrixXf qc = round(cand);
      const Eigen::VectorXf err = (xg * qc.transpose() - ref).colwise().squaredNorm().transpose() /
                                  static_cast<float>(std::max<int64_t>(x.rows(), 1));
      for (int64_t r = 0; r < rows; ++r) {
        if (err[r] < best_err[r]) {
          best_err[r] = err[r];
          best_t[r] = amax[r] * shrink;
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < len; ++c)
        out(r, g0 + c) = std::clamp(wg(r, c), -best_t[r], best_t[r]);
    }
  }
  return out;
}

}  // namespace qtool::solvers
