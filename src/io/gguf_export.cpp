#include "qtool/io/gguf_export.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <numbers>
#include <regex>

#include "gguf_names.hpp"
#include "qtool/core/error.hpp"
#include "qtool/core/parallel.hpp"
#include "qtool/format/ggml_quants.hpp"
#include "qtool/io/gguf_split.hpp"
#include "qtool/kernels/convert.hpp"

namespace qtool::gguf {

namespace {

using KV = std::vector<std::pair<std::string, Value>>;

// The GGUF place of a Hugging Face tensor; name "" for tensors the file does not keep.
GgufTensorRef GgufPlace(const std::string& hf, bool sandwich) {
  GgufTensorRef r;
  for (const auto& [from, to] : names::kTop) {
    if (hf == from) {
      r.name = to;
      return r;
    }
  }
  if (hf.ends_with("rotary_emb.inv_freq")) return r;
  static const std::regex kLayer(R"(model\.layers\.(\d{1,9})\.(.+))");
  static const std::regex kExpert(R"((block_sparse_moe|mlp)\.experts\.(\d{1,9})\.(\w+)\.weight)");
  std::smatch m;
  QTOOL_CHECK(std::regex_match(hf, m, kLayer), FormatError, "tensor '{}' has no GGUF name", hf);
  r.layer = std::stoll(m[1].str());
  const std::string rest = m[2].str();
  std::smatch e;
  if (std::regex_match(rest, e, kExpert)) {
    const bool mixtral = e[1].str() == "block_sparse_moe";
    for (const names::ExpertPart& p : names::kExpertParts) {
      if (e[3].str() == (mixtral ? p.mixtral : p.qwen)) {
        r.expert = std::stoll(e[2].str());
        r.name = fmt::format("blk.{}.{}", r.layer, p.gguf);
        return r;
      }
    }
  }
  if (sandwich) {
    for (const auto& [from, to] : names::kSandwich) {
      if (rest == from) {
        r.name = fmt::format("blk.{}.{}", r.layer, to);
        return r;
      }
    }
  }
  for (const auto& [from, to] : names::kBlock) {
    if (rest == from) {
      r.name = fmt::format("blk.{}.{}", r.layer, to);
      return r;
    }
  }
  throw FormatError(fmt::format("tensor '{}' has no GGUF name", hf));
}

struct Planned {
  ExportedTensor out;
  // The checkpoint tensors whose rows the tensor holds, in order: one, or one per expert of a
  // stacked 3-D tensor. Empty: `values` holds the data.
  std::vector<const CheckpointTensor*> srcs;
  std::vector<float> values;
  int64_t layer = -1;
  int64_t permute_heads = 0;  // > 0: permute each source's rows for RoPE with this many heads
  bool plus_one = false;      // Gemma's norms: store 1 + w
};

// The architectures the export writes, and those whose query/key rows it permutes (the others
// run NeoX-style RoPE in llama.cpp, which rotates the halves as Hugging Face does).
constexpr std::string_view kArchitectures[] = {"llama",  "qwen2", "qwen3",    "gemma2",
                                               "gemma3", "phi3",  "qwen2moe", "qwen3moe"};

}  // namespace

std::vector<float> Llama3RopeDivisors(double theta, int64_t rot_dims, double factor,
                                      double low_freq_factor, double high_freq_factor,
                                      double original_context) {
  const double low_wavelen = original_context / low_freq_factor;
  const double high_wavelen = original_context / high_freq_factor;
  std::vector<float> f;
  for (int64_t i = 0; i < rot_dims; i += 2) {
    const double freq = 1.0 / std::pow(theta, static_cast<double>(i) / rot_dims);
    const double wavelen = 2 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      f.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      f.push_back(static_cast<float>(factor));
    } else {
      const double smooth =
          (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      f.push_back(static_cast<float>(1 / ((1 - smooth) / factor + smooth)));
    }
  }
  return f;
}

std::string TensorName(const std::string& hf) { return GgufPlace(hf, false).name; }
GgufTensorRef GgufTensor(const std::string& hf, bool sandwich_norms) {
  return GgufPlace(hf, sandwich_norms);
}

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
                      bool has_imatrix, int64_t n_expert) {
  if (name.find("ffn_gate_inp.weight") != std::string::npos) return Type::kF32;
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
    } else if (has("attn_qkv.weight") || has("attn_v.weight")) {
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
      if (n_expert == 8) t = Type::kQ8_0;
    } else if (has("attn_k.weight")) {
      if (n_expert == 8) t = Type::kQ8_0;
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
      if (n_expert == 8) {
        if (f == kQ2_K || f == kQ3_K_S || f == kQ3_K_M || f == kIQ4_NL || f == kQ4_K_S ||
            f == kQ4_K_M || f == kIQ4_XS) {
          t = Type::kQ5_K;
        }
      } else if (f == kQ2_K) {
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
  QTOOL_CHECK(std::find(std::begin(kArchitectures), std::end(kArchitectures), c.architecture) !=
                  std::end(kArchitectures),
              FormatError, "{}: GGUF architecture '{}' is not written", in.dir().string(),
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
  kv.emplace_back(arch + ".rope.dimension_count",
                  u32(c.rotary_dim > 0 ? c.rotary_dim : c.head_dim));
  kv.emplace_back(arch + ".rope.freq_base", static_cast<float>(c.rope_theta));
  if (c.head_dim * c.num_heads != c.hidden_size) {
    kv.emplace_back(arch + ".attention.key_length", u32(c.head_dim));
    kv.emplace_back(arch + ".attention.value_length", u32(c.head_dim));
  }
  if (c.linear_rope_factor) {
    kv.emplace_back(arch + ".rope.scaling.type", std::string("linear"));
    kv.emplace_back(arch + ".rope.scaling.factor", static_cast<float>(*c.linear_rope_factor));
  }
  for (const auto& [key, value] : c.keys) kv.emplace_back(arch + "." + key, value);
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
  std::map<std::string, size_t> index;  // GGUF name -> plan entry
  for (const CheckpointTensor& t : in.tensors()) {
    const std::string& hf = t.info->name;
    const GgufTensorRef ref = GgufPlace(hf, c.sandwich_norms);
    if (ref.name.empty()) continue;
    if (ref.name == "output.weight" && c.tie_word_embeddings) continue;  // stored once
    const auto& shape = t.info->shape;
    QTOOL_CHECK(shape.size() == 1 || shape.size() == 2, ShapeError,
                "{}: tensor '{}' has {} dimensions; GGUF export takes 1 or 2", in.dir().string(),
                hf, shape.size());
    std::vector<uint64_t> ne;
    for (auto d = shape.rbegin(); d != shape.rend(); ++d) ne.push_back(static_cast<uint64_t>(*d));
    if (ref.name.ends_with("ffn_gate_inp_shexp.weight") && shape.size() == 2 && shape[0] == 1) {
      ne.resize(1);  // [1, hidden] in the checkpoint, a vector in llama.cpp
    }
    const auto [it, added] = index.emplace(ref.name, plan.size());
    if (added) {
      Planned p;
      p.out.source = hf;
      p.out.name = ref.name;
      p.out.ne = ne;
      p.layer = ref.layer;
      if (ref.expert >= 0) {
        QTOOL_CHECK(c.num_experts > 0 && ne.size() == 2, FormatError,
                    "{}: tensor '{}' is an expert's, but the model has no experts",
                    in.dir().string(), hf);
        p.out.ne = {ne[0], ne[1], static_cast<uint64_t>(c.num_experts)};
        p.srcs.resize(static_cast<size_t>(c.num_experts));
      }
      plan.push_back(std::move(p));
    }
    Planned& p = plan[it->second];
    if (ref.expert < 0) {
      QTOOL_CHECK(added, FormatError, "{}: tensors '{}' and '{}' are both GGUF's '{}'",
                  in.dir().string(), p.out.source, hf, ref.name);
      p.srcs.push_back(&t);
      continue;
    }
    QTOOL_CHECK(ref.expert < c.num_experts, FormatError,
                "{}: tensor '{}' is expert {}, but the model has {} experts", in.dir().string(), hf,
                ref.expert, c.num_experts);
    QTOOL_CHECK(p.srcs[ref.expert] == nullptr, FormatError, "{}: tensor '{}' appears twice",
                in.dir().string(), hf);
    QTOOL_CHECK(ne[0] == p.out.ne[0] && ne[1] == p.out.ne[1], ShapeError,
                "{}: tensor '{}' is [{}, {}], expert 0's is [{}, {}]", in.dir().string(), hf, ne[1],
                ne[0], p.out.ne[1], p.out.ne[0]);
    p.srcs[ref.expert] = &t;
  }
  bool has_output = false;
  for (const Planned& p : plan) has_output |= p.out.name == "output.weight";
  for (Planned& p : plan) {
    for (size_t e = 0; e < p.srcs.size(); ++e) {
      QTOOL_CHECK(p.srcs[e] != nullptr, FormatError, "{}: {} has no tensor for expert {}",
                  in.dir().string(), p.out.name, e);
    }
    const std::string& name = p.out.name;
    p.out.type = p.out.ne.size() == 1
                     ? ggml::Type::kF32
                     : TensorType(*recipe, options.pure, name, p.out.ne[0], p.layer, c.num_layers,
                                  c.num_heads / std::max<int64_t>(1, c.num_kv_heads), has_output,
                                  imat != nullptr, c.num_experts);
    if (permute && name.ends_with("attn_q.weight")) p.permute_heads = c.num_heads;
    if (permute && name.ends_with("attn_k.weight")) p.permute_heads = c.num_kv_heads;
    p.plus_one = c.norm_plus_one && name.ends_with("norm.weight");
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
    const int64_t slices = std::max<int64_t>(1, static_cast<int64_t>(p.srcs.size()));
    const int64_t slice_rows = p.out.ne.size() > 1 ? static_cast<int64_t>(p.out.ne[1]) : 1;
    const int64_t rows = slice_rows * slices;
    std::vector<float> x;
    if (p.srcs.empty()) {
      x = std::move(p.values);
    } else {
      x.resize(static_cast<size_t>(rows * cols));
    }
    for (int64_t e = 0; e < static_cast<int64_t>(p.srcs.size()); ++e) {
      const CheckpointTensor& src = *p.srcs[static_cast<size_t>(e)];
      float* xs = x.data() + e * slice_rows * cols;
      const int64_t bad = ConvertToF32(src.data().data(), src.info->dtype, slice_rows * cols, xs);
      QTOOL_CHECK(bad < 0, NumericError, "{}: tensor '{}': non-finite value at index {}",
                  in.dir().string(), src.info->name, bad);
      report.input_bytes += src.info->nbytes();
      if (p.permute_heads > 0) {
        QTOOL_CHECK(slice_rows % (2 * p.permute_heads) == 0, ShapeError,
                    "tensor '{}': {} rows do not split into {} heads of rotary pairs",
                    src.info->name, slice_rows, p.permute_heads);
        names::PermuteRopeRows(xs, slice_rows, cols, p.permute_heads, true);
      }
    }
    if (p.plus_one) {
      for (float& v : x) v += 1.0f;
    }
    // The importances of this weight's columns, one set per slice (llama.cpp reads none for
    // token_embd).
    std::vector<float> importance;
    if (imat != nullptr && p.out.ne.size() >= 2 && IsQuantized(p.out.type)) {
      const auto it = imat->entries.find(p.out.name);
      if (it != imat->entries.end()) {
        const bool fits = it->second.ncols == cols && it->second.nmat == slices;
        QTOOL_CHECK(fits || p.out.name == "token_embd.weight", ShapeError,
                    "{}: importance matrix entry '{}' has {} x {} values, the weight {} x {}",
                    options.imatrix_file, p.out.name, it->second.nmat, it->second.ncols, slices,
                    cols);
        if (fits) importance = it->second.Importance();
      }
    }
    p.out.imatrix = !importance.empty();
    const uint64_t row_bytes = ggml::RowBytes(p.out.type, static_cast<uint64_t>(cols));
    const uint64_t slice_bytes = row_bytes * static_cast<uint64_t>(slice_rows);
    std::vector<std::byte> q(slice_bytes * static_cast<uint64_t>(slices));
    bool given = false;
    if (!p.srcs.empty() && options.quantized) {
      std::vector<std::byte> part;
      for (int64_t e = 0; e < slices; ++e) {
        const std::string& source = p.srcs[static_cast<size_t>(e)]->info->name;
        const bool got = options.quantized(source, p.out.type, part);
        QTOOL_CHECK(got == given || e == 0, FormatError,
                    "tensor '{}': blocks are given for some experts of {} and not others", source,
                    p.out.name);
        given = got;
        if (!got) continue;
        QTOOL_CHECK(part.size() == slice_bytes, ShapeError,
                    "tensor '{}': {} bytes given for {} rows of {} bytes", source, part.size(),
                    slice_rows, row_bytes);
        if (p.permute_heads > 0) {
          names::PermuteRopeRows(part.data(), slice_rows, static_cast<int64_t>(row_bytes),
                                 p.permute_heads, true);
        }
        if (p.plus_one) {  // an F32 norm
          std::vector<float> v(static_cast<size_t>(cols));
          std::memcpy(v.data(), part.data(), part.size());
          for (float& f : v) f += 1.0f;
          std::memcpy(part.data(), v.data(), part.size());
        }
        std::copy(part.begin(), part.end(),
                  q.begin() + static_cast<std::ptrdiff_t>(e * slice_bytes));
      }
    }
    std::vector<double> err(static_cast<size_t>(threads), 0.0);
    std::vector<double> energy(static_cast<size_t>(threads), 0.0);
    ParallelFor(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)), threads,
                [&](int64_t r0, int64_t r1, int worker) {
                  std::vector<float> back(static_cast<size_t>(cols));
                  for (int64_t r = r0; r < r1; ++r) {
                    const float* xr = x.data() + r * cols;
                    const float* qw =
                        importance.empty() ? nullptr : importance.data() + (r / slice_rows) * cols;
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
    for (const CheckpointTensor* src : p.srcs) src->file->Release(*src->info);
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
