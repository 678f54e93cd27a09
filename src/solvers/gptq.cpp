#include "qtool/solvers/gptq.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"

namespace qtool::solvers {
namespace {

// Columns per inner lazy batch inside a block.
constexpr int64_t kSubBlock = 16;

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

GptqHessian PrepareGptq(const Eigen::Ref<const RowMatrixXf>& h, const GptqOptions& options) {
  const int64_t cols = h.rows();
  QTOOL_CHECK(h.cols() == cols, ShapeError, "GPTQ needs a square Hessian, got [{}, {}]", h.rows(),
              h.cols());
  QTOOL_CHECK(options.block_size >= 1, OptionError, "GPTQ block size must be at least 1");
  QTOOL_CHECK(options.damp >= 0, OptionError, "dampening must not be negative, got {}",
              options.damp);
  const int threads = ResolveThreads(options.threads);
  GptqHessian out;
  GptqStats& st = out.stats;
  RowMatrixXf hd = h;
  for (int64_t i = 0; i < cols; ++i) {
    if (hd(i, i) == 0.0f) {
      hd(i, i) = 1.0f;
      out.dead.push_back(i);
    }
  }
  st.dead_inputs = static_cast<int64_t>(out.dead.size());
  out.perm.resize(static_cast<size_t>(cols));
  std::iota(out.perm.begin(), out.perm.end(), int64_t{0});
  if (options.act_order) {
    std::stable_sort(out.perm.begin(), out.perm.end(),
                     [&](int64_t a, int64_t b) { return hd(a, a) > hd(b, b); });
    RowMatrixXf hp(cols, cols);
    for (int64_t i = 0; i < cols; ++i) {
      for (int64_t j = 0; j < cols; ++j) hp(i, j) = hd(out.perm[i], out.perm[j]);
    }
    hd.swap(hp);
  }
  // U: the upper Cholesky factor of (H + lambda I)^-1, via P (H + lambda I) P = L L^T and
  // U = P L^-1 P (P reverses the indices).
  const double mean_diag = cols > 0 ? static_cast<double>(hd.diagonal().mean()) : 0.0;
  RowMatrixXf& u = out.u;
  for (double damp = options.damp;; damp *= 10) {
    u = hd.reverse();
    u.diagonal().array() += static_cast<float>(damp * mean_diag);
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = CholeskyInPlace(u, threads);
    st.seconds_cholesky += Since(t0);
    if (ok) {
      st.damp = damp;
      break;
    }
    QTOOL_CHECK(st.damp_retries < kMaxDampRetries, NumericError,
                "GPTQ: the Hessian is not positive-definite even with dampening {:g}", damp);
    ++st.damp_retries;
  }
  hd.resize(0, 0);
  const double n3 = static_cast<double>(cols) * cols * cols;
  st.flop_cholesky = n3 / 3 * (st.damp_retries + 1);
  const auto t0 = std::chrono::steady_clock::now();
  u = InvertLower(u, threads).reverse();
  st.seconds_inverse = Since(t0);
  st.flop_inverse = n3 / 3;
  return out;
}

GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const Eigen::Ref<const RowMatrixXf>& h,
                const Grid& grid, const GptqOptions& options) {
  return Gptq(w, PrepareGptq(h, options), grid, options);
}

GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const GptqHessian& hessian,
                const Grid& grid, const GptqOptions& options) {
  const int64_t rows = w.rows(), cols = w.cols();
  QTOOL_CHECK(hessian.u.rows() == cols, ShapeError,
              "GPTQ of a [{}, {}] weight needs a [{}, {}] Hessian, got [{}, {}]", rows, cols, cols,
              cols, hessian.u.rows(), hessian.u.cols());
  const int threads = ResolveThreads(options.threads);
  const bool grouped = options.group_size > 0 && options.group_size < cols;
  const int64_t g = grouped ? options.group_size : std::max<int64_t>(cols, 1);
  const bool static_params = options.static_groups || !grouped;
  const RowMatrixXf& u = hessian.u;
  const std::vector<int64_t>& perm = hessian.perm;

  GptqResult result;
  result.stats = hessian.stats;
  GptqStats& st = result.stats;
  QuantizedMatrix& q = result.q;
  q.groups = (cols + g - 1) / g;
  q.params.resize(static_cast<size_t>(rows * q.groups));
  q.g_idx.resize(static_cast<size_t>(cols));

  // Working copy of W transposed (row j of wt is column j of W, contiguous over the output rows),
  // dead inputs zeroed; static group parameters come from it before reordering.
  RowMatrixXf wt = w.transpose();
  for (int64_t c : hessian.dead) wt.row(c).setZero();
  if (static_params) {
    std::vector<GridParams> p(static_cast<size_t>(rows));
    for (int64_t gi = 0; gi < q.groups; ++gi) {
      FitGroups(grid, &wt(gi * g, 0), rows, std::min(g, cols - gi * g), rows, options.mse,
                p.data());
      for (int64_t r = 0; r < rows; ++r) q.params[static_cast<size_t>(r * q.groups + gi)] = p[r];
    }
  }
  if (options.act_order) {
    RowMatrixXf tmp(cols, rows);
    for (int64_t j = 0; j < cols; ++j) tmp.row(j) = wt.row(perm[j]);
    wt.swap(tmp);
  }

  // The column sweep.
  // The column sweep. Output rows are independent (each only needs U and its own weights), so
  // each thread sweeps its own range of rows with single-threaded GEMMs.
  const auto t_sweep = std::chrono::steady_clock::now();
  const int64_t bs = options.block_size;
  std::vector<uint8_t> codes_t(static_cast<size_t>(rows * cols));
  for (int64_t j = 0; j < cols; ++j) {
    const int64_t group = static_params ? perm[j] / g : j / g;
    q.g_idx[static_cast<size_t>(perm[j])] = static_cast<int32_t>(group);
  }
  std::vector<double> losses(static_cast<size_t>(threads), 0.0);
  const int64_t row_chunk = std::max<int64_t>(32, (rows + threads - 1) / threads);
  ParallelFor(rows, row_chunk, threads, [&](int64_t r0, int64_t r1, int worker) {
    const int64_t nr = r1 - r0;
    RowMatrixXf err(std::min(bs, std::max<int64_t>(cols, 1)), nr);
    std::vector<GridParams> cur(static_cast<size_t>(nr));
    std::vector<float> deq(static_cast<size_t>(nr));
    int64_t cur_group = -1;
    double loss = 0;
    for (int64_t i1 = 0; i1 < cols; i1 += bs) {
      const int64_t i2 = std::min(cols, i1 + bs);
      for (int64_t s0 = i1; s0 < i2; s0 += kSubBlock) {
        const int64_t s1 = std::min(i2, s0 + kSubBlock);
        for (int64_t j = s0; j < s1; ++j) {
          const int64_t group = q.g_idx[static_cast<size_t>(perm[j])];
          if (!static_params && j % g == 0) {
            FitGroups(grid, &wt(j, r0), rows, std::min(g, cols - j), nr, options.mse, cur.data());
            for (int64_t r = 0; r < nr; ++r) {
              q.params[static_cast<size_t>((r0 + r) * q.groups + group)] = cur[r];
            }
          } else if (static_params && group != cur_group) {
            for (int64_t r = 0; r < nr; ++r) {
              cur[r] = q.params[static_cast<size_t>((r0 + r) * q.groups + group)];
            }
          }
          cur_group = group;
          float* wj = &wt(j, r0);
          grid.Quantize(wj, nr, cur.data(), &codes_t[static_cast<size_t>(j * rows + r0)],
                        deq.data());
          const float d = u(j, j);
          float* ej = &err(j - i1, 0);
          double col_loss = 0;
          for (int64_t r = 0; r < nr; ++r) {
            const float e = (wj[r] - deq[r]) / d;
            col_loss += static_cast<double>(e) * e;
            ej[r] = e;
            wj[r] = deq[r];
          }
          loss += col_loss / 2;
          for (int64_t jj = j + 1; jj < s1; ++jj) {
            const float c = u(j, jj);
            float* wjj = &wt(jj, r0);
            for (int64_t r = 0; r < nr; ++r) wjj[r] -= c * ej[r];
          }
        }
        // The rest of the block: wt[s1:i2] -= U[s0:s1, s1:i2]^T E[s0:s1].
        Gemm(i2 - s1, nr, s1 - s0, -1.0f, {&u(s0, s1), 1, cols}, {&err(s0 - i1, 0), nr, 1},
             &wt(s1, r0), rows, 1);
      }
      // The columns after the block: wt[i2:] -= U[i1:i2, i2:]^T E.
      Gemm(cols - i2, nr, i2 - i1, -1.0f, {&u(i1, i2), 1, cols}, {err.data(), nr, 1}, &wt(i2, r0),
           rows, 1);
    }
    losses[static_cast<size_t>(worker)] += loss;
  });
  double loss = 0;
  for (double l : losses) loss += l;
  st.loss = loss;
  st.seconds_sweep = Since(t_sweep);
  // Lazy updates (2 rows (cols - i2) block per block, about rows cols^2) and the in-block ones.
  st.flop_sweep = static_cast<double>(rows) * cols * (cols + bs);

  q.dequant.resize(rows, cols);
  q.codes.resize(static_cast<size_t>(rows * cols));
  for (int64_t j = 0; j < cols; ++j) {
    const int64_t c = perm[j];
    for (int64_t r = 0; r < rows; ++r) {
      q.dequant(r, c) = wt(j, r);
      q.codes[static_cast<size_t>(r * cols + c)] = codes_t[static_cast<size_t>(j * rows + r)];
    }
  }
  return result;
}

}  // namespace qtool::solvers
