// Observers: how the range [lo, hi] of a quantisation grid is chosen from data.
//
//   minmax        lo = min x, hi = max x (widened to include 0).
//   percentile:P  the P-th percentile of |x| (exact selection on weights, histogram on streams);
//                 lo, hi are the min-max range clipped to [-t, t].
//   mse[:p]       the range alpha * [min, max] with alpha in {1, 0.99, ..., 0.01} that minimises
//                 sum_i w_i |x_i - Q(x_i)|^p on the actual integer grid (p = 2 by default; w_i are
//                 optional importance weights such as mean activation^2, as llama.cpp's imatrix).
//   kl            TensorRT entropy calibration: a 2048-bin histogram of |x|; for every threshold
//                 bin i >= L (L = quantised levels, 2^(b-1)) the reference distribution P is
//                 hist[0:i] with the clipped tail added to its last bin, Q is hist[0:i] merged into
//                 L levels and spread back evenly over the non-empty bins of each level; the
//                 threshold minimising KL(P || Q) is chosen (Migacz, "8-bit Inference with
//                 TensorRT", GTC 2017). For weights the histogram has min(2048, max(n, 4 L))
//                 bins, n being the number of values in the group.
//
// The same observers serve weights (a whole group/channel/tensor at once: ChooseRange) and
// activations seen in batches (ActivationObserver: per-tensor, per-channel or per-token), where the
// running statistics are min/max (optionally a moving average) and a histogram of |x| whose range
// doubles, merging bin pairs, when a batch exceeds it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/format/observer.hpp"
#include "qtool/format/spec.hpp"

namespace qtool {

inline constexpr int kHistogramBins = 2048;

struct Range {
  float lo = 0, hi = 0;
};

/// Min-max range of n values (lo <= 0 <= hi).
Range MinMax(const float* x, int64_t n);

/// Range of n values for the integer grid `grid` chosen by `spec`. `importance` (n non-negative
/// weights, or nullptr for all ones) weights the MSE observer's error. Example:
///   Range r = ChooseRange(w, 128, ObserverSpec::Parse("mse"), QuantSpec{.bits = 4});
///   GroupParams p = ParamsFromRange(r.lo, r.hi, spec);
Range ChooseRange(const float* x, int64_t n, const ObserverSpec& spec, const QuantSpec& grid,
                  const float* importance = nullptr);

/// Positive steps of a grid: qmax for symmetric grids, (2^b - 1) / 2 rounded down for asymmetric.
int PositiveLevels(const QuantSpec& grid);

/// Histogram of |x| over [0, range) in equal bins; the range doubles (merging bin pairs) when
/// added values reach it, so its resolution follows the largest value seen.
class Histogram {
 public:
  explicit Histogram(int bins = kHistogramBins) : counts_(static_cast<size_t>(bins), 0.0) {}

  /// Adds |x[i * stride]| for i < n.
  void Add(const float* x, int64_t n, int64_t stride = 1);

  int bins() const { return static_cast<int>(counts_.size()); }
  float range() const { return range_; }
  double bin_width() const { return static_cast<double>(range_) / bins(); }
  const std::vector<double>& counts() const { return counts_; }
  double total() const;

  /// Upper edge of the first bin at which the cumulative count reaches p percent.
  float Percentile(double p) const;
  /// Clipping threshold t minimising the expected |x - Q(x)|^norm of a symmetric uniform grid with
  /// `levels` positive steps of size t / levels (bin centres stand for their values).
  float MseThreshold(int levels, double norm) const;
  /// TensorRT entropy-calibration threshold for `levels` quantised bins (see the file comment).
  float KlThreshold(int levels) const;

 private:
  std::vector<double> counts_;
  float range_ = 0;  // 0 until a non-zero value is added
};

enum class ActGranularity { kTensor, kChannel, kToken };

/// Streams activation batches [tokens, channels] (row-major) and chooses ranges from them.
/// Per-token ranges belong to the last batch only (they are what dynamic quantisation uses).
class ActivationObserver {
 public:
  /// `averaging` in (0, 1]: min/max follow a moving average, m += averaging * (batch - m), as
  /// PyTorch's MovingAverageMinMaxObserver; 0 keeps the running min/max.
  ActivationObserver(const ObserverSpec& spec, const QuantSpec& grid, ActGranularity granularity,
                     int64_t channels, double averaging = 0);

  void Update(const float* x, int64_t tokens);
  /// One range (tensor), one per channel, or one per token of the last batch.
  std::vector<Range> Ranges() const;

 private:
  ObserverSpec spec_;
  QuantSpec grid_;
  ActGranularity granularity_;
  int64_t channels_;
  double averaging_;
  bool seen_ = false;
  std::vector<Range> minmax_;     // per slot (1 or channels)
  std::vector<Histogram> hists_;  // per slot, unless min-max
  std::vector<Range> token_ranges_;
};

}  // namespace qtool
