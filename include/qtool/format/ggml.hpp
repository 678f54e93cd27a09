// ggml tensor types as GGUF files store them: type ids, block geometry and the packed blocks.
//
// Every quantised ggml type stores a row as whole blocks of `block_size` consecutive values; a
// block is a fixed-size struct of little-endian fields. The structs below reproduce the layouts
// of ggml's `ggml-common.h` field for field (their sizes are asserted), so a block can be read
// from a mapped file by casting its address. Type ids are the values of `enum ggml_type`, which
// GGUF writes into each tensor's info; ids of types ggml has removed are not listed.
//
// The reference quantisers and dequantisers live in ggml_quants.hpp.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qtool::ggml {

static_assert(std::endian::native == std::endian::little,
              "ggml blocks are little-endian and are read in place");

/// `enum ggml_type` values of the types qtool reads and writes.
enum class Type : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

/// Values per block of the legacy (Q4_0 ... Q8_0), IQ4_NL and MXFP4 types.
inline constexpr int kQK32 = 32;
/// Values per super-block of the k-quants, IQ4_XS, TQ1_0 and TQ2_0 (ggml's QK_K).
inline constexpr int kQKK = 256;

// Field names follow ggml's: d is a super-block or block scale (IEEE fp16 bits), dmin/m a min,
// qs/ql the low bits of the codes, qh/hmask their high bits, scales the sub-block scales.

/// 4-bit symmetric: x = (q - 8) * d. qs[j] holds value j in its low nibble, j + 16 in its high.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK32 / 2];
};
/// 4-bit with minimum: x = q * d + m. Nibbles as Q4_0.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK32 / 2];
};
/// 5-bit symmetric: x = (q - 16) * d. Low nibbles as Q4_0; bit j of the little-endian qh word is
/// the fifth bit of value j.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK32 / 2];
};
/// 5-bit with minimum: x = q * d + m, bits as Q5_0.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK32 / 2];
};
/// 8-bit symmetric: x = q * d.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK32];
};
/// 2-bit k-quant: 16 sub-blocks of 16, each with a 4-bit scale (low nibble) and 4-bit min (high
/// nibble): x = d * sc * q - dmin * m. Within each half of 128 values, qs[l] (l < 32) holds values
/// l, l + 32, l + 64, l + 96 in bits 0-1, 2-3, 4-5, 6-7.
struct BlockQ2_K {
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d;
  uint16_t dmin;
};
/// 3-bit k-quant: 16 sub-blocks of 16 with 6-bit signed scales (offset 32): x = d * (sc - 32) *
/// (q - 4). The two low bits of q are packed as Q2_K; the high bit of value e is bit e / 32 of
/// hmask[e % 32]. Scale j: low nibble in scales[j] (j < 8) or the high nibble of scales[j - 8],
/// top two bits at bit 2 * (j / 4) of scales[8 + j % 4].
struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};
/// 4-bit k-quant: 8 sub-blocks of 32 with 6-bit scales and mins: x = d * sc * q - dmin * m.
/// Scales/mins j < 4: low 6 bits of scales[j] / scales[j + 4]; j >= 4: low / high nibble of
/// scales[j + 4], top two bits in bits 6-7 of scales[j - 4] / scales[j]. Each 64 values use 32
/// bytes of qs: the first 32 values in the low nibbles, the next 32 in the high ones.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};
/// 5-bit k-quant: Q4_K plus a fifth bit: for the k-th group of 64 values, bit 2k of qh[l] is the
/// high bit of its value l and bit 2k + 1 that of value l + 32.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
/// 6-bit k-quant: 16 sub-blocks of 16 with int8 scales: x = d * sc * (q - 32). Per 128 values:
/// ql[l] low nibble = value l, high = l + 64; ql[l + 32] low = l + 32, high = l + 96; qh[l] bits
/// 0-1, 2-3, 4-5, 6-7 = the top two bits of values l, l + 32, l + 64, l + 96.
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
/// 4-bit non-linear: x = d * kIq4nlValues[q], nibbles as Q4_0.
struct BlockIQ4_NL {
  uint16_t d;
  uint8_t qs[kQK32 / 2];
};
/// 4-bit non-linear super-block: 8 sub-blocks of 32 with 6-bit scales (offset 32): low nibble of
/// sub-block j in scales_l[j / 2] (j odd: high nibble), top two bits at bit 2j of scales_h.
/// x = d * (sc - 32) * kIq4nlValues[q]; each sub-block's 16 bytes of qs as IQ4_NL.
struct BlockIQ4_XS {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kQKK / 64];
  uint8_t qs[kQKK / 2];
};
/// Ternary, 1.6875 bits: x = (t - 1) * d with t in {0, 1, 2}. Five trits per byte of qs, four per
/// byte of qh, stored as the byte ceil(256 * T / 3^k) of the base-3 number T they spell (k trits).
/// See QuantizeTq1_0 for the order of the values.
struct BlockTQ1_0 {
  uint8_t qs[(kQKK - 4 * kQKK / 64) / 5];
  uint8_t qh[kQKK / 64];
  uint16_t d;
};
/// Ternary, 2.0625 bits: x = (q - 1) * d; per 128 values, qs[l] (l < 32) holds values l, l + 32,
/// l + 64, l + 96 in bits 0-1, 2-3, 4-5, 6-7.
struct BlockTQ2_0 {
  uint8_t qs[kQKK / 4];
  uint16_t d;
};
/// OCP MX FP4: E2M1 codes (nibbles as Q4_0) times a shared power of two whose E8M0 exponent is e.
struct BlockMXFP4 {
  uint8_t e;
  uint8_t qs[kQK32 / 2];
};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockIQ4_XS) == 136);
static_assert(sizeof(BlockTQ1_0) == 54);
static_assert(sizeof(BlockTQ2_0) == 66);
static_assert(sizeof(BlockMXFP4) == 17);

/// The 16 values of IQ4_NL / IQ4_XS codes (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};
/// E2M1 values of the MXFP4 codes, doubled so they are integers (the scale is halved instead).
inline constexpr int8_t kMxfp4Values[16] = {0, 1,  2,  3,  4,  6,  8,  12,
                                            0, -1, -2, -3, -4, -6, -8, -12};

/// Geometry of a type: `block_size` values take `type_size` bytes.
struct TypeTraits {
  Type type;
  std::string_view name;  // ggml_type_name: "f32", "q4_K", ...
  int block_size;
  int type_size;
};

inline constexpr TypeTraits kTypes[] = {
    {Type::kF32, "f32", 1, 4},
    {Type::kF16, "f16", 1, 2},
    {Type::kBF16, "bf16", 1, 2},
    {Type::kQ4_0, "q4_0", kQK32, sizeof(BlockQ4_0)},
    {Type::kQ4_1, "q4_1", kQK32, sizeof(BlockQ4_1)},
    {Type::kQ5_0, "q5_0", kQK32, sizeof(BlockQ5_0)},
    {Type::kQ5_1, "q5_1", kQK32, sizeof(BlockQ5_1)},
    {Type::kQ8_0, "q8_0", kQK32, sizeof(BlockQ8_0)},
    {Type::kQ2_K, "q2_K", kQKK, sizeof(BlockQ2_K)},
    {Type::kQ3_K, "q3_K", kQKK, sizeof(BlockQ3_K)},
    {Type::kQ4_K, "q4_K", kQKK, sizeof(BlockQ4_K)},
    {Type::kQ5_K, "q5_K", kQKK, sizeof(BlockQ5_K)},
    {Type::kQ6_K, "q6_K", kQKK, sizeof(BlockQ6_K)},
    {Type::kIQ4_NL, "iq4_nl", kQK32, sizeof(BlockIQ4_NL)},
    {Type::kIQ4_XS, "iq4_xs", kQKK, sizeof(BlockIQ4_XS)},
    {Type::kTQ1_0, "tq1_0", kQKK, sizeof(BlockTQ1_0)},
    {Type::kTQ2_0, "tq2_0", kQKK, sizeof(BlockTQ2_0)},
    {Type::kMXFP4, "mxfp4", kQK32, sizeof(BlockMXFP4)},
};

/// The traits of type id `id`, or nullptr for an id qtool does not know.
constexpr const TypeTraits* FindType(uint32_t id) {
  for (const TypeTraits& t : kTypes) {
    if (static_cast<uint32_t>(t.type) == id) return &t;
  }
  return nullptr;
}

/// The traits of a known type.
constexpr const TypeTraits& Traits(Type type) { return *FindType(static_cast<uint32_t>(type)); }

/// The type named `name`, ignoring case ("Q4_K", "q4_k", "iq4_xs"), or nothing.
constexpr std::optional<Type> TypeFromName(std::string_view name) {
  auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
  for (const TypeTraits& t : kTypes) {
    if (t.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) same = lower(t.name[i]) == lower(name[i]);
    if (same) return t.type;
  }
  return std::nullopt;
}

/// Bytes of a row of `n` values of `type`; `n` must be a multiple of the block size. Rows of a
/// GGUF tensor are contiguous, so a tensor is RowBytes(type, ne0) * (ne1 * ne2 * ne3) bytes.
constexpr uint64_t RowBytes(Type type, uint64_t n) {
  const TypeTraits& t = Traits(type);
  return n / static_cast<uint64_t>(t.block_size) * static_cast<uint64_t>(t.type_size);
}

}  // namespace qtool::ggml
