// Typed quantised storage and the Quantize / Dequantize / MeasureError templates.
//
// Quantized<F> owns the stored tensors of one [rows, cols] matrix in format F (a struct of
// format/format.hpp), in the order and with the shapes of FormatTraits<F>::Layout, so its bytes
// are what a checkpoint stores (docs/CODECS.md). View(q) gives typed spans of them per family.
//
// Two modes, one API:
// - Linked with the compiled part (CMake target qtool::quant), Quantize and Dequantize run the
//   codecs of quant/, whose rows go through the dispatched SIMD kernels (qtool/kernels.hpp).
// - With QTOOL_QUANT_HEADER_ONLY defined before the first include, they run the scalar
//   references below, built on FormatTraits (format/traits.hpp) and the element codes of
//   format/minifloat.hpp: the standard library and fmt are all they need. Integer formats take
//   the min-max observer only in this mode (the other observers are compiled; OptionError).
// Both give the same bytes: the kernels are bit-exact with the references (tests/quant/
// test_quantized.cpp checks every family both ways against the codecs).
//
// Example: int4, groups of 128, asymmetric.
//   qtool::IntFormat f{.bits = 4, .symmetric = false, .group = 128};
//   qtool::Quantized<qtool::IntFormat> q = qtool::Quantize(f, w, rows, cols);
//   qtool::IntView v = qtool::View(q);          // v.qweight, v.scales, v.zeros
//   std::vector<float> back = qtool::Dequantize(q);
//   qtool::ErrorStats e = qtool::MeasureError(w, back);  // e.sqnr_db(), e.rmse(), ...
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <utility>
#include <variant>
#include <vector>

#include "qtool/core/checked.hpp"
#include "qtool/core/error.hpp"
#include "qtool/format/format.hpp"
#include "qtool/format/metrics.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/format/traits.hpp"

// The two modes' functions live in inline namespaces of their own, so that a program may hold
// translation units of both without two definitions of one function.
#ifdef QTOOL_QUANT_HEADER_ONLY
#define QTOOL_QUANT_MODE header_only
#else
#define QTOOL_QUANT_MODE dispatched
#endif

namespace qtool {

/// The stored tensors of a [rows, cols] matrix in format F, owned. Part k is
/// FormatTraits<F>::Layout(format, rows, cols)[k]; its bytes are what a checkpoint stores.
template <class F>
class Quantized {
 public:
  /// Zero-filled storage; OptionError for an invalid format (FormatTraits<F>::Validate) and
  /// ShapeError for a matrix whose sizes overflow.
  Quantized(const F& format, int64_t rows, int64_t cols)
      : format_(format), rows_(rows), cols_(cols) {
    FormatTraits<F>::Validate(format_);
    QTOOL_CHECK(rows >= 0 && cols >= 0 && CheckedMul(rows, cols), ShapeError,
                "a matrix of {} x {} elements", rows, cols);
    layout_ = FormatTraits<F>::Layout(format_, rows, cols);
    for (const StoredPart& p : layout_) {
      std::optional<int64_t> n = int64_t{BitsOf(p.dtype) / 8};
      for (const int64_t d : p.shape) n = n ? CheckedMul(*n, d) : n;
      QTOOL_CHECK(n.has_value(), ShapeError, "the part {} of a {} x {} matrix is too large",
                  p.suffix, rows, cols);
      parts_.emplace_back(static_cast<size_t>(*n));
    }
  }

  const F& format() const { return format_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  /// Suffix, dtype and shape of each part (FormatTraits<F>::Layout).
  const std::vector<StoredPart>& layout() const { return layout_; }
  size_t num_parts() const { return parts_.size(); }
  std::span<const std::byte> part(size_t k) const { return parts_.at(k); }
  std::span<std::byte> part(size_t k) { return parts_.at(k); }
  /// Pointers to the start of every part, in order (the codecs' `out` / `in` arguments).
  std::vector<std::byte*> data() {
    std::vector<std::byte*> out;
    for (auto& p : parts_) out.push_back(p.data());
    return out;
  }
  std::vector<const std::byte*> data() const {
    std::vector<const std::byte*> out;
    for (const auto& p : parts_) out.push_back(p.data());
    return out;
  }
  /// Part k as elements of T (T's size must be the part's element size).
  template <class T>
  std::span<const T> part_as(size_t k) const {
    QTOOL_DASSERT(static_cast<int>(sizeof(T)) * 8 == BitsOf(layout_.at(k).dtype));
    return {reinterpret_cast<const T*>(parts_.at(k).data()), parts_.at(k).size() / sizeof(T)};
  }

 private:
  F format_;
  int64_t rows_, cols_;
  std::vector<StoredPart> layout_;
  // std::vector's allocation is aligned for any scalar type, so each part may be read as T.
  std::vector<std::vector<std::byte>> parts_;
};

/// A Quantized of any family (the result of quantising to a Format chosen at run time).
using AnyQuantized =
    std::variant<Quantized<IntFormat>, Quantized<TernaryFormat>, Quantized<Nf4Format>,
                 Quantized<FloatFormat>, Quantized<MxFormat>, Quantized<Nvfp4Format>>;

/// Typed views of each family's parts (spans into a Quantized; empty where a part is absent).
struct IntView {
  std::span<const uint8_t> qweight;  // [rows, PackedBytes(cols, bits)], format/pack.hpp's layout
  std::span<const float> scales;     // [rows, groups per row], [1] per tensor
  std::span<const uint8_t> zeros;    // like scales; asymmetric formats only
  std::span<const int32_t> g_idx;    // [cols]; with g_idx only
};
struct TernaryView {
  std::span<const uint8_t> qweight;  // 2-bit codes u = q + 1
  std::span<const float> scales;
};
struct Nf4View {
  std::span<const uint8_t> qweight;     // two codes per byte, the even column in the high nibble
  std::span<const float> absmax;        // without double quantisation
  std::span<const uint8_t> qabsmax;     // with it: DynamicMap8 codes,
  std::span<const float> absmax_scale;  // one per 256 blocks,
  float absmax_offset = 0;              // and the mean absmax
};
struct FloatView {
  std::span<const uint8_t> qweight;  // FP8 bytes, or packed 6- and 4-bit codes
  std::span<const float> scales;     // [ceil(rows / br), ceil(cols / bc)], [1] per tensor
};
struct MxView {
  std::span<const uint8_t> qweight;
  std::span<const uint8_t> scales;  // E8M0, [rows, ceil(cols / block)]
};
struct Nvfp4View {
  std::span<const uint8_t> qweight;  // E2M1 codes, two per byte, the even column in the low nibble
  std::span<const uint8_t> scales;   // E4M3, [rows, ceil(cols / 16)]
  float global_scale = 1;            // the block scales are divided by it
};

inline IntView View(const Quantized<IntFormat>& q) {
  const IntFormat& f = q.format();
  IntView v{q.part_as<uint8_t>(0), q.part_as<float>(1), {}, {}};
  if (!f.symmetric) v.zeros = q.part_as<uint8_t>(2);
  if (f.g_idx) v.g_idx = q.part_as<int32_t>(f.symmetric ? 2 : 3);
  return v;
}
inline TernaryView View(const Quantized<TernaryFormat>& q) {
  return {q.part_as<uint8_t>(0), q.part_as<float>(1)};
}
inline Nf4View View(const Quantized<Nf4Format>& q) {
  Nf4View v{q.part_as<uint8_t>(0), {}, {}, {}, 0.0f};
  if (!q.format().double_quant) {
    v.absmax = q.part_as<float>(1);
  } else {
    v.qabsmax = q.part_as<uint8_t>(1);
    v.absmax_scale = q.part_as<float>(2);
    v.absmax_offset = q.part_as<float>(3)[0];
  }
  return v;
}
inline FloatView View(const Quantized<FloatFormat>& q) {
  return {q.part_as<uint8_t>(0), q.part_as<float>(1)};
}
inline MxView View(const Quantized<MxFormat>& q) {
  return {q.part_as<uint8_t>(0), q.part_as<uint8_t>(1)};
}
inline Nvfp4View View(const Quantized<Nvfp4Format>& q) {
  return {q.part_as<uint8_t>(0), q.part_as<uint8_t>(1), q.part_as<float>(2)[0]};
}

#ifndef QTOOL_QUANT_HEADER_ONLY

namespace detail {
// The compiled part (src/quant/quantized.cpp): the codec of `format` encodes all rows of w into
// `out` (the parts of Layout) and writes the decoded values to deq; decodes `in` into out; adds
// the error sums of y against x (kernels::AccumulateErrors).
void EncodeDispatched(const Format& format, int64_t rows, int64_t cols, const float* w,
                      std::byte* const* out, float* deq);
void DecodeDispatched(const Format& format, int64_t rows, int64_t cols, const std::byte* const* in,
                      float* out);
void AccumulateErrorsDispatched(const float* x, const float* y, int64_t n, ErrorStats* s);
}  // namespace detail

inline namespace dispatched {

template <class F>
void EncodeInto(Quantized<F>& q, const float* w, float* deq) {
  auto out = q.data();
  detail::EncodeDispatched(Format{q.format()}, q.rows(), q.cols(), w, out.data(), deq);
}

template <class F>
void DecodeInto(const Quantized<F>& q, float* out) {
  const auto in = q.data();
  detail::DecodeDispatched(Format{q.format()}, q.rows(), q.cols(), in.data(), out);
}

/// Error sums of a reconstruction y of x (kernels::AccumulateErrors, dispatched).
inline ErrorStats MeasureError(std::span<const float> x, std::span<const float> y) {
  QTOOL_CHECK(x.size() == y.size(), ShapeError, "error of {} values against {}", x.size(),
              y.size());
  ErrorStats s;
  detail::AccumulateErrorsDispatched(x.data(), y.data(), static_cast<int64_t>(x.size()), &s);
  return s;
}

}  // namespace dispatched

#else  // QTOOL_QUANT_HEADER_ONLY

inline namespace header_only {
namespace ref {

inline const MinifloatFormat& ElementFormat(Element e) {
  switch (e) {
    case Element::kE4M3:
      return kE4M3;
    case Element::kE5M2:
      return kE5M2;
    case Element::kE3M2:
      return kE3M2;
    case Element::kE2M3:
      return kE2M3;
    case Element::kE2M1:
    case Element::kInt8:  // not a minifloat: callers test for it first
      break;
  }
  return kE2M1;
}

// Min-max range widened to include 0 (FormatTraits<IntFormat>::MinMaxRange).
inline std::pair<float, float> MinMax(const float* x, int64_t n) {
  float lo, hi;
  FormatTraits<IntFormat>::MinMaxRange(x, n, &lo, &hi);
  return {lo, hi};
}

// max |x| from 0, NaN ignored (std::max keeps the first argument when the second is NaN).
inline float AbsMax(const float* x, int64_t n) {
  float a = 0.0f;
  for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
  return a;
}

// Encodes n elements numbered from e0 in groups of glen starting at multiples of glen, the
// parameters of element e's group at params[base + e / glen] (tensor: `fixed` for all).
inline void EncodeIntRun(const IntFormat& f, const float* x, int64_t e0, int64_t n, int64_t glen,
                         int64_t base, const GroupParams* fixed, uint8_t* codes, float* scales,
                         uint8_t* zeros, float* deq) {
  using T = FormatTraits<IntFormat>;
  const int32_t umax = (1 << f.bits) - 1;
  for (int64_t k0 = 0; k0 < n; k0 += glen) {
    const int64_t len = std::min(glen, n - k0);
    GroupParams p;
    if (fixed) {
      p = *fixed;
    } else {
      const auto [lo, hi] = MinMax(x + k0, len);
      p = T::Params(lo, hi, f.bits, f.symmetric);
      const int64_t gi = base + (e0 + k0) / glen;
      scales[gi] = p.scale;
      if (zeros) zeros[gi] = static_cast<uint8_t>(p.zero);
    }
    for (int64_t i = k0; i < k0 + len; ++i) {
      codes[i] = T::Encode(x[i], p, umax);
      if (deq) deq[i] = T::Decode(codes[i], p);
    }
  }
}

inline void Encode(const IntFormat& f, int64_t rows, int64_t cols, const float* w,
                   std::byte* const* out, float* deq) {
  QTOOL_CHECK(f.observer.kind == ObserverKind::kMinMax, OptionError,
              "int: observer \"{}\" needs the compiled part of qtool::quant (header-only mode has "
              "minmax only)",
              f.observer.ToString());
  using T = FormatTraits<IntFormat>;
  const int64_t n = rows * cols, row_bytes = PackedBytes(cols, f.bits);
  auto* qweight = reinterpret_cast<uint8_t*>(out[0]);
  auto* scales = reinterpret_cast<float*>(out[1]);
  auto* zeros = f.symmetric ? nullptr : reinterpret_cast<uint8_t*>(out[2]);
  std::vector<uint8_t> codes(static_cast<size_t>(n));
  if (f.granularity == Granularity::kTensor) {
    const auto [lo, hi] = MinMax(w, n);
    const GroupParams p = T::Params(lo, hi, f.bits, f.symmetric);
    scales[0] = p.scale;
    if (zeros) zeros[0] = static_cast<uint8_t>(p.zero);
    for (int64_t r = 0; r < rows; ++r) {
      EncodeIntRun(f, w + r * cols, 0, cols, std::max<int64_t>(cols, 1), 0, &p,
                   codes.data() + r * cols, scales, zeros, deq ? deq + r * cols : nullptr);
    }
  } else if (f.flat) {
    EncodeIntRun(f, w, 0, n, f.group, 0, nullptr, codes.data(), scales, zeros, deq);
  } else {
    const int64_t glen = detail::GroupLen(f.granularity, f.group, cols);
    const int64_t ng = detail::GroupsPerRow(f.granularity, f.group, cols);
    for (int64_t r = 0; r < rows; ++r) {
      EncodeIntRun(f, w + r * cols, 0, cols, glen, r * ng, nullptr, codes.data() + r * cols, scales,
                   zeros, deq ? deq + r * cols : nullptr);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    PackCodes(codes.data() + r * cols, cols, f.bits, qweight + r * row_bytes);
  }
  if (f.g_idx) {
    auto* g_idx = reinterpret_cast<int32_t*>(out[f.symmetric ? 2 : 3]);
    for (int64_t c = 0; c < cols; ++c) g_idx[c] = static_cast<int32_t>(c / f.group);
  }
}

inline void Decode(const IntFormat& f, int64_t rows, int64_t cols, const std::byte* const* in,
                   float* out) {
  using T = FormatTraits<IntFormat>;
  const int64_t row_bytes = PackedBytes(cols, f.bits);
  const int32_t offset = f.symmetric ? 1 << (f.bits - 1) : 0;
  const auto* scales = reinterpret_cast<const float*>(in[1]);
  const auto* zeros = f.symmetric ? nullptr : reinterpret_cast<const uint8_t*>(in[2]);
  const auto* g_idx = f.g_idx ? reinterpret_cast<const int32_t*>(in[f.symmetric ? 2 : 3]) : nullptr;
  const int64_t glen = detail::GroupLen(f.granularity, f.group, cols);
  const int64_t ng = detail::GroupsPerRow(f.granularity, f.group, cols);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    UnpackCodes(reinterpret_cast<const uint8_t*>(in[0]) + r * row_bytes, cols, f.bits,
                codes.data());
    for (int64_t c = 0; c < cols; ++c) {
      int64_t gi = 0;
      if (f.flat) {
        gi = (r * cols + c) / f.group;
      } else if (f.granularity != Granularity::kTensor) {
        const int64_t g = g_idx ? g_idx[c] : c / glen;
        QTOOL_CHECK(g >= 0 && g < ng, FormatError, "g_idx[{}] = {} is not a group (0..{})", c, g,
                    ng - 1);
        gi = r * ng + g;
      }
      const GroupParams p{scales[gi], zeros ? zeros[gi] : offset};
      out[r * cols + c] = T::Decode(codes[static_cast<size_t>(c)], p);
    }
  }
}

inline void Encode(const TernaryFormat& f, int64_t rows, int64_t cols, const float* w,
                   std::byte* const* out, float* deq) {
  using T = FormatTraits<TernaryFormat>;
  const bool tensor = f.granularity == Granularity::kTensor;
  const int64_t glen = detail::GroupLen(f.granularity, f.group, cols);
  const int64_t ng = detail::GroupsPerRow(f.granularity, f.group, cols);
  auto* scales = reinterpret_cast<float*>(out[1]);
  const float tensor_scale = tensor ? T::GroupScale(w, rows * cols) : 0.0f;
  if (tensor) scales[0] = tensor_scale;
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = w + r * cols;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c0 = g * glen, c1 = std::min(cols, c0 + glen);
      const float scale = tensor ? tensor_scale : T::GroupScale(x + c0, c1 - c0);
      if (!tensor) scales[r * ng + g] = scale;
      for (int64_t c = c0; c < c1; ++c) {
        codes[static_cast<size_t>(c)] = T::Encode(x[c], scale);
        if (deq) deq[r * cols + c] = T::Decode(codes[static_cast<size_t>(c)], scale);
      }
    }
    PackCodes(codes.data(), cols, T::kBits,
              reinterpret_cast<uint8_t*>(out[0]) + r * PackedBytes(cols, T::kBits));
  }
}

inline void Decode(const TernaryFormat& f, int64_t rows, int64_t cols, const std::byte* const* in,
                   float* out) {
  constexpr int kBits = FormatTraits<TernaryFormat>::kBits;
  const bool tensor = f.granularity == Granularity::kTensor;
  const int64_t glen = detail::GroupLen(f.granularity, f.group, cols);
  const int64_t ng = detail::GroupsPerRow(f.granularity, f.group, cols);
  const auto* scales = reinterpret_cast<const float*>(in[1]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    UnpackCodes(reinterpret_cast<const uint8_t*>(in[0]) + r * PackedBytes(cols, kBits), cols, kBits,
                codes.data());
    for (int64_t c = 0; c < cols; ++c) {
      const float scale = scales[tensor ? 0 : r * ng + c / glen];
      out[r * cols + c] = FormatTraits<TernaryFormat>::Decode(codes[static_cast<size_t>(c)], scale);
    }
  }
}

// The code of v among ascending table midpoints: the number strictly below it
// (torch.bucketize, right=False), midpoints computed in f32 as bitsandbytes does.
template <size_t N>
uint8_t Bucketize(const std::array<float, N>& table, float v) {
  uint8_t code = 0;
  for (size_t i = 0; i + 1 < N; ++i) code += (table[i] + table[i + 1]) / 2.0f < v ? 1 : 0;
  return code;
}

// Decoded absmax of every block (after double quantisation) and, with it, the stored parts.
inline std::vector<float> Nf4Scales(const Nf4Format& f, const std::vector<float>& absmax,
                                    std::byte* const* out) {
  using T = FormatTraits<Nf4Format>;
  const size_t nb = absmax.size();
  if (!f.double_quant) {
    if (nb) std::memcpy(out[1], absmax.data(), nb * 4);
    return absmax;
  }
  double sum = 0;
  for (const float a : absmax) sum += a;
  const float offset = nb ? static_cast<float>(sum / static_cast<double>(nb)) : 0.0f;
  std::memcpy(out[3], &offset, 4);
  const auto& map = T::DynamicMap8();
  std::vector<float> scales(nb);
  auto* qabsmax = reinterpret_cast<uint8_t*>(out[1]);
  auto* absmax2 = reinterpret_cast<float*>(out[2]);
  const auto chunk = static_cast<size_t>(T::kDoubleQuantBlock);
  for (size_t j0 = 0; j0 < nb; j0 += chunk) {
    const size_t j1 = std::min(nb, j0 + chunk);
    float m = 0;
    for (size_t j = j0; j < j1; ++j) m = std::max(m, std::fabs(absmax[j] - offset));
    absmax2[j0 / chunk] = m;
    for (size_t j = j0; j < j1; ++j) {
      qabsmax[j] = Bucketize(map, T::ScaleToUnit(absmax[j] - offset, m, j1 - j0 == chunk));
      scales[j] = map[qabsmax[j]] * m + offset;
    }
  }
  return scales;
}

inline void Encode(const Nf4Format& f, int64_t rows, int64_t cols, const float* w,
                   std::byte* const* out, float* deq) {
  using T = FormatTraits<Nf4Format>;
  const int64_t n = rows * cols, nb = T::NumBlocks(f, rows, cols);
  std::vector<float> absmax(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    absmax[static_cast<size_t>(b)] = AbsMax(w + b * f.block, std::min(f.block, n - b * f.block));
  }
  const std::vector<float> scales = Nf4Scales(f, absmax, out);
  auto* qweight = reinterpret_cast<uint8_t*>(out[0]);
  const int64_t row_bytes = (cols + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c, b = i / f.block;
      const bool whole = (b + 1) * f.block <= n;
      const uint8_t code =
          Bucketize(T::Values(f.map), T::ScaleToUnit(w[i], absmax[static_cast<size_t>(b)], whole));
      uint8_t& byte = qweight[r * row_bytes + c / 2];
      byte = c % 2 == 0 ? static_cast<uint8_t>(code << 4) : static_cast<uint8_t>(byte | code);
      if (deq) deq[i] = T::Values(f.map)[code] * scales[static_cast<size_t>(b)];
    }
  }
}

inline void Decode(const Nf4Format& f, int64_t rows, int64_t cols, const std::byte* const* in,
                   float* out) {
  using T = FormatTraits<Nf4Format>;
  const int64_t nb = T::NumBlocks(f, rows, cols);
  const auto* qweight = reinterpret_cast<const uint8_t*>(in[0]);
  const int64_t row_bytes = (cols + 1) / 2;
  std::vector<float> scales(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    if (!f.double_quant) {
      scales[static_cast<size_t>(b)] = reinterpret_cast<const float*>(in[1])[b];
    } else {
      const uint8_t q = reinterpret_cast<const uint8_t*>(in[1])[b];
      const float m = reinterpret_cast<const float*>(in[2])[b / T::kDoubleQuantBlock];
      const float offset = reinterpret_cast<const float*>(in[3])[0];
      scales[static_cast<size_t>(b)] = T::DynamicMap8()[q] * m + offset;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t byte = qweight[r * row_bytes + c / 2];
      const int code = c % 2 == 0 ? byte >> 4 : byte & 0xf;
      const int64_t i = r * cols + c;
      out[i] =
          T::Values(f.map)[static_cast<size_t>(code)] * scales[static_cast<size_t>(i / f.block)];
    }
  }
}

inline void Encode(const FloatFormat& f, int64_t rows, int64_t cols, const float* w,
                   std::byte* const* out, float* deq) {
  const MinifloatFormat& e = ElementFormat(f.element);
  const MinifloatTable table(e);
  const bool tensor = f.granularity == Granularity::kTensor;
  const auto [br, bc] = FormatTraits<FloatFormat>::Block(f, cols);
  const int64_t nbc = (cols + bc - 1) / bc, row_bytes = PackedBytes(cols, e.bits());
  const auto scale_of = [&e](float amax) {
    const float s = amax / e.max();
    return s > 0.0f && std::isfinite(s) ? s : 1.0f;
  };
  auto* stored = reinterpret_cast<float*>(out[1]);
  const float tensor_amax = tensor ? AbsMax(w, rows * cols) : 0.0f;
  if (tensor) stored[0] = scale_of(tensor_amax);
  std::vector<float> scales(static_cast<size_t>(nbc));
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t b0 = 0; b0 < rows; b0 += br) {
    const int64_t b1 = std::min(rows, b0 + br);
    for (int64_t cb = 0; cb < nbc; ++cb) {
      float amax = tensor_amax;
      if (!tensor) {
        amax = 0;
        const int64_t c0 = cb * bc, c1 = std::min(cols, c0 + bc);
        for (int64_t r = b0; r < b1; ++r) amax = std::max(amax, AbsMax(w + r * cols + c0, c1 - c0));
        stored[b0 / br * nbc + cb] = scale_of(amax);
      }
      scales[static_cast<size_t>(cb)] = scale_of(amax);
    }
    for (int64_t r = b0; r < b1; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float s = scales[static_cast<size_t>(c / bc)];
        const auto code = static_cast<uint8_t>(EncodeMinifloat(w[r * cols + c] / s, e, f.saturate));
        codes[static_cast<size_t>(c)] = code;
        if (deq) deq[r * cols + c] = table.value[code] * s;
      }
      PackCodes(codes.data(), cols, e.bits(), reinterpret_cast<uint8_t*>(out[0]) + r * row_bytes);
    }
  }
}

inline void Decode(const FloatFormat& f, int64_t rows, int64_t cols, const std::byte* const* in,
                   float* out) {
  const MinifloatFormat& e = ElementFormat(f.element);
  const MinifloatTable table(e);
  const bool tensor = f.granularity == Granularity::kTensor;
  const auto [br, bc] = FormatTraits<FloatFormat>::Block(f, cols);
  const int64_t nbc = (cols + bc - 1) / bc, row_bytes = PackedBytes(cols, e.bits());
  const auto* scales = reinterpret_cast<const float*>(in[1]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    UnpackCodes(reinterpret_cast<const uint8_t*>(in[0]) + r * row_bytes, cols, e.bits(),
                codes.data());
    for (int64_t c = 0; c < cols; ++c) {
      const float s = scales[tensor ? 0 : r / br * nbc + c / bc];
      out[r * cols + c] = table.value[codes[static_cast<size_t>(c)]] * s;
    }
  }
}

// An MX format's element: a minifloat, or MXINT8 (q / 64).
struct MxElement {
  explicit MxElement(const MxFormat& f)
      : int8(f.element == Element::kInt8),
        e(ElementFormat(f.element)),
        table(e),
        bits(int8 ? 8 : e.bits()) {}
  uint8_t Code(float p) const {
    return int8 ? FormatTraits<MxFormat>::EncodeInt8(p)
                : static_cast<uint8_t>(EncodeMinifloat(p, e, true));
  }
  float Value(uint8_t code) const {
    return int8 ? FormatTraits<MxFormat>::DecodeInt8(code) : table.value[code];
  }

  bool int8;
  const MinifloatFormat& e;
  MinifloatTable table;
  int bits;
};

inline void Encode(const MxFormat& f, int64_t rows, int64_t cols, const float* w,
                   std::byte* const* out, float* deq) {
  const MxElement el(f);
  const int64_t nb = (cols + f.block - 1) / f.block, row_bytes = PackedBytes(cols, el.bits);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = w + r * cols;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t c0 = j * f.block, c1 = std::min(cols, c0 + f.block);
      const float amax = FormatTraits<MxFormat>::BlockAmax(x + c0, c1 - c0);
      const uint8_t s = E8M0ScaleForBlock(amax, el.int8 ? 0 : el.e.emax());
      reinterpret_cast<uint8_t*>(out[1])[r * nb + j] = s;
      const float scale = DecodeE8M0(s);
      for (int64_t c = c0; c < c1; ++c) {
        // Division by a power of two is exact; a NaN scale leaves code 0 (decoded as NaN).
        const uint8_t code = s == kE8M0Nan ? 0 : el.Code(x[c] / scale);
        codes[static_cast<size_t>(c)] = code;
        if (deq) deq[r * cols + c] = el.Value(code) * scale;
      }
    }
    PackCodes(codes.data(), cols, el.bits, reinterpret_cast<uint8_t*>(out[0]) + r * row_bytes);
  }
}

inline void Decode(const MxFormat& f, int64_t rows, int64_t cols, const std::byte* const* in,
                   float* out) {
  const MxElement el(f);
  const int64_t nb = (cols + f.block - 1) / f.block, row_bytes = PackedBytes(cols, el.bits);
  const auto* scales = reinterpret_cast<const uint8_t*>(in[1]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    UnpackCodes(reinterpret_cast<const uint8_t*>(in[0]) + r * row_bytes, cols, el.bits,
                codes.data());
    for (int64_t c = 0; c < cols; ++c) {
      const float scale = DecodeE8M0(scales[r * nb + c / f.block]);
      out[r * cols + c] = el.Value(codes[static_cast<size_t>(c)]) * scale;
    }
  }
}

// NVFP4 (nvfp4_codec.hpp gives the formulas): the tensor's absmax gives the global scale g,
// each block of 16 an E4M3 scale S, and the elements E2M1(x / (S / g)).
inline void Encode(const Nvfp4Format&, int64_t rows, int64_t cols, const float* w,
                   std::byte* const* out, float* deq) {
  using T = FormatTraits<Nvfp4Format>;
  const int64_t nb = (cols + T::kBlock - 1) / T::kBlock, row_bytes = PackedBytes(cols, T::kBits);
  const float g = T::GlobalScale(FormatTraits<MxFormat>::BlockAmax(w, rows * cols));
  std::memcpy(out[2], &g, 4);
  const MinifloatTable table(kE2M1);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = w + r * cols;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t c0 = j * T::kBlock, c1 = std::min(cols, c0 + T::kBlock);
      const float input = T::BlockScaleInput(FormatTraits<MxFormat>::BlockAmax(x + c0, c1 - c0), g);
      auto code = static_cast<uint8_t>(EncodeMinifloat(input, kE4M3, true));
      if (code == 0) code = T::kZeroBlockScaleCode;
      reinterpret_cast<uint8_t*>(out[1])[r * nb + j] = code;
      const float s = DecodeMinifloat(code, kE4M3) / g;
      for (int64_t c = c0; c < c1; ++c) {
        const auto e = static_cast<uint8_t>(EncodeMinifloat(x[c] / s, kE2M1, true));
        codes[static_cast<size_t>(c)] = e;
        if (deq) deq[r * cols + c] = table.value[e] * s;
      }
    }
    PackCodes(codes.data(), cols, T::kBits, reinterpret_cast<uint8_t*>(out[0]) + r * row_bytes);
  }
}

inline void Decode(const Nvfp4Format&, int64_t rows, int64_t cols, const std::byte* const* in,
                   float* out) {
  using T = FormatTraits<Nvfp4Format>;
  const int64_t nb = (cols + T::kBlock - 1) / T::kBlock, row_bytes = PackedBytes(cols, T::kBits);
  float g;
  std::memcpy(&g, in[2], 4);
  const MinifloatTable table(kE2M1);
  const auto* scales = reinterpret_cast<const uint8_t*>(in[1]);
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    UnpackCodes(reinterpret_cast<const uint8_t*>(in[0]) + r * row_bytes, cols, T::kBits,
                codes.data());
    for (int64_t c = 0; c < cols; ++c) {
      const float s = DecodeMinifloat(scales[r * nb + c / T::kBlock], kE4M3) / g;
      out[r * cols + c] = table.value[codes[static_cast<size_t>(c)]] * s;
    }
  }
}

}  // namespace ref

template <class F>
void EncodeInto(Quantized<F>& q, const float* w, float* deq) {
  auto out = q.data();
  ref::Encode(q.format(), q.rows(), q.cols(), w, out.data(), deq);
}

template <class F>
void DecodeInto(const Quantized<F>& q, float* out) {
  const auto in = q.data();
  ref::Decode(q.format(), q.rows(), q.cols(), in.data(), out);
}

/// Error sums of a reconstruction y of x: kernels::AccumulateErrors' definition, so both modes
/// give the same bits.
inline ErrorStats MeasureError(std::span<const float> x, std::span<const float> y) {
  QTOOL_CHECK(x.size() == y.size(), ShapeError, "error of {} values against {}", x.size(),
              y.size());
  ErrorStats s;
  AccumulateErrorsReference(x.data(), y.data(), static_cast<int64_t>(x.size()), &s);
  return s;
}

}  // namespace header_only

#endif  // QTOOL_QUANT_HEADER_ONLY

inline namespace QTOOL_QUANT_MODE {

/// Quantises w [rows, cols] (row-major, rows = output channels) into format `format`. With a
/// non-empty `dequant` (rows * cols values) the decoded values are written there too. Throws
/// OptionError for an invalid format, ShapeError where w or dequant is not rows * cols values.
template <class F>
Quantized<F> Quantize(const F& format, std::span<const float> w, int64_t rows, int64_t cols,
                      std::span<float> dequant = {}) {
  Quantized<F> q(format, rows, cols);
  const auto n = static_cast<size_t>(rows * cols);
  QTOOL_CHECK(w.size() == n, ShapeError, "quantize: {} values for a {} x {} matrix", w.size(), rows,
              cols);
  QTOOL_CHECK(dequant.empty() || dequant.size() == n, ShapeError,
              "quantize: {} decoded values for a {} x {} matrix", dequant.size(), rows, cols);
  std::vector<float> scratch;
  float* deq = dequant.data();
  if (dequant.empty()) {
    scratch.resize(n);
    deq = scratch.data();
  }
  if (n > 0) EncodeInto(q, w.data(), deq);
  return q;
}

/// The decoded matrix [rows, cols] of q.
template <class F>
std::vector<float> Dequantize(const Quantized<F>& q) {
  std::vector<float> out(static_cast<size_t>(q.rows() * q.cols()));
  if (!out.empty()) DecodeInto(q, out.data());
  return out;
}

/// Quantize of a format known at run time only (parsed text, say): the family's Quantized.
inline AnyQuantized Quantize(const Format& format, std::span<const float> w, int64_t rows,
                             int64_t cols, std::span<float> dequant = {}) {
  return std::visit(
      [&](const auto& f) -> AnyQuantized { return Quantize(f, w, rows, cols, dequant); }, format);
}

inline std::vector<float> Dequantize(const AnyQuantized& q) {
  return std::visit([](const auto& x) { return Dequantize(x); }, q);
}

}  // namespace QTOOL_QUANT_MODE
}  // namespace qtool
