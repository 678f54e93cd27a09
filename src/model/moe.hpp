// Mixture-of-experts feed-forward layers: Mixtral (`block_sparse_moe`: router `gate`, experts
// w1/w3/w2), Qwen2-MoE (`mlp`: router `gate`, experts gate/up/down_proj, `shared_expert` and its
// sigmoid `shared_expert_gate`) and Qwen3-MoE (as Qwen2-MoE without the shared expert).
//
// The forward pass follows transformers: router logits r = x G^T, p = softmax(r) in float32, the
// top_k largest p per token (renormalised to sum 1 when the config says so, always for Mixtral),
// and out = sum over the chosen experts e of p_e * down_e(silu(gate_e x) * up_e x), accumulated
// in expert order; plus sigmoid(x . g_s) * shared(x) when there is a shared expert.
//
// Capture (capture.hpp) names each expert's Linear layers by their checkpoint names relative to the
// block ("mlp.experts.3.up_proj", "block_sparse_moe.experts.3.w3"); an expert's layers are shown
// only the rows of the tokens the router sends to it, in token order.
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "block.hpp"

namespace qtool::runtime {

/// config.json keys of the mixture-of-experts architectures, beyond the dense ones, that
/// ParseMoeConfig reads or that leave inference alone (router losses and noise are training-only).
const std::set<std::string_view>& MoeConfigKeys(const std::string& model_type);

/// The MoE part of config.json for `model_type` ("mixtral", "qwen2_moe", "qwen3_moe"; a default
/// MoeConfig for any other). `intermediate_size` is Mixtral's expert width. Throws FormatError for
/// missing or inconsistent values and OptionError for settings the runtime does not implement.
MoeConfig ParseMoeConfig(const nlohmann::json& j, const std::string& model_type,
                         int64_t intermediate_size);

/// Which projection of a SwiGLU expert.
enum class ExpertPart { kGate, kUp, kDown };

/// The block-relative prefix of a MoE layer ("block_sparse_moe" or "mlp").
std::string MoePrefix(const LlamaConfig& cfg);
/// Block-relative names: the router, an expert's projection, the shared expert's projection and
/// the shared expert's gate.
std::string RouterName(const LlamaConfig& cfg);
std::string ExpertLinearName(const LlamaConfig& cfg, int64_t expert, ExpertPart part);
std::string SharedExpertLinearName(ExpertPart part);
inline constexpr const char* kSharedExpertGateName = "mlp.shared_expert_gate";

/// The Linear layers of a MoE feed-forward in execution order: router, each expert's gate, up and
/// down, the shared expert's gate, up and down, and the shared expert's gate.
std::vector<std::string> MoeLinearNames(const LlamaConfig& cfg);
/// [out, in] of a MoE Linear layer named as above; {0, 0} for any other name.
std::pair<int64_t, int64_t> MoeLinearShape(const LlamaConfig& cfg, const std::string& name);

struct Expert {
  Linear gate, up, down;
};

struct MoeWeights {
  Linear router;  // [experts, hidden]
  std::vector<Expert> experts;
  bool has_shared = false;
  Expert shared;
  Linear shared_gate;              // [1, hidden]
  std::vector<std::string> names;  // MoeLinearNames, for Find

  /// The Linear named by its block-relative name; nullptr when unknown.
  const Linear* Find(const std::string& name) const;
  uint64_t bytes() const;
};

/// Reads block `block`'s MoE weights (quantised or not) through LoadLinear.
MoeWeights LoadMoe(const Checkpoint& ck, const LlamaConfig& cfg, int64_t block,
                   InputQuantization w8a8, int threads);

/// Shows a Linear's input rows; returns true when the block stops there.
using SeeFn = std::function<bool(const std::string&, const RowMatrixXf&)>;

/// out [tokens, hidden] = the MoE feed-forward of h. Returns false when `see` asked to stop (out
/// is then unspecified).
bool RunMoe(const MoeWeights& w, const LlamaConfig& cfg, const RowMatrixXf& h, RowMatrixXf& out,
            int threads, const SeeFn& see);

}  // namespace qtool::runtime
