// Observers on distributions whose answer is known, for weights and for streamed activations,
// and dynamic per-token activation quantisation.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "qtool/core/error.hpp"
#include "qtool/quant/activation.hpp"
#include "qtool/quant/observer.hpp"

namespace qtool {
namespace {

QuantSpec Grid(int bits, bool symmetric = true) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.granularity = Granularity::kTensor;
  return s;
}

// Mean squared error of x quantised on `grid` with range r.
double QuantMse(const std::vector<float>& x, Range r, const QuantSpec& grid) {
  const GroupParams p = ParamsFromRange(r.lo, r.hi, grid);
  const int32_t umax = (1 << grid.bits) - 1;
  double e = 0;
  for (float v : x) {
    const double d = v - DequantizeValue(QuantizeValue(v, p, umax), p);
    e += d * d;
  }
  return e / static_cast<double>(x.size());
}

// N(0, 1) with 10 outliers at +-(20..29).
std::vector<float> GaussianWithOutliers() {
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(100000);
  for (float& v : x) v = normal(rng);
  for (int i = 0; i < 10; ++i)
    x[static_cast<size_t>(i) * 9973] = (i % 2 ? -1.0f : 1.0f) * (20.0f + i);
  return x;
}

TEST(Observer, ParseAndPrint) {
  for (const char* s : {"minmax", "percentile:99.9", "mse", "mse:2.4", "kl"}) {
    EXPECT_EQ(ObserverSpec::Parse(s).ToString(), s);
  }
  EXPECT_EQ(ObserverSpec::Parse("percentile").percentile, 99.99);
  for (const char* bad :
       {"", "max", "percentile:0", "percentile:101", "mse:x", "kl:3", "minmax:1"}) {
    EXPECT_THROW(ObserverSpec::Parse(bad), OptionError) << bad;
  }
}

TEST(Observer, MinMaxIsExactOnUniformData) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.7f, 1.3f);
  std::vector<float> x(4097);
  for (float& v : x) v = u(rng);
  const float lo = *std::min_element(x.begin(), x.end()),
              hi = *std::max_element(x.begin(), x.end());
  const Range r = ChooseRange(x.data(), 4097, ObserverSpec{}, Grid(8, false));
  EXPECT_EQ(r.lo, lo);
  EXPECT_EQ(r.hi, hi);
  // Streamed in uneven batches, per-tensor and per-channel (one channel), the same answer.
  ActivationObserver obs(ObserverSpec{}, Grid(8, false), ActGranularity::kTensor, 1);
  obs.Update(x.data(), 1000);
  obs.Update(x.data() + 1000, 3097);
  EXPECT_EQ(obs.Ranges()[0].lo, lo);
  EXPECT_EQ(obs.Ranges()[0].hi, hi);
}

TEST(Observer, ClippingBeatsMinMaxWithOutliers) {
  const std::vector<float> x = GaussianWithOutliers();
  const QuantSpec grid = Grid(4);
  const auto n = static_cast<int64_t>(x.size());
  const Range mm = ChooseRange(x.data(), n, ObserverSpec::Parse("minmax"), grid);
  const Range pc = ChooseRange(x.data(), n, ObserverSpec::Parse("percentile:99.9"), grid);
  const Range mse = ChooseRange(x.data(), n, ObserverSpec::Parse("mse"), grid);
  const Range kl = ChooseRange(x.data(), n, ObserverSpec::Parse("kl"), grid);
  EXPECT_EQ(mm.hi, 28.0f);
  EXPECT_EQ(mm.lo, -29.0f);
  // The 99.9th percentile of |N(0,1)| is 3.29.
  EXPECT_NEAR(pc.hi, 3.29f, 0.1f);
  EXPECT_LT(mse.hi, mm.hi);
  const double e_mm = QuantMse(x, mm, grid), e_pc = QuantMse(x, pc, grid);
  const double e_mse = QuantMse(x, mse, grid), e_kl = QuantMse(x, kl, grid);
  EXPECT_LT(e_pc, 0.5 * e_mm);
  EXPECT_LT(e_mse, 0.5 * e_mm);
  EXPECT_LE(e_mse, e_pc);  // MSE search minimises exactly this error
  // KL clips the outliers too, at a threshold between the Gaussian bulk and the outliers' reach.
  EXPECT_GT(kl.hi, std::min(pc.hi, mse.hi));
  EXPECT_LT(kl.hi, mm.hi);
  EXPECT_LT(e_kl, e_mm);
  ::testing::Test::RecordProperty(
      "thresholds", ::testing::PrintToString(std::vector<float>{mm.hi, pc.hi, mse.hi, kl.hi}));
}

TEST(Observer, Int8KlThresholdLiesBetweenPercentileAndMax) {
  const std::vector<float> x = GaussianWithOutliers();
  const auto n = static_cast<int64_t>(x.size());
  const QuantSpec grid = Grid(8);
  const Range pc = ChooseRange(x.data(), n, ObserverSpec::Parse("percentile:99.99"), grid);
  const Range kl = ChooseRange(x.data(), n, ObserverSpec::Parse("kl"), grid);
  const Range mm = MinMax(x.data(), n);
  EXPECT_GT(kl.hi, pc.hi * 0.9f);
  EXPECT_LT(kl.hi, mm.hi);
}

TEST(Observer, ImportanceWeightsSteerTheMseRange) {
  // Outliers that carry no importance are clipped hard; important outliers keep the range wide.
  std::vector<float> x = GaussianWithOutliers();
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> ignore_outliers(x.size(), 1.0f), favour_outliers(x.size(), 1e-3f);
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::fabs(x[i]) >= 20.0f) {
      ignore_outliers[i] = 0.0f;
      favour_outliers[i] = 1e4f;
    }
  }
  const ObserverSpec mse = ObserverSpec::Parse("mse");
  const Range a = ChooseRange(x.data(), n, mse, Grid(4), ignore_outliers.data());
  const Range b = ChooseRange(x.data(), n, mse, Grid(4), favour_outliers.data());
  EXPECT_LT(a.hi, 6.0f);
  EXPECT_GT(b.hi, 20.0f);
}

TEST(Histogram, GrowsByDoublingAndKeepsCounts) {
  Histogram h(8);
  const float a[] = {0.1f, 0.2f, 0.9f};
  h.Add(a, 3);
  EXPECT_GT(h.range(), 0.9f);
  EXPECT_EQ(h.total(), 3);
  const float b[] = {3.0f};
  h.Add(b, 1);
  EXPECT_GT(h.range(), 3.0f);
  EXPECT_EQ(h.total(), 4);
  EXPECT_EQ(h.counts()[6], 1);  // the range doubled twice to 3.6: 3.0 lands in bin 6 of 8
  EXPECT_NEAR(h.Percentile(75), 0.9f, h.bin_width() + 1e-6);
}

TEST(ActivationObserver, PerChannelPerTokenAndMovingAverage) {
  // 4 tokens x 3 channels; channel c has magnitude up to c + 1.
  const std::vector<float> x = {1, -2, 3, -0.5f, 1, -1, 0.25f, 0.5f, 2, -1, 2, -3};
  ActivationObserver ch(ObserverSpec{}, Grid(8), ActGranularity::kChannel, 3);
  ch.Update(x.data(), 4);
  const auto r = ch.Ranges();
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].lo, -1.0f);
  EXPECT_EQ(r[0].hi, 1.0f);
  EXPECT_EQ(r[1].lo, -2.0f);
  EXPECT_EQ(r[2].lo, -3.0f);
  EXPECT_EQ(r[2].hi, 3.0f);
  ActivationObserver tok(ObserverSpec{}, Grid(8), ActGranularity::kToken, 3);
  tok.Update(x.data(), 4);
  ASSERT_EQ(tok.Ranges().size(), 4u);
  EXPECT_EQ(tok.Ranges()[3].lo, -3.0f);
  EXPECT_EQ(tok.Ranges()[2].hi, 2.0f);
  // Moving average: batches with max 1 and 3, constant 0.5 -> 2.
  ActivationObserver avg(ObserverSpec{}, Grid(8), ActGranularity::kTensor, 1, 0.5);
  const float b1[] = {1.0f}, b2[] = {3.0f};
  avg.Update(b1, 1);
  avg.Update(b2, 1);
  EXPECT_EQ(avg.Ranges()[0].hi, 2.0f);
}

TEST(ActivationObserver, StreamedPercentileMatchesExactSelection) {
  const std::vector<float> x = GaussianWithOutliers();
  ActivationObserver obs(ObserverSpec::Parse("percentile:99.9"), Grid(8), ActGranularity::kTensor,
                         100);
  for (int64_t t = 0; t < 1000; t += 100) obs.Update(x.data() + t * 100, 100);
  const Range exact = ChooseRange(x.data(), static_cast<int64_t>(x.size()),
                                  ObserverSpec::Parse("percentile:99.9"), Grid(8));
  // Within a bin (29 / 2048 wide, the range having doubled at most twice).
  EXPECT_NEAR(obs.Ranges()[0].hi, exact.hi, 4 * 29.0 / 2048);
  ActivationObserver kl(ObserverSpec::Parse("kl"), Grid(8), ActGranularity::kTensor, 100);
  ActivationObserver mse(ObserverSpec::Parse("mse"), Grid(8), ActGranularity::kTensor, 100);
  for (int64_t t = 0; t < 1000; t += 250) {
    kl.Update(x.data() + t * 100, 250);
    mse.Update(x.data() + t * 100, 250);
  }
  EXPECT_LT(kl.Ranges()[0].hi, 28.0f);
  EXPECT_LT(mse.Ranges()[0].hi, 28.0f);
  EXPECT_GT(mse.Ranges()[0].hi, 3.0f);
}

TEST(DynamicQuant, PerTokenInt8AndFp8) {
  const std::vector<float> x = {0.5f, -1.0f, 0.25f, 0.0f, 0.0f, 0.0f, 100.0f, -3.0f, 7.0f};
  std::vector<int8_t> q(9);
  std::vector<float> s(3), y(9);
  QuantizePerTokenInt8(x.data(), 3, 3, q.data(), s.data());
  EXPECT_EQ(s[0], 1.0f / 127);
  EXPECT_EQ(s[1], 1.0f);  // an all-zero token
  EXPECT_EQ(q[1], -127);
  EXPECT_EQ(q[6], 127);
  EXPECT_EQ(q[7], -4);  // rne(-3.81)
  DequantizePerTokenInt8(q.data(), s.data(), 3, 3, y.data());
  for (int i = 0; i < 9; ++i)
    EXPECT_NEAR(y[static_cast<size_t>(i)], x[static_cast<size_t>(i)],
                s[static_cast<size_t>(i / 3)] / 2);
  std::vector<uint8_t> c(9);
  QuantizePerTokenFp8(x.data(), 3, 3, kE4M3, c.data(), s.data());
  EXPECT_EQ(s[2], 100.0f / 448);
  EXPECT_EQ(c[6], 0x7e);  // the token max maps to 448
  DequantizePerTokenFp8(c.data(), s.data(), 3, 3, kE4M3, y.data());
  EXPECT_EQ(y[1], -1.0f);
  for (int i = 0; i < 9; ++i)
    EXPECT_NEAR(y[static_cast<size_t>(i)], x[static_cast<size_t>(i)],
                std::fabs(x[static_cast<size_t>(i)]) / 16);
}

}  // namespace
}  // namespace qtool
