#include "qtool/solvers/ggml_grid.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/format/ggml_quants.hpp"

namespace qtool::solvers {
namespace {

using ggml::Type;

// Sub-blocks per block: the k-quants' scales (Q2_K, Q3_K, Q6_K: 16 of 16 values; Q4_K, Q5_K:
// 8 of 32), IQ4_XS's 8 of 32; one for the 32-blocks.
int SubBlocks(Type t) {
  switch (t) {
    case Type::kQ2_K:
    case Type::kQ3_K:
    case Type::kQ6_K:
      return 16;
    case Type::kQ4_K:
    case Type::kQ5_K:
    case Type::kIQ4_XS:
      return 8;
    default:
      return 1;
  }
}

// A nibble at value position e (0..31) of a 32-block stored as Q4_0 stores it: qs[e % 16], low
// nibble for e < 16.
void SetNibble32(uint8_t* qs, int e, int v) {
  const int shift = 4 * (e / 16);
  qs[e % 16] = static_cast<uint8_t>((qs[e % 16] & ~(0xF << shift)) | (v << shift));
}
// Bit e of a little-endian 32-bit mask (Q5_0/Q5_1 qh).
void SetBit(uint8_t* m, int e, int v) {
  m[e / 8] = static_cast<uint8_t>((m[e / 8] & ~(1 << (e % 8))) | (v << (e % 8)));
}
// Two bits of value e of a 256-block packed as ggml::detail::Pack2Bit does.
int Get2(const uint8_t* qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
}
void Set2(uint8_t* qs, int e, int v) {
  uint8_t& byte = qs[32 * (e / 128) + e % 32];
  const int shift = 2 * (e % 128 / 32);
  byte = static_cast<uint8_t>((byte & ~(3 << shift)) | (v << shift));
}
// Q4_K/Q5_K low nibbles: value e of each 64 at qs[32 * (e / 64) + e % 32], high nibble for the
// second 32.
int NibbleK(const uint8_t* qs, int e) {
  return (qs[32 * (e / 64) + e % 32] >> (4 * (e % 64 / 32))) & 0xF;
}
void SetNibbleK(uint8_t* qs, int e, int v) {
  uint8_t& byte = qs[32 * (e / 64) + e % 32];
  const int shift = 4 * (e % 64 / 32);
  byte = static_cast<uint8_t>((byte & ~(0xF << shift)) | (v << shift));
}
// Q6_K: value e = 128 h + 32 k + l: low nibble in ql[64 h + l + 32 (k % 2)] (high nibble for
// k >= 2), high two bits at bits 2k of qh[32 h + l].
int GetQ6(const ggml::BlockQ6_K& b, int e) {
  const int h = e / 128, k = e % 128 / 32, l = e % 32;
  const int lo = (b.ql[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0xF;
  return lo | (((b.qh[32 * h + l] >> (2 * k)) & 3) << 4);
}
void SetQ6(ggml::BlockQ6_K& b, int e, int v) {
  const int h = e / 128, k = e % 128 / 32, l = e % 32;
  uint8_t& lo = b.ql[64 * h + l + 32 * (k % 2)];
  const int shift = 4 * (k / 2);
  lo = static_cast<uint8_t>((lo & ~(0xF << shift)) | ((v & 0xF) << shift));
  uint8_t& hi = b.qh[32 * h + l];
  hi = static_cast<uint8_t>((hi & ~(3 << (2 * k))) | ((v >> 4) << (2 * k)));
}
// IQ4_XS: value e of each 32 as IQ4_NL's nibbles, 16 bytes per 32.
void SetNibbleXs(uint8_t* qs, int e, int v) { SetNibble32(qs + 16 * (e / 32), e % 32, v); }

// The code stored for value e of a block (the reference quantiser's L: unsigned, offsets kept).
int GetCode(Type t, const std::byte* block, int e) {
  switch (t) {
    case Type::kQ2_K:
      return Get2(reinterpret_cast<const ggml::BlockQ2_K*>(block)->qs, e);
    case Type::kQ3_K: {
      const auto* b = reinterpret_cast<const ggml::BlockQ3_K*>(block);
      return Get2(b->qs, e) | (((b->hmask[e % 32] >> (e / 32)) & 1) << 2);
    }
    case Type::kQ4_K:
      return NibbleK(reinterpret_cast<const ggml::BlockQ4_K*>(block)->qs, e);
    case Type::kQ5_K: {
      const auto* b = reinterpret_cast<const ggml::BlockQ5_K*>(block);
      return NibbleK(b->qs, e) | (((b->qh[e % 32] >> (2 * (e / 64) + e % 64 / 32)) & 1) << 4);
    }
    case Type::kQ6_K:
      return GetQ6(*reinterpret_cast<const ggml::BlockQ6_K*>(block), e);
    default:
      return 0;  // the other types' codes are functions of the value (never kept)
  }
}

void SetCode(Type t, std::byte* block, int e, int v) {
  switch (t) {
    case Type::kQ4_0:
      return SetNibble32(reinterpret_cast<ggml::BlockQ4_0*>(block)->qs, e, v);
    case Type::kQ4_1:
      return SetNibble32(reinterpret_cast<ggml::BlockQ4_1*>(block)->qs, e, v);
    case Type::kQ5_0: {
      auto* b = reinterpret_cast<ggml::BlockQ5_0*>(block);
      SetNibble32(b->qs, e, v & 0xF);
      return SetBit(b->qh, e, v >> 4);
    }
    case Type::kQ5_1: {
      auto* b = reinterpret_cast<ggml::BlockQ5_1*>(block);
      SetNibble32(b->qs, e, v & 0xF);
      return SetBit(b->qh, e, v >> 4);
    }
    case Type::kQ8_0:
      reinterpret_cast<ggml::BlockQ8_0*>(block)->qs[e] = static_cast<int8_t>(v);
      return;
    case Type::kQ2_K:
      return Set2(reinterpret_cast<ggml::BlockQ2_K*>(block)->qs, e, v);
    case Type::kQ3_K: {
      auto* b = reinterpret_cast<ggml::BlockQ3_K*>(block);
      Set2(b->qs, e, v & 3);
      uint8_t& m = b->hmask[e % 32];
      m = static_cast<uint8_t>((m & ~(1 << (e / 32))) | ((v >> 2) << (e / 32)));
      return;
    }
    case Type::kQ4_K:
      return SetNibbleK(reinterpret_cast<ggml::BlockQ4_K*>(block)->qs, e, v);
    case Type::kQ5_K: {
      auto* b = reinterpret_cast<ggml::BlockQ5_K*>(block);
      SetNibbleK(b->qs, e, v & 0xF);
      uint8_t& m = b->qh[e % 32];
      const int bit = 2 * (e / 64) + e % 64 / 32;
      m = static_cast<uint8_t>((m & ~(1 << bit)) | ((v >> 4) << bit));
      return;
    }
    case Type::kQ6_K:
      return SetQ6(*reinterpret_cast<ggml::BlockQ6_K*>(block), e, v);
    case Type::kIQ4_NL:
      return SetNibble32(reinterpret_cast<ggml::BlockIQ4_NL*>(block)->qs, e, v);
    case Type::kIQ4_XS:
      return SetNibbleXs(reinterpret_cast<ggml::BlockIQ4_XS*>(block)->qs, e, v);
    default:
      return;
  }
}

// ggml's unrounded IQ4 scale of each 32 values of x[0..n) (n = 32 or 256), as
// ggml::detail::Iq4Search computes it without an importance matrix (weights x^2).
void Iq4Scales(const float* x, int n, float* scales) {
  float weight[32];
  for (int ib = 0; ib < n / 32; ++ib) {
    const float* xb = x + 32 * ib;
    for (int j = 0; j < 32; ++j) weight[j] = xb[j] * xb[j];
    scales[ib] = ggml::detail::Iq4BlockScale(xb, weight);
  }
}

// Signed absolute maximum of x[0..32) (the first of equal magnitudes), as the legacy quantisers.
float SignedMax(const float* x) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

float Inverse(float d) { return d != 0 ? 1.0f / d : 0.0f; }

// A legacy code: ggml truncates x * id + offset (x + 0.5 rounding), clamped to [0, top].
int Truncated(float v, int top) { return v < 0 ? 0 : std::min(top, static_cast<int>(v)); }

}  // namespace

bool GgmlGrid::Supports(ggml::Type type) {
  switch (type) {
    case Type::kQ4_0:
    case Type::kQ4_1:
    case Type::kQ5_0:
    case Type::kQ5_1:
    case Type::kQ8_0:
    case Type::kQ2_K:
    case Type::kQ3_K:
    case Type::kQ4_K:
    case Type::kQ5_K:
    case Type::kQ6_K:
    case Type::kIQ4_NL:
    case Type::kIQ4_XS:
      return true;
    default:
      return false;
  }
}

GgmlGrid::GgmlGrid(ggml::Type type, int64_t rows, int64_t cols)
    : type_(type), rows_(rows), cols_(cols) {
  QTOOL_CHECK(Supports(type), OptionError, "GPTQ cannot sweep ggml type {}",
              ggml::Traits(type).name);
  block_ = ggml::Traits(type).block_size;
  type_size_ = static_cast<size_t>(ggml::Traits(type).type_size);
  QTOOL_CHECK(rows >= 0 && cols >= 0 && cols % block_ == 0, ShapeError,
              "a [{}, {}] weight is not whole {} blocks of {}", rows, cols, ggml::Traits(type).name,
              block_);
  row_bytes_ = ggml::RowBytes(type, static_cast<uint64_t>(cols));
  out_.resize(row_bytes_ * static_cast<size_t>(rows));
  state_.resize(static_cast<size_t>(rows));
}

void GgmlGrid::Fit(int64_t b, const float* wt, int64_t ld, int64_t r0, int64_t n) {
  std::vector<float> x(static_cast<size_t>(block_));
  const int subs = SubBlocks(type_);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < block_; ++c) x[static_cast<size_t>(c)] = wt[c * ld + i];
    std::byte* blk = BlockAt(r0 + i, b);
    // The reference quantiser on the current values: the parameters, and the codes the
    // sub-blocks with a zero scale keep.
    ggml::Quantize(type_, x.data(), blk, block_);
    RowState& s = state_[static_cast<size_t>(r0 + i)];
    switch (type_) {
      case Type::kQ4_0:
        s.scale[0] = Inverse(SignedMax(x.data()) / -8);
        break;
      case Type::kQ5_0:
        s.scale[0] = Inverse(SignedMax(x.data()) / -16);
        break;
      case Type::kQ8_0: {
        float amax = 0.0f;
        for (float v : x) amax = std::max(amax, std::fabs(v));
        s.scale[0] = Inverse(amax / 127);
        break;
      }
      case Type::kQ4_1:
      case Type::kQ5_1: {
        const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
        s.min[0] = *lo;
        s.scale[0] = Inverse((*hi - *lo) / (type_ == Type::kQ4_1 ? 15 : 31));
        break;
      }
      case Type::kQ2_K: {
        const auto* q = reinterpret_cast<const ggml::BlockQ2_K*>(blk);
        for (int j = 0; j < subs; ++j) {
          s.scale[j] = F16ToF32(q->d) * (q->scales[j] & 0xF);
          s.min[j] = F16ToF32(q->dmin) * (q->scales[j] >> 4);
        }
        break;
      }
      case Type::kQ3_K: {
        const auto* q = reinterpret_cast<const ggml::BlockQ3_K*>(blk);
        for (int j = 0; j < subs; ++j) {
          s.scale[j] = F16ToF32(q->d) * ggml::detail::Q3Scale(q->scales, j);
        }
        break;
      }
      case Type::kQ4_K:
      case Type::kQ5_K: {
        // Q4_K and Q5_K start with the same d, dmin and scales.
        const auto* q = reinterpret_cast<const ggml::BlockQ4_K*>(blk);
        for (int j = 0; j < subs; ++j) {
          uint8_t sc;
          uint8_t m;
          ggml::detail::ScaleMinK4(j, q->scales, &sc, &m);
          s.scale[j] = F16ToF32(q->d) * sc;
          s.min[j] = F16ToF32(q->dmin) * m;
        }
        break;
      }
      case Type::kQ6_K: {
        const auto* q = reinterpret_cast<const ggml::BlockQ6_K*>(blk);
        for (int j = 0; j < subs; ++j) s.scale[j] = F16ToF32(q->d) * q->scales[j];
        break;
      }
      case Type::kIQ4_NL: {
        float scale;
        Iq4Scales(x.data(), 32, &scale);
        s.scale[0] = Inverse(scale);
        s.min[0] = F16ToF32(reinterpret_cast<const ggml::BlockIQ4_NL*>(blk)->d);
        break;
      }
      case Type::kIQ4_XS: {
        const auto* q = reinterpret_cast<const ggml::BlockIQ4_XS*>(blk);
        float scales[8];
        Iq4Scales(x.data(), 256, scales);
        float max_scale = 0;
        float amax_scale = 0;
        for (float v : scales) {
          if (std::fabs(v) > amax_scale) {
            amax_scale = std::fabs(v);
            max_scale = v;
          }
        }
        const float d = -max_scale / 32;
        for (int ib = 0; ib < subs; ++ib) {
          const int ls = ((q->scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) |
                         (((q->scales_h >> (2 * ib)) & 3) << 4);
          s.scale[ib] = Inverse(d * (ls - 32));
          s.min[ib] = F16ToF32(q->d) * (ls - 32);  // the decoded sub-block scale
        }
        break;
      }
      default:
        break;
    }
  }
}

void GgmlGrid::Quantize(int64_t col, const float* x, int64_t r0, int64_t n, uint8_t* codes,
                        float* deq) const {
  using ggml::detail::NearestInt;
  const int64_t b = col / block_;
  const int e = static_cast<int>(col % block_);
  const int sub = e / (static_cast<int>(block_) / SubBlocks(type_));
  for (int64_t i = 0; i < n; ++i) {
    const RowState& s = state_[static_cast<size_t>(r0 + i)];
    const std::byte* blk = BlockAt(r0 + i, b);
    const float v = x[i];
    const float id = s.scale[sub];
    int q = 0;
    float y = 0;
    switch (type_) {
      case Type::kQ4_0: {
        q = Truncated(v * id + 8.5f, 15);
        y = (q - 8) * F16ToF32(reinterpret_cast<const ggml::BlockQ4_0*>(blk)->d);
        break;
      }
      case Type::kQ5_0: {
        q = Truncated(v * id + 16.5f, 31);
        y = (q - 16) * F16ToF32(reinterpret_cast<const ggml::BlockQ5_0*>(blk)->d);
        break;
      }
      case Type::kQ4_1:
      case Type::kQ5_1: {
        q = Truncated((v - s.min[0]) * id + 0.5f, type_ == Type::kQ4_1 ? 15 : 31);
        // Q4_1 and Q5_1 start with d and m.
        const auto* h = reinterpret_cast<const ggml::BlockQ4_1*>(blk);
        y = q * F16ToF32(h->d) + F16ToF32(h->m);
        break;
      }
      case Type::kQ8_0: {
        const int c = std::clamp(static_cast<int>(std::round(v * id)), -127, 127);
        q = static_cast<uint8_t>(static_cast<int8_t>(c));
        y = c * F16ToF32(reinterpret_cast<const ggml::BlockQ8_0*>(blk)->d);
        break;
      }
      case Type::kQ2_K:
      case Type::kQ4_K:
      case Type::kQ5_K: {
        const int top = type_ == Type::kQ2_K ? 3 : type_ == Type::kQ4_K ? 15 : 31;
        q = id == 0 ? GetCode(type_, blk, e)
                    : std::clamp(NearestInt((v + s.min[sub]) / id), 0, top);
        y = id * q - s.min[sub];
        break;
      }
      case Type::kQ3_K: {
        q = id == 0 ? GetCode(type_, blk, e) : std::clamp(NearestInt(v / id), -4, 3) + 4;
        y = id * (q - 4);
        break;
      }
      case Type::kQ6_K: {
        q = id == 0 ? GetCode(type_, blk, e) : std::clamp(NearestInt(v / id), -32, 31) + 32;
        y = id * (q - 32);
        break;
      }
      case Type::kIQ4_NL:
      case Type::kIQ4_XS: {
        q = ggml::detail::NearestIq4(id * v);
        y = s.min[sub] * ggml::kIq4nlValues[q];
        break;
      }
      default:
        break;
    }
    codes[i] = static_cast<uint8_t>(q);
    deq[i] = y;
  }
}

std::vector<std::byte> GgmlGrid::Write(const std::vector<uint8_t>& codes) {
  QTOOL_CHECK(codes.size() == static_cast<size_t>(rows_ * cols_), ShapeError,
              "{} codes for a [{}, {}] weight", codes.size(), rows_, cols_);
  for (int64_t r = 0; r < rows_; ++r) {
    for (int64_t c = 0; c < cols_; ++c) {
      SetCode(type_, BlockAt(r, c / block_), static_cast<int>(c % block_),
              codes[static_cast<size_t>(r * cols_ + c)]);
    }
  }
  return std::move(out_);
}

}  // namespace qtool::solvers
