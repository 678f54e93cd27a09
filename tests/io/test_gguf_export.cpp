// Hugging Face -> GGUF export: metadata llama.cpp reads, tensor names and types (with llama.cpp's
// fallbacks), the RoPE row permutation, tied embeddings, both tokenizer kinds, and the CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "qtool/core/error.hpp"
#include "qtool/io/gguf.hpp"
#include "qtool/io/gguf_export.hpp"
#include "qtool/io/gguf_import.hpp"
#include "qtool/kernels/convert.hpp"
#include "qtool/model/gguf_params.hpp"
#include "qtool/model/model.hpp"
#include "test_support.hpp"

namespace qtool::gguf {
namespace {

namespace fs = std::filesystem;

// The embedded stories260K model: dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads, vocab 512,
// SentencePiece tokenizer, tied embeddings.
fs::path Stories() { return fs::path(QTOOL_SOURCE_DIR) / "examples/models/stories260K"; }

std::vector<float> SourceF32(const Checkpoint& ck, const std::string& name) {
  const CheckpointTensor& t = ck.Get(name);
  std::vector<float> v(static_cast<size_t>(t.info->numel()));
  ConvertToF32(t.data().data(), t.info->dtype, t.info->numel(), v.data());
  return v;
}

std::vector<float> Decoded(const File& f, const std::string& name) {
  const TensorInfo* t = f.header().FindTensor(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> v(t->numel());
  f.Dequantize(*t, v);
  return v;
}

TEST(GgufExport, FallbackTypesFollowLlamaCpp) {
  using ggml::Type;
  EXPECT_EQ(FallbackType(Type::kQ4_K, 1536), Type::kQ4_K);
  EXPECT_EQ(FallbackType(Type::kQ4_K, 576), Type::kQ5_0);  // SmolLM2's hidden size: 2.25 blocks
  EXPECT_EQ(FallbackType(Type::kQ4_K, 64), Type::kQ5_0);
  EXPECT_EQ(FallbackType(Type::kQ5_K, 96), Type::kQ5_1);
  EXPECT_EQ(FallbackType(Type::kQ6_K, 160), Type::kQ8_0);
  EXPECT_EQ(FallbackType(Type::kQ2_K, 32), Type::kQ4_0);
  EXPECT_EQ(FallbackType(Type::kQ3_K, 32), Type::kQ4_0);
  EXPECT_EQ(FallbackType(Type::kIQ4_XS, 32), Type::kIQ4_NL);
  EXPECT_EQ(FallbackType(Type::kTQ1_0, 64), Type::kQ4_0);
  EXPECT_EQ(FallbackType(Type::kQ4_K, 172), Type::kF16);
  EXPECT_EQ(FallbackType(Type::kQ8_0, 172), Type::kF16);
  EXPECT_EQ(FallbackType(Type::kF32, 172), Type::kF32);
}

// llama.cpp's recipes on a 30-layer model (SmolLM2-135M's depth, 3 query heads per kv head) with
// rows of 768 and 1536 (whole 256-blocks), as llama_tensor_get_type picks them.
TEST(GgufExport, MixRecipesFollowLlamaCpp) {
  using ggml::Type;
  auto type = [](const char* recipe, const std::string& name, int64_t layer, uint64_t ne0 = 768,
                 int64_t gqa = 3, bool has_output = false) {
    return TensorType(*FindRecipe(recipe), false, name, ne0, layer, 30, gqa, has_output);
  };
  // use_more_bits(i, 30): i < 3, i >= 26, or (i - 3) % 3 == 2.
  const std::set<int64_t> more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29};
  for (int64_t i = 0; i < 30; ++i) {
    const std::string blk = fmt::format("blk.{}.", i);
    const Type more_or_q4 = more.count(i) ? Type::kQ6_K : Type::kQ4_K;
    EXPECT_EQ(type("Q4_K_M", blk + "attn_v.weight", i), more_or_q4) << i;
    EXPECT_EQ(type("Q4_K_M", blk + "ffn_down.weight", i, 1536), more_or_q4) << i;
    EXPECT_EQ(type("Q4_K_M", blk + "attn_q.weight", i), Type::kQ4_K);
    EXPECT_EQ(type("Q4_K_M", blk + "ffn_up.weight", i), Type::kQ4_K);
    EXPECT_EQ(type("Q5_K_M", blk + "attn_v.weight", i), more.count(i) ? Type::kQ6_K : Type::kQ5_K);
    EXPECT_EQ(type("Q3_K_M", blk + "attn_v.weight", i), i < 2 ? Type::kQ5_K : Type::kQ4_K);
    EXPECT_EQ(type("Q3_K_M", blk + "ffn_down.weight", i, 1536),
              i < 1 ? Type::kQ5_K : Type::kQ4_K);  // 30 / 16 = 1
    EXPECT_EQ(type("Q3_K_M", blk + "attn_output.weight", i), Type::kQ4_K);
    EXPECT_EQ(type("Q3_K_M", blk + "ffn_gate.weight", i), Type::kQ3_K);
    EXPECT_EQ(type("Q3_K_L", blk + "attn_output.weight", i), Type::kQ5_K);
    EXPECT_EQ(type("Q3_K_S", blk + "attn_v.weight", i), Type::kQ3_K);
    EXPECT_EQ(type("Q2_K", blk + "attn_v.weight", i), Type::kQ3_K);
    EXPECT_EQ(type("Q2_K", blk + "attn_v.weight", i, 768, 4), Type::kQ4_K);
    EXPECT_EQ(type("Q2_K", blk + "ffn_down.weight", i, 1536), Type::kQ3_K);
    EXPECT_EQ(type("Q2_K", blk + "ffn_up.weight", i), Type::kQ2_K);
    EXPECT_EQ(type("Q4_K_S", blk + "attn_v.weight", i), i < 4 ? Type::kQ5_K : Type::kQ4_K);
    EXPECT_EQ(type("Q4_K_S", blk + "ffn_down.weight", i, 1536), i < 3 ? Type::kQ5_K : Type::kQ4_K);
    EXPECT_EQ(type("IQ4_XS", blk + "ffn_down.weight", i, 1536),
              i < 3 ? Type::kQ5_K : Type::kIQ4_XS);
    // Rows of 64 do not fit 256-blocks: Q6_K falls back to Q8_0, Q4_K to Q5_0.
    EXPECT_EQ(type("Q4_K_M", blk + "attn_v.weight", i, 64),
              more.count(i) ? Type::kQ8_0 : Type::kQ5_0);
  }
  // The output head, or the tied embeddings that serve as one.
  EXPECT_EQ(type("Q4_K_M", "token_embd.weight", -1), Type::kQ6_K);
  EXPECT_EQ(type("Q4_K_M", "token_embd.weight", -1, 768, 3, true), Type::kQ4_K);
  EXPECT_EQ(type("Q4_K_M", "output.weight", -1, 768, 3, true), Type::kQ6_K);
  EXPECT_EQ(type("Q4_0", "token_embd.weight", -1), Type::kQ6_K);
  EXPECT_EQ(type("Q8_0", "token_embd.weight", -1), Type::kQ8_0);
  EXPECT_EQ(type("Q4_0", "token_embd.weight", -1, 64), Type::kQ8_0);
  EXPECT_EQ(type("TQ1_0", "token_embd.weight", -1, 768, 3, true), Type::kQ4_K);
  // Pure: the base type everywhere; types without a llama_ftype are pure.
  EXPECT_EQ(TensorType(*FindRecipe("Q4_K_M"), true, "token_embd.weight", 768, -1, 30, 3, false),
            Type::kQ4_K);
  EXPECT_EQ(type("Q4_K", "token_embd.weight", -1), Type::kQ4_K);
  EXPECT_EQ(type("F16", "token_embd.weight", -1), Type::kF16);
  EXPECT_FALSE(FindRecipe("Q4_K_X").has_value());
  EXPECT_EQ(FindRecipe("q4_k_m")->file_type, 15u);
}

// The rules of llama_tensor_get_type that depend on the architecture: Phi-3's fused attn_qkv
// follows attn_v's, eight experts (Mixtral) raise attn_v and attn_k to Q8_0 and attn_output to
// Q5_K, a router (ffn_gate_inp) is never quantised, and the stacked experts' names match the
// dense ones' rules (ffn_down_exps as ffn_down).
TEST(GgufExport, ArchitectureRulesFollowLlamaCpp) {
  using ggml::Type;
  auto type = [](const char* recipe, const std::string& name, int64_t layer, int64_t experts) {
    return TensorType(*FindRecipe(recipe), false, name, 768, layer, 30, 1, true, false, experts);
  };
  EXPECT_EQ(type("Q4_K_M", "blk.0.attn_qkv.weight", 0, 0), Type::kQ6_K);
  EXPECT_EQ(type("Q4_K_M", "blk.3.attn_qkv.weight", 3, 0), Type::kQ4_K);
  EXPECT_EQ(type("Q3_K_M", "blk.1.attn_qkv.weight", 1, 0), Type::kQ5_K);
  for (const char* recipe : {"Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS"}) {
    EXPECT_EQ(type(recipe, "blk.3.attn_v.weight", 3, 8), Type::kQ8_0) << recipe;
    EXPECT_EQ(type(recipe, "blk.3.attn_k.weight", 3, 8), Type::kQ8_0) << recipe;
    EXPECT_EQ(type(recipe, "blk.3.ffn_gate_inp.weight", 3, 8), Type::kF32) << recipe;
  }
  EXPECT_EQ(type("Q4_K_M", "blk.3.attn_k.weight", 3, 4), Type::kQ4_K);
  EXPECT_EQ(type("Q4_K_M", "blk.3.attn_v.weight", 3, 4), Type::kQ4_K);
  EXPECT_EQ(type("Q4_K_M", "blk.3.attn_output.weight", 3, 8), Type::kQ5_K);
  EXPECT_EQ(type("Q3_K_L", "blk.3.attn_output.weight", 3, 8), Type::kQ3_K);  // not in the list
  EXPECT_EQ(type("Q5_K_M", "blk.3.attn_output.weight", 3, 8), Type::kQ5_K);
  EXPECT_EQ(type("Q4_K_M", "blk.3.attn_output.weight", 3, 4), Type::kQ4_K);
  EXPECT_EQ(type("Q4_K_M", "blk.2.ffn_down_exps.weight", 2, 8), Type::kQ6_K);
  EXPECT_EQ(type("Q4_K_M", "blk.3.ffn_down_exps.weight", 3, 8), Type::kQ4_K);
  EXPECT_EQ(type("Q4_K_M", "blk.2.ffn_down_shexp.weight", 2, 4), Type::kQ6_K);
  EXPECT_EQ(type("Q4_K_M", "blk.2.ffn_gate_exps.weight", 2, 8), Type::kQ4_K);
  EXPECT_EQ(TensorType(*FindRecipe("Q4_K_M"), true, "blk.3.ffn_gate_inp.weight", 768, 3, 30, 1,
                       true, false, 8),
            Type::kF32);
}

TEST(GgufExport, StoriesAsF32KeepsWeightsPermutesQueryAndKeyRows) {
  testing::ScratchDir dir;
  const Checkpoint ck = Checkpoint::Open(Stories());
  const ExportReport r = ExportGguf(ck, dir / "m.gguf", {.type = "F32"});
  EXPECT_EQ(r.architecture, "llama");
  EXPECT_EQ(r.tokenizer_model, "llama");
  const File f(dir / "m.gguf");
  const Header& h = f.header();
  EXPECT_EQ(*h.Find("general.architecture")->AsString(), "llama");
  EXPECT_EQ(h.Find("llama.block_count")->AsInt(), 5);
  EXPECT_EQ(h.Find("llama.embedding_length")->AsInt(), 64);
  EXPECT_EQ(h.Find("llama.feed_forward_length")->AsInt(), 172);
  EXPECT_EQ(h.Find("llama.attention.head_count")->AsInt(), 8);
  EXPECT_EQ(h.Find("llama.attention.head_count_kv")->AsInt(), 4);
  EXPECT_EQ(h.Find("llama.rope.dimension_count")->AsInt(), 8);
  EXPECT_EQ(h.Find("llama.rope.freq_base")->AsFloat(), 10000.0);
  EXPECT_EQ(h.Find("llama.vocab_size")->AsInt(), 512);
  EXPECT_EQ(h.Find("general.file_type")->AsInt(), 0);
  EXPECT_EQ(h.Find("general.quantization_version")->AsInt(), 2);
  // 2 + 9 per layer; tied embeddings: no output.weight.
  EXPECT_EQ(h.tensors.size(), 2u + 9 * 5);
  EXPECT_EQ(h.FindTensor("output.weight"), nullptr);
  const TensorInfo* embd = h.FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->ne, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(Decoded(f, "token_embd.weight"), SourceF32(ck, "model.embed_tokens.weight"));
  EXPECT_EQ(Decoded(f, "blk.3.ffn_down.weight"),
            SourceF32(ck, "model.layers.3.mlp.down_proj.weight"));
  EXPECT_EQ(Decoded(f, "blk.0.attn_v.weight"),
            SourceF32(ck, "model.layers.0.self_attn.v_proj.weight"));
  // Query (8 heads) and key (4 heads) rows: GGUF row h*8 + 2i + j = source row h*8 + 4j + i.
  for (const auto& [name, hf, heads] :
       {std::tuple{"blk.2.attn_q.weight", "model.layers.2.self_attn.q_proj.weight", 8},
        std::tuple{"blk.2.attn_k.weight", "model.layers.2.self_attn.k_proj.weight", 4}}) {
    const std::vector<float> got = Decoded(f, name);
    const std::vector<float> src = SourceF32(ck, hf);
    for (int h2 = 0; h2 < heads; ++h2) {
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 2; ++j) {
          for (int c = 0; c < 64; ++c) {
            ASSERT_EQ(got[(h2 * 8 + 2 * i + j) * 64 + c], src[(h2 * 8 + 4 * j + i) * 64 + c])
                << name;
          }
        }
      }
    }
  }
  // SentencePiece tokenizer: 512 pieces, scores and types, BOS/EOS ids.
  const Value* tokens = h.Find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->items.size(), 512u);
  EXPECT_EQ(std::get<std::string>(tokens->items[1]), "<s>");
  EXPECT_EQ(h.Find("tokenizer.ggml.scores")->items.size(), 512u);
  const Value* types = h.Find("tokenizer.ggml.token_type");
  EXPECT_EQ(std::get<int32_t>(types->items[0]), 2);  // <unk>
  EXPECT_EQ(std::get<int32_t>(types->items[1]), 3);  // <s>: control
  EXPECT_EQ(std::get<int32_t>(types->items[3]), 6);  // <0x00>: byte
  EXPECT_EQ(h.Find("tokenizer.ggml.bos_token_id")->AsInt(), 1);
  EXPECT_EQ(h.Find("tokenizer.ggml.eos_token_id")->AsInt(), 2);
  // Its normalizer spec sets neither flag: both default to true.
  EXPECT_EQ(h.Find("tokenizer.ggml.add_space_prefix")->scalar, Scalar(true));
  EXPECT_EQ(h.Find("tokenizer.ggml.remove_extra_whitespaces")->scalar, Scalar(true));
}

TEST(GgufExport, QuantisedTypesAndFallbacksWithinErrorBands) {
  const Checkpoint ck = Checkpoint::Open(Stories());
  for (const auto& [type, attn_type, band] :
       {std::tuple{"Q8_0", ggml::Type::kQ8_0, 0.01}, std::tuple{"Q4_K", ggml::Type::kQ5_0, 0.08},
        std::tuple{"Q2_K", ggml::Type::kQ4_0, 0.15}}) {
    testing::ScratchDir dir;
    const ExportReport r =
        ExportGguf(ck, dir / "m.gguf", {.type = type, .pure = true, .threads = 2});
    const File f(dir / "m.gguf");
    for (const ExportedTensor& t : r.tensors) {
      const TensorInfo* info = f.header().FindTensor(t.name);
      ASSERT_NE(info, nullptr);
      EXPECT_EQ(info->type, t.type);
      if (t.ne.size() == 1) {
        EXPECT_EQ(t.type, ggml::Type::kF32) << t.name;
      } else if (t.ne[0] == 172) {
        EXPECT_EQ(t.type, ggml::Type::kF16) << t.name;  // no block type divides 172
      } else {
        EXPECT_EQ(t.type, attn_type) << t.name;  // rows of 64: fallback below 256-blocks
      }
      EXPECT_LT(t.rel_rms_error, t.type == ggml::Type::kF32 ? 1e-30 : band) << t.name;
      // The report's error is the file's: recompute from the decoded tensor.
      if (t.name == "blk.1.attn_output.weight") {
        const std::vector<float> got = Decoded(f, t.name);
        const std::vector<float> src = SourceF32(ck, "model.layers.1.self_attn.o_proj.weight");
        double se = 0, sx = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          se += (got[i] - src[i]) * double(got[i] - src[i]);
          sx += src[i] * double(src[i]);
        }
        EXPECT_NEAR(std::sqrt(se / sx), t.rel_rms_error, 1e-9);
      }
    }
    EXPECT_EQ(r.output_bytes, fs::file_size(dir / "m.gguf"));
  }
}

TEST(GgufExport, BytePairTokenizerOfSmolLM2) {
  QTOOL_REQUIRE_SHARED();
  const fs::path dir = *testing::SharedDir() / "models/smollm2-135m";
  std::ifstream cf(dir / "config.json");
  const nlohmann::json config = nlohmann::json::parse(cf);
  std::ifstream tf(dir / "tokenizer.json");
  const nlohmann::json tj = nlohmann::json::parse(tf);
  const auto kv = TokenizerMetadata(dir, 49152, config);
  auto find = [&kv](const std::string& k) -> const Value* {
    for (const auto& [key, v] : kv) {
      if (key == k) return &v;
    }
    return nullptr;
  };
  ASSERT_NE(find("tokenizer.ggml.model"), nullptr);
  EXPECT_EQ(*find("tokenizer.ggml.model")->AsString(), "gpt2");
  EXPECT_EQ(*find("tokenizer.ggml.pre")->AsString(), "gpt-2");
  const Value* tokens = find("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens->items.size(), 49152u);
  for (const auto& [text, id] : tj["model"]["vocab"].items()) {
    ASSERT_EQ(std::get<std::string>(tokens->items[id.get<size_t>()]), text);
  }
  const Value* types = find("tokenizer.ggml.token_type");
  EXPECT_EQ(std::get<int32_t>(types->items[0]), 3);    // <|endoftext|>: special
  EXPECT_EQ(std::get<int32_t>(types->items[100]), 1);  // an ordinary token
  const Value* merges = find("tokenizer.ggml.merges");
  ASSERT_EQ(merges->items.size(), tj["model"]["merges"].size());
  const auto& m0 = tj["model"]["merges"][0];
  EXPECT_EQ(std::get<std::string>(merges->items[0]),
            m0.is_string() ? m0.get<std::string>()
                           : m0[0].get<std::string>() + " " + m0[1].get<std::string>());
  EXPECT_EQ(find("tokenizer.ggml.bos_token_id")->AsInt(), 1);  // <|im_start|>
  EXPECT_EQ(find("tokenizer.ggml.eos_token_id")->AsInt(), 2);  // <|im_end|>
  EXPECT_EQ(find("tokenizer.ggml.unknown_token_id")->AsInt(), 0);
  ASSERT_NE(find("tokenizer.chat_template"), nullptr);
  EXPECT_NE(find("tokenizer.chat_template")->AsString()->find("im_start"), std::string::npos);
}

// Export then import gives back the checkpoint: every tensor (query/key rows permuted back) and
// the config fields the runtime reads.
TEST(GgufImport, F32RoundTripRestoresTheCheckpoint) {
  testing::ScratchDir dir;
  const Checkpoint ck = Checkpoint::Open(Stories());
  ExportGguf(ck, dir / "m.gguf", {.type = "F32"});
  ImportGguf(SplitFile(dir / "m.gguf"), dir / "hf", false);
  const Checkpoint back = Checkpoint::Open(dir / "hf");
  ASSERT_EQ(back.tensors().size(), ck.tensors().size());
  for (const CheckpointTensor& t : ck.tensors()) {
    EXPECT_EQ(SourceF32(back, t.info->name), SourceF32(ck, t.info->name)) << t.info->name;
  }
  const LlamaConfig a = LlamaConfig::FromJson(*ck.config());
  const LlamaConfig b = LlamaConfig::FromJson(*back.config());
  EXPECT_EQ(b.hidden_size, a.hidden_size);
  EXPECT_EQ(b.intermediate_size, a.intermediate_size);
  EXPECT_EQ(b.num_layers, a.num_layers);
  EXPECT_EQ(b.num_heads, a.num_heads);
  EXPECT_EQ(b.num_kv_heads, a.num_kv_heads);
  EXPECT_EQ(b.head_dim, a.head_dim);
  EXPECT_EQ(b.vocab_size, a.vocab_size);
  EXPECT_EQ(b.tie_word_embeddings, a.tie_word_embeddings);
  EXPECT_FLOAT_EQ(static_cast<float>(b.rms_norm_eps), static_cast<float>(a.rms_norm_eps));
  EXPECT_EQ(b.rope_theta, a.rope_theta);
  EXPECT_THROW(ImportGguf(SplitFile(dir / "m.gguf"), dir / "hf", false), OutputExistsError);
}

TEST(GgufExport, RefusesAnExistingOutputAndLeavesNoFileOnError) {
  testing::ScratchDir dir;
  const Checkpoint ck = Checkpoint::Open(Stories());
  testing::WriteFile(dir / "m.gguf", "x");
  EXPECT_THROW(ExportGguf(ck, dir / "m.gguf", {}), OutputExistsError);
  EXPECT_EQ(testing::ReadFile(dir / "m.gguf"), "x");
  ExportGguf(ck, dir / "m.gguf", {.overwrite = true});
  EXPECT_GT(fs::file_size(dir / "m.gguf"), 100000u);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), {}), 1);
}

#ifdef QTOOL_CLI_PATH
TEST(GgufCli, QuantizeToGgufAndDequantize) {
  testing::ScratchDir dir;
  const std::string out = (dir / "m.gguf").string();
  auto r = testing::RunCli({"quantize", Stories().string(), "-o", out, "--output-format", "gguf",
                            "--gguf-type", "q6_k", "--json", (dir / "r.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("blk.4.ffn_down.weight"), std::string::npos) << r.out;
  const nlohmann::json j = nlohmann::json::parse(testing::ReadFile(dir / "r.json"));
  EXPECT_EQ(j["gguf_type"], "Q6_K");
  EXPECT_EQ(j["tensors"].size(), 47u);
  r = testing::RunCli({"dequantize", out, "-o", (dir / "deq").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Checkpoint deq = Checkpoint::Open(dir / "deq");
  EXPECT_EQ(deq.Get("model.layers.0.self_attn.q_proj.weight").info->shape,
            (std::vector<int64_t>{64, 64}));
  const File f(out);
  EXPECT_EQ(SourceF32(deq, "model.layers.0.mlp.up_proj.weight"), Decoded(f, "blk.0.ffn_up.weight"));
  r = testing::RunCli({"inspect", out, "--json", (dir / "i.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("tokenizer.ggml.tokens"), std::string::npos) << r.out;
  const nlohmann::json ij = nlohmann::json::parse(testing::ReadFile(dir / "i.json"));
  EXPECT_EQ(ij["tensors"].size(), 47u);
  EXPECT_EQ(ij["metadata"]["general.architecture"]["value"], "llama");
  EXPECT_EQ(ij["metadata"]["tokenizer.ggml.tokens"]["length"], 512);
  EXPECT_EQ(ij["params"], 260032);  // stories260K's parameters, tied embeddings once
  // Errors: exit codes 3 (option), 8 (output exists).
  EXPECT_EQ(testing::RunCli({"quantize", Stories().string(), "-o", out, "--output-format", "gguf",
                             "--gguf-type", "Q4_K_X"})
                .exit_code,
            3);
  EXPECT_EQ(testing::RunCli({"quantize", Stories().string(), "-o", out, "--output-format", "gguf",
                             "--bits", "3"})
                .exit_code,
            3);
  EXPECT_EQ(testing::RunCli(
                {"quantize", Stories().string(), "-o", (dir / "x").string(), "--gguf-type", "Q4_K"})
                .exit_code,
            3);
  EXPECT_EQ(testing::RunCli({"quantize", Stories().string(), "-o", out, "--output-format", "gguf",
                             "--gguf-type", "Q8_0"})
                .exit_code,
            8);
}
#endif

}  // namespace
}  // namespace qtool::gguf
