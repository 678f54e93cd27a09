// qtool dequantize Q -o OUT: a plain float checkpoint any tool can load.
#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/io/quantized.hpp"
#include "staged_output.hpp"
#include "terminal.hpp"

namespace qtool::cli {

void RegisterDequantize(CLI::App& app) {
  struct Args {
    std::string input, output;
    int threads = 0;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "dequantize",
      "Decode a quantised checkpoint (qtool, GPTQ, AWQ, compressed-tensors, bitsandbytes, FP8) to "
      "plain floats in the original dtype");
  cmd->add_option("input", a->input, "Quantised checkpoint (file or directory)")->required();
  cmd->add_option("-o,--output", a->output, "Output model directory")->required();
  cmd->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--force", a->force, "Replace the output directory if it exists");
  cmd->callback([a]() {
    if (IsGgufFile(a->input)) return DequantizeGguf(a->input, a->output, a->force);
    const Checkpoint in = Checkpoint::Open(a->input);
    StagedRun run(in, a->output, "", a->force);
    Progress progress("dequantize");
    DequantizeCheckpoint(in, run.output(), /*overwrite=*/false, a->threads,
                         [&](size_t done, size_t total, const std::string& name) {
                           progress.Update(done, total, name);
                         });
    progress.Done();
    run.Commit({});
  });
}

}  // namespace qtool::cli
