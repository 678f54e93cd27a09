#include "qtool/solvers/grid.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "qtool/core/error.hpp"
#include "qtool/format/minifloat.hpp"
#include "qtool/format/spec.hpp"
#include "qtool/quant/nf4_codec.hpp"

namespace qtool::solvers {
namespace {

// The reference's MSE grid: 100 steps of 1%, shrinking the range to at most 80% below min-max,
// error norm 2.4.
constexpr int kMseGrid = 100;
constexpr double kMseMaxShrink = 0.8;
constexpr double kMseNorm = 2.4;

}  // namespace

IntGrid::IntGrid(int bits, bool symmetric, bool codec_range)
    : bits_(bits), symmetric_(symmetric), codec_range_(codec_range) {
  QTOOL_CHECK(bits >= 2 && bits <= 8, OptionError, "bits must be in 2..8, got {}", bits);
}

std::string IntGrid::Name() const {
  return fmt::format("int{} {}", bits_, symmetric_ ? "sym" : "asym");
}

GridParams IntGrid::FromRange(float lo, float hi) const {
  QuantSpec spec;
  spec.bits = bits_;
  spec.symmetric = symmetric_;
  if (symmetric_ && !codec_range_) {
    // All 2^b levels: [-amax, amax] spans 2^b - 1 steps, so the top level (2^(b-1) - 1) * scale
    // falls just short of amax and the bottom one reaches -amax * 2^b / (2^b - 1), as the GPTQ
    // reference's symmetric quantiser has it (the codec's RTN uses amax / (2^(b-1) - 1) instead).
    const float amax = std::max(std::abs(lo), std::abs(hi));
    const float scale = 2.0f * amax / static_cast<float>((1 << bits_) - 1);
    return {scale > 0 && std::isfinite(scale) ? scale : 1.0f,
            static_cast<float>(spec.code_offset())};
  }
  const GroupParams p = ParamsFromRange(lo, hi, spec);
  return {p.scale, static_cast<float>(p.zero)};
}

void IntGrid::Quantize(const float* x, int64_t n, const GridParams* p, uint8_t* codes,
                       float* deq) const {
  // Same rounding as QuantizeValue: clamp x / scale to the codes' range, round half to even, then
  // add the (integer) zero-point.
  const float umax = static_cast<float>((1 << bits_) - 1);
  for (int64_t i = 0; i < n; ++i) {
    const float z = p[i].zero;
    float v = x[i] / p[i].scale;
    v = std::min(std::max(v, -z), umax - z);
    const float r = RoundHalfEvenSmall(v);
    deq[i] = r * p[i].scale;
    codes[i] = static_cast<uint8_t>(r + z);
  }
}

TableGrid::TableGrid(std::string name, std::vector<float> values)
    : name_(std::move(name)), values_(std::move(values)) {
  const size_t n = values_.size();
  QTOOL_CHECK(n >= 2 && n <= 256 && (n & (n - 1)) == 0, OptionError,
              "grid {} has {} levels, not a power of two in 2..256", name_, n);
  bits_ = std::countr_zero(n);
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), uint8_t{0});
  std::stable_sort(order_.begin(), order_.end(),
                   [&](uint8_t a, uint8_t b) { return values_[a] < values_[b]; });
  for (size_t i = 0; i + 1 < n; ++i) {
    mids_.push_back(0.5f * (values_[order_[i]] + values_[order_[i + 1]]));
  }
  absmax_ = 0;
  for (float v : values_) absmax_ = std::max(absmax_, std::abs(v));
  QTOOL_CHECK(absmax_ > 0, OptionError, "grid {} has only zero levels", name_);
}

TableGrid TableGrid::Nf4() {
  const std::array<float, 16>& v = Nf4Values();
  return TableGrid("nf4", std::vector<float>(v.begin(), v.end()));
}

TableGrid TableGrid::Fp4() {
  std::vector<float> v(16);
  for (uint32_t code = 0; code < 16; ++code) v[code] = DecodeMinifloat(code, kE2M1);
  return TableGrid("fp4", std::move(v));
}

GridParams TableGrid::FromRange(float lo, float hi) const {
  const float amax = std::max(std::abs(lo), std::abs(hi));
  const float scale = amax / absmax_;
  return {scale > 0 && std::isfinite(scale) ? scale : 1.0f, 0.0f};
}

void TableGrid::Quantize(const float* x, int64_t n, const GridParams* p, uint8_t* codes,
                         float* deq) const {
  const int64_t nmid = static_cast<int64_t>(mids_.size());
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] / p[i].scale;
    int64_t k = 0;  // number of midpoints below v: index of the nearest level in sorted order
    for (int64_t m = 0; m < nmid; ++m) k += v > mids_[static_cast<size_t>(m)] ? 1 : 0;
    const uint8_t code = order_[static_cast<size_t>(k)];
    codes[i] = code;
    deq[i] = values_[code] * p[i].scale;
  }
}

std::unique_ptr<Grid> MakeGrid(const std::string& name, int bits, bool symmetric) {
  if (name == "int") return std::make_unique<IntGrid>(bits, symmetric);
  if (name == "nf4") return std::make_unique<TableGrid>(TableGrid::Nf4());
  if (name == "fp4") return std::make_unique<TableGrid>(TableGrid::Fp4());
  throw OptionError(fmt::format("unknown grid \"{}\" (known: int, nf4, fp4)", name));
}

void FitGroups(const Grid& grid, const float* wt, int64_t ld, int64_t len, int64_t rows, bool mse,
               GridParams* out) {
  std::vector<float> lo(static_cast<size_t>(rows), 0.0f), hi(static_cast<size_t>(rows), 0.0f);
  for (int64_t c = 0; c < len; ++c) {
    const float* x = wt + c * ld;
    for (int64_t r = 0; r < rows; ++r) {
      lo[static_cast<size_t>(r)] = std::min(lo[static_cast<size_t>(r)], x[r]);
      hi[static_cast<size_t>(r)] = std::max(hi[static_cast<size_t>(r)], x[r]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    out[r] = grid.FromRange(lo[static_cast<size_t>(r)], hi[static_cast<size_t>(r)]);
  }
  if (!mse) return;
  std::vector<double> best(static_cast<size_t>(rows), INFINITY), err(static_cast<size_t>(rows));
  std::vector<GridParams> cand(static_cast<size_t>(rows));
  std::vector<uint8_t> codes(static_cast<size_t>(rows));
  std::vector<float> deq(static_cast<size_t>(rows));
  for (int i = 0; i < static_cast<int>(kMseMaxShrink * kMseGrid); ++i) {
    const float shrink = static_cast<float>(1.0 - static_cast<double>(i) / kMseGrid);
    for (int64_t r = 0; r < rows; ++r) {
      cand[static_cast<size_t>(r)] =
          grid.FromRange(shrink * lo[static_cast<size_t>(r)], shrink * hi[static_cast<size_t>(r)]);
    }
    std::fill(err.begin(), err.end(), 0.0);
    for (int64_t c = 0; c < len; ++c) {
      const float* x = wt + c * ld;
      grid.Quantize(x, rows, cand.data(), codes.data(), deq.data());
      for (int64_t r = 0; r < rows; ++r) {
        err[static_cast<size_t>(r)] +=
            std::pow(std::abs(static_cast<double>(deq[static_cast<size_t>(r)]) - x[r]), kMseNorm);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (err[static_cast<size_t>(r)] < best[static_cast<size_t>(r)]) {
        best[static_cast<size_t>(r)] = err[static_cast<size_t>(r)];
        out[r] = cand[static_cast<size_t>(r)];
      }
    }
  }
}

QuantizedMatrix QuantizeRtn(const Eigen::Ref<const RowMatrixXf>& w, const Grid& grid,
                            int64_t group_size, bool mse) {
  const int64_t rows = w.rows(), cols = w.cols();
  const int64_t g = group_size > 0 && group_size < cols ? group_size : std::max<int64_t>(cols, 1);
  QuantizedMatrix q;
  q.groups = (cols + g - 1) / g;
  q.dequant.resize(rows, cols);
  q.codes.resize(static_cast<size_t>(rows * cols));
  q.params.resize(static_cast<size_t>(rows * q.groups));
  q.g_idx.resize(static_cast<size_t>(cols));
  const RowMatrixXf wt = w.transpose();
  std::vector<GridParams> p(static_cast<size_t>(rows));
  std::vector<uint8_t> codes(static_cast<size_t>(rows));
  std::vector<float> deq(static_cast<size_t>(rows));
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t gi = c / g;
    if (c % g == 0) {
      FitGroups(grid, &wt(c, 0), rows, std::min(g, cols - c), rows, mse, p.data());
      for (int64_t r = 0; r < rows; ++r) q.params[static_cast<size_t>(r * q.groups + gi)] = p[r];
    }
    grid.Quantize(&wt(c, 0), rows, p.data(), codes.data(), deq.data());
    for (int64_t r = 0; r < rows; ++r) {
      q.codes[static_cast<size_t>(r * cols + c)] = codes[static_cast<size_t>(r)];
      q.dequant(r, c) = deq[static_cast<size_t>(r)];
    }
    q.g_idx[static_cast<size_t>(c)] = static_cast<int32_t>(gi);
  }
  return q;
}

}  // namespace qtool::solvers
