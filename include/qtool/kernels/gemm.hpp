// Float32 matrix kernels: the runtime's products Y = X * B^T with B pre-packed into column panels,
// the micro-kernel of the solvers' blocked GEMM, and transposes. Each is an entry of the kernel
// table (src/kernels/table.hpp), chosen like every other kernel: by the active family
// (kernels::ActiveIsa, set by QTOOL_ISA or SelectIsa) at each call. Light header (no Eigen): the
// per-ISA kernel translation units include it.
#pragma once

#include <cstdint>
#include <vector>

namespace qtool::gemm {

// ---- The runtime's product over packed panels. ----

/// Columns of Y (rows of B) per packed panel: two AVX-512 vectors.
inline constexpr int64_t kPanel = 32;

/// B [n, k] (row-major, as a Linear weight [out, in] is stored) rearranged for the kernels: panel p
/// holds rows p*32 .. p*32+31 of B, k-major: data[(p*k + kk)*32 + j] = B[p*32 + j][kk], rows past
/// n zero. A panel's k-th 32 floats are the 32 columns of Y that one FMA pair updates.
struct PackedMatrix {
  int64_t n = 0, k = 0;
  std::vector<float> data;

  int64_t panels() const { return (n + kPanel - 1) / kPanel; }
  /// Row r of B, unpacked.
  void UnpackRow(int64_t r, float* out) const;
};

/// Packs B [n, k] whose rows lie `ldb` floats apart (0: ldb = k).
PackedMatrix Pack(const float* b, int64_t n, int64_t k, int64_t ldb = 0);

/// Y[m, n] = X[m, k] * B^T over panels [p0, p1) (columns p0*32 .. min(n, p1*32)). X and Y
/// row-major with leading dimensions ldx and ldy. Sums run over k in increasing order, blocked.
using PanelKernel = void (*)(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b,
                             int64_t p0, int64_t p1, float* y, int64_t ldy);

/// The scalar reference of the panel kernel (normative; the vector kernels match it to rounding).
void PanelsRef(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, int64_t p0,
               int64_t p1, float* y, int64_t ldy);
/// The active family's panel kernel (AVX2 with FMA, AVX-512, else the reference).
PanelKernel ActivePanelKernel();

/// Y = X * B^T with `threads` workers splitting the panels (fewer for small products).
void MatMul(const float* x, int64_t ldx, int64_t m, const PackedMatrix& b, float* y, int64_t ldy,
            int threads);

// ---- The micro-kernel of the solvers' GEMM (solvers/linalg.hpp). ----

/// Register tile of the micro-kernel: kMr rows of A by kNr columns of B.
inline constexpr int64_t kMr = 8;
inline constexpr int64_t kNr = 32;

/// c[kMr x kNr] (row-major, ldc) += alpha * A * B over kc steps, with A packed as kc columns of kMr
/// values (a[p * kMr + i]) and B packed as kc rows of kNr values (b[p * kNr + j]).
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             float alpha);

/// The scalar reference: the kc-step sums in f32 in increasing p, then c += alpha * sum.
void MicroKernelRef(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha);
/// The active family's micro-kernel (AVX-512, else the reference).
MicroKernel ActiveMicroKernel();

// ---- Transposes. ----

/// dst[j * dst_stride + i] = src[i * src_stride + j] for i in [0, rows), j in [0, cols): a
/// transpose on one thread, in cache-sized tiles of register transposes on the x86 families
/// (SSE2: 4 x 4 floats, 16 x 16 bytes). TransposeRef is the plain loop they equal.
void Transpose(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
               int64_t dst_stride);
void Transpose(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint8_t* dst,
               int64_t dst_stride);
template <typename T>
void TransposeRef(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst,
                  int64_t dst_stride) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
}

}  // namespace qtool::gemm
