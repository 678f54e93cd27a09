#include "qtool/core/input_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "qtool/core/error.hpp"

namespace qtool {
namespace {

struct ReadInput {
  dev_t dev;
  ino_t ino;
  std::filesystem::path path;  // resolved
};

std::mutex& InputsMutex() {
  static std::mutex m;
  return m;
}

std::vector<ReadInput>& Inputs() {
  static std::vector<ReadInput> inputs;
  return inputs;
}

void RememberInput(const std::filesystem::path& path, const struct stat& st) {
  std::error_code ec;
  std::filesystem::path resolved = std::filesystem::weakly_canonical(path, ec);
  if (ec) resolved = std::filesystem::absolute(path, ec).lexically_normal();
  const std::lock_guard<std::mutex> lock(InputsMutex());
  for (const ReadInput& i : Inputs()) {
    if (i.dev == st.st_dev && i.ino == st.st_ino) return;
  }
  Inputs().push_back({st.st_dev, st.st_ino, std::move(resolved)});
}

}  // namespace

bool NamesReadInput(const std::filesystem::path& path, bool or_within) {
  struct stat st {};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  std::error_code ec;
  const std::filesystem::path root = std::filesystem::weakly_canonical(path, ec);
  const std::lock_guard<std::mutex> lock(InputsMutex());
  return std::any_of(Inputs().begin(), Inputs().end(), [&](const ReadInput& i) {
    if (exists && i.dev == st.st_dev && i.ino == st.st_ino) return true;
    if (!or_within || ec) return false;
    const auto [r, _] = std::mismatch(root.begin(), root.end(), i.path.begin(), i.path.end());
    return r == root.end();
  });
}

int OpenRegularFile(const std::filesystem::path& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  QTOOL_CHECK(fd >= 0, IoError, "{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno;
    ::close(fd);
    throw IoError(fmt::format("{}: not a regular file{}", path.string(),
                              err ? std::string(": ") + std::strerror(err) : ""));
  }
  RememberInput(path, st);
  // Reads of a regular file never block; clear the flag so that they behave as usual.
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

void CheckRegularFile(const std::filesystem::path& path) {
  struct stat st {};
  QTOOL_CHECK(::stat(path.c_str(), &st) == 0, IoError, "{}: cannot open: {}", path.string(),
              std::strerror(errno));
  QTOOL_CHECK(S_ISREG(st.st_mode), IoError, "{}: not a regular file", path.string());
  RememberInput(path, st);
}

std::string ReadRegularFile(const std::filesystem::path& path, uint64_t max_bytes) {
  const int fd = OpenRegularFile(path);
  struct stat st {};
  ::fstat(fd, &st);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(fd);
    throw IoError(fmt::format("{}: {} bytes is larger than the {} bytes accepted", path.string(),
                              size, max_bytes));
  }
  std::string text;
  text.resize(static_cast<size_t>(size));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t r = ::read(fd, text.data() + done, text.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = errno;
      ::close(fd);
      throw IoError(fmt::format("{}: cannot read: {}", path.string(),
                                r < 0 ? std::strerror(err) : "the file became shorter"));
    }
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  return text;
}

nlohmann::json ParseJsonBounded(std::string_view text, std::string_view label) {
  using json = nlohmann::json;
  // The callback sees each value start with its depth; stopping the parse there (by throwing)
  // means that no value deeper than the limit is ever built, copied or destroyed recursively.
  const json::parser_callback_t limit = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth) {
      throw FormatError(fmt::format("{}: JSON nests deeper than {} levels", label, kMaxJsonDepth));
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", label, e.what()));
  }
}

nlohmann::json ReadJsonFile(const std::filesystem::path& path) {
  return ParseJsonBounded(ReadRegularFile(path), path.string());
}

}  // namespace qtool
