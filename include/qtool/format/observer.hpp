// Observer specs: which rule chooses the range of an integer grid (quant/observer.hpp implements
// them; docs/CODECS.md, "Observers"). Header-only, so that formats can name their observer.
#pragma once

#include <fmt/format.h>

#include <charconv>
#include <string>
#include <string_view>

#include "qtool/core/error.hpp"

namespace qtool {

enum class ObserverKind { kMinMax, kPercentile, kMse, kKl };

struct ObserverSpec {
  ObserverKind kind = ObserverKind::kMinMax;
  double percentile = 99.99;  // kPercentile, in (0, 100]
  double norm = 2.0;          // kMse: the p of the Lp error, in (0, 16]

  /// Parses "minmax", "percentile:P", "mse", "mse:P" or "kl"; throws OptionError otherwise.
  static ObserverSpec Parse(std::string_view text);
  /// The text Parse reads back.
  std::string ToString() const;

  friend bool operator==(const ObserverSpec& a, const ObserverSpec& b) {
    return a.kind == b.kind &&
           (a.kind != ObserverKind::kPercentile || a.percentile == b.percentile) &&
           (a.kind != ObserverKind::kMse || a.norm == b.norm);
  }
};

namespace detail {

// A finite decimal number, the whole of `arg`, or OptionError naming the observer `text`.
inline double ParseObserverNumber(std::string_view arg, std::string_view text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), v);
  QTOOL_CHECK(ec == std::errc() && end == arg.data() + arg.size(), OptionError,
              "observer \"{}\": \"{}\" is not a number", text, arg);
  return v;
}

}  // namespace detail

inline ObserverSpec ObserverSpec::Parse(std::string_view text) {
  ObserverSpec s;
  const size_t colon = text.find(':');
  const std::string_view name = text.substr(0, colon);
  const std::string_view arg = colon == std::string_view::npos ? "" : text.substr(colon + 1);
  if (name == "minmax" && arg.empty()) {
    s.kind = ObserverKind::kMinMax;
  } else if (name == "percentile") {
    s.kind = ObserverKind::kPercentile;
    if (!arg.empty()) s.percentile = detail::ParseObserverNumber(arg, text);
    QTOOL_CHECK(s.percentile > 0 && s.percentile <= 100, OptionError,
                "observer \"{}\": the percentile must be in (0, 100]", text);
  } else if (name == "mse") {
    s.kind = ObserverKind::kMse;
    if (!arg.empty()) s.norm = detail::ParseObserverNumber(arg, text);
    QTOOL_CHECK(s.norm > 0 && s.norm <= 16, OptionError,
                "observer \"{}\": the norm must be in (0, 16]", text);
  } else if (name == "kl" && arg.empty()) {
    s.kind = ObserverKind::kKl;
  } else {
    throw OptionError(
        fmt::format("unknown observer \"{}\" (known: minmax, percentile:P, mse, mse:P, kl)", text));
  }
  return s;
}

inline std::string ObserverSpec::ToString() const {
  switch (kind) {
    case ObserverKind::kMinMax:
      return "minmax";
    case ObserverKind::kPercentile:
      return fmt::format("percentile:{}", percentile);
    case ObserverKind::kMse:
      return norm == 2.0 ? "mse" : fmt::format("mse:{}", norm);
    case ObserverKind::kKl:
      return "kl";
  }
  return "?";
}

}  // namespace qtool
