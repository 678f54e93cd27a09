// config.json of the dense decoders, in both styles transformers writes: the older top-level
// `rope_theta` / `rope_scaling` and transformers 5's `rope_parameters` (also per layer type).
//
// Every key is accounted for: it is read and implemented, known to leave the computation alone
// (ids, dtypes, bookkeeping, training-only settings), or refused with OptionError naming it and its
// value unless that value is the neutral one. Every value read is type- and range-checked, so an
// absurd size is refused here rather than reaching an allocation.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "moe.hpp"
#include "qtool/core/error.hpp"
#include "qtool/model/model.hpp"

namespace qtool {
namespace {

using nlohmann::json;

// Architectures whose config.json and tensor names this runtime implements.
constexpr std::array<std::pair<const char*, const char*>, 10> kArchitectures = {{
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "mistral"},
    {"Qwen2ForCausalLM", "qwen2"},
    {"Qwen3ForCausalLM", "qwen3"},
    {"Gemma2ForCausalLM", "gemma2"},
    {"Gemma3ForCausalLM", "gemma3_text"},
    {"Phi3ForCausalLM", "phi3"},
    {"MixtralForCausalLM", "mixtral"},
    {"Qwen2MoeForCausalLM", "qwen2_moe"},
    {"Qwen3MoeForCausalLM", "qwen3_moe"},
}};

// Keys that do not change the forward pass: identifiers, dtypes and transformers bookkeeping,
// training-only settings (dropout, initialisation, tensor-parallel pretraining split, which
// computes the same products), and generation defaults (qtool's generate is greedy by design).
const std::set<std::string_view> kHarmlessKeys = {
    "_name_or_path",
    "_model_name_or_path",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "_commit_hash",
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_bfloat16",
    "initializer_range",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "pretraining_tp",
    "use_cache",
    "pad_token_id",
    "unk_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "torchscript",
    "tokenizer_class",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "task_specific_params",
    "prefix",
    "is_decoder",
    "is_encoder_decoder",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "pruned_heads",
    "tf_legacy_loss",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    // Read by the checkpoint layer, which decodes qtool's quantised weights before the runtime
    // sees them.
    "quantization_config",
};

// Keys the runtime reads (FromJson below). The sliding-window keys only for the architectures
// whose transformers classes read them.
const std::set<std::string_view> kImplementedKeys = {
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "hidden_act",
    "hidden_activation",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "attention_bias",
    "mlp_bias",
};
// The keys of each architecture beyond kImplementedKeys, as its transformers config class reads
// them (sliding windows, Gemma's scalings and soft-capping, Phi-3's partial rotary embedding).
// cache_implementation names a generation cache and leaves the logits alone; Gemma 2's older
// configs repeat sliding_window as sliding_window_size, which must agree with it; Phi-3's
// original_max_position_embeddings is read only by the longrope scaling, which is refused.
const std::set<std::string_view>& ArchitectureKeys(const std::string& model_type) {
  static const std::map<std::string, std::set<std::string_view>, std::less<>> m = {
      {"llama", {}},
      {"mistral", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
      {"qwen2", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
      {"qwen3", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
      {"gemma2",
       {"sliding_window", "sliding_window_size", "layer_types", "query_pre_attn_scalar",
        "attn_logit_softcapping", "final_logit_softcapping", "cache_implementation"}},
      {"gemma3_text",
       {"sliding_window", "layer_types", "sliding_window_pattern", "_sliding_window_pattern",
        "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
        "rope_local_base_freq", "cache_implementation"}},
      {"phi3", {"sliding_window", "partial_rotary_factor", "original_max_position_embeddings"}},
      {"mixtral", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
      {"qwen2_moe", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
      {"qwen3_moe", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
  };
  return m.at(model_type);
}

bool IsGemma(const std::string& model_type) {
  return model_type == "gemma2" || model_type == "gemma3_text";
}

// Keys of other architectures that this runtime does not implement, with the value that means
// "off". Any other unknown key is refused unless it is null.
const std::map<std::string_view, json>& NeutralValues() {
  static const std::map<std::string_view, json> m = {
      {"partial_rotary_factor", 1.0},
      {"use_qk_norm", false},
      {"qk_layernorm", false},
      {"use_parallel_residual", false},
      {"embedding_multiplier", 1.0},
      {"logits_scaling", 1.0},
      {"residual_multiplier", 1.0},
      {"attn_logit_softcapping", nullptr},
      {"final_logit_softcapping", nullptr},
      {"num_experts", 0},
      {"num_local_experts", 0},
      {"use_bidirectional_attention", false},
  };
  return m;
}

bool IsNeutral(std::string_view key, const json& v) {
  if (v.is_null()) return true;
  const auto& m = NeutralValues();
  const auto it = m.find(key);
  return it != m.end() && v == it->second;
}

// Typed, range-checked reads. `where` names the key as it appears in config.json, with its
// parent object for nested keys ("rope_parameters.factor").
int64_t ToInt(const json& v, const std::string& where, int64_t lo, int64_t hi) {
  QTOOL_CHECK(v.is_number_integer(), FormatError, "config.json: \"{}\" must be an integer, got {}",
              where, v.dump());
  QTOOL_CHECK(!v.is_number_unsigned() ||
                  v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              FormatError, "config.json: \"{}\" = {} is out of range {}..{}", where, v.dump(), lo,
              hi);
  const int64_t x = v.get<int64_t>();
  QTOOL_CHECK(x >= lo && x <= hi, FormatError, "config.json: \"{}\" = {} is out of range {}..{}",
              where, x, lo, hi);
  return x;
}

double ToDouble(const json& v, const std::string& where, double lo, double hi) {
  QTOOL_CHECK(v.is_number(), FormatError, "config.json: \"{}\" must be a number, got {}", where,
              v.dump());
  const double x = v.get<double>();
  QTOOL_CHECK(std::isfinite(x) && x >= lo && x <= hi, FormatError,
              "config.json: \"{}\" = {} is out of range {}..{}", where, v.dump(), lo, hi);
  return x;
}

bool ToBool(const json& v, const std::string& where) {
  QTOOL_CHECK(v.is_boolean(), FormatError, "config.json: \"{}\" must be true or false, got {}",
              where, v.dump());
  return v.get<bool>();
}

std::string ToString(const json& v, const std::string& where) {
  QTOOL_CHECK(v.is_string(), FormatError, "config.json: \"{}\" must be a string, got {}", where,
              v.dump());
  return v.get<std::string>();
}

// The value of `key`, or nullptr when it is absent or null.
const json* Find(const json& j, const char* key) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t RequireInt(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json* v = Find(j, key);
  QTOOL_CHECK(v != nullptr, FormatError, "config.json: \"{}\" is missing", key);
  return ToInt(*v, key, lo, hi);
}

// Limits on sizes: far above any published model, low enough that products of two of them stay
// well inside int64 and that nothing sized by them is allocated before the tensors confirm it.
constexpr int64_t kMaxWidth = int64_t{1} << 20;    // hidden and intermediate sizes
constexpr int64_t kMaxCount = int64_t{1} << 14;    // layers, heads, head dimension
constexpr int64_t kMaxVocab = int64_t{1} << 24;    // vocabulary
constexpr int64_t kMaxContext = int64_t{1} << 24;  // positions
// The RoPE tables hold max_position_embeddings x head_dim / 2 floats each (block.hpp).
constexpr int64_t kMaxRopeTable = int64_t{1} << 28;

// One RoPE parameter set: `rope_scaling` (older configs; the base is the top-level rope_theta), a
// transformers 5 `rope_parameters` object, or one layer type's entry of a per-layer-type one.
struct Rope {
  std::optional<double> theta;
  RopeScaling scaling;
  std::optional<double> partial_rotary_factor;  // Phi-3 only
  bool operator==(const Rope&) const = default;
};

double ToRotaryFactor(const json& v, const std::string& where) {
  const double f = ToDouble(v, where, 0, 1);
  QTOOL_CHECK(f > 0, FormatError, "config.json: \"{}\" = {} must be above 0", where, v.dump());
  return f;
}

// `partial_rotary` admits partial_rotary_factor (Phi-3, which transformers 5 writes inside
// rope_parameters) and marks Phi-3's RoPE, whose only implemented type is default.
Rope ParseRope(const json& r, const std::string& where, bool partial_rotary = false) {
  QTOOL_CHECK(r.is_object(), FormatError, "config.json: \"{}\" must be an object, got {}", where,
              r.dump());
  auto key = [&](const char* k) { return where + "." + k; };
  Rope out;
  RopeScaling& s = out.scaling;
  // transformers 5 writes rope_type; older configs write type.
  const char* type_key = Find(r, "rope_type") || !Find(r, "type") ? "rope_type" : "type";
  const json* t = Find(r, type_key);
  const std::string type = t ? ToString(*t, key(type_key)) : "default";
  std::set<std::string_view> allowed = {"rope_type", "type", "rope_theta"};
  if (partial_rotary) allowed.insert("partial_rotary_factor");
  // transformers' Phi-3 takes default and longrope (su and yarn read as longrope) and refuses any
  // other type.
  QTOOL_CHECK(!partial_rotary || type == "default", OptionError,
              "config.json: \"{}\" = \"{}\" is not implemented for Phi-3 (default is; "
              "transformers' Phi-3 takes default and longrope)",
              key(type_key), type);
  if (type == "default") {
    s.type = RopeScaling::Type::kNone;
  } else if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
    allowed.insert("factor");
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    allowed.insert(
        {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  } else {
    QTOOL_CHECK(false, OptionError,
                "config.json: \"{}\" = \"{}\" is not implemented (default, linear and llama3 are)",
                key(type_key), type);
  }
  for (const auto& [k, v] : r.items()) {
    QTOOL_CHECK(allowed.count(k) != 0 || IsNeutral(k, v), OptionError,
                "config.json: \"{}\" = {} is not implemented for RoPE type \"{}\"", key(k.c_str()),
                v.dump(), type);
  }
  if (const json* v = Find(r, "rope_theta"))
    out.theta = ToDouble(*v, key("rope_theta"), 1e-6, 1e30);
  if (const json* v = Find(r, "partial_rotary_factor"); v && partial_rotary) {
    out.partial_rotary_factor = ToRotaryFactor(*v, key("partial_rotary_factor"));
  }
  if (const json* f = Find(r, "factor")) s.factor = ToDouble(*f, key("factor"), 1e-6, 1e9);
  if (s.type == RopeScaling::Type::kLlama3) {
    if (const json* v = Find(r, "low_freq_factor"))
      s.low_freq_factor = ToDouble(*v, key("low_freq_factor"), 1e-6, 1e9);
    if (const json* v = Find(r, "high_freq_factor"))
      s.high_freq_factor = ToDouble(*v, key("high_freq_factor"), 1e-6, 1e9);
    if (const json* v = Find(r, "original_max_position_embeddings"))
      s.original_max_position_embeddings =
          ToInt(*v, key("original_max_position_embeddings"), 1, kMaxContext);
    QTOOL_CHECK(s.high_freq_factor > s.low_freq_factor, FormatError,
                "config.json: \"{}\" {} must exceed \"{}\" {}", key("high_freq_factor"),
                s.high_freq_factor, key("low_freq_factor"), s.low_freq_factor);
  }
  return out;
}

// Layer types as transformers 5 names them.
enum class Attention { kFull, kSliding };

Attention ParseLayerType(const json& v, size_t i) {
  const std::string t = ToString(v, fmt::format("layer_types[{}]", i));
  if (t == "full_attention") return Attention::kFull;
  QTOOL_CHECK(t == "sliding_attention", OptionError,
              "config.json: \"layer_types[{}]\" = \"{}\" is not implemented", i, t);
  return Attention::kSliding;
}

// The kind of attention of every layer. Without layer_types, as transformers' (5.25) config
// classes derive them: Qwen2/Qwen3: layer i slides when use_sliding_window and sliding_window are
// set and i >= max_window_layers (default 28); Qwen2-MoE: layers 0, 2, 4, ... below
// max_window_layers (default 28) slide when use_sliding_window is set; Qwen3-MoE: every layer
// slides when use_sliding_window and sliding_window are set (it has no layer_types and does not
// read max_window_layers); Mistral, Mixtral and Phi-3: every layer slides when sliding_window is
// set; Gemma 2: layers 0, 2, 4, ... slide; Gemma 3: every layer but each sliding_window_pattern-th
// (default 6) slides. With use_sliding_window false the Qwen configs set no window at all, so
// layer_types that name sliding layers there are refused (transformers cannot build their mask).
std::vector<Attention> LayerTypes(const json& j, const std::string& model_type, int64_t layers) {
  const bool qwen = model_type == "qwen2" || model_type == "qwen3" || model_type == "qwen2_moe" ||
                    model_type == "qwen3_moe";
  const json* use = Find(j, "use_sliding_window");
  const bool use_sliding = use != nullptr && ToBool(*use, "use_sliding_window");
  // An absent sliding_window is the config classes' default, 4096; null is no window.
  const json* window = Find(j, "sliding_window");
  const bool has_window = window != nullptr || (qwen && !j.contains("sliding_window"));
  std::vector<Attention> types;
  if (qwen) {
    int64_t max_window_layers = 28;
    if (const json* m = Find(j, "max_window_layers")) {
      max_window_layers = ToInt(*m, "max_window_layers", 0, std::numeric_limits<int64_t>::max());
    }
    for (int64_t i = 0; i < layers; ++i) {
      bool sliding = use_sliding && has_window;
      if (model_type == "qwen2_moe") {
        sliding = use_sliding && i % 2 == 0 && i < max_window_layers;
      } else if (model_type != "qwen3_moe") {
        sliding = sliding && i >= max_window_layers;
      }
      types.push_back(sliding ? Attention::kSliding : Attention::kFull);
    }
  }
  if (const json* lt = Find(j, "layer_types")) {
    QTOOL_CHECK(lt->is_array() && static_cast<int64_t>(lt->size()) == layers, FormatError,
                "config.json: \"layer_types\" must be an array of num_hidden_layers ({}) strings",
                layers);
    std::vector<Attention> given;
    for (size_t i = 0; i < lt->size(); ++i) given.push_back(ParseLayerType((*lt)[i], i));
    const bool any_sliding =
        std::find(given.begin(), given.end(), Attention::kSliding) != given.end();
    QTOOL_CHECK(!qwen || use_sliding || !any_sliding, OptionError,
                "config.json: \"layer_types\" names sliding_attention layers but "
                "\"use_sliding_window\" is not true ({} then sets no window)",
                model_type);
    // Qwen3-MoE's config class has no layer_types: its model follows use_sliding_window alone.
    QTOOL_CHECK(model_type != "qwen3_moe" || given == types, OptionError,
                "config.json: \"layer_types\" disagrees with \"use_sliding_window\"; "
                "qwen3_moe does not read layer_types");
    return given;
  }
  if (qwen) return types;
  if (IsGemma(model_type)) {
    int64_t pattern = 2;
    if (model_type == "gemma3_text") {
      pattern = 6;
      for (const char* key : {"sliding_window_pattern", "_sliding_window_pattern"}) {
        if (const json* v = Find(j, key)) pattern = ToInt(*v, key, 1, kMaxCount);
      }
    }
    for (int64_t i = 0; i < layers; ++i) {
      types.push_back((i + 1) % pattern != 0 ? Attention::kSliding : Attention::kFull);
    }
    return types;
  }
  for (int64_t i = 0; i < layers; ++i) {
    types.push_back(window != nullptr ? Attention::kSliding : Attention::kFull);
  }
  return types;
}

}  // namespace

LlamaConfig LlamaConfig::FromJson(const json& j) {
  QTOOL_CHECK(j.is_object(), FormatError, "config.json is not a JSON object");
  LlamaConfig c;
  if (const json* a = Find(j, "architectures")) {
    QTOOL_CHECK(a->is_array(), FormatError, "config.json: \"architectures\" must be an array");
    if (!a->empty()) c.architecture = ToString((*a)[0], "architectures[0]");
  }
  if (const json* t = Find(j, "model_type")) c.model_type = ToString(*t, "model_type");
  bool known = false;
  for (const auto& [arch, type] : kArchitectures) {
    if (c.architecture == arch || (c.architecture.empty() && c.model_type == type)) {
      known = true;
      c.model_type = type;
    }
  }
  QTOOL_CHECK(known, OptionError,
              "architecture \"{}\" (model_type \"{}\") is not supported; the runtime runs "
              "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
              "Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, MixtralForCausalLM, "
              "Qwen2MoeForCausalLM and Qwen3MoeForCausalLM",
              c.architecture, c.model_type);
  const std::string& type = c.model_type;
  const bool gemma = IsGemma(type), phi3 = type == "phi3";
  const std::set<std::string_view>& arch_keys = ArchitectureKeys(type);
  for (const auto& [k, v] : j.items()) {
    const bool accounted = kHarmlessKeys.count(k) != 0 || kImplementedKeys.count(k) != 0 ||
                           arch_keys.count(k) != 0 || runtime::MoeConfigKeys(type).count(k) != 0;
    QTOOL_CHECK(accounted || IsNeutral(k, v), OptionError,
                "config.json: \"{}\" = {} is not implemented by the {} runtime", k, v.dump(), type);
  }

  if (gemma) {
    // transformers' Gemma classes read hidden_activation only (default gelu_pytorch_tanh); the
    // hidden_act that older Gemma configs also carry is not read.
    const json* v = Find(j, "hidden_activation");
    const std::string a = v ? ToString(*v, "hidden_activation") : "gelu_pytorch_tanh";
    QTOOL_CHECK(a == "gelu_pytorch_tanh", OptionError,
                "config.json: \"hidden_activation\" = \"{}\" is not implemented (gelu_pytorch_tanh "
                "only)",
                a);
    if (const json* h = Find(j, "hidden_act")) ToString(*h, "hidden_act");
    c.activation = Activation::kGeluTanh;
  } else {
    // transformers reads hidden_act; "swish" is its other name for SiLU.
    for (const char* key : {"hidden_act", "hidden_activation"}) {
      if (const json* v = Find(j, key)) {
        const std::string a = ToString(*v, key);
        QTOOL_CHECK(a == "silu" || a == "swish", OptionError,
                    "config.json: \"{}\" = \"{}\" is not implemented (silu only)", key, a);
      }
    }
  }

  c.hidden_size = RequireInt(j, "hidden_size", 1, kMaxWidth);
  c.intermediate_size = RequireInt(j, "intermediate_size", 1, kMaxWidth);
  c.num_layers = RequireInt(j, "num_hidden_layers", 1, kMaxCount);
  c.num_heads = RequireInt(j, "num_attention_heads", 1, kMaxCount);
  c.num_kv_heads = Find(j, "num_key_value_heads")
                       ? RequireInt(j, "num_key_value_heads", 1, c.num_heads)
                       : c.num_heads;
  if (Find(j, "head_dim")) {
    c.head_dim = RequireInt(j, "head_dim", 1, kMaxCount);
  } else if (gemma || type == "qwen3") {
    c.head_dim = gemma ? 256 : 128;  // the config classes' defaults
  } else {
    QTOOL_CHECK(c.hidden_size % c.num_heads == 0, FormatError,
                "config.json: no \"head_dim\" and hidden_size {} is not a multiple of "
                "num_attention_heads {}",
                c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.vocab_size = RequireInt(j, "vocab_size", 1, kMaxVocab);
  c.max_position_embeddings = RequireInt(j, "max_position_embeddings", 1, kMaxContext);
  QTOOL_CHECK(c.max_position_embeddings * (c.head_dim / 2) <= kMaxRopeTable, FormatError,
              "config.json: \"max_position_embeddings\" {} x head_dim {} is beyond the {} RoPE "
              "table entries this runtime holds",
              c.max_position_embeddings, c.head_dim, kMaxRopeTable);
  if (const json* v = Find(j, "rms_norm_eps")) c.rms_norm_eps = ToDouble(*v, "rms_norm_eps", 0, 1);
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (const json* v = Find(j, key)) ToBool(*v, key);  // biases are loaded where tensors exist
  }
  if (const json* v = Find(j, "original_max_position_embeddings")) {
    ToInt(*v, "original_max_position_embeddings", 1, kMaxContext);
  }

  // RoPE. transformers 5 reads rope_parameters (one set, or one per layer type); older configs
  // give rope_theta and rope_scaling at the top level (Gemma 3: rope_scaling for the full-attention
  // layers and rope_local_base_freq for the sliding ones). Where both styles are present they must
  // agree.
  std::optional<Rope> rope, local;
  if (const json* p = Find(j, "rope_parameters")) {
    QTOOL_CHECK(p->is_object(), FormatError, "config.json: \"rope_parameters\" must be an object");
    const bool per_layer_type = !p->empty() && std::all_of(p->begin(), p->end(), [](const json& v) {
      return v.is_object();
    });
    QTOOL_CHECK(per_layer_type || type != "gemma3_text", FormatError,
                "config.json: Gemma 3's \"rope_parameters\" must hold one object per layer type");
    if (!per_layer_type) {
      rope = ParseRope(*p, "rope_parameters", phi3);
    } else {
      for (const auto& [t, params] : p->items()) {
        QTOOL_CHECK(t == "full_attention" || t == "sliding_attention", OptionError,
                    "config.json: \"rope_parameters.{}\" names a layer type this runtime does not "
                    "implement",
                    t);
        (t == "full_attention" ? rope : local) = ParseRope(params, "rope_parameters." + t, phi3);
      }
      if (!rope) rope = local;
      if (!local) local = rope;
    }
  }
  const json* top_theta = Find(j, "rope_theta");
  const json* top_scaling = Find(j, "rope_scaling");
  if (rope) {
    if (top_theta) {
      const double t = ToDouble(*top_theta, "rope_theta", 1e-6, 1e30);
      QTOOL_CHECK(!rope->theta || *rope->theta == t, FormatError,
                  "config.json: \"rope_theta\" {} and \"rope_parameters.rope_theta\" {} disagree",
                  t, *rope->theta);
      if (!rope->theta) rope->theta = t;
    }
    if (top_scaling) {
      QTOOL_CHECK(ParseRope(*top_scaling, "rope_scaling").scaling == rope->scaling, FormatError,
                  "config.json: \"rope_scaling\" and \"rope_parameters\" disagree");
    }
  } else {
    rope = top_scaling ? ParseRope(*top_scaling, "rope_scaling", phi3) : Rope{};
    QTOOL_CHECK(!rope->theta, OptionError,
                "config.json: \"rope_scaling.rope_theta\" is not read by transformers; give it as "
                "\"rope_theta\"");
    if (top_theta) rope->theta = ToDouble(*top_theta, "rope_theta", 1e-6, 1e30);
  }
  c.rope_theta = rope->theta.value_or(type == "gemma3_text" ? 1e6 : 10000.0);
  c.rope_scaling = rope->scaling;
  c.rope_local_theta = c.rope_theta;
  c.rope_local_scaling = c.rope_scaling;
  if (type == "gemma3_text") {
    std::optional<double> base;
    if (const json* v = Find(j, "rope_local_base_freq")) {
      base = ToDouble(*v, "rope_local_base_freq", 1e-6, 1e30);
    }
    if (!local) local = Rope{};  // older configs: rope_scaling is the full-attention layers' only
    QTOOL_CHECK(!base || !local->theta || *local->theta == *base, FormatError,
                "config.json: \"rope_local_base_freq\" {} and "
                "\"rope_parameters.sliding_attention.rope_theta\" {} disagree",
                base.value_or(0), local->theta.value_or(0));
    c.rope_local_theta = local->theta.value_or(base.value_or(10000.0));
    c.rope_local_scaling = local->scaling;
  } else if (local) {
    c.rope_local_theta = local->theta.value_or(c.rope_theta);
    c.rope_local_scaling = local->scaling;
  }
  c.rope_local = c.rope_local_theta != c.rope_theta || !(c.rope_local_scaling == c.rope_scaling);

  // Partial rotary embedding (Phi-3): rope_parameters' factor, or the older top-level one.
  std::optional<double> rotary = rope->partial_rotary_factor;
  if (const json* v = Find(j, "partial_rotary_factor"); v && phi3) {
    const double f = ToRotaryFactor(*v, "partial_rotary_factor");
    QTOOL_CHECK(!rotary || *rotary == f, FormatError,
                "config.json: \"partial_rotary_factor\" and "
                "\"rope_parameters.partial_rotary_factor\" disagree");
    rotary = f;
  }
  // transformers: int(head_dim * partial_rotary_factor) dimensions.
  c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * rotary.value_or(1.0));
  QTOOL_CHECK(
      c.rotary_dim >= 2 && c.rotary_dim % 2 == 0, FormatError,
      "config.json: the partial rotary factor leaves {} of head_dim {} rotated, which is not "
      "a positive even number",
      c.rotary_dim, c.head_dim);

  const std::vector<Attention> types = LayerTypes(j, type, c.num_layers);
  for (const Attention a : types) c.sliding_layers.push_back(a == Attention::kSliding);
  if (std::find(types.begin(), types.end(), Attention::kSliding) != types.end()) {
    const json* w = Find(j, "sliding_window");
    const bool qwen =
        type == "qwen2" || type == "qwen3" || type == "qwen2_moe" || type == "qwen3_moe";
    if (w == nullptr && (gemma || qwen) && !j.contains("sliding_window")) {
      c.sliding_window = 4096;  // the config classes' default
    } else {
      QTOOL_CHECK(w != nullptr, FormatError,
                  "config.json: sliding-window layers but no \"sliding_window\"");
      c.sliding_window = ToInt(*w, "sliding_window", 1, std::numeric_limits<int64_t>::max());
    }
  } else {
    c.rope_local = false;
  }
  if (const json* w = Find(j, "sliding_window_size")) {
    QTOOL_CHECK(ToInt(*w, "sliding_window_size", 1, std::numeric_limits<int64_t>::max()) ==
                    c.sliding_window,
                FormatError,
                "config.json: \"sliding_window_size\" and \"sliding_window\" disagree");
  }

  if (gemma) {
    c.norm_plus_one = c.scale_embeddings = c.sandwich_norms = true;
    c.query_pre_attn_scalar = 256;
    if (const json* v = Find(j, "query_pre_attn_scalar")) {
      c.query_pre_attn_scalar = ToDouble(*v, "query_pre_attn_scalar", 1e-6, 1e12);
      QTOOL_CHECK(c.query_pre_attn_scalar > 0, FormatError,
                  "config.json: \"query_pre_attn_scalar\" must be above 0");
    }
    // Absent: the config class's default (Gemma 2: 50 and 30; Gemma 3: none); null: none.
    const bool g2 = type == "gemma2";
    for (auto [key, cap, dflt] :
         {std::tuple{"attn_logit_softcapping", &c.attn_logit_softcapping, g2 ? 50.0 : 0.0},
          std::tuple{"final_logit_softcapping", &c.final_logit_softcapping, g2 ? 30.0 : 0.0}}) {
      if (!j.contains(key)) {
        *cap = dflt;
      } else if (const json* v = Find(j, key)) {
        *cap = ToDouble(*v, key, 1e-6, 1e12);
        QTOOL_CHECK(*cap > 0, FormatError, "config.json: \"{}\" must be above 0", key);
      }
    }
  }
  c.qk_norm = type == "qwen3" || type == "gemma3_text" || type == "qwen3_moe";
  c.fused_projections = phi3;

  if (const json* v = Find(j, "tie_word_embeddings")) {
    c.tie_word_embeddings = ToBool(*v, "tie_word_embeddings");
  } else {
    c.tie_word_embeddings = type == "qwen2" || gemma;
  }
  if (gemma) {
    c.bos_token_id = 2;  // the config classes' defaults
    c.eos_token_id = 1;
  }
  if (const json* v = Find(j, "bos_token_id")) {
    c.bos_token_id = static_cast<int32_t>(ToInt(*v, "bos_token_id", 0, c.vocab_size - 1));
  }
  // eos_token_id: one id or a list of them (generation stops at the first); [] means none.
  if (const json* v = Find(j, "eos_token_id")) {
    if (v->is_array()) {
      c.eos_token_id = -1;
      for (size_t i = 0; i < v->size(); ++i) {
        const auto id = static_cast<int32_t>(ToInt((*v)[i], fmt::format("eos_token_id[{}]", i), 0,
                                                   std::numeric_limits<int32_t>::max()));
        if (i == 0) c.eos_token_id = id;
      }
    } else {
      c.eos_token_id =
          static_cast<int32_t>(ToInt(*v, "eos_token_id", 0, std::numeric_limits<int32_t>::max()));
    }
  }
  c.moe = runtime::ParseMoeConfig(j, c.model_type, c.intermediate_size);
  QTOOL_CHECK(c.num_heads % c.num_kv_heads == 0, FormatError,
              "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
              c.num_heads, c.num_kv_heads);
  QTOOL_CHECK(c.head_dim % 2 == 0, FormatError, "config.json: head_dim {} is odd", c.head_dim);
  return c;
}

double LlamaConfig::FlopsPerToken(int64_t pos) const {
  const double h = static_cast<double>(hidden_size), d = static_cast<double>(head_dim);
  const double q = static_cast<double>(num_heads) * d, kv = static_cast<double>(num_kv_heads) * d;
  const double attention_linear = h * (q + 2 * kv) + q * h;
  double layers = 0;
  for (int64_t i = 0; i < num_layers; ++i) {
    // A MoE layer: the router, top_k experts and the shared expert with its gate.
    const double mlp =
        IsMoeLayer(i) ? h * static_cast<double>(moe.num_experts) +
                            3 * h * static_cast<double>(moe.expert_intermediate_size * moe.top_k) +
                            (moe.shared_intermediate_size > 0
                                 ? 3 * h * static_cast<double>(moe.shared_intermediate_size) + h
                                 : 0.0)
                      : 3 * h * static_cast<double>(intermediate_size);
    // Attention over the positions the layer sees (a sliding-window layer: at most the window).
    const int64_t seen = Sliding(i) ? std::min(pos + 1, sliding_window) : pos + 1;
    layers +=
        attention_linear + mlp + 2 * static_cast<double>(num_heads) * d * static_cast<double>(seen);
  }
  return 2 * (layers + h * static_cast<double>(vocab_size));
}

}  // namespace qtool
