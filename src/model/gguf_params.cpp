#include "qtool/model/gguf_params.hpp"

#include <map>

#include "qtool/core/error.hpp"

namespace qtool::gguf {

ModelParams GgufModelParams(const LlamaConfig& c, const std::string& label) {
  static const std::map<std::string, std::string> kArch = {
      {"llama", "llama"},        {"mistral", "llama"}, {"mixtral", "llama"},
      {"qwen2", "qwen2"},        {"qwen3", "qwen3"},   {"qwen2_moe", "qwen2moe"},
      {"qwen3_moe", "qwen3moe"}, {"gemma2", "gemma2"}, {"gemma3_text", "gemma3"},
      {"phi3", "phi3"}};
  const auto arch = kArch.find(c.model_type);
  QTOOL_CHECK(arch != kArch.end(), FormatError, "{}: model type '{}' is not written as GGUF", label,
              c.model_type);
  ModelParams p;
  p.architecture = arch->second;
  const std::string& a = p.architecture;
  // What llama.cpp's graph for the architecture cannot run is refused here, not written as a
  // file that loads and computes something else.
  auto refuse = [&](bool bad, const std::string& what) {
    QTOOL_CHECK(!bad, FormatError, "{}: {} ({}): llama.cpp's '{}' architecture does not run it",
                label, what, c.model_type, a);
  };
  const bool gemma = a == "gemma2" || a == "gemma3";
  refuse(c.rope_scaling.type == RopeScaling::Type::kLlama3 && a != "llama", "Llama 3 RoPE scaling");
  refuse(c.sliding_window > 0 && (a == "qwen2" || a == "qwen3" || a == "qwen2moe" ||
                                  a == "qwen3moe" || (a == "llama" && c.moe.num_experts > 0)),
         "sliding-window attention");
  refuse(c.attn_logit_softcapping > 0 && a != "gemma2", "attention logit soft-capping");
  refuse(c.final_logit_softcapping > 0 && !gemma, "final logit soft-capping");
  refuse(c.rope_local && !(c.rope_local_scaling == RopeScaling{}),
         "RoPE scaling of the "
         "sliding-window layers");
  refuse(c.rotary_dim != c.head_dim && a != "phi3", "partial rotary embeddings");
  refuse(a == "phi3" && c.head_dim * c.num_heads != c.hidden_size,
         "head_dim x num_attention_heads other than hidden_size");
  if (gemma) {
    // llama.cpp scales queries by head_dim^-1/2, or (hidden_size / heads)^-1/2 for the 27B
    // models (62 layers of Gemma 3, 46 of Gemma 2), whatever query_pre_attn_scalar says.
    const bool big = c.num_layers == (a == "gemma3" ? 62 : 46);
    const double scalar = static_cast<double>(big ? c.hidden_size / c.num_heads : c.head_dim);
    const double given = c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar : c.head_dim;
    refuse(given != scalar,
           fmt::format("query_pre_attn_scalar {} (llama.cpp uses {})", given, scalar));
  }
  if (c.moe.num_experts > 0) {
    bool every_layer = true;
    for (int64_t i = 0; i < c.num_layers; ++i) every_layer &= c.IsMoeLayer(i);
    refuse(!every_layer, "dense layers between the mixture-of-experts ones");
    refuse(c.moe.norm_topk_prob != (a != "qwen2moe"),
           fmt::format("norm_topk_prob = {}", c.moe.norm_topk_prob));
    refuse(a == "qwen2moe" && c.moe.shared_intermediate_size == 0, "no shared expert");
  }
  p.vocab_size = c.vocab_size;
  p.context_length = c.max_position_embeddings;
  p.hidden_size = c.hidden_size;
  p.num_layers = c.num_layers;
  p.intermediate_size = c.intermediate_size;
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.rms_norm_eps = c.rms_norm_eps;
  p.rope_theta = c.rope_theta;
  if (c.rope_scaling.type == RopeScaling::Type::kLinear) {
    p.linear_rope_factor = c.rope_scaling.factor;
  }
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    const RopeScaling& r = c.rope_scaling;
    p.rope_freqs = Llama3RopeDivisors(c.rope_theta, c.head_dim, r.factor, r.low_freq_factor,
                                      r.high_freq_factor,
                                      static_cast<double>(r.original_max_position_embeddings));
  }
  p.tie_word_embeddings = c.tie_word_embeddings;
  p.rotary_dim = c.rotary_dim;
  p.sandwich_norms = c.sandwich_norms;
  p.norm_plus_one = c.norm_plus_one;
  p.num_experts = c.moe.num_experts;
  auto u32 = [](int64_t v) { return Value(static_cast<uint32_t>(v)); };
  if (c.moe.num_experts > 0) {
    p.keys.emplace_back("expert_count", u32(c.moe.num_experts));
    p.keys.emplace_back("expert_used_count", u32(c.moe.top_k));
    if (a != "llama") {
      p.keys.emplace_back("expert_feed_forward_length", u32(c.moe.expert_intermediate_size));
    }
    if (c.moe.shared_intermediate_size > 0) {
      p.keys.emplace_back("expert_shared_feed_forward_length", u32(c.moe.shared_intermediate_size));
    }
  }
  if (gemma || (a == "phi3" && c.sliding_window > 0)) {
    // Phi-3's window is recorded as llama.cpp's converter does; llama.cpp does not apply it.
    if (c.sliding_window > 0)
      p.keys.emplace_back("attention.sliding_window", u32(c.sliding_window));
  }
  if (gemma) {
    std::vector<Scalar> pattern;
    for (int64_t i = 0; i < c.num_layers; ++i) pattern.emplace_back(c.Sliding(i));
    p.keys.emplace_back("attention.sliding_window_pattern",
                        Value::Array(ValueType::kBool, std::move(pattern)));
    if (c.rope_local) {
      p.keys.emplace_back("rope.freq_base_swa", Value(static_cast<float>(c.rope_local_theta)));
    }
    if (c.attn_logit_softcapping > 0) {
      p.keys.emplace_back("attn_logit_softcapping",
                          Value(static_cast<float>(c.attn_logit_softcapping)));
    }
    if (c.final_logit_softcapping > 0) {
      p.keys.emplace_back("final_logit_softcapping",
                          Value(static_cast<float>(c.final_logit_softcapping)));
    }
  }
  return p;
}

ExportReport ExportGguf(const Checkpoint& in, const std::filesystem::path& out,
                        const ExportOptions& options,
                        const std::function<void(size_t, size_t, const std::string&)>& progress) {
  QTOOL_CHECK(in.config().has_value(), FormatError,
              "{}: config.json is needed to write GGUF metadata", in.dir().string());
  const ModelParams params =
      GgufModelParams(LlamaConfig::FromJson(*in.config()), in.dir().string());
  return ExportGguf(in, params, out, options, progress);
}

}  // namespace qtool::gguf
