// Error types and checks.
//
// Bad input (files, shapes, options, numbers) throws a subclass of qtool::Error whose message names
// what is at fault: the file, the tensor, the byte offset or the value. Each subclass maps to its
// own process exit code in the CLI. Kernels never throw: they state their invariants with
// QTOOL_DASSERT, which is active in Debug and sanitizer builds only.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace qtool {

/// Exit codes of the qtool CLI, one per error class (0 is success, 2 is a command line parse
/// error).
enum class ExitCode : int {
  kOk = 0,
  kInternal = 1,
  kUsage = 2,
  kOption = 3,
  kFormat = 4,
  kShape = 5,
  kNumeric = 6,
  kIo = 7,
  kOutputExists = 8,
};

/// Base of every error qtool reports to its user.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  virtual ExitCode exit_code() const { return ExitCode::kInternal; }
  virtual const char* kind() const { return "error"; }
};

#define QTOOL_DEFINE_ERROR(Name, code, label)                      \
  class Name : public Error {                                      \
   public:                                                         \
    using Error::Error;                                            \
    ExitCode exit_code() const override { return ExitCode::code; } \
    const char* kind() const override { return label; }            \
  }

/// An impossible or inconsistent option (bits outside 2..8, group size 0, ...).
QTOOL_DEFINE_ERROR(OptionError, kOption, "invalid option");
/// A malformed file: truncated, bad header, bad JSON, unknown dtype, bad offsets.
QTOOL_DEFINE_ERROR(FormatError, kFormat, "invalid file");
/// A tensor whose shape does not fit what the operation needs.
QTOOL_DEFINE_ERROR(ShapeError, kShape, "invalid shape");
/// NaN or Inf where a finite number is required.
QTOOL_DEFINE_ERROR(NumericError, kNumeric, "invalid value");
/// A file system failure: cannot open, read, write or rename.
QTOOL_DEFINE_ERROR(IoError, kIo, "i/o error");
/// The output path exists and overwriting was not asked for.
QTOOL_DEFINE_ERROR(OutputExistsError, kOutputExists, "output exists");

#undef QTOOL_DEFINE_ERROR

}  // namespace qtool

/// Throws `ErrorClass` (named as at the call site) with a fmt-formatted message when `cond` is
/// false. Example: QTOOL_CHECK(bits >= 2 && bits <= 8, OptionError, "bits must be in 2..8, got {}",
/// bits);
#define QTOOL_CHECK(cond, ErrorClass, ...)          \
  do {                                              \
    if (!(cond)) [[unlikely]] {                     \
      throw ErrorClass(::fmt::format(__VA_ARGS__)); \
    }                                               \
  } while (0)

/// Internal invariant, checked in Debug and sanitizer builds; prints file:line and aborts.
#if !defined(NDEBUG) || defined(QTOOL_ENABLE_DASSERT)
#define QTOOL_DASSERT(cond)                                                             \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)
#else
#define QTOOL_DASSERT(cond) \
  do {                      \
  } while (0)
#endif
