// The calibrated methods of `qtool quantize`: --method gptq|awq|smoothquant|hqq (rtn, the default,
// is the codec path of cmd_quantize.cpp), their options, per-layer progress and solver losses.
#include <fmt/format.h>

#include <cmath>
#include <exception>
#include <optional>
#include <string>

#include "commands.hpp"
#include "qtool/core/checked.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/input_file.hpp"
#include "qtool/io/format_record.hpp"
#include "qtool/solvers/calibrated.hpp"
#include "qtool/solvers/gguf_calibrated.hpp"
#include "qtool/solvers/input_scales.hpp"
#include "terminal.hpp"

namespace qtool::cli {

struct MethodArgs {
  std::string method = "rtn", alpha = "0.5";
  CalibrationArgs data;
  bool act_order = false, static_groups = false, mse = false;
  double damp = 0.01;
  int64_t moe_min_tokens = solvers::kDefaultMoeMinTokens;
};

void AddCalibrationOptions(CLI::App* cmd, CalibrationArgs& a, const std::string& calib_help) {
  cmd->add_option("--calib", a.file, calib_help);
  cmd->add_option("--nsamples", a.nsamples, "Calibration samples")->capture_default_str();
  cmd->add_option("--seqlen", a.seqlen,
                  "Tokens per calibration sample, BOS included (default: the smaller of 512 and "
                  "the model's context)");
  cmd->add_option("--seed", a.seed, "Seed of the calibration sample draw")->capture_default_str();
}

void CheckCalibrationArgs(const CalibrationArgs& a) {
  constexpr int64_t kMaxSamples = int64_t{1} << 20, kMaxTokens = int64_t{1} << 26;
  QTOOL_CHECK(a.nsamples >= 1 && a.nsamples <= kMaxSamples, OptionError,
              "--nsamples must be in 1..{}, got {}", kMaxSamples, a.nsamples);
  // Without --seqlen the sample length is the smaller of 512 and the model's context.
  const int64_t seqlen = a.seqlen.value_or(512);
  QTOOL_CHECK(seqlen >= 2 && seqlen <= kMaxSamples, OptionError,
              "--seqlen must be in 2..{} (BOS and one token at least), got {}", kMaxSamples,
              seqlen);
  const auto tokens = CheckedMul(a.nsamples, seqlen);
  QTOOL_CHECK(tokens && *tokens <= kMaxTokens, OptionError,
              "--nsamples {} x --seqlen {} is more than {} calibration tokens", a.nsamples, seqlen,
              kMaxTokens);
}

std::shared_ptr<MethodArgs> AddMethodOptions(CLI::App* cmd) {
  auto m = std::make_shared<MethodArgs>();
  cmd->add_option("--method", m->method,
                  "rtn (round to nearest), gptq, awq, smoothquant (W8A8: int8 per-channel "
                  "weights after smoothing) or hqq (asymmetric, calibration-free)")
      ->capture_default_str();
  AddCalibrationOptions(cmd, m->data,
                        "Calibration data (gptq, awq, smoothquant): text, .jsonl, or token ids "
                        "(.ids, .tokens, .bin)");
  cmd->add_flag("--act-order", m->act_order,
                "GPTQ: columns in order of decreasing Hessian diagonal (each column's group is "
                "stored, g_idx, unless --static-groups)");
  cmd->add_flag("--static-groups", m->static_groups,
                "GPTQ: group parameters from the original weights, fitted up front");
  cmd->add_flag("--mse", m->mse, "GPTQ: MSE search of each group's range");
  cmd->add_option("--damp", m->damp, "GPTQ: relative dampening of the Hessian")
      ->capture_default_str();
  cmd->add_option("--alpha", m->alpha,
                  "SmoothQuant: migration strength in [0, 1], or auto (per norm, the one, or no "
                  "smoothing, with the smallest output error of the block run as W8A8)")
      ->capture_default_str();
  cmd->add_option("--moe-min-tokens", m->moe_min_tokens,
                  "Mixture-of-experts models (gptq, awq): an expert the router sends fewer "
                  "calibration tokens is calibrated on all the block's tokens as if routed to it")
      ->capture_default_str();
  return m;
}

namespace {

// The method's options from the command line, checked (m.method is not rtn).
solvers::CalibratedOptions CalibratedFromArgs(const MethodArgs& m) {
  solvers::CalibratedOptions c;
  c.method = solvers::ParseMethod(m.method);
  QTOOL_CHECK(!solvers::NeedsCalibration(c.method) || !m.data.file.empty(), OptionError,
              "--method {} needs --calib FILE", m.method);
  QTOOL_CHECK(std::isfinite(m.damp) && m.damp >= 0, OptionError,
              "--damp must be a finite number, not negative");
  CheckCalibrationArgs(m.data);
  QTOOL_CHECK(m.moe_min_tokens >= 1, OptionError, "--moe-min-tokens must be at least 1, got {}",
              m.moe_min_tokens);
  c.moe_min_tokens = m.moe_min_tokens;
  c.alpha_search = m.alpha == "auto";
  if (!c.alpha_search) {
    size_t used = 0;
    try {
      c.alpha = std::stod(m.alpha, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    QTOOL_CHECK(used == m.alpha.size() && c.alpha >= 0 && c.alpha <= 1, OptionError,
                "--alpha is a number in [0, 1] or auto, not \"{}\"", m.alpha);
  }
  if (!m.data.file.empty()) CheckRegularFile(m.data.file);  // a FIFO would block its reader
  c.calib_text = m.data.file;
  c.calib.num_samples = m.data.nsamples;
  c.calib.seq_len = m.data.seqlen.value_or(0);
  c.calib.seed = m.data.seed;
  c.gptq.act_order = m.act_order;
  c.gptq.static_groups = m.static_groups;
  c.gptq.mse = m.mse;
  c.gptq.damp = m.damp;
  return c;
}

// Per-layer progress on stderr (unless quiet) and into solver["layers"], the calibration data
// into solver["calibration"].
solvers::LayerFn ReportLayers(const MethodArgs& m, bool quiet, Progress& progress,
                              nlohmann::json& solver, solvers::CalibratedOptions& c) {
  solver = {{"method", m.method}, {"layers", nlohmann::json::array()}};
  c.on_calibration_data = [&m, &solver, quiet](const CalibrationData& d,
                                               const std::vector<std::vector<int32_t>>& windows) {
    const size_t len = windows.empty() ? 0 : windows[0].size();
    solver["calibration"] = {{"file", m.data.file},
                             {"format", d.format},
                             {"documents", d.documents},
                             {"tokens", d.tokens.size()},
                             {"windows", windows.size()},
                             {"window_tokens", len},
                             {"bos", d.bos}};
    if (quiet) return;
    fmt::print(stderr,
               "calibration: {} ({}, {} document(s)): {} tokens, {} windows of {} tokens{}\n",
               m.data.file, d.format, d.documents, d.tokens.size(), windows.size(), len,
               d.bos >= 0 ? fmt::format(" (BOS {} first)", d.bos) : std::string(" (no BOS)"));
  };
  c.on_expert = [&m, &solver, &progress, quiet](const solvers::ExpertReport& e) {
    if (!solver.contains("experts")) solver["experts"] = nlohmann::json::array();
    nlohmann::json entry = {
        {"block", e.block}, {"expert", e.expert}, {"tokens", e.tokens}, {"fallback", e.fallback}};
    if (e.fallback) {
      entry["fallback_method"] = "all block tokens";
      entry["fallback_tokens"] = e.fallback_tokens;
    }
    solver["experts"].push_back(std::move(entry));
    if (quiet) return;
    progress.Done();
    fmt::print(stderr, "{} block {:>3} expert {:>3}: {:>8} tokens{}\n", m.method, e.block, e.expert,
               e.tokens,
               e.fallback ? fmt::format(" < {}: fallback, calibrated on all {} tokens of the block",
                                        m.moe_min_tokens, e.fallback_tokens)
                          : std::string());
  };
  return [&m, &solver, &progress, quiet](const solvers::LayerReport& l) {
    solver["layers"].push_back({{"block", l.block},
                                {"name", l.name},
                                {"loss", l.loss},
                                {"seconds", l.seconds},
                                {"detail", l.detail}});
    if (quiet) return;
    progress.Done();
    fmt::print(stderr, "{} block {:>3} {:<26} loss {:>11.4e} {:>7.2f} s {}\n", m.method, l.block,
               l.name, l.loss, l.seconds, l.detail);
  };
}

}  // namespace

std::optional<MethodResult> RunQuantizeMethod(const MethodArgs& m, QuantizeOptions opts,
                                              const std::string& input, const std::string& output,
                                              bool quiet) {
  if (m.method == "rtn") return std::nullopt;
  solvers::CalibratedOptions c = CalibratedFromArgs(m);
  if (c.method == solvers::Method::kSmoothQuant) {
    opts.format = IntFormat{.bits = 8, .granularity = Granularity::kChannel};
  } else if (c.method == solvers::Method::kHqq) {
    // HQQ fits zero-points.
    if (auto* i = std::get_if<IntFormat>(&opts.format)) i->symmetric = false;
  }
  MethodResult result;
  Progress progress("quantize");
  const solvers::LayerFn on_layer = ReportLayers(m, quiet, progress, result.solver, c);
  result.report = solvers::QuantizeCalibrated(
      input, output, opts, c, on_layer, [&](size_t done, size_t total, const std::string& name) {
        progress.Update(done, total, name);
      });
  progress.Done();
  return result;
}

void MeasureStaticInputScales(const MethodArgs& m, QuantizeOptions& opts, const std::string& input,
                              bool quiet) {
  QTOOL_CHECK(m.method == "rtn", OptionError,
              "--activations fp8-static quantises FP8 weights by rounding to nearest: drop "
              "--method {}",
              m.method);
  QTOOL_CHECK(!m.data.file.empty(), OptionError,
              "--activations fp8-static measures the input scales on calibration data: give "
              "--calib FILE");
  CheckCalibrationArgs(m.data);
  CheckRegularFile(m.data.file);  // a FIFO would block its reader
  solvers::CalibratedOptions c;
  c.calib_text = m.data.file;
  c.calib.num_samples = m.data.nsamples;
  c.calib.seq_len = m.data.seqlen.value_or(0);
  c.calib.seed = m.data.seed;
  c.on_calibration_data = [&m, quiet](const CalibrationData& d,
                                      const std::vector<std::vector<int32_t>>& windows) {
    if (quiet) return;
    fmt::print(stderr, "input scales: {} ({}): {} windows of {} tokens\n", m.data.file, d.format,
               windows.size(), windows.empty() ? 0 : windows[0].size());
  };
  opts.input_scales = solvers::MeasureFp8InputScales(input, opts, c);
}

std::optional<GgufMethodResult> RunGgufMethod(
    const MethodArgs& m, const gguf::ExportOptions& opts, const std::string& input,
    const std::string& output, bool quiet,
    const std::function<void(size_t, size_t, const std::string&)>& progress) {
  if (m.method == "rtn") return std::nullopt;
  // GPTQ already weights every column by the calibration data's Hessian, whose diagonal is the
  // importance matrix, and its block scales are the types' unweighted reference searches; AWQ
  // rescales the very columns the importances were measured on. Refused before any work, rather
  // than applied to the few tensors neither solves.
  QTOOL_CHECK(opts.imatrix == nullptr, OptionError,
              "--imatrix applies to --method rtn only with --output-format gguf: --method {} "
              "calibrates on the data itself (GPTQ weights every column by the calibration "
              "Hessian, whose diagonal is the importance matrix; AWQ rescales the columns it was "
              "measured on)",
              m.method);
  solvers::CalibratedOptions c = CalibratedFromArgs(m);
  QTOOL_CHECK(!m.static_groups && !m.mse, OptionError,
              "--static-groups and --mse do not apply to --output-format gguf (each block's "
              "scales are the GGUF type's own search, fitted as GPTQ reaches the block)");
  GgufMethodResult result;
  Progress layer_progress("quantize");
  const solvers::LayerFn on_layer = ReportLayers(m, quiet, layer_progress, result.solver, c);
  result.report = solvers::QuantizeCalibratedGguf(input, output, opts, c, on_layer, progress);
  return result;
}

}  // namespace qtool::cli
