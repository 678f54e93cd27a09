#include "qtool/solvers/gptq.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/kernels/gemm.hpp"

namespace qtool::solvers {
namespace {

// Columns per inner lazy batch inside a block.
constexpr int64_t kSubBlock = 16;

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

GptqResult GptqSweep(const Eigen::Ref<const RowMatrixXf>& w, const GptqHessian& hessian,
                     const Grid* grid, BlockGrid* block_grid, const GptqOptions& options);

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
  double diag_sum = 0;
  for (int64_t i = 0; i < cols; ++i) {
    if (h(i, i) == 0.0f) {
      out.dead.push_back(i);
      diag_sum += 1.0;
    } else {
      diag_sum += h(i, i);
    }
  }
  st.dead_inputs = static_cast<int64_t>(out.dead.size());
  out.perm.resize(static_cast<size_t>(cols));
  std::iota(out.perm.begin(), out.perm.end(), int64_t{0});
  if (options.act_order) {
    auto diag = [&](int64_t c) { return h(c, c) == 0.0f ? 1.0f : h(c, c); };
    std::stable_sort(out.perm.begin(), out.perm.end(),
                     [&](int64_t a, int64_t b) { return diag(a) > diag(b); });
  }
  // r = P (H + lambda I) P with the processing order reversed (P: (i, j) -> (n-1-i, n-1-j)), then
  // r = L' L'^T; L = P L'^T P is lower triangular with H + lambda I = L^T L.
  const std::vector<int64_t>& perm = out.perm;
  auto at = [&](int64_t i) { return perm[static_cast<size_t>(cols - 1 - i)]; };
  const double mean_diag = cols > 0 ? diag_sum / static_cast<double>(cols) : 0.0;
  out.cols = cols;
  out.lt_storage = ScratchBuffer(static_cast<size_t>(cols * cols) * sizeof(float));
  Eigen::Map<RowMatrixXf> r(out.lt_storage.as<float>(), cols, cols);
  for (double damp = options.damp;; damp *= 10) {
    const float lambda = static_cast<float>(damp * mean_diag);
    ForEachTiled(cols, cols, threads, [&](int64_t i, int64_t j) {
      const float v = h(at(i), at(j));
      r(i, j) = i == j ? (v == 0.0f ? 1.0f : v) + lambda : v;
    });
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = CholeskyInPlace(r, threads);
    st.seconds_cholesky += Since(t0);
    if (ok) {
      st.damp = damp;
      break;
    }
    QTOOL_CHECK(st.damp_retries < kMaxDampRetries, NumericError,
                "GPTQ: the Hessian is not positive-definite even with dampening {:g}", damp);
    ++st.damp_retries;
  }
  st.flop_cholesky = static_cast<double>(cols) * cols * cols / 3 * (st.damp_retries + 1);
  // L^T(k, j) = L_jk = r(n-1-k, n-1-j): r turned by 180 degrees, i.e. rows k and n-1-k swapped
  // and each reversed. Then each column is divided by its diagonal entry.
  std::vector<float> inv_diag(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j)
    inv_diag[static_cast<size_t>(j)] = 1.0f / r(cols - 1 - j, cols - 1 - j);
  ParallelFor((cols + 1) / 2, 32, threads, [&](int64_t k0, int64_t k1, int) {
    std::vector<float> tmp(static_cast<size_t>(cols));
    auto finish = [&](int64_t k) {
      float* row = &r(k, 0);
      std::fill(row, row + k, 0.0f);
      for (int64_t j = k + 1; j < cols; ++j) row[j] *= inv_diag[static_cast<size_t>(j)];
    };
    for (int64_t k = k0; k < k1; ++k) {
      float* a = &r(k, 0);
      float* b = &r(cols - 1 - k, 0);
      if (a == b) {
        std::reverse(a, a + cols);
      } else {
        std::reverse_copy(b, b + cols, tmp.data());
        std::reverse_copy(a, a + cols, b);
        std::copy(tmp.begin(), tmp.end(), a);
        finish(cols - 1 - k);
      }
      finish(k);
    }
  });
  return out;
}

GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const Eigen::Ref<const RowMatrixXf>& h,
                const Grid& grid, const GptqOptions& options) {
  return Gptq(w, PrepareGptq(h, options), grid, options);
}

GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const GptqHessian& hessian,
                const Grid& grid, const GptqOptions& options) {
  return GptqSweep(w, hessian, &grid, nullptr, options);
}

GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const GptqHessian& hessian, BlockGrid& grid,
                const GptqOptions& options) {
  QTOOL_CHECK(!options.act_order && !options.static_groups, OptionError,
              "GPTQ against a block grid takes neither act-order nor static groups");
  QTOOL_CHECK(grid.block() >= 1 && w.cols() % grid.block() == 0, ShapeError,
              "GPTQ: {} columns are not a whole number of blocks of {}", w.cols(), grid.block());
  GptqOptions opt = options;
  opt.group_size = grid.block();
  return GptqSweep(w, hessian, nullptr, &grid, opt);
}

namespace {

// The sweep, against a Grid (parameters per group, FitGroups) or a BlockGrid (block_grid set:
// options.group_size is its block, fitted on the way).
GptqResult GptqSweep(const Eigen::Ref<const RowMatrixXf>& w, const GptqHessian& hessian,
                     const Grid* grid, BlockGrid* block_grid, const GptqOptions& options) {
  const int64_t rows = w.rows(), cols = w.cols();
  QTOOL_CHECK(hessian.cols == cols, ShapeError,
              "GPTQ of a [{}, {}] weight needs a [{}, {}] Hessian, got [{}, {}]", rows, cols, cols,
              cols, hessian.cols, hessian.cols);
  const int threads = ResolveThreads(options.threads);
  const bool grouped =
      block_grid != nullptr || (options.group_size > 0 && options.group_size < cols);
  const int64_t g = grouped ? options.group_size : std::max<int64_t>(cols, 1);
  const bool static_params = !grouped || (options.static_groups && block_grid == nullptr);
  const int64_t bs = options.block_size;
  const Eigen::Map<const RowMatrixXf> lt = hessian.lt();
  const std::vector<int64_t>& perm = hessian.perm;

  GptqResult result;
  result.stats = hessian.stats;
  GptqStats& st = result.stats;
  QuantizedMatrix& q = result.q;
  q.groups = (cols + g - 1) / g;
  if (block_grid == nullptr) q.params.resize(static_cast<size_t>(rows * q.groups));
  q.g_idx.resize(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    q.g_idx[static_cast<size_t>(perm[j])] =
        static_cast<int32_t>(static_params ? perm[j] / g : j / g);
  }
  q.dequant = LargeMatrix(rows, cols);
  q.codes.resize(static_cast<size_t>(rows * cols));

  const auto t_sweep = std::chrono::steady_clock::now();
  // Group parameters are fitted on the weights as the reference has them at the group's first
  // column t: w0 + z with (I + N) z = c, c the contributions of the columns before t (see above)
  // and N the strictly lower part of the group's diagonal block of L^. inv_unit[gi] = (I + N)^-1.
  std::vector<RowMatrixXf> inv_unit(static_params ? 0 : static_cast<size_t>(q.groups));
  ParallelFor(static_cast<int64_t>(inv_unit.size()), 1, threads, [&](int64_t g0, int64_t g1, int) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t t = gi * g, len = std::min(g, cols - t);
      RowMatrixXf n = lt.block(t, t, len, len).transpose();
      n.diagonal().setOnes();
      inv_unit[static_cast<size_t>(gi)] = InvertLower(n);
    }
  });

  // Output rows are independent (each only needs L^ and its own weights): each thread sweeps its
  // own range of rows, on its own transposed copies (row j: column j of W over the thread's rows)
  // with single-threaded GEMMs.
  std::vector<double> losses(static_cast<size_t>(threads), 0.0);
  const int64_t row_chunk = std::max<int64_t>(32, (rows + threads - 1) / threads);
  ParallelFor(rows, row_chunk, threads, [&](int64_t r0, int64_t r1, int worker) {
    const int64_t nr = r1 - r0;
    // wt: the original weights (dead inputs zeroed), each column replaced by its quantised values
    // once done. cd: for a column not yet done, the contributions of the columns done so far
    // (sum_k L^_jk d_k); for a column done, its error d = w0 - q.
    const size_t bytes = static_cast<size_t>(cols * nr) * sizeof(float);
    ScratchBuffer wt_storage(bytes), cd_storage(bytes), codes_storage(bytes / sizeof(float));
    Eigen::Map<RowMatrixXf> cd(cd_storage.as<float>(), cols, nr);
    std::fill_n(cd.data(), cd.size(), 0.0f);
    uint8_t* codes = codes_storage.as<uint8_t>();
    {
      Eigen::Map<RowMatrixXf> w0(wt_storage.as<float>(), cols, nr);
      gemm::Transpose(w.data() + r0 * w.outerStride(), w.outerStride(), nr, cols, w0.data(), nr);
      for (int64_t c : hessian.dead) w0.row(c).setZero();
    }
    std::vector<GridParams> cur(static_cast<size_t>(nr));
    auto params = [&](int64_t r, int64_t group) -> GridParams& {
      return q.params[static_cast<size_t>((r0 + r) * q.groups + group)];
    };
    if (static_params) {
      for (int64_t gi = 0; gi < q.groups; ++gi) {
        FitGroups(*grid, wt_storage.as<float>() + gi * g * nr, nr, std::min(g, cols - gi * g), nr,
                  options.mse, cur.data());
        for (int64_t r = 0; r < nr; ++r) params(r, gi) = cur[r];
      }
    }
    if (options.act_order) {
      ScratchBuffer permuted(bytes);
      const float* src = wt_storage.as<float>();
      for (int64_t j = 0; j < cols; ++j) {
        std::copy_n(src + perm[j] * nr, nr, permuted.as<float>() + j * nr);
      }
      wt_storage = std::move(permuted);
    }
    Eigen::Map<RowMatrixXf> wt(wt_storage.as<float>(), cols, nr);
    RowMatrixXf snap(static_params ? 0 : g, nr);
    std::vector<float> cur_w(static_cast<size_t>(nr)), deq(static_cast<size_t>(nr));
    int64_t cur_group = -1;
    double loss = 0;
    for (int64_t i1 = 0; i1 < cols; i1 += bs) {
      const int64_t i2 = std::min(cols, i1 + bs);
      for (int64_t s0 = i1; s0 < i2; s0 += kSubBlock) {
        // Sub-blocks start at every group start, where all earlier columns have contributed.
        const int64_t s1 = std::min({i2, s0 + kSubBlock, static_params ? cols : (s0 / g + 1) * g});
        for (int64_t j = s0; j < s1; ++j) {
          const int64_t group = q.g_idx[static_cast<size_t>(perm[j])];
          if (!static_params && j % g == 0) {
            const int64_t len = std::min(g, cols - j);
            snap.topRows(len) = wt.middleRows(j, len);
            Gemm(len, nr, len, 1.0f, {inv_unit[static_cast<size_t>(group)].data(), len, 1},
                 {&cd(j, 0), nr, 1}, snap.data(), nr, 1);
            if (block_grid != nullptr) {
              block_grid->Fit(group, snap.data(), nr, r0, nr);
            } else {
              FitGroups(*grid, snap.data(), nr, len, nr, options.mse, cur.data());
              for (int64_t r = 0; r < nr; ++r) params(r, group) = cur[r];
            }
          } else if (static_params && group != cur_group) {
            for (int64_t r = 0; r < nr; ++r) cur[r] = params(r, group);
          }
          cur_group = group;
          float* wj = &wt(j, 0);
          float* dj = &cd(j, 0);
          // The contributions of the sub-block's columns before j, left-looking (in the same
          // order as the block GEMMs add theirs): one row written, the earlier errors read.
          for (int64_t k = s0; k < j; ++k) {
            const float c = lt(k, j);
            const float* dk = &cd(k, 0);
            for (int64_t r = 0; r < nr; ++r) dj[r] += c * dk[r];
          }
          for (int64_t r = 0; r < nr; ++r) cur_w[r] = wj[r] + dj[r];
          if (block_grid != nullptr) {
            block_grid->Quantize(j, cur_w.data(), r0, nr, codes + j * nr, deq.data());
          } else {
            grid->Quantize(cur_w.data(), nr, cur.data(), codes + j * nr, deq.data());
          }
          // Squared rounding errors summed in eight float lanes (so that the loop vectorises),
          // the lanes added in double.
          constexpr int64_t kLanes = 8;
          float lane[kLanes] = {};
          double col_sq = 0;
          int64_t r = 0;
          for (; r + kLanes <= nr; r += kLanes) {
            for (int64_t t = 0; t < kLanes; ++t) {
              const float e = cur_w[r + t] - deq[r + t];
              lane[t] += e * e;
              dj[r + t] = wj[r + t] - deq[r + t];
              wj[r + t] = deq[r + t];
            }
          }
          for (; r < nr; ++r) {
            const float e = cur_w[r] - deq[r];
            col_sq += static_cast<double>(e) * e;
            dj[r] = wj[r] - deq[r];
            wj[r] = deq[r];
          }
          for (const float v : lane) col_sq += v;
          const double ljj = lt(j, j);
          loss += col_sq * ljj * ljj / 2;
        }
        // The rest of the block: C[s1:i2] += lt[s0:s1, s1:i2]^T D[s0:s1].
        Gemm(i2 - s1, nr, s1 - s0, 1.0f, {lt.data() + s0 * cols + s1, 1, cols}, {&cd(s0, 0), nr, 1},
             &cd(s1, 0), nr, 1);
      }
      // The columns after the block: C[i2:] += lt[i1:i2, i2:]^T D[i1:i2].
      Gemm(cols - i2, nr, i2 - i1, 1.0f, {lt.data() + i1 * cols + i2, 1, cols}, {&cd(i1, 0), nr, 1},
           &cd(i2, 0), nr, 1);
    }
    losses[static_cast<size_t>(worker)] += loss;
    // Back to the checkpoint's column order (act-order processed them permuted), then transposed.
    const float* wq = wt.data();
    const uint8_t* cq = codes;
    ScratchBuffer wq_storage, cq_storage;
    if (options.act_order) {
      wq_storage = ScratchBuffer(bytes);
      cq_storage = ScratchBuffer(bytes / sizeof(float));
      for (int64_t j = 0; j < cols; ++j) {
        std::copy_n(&wt(j, 0), nr, wq_storage.as<float>() + perm[j] * nr);
        std::copy_n(codes + j * nr, nr, cq_storage.as<uint8_t>() + perm[j] * nr);
      }
      wq = wq_storage.as<float>();
      cq = cq_storage.as<uint8_t>();
    }
    gemm::Transpose(wq, nr, cols, nr, &q.dequant(r0, 0), cols);
    gemm::Transpose(cq, nr, cols, nr, q.codes.data() + r0 * cols, cols);
  });
  double loss = 0;
  for (double v : losses) loss += v;
  st.loss = loss;
  st.seconds_sweep = Since(t_sweep);
  // Every column gets the contributions of the columns before it: about rows cols^2 (2 flop each
  // over half of the pairs).
  st.flop_sweep = static_cast<double>(rows) * cols * cols;
  return result;
}

}  // namespace

}  // namespace qtool::solvers
