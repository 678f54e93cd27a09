// Helpers shared by the per-ISA kernel units. Everything here has internal linkage (an unnamed
// namespace), so each unit gets its own copy compiled with its own flags.
#pragma once

#include <algorithm>
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
/// c codes is c/2 packed bytes; with the integer codec's packing their low nibbles are the even
/// codes and high nibbles the odd codes, so the chunk's activations are stored evens first, then
/// odds (odds first for the NF4 codec's packing, `high_first`, which puts the even code in the
/// high nibble). Chunks are taken per group by ChunkCodes; group lengths and cols are multiples
/// of 32.
template <typename T>
void PermuteForNibbles(const T* in, int64_t cols, int64_t group, int64_t max_codes, T* out,
                       bool high_first = false) {
  const int lo = high_first ? 1 : 0;
  for (int64_t g0 = 0; g0 < cols; g0 += group) {
    const int64_t n = group < cols - g0 ? group : cols - g0;
    for (int64_t off = 0; off < n;) {
      const int64_t c = ChunkCodes(n - off, max_codes);
      const T* src = in + g0 + off;
      T* dst = out + g0 + off;
      for (int64_t j = 0; j < c / 2; ++j) {
        dst[j] = src[2 * j + lo];
        dst[c / 2 + j] = src[2 * j + 1 - lo];
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

/// The f32-accumulating 4-bit kernels over rows [n0, n1), shared by every ISA; `Ops` supplies the
/// vector parts: Vec, Zero(), MulAdd(acc, dot, s) = acc + dot * s, Sum(v), Bf16ToF32(in, n, out),
/// NibbleDot(row, x, g0, len, lut) = lanes of sum_j lut(u_j) * x_j over 32 codes per step (x
/// permuted by PermuteForNibbles with 32-code chunks), ZeroLut(z): u -> u - z, Nf4Lut(values):
/// u -> values[u].
template <typename Ops>
void GemmW4A16With(const uint16_t* a, int64_t m, const QuantWeights& w, int64_t n0, int64_t n1,
                   float* y) {
  const int64_t k = w.cols, ng = w.groups_per_row(), rb = w.row_bytes();
  Scratch f32(0, k * 4), perm(1, m * k * 4);
  for (int64_t t = 0; t < m; ++t) {
    Ops::Bf16ToF32(a + t * k, k, f32.as<float>());
    PermuteForNibbles(f32.as<float>(), k, w.group, 32, perm.as<float>() + t * k);
  }
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.codes + n * rb;
    for (int64_t t = 0; t < m; ++t) {
      auto acc = Ops::Zero();
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t g0 = g * w.group;
        const auto dot = Ops::NibbleDot(row, perm.as<float>() + t * k, g0,
                                        std::min(w.group, k - g0), Ops::ZeroLut(ZeroOf(w, n, g)));
        acc = Ops::MulAdd(acc, dot, w.scales[n * ng + g]);
      }
      y[t * w.rows + n] = Ops::Sum(acc);
    }
  }
}

template <typename Ops>
void GemvNf4With(const float* x, const Nf4Weights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols, ng = (k + w.group - 1) / w.group, rb = (k + 1) / 2;
  Scratch perm(0, k * 4);
  PermuteForNibbles(x, k, w.group, 32, perm.as<float>(), /*high_first=*/true);
  const auto lut = Ops::Nf4Lut(Nf4Table());
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.codes + n * rb;
    auto acc = Ops::Zero();
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t g0 = g * w.group;
      acc = Ops::MulAdd(acc,
                        Ops::NibbleDot(row, perm.as<float>(), g0, std::min(w.group, k - g0), lut),
                        w.scales[n * ng + g]);
    }
    y[n] = Ops::Sum(acc);
  }
}

}  // namespace
}  // namespace qtool::kernels::detail
