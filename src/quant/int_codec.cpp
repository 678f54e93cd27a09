#include "qtool/quant/int_codec.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "qtool/core/error.hpp"
#include "qtool/format/pack.hpp"
#include "qtool/kernels.hpp"

namespace qtool {
void MinMaxRange(const float* x, int64_t n, float* lo, float* hi) {
  FormatTraits<IntFormat>::MinMaxRange(x, n, lo, hi);
}

void QuantizeRowRef(const float* x, int64_t cols, const QuantSpec& spec, uint8_t* codes,
                    GroupParams* params, float* dequant) {
  const int64_t glen = spec.GroupLen(cols);
  const int32_t umax = (1 << spec.bits) - 1;
  for (int64_t g0 = 0, gi = 0; g0 < cols; g0 += glen, ++gi) {
    const int64_t n = std::min(glen, cols - g0);
    float lo, hi;
    MinMaxRange(x + g0, n, &lo, &hi);
    const GroupParams p = ParamsFromRange(lo, hi, spec);
    params[gi] = p;
    for (int64_t i = g0; i < g0 + n; ++i) {
      codes[i] = QuantizeValue(x[i], p, umax);
      dequant[i] = DequantizeValue(codes[i], p);
    }
  }
}

IntCodec::IntCodec(const QuantSpec& spec, int64_t rows, int64_t cols, const ObserverSpec& observer,
                   bool g_idx)
    : WeightCodec(rows, cols), spec_(spec), observer_(observer), g_idx_(g_idx) {
  spec_.Validate();
  QTOOL_CHECK(!g_idx_ || (spec_.granularity == Granularity::kGroup && !spec_.flat_groups),
              OptionError, "a g_idx needs groups inside rows");
}

Format IntCodec::format() const {
  return IntFormat{.bits = spec_.bits,
                   .symmetric = spec_.symmetric,
                   .granularity = spec_.granularity,
                   .group = spec_.group_size,
                   .flat = spec_.flat_groups,
                   .g_idx = g_idx_,
                   .observer = observer_};
}

int64_t IntCodec::row_block() const {
  // Flat groups: a chunk must start on a group boundary, i.e. (r0 * cols) % g == 0.
  return spec_.flat_groups ? spec_.group_size / std::gcd(cols(), spec_.group_size) : 1;
}

void IntCodec::Observe(const float* w, int64_t r0, int64_t nrows) {
  if (observer_.kind != ObserverKind::kMinMax) {
    if (r0 == 0) tensor_values_.clear();
    tensor_values_.insert(tensor_values_.end(), w, w + nrows * cols());
    if (r0 + nrows < rows()) return;
    const Range range = ChooseRange(tensor_values_.data(),
                                    static_cast<int64_t>(tensor_values_.size()), observer_, spec_);
    tensor_lo_ = range.lo;
    tensor_hi_ = range.hi;
    tensor_values_ = {};
    return;
  }
  float lo, hi;
  MinMaxRange(w, nrows * cols(), &lo, &hi);
  if (r0 == 0) tensor_lo_ = tensor_hi_ = 0.0f;
  tensor_lo_ = std::min(tensor_lo_, lo);
  tensor_hi_ = std::max(tensor_hi_, hi);
}

void IntCodec::EncodeRun(const float* x, Run run, uint8_t* codes, float* y, std::byte* scales,
                         uint8_t* zeros) const {
  const bool tensor = spec_.granularity == Granularity::kTensor;
  QTOOL_DASSERT(run.e0 % run.glen == 0);
  if (!tensor && observer_.kind == ObserverKind::kMinMax) {
    const int64_t g0 = run.base + run.e0 / run.glen;
    kernels::QuantizeGroups(x, run.n, run.glen, spec_, codes, reinterpret_cast<float*>(scales) + g0,
                            zeros ? zeros + g0 : nullptr, y);
    return;
  }
  const GroupParams tensor_params = ParamsFromRange(tensor_lo_, tensor_hi_, spec_);
  for (int64_t k0 = 0; k0 < run.n; k0 += run.glen) {
    const int64_t n = std::min(run.glen, run.n - k0);
    GroupParams p = tensor_params;
    if (!tensor) {
      const Range range = ChooseRange(x + k0, n, observer_, spec_);
      p = ParamsFromRange(range.lo, range.hi, spec_);
      const int64_t gi = run.base + (run.e0 + k0) / run.glen;
      std::memcpy(scales + gi * 4, &p.scale, 4);
      if (zeros) zeros[gi] = static_cast<uint8_t>(p.zero);
    }
    kernels::QuantizeCodes(x + k0, n, p, spec_.bits, codes + k0);
    kernels::DequantizeCodes(codes + k0, n, p, y + k0);
  }
}

void IntCodec::DecodeRun(const uint8_t* codes, Run run, const std::byte* scales,
                         const uint8_t* zeros, float* y) const {
  const bool tensor = spec_.granularity == Granularity::kTensor;
  for (int64_t k0 = 0; k0 < run.n;) {
    const int64_t g = (run.e0 + k0) / run.glen;
    const int64_t k1 = std::min(run.n, (g + 1) * run.glen - run.e0);
    const int64_t gi = tensor ? 0 : run.base + g;
    GroupParams p;
    std::memcpy(&p.scale, scales + gi * 4, 4);
    p.zero = zeros ? zeros[gi] : spec_.code_offset();
    kernels::DequantizeCodes(codes + k0, k1 - k0, p, y + k0);
    k0 = k1;
  }
}

void IntCodec::EncodeRows(const float* w, int64_t r0, int64_t nrows, std::byte* const* out,
                          float* dequant) const {
  const int64_t cols = this->cols();
  const int64_t row_bytes = PackedBytes(cols, spec_.bits);
  auto* qweight = reinterpret_cast<uint8_t*>(out[0]);
  auto* zeros = spec_.symmetric ? nullptr : reinterpret_cast<uint8_t*>(out[2]);
  std::vector<uint8_t> codes(static_cast<size_t>(nrows * cols));
  if (spec_.flat_groups) {
    EncodeRun(w, {r0 * cols, nrows * cols, spec_.group_size, 0}, codes.data(), dequant, out[1],
              zeros);
  } else {
    const int64_t glen = spec_.GroupLen(cols), ngroups = spec_.GroupsPerRow(cols);
    for (int64_t r = 0; r < nrows; ++r) {
      EncodeRun(w + r * cols, {0, cols, glen, (r0 + r) * ngroups}, codes.data() + r * cols,
                dequant + r * cols, out[1], zeros);
    }
  }
  for (int64_t r = 0; r < nrows; ++r) {
    kernels::PackCodes(codes.data() + r * cols, cols, spec_.bits, qweight + (r0 + r) * row_bytes);
  }
  if (r0 == 0) EncodeOnce(out);
}

void IntCodec::EncodeOnce(std::byte* const* out) const {
  if (g_idx_) {
    auto* g_idx = reinterpret_cast<int32_t*>(out[g_idx_part()]);
    for (int64_t c = 0; c < cols(); ++c) g_idx[c] = static_cast<int32_t>(c / spec_.group_size);
  }
  if (spec_.granularity == Granularity::kTensor) {
    const GroupParams p = ParamsFromRange(tensor_lo_, tensor_hi_, spec_);
    std::memcpy(out[1], &p.scale, 4);
    if (!spec_.symmetric) reinterpret_cast<uint8_t*>(out[2])[0] = static_cast<uint8_t>(p.zero);
  }
}

bool IntCodec::EncodeStoredRows(const std::byte* x, DType dtype, int64_t r0, int64_t nrows,
                                std::byte* const* out, ErrorStats* stats, int64_t* bad) const {
  const int64_t cols = this->cols(), glen = spec_.GroupLen(cols);
  const auto address = reinterpret_cast<uintptr_t>(x);
  kernels::StoredFloat type;
  if (dtype == DType::kBF16 && address % 2 == 0) {
    type = kernels::StoredFloat::kBf16;
  } else if (dtype == DType::kF16 && address % 2 == 0) {
    type = kernels::StoredFloat::kF16;
  } else if (dtype == DType::kF32 && address % 4 == 0) {
    type = kernels::StoredFloat::kF32;
  } else {
    return false;
  }
  if (spec_.granularity == Granularity::kTensor || spec_.flat_groups ||
      observer_.kind != ObserverKind::kMinMax || cols % 16 != 0 || glen % 16 != 0) {
    return false;
  }
  const int64_t ng = spec_.GroupsPerRow(cols);
  *bad = kernels::QuantizeStoredRows(
      x, type, nrows, cols, glen, spec_,
      reinterpret_cast<uint8_t*>(out[0]) + r0 * PackedBytes(cols, spec_.bits),
      reinterpret_cast<float*>(out[1]) + r0 * ng,
      spec_.symmetric ? nullptr : reinterpret_cast<uint8_t*>(out[2]) + r0 * ng, stats);
  if (r0 == 0) EncodeOnce(out);
  return true;
}

void IntCodec::DecodeRows(const std::byte* const* in, int64_t r0, int64_t nrows, float* out) const {
  const int64_t cols = this->cols();
  const int64_t row_bytes = PackedBytes(cols, spec_.bits);
  const auto* qweight = reinterpret_cast<const uint8_t*>(in[0]);
  const auto* zeros = spec_.symmetric ? nullptr : reinterpret_cast<const uint8_t*>(in[2]);
  std::vector<uint8_t> codes(static_cast<size_t>(nrows * cols));
  for (int64_t r = 0; r < nrows; ++r) {
    kernels::UnpackCodes(qweight + (r0 + r) * row_bytes, cols, spec_.bits, codes.data() + r * cols);
  }
  if (spec_.flat_groups) {
    DecodeRun(codes.data(), {r0 * cols, nrows * cols, spec_.group_size, 0}, in[1], zeros, out);
    return;
  }
  if (g_idx_) {
    DecodeRowsByIndex(codes.data(), in, r0, nrows, out);
    return;
  }
  const int64_t glen = spec_.GroupLen(cols), ngroups = spec_.GroupsPerRow(cols);
  for (int64_t r = 0; r < nrows; ++r) {
    DecodeRun(codes.data() + r * cols, {0, cols, glen, (r0 + r) * ngroups}, in[1], zeros,
              out + r * cols);
  }
}

// Columns in group order (a stable counting sort by g_idx), each group's run decoded with its
// parameters and scattered back.
void IntCodec::DecodeRowsByIndex(const uint8_t* codes, const std::byte* const* in, int64_t r0,
                                 int64_t nrows, float* out) const {
  const int64_t cols = this->cols(), ngroups = spec_.GroupsPerRow(cols);
  const auto* g_idx = reinterpret_cast<const int32_t*>(in[g_idx_part()]);
  const auto* zeros = spec_.symmetric ? nullptr : reinterpret_cast<const uint8_t*>(in[2]);
  std::vector<int64_t> start(static_cast<size_t>(ngroups + 1), 0);
  for (int64_t c = 0; c < cols; ++c) {
    int32_t g;
    std::memcpy(&g, g_idx + c, 4);
    QTOOL_CHECK(g >= 0 && g < ngroups, FormatError, "g_idx[{}] = {} is not a group (0..{})", c, g,
                ngroups - 1);
    ++start[static_cast<size_t>(g) + 1];
  }
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int64_t> order(static_cast<size_t>(cols)), next(start.begin(), start.end() - 1);
  for (int64_t c = 0; c < cols; ++c) {
    int32_t g;
    std::memcpy(&g, g_idx + c, 4);
    order[static_cast<size_t>(next[static_cast<size_t>(g)]++)] = c;
  }
  std::vector<uint8_t> sorted(static_cast<size_t>(cols));
  std::vector<float> values(static_cast<size_t>(cols));
  for (int64_t r = 0; r < nrows; ++r) {
    const uint8_t* row = codes + r * cols;
    for (int64_t k = 0; k < cols; ++k) sorted[static_cast<size_t>(k)] = row[order[k]];
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t k0 = start[static_cast<size_t>(g)], k1 = start[static_cast<size_t>(g) + 1];
      const int64_t gi = (r0 + r) * ngroups + g;
      GroupParams p;
      std::memcpy(&p.scale, in[1] + gi * 4, 4);
      p.zero = zeros ? zeros[gi] : spec_.code_offset();
      kernels::DequantizeCodes(sorted.data() + k0, k1 - k0, p, values.data() + k0);
    }
    for (int64_t k = 0; k < cols; ++k) out[r * cols + order[k]] = values[static_cast<size_t>(k)];
  }
}

}  // namespace qtool
