// qtool quantize IN -o OUT [--format F] [--bits B] [--group G] [--asym] [--block B]
//                [--double-quant] [--observer O] ...
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <regex>

#include "commands.hpp"
#include "gguf_output.hpp"
#include "qtool/core/error.hpp"
#include "qtool/format/spec.hpp"
#include "qtool/format/text.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/io/import.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/quant/activation.hpp"
#include "qtool/quant/codec.hpp"
#include "qtool/quant/mx_codec.hpp"
#include "qtool/quant/observer.hpp"
#include "staged_output.hpp"
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

// Bounds of the numeric options: past them the sizes computed from them would overflow.
constexpr int64_t kMaxGroup = int64_t{1} << 40;
constexpr int kMaxThreads = 4096;

uint64_t ParseSize(const std::string& s) {
  // At most 15 integer digits: std::stod then never overflows.
  static const std::regex re(R"(^\s*([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$)");
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
  QTOOL_CHECK(v < 0x1p63, OptionError, "--max-shard-size \"{}\" is too large", s);
  return static_cast<uint64_t>(v);
}

constexpr const char* kFormatHelp =
    "Number format: int (with --bits), int2..int8, ternary, nf4, fp4, fp8-e4m3, fp8-e5m2, mxfp4, "
    "mxfp6-e2m3, mxfp6-e3m2, mxfp8-e4m3, mxfp8-e5m2, mxint8, nvfp4; or the text form with its "
    "options, e.g. int4:g64:asym, nf4:b64:dq, fp8-e4m3:128x128 (docs/CODECS.md)";

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

Granularity ParseGranularity(const std::string& g) {
  QTOOL_CHECK(g == "group" || g == "channel" || g == "tensor", OptionError,
              "--granularity must be group, channel or tensor, got \"{}\"", g);
  return g == "group" ? Granularity::kGroup
                      : (g == "channel" ? Granularity::kChannel : Granularity::kTensor);
}

IntFormat IntFromArgs(const QuantizeArgs& a, int bits) {
  IntFormat f{.bits = bits, .symmetric = !a.asym, .granularity = ParseGranularity(a.granularity)};
  f.group = a.group;
  QTOOL_CHECK(!a.flat_groups || f.granularity == Granularity::kGroup, OptionError,
              "--flat-groups needs --granularity group");
  f.flat = a.flat_groups;
  f.observer = ObserverSpec::Parse(a.observer);
  return f;
}

FloatFormat FloatFromArgs(const QuantizeArgs& a, Element element) {
  FloatFormat f{.element = element, .saturate = !a.no_saturate};
  if (!a.block.empty()) {
    f.granularity = Granularity::kGroup;
    std::tie(f.block_rows, f.block_cols) = ParseBlock2d(a.block);
  } else if (a.granularity_given) {
    f.granularity = ParseGranularity(a.granularity);
    f.block_rows = 1;
    f.block_cols = a.group;
  } else if (element == Element::kE2M1) {
    f.granularity = Granularity::kGroup;  // FP4 needs fine scales: 1 x 32 by default
    f.block_rows = 1;
    f.block_cols = 32;
  }
  return f;
}

// ParseFormat with its error naming the option.
Format ParseFormatOption(const std::string& text) {
  try {
    return ParseFormat(text);
  } catch (const OptionError& e) {
    throw OptionError(fmt::format("--format: {}", e.what()));
  }
}

// The format the legacy flags describe with a --format name that has no options.
Format FormatFromFlags(const QuantizeArgs& a) {
  const std::string& f = a.format;
  std::smatch m;
  static const std::regex int_re(R"(^int([0-9]{1,3})$)");
  const bool is_int = f == "int" || std::regex_match(f, m, int_re);
  const Format named = is_int ? Format(IntFormat{}) : ParseFormatOption(f);
  const bool is_fp = std::holds_alternative<FloatFormat>(named);
  QTOOL_CHECK(is_int || a.observer == "minmax", OptionError,
              "--observer applies to the integer formats, not to \"{}\"", f);
  QTOOL_CHECK(std::holds_alternative<Nf4Format>(named) || !a.double_quant, OptionError,
              "--double-quant applies to nf4 and bnb-fp4 only");
  QTOOL_CHECK(is_int || !a.asym, OptionError, "--asym applies to the integer formats only");
  QTOOL_CHECK(is_int || !a.flat_groups, OptionError,
              "--flat-groups applies to the integer formats only");
  QTOOL_CHECK(is_fp || !a.no_saturate, OptionError, "--no-saturate applies to fp8/fp4 only");
  QTOOL_CHECK(!is_int || a.block.empty(), OptionError,
              "--block applies to nf4, fp4, fp8 and the MX formats; use --group for int");
  if (is_int) return IntFromArgs(a, f == "int" ? a.bits : std::stoi(m[1].str()));
  if (const auto* fp = std::get_if<FloatFormat>(&named)) return FloatFromArgs(a, fp->element);
  if (const auto* nf4 = std::get_if<Nf4Format>(&named)) {
    return Nf4Format{.block = a.block.empty() ? int64_t{64} : ParsePositive(a.block, "--block"),
                     .double_quant = a.double_quant,
                     .map = nf4->map};
  }
  if (const auto* mx = std::get_if<MxFormat>(&named)) {
    return MxFormat{.element = mx->element,
                    .block = a.block.empty() ? kMxBlock : ParsePositive(a.block, "--block")};
  }
  if (std::holds_alternative<Nvfp4Format>(named)) {
    QTOOL_CHECK(a.block.empty(), OptionError, "--block does not apply to nvfp4 (blocks of 16)");
    return Nvfp4Format{};
  }
  QTOOL_CHECK(a.block.empty(), OptionError, "--block does not apply to ternary");
  // BitNet b1.58: one absmean per tensor unless --granularity says otherwise.
  TernaryFormat t{.granularity =
                      a.granularity_given ? ParseGranularity(a.granularity) : Granularity::kTensor};
  t.group = a.group;
  return t;
}

// --format: the text form when it has options (then the format flags must not be given), else a
// name completed by the flags as before.
Format FormatFromArgs(const QuantizeArgs& a, const std::vector<const CLI::Option*>& format_flags) {
  if (a.format.find(':') == std::string::npos) return FormatFromFlags(a);
  for (const CLI::Option* o : format_flags) {
    QTOOL_CHECK(o->count() == 0, OptionError,
                "{} conflicts with --format \"{}\": give every option in the format text",
                o->get_name(), a.format);
  }
  return ParseFormatOption(a.format);
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
  cmd->add_option("input", a->input,
                  "Checkpoint: a .safetensors file, a model directory, or a GGUF file (decoded to "
                  "float with its tokenizer, then requantised)")
      ->required();
  cmd->add_option("-o,--output", a->output, "Output model directory")->required();
  cmd->add_option("--format", a->format, kFormatHelp)->capture_default_str();
  std::vector<const CLI::Option*> format_flags;
  format_flags.push_back(
      cmd->add_option("--bits", a->bits, "Bits per weight for --format int (2..8)")
          ->capture_default_str());
  format_flags.push_back(
      cmd->add_option("--group", a->group, "Group size along the input dimension")
          ->capture_default_str());
  CLI::Option* gran =
      cmd->add_option("--granularity", a->granularity, "group, channel (per output row) or tensor")
          ->capture_default_str();
  format_flags.push_back(gran);
  format_flags.push_back(cmd->add_option(
      "--block", a->block,
      "Block size: nf4 absmax block (default 64); MX block (default 32); fp8/fp4 scale "
      "block as COLS (1 x COLS) or ROWSxCOLS, e.g. 128x128"));
  format_flags.push_back(cmd->add_flag(
      "--double-quant", a->double_quant,
      "nf4: quantise the absmax values to 8 bits (bitsandbytes double quantisation)"));
  format_flags.push_back(
      cmd->add_flag("--no-saturate", a->no_saturate,
                    "fp8: overflow to Inf (E5M2) or NaN (E4M3) instead of saturating to the max"));
  format_flags.push_back(
      cmd->add_option("--observer", a->observer,
                      "Range choice for the integer formats: minmax, percentile:P, mse, mse:P (Lp "
                      "norm) or kl")
          ->capture_default_str());
  format_flags.push_back(cmd->add_flag(
      "--flat-groups", a->flat_groups,
      "Integer groups run over the flattened matrix and may span rows (the definition "
      "of reshape(-1, group) reference scripts); default: groups stay inside a row"));
  format_flags.push_back(
      cmd->add_flag("--asym", a->asym, "Asymmetric (scale and zero-point) instead of symmetric"));
  cmd->add_option("--activations", a->activations,
                  "none; int8: the runtime quantises each quantised Linear's input per token "
                  "(W8A8; --method smoothquant always does); fp8-static: to FP8 E4M3 with one "
                  "scale per layer measured on --calib (W8A8-FP8; needs --format fp8-e4m3)")
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
  auto out_format = std::make_shared<OutputFormatArgs>();
  AddOutputFormatOptions(cmd, *out_format);
  const auto gguf = AddGgufOptions(cmd);
  cmd->callback([a, gran, method, format_flags, out_format, gguf]() {
    a->granularity_given = gran->count() > 0;
    QTOOL_CHECK(a->group >= 1, OptionError, "--group must be at least 1, got {}", a->group);
    QTOOL_CHECK(a->group <= kMaxGroup, OptionError, "--group must be at most {}, got {}", kMaxGroup,
                a->group);
    QTOOL_CHECK(a->threads >= 0 && a->threads <= kMaxThreads, OptionError,
                "--threads must be in 0..{}, got {}", kMaxThreads, a->threads);
    QTOOL_CHECK(
        a->activations == "none" || a->activations == "int8" || a->activations == "fp8-static",
        OptionError, "--activations is none, int8 or fp8-static, not \"{}\"", a->activations);
    // A GGUF input is decoded to a float checkpoint with its tokenizer, and requantised from it.
    const ModelInput source(a->input);
    source.CheckOutput(a->output);
    const std::string& input_path = source.path();
    if (RunGgufQuantize(*gguf, out_format->format, input_path, a->output, a->threads, a->force,
                        a->quiet, a->json, *method)) {
      return;
    }
    QuantizeOptions opts;
    const Format format = FormatFromArgs(*a, format_flags);
    Validate(format);  // before opening anything
    opts.format = format;
    opts.include = a->include;
    opts.exclude = a->exclude;
    opts.threads = a->threads;
    // The output replaces an old one only in StagedRun::Commit, together with the report.
    opts.overwrite = false;
    if (a->activations == "int8") opts.activations = Int8TokenActivations();
    const bool fp8_static = a->activations == "fp8-static";
    if (fp8_static) {
      CheckFp8StaticWeights(format);
      const ExportFormat target = ParseExportFormat(out_format->format);
      QTOOL_CHECK(target == ExportFormat::kQtool || target == ExportFormat::kCompressedTensors,
                  OptionError,
                  "--activations fp8-static: --output-format {} cannot hold static input scales "
                  "(qtool and compressed-tensors can)",
                  out_format->format);
      opts.activations = Fp8StaticActivations();
    }
    if (!a->max_shard.empty()) opts.max_shard_bytes = ParseSize(a->max_shard);
    // Another output format: quantise into a qtool checkpoint inside the staging directory (so
    // that a failure or a signal removes it with the rest), then convert it into the staged output.
    const bool export_to = ParseExportFormat(out_format->format) != ExportFormat::kQtool;
    const Checkpoint original = Checkpoint::Open(input_path);
    StagedRun run(original, a->output, a->json, a->force);
    // Another tool's quantised checkpoint (an FP8 model with block scales, GPTQ, ...): decoded
    // into the staging directory first, and quantised from there.
    std::string input = input_path;
    if (DetectImportScheme(original)) {
      input = (run.output().parent_path() / (run.output().filename().string() + ".float")).string();
      DequantizeCheckpoint(original, input, false, a->threads);
    }
    const Checkpoint in = Checkpoint::Open(input);
    const std::filesystem::path quantized =
        export_to ? run.output().parent_path() / (run.output().filename().string() + ".qtool")
                  : run.output();
    const auto convert = [&] {
      if (input != input_path) std::filesystem::remove_all(input);
      if (!export_to) return;
      RunConvert(quantized.string(), run.output().string(), *out_format, false,
                 a->quiet || a->json == "-");
      std::filesystem::remove_all(quantized);
    };
    if (fp8_static) MeasureStaticInputScales(*method, opts, input, a->quiet || a->json == "-");
    if (auto r = RunQuantizeMethod(*method, opts, input, quantized.string(), a->quiet)) {
      nlohmann::json j = r->report.ToJson();
      j["solver"] = std::move(r->solver);
      convert();
      run.Commit(j);
      if (!a->quiet && a->json != "-") PrintReport(r->report);
      return;
    }
    Progress progress("quantize");
    const QuantizeReport report = QuantizeCheckpoint(
        in, quantized, opts, [&](size_t done, size_t total, const std::string& name) {
          progress.Update(done, total, name);
        });
    progress.Done();
    convert();
    run.Commit(report.ToJson());
    if (!a->quiet && a->json != "-") PrintReport(report);
  });
}

}  // namespace qtool::cli
