#include "staged_output.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/io/temp_path.hpp"

namespace qtool::cli {
namespace fs = std::filesystem;
namespace {

// Writes `j` to a new temporary sibling of `path` (created exclusively and registered for the
// signal cleanup) and returns its name.
fs::path WriteTempReport(const fs::path& path, const nlohmann::json& j) {
  QTOOL_CHECK(!NamesReadInput(path), OptionError,
              "--json {}: names a file this run reads; refusing to overwrite it", path.string());
  const std::string text = j.dump(2) + "\n";
  for (int attempt = 0;; ++attempt) {
    const fs::path tmp = TempSiblingPath(path);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      QTOOL_CHECK(errno == EEXIST && attempt < 16, IoError, "{}: cannot create: {}", tmp.string(),
                  std::strerror(errno));
      continue;
    }
    RegisterTemp(tmp);
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
    const int err = done < text.size() ? errno : 0;
    if (::close(fd) != 0 || done < text.size()) {
      RemoveTemp(tmp);
      throw IoError(fmt::format("{}: cannot write the JSON report: {}", path.string(),
                                std::strerror(err ? err : errno)));
    }
    return tmp;
  }
}

}  // namespace

StagedRun::StagedRun(const Checkpoint& in, const fs::path& out, std::string report, bool force,
                     bool file_output)
    : out_(out), report_(std::move(report)), force_(force) {
  CheckOutputSeparate(in, out_);
  if (file_output) {
    std::error_code ec;
    const auto st = fs::symlink_status(out_, ec);
    if (fs::exists(st)) {
      QTOOL_CHECK(force_, OutputExistsError, "{}: output exists (use --force to replace it)",
                  out_.string());
      QTOOL_CHECK(fs::is_regular_file(st), OutputExistsError,
                  "{}: output exists and is not a regular file; refusing to replace it",
                  out_.string());
    }
    const fs::path parent = fs::absolute(out_).lexically_normal().parent_path();
    QTOOL_CHECK(fs::is_directory(parent), IoError, "{}: parent directory {} does not exist",
                out_.string(), parent.string());
  } else {
    CheckpointWriter::CheckOutputPath(out_, force_);
  }
  if (!report_.empty() && report_ != "-") CheckReportPath(in, out_, report_);
  staging_ = CreateTempSiblingDir(out_);
  fs::path name = fs::absolute(out_).lexically_normal();
  if (name.filename().empty()) name = name.parent_path();
  staged_out_ = staging_ / name.filename();
}

StagedRun::~StagedRun() { RemoveTemp(staging_); }

void StagedRun::Commit(const nlohmann::json& report) {
  QTOOL_CHECK(!NamesReadInput(out_, /*or_within=*/true), OptionError,
              "{}: the output is or holds a file this run read; choose another output",
              out_.string());
  CommitOutputs({{staged_out_, out_, force_}}, report);
}

void StagedRun::CommitFiles(const nlohmann::json& report, const std::vector<fs::path>& staged) {
  std::vector<StagedOutput> outputs;
  for (const fs::path& f : staged) {
    const fs::path final = out_.parent_path() / f.filename();
    QTOOL_CHECK(!NamesReadInput(final), OptionError,
                "{}: the output is a file this run read; choose another output", final.string());
    std::error_code ec;
    const auto st = fs::symlink_status(final, ec);
    QTOOL_CHECK(!fs::exists(st) || fs::is_regular_file(st), OutputExistsError,
                "{}: output exists and is not a regular file; refusing to replace it",
                final.string());
    outputs.push_back({f, final, force_});
  }
  CommitOutputs(std::move(outputs), report);
}

void StagedRun::CommitOutputs(std::vector<StagedOutput> outputs, const nlohmann::json& report) {
  const size_t n_model = outputs.size();
  if (!report_.empty() && report_ != "-") {
    outputs.push_back({WriteTempReport(report_, report), report_, /*replace=*/true});
  }
  try {
    CommitStaged(outputs);
  } catch (...) {
    if (outputs.size() > n_model) RemoveTemp(outputs.back().temp);
    throw;
  }
  if (report_ == "-") std::fputs((report.dump(2) + "\n").c_str(), stdout);
}

void CheckReportPathFor(const Checkpoint& in, const std::string& report) {
  if (!report.empty() && report != "-") CheckReportPath(in, {}, report);
}

void WriteJsonReport(const std::string& path, const nlohmann::json& j) {
  if (path == "-") {
    std::fputs((j.dump(2) + "\n").c_str(), stdout);
    return;
  }
  const fs::path tmp = WriteTempReport(path, j);
  try {
    CommitStaged({{tmp, path, /*replace=*/true}});
  } catch (...) {
    RemoveTemp(tmp);
    throw;
  }
}

}  // namespace qtool::cli
