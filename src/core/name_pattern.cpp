#include "qtool/core/name_pattern.hpp"

#include <re2/re2.h>

#include "qtool/core/error.hpp"

namespace qtool {

NamePattern::NamePattern(const std::string& pattern, std::string_view option) {
  RE2::Options o;
  o.set_log_errors(false);
  o.set_max_mem(int64_t{32} << 20);  // a pattern whose automaton needs more is refused
  re_ = std::make_unique<re2::RE2>(pattern, o);
  QTOOL_CHECK(re_->ok(), OptionError, "{} rule \"{}\" is not a valid regular expression: {}",
              option, pattern, re_->error());
}

NamePattern::NamePattern(NamePattern&&) noexcept = default;
NamePattern& NamePattern::operator=(NamePattern&&) noexcept = default;
NamePattern::~NamePattern() = default;

bool NamePattern::Search(std::string_view name) const {
  return re2::RE2::PartialMatch(re2::StringPiece(name.data(), name.size()), *re_);
}

}  // namespace qtool
