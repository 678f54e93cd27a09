// Terminal output helpers shared by the subcommands: progress lines and human-readable sizes.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "qtool/core/error.hpp"

namespace qtool::cli {

/// One progress line on stderr, redrawn in place; silent unless stderr is a terminal.
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), enabled_(::isatty(2) == 1) {}
  ~Progress() { Done(); }

  void Update(size_t done, size_t total, const std::string& item) {
    if (!enabled_) return;
    std::lock_guard<std::mutex> lock(mu_);
    std::fprintf(stderr, "\r\033[K%s [%zu/%zu] %s", label_.c_str(), done, total, item.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void Done() {
    if (enabled_ && drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::mutex mu_;
};

/// "1.23 GB", "512 B", ... (decimal units).
inline std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  int u = 0;
  while (bytes >= 1000.0 && u < 5) {
    bytes /= 1000.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[u]);
}

}  // namespace qtool::cli
