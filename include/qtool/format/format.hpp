// Typed number formats: one plain struct per format family and `Format`, the variant of them.
//
// A Format says how a weight matrix [rows, cols] (rows = output channels) is stored: element type,
// scale granularity and blocks. It holds no data and needs neither JSON nor the codecs: the text
// form (format/text.hpp, e.g. "int4:g128:asym") is how people write one, the record (io/
// format_record.hpp) how a checkpoint stores one, and FormatTraits<F> (format/traits.hpp) holds
// each family's parameter ranges, stored layout and bits per weight. docs/CODECS.md describes the
// formats themselves.
#pragma once

#include <cstdint>
#include <string_view>
#include <variant>

#include "qtool/core/enum_names.hpp"
#include "qtool/format/observer.hpp"

namespace qtool {

/// Which elements share one scale: the whole tensor, one row (output channel), or a group/block.
enum class Granularity { kTensor, kChannel, kGroup };

inline constexpr EnumName<Granularity> kGranularityNames[] = {{Granularity::kTensor, "tensor"},
                                                              {Granularity::kChannel, "channel"},
                                                              {Granularity::kGroup, "group"}};

inline constexpr const char* GranularityName(Granularity g) { return NameOf(kGranularityNames, g); }

/// Scale and zero-point of one group of an integer grid. `zero` is in stored-code units:
/// x^ = (u - zero) * scale.
struct GroupParams {
  float scale = 1.0f;
  int32_t zero = 0;
};

/// B-bit integers (2..8) on an affine grid, symmetric or with a zero-point, one scale per tensor,
/// channel or group of `group` consecutive elements of a row (of the flattened matrix with
/// `flat`). `g_idx`: a stored column-to-group map (GPTQ's act-order). `observer` chooses ranges.
struct IntFormat {
  int bits = 4;
  bool symmetric = true;
  Granularity granularity = Granularity::kGroup;
  int64_t group = 128;  // kGroup only
  bool flat = false;    // kGroup only
  bool g_idx = false;   // kGroup only, not with flat
  ObserverSpec observer{};
  friend bool operator==(const IntFormat&, const IntFormat&) = default;
};

/// {-1, 0, +1} with one absmean scale per tensor (BitNet b1.58), channel or group.
struct TernaryFormat {
  Granularity granularity = Granularity::kTensor;
  int64_t group = 128;  // kGroup only
  friend bool operator==(const TernaryFormat&, const TernaryFormat&) = default;
};

/// The 16 values of bitsandbytes' 4-bit formats: NF4 (QLoRA's NormalFloat) or its FP4, a float
/// with 2 exponent bits, 1 mantissa bit and bitsandbytes' own bias (not E2M1's values).
enum class Bnb4Map { kNf4, kFp4 };

inline constexpr EnumName<Bnb4Map> kBnb4MapNames[] = {{Bnb4Map::kNf4, "nf4"},
                                                      {Bnb4Map::kFp4, "fp4"}};

/// bitsandbytes' 4-bit formats, NF4 (the default) or FP4 (`map`): absmax blocks of `block`
/// elements of the flattened matrix, the absmax values optionally quantised to 8 bits
/// (`double_quant`).
struct Nf4Format {
  int64_t block = 64;
  bool double_quant = false;
  Bnb4Map map = Bnb4Map::kNf4;
  friend bool operator==(const Nf4Format&, const Nf4Format&) = default;
};

/// Element types of the small-float and MX formats (format/minifloat.hpp defines the floats).
enum class Element { kE4M3, kE5M2, kE3M2, kE2M3, kE2M1, kInt8 };

inline constexpr EnumName<Element> kElementNames[] = {
    {Element::kE4M3, "e4m3"}, {Element::kE5M2, "e5m2"}, {Element::kE3M2, "e3m2"},
    {Element::kE2M3, "e2m3"}, {Element::kE2M1, "e2m1"}, {Element::kInt8, "int8"}};

inline constexpr std::string_view ElementName(Element e) { return NameOf(kElementNames, e); }

inline constexpr int ElementBits(Element e) {
  switch (e) {
    case Element::kE4M3:
    case Element::kE5M2:
    case Element::kInt8:
      return 8;
    case Element::kE3M2:
    case Element::kE2M3:
      return 6;
    case Element::kE2M1:
      return 4;
  }
  return 0;
}

/// Small floats (FP8 E4M3/E5M2, FP6, FP4 E2M1) with an f32 scale per tensor, channel or
/// block of block_rows x block_cols (kGroup; 1 x g is a group along a row).
struct FloatFormat {
  Element element = Element::kE4M3;  // not kInt8
  Granularity granularity = Granularity::kChannel;
  int64_t block_rows = 1, block_cols = 32;  // kGroup only
  bool saturate = true;
  friend bool operator==(const FloatFormat&, const FloatFormat&) = default;
};

/// OCP Microscaling: blocks of `block` elements of a row share an E8M0 scale.
struct MxFormat {
  Element element = Element::kE2M1;
  int64_t block = 32;
  friend bool operator==(const MxFormat&, const MxFormat&) = default;
};

/// NVFP4 as compressed-tensors defines it (nvfp4-pack-quantized): E2M1 elements in blocks of 16
/// along a row, each block with an FP8 E4M3 scale, and one F32 global scale per tensor that the
/// block scales are divided by. It has no parameters.
struct Nvfp4Format {
  friend bool operator==(const Nvfp4Format&, const Nvfp4Format&) = default;
};

using Format =
    std::variant<IntFormat, TernaryFormat, Nf4Format, FloatFormat, MxFormat, Nvfp4Format>;

}  // namespace qtool
