// tokenizer.json: small hand-made tokenizers whose ids follow from their vocabularies and merge
// ranks, the components that are refused, BOS/EOS from tokenizer_config.json, and round trips on
// SmolLM2's real tokenizer. tests/interop/check_tokenizer.py compares with Hugging Face tokenizers.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>

#include "qtool/core/error.hpp"
#include "qtool/model/tokenizer.hpp"
#include "test_support.hpp"

namespace qtool {
namespace {

using nlohmann::json;
using Ids = std::vector<int32_t>;

// A byte-level BPE tokenizer (GPT-2 style) over the characters a, b, c and space ("Ġ").
json ByteLevelBpe(json merges) {
  return {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 8},
         {"content", "<|end|>"},
         {"special", true},
         {"normalized", false},
         {"lstrip", false},
         {"rstrip", false},
         {"single_word", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab",
         {{"a", 0},
          {"b", 1},
          {"c", 2},
          {"\xC4\xA0", 3},
          {"ab", 4},
          {"bc", 5},
          {"abc", 6},
          {"\xC4\xA0"
           "a",
           7}}},
        {"merges", std::move(merges)}}}};
}

Tokenizer Write(const testing::ScratchDir& dir, const json& j,
                const std::string& name = "tokenizer.json") {
  testing::WriteFile(dir / name, j.dump());
  return Tokenizer::Load(dir / name);
}

TEST(TokenizerJson, BpeMergesByRankNotPosition) {
  testing::ScratchDir dir;
  // "a b" first: abc -> ab c -> abc.
  Tokenizer t = Write(dir, ByteLevelBpe({"a b", "ab c", "\xC4\xA0 a"}));
  EXPECT_EQ(t.Encode("abc"), (Ids{6}));
  // " abc": Ġ a b c; "a b" (rank 0) beats "Ġ a" (rank 2), then "ab c"; Ġ stays alone.
  EXPECT_EQ(t.Encode("abc abc"), (Ids{6, 3, 6}));
  EXPECT_EQ(t.Decode({6, 3, 6}), "abc abc");
  // "b c" ranked first: a bc, and no merge of a with bc exists.
  t = Write(dir, ByteLevelBpe({"b c", "a b", "\xC4\xA0 a"}));
  EXPECT_EQ(t.Encode("abc"), (Ids{0, 5}));
  EXPECT_EQ(t.Encode(" a"), (Ids{7}));
  // The same as pairs ([a, b]), the newer merges form.
  t = Write(dir, ByteLevelBpe(json::array({json::array({"b", "c"}), json::array({"a", "b"})})));
  EXPECT_EQ(t.Encode("abc"), (Ids{0, 5}));
  EXPECT_EQ(t.vocab_size(), 9);
}

TEST(TokenizerJson, IgnoreMergesTakesWholeWordsFromTheVocab) {
  testing::ScratchDir dir;
  json j = ByteLevelBpe({"b c", "a b"});
  EXPECT_EQ(Write(dir, j).Encode("abc"), (Ids{0, 5}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(Write(dir, j).Encode("abc"), (Ids{6}));
}

TEST(TokenizerJson, AddedTokensAreMatchedBeforeTheModel) {
  testing::ScratchDir dir;
  const Tokenizer t = Write(dir, ByteLevelBpe({"a b", "ab c"}));
  EXPECT_EQ(t.Encode("ab<|end|>c"), (Ids{4, 8, 2}));
  EXPECT_EQ(t.Decode({4, 8, 2}), "ab<|end|>c");
  EXPECT_EQ(t.Decode({4, 8, 2}, /*skip_special_tokens=*/true), "abc");
  EXPECT_THROW(t.Decode({99}), OptionError);
}

TEST(TokenizerJson, TemplateAndTokenizerConfigAddBosAndEos) {
  testing::ScratchDir dir;
  json j = ByteLevelBpe({"a b"});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single",
       {{{"SpecialToken", {{"id", "<|end|>"}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"special_tokens",
       {{"<|end|>", {{"id", "<|end|>"}, {"ids", {8}}, {"tokens", {"<|end|>"}}}}}}};
  Tokenizer t = Write(dir, j);
  EXPECT_EQ(t.special_prefix(), (Ids{8}));
  EXPECT_EQ(t.Encode("ab", true), (Ids{8, 4}));
  EXPECT_EQ(t.Encode("ab"), (Ids{4}));
  // tokenizer_config.json beside the file overrides the template.
  testing::WriteFile(dir / "tokenizer_config.json",
                     R"({"add_bos_token": false, "add_eos_token": true, "eos_token": "<|end|>"})");
  t = Tokenizer::Load(dir / "tokenizer.json");
  EXPECT_EQ(t.Encode("ab", true), (Ids{4, 8}));
  testing::WriteFile(dir / "tokenizer_config.json",
                     R"({"add_bos_token": true, "bos_token": {"content": "<nope>"}})");
  EXPECT_THROW(Tokenizer::Load(dir / "tokenizer.json"), FormatError);
}

// SentencePiece-style BPE in JSON (Llama 2): Prepend + Replace normalisers, byte fallback for
// characters outside the vocabulary, and the decoder chain that undoes both.
TEST(TokenizerJson, MetaspaceBpeWithByteFallback) {
  testing::ScratchDir dir;
  json vocab = {{"<unk>", 0}, {"\xE2\x96\x81", 1}, {"h", 2},
                {"i", 3},     {"hi", 4},           {"\xE2\x96\x81hi", 5}};
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = 6 + b;
  const json j = {
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
      {"pre_tokenizer", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"fuse_unk", true},
        {"vocab", vocab},
        {"merges", {"h i", "\xE2\x96\x81 hi"}}}}};
  const Tokenizer t = Write(dir, j);
  // "hi é": ▁hi ▁ é, é = C3 A9 through byte fallback.
  const Ids ids = t.Encode("hi \xC3\xA9");
  EXPECT_EQ(ids, (Ids{5, 1, 6 + 0xC3, 6 + 0xA9}));
  EXPECT_EQ(t.Decode(ids), "hi \xC3\xA9");
  // A byte token that is not valid UTF-8 on its own decodes to U+FFFD.
  EXPECT_EQ(t.Decode({6 + 0xC3}), "\xEF\xBF\xBD");
}

// Unigram: the segmentation of highest total score wins, not the longest first piece.
TEST(TokenizerJson, UnigramViterbi) {
  testing::ScratchDir dir;
  const json j = {
      {"pre_tokenizer",
       {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}}},
      {"decoder",
       {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}}},
      {"model",
       {{"type", "Unigram"},
        {"unk_id", 0},
        {"vocab", json::array({json::array({"<unk>", 0.0}), json::array({"\xE2\x96\x81", -2.0}),
                               json::array({"\xE2\x96\x81"
                                            "ab",
                                            -9.0}),
                               json::array({"c", -3.0}),
                               json::array({"\xE2\x96\x81"
                                            "a",
                                            -2.0}),
                               json::array({"bc", -2.0}), json::array({"a", -3.0}),
                               json::array({"b", -3.0})})}}}};
  const Tokenizer t = Write(dir, j);
  // ▁abc: ▁a + bc (-4) beats ▁ab + c (-12) and ▁ + a + bc (-7).
  EXPECT_EQ(t.Encode("abc"), (Ids{4, 5}));
  // x is unknown (min score - 10 per character; unknowns fused).
  EXPECT_EQ(t.Encode("a xx"), (Ids{4, 1, 0}));
  EXPECT_EQ(t.Decode({4, 5}), "abc");
}

TEST(TokenizerJson, RefusesWhatItDoesNotImplement) {
  testing::ScratchDir dir;
  auto expect_refused = [&](const json& j, const std::string& key) {
    testing::WriteFile(dir / "t.json", j.dump());
    try {
      Tokenizer::Load(dir / "t.json");
      ADD_FAILURE() << "accepted " << key;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("t.json"), std::string::npos) << e.what();
    }
  };
  json j = ByteLevelBpe({"a b"});
  j["model"]["type"] = "WordPiece";
  expect_refused(j, "model.type");
  j = ByteLevelBpe({"a b"});
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  expect_refused(j, "pre_tokenizer.type");
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Punctuation"}}}}};
  expect_refused(j, "pre_tokenizer.pretokenizers[0].type");
  j = ByteLevelBpe({"a b"});
  j["normalizer"] = {{"type", "BertNormalizer"}};
  expect_refused(j, "normalizer.type");
  j = ByteLevelBpe({"a b"});
  j["decoder"] = {{"type", "WordPiece"}};
  expect_refused(j, "decoder.type");
  j = ByteLevelBpe({"a b"});
  j["post_processor"] = {{"type", "BertProcessing"}};
  expect_refused(j, "post_processor.type");
  j = ByteLevelBpe({"a b"});
  j["model"]["dropout"] = 0.1;
  expect_refused(j, "model.dropout");
  j = ByteLevelBpe({"a q"});
  expect_refused(j, "model.merges[0]");
  j = ByteLevelBpe({"a b"});
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_refused(j, "pre_tokenizer.pattern");
  testing::WriteFile(dir / "t.json", "{\"model\": ");
  EXPECT_THROW(Tokenizer::Load(dir / "t.json"), FormatError);
}

TEST(TokenizerJson, InvalidUtf8IsRefused) {
  testing::ScratchDir dir;
  const Tokenizer t = Write(dir, ByteLevelBpe({"a b"}));
  EXPECT_THROW(t.Encode(std::string("a\xFF"
                                    "b")),
               FormatError);
  EXPECT_THROW(t.Encode(std::string("\xE2\x82")), FormatError);
}

TEST(TokenizerJson, ModelDirectoryFallsBackToTokenizerJson) {
  testing::ScratchDir dir;
  EXPECT_THROW(LoadModelTokenizer(dir.path()), IoError);
  Write(dir, ByteLevelBpe({"a b"}));
  EXPECT_EQ(LoadModelTokenizer(dir.path()).Encode("ab"), (Ids{4}));
}

TEST(TokenizerJson, SmolLm2RoundTrips) {
  QTOOL_REQUIRE_SHARED();
  const auto dir = *testing::SharedDir() / "models" / "smollm2-135m";
  const Tokenizer t = LoadModelTokenizer(dir);
  EXPECT_EQ(t.vocab_size(), 49152);
  EXPECT_TRUE(t.special_prefix().empty());  // SmolLM2 adds no BOS
  const std::string text = testing::ReadFile(*testing::SharedDir() / "data" / "stories-eval.txt");
  const Ids ids = t.Encode(text);
  EXPECT_EQ(ids.size(), 404u);  // the reference perplexity's 404 predicted tokens
  EXPECT_EQ(t.Decode(ids), text);
  const std::string chat = "<|im_start|>user\nCaf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD<|im_end|>";
  const Ids chat_ids = t.Encode(chat);
  EXPECT_EQ(chat_ids.front(), 1);
  EXPECT_EQ(chat_ids.back(), 2);
  EXPECT_EQ(t.Decode(chat_ids), chat);
}

// GPT-2's pre-tokenizer pattern has a hand-written matcher for ASCII text; the same pattern
// wrapped in a group, `(?:...)`, is not recognised and runs through PCRE2 alone. Both must cut
// every string alike: every ASCII character (controls included), runs of spaces, tabs and
// newlines, contractions, and non-ASCII letters, digits and spaces next to ASCII runs.
TEST(TokenizerJson, Gpt2AsciiMatcherEqualsPcre2) {
  QTOOL_REQUIRE_SHARED();
  const auto src = *testing::SharedDir() / "models" / "smollm2-135m" / "tokenizer.json";
  json j = json::parse(testing::ReadFile(src));
  ASSERT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  testing::ScratchDir dir;
  const Tokenizer fast = Write(dir, j, "fast.json");
  const std::string gpt2 =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"},
                           {"pattern", {{"Regex", "(?:" + gpt2 + ")"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                          {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", false}}}}};
  const Tokenizer pcre = Write(dir, j, "pcre.json");
  std::vector<std::string> alphabet;
  for (int c = 1; c < 128; ++c) alphabet.emplace_back(1, static_cast<char>(c));
  for (const char* s : {"'s",
                        "'t",
                        "'re",
                        "'ve",
                        "'m",
                        "'ll",
                        "'d",
                        "  ",
                        "\n\n",
                        " \t",
                        "e",
                        " ",
                        "a",
                        "7",
                        "\xC3\xA9",
                        "\xC2\xA0",
                        "\xE3\x80\x80",
                        "\xD9\xA3",
                        "\xC2\xB2",
                        "\xE2\x80\x94",
                        "\xF0\x9F\x98\x80",
                        "\xCC\x81"}) {
    alphabet.emplace_back(s);
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1), len(0, 40);
  for (int i = 0; i < 3000; ++i) {
    std::string text;
    for (size_t n = len(rng); n > 0; --n) text += alphabet[pick(rng)];
    const Ids want = pcre.Encode(text);
    ASSERT_EQ(fast.Encode(text), want) << "text: " << json(text).dump();
  }
}

TEST(CalibrationData, TextJsonLinesAndTokenIds) {
  testing::ScratchDir dir;
  Write(dir, ByteLevelBpe({"a b", "ab c"}));
  testing::WriteFile(dir / "calib.txt", "abc ab");
  CalibrationData d = ReadCalibrationData(dir / "calib.txt", dir.path(), 1);
  EXPECT_EQ(d.format, "text");
  EXPECT_EQ(d.tokens, (Ids{6, 3, 4}));
  EXPECT_EQ(d.bos, -1);  // the tokenizer adds none; config.json's BOS is not used for text
  testing::WriteFile(dir / "calib.jsonl", "{\"text\": \"abc\"}\n\n{\"text\": \"ab\", \"id\": 2}\n");
  d = ReadCalibrationData(dir / "calib.jsonl", dir.path(), 1);
  EXPECT_EQ(d.format, "jsonl");
  EXPECT_EQ(d.documents, 2);
  EXPECT_EQ(d.tokens, (Ids{6, 4}));
  testing::WriteFile(dir / "calib.ids", "5 6\n7\n");
  d = ReadCalibrationData(dir / "calib.ids", dir.path(), 1);
  EXPECT_EQ(d.format, "token ids");
  EXPECT_EQ(d.tokens, (Ids{5, 6, 7}));
  // The tokenizer's BOS goes first when tokenizer_config.json says so.
  testing::WriteFile(dir / "tokenizer_config.json",
                     R"({"add_bos_token": true, "bos_token": "<|end|>"})");
  EXPECT_EQ(ReadCalibrationData(dir / "calib.txt", dir.path(), 1).bos, 8);
  // Malformed lines are named.
  testing::WriteFile(dir / "bad.jsonl", "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n");
  try {
    ReadCalibrationData(dir / "bad.jsonl", dir.path(), 1);
    ADD_FAILURE() << "accepted a line without text";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  testing::WriteFile(dir / "bad.jsonl", "{\"text\": \"a\"\n");
  EXPECT_THROW(ReadCalibrationData(dir / "bad.jsonl", dir.path(), 1), FormatError);
  // Token ids without a tokenizer: config.json's BOS.
  testing::ScratchDir bare;
  testing::WriteFile(bare / "calib.ids", "5 6\n");
  EXPECT_EQ(ReadCalibrationData(bare / "calib.ids", bare.path(), 1).bos, 1);
}

}  // namespace
}  // namespace qtool
