"""Checks qtool's GGUF files with the `gguf` package (llama.cpp's own Python reader and
quantisers), independently of qtool's parser and decoders:

1. For every type qtool writes, the file opens with gguf.GGUFReader, its metadata describe the
   model (llama architecture keys, file type, tokenizer when the model has one), and every tensor,
   dequantised by gguf, equals bit for bit what `qtool dequantize` decodes from the same file
   (a Hugging Face checkpoint, whose names and query/key row order are mapped back here).
2. The query/key rows of the F32 file are the source weights permuted as llama.cpp's converter
   permutes them (rotate-half pairs to adjacent rows); tied embeddings have no output.weight.
3. Quantising the F32 file's weights with gguf's quantisers gives the bytes qtool wrote for
   Q4_0 and Q8_0 (gguf's are byte-identical to llama.cpp's), and for the other types gguf can
   quantise (Q4_1, Q5_0, Q5_1, TQ1_0, TQ2_0, MXFP4) the result is reported.

The models: a synthetic F32 Llama checkpoint made here (hidden 256, so that the 256-value
k-quant blocks fit, and feed-forward 544, a multiple of 32 but not of 256, so that llama.cpp's
fallback types appear), with stories260K's SentencePiece tokenizer, and stories260K itself.

4. A split (`--gguf-split-max-size`, llama-gguf-split's convention) of stories260K: every file
   opens with gguf's reader, carries split.no (u16, from 0), split.count (u16) and
   split.tensors.count (i32), the first one all the metadata, and together they hold the whole
   file's tensors in its order with the same types, shapes and bytes.

5. With a calibration text: GPTQ-GGUF files (`--method gptq`) of the synthetic model in
   several types and mixes decode with gguf identically to `qtool dequantize`, with the RTN
   file's tensor types.

Usage: check_gguf.py QTOOL_BINARY STORIES260K_DIR WORK_DIR [CALIBRATION_TEXT]
"""
import glob
import json
import os
import subprocess
import sys

import shutil

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, quants
from safetensors.numpy import load_file, save_file

# Every ggml type qtool writes (Q3_K, Q4_K, Q5_K and MXFP4 throughout; the llama-quantize names
# with llama.cpp's per-tensor recipes, which add Q6_K/Q8_0 heads and the fallback types).
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
         "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "Q3_K_M", "Q4_K_M",
         "Q5_K_M"]
MUST_MATCH = {"Q4_0", "Q8_0"}  # llama.cpp's reference quantisers, mirrored by gguf
GGUF_QUANTISES = ["Q4_0", "Q8_0", "Q4_1", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0", "MXFP4"]


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def load_f32(path):
    """A safetensors file's F32/BF16 tensors as float32 (numpy has no bfloat16)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            v = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F32":
            v = np.frombuffer(raw, np.float32)
        else:
            sys.exit(f"{path}: {name} is {info['dtype']}, not F32 or BF16")
        out[name] = v.reshape(info["shape"])
    return out


def tensor_values(t):
    """gguf's decoding of a tensor, as float32 of shape [rows, ne0]."""
    ne0 = int(t.shape[0])
    return quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1, ne0)


BLOCK_NAMES = {"attn_norm.weight": "input_layernorm.weight",
               "attn_q.weight": "self_attn.q_proj.weight",
               "attn_k.weight": "self_attn.k_proj.weight",
               "attn_v.weight": "self_attn.v_proj.weight",
               "attn_output.weight": "self_attn.o_proj.weight",
               "ffn_norm.weight": "post_attention_layernorm.weight",
               "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
               "ffn_down.weight": "mlp.down_proj.weight"}
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def hf_name(name):
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, layer, rest = name.split(".", 2)
    return f"model.layers.{layer}.{BLOCK_NAMES[rest]}"


def permute(w, heads):
    """llama.cpp's converter: rows (head, half, i) -> (head, i, half)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def in_gguf_order(ours, t, config, shape):
    """`qtool dequantize`'s tensor for GGUF tensor t: qtool writes a Hugging Face checkpoint
    (names mapped back, query/key rows back in rotate-half order), permuted here into GGUF's
    order again and shaped as the GGUF tensor."""
    mine = ours[hf_name(t.name)]
    if t.name.endswith("attn_q.weight"):
        mine = permute(mine, config["num_attention_heads"])
    elif t.name.endswith("attn_k.weight"):
        mine = permute(mine, config["num_key_value_heads"])
    return mine.reshape(shape)


def synthetic_model(path, tokenizer_dir):
    """A seeded F32 Llama checkpoint: Gaussian weights, a few large outliers per matrix."""
    os.makedirs(path, exist_ok=True)
    hidden, ffn, layers, heads, kv_heads, vocab = 256, 544, 2, 4, 2, 512
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "vocab_size": vocab, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1,
              "eos_token_id": 2, "torch_dtype": "float32"}
    rng = np.random.default_rng(23)

    def matrix(rows, cols):
        w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
        w.flat[rng.integers(0, w.size, 8)] *= 40.0
        return w

    t = {"model.embed_tokens.weight": matrix(vocab, hidden),
         "lm_head.weight": matrix(vocab, hidden),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)}
    hd = hidden // heads
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
        t[p + "self_attn.q_proj.weight"] = matrix(heads * hd, hidden)
        t[p + "self_attn.k_proj.weight"] = matrix(kv_heads * hd, hidden)
        t[p + "self_attn.v_proj.weight"] = matrix(kv_heads * hd, hidden)
        t[p + "self_attn.o_proj.weight"] = matrix(hidden, heads * hd)
        t[p + "mlp.gate_proj.weight"] = matrix(ffn, hidden)
        t[p + "mlp.up_proj.weight"] = matrix(ffn, hidden)
        t[p + "mlp.down_proj.weight"] = matrix(hidden, ffn)
    save_file(t, os.path.join(path, "model.safetensors"))
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    shutil.copy(os.path.join(tokenizer_dir, "tokenizer.model"), path)


def main():
    qtool, stories, work = sys.argv[1:4]
    synth = os.path.join(work, "gguf-synthetic-model")
    synthetic_model(synth, stories)
    for name, model in [("synthetic", synth), ("stories260K", stories)]:
        out = os.path.join(work, f"gguf-{name}")
        os.makedirs(out, exist_ok=True)
        print(f"== {name}")
        check_model(qtool, model, out)
    print("== stories260K, split")
    check_split(qtool, stories, os.path.join(work, "gguf-split"))
    if len(sys.argv) > 4:
        print("== synthetic, GPTQ")
        check_gptq(qtool, synth, sys.argv[4], os.path.join(work, "gguf-synthetic"))
    print("GGUF files: all checks passed")


def check_split(qtool, model, work):
    os.makedirs(work, exist_ok=True)
    for f in glob.glob(os.path.join(work, "*.gguf")):
        os.remove(f)
    whole = os.path.join(work, "whole.gguf")
    for out, extra in [(whole, []), (os.path.join(work, "m.gguf"),
                                      ["--gguf-split-max-size", "1M"])]:
        subprocess.run([qtool, "quantize", model, "-o", out, "--output-format", "gguf",
                        "--gguf-type", "F32", "-q"] + extra, check=True)
    files = sorted(glob.glob(os.path.join(work, "m-*-of-*.gguf")))
    n = len(files)
    if n < 2 or [os.path.basename(f) for f in files] != \
            [f"m-{i + 1:05d}-of-{n:05d}.gguf" for i in range(n)]:
        sys.exit(f"split: unexpected files {files}")
    ref = GGUFReader(whole)
    tensors = []
    for i, f in enumerate(files):
        r = GGUFReader(f)
        for key, vtype, want in [("split.no", GGUFValueType.UINT16, i),
                                 ("split.count", GGUFValueType.UINT16, n),
                                 ("split.tensors.count", GGUFValueType.INT32, len(ref.tensors))]:
            fl = r.fields.get(key)
            if fl is None or fl.types != [vtype] or fl.contents() != want:
                sys.exit(f"{f}: {key} is {fl and fl.contents()} ({fl and fl.types}), "
                         f"expected {want} ({vtype})")
        if (field(r, "general.architecture") is not None) != (i == 0):
            sys.exit(f"{f}: the model's metadata belong in the first file only")
        tensors += r.tensors
    if len(tensors) != len(ref.tensors):
        sys.exit(f"split: {len(tensors)} tensors, the whole file has {len(ref.tensors)}")
    for a, b in zip(ref.tensors, tensors):
        if (a.name, a.tensor_type, list(a.shape)) != (b.name, b.tensor_type, list(b.shape)) or \
                a.data.tobytes() != b.data.tobytes():
            sys.exit(f"split: tensor {b.name} differs from the whole file's {a.name}")
    print(f"split: {n} files, {len(tensors)} tensors, identical to the whole file's")
    first_meta = {k for k in GGUFReader(files[0]).fields if not k.startswith("split.")}
    if first_meta != set(ref.fields):
        sys.exit(f"split: the first file's metadata differ: {first_meta ^ set(ref.fields)}")


GPTQ_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
              "IQ4_NL", "IQ4_XS", "Q3_K_M", "Q4_K_M"]


def check_gptq(qtool, model, calib, work):
    """GPTQ-GGUF files (next to check_model's RTN files in `work`): gguf decodes every tensor as
    qtool does, the tensor types are the RTN file's, and the Linear layers' blocks differ."""
    config = json.load(open(os.path.join(model, "config.json")))
    for ty in GPTQ_TYPES:
        out = os.path.join(work, f"GPTQ-{ty}.gguf")
        subprocess.run([qtool, "quantize", model, "-o", out, "--output-format", "gguf",
                        "--gguf-type", ty, "--method", "gptq", "--calib", calib,
                        "--nsamples", "8", "--seqlen", "64", "--force", "-q"], check=True)
        deq = os.path.join(work, f"GPTQ-{ty}-deq")
        subprocess.run([qtool, "dequantize", out, "-o", deq, "--force"], check=True)
        ours = load_file(os.path.join(deq, "model.safetensors"))
        rtn = {t.name: t for t in GGUFReader(os.path.join(work, f"{ty}.gguf")).tensors} \
            if os.path.exists(os.path.join(work, f"{ty}.gguf")) else None
        differ = 0
        for t in GGUFReader(out).tensors:
            theirs = tensor_values(t)
            mine = in_gguf_order(ours, t, config, theirs.shape)
            if not np.array_equal(theirs.view(np.uint32), mine.view(np.uint32)):
                sys.exit(f"GPTQ {ty}: tensor {t.name} ({t.tensor_type.name}): gguf and qtool "
                         "decode it differently")
            if rtn is not None:
                if rtn[t.name].tensor_type != t.tensor_type:
                    sys.exit(f"GPTQ {ty}: tensor {t.name} is {t.tensor_type.name}, RTN's "
                             f"{rtn[t.name].tensor_type.name}")
                differ += not np.array_equal(rtn[t.name].data, t.data)
        print(f"GPTQ {ty}: decodes identically, RTN's types, {differ} tensors differ from RTN's")


def check_model(qtool, model, work):
    config = json.load(open(os.path.join(model, "config.json")))
    source = load_f32(os.path.join(model, "model.safetensors"))
    files = {}
    for ty in TYPES:
        out = os.path.join(work, f"{ty}.gguf")
        subprocess.run([qtool, "quantize", model, "-o", out, "--output-format", "gguf",
                        "--gguf-type", ty, "--force", "-q"], check=True)
        deq = os.path.join(work, f"{ty}-deq")
        subprocess.run([qtool, "dequantize", out, "-o", deq, "--force"], check=True)
        ours = load_file(os.path.join(deq, "model.safetensors"))
        r = GGUFReader(out)
        files[ty] = r
        if field(r, "general.architecture") != "llama":
            sys.exit(f"{ty}: general.architecture is {field(r, 'general.architecture')}")
        for key, want in [("llama.block_count", config["num_hidden_layers"]),
                          ("llama.embedding_length", config["hidden_size"]),
                          ("llama.feed_forward_length", config["intermediate_size"]),
                          ("llama.attention.head_count", config["num_attention_heads"]),
                          ("llama.attention.head_count_kv", config["num_key_value_heads"]),
                          ("general.quantization_version", 2)]:
            if field(r, key) != want:
                sys.exit(f"{ty}: {key} is {field(r, key)}, expected {want}")
        types = set()
        for t in r.tensors:
            theirs = tensor_values(t)
            mine = in_gguf_order(ours, t, config, theirs.shape)
            if not np.array_equal(theirs.view(np.uint32), mine.view(np.uint32)):
                bad = np.argwhere(theirs.view(np.uint32) != mine.view(np.uint32))[0]
                sys.exit(f"{ty}: tensor {t.name} ({t.tensor_type.name}): gguf decodes "
                         f"{theirs[tuple(bad)]} at {tuple(bad)}, qtool {mine[tuple(bad)]}")
            types.add(t.tensor_type.name)
        print(f"{ty}: {len(r.tensors)} tensors ({', '.join(sorted(types))}) decode identically")

    # Permutation and tied embeddings, on the F32 file.
    f32 = {t.name: tensor_values(t) for t in files["F32"].tensors}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for i in range(config["num_hidden_layers"]):
        for hf, name, h in [("q_proj", "attn_q", heads), ("k_proj", "attn_k", kv_heads)]:
            want = permute(source[f"model.layers.{i}.self_attn.{hf}.weight"], h)
            if not np.array_equal(f32[f"blk.{i}.{name}.weight"], want):
                sys.exit(f"blk.{i}.{name}.weight is not the permuted {hf}")
        if not np.array_equal(f32[f"blk.{i}.attn_v.weight"],
                              source[f"model.layers.{i}.self_attn.v_proj.weight"]):
            sys.exit(f"blk.{i}.attn_v.weight differs from v_proj")
    if config.get("tie_word_embeddings", False) and "output.weight" in f32:
        sys.exit("tied embeddings but output.weight was written")
    print("F32: query/key rows permuted as llama.cpp's converter does; tied embeddings kept once")

    # gguf's quantisers on the same F32 weights.
    for ty in GGUF_QUANTISES:
        qt = T[ty]
        ours = {t.name: t for t in files[ty].tensors}
        same = differ = 0
        for t in files["F32"].tensors:
            q = ours[t.name]
            if q.tensor_type != qt or t.name not in f32:
                continue  # 1-D tensors and fallbacks
            theirs = quants.quantize(f32[t.name], qt)
            if np.array_equal(theirs.reshape(-1), np.asarray(q.data).reshape(-1).view(np.uint8)):
                same += 1
            else:
                differ += 1
        if same + differ == 0:
            if ty in MUST_MATCH:
                sys.exit(f"{ty}: no tensor of that type to compare")
            print(f"{ty}: no tensor of that type here (rows fall back to other types)")
            continue
        print(f"{ty}: {same} of {same + differ} tensors byte-identical to gguf's quantiser")
        if ty in MUST_MATCH and differ:
            sys.exit(f"{ty}: {differ} tensors differ from llama.cpp's reference quantiser")
    tokens = field(files["F32"], "tokenizer.ggml.tokens")
    if field(files["F32"], "tokenizer.ggml.model") != "llama" or len(tokens) != config["vocab_size"]:
        sys.exit("the SentencePiece tokenizer is missing or has the wrong size")


if __name__ == "__main__":
    main()
