#include "qtool/model/tokenizer.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>

#include "qtool/core/error.hpp"
#include "qtool/core/mapped_file.hpp"

namespace qtool {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::Load(const std::filesystem::path& path) {
  QTOOL_CHECK(std::filesystem::is_regular_file(path), IoError, "{}: no such tokenizer file",
              path.string());
  Tokenizer t;
  const auto status = t.impl_->sp.Load(path.string());
  QTOOL_CHECK(status.ok(), FormatError, "{}: not a SentencePiece model ({})", path.string(),
              status.ToString());
  return t;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = impl_->sp.Encode(text, &ids);
  QTOOL_CHECK(status.ok(), FormatError, "tokenizer: {}", status.ToString());
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string text;
  const auto status = impl_->sp.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  QTOOL_CHECK(status.ok(), FormatError, "tokenizer: {}", status.ToString());
  return text;
}

int64_t Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }

Tokenizer LoadModelTokenizer(const std::filesystem::path& model_dir,
                             const std::filesystem::path& path) {
  return Tokenizer::Load(path.empty() ? model_dir / "tokenizer.model" : path);
}

std::vector<int32_t> EncodeTextFile(const Tokenizer& tokenizer, const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  QTOOL_CHECK(f, IoError, "{}: cannot open the text file", path.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return tokenizer.Encode(ss.str());
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
