#include "qtool/io/gguf_export.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numbers>
#include <regex>

#include "qtool/core/convert.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/gguf_split.hpp"

namespace qtool::gguf {

namespace {

using KV = std::vector<std::pair<std::string, Value>>;

// GGUF name of a Hugging Face tensor, or "" for tensors the file does not keep.
std::string GgufName(const std::string& hf, int64_t* layer) {
  static const std::map<std::string, std::string> kTop = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string> kBlock = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  *layer = -1;
  if (const auto it = kTop.find(hf); it != kTop.end()) return it->second;
  static const std::regex kLayer(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(hf, m, kLayer)) {
    if (hf.ends_with("rotary_emb.inv_freq")) return "";
    const auto it = kBlock.find(m[2].str());
    QTOOL_CHECK(it != kBlock.end(), FormatError, "tensor '{}' has no GGUF name", hf);
    *layer = std::stoll(m[1].str());
    return fmt::format("blk.{}.{}", *layer, it->second);
  }
  QTOOL_CHECK(hf.ends_with("rotary_emb.inv_freq"), FormatError, "tensor '{}' has no GGUF name", hf);
  return "";
}

// Hugging Face stores each head's query/key rows as [first halves of the rotary pairs | second
// halves] (rotate_half); ggml's RoPE rotates adjacent rows (2i, 2i + 1). Row 2i + j of a head in
// the output is row j * head_dim / 2 + i of the input (llama.cpp's converter does the same).
template <class T>
void PermuteRopeRows(std::vector<T>& w, int64_t rows, int64_t cols, int64_t heads) {
  const int64_t hd = rows / heads;
  std::vector<T> out(w.size());
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const T* src = w.data() + (h * hd + j * (hd / 2) + i) * cols;
        std::copy(src, src + cols, out.data() + (h * hd + 2 * i + j) * cols);
      }
    }
  }
  w.swap(out);
}

struct Planned {
  ExportedTensor out;
  const CheckpointTensor* src = nullptr;  // nullptr: `values` holds the data
  std::vector<float> values;
  int64_t layer = -1;
  int64_t permute_heads = 0;  // > 0: permute rows for RoPE with this many heads
};

}  // namespace

std::string TensorName(const std::string& hf) {
  int64_t layer = -1;
  return GgufName(hf, &layer);
}
std::string GgufTensorName(const std::string& hf, int64_t* layer) { return GgufName(hf, layer); }

ggml::Type FallbackType(ggml::Type type, uint64_t ne0) {
  using ggml::Type;
  if (ne0 % static_cast<uint64_t>(ggml::Traits(type).block_size) == 0) return type;
  Type t = Type::kF16;
  switch (type) {
    case Type::kQ2_K:
    case Type::kQ3_K:
    case Type::kTQ1_0:
    case Type::kTQ2_0:
      t = Type::kQ4_0;
      break;
    case Type::kIQ4_XS:
      t = Type::kIQ4_NL;
      break;
    case Type::kQ4_K:
      t = Type::kQ5_0;
      break;
    case Type::kQ5_K:
      t = Type::kQ5_1;
      break;
    case Type::kQ6_K:
      t = Type::kQ8_0;
      break;
    default:
      break;
  }
  return ne0 % static_cast<uint64_t>(ggml::Traits(t).block_size) == 0 ? t : Type::kF16;
}

namespace {

using ggml::Type;

// llama_ftype values.
enum FileType : uint32_t {
  kAllF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 7,
  kQ5_0 = 8,
  kQ5_1 = 9,
  kQ2_K = 10,
  kQ3_K_S = 11,
  kQ3_K_M = 12,
  kQ3_K_L = 13,
  kQ4_K_S = 14,
  kQ4_K_M = 15,
  kQ5_K_S = 16,
  kQ5_K_M = 17,
  kQ6_K = 18,
  kIQ4_NL = 25,
  kIQ4_XS = 30,
  kBF16 = 32,
  kTQ1_0 = 36,
  kTQ2_0 = 37,
  kMXFP4_MOE = 38,
};

constexpr Recipe kRecipes[] = {
    {"F32", Type::kF32, kAllF32, true},
    {"F16", Type::kF16, kF16, true},
    {"BF16", Type::kBF16, kBF16, true},
    {"Q8_0", Type::kQ8_0, kQ8_0, true},
    {"Q4_0", Type::kQ4_0, kQ4_0, true},
    {"Q4_1", Type::kQ4_1, kQ4_1, true},
    {"Q5_0", Type::kQ5_0, kQ5_0, true},
    {"Q5_1", Type::kQ5_1, kQ5_1, true},
    {"Q2_K", Type::kQ2_K, kQ2_K, true},
    {"Q3_K_S", Type::kQ3_K, kQ3_K_S, true},
    {"Q3_K_M", Type::kQ3_K, kQ3_K_M, true},
    {"Q3_K_L", Type::kQ3_K, kQ3_K_L, true},
    {"Q4_K_S", Type::kQ4_K, kQ4_K_S, true},
    {"Q4_K_M", Type::kQ4_K, kQ4_K_M, true},
    {"Q5_K_S", Type::kQ5_K, kQ5_K_S, true},
    {"Q5_K_M", Type::kQ5_K, kQ5_K_M, true},
    {"Q6_K", Type::kQ6_K, kQ6_K, true},
    {"IQ4_NL", Type::kIQ4_NL, kIQ4_NL, true},
    {"IQ4_XS", Type::kIQ4_XS, kIQ4_XS, true},
    {"TQ1_0", Type::kTQ1_0, kTQ1_0, true},
    {"TQ2_0", Type::kTQ2_0, kTQ2_0, true},
    // ggml types without a llama_ftype of their own: the type everywhere.
    {"Q3_K", Type::kQ3_K, kQ3_K_S, false},
    {"Q4_K", Type::kQ4_K, kQ4_K_S, false},
    {"Q5_K", Type::kQ5_K, kQ5_K_S, false},
    {"MXFP4", Type::kMXFP4, kMXFP4_MOE, false},
};

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool UseMoreBits(int64_t i, int64_t n) {
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

bool IsQuantized(Type t) { return t != Type::kF32 && t != Type::kF16 && t != Type::kBF16; }

}  // namespace

std::optional<Recipe> FindRecipe(std::string_view name) {
  auto upper = [](char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c; };
  for (const Recipe& r : kRecipes) {
    if (r.name.size() == name.size() && std::equal(name.begin(), name.end(), r.name.begin(),
                                                   [&](char a, char b) { return upper(a) == b; })) {
      return r;
    }
  }
  return std::nullopt;
}

std::string RecipeNames() {
  std::string s;
  for (const Recipe& r : kRecipes) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

ggml::Type TensorType(const Recipe& r, bool pure, const std::string& name, uint64_t ne0,
                      int64_t layer, int64_t n_layers, int64_t n_gqa, bool has_output,
                      bool has_imatrix) {
  Type t = r.base;
  if (r.mix && !pure && IsQuantized(r.base)) {
    const uint32_t f = r.file_type;
    auto has = [&name](const char* part) { return name.find(part) != std::string::npos; };
    if (name == "output.weight" || (!has_output && name == "token_embd.weight")) {
      if (ne0 % static_cast<uint64_t>(ggml::Traits(t).block_size) != 0) {
        t = Type::kQ8_0;
      } else if (t != Type::kQ8_0) {
        t = Type::kQ6_K;
      }
    } else if (name == "token_embd.weight") {
      if (f == kTQ1_0 || f == kTQ2_0) t = Type::kQ4_K;
    } else if (has("attn_v.weight")) {
      if (f == kQ2_K) {
        t = n_gqa >= 4 ? Type::kQ4_K : Type::kQ3_K;
      } else if (f == kQ3_K_M) {
        t = layer < 2 ? Type::kQ5_K : Type::kQ4_K;
      } else if (f == kQ3_K_L) {
        t = Type::kQ5_K;
      } else if ((f == kIQ4_NL || f == kIQ4_XS) && n_gqa >= 4) {
        t = Type::kQ5_K;
      } else if ((f == kQ4_K_M || f == kQ5_K_M) && UseMoreBits(layer, n_layers)) {
        t = Type::kQ6_K;
      } else if (f == kQ4_K_S && layer < 4) {
        t = Type::kQ5_K;
      }
    } else if (has("ffn_down")) {
      if (f == kQ2_K) {
        t = Type::kQ3_K;
      } else if (f == kQ3_K_M) {
        t = layer < n_layers / 16 ? Type::kQ5_K : Type::kQ4_K;
      } else if (f == kQ3_K_L) {
        t = Type::kQ5_K;
      } else if (f == kQ4_K_M) {
        if (UseMoreBits(layer, n_layers)) t = Type::kQ6_K;
      } else if (layer < n_layers / 8 && (f == kIQ4_NL || f == kIQ4_XS) && !has_imatrix) {
        t = Type::kQ5_K;
      } else if (f == kQ5_K_M && UseMoreBits(layer, n_layers)) {
        t = Type::kQ6_K;
      } else if (f == kQ4_K_S && layer < n_layers / 8) {
        t = Type::kQ5_K;
      } else if ((f == kQ4_0 || f == kQ5_0) && has_imatrix && layer < n_layers / 8) {
        t = f == kQ4_0 ? Type::kQ4_1 : Type::kQ5_1;
      }
    } else if (has("attn_output.weight")) {
      if (f == kQ2_K) {
        t = Type::kQ3_K;
      } else if (f == kQ3_K_M) {
        t = Type::kQ4_K;
      } else if (f == kQ3_K_L) {
        t = Type::kQ5_K;
      }
    }
  }
  return FallbackType(t, ne0);
}

ExportReport ExportGguf(const Checkpoint& in, const ModelParams& c,
                        const std::filesystem::path& out, const ExportOptions& options,
                        const std::function<void(size_t, size_t, const std::string&)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  QTOOL_CHECK(in.config().has_value(), FormatError,
              "{}: config.json is needed to write GGUF metadata", in.dir().string());
  QTOOL_CHECK(options.split_max_bytes > 0 || options.overwrite || !std::filesystem::exists(out),
              OutputExistsError, "{} exists (use --force to replace it)", out.string());
  const std::optional<Recipe> recipe = FindRecipe(options.type);
  QTOOL_CHECK(recipe.has_value(), OptionError, "unknown GGUF type \"{}\" (known: {})", options.type,
              RecipeNames());
  QTOOL_CHECK(c.architecture == "llama" || c.architecture == "qwen2", FormatError,
              "{}: GGUF architecture '{}' is not written (llama and qwen2 are)", in.dir().string(),
              c.architecture);
  ExportReport report;
  report.architecture = c.architecture;
  const std::string& arch = report.architecture;
  const bool permute = arch == "llama";

  KV kv;
  kv.emplace_back("general.architecture", arch);
  kv.emplace_back("general.name", in.dir().filename().string());
  kv.emplace_back("general.file_type", recipe->file_type);
  kv.emplace_back("general.quantization_version", uint32_t{2});  // GGML_QNT_VERSION
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  kv.emplace_back(arch + ".vocab_size", u32(c.vocab_size));
  kv.emplace_back(arch + ".context_length", u32(c.context_length));
  kv.emplace_back(arch + ".embedding_length", u32(c.hidden_size));
  kv.emplace_back(arch + ".block_count", u32(c.num_layers));
  kv.emplace_back(arch + ".feed_forward_length", u32(c.intermediate_size));
  kv.emplace_back(arch + ".attention.head_count", u32(c.num_heads));
  kv.emplace_back(arch + ".attention.head_count_kv", u32(c.num_kv_heads));
  kv.emplace_back(arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  kv.emplace_back(arch + ".rope.dimension_count", u32(c.head_dim));
  kv.emplace_back(arch + ".rope.freq_base", static_cast<float>(c.rope_theta));
  if (c.head_dim * c.num_heads != c.hidden_size) {
    kv.emplace_back(arch + ".attention.key_length", u32(c.head_dim));
    kv.emplace_back(arch + ".attention.value_length", u32(c.head_dim));
  }
  if (c.linear_rope_factor) {
    kv.emplace_back(arch + ".rope.scaling.type", std::string("linear"));
    kv.emplace_back(arch + ".rope.scaling.factor", static_cast<float>(*c.linear_rope_factor));
  }
  KV tok = TokenizerMetadata(in.dir(), c.vocab_size, *in.config());
  for (auto& e : tok) {
    if (e.first == "tokenizer.ggml.model") report.tokenizer_model = *e.second.AsString();
  }
  std::move(tok.begin(), tok.end(), std::back_inserter(kv));
  const imatrix::Matrix* imat = options.imatrix;
  if (imat != nullptr) {  // the keys llama-quantize writes
    kv.emplace_back("quantize.imatrix.file", options.imatrix_file.substr(0, 127));
    if (!imat->datasets.empty()) {
      kv.emplace_back("quantize.imatrix.dataset", imat->datasets.front().substr(0, 127));
    }
    kv.emplace_back("quantize.imatrix.entries_count", static_cast<int32_t>(imat->entries.size()));
    if (imat->chunk_count > 0) {
      kv.emplace_back("quantize.imatrix.chunks_count", static_cast<int32_t>(imat->chunk_count));
    }
  }

  // The tensors, in ggml's usual order: embeddings, output norm and head, then block by block.
  std::vector<Planned> plan;
  for (const CheckpointTensor& t : in.tensors()) {
    const std::string& hf = t.info->name;
    Planned p;
    const std::string name = GgufName(hf, &p.layer);
    if (name.empty()) continue;
    if (name == "output.weight" && c.tie_word_embeddings) continue;  // stored once, as token_embd
    const auto& shape = t.info->shape;
    QTOOL_CHECK(shape.size() == 1 || shape.size() == 2, ShapeError,
                "{}: tensor '{}' has {} dimensions; GGUF export takes 1 or 2", in.dir().string(),
                hf, shape.size());
    p.src = &t;
    p.out.source = hf;
    p.out.name = name;
    for (auto it = shape.rbegin(); it != shape.rend(); ++it) {
      p.out.ne.push_back(static_cast<uint64_t>(*it));
    }
    plan.push_back(std::move(p));
  }
  bool has_output = false;
  for (const Planned& p : plan) has_output |= p.out.name == "output.weight";
  for (Planned& p : plan) {
    const std::string& name = p.out.name;
    p.out.type = p.out.ne.size() == 1
                     ? ggml::Type::kF32
                     : TensorType(*recipe, options.pure, name, p.out.ne[0], p.layer, c.num_layers,
                                  c.num_heads / std::max<int64_t>(1, c.num_kv_heads), has_output,
                                  imat != nullptr);
    if (permute && name.ends_with("attn_q.weight")) p.permute_heads = c.num_heads;
    if (permute && name.ends_with("attn_k.weight")) p.permute_heads = c.num_kv_heads;
  }
  if (!c.rope_freqs.empty()) {
    Planned p;
    p.out.name = "rope_freqs.weight";
    p.values = c.rope_freqs;
    p.out.ne = {p.values.size()};
    p.out.type = ggml::Type::kF32;
    plan.push_back(std::move(p));
  }
  auto rank = [](const Planned& p) {
    static const std::map<std::string, int> kOrder = {{"token_embd.weight", 0},
                                                      {"rope_freqs.weight", 1},
                                                      {"output_norm.weight", 2},
                                                      {"output.weight", 3}};
    const auto it = kOrder.find(p.out.name);
    return std::make_pair(p.layer < 0 ? -1 : p.layer, it == kOrder.end() ? 4 : it->second);
  };
  std::stable_sort(plan.begin(), plan.end(),
                   [&](const Planned& a, const Planned& b) { return rank(a) < rank(b); });

  std::vector<TensorSpec> specs;
  for (const Planned& p : plan) specs.push_back({p.out.name, p.out.ne, p.out.type});
  SplitWriter writer(out, kv, specs, options.split_max_bytes, options.overwrite);
  const int threads = ResolveThreads(options.threads);
  for (size_t i = 0; i < plan.size(); ++i) {
    Planned& p = plan[i];
    const int64_t cols = static_cast<int64_t>(p.out.ne[0]);
    const int64_t rows = p.out.ne.size() > 1 ? static_cast<int64_t>(p.out.ne[1]) : 1;
    std::vector<float> x;
    if (p.src != nullptr) {
      x.resize(static_cast<size_t>(rows * cols));
      const int64_t bad =
          ConvertToF32(p.src->data().data(), p.src->info->dtype, rows * cols, x.data());
      QTOOL_CHECK(bad < 0, NumericError, "{}: tensor '{}': non-finite value at index {}",
                  in.dir().string(), p.out.source, bad);
      report.input_bytes += p.src->info->nbytes();
      if (p.permute_heads > 0) {
        QTOOL_CHECK(rows % (2 * p.permute_heads) == 0, ShapeError,
                    "tensor '{}': {} rows do not split into {} heads of rotary pairs", p.out.source,
                    rows, p.permute_heads);
        PermuteRopeRows(x, rows, cols, p.permute_heads);
      }
    } else {
      x = std::move(p.values);
    }
    // The importances of this weight's columns (llama.cpp reads none for token_embd).
    std::vector<float> importance;
    if (imat != nullptr && p.out.ne.size() == 2 && IsQuantized(p.out.type)) {
      const auto it = imat->entries.find(p.out.name);
      if (it != imat->entries.end()) {
        const bool fits = it->second.ncols * it->second.nmat == cols;
        QTOOL_CHECK(fits || p.out.name == "token_embd.weight", ShapeError,
                    "{}: importance matrix entry '{}' has {} x {} values, the weight's rows {}",
                    options.imatrix_file, p.out.name, it->second.nmat, it->second.ncols, cols);
        if (fits) importance = it->second.Importance();
      }
    }
    p.out.imatrix = !importance.empty();
    const float* qw = p.out.imatrix ? importance.data() : nullptr;
    const uint64_t row_bytes = ggml::RowBytes(p.out.type, static_cast<uint64_t>(cols));
    std::vector<std::byte> q;
    const bool given =
        p.src != nullptr && options.quantized && options.quantized(p.out.source, p.out.type, q);
    if (given) {
      QTOOL_CHECK(q.size() == row_bytes * static_cast<uint64_t>(rows), ShapeError,
                  "tensor '{}': {} bytes given for {} rows of {} bytes", p.out.source, q.size(),
                  rows, row_bytes);
      if (p.permute_heads > 0) {
        PermuteRopeRows(q, rows, static_cast<int64_t>(row_bytes), p.permute_heads);
      }
    } else {
      q.resize(row_bytes * static_cast<uint64_t>(rows));
    }
    std::vector<double> err(static_cast<size_t>(threads), 0.0);
    std::vector<double> energy(static_cast<size_t>(threads), 0.0);
    ParallelFor(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)), threads,
                [&](int64_t r0, int64_t r1, int worker) {
                  std::vector<float> back(static_cast<size_t>(cols));
                  for (int64_t r = r0; r < r1; ++r) {
                    const float* xr = x.data() + r * cols;
                    std::byte* qr = q.data() + static_cast<uint64_t>(r) * row_bytes;
                    if (!given) ggml::Quantize(p.out.type, xr, qr, cols, qw);
                    ggml::Dequantize(p.out.type, qr, back.data(), cols);
                    for (int64_t j = 0; j < cols; ++j) {
                      const double d = static_cast<double>(back[j]) - xr[j];
                      err[worker] += d * d;
                      energy[worker] += static_cast<double>(xr[j]) * xr[j];
                    }
                  }
                });
    double se = 0;
    double sx = 0;
    for (int w = 0; w < threads; ++w) {
      se += err[w];
      sx += energy[w];
    }
    p.out.rel_rms_error = sx > 0 ? std::sqrt(se / sx) : 0.0;
    p.out.bytes = q.size();
    writer.Write(q);
    if (p.src != nullptr) p.src->file->Release(*p.src->info);
    report.tensors.push_back(p.out);
    if (progress) progress(i + 1, plan.size(), p.out.name);
  }
  writer.Commit();
  for (const std::filesystem::path& f : writer.paths()) {
    report.files.push_back(f);
    report.output_bytes += std::filesystem::file_size(f);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace qtool::gguf
