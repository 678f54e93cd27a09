// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers"): quantises a linear layer's weight W [rows, cols] column by column,
// spreading each column's rounding error over the columns not yet quantised so as to minimise
// ||X W^T - X W^^T||^2 for the layer's calibration inputs X, given H = 2/n X^T X.
//
// Algorithm (the reference implementation's, IST-DASLab/gptq, in an equivalent form that needs
// no matrix inverse):
// - dead inputs (H_ii = 0) get H_ii = 1 and their weights zeroed;
// - dampening H += lambda I, lambda = damp * mean(diag H); when the Cholesky factorisation fails
//   the dampening is retried at 10x (up to kMaxDampRetries times);
// - H = L^T L with L lower triangular (one Cholesky factorisation of H with its indices reversed).
//   The reference works with U, the upper Cholesky factor of H^-1; U = L^-T, so its update of the
//   remaining columns after rounding column q, w_j -= (w_q - q(w_q)) / U_qq * U_qj, adds up to,
//   by the time column j is rounded,
//       w_j = w0_j + sum_{k<j} L_jk / L_jj * (w0_k - q_k)
//   over the columns k already rounded (w0: the original weights). That is what runs here: the
//   contributions sum_k L^_jk (w0_k - q_k), L^_jk = L_jk / L_jj, are accumulated right-looking:
//   after each block of block_size columns, for every later column at once (a GEMM), and within
//   a block after each sub-block of 16 columns (again a GEMM);
// - group parameters are fitted on the current (updated) weights at each group's first column t,
//   i.e. on the reference's weights at that point, w0 + the solution z of the group's unit lower
//   triangular system (I + N) z = c (c: the contributions of the columns before t, N: the
//   strictly lower part of the group's diagonal block of L^), or up front on the original weights
//   (static groups);
//   act-order processes columns in order of decreasing H_ii, and g_idx records each column's
//   group.
// Loss: sum over rows and columns of (w - q)^2 / U_qq^2 / 2 = (w - q)^2 L_qq^2 / 2 (the
// reference's "error").
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "qtool/core/memory.hpp"
#include "qtool/solvers/grid.hpp"
#include "qtool/solvers/linalg.hpp"

namespace qtool::solvers {

struct GptqOptions {
  int64_t group_size = 128;  // <= 0 or >= cols: one group per row (parameters from all of W)
  int64_t block_size = 128;
  double damp = 0.01;          // relative dampening (percdamp)
  bool act_order = false;      // columns by decreasing H_ii
  bool static_groups = false;  // group parameters fitted up front on the original W
  bool mse = false;            // MSE grid search of each group's range
  int threads = 0;
};

struct GptqStats {
  double loss = 0;          // sum (w - q)^2 L_qq^2 / 2
  double damp = 0;          // relative dampening finally used
  int damp_retries = 0;     // Cholesky failures before it succeeded
  int64_t dead_inputs = 0;  // columns with H_ii = 0
  // Wall time and op count of each phase: Cholesky of H, the column sweep.
  double seconds_cholesky = 0, seconds_sweep = 0;
  double flop_cholesky = 0, flop_sweep = 0;
};

struct GptqResult {
  QuantizedMatrix q;
  GptqStats stats;
};

inline constexpr int kMaxDampRetries = 6;

/// What GPTQ needs of a Hessian, computed once for every layer that shares the input (q/k/v,
/// gate/up): the column order, the dead inputs and L.
struct GptqHessian {
  // L^T of H + lambda I = L^T L in processing order, each column divided by its diagonal entry
  // above the diagonal (lt(k, j) = L_jk / L_jj for k < j); the diagonal holds L_jj. Upper
  // triangular: the columns a rounded column k contributes to are a contiguous row.
  Eigen::Map<const RowMatrixXf> lt() const { return {lt_storage.as<const float>(), cols, cols}; }
  ScratchBuffer lt_storage;
  int64_t cols = 0;
  std::vector<int64_t> perm;  // processing position -> column
  std::vector<int64_t> dead;  // columns with H_ii = 0
  GptqStats stats;            // damp, retries, dead inputs, Cholesky timing
};

/// Dead inputs, act-order, dampening (with retries) and L of h [cols, cols] (the Hessian
/// 2/n X^T X). Throws OptionError on bad options, NumericError when h stays indefinite after every
/// dampening retry.
GptqHessian PrepareGptq(const Eigen::Ref<const RowMatrixXf>& h, const GptqOptions& options);

/// Quantises w [rows, cols] with a prepared Hessian. Throws ShapeError on mismatched shapes.
GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const GptqHessian& hessian,
                const Grid& grid, const GptqOptions& options);

/// A grid whose parameters belong to blocks of block() consecutive columns and may vary inside a
/// block (ggml's k-quants: a super-block scale over sub-block scales): GPTQ fits a block's
/// parameters for every row at the block's first column, from the weights updated by then, and
/// then quantises the block's columns one by one against them. Rows are split between threads:
/// Fit and Quantize are called concurrently for disjoint row ranges.
class BlockGrid {
 public:
  virtual ~BlockGrid() = default;
  virtual int64_t block() const = 0;
  /// Fits block `b` (columns [b * block(), (b + 1) * block())) for rows [r0, r0 + n): value c of
  /// row r0 + i is wt[c * ld + i].
  virtual void Fit(int64_t b, const float* wt, int64_t ld, int64_t r0, int64_t n) = 0;
  /// Codes and decoded values of column `col` for rows [r0, r0 + n), x[i] being row r0 + i's value,
  /// under the parameters of the block `col` is in (fitted before).
  virtual void Quantize(int64_t col, const float* x, int64_t r0, int64_t n, uint8_t* codes,
                        float* deq) const = 0;
};

/// GPTQ against a BlockGrid: columns in order (no act-order, which would need a column's block
/// stored with it), every block fitted on the way. The result has codes and decoded values, no
/// params. Throws OptionError with act_order or static_groups, ShapeError on mismatched shapes or
/// a column count that is not a whole number of blocks.
GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const GptqHessian& hessian, BlockGrid& grid,
                const GptqOptions& options);

/// PrepareGptq and Gptq in one call.
GptqResult Gptq(const Eigen::Ref<const RowMatrixXf>& w, const Eigen::Ref<const RowMatrixXf>& h,
                const Grid& grid, const GptqOptions& options);

}  // namespace qtool::solvers
