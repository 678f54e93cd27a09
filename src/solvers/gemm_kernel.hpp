// Micro-kernels of the solvers' GEMM (no Eigen here: the AVX-512 translation unit includes it).
#pragma once

#include <cstdint>

namespace qtool::solvers::detail {

/// Register tile of the micro-kernel: kMr rows of A by kNr columns of B.
inline constexpr int64_t kMr = 8;
inline constexpr int64_t kNr = 32;

/// c[kMr x kNr] (row-major, ldc) += alpha * A * B over kc steps, with A packed as kc columns of kMr
/// values (a[p * kMr + i]) and B packed as kc rows of kNr values (b[p * kNr + j]).
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             float alpha);

void MicroKernelRef(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha);
#if defined(__x86_64__) || defined(_M_X64)
void MicroKernelAvx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                       float alpha);
#endif

}  // namespace qtool::solvers::detail
