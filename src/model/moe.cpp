#include "moe.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/io/quantized.hpp"
#include "qtool/model/capture.hpp"

namespace qtool {

bool LlamaConfig::IsMoeLayer(int64_t layer) const {
  if (moe.num_experts == 0) return false;
  const auto& only = moe.mlp_only_layers;
  return std::find(only.begin(), only.end(), layer) == only.end() &&
         (layer + 1) % moe.decoder_sparse_step == 0;
}

namespace runtime {
namespace {

using nlohmann::json;

const json* Find(const json& j, const char* key) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t Int(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json* v = Find(j, key);
  QTOOL_CHECK(v != nullptr, FormatError, "config.json: \"{}\" is missing", key);
  // A value beyond int64 reads as negative, which the range check refuses.
  QTOOL_CHECK(v->is_number_integer(), FormatError, "config.json: \"{}\" must be an integer, got {}",
              key, v->dump());
  const int64_t x = v->get<int64_t>();
  QTOOL_CHECK(x >= lo && x <= hi, FormatError, "config.json: \"{}\" = {} is out of range {}..{}",
              key, x, lo, hi);
  return x;
}

bool Bool(const json& j, const char* key, bool fallback) {
  const json* v = Find(j, key);
  if (v == nullptr) return fallback;
  QTOOL_CHECK(v->is_boolean(), FormatError, "config.json: \"{}\" must be true or false, got {}",
              key, v->dump());
  return v->get<bool>();
}

constexpr int64_t kMaxExperts = int64_t{1} << 12;
constexpr int64_t kMaxWidth = int64_t{1} << 20;

const char* PartName(bool mixtral, ExpertPart part) {
  switch (part) {
    case ExpertPart::kGate:
      return mixtral ? "w1" : "gate_proj";
    case ExpertPart::kUp:
      return mixtral ? "w3" : "up_proj";
    case ExpertPart::kDown:
      return mixtral ? "w2" : "down_proj";
  }
  return "?";
}

bool IsMixtral(const LlamaConfig& cfg) { return cfg.model_type == "mixtral"; }

// SwiGLU expert on the rows of h: down(silu(gate h) * up h), showing the layers' inputs.
// Returns false when `see` stops the block.
bool RunExpert(const Expert& e, const std::string& gate_name, const std::string& up_name,
               const std::string& down_name, const RowMatrixXf& h, RowMatrixXf& out, int threads,
               const SeeFn& see) {
  if (see(gate_name, h) || see(up_name, h)) return false;
  RowMatrixXf g, u;
  if (h.rows() > 0) {
    e.gate.Apply(h, g, threads);
    e.up.Apply(h, u, threads);
    g = (g.array() / (1.0f + (-g.array()).exp()) * u.array()).matrix();
  } else {
    g.resize(0, e.gate.out());
  }
  if (see(down_name, g)) return false;
  if (g.rows() > 0) {
    e.down.Apply(g, out, threads);
  } else {
    out.resize(0, e.down.out());
  }
  return true;
}

}  // namespace

const std::set<std::string_view>& MoeConfigKeys(const std::string& model_type) {
  static const std::set<std::string_view> none;
  static const std::set<std::string_view> mixtral = {"num_local_experts", "num_experts_per_tok",
                                                     "router_aux_loss_coef", "output_router_logits",
                                                     "router_jitter_noise"};
  static const std::set<std::string_view> qwen2 = {
      "num_experts",           "num_experts_per_tok",
      "moe_intermediate_size", "shared_expert_intermediate_size",
      "norm_topk_prob",        "decoder_sparse_step",
      "mlp_only_layers",       "router_aux_loss_coef",
      "output_router_logits",  "qkv_bias"};
  static const std::set<std::string_view> qwen3 = {
      "num_experts",           "num_local_experts",    "num_experts_per_tok",
      "moe_intermediate_size", "norm_topk_prob",       "decoder_sparse_step",
      "mlp_only_layers",       "router_aux_loss_coef", "output_router_logits"};
  if (model_type == "mixtral") return mixtral;
  if (model_type == "qwen2_moe") return qwen2;
  if (model_type == "qwen3_moe") return qwen3;
  return none;
}

MoeConfig ParseMoeConfig(const json& j, const std::string& model_type, int64_t intermediate_size) {
  MoeConfig m;
  if (model_type != "mixtral" && model_type != "qwen2_moe" && model_type != "qwen3_moe") return m;
  if (model_type == "mixtral") {
    m.num_experts = Int(j, "num_local_experts", 1, kMaxExperts);
    m.expert_intermediate_size = intermediate_size;
    m.norm_topk_prob = true;  // MixtralTopKRouter always renormalises
  } else {
    // Qwen3-MoE's transformers 5 config writes num_local_experts (an alias of num_experts).
    const char* key = Find(j, "num_experts") || !Find(j, "num_local_experts") ? "num_experts"
                                                                              : "num_local_experts";
    m.num_experts = Int(j, key, 1, kMaxExperts);
    if (Find(j, "num_experts") && Find(j, "num_local_experts")) {
      QTOOL_CHECK(Int(j, "num_local_experts", 1, kMaxExperts) == m.num_experts, FormatError,
                  "config.json: \"num_experts\" and \"num_local_experts\" disagree");
    }
    m.expert_intermediate_size = Int(j, "moe_intermediate_size", 1, kMaxWidth);
    m.norm_topk_prob = Bool(j, "norm_topk_prob", false);
    if (Find(j, "decoder_sparse_step")) {
      m.decoder_sparse_step = Int(j, "decoder_sparse_step", 1, std::numeric_limits<int32_t>::max());
    }
    if (const json* only = Find(j, "mlp_only_layers")) {
      QTOOL_CHECK(only->is_array(), FormatError,
                  "config.json: \"mlp_only_layers\" must be an array of layer indices");
      for (const json& v : *only) {
        QTOOL_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, FormatError,
                    "config.json: \"mlp_only_layers\" holds {}, not a layer index", v.dump());
        m.mlp_only_layers.push_back(v.get<int64_t>());
      }
    }
    if (model_type == "qwen2_moe") {
      m.shared_intermediate_size = Int(j, "shared_expert_intermediate_size", 1, kMaxWidth);
    }
    // transformers derives sliding-window layers of these models in its own way; only the
    // transformers 5 layer_types list (read with the dense keys) is implemented.
    QTOOL_CHECK(!Bool(j, "use_sliding_window", false) || Find(j, "layer_types"), OptionError,
                "config.json: \"use_sliding_window\" = true is not implemented by the {} runtime "
                "without \"layer_types\"",
                model_type);
  }
  m.top_k = Int(j, "num_experts_per_tok", 1, m.num_experts);
  return m;
}

std::string MoePrefix(const LlamaConfig& cfg) {
  return IsMixtral(cfg) ? "block_sparse_moe" : "mlp";
}

std::string RouterName(const LlamaConfig& cfg) { return MoePrefix(cfg) + ".gate"; }

std::string ExpertLinearName(const LlamaConfig& cfg, int64_t expert, ExpertPart part) {
  return fmt::format("{}.experts.{}.{}", MoePrefix(cfg), expert, PartName(IsMixtral(cfg), part));
}

std::string SharedExpertLinearName(ExpertPart part) {
  return fmt::format("mlp.shared_expert.{}", PartName(false, part));
}

std::vector<std::string> MoeLinearNames(const LlamaConfig& cfg) {
  std::vector<std::string> names = {RouterName(cfg)};
  for (int64_t e = 0; e < cfg.moe.num_experts; ++e) {
    for (const ExpertPart p : {ExpertPart::kGate, ExpertPart::kUp, ExpertPart::kDown}) {
      names.push_back(ExpertLinearName(cfg, e, p));
    }
  }
  if (cfg.moe.shared_intermediate_size > 0) {
    for (const ExpertPart p : {ExpertPart::kGate, ExpertPart::kUp, ExpertPart::kDown}) {
      names.push_back(SharedExpertLinearName(p));
    }
    names.push_back(kSharedExpertGateName);
  }
  return names;
}

std::pair<int64_t, int64_t> MoeLinearShape(const LlamaConfig& cfg, const std::string& name) {
  const int64_t h = cfg.hidden_size, f = cfg.moe.expert_intermediate_size;
  const int64_t fs = cfg.moe.shared_intermediate_size;
  if (name == RouterName(cfg)) return {cfg.moe.num_experts, h};
  if (fs > 0) {
    if (name == kSharedExpertGateName) return {1, h};
    if (name == SharedExpertLinearName(ExpertPart::kDown)) return {h, fs};
    if (name == SharedExpertLinearName(ExpertPart::kGate) ||
        name == SharedExpertLinearName(ExpertPart::kUp)) {
      return {fs, h};
    }
  }
  const std::string experts = MoePrefix(cfg) + ".experts.";
  if (!name.starts_with(experts)) return {0, 0};
  const size_t dot = name.find('.', experts.size());
  if (dot == std::string::npos) return {0, 0};
  const std::string index = name.substr(experts.size(), dot - experts.size());
  if (index.empty() || index.size() > 6 || !std::all_of(index.begin(), index.end(), ::isdigit)) {
    return {0, 0};
  }
  const int64_t e = std::stoll(index);
  if (e >= cfg.moe.num_experts || name != experts + index + name.substr(dot)) return {0, 0};
  if (name == ExpertLinearName(cfg, e, ExpertPart::kDown)) return {h, f};
  if (name == ExpertLinearName(cfg, e, ExpertPart::kGate) ||
      name == ExpertLinearName(cfg, e, ExpertPart::kUp)) {
    return {f, h};
  }
  return {0, 0};
}

const Linear* MoeWeights::Find(const std::string& name) const {
  // names: router, 3 per expert, then the shared expert's 3 and its gate.
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) return nullptr;
  const auto i = static_cast<size_t>(it - names.begin());
  if (i == 0) return &router;
  const size_t e = (i - 1) / 3, part = (i - 1) % 3;
  const Expert* x = e < experts.size() ? &experts[e] : &shared;
  if (e > experts.size()) return &shared_gate;
  return part == 0 ? &x->gate : part == 1 ? &x->up : &x->down;
}

uint64_t MoeWeights::bytes() const {
  uint64_t total = router.bytes() + shared_gate.bytes();
  for (const Expert& e : experts) total += e.gate.bytes() + e.up.bytes() + e.down.bytes();
  if (has_shared) total += shared.gate.bytes() + shared.up.bytes() + shared.down.bytes();
  return total;
}

MoeWeights LoadMoe(const Checkpoint& ck, const LlamaConfig& cfg, int64_t block,
                   InputQuantization w8a8, int threads) {
  MoeWeights m;
  m.names = MoeLinearNames(cfg);
  m.experts.resize(static_cast<size_t>(cfg.moe.num_experts));
  m.has_shared = cfg.moe.shared_intermediate_size > 0;
  // Every layer is decoded and packed in parallel.
  ParallelFor(static_cast<int64_t>(m.names.size()), 1, threads, [&](int64_t l0, int64_t l1, int) {
    for (int64_t l = l0; l < l1; ++l) {
      const std::string& name = m.names[static_cast<size_t>(l)];
      const auto [out, in] = MoeLinearShape(cfg, name);
      *const_cast<Linear*>(m.Find(name)) =
          LoadLinear(ck, BlockTensorName(block, name), out, in, w8a8, 1);
    }
  });
  return m;
}

bool RunMoe(const MoeWeights& w, const LlamaConfig& cfg, const RowMatrixXf& h, RowMatrixXf& out,
            int threads, const SeeFn& see) {
  const int64_t tokens = h.rows(), n = cfg.moe.num_experts, k = cfg.moe.top_k;
  if (see(RouterName(cfg), h)) return false;
  RowMatrixXf logits;
  w.router.Apply(h, logits, threads);
  // Per token: softmax over the experts, the top_k largest (ties to the lower index, as
  // torch.topk on CPU), renormalised when the config says so. routed[e] lists (token, weight).
  std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(n));
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::vector<float> p(static_cast<size_t>(n));
  for (int64_t t = 0; t < tokens; ++t) {
    const float mx = logits.row(t).maxCoeff();
    float sum = 0;
    for (int64_t e = 0; e < n; ++e)
      sum += (p[static_cast<size_t>(e)] = std::exp(logits(t, e) - mx));
    for (float& v : p) v /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
      const float pa = p[static_cast<size_t>(a)], pb = p[static_cast<size_t>(b)];
      return pa > pb || (pa == pb && a < b);
    });
    float top = 0;
    for (int64_t i = 0; i < k; ++i) top += p[static_cast<size_t>(order[static_cast<size_t>(i)])];
    for (int64_t i = 0; i < k; ++i) {
      const int64_t e = order[static_cast<size_t>(i)];
      const float weight = p[static_cast<size_t>(e)];
      routed[static_cast<size_t>(e)].push_back({t, cfg.moe.norm_topk_prob ? weight / top : weight});
    }
  }
  for (auto& r : routed) std::sort(r.begin(), r.end());
  out = RowMatrixXf::Zero(tokens, cfg.hidden_size);
  RowMatrixXf xe, ye;
  for (int64_t e = 0; e < n; ++e) {
    const auto& r = routed[static_cast<size_t>(e)];
    xe.resize(static_cast<int64_t>(r.size()), h.cols());
    for (size_t i = 0; i < r.size(); ++i) xe.row(static_cast<int64_t>(i)) = h.row(r[i].first);
    if (!RunExpert(w.experts[static_cast<size_t>(e)], ExpertLinearName(cfg, e, ExpertPart::kGate),
                   ExpertLinearName(cfg, e, ExpertPart::kUp),
                   ExpertLinearName(cfg, e, ExpertPart::kDown), xe, ye, threads, see)) {
      return false;
    }
    for (size_t i = 0; i < r.size(); ++i) {
      out.row(r[i].first) += ye.row(static_cast<int64_t>(i)) * r[i].second;
    }
  }
  if (w.has_shared) {
    RowMatrixXf ys, g;
    if (!RunExpert(w.shared, SharedExpertLinearName(ExpertPart::kGate),
                   SharedExpertLinearName(ExpertPart::kUp),
                   SharedExpertLinearName(ExpertPart::kDown), h, ys, threads, see)) {
      return false;
    }
    if (see(kSharedExpertGateName, h)) return false;
    w.shared_gate.Apply(h, g, threads);
    for (int64_t t = 0; t < tokens; ++t) {
      out.row(t) += ys.row(t) * (1.0f / (1.0f + std::exp(-g(t, 0))));
    }
  }
  return true;
}

}  // namespace runtime
}  // namespace qtool
