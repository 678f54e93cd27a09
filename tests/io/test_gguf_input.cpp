// GGUF files as input: the tokenizer rebuilt from the metadata gives the original tokenizer's ids,
// and eval, convert and quantize read GGUF files.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qtool/core/error.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/gguf_import.hpp"
#include "qtool/io/gguf_split.hpp"
#include "qtool/model/gguf_params.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

namespace qtool::gguf {
namespace {

namespace fs = std::filesystem;

using KV = std::vector<std::pair<std::string, Value>>;

fs::path Stories() { return fs::path(QTOOL_SOURCE_DIR) / "examples/models/stories260K"; }

// A GGUF file holding only `kv` (no tensors), opened.
File MetadataOnly(const fs::path& path, KV kv) {
  Writer w(path, std::move(kv), {});
  w.Commit();
  return File(path);
}

// The tokenizer files of `model_dir` as the GGUF export stores them, rebuilt into `out`.
void Rebuild(const fs::path& model_dir, int64_t vocab, const fs::path& out) {
  const nlohmann::json config = nlohmann::json::parse(testing::ReadFile(model_dir / "config.json"));
  const File f = MetadataOnly(out.string() + ".gguf", TokenizerMetadata(model_dir, vocab, config));
  fs::create_directories(out);
  for (const ModelFile& m : RebuildTokenizer(f.header(), f.path().string())) {
    std::ofstream(out / m.name, std::ios::binary) << m.contents;
  }
}

// Text with what tokenizers treat specially: digits, punctuation, runs of spaces, newlines,
// non-ASCII letters and a character outside small vocabularies.
constexpr const char* kMixed =
    "Once upon a time, in 1987, Tom said: \"Hello!!\"  It's 3.14...\n\n  Ça va? naïve — 東京 "
    "🙂";

// `unk`: the unknown token's id (-1: none). It decodes to SentencePiece's unk_surface, which
// GGUF does not keep, so the decoded texts are compared without it.
void ExpectSameIds(const fs::path& original, const fs::path& rebuilt, const std::string& text,
                   int32_t unk = -1) {
  const Tokenizer a = Tokenizer::Load(original);
  const Tokenizer b = Tokenizer::Load(rebuilt);
  const std::vector<int32_t> ids = a.Encode(text);
  EXPECT_GT(ids.size(), 0u);
  EXPECT_EQ(b.Encode(text), ids);
  EXPECT_EQ(b.Encode(text, true), a.Encode(text, true));
  std::vector<int32_t> known;
  std::copy_if(ids.begin(), ids.end(), std::back_inserter(known),
               [unk](int32_t id) { return id != unk; });
  EXPECT_EQ(b.Decode(known), a.Decode(known));
}

TEST(GgufTokenizer, SentencePieceRebuiltGivesTheOriginalIds) {
  testing::ScratchDir dir;
  Rebuild(Stories(), 512, dir / "tok");
  ExpectSameIds(Stories() / "tokenizer.model", dir / "tok/tokenizer.model", kMixed, 0);
  const nlohmann::json cfg =
      nlohmann::json::parse(testing::ReadFile(dir / "tok/tokenizer_config.json"));
  EXPECT_EQ(cfg["add_bos_token"], true);
  EXPECT_EQ(cfg["bos_token"], "<s>");
  EXPECT_EQ(cfg["unk_token"], "<unk>");
}

TEST(GgufTokenizer, SentencePieceRebuiltGivesTheOriginalIdsOnTheEvaluationText) {
  QTOOL_REQUIRE_SHARED();
  const fs::path shared = *testing::SharedDir();
  const std::string text = testing::ReadFile(shared / "data/stories-eval.txt");
  testing::ScratchDir dir;
  for (const auto& [model, vocab] :
       {std::pair{Stories(), 512}, std::pair{shared / "models/babyllama-tok105/hf", 105}}) {
    SCOPED_TRACE(model.string());
    Rebuild(model, vocab, dir / model.parent_path().filename());
    ExpectSameIds(model / "tokenizer.model",
                  dir / model.parent_path().filename() / "tokenizer.model", text, 0);
  }
}

TEST(GgufTokenizer, ByteLevelBpeRebuiltGivesTheOriginalIds) {
  QTOOL_REQUIRE_SHARED();
  const fs::path shared = *testing::SharedDir();
  const fs::path smol = shared / "models/smollm2-135m";
  testing::ScratchDir dir;
  Rebuild(smol, 49152, dir / "tok");
  const std::string text = testing::ReadFile(shared / "data/stories-eval.txt");
  ExpectSameIds(smol / "tokenizer.json", dir / "tok/tokenizer.json", text);
  ExpectSameIds(smol / "tokenizer.json", dir / "tok/tokenizer.json",
                std::string(kMixed) + "<|im_start|>user\nHi<|im_end|>");
  const nlohmann::json cfg =
      nlohmann::json::parse(testing::ReadFile(dir / "tok/tokenizer_config.json"));
  EXPECT_EQ(cfg["bos_token"], "<|im_start|>");
  EXPECT_EQ(cfg["eos_token"], "<|im_end|>");
  EXPECT_NE(cfg["chat_template"].get<std::string>().find("im_start"), std::string::npos);
}

TEST(GgufTokenizer, RefusesWhatCannotBeRebuilt) {
  testing::ScratchDir dir;
  auto tokens = Value::Array(ValueType::kString, {std::string("a"), std::string("b")});
  // No tokenizer: nothing to rebuild.
  EXPECT_TRUE(RebuildTokenizer(MetadataOnly(dir / "0.gguf", {}).header(), "x").empty());
  const File no_unk = MetadataOnly(dir / "1.gguf", {{"tokenizer.ggml.model", std::string("llama")},
                                                    {"tokenizer.ggml.tokens", tokens}});
  EXPECT_THROW(RebuildTokenizer(no_unk.header(), "x"), FormatError);
  const File pre = MetadataOnly(dir / "2.gguf", {{"tokenizer.ggml.model", std::string("gpt2")},
                                                 {"tokenizer.ggml.pre", std::string("deepseek")},
                                                 {"tokenizer.ggml.tokens", tokens}});
  EXPECT_THROW(RebuildTokenizer(pre.header(), "x"), FormatError);
  const File bert = MetadataOnly(dir / "3.gguf", {{"tokenizer.ggml.model", std::string("bert")},
                                                  {"tokenizer.ggml.tokens", tokens}});
  EXPECT_THROW(RebuildTokenizer(bert.header(), "x"), FormatError);
  const File bad_id = MetadataOnly(dir / "4.gguf", {{"tokenizer.ggml.model", std::string("gpt2")},
                                                    {"tokenizer.ggml.pre", std::string("gpt-2")},
                                                    {"tokenizer.ggml.tokens", tokens},
                                                    {"tokenizer.ggml.bos_token_id", uint32_t{2}}});
  EXPECT_THROW(RebuildTokenizer(bad_id.header(), "x"), FormatError);
}

// A split written with a small maximum: the files follow llama.cpp's naming and keys, and read
// back (from any of them) as the unsplit file.
TEST(GgufSplit, SplitFilesReadBackAsTheWholeModel) {
  testing::ScratchDir dir;
  const Checkpoint ck = Checkpoint::Open(Stories());
  ExportGguf(ck, dir / "whole.gguf", {.type = "Q8_0"});
  const ExportReport r =
      ExportGguf(ck, dir / "m.gguf", {.type = "Q8_0", .split_max_bytes = 100000});
  const File whole(dir / "whole.gguf");
  ASSERT_GE(r.files.size(), 3u);
  const int n = static_cast<int>(r.files.size());
  EXPECT_FALSE(fs::exists(dir / "m.gguf"));
  uint64_t bytes = 0;
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(r.files[static_cast<size_t>(i)], SplitPath(dir / "m.gguf", i, n));
    EXPECT_EQ(r.files[static_cast<size_t>(i)].filename().string(),
              fmt::format("m-{:05d}-of-{:05d}.gguf", i + 1, n));
    const File f(r.files[static_cast<size_t>(i)]);
    const Header& h = f.header();
    EXPECT_EQ(h.Find("split.no")->type(), ValueType::kU16);
    EXPECT_EQ(*h.Find("split.no")->AsInt(), i);
    EXPECT_EQ(*h.Find("split.count")->AsInt(), n);
    EXPECT_EQ(h.Find("split.tensors.count")->type(), ValueType::kI32);
    EXPECT_EQ(*h.Find("split.tensors.count")->AsInt(), 47);
    // All metadata in the first file only, as llama-gguf-split writes it.
    EXPECT_EQ(h.Find("general.architecture") != nullptr, i == 0);
    uint64_t data = 0;
    for (const TensorInfo& t : h.tensors) data += (t.nbytes + 31) / 32 * 32;
    EXPECT_GT(h.tensors.size(), 0u);
    // At most the maximum, unless one tensor alone is larger.
    EXPECT_TRUE(data <= 100000 || h.tensors.size() == 1) << i << ": " << data;
    bytes += fs::file_size(f.path());
  }
  EXPECT_EQ(bytes, r.output_bytes);
  const SplitFile s(r.files[1]);  // opened from a file that is not the first
  EXPECT_EQ(s.split_count(), static_cast<size_t>(n));
  EXPECT_EQ(s.path(), r.files[0]);
  ASSERT_EQ(s.header().tensors.size(), whole.header().tensors.size());
  EXPECT_EQ(s.header().kv.size(), whole.header().kv.size() + 3);
  for (size_t i = 0; i < whole.header().tensors.size(); ++i) {
    const TensorInfo& a = whole.header().tensors[i];
    const TensorInfo& b = s.header().tensors[i];
    EXPECT_EQ(b.name, a.name);
    EXPECT_EQ(b.ne, a.ne);
    EXPECT_EQ(b.type, a.type);
    std::vector<float> x(a.numel()), y(b.numel());
    whole.Dequantize(a, x);
    s.Dequantize(b, y);
    EXPECT_EQ(x, y) << a.name;
  }
  // The Hugging Face checkpoint of the split is the whole file's.
  ImportGguf(s, dir / "from-split", false);
  ImportGguf(SplitFile(dir / "whole.gguf"), dir / "from-whole", false);
  const Checkpoint a = Checkpoint::Open(dir / "from-split");
  const Checkpoint b = Checkpoint::Open(dir / "from-whole");
  for (const CheckpointTensor& t : b.tensors()) {
    const auto x = a.Get(t.info->name).data();
    const auto y = t.data();
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << t.info->name;
  }
  // Existing files are not replaced without overwrite; a missing file is named.
  EXPECT_THROW(ExportGguf(ck, dir / "m.gguf", {.type = "Q8_0", .split_max_bytes = 100000}),
               OutputExistsError);
  fs::remove(r.files.back());
  EXPECT_THROW(SplitFile{r.files[0]}, IoError);
}

TEST(GgufSplit, ATensorLargerThanTheMaximumGetsAFileOfItsOwn) {
  testing::ScratchDir dir;
  const Checkpoint ck = Checkpoint::Open(Stories());
  const ExportReport r = ExportGguf(ck, dir / "m", {.type = "F32", .split_max_bytes = 1});
  EXPECT_EQ(r.files.size(), 47u);
  EXPECT_EQ(r.files.back().filename(), "m-00047-of-00047.gguf");
  EXPECT_EQ(SplitFile(r.files[0]).header().tensors.size(), 47u);
}

TEST(GgufSplit, RefusesInconsistentSplits) {
  testing::ScratchDir dir;
  // The split keys of file `no` of two, holding `tensors` tensors in all.
  const auto keys = [](uint16_t no, int32_t tensors) -> KV {
    return {{"split.no", no}, {"split.count", uint16_t{2}}, {"split.tensors.count", tensors}};
  };
  KV first = keys(0, 2);
  first.insert(first.begin(), {"general.architecture", std::string("llama")});
  auto write = [&](const fs::path& p, KV kv, const std::string& tensor) {
    Writer w(p, std::move(kv), {{tensor, {4}, ggml::Type::kF32}});
    const float v[4] = {1, 2, 3, 4};
    w.Write(std::as_bytes(std::span(v)));
    w.Commit();
  };
  write(dir / "a-00001-of-00002.gguf", first, "x");
  // The second file says it is the first.
  write(dir / "a-00002-of-00002.gguf", keys(0, 2), "y");
  EXPECT_THROW(SplitFile(dir / "a-00001-of-00002.gguf"), FormatError);
  // The same tensor in both.
  write(dir / "a-00002-of-00002.gguf", keys(1, 2), "x");
  EXPECT_THROW(SplitFile(dir / "a-00001-of-00002.gguf"), FormatError);
  // A tensor count that is not the tensors found.
  write(dir / "a-00002-of-00002.gguf", keys(1, 3), "y");
  EXPECT_THROW(SplitFile(dir / "a-00001-of-00002.gguf"), FormatError);
  write(dir / "a-00002-of-00002.gguf", keys(1, 2), "y");
  EXPECT_EQ(SplitFile(dir / "a-00002-of-00002.gguf").header().tensors.size(), 2u);
  // A split file under another name.
  fs::copy_file(dir / "a-00001-of-00002.gguf", dir / "b.gguf");
  EXPECT_THROW(SplitFile(dir / "b.gguf"), FormatError);
}

#ifdef QTOOL_CLI_PATH
// A short story, so that the CLI tests need nothing outside the repository.
constexpr const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
    "One day, she saw a big red ball in the park. She ran to the ball and kicked it very hard. The "
    "ball went up high into the sky. Lily laughed and clapped her hands. Her mom said, \"Lily, it "
    "is time to go home.\" Lily was sad, but she took the ball and went home with her mom.\n";

double Ppl(const fs::path& report) {
  return nlohmann::json::parse(testing::ReadFile(report))["ppl"].get<double>();
}

// eval, convert and quantize read a GGUF file (tokenizer included) as its dequantized
// checkpoint; a split reads as the whole file.
TEST(GgufCli, EvalConvertAndQuantizeReadGguf) {
  testing::ScratchDir dir;
  testing::WriteFile(dir / "story.txt", std::string(kStory) + kStory + kStory);
  const std::string gguf = (dir / "m.gguf").string();
  auto r = testing::RunCli({"quantize", Stories().string(), "-o", gguf, "--output-format", "gguf",
                            "--gguf-type", "Q4_K_M", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = testing::RunCli({"dequantize", gguf, "-o", (dir / "deq").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "deq/tokenizer.model"));
  const std::vector<std::string> eval = {"--text", (dir / "story.txt").string(), "--ctx", "64"};
  auto run_eval = [&](const std::string& model, const std::string& json) {
    std::vector<std::string> args = {"eval", model, "--json", (dir / json).string()};
    args.insert(args.end(), eval.begin(), eval.end());
    return testing::RunCli(args);
  };
  // No tokenizer file anywhere but in the GGUF metadata.
  r = run_eval(gguf, "gguf.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_eval((dir / "deq").string(), "deq.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Ppl(dir / "gguf.json"), Ppl(dir / "deq.json"));
  // The original tokenizer gives the same perplexity: the same ids.
  r = testing::RunCli({"eval", (dir / "deq").string(), "--tokenizer",
                       (Stories() / "tokenizer.model").string(), "--json",
                       (dir / "orig-tok.json").string(), "--text", (dir / "story.txt").string(),
                       "--ctx", "64"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Ppl(dir / "orig-tok.json"), Ppl(dir / "gguf.json"));
  // KL against a GGUF base.
  r = testing::RunCli({"eval", (dir / "deq").string(), "--ref", gguf, "--text",
                       (dir / "story.txt").string(), "--ctx", "64"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("KL        mean 0,"), std::string::npos) << r.out;

  // convert: the Hugging Face float checkpoint, as dequantize writes it.
  r = testing::RunCli({"convert", gguf, "-o", (dir / "hf").string(), "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Checkpoint hf = Checkpoint::Open(dir / "hf");
  const Checkpoint deq = Checkpoint::Open(dir / "deq");
  ASSERT_EQ(hf.tensors().size(), deq.tensors().size());
  for (const CheckpointTensor& t : deq.tensors()) {
    const auto x = hf.Get(t.info->name).data();
    const auto y = t.data();
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << t.info->name;
  }
  EXPECT_EQ(
      testing::RunCli({"convert", gguf, "-o", (dir / "g").string(), "--output-format", "gptq"})
          .exit_code,
      3);
  EXPECT_EQ(testing::RunCli({"convert", gguf, "-o", gguf, "--force"}).exit_code, 3);

  // quantize: requantised from the decoded weights, with the rebuilt tokenizer.
  r = testing::RunCli({"quantize", gguf, "-o", (dir / "int8").string(), "--format", "int8", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "int8/tokenizer.model"));
  r = run_eval((dir / "int8").string(), "int8.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NEAR(Ppl(dir / "int8.json"), Ppl(dir / "gguf.json"), 0.02 * Ppl(dir / "gguf.json"));
  r = testing::RunCli({"quantize", gguf, "-o", (dir / "q80.gguf").string(), "--output-format",
                       "gguf", "--gguf-type", "Q8_0", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(*File(dir / "q80.gguf").header().Find("general.name")->AsString(), "m");
  EXPECT_EQ(testing::RunCli({"quantize", gguf, "-o", gguf, "--force", "--output-format", "gguf",
                             "--gguf-type", "Q8_0"})
                .exit_code,
            3);

  // A split reads as the whole file.
  r = testing::RunCli({"quantize", Stories().string(), "-o", (dir / "s.gguf").string(),
                       "--output-format", "gguf", "--gguf-type", "F32", "--gguf-split-max-size",
                       "1M", "-q", "--json", (dir / "split.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json sj = nlohmann::json::parse(testing::ReadFile(dir / "split.json"));
  ASSERT_EQ(sj["files"].size(), 2u);
  EXPECT_TRUE(fs::exists(dir / "s-00001-of-00002.gguf"));
  EXPECT_TRUE(fs::exists(dir / "s-00002-of-00002.gguf"));
  EXPECT_FALSE(fs::exists(dir / "s.gguf"));
  r = testing::RunCli(
      {"inspect", (dir / "s-00002-of-00002.gguf").string(), "--json", (dir / "si.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json si = nlohmann::json::parse(testing::ReadFile(dir / "si.json"));
  EXPECT_EQ(si["split_count"], 2);
  EXPECT_EQ(si["tensors"].size(), 47u);
  EXPECT_EQ(si["params"], 260032);
  r = run_eval((dir / "s-00001-of-00002.gguf").string(), "split-eval.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = testing::RunCli({"quantize", Stories().string(), "-o", (dir / "f32.gguf").string(),
                       "--output-format", "gguf", "--gguf-type", "F32", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_eval((dir / "f32.gguf").string(), "f32-eval.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Ppl(dir / "split-eval.json"), Ppl(dir / "f32-eval.json"));
  // Without --force the split is not replaced; with it, it is.
  const std::vector<std::string> again = {
      "quantize", Stories().string(), "-o",  (dir / "s.gguf").string(), "--output-format",
      "gguf",     "--gguf-type",      "F32", "--gguf-split-max-size",   "1M",
      "-q"};
  EXPECT_EQ(testing::RunCli(again).exit_code, 8);
  std::vector<std::string> forced = again;
  forced.push_back("--force");
  EXPECT_EQ(testing::RunCli(forced).exit_code, 0);
  EXPECT_EQ(testing::RunCli({"quantize", Stories().string(), "-o", (dir / "x").string(),
                             "--gguf-split-max-size", "1M"})
                .exit_code,
            3);
  EXPECT_EQ(testing::RunCli({"quantize", Stories().string(), "-o", (dir / "y.gguf").string(),
                             "--output-format", "gguf", "--gguf-split-max-size", "1.5G"})
                .exit_code,
            3);
}

// --force replaces an existing GGUF file, atomically; without it the file is kept.
// logits, generate and imatrix take a GGUF file as their model too: its decoded weights, with the
// output checked against the file.
TEST(GgufCli, LogitsGenerateAndImatrixReadGguf) {
  testing::ScratchDir dir;
  const std::string gguf = (dir / "m.gguf").string();
  auto r = testing::RunCli({"quantize", Stories().string(), "-o", gguf, "--output-format", "gguf",
                            "--gguf-type", "F32", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  testing::WriteFile(dir / "ids.txt", "1\n45\n217\n298\n");
  for (const auto& [model, out] :
       {std::pair{gguf, "a.npy"}, std::pair{Stories().string(), "b.npy"}}) {
    r = testing::RunCli(
        {"logits", model, "--tokens", (dir / "ids.txt").string(), "-o", (dir / out).string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  EXPECT_EQ(testing::ReadFile(dir / "a.npy"), testing::ReadFile(dir / "b.npy"));  // F32: exact
  r = testing::RunCli({"generate", gguf, "--prompt", "Once upon a time", "-n", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  testing::WriteFile(dir / "story.txt", std::string(kStory) + kStory);
  r = testing::RunCli({"imatrix", gguf, "--calib", (dir / "story.txt").string(), "-o", gguf,
                       "--force", "--seqlen", "32"});
  EXPECT_EQ(r.exit_code, 3) << r.err;  // OptionError: it would destroy its input
  EXPECT_TRUE(fs::exists(gguf));
  r = testing::RunCli({"imatrix", gguf, "--calib", (dir / "story.txt").string(), "-o",
                       (dir / "m.imatrix").string(), "--seqlen", "32", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

TEST(GgufCli, ForceReplacesAnExistingGgufFile) {
  testing::ScratchDir dir;
  const std::string out = (dir / "m.gguf").string();
  testing::WriteFile(out, "old");
  const std::vector<std::string> args = {
      "quantize", Stories().string(), "-o",   out, "--output-format",
      "gguf",     "--gguf-type",      "Q4_0", "-q"};
  EXPECT_EQ(testing::RunCli(args).exit_code, 8);
  EXPECT_EQ(testing::ReadFile(out), "old");
  std::vector<std::string> forced = args;
  forced.push_back("--force");
  const auto r = testing::RunCli(forced);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(File(out).header().tensors.size(), 47u);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), {}), 1);  // no temporary left
  // A directory in the way is not replaced by a file, even with --force.
  fs::create_directories(dir / "d.gguf");
  forced[3] = (dir / "d.gguf").string();
  EXPECT_EQ(testing::RunCli(forced).exit_code, 8);
  EXPECT_TRUE(fs::is_directory(dir / "d.gguf"));
}

// --imatrix with a calibrated method is refused before any calibration.
TEST(GgufCli, ImatrixWithGptqOrAwqIsRefused) {
  testing::ScratchDir dir;
  const std::string imatrix = (dir / "i.gguf").string();
  testing::WriteFile(dir / "calib.txt", kStory);
  auto r = testing::RunCli({"imatrix", Stories().string(), "--calib", (dir / "calib.txt").string(),
                            "-o", imatrix, "--nsamples", "2", "--seqlen", "32"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* method : {"gptq", "awq"}) {
    r = testing::RunCli({"quantize", Stories().string(), "-o", (dir / "m.gguf").string(),
                         "--output-format", "gguf", "--gguf-type", "Q4_0", "--method", method,
                         "--calib", (dir / "calib.txt").string(), "--imatrix", imatrix});
    EXPECT_EQ(r.exit_code, 3) << method << ": " << r.err;
    EXPECT_NE(r.err.find("--imatrix applies to --method rtn only"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "m.gguf"));
  }
}
#endif

}  // namespace
}  // namespace qtool::gguf
