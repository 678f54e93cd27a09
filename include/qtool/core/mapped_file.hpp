// Read-only memory map of a whole file.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>

namespace qtool {

/// A read-only, private memory map of a file, which also stays open for Read. Movable, not
/// copyable. An empty file maps to an empty span. Throws IoError when the file cannot be opened or
/// mapped, or is not a regular file (a FIFO or device is refused without waiting on it).
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

  /// Hints that [offset, offset + len) will be read soon (madvise WILLNEED).
  void Prefetch(size_t offset, size_t len) const;
  /// Drops [offset, offset + len) from this process's resident set; the pages stay in the page
  /// cache and are mapped again on the next access. Keeps RSS bounded while streaming a large file.
  void Release(size_t offset, size_t len) const;
  /// Copies [offset, offset + dst.size()) of the file into dst with pread: no page faults and no
  /// mapping to drop afterwards, for data read once. Throws IoError when the file ends early.
  void Read(size_t offset, std::span<std::byte> dst) const;

 private:
  void Reset() noexcept;

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
};

/// When `addr` lies inside the map of a live MappedFile: that file's path and the offset of
/// `addr` in it, to name the file after a fault there (SIGBUS: the file was truncated under the
/// map). False otherwise.
bool FindMappedFile(const void* addr, std::filesystem::path* path, size_t* offset);

}  // namespace qtool
