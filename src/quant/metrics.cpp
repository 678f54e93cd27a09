#include "qtool/quant/metrics.hpp"

#include "qtool/kernels.hpp"

namespace qtool {

void ErrorStats::Add(const float* x, const float* y, int64_t count) {
  kernels::AccumulateErrors(x, y, count, this);
}

}  // namespace qtool
