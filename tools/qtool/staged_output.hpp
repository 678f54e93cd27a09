// Output of the commands that write a model directory and a JSON report: checked against the input
// before any work, written under temporary names, and moved into place together at the end.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qtool/io/checkpoint.hpp"
#include "qtool/io/temp_path.hpp"

namespace qtool::cli {

/// The outputs of one run. The model directory is written (by the library, atomically) inside a
/// staging directory beside `out`; Commit writes the report under a temporary name and then moves
/// both into place at once. Until then nothing at `out` or `report` changes: a failure, or a
/// signal (CleanUpTempsOnSignals), removes the staging directory and the temporary report.
class StagedRun {
 public:
  /// Checks the outputs before any work: `out` must not be, hold or lie inside the input
  /// (OptionError), must not exist unless `force` (OutputExistsError), and needs a writable parent
  /// (IoError); `report` ("" for none, "-" for stdout) must not name a file of the input or lie
  /// inside the model directory or the output (OptionError). With `file_output` the output is a
  /// file (a GGUF file): what exists there is replaced only when it is a regular file.
  StagedRun(const Checkpoint& in, const std::filesystem::path& out, std::string report, bool force,
            bool file_output = false);
  ~StagedRun();
  StagedRun(const StagedRun&) = delete;
  StagedRun& operator=(const StagedRun&) = delete;

  /// Where the command writes its model directory (it does not exist yet).
  const std::filesystem::path& output() const { return staged_out_; }
  /// Moves the output and the report (when one was asked for) into place together; "-" prints the
  /// report on stdout afterwards.
  void Commit(const nlohmann::json& report);
  /// Commit for an output written as several files inside the staging directory (the files of a
  /// split GGUF model, `staged` paths under output().parent_path()): each goes beside `out`
  /// under its name, all with the report at once. Existing files are replaced only with `force`.
  void CommitFiles(const nlohmann::json& report, const std::vector<std::filesystem::path>& staged);

 private:
  void CommitOutputs(std::vector<StagedOutput> outputs, const nlohmann::json& report);

  std::filesystem::path out_;
  std::string report_;
  bool force_;
  std::filesystem::path staging_;
  std::filesystem::path staged_out_;
};

/// Checks a report path against the input (CheckReportPath), for commands that write no model.
void CheckReportPathFor(const Checkpoint& in, const std::string& report);

/// Writes a JSON report to `path` ("-" for stdout): under a temporary name, then renamed into
/// place, so that a report is never seen half written.
void WriteJsonReport(const std::string& path, const nlohmann::json& j);

}  // namespace qtool::cli
