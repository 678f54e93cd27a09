// Helpers shared by the per-ISA kernel units. Everything here has internal linkage (an unnamed
// namespace), so each unit gets its own copy compiled with its own flags.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "table.hpp"

namespace qtool::kernels::detail {
namespace {

/// A 64-byte aligned scratch buffer of at least n bytes for the calling thread, in one of four
/// slots (a kernel uses each slot once at a time). Buffers are kept and grown, never shrunk, so
/// repeated calls neither allocate nor page-fault; contents are unspecified on entry.
struct ScratchSlot {
  void* p = nullptr;
  size_t size = 0;
  ~ScratchSlot() { std::free(p); }
};
thread_local ScratchSlot scratch_slots[4];

class Scratch {
 public:
  Scratch(int slot, int64_t n) {
    ScratchSlot& s = scratch_slots[slot];
    const size_t bytes = static_cast<size_t>((n + 63) / 64 * 64 + 64);
    if (s.size < bytes) {
      std::free(s.p);
      s.p = std::aligned_alloc(64, bytes);
      s.size = bytes;
    }
    p_ = s.p;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_;
};

/// Runs body(in, out) over n elements in blocks of B; the last partial block goes through
// zero-padded copies so that the body only ever sees whole blocks.
template <int B, typename In, typename Out, typename Body>
void Blocks(const In* in, int64_t n, Out* out, Body body) {
  int64_t i = 0;
  for (; i + B <= n; i += B) body(in + i, out + i);
  if (i < n) {
    alignas(32) In tin[B] = {};
    alignas(32) Out tout[B];
    std::memcpy(tin, in + i, static_cast<size_t>(n - i) * sizeof(In));
    body(tin, tout);
    std::memcpy(out + i, tout, static_cast<size_t>(n - i) * sizeof(Out));
  }
}

/// Runs body(in) over n elements in blocks of B, the last one zero-padded.
template <int B, typename In, typename Body>
void BlocksIn(const In* in, int64_t n, Body body) {
  int64_t i = 0;
  for (; i + B <= n; i += B) body(in + i);
  if (i < n) {
    alignas(32) In tin[B] = {};
    std::memcpy(tin, in + i, static_cast<size_t>(n - i) * sizeof(In));
    body(tin);
  }
}

/// Codes in the next chunk of a group with `left` codes left (a multiple of 32): the largest of
/// max_codes, max_codes / 2, ..., 32 that fits.
inline int64_t ChunkCodes(int64_t left, int64_t max_codes) {
  int64_t c = max_codes;
  while (c > left) c /= 2;
  return c;
}

/// Reorders one token's activations to match INT4 weights unpacked a chunk at a time: a chunk of
/// c codes is c/2 packed bytes whose low nibbles are the even codes and high nibbles the odd
/// codes, so the chunk's activations are stored evens first, then odds. Chunks are taken per group
/// by ChunkCodes; group lengths (and cols) are multiples of 32.
template <typename T>
void PermuteForNibbles(const T* in, int64_t cols, int64_t group, int64_t max_codes, T* out) {
  for (int64_t g0 = 0; g0 < cols; g0 += group) {
    const int64_t n = group < cols - g0 ? group : cols - g0;
    for (int64_t off = 0; off < n;) {
      const int64_t c = ChunkCodes(n - off, max_codes);
      const T* src = in + g0 + off;
      T* dst = out + g0 + off;
      for (int64_t j = 0; j < c / 2; ++j) {
        dst[j] = src[2 * j];
        dst[c / 2 + j] = src[2 * j + 1];
      }
      off += c;
    }
  }
}

/// Sum of each group's activations for the zero-point term: sum (u - z) q = sum u q - z sum q.
inline void GroupSums(const int8_t* q, int64_t cols, int64_t group, int32_t* sums) {
  for (int64_t g0 = 0, g = 0; g0 < cols; g0 += group, ++g) {
    int32_t s = 0;
    for (int64_t i = g0; i < g0 + group && i < cols; ++i) s += q[i];
    sums[g] = s;
  }
}

inline int32_t ZeroOf(const QuantWeights& w, int64_t n, int64_t g) {
  return w.zeros ? w.zeros[n * w.groups_per_row() + g] : 1 << (w.bits - 1);
}

}  // namespace
}  // namespace qtool::kernels::detail
