// Subcommands of the qtool CLI. Each lives in its own file and registers itself on the app; the
// callback it sets runs the command and throws qtool::Error on bad input.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "qtool/io/export.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/pipeline/quantize.hpp"

namespace qtool::cli {

void RegisterQuantize(CLI::App& app);
void RegisterDequantize(CLI::App& app);
void RegisterInspect(CLI::App& app);
void RegisterEval(CLI::App& app);
void RegisterGenerate(CLI::App& app);
void RegisterTokenize(CLI::App& app);
void RegisterConvert(CLI::App& app);
void RegisterLogits(CLI::App& app);
void RegisterImatrix(CLI::App& app);

/// --output-format and its options (cmd_convert.cpp), shared by quantize and convert.
struct OutputFormatArgs {
  std::string format = "qtool", gptq_format = "gptq";
};
void AddOutputFormatOptions(CLI::App* cmd, OutputFormatArgs& a);
/// Converts the qtool checkpoint `input` to `output` in a's format, printing a report unless quiet.
ExportReport RunConvert(const std::string& input, const std::string& output,
                        const OutputFormatArgs& a, bool overwrite, bool quiet);

/// The calibration data options that `quantize --method` and `imatrix` share
/// (quantize_methods.cpp).
struct CalibrationArgs {
  std::string file;
  int64_t nsamples = 128;
  std::optional<int64_t> seqlen;  // default: the smaller of 512 and the model's context
  uint64_t seed = 0;
};
/// Adds --calib (described by calib_help), --nsamples, --seqlen and --seed.
void AddCalibrationOptions(CLI::App* cmd, CalibrationArgs& a, const std::string& calib_help);
/// Checks their ranges: the tokens are held at once (nsamples x seqlen ids, and activations per
/// token), so at most 2^20 samples, 2^20 tokens each and 2^26 in all.
void CheckCalibrationArgs(const CalibrationArgs& a);

/// `qtool quantize --method ...` (quantize_methods.cpp): the calibrated methods' options, added to
/// the quantize command, and their run. RunQuantizeMethod returns nullopt for --method rtn.
struct MethodArgs;
struct MethodResult {
  QuantizeReport report;
  nlohmann::json solver;  // method and per-layer solver losses
};
std::shared_ptr<MethodArgs> AddMethodOptions(CLI::App* cmd);
std::optional<MethodResult> RunQuantizeMethod(const MethodArgs& m, QuantizeOptions opts,
                                              const std::string& input, const std::string& output,
                                              bool quiet);
/// `--activations fp8-static` (quantize_methods.cpp): measures each selected Linear's static FP8
/// input scale on the --calib data (solvers/input_scales.hpp) into opts.input_scales. Refuses
/// another --method than rtn and a missing --calib (OptionError).
void MeasureStaticInputScales(const MethodArgs& m, QuantizeOptions& opts, const std::string& input,
                              bool quiet);
/// --output-format gguf with --method gptq or awq (gguf_output.cpp): writes the GGUF file `output`
/// with their blocks (solvers/gguf_calibrated.hpp); nullopt for --method rtn.
struct GgufMethodResult {
  gguf::ExportReport report;
  nlohmann::json solver;
};
std::optional<GgufMethodResult> RunGgufMethod(
    const MethodArgs& m, const gguf::ExportOptions& opts, const std::string& input,
    const std::string& output, bool quiet,
    const std::function<void(size_t, size_t, const std::string&)>& progress);

}  // namespace qtool::cli
