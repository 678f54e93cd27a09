// qtool: quantise LLM checkpoints, inspect them, and measure what quantisation cost.
//
// Exit codes: 0 success, 2 command line error, and one code per qtool::Error class (see
// qtool/core/error.hpp), 128 + N when interrupted by signal N, 1 for anything unexpected. Errors
// print one line on stderr (docs/GUARANTEES.md).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/memory.hpp"
#include "qtool/io/temp_path.hpp"
#include "qtool/kernels.hpp"

namespace {

// The version, the CPU features found, and which instruction set runs each kernel (QTOOL_ISA
// forces one).
std::string VersionText() {
  namespace k = qtool::kernels;
  std::string s = fmt::format("qtool {}\ncpu features: {}\nkernels: {}", QTOOL_VERSION,
                              k::CpuFeatures(), k::IsaName(k::ActiveIsa()));
  const char* forced = std::getenv("QTOOL_ISA");
  if (forced && *forced) s += " (forced by QTOOL_ISA)";
  for (const auto& [op, isa] : k::KernelPaths())
    s += fmt::format("\n  {:<22} {}", op, k::IsaName(isa));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  // First, before any thread starts: an interrupted run removes its temporary output.
  qtool::CleanUpTempsOnSignals();
  // Solvers and the writer free and allocate buffers of tens of megabytes tensor after tensor.
  qtool::RetainFreedMemory();
  CLI::App app{"qtool: quantise large language models and measure the quality lost"};
  app.set_version_flag("--version", VersionText,
                       "Print the version, CPU features and kernel paths");
  app.require_subcommand(1);
  qtool::cli::RegisterQuantize(app);
  qtool::cli::RegisterDequantize(app);
  qtool::cli::RegisterInspect(app);
  qtool::cli::RegisterEval(app);
  qtool::cli::RegisterGenerate(app);
  qtool::cli::RegisterTokenize(app);
  qtool::cli::RegisterConvert(app);
  qtool::cli::RegisterLogits(app);
  qtool::cli::RegisterImatrix(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ConversionError& e) {
    // A value that is not a number of the option's type, or does not fit in it.
    app.exit(e);
    return static_cast<int>(qtool::ExitCode::kOption);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : static_cast<int>(qtool::ExitCode::kUsage);
  } catch (const qtool::Error& e) {
    std::fprintf(stderr, "qtool: %s: %s\n", e.kind(), e.what());
    return static_cast<int>(e.exit_code());
  } catch (const nlohmann::json::exception& e) {
    // A JSON value of the wrong type that a parser did not check: still a bad file, not a bug of
    // the run (the parsers name the file; this is the last resort).
    std::fprintf(stderr, "qtool: %s: %s\n", qtool::FormatError("").kind(), e.what());
    return static_cast<int>(qtool::ExitCode::kFormat);
  } catch (const std::filesystem::filesystem_error& e) {
    std::fprintf(stderr, "qtool: %s: %s\n", qtool::IoError("").kind(), e.what());
    return static_cast<int>(qtool::ExitCode::kIo);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "qtool: out of memory\n");
    return static_cast<int>(qtool::ExitCode::kInternal);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qtool: internal error: %s\n", e.what());
    return static_cast<int>(qtool::ExitCode::kInternal);
  }
  return 0;
}
