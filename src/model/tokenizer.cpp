#include "qtool/model/tokenizer.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/core/mapped_file.hpp"
#include "tokenizer_backend.hpp"

namespace qtool {

namespace {

class SentencePieceBackend : public tokenizer::Backend {
 public:
  sentencepiece::SentencePieceProcessor sp;

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = sp.Encode(text, &ids);
    QTOOL_CHECK(status.ok(), FormatError, "tokenizer: {}", status.ToString());
    return {ids.begin(), ids.end()};
  }
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::vector<int> kept;
    for (const int32_t id : ids) {
      QTOOL_CHECK(id >= 0 && id < sp.GetPieceSize(), OptionError,
                  "token id {} is not in the tokenizer's vocabulary", id);
      if (!(skip_special && sp.IsControl(id))) kept.push_back(id);
    }
    std::string text;
    const auto status = sp.Decode(kept, &text);
    QTOOL_CHECK(status.ok(), FormatError, "tokenizer: {}", status.ToString());
    return text;
  }
  int64_t vocab_size() const override { return sp.GetPieceSize(); }
  int32_t TokenId(std::string_view token) const override {
    const int id = sp.PieceToId(token);
    return id == sp.unk_id() && sp.IdToPiece(id) != token ? -1 : id;
  }
};

// A token named in tokenizer_config.json: a string or an object with "content".
std::string ConfigToken(const nlohmann::json& v, const std::string& file, const char* key) {
  if (v.is_string()) return v.get<std::string>();
  QTOOL_CHECK(v.is_object() && v.contains("content") && v["content"].is_string(), FormatError,
              "{}: \"{}\" must be a string or an object with \"content\"", file, key);
  return v["content"].get<std::string>();
}

// add_bos_token / add_eos_token of tokenizer_config.json, when present, decide what is added
// around a text (as transformers' tokenizers do), replacing the tokenizer file's own choice.
void ApplyTokenizerConfig(const std::filesystem::path& config, tokenizer::Backend& b) {
  if (!std::filesystem::is_regular_file(config)) return;
  const nlohmann::json j = ReadJsonFile(config);
  QTOOL_CHECK(j.is_object(), FormatError, "{}: not a JSON object", config.string());
  for (const auto& [flag, token, dst] : {std::tuple{"add_bos_token", "bos_token", &b.prefix},
                                         std::tuple{"add_eos_token", "eos_token", &b.suffix}}) {
    if (!j.contains(flag) || j[flag].is_null()) continue;
    QTOOL_CHECK(j[flag].is_boolean(), FormatError, "{}: \"{}\" must be true or false",
                config.string(), flag);
    dst->clear();
    if (!j[flag].get<bool>()) continue;
    QTOOL_CHECK(j.contains(token) && !j[token].is_null(), FormatError,
                "{}: \"{}\" is true but there is no \"{}\"", config.string(), flag, token);
    const std::string t = ConfigToken(j[token], config.string(), token);
    const int32_t id = b.TokenId(t);
    QTOOL_CHECK(id >= 0, FormatError, "{}: \"{}\" \"{}\" is not a token of the tokenizer",
                config.string(), token, t);
    dst->push_back(id);
  }
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<tokenizer::Backend> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::Load(const std::filesystem::path& path) {
  QTOOL_CHECK(std::filesystem::is_regular_file(path), IoError, "{}: no such tokenizer file",
              path.string());
  std::unique_ptr<tokenizer::Backend> b;
  if (path.extension() == ".json") {
    b = tokenizer::LoadJson(path);
  } else {
    auto sp = std::make_unique<SentencePieceBackend>();
    const auto status = sp->sp.Load(path.string());
    QTOOL_CHECK(status.ok(), FormatError, "{}: not a SentencePiece model ({})", path.string(),
                status.ToString());
    // SentencePiece models of the Llama family are used with BOS first.
    if (sp->sp.bos_id() >= 0) sp->prefix = {sp->sp.bos_id()};
    b = std::move(sp);
  }
  ApplyTokenizerConfig(path.parent_path() / "tokenizer_config.json", *b);
  return Tokenizer(std::move(b));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids = impl_->Encode(text);
  if (add_special_tokens) {
    ids.insert(ids.begin(), impl_->prefix.begin(), impl_->prefix.end());
    ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  }
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return impl_->Decode(ids, skip_special_tokens);
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }
const std::vector<int32_t>& Tokenizer::special_prefix() const { return impl_->prefix; }
const std::vector<int32_t>& Tokenizer::special_suffix() const { return impl_->suffix; }

Tokenizer LoadModelTokenizer(const std::filesystem::path& model_dir,
                             const std::filesystem::path& path) {
  if (!path.empty()) return Tokenizer::Load(path);
  const std::filesystem::path sp = model_dir / "tokenizer.model";
  const std::filesystem::path hf = model_dir / "tokenizer.json";
  QTOOL_CHECK(std::filesystem::exists(sp) || std::filesystem::exists(hf), IoError,
              "{}: no tokenizer.model or tokenizer.json", model_dir.string());
  return Tokenizer::Load(std::filesystem::exists(sp) ? sp : hf);
}

std::vector<int32_t> EncodeTextFile(const Tokenizer& tokenizer, const std::filesystem::path& path) {
  return tokenizer.Encode(ReadRegularFile(path));
}

std::vector<int32_t> ReadTokenIds(const std::filesystem::path& path) {
  const MappedFile file(path);
  const std::span<const std::byte> bytes = file.bytes();
  const bool text = std::all_of(bytes.begin(), bytes.end(), [](std::byte b) {
    const char c = static_cast<char>(b);
    return (c >= '0' && c <= '9') || c == '-' || c == ' ' || c == '\n' || c == '\r' || c == '\t';
  });
  std::vector<int32_t> ids;
  if (!text) {
    QTOOL_CHECK(bytes.size() % 4 == 0, FormatError,
                "{}: {} bytes is not a whole number of int32 token ids", path.string(),
                bytes.size());
    ids.resize(bytes.size() / 4);
    std::memcpy(ids.data(), bytes.data(), bytes.size());
    return ids;
  }
  std::istringstream in(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    QTOOL_CHECK(used == word.size() && v >= INT32_MIN && v <= INT32_MAX, FormatError,
                "{}: \"{}\" (token {}) is not a 32-bit integer", path.string(), word, ids.size());
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

}  // namespace qtool
