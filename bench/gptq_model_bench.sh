#!/usr/bin/env bash
# Model-level benchmark of `qtool quantize --method gptq`: wall time and peak RSS on a synthetic
# Llama-shaped checkpoint (TinyLlama-1.1B's shape by default: hidden 2048, intermediate 5632,
# 22 layers, 32 heads / 4 kv heads; random BF16 weights of magnitude 2^-8..2^-6) with 128 x 512
# calibration tokens. The tokenizer (and so the 512-token vocabulary) is stories260K's.
# Not part of the test suite: it takes minutes per layer on two cores.
#
#   bench/gptq_model_bench.sh [BUILD_DIR] [WORK_DIR]
#   LAYERS=2 NSAMPLES=128 SEQLEN=512 BITS=4 GROUP=128 bench/gptq_model_bench.sh build /tmp/gptq-bench
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
work=${2:-/tmp/qtool-gptq-bench}
layers=${LAYERS:-22}
hidden=${HIDDEN:-2048}
inter=${INTERMEDIATE:-5632}
heads=${HEADS:-32}
kv_heads=${KV_HEADS:-4}
nsamples=${NSAMPLES:-128}
seqlen=${SEQLEN:-512}
bits=${BITS:-4}
group=${GROUP:-128}
shared=${QTOOL_SHARED_DIR:-$here/../shared}
tok=$shared/models/stories260K/hf/tokenizer.model
calib=$shared/data/stories-calib.txt

mkdir -p "$work"
model=$work/model
if [[ ! -f $model/model.safetensors || ${REGENERATE:-0} == 1 ]]; then
  mkdir -p "$model"
  cp "$tok" "$model/tokenizer.model"
  python3 - "$model" "$layers" "$hidden" "$inter" "$heads" "$kv_heads" <<'PY'
import json, os, struct, sys
out, layers, hidden, inter, heads, kv = sys.argv[1], *map(int, sys.argv[2:])
vocab, head_dim = 512, hidden // heads
shapes = [("model.embed_tokens.weight", [vocab, hidden]), ("model.norm.weight", [hidden])]
for i in range(layers):
    p = f"model.layers.{i}."
    shapes += [(p + "input_layernorm.weight", [hidden]),
               (p + "post_attention_layernorm.weight", [hidden]),
               (p + "self_attn.q_proj.weight", [hidden, hidden]),
               (p + "self_attn.k_proj.weight", [kv * head_dim, hidden]),
               (p + "self_attn.v_proj.weight", [kv * head_dim, hidden]),
               (p + "self_attn.o_proj.weight", [hidden, hidden]),
               (p + "mlp.gate_proj.weight", [inter, hidden]),
               (p + "mlp.up_proj.weight", [inter, hidden]),
               (p + "mlp.down_proj.weight", [hidden, inter])]
header, off = {"__metadata__": {"format": "pt"}}, 0
for name, shape in shapes:
    n = 2
    for d in shape: n *= d
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
    off += n
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
# BF16 little-endian: the high byte holds the sign and the top 7 exponent bits. Random low bytes
# and a high byte of sign | 0x3C give |x| in [2^-8, 2^-6); norms are 1.0 (0x3F80).
high = bytes((b & 0x80) | 0x3C for b in range(256))
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for name, shape in shapes:
        n = 1
        for d in shape: n *= d
        if len(shape) == 1:
            f.write(b"\x80\x3f" * n)
            continue
        for start in range(0, n, 1 << 24):
            m = min(1 << 24, n - start)
            buf = bytearray(os.urandom(2 * m))
            buf[1::2] = bytes(buf[1::2]).translate(high)
            f.write(buf)
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
       "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
       "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 2048,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
       "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
PY
fi
params=$(python3 -c "
L,h,i,kv,H=$layers,$hidden,$inter,$kv_heads,$heads
print(L*(2*h*h+2*kv*(h//H)*h+3*h*i)+512*h)")
echo "synthetic model: $layers layers, $params parameters, $(du -sh "$model" | cut -f1) on disk"
/usr/bin/time -v "$build/qtool" quantize "$model" -o "$work/out" --force --bits "$bits" \
  --group "$group" --method gptq --calib "$calib" --nsamples "$nsamples" --seqlen "$seqlen" \
  --json "$work/report.json" 2> "$work/time.txt" | tail -4
grep -E "^gptq block" "$work/time.txt" | tail -8 || true
grep -E "Elapsed|Maximum resident" "$work/time.txt"
