// FormatTraits<F>: what defines each format family in one place. Every specialisation has
//   kCodec                   the family's name in checkpoint records ("int", "nf4", ...)
//   Validate(f)              OptionError naming the parameter outside its range
//   Layout(f, rows, cols)    the stored tensors of a [rows, cols] matrix (suffix, dtype, shape),
//                            in the order the codecs fill them
// and, where the element code is a formula rather than a table, its scalar reference (Encode,
// Decode). BitsPerWeight(format, rows, cols) follows from the layout. docs/CODECS.md describes
// each layout; quant/ holds the codecs that fill them.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "qtool/core/dtype.hpp"
#include "qtool/core/error.hpp"
#include "qtool/format/format.hpp"

namespace qtool {

/// One stored tensor of a quantised weight NAME: NAME + suffix, its dtype and shape.
struct StoredPart {
  std::string suffix;
  DType dtype;
  std::vector<int64_t> shape;
};

/// Bytes of n codes of `bits` bits packed as a bit stream (format/pack.hpp).
constexpr int64_t PackedBytes(int64_t n, int bits) { return (n * bits + 7) / 8; }

/// Largest group, block or block side any format accepts (keeps every size product in int64).
inline constexpr int64_t kMaxFormatBlock = int64_t{1} << 30;

template <class F>
struct FormatTraits;

namespace detail {

inline void CheckGroup(Granularity g, int64_t group, const char* what) {
  QTOOL_CHECK(g != Granularity::kGroup || (group >= 1 && group <= kMaxFormatBlock), OptionError,
              "{}: group size must be in 1..{}, got {}", what, kMaxFormatBlock, group);
}

// Elements per group along a row of `cols` (cols for per-channel/per-tensor).
inline int64_t GroupLen(Granularity g, int64_t group, int64_t cols) {
  return g == Granularity::kGroup && group < cols ? group : cols;
}

inline int64_t GroupsPerRow(Granularity g, int64_t group, int64_t cols) {
  const int64_t len = GroupLen(g, group, cols);
  return len == 0 ? 0 : (cols + len - 1) / len;
}

}  // namespace detail

template <>
struct FormatTraits<IntFormat> {
  static constexpr const char* kCodec = "int";

  /// The min-max range of n values widened to include 0, the range the min-max observer gives a
  /// group (the scalar reference of kernels::MinMax).
  static void MinMaxRange(const float* x, int64_t n, float* lo, float* hi) {
    float a = 0.0f, b = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      a = std::min(a, x[i]);
      b = std::max(b, x[i]);
    }
    *lo = a;
    *hi = b;
  }

  static void Validate(const IntFormat& f) {
    QTOOL_CHECK(f.bits >= 2 && f.bits <= 8, OptionError, "int: bits must be in 2..8, got {}",
                f.bits);
    detail::CheckGroup(f.granularity, f.group, "int");
    QTOOL_CHECK(!f.flat || f.granularity == Granularity::kGroup, OptionError,
                "int: flat groups need per-group granularity");
    QTOOL_CHECK(!f.g_idx || (f.granularity == Granularity::kGroup && !f.flat), OptionError,
                "int: g_idx needs groups inside rows");
  }

  /// qweight U8 [rows, ceil(cols * bits / 8)]; scales F32 [rows, groups per row] ([1, 1] per
  /// tensor, [ceil(rows * cols / g), 1] with flat groups); zeros U8 likewise (asymmetric only);
  /// g_idx I32 [cols] (with g_idx only).
  static std::vector<StoredPart> Layout(const IntFormat& f, int64_t rows, int64_t cols) {
    const bool tensor = f.granularity == Granularity::kTensor;
    int64_t prow = tensor ? 1 : rows;
    int64_t pcol = tensor ? 1 : detail::GroupsPerRow(f.granularity, f.group, cols);
    if (f.flat) {
      prow = (rows * cols + f.group - 1) / f.group;
      pcol = 1;
    }
    std::vector<StoredPart> out = {{".qweight", DType::kU8, {rows, PackedBytes(cols, f.bits)}},
                                   {".scales", DType::kF32, {prow, pcol}}};
    if (!f.symmetric) out.push_back({".zeros", DType::kU8, {prow, pcol}});
    if (f.g_idx) out.push_back({".g_idx", DType::kI32, {cols}});
    return out;
  }

  /// Round half to even of a value already clamped to a small integer range (|v| < 2^22).
  /// Adding and subtracting 1.5 * 2^23 makes the FPU round at the units bit, in the current
  /// (default, to-nearest-even) rounding mode; this vectorises on every x86-64 CPU, unlike
  /// nearbyint.
  static float RoundHalfEven(float v) {
    constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
    return (v + kMagic) - kMagic;
  }

  /// Stored code of `x` under `p`: u = clamp(rne(x / scale) + zero, 0, umax). The zero-point is
  /// added after rounding (adding it before could round x / scale + zero differently than
  /// x / scale). Clamping before rounding is equivalent because the bounds are integers.
  static uint8_t Encode(float x, GroupParams p, int32_t umax) {
    const float lo = static_cast<float>(-p.zero), hi = static_cast<float>(umax - p.zero);
    float v = x / p.scale;
    v = v < lo ? lo : (v > hi ? hi : v);
    return static_cast<uint8_t>(static_cast<int32_t>(RoundHalfEven(v)) + p.zero);
  }

  static float Decode(uint8_t u, GroupParams p) {
    return static_cast<float>(static_cast<int32_t>(u) - p.zero) * p.scale;
  }

  /// Parameters of a group whose chosen range is [lo, hi], widened to include 0 (docs/CODECS.md):
  /// symmetric scale = max(-lo, hi) / (2^(b-1) - 1) with zero 2^(b-1); asymmetric scale =
  /// (hi - lo) / (2^b - 1) with zero = rne(min(-lo / scale, 2^b - 1)). A range of 0, or one too
  /// small to give a positive finite scale, gets scale 1 (any finite scale is exact for it).
  static GroupParams Params(float lo, float hi, int bits, bool symmetric) {
    const int32_t offset = symmetric ? 1 << (bits - 1) : 0;
    lo = std::min(lo, 0.0f);
    hi = std::max(hi, 0.0f);
    GroupParams p;
    if (symmetric) {
      p.scale = std::max(-lo, hi) / static_cast<float>(offset - 1);
      p.zero = offset;
    } else {
      const int32_t umax = (1 << bits) - 1;
      p.scale = (hi - lo) / static_cast<float>(umax);
      if (std::isinf(p.scale)) {  // hi - lo overflowed float; the quotient itself is finite
        p.scale = static_cast<float>((static_cast<double>(hi) - lo) / umax);
      }
      if (p.scale > 0.0f && std::isfinite(p.scale)) {
        p.zero =
            static_cast<int32_t>(RoundHalfEven(std::min(-lo / p.scale, static_cast<float>(umax))));
      }
    }
    if (!(p.scale > 0.0f) || !std::isfinite(p.scale)) {
      p.scale = 1.0f;
      p.zero = offset;
    }
    return p;
  }
};

template <>
struct FormatTraits<TernaryFormat> {
  static constexpr const char* kCodec = "ternary";
  static constexpr int kBits = 2;  // stored code u = q + 1
  /// Smallest absmean scale (an all-zero group scales by it and stores 0).
  static constexpr float kMinScale = 1e-5f;

  /// Absmean scale of a group: max(sum |x| / n, kMinScale), the mean taken in f64.
  static float Scale(double abs_sum, int64_t n) {
    const double mean = n > 0 ? abs_sum / static_cast<double>(n) : 0.0;
    return std::max(static_cast<float>(mean), kMinScale);
  }
  static float GroupScale(const float* x, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += std::fabs(x[i]);
    return Scale(sum, n);
  }
  /// Stored code u = q + 1 of x, q = rne(clamp(x / scale, -1, 1)).
  static uint8_t Encode(float x, float scale) {
    const float q = FormatTraits<IntFormat>::RoundHalfEven(std::clamp(x / scale, -1.0f, 1.0f));
    return static_cast<uint8_t>(static_cast<int>(q) + 1);
  }
  static float Decode(uint8_t u, float scale) {
    return static_cast<float>(static_cast<int>(u) - 1) * scale;
  }

  static void Validate(const TernaryFormat& f) {
    detail::CheckGroup(f.granularity, f.group, "ternary");
  }

  /// qweight U8 [rows, ceil(cols / 4)]; scales F32 [rows, groups per row] ([1, 1] per tensor).
  static std::vector<StoredPart> Layout(const TernaryFormat& f, int64_t rows, int64_t cols) {
    const bool tensor = f.granularity == Granularity::kTensor;
    return {{".qweight", DType::kU8, {rows, PackedBytes(cols, kBits)}},
            {".scales",
             DType::kF32,
             {tensor ? 1 : rows, tensor ? 1 : detail::GroupsPerRow(f.granularity, f.group, cols)}}};
  }
};

namespace detail {
/// The 15 midpoints between consecutive values of an ascending 16-value map, in f32.
constexpr std::array<float, 15> Midpoints16(const std::array<float, 16>& v) {
  std::array<float, 15> m{};
  for (size_t i = 0; i < m.size(); ++i) m[i] = (v[i] + v[i + 1]) / 2.0f;
  return m;
}
}  // namespace detail

template <>
struct FormatTraits<Nf4Format> {
  static constexpr const char* kCodec = "nf4";
  static constexpr int64_t kMinBlock = 32, kMaxBlock = 4096;
  /// Absmax values per chunk of double quantisation.
  static constexpr int64_t kDoubleQuantBlock = 256;
  /// The 16 NF4 values, ascending: quantiles of N(0, 1) normalised to [-1, 1], with an exact 0
  /// (QLoRA appendix E; bitsandbytes' NF4 table).
  static constexpr std::array<float, 16> kValues = {-1.0f,
                                                    -0.6961928009986877f,
                                                    -0.5250730514526367f,
                                                    -0.39491748809814453f,
                                                    -0.28444138169288635f,
                                                    -0.18477343022823334f,
                                                    -0.09105003625154495f,
                                                    0.0f,
                                                    0.07958029955625534f,
                                                    0.16093020141124725f,
                                                    0.24611230194568634f,
                                                    0.33791524171829224f,
                                                    0.44070982933044434f,
                                                    0.5626170039176941f,
                                                    0.7229568362236023f,
                                                    1.0f};

  /// bitsandbytes' FP4 values, ascending: its code table (get_4bit_type("fp4"): 0, 0.0625, 8, 12,
  /// 4, 6, 2, 3 and their negatives, divided by 12 in f32; its code 8, "-0", is +0 as well)
  /// sorted stably, as its quantiser sorts them; kFp4Codes gives bitsandbytes' nibble of each.
  /// qtool stores the index into this table, as it stores NF4's.
  static constexpr std::array<float, 16> kFp4Values = {
      -12.0f / 12.0f,   -8.0f / 12.0f, -6.0f / 12.0f, -4.0f / 12.0f,   -3.0f / 12.0f, -2.0f / 12.0f,
      -0.0625f / 12.0f, 0.0f,          0.0f,          0.0625f / 12.0f, 2.0f / 12.0f,  3.0f / 12.0f,
      4.0f / 12.0f,     6.0f / 12.0f,  8.0f / 12.0f,  12.0f / 12.0f};
  static constexpr std::array<uint8_t, 16> kFp4Codes = {11, 10, 13, 12, 15, 14, 9, 0,
                                                        8,  1,  6,  7,  4,  5,  2, 3};

  /// The values of a map, ascending.
  static constexpr const std::array<float, 16>& Values(Bnb4Map map) {
    return map == Bnb4Map::kFp4 ? kFp4Values : kValues;
  }

  /// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) (Dettmers,
  /// "8-Bit Approximations for Parallelism in Deep Learning", arXiv:1511.04561), the map of double
  /// quantisation: for i = 0..6 the 2^i midpoints of linspace(0.1, 1, 2^i + 1) times +-10^(i-6),
  /// plus 0 and 1, sorted. Arithmetic is f32 as in torch: linspace(start, end, n) gives
  /// start + step * k for k < n / 2 and end - step * (n - 1 - k) above, with
  /// step = (end - start) / (n - 1) in f32.
  static const std::array<float, 256>& DynamicMap8() {
    static const std::array<float, 256> map = [] {
      constexpr double kPow10[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
      std::vector<float> data;
      for (int i = 0; i < 7; ++i) {
        const int n = (1 << i) + 1;
        const float start = 0.1f, end = 1.0f;
        const float step = (end - start) / static_cast<float>(n - 1);
        std::vector<float> b(static_cast<size_t>(n));
        for (int k = 0; k < n; ++k) {
          // Evaluated in double (the product is exact) and rounded once, as torch's vectorised
          // kernel does with a fused multiply-add.
          const double sd = step, kd = k < n / 2 ? k : n - 1 - k;
          b[static_cast<size_t>(k)] =
              static_cast<float>(k < n / 2 ? start + sd * kd : end - sd * kd);
        }
        const auto p = static_cast<float>(kPow10[i]);
        for (int k = 0; k + 1 < n; ++k) {
          const float mean = (b[static_cast<size_t>(k)] + b[static_cast<size_t>(k) + 1]) / 2.0f;
          data.push_back(p * mean);
          data.push_back(-p * mean);
        }
      }
      data.push_back(0.0f);
      data.push_back(1.0f);
      std::sort(data.begin(), data.end());
      std::array<float, 256> out{};
      std::copy(data.begin(), data.end(), out.begin());
      return out;
    }();
    return map;
  }

  /// Smallest absmax used as a divisor: an all-zero block scales by 1e38 and stores code 7 (0.0).
  static constexpr float kMinAbsmax = 1e-38f;

  /// x scaled into its block: x * (1 / absmax) in a whole block, x / absmax in the shorter last
  /// block (bitsandbytes computes the two cases so), clamped to [-1, 1].
  static float ScaleToUnit(float x, float absmax, bool whole_block) {
    const float a = std::max(absmax, kMinAbsmax);
    const float v = whole_block ? x * (1.0f / a) : x / a;
    return std::clamp(v, -1.0f, 1.0f);
  }

  /// Midpoints between consecutive values of each map, computed in f32 as bitsandbytes does.
  static constexpr std::array<float, 15> kMidpoints = detail::Midpoints16(kValues);
  static constexpr std::array<float, 15> kFp4Midpoints = detail::Midpoints16(kFp4Values);
  static constexpr const std::array<float, 15>& Midpoints(Bnb4Map map) {
    return map == Bnb4Map::kFp4 ? kFp4Midpoints : kMidpoints;
  }

  /// The code of x in a block with this absmax: the number of the map's midpoints strictly below
  /// the scaled value (torch.bucketize, right=False), so a value exactly on a midpoint takes the
  /// lower code. Example: Code(0.0f, 1.0f, true) == 7, Code(-3.0f, 2.0f, true) == 0.
  static uint8_t Code(float x, float absmax, bool whole_block, Bnb4Map map = Bnb4Map::kNf4) {
    const float v = ScaleToUnit(x, absmax, whole_block);
    const std::array<float, 15>& m = Midpoints(map);
    return static_cast<uint8_t>(std::lower_bound(m.begin(), m.end(), v) - m.begin());
  }

  static void Validate(const Nf4Format& f) {
    QTOOL_CHECK(f.block >= kMinBlock && f.block <= kMaxBlock, OptionError,
                "nf4: block must be in {}..{}, got {}", kMinBlock, kMaxBlock, f.block);
  }

  static int64_t NumBlocks(const Nf4Format& f, int64_t rows, int64_t cols) {
    return (rows * cols + f.block - 1) / f.block;
  }

  /// qweight U8 [rows, ceil(cols / 2)]; absmax F32 [N], or with double quantisation absmax U8
  /// [N], absmax_scale F32 [ceil(N / 256)], absmax_offset F32 [1]; N = NumBlocks.
  static std::vector<StoredPart> Layout(const Nf4Format& f, int64_t rows, int64_t cols) {
    const int64_t nb = NumBlocks(f, rows, cols);
    std::vector<StoredPart> out = {{".qweight", DType::kU8, {rows, (cols + 1) / 2}}};
    if (!f.double_quant) {
      out.push_back({".absmax", DType::kF32, {nb}});
    } else {
      out.push_back({".absmax", DType::kU8, {nb}});
      out.push_back(
          {".absmax_scale", DType::kF32, {(nb + kDoubleQuantBlock - 1) / kDoubleQuantBlock}});
      out.push_back({".absmax_offset", DType::kF32, {1}});
    }
    return out;
  }
};

template <>
struct FormatTraits<FloatFormat> {
  static constexpr const char* kCodec = "fp";

  static void Validate(const FloatFormat& f) {
    QTOOL_CHECK(f.element != Element::kInt8, OptionError,
                "fp: the element must be a float format (e4m3, e5m2, e3m2, e2m3, e2m1), not int8");
    QTOOL_CHECK(f.granularity != Granularity::kGroup ||
                    (f.block_rows >= 1 && f.block_rows <= kMaxFormatBlock && f.block_cols >= 1 &&
                     f.block_cols <= kMaxFormatBlock),
                OptionError, "fp: scale blocks must be 1..{} on each side, got {} x {}",
                kMaxFormatBlock, f.block_rows, f.block_cols);
  }

  /// The scale block [rows, cols] of a [rows, cols] matrix: one row for per-tensor and
  /// per-channel scales (a per-tensor scale comes from a pass over the whole matrix).
  static std::pair<int64_t, int64_t> Block(const FloatFormat& f, int64_t cols) {
    if (f.granularity == Granularity::kGroup) return {f.block_rows, f.block_cols};
    return {1, cols > 1 ? cols : 1};
  }

  /// qweight F8_E4M3 / F8_E5M2 [rows, cols], or U8 [rows, ceil(cols * bits / 8)] packed for the
  /// 4- and 6-bit elements; scales F32 [ceil(rows / br), ceil(cols / bc)] ([1, 1] per tensor).
  static std::vector<StoredPart> Layout(const FloatFormat& f, int64_t rows, int64_t cols) {
    StoredPart q{".qweight", DType::kU8, {rows, PackedBytes(cols, ElementBits(f.element))}};
    if (f.element == Element::kE4M3) q.dtype = DType::kF8E4M3;
    if (f.element == Element::kE5M2) q.dtype = DType::kF8E5M2;
    std::vector<int64_t> scales = {1, 1};
    if (f.granularity != Granularity::kTensor) {
      const auto [br, bc] = Block(f, cols);
      scales = {(rows + br - 1) / br, (cols + bc - 1) / bc};
    }
    return {q, {".scales", DType::kF32, scales}};
  }
};

template <>
struct FormatTraits<MxFormat> {
  static constexpr const char* kCodec = "mx";
  static constexpr int64_t kDefaultBlock = 32;  // the spec's k
  static constexpr int64_t kMaxBlock = 4096;
  static constexpr float kInt8Unit = 64.0f;  // MXINT8 element = q * 2^-6

  static void Validate(const MxFormat& f) {
    QTOOL_CHECK(ElementBits(f.element) >= 4, OptionError, "mx: unknown element");
    QTOOL_CHECK(f.block >= 1 && f.block <= kMaxBlock, OptionError,
                "mx: block must be in 1..{}, got {}", kMaxBlock, f.block);
  }

  /// qweight U8 [rows, ceil(cols * bits / 8)]; scales F8_E8M0 [rows, ceil(cols / block)].
  static std::vector<StoredPart> Layout(const MxFormat& f, int64_t rows, int64_t cols) {
    return {{".qweight", DType::kU8, {rows, PackedBytes(cols, ElementBits(f.element))}},
            {".scales", DType::kF8E8M0, {rows, (cols + f.block - 1) / f.block}}};
  }

  /// The absmax that chooses a block's scale: max |x|, or NaN where the block holds a NaN.
  static float BlockAmax(const float* x, int64_t n) {
    float amax = 0;
    bool nan = false;
    for (int64_t i = 0; i < n; ++i) {
      amax = std::max(amax, std::fabs(x[i]));
      nan |= std::isnan(x[i]);
    }
    return nan ? std::numeric_limits<float>::quiet_NaN() : amax;
  }

  /// MXINT8 element code of P = V / X: the two's complement byte of clamp(rne(P * 64), -128,
  /// 127).
  static uint8_t EncodeInt8(float p) {
    float q = p * kInt8Unit;
    q = q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q);
    return static_cast<uint8_t>(static_cast<int8_t>(FormatTraits<IntFormat>::RoundHalfEven(q)));
  }

  /// Element value of an MXINT8 code (before multiplying by X): q / 64.
  static float DecodeInt8(uint8_t code) {
    return static_cast<float>(static_cast<int8_t>(code)) / kInt8Unit;
  }
};

template <>
struct FormatTraits<Nvfp4Format> {
  static constexpr const char* kCodec = "nvfp4";
  static constexpr int64_t kBlock = 16;
  static constexpr int kBits = 4;          // E2M1 element codes
  static constexpr float kElementMax = 6;  // largest E2M1 magnitude
  static constexpr float kScaleMax = 448;  // largest E4M3 magnitude
  /// E4M3 code of 0.125 (exponent field 4, mantissa 0): the scale of a block whose scale would
  /// round to 0, as compressed-tensors replaces a zero scale by E4M3's "eps" 0.125.
  static constexpr uint8_t kZeroBlockScaleCode = 0x20;

  static void Validate(const Nvfp4Format&) {}

  /// qweight U8 [rows, ceil(cols / 2)] (E2M1 codes, the even column in the low nibble);
  /// scales F8_E4M3 [rows, ceil(cols / 16)]; global_scale F32 [1].
  static std::vector<StoredPart> Layout(const Nvfp4Format&, int64_t rows, int64_t cols) {
    return {{".qweight", DType::kU8, {rows, PackedBytes(cols, kBits)}},
            {".scales", DType::kF8E4M3, {rows, (cols + kBlock - 1) / kBlock}},
            {".global_scale", DType::kF32, {1}}};
  }

  /// The global scale of a tensor whose largest magnitude is `amax` (compressed-tensors'
  /// generate_gparam): g = 448 * 6 / amax, so that the largest block's scale is E4M3's largest
  /// value; 1 where that is not a positive finite number (an all-zero tensor, NaN or Inf in it).
  static float GlobalScale(float amax) {
    const float g = (kScaleMax * kElementMax) / amax;
    return g > 0.0f && std::isfinite(g) ? g : 1.0f;
  }

  /// The value a block's E4M3 scale code is rounded from: g * (amax / 6), amax the block's
  /// largest magnitude (compressed-tensors' calculate_qparams with a global scale).
  static float BlockScaleInput(float amax, float g) { return g * (amax / kElementMax); }
};

/// Validates any format (FormatTraits<F>::Validate of its family).
inline void Validate(const Format& f) {
  std::visit([](const auto& x) { FormatTraits<std::decay_t<decltype(x)>>::Validate(x); }, f);
}

/// The record name of a format's family ("int", "nf4", ...).
inline const char* CodecName(const Format& f) {
  return std::visit([](const auto& x) { return FormatTraits<std::decay_t<decltype(x)>>::kCodec; },
                    f);
}

/// The stored tensors of a [rows, cols] matrix in format `f`.
inline std::vector<StoredPart> Layout(const Format& f, int64_t rows, int64_t cols) {
  return std::visit(
      [&](const auto& x) { return FormatTraits<std::decay_t<decltype(x)>>::Layout(x, rows, cols); },
      f);
}

/// Stored bits per weight of a [rows, cols] matrix, scales and zero-points included.
inline double BitsPerWeight(const Format& f, int64_t rows, int64_t cols) {
  uint64_t bits = 0;
  for (const StoredPart& p : Layout(f, rows, cols)) {
    uint64_t n = 1;
    for (const int64_t d : p.shape) n *= static_cast<uint64_t>(d);
    bits += n * static_cast<uint64_t>(BitsOf(p.dtype));
  }
  const double n = static_cast<double>(rows) * static_cast<double>(cols);
  return n > 0 ? static_cast<double>(bits) / n : 0.0;
}

}  // namespace qtool
