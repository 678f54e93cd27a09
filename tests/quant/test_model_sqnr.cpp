// Every format on every quantisable tensor of the shared models: the SQNR table, asserted as
// bands, and the checkpoint path (quantize, ReadTensorF32, dequantize) for every codec.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "codec_test_util.hpp"
#include "qtool/core/error.hpp"
#include "qtool/format/metrics.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/kernels.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

using json = nlohmann::json;

struct SqnrFormat {
  std::string label;
  json record;
};

json Int(int bits, const char* observer = "minmax") {
  json r = {{"codec", "int"}, {"bits", bits}, {"granularity", "group"}, {"group_size", 64}};
  if (std::string(observer) != "minmax") r["observer"] = observer;
  return r;
}

// The formats of the table: integers at group 64 (the NF4 block), then every other codec with
// the defaults `qtool quantize` uses.
std::vector<SqnrFormat> Formats() {
  std::vector<SqnrFormat> f;
  for (int b = 8; b >= 2; --b) f.push_back({fmt::format("int{} g64", b), Int(b)});
  f.push_back({"int4 g64 mse", Int(4, "mse")});
  f.push_back({"int3 g64 mse", Int(3, "mse")});
  f.push_back({"int4 g64 percentile:98", Int(4, "percentile:98")});
  f.push_back({"int4 g64 kl", Int(4, "kl")});
  f.push_back({"ternary (tensor)", {{"codec", "ternary"}, {"granularity", "tensor"}}});
  f.push_back({"nf4 b64", {{"codec", "nf4"}, {"block", 64}, {"double_quant", false}}});
  f.push_back({"nf4 b64 double-quant", {{"codec", "nf4"}, {"block", 64}, {"double_quant", true}}});
  f.push_back({"fp4 e2m1 1x32",
               {{"codec", "fp"}, {"format", "e2m1"}, {"scale", "block"}, {"block", {1, 32}}}});
  f.push_back({"fp8 e4m3 channel", {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "channel"}}});
  f.push_back({"fp8 e5m2 channel", {{"codec", "fp"}, {"format", "e5m2"}, {"scale", "channel"}}});
  f.push_back({"fp8 e4m3 tensor", {{"codec", "fp"}, {"format", "e4m3"}, {"scale", "tensor"}}});
  for (const char* e : {"e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "int8"}) {
    f.push_back({fmt::format("mx {}", e), {{"codec", "mx"}, {"element", e}, {"block", 32}}});
  }
  return f;
}

struct Result {
  std::map<std::string, ErrorStats> per_tensor;  // by tensor name
  ErrorStats all;
  uint64_t bytes = 0;
  int64_t params = 0;
};

// SQNR of every format on every tensor QuantizeCheckpoint would quantise by default.
std::map<std::string, Result> Measure(const Checkpoint& ck,
                                      const std::vector<SqnrFormat>& formats) {
  std::map<std::string, Result> out;
  for (const CheckpointTensor& t : ck.tensors()) {
    if (!SelectedForQuantization(*t.info, QuantizeOptions{})) continue;
    const std::vector<float> w = ReadTensorF32(ck, t.info->name);
    const int64_t rows = t.info->shape[0], cols = t.info->shape[1];
    for (const SqnrFormat& f : formats) {
      auto codec = MakeCodec(f.record, rows, cols);
      const auto enc = testing::EncodeMatrix(*codec, w, 16);
      ErrorStats s;
      kernels::AccumulateErrors(w.data(), enc.dequant.data(), rows * cols, &s);
      Result& r = out[f.label];
      r.per_tensor[t.info->name] = s;
      r.all += s;
      for (const auto& p : enc.parts) r.bytes += p.size();
      r.params += rows * cols;
    }
  }
  return out;
}

TEST(ModelSqnr, EveryFormatOnEverySharedModel) {
  QTOOL_REQUIRE_SHARED();
  const auto models = testing::SharedModels();
  ASSERT_FALSE(models.empty()) << "../shared/models holds no checkpoint";
  const std::vector<SqnrFormat> formats = Formats();
  for (const auto& dir : models) {
    const Checkpoint ck = Checkpoint::Open(dir);
    const auto res = Measure(ck, formats);
    ASSERT_FALSE(res.empty());
    std::string table =
        fmt::format("\n{}  ({} tensors, {} weights)\n{:<24} {:>6} {:>9} {:>9} {:>9}\n",
                    dir.string(), res.begin()->second.per_tensor.size(), res.begin()->second.params,
                    "format", "bpw", "sqnr dB", "min dB", "cosine");
    for (const SqnrFormat& f : formats) {
      const Result& r = res.at(f.label);
      double min_db = 1e9;
      for (const auto& [name, s] : r.per_tensor) min_db = std::min(min_db, s.sqnr_db());
      table += fmt::format("{:<24} {:>6.3f} {:>9.2f} {:>9.2f} {:>9.6f}\n", f.label,
                           8.0 * static_cast<double>(r.bytes) / static_cast<double>(r.params),
                           r.all.sqnr_db(), min_db, r.all.cosine());
    }
    std::printf("%s", table.c_str());
    SCOPED_TRACE(dir.string());
    auto sqnr = [&](const std::string& label, const std::string& tensor) {
      return res.at(label).per_tensor.at(tensor).sqnr_db();
    };
    for (const auto& [name, s] : res.at("int4 g64").per_tensor) {
      SCOPED_TRACE(name);
      // Monotone in bits, about 6 dB per bit from INT3 up (uniform grid theory: 6.02 dB/bit).
      for (int b = 2; b < 8; ++b) {
        const double lo = sqnr(fmt::format("int{} g64", b), name);
        const double hi = sqnr(fmt::format("int{} g64", b + 1), name);
        EXPECT_GT(hi, lo + (b >= 3 ? 4.5 : 2.0)) << "int" << b << " -> int" << b + 1;
      }
      // NF4 matches Gaussian-like weights better than the uniform INT4 grid with absmax scales.
      EXPECT_GT(sqnr("nf4 b64", name), sqnr("int4 g64", name));
      // MSE clipping never loses to min-max (alpha = 1 is a candidate) and helps overall.
      EXPECT_GE(sqnr("int4 g64 mse", name), sqnr("int4 g64", name));
      EXPECT_GE(sqnr("int3 g64 mse", name), sqnr("int3 g64", name));
      // Double quantisation costs little.
      EXPECT_GT(sqnr("nf4 b64 double-quant", name), sqnr("nf4 b64", name) - 0.5);
    }
    auto all = [&](const std::string& label) { return res.at(label).all.sqnr_db(); };
    EXPECT_GT(all("int4 g64 mse"), all("int4 g64") + 0.2);
    EXPECT_GT(all("int3 g64 mse"), all("int3 g64") + 0.2);
    // Percentile and KL clip some groups too hard or too little: close to min-max on weights.
    EXPECT_GT(all("int4 g64 percentile:98"), all("int4 g64") - 1.0);
    EXPECT_GT(all("int4 g64 kl"), all("int4 g64") - 1.0);
    // Bands for the float formats: FP8 E4M3 keeps 3 mantissa bits (~ 30 dB), E5M2 2 bits (~ 25);
    // MXINT8 is near INT8; the 4-bit formats sit with INT4.
    EXPECT_GT(all("fp8 e4m3 channel"), 28.0);
    EXPECT_GT(all("fp8 e4m3 channel"), all("fp8 e5m2 channel") + 4.0);
    EXPECT_GT(all("mx e4m3"), all("mx e5m2") + 4.0);
    EXPECT_GT(all("mx e2m3"), all("mx e3m2") + 4.0);
    EXPECT_GT(all("mx int8"), all("int8 g64") - 4.0);
    EXPECT_GT(all("mx e2m1"), all("int4 g64") - 3.0);
    EXPECT_GT(all("fp4 e2m1 1x32"), all("int4 g64") - 3.0);
    EXPECT_GT(all("ternary (tensor)"), 3.0);
    EXPECT_LT(all("ternary (tensor)"), all("int3 g64"));
  }
}

// The checkpoint path for every format: ReadTensorF32 decodes what the encoder produced, bit for
// bit, and dequantize writes a plain checkpoint.
TEST(ModelSqnr, CheckpointRoundTripForEveryCodec) {
  QTOOL_REQUIRE_SHARED();
  const auto models = testing::SharedModels();
  ASSERT_FALSE(models.empty());
  const Checkpoint in = Checkpoint::Open(models.front());
  for (const SqnrFormat& f : Formats()) {
    SCOPED_TRACE(f.label);
    testing::ScratchDir dir;
    QuantizeOptions opts;
    opts.format = FormatFromRecord(f.record);
    opts.threads = 2;
    const QuantizeReport report = QuantizeCheckpoint(in, dir / "q", opts);
    const Checkpoint q = Checkpoint::Open(dir / "q");
    for (const TensorReport& t : report.tensors) {
      if (!t.quantized) continue;
      const std::vector<float> w = ReadTensorF32(in, t.name);
      auto codec = MakeCodec(f.record, t.shape[0], t.shape[1]);
      const auto enc = testing::EncodeMatrix(*codec, w);
      const std::vector<float> got = ReadTensorF32(q, t.name, 2);
      ASSERT_EQ(got.size(), enc.dequant.size());
      EXPECT_EQ(std::memcmp(got.data(), enc.dequant.data(), got.size() * 4), 0) << t.name;
      EXPECT_NEAR(
          t.stats.sqnr_db(),
          [&] {
            ErrorStats s;
            kernels::AccumulateErrors(w.data(), got.data(), static_cast<int64_t>(w.size()), &s);
            return s.sqnr_db();
          }(),
          1e-6);
    }
    DequantizeCheckpoint(q, dir / "d", false, 2);
    EXPECT_TRUE(std::filesystem::exists(dir / "d" / "model.safetensors"));
  }
}

TEST(ModelSqnr, CliFormatsAndOptions) {
  QTOOL_REQUIRE_SHARED();
  const auto models = testing::SharedModels();
  ASSERT_FALSE(models.empty());
  const std::string model = models.front().string();
  testing::ScratchDir dir;
  struct Case {
    std::vector<std::string> args;
    json codec;
  };
  const std::vector<Case> cases = {
      {{"--format", "int3", "--observer", "mse:2.4", "--group", "32"},
       {{"codec", "int"},
        {"bits", 3},
        {"symmetric", true},
        {"granularity", "group"},
        {"group_size", 32},
        {"observer", "mse:2.4"}}},
      {{"--format", "ternary"}, {{"codec", "ternary"}, {"granularity", "tensor"}}},
      {{"--format", "nf4", "--block", "128", "--double-quant"},
       {{"codec", "nf4"}, {"block", 128}, {"double_quant", true}}},
      {{"--format", "fp8-e4m3", "--block", "16x32"},
       {{"codec", "fp"},
        {"format", "e4m3"},
        {"scale", "block"},
        {"block", {16, 32}},
        {"saturate", true}}},
      {{"--format", "fp8-e5m2", "--granularity", "tensor", "--no-saturate"},
       {{"codec", "fp"}, {"format", "e5m2"}, {"scale", "tensor"}, {"saturate", false}}},
      {{"--format", "mxfp6-e3m2"}, {{"codec", "mx"}, {"element", "e3m2"}, {"block", 32}}},
      {{"--format", "mxint8"}, {{"codec", "mx"}, {"element", "int8"}, {"block", 32}}},
  };
  int k = 0;
  for (const Case& c : cases) {
    const std::string out = (dir / fmt::format("m{}", k)).string();
    const std::string report = (dir / fmt::format("r{}.json", k++)).string();
    std::vector<std::string> args = {"quantize", model, "-o", out, "-q", "--json", report};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto r = testing::RunCli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(json::parse(testing::ReadFile(report))["codec"], c.codec);
    const auto d = testing::RunCli({"dequantize", out, "-o", out + "-deq"});
    EXPECT_EQ(d.exit_code, 0) << d.err;
  }
  // Options that do not fit the format are refused with the option-error exit code.
  for (const auto& bad :
       std::vector<std::vector<std::string>>{{"--format", "nf4", "--observer", "mse"},
                                             {"--format", "int4", "--double-quant"},
                                             {"--format", "mxfp4", "--asym"},
                                             {"--format", "int4", "--block", "64"},
                                             {"--format", "nf4", "--block", "16"},
                                             {"--format", "fp8-e4m3", "--block", "0x4"},
                                             {"--format", "int4", "--observer", "median"},
                                             {"--format", "fp16"}}) {
    std::vector<std::string> args = {"quantize", model, "-o", (dir / "bad").string()};
    args.insert(args.end(), bad.begin(), bad.end());
    const auto r = testing::RunCli(args);
    EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kOption))
        << fmt::format("{}", fmt::join(bad, " ")) << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir / "bad"));
  }
}

}  // namespace
}  // namespace qtool
