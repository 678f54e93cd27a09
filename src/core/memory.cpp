#include "qtool/core/memory.hpp"

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qtool {

void AdviseHugePages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

void RetainFreedMemory() {
#if defined(__GLIBC__)
  constexpr int kThreshold = 1 << 30;
  ::mallopt(M_MMAP_THRESHOLD, kThreshold);
  ::mallopt(M_TRIM_THRESHOLD, kThreshold);
#endif
}

namespace {

// Idle buffers of released ScratchBuffers.
class ScratchCache {
 public:
  ~ScratchCache() {
    for (const Block& b : idle_) std::free(b.p);
  }

  std::pair<void*, size_t> Take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = idle_.size();
      for (size_t i = 0; i < idle_.size(); ++i) {
        const size_t c = idle_[i].capacity;
        if (c >= bytes && c / 2 <= bytes && (best == idle_.size() || c < idle_[best].capacity)) {
          best = i;
        }
      }
      if (best < idle_.size()) {
        const Block b = idle_[best];
        idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(best));
        return {b.p, b.capacity};
      }
      for (const Block& b : idle_) std::free(b.p);
      idle_.clear();
    }
    constexpr size_t kAlign = 64;
    const size_t capacity = (bytes + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, capacity);
    if (p == nullptr) throw std::bad_alloc();
    AdviseHugePages(p, capacity);
    return {p, capacity};
  }

  void Give(void* p, size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back({p, capacity});
  }

 private:
  struct Block {
    void* p;
    size_t capacity;
  };
  std::mutex mu_;
  std::vector<Block> idle_;
};

ScratchCache& Cache() {
  static ScratchCache cache;
  return cache;
}

}  // namespace

ScratchBuffer::ScratchBuffer(size_t bytes) {
  if (bytes == 0) return;
  std::tie(data_, capacity_) = Cache().Take(bytes);
}

ScratchBuffer::~ScratchBuffer() {
  if (data_ != nullptr) Cache().Give(data_, capacity_);
}

ScratchBuffer::ScratchBuffer(ScratchBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), capacity_(std::exchange(other.capacity_, 0)) {}

ScratchBuffer& ScratchBuffer::operator=(ScratchBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) Cache().Give(data_, capacity_);
    data_ = std::exchange(other.data_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

}  // namespace qtool
