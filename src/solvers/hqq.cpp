#include "qtool/solvers/hqq.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"

namespace qtool::solvers {
namespace {

// The reference caps the inverse scale (a constant group would otherwise divide by zero).
constexpr float kMaxInverseScale = 2e4f;

}  // namespace

QuantizedMatrix Hqq(const Eigen::Ref<const RowMatrixXf>& w, const HqqOptions& o, HqqStats* stats) {
  QTOOL_CHECK(o.bits >= 2 && o.bits <= 8, OptionError, "bits must be in 2..8, got {}", o.bits);
  QTOOL_CHECK(o.lp_norm > 0 && o.lp_norm <= 1 && o.beta > 0 && o.kappa > 1 && o.iters >= 1,
              OptionError, "HQQ needs 0 < p <= 1, beta > 0, kappa > 1 and iters >= 1");
  const int64_t rows = w.rows(), cols = w.cols();
  const int64_t g =
      o.group_size > 0 && o.group_size < cols ? o.group_size : std::max<int64_t>(cols, 1);
  const int64_t groups = (cols + g - 1) / g;
  const int64_t ngroups = rows * groups;
  const float umax = static_cast<float>((1 << o.bits) - 1);
  const int threads = ResolveThreads(o.threads);
  auto group_span = [&](int64_t k, int64_t* c0, int64_t* len) {
    *c0 = (k % groups) * g;
    *len = std::min(g, cols - *c0);
  };
  const float* base = w.data();
  const int64_t ld = w.outerStride();

  // Inverse scale s and zero z per group from the min-max range.
  std::vector<float> s(static_cast<size_t>(ngroups)), z(static_cast<size_t>(ngroups));
  for (int64_t k = 0; k < ngroups; ++k) {
    int64_t c0, len;
    group_span(k, &c0, &len);
    const float* x = base + (k / groups) * ld + c0;
    const auto [lo, hi] = std::minmax_element(x, x + len);
    const float range = *hi - *lo;
    s[k] = range > 0 ? std::min(umax / range, kMaxInverseScale) : kMaxInverseScale;
    z[k] = -*lo * s[k];
  }

  // One pass: the mean |W - W_r| under z, and the next zero-points into z_next.
  const int64_t chunk = std::max<int64_t>(1, 4096 / g);
  auto pass = [&](float beta, std::vector<float>* z_next) {
    std::vector<double> err(static_cast<size_t>(threads), 0.0);
    ParallelFor(ngroups, chunk, threads, [&](int64_t k0, int64_t k1, int worker) {
      double e_sum = 0;
      for (int64_t k = k0; k < k1; ++k) {
        int64_t c0, len;
        group_span(k, &c0, &len);
        const float* x = base + (k / groups) * ld + c0;
        double acc = 0;
        for (int64_t i = 0; i < len; ++i) {
          const float wq = std::clamp(std::nearbyint(x[i] * s[k] + z[k]), 0.0f, umax);
          const float e = x[i] - (wq - z[k]) / s[k];
          const float ae = std::abs(e);
          e_sum += ae;
          if (z_next) {
            const float shrunk = std::max(ae - std::pow(ae, o.lp_norm - 1) / beta, 0.0f);
            const float we = std::copysign(shrunk, e);
            acc += wq - (x[i] - we) * s[k];
          }
        }
        if (z_next) (*z_next)[k] = static_cast<float>(acc / static_cast<double>(len));
      }
      err[static_cast<size_t>(worker)] += e_sum;
    });
    double total = 0;
    for (double e : err) total += e;
    return total / static_cast<double>(std::max<int64_t>(rows * cols, 1));
  };

  HqqStats st;
  std::vector<float> z_next(static_cast<size_t>(ngroups));
  float beta = o.beta;
  double best = INFINITY;
  for (int it = 0; it < o.iters; ++it) {
    const double e = pass(beta, &z_next);
    if (it == 0) st.initial_error = e;
    if (o.early_stop && !(e < best)) break;  // z stays at the best zero-points seen
    best = e;
    st.final_error = e;
    z.swap(z_next);
    ++st.iterations;
    beta *= o.kappa;
  }
  if (!o.early_stop || st.iterations == o.iters) st.final_error = pass(beta, nullptr);
  if (stats) *stats = st;

  QuantizedMatrix q;
  q.groups = groups;
  q.dequant.resize(rows, cols);
  q.codes.resize(static_cast<size_t>(rows * cols));
  q.params.resize(static_cast<size_t>(ngroups));
  q.g_idx.resize(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) q.g_idx[static_cast<size_t>(c)] = static_cast<int32_t>(c / g);
  ParallelFor(ngroups, chunk, threads, [&](int64_t k0, int64_t k1, int) {
    for (int64_t k = k0; k < k1; ++k) {
      int64_t c0, len;
      group_span(k, &c0, &len);
      const int64_t r = k / groups;
      const float* x = base + r * ld + c0;
      float zk = z[k];
      if (o.integer_zero) zk = std::clamp(std::nearbyint(zk), 0.0f, umax);
      const float scale = 1.0f / s[k];
      q.params[static_cast<size_t>(k)] = {scale, zk};
      for (int64_t i = 0; i < len; ++i) {
        const float wq = std::clamp(std::nearbyint(x[i] * s[k] + zk), 0.0f, umax);
        q.codes[static_cast<size_t>(r * cols + c0 + i)] = static_cast<uint8_t>(wq);
        q.dequant(r, c0 + i) = (wq - zk) * scale;
      }
    }
  });
  return q;
}

}  // namespace qtool::solvers
