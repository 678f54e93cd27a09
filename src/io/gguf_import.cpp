#include "qtool/io/gguf_import.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>
#include <regex>
#include <set>

#include "gguf_names.hpp"
#include "qtool/core/error.hpp"
#include "qtool/io/checkpoint.hpp"
#include "qtool/io/gguf_export.hpp"

namespace qtool::gguf {

namespace {

// How an architecture's GGUF tensors map back to a checkpoint's.
struct ArchNames {
  bool sandwich = false;  // Gemma 2/3 (names::kSandwich)
  bool fused = false;     // Phi-3: ffn_up is mlp.gate_up_proj
  bool mixtral = false;   // experts under block_sparse_moe (else mlp)
};

// Whether the Hugging Face block tensor `hf` of names::kBlock belongs to such a model.
bool Fits(std::string_view hf, const ArchNames& a) {
  if (hf == "mlp.gate_up_proj.weight") return a.fused;
  if (hf == "mlp.up_proj.weight") return !a.fused;
  if (hf == "block_sparse_moe.gate.weight") return a.mixtral;
  if (hf == "mlp.gate.weight") return !a.mixtral;
  return true;
}

// Hugging Face name of a GGUF tensor ("" for tensors a checkpoint does not hold); for a stacked
// expert tensor, the name of expert 0's slice with "{}" where the expert's index goes.
std::string HfName(const std::string& name, const ArchNames& a, const std::string& label) {
  if (name == "rope_freqs.weight") return "";
  for (const auto& [hf, gguf] : names::kTop) {
    if (name == gguf) return std::string(hf);
  }
  static const std::regex kLayer(R"(blk\.(\d{1,9})\.(.+))");
  std::smatch m;
  if (std::regex_match(name, m, kLayer)) {
    const std::string block = "model.layers." + m[1].str() + ".";
    const std::string rest = m[2].str();
    for (const names::ExpertPart& p : names::kExpertParts) {
      if (rest == p.gguf) {
        return fmt::format("{}{}.experts.{{}}.{}.weight", block,
                           a.mixtral ? "block_sparse_moe" : "mlp", a.mixtral ? p.mixtral : p.qwen);
      }
    }
    if (a.sandwich) {
      for (const auto& [hf, gguf] : names::kSandwich) {
        if (rest == gguf) return block + std::string(hf);
      }
    }
    for (const auto& [hf, gguf] : names::kBlock) {
      if (rest == gguf && Fits(hf, a)) return block + std::string(hf);
    }
  }
  throw FormatError(fmt::format("{}: tensor '{}' has no Hugging Face name", label, name));
}

// Protocol-buffer encoding, for the SentencePiece ModelProto (sentencepiece_model.proto).
void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void PutKey(std::string& out, uint32_t field, uint32_t wire) { PutVarint(out, field << 3 | wire); }
void PutInt(std::string& out, uint32_t field, int64_t v) {  // int32/enum/bool: wire type 0
  PutKey(out, field, 0);
  PutVarint(out, static_cast<uint64_t>(v));  // negative int32 values take ten bytes
}
void PutBytes(std::string& out, uint32_t field, std::string_view b) {
  PutKey(out, field, 2);
  PutVarint(out, b.size());
  out.append(b);
}
void PutFloat(std::string& out, uint32_t field, float f) {
  PutKey(out, field, 5);
  char b[4];
  std::memcpy(b, &f, 4);  // little-endian fixed32, as the hosts qtool builds for
  out.append(b, 4);
}

// The tokenizer arrays and ids of a GGUF header.
struct GgufVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;               // empty when absent
  std::vector<int32_t> types;              // llama_token_type; 1 (normal) when absent
  std::map<std::string, int64_t> special;  // "bos_token" -> id, ...
  std::optional<bool> add_bos, add_eos;
};

const Value& ArrayKey(const Header& h, const std::string& key, ValueType elem,
                      const std::string& label) {
  const Value* v = h.Find(key);
  QTOOL_CHECK(v != nullptr, FormatError, "{}: {} is missing", label, key);
  QTOOL_CHECK(v->is_array && v->elem_type == elem, FormatError, "{}: {} is not an array of {}",
              label, key, ValueTypeName(elem));
  return *v;
}

// A bool key's value, or nullopt when the header lacks it.
std::optional<bool> BoolKey(const Header& h, const std::string& key, const std::string& label) {
  const Value* b = h.Find(key);
  if (b == nullptr) return std::nullopt;
  QTOOL_CHECK(b->type() == ValueType::kBool, FormatError, "{}: {} is not a bool", label, key);
  return std::get<bool>(b->scalar);
}

GgufVocab ReadVocab(const Header& h, const std::string& label) {
  GgufVocab v;
  for (const Scalar& s : ArrayKey(h, "tokenizer.ggml.tokens", ValueType::kString, label).items) {
    v.tokens.push_back(std::get<std::string>(s));
  }
  const size_t n = v.tokens.size();
  QTOOL_CHECK(n > 0, FormatError, "{}: tokenizer.ggml.tokens is empty", label);
  if (h.Find("tokenizer.ggml.scores")) {
    const Value& a = ArrayKey(h, "tokenizer.ggml.scores", ValueType::kF32, label);
    QTOOL_CHECK(a.items.size() == n, FormatError,
                "{}: tokenizer.ggml.scores has {} values for {} tokens", label, a.items.size(), n);
    for (const Scalar& s : a.items) v.scores.push_back(std::get<float>(s));
  }
  v.types.assign(n, 1);
  if (h.Find("tokenizer.ggml.token_type")) {
    const Value& a = ArrayKey(h, "tokenizer.ggml.token_type", ValueType::kI32, label);
    QTOOL_CHECK(a.items.size() == n, FormatError,
                "{}: tokenizer.ggml.token_type has {} values for {} tokens", label, a.items.size(),
                n);
    for (size_t i = 0; i < n; ++i) {
      v.types[i] = std::get<int32_t>(a.items[i]);
      QTOOL_CHECK(v.types[i] >= 1 && v.types[i] <= 6, FormatError,
                  "{}: tokenizer.ggml.token_type[{}] is {}, not a token type (1 to 6)", label, i,
                  v.types[i]);
    }
  }
  for (const auto& [key, name] : {std::pair{"tokenizer.ggml.bos_token_id", "bos_token"},
                                  std::pair{"tokenizer.ggml.eos_token_id", "eos_token"},
                                  std::pair{"tokenizer.ggml.unknown_token_id", "unk_token"},
                                  std::pair{"tokenizer.ggml.padding_token_id", "pad_token"}}) {
    const Value* id = h.Find(key);
    if (id == nullptr) continue;
    QTOOL_CHECK(id->AsInt().has_value(), FormatError, "{}: {} is not an integer", label, key);
    const int64_t i = *id->AsInt();
    QTOOL_CHECK(i >= 0 && static_cast<uint64_t>(i) < n, FormatError,
                "{}: {} is {}, outside the {} tokens", label, key, i, n);
    v.special[name] = i;
  }
  v.add_bos = BoolKey(h, "tokenizer.ggml.add_bos_token", label);
  v.add_eos = BoolKey(h, "tokenizer.ggml.add_eos_token", label);
  return v;
}

// A SentencePiece BPE model. Piece types are llama.cpp's token types, which use SentencePiece's
// numbers (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte). SentencePiece needs
// one unknown piece: the token of type 2, else the one tokenizer.ggml.unknown_token_id names
// (llama.cpp's converter types Gemma's <unk> as control). llama.cpp matches user-defined tokens in
// the raw text, SentencePiece in the text with spaces already U+2581, so converters write their
// U+2581 as spaces (Gemma's runs of spaces) and they are turned back here.
std::string SentencePieceModel(const Header& h, const GgufVocab& v, const std::string& label) {
  const bool typed_unk = std::find(v.types.begin(), v.types.end(), 2) != v.types.end();
  const auto unk_id = v.special.find("unk_token");
  QTOOL_CHECK(typed_unk || unk_id != v.special.end(), FormatError,
              "{}: the llama tokenizer has no unknown token (tokenizer.ggml.token_type 2, or "
              "tokenizer.ggml.unknown_token_id), which SentencePiece needs",
              label);
  std::string proto;
  bool has_bytes = false;
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    std::string text = v.tokens[i];
    int32_t type = v.types[i];
    if (type == 4) {
      for (size_t p = text.find(' '); p != std::string::npos; p = text.find(' ', p + 3)) {
        text.replace(p, 1, "\xe2\x96\x81");
      }
    }
    if (!typed_unk && static_cast<int64_t>(i) == unk_id->second) type = 2;
    const auto [it, fresh] = seen.emplace(text, i);
    QTOOL_CHECK(fresh, FormatError,
                "{}: tokens {} and {} are both '{}', which SentencePiece cannot hold", label,
                it->second, i, text);
    std::string piece;
    PutBytes(piece, 1, text);
    PutFloat(piece, 2, v.scores.empty() ? 0.0f : v.scores[i]);
    if (type != 1) PutInt(piece, 3, type);  // NORMAL is the default
    has_bytes |= type == 6;
    PutBytes(proto, 1, piece);  // ModelProto.pieces
  }
  std::string trainer;
  PutInt(trainer, 3, 2);                                      // model_type: BPE
  PutInt(trainer, 4, static_cast<int64_t>(v.tokens.size()));  // vocab_size
  PutInt(trainer, 35, has_bytes ? 1 : 0);                     // byte_fallback
  // The special pieces by text (SentencePieceProcessor::bos_id() looks bos_piece up), and their
  // ids (unk_id 40, bos_id 41, eos_id 42, pad_id 43; -1: none).
  const std::pair<const char*, std::pair<uint32_t, uint32_t>> fields[] = {{"unk_token", {40, 45}},
                                                                          {"bos_token", {41, 46}},
                                                                          {"eos_token", {42, 47}},
                                                                          {"pad_token", {43, 48}}};
  for (const auto& [name, f] : fields) {
    const auto it = v.special.find(name);
    PutInt(trainer, f.first, it == v.special.end() ? -1 : it->second);
    if (it != v.special.end()) PutBytes(trainer, f.second, v.tokens[it->second]);
  }
  PutBytes(proto, 2, trainer);  // ModelProto.trainer_spec
  std::string norm;
  PutBytes(norm, 1, "identity");
  PutInt(norm, 3, BoolKey(h, "tokenizer.ggml.add_space_prefix", label).value_or(true) ? 1 : 0);
  PutInt(norm, 4,
         BoolKey(h, "tokenizer.ggml.remove_extra_whitespaces", label).value_or(false) ? 1 : 0);
  PutBytes(proto, 3, norm);  // ModelProto.normalizer_spec
  return proto;
}

// A byte-level BPE tokenizer.json.
std::string BpeTokenizerJson(const Header& h, const GgufVocab& v, const std::string& label) {
  const Value* pre_v = h.Find("tokenizer.ggml.pre");
  QTOOL_CHECK(pre_v != nullptr && pre_v->AsString() != nullptr, FormatError,
              "{}: tokenizer.ggml.pre (the pre-tokenizer's name) is missing", label);
  const std::string& pre = *pre_v->AsString();
  const nlohmann::json byte_level = {{"type", "ByteLevel"},
                                     {"add_prefix_space", false},
                                     {"trim_offsets", true},
                                     {"use_regex", true}};
  nlohmann::json pre_tokenizer;
  if (pre == "gpt-2") {
    pre_tokenizer = byte_level;
  } else if (pre == "smollm") {
    pre_tokenizer = {
        {"type", "Sequence"},
        {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level}}};
  } else {
    throw FormatError(
        fmt::format("{}: pre-tokenizer '{}' cannot be rebuilt (known: gpt-2, smollm)", label, pre));
  }
  nlohmann::json vocab = nlohmann::json::object();
  nlohmann::json added = nlohmann::json::array();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (!vocab.contains(v.tokens[i])) vocab[v.tokens[i]] = i;  // the first of duplicates
    if (v.types[i] == 3 || v.types[i] == 4) {                  // control, user-defined
      added.push_back({{"id", i},
                       {"content", v.tokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", v.types[i] == 4},
                       {"special", v.types[i] == 3}});
    }
  }
  nlohmann::json merges = nlohmann::json::array();
  if (h.Find("tokenizer.ggml.merges")) {
    for (const Scalar& s : ArrayKey(h, "tokenizer.ggml.merges", ValueType::kString, label).items) {
      merges.push_back(std::get<std::string>(s));
    }
  }
  const nlohmann::json j = {{"version", "1.0"},
                            {"truncation", nullptr},
                            {"padding", nullptr},
                            {"added_tokens", added},
                            {"normalizer", nullptr},
                            {"pre_tokenizer", pre_tokenizer},
                            {"post_processor", nullptr},
                            {"decoder",
                             {{"type", "ByteLevel"},
                              {"add_prefix_space", true},
                              {"trim_offsets", true},
                              {"use_regex", true}}},
                            {"model",
                             {{"type", "BPE"},
                              {"dropout", nullptr},
                              {"unk_token", nullptr},
                              {"continuing_subword_prefix", nullptr},
                              {"end_of_word_suffix", nullptr},
                              {"fuse_unk", false},
                              {"byte_fallback", false},
                              {"ignore_merges", false},
                              {"vocab", vocab},
                              {"merges", merges}}}};
  return j.dump() + "\n";
}

// The Llama 3 RoPE scaling whose divisors (Llama3RopeDivisors) are `f`, one per rotary pair of
// `rot_dims` dimensions with base `theta`, as rope_scaling of config.json; null when every
// divisor is 1. Only the ratios of original_max_position_embeddings to the two frequency factors
// shape the divisors, so it is taken as Llama 3's 8192 and the factors recovered from the divisors
// between 1 and `factor`: each such s = (1/f - 1/factor) / (1 - 1/factor) is linear in
// original / wavelength. Throws FormatError when no such scaling gives `f` back.
nlohmann::json Llama3Scaling(const std::vector<float>& f, double theta, int64_t rot_dims,
                             const std::string& label) {
  const double factor = *std::max_element(f.begin(), f.end());
  if (factor == 1.0 && *std::min_element(f.begin(), f.end()) == 1.0f) return nullptr;
  const std::string what = fmt::format("{}: rope_freqs.weight", label);
  QTOOL_CHECK(factor > 1.0 && rot_dims == 2 * static_cast<int64_t>(f.size()), FormatError,
              "{} holds {} divisors up to {} for {} rotated dimensions: not Llama 3 scaling", what,
              f.size(), factor, rot_dims);
  constexpr double kOriginal = 8192;
  std::vector<double> x, s;  // original / wavelength and s of the divisors in the blend
  double last_one = 0, first_full = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    const double xi =
        kOriginal / (2 * std::numbers::pi * std::pow(theta, static_cast<double>(2 * i) / rot_dims));
    const double rel = std::abs(f[i] - factor) / factor;
    if (f[i] == 1.0f) {
      last_one = xi;
    } else if (rel < 1e-6) {
      if (first_full == 0) first_full = xi;
    } else {
      x.push_back(xi);
      s.push_back((1 / f[i] - 1 / factor) / (1 - 1 / factor));
    }
  }
  // s = (x - low) / (high - low): from two blend points, else boundaries between the classes.
  double low = 0, high = 0;
  if (x.size() >= 2) {
    const double a = (s.front() - s.back()) / (x.front() - x.back());
    const double b = s.front() - a * x.front();
    low = -b / a;
    high = (1 - b) / a;
  } else {
    const double top = last_one > 0 ? last_one : (x.empty() ? first_full : x[0]) * 2;
    const double bottom = first_full > 0 ? first_full : (x.empty() ? last_one : x[0]) / 2;
    if (x.empty()) {
      high = top - (top - bottom) / 3;
      low = bottom + (top - bottom) / 3;
    } else {
      high = (top + x[0]) / 2;
      low = (x[0] - s[0] * high) / (1 - s[0]);
    }
  }
  QTOOL_CHECK(low > 0 && high > low, FormatError,
              "{}: divisors that Llama 3 scaling does not give (frequency factors {} and {})", what,
              low, high);
  const std::vector<float> back = Llama3RopeDivisors(theta, rot_dims, factor, low, high, kOriginal);
  for (size_t i = 0; i < f.size(); ++i) {
    QTOOL_CHECK(std::abs(back[i] - f[i]) <= 1e-5 * std::abs(f[i]), FormatError,
                "{}: divisor {} is {}, Llama 3 scaling with factor {} gives {}", what, i, f[i],
                factor, back[i]);
  }
  return {{"rope_type", "llama3"},
          {"factor", factor},
          {"low_freq_factor", low},
          {"high_freq_factor", high},
          {"original_max_position_embeddings", static_cast<int64_t>(kOriginal)}};
}

int64_t Int(const Header& h, const std::string& key, const std::string& label) {
  const Value* v = h.Find(key);
  QTOOL_CHECK(v != nullptr && v->AsInt().has_value(), FormatError,
              "{}: integer key '{}' is missing", label, key);
  return *v->AsInt();
}

}  // namespace

std::vector<ModelFile> RebuildTokenizer(const Header& h, const std::string& label) {
  const Value* model = h.Find("tokenizer.ggml.model");
  if (model == nullptr) return {};
  QTOOL_CHECK(model->AsString() != nullptr, FormatError, "{}: tokenizer.ggml.model is not a string",
              label);
  const std::string& kind = *model->AsString();
  QTOOL_CHECK(kind == "llama" || kind == "gpt2", FormatError,
              "{}: tokenizer model '{}' cannot be rebuilt (llama and gpt2 can)", label, kind);
  const GgufVocab v = ReadVocab(h, label);
  std::vector<ModelFile> files;
  if (kind == "llama") {
    files.push_back({"tokenizer.model", SentencePieceModel(h, v, label)});
  } else {
    files.push_back({"tokenizer.json", BpeTokenizerJson(h, v, label)});
  }
  nlohmann::json cfg = nlohmann::json::object();
  for (const auto& [name, id] : v.special) cfg[name] = v.tokens[static_cast<size_t>(id)];
  if (v.add_bos) cfg["add_bos_token"] = *v.add_bos;
  if (kind == "llama" && !v.add_bos) cfg["add_bos_token"] = true;  // llama.cpp's default
  if (v.add_eos) cfg["add_eos_token"] = *v.add_eos;
  if (const Value* t = h.Find("tokenizer.chat_template"); t && t->AsString()) {
    cfg["chat_template"] = *t->AsString();
  }
  files.push_back({"tokenizer_config.json", cfg.dump(2) + "\n"});
  return files;
}

void ImportGguf(const SplitFile& file, const std::filesystem::path& out_dir, bool overwrite) {
  const Header& h = file.header();
  const std::string label = file.path().string();
  const Value* arch_v = h.Find("general.architecture");
  QTOOL_CHECK(arch_v != nullptr && arch_v->AsString() != nullptr, FormatError,
              "{}: general.architecture is missing", label);
  const std::string arch = *arch_v->AsString();
  // GGUF architecture -> the Hugging Face class and model_type of the checkpoint.
  static const std::map<std::string, std::pair<std::string, std::string>> kClasses = {
      {"llama", {"LlamaForCausalLM", "llama"}},
      {"qwen2", {"Qwen2ForCausalLM", "qwen2"}},
      {"qwen3", {"Qwen3ForCausalLM", "qwen3"}},
      {"qwen2moe", {"Qwen2MoeForCausalLM", "qwen2_moe"}},
      {"qwen3moe", {"Qwen3MoeForCausalLM", "qwen3_moe"}},
      {"gemma2", {"Gemma2ForCausalLM", "gemma2"}},
      {"gemma3", {"Gemma3ForCausalLM", "gemma3_text"}},
      {"phi3", {"Phi3ForCausalLM", "phi3"}}};
  const auto cls = kClasses.find(arch);
  QTOOL_CHECK(cls != kClasses.end(), FormatError,
              "{}: architecture '{}' cannot be converted (llama, qwen2, qwen3, qwen2moe, qwen3moe, "
              "gemma2, gemma3 and phi3 can)",
              label, arch);
  auto key = [&arch](const char* k) { return arch + "." + k; };
  const int64_t heads = Int(h, key("attention.head_count"), label);
  const int64_t kv_heads = h.Find(key("attention.head_count_kv"))
                               ? Int(h, key("attention.head_count_kv"), label)
                               : heads;
  const int64_t hidden = Int(h, key("embedding_length"), label);
  const int64_t layers = Int(h, key("block_count"), label);
  QTOOL_CHECK(heads > 0 && layers > 0 && hidden > 0, FormatError,
              "{}: {} heads, {} layers, embedding length {}", label, heads, layers, hidden);
  const int64_t head_dim = h.Find(key("attention.key_length"))
                               ? Int(h, key("attention.key_length"), label)
                               : hidden / heads;
  const int64_t experts = h.Find(key("expert_count")) ? Int(h, key("expert_count"), label) : 0;
  const TensorInfo* embd = h.FindTensor("token_embd.weight");
  QTOOL_CHECK(embd != nullptr && embd->ne.size() == 2, FormatError,
              "{}: token_embd.weight is missing", label);
  auto f32 = [&h](const std::string& k, double fallback) {
    const Value* v = h.Find(k);
    return v && v->AsFloat() ? *v->AsFloat() : fallback;
  };
  const bool gemma = arch == "gemma2" || arch == "gemma3";
  const bool mixtral = arch == "llama" && experts > 0;
  nlohmann::json config = {
      {"architectures", {mixtral ? "MixtralForCausalLM" : cls->second.first}},
      {"model_type", mixtral ? "mixtral" : cls->second.second},
      {"hidden_size", hidden},
      {"intermediate_size", Int(h, key("feed_forward_length"), label)},
      {"num_hidden_layers", layers},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads},
      {"head_dim", head_dim},
      {"vocab_size", embd->ne[1]},
      {"max_position_embeddings", Int(h, key("context_length"), label)},
      {"rms_norm_eps", f32(key("attention.layer_norm_rms_epsilon"), 1e-6)},
      {"rope_theta", f32(key("rope.freq_base"), 10000.0)},
      {"tie_word_embeddings", h.FindTensor("output.weight") == nullptr},
      {gemma ? "hidden_activation" : "hidden_act", gemma ? "gelu_pytorch_tanh" : "silu"},
      {"torch_dtype", "float32"}};
  for (const auto& [k, hf] : {std::pair{"tokenizer.ggml.bos_token_id", "bos_token_id"},
                              std::pair{"tokenizer.ggml.eos_token_id", "eos_token_id"}}) {
    if (h.Find(k)) config[hf] = Int(h, k, label);
  }
  if (const Value* t = h.Find(key("rope.scaling.type"));
      t && t->AsString() && *t->AsString() == "linear") {
    config["rope_scaling"] = {{"type", "linear"}, {"factor", f32(key("rope.scaling.factor"), 1.0)}};
  }
  if (const TensorInfo* rf = h.FindTensor("rope_freqs.weight")) {
    QTOOL_CHECK(arch == "llama" && rf->ne.size() == 1 && !config.contains("rope_scaling"),
                FormatError, "{}: rope_freqs.weight is read for a llama model only, unscaled",
                label);
    std::vector<float> f(rf->numel());
    file.Dequantize(*rf, f);
    const int64_t rot =
        h.Find(key("rope.dimension_count")) ? Int(h, key("rope.dimension_count"), label) : head_dim;
    nlohmann::json scaling = Llama3Scaling(f, f32(key("rope.freq_base"), 10000.0), rot, label);
    if (!scaling.is_null()) config["rope_scaling"] = std::move(scaling);
  }
  if (experts > 0) {
    const int64_t used = Int(h, key("expert_used_count"), label);
    if (mixtral) {
      config["num_local_experts"] = experts;
    } else {
      config["num_experts"] = experts;
      config["moe_intermediate_size"] = Int(h, key("expert_feed_forward_length"), label);
      config["norm_topk_prob"] = arch == "qwen3moe";  // what llama.cpp's graphs do
      if (h.Find(key("expert_shared_feed_forward_length"))) {
        config["shared_expert_intermediate_size"] =
            Int(h, key("expert_shared_feed_forward_length"), label);
      }
    }
    config["num_experts_per_tok"] = used;
  }
  if (arch == "phi3") {
    const int64_t rot = Int(h, key("rope.dimension_count"), label);
    if (rot != head_dim) config["partial_rotary_factor"] = static_cast<double>(rot) / head_dim;
  }
  if (h.Find(key("attention.sliding_window"))) {
    config["sliding_window"] = Int(h, key("attention.sliding_window"), label);
  }
  if (gemma) {
    // llama.cpp's query scale (see gguf::GgufModelParams) and its per-layer sliding pattern
    // (Gemma 2: every other layer from the first; Gemma 3: five of every six).
    const bool big = layers == (arch == "gemma3" ? 62 : 46);
    config["query_pre_attn_scalar"] = big ? hidden / heads : head_dim;
    std::vector<bool> sliding(static_cast<size_t>(layers));
    for (int64_t i = 0; i < layers; ++i)
      sliding[i] = arch == "gemma3" ? (i + 1) % 6 != 0 : i % 2 == 0;
    if (const Value* v = h.Find(key("attention.sliding_window_pattern"))) {
      if (v->is_array) {
        const Value& a =
            ArrayKey(h, key("attention.sliding_window_pattern"), ValueType::kBool, label);
        QTOOL_CHECK(static_cast<int64_t>(a.items.size()) == layers, FormatError,
                    "{}: {} has {} entries for {} layers", label,
                    key("attention.sliding_window_pattern"), a.items.size(), layers);
        for (int64_t i = 0; i < layers; ++i) sliding[i] = std::get<bool>(a.items[i]);
      } else {
        const int64_t n = Int(h, key("attention.sliding_window_pattern"), label);
        QTOOL_CHECK(n > 0, FormatError, "{}: {} is {}", label,
                    key("attention.sliding_window_pattern"), n);
        for (int64_t i = 0; i < layers; ++i) sliding[i] = (i + 1) % n != 0;
      }
    }
    const bool windowed = arch == "gemma2" || h.Find(key("attention.sliding_window"));
    if (arch == "gemma2" && !config.contains("sliding_window")) config["sliding_window"] = 4096;
    nlohmann::json types = nlohmann::json::array();
    for (int64_t i = 0; i < layers; ++i) {
      types.push_back(windowed && sliding[i] ? "sliding_attention" : "full_attention");
    }
    config["layer_types"] = types;
    if (arch == "gemma3") config["rope_local_base_freq"] = f32(key("rope.freq_base_swa"), 10000.0);
    for (const char* cap : {"attn_logit_softcapping", "final_logit_softcapping"}) {
      if (h.Find(key(cap))) config[cap] = f32(key(cap), 0.0);
    }
  }

  // Each GGUF tensor, or each expert's slice of a stacked one, as a checkpoint tensor.
  struct Part {
    const TensorInfo* t;
    int64_t slice;  // -1: the whole tensor
  };
  const ArchNames names{gemma, arch == "phi3", mixtral};
  std::vector<qtool::TensorSpec> specs;
  std::vector<Part> parts;
  for (const TensorInfo& t : h.tensors) {
    const std::string hf = HfName(t.name, names, label);
    if (hf.empty()) continue;
    std::vector<int64_t> shape;
    for (auto it = t.ne.rbegin(); it != t.ne.rend(); ++it)
      shape.push_back(static_cast<int64_t>(*it));
    if (t.ne.size() == 3) {
      QTOOL_CHECK(static_cast<int64_t>(t.ne[2]) == experts, FormatError,
                  "{}: tensor '{}' stacks {} experts, {} says {}", label, t.name, t.ne[2],
                  key("expert_count"), experts);
      for (int64_t e = 0; e < experts; ++e) {
        specs.push_back({fmt::format(fmt::runtime(hf), e), DType::kF32, {shape[1], shape[2]}});
        parts.push_back({&t, e});
      }
      continue;
    }
    if (t.name.ends_with("ffn_gate_inp_shexp.weight") && shape.size() == 1) {
      shape.insert(shape.begin(), 1);  // a [1, hidden] Linear in the checkpoint
    }
    specs.push_back({hf, DType::kF32, shape});
    parts.push_back({&t, -1});
  }
  CheckpointWriterOptions opts;
  opts.overwrite = overwrite;
  opts.metadata = {{"format", "pt"}};
  CheckpointWriter w(out_dir, specs, opts);
  w.WriteTextFile("config.json", config.dump(2) + "\n");
  for (const ModelFile& f : RebuildTokenizer(h, label)) w.WriteTextFile(f.name, f.contents);
  std::vector<float> values;
  const TensorInfo* decoded = nullptr;
  for (const Part& part : parts) {
    const TensorInfo* t = part.t;
    if (decoded != t) {
      values.resize(t->numel());
      file.Dequantize(*t, values);
      decoded = t;
      const bool q = t->name.ends_with("attn_q.weight");
      const bool k = t->name.ends_with("attn_k.weight");
      if (arch == "llama" && (q || k)) {
        const int64_t n_heads = q ? heads : kv_heads;
        const int64_t nrows = static_cast<int64_t>(t->ne[1]);
        QTOOL_CHECK(nrows % (2 * n_heads) == 0, FormatError,
                    "{}: tensor '{}': {} rows do not split into {} heads", label, t->name, nrows,
                    n_heads);
        names::PermuteRopeRows(values.data(), nrows, static_cast<int64_t>(t->ne[0]), n_heads,
                               false);
      }
      if (gemma && t->name.ends_with("norm.weight")) {
        for (float& v : values) v -= 1.0f;  // llama.cpp stores Gemma's norms as 1 + w
      }
    }
    std::span<const float> out(values);
    if (part.slice >= 0) {
      const size_t n = static_cast<size_t>(t->ne[0] * t->ne[1]);
      out = out.subspan(static_cast<size_t>(part.slice) * n, n);
    }
    w.Write(std::as_bytes(out));
  }
  w.Commit();
}

}  // namespace qtool::gguf
