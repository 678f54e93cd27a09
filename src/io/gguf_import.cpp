#include "qtool/io/gguf_import.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>

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
  for (const ModelFile& f : RebuildTokenizer(h, label)) w.WriteTextFile(f.name, f.contents);
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
