// Calibration capture: the Hessians and channel statistics the solvers get equal a direct
// computation on the same activations.
#include <gtest/gtest.h>

#include "qtool/core/error.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/capture.hpp"
#include "qtool/model/tokenizer.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/quant/activation.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;

// Keeps every row it is shown.
class Recorder : public ActivationConsumer {
 public:
  void Consume(const Eigen::Ref<const RowMatrixXf>& x) override {
    rows.conservativeResize(rows.rows() + x.rows(), x.cols());
    rows.bottomRows(x.rows()) = x;
    ++calls;
  }
  RowMatrixXf rows;
  int calls = 0;
};

Eigen::MatrixXd DirectHessian(const RowMatrixXf& x) {
  const Eigen::MatrixXd xd = x.cast<double>();
  return 2.0 / static_cast<double>(x.rows()) * xd.transpose() * xd;
}

double RelMaxDiff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

struct Fixture {
  fs::path dir = testing::SharedModels().front();
  Model model{dir, {.threads = 2}};
  std::vector<int32_t> tokens =
      EncodeTextFile(LoadModelTokenizer(dir), *testing::SharedDir() / "data" / "stories-calib.txt");
};

TEST(Capture, HessiansAndStatisticsEqualDirectComputation) {
  QTOOL_REQUIRE_SHARED();
  Fixture f;
  // 110 samples x 40 tokens: more than kCaptureChunkTokens, so consumers see several chunks.
  const auto samples = DrawCalibrationSamples(f.tokens, {.num_samples = 110, .seq_len = 40});
  CalibrationRunner run(f.model, samples);
  const LlamaConfig& cfg = f.model.config();
  ASSERT_EQ(run.inputs().rows(), 110 * 40);

  // Block 0's q_proj input, computed here from the embeddings: RMSNorm(embed[token]) * w.
  const std::vector<float> embed = ReadTensorF32(f.model.checkpoint(), "model.embed_tokens.weight");
  const std::vector<float> norm =
      ReadTensorF32(f.model.checkpoint(), "model.layers.0.input_layernorm.weight");
  RowMatrixXf x0(110 * 40, cfg.hidden_size);
  int64_t row = 0;
  for (const auto& s : samples) {
    for (const int32_t t : s) {
      for (int64_t c = 0; c < cfg.hidden_size; ++c) {
        x0(row, c) = embed[static_cast<size_t>(t * cfg.hidden_size + c)];
      }
      const double ms = x0.row(row).cast<double>().squaredNorm() / cfg.hidden_size;
      for (int64_t c = 0; c < cfg.hidden_size; ++c) {
        x0(row, c) = static_cast<float>(x0(row, c) / std::sqrt(ms + cfg.rms_norm_eps) *
                                        norm[static_cast<size_t>(c)]);
      }
      ++row;
    }
  }

  HessianAccumulator h_q(run.in_features("self_attn.q_proj"));
  HessianAccumulator h_down(run.in_features("mlp.down_proj"));
  ChannelStats s_o(run.in_features("self_attn.o_proj"));
  Recorder rec_q, rec_o, rec_down, rec_v;
  run.Run({{"self_attn.q_proj", {&h_q, &rec_q}},
           {"self_attn.v_proj", {&rec_v}},
           {"self_attn.o_proj", {&s_o, &rec_o}},
           {"mlp.down_proj", {&h_down, &rec_down}}});
  EXPECT_EQ(rec_q.calls, 2);
  EXPECT_EQ(h_q.rows(), 110 * 40);
  EXPECT_EQ(rec_q.rows, rec_v.rows);  // q/k/v share their input
  EXPECT_LE((rec_q.rows - x0).cwiseAbs().maxCoeff(), 1e-5);

  const double hq = RelMaxDiff(h_q.Hessian(), DirectHessian(rec_q.rows));
  const double hd = RelMaxDiff(h_down.Hessian(), DirectHessian(rec_down.rows));
  std::printf("Hessian relative max diff: q_proj %.3g, down_proj %.3g\n", hq, hd);
  EXPECT_LE(hq, 1e-6);
  EXPECT_LE(hd, 1e-6);
  EXPECT_LE(RelMaxDiff(h_q.Hessian(), DirectHessian(x0)), 1e-4);
  EXPECT_EQ(h_down.Hessian().rows(), cfg.intermediate_size);

  const Eigen::ArrayXXd o = rec_o.rows.cast<double>().array();
  EXPECT_LE((s_o.MeanAbs().array() - o.abs().colwise().mean().transpose()).abs().maxCoeff(), 1e-9);
  EXPECT_LE((s_o.MeanSquare().array() - o.square().colwise().mean().transpose()).abs().maxCoeff(),
            1e-9);
  EXPECT_EQ(s_o.MaxAbs(), o.abs().colwise().maxCoeff().transpose().matrix());
}

// Capture() stops each block after the last consumed layer's input and shows exactly what Run()
// shows, for a layer early in the block and for the last one.
TEST(Capture, StopsEarlyWithTheSameInputs) {
  QTOOL_REQUIRE_SHARED();
  Fixture f;
  const auto samples = DrawCalibrationSamples(f.tokens, {.num_samples = 6, .seq_len = 32});
  CalibrationRunner run(f.model, samples);
  for (const char* layer : {"self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"}) {
    Recorder by_run, by_capture, q_by_capture;
    run.Run({{layer, {&by_run}}});
    run.Capture({{layer, {&by_capture}}, {"self_attn.q_proj", {&q_by_capture}}});
    EXPECT_EQ(by_capture.rows, by_run.rows) << layer;
    EXPECT_EQ(q_by_capture.rows.rows(), 6 * 32) << layer;
  }
  EXPECT_THROW(run.Capture({{"mlp.nonsense", {}}}), OptionError);
}

TEST(Capture, SequentialOverridesChangeTheNextInputs) {
  QTOOL_REQUIRE_SHARED();
  Fixture f;
  const auto samples = DrawCalibrationSamples(f.tokens, {.num_samples = 4, .seq_len = 32});
  CalibrationRunner plain(f.model, samples), same(f.model, samples), changed(f.model, samples);
  const RowMatrixXf w = plain.Weight("mlp.down_proj");
  EXPECT_EQ(w.rows(), f.model.config().hidden_size);
  // Overriding with the checkpoint's own weights changes nothing; halving them does.
  plain.Advance();
  same.Advance({{"mlp.down_proj", w}, {"input_layernorm", same.Weight("input_layernorm")}});
  changed.Advance({{"mlp.down_proj", w * 0.5f}});
  EXPECT_EQ(plain.inputs(), same.inputs());
  EXPECT_GT((plain.inputs() - changed.inputs()).cwiseAbs().maxCoeff(), 1e-3);
  EXPECT_EQ(plain.block(), 1);
  while (!plain.done()) plain.Advance();
  EXPECT_EQ(plain.block(), f.model.config().num_layers);
  EXPECT_THROW(plain.Run(), OptionError);
  EXPECT_THROW(same.Run({{"mlp.nonsense", {}}}), OptionError);
  EXPECT_THROW(same.Advance({{"mlp.up_proj", w}}), ShapeError);
}

// Run() with int8_inputs runs the block as the runtime runs a W8A8 checkpoint: the same outputs
// as the quantised model's own block, given its rounded weights as overrides.
TEST(Capture, Int8InputsRunTheBlockAsW8A8) {
  QTOOL_REQUIRE_SHARED();
  Fixture f;
  testing::ScratchDir scratch;
  QuantizeOptions o;
  o.format = IntFormat{.bits = 8, .granularity = Granularity::kChannel};
  o.activations = Int8TokenActivations();
  QuantizeCheckpoint(Checkpoint::Open(f.dir), scratch.path() / "w8a8", o);
  const Model quantised(scratch.path() / "w8a8", {.threads = 2});
  const auto samples = DrawCalibrationSamples(f.tokens, {.num_samples = 4, .seq_len = 32});
  const CalibrationRunner fp(f.model, samples), w8a8(quantised, samples);
  WeightOverrides rounded;
  for (const std::string& n : BlockLinearNames()) rounded[n] = w8a8.Weight(n);
  const RowMatrixXf expected = w8a8.Run();
  const RowMatrixXf weights_only = fp.Run({}, rounded);
  Recorder seen, seen_plain;
  const RowMatrixXf actual = fp.Run({{"mlp.down_proj", {&seen}}}, rounded, /*int8_inputs=*/true);
  fp.Run({{"mlp.down_proj", {&seen_plain}}}, rounded);
  EXPECT_LE((actual - expected).cwiseAbs().maxCoeff(), 1e-6 * expected.cwiseAbs().maxCoeff());
  EXPECT_GT((weights_only - expected).cwiseAbs().maxCoeff(), 1e-4 * expected.cwiseAbs().maxCoeff());
  // Consumers still see the unquantised inputs (of the W8A8 attention).
  EXPECT_NE(seen.rows, seen_plain.rows);
  RowMatrixXf requantised(seen.rows.rows(), seen.rows.cols());
  FakeQuantizePerTokenInt8(seen.rows.data(), seen.rows.rows(), seen.rows.cols(),
                           requantised.data());
  EXPECT_NE(seen.rows, requantised);
}

TEST(Capture, SamplesAreDeterministic) {
  std::vector<int32_t> tokens(1000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
  const auto a = DrawCalibrationSamples(tokens, {.num_samples = 8, .seq_len = 16, .seed = 7});
  const auto b = DrawCalibrationSamples(tokens, {.num_samples = 8, .seq_len = 16, .seed = 7});
  const auto c = DrawCalibrationSamples(tokens, {.num_samples = 8, .seq_len = 16, .seed = 8});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (const auto& s : a) {
    ASSERT_EQ(s.size(), 16u);
    EXPECT_EQ(s[0], 1);                                                   // BOS
    for (size_t i = 2; i < s.size(); ++i) EXPECT_EQ(s[i], s[i - 1] + 1);  // a contiguous window
  }
  EXPECT_THROW(DrawCalibrationSamples(tokens, {.num_samples = 1, .seq_len = 2000}), OptionError);
}

}  // namespace
}  // namespace qtool
