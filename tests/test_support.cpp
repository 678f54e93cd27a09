#include "test_support.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

namespace qtool::testing {
namespace fs = std::filesystem;

std::optional<fs::path> SharedDir() {
  const char* env = std::getenv("QTOOL_SHARED_DIR");
  const fs::path dir = env != nullptr ? fs::path(env) : fs::path(QTOOL_SHARED_DIR);
  if (fs::is_directory(dir / "models")) return fs::canonical(dir);
  return std::nullopt;
}

std::vector<fs::path> SharedModels() {
  std::vector<fs::path> out;
  const auto shared = SharedDir();
  if (!shared) return out;
  for (const auto& m : fs::directory_iterator(*shared / "models")) {
    for (const char* v : {"hf", "hf-bf16"}) {
      if (fs::exists(m.path() / v / "model.safetensors")) out.push_back(m.path() / v);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

ScratchDir::ScratchDir() {
  std::random_device rd;
  path_ = fs::temp_directory_path() /
          ("qtool-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  fs::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

CliResult RunCli(const std::vector<std::string>& args) {
#ifndef QTOOL_CLI_PATH
  (void)args;
  ADD_FAILURE() << "the qtool CLI was not built";
  return {-1, "", ""};
#else
  ScratchDir tmp;
  const fs::path out = tmp / "stdout", err = tmp / "stderr";
  std::fflush(nullptr);  // or the child would print the parent's buffered output again
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    std::string exe = QTOOL_CLI_PATH;
    argv.push_back(exe.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr)) {
      _exit(127);
    }
    ::execv(exe.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, ReadFile(out), ReadFile(err)};
#endif
}

std::string SafetensorsImage(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

void WriteFile(const fs::path& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace qtool::testing
