// Dense single-precision linear algebra the solvers run on: a packed, blocked GEMM (AVX-512
// micro-kernel where the CPU has it), a blocked Cholesky factorisation and a blocked inverse of a
// lower-triangular matrix, both built on the GEMM so that nearly all their work runs at its speed.
//
// Op counts (n x n): Cholesky n^3/3, triangular inverse n^3/3, GEMM 2mnk.
#pragma once

#include <Eigen/Core>
#include <cstdint>

namespace qtool::solvers {

using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

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

/// Inverse of the lower-triangular `l` (its upper triangle is ignored); the result is lower
/// triangular. Blocked forward substitution with the right-hand side's updates as GEMMs.
RowMatrixXf InvertLower(const Eigen::Ref<const RowMatrixXf>& l, int threads);

}  // namespace qtool::solvers
