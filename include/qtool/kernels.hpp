// Compute kernels: element conversion, integer quantisation, and the dot products used at inference
// with quantised weights. Each operation has a portable reference (the definition of correct) and
// vectorised paths for the instruction sets the CPU offers; the best supported path is chosen on
// first use, or forced with the environment variable QTOOL_ISA=scalar|avx2|avx512|neon.
//
// Bit exactness: conversions, quantisation (integer, NF4, small floats, MX), packing and the
// integer GEMMs (W8A8) give the same bits on every path. Kernels that accumulate in floating
// point (W4A8 across groups, W4A16, NF4) may differ from the reference by summation order only:
// |y - y_ref| <= 1e-5 * sum |w_k * a_k|.
//
// Kernels never validate user input: callers check shapes and finiteness (QTOOL_DASSERT states the
// invariants in Debug builds). Results for NaN or Inf inputs are unspecified unless stated.
//
// Example: one token through a 4-bit group-wise layer, weights as the integer codec stores them.
//   std::vector<int8_t> q(k);
//   float scale;
//   kernels::QuantizeActivations(x, 1, k, q.data(), &scale);
//   const kernels::QuantWeights w{qweight, scales, nullptr, n, k, 128, 4};  // int4 sym g128
//   kernels::GemmW4A8(q.data(), &scale, 1, w, y, /*threads=*/4);          // y[n]
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "qtool/format/metrics.hpp"
#include "qtool/format/spec.hpp"

namespace qtool {
struct MinifloatFormat;
}  // namespace qtool

namespace qtool::kernels {

/// Instruction set families with their own kernel paths. kAvx512 needs F, BW, DQ, VL, VNNI;
/// kAvx2 needs AVX2, FMA and F16C; kNeon is Advanced SIMD (its integer dot products also need the
/// dot product extension, and fall back to the reference without it).
enum class Isa { kScalar, kAvx2, kAvx512, kNeon };

const char* IsaName(Isa isa);
/// "scalar", "avx2", "avx512" or "neon"; throws OptionError for anything else.
Isa ParseIsa(std::string_view name);
/// The families this CPU runs, the reference first.
std::vector<Isa> SupportedIsas();
/// CPU features found at start-up, space separated ("avx2 fma f16c avx512f ... avx512vnni").
std::string CpuFeatures();

/// The family in use: QTOOL_ISA when set (OptionError if the CPU lacks it), else the best one.
Isa ActiveIsa();
/// Uses `isa` from now on (OptionError if the CPU lacks it). Not safe while kernels run.
void SelectIsa(Isa isa);
/// For each operation, its name and the family whose code runs it under the active selection.
std::vector<std::pair<std::string, Isa>> KernelPaths();

// ---- Element conversion (exactly the functions of qtool/core/half.hpp, element by element). ----

void Bf16ToF32(const uint16_t* in, int64_t n, float* out);
void F16ToF32(const uint16_t* in, int64_t n, float* out);
void F32ToBf16(const float* in, int64_t n, uint16_t* out);
void F32ToF16(const float* in, int64_t n, uint16_t* out);

// ---- Checks and error statistics. ----

/// Index of the first NaN or +-Inf among the n values, or -1.
int64_t FirstNonFinite(const float* x, int64_t n);
/// Adds the error sums of y against x (n pairs) to *stats in the layout of format/metrics.hpp
/// (AccumulateErrorsReference is the definition). Every path gives the same bits.
void AccumulateErrors(const float* x, const float* y, int64_t n, ErrorStats* stats);

// ---- Integer quantisation (the conventions of qtool/format/spec.hpp and pack.hpp). ----

/// Min-max range of n values widened to include 0 (qtool::MinMaxRange).
void MinMax(const float* x, int64_t n, float* lo, float* hi);
/// Min-max quantisation of n values in groups of glen (the last one may be shorter), exactly
/// QuantizeRowRef: group g's parameters go to scales[g] (and zeros[g] for asymmetric specs, else
/// zeros may be null), unpacked codes to codes[0, n), and the decoded values to deq unless null.
void QuantizeGroups(const float* x, int64_t n, int64_t glen, const QuantSpec& spec, uint8_t* codes,
                    float* scales, uint8_t* zeros, float* deq);
/// codes[i] = QuantizeValue(x[i], p, 2^bits - 1): one unpacked code per byte.
void QuantizeCodes(const float* x, int64_t n, GroupParams p, int bits, uint8_t* codes);
/// out[i] = DequantizeValue(codes[i], p).
void DequantizeCodes(const uint8_t* codes, int64_t n, GroupParams p, float* out);
/// PackCodes / UnpackCodes of pack.hpp (fast for 4 and 8 bits).
void PackCodes(const uint8_t* codes, int64_t n, int bits, uint8_t* out);
void UnpackCodes(const uint8_t* in, int64_t n, int bits, uint8_t* codes);

/// Integer weights [rows, cols] as the integer codec stores them: `codes` holds each row packed in
/// PackedBytes(cols, bits) bytes; `scales` and `zeros` are [rows, GroupsPerRow] (zeros == nullptr
/// for symmetric specs, whose zero is 2^(bits-1)). Per-channel weights have group == cols.
struct QuantWeights {
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  const uint8_t* zeros = nullptr;
  int64_t rows = 0, cols = 0, group = 0;
  int bits = 4;
  int64_t groups_per_row() const { return (cols + group - 1) / group; }
  int64_t row_bytes() const { return (cols * bits + 7) / 8; }
};

/// The element types QuantizeStoredRows reads.
enum class StoredFloat { kF32, kBf16, kF16 };

/// Min-max quantisation of rows x [rows, cols] straight from their stored element type, with the
/// error sums of the decoded values: exactly the conversion to f32 (Bf16ToF32, F16ToF32), then
/// QuantizeGroups of each row in groups of glen (restarting at each row; scales and zeros
/// [rows, groups per row], zeros only for asymmetric specs) with the codes packed by PackCodes,
/// row r at packed + r * PackedBytes(cols, bits), and AccumulateErrors of all rows * cols values
/// against their decoded values into *stats in one call. Each group is done while it is in cache,
/// in one pass over x. Needs cols and glen to be multiples of 16, spec.bits 2..8. Returns the
/// index into x of the first NaN or Inf, or -1; after a non-finite value the outputs and *stats
/// are unspecified.
int64_t QuantizeStoredRows(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                           int64_t glen, const QuantSpec& spec, uint8_t* packed, float* scales,
                           uint8_t* zeros, ErrorStats* stats);

/// Quantises rows of x [rows, cols] with min-max ranges, per channel or per group of `spec`
/// (not per tensor), into the codec layout: exactly IntCodec::EncodeRows without the decoded copy.
/// `zeros` is written for asymmetric specs only.
void QuantizeRows(const float* x, int64_t rows, int64_t cols, const QuantSpec& spec, uint8_t* codes,
                  float* scales, uint8_t* zeros, int threads = 1);
/// Decodes w (any bits, per channel or per group) into out [rows, cols].
void DequantizeRows(const QuantWeights& w, float* out, int threads = 1);

// ---- Inference kernels. y [m, rows of w] = a [m, cols] x w^T. ----

/// Dynamic per-token INT8 quantisation of x [m, k]: scale[t] = max|x_t| / 127 (1 for an all-zero
/// row), q = clamp(rne(x / scale), -127, 127), i.e. the int8 symmetric code minus 128.
void QuantizeActivations(const float* x, int64_t m, int64_t k, int8_t* q, float* scales);

/// W8A8: w.bits == 8, per channel (w.group == w.cols), symmetric or asymmetric. Integer exact:
/// y[t, n] = float(sum_k (u[n,k] - zero[n]) * q[t,k]) * a_scales[t] * w.scales[n], the
/// products taken left to right. k must stay below 2^16 (the int32 sum cannot overflow).
void GemmW8A8(const int8_t* q, const float* a_scales, int64_t m, const QuantWeights& w, float* y,
              int threads = 1);
/// W4A8: w.bits == 4, group-wise with group and cols multiples of 32. Exact integer dot per group,
/// scaled and summed in float: y[t, n] = a_scales[t] * sum_g scale[n,g] * dot_g.
void GemmW4A8(const int8_t* q, const float* a_scales, int64_t m, const QuantWeights& w, float* y,
              int threads = 1);
/// W4A16: bf16 activations, w.bits == 4 group-wise (any group), f32 accumulation:
/// y[t, n] = sum_g scale[n,g] * sum_{k in g} (u - zero) * a[t,k].
void GemmW4A16(const uint16_t* a_bf16, int64_t m, const QuantWeights& w, float* y, int threads = 1);

/// NF4 weights: 4-bit indices into the 16 ascending values of `map` (QLoRA's NormalFloat,
/// qtool::Nf4Values(), or bitsandbytes' FP4), packed as the NF4 codec stores them (two codes per
/// byte, the even column in the high nibble), with one f32 absmax scale per group of a row:
/// w = values[u] * scale. The codec's NAME.qweight and (decoded) NAME.absmax are this layout when
/// cols is a multiple of its block.
struct Nf4Weights {
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;  // [rows, groups per row]
  int64_t rows = 0, cols = 0, group = 64;
  Bnb4Map map = Bnb4Map::kNf4;
};
/// y[n] = sum_g scale[n,g] * sum_{k in g} values[u[n,k]] * x[k] (f32 accumulation).
void GemvNf4(const float* x, const Nf4Weights& w, float* y, int threads = 1);

// ---- Float-code quantisation: the NF4, scaled small-float and MX codecs' rows. ----
//
// Each is its codec's definition, element for element (the codecs call these): the codes, scales
// and decoded values come out the same on every path, NaN and Inf inputs included.

/// max |x| over n values (0 for none), NaN ignored as by std::max(amax, |x|) from 0: the absmax of
/// the NF4 and scaled-float codecs, from the MinMax range as max(hi, -lo).
float AbsMax(const float* x, int64_t n);

/// The NF4 codec's blocks (qtool/quant/nf4_codec.hpp) as seen from a range of rows of a matrix
/// [rows, cols]: `block` consecutive elements of the row-major flattened matrix share one absmax,
/// so blocks run across rows, and the last block of the matrix (`numel` elements in all) may be
/// shorter. Element `first` (a flat index) is the first of the range; absmax[j] and scales[j]
/// belong to flat block first / block + j.
struct Nf4Blocks {
  int64_t block = 64;
  int64_t numel = 0;
  int64_t first = 0;
  const float* absmax = nullptr;  // exact absmax of each block: the codes
  const float* scales = nullptr;  // absmax as decoding sees it (after double quantisation)
  Bnb4Map map = Bnb4Map::kNf4;    // the 16 values (FormatTraits<Nf4Format>::Values)
};

/// NF4 codes of the rows x [rows, cols] (flat elements b.first ..), exactly Nf4Codec::EncodeRows:
/// code = Nf4Code(x, absmax, whole, b.map) where whole is false only in the matrix's shorter
/// last block; two codes per byte with the even column in the high nibble, row r at
/// packed + r * (cols + 1) / 2 (an odd row's last low nibble 0); deq = values[code] * scale.
/// Example: rows [r0, r1) of the codec's matrix w:
///   Nf4Blocks b{64, rows * cols, r0 * cols, absmax + r0 * cols / 64, scales + r0 * cols / 64};
///   QuantizeNf4Rows(w + r0 * cols, r1 - r0, cols, b, qweight + r0 * ((cols + 1) / 2), deq);
void QuantizeNf4Rows(const float* x, int64_t rows, int64_t cols, const Nf4Blocks& b,
                     uint8_t* packed, float* deq, int threads = 1);
/// out = values[code] * scale for NF4 rows packed as QuantizeNf4Rows writes them (b.absmax
/// unused), exactly Nf4Codec::DecodeRows.
void DequantizeNf4Rows(const uint8_t* packed, int64_t rows, int64_t cols, const Nf4Blocks& b,
                       float* out, int threads = 1);

/// A small float format (qtool/format/minifloat.hpp) with its overflow rule, prepared once (per
/// codec, say) for the kernels below: each code's value, and the constants of EncodeMinifloat's and
/// DecodeMinifloat's steps on f32 bit fields, which the vector paths use.
/// Example: const MinifloatCodes e4m3(kE4M3, /*saturate=*/true);
struct MinifloatCodes {
  MinifloatCodes(const MinifloatFormat& format, bool saturate);

  const MinifloatFormat* format;
  bool saturate;
  int bits;          // 1 + exponent bits + mantissa bits
  int emax;          // format->emax()
  float value[256];  // DecodeMinifloat of each code below 2^bits

  // EncodeMinifloat on a = |x| as f32 bits, with sign = (bits(x) >> sign_shift) & sign_bit:
  //   a > 0x7f800000 (NaN):  nan_code | (sign & nan_sign)
  //   a < min_normal:        r = bits(f32(a) + f32(sub_magic)) - sub_magic
  //   otherwise:             r = ((a + round_half + ((a >> shift) & 1)) >> shift) - rebias
  // then sign | (r > max_code ? overflow_code : r); Inf takes the overflow branch.
  uint32_t sign_bit, min_normal, sub_magic, round_half, rebias, max_code, overflow_code, nan_code,
      nan_sign;
  int shift, sign_shift;
  // DecodeMinifloat of em = code & (sign_bit - 1), with the sign bit moved up by sign_shift:
  //   em < min_normal_code:  em * sub_unit (the subnormals and 0)
  //   otherwise:             f32 bits (em << shift) + exp_rebias
  // except em == inf_code (Inf) and em >= nan_from (NaN, 0x7fc00000); 0x100 stands for none.
  uint32_t min_normal_code, exp_rebias, inf_code, nan_from;
  float sub_unit;
};

/// Rows x [rows, cols] sharing one scale per group of `group` columns, exactly FpCodec::EncodeRows
/// for a band of rows: element c is coded as EncodeMinifloat(x / s, format, saturate) with
/// s = scales[c / group] (a true division), the codes packed by PackCodes into
/// PackedBytes(cols, bits) bytes per row (one byte per code for FP8), and deq = value[code] * s.
void QuantizeMinifloatRows(const float* x, int64_t rows, int64_t cols, const float* scales,
                           int64_t group, const MinifloatCodes& f, uint8_t* packed, float* deq,
                           int threads = 1);
/// out = value[code] * scales[c / group] for rows packed as QuantizeMinifloatRows writes them
/// (FpCodec::DecodeRows). Where both the value and the scale are NaN, the NaN's sign is
/// unspecified.
void DequantizeMinifloatRows(const uint8_t* packed, int64_t rows, int64_t cols, const float* scales,
                             int64_t group, const MinifloatCodes& f, float* out, int threads = 1);

/// OCP MX blocks, exactly MxCodec::EncodeRows: each row of x [rows, cols] in blocks of `block`
/// columns (a row's last block may be shorter) sharing the E8M0 scale
/// e = E8M0ScaleForBlock(amax, emax) (0xff, NaN, for a block holding NaN or Inf), stored at
/// scales[r * blocks per row + j]; elements P = x / 2^(e - 127) coded by `element` (saturating,
/// OCP MX 6.3) or, with element == nullptr, as MXINT8 bytes clamp(rne(P * 64), -128, 127); a NaN
/// block stores code 0. Codes packed per row by PackCodes; deq = value(code) * 2^(e - 127).
/// Example: const MinifloatCodes fp4(kE2M1, true);
///          QuantizeMxRows(w, rows, cols, 32, &fp4, qweight, e8m0, deq);
void QuantizeMxRows(const float* x, int64_t rows, int64_t cols, int64_t block,
                    const MinifloatCodes* element, uint8_t* packed, uint8_t* scales, float* deq,
                    int threads = 1);
/// out = value(code) * 2^(e - 127) (NaN for e == 0xff) for rows as QuantizeMxRows writes them
/// (MxCodec::DecodeRows).
void DequantizeMxRows(const uint8_t* packed, const uint8_t* scales, int64_t rows, int64_t cols,
                      int64_t block, const MinifloatCodes* element, float* out, int threads = 1);

}  // namespace qtool::kernels
