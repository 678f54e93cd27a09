// GGUF on the command line: `quantize --output-format gguf --gguf-type T`, and `dequantize` of a
// .gguf file.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <string>

namespace qtool::cli {

struct MethodArgs;

struct GgufArgs {
  std::string gguf_type = "F16";
  bool pure = false;
  std::string imatrix;         // importance matrix file (GGUF or legacy .dat), "" for none
  std::string split_max_size;  // --gguf-split-max-size, "" for one file
  CLI::App* cmd = nullptr;
};

/// Adds --gguf-type, --gguf-pure, --gguf-split-max-size and --imatrix to the quantize command (its
/// --output-format is shared with the other output formats: AddOutputFormatOptions).
std::shared_ptr<GgufArgs> AddGgufOptions(CLI::App* cmd);

/// Writes the GGUF file when `output_format` is gguf and returns true; false otherwise. Refuses
/// (OptionError) the quantize options that do not apply to GGUF output. The output and the report
/// are staged and committed together, as every command's (StagedRun).
/// With --method gptq or awq, the Linear layers are solved first (RunGgufMethod).
bool RunGgufQuantize(const GgufArgs& g, const std::string& output_format, const std::string& input,
                     const std::string& output, int threads, bool force, bool quiet,
                     const std::string& json, const MethodArgs& method);

/// True when `path` names a regular file that is a GGUF file (by its first four bytes).
bool IsGgufFile(const std::string& path);

/// Prints (and with `json`, writes as JSON) a GGUF file's metadata and tensors.
void InspectGguf(const std::string& path, const std::string& json);

/// Decodes a GGUF file to a Hugging Face model directory in F32 (see gguf::ImportGguf). Refuses
/// (OptionError) an output that is the GGUF file or holds it.
void DequantizeGguf(const std::string& input, const std::string& output, bool force);

/// A model argument that may name a GGUF file. A GGUF file is decoded by gguf::ImportGguf (F32
/// weights under Hugging Face names, config.json, and the tokenizer rebuilt from its metadata)
/// into a temporary directory under the system's temporary directory ($TMPDIR), which is removed
/// when this object goes out of scope (or the process is interrupted); any other path is used as
/// given. The commands that take a model directory (eval, quantize, convert) read a GGUF file
/// through it.
class ModelInput {
 public:
  explicit ModelInput(const std::string& path);
  ~ModelInput();
  ModelInput(const ModelInput&) = delete;
  ModelInput& operator=(const ModelInput&) = delete;

  /// The model directory (or file) to open.
  const std::string& path() const { return path_; }
  bool is_gguf() const { return !temp_.empty(); }
  /// Refuses (OptionError) an output that is or holds the GGUF file, which it would destroy.
  void CheckOutput(const std::string& output) const;

 private:
  std::string given_;
  std::filesystem::path temp_;
  std::string path_;
};

}  // namespace qtool::cli
