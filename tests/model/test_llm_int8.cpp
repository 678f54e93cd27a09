// bitsandbytes' LLM.int8 inputs: how its forward quantises a Linear's input (int8_vectorwise_quant
// with llm_int8_threshold, int8_mixed_scaled_mm), and the runtime running an LLM.int8 checkpoint's
// quantised layers that way.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "../../src/model/block.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/import.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/quant/activation.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Two tokens; 7 and -8 reach the threshold 6, so columns 1 and 2 run in float for both tokens.
// Each token's scale m is its largest |x16| below the threshold (token 0: |-1.0|, which is in a
// float column but is no outlier itself; token 1: 2.0).
const std::vector<float> kX = {0.4999f, 7.0f,    -1.0f, 0.1f,  //
                               2.0f,    1.0001f, -8.0f, 0.3f};

TEST(LlmInt8Inputs, OutlierColumnsRunInFloatAndTheRestPerTokenFromF16) {
  std::vector<float> y(kX.size());
  FakeQuantizeLlmInt8(kX.data(), 2, 4, 6.0f, y.data());
  const float s0 = 1.0f / 127, s1 = 2.0f / 127;
  // 0.4999 is 0.5 in f16: 63.5 rounds to the even 64 (63 from the f32 value).
  EXPECT_EQ(y[0], 64 * s0);
  EXPECT_EQ(y[1], 7.0f);
  EXPECT_EQ(y[2], -1.0f);
  EXPECT_EQ(y[3], 13 * s0);  // f16 0.0999756 * 127 = 12.70
  EXPECT_EQ(y[4], 127 * s1);
  EXPECT_EQ(y[5], 1.0001f);  // a float column keeps x itself, not its f16 value
  EXPECT_EQ(y[6], -8.0f);
  EXPECT_EQ(y[7], 19 * s1);  // f16 0.300049 * 63.5 = 19.05
}

TEST(LlmInt8Inputs, ThresholdZeroQuantisesEveryColumn) {
  std::vector<float> y(kX.size());
  FakeQuantizeLlmInt8(kX.data(), 2, 4, 0.0f, y.data());
  const float s0 = 7.0f / 127, s1 = 8.0f / 127;
  const std::vector<float> want = {9 * s0,  127 * s0, -18 * s0,  2 * s0,  //
                                   32 * s1, 16 * s1,  -127 * s1, 5 * s1};
  EXPECT_EQ(y, want);
}

TEST(LlmInt8Inputs, ATokenWithNothingBelowTheThresholdQuantisesToZero) {
  const std::vector<float> x = {0.0f, 9.0f, 0.0f, -0.0f};
  std::vector<float> y(x.size());
  FakeQuantizeLlmInt8(x.data(), 1, 4, 6.0f, y.data());
  EXPECT_EQ(y, (std::vector<float>{0.0f, 9.0f, 0.0f, 0.0f}));
}

// An LLM.int8 checkpoint as transformers saves it: its quantised Linear quantises its input as
// bitsandbytes does, with the config's threshold; a float Linear beside it does not.
TEST(LlmInt8Inputs, TheRuntimeRunsACheckpointsQuantisedLayersWithItsThreshold) {
  testing::ScratchDir d;
  const int64_t rows = 6, cols = 16;
  std::mt19937 rng(5);
  std::vector<int8_t> q(static_cast<size_t>(rows * cols));
  for (int8_t& v : q) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
  const std::vector<float> scb(static_cast<size_t>(rows), 0.5f);
  std::vector<float> plain(static_cast<size_t>(rows * cols), 0.25f);
  const std::string m = "model.layers.0.mlp.up_proj", kept = "model.layers.0.mlp.gate_proj";
  auto write = [&](const fs::path& dir, const json& extra) {
    json qc = {{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}};
    qc.update(extra);
    CheckpointWriter w(dir,
                       {{kept + ".weight", DType::kF32, {rows, cols}},
                        {m + ".SCB", DType::kF32, {rows}},
                        {m + ".weight", DType::kI8, {rows, cols}},
                        {m + ".weight_format", DType::kU8, {1}}},
                       {});
    w.Write(std::as_bytes(std::span(plain)));
    w.Write(std::as_bytes(std::span(scb)));
    w.Write(std::as_bytes(std::span(q)));
    w.Write(std::vector<std::byte>{std::byte{0}});
    w.WriteTextFile("config.json",
                    json({{"model_type", "llama"}, {"quantization_config", qc}}).dump());
    w.Commit();
    return Checkpoint::Open(dir);
  };
  const Checkpoint ck = write(d / "default", json::object());
  ASSERT_EQ(InputQuantizationOf(ck), InputQuantization::kLlmInt8);
  EXPECT_EQ(LlmInt8Threshold(ck), 6.0f);  // transformers' default where the config has none
  const Checkpoint ck35 = write(d / "t35", {{"llm_int8_threshold", 3.5}});
  EXPECT_EQ(LlmInt8Threshold(ck35), 3.5f);
  const std::string described = ImportedCheckpoint::Open(ck35)->scheme().Describe();
  EXPECT_NE(described.find("a value of 3.5 or more in float"), std::string::npos) << described;
  const runtime::Linear l = runtime::LoadLinear(ck35, m, rows, cols, InputQuantizationOf(ck35), 1);
  const runtime::Linear f =
      runtime::LoadLinear(ck35, kept, rows, cols, InputQuantizationOf(ck35), 1);
  EXPECT_EQ(l.inputs, InputQuantization::kLlmInt8);
  EXPECT_EQ(l.llm_int8_threshold, 3.5f);
  EXPECT_EQ(f.inputs, InputQuantization::kNone);

  RowMatrixXf x(3, cols);
  std::normal_distribution<float> n(0.0f, 1.5f);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = n(rng);
  x(1, 4) = 5.0f;  // at or above 3.5: column 4 runs in float
  RowMatrixXf xq(x.rows(), x.cols()), y, want, unquantised;
  FakeQuantizeLlmInt8(x.data(), x.rows(), x.cols(), 3.5f, xq.data());
  l.Apply(x, y, 1);
  runtime::Linear as_float = l;
  as_float.inputs = InputQuantization::kNone;
  as_float.Apply(xq, want, 1);
  as_float.Apply(x, unquantised, 1);
  EXPECT_EQ(y, want);
  EXPECT_NE(y, unquantised);
  RowMatrixXf fy;
  f.Apply(x, fy, 1);
  EXPECT_TRUE(fy.isApprox(x * RowMatrixXf::Constant(cols, rows, 0.25f), 1e-6f));

  for (const json& bad : {json(-1.0), json("6"), json(1e6)}) {
    const std::string e = testing::ErrorOf<FormatError>([&] {
      const Checkpoint c = write(d / "bad", {{"llm_int8_threshold", bad}});
      InputQuantizationOf(c);
    });
    EXPECT_NE(e.find("llm_int8_threshold"), std::string::npos) << e;
    fs::remove_all(d / "bad");
  }
}

}  // namespace
}  // namespace qtool
