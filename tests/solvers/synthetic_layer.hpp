// A synthetic linear layer for the solvers' tests and benchmarks: Gaussian weights and
// calibration inputs with the statistics that make data-aware quantisation matter.
#pragma once

#include <Eigen/Core>
#include <random>

#include "qtool/solvers/linalg.hpp"

namespace qtool::solvers::synthetic {

// Calibration inputs like a transformer layer's: correlated channels (a 64-dimensional
// Student-t (3 dof) latent mixed into every channel, plus independent Student-t noise), a spread of
// per-channel scales, and every 97th channel scaled by 20 (the outlier features of LLM
// activations).
inline RowMatrixXf HeavyTailedInputs(int64_t n, int64_t cols, uint32_t seed) {
  constexpr int64_t kLatent = 64;
  std::mt19937 rng(seed);
  std::student_t_distribution<float> t(3.0f);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  RowMatrixXf mix(kLatent, cols), latent(n, kLatent), x(n, cols);
  for (int64_t i = 0; i < mix.size(); ++i) mix.data()[i] = normal(rng) / 8.0f;
  for (int64_t i = 0; i < latent.size(); ++i) latent.data()[i] = t(rng);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = 0.5f * t(rng);
  x.noalias() += latent * mix;
  for (int64_t j = 0; j < cols; ++j) x.col(j) *= u(rng) * (j % 97 == 0 ? 20.0f : 1.0f);
  return x;
}

inline RowMatrixXf GaussianWeights(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  RowMatrixXf w(rows, cols);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = d(rng);
  return w;
}

// ||X W^T - X W^^T||^2 / ||X W^T||^2
inline double OutputError(const RowMatrixXf& x, const RowMatrixXf& w, const RowMatrixXf& wq) {
  const Eigen::MatrixXd xd = x.cast<double>();
  const Eigen::MatrixXd y = xd * w.cast<double>().transpose();
  const Eigen::MatrixXd yq = xd * wq.cast<double>().transpose();
  return (y - yq).squaredNorm() / y.squaredNorm();
}

}  // namespace qtool::solvers::synthetic
