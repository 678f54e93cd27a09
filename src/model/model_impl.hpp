// The model's state, shared by the forward pass and the calibration runner.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "block.hpp"
#include "qtool/model/model.hpp"

namespace qtool {

struct Model::Impl {
  Checkpoint ck;
  LlamaConfig cfg;
  int threads = 1;
  RowMatrixXf embed;  // [vocab, hidden]
  Eigen::VectorXf final_norm;
  runtime::Linear head;
  runtime::RopeTable rope;
  std::optional<runtime::RopeTable>
      rope_local;  // the sliding-window layers' (LlamaConfig::rope_local)
  // Decoded blocks kept while their total stays within the budget; the rest are decoded per use.
  mutable std::vector<std::shared_ptr<const runtime::BlockWeights>> cache;
  mutable uint64_t cached_bytes = 0;
  uint64_t cache_budget = 0;

  Impl(const std::filesystem::path& path, const ModelOptions& options);
  std::shared_ptr<const runtime::BlockWeights> Block(int64_t i) const;
  /// The RoPE table of block i.
  const runtime::RopeTable& Rope(int64_t i) const {
    return rope_local && cfg.Sliding(i) ? *rope_local : rope;
  }
  /// The final norm and the output head on x [tokens, hidden]: logits [tokens, vocab] (soft-capped
  /// where the config says so).
  void Head(const RowMatrixXf& x, RowMatrixXf& logits) const;
  /// Embedding rows of the concatenated sequences [tokens, hidden] (times sqrt(hidden) in float32
  /// where the config says so); checks every id.
  RowMatrixXf Embed(const std::vector<std::vector<int32_t>>& sequences) const;
};

}  // namespace qtool
