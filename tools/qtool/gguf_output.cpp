#include "gguf_output.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "commands.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/gguf_import.hpp"
#include "qtool/io/gguf_split.hpp"
#include "qtool/io/imatrix.hpp"
#include "qtool/io/temp_path.hpp"
#include "qtool/model/gguf_params.hpp"
#include "staged_output.hpp"
#include "terminal.hpp"

namespace qtool::cli {

namespace {

constexpr const char* kGgufTypeHelp =
    "With --output-format gguf: a llama-quantize type, whose per-tensor recipe llama.cpp's "
    "quantiser follows (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, "
    "Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0), or Q3_K, Q4_K, "
    "Q5_K, MXFP4 for that type throughout";

// Options of the safetensors path that GGUF output does not take.
constexpr const char* kNotForGguf[] = {
    "--format",      "--bits",     "--group",         "--granularity",  "--asym",
    "--flat-groups", "--observer", "--block",         "--double-quant", "--activations",
    "--include",     "--exclude",  "--max-shard-size"};

// llama-gguf-split's --split-max-size: a positive integer and M (10^6 bytes) or G (10^9).
uint64_t ParseSplitSize(const std::string& s) {
  static const std::regex re(R"(([0-9]{1,9})([MG]))");
  std::smatch m;
  QTOOL_CHECK(std::regex_match(s, m, re) && std::stoll(m[1].str()) > 0, OptionError,
              "--gguf-split-max-size \"{}\" is not a size such as 500M or 4G (M: 10^6 bytes, "
              "G: 10^9)",
              s);
  return static_cast<uint64_t>(std::stoll(m[1].str())) * (m[2].str() == "M" ? 1000000 : 1000000000);
}

// Refuses, before any work, the files of an earlier split of the same name (without --force).
void CheckNoSplitFiles(const std::filesystem::path& out, bool force) {
  namespace fs = std::filesystem;
  if (force) return;
  std::string prefix = out.filename().string();
  if (prefix.ends_with(".gguf")) prefix.resize(prefix.size() - 5);
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    static const std::regex kSplit(R"(-\d{5}-of-\d{5}\.gguf)");
    QTOOL_CHECK(!(name.starts_with(prefix) && std::regex_match(name.substr(prefix.size()), kSplit)),
                OutputExistsError, "{}: output exists (use --force to replace it)",
                e.path().string());
  }
}

}  // namespace

std::shared_ptr<GgufArgs> AddGgufOptions(CLI::App* cmd) {
  auto g = std::make_shared<GgufArgs>();
  g->cmd = cmd;
  cmd->add_option("--gguf-type", g->gguf_type, kGgufTypeHelp)->capture_default_str();
  cmd->add_flag("--gguf-pure", g->pure,
                "Every 2-D weight in the --gguf-type's base type (llama-quantize --pure)");
  cmd->add_option("--gguf-split-max-size", g->split_max_size,
                  "With --output-format gguf: split the file as llama-gguf-split --split-max-size "
                  "does, into OUT-00001-of-0000N.gguf ... of at most this much tensor data each "
                  "(N followed by M or G: 500M, 4G)");
  cmd->add_option("--imatrix", g->imatrix,
                  "With --output-format gguf: an importance matrix (llama.cpp's GGUF or legacy "
                  ".dat format, from qtool imatrix or llama-imatrix) that weights the k-, i- and "
                  "legacy quants' scale searches, as llama-quantize --imatrix");
  return g;
}

bool RunGgufQuantize(const GgufArgs& g, const std::string& output_format, const std::string& input,
                     const std::string& output, int threads, bool force, bool quiet,
                     const std::string& json, const MethodArgs& method) {
  if (output_format != "gguf") {
    QTOOL_CHECK(g.cmd->get_option("--gguf-type")->count() == 0 && !g.pure && g.imatrix.empty() &&
                    g.split_max_size.empty(),
                OptionError,
                "--gguf-type, --gguf-pure, --gguf-split-max-size and --imatrix apply to "
                "--output-format gguf only");
    return false;
  }
  for (const char* name : kNotForGguf) {
    const CLI::Option* o = g.cmd->get_option_no_throw(name);
    QTOOL_CHECK(o == nullptr || o->count() == 0, OptionError,
                "{} does not apply to --output-format gguf (the format is --gguf-type)", name);
  }
  const auto recipe = gguf::FindRecipe(g.gguf_type);
  QTOOL_CHECK(recipe.has_value(), OptionError, "unknown --gguf-type \"{}\" (known: {})",
              g.gguf_type, gguf::RecipeNames());
  gguf::ExportOptions opts;
  opts.type = g.gguf_type;
  opts.pure = g.pure;
  opts.threads = threads;
  opts.overwrite = false;  // the staged output replaces an old one in StagedRun::Commit
  if (!g.split_max_size.empty()) opts.split_max_bytes = ParseSplitSize(g.split_max_size);
  std::optional<imatrix::Matrix> imat;
  if (!g.imatrix.empty()) {
    imat = imatrix::Read(g.imatrix);
    opts.imatrix = &*imat;
    opts.imatrix_file = g.imatrix;
  }
  const Checkpoint in = Checkpoint::Open(input);
  StagedRun run(in, output, json, force, /*file_output=*/true);
  if (opts.split_max_bytes > 0) CheckNoSplitFiles(output, force);
  Progress progress("quantize");
  const auto on_tensor = [&](size_t done, size_t total, const std::string& name) {
    progress.Update(done, total, name);
  };
  std::optional<GgufMethodResult> solved =
      RunGgufMethod(method, opts, input, run.output().string(), quiet || json == "-", on_tensor);
  const gguf::ExportReport r =
      solved ? std::move(solved->report) : gguf::ExportGguf(in, run.output(), opts, on_tensor);
  progress.Done();
  nlohmann::json files = nlohmann::json::array();
  for (const std::filesystem::path& f : r.files) {
    files.push_back((std::filesystem::path(output).parent_path() / f.filename()).string());
  }
  nlohmann::json j = {{"output", output},
                      {"files", files},
                      {"architecture", r.architecture},
                      {"tokenizer_model", r.tokenizer_model},
                      {"gguf_type", std::string(recipe->name)},
                      {"pure", g.pure},
                      {"imatrix", g.imatrix},
                      {"input_bytes", r.input_bytes},
                      {"output_bytes", r.output_bytes},
                      {"seconds", r.seconds},
                      {"tensors", nlohmann::json::array()}};
  if (solved) j["solver"] = std::move(solved->solver);
  uint64_t params = 0;
  for (const gguf::ExportedTensor& t : r.tensors) {
    uint64_t n = 1;
    for (uint64_t d : t.ne) n *= d;
    params += n;
    j["tensors"].push_back({{"name", t.name},
                            {"source", t.source},
                            {"type", std::string(ggml::Traits(t.type).name)},
                            {"ne", t.ne},
                            {"bytes", t.bytes},
                            {"rel_rms_error", t.rel_rms_error},
                            {"imatrix", t.imatrix}});
  }
  if (!quiet && json != "-") {
    fmt::print("{:<28} {:>7} {:>14} {:>12} {:>10}\n", "tensor", "type", "ne", "bytes", "rel rms");
    for (const gguf::ExportedTensor& t : r.tensors) {
      fmt::print("{:<28} {:>7} {:>14} {:>12} {:>10.3e}\n", t.name, ggml::Traits(t.type).name,
                 fmt::format("{}", fmt::join(t.ne, "x")), t.bytes, t.rel_rms_error);
    }
    if (r.files.size() > 1 || opts.split_max_bytes > 0) {
      fmt::print("\nsplit into {} files: {} ... {}\n", r.files.size(),
                 files.front().get<std::string>(), files.back().get<std::string>());
    }
    fmt::print("\n{}: {} ({}) for {} parameters, {:.3f} bits per weight, {} tokenizer, {:.2f} s\n",
               output, HumanBytes(static_cast<double>(r.output_bytes)), r.architecture, params,
               8.0 * static_cast<double>(r.output_bytes) / static_cast<double>(params),
               r.tokenizer_model.empty() ? "no" : r.tokenizer_model, r.seconds);
  }
  if (opts.split_max_bytes > 0) {
    run.CommitFiles(j, r.files);
  } else {
    run.Commit(j);
  }
  return true;
}

bool IsGgufFile(const std::string& path) {
  // Only a regular file is opened: opening a FIFO would wait for a writer.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {};
  return f.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

namespace {

nlohmann::json ScalarJson(const gguf::Scalar& s) {
  return std::visit([](const auto& v) { return nlohmann::json(v); }, s);
}

}  // namespace

void InspectGguf(const std::string& path, const std::string& json) {
  const gguf::SplitFile f(path);
  const gguf::Header& h = f.header();
  nlohmann::json r = {{"path", path},
                      {"format", "gguf"},
                      {"version", h.version},
                      {"alignment", h.alignment},
                      {"metadata", nlohmann::json::object()},
                      {"tensors", nlohmann::json::array()}};
  for (const auto& [key, v] : h.kv) {
    if (v.is_array) {
      // Arrays (token lists) are summarised: type, length and the first few items.
      nlohmann::json head = nlohmann::json::array();
      for (size_t i = 0; i < std::min<size_t>(v.items.size(), 4); ++i) {
        head.push_back(ScalarJson(v.items[i]));
      }
      r["metadata"][key] = {{"type", fmt::format("array[{}]", gguf::ValueTypeName(v.elem_type))},
                            {"length", v.items.size()},
                            {"first", head}};
    } else {
      r["metadata"][key] = {{"type", std::string(gguf::ValueTypeName(v.type()))},
                            {"value", ScalarJson(v.scalar)}};
    }
  }
  uint64_t params = 0;
  uint64_t bytes = 0;
  std::map<std::string, uint64_t> by_type;
  for (const gguf::TensorInfo& t : h.tensors) {
    params += t.numel();
    bytes += t.nbytes;
    by_type[std::string(ggml::Traits(t.type).name)] += t.numel();
    r["tensors"].push_back({{"name", t.name},
                            {"type", std::string(ggml::Traits(t.type).name)},
                            {"ne", t.ne},
                            {"bytes", t.nbytes},
                            {"split", f.SplitOf(t)},
                            {"offset", f.split(f.SplitOf(t)).header().data_offset + t.offset}});
  }
  r["params"] = params;
  r["bytes"] = bytes;
  r["params_by_type"] = by_type;
  r["split_count"] = f.split_count();
  if (json != "-") {
    fmt::print(
        "{}: GGUF v{}{}, {} keys, {} tensors, {} parameters, {} of tensor data ({:.3f} bits "
        "per weight)\n\n",
        path, h.version,
        f.split_count() > 1 ? fmt::format(", split into {} files", f.split_count()) : "",
        h.kv.size(), h.tensors.size(), params, HumanBytes(static_cast<double>(bytes)),
        params ? 8.0 * static_cast<double>(bytes) / static_cast<double>(params) : 0.0);
    for (const auto& [key, v] : r["metadata"].items()) {
      std::string shown = v.contains("value") ? v["value"].dump() : v["first"].dump() + " ...";
      if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
      fmt::print("{:<44} {:>14} {}\n", key,
                 v.contains("length")
                     ? fmt::format("{}x{}", v["type"].get<std::string>(), v["length"].get<size_t>())
                     : v["type"].get<std::string>(),
                 shown);
    }
    fmt::print("\n{:<32} {:>7} {:>16} {:>12}\n", "tensor", "type", "ne", "bytes");
    for (const gguf::TensorInfo& t : h.tensors) {
      fmt::print("{:<32} {:>7} {:>16} {:>12}\n", t.name, ggml::Traits(t.type).name,
                 fmt::format("{}", fmt::join(t.ne, "x")), t.nbytes);
    }
  }
  if (!json.empty()) WriteJsonReport(json, r);
}

namespace {

// Refuses an output that is or holds the input file.
void CheckOutputSpares(const std::string& input, const std::string& output) {
  namespace fs = std::filesystem;
  const fs::path in = fs::weakly_canonical(input), out = fs::weakly_canonical(output);
  const auto [end, _] = std::mismatch(out.begin(), out.end(), in.begin(), in.end());
  QTOOL_CHECK(end != out.end(), OptionError,
              "-o {} is or holds the input {}: it would be destroyed", output, input);
}

}  // namespace

void DequantizeGguf(const std::string& input, const std::string& output, bool force) {
  CheckOutputSpares(input, output);
  gguf::ImportGguf(gguf::SplitFile(input), output, force);
}

ModelInput::ModelInput(const std::string& path) : given_(path), path_(path) {
  if (!IsGgufFile(path)) return;
  const gguf::SplitFile file(path);
  temp_ = CreateTempSiblingDir(std::filesystem::temp_directory_path() / "qtool-gguf-input");
  try {
    // Named after the file, as the model's name (general.name of a GGUF written from it).
    const std::filesystem::path dir = temp_ / std::filesystem::path(path).stem();
    gguf::ImportGguf(file, dir, false);
    path_ = dir.string();
  } catch (...) {
    RemoveTemp(temp_);
    throw;
  }
}

ModelInput::~ModelInput() {
  if (!temp_.empty()) RemoveTemp(temp_);
}

void ModelInput::CheckOutput(const std::string& output) const {
  if (is_gguf()) CheckOutputSpares(given_, output);
}

}  // namespace qtool::cli
