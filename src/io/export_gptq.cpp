// GPTQ (v1 and v2) and AWQ GEMM layouts of an integer weight (qtool/io/export_layouts.hpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/format/traits.hpp"
#include "qtool/io/export_layouts.hpp"

namespace qtool {
namespace {

uint32_t* WordsOf(ExportTensor& t) { return reinterpret_cast<uint32_t*>(t.data.data()); }

// Scales [rows, groups] as f16 [groups, rows].
ExportTensor TransposedF16Scales(const IntWeight& w, const std::string& name) {
  ExportTensor t = ExportTensor::Zeros({name, DType::kF16, {w.groups, w.rows}});
  auto* out = reinterpret_cast<uint16_t*>(t.data.data());
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t g = 0; g < w.groups; ++g) {
      const float s = w.scales[static_cast<size_t>(r * w.groups + g)];
      const uint16_t h = F32ToF16(s);
      QTOOL_CHECK(std::isfinite(F16ToF32(h)), OptionError,
                  "weight \"{}\": scale {} of row {} is out of the f16 range that GPTQ and AWQ "
                  "scales have",
                  w.name, s, r);
      out[g * w.rows + r] = h;
    }
  }
  return t;
}

void ReadF16Scales(const ExportTensor& t, IntWeight& w) {
  const auto* in = reinterpret_cast<const uint16_t*>(t.data.data());
  w.scales.resize(static_cast<size_t>(w.rows * w.groups));
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t g = 0; g < w.groups; ++g)
      w.scales[static_cast<size_t>(r * w.groups + g)] = F16ToF32(in[g * w.rows + r]);
  }
}

ExportTensor GIdx(const IntWeight& w, const std::string& name) {
  return ExportTensor::CopyOf({name, DType::kI32, {w.cols}}, w.g_idx.data());
}

// g_idx back from a tensor, and whether it is other than c / group_size.
void ReadGIdx(const ExportTensor& t, IntWeight& w) {
  w.g_idx.resize(static_cast<size_t>(w.cols));
  std::memcpy(w.g_idx.data(), t.data.data(), t.data.size());
  w.act_order = false;
  for (int64_t c = 0; c < w.cols; ++c)
    w.act_order |= w.g_idx[static_cast<size_t>(c)] != c / w.group_size;
}

}  // namespace

void TransposeWords(const std::byte* in, int64_t rows, int64_t cols, int64_t in_row_bytes,
                    uint32_t* out) {
  constexpr int64_t kTile = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r) {
        const std::byte* row = in + r * in_row_bytes;
        for (int64_t c = c0; c < c1; ++c) std::memcpy(out + c * rows + r, row + c * 4, 4);
      }
    }
  }
}

std::vector<uint32_t> Words(const ExportTensor& t) {
  std::vector<uint32_t> w(t.data.size() / 4);
  std::memcpy(w.data(), t.data.data(), w.size() * 4);
  return w;
}

std::vector<TensorSpec> GptqLayout(const IntWeight& w, const std::string& prefix) {
  const int b = w.bits;
  QTOOL_CHECK(b == 2 || b == 3 || b == 4 || b == 8, OptionError,
              "weight \"{}\": GPTQ holds 2, 3, 4 or 8 bits, not {}", w.name, b);
  QTOOL_CHECK(w.cols * b % 32 == 0 && w.rows * b % 32 == 0, OptionError,
              "weight \"{}\" [{}, {}]: GPTQ packs {}-bit codes into 32-bit words along both "
              "dimensions, which needs both to be multiples of {}",
              w.name, w.rows, w.cols, b, 32 / std::gcd(32, b));
  return {{prefix + ".qweight", DType::kI32, {w.cols * b / 32, w.rows}},
          {prefix + ".qzeros", DType::kI32, {w.groups, w.rows * b / 32}},
          {prefix + ".scales", DType::kF16, {w.groups, w.rows}},
          {prefix + ".g_idx", DType::kI32, {w.cols}}};
}

std::vector<ExportTensor> PackGptq(const IntWeight& w, const std::string& prefix, bool v2) {
  const std::vector<TensorSpec> layout = GptqLayout(w, prefix);
  const int b = w.bits;
  ExportTensor qweight = ExportTensor::Zeros(layout[0]);
  uint32_t* qw = WordsOf(qweight);
  if (w.packed) {
    // qtool's rows are the columns' streams already: each row is cols * bits / 32 whole words.
    TransposeWords(w.packed, w.rows, w.cols * b / 32, PackedBytes(w.cols, b), qw);
  } else if (32 % b == 0) {
    // Whole codes per word (2, 4, 8 bits): word k of column r holds codes [k * per, (k + 1) *
    // per) of row r. Rows go in tiles whose codes stay in cache while the words of every k are
    // written, each k's words of the tile being contiguous.
    const int per = 32 / b;
    const int64_t words = w.cols / per, tile = 64;
    for (int64_t r0 = 0; r0 < w.rows; r0 += tile) {
      const int64_t r1 = std::min(w.rows, r0 + tile);
      for (int64_t k = 0; k < words; ++k) {
        uint32_t* dst = qw + k * w.rows;
        for (int64_t r = r0; r < r1; ++r) {
          const uint8_t* codes = w.codes.data() + r * w.cols + k * per;
          uint32_t v = 0;
          for (int j = 0; j < per; ++j) v |= static_cast<uint32_t>(codes[j]) << (j * b);
          dst[r] = v;
        }
      }
    }
  } else {
    for (int64_t r = 0; r < w.rows; ++r) {
      const uint8_t* codes = w.codes.data() + r * w.cols;
      for (int64_t c = 0; c < w.cols; ++c) PutBits32(qw + r, w.rows, c * b, b, codes[c]);
    }
  }
  ExportTensor qzeros = ExportTensor::Zeros(layout[1]);
  uint32_t* qz = WordsOf(qzeros);
  const int64_t zrow = w.rows * b / 32;
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t g = 0; g < w.groups; ++g) {
      uint32_t z = w.zeros[static_cast<size_t>(r * w.groups + g)];
      if (!v2) {
        QTOOL_CHECK(z >= 1, OptionError,
                    "weight \"{}\": row {} group {} has zero-point 0, which GPTQ v1 (stored as "
                    "zero - 1) cannot hold; use checkpoint format gptq_v2",
                    w.name, r, g);
        --z;
      }
      PutBits32(qz + g * zrow, 1, r * b, b, z);
    }
  }
  std::vector<ExportTensor> out;
  out.push_back(std::move(qweight));
  out.push_back(std::move(qzeros));
  out.push_back(TransposedF16Scales(w, prefix + ".scales"));
  out.push_back(GIdx(w, prefix + ".g_idx"));
  return out;
}

IntWeight UnpackGptq(const std::vector<ExportTensor>& t, int bits, bool symmetric, bool v2) {
  IntWeight w;
  w.bits = bits;
  w.symmetric = symmetric;
  w.rows = t[0].spec.shape[1];
  w.cols = t[0].spec.shape[0] * 32 / bits;
  w.groups = t[1].spec.shape[0];
  w.group_size = (w.cols + w.groups - 1) / w.groups;
  const std::vector<uint32_t> qw = Words(t[0]), qz = Words(t[1]);
  w.codes.resize(static_cast<size_t>(w.rows * w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t c = 0; c < w.cols; ++c)
      w.codes[static_cast<size_t>(r * w.cols + c)] =
          static_cast<uint8_t>(GetBits32(qw.data() + r, w.rows, c * bits, bits));
  }
  w.zeros.resize(static_cast<size_t>(w.rows * w.groups));
  const int64_t zrow = w.rows * bits / 32;
  for (int64_t g = 0; g < w.groups; ++g) {
    for (int64_t r = 0; r < w.rows; ++r) {
      const uint32_t z = GetBits32(qz.data() + g * zrow, 1, r * bits, bits);
      w.zeros[static_cast<size_t>(r * w.groups + g)] = static_cast<uint8_t>(v2 ? z : z + 1);
    }
  }
  ReadF16Scales(t[2], w);
  ReadGIdx(t[3], w);
  return w;
}

std::vector<TensorSpec> AwqLayout(const IntWeight& w, const std::string& prefix) {
  QTOOL_CHECK(w.bits == 4, OptionError, "weight \"{}\": AWQ GEMM holds 4-bit codes, not {}-bit",
              w.name, w.bits);
  QTOOL_CHECK(w.rows % 8 == 0, OptionError,
              "weight \"{}\": AWQ packs 8 output channels per word, and {} rows are not a "
              "multiple of 8",
              w.name, w.rows);
  QTOOL_CHECK(w.cols % w.group_size == 0, OptionError,
              "weight \"{}\": AWQ needs whole groups, and group size {} does not divide {} columns",
              w.name, w.group_size, w.cols);
  QTOOL_CHECK(!w.act_order, OptionError,
              "weight \"{}\": AWQ has no g_idx, so it cannot hold act-order groups", w.name);
  return {{prefix + ".qweight", DType::kI32, {w.cols, w.rows / 8}},
          {prefix + ".qzeros", DType::kI32, {w.groups, w.rows / 8}},
          {prefix + ".scales", DType::kF16, {w.groups, w.rows}}};
}

std::vector<ExportTensor> PackAwq(const IntWeight& w, const std::string& prefix) {
  const std::vector<TensorSpec> layout = AwqLayout(w, prefix);
  const int64_t words = w.rows / 8;
  ExportTensor qweight = ExportTensor::Zeros(layout[0]);
  uint32_t* qw = WordsOf(qweight);
  ExportTensor qzeros = ExportTensor::Zeros(layout[1]);
  uint32_t* qz = WordsOf(qzeros);
  for (int64_t j = 0; j < words; ++j) {
    for (int k = 0; k < 8; ++k) {
      const int64_t r = 8 * j + kAwqOrder[k];
      const uint8_t* codes = w.codes.data() + r * w.cols;
      for (int64_t c = 0; c < w.cols; ++c)
        qw[c * words + j] |= static_cast<uint32_t>(codes[c]) << (4 * k);
      for (int64_t g = 0; g < w.groups; ++g)
        qz[g * words + j] |= static_cast<uint32_t>(w.zeros[static_cast<size_t>(r * w.groups + g)])
                             << (4 * k);
    }
  }
  std::vector<ExportTensor> out;
  out.push_back(std::move(qweight));
  out.push_back(std::move(qzeros));
  out.push_back(TransposedF16Scales(w, prefix + ".scales"));
  return out;
}

IntWeight UnpackAwq(const std::vector<ExportTensor>& t, int64_t group_size) {
  IntWeight w;
  w.bits = 4;
  w.symmetric = false;
  w.cols = t[0].spec.shape[0];
  w.rows = t[0].spec.shape[1] * 8;
  w.group_size = group_size;
  w.groups = t[1].spec.shape[0];
  const int64_t words = w.rows / 8;
  const std::vector<uint32_t> qw = Words(t[0]), qz = Words(t[1]);
  w.codes.resize(static_cast<size_t>(w.rows * w.cols));
  w.zeros.resize(static_cast<size_t>(w.rows * w.groups));
  for (int64_t j = 0; j < words; ++j) {
    for (int k = 0; k < 8; ++k) {
      const int64_t r = 8 * j + kAwqOrder[k];
      for (int64_t c = 0; c < w.cols; ++c)
        w.codes[static_cast<size_t>(r * w.cols + c)] = (qw[c * words + j] >> (4 * k)) & 0xf;
      for (int64_t g = 0; g < w.groups; ++g)
        w.zeros[static_cast<size_t>(r * w.groups + g)] = (qz[g * words + j] >> (4 * k)) & 0xf;
    }
  }
  ReadF16Scales(t[2], w);
  w.g_idx.resize(static_cast<size_t>(w.cols));
  for (int64_t c = 0; c < w.cols; ++c) w.g_idx[static_cast<size_t>(c)] = c / group_size;
  return w;
}

}  // namespace qtool
