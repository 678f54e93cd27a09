// Element types of tensors as the safetensors format names them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

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

/// The safetensors name of a dtype ("F32", "BF16", "F8_E4M3", ...).
constexpr std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kBool:
      return "BOOL";
    case DType::kU8:
      return "U8";
    case DType::kI8:
      return "I8";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kF8E5M2:
      return "F8_E5M2";
    case DType::kF8E8M0:
      return "F8_E8M0";
    case DType::kI16:
      return "I16";
    case DType::kU16:
      return "U16";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kU32:
      return "U32";
    case DType::kF32:
      return "F32";
    case DType::kF64:
      return "F64";
    case DType::kI64:
      return "I64";
    case DType::kU64:
      return "U64";
    case DType::kF4:
      return "F4";
    case DType::kF6E2M3:
      return "F6_E2M3";
    case DType::kF6E3M2:
      return "F6_E3M2";
  }
  return "?";
}

/// Parses a safetensors dtype name; nullopt for an unknown name.
inline std::optional<DType> ParseDType(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(DType::kF6E3M2); ++i) {
    const auto t = static_cast<DType>(i);
    if (DTypeName(t) == name) return t;
  }
  return std::nullopt;
}

/// True for the floating point types qtool reads as weights (F64, F32, F16, BF16).
constexpr bool IsFloatWeightType(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}

}  // namespace qtool
