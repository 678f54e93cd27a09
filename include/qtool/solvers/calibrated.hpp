// Data-aware quantisation of a whole checkpoint, block by block: GPTQ, AWQ, SmoothQuant (W8) and
// HQQ, written as a quantised checkpoint in the "int" codec's layout (readable by ReadTensorF32,
// `qtool dequantize` and `qtool eval`).
//
// Calibration is sequential across blocks and, for GPTQ, within a block (q/k/v -> o -> gate/up ->
// down, each group's inputs captured with the earlier groups already quantised; the next block's
// inputs come from the quantised block). AWQ and SmoothQuant only rescale (the model's function is
// unchanged before rounding), so their next block's inputs come from the full-precision block.
//
// Memory: the calibration activations, one block's weights and its solver state (a Hessian of
// in_features^2 floats per group), and the checkpoint's memory map; the output is streamed.
//
// Mixture-of-experts blocks (Mixtral, Qwen2-MoE, Qwen3-MoE): each expert is calibrated on the
// tokens the router sends it (its own Hessians and activation statistics), an expert with fewer
// than moe_min_tokens on all the block's tokens (reported through on_expert). GPTQ holds the
// Hessians of a batch of experts at once, at most kMoeHessianBytes (or one). AWQ scales the shared
// post-attention norm over the router, every expert and the shared expert (the router and the
// shared expert's gate keep their full-precision values, rescaled exactly), and each expert's
// up -> down pair by that expert's output error on its own tokens. SmoothQuant refuses MoE blocks.
// The routers stay unquantised unless --include names them (the default exclusion,
// pipeline/selection.hpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "qtool/model/capture.hpp"
#include "qtool/model/tokenizer.hpp"
#include "qtool/pipeline/quantize.hpp"
#include "qtool/solvers/gptq.hpp"
#include "qtool/solvers/hqq.hpp"

namespace qtool::solvers {

enum class Method { kGptq, kAwq, kSmoothQuant, kHqq };

/// "gptq", "awq", "smoothquant" or "hqq"; throws OptionError for anything else.
Method ParseMethod(const std::string& name);
const char* MethodName(Method m);
inline constexpr int kSmoothAlphaGrid = 20;

/// True for the methods that need calibration text.
inline bool NeedsCalibration(Method m) { return m != Method::kHqq; }

/// Calibration of one expert of a mixture-of-experts block: the calibration tokens its router sent
/// it and, when that is fewer than CalibratedOptions::moe_min_tokens, the fallback used instead:
/// its layers were calibrated on all `fallback_tokens` tokens of the block as if each had been
/// routed to it.
struct ExpertReport {
  int64_t block = 0;
  int64_t expert = 0;
  int64_t tokens = 0;
  bool fallback = false;
  int64_t fallback_tokens = 0;
};
using ExpertFn = std::function<void(const ExpertReport&)>;

/// Default of CalibratedOptions::moe_min_tokens.
inline constexpr int64_t kDefaultMoeMinTokens = 128;

struct CalibratedOptions {
  Method method = Method::kGptq;
  /// GPTQ's options; group_size and threads are taken from the codec record and QuantizeOptions.
  GptqOptions gptq;
  /// HQQ's options; bits, group_size and threads likewise.
  HqqOptions hqq;
  double alpha = 0.5;  // SmoothQuant migration strength
  /// SmoothQuant: instead of `alpha`, per fold the alpha in {0, 1/kSmoothAlphaGrid, ..., 1} (or no
  /// smoothing) with the smallest output error of the block run as W8A8.
  bool alpha_search = false;
  int awq_grid = 20;  // AWQ: alpha in {0, 1/grid, ..., (grid-1)/grid}
  int awq_clip_grid = 20;
  double awq_max_shrink = 0.5;
  int64_t awq_clip_tokens = 512;     // calibration rows the clipping search uses
  CalibrationOptions calib;          // seq_len 0: the smaller of 512 and the model's context
  std::filesystem::path calib_text;  // read by ReadCalibrationData (model/tokenizer.hpp)
  /// Mixture-of-experts blocks: an expert routed fewer calibration tokens than this is calibrated
  /// on all the block's tokens as if routed to it (GPTQ's Hessians, AWQ's statistics), never left
  /// to plain rounding. GPTQ's Hessian of an expert's input is full rank only from about as many
  /// tokens as the input has features; 128 keeps the fallback for experts that are truly starved.
  int64_t moe_min_tokens = kDefaultMoeMinTokens;
  /// Called for every expert of each MoE block, in order, before the block is solved.
  ExpertFn on_expert;
  /// Called once with the calibration data read and the windows drawn from it.
  std::function<void(const CalibrationData&, const std::vector<std::vector<int32_t>>&)>
      on_calibration_data;
};

/// One solved layer: its block, short name, solver loss (GPTQ: sum (w-q)^2 L_qq^2/2; AWQ: the
/// block's output MSE at the chosen alpha; SmoothQuant: 0, or with the alpha search the W8A8
/// block's output MSE; HQQ: mean |W - W^|) and what was chosen.
struct LayerReport {
  int64_t block = 0;
  std::string name;
  double loss = 0;
  double seconds = 0;
  std::string detail;
};
using LayerFn = std::function<void(const LayerReport&)>;

/// Quantises the checkpoint at `model_dir` into `out`. options.format must be an integer format
/// with group or channel granularity (GPTQ with act-order stores each column's group, g_idx, unless
/// its groups are static). Throws OptionError for unsupported combinations and the runtime's errors
/// for a model it cannot run.
QuantizeReport QuantizeCalibrated(const std::filesystem::path& model_dir,
                                  const std::filesystem::path& out, const QuantizeOptions& options,
                                  const CalibratedOptions& method, const LayerFn& on_layer = {},
                                  const ProgressFn& progress = {});

}  // namespace qtool::solvers
