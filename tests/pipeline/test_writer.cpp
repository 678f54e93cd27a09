// The one streaming writer of quantised checkpoints (pipeline/writer.hpp): the order it writes in,
// what it makes of a solver's tensors, and the report of a rescaled tensor.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qtool/io/checkpoint.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/kernels.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/pipeline/writer.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

using testing::ScratchDir;

constexpr int64_t kRows = 4, kCols = 32;

// A float32 checkpoint whose tensors are not in block order: a block-1 weight, the head, a block-0
// norm and a block-0 weight.
struct Fixture {
  ScratchDir dir;
  std::vector<TensorSpec> specs = {
      {"model.layers.1.mlp.down_proj.weight", DType::kF32, {kRows, kCols}},
      {"lm_head.weight", DType::kF32, {kRows, kCols}},
      {"model.layers.0.input_layernorm.weight", DType::kF32, {kCols}},
      {"model.layers.0.self_attn.q_proj.weight", DType::kF32, {kRows, kCols}}};
  std::vector<std::vector<float>> values;
  QuantizeOptions options;

  Fixture() {
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    CheckpointWriterOptions w;
    w.metadata = {{"format", "pt"}};
    CheckpointWriter writer(dir / "in", specs, w);
    for (const TensorSpec& s : specs) {
      std::vector<float> v(static_cast<size_t>(s.numel()));
      for (float& x : v) x = dist(rng);
      std::vector<std::byte> bytes(s.nbytes());
      std::memcpy(bytes.data(), v.data(), bytes.size());
      writer.Write(bytes);
      values.push_back(std::move(v));
    }
    writer.Commit();
    options.format = IntFormat{.group = 16};
  }

  // What the codec stores of `w` (kRows x kCols), decoded.
  std::vector<float> RoundTrip(const std::vector<float>& w) const {
    const auto codec = MakeCodec(options.format, kRows, kCols);
    std::vector<std::vector<std::byte>> parts;
    std::vector<std::byte*> ptrs;
    for (const TensorSpec& p : codec->Layout("w")) {
      parts.emplace_back(p.nbytes());
      ptrs.push_back(parts.back().data());
    }
    std::vector<float> deq(w.size()), out(w.size());
    codec->EncodeRows(w.data(), 0, kRows, ptrs.data(), deq.data());
    const std::vector<const std::byte*> cptrs(ptrs.begin(), ptrs.end());
    codec->DecodeRows(cptrs.data(), 0, kRows, out.data());
    return out;
  }
};

std::vector<std::string> Names(const QuantizeReport& r) {
  std::vector<std::string> names;
  for (const TensorReport& t : r.tensors) names.push_back(t.name);
  return names;
}

TEST(QuantizedCheckpointWriter, CheckpointOrderIsTheInputsOrder) {
  Fixture f;
  const Checkpoint in = Checkpoint::Open(f.dir / "in");
  const QuantizeReport r = QuantizeCheckpoint(in, f.dir / "out", f.options);
  std::vector<std::string> expected;
  for (const CheckpointTensor& t : in.tensors()) expected.push_back(t.info->name);
  EXPECT_EQ(Names(r), expected);
}

TEST(QuantizedCheckpointWriter, BlockOrderStoresSolvedTensorsAndRoundsTheOthers) {
  Fixture f;
  const Checkpoint in = Checkpoint::Open(f.dir / "in");
  const std::string norm = f.specs[2].name, q = f.specs[3].name, down = f.specs[0].name;
  // The solver's view of block 0: the norm divided by 2 and q_proj's columns times 2.
  std::vector<float> norm_values = f.values[2], q_values = f.values[3];
  for (float& x : norm_values) x /= 2.0f;
  for (float& x : q_values) x *= 2.0f;
  const std::vector<float> rows(kRows, 1.0f), cols(kCols, 2.0f);
  SolvedTensors block0;
  block0[norm].values = norm_values;
  block0[q] = {{}, q_values, rows, cols};

  QuantizeReport r;
  {
    QuantizedCheckpointWriter w(in, f.dir / "out", f.options, WriteOrder::kBlocks);
    w.WriteThrough(-1);
    w.WriteThrough(0, block0);
    r = w.Finish(std::chrono::steady_clock::now());
  }
  // Outside the blocks first, then block 0 by name, then block 1.
  EXPECT_EQ(Names(r), (std::vector<std::string>{"lm_head.weight", norm, q, down}));

  const Checkpoint out = Checkpoint::Open(f.dir / "out");
  EXPECT_EQ(ReadTensorF32(out, norm), norm_values);         // kept: written as the solver left it
  EXPECT_EQ(ReadTensorF32(out, q), f.RoundTrip(q_values));  // rounded in the solver's basis
  EXPECT_EQ(ReadTensorF32(out, down), f.RoundTrip(f.values[0]));  // no solution: RTN
  EXPECT_EQ(ReadTensorF32(out, "lm_head.weight"), f.values[1]);   // not selected: copied

  // q_proj's report compares the stored weights, scaled back, with the checkpoint's.
  std::vector<float> back = f.RoundTrip(q_values);
  for (float& x : back) x /= 2.0f;
  ErrorStats expected;
  kernels::AccumulateErrors(f.values[3].data(), back.data(), kRows * kCols, &expected);
  EXPECT_TRUE(r.tensors[2].quantized);
  EXPECT_DOUBLE_EQ(r.tensors[2].stats.mse(), expected.mse());
  EXPECT_GT(r.tensors[2].stats.cosine(), 0.9);
}

TEST(QuantizedCheckpointWriter, RefusesSolvedValuesOfAnotherSize) {
  Fixture f;
  const Checkpoint in = Checkpoint::Open(f.dir / "in");
  const std::vector<float> few(3, 1.0f);
  SolvedTensors block0;
  block0[f.specs[3].name].values = few;
  QuantizedCheckpointWriter w(in, f.dir / "out", f.options, WriteOrder::kBlocks);
  w.WriteThrough(-1);
  EXPECT_THROW(w.WriteThrough(0, block0), Error);
  EXPECT_FALSE(std::filesystem::exists(f.dir / "out"));
}

TEST(QuantizedCheckpointWriter, RefusesAnIncludedTensorThatIsNotAMatrix) {
  Fixture f;
  const Checkpoint in = Checkpoint::Open(f.dir / "in");
  f.options.include = {"input_layernorm"};
  EXPECT_THROW(QuantizedCheckpointWriter(in, f.dir / "out", f.options, WriteOrder::kBlocks),
               ShapeError);
}

}  // namespace
}  // namespace qtool
