#include <sentencepiece_processor.h>

#include <fstream>
#include <map>
#include <sstream>

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
void AddSpecialTokens(const std::filesystem::path& dir, const nlohmann::json& config,
                      const std::function<std::optional<int64_t>(const std::string&)>& id_of,
                      std::map<std::string, int64_t> ids, KV& kv) {
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
    if (tcfg.contains(flag) && tcfg[flag].is_boolean()) {
      kv.emplace_back(fmt::format("tokenizer.ggml.{}", flag), tcfg[flag].get<bool>());
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
      ids, kv);
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

KV BpeMetadata(const std::filesystem::path& dir, int64_t vocab_size, const nlohmann::json& config) {
  const std::filesystem::path path = dir / "tokenizer.json";
  const nlohmann::json tj = ReadJson(path);
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
      {}, kv);
  return kv;
}

}  // namespace

KV TokenizerMetadata(const std::filesystem::path& dir, int64_t vocab_size,
                     const nlohmann::json& config) {
  if (std::filesystem::exists(dir / "tokenizer.model")) {
    return SentencePieceMetadata(dir, vocab_size, config);
  }
  if (std::filesystem::exists(dir / "tokenizer.json")) return BpeMetadata(dir, vocab_size, config);
  return {};
}

}  // namespace qtool::gguf
