// Temporary names for atomic output, and their removal when the process fails or is interrupted.
//
// Output is written under a temporary sibling name and renamed into place when complete. Every
// temporary is registered while it exists, so that the cleanup installed by
// CleanUpTempsOnSignals removes them all when the process is interrupted (SIGINT, SIGTERM,
// SIGHUP) or a memory-mapped input fails under it (SIGBUS), and the output is then as it was.
#pragma once

#include <filesystem>
#include <vector>

namespace qtool {

/// A fresh name in the same directory as `path`: ".NAME.qtool-tmp-PID-RANDOM", with 64 random
/// bits, so that a name left behind by an earlier process (even one with the same PID) is not
/// chosen again in practice. Being a sibling keeps the final rename on one file system, so it is
/// atomic. Nothing is created: claim the name exclusively (CreateTempSiblingDir, O_EXCL).
std::filesystem::path TempSiblingPath(const std::filesystem::path& path);

/// Creates a new, empty directory beside `path` under a TempSiblingPath name and registers it.
/// Never reuses an existing directory: a name that exists is skipped for another. Throws IoError.
std::filesystem::path CreateTempSiblingDir(const std::filesystem::path& path);

/// Registers a temporary file or directory for removal by the signal cleanup.
void RegisterTemp(const std::filesystem::path& path);
/// Unregisters a temporary (it was renamed into place, or removed).
void UnregisterTemp(const std::filesystem::path& path);
/// Removes a temporary file or directory tree and unregisters it. Never throws.
void RemoveTemp(const std::filesystem::path& path) noexcept;
/// Closes `fd`, the registered temporary file `temp` written in full, and renames it into place
/// as `path`, then unregisters it. Throws IoError naming the file when either step fails (the
/// temporary then stays registered, for its owner to remove).
void CloseIntoPlace(int fd, const std::filesystem::path& temp, const std::filesystem::path& path);

/// A finished temporary, the name it is to have, and whether it may replace what has that name.
struct StagedOutput {
  std::filesystem::path temp;
  std::filesystem::path final;
  bool replace = false;
};

/// Renames every staged temporary into place, as one step with respect to the signal cleanup
/// (which waits for it): afterwards either all are in place or, when a rename fails, none is and
/// every destination is as it was (IoError). A destination that exists is replaced only when its
/// `replace` is true (else OutputExistsError): it is moved aside first and removed once all
/// renames succeeded.
void CommitStaged(const std::vector<StagedOutput>& outputs);

/// Installs the process's cleanup: SIGINT, SIGTERM and SIGHUP remove every registered temporary
/// and exit with 128 + the signal number; a SIGBUS in a memory-mapped input file (it was truncated
/// or its device failed) prints an IoError naming the file, removes the temporaries and exits with
/// the IoError exit code. Call once at the start of main, before any other thread starts: it
/// blocks those signals in the calling thread (so in every thread started later) and waits for
/// them in a thread of its own.
void CleanUpTempsOnSignals();

}  // namespace qtool
