// qtool_synth: writes a synthetic Llama-shaped checkpoint (config.json + safetensors) with
// heavy-tailed weights and a few outlier input channels, for end-to-end benchmarks of models too
// large to ship. Deterministic for a given seed.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "qtool/core/error.hpp"
#include "qtool/core/half.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/io/checkpoint.hpp"

namespace {

using qtool::DType;
using qtool::TensorSpec;

// splitmix64: a fast, well-mixed generator; each element's value depends only on (seed, index), so
// the output is the same for any thread count.
uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Laplace-distributed value (heavier tails than a Gaussian) with the given scale.
float Laplace(uint64_t bits, float scale) {
  const float u = (static_cast<float>(bits >> 40) + 0.5f) * 0x1p-24f;  // (0, 1)
  return (bits & 1) ? scale * std::log(u) : -scale * std::log(u);
}

struct Shape {
  int64_t hidden, intermediate, layers, heads, kv_heads, vocab;
};

std::vector<TensorSpec> Tensors(const Shape& s, DType dt) {
  const int64_t hd = s.hidden / s.heads;
  std::vector<TensorSpec> t = {{"model.embed_tokens.weight", dt, {s.vocab, s.hidden}}};
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", dt, {s.hidden}});
    t.push_back({p + "self_attn.q_proj.weight", dt, {s.heads * hd, s.hidden}});
    t.push_back({p + "self_attn.k_proj.weight", dt, {s.kv_heads * hd, s.hidden}});
    t.push_back({p + "self_attn.v_proj.weight", dt, {s.kv_heads * hd, s.hidden}});
    t.push_back({p + "self_attn.o_proj.weight", dt, {s.hidden, s.heads * hd}});
    t.push_back({p + "post_attention_layernorm.weight", dt, {s.hidden}});
    t.push_back({p + "mlp.gate_proj.weight", dt, {s.intermediate, s.hidden}});
    t.push_back({p + "mlp.up_proj.weight", dt, {s.intermediate, s.hidden}});
    t.push_back({p + "mlp.down_proj.weight", dt, {s.hidden, s.intermediate}});
  }
  t.push_back({"model.norm.weight", dt, {s.hidden}});
  t.push_back({"lm_head.weight", dt, {s.vocab, s.hidden}});
  return t;
}

void Fill(const TensorSpec& t, uint64_t seed, int threads, std::vector<std::byte>& out) {
  const int64_t n = t.numel();
  const int64_t cols = t.shape.back();
  const bool norm = t.shape.size() == 1;
  const float scale = norm ? 0.0f : 0.7f / std::sqrt(static_cast<float>(cols));
  const uint64_t tseed = Mix(seed ^ std::hash<std::string>{}(t.name));
  out.resize(t.nbytes());
  qtool::ParallelFor(n, 1 << 16, threads, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      float v = 1.0f;
      if (!norm) {
        const uint64_t r = Mix(tseed + static_cast<uint64_t>(i));
        v = Laplace(r, scale);
        // About 1 input channel in 200 carries outliers 8x larger (as real LLM weights do).
        if (Mix(tseed ^ static_cast<uint64_t>(i % cols)) % 200 == 0) v *= 8.0f;
      }
      if (t.dtype == DType::kBF16) {
        const uint16_t h = qtool::F32ToBf16(v);
        std::memcpy(out.data() + 2 * i, &h, 2);
      } else if (t.dtype == DType::kF16) {
        const uint16_t h = qtool::F32ToF16(v);
        std::memcpy(out.data() + 2 * i, &h, 2);
      } else {
        std::memcpy(out.data() + 4 * i, &v, 4);
      }
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Write a synthetic Llama-shaped checkpoint"};
  Shape s{2048, 5632, 14, 32, 4, 32000};
  std::string out, dtype = "bf16", shard;
  uint64_t seed = 1;
  uint64_t max_shard = 0;
  bool force = false;
  app.add_option("-o,--output", out, "Output model directory")->required();
  app.add_option("--hidden", s.hidden)->capture_default_str();
  app.add_option("--intermediate", s.intermediate)->capture_default_str();
  app.add_option("--layers", s.layers)->capture_default_str();
  app.add_option("--heads", s.heads)->capture_default_str();
  app.add_option("--kv-heads", s.kv_heads)->capture_default_str();
  app.add_option("--vocab", s.vocab)->capture_default_str();
  app.add_option("--dtype", dtype, "bf16, f16 or f32")->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--max-shard-bytes", max_shard, "Shard the output (0: one file)");
  app.add_flag("--force", force, "Replace the output directory");
  CLI11_PARSE(app, argc, argv);
  try {
    const DType dt = dtype == "bf16" ? DType::kBF16 : dtype == "f16" ? DType::kF16 : DType::kF32;
    QTOOL_CHECK(dtype == "bf16" || dtype == "f16" || dtype == "f32", qtool::OptionError,
                "--dtype must be bf16, f16 or f32");
    QTOOL_CHECK(
        s.heads > 0 && s.hidden % s.heads == 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0,
        qtool::OptionError, "heads must divide hidden and be a multiple of kv heads");
    const auto tensors = Tensors(s, dt);
    qtool::CheckpointWriterOptions o;
    o.max_shard_bytes = max_shard;
    o.overwrite = force;
    o.metadata = {{"format", "pt"}};
    qtool::CheckpointWriter w(out, tensors, o);
    std::vector<std::byte> buf;
    uint64_t params = 0;
    for (const TensorSpec& t : tensors) {
      Fill(t, seed, qtool::ResolveThreads(0), buf);
      w.Write(buf);
      params += static_cast<uint64_t>(t.numel());
    }
    const nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                                   {"model_type", "llama"},
                                   {"hidden_size", s.hidden},
                                   {"intermediate_size", s.intermediate},
                                   {"num_hidden_layers", s.layers},
                                   {"num_attention_heads", s.heads},
                                   {"num_key_value_heads", s.kv_heads},
                                   {"vocab_size", s.vocab},
                                   {"max_position_embeddings", 4096},
                                   {"rms_norm_eps", 1e-5},
                                   {"rope_theta", 10000.0},
                                   {"hidden_act", "silu"},
                                   {"tie_word_embeddings", false},
                                   {"torch_dtype", dtype == "bf16"  ? "bfloat16"
                                                   : dtype == "f16" ? "float16"
                                                                    : "float32"}};
    w.WriteTextFile("config.json", config.dump(2) + "\n");
    w.Commit();
    std::printf("%s: %llu parameters\n", out.c_str(), static_cast<unsigned long long>(params));
  } catch (const qtool::Error& e) {
    std::fprintf(stderr, "qtool_synth: %s\n", e.what());
    return static_cast<int>(e.exit_code());
  }
  return 0;
}
