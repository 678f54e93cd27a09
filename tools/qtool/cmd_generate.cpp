// qtool generate MODEL --prompt TEXT -n N: greedy continuation, a quick look at what a model says.
#include <fmt/format.h>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/model/model.hpp"
#include "qtool/model/tokenizer.hpp"
#include "staged_output.hpp"
#include "terminal.hpp"

namespace qtool::cli {
namespace {

struct GenerateArgs {
  std::string model, prompt, tokenizer, json;
  int64_t n = 64;
  int threads = 0;
};

}  // namespace

void RegisterGenerate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Continue a prompt greedily");
  cmd->add_option("model", a->model,
                  "Model directory (plain or quantised by qtool), or a GGUF file (decoded with its "
                  "tokenizer rebuilt from the metadata)")
      ->required();
  cmd->add_option("-p,--prompt", a->prompt, "Prompt text (empty: start from BOS alone)");
  cmd->add_option("-n", a->n, "Tokens to generate")->capture_default_str();
  cmd->add_option(
      "--tokenizer", a->tokenizer,
      "Tokenizer file: tokenizer.model or tokenizer.json (default: MODEL/tokenizer.model, else "
      "MODEL/tokenizer.json)");
  cmd->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_option("--json", a->json, "Also write the result as JSON to this file (- for stdout)");
  cmd->callback([a]() {
    QTOOL_CHECK(a->n >= 0, OptionError, "-n must not be negative");
    if (!a->tokenizer.empty()) CheckRegularFile(a->tokenizer);  // its reader would block on a FIFO
    const ModelInput input(a->model);
    const Model model(input.path(), {.threads = a->threads});
    CheckReportPathFor(model.checkpoint(), a->json);
    const Tokenizer tok = LoadModelTokenizer(model.checkpoint().dir(), a->tokenizer);
    std::vector<int32_t> prompt = {model.config().bos_token_id};
    const std::vector<int32_t> encoded = tok.Encode(a->prompt);
    prompt.insert(prompt.end(), encoded.begin(), encoded.end());
    const std::vector<int32_t> out =
        GenerateGreedy(model, prompt, a->n, model.config().eos_token_id);
    std::vector<int32_t> all(prompt.begin() + 1, prompt.end());
    all.insert(all.end(), out.begin(), out.end());
    const std::string text = tok.Decode(all);
    if (a->json != "-") fmt::print("{}\n", text);
    if (!a->json.empty()) {
      WriteJsonReport(a->json, {{"model", a->model},
                                {"prompt", a->prompt},
                                {"text", text},
                                {"completion", tok.Decode(out)},
                                {"tokens", out}});
    }
  });
}

}  // namespace qtool::cli
