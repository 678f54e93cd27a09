// qtool tokenize MODEL (--text FILE | --lines FILE) [--special] [--json OUT]: the ids a model's
// tokenizer gives a text, and the text decoded back from them.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "commands.hpp"
#include "qtool/core/error.hpp"
#include "qtool/model/tokenizer.hpp"
#include "staged_output.hpp"
#include "terminal.hpp"

namespace qtool::cli {
namespace {

struct TokenizeArgs {
  std::string model, tokenizer, text, lines, json;
  bool special = false;
};

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  QTOOL_CHECK(f.good(), IoError, "{}: cannot open the text file", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string IdsText(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

}  // namespace

void RegisterTokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Token ids of a text, and the text decoded back");
  cmd->add_option("model", a->model, "Model directory, or a tokenizer file (.json or .model)")
      ->required();
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Tokenizer file (default MODEL/tokenizer.model, else MODEL/tokenizer.json)");
  auto* text = cmd->add_option("--text", a->text, "Text file, encoded as a whole");
  auto* lines =
      cmd->add_option("--lines", a->lines, "JSON Lines file of strings, each encoded on its own");
  text->excludes(lines);
  cmd->add_flag("--special", a->special, "Add the tokenizer's BOS/EOS around each text");
  cmd->add_option("--json", a->json,
                  "Write {\"ids\", \"decoded\"} per text as JSON to this file (- for stdout)");
  cmd->callback([a]() {
    QTOOL_CHECK(!a->text.empty() || !a->lines.empty(), OptionError,
                "give the input with --text FILE or --lines FILE");
    const Tokenizer tok = std::filesystem::is_regular_file(a->model) && a->tokenizer.empty()
                              ? Tokenizer::Load(a->model)
                              : LoadModelTokenizer(a->model, a->tokenizer);
    std::vector<std::string> texts;
    if (!a->text.empty()) {
      texts.push_back(ReadAll(a->text));
    } else {
      std::istringstream in(ReadAll(a->lines));
      std::string line;
      for (size_t n = 1; std::getline(in, line); ++n) {
        if (line.empty()) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          throw FormatError(fmt::format("{}: line {} is not JSON ({})", a->lines, n, e.what()));
        }
        QTOOL_CHECK(j.is_string(), FormatError, "{}: line {} is not a JSON string", a->lines, n);
        texts.push_back(j.get<std::string>());
      }
    }
    nlohmann::json out = nlohmann::json::array();
    for (const std::string& t : texts) {
      const std::vector<int32_t> ids = tok.Encode(t, a->special);
      if (a->json.empty()) {
        fmt::print("{}\n", IdsText(ids));
      } else {
        // Invalid UTF-8 cannot come out of Decode (it writes U+FFFD), so the dump cannot throw.
        out.push_back({{"ids", ids}, {"decoded", tok.Decode(ids)}});
      }
    }
    if (!a->json.empty()) {
      WriteJsonReport(a->json, a->text.empty() ? out : out[0]);
    }
  });
}

}  // namespace qtool::cli
