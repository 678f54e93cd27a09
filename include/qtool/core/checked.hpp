// Overflow-checked integer arithmetic for sizes computed from files and options.
#pragma once

#include <concepts>
#include <initializer_list>
#include <optional>

namespace qtool {

/// a + b, or nullopt when the sum does not fit in T.
template <std::integral T>
[[nodiscard]] constexpr std::optional<T> CheckedAdd(T a, T b) {
  T r{};
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// a * b, or nullopt when the product does not fit in T.
template <std::integral T>
[[nodiscard]] constexpr std::optional<T> CheckedMul(T a, T b) {
  T r{};
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// The product of `factors`, or nullopt when it (or a partial product) does not fit in T.
template <std::integral T>
[[nodiscard]] constexpr std::optional<T> CheckedProduct(std::initializer_list<T> factors) {
  T r{1};
  for (const T f : factors) {
    if (__builtin_mul_overflow(r, f, &r)) return std::nullopt;
  }
  return r;
}

/// Whether `v` (of any integer type) is representable in T.
template <std::integral T, std::integral U>
[[nodiscard]] constexpr bool FitsIn(U v) {
  return std::in_range<T>(v);
}

}  // namespace qtool
