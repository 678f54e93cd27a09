// Helpers shared by the per-ISA kernel units. Everything here has internal linkage (an unnamed
// namespace), so each unit gets its own copy compiled with its own flags.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "params_inl.hpp"
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

/// The running lanes of one block of AccumulateErrors on vectors of Ops::kWidth lanes, 4 or 8.
/// `Ops` supplies Vec, Zero(), LoadRuns(p) (the kWidth / 4 runs of 4 floats at p, p + 8, ...),
/// Store(p, v), Sub, Fma(acc, a, b) = acc + a * b with one rounding, Abs, and
/// Max(acc, v) = std::max(acc, v).
template <typename Ops>
class ErrorLanes {
 public:
  using Vec = typename Ops::Vec;
  static_assert(Ops::kWidth == 4 || Ops::kWidth == 8);
  ErrorLanes() { Clear(); }
  /// Adds the 16 pairs at px, py.
  void Step(const float* px, const float* py) {
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t v = 0; v < V; ++v) {
        const int64_t at = 2 * v * Ops::kWidth + 4 * h;
        Add(v, Ops::LoadRuns(px + at), Ops::LoadRuns(py + at));
      }
    }
  }
  /// Adds half a step held in one vector of 8 lanes: run 2q + h of the 16 pairs in half q of a
  /// and b, for h = 0, then for h = 1.
  void Step(Vec a, Vec b) {
    static_assert(V == 1);
    Add(0, a, b);
  }
  /// Ends the block: its lanes added to *s in lane order, and a new block started.
  void Flush(ErrorStats* s) {
    alignas(64) float lanes[5][kErrorLanes];
    for (int64_t v = 0; v < V; ++v) {
      Ops::Store(lanes[0] + v * Ops::kWidth, xx_[v]);
      Ops::Store(lanes[1] + v * Ops::kWidth, ee_[v]);
      Ops::Store(lanes[2] + v * Ops::kWidth, yy_[v]);
      Ops::Store(lanes[3] + v * Ops::kWidth, xy_[v]);
      Ops::Store(lanes[4] + v * Ops::kWidth, m_[v]);
    }
    AddErrorLanes(lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], s);
    Clear();
  }

 private:
  static constexpr int64_t V = kErrorLanes / Ops::kWidth;
  void Add(int64_t v, Vec a, Vec b) {
    const Vec e = Ops::Sub(a, b);
    xx_[v] = Ops::Fma(xx_[v], a, a);
    ee_[v] = Ops::Fma(ee_[v], e, e);
    yy_[v] = Ops::Fma(yy_[v], b, b);
    xy_[v] = Ops::Fma(xy_[v], a, b);
    m_[v] = Ops::Max(m_[v], Ops::Abs(e));
  }
  void Clear() {
    for (int64_t v = 0; v < V; ++v) xx_[v] = ee_[v] = yy_[v] = xy_[v] = m_[v] = Ops::Zero();
  }
  Vec xx_[V], ee_[V], yy_[V], xy_[V], m_[V];
};

/// AccumulateErrors on vectors (see ErrorLanes); the last partial step of a block goes through
/// zero-padded copies, which add exact zeros.
template <typename Ops>
void AccumulateErrorsWith(const float* x, const float* y, int64_t n, ErrorStats* s) {
  ErrorLanes<Ops> lanes;
  for (int64_t i0 = 0; i0 < n; i0 += kErrorBlock) {
    const int64_t len = std::min(kErrorBlock, n - i0);
    int64_t i = 0;
    for (; i + kErrorStep <= len; i += kErrorStep) lanes.Step(x + i0 + i, y + i0 + i);
    if (i < len) {
      alignas(64) float tx[kErrorStep] = {}, ty[kErrorStep] = {};
      std::memcpy(tx, x + i0 + i, static_cast<size_t>(len - i) * sizeof(float));
      std::memcpy(ty, y + i0 + i, static_cast<size_t>(len - i) * sizeof(float));
      lanes.Step(tx, ty);
    }
    lanes.Flush(s);
  }
  s->n += n;
}

/// FirstNonFinite in blocks of 1024: Ops::AnyNonFinite(p) tells whether any of the Ops::kWidth
/// floats at p is NaN or Inf; a block with one is searched element by element.
template <typename Ops>
int64_t FirstNonFiniteWith(const float* x, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += kErrorBlock) {
    const int64_t len = std::min(kErrorBlock, n - i0);
    bool any = false;
    int64_t i = 0;
    for (; i + Ops::kWidth <= len; i += Ops::kWidth) any |= Ops::AnyNonFinite(x + i0 + i);
    for (; i < len; ++i) any |= !std::isfinite(x[i0 + i]);
    if (!any) continue;
    for (i = 0; i < len; ++i) {
      if (!std::isfinite(x[i0 + i])) return i0 + i;
    }
  }
  return -1;
}

/// QuantizeGroups from a family's own min-max, quantisation and dequantisation kernels, called
/// directly so that the per-group work inlines.
template <auto MinMaxFn, auto QuantizeFn, auto DequantizeFn>
void QuantizeGroupsWith(const float* x, int64_t n, int64_t glen, const QuantSpec& spec,
                        uint8_t* codes, float* scales, uint8_t* zeros, float* deq) {
  const int32_t umax = (1 << spec.bits) - 1;
  for (int64_t g0 = 0, g = 0; g0 < n; g0 += glen, ++g) {
    const int64_t len = std::min(glen, n - g0);
    float lo, hi;
    MinMaxFn(x + g0, len, &lo, &hi);
    const GroupParams p = qtool::detail::GroupParamsFromRange(lo, hi, spec);
    scales[g] = p.scale;
    if (zeros) zeros[g] = static_cast<uint8_t>(p.zero);
    QuantizeFn(x + g0, len, p, umax, codes + g0);
    if (deq) DequantizeFn(codes + g0, len, p, deq + g0);
  }
}

/// QuantizeStoredRows from a family's own kernels, one group at a time: each group is converted
/// into per-thread scratch and quantised, decoded, compared and packed there while it is in L1,
/// instead of each step walking the whole chunk of rows. `Ops` as for ErrorLanes and
/// FirstNonFiniteWith.
template <typename Ops, auto Bf16Fn, auto F16Fn, auto MinMaxFn, auto QuantizeFn, auto DequantizeFn,
          auto PackFn>
int64_t QuantizeStoredRowsWith(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                               int64_t glen, const QuantSpec& spec, uint8_t* packed, float* scales,
                               uint8_t* zeros, ErrorStats* s) {
  const int32_t umax = (1 << spec.bits) - 1;
  const int64_t ng = (cols + glen - 1) / glen, row_bytes = (cols * spec.bits + 7) / 8;
  Scratch w(0, glen * 4), deq(1, glen * 4), codes(2, glen);
  ErrorLanes<Ops> lanes;
  int64_t in_block = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t i0 = r * cols + g * glen, len = std::min(glen, cols - g * glen);
      float* wg = w.as<float>();
      switch (type) {
        case StoredFloat::kF32:
          std::memcpy(wg, static_cast<const float*>(x) + i0, static_cast<size_t>(len) * 4);
          break;
        case StoredFloat::kBf16:
          Bf16Fn(static_cast<const uint16_t*>(x) + i0, len, wg);
          break;
        case StoredFloat::kF16:
          F16Fn(static_cast<const uint16_t*>(x) + i0, len, wg);
          break;
      }
      const int64_t bad = FirstNonFiniteWith<Ops>(wg, len);
      if (bad >= 0) return i0 + bad;
      float lo, hi;
      MinMaxFn(wg, len, &lo, &hi);
      const GroupParams p = qtool::detail::GroupParamsFromRange(lo, hi, spec);
      scales[r * ng + g] = p.scale;
      if (zeros) zeros[r * ng + g] = static_cast<uint8_t>(p.zero);
      QuantizeFn(wg, len, p, umax, codes.as<uint8_t>());
      DequantizeFn(codes.as<uint8_t>(), len, p, deq.as<float>());
      for (int64_t i = 0; i < len; i += kErrorStep) {
        lanes.Step(wg + i, deq.as<float>() + i);
        in_block += kErrorStep;
        if (in_block == kErrorBlock) {
          lanes.Flush(s);
          in_block = 0;
        }
      }
      PackFn(codes.as<uint8_t>(), len, spec.bits,
             packed + r * row_bytes + g * glen * spec.bits / 8);
    }
  }
  if (in_block > 0) lanes.Flush(s);
  s->n += rows * cols;
  return -1;
}

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
  const auto lut = Ops::Nf4Lut(Nf4Table(w.map));
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
