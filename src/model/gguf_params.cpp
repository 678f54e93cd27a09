#include "qtool/model/gguf_params.hpp"

#include <cmath>
#include <numbers>

#include "qtool/core/error.hpp"

namespace qtool::gguf {

namespace {

std::vector<float> Llama3RopeFactors(const LlamaConfig& c) {
  const RopeScaling& s = c.rope_scaling;
  const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  std::vector<float> f;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const double freq = 1.0 / std::pow(c.rope_theta, static_cast<double>(i) / c.head_dim);
    const double wavelen = 2 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      f.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      f.push_back(static_cast<float>(s.factor));
    } else {
      const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      f.push_back(static_cast<float>(1 / ((1 - smooth) / s.factor + smooth)));
    }
  }
  return f;
}

}  // namespace

ModelParams GgufModelParams(const LlamaConfig& c, const std::string& label) {
  QTOOL_CHECK(c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2",
              FormatError,
              "{}: model type '{}' is not written as GGUF (llama, mistral and qwen2 are)", label,
              c.model_type);
  ModelParams p;
  p.architecture = c.model_type == "qwen2" ? "qwen2" : "llama";  // Mistral runs as llama
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
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) p.rope_freqs = Llama3RopeFactors(c);
  p.tie_word_embeddings = c.tie_word_embeddings;
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
