// Importance matrices: llama.cpp's GGUF and legacy .dat files (round trips, a hand-made .dat,
// malformed files), the importance-weighted quantisers, GGUF export with an importance matrix,
// and `qtool imatrix`.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "qtool/core/error.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/imatrix.hpp"
#include "qtool/model/capture.hpp"
#include "qtool/model/model.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

namespace qtool::imatrix {
namespace {

namespace fs = std::filesystem;

fs::path Stories() { return fs::path(QTOOL_SOURCE_DIR) / "examples/models/stories260K"; }

Matrix Sample() {
  Matrix m;
  m.datasets = {"calib.txt"};
  m.chunk_count = 3;
  m.chunk_size = 512;
  Entry a;
  a.ncols = 4;
  a.in_sum2 = {1, 2, 3, 4.5f};
  a.counts = {1536};
  m.entries["blk.0.attn_q.weight"] = a;
  Entry b;  // two stacked matrices, the second never used
  b.ncols = 2;
  b.nmat = 2;
  b.in_sum2 = {8, 16, 0, 0};
  b.counts = {4, 0};
  m.entries["blk.0.ffn_down_exps.weight"] = b;
  return m;
}

template <typename T>
void Put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(v));
}

TEST(Imatrix, ImportanceIsSumOverCountAndOneWithoutRows) {
  const Matrix m = Sample();
  EXPECT_EQ(m.entries.at("blk.0.attn_q.weight").Importance(),
            (std::vector<float>{1.f / 1536, 2.f / 1536, 3.f / 1536, 4.5f / 1536}));
  EXPECT_EQ(m.entries.at("blk.0.ffn_down_exps.weight").Importance(),
            (std::vector<float>{2, 4, 1, 1}));
}

TEST(Imatrix, GgufRoundTripWithLlamaCppKeysAndNames) {
  testing::ScratchDir dir;
  const Matrix m = Sample();
  WriteGguf(m, dir / "i.gguf");
  const gguf::File f(dir / "i.gguf");
  EXPECT_EQ(*f.header().Find("general.type")->AsString(), "imatrix");
  EXPECT_EQ(f.header().Find("imatrix.chunk_count")->AsInt(), 3);
  EXPECT_EQ(f.header().Find("imatrix.chunk_size")->AsInt(), 512);
  const gguf::TensorInfo* s = f.header().FindTensor("blk.0.ffn_down_exps.weight.in_sum2");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->ne, (std::vector<uint64_t>{2, 2}));
  const gguf::TensorInfo* c = f.header().FindTensor("blk.0.attn_q.weight.counts");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->ne, (std::vector<uint64_t>{1, 1}));
  const Matrix r = Read(dir / "i.gguf");
  EXPECT_FALSE(r.legacy);
  EXPECT_EQ(r.datasets, m.datasets);
  EXPECT_EQ(r.chunk_count, 3u);
  EXPECT_EQ(r.chunk_size, 512u);
  ASSERT_EQ(r.entries.size(), 2u);
  for (const auto& [name, e] : m.entries) {
    const Entry& g = r.entries.at(name);
    EXPECT_EQ(g.ncols, e.ncols) << name;
    EXPECT_EQ(g.nmat, e.nmat) << name;
    EXPECT_EQ(g.in_sum2, e.in_sum2) << name;
    EXPECT_EQ(g.counts, e.counts) << name;
  }
}

TEST(Imatrix, ReadsLegacyDatAsLlamaCppWritesIt) {
  // Two entries, the trailing chunk count and dataset name: values are mean x^2 times ncall.
  std::string b;
  Put<int32_t>(b, 2);
  for (const auto& [name, ncall, v] :
       {std::tuple<std::string, int32_t, std::vector<float>>{"blk.0.attn_k.weight", 10, {5, 10}},
        {"blk.1.ffn_up.weight", 4, {2, 0, 8}}}) {
    Put<int32_t>(b, static_cast<int32_t>(name.size()));
    b += name;
    Put<int32_t>(b, ncall);
    Put<int32_t>(b, static_cast<int32_t>(v.size()));
    for (float x : v) Put<float>(b, x);
  }
  Put<int32_t>(b, 10);
  Put<int32_t>(b, 8);
  b += "wiki.txt";
  testing::ScratchDir dir;
  testing::WriteFile(dir / "i.dat", b);
  const Matrix m = Read(dir / "i.dat");
  EXPECT_TRUE(m.legacy);
  EXPECT_EQ(m.chunk_count, 10u);
  EXPECT_EQ(m.datasets, std::vector<std::string>{"wiki.txt"});
  EXPECT_EQ(m.entries.at("blk.0.attn_k.weight").Importance(), (std::vector<float>{0.5f, 1.f}));
  EXPECT_EQ(m.entries.at("blk.1.ffn_up.weight").Importance(), (std::vector<float>{0.5f, 0, 2}));

  // Without the optional trailer.
  testing::WriteFile(dir / "short.dat", b.substr(0, b.size() - 16));
  EXPECT_EQ(Read(dir / "short.dat").entries.size(), 2u);
  // Truncated inside an entry's values, inside a name, and an empty file.
  testing::WriteFile(dir / "t.dat", b.substr(0, 40));
  EXPECT_THROW(Read(dir / "t.dat"), FormatError);
  testing::WriteFile(dir / "t2.dat", b.substr(0, 10));
  EXPECT_THROW(Read(dir / "t2.dat"), FormatError);
  testing::WriteFile(dir / "e.dat", "");
  EXPECT_THROW(Read(dir / "e.dat"), FormatError);
  // A NaN value.
  std::string nan = b;
  const float q = std::nanf("");
  std::memcpy(nan.data() + 4 + 4 + 19 + 8, &q, 4);
  testing::WriteFile(dir / "n.dat", nan);
  EXPECT_THROW(Read(dir / "n.dat"), NumericError);
}

TEST(Imatrix, DatRoundTripKeepsImportances) {
  testing::ScratchDir dir;
  Matrix m = Sample();
  m.entries.erase("blk.0.ffn_down_exps.weight");  // .dat holds single matrices only
  WriteDat(m, dir / "i.dat");
  const Matrix r = Read(dir / "i.dat");
  EXPECT_EQ(r.chunk_count, 3u);
  EXPECT_EQ(r.datasets, m.datasets);
  const std::vector<float> want = m.entries.at("blk.0.attn_q.weight").Importance();
  const std::vector<float> got = r.entries.at("blk.0.attn_q.weight").Importance();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(got[i], want[i]);
  EXPECT_THROW(WriteDat(Sample(), dir / "x.dat"), ShapeError);
}

// A GGUF imatrix file written tensor by tensor, for malformed variants.
void WriteRaw(const fs::path& p, const std::vector<gguf::TensorSpec>& specs,
              const std::vector<std::vector<float>>& data, bool with_keys = true) {
  std::vector<std::pair<std::string, gguf::Value>> kv;
  kv.emplace_back("general.type", std::string("imatrix"));
  if (with_keys) {
    kv.emplace_back("imatrix.datasets",
                    gguf::Value::Array(gguf::ValueType::kString, {std::string("x")}));
    kv.emplace_back("imatrix.chunk_count", uint32_t{1});
    kv.emplace_back("imatrix.chunk_size", uint32_t{512});
  }
  gguf::Writer w(p, kv, specs);
  for (const auto& d : data) w.Write(std::as_bytes(std::span(d)));
  w.Commit();
}

TEST(Imatrix, RefusesMalformedGgufFiles) {
  testing::ScratchDir dir;
  const auto f32 = ggml::Type::kF32;
  // Counts missing for a weight.
  WriteRaw(dir / "a.gguf", {{"w.in_sum2", {4, 1}, f32}}, {{1, 2, 3, 4}});
  EXPECT_THROW(Read(dir / "a.gguf"), FormatError);
  // Sums missing.
  WriteRaw(dir / "b.gguf", {{"w.counts", {1, 1}, f32}}, {{3}});
  EXPECT_THROW(Read(dir / "b.gguf"), FormatError);
  // Counts of the wrong shape, and sums for 2 matrices with counts for 1.
  WriteRaw(dir / "c.gguf", {{"w.in_sum2", {4, 1}, f32}, {"w.counts", {2, 1}, f32}},
           {{1, 2, 3, 4}, {1, 1}});
  EXPECT_THROW(Read(dir / "c.gguf"), ShapeError);
  WriteRaw(dir / "d.gguf", {{"w.in_sum2", {2, 2}, f32}, {"w.counts", {1, 1}, f32}},
           {{1, 2, 3, 4}, {1}});
  EXPECT_THROW(Read(dir / "d.gguf"), ShapeError);
  // A NaN, a negative count, F16 data, a stray tensor, missing metadata.
  WriteRaw(dir / "e.gguf", {{"w.in_sum2", {2, 1}, f32}, {"w.counts", {1, 1}, f32}},
           {{1, std::nanf("")}, {1}});
  EXPECT_THROW(Read(dir / "e.gguf"), NumericError);
  WriteRaw(dir / "f.gguf", {{"w.in_sum2", {2, 1}, f32}, {"w.counts", {1, 1}, f32}}, {{1, 2}, {-1}});
  EXPECT_THROW(Read(dir / "f.gguf"), NumericError);
  WriteRaw(dir / "g.gguf", {{"w.weight", {2, 1}, f32}}, {{1, 2}});
  EXPECT_THROW(Read(dir / "g.gguf"), FormatError);
  WriteRaw(dir / "h.gguf", {{"w.in_sum2", {2, 1}, f32}, {"w.counts", {1, 1}, f32}}, {{1, 2}, {1}},
           /*with_keys=*/false);
  EXPECT_THROW(Read(dir / "h.gguf"), FormatError);
  // Truncated: a GGUF header whose data section is cut off.
  WriteRaw(dir / "ok.gguf", {{"w.in_sum2", {2, 1}, f32}, {"w.counts", {1, 1}, f32}}, {{1, 2}, {1}});
  EXPECT_EQ(Read(dir / "ok.gguf").entries.size(), 1u);
  const std::string whole = testing::ReadFile(dir / "ok.gguf");
  // (the data section: 8 bytes of sums and 4 of counts, each padded to 32)
  testing::WriteFile(dir / "t.gguf", whole.substr(0, whole.size() - 40));
  EXPECT_THROW(Read(dir / "t.gguf"), FormatError);
  EXPECT_THROW(Read(dir / "absent.gguf"), IoError);
}

// sum over rows and columns of imp[j] * (dequant - x)^2.
double WeightedError(ggml::Type t, const std::vector<float>& x, const std::vector<float>& imp,
                     int64_t rows, int64_t cols, bool weighted) {
  std::vector<std::byte> q(ggml::RowBytes(t, static_cast<uint64_t>(cols)));
  std::vector<float> back(static_cast<size_t>(cols));
  double err = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    ggml::Quantize(t, xr, q.data(), cols, weighted ? imp.data() : nullptr);
    ggml::Dequantize(t, q.data(), back.data(), cols);
    for (int64_t j = 0; j < cols; ++j) {
      const double d = static_cast<double>(back[j]) - xr[j];
      err += imp[j] * d * d;
    }
  }
  return err;
}

TEST(ImatrixQuants, WeightedSearchLowersTheImportanceWeightedError) {
  const int64_t rows = 64, cols = 512;
  std::mt19937 gen(7);
  std::normal_distribution<float> n(0, 1);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (float& v : x) v = n(gen) * 0.02f;
  std::vector<float> imp(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {  // a few columns 100x more important, as in real models
    imp[j] = (j % 37 == 0 ? 100.f : 1.f) * (0.5f + static_cast<float>(j % 5) / 4);
  }
  using ggml::Type;
  for (Type t : {Type::kQ4_0, Type::kQ4_1, Type::kQ5_0, Type::kQ5_1, Type::kQ2_K, Type::kQ3_K,
                 Type::kQ4_K, Type::kQ5_K, Type::kQ6_K, Type::kIQ4_NL, Type::kIQ4_XS}) {
    const double ref = WeightedError(t, x, imp, rows, cols, false);
    const double w = WeightedError(t, x, imp, rows, cols, true);
    EXPECT_LT(w, 0.95 * ref) << ggml::Traits(t).name << ": " << w << " vs " << ref;
  }
  // Types without a weighted search in llama.cpp give the reference bytes.
  for (Type t : {Type::kQ8_0, Type::kTQ2_0, Type::kMXFP4}) {
    EXPECT_EQ(WeightedError(t, x, imp, rows, cols, false),
              WeightedError(t, x, imp, rows, cols, true))
        << ggml::Traits(t).name;
  }
}

TEST(ImatrixQuants, Q6KWithSquaresAsImportancesIsTheReference) {
  // Q6_K's weighted search uses the importances as its weights, the reference search x^2: with
  // importances x^2 the two are the same computation.
  std::mt19937 gen(3);
  std::normal_distribution<float> n(0, 1);
  std::vector<float> x(1024), x2(1024);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = n(gen);
    x2[i] = x[i] * x[i];
  }
  std::vector<ggml::BlockQ6_K> a(4), b(4);
  ggml::QuantizeQ6_K(x.data(), a.data(), 1024);
  ggml::QuantizeQ6_K(x.data(), b.data(), 1024, x2.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(ggml::BlockQ6_K) * 4), 0);
}

TEST(ImatrixExport, RecipeChangesWithAnImportanceMatrix) {
  const gguf::Recipe q40 = *gguf::FindRecipe("Q4_0");
  const gguf::Recipe iq4 = *gguf::FindRecipe("IQ4_XS");
  using ggml::Type;
  EXPECT_EQ(gguf::TensorType(q40, false, "blk.0.ffn_down.weight", 256, 0, 16, 1, true, false),
            Type::kQ4_0);
  EXPECT_EQ(gguf::TensorType(q40, false, "blk.0.ffn_down.weight", 256, 0, 16, 1, true, true),
            Type::kQ4_1);
  EXPECT_EQ(gguf::TensorType(q40, false, "blk.2.ffn_down.weight", 256, 2, 16, 1, true, true),
            Type::kQ4_0);
  EXPECT_EQ(gguf::TensorType(iq4, false, "blk.0.ffn_down.weight", 256, 0, 16, 1, true, false),
            Type::kQ5_K);
  EXPECT_EQ(gguf::TensorType(iq4, false, "blk.0.ffn_down.weight", 256, 0, 16, 1, true, true),
            Type::kIQ4_XS);
}

#ifdef QTOOL_CLI_PATH
TEST(ImatrixCli, ComputesWritesAndQuantisesWithIt) {
  testing::ScratchDir dir;
  // Calibration text: any text the SentencePiece model tokenises; a few lines suffice.
  std::string text;
  for (int i = 0; i < 60; ++i) text += "Once upon a time there was a little girl named Lily. ";
  testing::WriteFile(dir / "calib.txt", text);
  const std::string out = (dir / "i.gguf").string();
  auto r = testing::RunCli({"imatrix", Stories().string(), "--calib", (dir / "calib.txt").string(),
                            "--nsamples", "3", "--seqlen", "64", "--sequential", "-o", out,
                            "--json", (dir / "r.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Matrix m = Read(out);
  ASSERT_EQ(m.entries.size(), 35u);  // 5 layers x 7 Linear weights
  EXPECT_EQ(m.chunk_count, 3u);
  EXPECT_EQ(m.chunk_size, 64u);
  const Entry& q = m.entries.at("blk.1.attn_q.weight");
  EXPECT_EQ(q.ncols, 64);
  EXPECT_EQ(q.counts, std::vector<float>{192});
  EXPECT_EQ(m.entries.at("blk.1.ffn_down.weight").ncols, 172);
  EXPECT_EQ(m.entries.at("blk.1.attn_k.weight").in_sum2, q.in_sum2);  // the same input rows

  // Independently: the mean squares of block 1's q_proj and down_proj inputs for the same chunks
  // (BOS + the next 63 tokens of the stream, three times).
  const Model model(Stories());
  const std::vector<int32_t> tokens =
      EncodeTextFile(LoadModelTokenizer(Stories()), dir / "calib.txt");
  std::vector<std::vector<int32_t>> chunks;
  for (int c = 0; c < 3; ++c) {
    chunks.emplace_back(tokens.begin() + 64 * c, tokens.begin() + 64 * (c + 1));
    chunks.back()[0] = model.config().bos_token_id;
  }
  CalibrationRunner run(model, chunks);
  run.Advance();
  ChannelStats sq(64), sd(172);
  run.Capture({{"self_attn.q_proj", {&sq}}, {"mlp.down_proj", {&sd}}});
  const std::vector<float> iq = q.Importance();
  const std::vector<float> id = m.entries.at("blk.1.ffn_down.weight").Importance();
  for (int j = 0; j < 64; ++j) EXPECT_NEAR(iq[j], sq.MeanSquare()[j], 1e-5 * sq.MeanSquare()[j]);
  for (int j = 0; j < 172; ++j) EXPECT_NEAR(id[j], sd.MeanSquare()[j], 1e-5 * sd.MeanSquare()[j]);

  // Quantise with it: the weights it covers are marked, the bytes differ from plain RTN.
  r = testing::RunCli({"quantize", Stories().string(), "-o", (dir / "q.gguf").string(),
                       "--output-format", "gguf", "--gguf-type", "IQ4_NL", "--imatrix", out,
                       "--json", (dir / "q.json").string(), "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = testing::RunCli({"quantize", Stories().string(), "-o", (dir / "p.gguf").string(),
                       "--output-format", "gguf", "--gguf-type", "IQ4_NL", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(testing::ReadFile(dir / "q.json"));
  int with = 0;
  for (const auto& t : j["tensors"]) with += t["imatrix"].get<bool>() ? 1 : 0;
  EXPECT_EQ(with, 30);  // ffn_down's rows of 172 fit no IQ4_NL block: F16, no importances
  const gguf::File fq(dir / "q.gguf"), fp(dir / "p.gguf");
  const gguf::TensorInfo* tq = fq.header().FindTensor("blk.1.attn_q.weight");
  const gguf::TensorInfo* tp = fp.header().FindTensor("blk.1.attn_q.weight");
  ASSERT_TRUE(tq && tp);
  ASSERT_EQ(tq->nbytes, tp->nbytes);
  EXPECT_NE(std::memcmp(fq.Data(*tq).data(), fp.Data(*tp).data(), tq->nbytes), 0);
  EXPECT_NE(fq.header().Find("quantize.imatrix.file"), nullptr);

  // Errors: the output exists (8); an imatrix of another model's widths (5, nothing written);
  // a malformed imatrix (4); --imatrix without GGUF output (3).
  EXPECT_EQ(testing::RunCli({"imatrix", Stories().string(), "--calib", (dir / "calib.txt").string(),
                             "--nsamples", "1", "--seqlen", "32", "-o", out})
                .exit_code,
            8);
  Matrix bad = m;
  bad.entries.at("blk.0.attn_v.weight").ncols = 32;
  bad.entries.at("blk.0.attn_v.weight").in_sum2.resize(32);
  WriteGguf(bad, dir / "bad.gguf");
  r = testing::RunCli({"quantize", Stories().string(), "-o", (dir / "b.gguf").string(),
                       "--output-format", "gguf", "--gguf-type", "Q4_0", "--imatrix",
                       (dir / "bad.gguf").string()});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_NE(r.err.find("blk.0.attn_v.weight"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "b.gguf"));
  testing::WriteFile(dir / "trunc.gguf", testing::ReadFile(out).substr(0, 200));
  EXPECT_EQ(testing::RunCli({"quantize", Stories().string(), "-o", (dir / "c.gguf").string(),
                             "--output-format", "gguf", "--gguf-type", "Q4_0", "--imatrix",
                             (dir / "trunc.gguf").string()})
                .exit_code,
            4);
  EXPECT_EQ(testing::RunCli(
                {"quantize", Stories().string(), "-o", (dir / "d").string(), "--imatrix", out})
                .exit_code,
            3);
}
#endif

}  // namespace
}  // namespace qtool::imatrix
