#include "qtool/io/temp_path.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "qtool/core/error.hpp"
#include "qtool/core/mapped_file.hpp"

namespace qtool {
namespace fs = std::filesystem;
namespace {

// The registered temporaries. The signal cleanup holds the lock while it removes them, and
// CommitStaged while it renames, so that neither sees the other half done.
struct Registry {
  std::mutex mu;
  std::set<fs::path> temps;
};

Registry& Temps() {
  static Registry* r = new Registry;  // never destroyed: the cleanup may run during exit
  return *r;
}

uint64_t RandomBits() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof v, GRND_NONBLOCK) == static_cast<ssize_t>(sizeof v)) return v;
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^ counter.fetch_add(0x9e3779b97f4a7c15);
}

// rename(2) that fails with EEXIST instead of replacing an existing `to` (Linux renameat2
// RENAME_NOREPLACE; where the file system lacks it, a check just before the rename).
int RenameNoReplace(const fs::path& from, const fs::path& to) {
#ifdef RENAME_NOREPLACE
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return -1;
#endif
  struct stat st {};
  if (::lstat(to.c_str(), &st) == 0) {
    errno = EEXIST;
    return -1;
  }
  return ::rename(from.c_str(), to.c_str());
}

void RemoveTree(const fs::path& path) noexcept {
  // A writer thread may still create a file in a directory being removed: try again then.
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (!fs::exists(fs::symlink_status(path, ec))) return;
  }
}

// Set by the SIGBUS handler for the cleanup thread: the faulting address.
std::atomic<const void*> bus_address{nullptr};

void OnBus(int, siginfo_t* info, void*) {
  bus_address.store(info->si_addr);
  ::kill(::getpid(), SIGUSR2);  // blocked here and in every thread but the cleanup thread
  for (;;) ::pause();           // the cleanup thread ends the process
}

[[noreturn]] void CleanUpAndExit(int sig) {
  std::string message;
  int code = 128 + sig;
  if (sig == SIGUSR2) {
    code = static_cast<int>(ExitCode::kIo);
    fs::path file;
    size_t offset = 0;
    if (FindMappedFile(bus_address.load(), &file, &offset)) {
      message = fmt::format(
          "qtool: i/o error: {}: cannot read the memory-mapped file at offset {} (it was truncated "
          "or its device failed while it was read)\n",
          file.string(), offset);
    } else {
      message = "qtool: i/o error: a memory-mapped file could not be read (bus error)\n";
    }
  } else {
    message = fmt::format("qtool: interrupted by {}; temporary output removed\n",
                          sig == SIGINT    ? "SIGINT"
                          : sig == SIGTERM ? "SIGTERM"
                                           : "SIGHUP");
  }
  Registry& r = Temps();
  r.mu.lock();  // waits for a commit under way; never released: the process ends here
  for (const fs::path& p : r.temps) RemoveTree(p);
  std::fputs(message.c_str(), stderr);
  std::fflush(stderr);
  ::_exit(code);
}

}  // namespace

fs::path TempSiblingPath(const fs::path& path) {
  fs::path abs = fs::absolute(path).lexically_normal();
  if (abs.filename().empty()) abs = abs.parent_path();  // "dir/" names the directory itself
  return abs.parent_path() /
         fmt::format(".{}.qtool-tmp-{}-{:016x}", abs.filename().string(), ::getpid(), RandomBits());
}

fs::path CreateTempSiblingDir(const fs::path& path) {
  for (int attempt = 0;; ++attempt) {
    const fs::path dir = TempSiblingPath(path);
    Registry& r = Temps();
    std::lock_guard<std::mutex> lock(r.mu);
    if (::mkdir(dir.c_str(), 0755) == 0) {  // fails with EEXIST rather than reuse a directory
      r.temps.insert(dir);
      return dir;
    }
    QTOOL_CHECK(errno == EEXIST && attempt < 16, IoError, "{}: cannot create: {}", dir.string(),
                std::strerror(errno));
  }
}

void RegisterTemp(const fs::path& path) {
  Registry& r = Temps();
  std::lock_guard<std::mutex> lock(r.mu);
  r.temps.insert(path);
}

void UnregisterTemp(const fs::path& path) {
  Registry& r = Temps();
  std::lock_guard<std::mutex> lock(r.mu);
  r.temps.erase(path);
}

void CloseIntoPlace(int fd, const fs::path& temp, const fs::path& path) {
  QTOOL_CHECK(::close(fd) == 0, IoError, "{}: close failed: {}", temp.string(),
              std::strerror(errno));
  std::error_code ec;
  fs::rename(temp, path, ec);
  QTOOL_CHECK(!ec, IoError, "{}: cannot rename into place: {}", path.string(), ec.message());
  UnregisterTemp(temp);
}

void RemoveTemp(const fs::path& path) noexcept {
  RemoveTree(path);
  try {
    UnregisterTemp(path);
  } catch (...) {  // std::mutex::lock failing: the entry stays, and removing it again is harmless
  }
}

void CommitStaged(const std::vector<StagedOutput>& outputs) {
  std::vector<fs::path> aside(outputs.size());  // where each replaced destination went
  {
    Registry& r = Temps();
    std::lock_guard<std::mutex> lock(r.mu);
    size_t placed = 0;
    // Puts back what the renames so far changed, newest first.
    const auto undo = [&] {
      for (size_t i = placed + 1; i-- > 0;) {
        if (i < placed) {
          ::rename(outputs[i].final.c_str(), outputs[i].temp.c_str());
          r.temps.insert(outputs[i].temp);
        }
        if (i < outputs.size() && !aside[i].empty()) {
          ::rename(aside[i].c_str(), outputs[i].final.c_str());
          r.temps.erase(aside[i]);
        }
      }
    };
    for (; placed < outputs.size(); ++placed) {
      const StagedOutput& o = outputs[placed];
      std::error_code ec;
      if (fs::exists(fs::symlink_status(o.final, ec))) {
        if (!o.replace) {
          undo();
          throw OutputExistsError(fmt::format(
              "{}: output appeared while writing; refusing to replace it", o.final.string()));
        }
        const fs::path a = TempSiblingPath(o.final);
        if (RenameNoReplace(o.final, a) != 0) {
          const std::string err = std::strerror(errno);
          undo();
          throw IoError(
              fmt::format("{}: cannot move the old output aside: {}", o.final.string(), err));
        }
        aside[placed] = a;
        r.temps.insert(a);
      }
      if (RenameNoReplace(o.temp, o.final) != 0) {
        const std::string err =
            errno == EEXIST ? "it appeared while writing" : std::strerror(errno);
        undo();
        throw IoError(fmt::format("{}: cannot rename into place: {}", o.final.string(), err));
      }
      r.temps.erase(o.temp);
    }
  }
  for (const fs::path& a : aside) {
    if (!a.empty()) RemoveTemp(a);
  }
}

void CleanUpTempsOnSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (const int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR2}) sigaddset(&set, s);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    while (::sigwait(&set, &sig) != 0) {
    }
    CleanUpAndExit(sig);
  }).detach();
  struct sigaction bus {};
  bus.sa_sigaction = OnBus;
  bus.sa_flags = SA_SIGINFO;
  sigemptyset(&bus.sa_mask);
  ::sigaction(SIGBUS, &bus, nullptr);
}

}  // namespace qtool
