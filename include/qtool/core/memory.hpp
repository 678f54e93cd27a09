// Hints about how the library's large buffers are used.
#pragma once

#include <cstddef>

namespace qtool {

/// Asks the kernel to back the whole pages inside [p, p + bytes) with transparent huge pages
/// (Linux madvise MADV_HUGEPAGE; nothing elsewhere or where the kernel declines). Call it before
/// the buffer is first written: a matrix of tens of megabytes then takes 512x fewer page faults
/// and TLB entries. The contents are unchanged.
void AdviseHugePages(void* p, size_t bytes);

}  // namespace qtool
