#include "qtool/core/input_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "qtool/core/error.hpp"

namespace qtool {

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
