#include "qtool/quant/observer.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <numeric>

#include "qtool/core/error.hpp"
#include "qtool/kernels.hpp"

namespace qtool {
namespace {

constexpr int kMseShrinkSteps = 99;  // alpha = 1 - i / 100 for i in [0, 99]

// Clips the min-max range of the data to [-t, t].
Range ClipRange(Range r, float t) { return {std::max(r.lo, -t), std::min(r.hi, t)}; }

// |x - Q(x)|^norm for the grid with parameters p (norm 2 without pow).
inline double ErrorPow(float x, GroupParams p, int32_t umax, double norm) {
  const double e = std::fabs(x - DequantizeValue(QuantizeValue(x, p, umax), p));
  return norm == 2.0 ? e * e : std::pow(e, norm);
}

Range MseRange(const float* x, int64_t n, const QuantSpec& grid, double norm, const float* w) {
  const Range full = MinMax(x, n);
  const int32_t umax = (1 << grid.bits) - 1;
  Range best = full;
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i <= kMseShrinkSteps; ++i) {
    const float alpha = 1.0f - static_cast<float>(i) / 100.0f;
    const Range r{full.lo * alpha, full.hi * alpha};
    const GroupParams p = ParamsFromRange(r.lo, r.hi, grid);
    double err = 0;
    for (int64_t k = 0; k < n; ++k) err += (w ? w[k] : 1.0f) * ErrorPow(x[k], p, umax, norm);
    if (err < best_err) {  // strict: ties keep the wider range
      best_err = err;
      best = r;
    }
  }
  return best;
}

Range PercentileRange(const float* x, int64_t n, double percentile) {
  const Range full = MinMax(x, n);
  if (n == 0) return full;
  std::vector<float> a(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) a[static_cast<size_t>(i)] = std::fabs(x[i]);
  // Nearest-rank percentile: the smallest value with at least P% of the values at or below it.
  const auto rank = static_cast<int64_t>(std::ceil(percentile / 100.0 * static_cast<double>(n)));
  const auto k = static_cast<size_t>(std::clamp<int64_t>(rank, 1, n) - 1);
  std::nth_element(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(k), a.end());
  return ClipRange(full, a[k]);
}

}  // namespace

Range MinMax(const float* x, int64_t n) {
  Range r;
  kernels::MinMax(x, n, &r.lo, &r.hi);
  return r;
}

int PositiveLevels(const QuantSpec& grid) {
  return grid.symmetric ? grid.qmax() : ((1 << grid.bits) - 1) / 2;
}

Range ChooseRange(const float* x, int64_t n, const ObserverSpec& spec, const QuantSpec& grid,
                  const float* importance) {
  switch (spec.kind) {
    case ObserverKind::kMinMax:
      return MinMax(x, n);
    case ObserverKind::kPercentile:
      return PercentileRange(x, n, spec.percentile);
    case ObserverKind::kMse:
      return MseRange(x, n, grid, spec.norm, importance);
    case ObserverKind::kKl: {
      // 2048 bins, fewer for a group of fewer values: a histogram much wider than its sample
      // count is mostly empty bins, and KL then favours tiny thresholds (a 64-weight group lost
      // 17 dB to min-max with 2048 bins; with 64 bins it is within 0.3 dB).
      const int levels = 1 << (grid.bits - 1);
      Histogram h(static_cast<int>(std::clamp<int64_t>(n, 4 * levels, kHistogramBins)));
      h.Add(x, n);
      return ClipRange(MinMax(x, n), h.KlThreshold(levels));
    }
  }
  return MinMax(x, n);
}

void Histogram::Add(const float* x, int64_t n, int64_t stride) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i * stride]));
  if (amax == 0.0f && range_ == 0.0f) {
    counts_[0] += static_cast<double>(n);  // all zeros so far: they sit in bin 0 of any range
    return;
  }
  if (range_ == 0.0f) {
    // First non-zero batch: the range just covers it (its max falls in the last bin).
    range_ = std::nextafter(amax, std::numeric_limits<float>::infinity());
  }
  const int nb = bins();
  while (amax >= range_) {
    // Double the range: bins 2j and 2j+1 merge into bin j.
    for (int j = 0; j < nb / 2; ++j) counts_[j] = counts_[2 * j] + counts_[2 * j + 1];
    std::fill(counts_.begin() + nb / 2, counts_.end(), 0.0);
    range_ *= 2.0f;
  }
  const double inv = nb / static_cast<double>(range_);
  for (int64_t i = 0; i < n; ++i) {
    const auto b = static_cast<int>(std::fabs(x[i * stride]) * inv);
    counts_[static_cast<size_t>(std::min(b, nb - 1))] += 1.0;
  }
}

double Histogram::total() const { return std::accumulate(counts_.begin(), counts_.end(), 0.0); }

float Histogram::Percentile(double p) const {
  const double target = p / 100.0 * total();
  double cum = 0;
  for (int i = 0; i < bins(); ++i) {
    cum += counts_[static_cast<size_t>(i)];
    if (cum >= target) return static_cast<float>((i + 1) * bin_width());
  }
  return range_;
}

float Histogram::MseThreshold(int levels, double norm) const {
  const double w = bin_width();
  double best_err = std::numeric_limits<double>::infinity();
  int best = bins();
  for (int i = bins(); i >= 1; --i) {
    const double t = i * w, step = t / levels;
    double err = 0;
    for (int b = 0; b < bins(); ++b) {
      const double c = counts_[static_cast<size_t>(b)];
      if (c == 0) continue;
      const double v = (b + 0.5) * w;
      const double q = std::min(std::nearbyint(v / step), static_cast<double>(levels)) * step;
      const double e = std::fabs(v - q);
      err += c * (norm == 2.0 ? e * e : std::pow(e, norm));
    }
    if (err < best_err) {
      best_err = err;
      best = i;
    }
  }
  return static_cast<float>(best * w);
}

float Histogram::KlThreshold(int levels) const {
  const int nb = bins();
  if (range_ == 0.0f || levels >= nb) return range_;
  // Prefix sums make each candidate O(levels): with P_b = h_b (the tail folded into the last bin)
  // and Q_b = mass_j / nonzero_j on the non-empty bins of chunk j,
  //   sum_b P_b log(P_b / Q_b) = sum_b h_b log h_b - sum_j mass_j log(mass_j / nonzero_j)
  // plus a correction for the last bin, which gains the tail.
  std::vector<double> mass(static_cast<size_t>(nb) + 1, 0.0), plogp(mass), nonzero(mass);
  for (int b = 0; b < nb; ++b) {
    const double h = counts_[static_cast<size_t>(b)];
    mass[b + 1] = mass[b] + h;
    plogp[b + 1] = plogp[b] + (h > 0 ? h * std::log(h) : 0.0);
    nonzero[b + 1] = nonzero[b] + (h > 0 ? 1.0 : 0.0);
  }
  const double total = mass[static_cast<size_t>(nb)];
  constexpr double kEmptyQ = 1e-4;  // smoothing where P > 0 but Q = 0 (only the last bin)
  double best_kl = std::numeric_limits<double>::infinity();
  int best = nb;
  for (int i = levels; i <= nb; ++i) {
    double sum = plogp[static_cast<size_t>(i)];
    double last_q = 0;
    for (int j = 0; j < levels; ++j) {
      const auto b0 = static_cast<size_t>(static_cast<int64_t>(j) * i / levels);
      const auto b1 = static_cast<size_t>(static_cast<int64_t>(j + 1) * i / levels);
      const double m = mass[b1] - mass[b0], nz = nonzero[b1] - nonzero[b0];
      if (nz > 0) {
        sum -= m * std::log(m / nz);
        if (j == levels - 1) last_q = m / nz;
      }
    }
    const double h = counts_[static_cast<size_t>(i) - 1],
                 tail = total - mass[static_cast<size_t>(i)];
    if (tail > 0) {
      // Replace the last bin's h log(h / q) by (h + tail) log((h + tail) / q).
      const double q = h > 0 ? last_q : kEmptyQ;
      if (h > 0) sum -= h * std::log(h / q);
      sum += (h + tail) * std::log((h + tail) / q);
    }
    // Q lacks the tail's mass: renormalising it to the total of P adds log(q_total / total).
    const double kl = sum / total + (total > tail ? std::log((total - tail) / total) : 0.0);
    if (kl < best_kl) {
      best_kl = kl;
      best = i;
    }
  }
  return static_cast<float>(best * bin_width());
}

ActivationObserver::ActivationObserver(const ObserverSpec& spec, const QuantSpec& grid,
                                       ActGranularity granularity, int64_t channels,
                                       double averaging)
    : spec_(spec),
      grid_(grid),
      granularity_(granularity),
      channels_(channels),
      averaging_(averaging) {
  QTOOL_CHECK(channels >= 1, ShapeError, "activation observer needs at least one channel");
  QTOOL_CHECK(averaging >= 0 && averaging <= 1, OptionError,
              "moving-average constant must be in [0, 1], got {}", averaging);
  const size_t slots = granularity == ActGranularity::kChannel ? static_cast<size_t>(channels) : 1;
  minmax_.resize(slots);
  if (spec.kind != ObserverKind::kMinMax && granularity != ActGranularity::kToken) {
    hists_.resize(slots);
  }
}

void ActivationObserver::Update(const float* x, int64_t tokens) {
  if (granularity_ == ActGranularity::kToken) {
    token_ranges_.resize(static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t) {
      token_ranges_[static_cast<size_t>(t)] =
          ChooseRange(x + t * channels_, channels_, spec_, grid_);
    }
    return;
  }
  const bool per_channel = granularity_ == ActGranularity::kChannel;
  for (size_t s = 0; s < minmax_.size(); ++s) {
    Range batch{0, 0};
    if (per_channel) {
      for (int64_t t = 0; t < tokens; ++t) {
        const float v = x[t * channels_ + static_cast<int64_t>(s)];
        batch.lo = std::min(batch.lo, v);
        batch.hi = std::max(batch.hi, v);
      }
    } else {
      batch = MinMax(x, tokens * channels_);
    }
    Range& m = minmax_[s];
    if (!seen_) {
      m = batch;
    } else if (averaging_ > 0) {
      m.lo += static_cast<float>(averaging_) * (batch.lo - m.lo);
      m.hi += static_cast<float>(averaging_) * (batch.hi - m.hi);
    } else {
      m.lo = std::min(m.lo, batch.lo);
      m.hi = std::max(m.hi, batch.hi);
    }
    if (!hists_.empty()) {
      if (per_channel) {
        hists_[s].Add(x + s, tokens, channels_);
      } else {
        hists_[s].Add(x, tokens * channels_);
      }
    }
  }
  seen_ = true;
}

std::vector<Range> ActivationObserver::Ranges() const {
  if (granularity_ == ActGranularity::kToken) return token_ranges_;
  std::vector<Range> out(minmax_.size());
  const int levels = PositiveLevels(grid_);
  for (size_t s = 0; s < out.size(); ++s) {
    float t = std::numeric_limits<float>::infinity();
    switch (spec_.kind) {
      case ObserverKind::kMinMax:
        break;
      case ObserverKind::kPercentile:
        t = hists_[s].Percentile(spec_.percentile);
        break;
      case ObserverKind::kMse:
        t = hists_[s].MseThreshold(levels, spec_.norm);
        break;
      case ObserverKind::kKl:
        t = hists_[s].KlThreshold(1 << (grid_.bits - 1));
        break;
    }
    out[s] = ClipRange(minmax_[s], t);
  }
  return out;
}

}  // namespace qtool
