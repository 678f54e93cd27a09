// Names of enumerators, defined once per enum as a table of {value, name} pairs from which both
// directions are read: the name of a value (for messages, reports and records) and the value of
// a name (for options and records).
// Example:
//   inline constexpr EnumName<Method> kMethodNames[] = {{Method::kGptq, "gptq"}, ...};
//   NameOf(kMethodNames, Method::kGptq)  // "gptq"
//   ValueOf(kMethodNames, "gptq")        // Method::kGptq; nullopt for a name not in the table
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace qtool {

template <typename E>
struct EnumName {
  E value;
  const char* name;
};

/// The name of `value` in `names`, or `none` for a value the table lacks.
template <typename E, size_t N>
constexpr const char* NameOf(const EnumName<E> (&names)[N], E value, const char* none = "?") {
  for (const EnumName<E>& n : names) {
    if (n.value == value) return n.name;
  }
  return none;
}

/// The value named `name` in `names`; nullopt for a name the table lacks.
template <typename E, size_t N>
constexpr std::optional<E> ValueOf(const EnumName<E> (&names)[N], std::string_view name) {
  for (const EnumName<E>& n : names) {
    if (name == n.name) return n.value;
  }
  return std::nullopt;
}

/// The names of `names` in table order joined by `sep`: the list an error message offers.
template <typename E, size_t N>
std::string JoinNames(const EnumName<E> (&names)[N], std::string_view sep = ", ") {
  std::string out;
  for (const EnumName<E>& n : names) {
    if (!out.empty()) out += sep;
    out += n.name;
  }
  return out;
}

}  // namespace qtool
