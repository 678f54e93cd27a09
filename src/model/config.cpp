// config.json of the Llama-family decoders, in both styles transformers writes: the older top-level
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
#include <vector>

#include "moe.hpp"
#include "qtool/core/error.hpp"
#include "qtool/model/model.hpp"

namespace qtool {
namespace {

using nlohmann::json;

// Architectures whose config.json and tensor names this runtime implements.
constexpr std::array<std::pair<const char*, const char*>, 6> kArchitectures = {{
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "mistral"},
    {"Qwen2ForCausalLM", "qwen2"},
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
const std::set<std::string_view> kSlidingKeys = {"sliding_window", "use_sliding_window",
                                                 "max_window_layers", "layer_types"};

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
  bool operator==(const Rope&) const = default;
};

Rope ParseRope(const json& r, const std::string& where) {
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

// Layer types as transformers 5 names them; the runtime implements a model whose layers are all
// of one kind.
enum class Attention { kFull, kSliding };

Attention ParseLayerType(const json& v, size_t i) {
  const std::string t = ToString(v, fmt::format("layer_types[{}]", i));
  if (t == "full_attention") return Attention::kFull;
  QTOOL_CHECK(t == "sliding_attention", OptionError,
              "config.json: \"layer_types[{}]\" = \"{}\" is not implemented", i, t);
  return Attention::kSliding;
}

// The kind of attention of every layer, or nullopt for a model with no sliding-window settings.
// Qwen2 (transformers): layer i slides when use_sliding_window and sliding_window are set and
// i >= max_window_layers; Mistral: every layer slides when sliding_window is set.
std::vector<Attention> LayerTypes(const json& j, const std::string& model_type, int64_t layers) {
  std::vector<Attention> types;
  if (const json* lt = Find(j, "layer_types")) {
    QTOOL_CHECK(lt->is_array() && static_cast<int64_t>(lt->size()) == layers, FormatError,
                "config.json: \"layer_types\" must be an array of num_hidden_layers ({}) strings",
                layers);
    for (size_t i = 0; i < lt->size(); ++i) types.push_back(ParseLayerType((*lt)[i], i));
    return types;
  }
  const json* window = Find(j, "sliding_window");
  bool sliding = window != nullptr;
  int64_t first_sliding = 0;
  if (model_type == "qwen2" || model_type == "qwen2_moe" || model_type == "qwen3_moe") {
    const json* use = Find(j, "use_sliding_window");
    sliding = sliding && use != nullptr && ToBool(*use, "use_sliding_window");
    if (const json* m = Find(j, "max_window_layers")) {
      first_sliding = ToInt(*m, "max_window_layers", 0, std::numeric_limits<int64_t>::max());
    }
  }
  for (int64_t i = 0; i < layers; ++i) {
    types.push_back(sliding && i >= first_sliding ? Attention::kSliding : Attention::kFull);
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
              "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, MixtralForCausalLM, "
              "Qwen2MoeForCausalLM and Qwen3MoeForCausalLM",
              c.architecture, c.model_type);
  const bool has_sliding = c.model_type != "llama";
  for (const auto& [k, v] : j.items()) {
    const bool accounted = kHarmlessKeys.count(k) != 0 || kImplementedKeys.count(k) != 0 ||
                           (has_sliding && kSlidingKeys.count(k) != 0) ||
                           runtime::MoeConfigKeys(c.model_type).count(k) != 0;
    QTOOL_CHECK(accounted || IsNeutral(k, v), OptionError,
                "config.json: \"{}\" = {} is not implemented by the {} runtime", k, v.dump(),
                c.model_type);
  }

  // Activation: transformers reads hidden_act (hidden_activation in Gemma's configs); "swish" is
  // its other name for SiLU.
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    if (const json* v = Find(j, key)) {
      const std::string a = ToString(*v, key);
      QTOOL_CHECK(a == "silu" || a == "swish", OptionError,
                  "config.json: \"{}\" = \"{}\" is not implemented (silu only)", key, a);
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

  // RoPE. transformers 5 reads rope_parameters (one set, or one per layer type); older configs
  // give rope_theta and rope_scaling at the top level. Where both styles are present they must
  // agree.
  std::optional<Rope> rope;
  if (const json* p = Find(j, "rope_parameters")) {
    QTOOL_CHECK(p->is_object(), FormatError, "config.json: \"rope_parameters\" must be an object");
    const bool per_layer_type = !p->empty() && std::all_of(p->begin(), p->end(), [](const json& v) {
      return v.is_object();
    });
    if (!per_layer_type) {
      rope = ParseRope(*p, "rope_parameters");
    } else {
      // One set per layer type: the runtime has one RoPE table, so the sets that layers use must
      // be identical.
      for (const auto& [type, params] : p->items()) {
        const Rope r = ParseRope(params, "rope_parameters." + type);
        QTOOL_CHECK(!rope || r == *rope, OptionError,
                    "config.json: \"rope_parameters\" differ between layer types, which this "
                    "runtime does not implement");
        rope = r;
      }
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
    rope = top_scaling ? ParseRope(*top_scaling, "rope_scaling") : Rope{};
    QTOOL_CHECK(!rope->theta, OptionError,
                "config.json: \"rope_scaling.rope_theta\" is not read by transformers; give it as "
                "\"rope_theta\"");
    if (top_theta) rope->theta = ToDouble(*top_theta, "rope_theta", 1e-6, 1e30);
  }
  c.rope_theta = rope->theta.value_or(10000.0);
  c.rope_scaling = rope->scaling;

  if (has_sliding) {
    const std::vector<Attention> types = LayerTypes(j, c.model_type, c.num_layers);
    const bool any_sliding =
        std::find(types.begin(), types.end(), Attention::kSliding) != types.end();
    const bool all_sliding = std::find(types.begin(), types.end(), Attention::kFull) == types.end();
    QTOOL_CHECK(!any_sliding || all_sliding, OptionError,
                "config.json: sliding-window attention in some layers and full attention in "
                "others is not implemented");
    if (any_sliding) {
      const json* w = Find(j, "sliding_window");
      QTOOL_CHECK(w != nullptr, FormatError,
                  "config.json: sliding-window layers but no \"sliding_window\"");
      c.sliding_window = ToInt(*w, "sliding_window", 1, std::numeric_limits<int64_t>::max());
    }
  }
  if (const json* v = Find(j, "tie_word_embeddings")) {
    c.tie_word_embeddings = ToBool(*v, "tie_word_embeddings");
  } else {
    c.tie_word_embeddings = c.model_type == "qwen2";
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
  c.qk_norm = c.model_type == "qwen3_moe";
  QTOOL_CHECK(c.num_heads % c.num_kv_heads == 0, FormatError,
              "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
              c.num_heads, c.num_kv_heads);
  QTOOL_CHECK(c.head_dim % 2 == 0, FormatError, "config.json: head_dim {} is odd", c.head_dim);
  return c;
}

double LlamaConfig::FlopsPerToken(int64_t pos) const {
  const double h = static_cast<double>(hidden_size), d = static_cast<double>(head_dim);
  const double q = static_cast<double>(num_heads) * d, kv = static_cast<double>(num_kv_heads) * d;
  const double attention = 2 * static_cast<double>(num_heads) * d * static_cast<double>(pos + 1);
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
    layers += h * (q + 2 * kv) + q * h + mlp + attention;
  }
  return 2 * (layers + h * static_cast<double>(vocab_size));
}

}  // namespace qtool
