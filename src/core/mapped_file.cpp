#include "qtool/core/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"

namespace qtool {
namespace {

// madvise needs a page-aligned start: widen [offset, offset + len) to whole pages inside the map.
void Advise(const std::byte* base, size_t size, size_t offset, size_t len, int advice) {
  if (base == nullptr || len == 0 || offset >= size) return;
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t end = std::min(size, offset + len);
  const size_t start = offset / page * page;
  ::madvise(const_cast<std::byte*>(base) + start, end - start, advice);
}

// The live maps, by start address, for FindMappedFile.
struct MapRegistry {
  std::mutex mu;
  std::map<const std::byte*, std::pair<size_t, std::filesystem::path>> maps;
};

MapRegistry& Maps() {
  static MapRegistry* r = new MapRegistry;  // never destroyed: a fault may be reported at exit
  return *r;
}

}  // namespace

bool FindMappedFile(const void* addr, std::filesystem::path* path, size_t* offset) {
  MapRegistry& r = Maps();
  std::lock_guard<std::mutex> lock(r.mu);
  const auto* p = static_cast<const std::byte*>(addr);
  auto it = r.maps.upper_bound(p);
  if (it == r.maps.begin()) return false;
  --it;
  const auto delta = static_cast<size_t>(p - it->first);
  if (delta >= it->second.first) return false;
  *path = it->second.second;
  *offset = delta;
  return true;
}

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  fd_ = OpenRegularFile(path);
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    Reset();
    throw IoError(fmt::format("{}: cannot stat: {}", path.string(), std::strerror(err)));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      Reset();
      throw IoError(fmt::format("{}: cannot map {} bytes: {}", path.string(), st.st_size,
                                std::strerror(err)));
    }
    data_ = static_cast<const std::byte*>(p);
    std::lock_guard<std::mutex> lock(Maps().mu);
    Maps().maps[data_] = {size_, path_};
  }
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Reset();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

MappedFile::~MappedFile() { Reset(); }

void MappedFile::Reset() noexcept {
  if (data_ != nullptr) {
    {
      std::lock_guard<std::mutex> lock(Maps().mu);
      Maps().maps.erase(data_);
    }
    ::munmap(const_cast<std::byte*>(data_), size_);
  }
  if (fd_ >= 0) ::close(fd_);
  data_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

void MappedFile::Prefetch(size_t offset, size_t len) const {
  Advise(data_, size_, offset, len, MADV_WILLNEED);
}

void MappedFile::Release(size_t offset, size_t len) const {
  Advise(data_, size_, offset, len, MADV_DONTNEED);
}

void MappedFile::Read(size_t offset, std::span<std::byte> dst) const {
  size_t done = 0;
  while (done < dst.size()) {
    const ssize_t r =
        ::pread(fd_, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    QTOOL_CHECK(r > 0, IoError, "{}: cannot read {} bytes at offset {}: {}", path_.string(),
                dst.size() - done, offset + done,
                r < 0 ? std::strerror(errno) : "the file ends there (was it truncated?)");
    done += static_cast<size_t>(r);
  }
}

}  // namespace qtool
