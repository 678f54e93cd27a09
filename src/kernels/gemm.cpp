// The runtime's product: packing, and the threaded product over the dispatched panel kernel.
#include "qtool/kernels/gemm.hpp"

#include <algorithm>

#include "qtool/core/parallel.hpp"

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

void MatMul(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, float* y, int64_t ldy,
            int threads) {
  const PanelKernel kernel = ActivePanelKernel();
  // Below about 4 MFLOP per worker, starting threads costs more than it saves.
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(b.n * b.k);
  threads = static_cast<int>(std::clamp<double>(flops / 4e6, 1.0, std::max(1, threads)));
  const int64_t panels = b.panels();
  const int64_t chunk = std::max<int64_t>(1, panels / (4 * threads));
  ParallelFor(panels, chunk, threads,
              [&](int64_t p0, int64_t p1, int) { kernel(x, ldx, m, b, p0, p1, y, ldy); });
}

}  // namespace qtool::gemm
