#include "gemm.hpp"

#include <algorithm>
#include <cstring>

#include "qtool/core/parallel.hpp"
#include "qtool/kernels.hpp"

namespace qtool::gemm {

void PackedMatrix::UnpackRow(int64_t r, float* out) const {
  const float* panel = data.data() + (r / kPanel) * k * kPanel;
  for (int64_t kk = 0; kk < k; ++kk) out[kk] = panel[kk * kPanel + r % kPanel];
}

PackedMatrix Pack(const float* b, int64_t n, int64_t k, int64_t ldb) {
  if (ldb == 0) ldb = k;
  PackedMatrix p{n, k, {}};
  p.data.assign(static_cast<size_t>(p.panels() * k * kPanel), 0.0f);
  for (int64_t r = 0; r < n; ++r) {
    float* panel = p.data.data() + (r / kPanel) * k * kPanel + r % kPanel;
    const float* row = b + r * ldb;
    for (int64_t kk = 0; kk < k; ++kk) panel[kk * kPanel] = row[kk];
  }
  return p;
}

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

PanelKernel KernelFor(kernels::Isa isa) {
  switch (isa) {
#if defined(__x86_64__)
    case kernels::Isa::kAvx2:
      return PanelsAvx2;
    case kernels::Isa::kAvx512:
      return PanelsAvx512;
#endif
    default:
      return PanelsRef;
  }
}

PanelKernel BestKernel() {
  // The kernel family follows the library's ISA selection (QTOOL_ISA or SelectIsa), like every
  // other kernel.
  return KernelFor(kernels::ActiveIsa());
}

void MatMul(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, float* y, int64_t ldy,
            int threads) {
  const PanelKernel kernel = BestKernel();
  // Below about 4 MFLOP per worker, starting threads costs more than it saves.
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(b.n * b.k);
  threads = static_cast<int>(std::clamp<double>(flops / 4e6, 1.0, std::max(1, threads)));
  const int64_t panels = b.panels();
  const int64_t chunk = std::max<int64_t>(1, panels / (4 * threads));
  ParallelFor(panels, chunk, threads,
              [&](int64_t p0, int64_t p1, int) { kernel(x, ldx, m, b, p0, p1, y, ldy); });
}

}  // namespace qtool::gemm
