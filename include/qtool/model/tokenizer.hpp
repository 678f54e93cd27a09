// Tokenizers and token-id files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qtool {

/// A SentencePiece tokenizer (`tokenizer.model`), through the system's libsentencepiece.
///
///   Tokenizer tok = Tokenizer::Load("model/tokenizer.model");
///   std::vector<int32_t> ids = tok.Encode("Once upon a time");  // no BOS/EOS added
class Tokenizer {
 public:
  /// Throws IoError when the file is missing, FormatError when it is not a SentencePiece model.
  static Tokenizer Load(const std::filesystem::path& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int32_t> Encode(std::string_view text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  int64_t vocab_size() const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// `path`, or `model_dir`/tokenizer.model when `path` is empty.
Tokenizer LoadModelTokenizer(const std::filesystem::path& model_dir,
                             const std::filesystem::path& path = {});

/// The whole text file encoded at once (no BOS/EOS added), as the reference perplexities are.
std::vector<int32_t> EncodeTextFile(const Tokenizer& tokenizer, const std::filesystem::path& path);

/// Reads a token-id file: text with one integer per line (whitespace separated), or, when the file
/// holds anything but digits, signs and whitespace, little-endian int32 values. Throws FormatError
/// naming the file and the offending line or size.
std::vector<int32_t> ReadTokenIds(const std::filesystem::path& path);

}  // namespace qtool
