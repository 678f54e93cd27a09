// qtool quantize IN -o OUT [--format F] [--bits B] [--group G] [--asym] [--block B]
//                [--double-quant] [--observer O] ...
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <regex>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/mx_codec.hpp"
#include "qtool/quant/observer.hpp"
#include "qtool/quant/spec.hpp"
#include "terminal.hpp"

namespace qtool::cli {
namespace {

struct QuantizeArgs {
  std::string input, output, json, format = "int", granularity = "group", max_shard;
  std::string block, observer = "minmax", activations = "none";
  int bits = 4;
  int64_t group = 128;
  bool asym = false, force = false, quiet = false, double_quant = false, no_saturate = false;
  bool granularity_given = false, flat_groups = false;
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

constexpr const char* kFormatHelp =
    "Number format: int (with --bits), int2..int8, ternary, nf4, fp4, fp8-e4m3, fp8-e5m2, mxfp4, "
    "mxfp6-e2m3, mxfp6-e3m2, mxfp8-e4m3, mxfp8-e5m2, mxint8 (docs/CODECS.md)";

// MX format names and their element formats.
const std::map<std::string, std::string>& MxFormats() {
  static const std::map<std::string, std::string> m = {
      {"mxfp4", "e2m1"},      {"mxfp6-e2m3", "e2m3"}, {"mxfp6-e3m2", "e3m2"},
      {"mxfp8-e4m3", "e4m3"}, {"mxfp8-e5m2", "e5m2"}, {"mxint8", "int8"}};
  return m;
}

// Scaled small-float formats and their element formats.
const std::map<std::string, std::string>& FpFormats() {
  static const std::map<std::string, std::string> m = {
      {"fp4", "e2m1"}, {"fp8-e4m3", "e4m3"}, {"fp8-e5m2", "e5m2"}};
  return m;
}

int64_t ParsePositive(const std::string& s, const char* what) {
  static const std::regex re(R"(^[0-9]{1,9}$)");
  QTOOL_CHECK(std::regex_match(s, re) && std::stoll(s) >= 1, OptionError,
              "{} \"{}\" is not a positive integer", what, s);
  return std::stoll(s);
}

// --block for the scaled float formats: "C" (1 x C groups along a row) or "RxC" (2-D blocks).
std::pair<int64_t, int64_t> ParseBlock2d(const std::string& s) {
  const size_t x = s.find_first_of("xX");
  if (x == std::string::npos) return {1, ParsePositive(s, "--block")};
  return {ParsePositive(s.substr(0, x), "--block rows"), ParsePositive(s.substr(x + 1), "--block")};
}

nlohmann::json IntRecord(const QuantizeArgs& a, int bits) {
  QTOOL_CHECK(a.granularity == "group" || a.granularity == "channel" || a.granularity == "tensor",
              OptionError, "--granularity must be group, channel or tensor, got \"{}\"",
              a.granularity);
  nlohmann::json r = {
      {"codec", "int"}, {"bits", bits}, {"symmetric", !a.asym}, {"granularity", a.granularity}};
  if (a.granularity == "group") r["group_size"] = a.group;
  if (a.flat_groups) {
    QTOOL_CHECK(a.granularity == "group", OptionError, "--flat-groups needs --granularity group");
    r["flat_groups"] = true;
  }
  const ObserverSpec observer = ObserverSpec::Parse(a.observer);
  if (observer.kind != ObserverKind::kMinMax) r["observer"] = observer.ToString();
  return r;
}

nlohmann::json FpRecord(const QuantizeArgs& a, const std::string& element) {
  nlohmann::json r = {{"codec", "fp"}, {"format", element}, {"saturate", !a.no_saturate}};
  if (!a.block.empty()) {
    const auto [br, bc] = ParseBlock2d(a.block);
    r["scale"] = "block";
    r["block"] = {br, bc};
  } else if (a.granularity_given && a.granularity == "group") {
    r["scale"] = "block";
    r["block"] = {1, a.group};
  } else if (a.granularity_given) {
    QTOOL_CHECK(a.granularity == "channel" || a.granularity == "tensor", OptionError,
                "--granularity must be group, channel or tensor, got \"{}\"", a.granularity);
    r["scale"] = a.granularity;
  } else if (element == "e2m1") {
    r["scale"] = "block";  // FP4 needs fine scales: 1 x 32 by default
    r["block"] = {1, 32};
  } else {
    r["scale"] = "channel";
  }
  return r;
}

nlohmann::json CodecRecord(const QuantizeArgs& a) {
  const std::string& f = a.format;
  std::smatch m;
  static const std::regex int_re(R"(^int([0-9]+)$)");
  const bool is_int = f == "int" || std::regex_match(f, m, int_re);
  const bool is_fp = FpFormats().contains(f);
  QTOOL_CHECK(is_int || a.observer == "minmax", OptionError,
              "--observer applies to the integer formats, not to \"{}\"", f);
  QTOOL_CHECK(f == "nf4" || !a.double_quant, OptionError, "--double-quant applies to nf4 only");
  QTOOL_CHECK(is_int || !a.asym, OptionError, "--asym applies to the integer formats only");
  QTOOL_CHECK(is_int || !a.flat_groups, OptionError,
              "--flat-groups applies to the integer formats only");
  QTOOL_CHECK(is_fp || !a.no_saturate, OptionError, "--no-saturate applies to fp8/fp4 only");
  QTOOL_CHECK(!is_int || a.block.empty(), OptionError,
              "--block applies to nf4, fp4, fp8 and the MX formats; use --group for int");
  if (is_int) return IntRecord(a, f == "int" ? a.bits : std::stoi(m[1].str()));
  if (is_fp) return FpRecord(a, FpFormats().at(f));
  if (f == "nf4") {
    return {{"codec", "nf4"},
            {"block", a.block.empty() ? int64_t{64} : ParsePositive(a.block, "--block")},
            {"double_quant", a.double_quant}};
  }
  if (const auto it = MxFormats().find(f); it != MxFormats().end()) {
    return {{"codec", "mx"},
            {"element", it->second},
            {"block", a.block.empty() ? kMxBlock : ParsePositive(a.block, "--block")}};
  }
  if (f == "ternary") {
    QTOOL_CHECK(a.block.empty(), OptionError, "--block does not apply to ternary");
    QuantizeArgs t = a;
    if (!a.granularity_given) t.granularity = "tensor";  // BitNet b1.58: one absmean per tensor
    nlohmann::json r = IntRecord(t, 2);
    r.erase("bits");
    r.erase("symmetric");
    r["codec"] = "ternary";
    return r;
  }
  throw OptionError(fmt::format("unknown --format \"{}\"", f));
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
  cmd->add_option("--format", a->format, kFormatHelp)->capture_default_str();
  cmd->add_option("--bits", a->bits, "Bits per weight for --format int (2..8)")
      ->capture_default_str();
  cmd->add_option("--group", a->group, "Group size along the input dimension")
      ->capture_default_str();
  CLI::Option* gran =
      cmd->add_option("--granularity", a->granularity, "group, channel (per output row) or tensor")
          ->capture_default_str();
  cmd->add_option("--block", a->block,
                  "Block size: nf4 absmax block (default 64); MX block (default 32); fp8/fp4 scale "
                  "block as COLS (1 x COLS) or ROWSxCOLS, e.g. 128x128");
  cmd->add_flag("--double-quant", a->double_quant,
                "nf4: quantise the absmax values to 8 bits (bitsandbytes double quantisation)");
  cmd->add_flag("--no-saturate", a->no_saturate,
                "fp8: overflow to Inf (E5M2) or NaN (E4M3) instead of saturating to the max");
  cmd->add_option("--observer", a->observer,
                  "Range choice for the integer formats: minmax, percentile:P, mse, mse:P (Lp "
                  "norm) or kl")
      ->capture_default_str();
  cmd->add_flag("--flat-groups", a->flat_groups,
                "Integer groups run over the flattened matrix and may span rows (the definition "
                "of reshape(-1, group) reference scripts); default: groups stay inside a row");
  cmd->add_flag("--asym", a->asym, "Asymmetric (scale and zero-point) instead of symmetric");
  cmd->add_option("--activations", a->activations,
                  "none, or int8: the runtime quantises each quantised Linear's input per token "
                  "(W8A8; --method smoothquant always does)")
      ->capture_default_str();
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
  const auto method = AddMethodOptions(cmd);
  const auto gguf = AddGgufOptions(cmd);
  cmd->callback([a, gran, method, gguf]() {
    a->granularity_given = gran->count() > 0;
    QTOOL_CHECK(a->group >= 1, OptionError, "--group must be at least 1, got {}", a->group);
    QTOOL_CHECK(a->threads >= 0, OptionError, "--threads must not be negative");
    QTOOL_CHECK(a->activations == "none" || a->activations == "int8", OptionError,
                "--activations is none or int8, not \"{}\"", a->activations);
    if (RunGgufQuantize(*gguf, a->input, a->output, a->threads, a->force, a->quiet, a->json)) {
      return;
    }
    QuantizeOptions opts;
    opts.codec = CodecRecord(*a);
    opts.include = a->include;
    opts.exclude = a->exclude;
    opts.threads = a->threads;
    opts.overwrite = a->force;
    if (a->activations == "int8") opts.activations = Int8TokenActivations();
    if (!a->max_shard.empty()) opts.max_shard_bytes = ParseSize(a->max_shard);
    MakeCodec(opts.codec, 1, 1);  // validate the options before opening anything
    if (auto r = RunQuantizeMethod(*method, opts, a->input, a->output, a->quiet)) {
      if (!a->quiet && a->json != "-") PrintReport(r->report);
      nlohmann::json j = r->report.ToJson();
      j["solver"] = std::move(r->solver);
      if (!a->json.empty()) WriteJsonReport(a->json, j);
      return;
    }
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
