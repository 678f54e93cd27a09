// Shared helpers for the tests: locating ../shared, scratch directories, running the CLI.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qtool/core/error.hpp"

namespace qtool::testing {

/// ../shared beside the source tree (or $QTOOL_SHARED_DIR), or nullopt when it is absent.
std::optional<std::filesystem::path> SharedDir();

/// The model directories under ../shared/models that hold a Hugging Face checkpoint.
std::vector<std::filesystem::path> SharedModels();

/// Skips the current test with a message naming what is missing, when ../shared is absent.
#define QTOOL_REQUIRE_SHARED()                                                      \
  do {                                                                              \
    if (!::qtool::testing::SharedDir()) {                                           \
      GTEST_SKIP() << "../shared is absent: set QTOOL_SHARED_DIR to run this test"; \
    }                                                                               \
  } while (0)

/// The qtool record of the int codec: `bits`, groups of `group` columns (0: one scale per row).
inline nlohmann::json IntRecord(int bits, int64_t group, bool symmetric = true) {
  nlohmann::json r = {{"codec", "int"}, {"bits", bits}, {"symmetric", symmetric}};
  if (group > 0) {
    r["granularity"] = "group";
    r["group_size"] = group;
  } else {
    r["granularity"] = "channel";
  }
  return r;
}

/// A fresh directory under the system temp dir, removed with its contents on destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// Result of running the qtool CLI.
struct CliResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

/// Runs the built qtool binary with `args` (each passed as one argument), capturing its output.
CliResult RunCli(const std::vector<std::string>& args);

/// A safetensors file image: the 8-byte little-endian header length, the header text, the data.
std::string SafetensorsImage(const std::string& header, const std::string& data);

/// The message of the error that f() throws, which must be of class E (a qtool error class): a
/// test failure when f() returns (and "") or throws another qtool error (and its message).
template <typename E, typename F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const Error& e) {
    ADD_FAILURE() << "wrong error class " << e.kind() << ": " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return {};
}

/// Writes raw bytes to a file.
void WriteFile(const std::filesystem::path& path, const std::string& bytes);
/// Reads a whole file.
std::string ReadFile(const std::filesystem::path& path);

}  // namespace qtool::testing
