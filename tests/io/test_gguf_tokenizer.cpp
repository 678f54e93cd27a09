// SentencePiece-style BPE tokenizer.json (Gemma's layout) as llama.cpp's `llama` tokenizer: the
// scores that make SentencePiece's merge order the BPE merge order, the token types, the variants
// that are refused, and the tokenizer rebuilt from such metadata.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "qtool/core/error.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/gguf_import.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

// Its own namespace: the unity build compiles it with the other GGUF tests.
namespace qtool::gguf::spm_json_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using KV = std::vector<std::pair<std::string, Value>>;

const std::string kMeta = "\xe2\x96\x81";  // U+2581

// A small tokenizer of Gemma's layout: <pad> <eos> <bos> <unk> (added, special), the 256 byte
// tokens, characters, then merged tokens whose ids run against their merge order, so that a
// score from the id (as SentencePiece models have) would merge in another order than the ranks.
// Merges by rank: l+o, lo+w, ▁+low, e+r, low+er, ▁+l, ▁+▁.
struct Fixture {
  json tj;
  std::map<std::string, int64_t> id;
};

Fixture SmallTokenizer() {
  Fixture f;
  json vocab = json::object();
  json added = json::array();
  int64_t next = 0;
  auto add = [&](const std::string& s) {
    f.id[s] = next;
    vocab[s] = next++;
  };
  for (const char* s : {"<pad>", "<eos>", "<bos>", "<unk>"}) {
    added.push_back({{"id", next},
                     {"content", s},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
    add(s);
  }
  for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b));
  for (const std::string& s :
       std::vector<std::string>{kMeta, "a", "b", "e", "l", "o", "r", "s", "w"}) {
    add(s);
  }
  for (const std::string& s : std::vector<std::string>{kMeta + kMeta, kMeta + "l", "lower", "er",
                                                       kMeta + "low", "low", "lo"}) {
    add(s);
  }
  json merges = json::array();  // pairs (a list of two-element lists would become an object)
  for (const auto& [a, b] : std::vector<std::pair<std::string, std::string>>{{"l", "o"},
                                                                             {"lo", "w"},
                                                                             {kMeta, "low"},
                                                                             {"e", "r"},
                                                                             {"low", "er"},
                                                                             {kMeta, "l"},
                                                                             {kMeta, kMeta}}) {
    merges.push_back(json::array({a, b}));
  }
  f.tj = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMeta}}},
      {"pre_tokenizer",
       {{"type", "Split"},
        {"pattern", {{"String", " "}}},
        {"behavior", "MergedWithPrevious"},
        {"invert", false}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", json::array()},
        {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {2}}, {"tokens", {"<bos>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", kMeta}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};
  return f;
}

// Writes `tj` (with a config.json naming BOS 2, EOS 1) into `dir` and returns its metadata.
KV Metadata(const fs::path& dir, const json& tj, int64_t vocab_size) {
  fs::create_directories(dir);
  testing::WriteFile(dir / "tokenizer.json", tj.dump());
  const json config = {{"bos_token_id", 2}, {"eos_token_id", 1}, {"pad_token_id", 0}};
  testing::WriteFile(dir / "config.json", config.dump());
  return TokenizerMetadata(dir, vocab_size, config);
}

const Value& Find(const KV& kv, const std::string& key) {
  for (const auto& [k, v] : kv) {
    if (k == key) return v;
  }
  throw std::runtime_error("no key " + key);
}

File MetadataOnly(const fs::path& path, KV kv) {
  Writer w(path, std::move(kv), {});
  w.Commit();
  return File(path);
}

TEST(GgufTokenizerSpm, ScoresFollowTheMergeRanks) {
  testing::ScratchDir dir;
  const Fixture f = SmallTokenizer();
  const int64_t n = static_cast<int64_t>(f.id.size());
  const KV kv = Metadata(dir / "m", f.tj, n + 2);  // two embedding rows without a token
  EXPECT_EQ(*Find(kv, "tokenizer.ggml.model").AsString(), "llama");
  const Value& tokens = Find(kv, "tokenizer.ggml.tokens");
  const Value& scores = Find(kv, "tokenizer.ggml.scores");
  const Value& types = Find(kv, "tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.items.size(), static_cast<size_t>(n + 2));
  ASSERT_EQ(scores.items.size(), tokens.items.size());
  auto score = [&](const std::string& s) { return std::get<float>(scores.items[f.id.at(s)]); };
  auto type = [&](const std::string& s) { return std::get<int32_t>(types.items[f.id.at(s)]); };
  for (const auto& [s, i] : f.id) EXPECT_EQ(std::get<std::string>(tokens.items[i]), s);
  // Minus the rank of the merge that makes the token.
  EXPECT_EQ(score("lo"), 0.0f);
  EXPECT_EQ(score("low"), -1.0f);
  EXPECT_EQ(score(kMeta + "low"), -2.0f);
  EXPECT_EQ(score("er"), -3.0f);
  EXPECT_EQ(score("lower"), -4.0f);
  EXPECT_EQ(score(kMeta + "l"), -5.0f);
  EXPECT_EQ(score(kMeta + kMeta), -6.0f);
  // Tokens no merge makes score below every merged one: -(number of merges).
  for (const std::string& s :
       std::vector<std::string>{"a", "w", kMeta, "<0x41>", "<bos>", "<unk>"}) {
    EXPECT_EQ(score(s), -7.0f) << s;
  }
  EXPECT_EQ(std::get<float>(scores.items[n]), -7.0f);
  EXPECT_EQ(std::get<std::string>(tokens.items[n + 1]), fmt::format("[PAD{}]", n + 1));
  EXPECT_EQ(std::get<int32_t>(types.items[n + 1]), 5);  // unused
  EXPECT_EQ(type("a"), 1);
  EXPECT_EQ(type("lower"), 1);
  EXPECT_EQ(type("<0x00>"), 6);
  EXPECT_EQ(type("<0xFF>"), 6);
  EXPECT_EQ(type("<bos>"), 3);
  EXPECT_EQ(type("<unk>"), 3);  // an added special token, as llama.cpp's converter types it
  EXPECT_EQ(std::get<bool>(Find(kv, "tokenizer.ggml.add_space_prefix").scalar), false);
  EXPECT_EQ(std::get<bool>(Find(kv, "tokenizer.ggml.add_bos_token").scalar), true);  // template
  EXPECT_EQ(std::get<bool>(Find(kv, "tokenizer.ggml.add_eos_token").scalar), false);
  EXPECT_EQ(Find(kv, "tokenizer.ggml.bos_token_id").AsInt(), 2);
  EXPECT_EQ(Find(kv, "tokenizer.ggml.eos_token_id").AsInt(), 1);
  EXPECT_EQ(Find(kv, "tokenizer.ggml.unknown_token_id").AsInt(), 3);
}

// SentencePiece's BPE (libsentencepiece, the algorithm of llama.cpp's `llama` tokenizer: join the
// adjacent pair whose token scores highest) on the metadata gives the tokenizer.json's ids.
// " lower" shows the order: by rank ▁+low (2) comes before low+er (4), giving ▁low er; scores
// from the ids (lower and er before ▁low) would give ▁ lower.
TEST(GgufTokenizerSpm, SentencePieceOnTheScoresGivesTheBpeIds) {
  testing::ScratchDir dir;
  const Fixture f = SmallTokenizer();
  const KV kv = Metadata(dir / "m", f.tj, static_cast<int64_t>(f.id.size()));
  const File gguf = MetadataOnly(dir / "m.gguf", kv);
  fs::create_directories(dir / "rebuilt");
  for (const ModelFile& m : RebuildTokenizer(gguf.header(), "m.gguf")) {
    testing::WriteFile(dir / "rebuilt" / m.name, m.contents);
  }
  const Tokenizer bpe = Tokenizer::Load(dir / "m/tokenizer.json");
  const Tokenizer spm = Tokenizer::Load(dir / "rebuilt/tokenizer.model");
  const std::vector<int32_t> lower = bpe.Encode(" lower");
  EXPECT_EQ(lower, (std::vector<int32_t>{static_cast<int32_t>(f.id.at(kMeta + "low")),
                                         static_cast<int32_t>(f.id.at("er"))}));
  for (const std::string text : {" lower", "lower lowlow  lo wer", "slower", "   low",
                                 "ab\xc3\xa9 \xf0\x9f\x99\x82 low", "lllooowww eerr"}) {
    EXPECT_EQ(spm.Encode(text), bpe.Encode(text)) << text;
  }
  EXPECT_EQ(spm.Encode("low", true), bpe.Encode("low", true));  // BOS from the template
}

TEST(GgufTokenizerSpm, PrependLayoutAddsTheSpacePrefix) {
  testing::ScratchDir dir;
  Fixture f = SmallTokenizer();
  f.tj["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", kMeta}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMeta}}}}};
  f.tj["pre_tokenizer"] = nullptr;
  // Without the decoder's Strip of the prefix it is refused.
  EXPECT_THROW(Metadata(dir / "a", f.tj, 300), FormatError);
  f.tj["decoder"]["decoders"].push_back(
      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  const KV kv = Metadata(dir / "b", f.tj, 300);
  EXPECT_EQ(std::get<bool>(Find(kv, "tokenizer.ggml.add_space_prefix").scalar), true);
  const File gguf = MetadataOnly(dir / "m.gguf", kv);
  fs::create_directories(dir / "rebuilt");
  for (const ModelFile& m : RebuildTokenizer(gguf.header(), "m.gguf")) {
    testing::WriteFile(dir / "rebuilt" / m.name, m.contents);
  }
  const Tokenizer bpe = Tokenizer::Load(dir / "b/tokenizer.json");
  const Tokenizer spm = Tokenizer::Load(dir / "rebuilt/tokenizer.model");
  for (const std::string text : {"lower", " lower", "low er  slow"}) {
    EXPECT_EQ(spm.Encode(text), bpe.Encode(text)) << text;
  }
}

TEST(GgufTokenizerSpm, RefusesWhatLlamaCppTokenisesDifferently) {
  testing::ScratchDir dir;
  int n = 0;
  // `edit` makes a variant of the small tokenizer; its metadata must be refused with a message
  // naming the file and `what`.
  auto refused = [&](const std::function<void(Fixture&)>& edit, const std::string& what) {
    Fixture f = SmallTokenizer();
    edit(f);
    const fs::path d = dir / std::to_string(n++);
    try {
      Metadata(d, f.tj, 400);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find((d / "tokenizer.json").string()), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
  };
  // "ab" is a + b, which llama.cpp would join, but no merge does.
  refused([](Fixture& f) { f.tj["model"]["vocab"]["ab"] = 300; }, "'ab' (id 300) is 'a' + 'b'");
  refused([](Fixture& f) { f.tj["model"]["byte_fallback"] = false; }, "byte_fallback");
  refused([](Fixture& f) { f.tj["model"]["vocab"].erase("<0x7F>"); }, "<0x7F>");
  refused([](Fixture& f) { f.tj["model"]["ignore_merges"] = true; }, "ignore_merges");
  refused(
      [](Fixture& f) {
        f.tj["normalizer"] = {{"type", "Sequence"},
                              {"normalizers", {{{"type", "NFKC"}}, f.tj["normalizer"]}}};
      },
      "NFKC");
  refused(
      [](Fixture& f) {
        f.tj["normalizer"] = nullptr;
        f.tj["pre_tokenizer"] = {{"type", "Metaspace"},
                                 {"replacement", kMeta},
                                 {"prepend_scheme", "first"},
                                 {"split", false}};
      },
      "prepend_scheme");
  refused([](Fixture& f) { f.tj["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "Whitespace");
  refused(
      [](Fixture& f) {
        f.tj["added_tokens"].push_back({{"id", 300}, {"content", "<x>"}, {"lstrip", true}});
      },
      "lstrip");
  // <a|b> and |b>c overlap: Hugging Face takes the leftmost, llama.cpp the longest first.
  refused(
      [](Fixture& f) {
        f.tj["added_tokens"].push_back({{"id", 300}, {"content", "<a|b>"}, {"special", false}});
        f.tj["added_tokens"].push_back({{"id", 301}, {"content", "|b>cc"}, {"special", false}});
      },
      "overlap");
  refused(
      [](Fixture& f) {
        f.tj["post_processor"]["single"].push_back(
            {{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}});
      },
      "post-processor");
  // Metaspace without a prefix and runs of one added character are what Gemma-like files hold.
  Fixture f = SmallTokenizer();
  f.tj["normalizer"] = nullptr;
  f.tj["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", "never"}, {"split", false}};
  f.tj["added_tokens"].push_back({{"id", 300}, {"content", "\n"}, {"special", false}});
  f.tj["added_tokens"].push_back({{"id", 301}, {"content", "\n\n"}, {"special", false}});
  const KV kv = Metadata(dir / "ok", f.tj, 302);
  EXPECT_EQ(std::get<int32_t>(Find(kv, "tokenizer.ggml.token_type").items[301]), 4);
}

// What llama.cpp's converter writes for Gemma: <unk> typed control (no type-2 token) and
// user-defined runs of spaces written with spaces. The rebuilt SentencePiece model takes the
// unknown piece from unknown_token_id and turns the spaces back into U+2581, so that the runs
// match where llama.cpp matches them.
TEST(GgufTokenizerSpm, RebuildsLlamaCppsGemmaConventions) {
  testing::ScratchDir dir;
  const Fixture f = SmallTokenizer();
  KV kv = Metadata(dir / "m", f.tj, static_cast<int64_t>(f.id.size()));
  const int64_t runs = f.id.at(kMeta + kMeta);
  for (auto& [key, v] : kv) {
    if (key == "tokenizer.ggml.tokens") v.items[runs] = std::string("  ");
    if (key == "tokenizer.ggml.token_type") v.items[runs] = int32_t{4};
  }
  const File gguf = MetadataOnly(dir / "m.gguf", kv);
  fs::create_directories(dir / "rebuilt");
  for (const ModelFile& m : RebuildTokenizer(gguf.header(), "m.gguf")) {
    testing::WriteFile(dir / "rebuilt" / m.name, m.contents);
  }
  const Tokenizer spm = Tokenizer::Load(dir / "rebuilt/tokenizer.model");
  const int32_t run = static_cast<int32_t>(runs);
  const int32_t w = static_cast<int32_t>(f.id.at("w"));
  EXPECT_EQ(spm.Encode("w  w"), (std::vector<int32_t>{w, run, w}));
  EXPECT_EQ(spm.Decode({w, run, w}), "w  w");
  // Without unknown_token_id there is no unknown piece.
  KV no_unk;
  for (const auto& e : kv) {
    if (e.first != "tokenizer.ggml.unknown_token_id") no_unk.push_back(e);
  }
  EXPECT_THROW(RebuildTokenizer(MetadataOnly(dir / "n.gguf", no_unk).header(), "n.gguf"),
               FormatError);
}

}  // namespace
}  // namespace qtool::gguf::spm_json_test
