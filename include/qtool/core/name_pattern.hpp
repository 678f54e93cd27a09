// Regular expressions given by the user (--include, --exclude), matched against tensor names with
// RE2: matching takes time linear in the name and no recursion, whatever the pattern.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace re2 {
class RE2;
}

namespace qtool {

/// A compiled pattern, searched for anywhere in a name (RE2 syntax: ECMAScript's without
/// backreferences and lookaround). Throws OptionError naming `option` for a pattern RE2 refuses:
/// invalid, nested too deeply or too large.
class NamePattern {
 public:
  NamePattern(const std::string& pattern, std::string_view option);
  NamePattern(NamePattern&&) noexcept;
  NamePattern& operator=(NamePattern&&) noexcept;
  ~NamePattern();

  /// Whether the pattern matches somewhere in `name`.
  bool Search(std::string_view name) const;

 private:
  std::unique_ptr<re2::RE2> re_;
};

}  // namespace qtool
