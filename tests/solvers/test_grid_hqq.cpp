// Grids (every NF4/FP4 code round-trips; the codec-range INT grid rounds exactly as the int codec),
// HQQ against min-max rounding, and the AWQ/SmoothQuant scale helpers.
#include <gtest/gtest.h>

#include "qtool/quant/int_codec.hpp"
#include "qtool/solvers/awq.hpp"
#include "qtool/solvers/hqq.hpp"
#include "solvers/synthetic_layer.hpp"

namespace qtool::solvers {
namespace {

using synthetic::GaussianWeights;

TEST(GridTest, EveryTableCodeDecodesAndEncodesBackToItself) {
  for (const TableGrid& grid : {TableGrid::Nf4(), TableGrid::Fp4()}) {
    const GridParams p{0.37f, 0.0f};
    for (int code = 0; code < 16; ++code) {
      const float x = grid.Decode(static_cast<uint8_t>(code), p);
      uint8_t back;
      float deq;
      grid.Quantize(&x, 1, &p, &back, &deq);
      EXPECT_EQ(deq, x) << grid.Name() << " code " << code;
      // FP4 has +0 and -0: either code is the same value.
      if (grid.Name() != "fp4" || x != 0.0f) {
        EXPECT_EQ(back, code) << grid.Name();
      }
    }
  }
}

TEST(GridTest, CodecRangeIntGridRoundsExactlyAsTheIntCodec) {
  const RowMatrixXf w = GaussianWeights(7, 65, 41);
  for (const bool sym : {true, false}) {
    for (const int bits : {2, 3, 4, 8}) {
      QuantSpec spec;
      spec.bits = bits;
      spec.symmetric = sym;
      spec.group_size = 16;
      const QuantizedMatrix q = QuantizeRtn(w, IntGrid(bits, sym, true), 16);
      std::vector<uint8_t> codes(65);
      std::vector<GroupParams> params(5);
      std::vector<float> deq(65);
      for (int64_t r = 0; r < w.rows(); ++r) {
        QuantizeRowRef(&w(r, 0), 65, spec, codes.data(), params.data(), deq.data());
        for (int64_t c = 0; c < 65; ++c) {
          ASSERT_EQ(q.codes[static_cast<size_t>(r * 65 + c)], codes[static_cast<size_t>(c)]);
          ASSERT_EQ(q.dequant(r, c), deq[static_cast<size_t>(c)]);
        }
      }
    }
  }
}

TEST(HqqTest, LowersTheErrorOfMinMaxRoundingAndStoresIntegerZeros) {
  RowMatrixXf w = GaussianWeights(64, 256, 42);
  for (int64_t i = 0; i < w.size(); i += 37) w.data()[i] *= 6.0f;  // heavy tails
  HqqOptions opt;
  opt.bits = 4;
  opt.group_size = 64;
  HqqStats st;
  const QuantizedMatrix q = Hqq(w, opt, &st);
  EXPECT_GE(st.iterations, 1);
  EXPECT_LT(st.final_error, st.initial_error);
  // HQQ minimises an lp (p = 0.7) error, robust to the outliers: compare that.
  const QuantizedMatrix rtn = QuantizeRtn(w, IntGrid(4, false), 64);
  auto lp = [&](const RowMatrixXf& wq) { return (w - wq).cwiseAbs().array().pow(0.7f).mean(); };
  opt.integer_zero = false;
  const QuantizedMatrix q_float = Hqq(w, opt);
  std::printf("lp error: rtn %.5f hqq %.5f (integer zeros %.5f)\n", lp(rtn.dequant),
              lp(q_float.dequant), lp(q.dequant));
  EXPECT_LT(lp(q_float.dequant), 0.97 * lp(rtn.dequant));
  // Rounding the zero-points for the int codec gives back most of the gain, never more.
  EXPECT_LE(lp(q.dequant), 1.002 * lp(rtn.dequant));
  const IntGrid grid(4, false);
  for (int64_t r = 0; r < w.rows(); ++r) {
    for (int64_t c = 0; c < w.cols(); ++c) {
      const GridParams p = q.params[static_cast<size_t>(r * q.groups + c / 64)];
      ASSERT_EQ(p.zero, std::round(p.zero));
      ASSERT_GE(p.zero, 0.0f);
      ASSERT_LE(p.zero, 15.0f);
      ASSERT_FLOAT_EQ(grid.Decode(q.codes[static_cast<size_t>(r * w.cols() + c)], p),
                      q.dequant(r, c));
    }
  }
}

TEST(ScalesTest, SmoothQuantFoldingKeepsTheProductAndBalancesTheRanges) {
  const RowMatrixXf w = GaussianWeights(16, 8, 43);
  Eigen::VectorXf act(8);
  act << 1, 2, 50, 0.5, 3, 0, 1, 8;
  const Eigen::VectorXf s = SmoothQuantScales(act, {w}, 0.5);
  EXPECT_EQ(s[5], 1.0f);  // a dead channel keeps scale 1
  const Eigen::VectorXf w_max = w.cwiseAbs().colwise().maxCoeff().transpose();
  for (int j = 0; j < 8; ++j) {
    if (act[j] == 0) continue;
    // alpha = 0.5: after folding, max|X_j| / s_j == s_j * max|W_j|.
    EXPECT_NEAR(act[j] / s[j], s[j] * w_max[j], 1e-4f * act[j] / s[j]);
  }
}

TEST(ScalesTest, AwqScalesStraddleOne) {
  Eigen::VectorXf mean(5);
  mean << 0.1f, 1.0f, 10.0f, 0.0f, 3.0f;
  EXPECT_TRUE(AwqScales(mean, 0.0).isOnes());
  const Eigen::VectorXf s = AwqScales(mean, 0.5);
  EXPECT_NEAR(s.maxCoeff() * s.minCoeff(), 1.0f, 1e-5f);
  EXPECT_EQ(s[3], s[0]);  // a dead channel is treated as the smallest live one
}

}  // namespace
}  // namespace qtool::solvers
