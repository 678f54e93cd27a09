// The names of a Hugging Face checkpoint's tensors in a GGUF file (llama.cpp's llama-arch.cpp),
// and the row order of the Llama query/key projections there; shared by the export
// (io/gguf_export.cpp) and the import (io/gguf_import.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace qtool::gguf::names {

using Pair = std::pair<std::string_view, std::string_view>;  // {Hugging Face, GGUF}

inline constexpr Pair kTop[] = {{"model.embed_tokens.weight", "token_embd.weight"},
                                {"model.norm.weight", "output_norm.weight"},
                                {"lm_head.weight", "output.weight"}};

// After "model.layers.N." and "blk.N.".
inline constexpr Pair kBlock[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.qkv_proj.weight", "attn_qkv.weight"},  // Phi-3: q, k, v rows in one
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.gate_up_proj.weight", "ffn_up.weight"},  // Phi-3: gate rows, then up rows
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"},  // Mixtral's router
    {"mlp.gate.weight", "ffn_gate_inp.weight"},               // Qwen-MoE's router
    {"mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"},
    {"mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"},  // 1-D in GGUF
};

// Gemma 2/3's four norms per block, in place of kBlock's post_attention_layernorm.
inline constexpr Pair kSandwich[] = {
    {"post_attention_layernorm.weight", "post_attention_norm.weight"},
    {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
    {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"}};

// An expert's linear layer ("block_sparse_moe.experts.E.w1.weight" in Mixtral,
// "mlp.experts.E.gate_proj.weight" in Qwen-MoE) is slice E of a 3-D GGUF tensor.
struct ExpertPart {
  std::string_view mixtral, qwen, gguf;
};
inline constexpr ExpertPart kExpertParts[] = {{"w1", "gate_proj", "ffn_gate_exps.weight"},
                                              {"w3", "up_proj", "ffn_up_exps.weight"},
                                              {"w2", "down_proj", "ffn_down_exps.weight"}};

// Hugging Face stores each head's query/key rows as [first halves of the rotary pairs | second
// halves] (rotate_half); ggml's RoPE rotates adjacent rows (2i, 2i + 1). Row 2i + j of a head in
// GGUF is row j * head_dim / 2 + i in the checkpoint (llama.cpp's converter does the same).
// Permutes the `rows` rows of `cols` elements at `w`, `heads` heads of them, into GGUF's order
// (`to_gguf`) or back.
template <class T>
void PermuteRopeRows(T* w, int64_t rows, int64_t cols, int64_t heads, bool to_gguf) {
  const int64_t hd = rows / heads;
  const std::vector<T> in(w, w + rows * cols);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t hf = h * hd + j * (hd / 2) + i, gguf = h * hd + 2 * i + j;
        const T* src = in.data() + (to_gguf ? hf : gguf) * cols;
        std::copy(src, src + cols, w + (to_gguf ? gguf : hf) * cols);
      }
    }
  }
}

}  // namespace qtool::gguf::names
