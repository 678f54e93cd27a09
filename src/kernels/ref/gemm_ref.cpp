// Scalar references of the float32 matrix kernels (qtool/kernels/gemm.hpp): the runtime's panel
// product, the solvers' micro-kernel and the transposes, the scalar table's entries.
#include <cstring>

#include "../table.hpp"
#include "../transpose_inl.hpp"
#include "qtool/kernels/gemm.hpp"

namespace qtool::gemm {

void PanelsRef(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
               int64_t p1, float* y, int64_t ldy) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = b.data.data() + p * b.k * kPanel;
    const int64_t cols = std::min(kPanel, b.n - p * kPanel);
    for (int64_t i = 0; i < m; ++i) {
      float acc[kPanel] = {};
      const float* xi = x + i * ldx;
      for (int64_t kk = 0; kk < b.k; ++kk) {
        for (int64_t j = 0; j < kPanel; ++j) acc[j] += xi[kk] * panel[kk * kPanel + j];
      }
      std::memcpy(y + i * ldy + p * kPanel, acc, static_cast<size_t>(cols) * sizeof(float));
    }
  }
}

void MicroKernelRef(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                    float alpha) {
  float acc[kMr][kNr] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int64_t i = 0; i < kMr; ++i) {
      const float ai = a[p * kMr + i];
      for (int64_t j = 0; j < kNr; ++j) acc[i][j] += ai * b[p * kNr + j];
    }
  }
  for (int64_t i = 0; i < kMr; ++i) {
    for (int64_t j = 0; j < kNr; ++j) c[i * ldc + j] += alpha * acc[i][j];
  }
}

}  // namespace qtool::gemm

namespace qtool::kernels::detail {

void RefTransposeF32(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                     int64_t dst_stride) {
  TransposeTiled<64>(src, src_stride, rows, cols, dst, dst_stride, [&](const float* s, float* d) {
    gemm::TransposeRef(s, src_stride, 64, 64, d, dst_stride);
  });
}

void RefTransposeU8(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t cols,
                    uint8_t* dst, int64_t dst_stride) {
  gemm::TransposeRef(src, src_stride, rows, cols, dst, dst_stride);
}

}  // namespace qtool::kernels::detail
