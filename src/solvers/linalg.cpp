#include "qtool/solvers/linalg.hpp"

#include <Eigen/Cholesky>
#include <algorithm>
#include <memory>

#include "qtool/core/memory.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/kernels/gemm.hpp"

namespace qtool::solvers {
namespace {

using gemm::kMr;
using gemm::kNr;

// Cache blocking (Goto's scheme): a kKc x kNr panel of B stays in L1 while the kMc x kKc block of A
// streams from L2; a work item owns a kNc-wide column block of C.
constexpr int64_t kKc = 192;
constexpr int64_t kMc = 96;
constexpr int64_t kNc = 1024;
// Column block of the blocked Cholesky factorisation.
constexpr int64_t kNb = 128;

// Packs rows [i0, i0 + mc) x columns [p0, p0 + kc) of A as panels of kMr rows (zero padded).
void PackA(StridedView a, int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* out) {
  for (int64_t t = 0; t < mc; t += kMr) {
    const int64_t mr = std::min(kMr, mc - t);
    float* o = out + t * kc;
    if (a.cs == 1) {
      // Eight rows read side by side, the panel written in order.
      const float* row[kMr];
      for (int64_t i = 0; i < kMr; ++i)
        row[i] = a.data + (i0 + t + std::min(i, mr - 1)) * a.rs + p0;
      for (int64_t p = 0; p < kc; ++p) {
        for (int64_t i = 0; i < kMr; ++i) o[p * kMr + i] = i < mr ? row[i][p] : 0.0f;
      }
    } else if (a.rs == 1 && mr == kMr) {
      // Columns of A contiguous (the transpose of a row-major matrix): kMr values per step.
      for (int64_t p = 0; p < kc; ++p) {
        std::copy_n(a.data + i0 + t + (p0 + p) * a.cs, kMr, o + p * kMr);
      }
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        const float* col = a.data + (i0 + t) * a.rs + (p0 + p) * a.cs;
        for (int64_t i = 0; i < mr; ++i) o[p * kMr + i] = col[i * a.rs];
        for (int64_t i = mr; i < kMr; ++i) o[p * kMr + i] = 0.0f;
      }
    }
  }
}

// Packs rows [p0, p0 + kc) x columns [j0, j0 + nc) of B as panels of kNr columns (zero padded).
void PackB(StridedView b, int64_t p0, int64_t kc, int64_t j0, int64_t nc, float* out) {
  for (int64_t t = 0; t < nc; t += kNr) {
    const int64_t nr = std::min(kNr, nc - t);
    float* o = out + t * kc;
    if (b.cs == 1 && nr == kNr) {
      for (int64_t p = 0; p < kc; ++p)
        std::copy_n(b.data + (p0 + p) * b.rs + j0 + t, kNr, o + p * kNr);
    } else if (b.cs == 1) {
      for (int64_t p = 0; p < kc; ++p) {
        const float* row = b.data + (p0 + p) * b.rs + j0 + t;
        for (int64_t j = 0; j < nr; ++j) o[p * kNr + j] = row[j];
        for (int64_t j = nr; j < kNr; ++j) o[p * kNr + j] = 0.0f;
      }
    } else {
      for (int64_t j = 0; j < kNr; ++j) {
        const float* col = b.data + p0 * b.rs + (j0 + t + j) * b.cs;
        if (j < nr) {
          for (int64_t p = 0; p < kc; ++p) o[p * kNr + j] = col[p * b.rs];
        } else {
          for (int64_t p = 0; p < kc; ++p) o[p * kNr + j] = 0.0f;
        }
      }
    }
  }
}

}  // namespace

RowMatrixXf LargeMatrix(int64_t rows, int64_t cols) {
  RowMatrixXf m(rows, cols);
  AdviseHugePages(m.data(), static_cast<size_t>(m.size()) * sizeof(float));
  return m;
}

void Gemm(int64_t m, int64_t n, int64_t k, float alpha, StridedView a, StridedView b, float* c,
          int64_t ldc, int threads, bool lower_only) {
  if (m <= 0 || n <= 0 || k <= 0) return;
  const gemm::MicroKernel kernel = gemm::ActiveMicroKernel();
  threads = ResolveThreads(threads);
  // Work items: kNc-wide column blocks of C, each split into row ranges (multiples of kMc) when
  // there are too few column blocks to keep every thread busy.
  const int64_t col_blocks = (n + kNc - 1) / kNc;
  const int64_t row_blocks_all = (m + kMc - 1) / kMc;
  const int64_t row_parts =
      std::clamp<int64_t>((2 * threads + col_blocks - 1) / col_blocks, 1, row_blocks_all);
  const int64_t rows_per_part = (row_blocks_all + row_parts - 1) / row_parts * kMc;
  ParallelFor(col_blocks * row_parts, 1, threads, [&](int64_t w0, int64_t w1, int) {
    // Uninitialised and only as large as this product needs: the solvers call it with k = 16.
    const int64_t kc_max = std::min(kKc, k);
    const auto apack = std::make_unique_for_overwrite<float[]>(
        static_cast<size_t>(std::min(kMc, (m + kMr - 1) / kMr * kMr) * kc_max));
    const auto bpack = std::make_unique_for_overwrite<float[]>(
        static_cast<size_t>(kc_max * std::min(kNc, (n + kNr - 1) / kNr * kNr)));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t j0 = (w / row_parts) * kNc, nc = std::min(kNc, n - j0);
      const int64_t r_begin = (w % row_parts) * rows_per_part;
      const int64_t r_end = std::min(m, r_begin + rows_per_part);
      for (int64_t p0 = 0; p0 < k; p0 += kKc) {
        const int64_t kc = std::min(kKc, k - p0);
        bool packed_b = false;
        for (int64_t i0 = r_begin; i0 < r_end; i0 += kMc) {
          const int64_t mc = std::min(kMc, r_end - i0);
          if (lower_only && i0 + mc - 1 < j0) continue;  // strictly above the diagonal
          if (!packed_b) {
            PackB(b, p0, kc, j0, nc, bpack.get());
            packed_b = true;
          }
          PackA(a, i0, mc, p0, kc, apack.get());
          for (int64_t t = 0; t < nc; t += kNr) {
            const int64_t nr = std::min(kNr, nc - t);
            for (int64_t s = 0; s < mc; s += kMr) {
              const int64_t mr = std::min(kMr, mc - s);
              if (lower_only && i0 + s + mr - 1 < j0 + t) continue;
              float* cp = c + (i0 + s) * ldc + j0 + t;
              const float* ap = apack.get() + s * kc;
              const float* bp = bpack.get() + t * kc;
              if (mr == kMr && nr == kNr) {
                kernel(kc, ap, bp, cp, ldc, alpha);
              } else {
                float tile[kMr * kNr] = {};
                kernel(kc, ap, bp, tile, kNr, alpha);
                for (int64_t i = 0; i < mr; ++i) {
                  for (int64_t j = 0; j < nr; ++j) cp[i * ldc + j] += tile[i * kNr + j];
                }
              }
            }
          }
        }
      }
    }
  });
}

RowMatrixXf InvertLower(const Eigen::Ref<const RowMatrixXf>& l) {
  const int64_t n = l.rows();
  const Eigen::MatrixXd ld = l.cast<double>();
  Eigen::MatrixXd x = Eigen::MatrixXd::Identity(n, n);
  ld.triangularView<Eigen::Lower>().solveInPlace(x);
  return x.cast<float>();
}

bool CholeskyInPlace(Eigen::Ref<RowMatrixXf> a, int threads) {
  const int64_t n = a.rows();
  const int64_t lda = a.outerStride();
  for (int64_t k0 = 0; k0 < n; k0 += kNb) {
    const int64_t k1 = std::min(n, k0 + kNb), kb = k1 - k0;
    // Diagonal block (the earlier panels' updates are already applied), in double.
    Eigen::MatrixXd d = a.block(k0, k0, kb, kb).cast<double>();
    Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> llt(d);
    if (llt.info() != Eigen::Success || !d.diagonal().allFinite()) return false;
    a.block(k0, k0, kb, kb).triangularView<Eigen::Lower>() = d.cast<float>();
    const int64_t rest = n - k1;
    if (rest == 0) break;
    // Panel: A21 <- A21 L11^-T.
    const RowMatrixXf l11inv = InvertLower(a.block(k0, k0, kb, kb));
    const RowMatrixXf a21 = a.block(k1, k0, rest, kb);
    a.block(k1, k0, rest, kb).setZero();
    Gemm(rest, kb, kb, 1.0f, {a21.data(), kb, 1}, {l11inv.data(), 1, kb}, &a(k1, k0), lda, threads);
    // Trailing update: A22 <- A22 - A21 A21^T (lower triangle).
    Gemm(rest, rest, kb, -1.0f, {&a(k1, k0), lda, 1}, {&a(k1, k0), 1, lda}, &a(k1, k1), lda,
         threads, /*lower_only=*/true);
  }
  for (int64_t i = 0; i + 1 < n; ++i) std::fill(&a(i, i + 1), &a(i, 0) + n, 0.0f);  // by rows
  return true;
}

}  // namespace qtool::solvers
