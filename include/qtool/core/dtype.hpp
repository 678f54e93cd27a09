// Element types of tensors as the safetensors format names them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "qtool/core/enum_names.hpp"

namespace qtool {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kF8E4M3,  // OCP FP8 E4M3 "fn": no infinities, max 448, NaN = S.1111.111
  kF8E5M2,  // OCP FP8 E5M2: IEEE-like, with infinities
  kF8E8M0,  // OCP E8M0 shared scale: 2^(e-127), 0xff = NaN
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF4,      // FP4 E2M1, two per byte
  kF6E2M3,  // FP6, four per three bytes
  kF6E3M2,
};

/// Size of one element in bits (4 and 6 for the sub-byte float types).
constexpr int BitsOf(DType t) {
  switch (t) {
    case DType::kBool:
    case DType::kU8:
    case DType::kI8:
    case DType::kF8E4M3:
    case DType::kF8E5M2:
    case DType::kF8E8M0:
      return 8;
    case DType::kI16:
    case DType::kU16:
    case DType::kF16:
    case DType::kBF16:
      return 16;
    case DType::kI32:
    case DType::kU32:
    case DType::kF32:
      return 32;
    case DType::kF64:
    case DType::kI64:
    case DType::kU64:
      return 64;
    case DType::kF4:
      return 4;
    case DType::kF6E2M3:
    case DType::kF6E3M2:
      return 6;
  }
  return 0;
}

/// The safetensors name of each dtype ("F32", "BF16", "F8_E4M3", ...).
inline constexpr EnumName<DType> kDTypeNames[] = {
    {DType::kBool, "BOOL"},      {DType::kU8, "U8"},          {DType::kI8, "I8"},
    {DType::kF8E4M3, "F8_E4M3"}, {DType::kF8E5M2, "F8_E5M2"}, {DType::kF8E8M0, "F8_E8M0"},
    {DType::kI16, "I16"},        {DType::kU16, "U16"},        {DType::kF16, "F16"},
    {DType::kBF16, "BF16"},      {DType::kI32, "I32"},        {DType::kU32, "U32"},
    {DType::kF32, "F32"},        {DType::kF64, "F64"},        {DType::kI64, "I64"},
    {DType::kU64, "U64"},        {DType::kF4, "F4"},          {DType::kF6E2M3, "F6_E2M3"},
    {DType::kF6E3M2, "F6_E3M2"},
};

/// The safetensors name of a dtype.
constexpr std::string_view DTypeName(DType t) { return NameOf(kDTypeNames, t); }

/// Parses a safetensors dtype name; nullopt for an unknown name.
constexpr std::optional<DType> ParseDType(std::string_view name) {
  return ValueOf(kDTypeNames, name);
}

/// True for the floating point types qtool reads as weights (F64, F32, F16, BF16).
constexpr bool IsFloatWeightType(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}

}  // namespace qtool
