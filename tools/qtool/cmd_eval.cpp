// qtool eval MODEL --text FILE [--ctx N] [--ref BASE]: perplexity, and divergence from a base
// model.
#include <fmt/format.h>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/checked.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/model/eval.hpp"
#include "qtool/model/tokenizer.hpp"
#include "staged_output.hpp"
#include "terminal.hpp"

namespace qtool::cli {
namespace {

struct EvalArgs {
  std::string model, ref, text, tokens, tokenizer, json;
  int64_t ctx = 0, batch_tokens = 4096, weight_cache_mb = -1;
  int threads = 0;
};

void PrintReport(const EvalArgs& a, const EvalReport& r) {
  fmt::print("model     {}\n", a.model);
  fmt::print("text      {}: {} predicted tokens, {} windows of {} (BOS + {})\n",
             a.text.empty() ? a.tokens : a.text, r.tokens, r.windows, r.ctx, r.ctx - 1);
  fmt::print("ppl       {:.6f} (mean NLL {:.6f})\n", r.ppl, r.mean_nll);
  if (r.kl) {
    fmt::print("base      {}: ppl {:.6f}, delta ppl {:+.6f} ({:+.3f}%)\n", a.ref, r.kl->base_ppl,
               r.kl->delta_ppl, 100.0 * r.kl->delta_ppl / r.kl->base_ppl);
    fmt::print("KL        mean {:.6g}, median {:.6g}, p99 {:.6g} nats/token\n", r.kl->kl_mean,
               r.kl->kl_median, r.kl->kl_p99);
    fmt::print("top-1     {:.3f}% agreement with the base\n", 100.0 * r.kl->top1_agreement);
  }
  fmt::print("time      {:.3f} s, {:.1f} tokens/s\n", r.seconds,
             r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0.0);
}

}  // namespace

void RegisterEval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Perplexity of a model, and KL from a base model");
  cmd->add_option("model", a->model,
                  "Model directory (plain or quantised by qtool), or a GGUF file (decoded with its "
                  "tokenizer rebuilt from the metadata)")
      ->required();
  auto* text = cmd->add_option("--text", a->text, "Evaluation text, tokenised by the model");
  auto* tokens = cmd->add_option("--tokens", a->tokens,
                                 "Token-id file instead of text (one id per line, or int32)");
  text->excludes(tokens);
  cmd->add_option(
      "--tokenizer", a->tokenizer,
      "Tokenizer file: tokenizer.model or tokenizer.json (default: MODEL/tokenizer.model, else "
      "MODEL/tokenizer.json)");
  cmd->add_option("--ctx", a->ctx, "Window length including BOS (default: the model's context)");
  cmd->add_option(
      "--ref", a->ref,
      "Base model (directory or GGUF file): also report KL divergence, top-1 agreement, dPPL");
  cmd->add_option("--batch-tokens", a->batch_tokens, "Tokens run together per pass")
      ->capture_default_str();
  cmd->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_option("--weight-cache-mb", a->weight_cache_mb,
                  "Decoded block weights kept in memory, in MB (-1: half of RAM; 0: stream every "
                  "block from the file on every pass, for models larger than RAM)")
      ->capture_default_str();
  cmd->add_option("--json", a->json, "Also write the report as JSON to this file (- for stdout)");
  cmd->callback([a]() {
    QTOOL_CHECK(!a->text.empty() || !a->tokens.empty(), OptionError,
                "give the evaluation input with --text FILE or --tokens FILE");
    QTOOL_CHECK(a->threads >= 0, OptionError, "--threads must not be negative");
    QTOOL_CHECK(a->batch_tokens >= 1, OptionError, "--batch-tokens must be at least 1");
    QTOOL_CHECK(a->weight_cache_mb >= -1, OptionError, "--weight-cache-mb must be -1 or more");
    const auto cache_bytes = CheckedMul<int64_t>(a->weight_cache_mb, 1000 * 1000);
    QTOOL_CHECK(cache_bytes.has_value(), OptionError, "--weight-cache-mb {} is too large",
                a->weight_cache_mb);
    const ModelOptions mopts{.threads = a->threads,
                             .weight_cache_bytes = a->weight_cache_mb < 0 ? -1 : *cache_bytes};
    // The text and tokenizer readers would block on a FIFO: only regular files are given to them.
    if (!a->text.empty()) CheckRegularFile(a->text);
    if (!a->tokenizer.empty()) CheckRegularFile(a->tokenizer);
    const ModelInput input(a->model);
    const Model model(input.path(), mopts);
    CheckReportPathFor(model.checkpoint(), a->json);
    const std::vector<int32_t> ids =
        a->tokens.empty()
            ? EncodeTextFile(LoadModelTokenizer(model.checkpoint().dir(), a->tokenizer), a->text)
            : ReadTokenIds(a->tokens);
    if (!a->tokens.empty()) {
      const int64_t vocab = model.config().vocab_size;
      for (size_t i = 0; i < ids.size(); ++i) {
        QTOOL_CHECK(ids[i] >= 0 && ids[i] < vocab, FormatError,
                    "{}: token {} is {}, outside the model's vocabulary 0..{}", a->tokens, i,
                    ids[i], vocab - 1);
      }
    }
    std::unique_ptr<Model> base;
    std::unique_ptr<ModelInput> base_input;
    if (!a->ref.empty()) {
      base_input = std::make_unique<ModelInput>(a->ref);
      base = std::make_unique<Model>(base_input->path(), mopts);
      CheckReportPathFor(base->checkpoint(), a->json);
    }
    Progress progress("eval");
    const EvalReport r = Evaluate(model, ids, {.ctx = a->ctx, .batch_tokens = a->batch_tokens},
                                  base.get(), [&](int64_t done, int64_t total) {
                                    progress.Update(static_cast<size_t>(done),
                                                    static_cast<size_t>(total), "windows");
                                  });
    progress.Done();
    if (a->json != "-") PrintReport(*a, r);
    if (!a->json.empty()) {
      nlohmann::json j = r.ToJson();
      j["model"] = a->model;
      if (!a->ref.empty()) j["ref"] = a->ref;
      WriteJsonReport(a->json, j);
    }
  });
}

}  // namespace qtool::cli
