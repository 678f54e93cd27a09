// qtool convert IN -o OUT --output-format qtool|gptq|awq|compressed-tensors|bnb: a quantised
// checkpoint (qtool's, or GPTQ, AWQ, compressed-tensors, bitsandbytes, FP8) written in the format
// of a serving stack, code for code (docs/EXPORT.md).
#include <fmt/format.h>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/export.hpp"
#include "terminal.hpp"

namespace qtool::cli {

void AddOutputFormatOptions(CLI::App* cmd, OutputFormatArgs& a) {
  cmd->add_option("--output-format", a.format,
                  "qtool, gptq, awq, compressed-tensors or bnb (docs/EXPORT.md); hf (the default) "
                  "for a GGUF input")
      ->capture_default_str();
  cmd->add_option("--gptq-format", a.gptq_format,
                  "GPTQ checkpoint_format: gptq (v1, zero-points stored minus one) or gptq_v2")
      ->capture_default_str();
}

void PrintExportReport(const ExportReport& r, const std::string& format) {
  fmt::print("converted {} quantised weights to {}, copied {} tensors\n", r.weights_converted,
             format, r.tensors_copied);
  fmt::print("size: {} -> {}, {:.3f} s\n", HumanBytes(static_cast<double>(r.bytes_in)),
             HumanBytes(static_cast<double>(r.bytes_out)), r.seconds);
  if (r.max_weight_change > 0) {
    fmt::print("weights moved onto {}'s grid ({}): largest relative change {:.3g}\n", format,
               format == "bnb" ? "LLM.int8 decodes with two f32 roundings" : "f16 scales",
               r.max_weight_change);
  }
}

ExportReport RunConvert(const std::string& input, const std::string& output,
                        const OutputFormatArgs& a, bool overwrite, bool quiet) {
  ExportOptions o;
  o.format = ParseExportFormat(a.format);
  o.gptq_checkpoint_format = a.gptq_format;
  o.overwrite = overwrite;
  const Checkpoint in = Checkpoint::Open(input);
  Progress progress("convert");
  const ExportReport r =
      ConvertCheckpoint(in, output, o, [&](size_t done, size_t total, const std::string& name) {
        if (!quiet) progress.Update(done, total, name);
      });
  progress.Done();
  if (!quiet) PrintExportReport(r, a.format);
  return r;
}

void RegisterConvert(CLI::App& app) {
  struct Args {
    std::string input, output;
    OutputFormatArgs format;
    bool force = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd =
      app.add_subcommand("convert",
                         "Write a quantised checkpoint as qtool, GPTQ, AWQ, compressed-tensors or "
                         "bitsandbytes, without going through float");
  cmd->add_option(
         "input", a->input,
         "Quantised checkpoint: qtool's, GPTQ, AWQ, compressed-tensors, bitsandbytes or FP8; or a "
         "GGUF file (written as a Hugging Face F32 checkpoint)")
      ->required();
  cmd->add_option("-o,--output", a->output, "Output model directory")->required();
  AddOutputFormatOptions(cmd, a->format);
  cmd->add_flag("--force", a->force, "Replace the output directory if it exists");
  cmd->add_flag("-q,--quiet", a->quiet, "Print no report");
  cmd->callback([a, cmd]() {
    if (IsGgufFile(a->input)) {
      // GGUF blocks carry fp16 block scales (and for the k-quants, scales of scales and
      // non-linear grids) that no output format stores code for code: the file becomes the Hugging
      // Face checkpoint in F32 that dequantize writes, with its tokenizer.
      QTOOL_CHECK(cmd->get_option("--output-format")->count() == 0 || a->format.format == "hf",
                  OptionError,
                  "{} is a GGUF file: convert writes it as a Hugging Face float checkpoint "
                  "(--output-format hf); its block grids have no exact {} equivalent (requantise "
                  "with qtool quantize {} instead)",
                  a->input, a->format.format, a->input);
      DequantizeGguf(a->input, a->output, a->force);
      if (!a->quiet) fmt::print("{}: GGUF decoded to a Hugging Face F32 checkpoint\n", a->output);
      return;
    }
    RunConvert(a->input, a->output, a->format, a->force, a->quiet);
  });
}

}  // namespace qtool::cli
