// Tensor layouts of the serving stacks' quantised checkpoints, written from qtool's quantised
// tensors without going through float (docs/EXPORT.md).
//
// Every layout here holds the same grid as qtool's integer codec: a weight [rows = out,
// cols = in] decodes as w = (u - z) * scale with u the unsigned code, z the group's zero-point
// (2^(bits-1) when symmetric) and the group of column c given by g_idx[c] (c / group_size
// without act-order). Each function packs the codes, zero-points and scales of one weight; the
// Unpack functions read a layout back into the same form, so that every packing is checked by
// pack-then-unpack against qtool's own decoding.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qtool/format/format.hpp"
#include "qtool/io/safetensors.hpp"

namespace qtool {

/// The Layout functions give a format's tensors for a weight from its shape and parameters alone
/// (`codes`, `scales`, `zeros` and `g_idx` may be empty; `act_order` says whether g_idx is
/// stored) and check that the format can hold it; the Pack functions fill them.
///
/// One integer-quantised weight with its codes unpacked, one per byte.
struct IntWeight {
  std::string name;  // the weight's name in the checkpoint, for error messages
  int64_t rows = 0, cols = 0;
  int bits = 4;
  bool symmetric = true;
  int64_t group_size = 0;      // columns per group; cols for one group per row (per channel)
  int64_t groups = 0;          // groups per row: ceil(cols / group_size)
  std::vector<uint8_t> codes;  // [rows, cols], each < 2^bits
  // Or, in place of `codes` (which is then empty), the codes as qtool's codec packs them: rows of
  // PackedBytes(cols, bits) bytes (format/pack.hpp's bit stream), not owned. PackGptq and
  // PackCompressedTensorsInt (pack-quantized) move these words as they are.
  const std::byte* packed = nullptr;
  std::vector<float> scales;   // [rows, groups]
  std::vector<uint8_t> zeros;  // [rows, groups]; 2^(bits-1) everywhere when symmetric
  std::vector<int32_t> g_idx;  // [cols]: group of each column
  bool act_order = false;      // g_idx is not c / group_size

  /// The weight as qtool decodes it: (u - z) * scale, [rows, cols] row-major.
  std::vector<float> Decode() const;
};

/// The IntWeight of a weight [rows, cols] stored by qtool's integer codec: `record` its codec
/// record, `parts` its stored tensors in IntCodec::Layout order. A per-tensor scale is given to
/// every row (one group per row). With `with_data` false only the shape and parameters are filled.
/// Throws OptionError for flat groups, which no serving format holds.
/// With `unpack` false the codes are left packed (IntWeight::packed points at parts[0]).
IntWeight IntWeightFromQtool(const std::string& name, const nlohmann::json& record, int64_t rows,
                             int64_t cols, const std::byte* const* parts, bool with_data = true,
                             bool unpack = true);

/// out[c * rows + r] = word c of row r of `in`, whose rows are `cols` little-endian 32-bit words
/// each, `in_row_bytes` apart (and need not be aligned): qtool's rows of codes (a row of
/// cols * bits / 32 words) to GPTQ's qweight [cols * bits / 32, rows], and, with rows and cols
/// swapped, back. Goes in tiles, so that both sides stay in cache.
void TransposeWords(const std::byte* in, int64_t rows, int64_t cols, int64_t in_row_bytes,
                    uint32_t* out);

/// A tensor of an exported checkpoint with its bytes.
struct ExportTensor {
  TensorSpec spec;
  std::vector<std::byte> data;

  /// A tensor of `spec` whose bytes are zero.
  static ExportTensor Zeros(TensorSpec spec) {
    ExportTensor t{std::move(spec), {}};
    t.data.assign(t.spec.nbytes(), std::byte{0});
    return t;
  }
  /// A tensor of `spec` whose bytes are copied from `bytes` (spec.nbytes() of them).
  static ExportTensor CopyOf(TensorSpec spec, const void* bytes) {
    ExportTensor t{std::move(spec), {}};
    t.data.resize(t.spec.nbytes());
    std::memcpy(t.data.data(), bytes, t.data.size());
    return t;
  }
};

/// GPTQ (AutoGPTQ / GPTQModel, `checkpoint_format` "gptq" = v1 or "gptq_v2"), module PREFIX:
///   PREFIX.qweight I32 [cols * bits / 32, rows]   codes along the input dimension, each column a
///                                                  little-endian bit stream of 32-bit words (code
///                                                  i in stream bits [i*bits, (i+1)*bits); for 3
///                                                  bits codes straddle words)
///   PREFIX.qzeros  I32 [groups, rows * bits / 32]  zero-points along the output dimension, the
///                                                  same stream; v1 stores z - 1, v2 stores z
///   PREFIX.scales  F16 [groups, rows]              scales, transposed, rounded to nearest f16
///   PREFIX.g_idx   I32 [cols]                      group of each input column
/// Needs bits 2, 3, 4 or 8 and cols * bits and rows * bits multiples of 32; v1 cannot hold a
/// zero-point 0 (its z - 1 wraps and the readers' +1 carries into the next field). Throws
/// OptionError naming the weight and the constraint.
std::vector<TensorSpec> GptqLayout(const IntWeight& w, const std::string& prefix);
std::vector<ExportTensor> PackGptq(const IntWeight& w, const std::string& prefix, bool v2);
/// Reads PackGptq's tensors (qweight, qzeros, scales, g_idx in that order) back; scales come back
/// as the f16 values widened to f32.
IntWeight UnpackGptq(const std::vector<ExportTensor>& t, int bits, bool symmetric, bool v2);

/// AWQ GEMM (AutoAWQ / GPTQModel "gemm"), 4 bits:
///   PREFIX.qweight I32 [cols, rows / 8]    codes of 8 output channels per word: word j of input
///                                          row c holds the codes of outputs 8j + kAwqOrder[k] in
///                                          bits [4k, 4k + 4)
///   PREFIX.qzeros  I32 [groups, rows / 8]  zero-points (stored as they are), the same order
///   PREFIX.scales  F16 [groups, rows]
/// Needs 4 bits, rows a multiple of 8, group_size dividing cols, and no act-order.
inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
std::vector<TensorSpec> AwqLayout(const IntWeight& w, const std::string& prefix);
std::vector<ExportTensor> PackAwq(const IntWeight& w, const std::string& prefix);
IntWeight UnpackAwq(const std::vector<ExportTensor>& t, int64_t group_size);

/// compressed-tensors (0.20) "pack-quantized" (2..8 bits, weight-only): signed values q = u -
/// 2^(bits-1) stored offset-binary (that is, u), each row a dense little-endian bit stream of I32
/// words as in GPTQ (element c in stream bits [c*bits, (c+1)*bits)), the last word zero padded:
///   PREFIX.weight_packed     I32 [rows, ceil(cols * bits / 32)]
///   PREFIX.weight_scale      F32 [rows, groups]
///   PREFIX.weight_zero_point I32 [ceil(rows * bits / 32), groups]  asymmetric only: zero-points
///                                (signed z - 2^(bits-1), offset-binary, so z) packed along the
///                                output dimension, each column of groups one stream
///   PREFIX.weight_shape      I64 [2]                               [rows, cols]
/// "int-quantized" (`int_quantized`: 8 bits, the W8A8 layout): PREFIX.weight I8 [rows, cols] = u -
/// 128, PREFIX.weight_scale F32 [rows, groups], PREFIX.weight_zero_point I8 [rows, groups] = z -
/// 128 (asymmetric only). compressed-tensors 0.20 has no g_idx (its act-order "group" was removed),
/// so act-order weights are refused.
std::vector<TensorSpec> CompressedTensorsIntLayout(const IntWeight& w, const std::string& prefix,
                                                   bool int_quantized = false);
std::vector<ExportTensor> PackCompressedTensorsInt(const IntWeight& w, const std::string& prefix,
                                                   bool int_quantized = false);
IntWeight UnpackCompressedTensorsInt(const std::vector<ExportTensor>& t, int bits, bool symmetric,
                                     int64_t group_size, bool int_quantized = false);

/// bitsandbytes 4-bit (Linear4bit / Params4bit, as transformers saves it) from the stored tensors
/// of qtool's NF4 codec (`parts` in Nf4Codec::Layout order; NF4 or FP4, f.map) of a weight
/// [rows, cols]:
///   PREFIX.weight                  U8  [rows * cols / 2, 1]  element 2i in the high nibble: for an
///                                                            even cols, qtool's qweight bytes
///                                                            (FP4: each index as bitsandbytes'
///                                                            code, BnbCodeBytes)
///   PREFIX.weight.absmax           F32 [N] (U8 [N] with double quantisation)
///   PREFIX.weight.quant_map        F32 [16]                  BnbQuantMap(f.map)
///   PREFIX.weight.nested_absmax    F32 [ceil(N / 256)]       double quantisation only
///   PREFIX.weight.nested_quant_map F32 [256]                 the signed dynamic map; idem
///   PREFIX.weight.quant_state.bitsandbytes__nf4 (__fp4) U8 [n]  JSON: quant_type, blocksize,
///                                                            dtype, shape (and nested_blocksize,
///                                                            nested_dtype, nested_offset)
/// `dtype` is the torch name of the weight's original type ("float32", "bfloat16", "float16").
/// Needs an even cols and a block bitsandbytes has (64 to 4096, a power of two).
std::vector<TensorSpec> BnbNf4Layout(const std::string& name, int64_t rows, int64_t cols,
                                     const Nf4Format& f, const std::string& prefix,
                                     const std::string& dtype);
std::vector<ExportTensor> PackBnbNf4(const std::string& name, int64_t rows, int64_t cols,
                                     const Nf4Format& f, const std::byte* const* parts,
                                     const std::string& prefix, const std::string& dtype);
/// bitsandbytes' quant_map of a 4-bit map: the value of each of its nibble codes. NF4's codes are
/// qtool's indices into the ascending values; FP4's are FormatTraits<Nf4Format>::kFp4Codes of
/// them.
std::array<float, 16> BnbQuantMap(Bnb4Map map);
/// A byte of two qtool indices as bitsandbytes' two codes (to_bnb), or back.
std::array<uint8_t, 256> BnbCodeBytes(Bnb4Map map, bool to_bnb);
/// The weight as bitsandbytes decodes PackBnbNf4's tensors (in its order): quant_map[code] *
/// absmax, with absmax = nested_quant_map[q] * nested_absmax + nested_offset when nested.
std::vector<float> DecodeBnbNf4(const std::vector<ExportTensor>& t, int64_t rows, int64_t cols);

/// bitsandbytes LLM.int8 (Linear8bitLt, as transformers saves it) of qtool's INT8 symmetric
/// weights with one scale per row (per channel, or a per-tensor scale given to every row):
///   PREFIX.weight        I8  [rows, cols]  the signed codes q = u - 128
///   PREFIX.SCB           F32 [rows]        the row's absmax
///   PREFIX.weight_format U8  []            0: row-major, the only layout bitsandbytes reads
/// bitsandbytes decodes a code as BnbInt8Value(q, SCB): two f32 roundings where qtool's q * scale
/// has one, so no SCB gives every code of a row qtool's value in general. Each row's SCB is the
/// f32 within a few ulps of 127 * scale whose decoding of the codes -128..127 differs from
/// q * scale for the fewest codes; `max_change` gets the largest relative difference left between
/// a code's two values (at most a few f32 roundings). Needs 8 bits, symmetric, one group per row.
std::vector<TensorSpec> BnbInt8Layout(const IntWeight& w, const std::string& prefix);
std::vector<ExportTensor> PackBnbInt8(const IntWeight& w, const std::string& prefix,
                                      double* max_change);

/// A code q of an LLM.int8 row as bitsandbytes dequantises it (int8_vectorwise_dequant):
/// q * SCB, rounded to f32, then times the f32 constant 1/127 it uses.
inline float BnbInt8Value(int q, float scb) {
  constexpr float kInv127 = 7.874015718698502e-3f;
  const float product = static_cast<float>(q) * scb;
  return product * kInv127;
}

/// ORs v (< 2^bits) into a little-endian bit stream of 32-bit words at stream bit `bit`; word k
/// of the stream is words[k * stride]. A value may straddle two words.
inline void PutBits32(uint32_t* words, int64_t stride, int64_t bit, int bits, uint32_t v) {
  const int64_t k = bit / 32;
  const int shift = static_cast<int>(bit % 32);
  words[k * stride] |= v << shift;
  if (shift + bits > 32) words[(k + 1) * stride] |= v >> (32 - shift);
}
/// The value PutBits32 put at stream bit `bit`.
inline uint32_t GetBits32(const uint32_t* words, int64_t stride, int64_t bit, int bits) {
  const int64_t k = bit / 32;
  const int shift = static_cast<int>(bit % 32);
  uint64_t v = words[k * stride] >> shift;
  if (shift + bits > 32) v |= static_cast<uint64_t>(words[(k + 1) * stride]) << (32 - shift);
  return static_cast<uint32_t>(v) & ((1u << bits) - 1);
}

/// Little-endian I32 words of a tensor's bytes, and back.
std::vector<uint32_t> Words(const ExportTensor& t);

}  // namespace qtool
