// The tokenizer implementations behind qtool::Tokenizer: SentencePiece `tokenizer.model` files
// (tokenizer.cpp) and Hugging Face `tokenizer.json` files (tokenizer_json.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qtool::tokenizer {

class Backend {
 public:
  virtual ~Backend() = default;
  /// Ids of `text`, no special tokens added (added tokens written in the text are matched).
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  /// Text of `ids`; special tokens are left out when `skip_special` is set.
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const = 0;
  virtual int64_t vocab_size() const = 0;
  /// The id of a token's text, or -1.
  virtual int32_t TokenId(std::string_view token) const = 0;

  /// Ids the tokenizer puts before and after a sequence when special tokens are added.
  std::vector<int32_t> prefix, suffix;
};

/// A tokenizer.json file. Throws FormatError naming the file and the key of a component it does
/// not implement or a malformed one.
std::unique_ptr<Backend> LoadJson(const std::filesystem::path& path);

}  // namespace qtool::tokenizer
