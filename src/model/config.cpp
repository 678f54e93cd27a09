#include <array>
#include <string>

#include "qtool/core/error.hpp"
#include "qtool/model/model.hpp"

namespace qtool {
namespace {

using nlohmann::json;

// Architectures whose config.json and tensor names this runtime implements.
constexpr std::array<std::pair<const char*, const char*>, 3> kArchitectures = {{
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "mistral"},
    {"Qwen2ForCausalLM", "qwen2"},
}};

int64_t RequireInt(const json& j, const char* key) {
  QTOOL_CHECK(j.contains(key) && j[key].is_number_integer(), FormatError,
              "config.json: \"{}\" is missing or not an integer", key);
  const int64_t v = j[key].get<int64_t>();
  QTOOL_CHECK(v > 0, FormatError, "config.json: \"{}\" must be positive, got {}", key, v);
  return v;
}

template <typename T>
T Optional(const json& j, const char* key, T fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QTOOL_CHECK(j[key].is_number() || j[key].is_boolean(), FormatError,
              "config.json: \"{}\" is not a number", key);
  return j[key].get<T>();
}

RopeScaling ParseRopeScaling(const json& j) {
  RopeScaling s;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return s;
  const json& r = j["rope_scaling"];
  QTOOL_CHECK(r.is_object(), FormatError, "config.json: \"rope_scaling\" is not an object");
  const std::string type = r.value("rope_type", r.value("type", std::string("default")));
  s.factor = Optional<double>(r, "factor", 1.0);
  if (type == "default") {
    s.type = RopeScaling::Type::kNone;
  } else if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    s.low_freq_factor = Optional<double>(r, "low_freq_factor", 1.0);
    s.high_freq_factor = Optional<double>(r, "high_freq_factor", 4.0);
    s.original_max_position_embeddings =
        Optional<int64_t>(r, "original_max_position_embeddings", 8192);
    QTOOL_CHECK(s.high_freq_factor > s.low_freq_factor, FormatError,
                "config.json: rope_scaling high_freq_factor must exceed low_freq_factor");
  } else {
    QTOOL_CHECK(false, OptionError, "rope_scaling type \"{}\" is not supported", type);
  }
  QTOOL_CHECK(s.factor > 0, FormatError, "config.json: rope_scaling factor must be positive");
  return s;
}

}  // namespace

LlamaConfig LlamaConfig::FromJson(const json& j) {
  QTOOL_CHECK(j.is_object(), FormatError, "config.json is not a JSON object");
  LlamaConfig c;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()) {
    c.architecture = j["architectures"][0].get<std::string>();
  }
  c.model_type = j.value("model_type", std::string());
  bool known = false;
  for (const auto& [arch, type] : kArchitectures) {
    if (c.architecture == arch || (c.architecture.empty() && c.model_type == type)) {
      known = true;
      c.model_type = type;
    }
  }
  QTOOL_CHECK(known, OptionError,
              "architecture \"{}\" (model_type \"{}\") is not supported; the runtime runs "
              "LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM",
              c.architecture, c.model_type);
  const std::string act = j.value("hidden_act", std::string("silu"));
  QTOOL_CHECK(act == "silu", OptionError, "hidden_act \"{}\" is not supported (silu only)", act);
  c.hidden_size = RequireInt(j, "hidden_size");
  c.intermediate_size = RequireInt(j, "intermediate_size");
  c.num_layers = RequireInt(j, "num_hidden_layers");
  c.num_heads = RequireInt(j, "num_attention_heads");
  c.num_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? RequireInt(j, "num_key_value_heads")
                       : c.num_heads;
  c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? RequireInt(j, "head_dim")
                                                                  : c.hidden_size / c.num_heads;
  c.vocab_size = RequireInt(j, "vocab_size");
  c.max_position_embeddings = RequireInt(j, "max_position_embeddings");
  c.rms_norm_eps = Optional<double>(j, "rms_norm_eps", 1e-6);
  c.rope_theta = Optional<double>(j, "rope_theta", 10000.0);
  c.rope_scaling = ParseRopeScaling(j);
  const bool sliding = c.model_type == "mistral" || Optional<bool>(j, "use_sliding_window", false);
  c.sliding_window = sliding ? Optional<int64_t>(j, "sliding_window", 0) : 0;
  c.tie_word_embeddings = Optional<bool>(j, "tie_word_embeddings", c.model_type == "qwen2");
  c.bos_token_id = Optional<int32_t>(j, "bos_token_id", 1);
  c.eos_token_id = j.contains("eos_token_id") && j["eos_token_id"].is_array()
                       ? j["eos_token_id"][0].get<int32_t>()
                       : Optional<int32_t>(j, "eos_token_id", 2);
  QTOOL_CHECK(c.num_heads % c.num_kv_heads == 0, FormatError,
              "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
              c.num_heads, c.num_kv_heads);
  QTOOL_CHECK(c.head_dim % 2 == 0, FormatError, "config.json: head_dim {} is odd", c.head_dim);
  return c;
}

double LlamaConfig::FlopsPerToken(int64_t pos) const {
  const double h = static_cast<double>(hidden_size), d = static_cast<double>(head_dim);
  const double q = static_cast<double>(num_heads) * d, kv = static_cast<double>(num_kv_heads) * d;
  const double linear = h * (q + 2 * kv) + q * h + 3 * h * static_cast<double>(intermediate_size);
  const double attention = 2 * static_cast<double>(num_heads) * d * static_cast<double>(pos + 1);
  return 2 * (static_cast<double>(num_layers) * (linear + attention) +
              h * static_cast<double>(vocab_size));
}

}  // namespace qtool
