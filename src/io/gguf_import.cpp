#include "qtool/io/gguf_import.hpp"

#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "qtool/core/error.hpp"
#include "qtool/io/checkpoint.hpp"

namespace qtool::gguf {

namespace {

// Hugging Face name of a GGUF tensor, or "" for tensors a checkpoint does not hold.
std::string HfName(const std::string& name, const std::string& label) {
  static const std::map<std::string, std::string> kTop = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
      {"rope_freqs.weight", ""}};
  static const std::map<std::string, std::string> kBlock = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  if (const auto it = kTop.find(name); it != kTop.end()) return it->second;
  static const std::regex kLayer(R"(blk\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(name, m, kLayer)) {
    if (const auto it = kBlock.find(m[2].str()); it != kBlock.end()) {
      return fmt::format("model.layers.{}.{}", m[1].str(), it->second);
    }
  }
  throw FormatError(fmt::format("{}: tensor '{}' has no Hugging Face name", label, name));
}

int64_t Int(const Header& h, const std::string& key, const std::string& label) {
  const Value* v = h.Find(key);
  QTOOL_CHECK(v != nullptr && v->AsInt().has_value(), FormatError,
              "{}: integer key '{}' is missing", label, key);
  return *v->AsInt();
}

}  // namespace

void ImportGguf(const File& file, const std::filesystem::path& out_dir, bool overwrite) {
  const Header& h = file.header();
  const std::string label = file.path().string();
  const Value* arch_v = h.Find("general.architecture");
  QTOOL_CHECK(arch_v != nullptr && arch_v->AsString() != nullptr, FormatError,
              "{}: general.architecture is missing", label);
  const std::string arch = *arch_v->AsString();
  QTOOL_CHECK(arch == "llama" || arch == "qwen2", FormatError,
              "{}: architecture '{}' cannot be converted (llama and qwen2 can)", label, arch);
  const int64_t heads = Int(h, arch + ".attention.head_count", label);
  const int64_t kv_heads = h.Find(arch + ".attention.head_count_kv")
                               ? Int(h, arch + ".attention.head_count_kv", label)
                               : heads;
  const int64_t hidden = Int(h, arch + ".embedding_length", label);
  const TensorInfo* embd = h.FindTensor("token_embd.weight");
  QTOOL_CHECK(embd != nullptr && embd->ne.size() == 2, FormatError,
              "{}: token_embd.weight is missing", label);
  auto f32 = [&h](const std::string& key, double fallback) {
    const Value* v = h.Find(key);
    return v && v->AsFloat() ? *v->AsFloat() : fallback;
  };
  nlohmann::json config = {
      {"architectures", {arch == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", arch},
      {"hidden_size", hidden},
      {"intermediate_size", Int(h, arch + ".feed_forward_length", label)},
      {"num_hidden_layers", Int(h, arch + ".block_count", label)},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads},
      {"head_dim", h.Find(arch + ".attention.key_length")
                       ? Int(h, arch + ".attention.key_length", label)
                       : hidden / heads},
      {"vocab_size", embd->ne[1]},
      {"max_position_embeddings", Int(h, arch + ".context_length", label)},
      {"rms_norm_eps", f32(arch + ".attention.layer_norm_rms_epsilon", 1e-6)},
      {"rope_theta", f32(arch + ".rope.freq_base", 10000.0)},
      {"tie_word_embeddings", h.FindTensor("output.weight") == nullptr},
      {"hidden_act", "silu"},
      {"torch_dtype", "float32"}};
  for (const auto& [key, hf] : {std::pair{"tokenizer.ggml.bos_token_id", "bos_token_id"},
                                std::pair{"tokenizer.ggml.eos_token_id", "eos_token_id"}}) {
    if (h.Find(key)) config[hf] = Int(h, key, label);
  }
  if (const Value* t = h.Find(arch + ".rope.scaling.type");
      t && t->AsString() && *t->AsString() == "linear") {
    config["rope_scaling"] = {{"type", "linear"},
                              {"factor", f32(arch + ".rope.scaling.factor", 1.0)}};
  }

  std::vector<qtool::TensorSpec> specs;
  std::vector<const TensorInfo*> kept;
  for (const TensorInfo& t : h.tensors) {
    const std::string hf = HfName(t.name, label);
    if (hf.empty()) continue;
    qtool::TensorSpec s{hf, DType::kF32, {}};
    for (auto it = t.ne.rbegin(); it != t.ne.rend(); ++it) {
      s.shape.push_back(static_cast<int64_t>(*it));
    }
    specs.push_back(std::move(s));
    kept.push_back(&t);
  }
  CheckpointWriterOptions opts;
  opts.overwrite = overwrite;
  opts.metadata = {{"format", "pt"}};
  CheckpointWriter w(out_dir, specs, opts);
  w.WriteTextFile("config.json", config.dump(2) + "\n");
  std::vector<float> values;
  std::vector<float> rows;
  for (const TensorInfo* t : kept) {
    values.resize(t->numel());
    file.Dequantize(*t, values);
    const bool q = t->name.ends_with("attn_q.weight");
    const bool k = t->name.ends_with("attn_k.weight");
    if (arch == "llama" && (q || k)) {
      // Inverse of the export's permutation: source row h*hd + j*hd/2 + i is GGUF row
      // h*hd + 2i + j.
      const int64_t n_heads = q ? heads : kv_heads;
      const int64_t cols = static_cast<int64_t>(t->ne[0]);
      const int64_t nrows = static_cast<int64_t>(t->ne[1]);
      QTOOL_CHECK(nrows % (2 * n_heads) == 0, FormatError,
                  "{}: tensor '{}': {} rows do not split into {} heads", label, t->name, nrows,
                  n_heads);
      const int64_t hd = nrows / n_heads;
      rows.resize(values.size());
      for (int64_t hh = 0; hh < n_heads; ++hh) {
        for (int64_t i = 0; i < hd / 2; ++i) {
          for (int64_t j = 0; j < 2; ++j) {
            const float* src = values.data() + (hh * hd + 2 * i + j) * cols;
            std::copy(src, src + cols, rows.data() + (hh * hd + j * (hd / 2) + i) * cols);
          }
        }
      }
      values.swap(rows);
    }
    w.Write(std::as_bytes(std::span(values)));
  }
  w.Commit();
}

}  // namespace qtool::gguf
