// The kernel table: one entry per operation, filled by each instruction-set family's translation
// unit. Headers included by those units stay light (no Eigen, no <thread>), so that no inline
// function compiled for a wider ISA can be picked by the linker for code that runs everywhere.
#pragma once

#include <cstdint>

#include "qtool/format/spec.hpp"
#include "qtool/kernels.hpp"
#include "qtool/kernels/gemm.hpp"

namespace qtool::kernels::detail {

/// The 16 values of a bitsandbytes 4-bit map (FormatTraits<Nf4Format>::Values), ascending.
const float* Nf4Table(Bnb4Map map);
/// Their 15 midpoints (FormatTraits<Nf4Format>::Midpoints), which decide the codes.
const float* Nf4MidpointTable(Bnb4Map map);
/// NF4's smallest absmax divisor (FormatTraits<Nf4Format>::kMinAbsmax; the reference checks both
/// agree).
inline constexpr float kNf4AbsmaxFloor = 1e-38f;

/// Quantised activations of an integer GEMM: q [m, k] int8 with one scale per token.
struct Int8Acts {
  const int8_t* q;
  const float* scales;
  int64_t m;
};

/// From this many tokens on, an integer GEMM runs register tiles over tokens (and prepares its
/// activations once per call, so the caller gives each thread one range of output columns);
/// below, it runs one dot product per output.
inline constexpr int64_t kGemmTokens = 4;

// The GEMM entries compute output columns [n0, n1) of y [m, w.rows] (row stride w.rows). The
// float-code entries (quantize_nf4 .. dequantize_mx) do one row of n elements of their public
// function; an NF4 row's elements are the flat elements [start, start + n) of its matrix.
// The float32 matrix entries (f32_gemm_panels .. transpose_u8) are the functions of
// qtool/kernels/gemm.hpp (PanelKernel, MicroKernel, Transpose).
// A null entry means the family has no code for that operation: the next family down is used.
#define QTOOL_KERNEL_LIST(X)                                                                       \
  X(bf16_to_f32, void, (const uint16_t* in, int64_t n, float* out))                                \
  X(f16_to_f32, void, (const uint16_t* in, int64_t n, float* out))                                 \
  X(f32_to_bf16, void, (const float* in, int64_t n, uint16_t* out))                                \
  X(f32_to_f16, void, (const float* in, int64_t n, uint16_t* out))                                 \
  X(first_non_finite, int64_t, (const float* x, int64_t n))                                        \
  X(accumulate_errors, void, (const float* x, const float* y, int64_t n, ErrorStats* s))           \
  X(min_max, void, (const float* x, int64_t n, float* lo, float* hi))                              \
  X(quantize_groups, void,                                                                         \
    (const float* x, int64_t n, int64_t glen, const QuantSpec& spec, uint8_t* codes,               \
     float* scales, uint8_t* zeros, float* deq))                                                   \
  X(quantize_stored_rows, int64_t,                                                                 \
    (const void* x, StoredFloat type, int64_t rows, int64_t cols, int64_t glen,                    \
     const QuantSpec& spec, uint8_t* packed, float* scales, uint8_t* zeros, ErrorStats* s))        \
  X(quantize_codes, void, (const float* x, int64_t n, GroupParams p, int32_t umax, uint8_t* c))    \
  X(dequantize_codes, void, (const uint8_t* c, int64_t n, GroupParams p, float* out))              \
  X(pack_codes, void, (const uint8_t* c, int64_t n, int bits, uint8_t* out))                       \
  X(unpack_codes, void, (const uint8_t* in, int64_t n, int bits, uint8_t* c))                      \
  X(quantize_activations, void, (const float* x, int64_t m, int64_t k, int8_t* q, float* s))       \
  X(gemm_w8a8, void, (const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y)) \
  X(gemm_w4a8, void, (const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y)) \
  X(gemm_w4a16, void,                                                                              \
    (const uint16_t* a, int64_t m, const QuantWeights& w, int64_t n0, int64_t n1, float* y))       \
  X(gemv_nf4, void, (const float* x, const Nf4Weights& w, int64_t n0, int64_t n1, float* y))       \
  X(quantize_nf4, void,                                                                            \
    (const float* x, int64_t n, int64_t start, const Nf4Blocks& b, uint8_t* packed, float* deq))   \
  X(dequantize_nf4, void,                                                                          \
    (const uint8_t* packed, int64_t n, int64_t start, const Nf4Blocks& b, float* out))             \
  X(quantize_minifloat, void,                                                                      \
    (const float* x, int64_t n, const float* scales, int64_t group, const MinifloatCodes& f,       \
     uint8_t* packed, float* deq))                                                                 \
  X(dequantize_minifloat, void,                                                                    \
    (const uint8_t* packed, int64_t n, const float* scales, int64_t group,                         \
     const MinifloatCodes& f, float* out))                                                         \
  X(quantize_mx, void,                                                                             \
    (const float* x, int64_t n, int64_t block, const MinifloatCodes* e, uint8_t* packed,           \
     uint8_t* scales, float* deq))                                                                 \
  X(dequantize_mx, void,                                                                           \
    (const uint8_t* packed, const uint8_t* scales, int64_t n, int64_t block,                       \
     const MinifloatCodes* e, float* out))                                                         \
  X(f32_gemm_panels, void,                                                                         \
    (const float* x, int64_t ldx, int64_t m, const gemm::PackedMatrix& b, int64_t p0, int64_t p1,  \
     float* y, int64_t ldy))                                                                       \
  X(f32_gemm_micro, void,                                                                          \
    (int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha))              \
  X(transpose_f32, void,                                                                           \
    (const float* src, int64_t ss, int64_t rows, int64_t cols, float* dst, int64_t ds))            \
  X(transpose_u8, void,                                                                            \
    (const uint8_t* src, int64_t ss, int64_t rows, int64_t cols, uint8_t* dst, int64_t ds))

struct KernelTable {
#define QTOOL_KERNEL_FIELD(name, ret, args) ret(*name) args = nullptr;
  QTOOL_KERNEL_LIST(QTOOL_KERNEL_FIELD)
#undef QTOOL_KERNEL_FIELD
};

/// The scalar table's transposes: 64 x 64 tiles of the plain loop for floats, the plain loop for
/// bytes (src/kernels/ref/gemm_ref.cpp).
void RefTransposeF32(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                     int64_t dst_stride);
void RefTransposeU8(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t cols,
                    uint8_t* dst, int64_t dst_stride);
#if defined(__x86_64__) || defined(_M_X64)
/// The x86 float32 matrix kernels, each in a unit of its own under src/kernels/x86.
void PanelsAvx2(const float* x, int64_t ldx, int64_t m, const gemm::PackedMatrix& b, int64_t p0,
                int64_t p1, float* y, int64_t ldy);
void PanelsAvx512(const float* x, int64_t ldx, int64_t m, const gemm::PackedMatrix& b, int64_t p0,
                  int64_t p1, float* y, int64_t ldy);
void MicroKernelAvx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                       float alpha);
void TransposeSse2(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                   int64_t dst_stride);
void TransposeSse2(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint8_t* dst,
                   int64_t dst_stride);
#endif

/// Each family's table; null where the family is not built for this architecture.
const KernelTable* ScalarTable();
/// `avx_vnni`: the CPU has AVX-VNNI (VPDPBUSD on 256-bit vectors), which the integer GEMMs use.
const KernelTable* Avx2Table(bool avx_vnni);
/// t with the integer GEMMs of the AVX-VNNI unit (x86-64 builds).
KernelTable WithAvxVnniGemms(const KernelTable& t);
const KernelTable* Avx512Table();
/// `dotprod`: the CPU has the Armv8.2 dot product instructions (SDOT/UDOT).
const KernelTable* NeonTable(bool dotprod);

}  // namespace qtool::kernels::detail
