// Hostile and careless input through the real binary (docs/GUARANTEES.md): no crash or hang, no
// data lost, nothing read from outside the model, no temporary left behind, and the exit code of
// the error's class with the file named.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "qtool/io/safetensors.hpp"
#include "test_support.hpp"

namespace qtool::robustness {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::ScratchDir;

constexpr const char* kTensor = "model.layers.0.mlp.up_proj.weight";

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// A safetensors image of F32 tensors (name, shape, values).
struct F32Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};
std::string F32Image(const std::vector<F32Tensor>& tensors) {
  json h = json::object();
  std::string data;
  for (const F32Tensor& t : tensors) {
    h[t.name] = {{"dtype", "F32"},
                 {"shape", t.shape},
                 {"data_offsets", {data.size(), data.size() + t.values.size() * 4}}};
    data += FloatBytes(t.values);
  }
  return testing::SafetensorsImage(h.dump(), data);
}

std::vector<float> Ramp(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * static_cast<float>(i));
  return v;
}

// A small model directory: one quantisable weight, config.json and a tokenizer file.
void MakeModelDir(const fs::path& dir) {
  fs::create_directories(dir);
  testing::WriteFile(dir / "model.safetensors", F32Image({{kTensor, {4, 64}, Ramp(256)}}));
  testing::WriteFile(dir / "config.json", R"({"model_type": "llama"})");
  testing::WriteFile(dir / "tokenizer.json", R"({"model": {}})");
}

// Every file under `dir` with its content, to compare before and after a run.
std::map<std::string, std::string> Snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().string()] = testing::ReadFile(e.path());
  }
  return out;
}

// Names under `dir` (not recursive) that are qtool temporaries.
std::vector<std::string> Temporaries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.find("qtool-tmp") != std::string::npos) out.push_back(n);
  }
  return out;
}

// A running qtool process, its output going to files.
struct Child {
  pid_t pid;
  fs::path out, err;
};

Child Spawn(const std::vector<std::string>& args, const fs::path& logs) {
  Child c{-1, logs / "stdout", logs / "stderr"};
  std::fflush(nullptr);
  c.pid = ::fork();
  if (c.pid == 0) {
    std::vector<std::string> copy = args;
    std::string exe = QTOOL_CLI_PATH;
    std::vector<char*> argv = {exe.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (!std::freopen(c.out.c_str(), "w", stdout) || !std::freopen(c.err.c_str(), "w", stderr)) {
      _exit(127);
    }
    ::execv(exe.c_str(), argv.data());
    _exit(127);
  }
  return c;
}

// Waits for the child for up to `seconds`; kills it and returns -1 when it takes longer (a hang).
int Wait(const Child& c, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (::waitpid(c.pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(c.pid, SIGKILL);
      ::waitpid(c.pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct Result {
  int code;
  std::string err;
};
// Runs qtool with a time limit: a run that blocks fails the test instead of hanging it.
Result RunQtool(const std::vector<std::string>& args, double seconds = 60) {
  ScratchDir logs;
  const Child c = Spawn(args, logs.path());
  const int code = Wait(c, seconds);
  return {code, testing::ReadFile(c.err)};
}

#define EXPECT_FAILS(result, exit_code, text)                                 \
  do {                                                                        \
    const Result r_ = (result);                                               \
    EXPECT_EQ(r_.code, exit_code) << r_.err;                                  \
    EXPECT_NE(r_.err.find(text), std::string::npos) << "message: " << r_.err; \
  } while (0)

// ---- Data loss and leaks ----

// -o naming the input, a directory holding it, one inside it, or any alias of those (symlink,
// ".."), is refused with --force by every method, and the input stays as it was.
TEST(RobustnessCli, OutputThatWouldDestroyTheInputIsRefusedByEveryMethod) {
  ScratchDir dir;
  const fs::path model = dir / "parent" / "m";
  MakeModelDir(model);
  testing::WriteFile(dir / "calib.txt", "one two three");
  fs::create_directory_symlink(model, dir / "link");
  const auto before = Snapshot(dir / "parent");
  const std::vector<std::string> outputs = {model.string(),
                                            (model / "").string(),
                                            (dir / "parent").string(),
                                            dir.path().string(),
                                            (model / "sub").string(),
                                            (dir / "link").string(),
                                            (model / ".." / "m").string(),
                                            (dir / "parent" / "..").string()};
  for (const char* method : {"rtn", "gptq", "awq", "hqq", "smoothquant"}) {
    for (const std::string& out : outputs) {
      EXPECT_FAILS(RunQtool({"quantize", model.string(), "-o", out, "--force", "-q", "--method",
                             method, "--calib", (dir / "calib.txt").string()}),
                   3, "choose another output");
      EXPECT_EQ(Snapshot(dir / "parent"), before) << method << " -o " << out;
    }
  }
  // A single-file input: the directory holding the file.
  EXPECT_FAILS(RunQtool({"quantize", (model / "model.safetensors").string(), "-o", model.string(),
                         "--force", "--method", "hqq"}),
               3, "choose another output");
  EXPECT_FAILS(RunQtool({"dequantize", model.string(), "-o", (dir / "parent").string(), "--force"}),
               3, "choose another output");
  EXPECT_EQ(Snapshot(dir / "parent"), before);
  EXPECT_TRUE(Temporaries(dir.path()).empty());
}

// --json naming a file of the model (directly, through a symlink, or as a hard link), a path
// inside the model directory, or a path inside the output is refused, with or without --force.
TEST(RobustnessCli, ReportThatWouldOverwriteTheModelOrOutputIsRefused) {
  ScratchDir dir;
  const fs::path model = dir / "m";
  MakeModelDir(model);
  fs::create_symlink(model / "model.safetensors", dir / "weights-link");
  fs::create_hard_link(model / "model.safetensors", dir / "weights-hard");
  const auto before = Snapshot(model);
  const std::string out = (dir / "out").string();
  for (const fs::path& report : {model / "model.safetensors", model / "config.json",
                                 model / "new.json", dir / "weights-link", dir / "weights-hard",
                                 dir / "out" / "report.json", dir / "out" / "model.safetensors"}) {
    for (const bool force : {false, true}) {
      std::vector<std::string> args = {"quantize", model.string(),  "-o", out,
                                       "--json",   report.string(), "-q"};
      if (force) args.push_back("--force");
      EXPECT_FAILS(RunQtool(args), 3, "--json");
      EXPECT_EQ(Snapshot(model), before) << report;
      EXPECT_FALSE(fs::exists(dir / "out")) << report;
    }
    if (report.parent_path() != dir / "out") {  // inspect writes no output
      EXPECT_FAILS(RunQtool({"inspect", model.string(), "--json", report.string()}), 3, "--json");
    }
  }
  EXPECT_FAILS(RunQtool({"quantize", model.string(), "-o", out, "--json", dir.path().string()}), 3,
               "is a directory");
  EXPECT_EQ(Snapshot(model), before);
  EXPECT_TRUE(Temporaries(dir.path()).empty());
}

// Neither the report nor the output may replace a file the run reads outside the model
// (calibration data, an evaluation text), nor a directory holding one, with or without --force.
TEST(RobustnessCli, OutputsThatWouldReplaceAFileTheRunReadsAreRefused) {
  QTOOL_REQUIRE_SHARED();  // the calibrated methods need a model that runs
  ScratchDir dir;
  const fs::path model = testing::SharedDir().value() / "models" / "stories260K" / "hf";
  const fs::path data = dir / "data";
  fs::create_directory(data);
  testing::WriteFile(data / "calib.txt", "one two three four five six seven eight nine ten");
  fs::create_hard_link(data / "calib.txt", dir / "calib-hard.txt");
  const auto before = Snapshot(data);
  const std::string calib = (data / "calib.txt").string();
  for (const char* method : {"gptq", "awq"}) {
    for (const bool force : {false, true}) {
      for (const fs::path& report : {data / "calib.txt", dir / "calib-hard.txt"}) {
        std::vector<std::string> args = {
            "quantize", model.string(), "-o",     (dir / "out").string(), "--method", method,
            "--calib",  calib,          "--json", report.string(),        "-q",       "--nsamples",
            "1",        "--seqlen",     "16"};
        if (force) args.push_back("--force");
        EXPECT_FAILS(RunQtool(args), 3, "a file this run reads");
        EXPECT_FALSE(fs::exists(dir / "out")) << method;
      }
    }
    EXPECT_FAILS(RunQtool({"quantize", model.string(), "-o", data.string(), "--force", "--method",
                           method, "--calib", calib, "-q", "--nsamples", "1", "--seqlen", "16"}),
                 3, "a file this run read");
    EXPECT_EQ(Snapshot(data), before) << method;
  }
  EXPECT_FAILS(RunQtool({"eval", model.string(), "--text", calib, "--json", calib}), 3,
               "a file this run reads");
  EXPECT_EQ(Snapshot(data), before);
  EXPECT_TRUE(Temporaries(dir.path()).empty());
}

// A non-weight file (or config.json, or the index) that resolves to outside the model directory
// is neither read nor copied; a Hugging Face hub cache's snapshot links into its blobs are fine.
TEST(RobustnessCli, FilesLinkedFromOutsideTheModelAreRefused) {
  ScratchDir dir;
  testing::WriteFile(dir / "secret", "{\"private\": true}");
  for (const char* name : {"tokenizer.json", "config.json", "notes.txt"}) {
    const fs::path model = dir / "m";
    MakeModelDir(model);
    fs::remove(model / name);
    fs::create_symlink(dir / "secret", model / name);
    EXPECT_FAILS(RunQtool({"quantize", model.string(), "-o", (dir / "out").string(), "-q"}), 7,
                 "outside the model directory");
    EXPECT_FALSE(fs::exists(dir / "out")) << name;
    fs::remove_all(model);
  }
  // REPO/snapshots/REV/FILE -> ../../blobs/HASH
  const fs::path repo = dir / "models--org--m";
  MakeModelDir(repo / "blobs-src");
  fs::create_directories(repo / "blobs");
  fs::create_directories(repo / "snapshots" / "rev");
  for (const char* name : {"model.safetensors", "config.json", "tokenizer.json"}) {
    fs::rename(repo / "blobs-src" / name, repo / "blobs" / name);
    fs::create_symlink(fs::path("../../blobs") / name, repo / "snapshots" / "rev" / name);
  }
  const Result ok = RunQtool(
      {"quantize", (repo / "snapshots" / "rev").string(), "-o", (dir / "out").string(), "-q"});
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_EQ(testing::ReadFile(dir / "out" / "tokenizer.json"), R"({"model": {}})");
}

// Temporaries left by another process (named as this build or an older one names them, same PID
// or not) are never merged into a new output, and are left alone.
TEST(RobustnessCli, LeftoverTemporariesAreNeverReused) {
  ScratchDir dir;
  const fs::path model = dir / "m";
  MakeModelDir(model);
  std::vector<fs::path> leftovers;
  for (int pid = 1; pid < 40; ++pid) {
    leftovers.push_back(dir / fmt::format(".out.qtool-tmp-{}-0", pid));
    leftovers.push_back(dir / fmt::format(".out.qtool-tmp-{}-{:016x}", pid, pid));
  }
  for (const fs::path& l : leftovers) {
    fs::create_directory(l);
    testing::WriteFile(l / "junk", "x");
  }
  ASSERT_EQ(RunQtool({"quantize", model.string(), "-o", (dir / "out").string(), "-q"}).code, 0);
  EXPECT_FALSE(fs::exists(dir / "out" / "junk"));
  for (const fs::path& l : leftovers) EXPECT_TRUE(fs::exists(l / "junk")) << l;
}

// ---- Partial output and interruption ----

// A model large enough that quantising it with the MSE observer takes a while.
void MakeSlowModel(const fs::path& dir) {
  fs::create_directories(dir);
  std::vector<F32Tensor> tensors;
  for (int i = 0; i < 4; ++i) {
    tensors.push_back(
        {fmt::format("model.layers.{}.mlp.up_proj.weight", i), {512, 1024}, Ramp(512 * 1024)});
  }
  testing::WriteFile(dir / "model.safetensors", F32Image(tensors));
  testing::WriteFile(dir / "config.json", "{}");
}

// SIGINT, SIGTERM or SIGHUP during a run: exit 128 + N, no temporary output or report left, and
// the output as it was before (absent, or the old one under --force).
TEST(RobustnessCli, InterruptedRunLeavesTheOutputAsItWas) {
  ScratchDir dir;
  MakeSlowModel(dir / "m");
  for (const int sig : {SIGINT, SIGTERM, SIGHUP}) {
    for (const bool old_output : {false, true}) {
      const fs::path out = dir / "out";
      fs::remove_all(out);
      if (old_output) {
        fs::create_directories(out);
        testing::WriteFile(out / "keep", "precious");
      }
      ScratchDir logs;
      const Child c =
          Spawn({"quantize", (dir / "m").string(), "-o", out.string(), "--force", "--observer",
                 "mse", "--json", (dir / "r.json").string(), "-q", "--threads", "1"},
                logs.path());
      // Signal once the staging directory exists, i.e. in the middle of the work.
      bool started = false;
      for (int i = 0; i < 20000 && !started; ++i) {
        started = !Temporaries(dir.path()).empty();
        if (!started) std::this_thread::sleep_for(std::chrono::microseconds(500));
      }
      ASSERT_TRUE(started) << "the run never started: " << testing::ReadFile(c.err);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ::kill(c.pid, sig);
      const int code = Wait(c, 60);
      EXPECT_EQ(code, 128 + sig) << strsignal(sig) << ": " << testing::ReadFile(c.err);
      EXPECT_NE(testing::ReadFile(c.err).find("interrupted"), std::string::npos);
      EXPECT_TRUE(Temporaries(dir.path()).empty()) << strsignal(sig);
      EXPECT_FALSE(fs::exists(dir / "r.json")) << strsignal(sig);
      if (old_output) {
        EXPECT_EQ(testing::ReadFile(out / "keep"), "precious") << strsignal(sig);
      } else {
        EXPECT_FALSE(fs::exists(out)) << strsignal(sig);
      }
    }
  }
}

// The report is written before the output is committed: a report that cannot be written leaves
// no output (and the old one under --force), and a written report always comes with its output.
TEST(RobustnessCli, ReportAndOutputAreCommittedTogether) {
  ScratchDir dir;
  const fs::path model = dir / "m";
  MakeModelDir(model);
  EXPECT_FAILS(RunQtool({"quantize", model.string(), "-o", (dir / "out").string(), "--json",
                         (dir / "missing" / "r.json").string(), "-q"}),
               7, "r.json");
  EXPECT_FALSE(fs::exists(dir / "out"));
  fs::create_directories(dir / "out");
  testing::WriteFile(dir / "out" / "keep", "old");
  EXPECT_FAILS(RunQtool({"quantize", model.string(), "-o", (dir / "out").string(), "--force",
                         "--json", (dir / "missing" / "r.json").string(), "-q"}),
               7, "r.json");
  EXPECT_EQ(testing::ReadFile(dir / "out" / "keep"), "old");
  EXPECT_TRUE(Temporaries(dir.path()).empty());
  const Result ok = RunQtool({"quantize", model.string(), "-o", (dir / "out").string(), "--force",
                              "--json", (dir / "r.json").string(), "-q"});
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_TRUE(fs::exists(dir / "out" / "model.safetensors"));
  EXPECT_EQ(json::parse(testing::ReadFile(dir / "r.json"))["tensors"].size(), 1u);
  EXPECT_TRUE(Temporaries(dir.path()).empty());
}

// ---- Crashes and hangs ----

// A zero-size weight inside a block quantises (to nothing) in every format and reads back.
TEST(RobustnessCli, ZeroSizeWeightsQuantiseInEveryFormat) {
  ScratchDir dir;
  const fs::path in = dir / "in.safetensors";
  testing::WriteFile(in, F32Image({{"model.layers.0.mlp.up_proj.weight", {64, 0}, {}},
                                   {"model.layers.0.mlp.gate_proj.weight", {0, 64}, {}},
                                   {"model.layers.0.mlp.down_proj.weight", {4, 64}, Ramp(256)}}));
  const std::vector<std::vector<std::string>> variants = {
      {"--format", "int"},
      {"--format", "int", "--asym"},
      {"--format", "int", "--granularity", "channel"},
      {"--format", "int", "--granularity", "tensor"},
      {"--format", "int", "--flat-groups"},
      {"--format", "nf4", "--double-quant"},
      {"--format", "fp8-e4m3"},
      {"--format", "fp4"},
      {"--format", "mxfp4"},
      {"--format", "ternary"}};
  for (const auto& v : variants) {
    const std::string label = fmt::format("{}", fmt::join(v, " "));
    std::vector<std::string> args = {"quantize",           in.string(), "-o",
                                     (dir / "q").string(), "--force",   "-q"};
    args.insert(args.end(), v.begin(), v.end());
    const Result q = RunQtool(args);
    ASSERT_EQ(q.code, 0) << label << ": " << q.err;
    const Result d =
        RunQtool({"dequantize", (dir / "q").string(), "-o", (dir / "d").string(), "--force"});
    EXPECT_EQ(d.code, 0) << label << ": " << d.err;
    EXPECT_EQ(RunQtool({"inspect", (dir / "q").string()}).code, 0) << label;
  }
}

// Options whose values overflow the sizes computed from them, or the number types that hold them,
// are refused with exit 3 naming the option (never an overflow, a crash or exit 1).
TEST(RobustnessCli, HugeNumericOptionsAreRefused) {
  ScratchDir dir;
  const fs::path in = dir / "in.safetensors";
  testing::WriteFile(in, F32Image({{kTensor, {4, 64}, Ramp(256)}}));
  const std::string out = (dir / "out").string();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--group", "9223372036854775807", "--flat-groups"}, "--group"},
      {{"--group", "9223372036854775807"}, "--group"},
      {{"--group", "99999999999999999999"}, "--group"},
      {{"--bits", "99999999999"}, "--bits"},
      {{"--format", "int99999999999"}, "--format"},
      {{"--format", "int2147483648"}, "--format"},
      {{"--max-shard-size", std::string(400, '9')}, "--max-shard-size"},
      {{"--max-shard-size", "99999999999999TiB"}, "--max-shard-size"},
      {{"--threads", "99999999"}, "--threads"},
      {{"--format", "nf4", "--block", "99999999999999999999"}, "--block"},
      {{"--format", "fp8-e4m3", "--block", "9223372036854775807x2"}, "--block"},
      {{"--method", "gptq", "--calib", in.string(), "--nsamples", "9223372036854775807"},
       "--nsamples"},
      {{"--method", "gptq", "--calib", in.string(), "--seqlen", "99999999999999999999"},
       "--seqlen"},
      {{"--method", "smoothquant", "--calib", in.string(), "--alpha", "1e999"}, "--alpha"},
      {{"--method", "gptq", "--calib", in.string(), "--damp", "nan"}, "--damp"},
  };
  for (const auto& [opts, name] : cases) {
    std::vector<std::string> args = {"quantize", in.string(), "-o", out, "-q"};
    args.insert(args.end(), opts.begin(), opts.end());
    EXPECT_FAILS(RunQtool(args), 3, name);
    EXPECT_FALSE(fs::exists(out)) << name;
  }
  EXPECT_FAILS(RunQtool({"eval", (dir / "m").string(), "--tokens", in.string(), "--weight-cache-mb",
                         "9223372036854775807"}),
               3, "--weight-cache-mb");
  EXPECT_TRUE(Temporaries(dir.path()).empty());
}

// A FIFO (or another non-regular file) as a shard, config, index, token or report file is refused
// at once: nothing ever waits for a writer.
TEST(RobustnessCli, FifosAreRefusedWithoutBlocking) {
  ScratchDir dir;
  for (const char* name : {"model.safetensors", "config.json", "model.safetensors.index.json"}) {
    const fs::path model = dir / "m";
    MakeModelDir(model);
    fs::remove(model / name);
    ASSERT_EQ(::mkfifo((model / name).c_str(), 0644), 0);
    if (std::string(name) == "model.safetensors.index.json") {
      fs::rename(model / "model.safetensors", model / "model-00001-of-00001.safetensors");
    }
    const Result r = RunQtool({"quantize", model.string(), "-o", (dir / "out").string(), "-q"}, 20);
    EXPECT_NE(r.code, -1) << name << ": the run blocked";
    EXPECT_EQ(r.code, 7) << name << ": " << r.err;
    EXPECT_NE(r.err.find("not a regular file"), std::string::npos) << r.err;
    EXPECT_NE(RunQtool({"inspect", model.string()}, 20).code, -1) << name;
    fs::remove_all(model);
  }
  ASSERT_EQ(::mkfifo((dir / "in.safetensors").c_str(), 0644), 0);
  EXPECT_FAILS(
      RunQtool({"quantize", (dir / "in.safetensors").string(), "-o", (dir / "out").string()}, 20),
      7, "not a regular file");
  ASSERT_EQ(::mkfifo((dir / "ids").c_str(), 0644), 0);
  MakeModelDir(dir / "m");
  EXPECT_FAILS(RunQtool({"quantize", (dir / "m").string(), "-o", (dir / "out").string(), "--method",
                         "gptq", "--calib", (dir / "ids").string()},
                        20),
               7, "not a regular file");
  const auto shared = testing::SharedDir();
  if (shared) {
    for (const char* option : {"--tokens", "--text", "--tokenizer"}) {
      std::vector<std::string> args = {"eval", (*shared / "models/stories260K/hf").string(), option,
                                       (dir / "ids").string()};
      if (std::string(option) == "--tokenizer") {
        testing::WriteFile(dir / "text.txt", "Once upon a time");
        args.insert(args.end(), {"--text", (dir / "text.txt").string()});
      }
      EXPECT_FAILS(RunQtool(args, 20), 7, "not a regular file");
    }
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// Malformed indexes and JSON nested without bound are refused with exit 4 naming the file.
TEST(RobustnessCli, MalformedIndexAndDeepJsonAreFormatErrors) {
  ScratchDir dir;
  const fs::path model = dir / "m";
  MakeModelDir(model);
  fs::rename(model / "model.safetensors", model / "model-00001-of-00001.safetensors");
  const fs::path index = model / "model.safetensors.index.json";
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"weight_map": {}})", "lists no tensors"},
      {R"({"weight_map": []})", "no \"weight_map\""},
      {R"([])", "no \"weight_map\""},
      {R"({"weight_map": {"a": 7}})", "is not a string"},
      {R"({"weight_map": {"a": ""}})", "not a file in the directory"},
      {R"({"weight_map": {"a": "../x.safetensors"}})", "not a file in the directory"},
      {"{\"weight_map\": " + deep + "}", "deeper than"},
  };
  for (const auto& [text, message] : cases) {
    testing::WriteFile(index, text);
    for (const char* cmd : {"inspect", "quantize"}) {
      std::vector<std::string> args = {cmd, model.string()};
      if (std::string(cmd) == "quantize") args.insert(args.end(), {"-o", (dir / "o").string()});
      const Result r = RunQtool(args);
      EXPECT_EQ(r.code, 4) << text.substr(0, 40) << ": " << r.err;
      EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
      EXPECT_NE(r.err.find("model.safetensors.index.json"), std::string::npos) << r.err;
    }
  }
  fs::remove(index);
  fs::rename(model / "model-00001-of-00001.safetensors", model / "model.safetensors");
  testing::WriteFile(model / "config.json", "{\"a\": " + deep + "}");
  EXPECT_FAILS(RunQtool({"quantize", model.string(), "-o", (dir / "o").string()}), 4,
               "config.json");
  EXPECT_FALSE(fs::exists(dir / "o"));
}

// --include and --exclude patterns match in linear time without recursion: patterns that make a
// backtracking engine explode or recurse deeply finish at once, and patterns RE2 refuses are
// option errors.
TEST(RobustnessCli, PathologicalPatternsFinishOrAreRefused) {
  ScratchDir dir;
  const fs::path in = dir / "in.safetensors";
  testing::WriteFile(in, F32Image({{kTensor, {4, 64}, Ramp(256)}}));
  const std::string out = (dir / "out").string();
  for (const std::string& p :
       {std::string("(.*)*Z"), std::string("(a|aa)*b"), std::string("(x+x+)+y"),
        std::string(2000, '(') + "a" + std::string(2000, ')'),
        "(" + std::string(20000, 'a') + ")*"}) {
    for (const char* opt : {"--exclude", "--include"}) {
      const Result r = RunQtool({"quantize", in.string(), "-o", out, "--force", "-q", opt, p}, 30);
      EXPECT_TRUE(r.code == 0 || r.code == 3) << opt << " " << p.substr(0, 30) << ": " << r.err;
    }
  }
  for (const char* p : {"(?=x)", "(a)\\1", "(?<=a)b", "(["}) {
    EXPECT_FAILS(RunQtool({"quantize", in.string(), "-o", out, "--force", "--exclude", p}), 3,
                 "not a valid regular expression");
  }
}

// ---- Wrong exit codes and files not named ----

// Token ids outside the model's vocabulary name the token file.
TEST(RobustnessCli, TokenIdsOutsideTheVocabularyNameTheFile) {
  QTOOL_REQUIRE_SHARED();
  ScratchDir dir;
  const fs::path model = *testing::SharedDir() / "models/stories260K/hf";
  for (const std::string ids : {"1 2 3 999999\n", "1 -5 3\n", "1 2 99999999999999\n"}) {
    testing::WriteFile(dir / "ids.txt", ids);
    EXPECT_FAILS(RunQtool({"eval", model.string(), "--tokens", (dir / "ids.txt").string()}), 4,
                 "ids.txt");
  }
}

// Offset of tensor `name`'s data in a safetensors file.
uint64_t DataOffset(const fs::path& file, const std::string& name) {
  const std::string bytes = testing::ReadFile(file);
  const SafetensorsHeader h =
      ParseSafetensors(std::as_bytes(std::span(bytes.data(), bytes.size())), file.string());
  for (const TensorInfo& t : h.tensors) {
    if (t.name == name) return h.data_offset + t.begin;
  }
  ADD_FAILURE() << name << " not in " << file;
  return 0;
}

// A NaN or Inf scale stored in a quantised checkpoint is refused when decoding, naming the tensor
// and the file, instead of decoding into NaN weights.
TEST(RobustnessCli, NonFiniteStoredScalesAreRefused) {
  ScratchDir dir;
  const fs::path in = dir / "in.safetensors";
  testing::WriteFile(in, F32Image({{kTensor, {4, 64}, Ramp(256)}}));
  struct Case {
    std::vector<std::string> format;
    std::string part;
    std::string bad;  // bytes written over the part's first element
  };
  const float nan = std::nanf(""), inf = INFINITY;
  const std::vector<Case> cases = {
      {{"--format", "int"}, ".scales", FloatBytes({nan})},
      {{"--format", "int", "--asym"}, ".scales", FloatBytes({-inf})},
      {{"--format", "nf4"}, ".absmax", FloatBytes({inf})},
      {{"--format", "nf4", "--double-quant"}, ".absmax_scale", FloatBytes({nan})},
      {{"--format", "fp8-e4m3"}, ".scales", FloatBytes({nan})},
      {{"--format", "mxfp4"}, ".scales", std::string(1, '\xff')},
  };
  for (const Case& c : cases) {
    const fs::path q = dir / "q";
    std::vector<std::string> args = {"quantize", in.string(), "-o", q.string(), "--force", "-q"};
    args.insert(args.end(), c.format.begin(), c.format.end());
    ASSERT_EQ(RunQtool(args).code, 0);
    const fs::path file = q / "model.safetensors";
    const uint64_t at = DataOffset(file, kTensor + c.part);
    std::string bytes = testing::ReadFile(file);
    bytes.replace(at, c.bad.size(), c.bad);
    testing::WriteFile(file, bytes);
    const Result r = RunQtool({"dequantize", q.string(), "-o", (dir / "d").string(), "--force"});
    EXPECT_EQ(r.code, 6) << c.part << ": " << r.err;
    EXPECT_NE(r.err.find(kTensor + c.part), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("model.safetensors"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "d"));
  }
  // eval decodes through the same check (instead of printing "ppl nan").
  const auto shared = testing::SharedDir();
  if (!shared) return;
  const fs::path q = dir / "q";
  ASSERT_EQ(RunQtool({"quantize", (*shared / "models/stories260K/hf").string(), "-o", q.string(),
                      "--force", "-q"})
                .code,
            0);
  const std::string part = "model.layers.0.mlp.down_proj.weight.scales";
  const uint64_t at = DataOffset(q / "model.safetensors", part);
  std::string bytes = testing::ReadFile(q / "model.safetensors");
  bytes.replace(at, 4, FloatBytes({inf}));
  testing::WriteFile(q / "model.safetensors", bytes);
  testing::WriteFile(dir / "ids.txt", "1 2 3 4 5 6 7 8\n");
  const Result r = RunQtool({"eval", q.string(), "--tokens", (dir / "ids.txt").string()});
  EXPECT_EQ(r.code, 6) << r.err;
  EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
}

}  // namespace
}  // namespace qtool::robustness
