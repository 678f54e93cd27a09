// Dense single-precision linear algebra the solvers run on: a packed, blocked GEMM (its
// micro-kernel is a kernel-table entry, qtool/kernels/gemm.hpp) and a blocked Cholesky
// factorisation built on it so that nearly all its work runs at the GEMM's speed.
//
// Op counts (n x n): Cholesky n^3/3, GEMM 2mnk.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

#include "qtool/core/parallel.hpp"

namespace qtool::solvers {

using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A rows x cols matrix with unspecified contents, its memory advised for transparent huge pages
/// (core/memory.hpp) before anything touches it: for the solvers' matrices of tens of megabytes.
RowMatrixXf LargeMatrix(int64_t rows, int64_t cols);

/// A read-only matrix view with arbitrary strides: element (i, j) is data[i * rs + j * cs]. A
/// row-major matrix with leading dimension ld is {p, ld, 1}; its transpose is {p, 1, ld}.
struct StridedView {
  const float* data;
  int64_t rs, cs;
};

/// C[m x n] += alpha * A[m x k] * B[k x n], C row-major with leading dimension ldc. With
/// `lower_only`, only the entries on or below the diagonal of C are guaranteed (some above it may
/// be written too): used for symmetric rank-k updates. Runs on `threads` threads (0: all).
void Gemm(int64_t m, int64_t n, int64_t k, float alpha, StridedView a, StridedView b, float* c,
          int64_t ldc, int threads, bool lower_only = false);

/// Replaces the lower triangle of the symmetric positive-definite `a` by its Cholesky factor L
/// (a = L L^T) and zeroes the strict upper triangle. Returns false, leaving `a` unspecified, when a
/// pivot is not positive (the matrix is not numerically positive-definite).
bool CholeskyInPlace(Eigen::Ref<RowMatrixXf> a, int threads);

/// Inverse of the small lower-triangular `l` (its upper triangle is ignored) by forward
/// substitution in double precision, n^3/6 multiply-adds: for blocks of a few hundred rows.
RowMatrixXf InvertLower(const Eigen::Ref<const RowMatrixXf>& l);

/// Calls fn(i, j) for every i in [0, rows) and j in [0, cols), tile by tile (32 x 32, tile rows
/// spread over `threads`): a copy that reads one matrix by rows and writes another by columns
/// (a transpose) then touches both a few cache lines at a time.
template <typename Fn>
void ForEachTiled(int64_t rows, int64_t cols, int threads, Fn&& fn) {
  constexpr int64_t kTile = 32;
  ParallelFor((rows + kTile - 1) / kTile, 1, threads, [&](int64_t t0, int64_t t1, int) {
    for (int64_t i0 = t0 * kTile; i0 < std::min(rows, t1 * kTile); i0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile);
      for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
        const int64_t j1 = std::min(cols, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = j0; j < j1; ++j) fn(i, j);
        }
      }
    }
  });
}

}  // namespace qtool::solvers
