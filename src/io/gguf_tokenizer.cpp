#include <sentencepiece_processor.h>

#include <fstream>
#include <map>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "qtool/core/error.hpp"
#include "qtool/io/gguf_export.hpp"

namespace qtool::gguf {

namespace {

using KV = std::vector<std::pair<std::string, Value>>;

// llama.cpp's token types (llama_token_type), the same numbers as SentencePiece's piece types.
enum TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

std::string ReadText(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  QTOOL_CHECK(f.good(), IoError, "{}: cannot open", p.string());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

nlohmann::json ReadJson(const std::filesystem::path& p) {
  try {
    return nlohmann::json::parse(ReadText(p));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: invalid JSON: {}", p.string(), e.what()));
  }
}

// A special token of tokenizer_config.json: a string or {"content": string}.
std::optional<std::string> TokenContent(const nlohmann::json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const nlohmann::json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

// Special-token ids, add_bos/add_eos flags and the chat template from tokenizer_config.json,
// chat_template.jinja and config.json; `id_of` maps a token's text to its id.
// `flags`: add_bos_token/add_eos_token where tokenizer_config.json does not set them.
void AddSpecialTokens(const std::filesystem::path& dir, const nlohmann::json& config,
                      const std::function<std::optional<int64_t>(const std::string&)>& id_of,
                      std::map<std::string, int64_t> ids, std::map<std::string, bool> flags,
                      KV& kv) {
  nlohmann::json tcfg = nlohmann::json::object();
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    tcfg = ReadJson(dir / "tokenizer_config.json");
  }
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"}) {
    if (config.contains(key) && config[key].is_number_integer())
      ids[key] = config[key].get<int64_t>();
  }
  const std::pair<const char*, const char*> names[] = {{"bos_token", "bos_token_id"},
                                                       {"eos_token", "eos_token_id"},
                                                       {"pad_token", "pad_token_id"},
                                                       {"unk_token", "unk_token_id"}};
  for (const auto& [tok, id_key] : names) {
    if (const auto content = TokenContent(tcfg, tok)) {
      if (const auto id = id_of(*content)) ids[id_key] = *id;
    }
  }
  const std::pair<const char*, const char*> keys[] = {
      {"bos_token_id", "tokenizer.ggml.bos_token_id"},
      {"eos_token_id", "tokenizer.ggml.eos_token_id"},
      {"unk_token_id", "tokenizer.ggml.unknown_token_id"},
      {"pad_token_id", "tokenizer.ggml.padding_token_id"}};
  for (const auto& [id_key, gguf_key] : keys) {
    const auto it = ids.find(id_key);
    if (it != ids.end() && it->second >= 0)
      kv.emplace_back(gguf_key, static_cast<uint32_t>(it->second));
  }
  for (const char* flag : {"add_bos_token", "add_eos_token"}) {
    if (tcfg.contains(flag) && tcfg[flag].is_boolean()) flags[flag] = tcfg[flag].get<bool>();
    if (const auto it = flags.find(flag); it != flags.end()) {
      kv.emplace_back(fmt::format("tokenizer.ggml.{}", flag), it->second);
    }
  }
  std::optional<std::string> tmpl;
  if (tcfg.contains("chat_template")) {
    const nlohmann::json& t = tcfg["chat_template"];
    if (t.is_string()) {
      tmpl = t.get<std::string>();
    } else if (t.is_array()) {  // [{"name": ..., "template": ...}]: the default one
      for (const auto& e : t) {
        if (e.value("name", "") == "default" && e.contains("template")) {
          tmpl = e["template"].get<std::string>();
        }
      }
    }
  }
  if (!tmpl && std::filesystem::exists(dir / "chat_template.jinja")) {
    tmpl = ReadText(dir / "chat_template.jinja");
  }
  if (tmpl) kv.emplace_back("tokenizer.chat_template", *tmpl);
}

// add_dummy_prefix and remove_extra_whitespaces of a serialized SentencePiece ModelProto
// (normalizer_spec is its field 3; those two are fields 3 and 4 of NormalizerSpec, both true
// when absent). llama.cpp reads them as tokenizer.ggml.add_space_prefix and
// remove_extra_whitespaces. Throws FormatError on a malformed message.
std::pair<bool, bool> NormalizerFlags(std::string_view proto, const std::filesystem::path& path) {
  struct Field {
    uint64_t number;
    uint64_t wire;
    uint64_t value;          // varints
    std::string_view bytes;  // length-delimited
  };
  auto next = [&path](std::string_view& b) {
    auto varint = [&]() {
      uint64_t r = 0;
      for (int shift = 0; shift < 64; shift += 7) {
        QTOOL_CHECK(!b.empty(), FormatError, "{}: truncated SentencePiece model", path.string());
        const auto c = static_cast<uint8_t>(b.front());
        b.remove_prefix(1);
        r |= static_cast<uint64_t>(c & 0x7f) << shift;
        if (c < 0x80) return r;
      }
      throw FormatError(fmt::format("{}: bad varint in SentencePiece model", path.string()));
    };
    Field f{};
    const uint64_t key = varint();
    f.number = key >> 3;
    f.wire = key & 7;
    const uint64_t fixed = f.wire == 1 ? 8 : f.wire == 5 ? 4 : 0;
    if (f.wire == 0) {
      f.value = varint();
    } else if (f.wire == 2 || fixed > 0) {
      const uint64_t n = fixed > 0 ? fixed : varint();
      QTOOL_CHECK(n <= b.size(), FormatError, "{}: truncated SentencePiece model", path.string());
      f.bytes = b.substr(0, n);
      b.remove_prefix(n);
    } else {
      throw FormatError(fmt::format("{}: unsupported protobuf wire type {} in SentencePiece model",
                                    path.string(), f.wire));
    }
    return f;
  };
  bool add_prefix = true;
  bool remove_spaces = true;
  for (std::string_view b = proto; !b.empty();) {
    const Field f = next(b);
    if (f.number != 3 || f.wire != 2) continue;
    for (std::string_view n = f.bytes; !n.empty();) {
      const Field g = next(n);
      if (g.wire != 0) continue;
      if (g.number == 3) add_prefix = g.value != 0;
      if (g.number == 4) remove_spaces = g.value != 0;
    }
  }
  return {add_prefix, remove_spaces};
}

KV SentencePieceMetadata(const std::filesystem::path& dir, int64_t vocab_size,
                         const nlohmann::json& config) {
  const std::filesystem::path path = dir / "tokenizer.model";
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(path.string());
  QTOOL_CHECK(status.ok(), FormatError, "{}: not a SentencePiece model: {}", path.string(),
              status.ToString());
  const int n = sp.GetPieceSize();
  QTOOL_CHECK(n <= vocab_size, FormatError, "{}: {} pieces, more than the model's vocab_size {}",
              path.string(), n, vocab_size);
  std::vector<Scalar> tokens, scores, types;
  for (int i = 0; i < vocab_size; ++i) {
    if (i >= n) {  // rows of the embedding without a piece, as llama.cpp's converter pads them
      tokens.emplace_back(fmt::format("[PAD{}]", i));
      scores.emplace_back(-1000.0f);
      types.emplace_back(int32_t{kUnused});
      continue;
    }
    tokens.emplace_back(sp.IdToPiece(i));
    scores.emplace_back(sp.GetScore(i));
    int32_t type = kNormal;
    if (sp.IsUnknown(i)) {
      type = kUnknown;
    } else if (sp.IsControl(i)) {
      type = kControl;
    } else if (sp.IsUnused(i)) {
      type = kUnused;
    } else if (sp.IsByte(i)) {
      type = kByte;
    }
    types.emplace_back(type);
  }
  KV kv;
  kv.emplace_back("tokenizer.ggml.model", std::string("llama"));
  kv.emplace_back("tokenizer.ggml.tokens", Value::Array(ValueType::kString, std::move(tokens)));
  kv.emplace_back("tokenizer.ggml.scores", Value::Array(ValueType::kF32, std::move(scores)));
  kv.emplace_back("tokenizer.ggml.token_type", Value::Array(ValueType::kI32, std::move(types)));
  const auto [add_prefix, remove_spaces] = NormalizerFlags(sp.serialized_model_proto(), path);
  kv.emplace_back("tokenizer.ggml.add_space_prefix", add_prefix);
  kv.emplace_back("tokenizer.ggml.remove_extra_whitespaces", remove_spaces);
  std::map<std::string, int64_t> ids = {{"bos_token_id", sp.bos_id()},
                                        {"eos_token_id", sp.eos_id()},
                                        {"unk_token_id", sp.unk_id()},
                                        {"pad_token_id", sp.pad_id()}};
  AddSpecialTokens(
      dir, config,
      [&sp](const std::string& s) -> std::optional<int64_t> {
        const int id = sp.PieceToId(s);  // the unknown piece's id when s is not a piece
        return sp.IdToPiece(id) == s ? std::optional<int64_t>(id) : std::nullopt;
      },
      ids, {}, kv);
  return kv;
}

// llama.cpp's name for the pre-tokenizer (its regular expressions for splitting text before BPE),
// from the structure of tokenizer.json's "pre_tokenizer".
std::string PreTokenizerName(const nlohmann::json& pre, const std::filesystem::path& path) {
  auto is_byte_level = [](const nlohmann::json& p) {
    return p.value("type", "") == "ByteLevel" && p.value("use_regex", true);
  };
  if (pre.is_object() && is_byte_level(pre)) return "gpt-2";  // the GPT-2 regex alone
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers")) {
    const nlohmann::json& seq = pre["pretokenizers"];
    if (seq.size() == 2 && seq[0].value("type", "") == "Digits" &&
        seq[0].value("individual_digits", false) && is_byte_level(seq[1])) {
      return "smollm";  // single digits, then the GPT-2 regex
    }
  }
  throw FormatError(fmt::format(
      "{}: the pre-tokenizer {} has no known llama.cpp equivalent (known: ByteLevel with its "
      "regex, and Digits(individual) then ByteLevel)",
      path.string(), pre.dump().substr(0, 200)));
}

KV BpeMetadata(const std::filesystem::path& dir, const nlohmann::json& tj, int64_t vocab_size,
               const nlohmann::json& config) {
  const std::filesystem::path path = dir / "tokenizer.json";
  QTOOL_CHECK(tj.contains("model") && tj["model"].value("type", "") == "BPE" &&
                  tj["model"].contains("vocab") && tj["model"]["vocab"].is_object(),
              FormatError, "{}: not a BPE tokenizer", path.string());
  const std::string pre = PreTokenizerName(tj.value("pre_tokenizer", nlohmann::json()), path);
  std::vector<std::string> text(static_cast<size_t>(vocab_size));
  std::vector<int32_t> type(static_cast<size_t>(vocab_size), kUnused);
  std::map<std::string, int64_t> id_of;
  auto put = [&](const std::string& s, int64_t id, int32_t t) {
    QTOOL_CHECK(id >= 0 && id < vocab_size, FormatError,
                "{}: token '{}' has id {}, outside the model's vocab_size {}", path.string(), s, id,
                vocab_size);
    text[id] = s;
    type[id] = t;
    id_of[s] = id;
  };
  for (const auto& [s, id] : tj["model"]["vocab"].items()) put(s, id.get<int64_t>(), kNormal);
  if (tj.contains("added_tokens")) {
    for (const auto& t : tj["added_tokens"]) {
      put(t.at("content").get<std::string>(), t.at("id").get<int64_t>(),
          t.value("special", false) ? kControl : kUserDefined);
    }
  }
  std::vector<Scalar> tokens, types;
  for (int64_t i = 0; i < vocab_size; ++i) {
    tokens.emplace_back(type[i] == kUnused && text[i].empty() ? fmt::format("[PAD{}]", i)
                                                              : text[i]);
    types.emplace_back(type[i]);
  }
  std::vector<Scalar> merges;
  if (tj["model"].contains("merges")) {
    for (const auto& m : tj["model"]["merges"]) {
      // Older files write "a b", newer ones ["a", "b"].
      merges.emplace_back(m.is_string()
                              ? m.get<std::string>()
                              : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
  }
  KV kv;
  kv.emplace_back("tokenizer.ggml.model", std::string("gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", pre);
  kv.emplace_back("tokenizer.ggml.tokens", Value::Array(ValueType::kString, std::move(tokens)));
  kv.emplace_back("tokenizer.ggml.token_type", Value::Array(ValueType::kI32, std::move(types)));
  kv.emplace_back("tokenizer.ggml.merges", Value::Array(ValueType::kString, std::move(merges)));
  AddSpecialTokens(
      dir, config,
      [&id_of](const std::string& s) -> std::optional<int64_t> {
        const auto it = id_of.find(s);
        return it == id_of.end() ? std::nullopt : std::optional<int64_t>(it->second);
      },
      {}, {}, kv);
  return kv;
}

// ---- SentencePiece-style BPE tokenizer.json (Gemma; Llama 2's Prepend/Replace layout) ----
//
// Such a file is SentencePiece's BPE written as Hugging Face BPE: spaces become U+2581, the text
// is one word, the merges are applied by rank, characters outside the vocabulary fall back to
// <0xNN> byte tokens. llama.cpp runs it as its `llama` (SPM) tokenizer: split the text into UTF-8
// characters, then repeatedly join the adjacent pair whose joined text is a token with the highest
// score (ties: the leftmost pair), then bytes for characters that are not tokens. The two agree
// when
//  - a token's score is minus the rank of the first merge that makes it, so the higher score is
//    the earlier merge (ranks below 2^24 are exact in float32); a token no merge makes (single
//    characters, bytes, special tokens) scores below every merged one, and llama.cpp never forms
//    it from a pair (next point), so its score decides nothing;
//  - every pair llama.cpp could join is a merge: for each token and each split of its text into
//    two pieces that can be symbols (tokens, or single characters), that pair is in the merges
//    (added tokens without spaces excepted: both take them out of the text before BPE);
//  - added tokens are matched alike: Hugging Face takes the leftmost-longest added token, llama.cpp
//    each token in turn from the longest, which agree unless one added token's end is another's
//    start (runs of one character excepted, where both take the longest run from the left).
// Hugging Face breaks a tie between two merges that make the same token by rank, llama.cpp by
// position; they could differ only where both apply at once, overlapping (x|y|z with xy = yz and
// yz ranked first), a state the merge order rarely if ever reaches: for Gemma 3 (1230 such pairs
// of merges, mostly runs of one character) texts built around each of them tokenise alike
// (tests/interop/check_gguf_tokenizer.py).

constexpr std::string_view kMeta = "\xe2\x96\x81";  // U+2581, SentencePiece's space

std::string StringOf(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

bool BoolOf(const nlohmann::json& j, const char* key, bool fallback) {
  return j.is_object() && j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
}

// The steps of a normalizer, pre-tokenizer or decoder: a Sequence's list (under `list`), none for
// null, else the one step.
std::vector<nlohmann::json> Steps(const nlohmann::json& j, const char* list) {
  if (j.is_null()) return {};
  if (StringOf(j, "type") == "Sequence" && j.contains(list) && j[list].is_array()) {
    return j[list].get<std::vector<nlohmann::json>>();
  }
  return {j};
}

// {"type": "Replace", "pattern": {"String": from}, "content": to}
bool IsReplace(const nlohmann::json& s, std::string_view from, std::string_view to) {
  return StringOf(s, "type") == "Replace" && s.contains("pattern") &&
         StringOf(s["pattern"], "String") == from && s["pattern"].size() == 1 &&
         StringOf(s, "content") == to;
}

// Whether tokenizer.json is SentencePiece-style rather than byte-level: byte fallback, a space
// replaced by U+2581, or a Metaspace pre-tokenizer. SentencePieceBpeMetadata then checks it all.
bool IsSentencePieceStyle(const nlohmann::json& tj) {
  if (!tj.is_object() || !tj.contains("model")) return false;
  if (BoolOf(tj["model"], "byte_fallback", false)) return true;
  for (const auto& s : Steps(tj.value("normalizer", nlohmann::json()), "normalizers")) {
    if (IsReplace(s, " ", kMeta)) return true;
  }
  for (const auto& s : Steps(tj.value("pre_tokenizer", nlohmann::json()), "pretokenizers")) {
    if (StringOf(s, "type") == "Metaspace") return true;
  }
  return false;
}

// add_space_prefix for the normalizer and pre-tokenizer of a SentencePiece-style tokenizer.json:
//  - normalizer Replace(' ' -> U+2581), pre-tokenizer none or Split on ' ' (which finds no space
//    left): false, as Gemma's;
//  - normalizer Prepend(U+2581) and that Replace: true (Prepend, like llama.cpp's space prefix,
//    adds U+2581 before every stretch of text, also one that starts with a space or follows an
//    added token);
//  - no normalizer, pre-tokenizer Metaspace(U+2581, prepend_scheme never, split false): false.
// Throws for anything else, Metaspace with a prepend scheme included: it adds U+2581 only where
// the text does not start with one (and, for `first`, only at the start of the input), which
// llama.cpp's space prefix cannot express.
bool AddSpacePrefix(const nlohmann::json& tj, const std::filesystem::path& path) {
  const nlohmann::json normalizer = tj.value("normalizer", nlohmann::json());
  const nlohmann::json pre = tj.value("pre_tokenizer", nlohmann::json());
  const std::vector<nlohmann::json> norm = Steps(normalizer, "normalizers");
  const std::vector<nlohmann::json> pres = Steps(pre, "pretokenizers");
  bool replace = false, prepend = false;
  for (const auto& s : norm) {
    if (IsReplace(s, " ", kMeta) && !replace) {
      replace = true;
    } else if (StringOf(s, "type") == "Prepend" && StringOf(s, "prepend") == kMeta && !prepend) {
      prepend = true;
    } else {
      throw FormatError(fmt::format(
          "{}: normalizer step {} has no llama.cpp equivalent (known: Replace ' ' with U+2581, "
          "Prepend U+2581)",
          path.string(), s.dump().substr(0, 200)));
    }
  }
  if (replace) {
    for (const auto& s : pres) {
      QTOOL_CHECK(StringOf(s, "type") == "Split" && s.contains("pattern") &&
                      StringOf(s["pattern"], "String") == " " && !BoolOf(s, "invert", false),
                  FormatError,
                  "{}: pre-tokenizer step {} after the U+2581 normalizer has no llama.cpp "
                  "equivalent (known: none, Split on ' ')",
                  path.string(), s.dump().substr(0, 200));
    }
    return prepend;
  }
  QTOOL_CHECK(!prepend, FormatError,
              "{}: the normalizer prepends U+2581 but does not replace spaces with it",
              path.string());
  QTOOL_CHECK(pres.size() == 1 && StringOf(pres[0], "type") == "Metaspace", FormatError,
              "{}: pre-tokenizer {} with this byte-fallback BPE has no llama.cpp equivalent "
              "(known: the U+2581 normalizer, or Metaspace)",
              path.string(), pre.dump().substr(0, 200));
  const nlohmann::json& ms = pres[0];
  const std::string scheme = ms.contains("prepend_scheme")
                                 ? StringOf(ms, "prepend_scheme")
                                 : (BoolOf(ms, "add_prefix_space", true) ? "always" : "never");
  QTOOL_CHECK(
      StringOf(ms, "replacement") == kMeta && !BoolOf(ms, "split", true) && scheme == "never",
      FormatError,
      "{}: Metaspace pre-tokenizer {} has no llama.cpp equivalent (known: replacement "
      "U+2581, split false, prepend_scheme never; a prepend scheme adds U+2581 only "
      "where the text does not already start with a space, llama.cpp's add_space_prefix "
      "always does)",
      path.string(), ms.dump().substr(0, 200));
  return false;
}

// Checks that the decoder undoes the encoding: U+2581 back to spaces, byte tokens back to bytes,
// and the space prefix stripped exactly when one was added.
void CheckSentencePieceDecoder(const nlohmann::json& tj, bool prefix,
                               const std::filesystem::path& path) {
  const nlohmann::json decoder = tj.value("decoder", nlohmann::json());
  bool spaces = false, bytes = false, strip = false;
  for (const auto& s : Steps(decoder, "decoders")) {
    const std::string type = StringOf(s, "type");
    if (IsReplace(s, kMeta, " ")) {
      spaces = true;
    } else if (type == "Metaspace" && StringOf(s, "replacement") == kMeta) {
      spaces = true;
      const std::string scheme = s.contains("prepend_scheme")
                                     ? StringOf(s, "prepend_scheme")
                                     : (BoolOf(s, "add_prefix_space", true) ? "always" : "never");
      strip |= scheme != "never";
    } else if (type == "ByteFallback") {
      bytes = true;
    } else if (type == "Strip" && StringOf(s, "content") == " " && s.contains("start") &&
               s["start"] == 1 && s.contains("stop") && s["stop"] == 0) {
      strip = true;
    } else if (type != "Fuse") {
      throw FormatError(fmt::format(
          "{}: decoder step {} has no llama.cpp equivalent (known: Replace U+2581 with ' ', "
          "Metaspace, ByteFallback, Fuse, Strip one leading space)",
          path.string(), s.dump().substr(0, 200)));
    }
  }
  QTOOL_CHECK(spaces && bytes && strip == prefix, FormatError,
              "{}: decoder {} does not undo the encoding as llama.cpp does (U+2581 to spaces, "
              "byte fallback, the leading space stripped {})",
              path.string(), decoder.dump().substr(0, 200),
              prefix ? "as one is added" : "never, as none is added");
}

// add_bos_token/add_eos_token from a TemplateProcessing post-processor ([BOS] $A [EOS]); none
// for no post-processor.
std::map<std::string, bool> TemplateFlags(const nlohmann::json& tj, int64_t bos, int64_t eos,
                                          const std::filesystem::path& path) {
  const nlohmann::json post = tj.value("post_processor", nlohmann::json());
  if (post.is_null()) return {{"add_bos_token", false}, {"add_eos_token", false}};
  auto special_id = [&](const nlohmann::json& item) -> int64_t {
    if (!item.is_object() || !item.contains("SpecialToken")) return -1;
    const std::string name = StringOf(item["SpecialToken"], "id");
    if (!post.contains("special_tokens")) return -2;
    const nlohmann::json& st = post["special_tokens"];
    if (!st.is_object() || !st.contains(name) || !st[name].contains("ids") ||
        st[name]["ids"].size() != 1 || !st[name]["ids"][0].is_number_integer()) {
      return -2;
    }
    return st[name]["ids"][0].get<int64_t>();
  };
  bool ok = StringOf(post, "type") == "TemplateProcessing" && post.contains("single") &&
            post["single"].is_array();
  std::map<std::string, bool> flags = {{"add_bos_token", false}, {"add_eos_token", false}};
  if (ok) {
    const nlohmann::json& single = post["single"];
    size_t n_seq = 0;
    for (size_t i = 0; i < single.size(); ++i) {
      if (single[i].is_object() && single[i].contains("Sequence")) {
        ++n_seq;
        continue;
      }
      const int64_t id = special_id(single[i]);
      if (i == 0 && id == bos && bos >= 0) {
        flags["add_bos_token"] = true;
      } else if (i + 1 == single.size() && id == eos && eos >= 0) {
        flags["add_eos_token"] = true;
      } else {
        ok = false;
      }
    }
    ok &= n_seq == 1;
  }
  QTOOL_CHECK(ok, FormatError,
              "{}: post-processor {} is not a template of BOS, the text and EOS that llama.cpp's "
              "add_bos/add_eos can express",
              path.string(), post.dump().substr(0, 200));
  return flags;
}

// Bytes in the UTF-8 character that starts with `c`.
size_t Utf8Length(char c) {
  const auto u = static_cast<uint8_t>(c);
  return u < 0x80 ? 1 : (u >> 5) == 6 ? 2 : (u >> 4) == 14 ? 3 : 4;
}

// Whether `s` is one character repeated (a run).
bool IsRun(std::string_view s) {
  const size_t n = Utf8Length(s[0]);
  if (s.size() % n != 0) return false;
  for (size_t i = n; i < s.size(); i += n) {
    if (s.substr(i, n) != s.substr(0, n)) return false;
  }
  return true;
}

// Refuses added tokens where llama.cpp's matching (each token in turn, the longest first) and
// Hugging Face's (the leftmost-longest one) can split a text differently: one token ends with the
// start of another (runs of one character excepted).
void CheckAddedTokenOverlaps(const std::vector<std::string>& added,
                             const std::filesystem::path& path) {
  std::unordered_map<std::string_view, std::vector<size_t>> starts;  // proper prefix -> tokens
  for (size_t i = 0; i < added.size(); ++i) {
    const std::string_view t = added[i];
    for (size_t k = Utf8Length(t[0]); k < t.size(); k += Utf8Length(t[k])) {
      starts[t.substr(0, k)].push_back(i);
    }
  }
  for (size_t i = 0; i < added.size(); ++i) {
    const std::string_view a = added[i];
    for (size_t k = Utf8Length(a[0]); k < a.size(); k += Utf8Length(a[k])) {
      const auto it = starts.find(a.substr(k));
      if (it == starts.end()) continue;
      for (const size_t j : it->second) {
        const std::string_view b = added[j];
        const bool runs =
            IsRun(a) && IsRun(b) && a.substr(0, Utf8Length(a[0])) == b.substr(0, Utf8Length(b[0]));
        QTOOL_CHECK(j == i || runs, FormatError,
                    "{}: added tokens '{}' and '{}' overlap ('{}' ends the first and starts the "
                    "second): llama.cpp and the tokenizer.json can match them differently",
                    path.string(), a, b, a.substr(k));
      }
    }
  }
}

KV SentencePieceBpeMetadata(const std::filesystem::path& dir, const nlohmann::json& tj,
                            int64_t vocab_size, const nlohmann::json& config) {
  const std::filesystem::path path = dir / "tokenizer.json";
  const std::string file = path.string();
  const nlohmann::json& m = tj["model"];
  QTOOL_CHECK(StringOf(m, "type") == "BPE" && m.contains("vocab") && m["vocab"].is_object() &&
                  m.contains("merges") && m["merges"].is_array(),
              FormatError, "{}: not a BPE tokenizer with vocab and merges", file);
  QTOOL_CHECK(BoolOf(m, "byte_fallback", false), FormatError,
              "{}: BPE without byte_fallback maps unknown characters to the unknown token, "
              "llama.cpp's SentencePiece tokenizer to byte tokens",
              file);
  for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"}) {
    QTOOL_CHECK(!m.contains(key) || m[key].is_null() || m[key] == "", FormatError,
                "{}: BPE {} {} has no llama.cpp equivalent", file, key, m[key].dump());
  }
  QTOOL_CHECK(!BoolOf(m, "ignore_merges", false), FormatError,
              "{}: BPE ignore_merges (a word that is a token is taken whole) has no llama.cpp "
              "equivalent",
              file);
  const bool prefix = AddSpacePrefix(tj, path);
  CheckSentencePieceDecoder(tj, prefix, path);

  // The vocabulary, then the added tokens (ids the vocabulary may hold already).
  std::vector<std::string> text(static_cast<size_t>(vocab_size));
  std::vector<bool> present(static_cast<size_t>(vocab_size), false);
  std::vector<int32_t> type(static_cast<size_t>(vocab_size), kUnused);
  std::unordered_map<std::string, int64_t> id_of;
  auto put = [&](const std::string& s, const nlohmann::json& id_json, int32_t t) {
    QTOOL_CHECK(id_json.is_number_integer(), FormatError, "{}: token '{}' has id {}", file, s,
                id_json.dump());
    const int64_t id = id_json.get<int64_t>();
    QTOOL_CHECK(id >= 0 && id < vocab_size, FormatError,
                "{}: token '{}' has id {}, outside the model's vocab_size {}", file, s, id,
                vocab_size);
    QTOOL_CHECK(!present[id] || text[id] == s, FormatError, "{}: id {} is both '{}' and '{}'", file,
                id, text[id], s);
    const auto [it, fresh] = id_of.emplace(s, id);
    QTOOL_CHECK(it->second == id, FormatError, "{}: token '{}' has ids {} and {}", file, s,
                it->second, id);
    QTOOL_CHECK(!s.empty(), FormatError, "{}: token {} is empty", file, id);
    text[id] = s;
    present[id] = true;
    type[id] = t;
  };
  for (const auto& [s, id] : m["vocab"].items()) put(s, id, kNormal);
  std::vector<std::string> added;
  if (tj.contains("added_tokens")) {
    for (const auto& t : tj["added_tokens"]) {
      const std::string content = StringOf(t, "content");
      QTOOL_CHECK(t.contains("id"), FormatError, "{}: added token '{}' has no id", file, content);
      for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
        QTOOL_CHECK(!BoolOf(t, flag, false), FormatError,
                    "{}: added token '{}' has {} set, which llama.cpp does not apply", file,
                    content, flag);
      }
      // A normalized added token is matched in the normalized text: where that differs from the
      // raw text llama.cpp matches in (spaces, the prepended U+2581), the two can disagree.
      const bool normalized = BoolOf(t, "normalized", false);
      QTOOL_CHECK(!normalized || (!prefix && content.find(' ') == std::string::npos &&
                                  content.find(kMeta) == std::string::npos),
                  FormatError,
                  "{}: added token '{}' is matched in the normalized text, which llama.cpp does "
                  "not see",
                  file, content);
      put(content, t["id"], BoolOf(t, "special", false) ? kControl : kUserDefined);
      added.push_back(content);
    }
  }
  CheckAddedTokenOverlaps(added, path);
  for (int b = 0; b < 256; ++b) {
    const auto it = id_of.find(fmt::format("<0x{:02X}>", b));
    QTOOL_CHECK(it != id_of.end(), FormatError,
                "{}: byte token <0x{:02X}> is missing, which byte fallback needs", file, b);
    if (type[it->second] == kNormal) type[it->second] = kByte;
  }
  int64_t unk = -1;
  if (const std::string u = StringOf(m, "unk_token"); !u.empty()) {
    const auto it = id_of.find(u);
    QTOOL_CHECK(it != id_of.end(), FormatError, "{}: unk_token '{}' is not a token", file, u);
    unk = it->second;
    if (type[unk] == kNormal) type[unk] = kUnknown;
  }

  // Merge ranks: the first merge that makes each token, and every merged pair.
  const nlohmann::json& merges = m["merges"];
  QTOOL_CHECK(merges.size() < (size_t{1} << 24), FormatError,
              "{}: {} merges; ranks from 2^24 on are not exact as float32 scores", file,
              merges.size());
  std::vector<int64_t> first_rank(static_cast<size_t>(vocab_size), -1);
  std::unordered_set<uint64_t> pairs;
  auto pair_key = [](int64_t a, int64_t b) {
    return static_cast<uint64_t>(a) << 32 | static_cast<uint64_t>(b);
  };
  for (size_t r = 0; r < merges.size(); ++r) {
    const nlohmann::json& mj = merges[r];
    std::string a, b;
    if (mj.is_string()) {  // "a b"
      const std::string s = mj.get<std::string>();
      const size_t sp = s.find(' ');
      QTOOL_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, FormatError,
                  "{}: merge {} '{}' is not two tokens", file, r, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      QTOOL_CHECK(mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string(),
                  FormatError, "{}: merge {} {} is not two tokens", file, r,
                  mj.dump().substr(0, 100));
      a = mj[0].get<std::string>();
      b = mj[1].get<std::string>();
    }
    const auto ia = id_of.find(a), ib = id_of.find(b), it = id_of.find(a + b);
    QTOOL_CHECK(ia != id_of.end() && ib != id_of.end() && it != id_of.end(), FormatError,
                "{}: merge {} ('{}', '{}'): a piece or the merged token is not in the vocabulary",
                file, r, a, b);
    pairs.insert(pair_key(ia->second, ib->second));
    if (first_rank[it->second] < 0) first_rank[it->second] = static_cast<int64_t>(r);
  }

  // Every pair llama.cpp can join is a merge (see above). Symbols are tokens or characters.
  std::unordered_map<std::string_view, int64_t> view_id;
  for (const auto& [s, id] : id_of) view_id.emplace(text[id], id);
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (!present[id]) continue;
    const std::string_view t = text[id];
    // Both take an added token without spaces out of the text before BPE (llama.cpp a control
    // token only when it parses special tokens, as Hugging Face always does): no pair forms it.
    if ((type[id] == kControl || type[id] == kUserDefined) && t.find(' ') == t.npos &&
        t.find(kMeta) == t.npos) {
      continue;
    }
    for (size_t k = Utf8Length(t[0]); k < t.size(); k += Utf8Length(t[k])) {
      const std::string_view a = t.substr(0, k), b = t.substr(k);
      const auto ia = view_id.find(a), ib = view_id.find(b);
      const bool a_symbol = ia != view_id.end() || a.size() == Utf8Length(a[0]);
      const bool b_symbol = ib != view_id.end() || b.size() == Utf8Length(b[0]);
      if (!a_symbol || !b_symbol) continue;
      QTOOL_CHECK(ia != view_id.end() && ib != view_id.end() &&
                      pairs.count(pair_key(ia->second, ib->second)) > 0,
                  FormatError,
                  "{}: token '{}' (id {}) is '{}' + '{}', which no merge joins: llama.cpp's "
                  "SentencePiece tokenizer would join them",
                  file, t, id, a, b);
    }
  }

  const float unmerged = -static_cast<float>(merges.size());
  std::vector<Scalar> tokens, scores, types;
  for (int64_t i = 0; i < vocab_size; ++i) {
    tokens.emplace_back(present[i] ? text[i] : fmt::format("[PAD{}]", i));
    scores.emplace_back(first_rank[i] >= 0 ? -static_cast<float>(first_rank[i]) : unmerged);
    types.emplace_back(type[i]);
  }
  KV kv;
  kv.emplace_back("tokenizer.ggml.model", std::string("llama"));
  kv.emplace_back("tokenizer.ggml.tokens", Value::Array(ValueType::kString, std::move(tokens)));
  kv.emplace_back("tokenizer.ggml.scores", Value::Array(ValueType::kF32, std::move(scores)));
  kv.emplace_back("tokenizer.ggml.token_type", Value::Array(ValueType::kI32, std::move(types)));
  kv.emplace_back("tokenizer.ggml.add_space_prefix", prefix);
  kv.emplace_back("tokenizer.ggml.remove_extra_whitespaces", false);
  auto find_id = [&id_of](const std::string& s) -> std::optional<int64_t> {
    const auto it = id_of.find(s);
    return it == id_of.end() ? std::nullopt : std::optional<int64_t>(it->second);
  };
  // BOS/EOS for the template's flags: tokenizer_config.json's, else config.json's ids.
  int64_t bos = -1, eos = -1;
  nlohmann::json tcfg = nlohmann::json::object();
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    tcfg = ReadJson(dir / "tokenizer_config.json");
  }
  for (const auto& [name, out] : {std::pair<const char*, int64_t*>{"bos", &bos}, {"eos", &eos}}) {
    const std::string id_key = fmt::format("{}_token_id", name);
    if (config.contains(id_key) && config[id_key].is_number_integer()) {
      *out = config[id_key].get<int64_t>();
    }
    if (const auto content = TokenContent(tcfg, fmt::format("{}_token", name).c_str())) {
      if (const auto id = find_id(*content)) *out = *id;
    }
  }
  std::map<std::string, int64_t> ids;
  if (unk >= 0) ids["unk_token_id"] = unk;
  AddSpecialTokens(dir, config, find_id, ids, TemplateFlags(tj, bos, eos, path), kv);
  return kv;
}

}  // namespace

KV TokenizerMetadata(const std::filesystem::path& dir, int64_t vocab_size,
                     const nlohmann::json& config) {
  if (std::filesystem::exists(dir / "tokenizer.model")) {
    return SentencePieceMetadata(dir, vocab_size, config);
  }
  if (std::filesystem::exists(dir / "tokenizer.json")) {
    const nlohmann::json tj = ReadJson(dir / "tokenizer.json");
    return IsSentencePieceStyle(tj) ? SentencePieceBpeMetadata(dir, tj, vocab_size, config)
                                    : BpeMetadata(dir, tj, vocab_size, config);
  }
  return {};
}

}  // namespace qtool::gguf
