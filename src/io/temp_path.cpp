#include "qtool/io/temp_path.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>

namespace qtool {

std::filesystem::path TempSiblingPath(const std::filesystem::path& path) {
  static std::atomic<unsigned> counter{0};
  std::filesystem::path abs = std::filesystem::absolute(path).lexically_normal();
  if (abs.filename().empty()) abs = abs.parent_path();  // "dir/" names the directory itself
  return abs.parent_path() / fmt::format(".{}.qtool-tmp-{}-{}", abs.filename().string(), ::getpid(),
                                         counter.fetch_add(1));
}

}  // namespace qtool
