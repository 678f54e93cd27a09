// Hints about how the library's large buffers are used, and a cache that reuses them.
#pragma once

#include <cstddef>

namespace qtool {

/// Asks the kernel to back the whole pages inside [p, p + bytes) with transparent huge pages
/// (Linux madvise MADV_HUGEPAGE; nothing elsewhere or where the kernel declines). Call it before
/// the buffer is first written: a matrix of tens of megabytes then takes 512x fewer page faults
/// and TLB entries. The contents are unchanged.
void AdviseHugePages(void* p, size_t bytes);

/// Makes the process keep the memory of freed large blocks for its next allocations instead of
/// returning it to the system (glibc: the mmap and trim thresholds raised to 1 GiB; nothing
/// elsewhere). For applications that allocate and free matrices of tens of megabytes again and
/// again, a solver's results layer after layer: fresh memory costs a page fault and the zeroing of
/// every page, about 0.1 s for 80 MB on a virtual machine. Peak memory is unchanged, but the
/// process holds its peak until it exits. Call it once at start-up, before any thread starts.
void RetainFreedMemory();

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
