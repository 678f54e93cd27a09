// GGUF on the command line: `quantize --output-format gguf --gguf-type T`, and `dequantize` of a
// .gguf file.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

namespace qtool::cli {

struct MethodArgs;

struct GgufArgs {
  std::string gguf_type = "F16";
  bool pure = false;
  std::string imatrix;  // importance matrix file (GGUF or legacy .dat), "" for none
  CLI::App* cmd = nullptr;
};

/// Adds --gguf-type, --gguf-pure and --imatrix to the quantize command (its --output-format is
/// shared with the other output formats: AddOutputFormatOptions).
std::shared_ptr<GgufArgs> AddGgufOptions(CLI::App* cmd);

/// Writes the GGUF file when `output_format` is gguf and returns true; false otherwise. Refuses
/// (OptionError) the quantize options that do not apply to GGUF output. The output and the report
/// are staged and committed together, as every command's (StagedRun).
/// With --method gptq or awq, the Linear layers are solved first (RunGgufMethod).
bool RunGgufQuantize(const GgufArgs& g, const std::string& output_format, const std::string& input,
                     const std::string& output, int threads, bool force, bool quiet,
                     const std::string& json, const MethodArgs& method);

/// True when `path` names a GGUF file (by its first four bytes).
bool IsGgufFile(const std::string& path);

/// Prints (and with `json`, writes as JSON) a GGUF file's metadata and tensors.
void InspectGguf(const std::string& path, const std::string& json);

/// Decodes a GGUF file to a Hugging Face model directory in F32 (see gguf::ImportGguf). Refuses
/// (OptionError) an output that is the GGUF file or holds it.
void DequantizeGguf(const std::string& input, const std::string& output, bool force);

}  // namespace qtool::cli
