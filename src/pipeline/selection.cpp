#include "qtool/pipeline/selection.hpp"

#include <algorithm>
#include <span>

#include "qtool/core/dtype.hpp"

namespace qtool {
namespace {

std::vector<NamePattern> CompileRules(const std::vector<std::string>& rules, const char* option) {
  std::vector<NamePattern> out;
  for (const std::string& r : rules) out.emplace_back(r, option);
  return out;
}

bool AnyMatch(std::span<const NamePattern> rules, const std::string& name) {
  return std::any_of(rules.begin(), rules.end(),
                     [&](const NamePattern& r) { return r.Search(name); });
}

}  // namespace

TensorSelection::TensorSelection(const QuantizeOptions& options)
    : include_(CompileRules(options.include, "--include")),
      exclude_(CompileRules(options.exclude, "--exclude")),
      explicit_include_(!options.include.empty()),
      default_exclude_(kDefaultExclude, "the default exclude rule") {
  include_.emplace_back(kDefaultInclude, "the default include rule");
}

TensorSelection::Decision TensorSelection::Decide(const TensorSpec& t) const {
  if (AnyMatch(exclude_, t.name) || !AnyMatch(include_, t.name)) return Decision::kKeep;
  const bool by_user =
      explicit_include_ && AnyMatch(std::span(include_).first(include_.size() - 1), t.name);
  if (!by_user && default_exclude_.Search(t.name)) return Decision::kKeep;
  if (t.shape.size() == 2 && IsFloatWeightType(t.dtype)) return Decision::kQuantize;
  return by_user ? Decision::kNotMatrix : Decision::kKeep;
}

bool SelectedForQuantization(const TensorSpec& t, const QuantizeOptions& options) {
  return TensorSelection(options).Decide(t) == TensorSelection::Decision::kQuantize;
}

}  // namespace qtool
