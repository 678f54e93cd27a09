// Reference kernels: the definition of every operation, written for clarity and compiled for the
// baseline ISA. They call the formats' own definitions (format/traits.hpp and the per-value
// functions of format/spec.hpp), not the codecs above them; vectorised paths are tested against
// these.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../common_inl.hpp"
#include "../float_codes_inl.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/metrics.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/format/traits.hpp"

namespace qtool::kernels::detail {
namespace {

void RefBf16ToF32(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = qtool::Bf16ToF32(in[i]);
}
void RefF16ToF32(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = qtool::F16ToF32(in[i]);
}
void RefF32ToBf16(const float* in, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = qtool::F32ToBf16(in[i]);
}
void RefF32ToF16(const float* in, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = qtool::F32ToF16(in[i]);
}

int64_t RefFirstNonFinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return i;
  }
  return -1;
}

void RefAccumulateErrors(const float* x, const float* y, int64_t n, ErrorStats* s) {
  AccumulateErrorsReference(x, y, n, s);
}

void RefQuantizeCodes(const float* x, int64_t n, GroupParams p, int32_t umax, uint8_t* c) {
  for (int64_t i = 0; i < n; ++i) c[i] = QuantizeValue(x[i], p, umax);
}
void RefDequantizeCodes(const uint8_t* c, int64_t n, GroupParams p, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = DequantizeValue(c[i], p);
}
void RefPackCodes(const uint8_t* c, int64_t n, int bits, uint8_t* out) {
  qtool::PackCodes(c, n, bits, out);
}
void RefUnpackCodes(const uint8_t* in, int64_t n, int bits, uint8_t* c) {
  qtool::UnpackCodes(in, n, bits, c);
}

// The steps one after the other over all the rows: conversion, the finiteness check, each row's
// groups quantised and packed, then the error sums over every value at once.
int64_t RefQuantizeStoredRows(const void* x, StoredFloat type, int64_t rows, int64_t cols,
                              int64_t glen, const QuantSpec& spec, uint8_t* packed, float* scales,
                              uint8_t* zeros, ErrorStats* s) {
  const int64_t n = rows * cols, ng = (cols + glen - 1) / glen;
  std::vector<float> w(static_cast<size_t>(n)), deq(static_cast<size_t>(n));
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  switch (type) {
    case StoredFloat::kF32:
      std::memcpy(w.data(), x, static_cast<size_t>(n) * 4);
      break;
    case StoredFloat::kBf16:
      RefBf16ToF32(static_cast<const uint16_t*>(x), n, w.data());
      break;
    case StoredFloat::kF16:
      RefF16ToF32(static_cast<const uint16_t*>(x), n, w.data());
      break;
  }
  const int64_t bad = RefFirstNonFinite(w.data(), n);
  if (bad >= 0) return bad;
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeGroupsWith<FormatTraits<IntFormat>::MinMaxRange, RefQuantizeCodes, RefDequantizeCodes>(
        w.data() + r * cols, cols, glen, spec, codes.data(), scales + r * ng,
        zeros ? zeros + r * ng : nullptr, deq.data() + r * cols);
    RefPackCodes(codes.data(), cols, spec.bits, packed + r * PackedBytes(cols, spec.bits));
  }
  RefAccumulateErrors(w.data(), deq.data(), n, s);
  return -1;
}

// scale = max|x| / 127 through the codec's own parameter rule (so an all-zero row gets scale 1);
// the code is the int8 symmetric code minus 128, which never falls below -127 for this scale.
void RefQuantizeActivations(const float* x, int64_t m, int64_t k, int8_t* q, float* s) {
  const QuantSpec spec{8, true, Granularity::kChannel, 0};
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x + t * k;
    float amax = 0.0f;
    for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(xt[i]));
    const GroupParams p = qtool::detail::GroupParamsFromRange(-amax, amax, spec);
    s[t] = p.scale;
    for (int64_t i = 0; i < k; ++i) {
      q[t * k + i] = static_cast<int8_t>(std::max(QuantizeValue(xt[i], p, 255) - 128, -127));
    }
  }
}

int32_t WeightZero(const QuantWeights& w, int64_t n, int64_t g) {
  return w.zeros ? w.zeros[n * w.groups_per_row() + g] : 1 << (w.bits - 1);
}

// Code k of row n of 4- or 8-bit weights.
int32_t WeightCode(const QuantWeights& w, int64_t n, int64_t k) {
  const uint8_t* row = w.codes + n * w.row_bytes();
  return w.bits == 8 ? row[k] : (row[k / 2] >> ((k & 1) * 4)) & 0xf;
}

void RefGemmW8A8(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols;
  for (int64_t t = 0; t < a.m; ++t) {
    const int8_t* qt = a.q + t * k;
    for (int64_t n = n0; n < n1; ++n) {
      int32_t acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += (WeightCode(w, n, i) - WeightZero(w, n, 0)) * qt[i];
      y[t * w.rows + n] = static_cast<float>(acc) * a.scales[t] * w.scales[n];
    }
  }
}

void RefGemmW4A8(const Int8Acts& a, const QuantWeights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols, ng = w.groups_per_row();
  for (int64_t t = 0; t < a.m; ++t) {
    const int8_t* qt = a.q + t * k;
    for (int64_t n = n0; n < n1; ++n) {
      float acc = 0.0f;
      for (int64_t g = 0; g < ng; ++g) {
        int32_t dot = 0;
        for (int64_t i = g * w.group; i < std::min(k, (g + 1) * w.group); ++i) {
          dot += (WeightCode(w, n, i) - WeightZero(w, n, g)) * qt[i];
        }
        acc += w.scales[n * ng + g] * static_cast<float>(dot);
      }
      y[t * w.rows + n] = acc * a.scales[t];
    }
  }
}

void RefGemmW4A16(const uint16_t* a, int64_t m, const QuantWeights& w, int64_t n0, int64_t n1,
                  float* y) {
  const int64_t k = w.cols, ng = w.groups_per_row();
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t n = n0; n < n1; ++n) {
      float acc = 0.0f;
      for (int64_t g = 0; g < ng; ++g) {
        float dot = 0.0f;
        for (int64_t i = g * w.group; i < std::min(k, (g + 1) * w.group); ++i) {
          const int32_t c = WeightCode(w, n, i) - WeightZero(w, n, g);
          dot += static_cast<float>(c) * qtool::Bf16ToF32(a[t * k + i]);
        }
        acc += w.scales[n * ng + g] * dot;
      }
      y[t * w.rows + n] = acc;
    }
  }
}

void RefGemvNf4(const float* x, const Nf4Weights& w, int64_t n0, int64_t n1, float* y) {
  const int64_t k = w.cols, ng = (k + w.group - 1) / w.group, row_bytes = (k + 1) / 2;
  const float* values = Nf4Table(w.map);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.codes + n * row_bytes;
    float acc = 0.0f;
    for (int64_t g = 0; g < ng; ++g) {
      float dot = 0.0f;
      for (int64_t i = g * w.group; i < std::min(k, (g + 1) * w.group); ++i) {
        dot += values[(row[i / 2] >> ((~i & 1) * 4)) & 0xf] * x[i];  // even k: high nibble
      }
      acc += w.scales[n * ng + g] * dot;
    }
    y[n] = acc;
  }
}

// ---- Float codes: the codecs' loops over a row, calling their per-value definitions ----

static_assert(kNf4AbsmaxFloor == FormatTraits<Nf4Format>::kMinAbsmax);

void RefQuantizeNf4(const float* x, int64_t n, int64_t start, const Nf4Blocks& b, uint8_t* packed,
                    float* deq) {
  const float* values = Nf4Table(b.map);
  ForEachNf4Run(n, start, b, [&](int64_t c0, int64_t c1, int64_t j, bool whole) {
    for (int64_t c = c0; c < c1; ++c) {
      const uint8_t code = FormatTraits<Nf4Format>::Code(x[c], b.absmax[j], whole, b.map);
      deq[c] = values[code] * b.scales[j];
      if (c % 2 == 0) {
        packed[c / 2] = static_cast<uint8_t>(code << 4);
      } else {
        packed[c / 2] = static_cast<uint8_t>(packed[c / 2] | code);
      }
    }
  });
}

void RefDequantizeNf4(const uint8_t* packed, int64_t n, int64_t start, const Nf4Blocks& b,
                      float* out) {
  const float* values = Nf4Table(b.map);
  ForEachNf4Run(n, start, b, [&](int64_t c0, int64_t c1, int64_t j, bool) {
    for (int64_t c = c0; c < c1; ++c) {
      const int code = c % 2 == 0 ? packed[c / 2] >> 4 : packed[c / 2] & 0xf;
      out[c] = values[code] * b.scales[j];
    }
  });
}

void RefQuantizeMinifloat(const float* x, int64_t n, const float* scales, int64_t group,
                          const MinifloatCodes& f, uint8_t* packed, float* deq) {
  Scratch codes(0, n);
  for (int64_t c = 0; c < n; ++c) {
    const float s = scales[c / group];
    const auto code = static_cast<uint8_t>(EncodeMinifloat(x[c] / s, *f.format, f.saturate));
    codes.as<uint8_t>()[c] = code;
    deq[c] = f.value[code] * s;
  }
  RefPackCodes(codes.as<uint8_t>(), n, f.bits, packed);
}

void RefDequantizeMinifloat(const uint8_t* packed, int64_t n, const float* scales, int64_t group,
                            const MinifloatCodes& f, float* out) {
  Scratch codes(0, n);
  RefUnpackCodes(packed, n, f.bits, codes.as<uint8_t>());
  for (int64_t c = 0; c < n; ++c) out[c] = f.value[codes.as<uint8_t>()[c]] * scales[c / group];
}

// An MX element's code and value: the minifloat `e`, or MXINT8 without one.
uint8_t MxElementCode(float p, const MinifloatCodes* e) {
  return e ? static_cast<uint8_t>(EncodeMinifloat(p, *e->format, e->saturate))
           : FormatTraits<MxFormat>::EncodeInt8(p);
}
float MxElementValue(uint8_t code, const MinifloatCodes* e) {
  return e ? e->value[code] : FormatTraits<MxFormat>::DecodeInt8(code);
}
int MxElementBits(const MinifloatCodes* e) { return e ? e->bits : 8; }

void RefQuantizeMx(const float* x, int64_t n, int64_t block, const MinifloatCodes* e,
                   uint8_t* packed, uint8_t* scales, float* deq) {
  Scratch codes(0, n);
  for (int64_t c0 = 0, j = 0; c0 < n; c0 += block, ++j) {
    const int64_t c1 = std::min(n, c0 + block);
    const float amax = FormatTraits<MxFormat>::BlockAmax(x + c0, c1 - c0);
    const uint8_t s = E8M0ScaleForBlock(amax, e ? e->emax : 0);
    scales[j] = s;
    const float scale = DecodeE8M0(s);
    for (int64_t c = c0; c < c1; ++c) {
      // Division by a power of two is exact; a NaN scale leaves code 0 (decoded as NaN).
      const uint8_t code = s == kE8M0Nan ? 0 : MxElementCode(x[c] / scale, e);
      codes.as<uint8_t>()[c] = code;
      deq[c] = MxElementValue(code, e) * scale;
    }
  }
  RefPackCodes(codes.as<uint8_t>(), n, MxElementBits(e), packed);
}

void RefDequantizeMx(const uint8_t* packed, const uint8_t* scales, int64_t n, int64_t block,
                     const MinifloatCodes* e, float* out) {
  Scratch codes(0, n);
  RefUnpackCodes(packed, n, MxElementBits(e), codes.as<uint8_t>());
  for (int64_t c0 = 0, j = 0; c0 < n; c0 += block, ++j) {
    const float scale = DecodeE8M0(scales[j]);
    for (int64_t c = c0; c < std::min(n, c0 + block); ++c) {
      out[c] = MxElementValue(codes.as<uint8_t>()[c], e) * scale;
    }
  }
}

}  // namespace

const float* Nf4Table(Bnb4Map map) { return FormatTraits<Nf4Format>::Values(map).data(); }
const float* Nf4MidpointTable(Bnb4Map map) {
  return FormatTraits<Nf4Format>::Midpoints(map).data();
}

const KernelTable* ScalarTable() {
  static constexpr KernelTable kTable{
      .bf16_to_f32 = RefBf16ToF32,
      .f16_to_f32 = RefF16ToF32,
      .f32_to_bf16 = RefF32ToBf16,
      .f32_to_f16 = RefF32ToF16,
      .first_non_finite = RefFirstNonFinite,
      .accumulate_errors = RefAccumulateErrors,
      .min_max = FormatTraits<IntFormat>::MinMaxRange,
      .quantize_groups = QuantizeGroupsWith<FormatTraits<IntFormat>::MinMaxRange, RefQuantizeCodes,
                                            RefDequantizeCodes>,
      .quantize_stored_rows = RefQuantizeStoredRows,
      .quantize_codes = RefQuantizeCodes,
      .dequantize_codes = RefDequantizeCodes,
      .pack_codes = RefPackCodes,
      .unpack_codes = RefUnpackCodes,
      .quantize_activations = RefQuantizeActivations,
      .gemm_w8a8 = RefGemmW8A8,
      .gemm_w4a8 = RefGemmW4A8,
      .gemm_w4a16 = RefGemmW4A16,
      .gemv_nf4 = RefGemvNf4,
      .quantize_nf4 = RefQuantizeNf4,
      .dequantize_nf4 = RefDequantizeNf4,
      .quantize_minifloat = RefQuantizeMinifloat,
      .dequantize_minifloat = RefDequantizeMinifloat,
      .quantize_mx = RefQuantizeMx,
      .dequantize_mx = RefDequantizeMx,
      .f32_gemm_panels = gemm::PanelsRef,
      .f32_gemm_micro = gemm::MicroKernelRef,
      .transpose_f32 = RefTransposeF32,
      .transpose_u8 = RefTransposeU8};
  return &kTable;
}

}  // namespace qtool::kernels::detail
