// Calibration data files: plain text, JSON Lines with a "text" field, or token ids.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/model/tokenizer.hpp"

namespace qtool {
namespace {

// Only a regular file is read (a FIFO is refused, never waited on); see core/input_file.hpp.
std::string ReadText(const std::filesystem::path& path) { return ReadRegularFile(path); }

// The single BOS id the tokenizer puts before a text, or -1.
int32_t TokenizerBos(const Tokenizer& tok, const std::filesystem::path& path) {
  const std::vector<int32_t>& prefix = tok.special_prefix();
  QTOOL_CHECK(prefix.size() <= 1, OptionError,
              "{}: the tokenizer puts {} tokens before a text; calibration windows take one BOS",
              path.string(), prefix.size());
  return prefix.empty() ? -1 : prefix[0];
}

}  // namespace

CalibrationData ReadCalibrationData(const std::filesystem::path& path,
                                    const std::filesystem::path& model_dir, int32_t config_bos) {
  const std::string ext = path.extension().string();
  CalibrationData d;
  if (ext == ".ids" || ext == ".tokens" || ext == ".bin") {
    d.format = "token ids";
    d.tokens = ReadTokenIds(path);
    d.documents = 1;
    const bool has_tokenizer = std::filesystem::exists(model_dir / "tokenizer.model") ||
                               std::filesystem::exists(model_dir / "tokenizer.json");
    d.bos = has_tokenizer ? TokenizerBos(LoadModelTokenizer(model_dir), path) : config_bos;
    return d;
  }
  const Tokenizer tok = LoadModelTokenizer(model_dir);
  d.bos = TokenizerBos(tok, path);
  const std::string text = ReadText(path);
  if (ext != ".jsonl") {
    d.format = "text";
    d.documents = 1;
    d.tokens = tok.Encode(text);
    return d;
  }
  d.format = "jsonl";
  std::istringstream in(text);
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(fmt::format("{}: line {} is not JSON ({})", path.string(), n, e.what()));
    }
    QTOOL_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(), FormatError,
                "{}: line {} has no string \"text\" field", path.string(), n);
    const std::vector<int32_t> ids = tok.Encode(j["text"].get<std::string>());
    d.tokens.insert(d.tokens.end(), ids.begin(), ids.end());
    ++d.documents;
  }
  QTOOL_CHECK(d.documents > 0, FormatError, "{}: no JSON lines", path.string());
  return d;
}

}  // namespace qtool
