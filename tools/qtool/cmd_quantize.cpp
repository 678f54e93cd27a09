// qtool quantize IN -o OUT [--bits B] [--group G] [--asym] ...
#include <fmt/format.h>

#include <cmath>
#include <regex>

#include "commands.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/spec.hpp"
#include "terminal.hpp"

namespace qtool::cli {
namespace {

struct QuantizeArgs {
  std::string input, output, json, format = "int", granularity = "group", max_shard;
  int bits = 4;
  int64_t group = 128;
  bool asym = false, force = false, quiet = false;
  int threads = 0;
  std::vector<std::string> include, exclude;
};

uint64_t ParseSize(const std::string& s) {
  static const std::regex re(R"(^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$)");
  std::smatch m;
  QTOOL_CHECK(std::regex_match(s, m, re), OptionError,
              "--max-shard-size \"{}\" is not a size such as 500MB or 5GB", s);
  double v = std::stod(m[1].str());
  const double base = m[3].matched && m[3].length() ? 1024.0 : 1000.0;
  const std::string unit = m[2].str();
  const int power =
      unit.empty() ? 0 : std::string("kmgt").find(static_cast<char>(std::tolower(unit[0]))) + 1;
  v *= std::pow(base, power);
  QTOOL_CHECK(v >= 1, OptionError, "--max-shard-size must be at least 1 byte");
  return static_cast<uint64_t>(v);
}

nlohmann::json CodecRecord(const QuantizeArgs& a) {
  int bits = a.bits;
  std::smatch m;
  static const std::regex int_re(R"(^int([0-9]+)$)");
  if (std::regex_match(a.format, m, int_re)) {
    bits = std::stoi(m[1].str());
  } else {
    QTOOL_CHECK(a.format == "int", OptionError, "unknown --format \"{}\"", a.format);
  }
  nlohmann::json r = {
      {"codec", "int"}, {"bits", bits}, {"symmetric", !a.asym}, {"granularity", a.granularity}};
  if (a.granularity == "group") r["group_size"] = a.group;
  QTOOL_CHECK(a.granularity == "group" || a.granularity == "channel" || a.granularity == "tensor",
              OptionError, "--granularity must be group, channel or tensor, got \"{}\"",
              a.granularity);
  return r;
}

void PrintReport(const QuantizeReport& r) {
  fmt::print("{:<48} {:>13} {:>6} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9}\n", "tensor", "shape",
             "bpw", "mse", "rmse", "max|err|", "sqnr dB", "cosine", "rel fro");
  size_t kept = 0;
  for (const TensorReport& t : r.tensors) {
    if (!t.quantized) {
      ++kept;
      continue;
    }
    const std::string shape = fmt::format("{}x{}", t.shape[0], t.shape[1]);
    fmt::print("{:<48} {:>13} {:>6.3f} {:>10.3e} {:>10.3e} {:>10.3e} {:>8.2f} {:>9.6f} {:>9.3e}\n",
               t.name, shape, t.bits_per_weight, t.stats.mse(), t.stats.rmse(), t.stats.max_abs_err,
               t.stats.sqnr_db(), t.stats.cosine(), t.stats.rel_frobenius());
  }
  ErrorStats all;
  for (const TensorReport& t : r.tensors) all += t.stats;
  fmt::print("\nquantised {} tensors ({} parameters) as {}; kept {} tensors unchanged\n",
             r.tensors.size() - kept, r.params_quantized, r.codec.dump(), kept);
  fmt::print("overall: sqnr {:.2f} dB, rmse {:.3e}, cosine {:.6f}\n", all.sqnr_db(), all.rmse(),
             all.cosine());
  fmt::print("size: {} -> {} ({:.2f}x), {:.3f} bits per quantised weight (scales included)\n",
             HumanBytes(static_cast<double>(r.bytes_in)),
             HumanBytes(static_cast<double>(r.bytes_out)),
             r.bytes_out ? static_cast<double>(r.bytes_in) / static_cast<double>(r.bytes_out) : 0.0,
             r.bits_per_weight());
  fmt::print("time: {:.3f} s, {:.2f} GB/s of input, {} threads\n", r.seconds,
             r.seconds > 0 ? static_cast<double>(r.bytes_in) / r.seconds / 1e9 : 0.0, r.threads);
}

}  // namespace

void RegisterQuantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand("quantize", "Quantise a safetensors checkpoint");
  cmd->add_option("input", a->input, "Checkpoint: a .safetensors file or a model directory")
      ->required();
  cmd->add_option("-o,--output", a->output, "Output model directory")->required();
  cmd->add_option("--format", a->format, "Number format: int (with --bits) or int2..int8")
      ->capture_default_str();
  cmd->add_option("--bits", a->bits, "Bits per weight for --format int (2..8)")
      ->capture_default_str();
  cmd->add_option("--group", a->group, "Group size along the input dimension")
      ->capture_default_str();
  cmd->add_option("--granularity", a->granularity, "group, channel (per output row) or tensor")
      ->capture_default_str();
  cmd->add_flag("--asym", a->asym, "Asymmetric (scale and zero-point) instead of symmetric");
  cmd->add_option("--include", a->include,
                  "Regex of further tensor names to quantise (repeatable); default: 2-D weights "
                  "inside the decoder blocks");
  cmd->add_option("--exclude", a->exclude,
                  "Regex of tensor names to keep as they are (repeatable)");
  cmd->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_option("--max-shard-size", a->max_shard, "Split the output into shards of this size");
  cmd->add_option("--json", a->json, "Also write the report as JSON to this file (- for stdout)");
  cmd->add_flag("--force", a->force, "Replace the output directory if it exists");
  cmd->add_flag("-q,--quiet", a->quiet, "Print no report");
  cmd->callback([a]() {
    QTOOL_CHECK(a->group >= 1, OptionError, "--group must be at least 1, got {}", a->group);
    QTOOL_CHECK(a->threads >= 0, OptionError, "--threads must not be negative");
    QuantizeOptions opts;
    opts.codec = CodecRecord(*a);
    opts.include = a->include;
    opts.exclude = a->exclude;
    opts.threads = a->threads;
    opts.overwrite = a->force;
    if (!a->max_shard.empty()) opts.max_shard_bytes = ParseSize(a->max_shard);
    MakeCodec(opts.codec, 1, 1);  // validate the options before opening anything
    const Checkpoint in = Checkpoint::Open(a->input);
    Progress progress("quantize");
    const QuantizeReport report = QuantizeCheckpoint(
        in, a->output, opts, [&](size_t done, size_t total, const std::string& name) {
          progress.Update(done, total, name);
        });
    progress.Done();
    if (!a->quiet && a->json != "-") PrintReport(report);
    if (!a->json.empty()) WriteJsonReport(a->json, report.ToJson());
  });
}

}  // namespace qtool::cli
