// Tokenizers and token-id files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qtool {

namespace tokenizer {
class Backend;
}

/// A tokenizer: a Hugging Face `tokenizer.json` (BPE, byte-level or SentencePiece-style, and
/// Unigram, with their normalizers, pre-tokenizers, added tokens and decoders; see
/// src/model/tokenizer_json.cpp) or a SentencePiece `tokenizer.model` (through the system's
/// libsentencepiece). `tokenizer_config.json` beside the file, when present, says whether BOS and
/// EOS are added (`add_bos_token`, `add_eos_token`); otherwise tokenizer.json's post-processor
/// template does, and a SentencePiece model adds BOS.
///
///   Tokenizer tok = Tokenizer::Load("model/tokenizer.json");
///   std::vector<int32_t> ids = tok.Encode("Once upon a time");  // no BOS/EOS added
class Tokenizer {
 public:
  /// A file named *.json is read as tokenizer.json, any other as a SentencePiece model. Throws
  /// IoError when the file is missing, FormatError when it is malformed or uses a component that
  /// is not implemented (naming the file and the key).
  static Tokenizer Load(const std::filesystem::path& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  /// Ids of `text`. Added and special tokens written in the text are matched; BOS/EOS are added
  /// only with `add_special_tokens`. Throws FormatError when the text is not valid UTF-8.
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = false) const;
  /// Text of `ids`, special tokens left out with `skip_special_tokens`.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  /// Number of ids (the model's vocabulary and the added tokens).
  int64_t vocab_size() const;
  /// Ids put before and after a text by Encode(text, true): BOS, EOS or a template's tokens.
  const std::vector<int32_t>& special_prefix() const;
  const std::vector<int32_t>& special_suffix() const;

 private:
  explicit Tokenizer(std::unique_ptr<tokenizer::Backend> impl);
  std::unique_ptr<tokenizer::Backend> impl_;
};

/// `path` when given; else `model_dir`/tokenizer.model, or `model_dir`/tokenizer.json when there
/// is no tokenizer.model.
Tokenizer LoadModelTokenizer(const std::filesystem::path& model_dir,
                             const std::filesystem::path& path = {});

/// The whole text file encoded at once (no BOS/EOS added), as the reference perplexities are.
std::vector<int32_t> EncodeTextFile(const Tokenizer& tokenizer, const std::filesystem::path& path);

/// Calibration data as one token stream.
struct CalibrationData {
  std::vector<int32_t> tokens;
  int32_t bos = -1;       // put before each window: the tokenizer's BOS; -1: none
  std::string format;     // "text", "jsonl" or "token ids"
  int64_t documents = 0;  // texts read (JSONL lines; 1 for a text file)
};

/// Reads calibration data by the file's extension: `.jsonl` (one JSON object per line, each
/// line's "text" a document; the documents' tokens are concatenated), `.ids`, `.tokens` or `.bin`
/// (a token-id file, see ReadTokenIds), anything else plain UTF-8 text tokenised as a whole.
/// Text is tokenised with the model's tokenizer (LoadModelTokenizer) without special tokens; BOS
/// is the one that tokenizer adds (tokenizer_config.json's add_bos_token, else tokenizer.json's
/// template, else BOS for a SentencePiece model), or `config_bos` for a token-id file when the
/// model has no tokenizer. Throws FormatError naming the file and line of a malformed entry.
CalibrationData ReadCalibrationData(const std::filesystem::path& path,
                                    const std::filesystem::path& model_dir, int32_t config_bos);

/// Reads a token-id file: text with one integer per line (whitespace separated), or, when the file
/// holds anything but digits, signs and whitespace, little-endian int32 values. Throws FormatError
/// naming the file and the offending line or size.
std::vector<int32_t> ReadTokenIds(const std::filesystem::path& path);

}  // namespace qtool
