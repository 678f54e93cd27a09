// Perplexity and divergence from a base model: the numbers quantisations are compared by.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "qtool/model/model.hpp"

namespace qtool {

struct EvalOptions {
  int64_t ctx = 0;  // window length including BOS; 0: the model's max_position_embeddings
  /// Windows run together per Forward() call hold at most this many tokens (at least one window).
  int64_t batch_tokens = 4096;
};

struct KlStats {
  double base_ppl = 0;
  double delta_ppl = 0;  // ppl - base_ppl
  double kl_mean = 0, kl_median = 0, kl_p99 = 0;
  double top1_agreement = 0;  // fraction of positions where both models' argmax agree
};

struct EvalReport {
  double ppl = 0;
  double mean_nll = 0;
  int64_t tokens = 0;  // predicted tokens
  int64_t windows = 0;
  int64_t ctx = 0;
  double seconds = 0;
  std::optional<KlStats> kl;

  nlohmann::json ToJson() const;
};

/// Cuts `tokens` into consecutive windows of ctx - 1 tokens (the last may be shorter), each
/// prefixed with `bos`: the convention of the reference numbers (mean NLL of every window token).
std::vector<std::vector<int32_t>> PerplexityWindows(const std::vector<int32_t>& tokens, int64_t ctx,
                                                    int32_t bos);

/// Called after each batch of windows: (windows done, windows in all).
using EvalProgressFn = std::function<void(int64_t, int64_t)>;

/// Perplexity of `model` on `tokens`; with `base`, also the KL divergence KL(base || model) of the
/// next-token distributions at every predicted position (mean, median, 99th percentile), top-1
/// agreement and the base's perplexity. Both models must share the vocabulary.
EvalReport Evaluate(const Model& model, const std::vector<int32_t>& tokens,
                    const EvalOptions& options, const Model* base = nullptr,
                    const EvalProgressFn& progress = {});

}  // namespace qtool
