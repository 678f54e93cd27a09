// Hints about how the library's large buffers are used, and a cache that reuses them.
#pragma once

#include <cstddef>

namespace qtool {

/// Asks the kernel to back the whole pages inside [p, p + bytes) with transparent huge pages
/// (Linux madvise MADV_HUGEPAGE; nothing elsewhere or where the kernel declines). Call it before
/// the buffer is first written: a matrix of tens of megabytes then takes 512x fewer page faults
/// and TLB entries. The contents are unchanged.
void AdviseHugePages(void* p, size_t bytes);

/// A large scratch buffer (64-byte aligned, huge pages advised, contents unspecified) taken from a
/// process-wide cache of released ones, and given back to it on destruction. Solvers run layer
/// after layer on the same shapes; reusing their buffers saves zeroing and faulting in fresh
/// memory and the TLB shootdowns of returning it to the system. The cache never holds more than
/// it was just asked for: a request that no idle buffer fits (between the size asked and twice
/// that) first frees every idle buffer, so peak memory stays that of plain allocation.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  explicit ScratchBuffer(size_t bytes);
  ~ScratchBuffer();
  ScratchBuffer(ScratchBuffer&& other) noexcept;
  ScratchBuffer& operator=(ScratchBuffer&& other) noexcept;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace qtool
