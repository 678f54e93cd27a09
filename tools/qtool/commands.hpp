// Subcommands of the qtool CLI. Each lives in its own file and registers itself on the app; the
// callback it sets runs the command and throws qtool::Error on bad input.
#pragma once

#include <CLI/CLI.hpp>

namespace qtool::cli {

void RegisterQuantize(CLI::App& app);
void RegisterDequantize(CLI::App& app);
void RegisterInspect(CLI::App& app);
void RegisterEval(CLI::App& app);
void RegisterGenerate(CLI::App& app);

}  // namespace qtool::cli
