"""llama.cpp runs qtool's GGUF files of every architecture qtool writes as GGUF.

For each architecture a small model is built by transformers from a fixed seed (no download),
saved as float32 safetensors with stories260K's SentencePiece tokenizer.model (512 pieces, the
models' vocab_size), in settings llama.cpp implements (Gemma's query_pre_attn_scalar = head_dim,
Phi-3 without its sliding window, which llama.cpp disables). Then:

1. `qtool quantize --output-format gguf` to F32 and Q8_0; llama.cpp (llama-cpp-python, F32 KV
   cache, no flash attention, weights in its plain CPU buffers) computes the logits of a fixed
   sequence of 40 tokens (BOS first), compared with transformers' float32 logits as
   max |llama.cpp - transformers| / max |transformers|: F32 within 1e-4 (1e-3 for Gemma, whose
   GELU llama.cpp takes from a float16 table); qtool's Q8_0 file must give llama.cpp the logits
   of llama.cpp's own Q8_0 file made from the F32 file (to 1e-6).
2. llama.cpp's quantiser (llama_model_quantize, what llama-quantize runs) requantises qtool's F32
   file to Q8_0, Q4_K_M, Q3_K_M, Q2_K, Q5_K_M and IQ4_XS; every tensor must have the type and the
   bytes of qtool's file of that type (the per-tensor recipe with its n_expert == 8 rules, the
   fallbacks, the 3-D expert tensors); and the same for Q4_K_M, Q2_K and IQ4_XS with a random
   importance matrix (per expert for the 3-D tensors) given to both quantisers.
3. `qtool dequantize` of the F32 file gives back the source tensors (names, shapes, values to
   1e-6 relative: Gemma's norms are stored as 1 + w) and `qtool logits` of it equals `qtool
   logits` of the source model (to 1e-6 relative; 1e-5 with Llama 3 RoPE scaling, whose
   parameters the import fits to the file's float32 divisors): the import inverts every
   transform of the export (query/key row permutation, Gemma's norm offset, expert stacking,
   RoPE scaling); `qtool eval` of the F32 file itself gives the source model's perplexity of the
   sequence.
4. gguf (llama.cpp's Python package) dequantises the 3-D expert tensors of qtool's Q4_K_M file
   bit for bit as `qtool dequantize` decodes them; the 2-D tensors of every type are checked so
   by tests/interop/check_gguf.py.
5. For the mixture-of-experts models, `qtool quantize --method gptq --output-format gguf` to
   Q4_K_M and Q3_K_M (calibrated on 16 x 64 random tokens; Q3_K_M with experts on the fallback
   below 520 tokens): the RTN file's tensor names, types
   and shapes, the routers in F32, every expert's slice solved (other bytes than RTN's) and
   decoded by gguf as by `qtool dequantize`; llama.cpp loads it and its logits match `qtool
   logits` of the same file to a mean KL of 2e-2 (llama.cpp's 8-bit activations; the RTN file's
   is reported beside it, and both files' KL from transformers' logits).

One JSON line per architecture and check; the exit status is non-zero, with the failures listed,
when any check fails.

Two interpreters: one with transformers and torch (tests/interop/requirements.txt) builds the
models and the reference logits, and runs this file again under an interpreter with
llama-cpp-python, gguf, numpy and safetensors (`--llama` mode, one process per architecture):

  py=$(bash scripts/pyenv.sh)
  llama_py=~/.cache/qtool/llama-cpp-venv-0.3.36/bin/python  # pip install llama-cpp-python==0.3.36
  "$py" tests/interop/check_gguf_architectures.py build/qtool WORK "$llama_py" [ARCH ...]

ARCH: any of the names architectures() lists (default: all of them; 1.5 to 3 minutes on 2 cores).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "examples" / "models" / "stories260K" / "tokenizer.model"
VOCAB = 512  # stories260K's SentencePiece pieces
SEQ_LEN = 40  # BOS + 39 tokens, longer than every sliding window below
F32_TOLERANCE = 1e-4
# ggml's CPU GELU (Gemma's feed-forward) looks its value up in a table indexed by the input
# rounded to float16 (GGML_GELU_FP16 in ggml-cpu/vec.h): llama.cpp's converter's own F32 files of
# these Gemma models give 2.9e-4 (Gemma 2) and 2.6e-4 (Gemma 3) against transformers.
GELU_F32_TOLERANCE = 1e-3
SAME = 1e-6
ROPE_FREQS_SAME = 1e-5
CHECKS_FAILED = 3  # the --llama phase's exit status when it ran to the end with failed checks
QUANTIZE_TYPES = ["Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K", "Q5_K_M", "IQ4_XS"]
IMATRIX_TYPES = ["Q4_K_M", "Q2_K", "IQ4_XS"]
# GPTQ-GGUF of the mixture-of-experts models: type -> --moe-min-tokens. With 1024 calibration
# tokens, top-2, an expert gets about 512 (4 experts) or 256 (Mixtral's 8): at 520 some or all
# of them take the fallback (all the block's tokens).
GPTQ_TYPES = {"Q4_K_M": 128, "Q3_K_M": 520}
# llama.cpp's logits of a quantised file against qtool's of the same file: llama.cpp quantises the
# activations to 8 bits in its quantised matrix products, which moves these random models' logits
# by a mean KL of 1e-3 to 1e-2 (the RTN files' alike), and flips some tokens' experts (a
# maximum difference of 0.1 to 0.4 of the largest logit); the RTN file of the same type against
# the GPTQ file's logits makes 0.07 to 0.1.
ACTIVATION_KL = 2e-2
LLAMA_FTYPES = {"Q8_0": 7, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "IQ4_XS": 30}

# Rows of 256 (feed-forward 256; attention width heads x head_dim = 256 where the architecture
# sets head_dim) take the k-quant and IQ4_XS blocks; rows of 128 take their fallbacks.
COMMON = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              tie_word_embeddings=False, initializer_range=0.1)


def architectures():
    """name -> (transformers model class name, config class name, config kwargs)."""
    return {
        # Sixteen layers: the recipes' layer rules (first sixteenth and eighth, use_more_bits)
        # pick different layers, and a checkpoint's names sort layer 10 before layer 2.
        "llama": ("LlamaForCausalLM", "LlamaConfig",
                  dict(COMMON, num_hidden_layers=16,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
        # Llama 3's RoPE scaling (llama.cpp's rope_freqs.weight), over an original context short
        # enough that the sequence's positions reach the scaled and the smoothed frequencies.
        "llama3": ("LlamaForCausalLM", "LlamaConfig",
                   dict(COMMON, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                         "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64})),
        # Grouped-query factor 4 (Q2_K and IQ4_XS raise attn_v for it), heads x head_dim (256)
        # other than hidden_size as in Mistral NeMo, linear RoPE scaling; no sliding window,
        # which llama.cpp's llama architecture does not have.
        "mistral": ("MistralForCausalLM", "MistralConfig",
                    dict(COMMON, num_attention_heads=8, sliding_window=None, head_dim=32,
                         tie_word_embeddings=True,
                         rope_parameters={"rope_type": "linear", "factor": 2.0,
                                          "rope_theta": 1000000.0})),
        "qwen2": ("Qwen2ForCausalLM", "Qwen2Config",
                  dict(COMMON, num_key_value_heads=1, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        "qwen3": ("Qwen3ForCausalLM", "Qwen3Config",
                  dict(COMMON, head_dim=64, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        # Layers alternate sliding (even) and full attention; window 16 < SEQ_LEN.
        "gemma2": ("Gemma2ForCausalLM", "Gemma2Config",
                   dict(COMMON, num_hidden_layers=4, head_dim=64, query_pre_attn_scalar=64,
                        sliding_window=16, attn_logit_softcapping=50.0,
                        final_logit_softcapping=30.0, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
        # Every third layer full attention (with linear RoPE scaling), the others a window of 12.
        "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig",
                   dict(COMMON, num_hidden_layers=4, head_dim=64, query_pre_attn_scalar=64,
                        sliding_window=12, sliding_window_pattern=3, tie_word_embeddings=True,
                        rope_parameters={
                            "full_attention": {"rope_type": "linear", "factor": 4.0,
                                               "rope_theta": 1000000.0},
                            "sliding_attention": {"rope_type": "default",
                                                  "rope_theta": 10000.0}})),
        "phi3": ("Phi3ForCausalLM", "Phi3Config",
                 dict(COMMON, sliding_window=None,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                       "partial_rotary_factor": 0.5})),
        # Eight experts: llama.cpp's quantiser has rules for n_expert == 8 (attn_output's rows
        # of heads x head_dim = 256 take their k-quants).
        "mixtral": ("MixtralForCausalLM", "MixtralConfig",
                    dict(COMMON, num_local_experts=8, num_experts_per_tok=2, head_dim=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        # Every layer sparse, with Qwen2-MoE's shared expert and its sigmoid gate. The dense,
        # expert and shared-expert widths differ, so that each key is read for its own tensors.
        "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                      dict(COMMON, intermediate_size=384, moe_intermediate_size=256, num_experts=4,
                           num_experts_per_tok=2, shared_expert_intermediate_size=512,
                           decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig",
                      dict(COMMON, intermediate_size=384, moe_intermediate_size=256,
                           num_experts=4, num_experts_per_tok=2, head_dim=64, decoder_sparse_step=1,
                           mlp_only_layers=[], norm_topk_prob=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    }


def sequence():
    rng = np.random.default_rng(11)
    return [1] + rng.integers(3, VOCAB, SEQ_LEN - 1).tolist()


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------------
# Phase 1 (transformers): the models and their reference logits.


def build(name, work):
    import torch
    import transformers
    model_cls, config_cls, kwargs = architectures()[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
    model = model.eval().float()
    gemma = "gemma" in name
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:  # every norm read and applied in its architecture's form
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (0.0 if gemma else 1.0))
            elif n.endswith("mlp.gate.weight") or n.endswith("block_sparse_moe.gate.weight"):
                p.normal_(0, 0.5, generator=gen)  # routing with real margins
    d = work / name / "model"
    model.save_pretrained(d, safe_serialization=True)
    shutil.copy(TOKENIZER, d / "tokenizer.model")
    with torch.no_grad():
        ref = model(torch.tensor([sequence()])).logits[0].float().numpy()
    np.save(work / name / "reference.npy", ref)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--llama" in sys.argv:
        sys.exit(llama_phase(*args))
    if len(args) < 3:
        sys.exit(__doc__)
    qtool, work, llama_py = os.path.abspath(args[0]), Path(args[1]).resolve(), args[2]
    if shutil.which(llama_py) is None:
        sys.exit(f"{llama_py}: no such interpreter (one with llama-cpp-python 0.3.36 and gguf)")
    names = args[3:] or list(architectures())
    unknown = [n for n in names if n not in architectures()]
    if unknown:
        sys.exit(f"unknown architectures {unknown}; known: {list(architectures())}")
    failures = []
    for name in names:
        (work / name).mkdir(parents=True, exist_ok=True)
        build(name, work)
        r = subprocess.run([llama_py, __file__, "--llama", qtool, str(work / name), name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in r.stdout.splitlines():
            print(line, flush=True)
            if line.startswith("{") and not json.loads(line).get("ok", True):
                failures.append(f"{name} {json.loads(line)['check']}")
        if r.returncode not in (0, CHECKS_FAILED):
            # The exception, and llama.cpp's own messages (its log is on: verbose=True).
            lines = r.stderr.strip().splitlines()
            tail = [x for x in lines[:-1] if "error" in x.lower()][-4:] + lines[-1:]
            print(json.dumps({"arch": name, "check": "run", "ok": False, "error": tail}))
            failures.append(f"{name}: stopped ({r.returncode})")
    if failures:
        sys.exit("FAILED:\n  " + "\n  ".join(failures))
    print(f"all checks passed for {', '.join(names)}")


# ---------------------------------------------------------------------------------------------
# Phase 2 (llama-cpp-python, gguf, numpy): llama.cpp, its quantiser, gguf, qtool.


def compare_files(ours, theirs):
    """The tensors of qtool's file that differ from llama.cpp's in presence, type or bytes."""
    from gguf import GGUFReader
    a = {t.name: t for t in GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in GGUFReader(str(theirs)).tensors}
    differ = []
    for n in sorted(set(a) | set(b)):
        ta, tb = a.get(n), b.get(n)
        if ta is None or tb is None:
            differ.append(f"{n}: only in {'llama.cpp' if ta is None else 'qtool'}'s file")
        elif ta.tensor_type != tb.tensor_type:
            differ.append(f"{n}: {ta.tensor_type.name} (llama.cpp {tb.tensor_type.name})")
        elif not np.array_equal(np.asarray(ta.data).view(np.uint8).reshape(-1),
                                np.asarray(tb.data).view(np.uint8).reshape(-1)):
            differ.append(f"{n}: {ta.tensor_type.name} bytes differ")
    return differ


def random_imatrix(f32, path):
    """Writes random importances for the weights of the GGUF file `f32` that llama.cpp quantises
    (not token_embd, which it quantises without), in llama-imatrix's GGUF layout: NAME.in_sum2
    [nmat, ncols] and NAME.counts [nmat, 1], nmat the number of experts of a 3-D tensor, one of
    them with count 0. Returns (name, in_sum2 / count per expert, 1 where the count is 0) as
    llama-quantize's load_imatrix computes them."""
    import gguf
    rng = np.random.default_rng(5)
    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", ["random"])
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_uint32("imatrix.chunk_size", 64)
    entries = []
    for t in gguf.GGUFReader(str(f32)).tensors:
        if len(t.shape) < 2 or t.name == "token_embd.weight" or "norm" in t.name:
            continue
        ncols, nmat = int(t.shape[0]), int(t.shape[2]) if len(t.shape) == 3 else 1
        counts = rng.integers(1, 200, nmat).astype(np.float32)
        if nmat > 1:
            counts[rng.integers(nmat)] = 0
        sums = (rng.gamma(0.5, 2.0, (nmat, ncols)) * counts[:, None]).astype(np.float32)
        writer.add_tensor(f"{t.name}.in_sum2", sums)
        writer.add_tensor(f"{t.name}.counts", counts.reshape(nmat, 1))
        values = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None],
                          np.float32(1)).astype(np.float32).reshape(-1)
        entries.append((t.name.encode(), np.ascontiguousarray(values)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return entries


def llama_phase(qtool, adir, name):
    import llama_cpp.llama_cpp as llama_capi
    from llama_cpp import Llama

    from llama_cpp_support import imatrix_data  # also: plain CPU buffers

    adir = Path(adir)
    model = adir / "model"
    ref = np.load(adir / "reference.npy")
    tokens = sequence()
    ok = True

    def run_qtool(*args):
        r = subprocess.run([qtool, *map(str, args)], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"qtool {' '.join(map(str, args))} failed ({r.returncode}): "
                     f"{r.stderr.strip()}")

    def report(check, passed, **fields):
        nonlocal ok
        ok &= bool(passed)
        print(json.dumps({"arch": name, "check": check, "ok": bool(passed), **fields}), flush=True)

    def gguf_of(ty):
        out = adir / f"{ty}.gguf"
        run_qtool("quantize", model, "-o", out, "--output-format", "gguf", "--gguf-type", ty,
                  "--force", "-q")
        return out

    def llama_logits(path):
        # F32 keys and values in the cache and no flash attention: the float32 arithmetic of
        # the reference, apart from the order of the sums.
        llm = Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=2,
                    type_k=0, type_v=0, flash_attn=False, verbose=True)
        llm.eval(tokens)
        out = np.array(llm.scores[:len(tokens)], dtype=np.float32)
        llm.close()
        return out

    # 1. Logits of the F32 and Q8_0 files.
    f32 = gguf_of("F32")
    d = rel(llama_logits(f32), ref)
    tolerance = GELU_F32_TOLERANCE if name.startswith("gemma") else F32_TOLERANCE
    report("F32 logits vs transformers", d <= tolerance, type="F32", max_rel_diff=d,
           tolerance=tolerance)
    ours = {ty: gguf_of(ty) for ty in QUANTIZE_TYPES}
    theirs = {}
    for ty in QUANTIZE_TYPES:
        theirs[ty] = adir / f"{ty}-llama-quantize.gguf"
        params = llama_capi.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPES[ty]
        params.nthread = 2
        rc = llama_capi.llama_model_quantize(str(f32).encode(), str(theirs[ty]).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {ty} failed ({rc})")
    q_ours, q_theirs = llama_logits(ours["Q8_0"]), llama_logits(theirs["Q8_0"])
    report("Q8_0 logits vs llama.cpp's Q8_0", rel(q_ours, q_theirs) <= SAME, type="Q8_0",
           max_rel_diff=rel(q_ours, ref), llama_quantize_max_rel_diff=rel(q_theirs, ref))

    # 2. llama.cpp's quantiser against qtool's files, tensor by tensor.
    from gguf import GGUFReader
    for ty in QUANTIZE_TYPES:
        differ = compare_files(ours[ty], theirs[ty])
        b = GGUFReader(str(theirs[ty])).tensors
        report(f"{ty} vs llama_model_quantize", not differ, type=ty, tensors=len(b),
               identical=len(b) - len(differ), types=sorted({t.tensor_type.name for t in b}),
               differ=differ[:8])

    # 2b. The same with an importance matrix: qtool reads the file, llama_model_quantize the
    # importances as llama_model_imatrix_data.
    import ctypes
    imat = adir / "imatrix-random.gguf"
    entries = random_imatrix(f32, imat)
    data = imatrix_data(entries)
    for ty in IMATRIX_TYPES:
        ours_i = adir / f"{ty}-imatrix.gguf"
        theirs_i = adir / f"{ty}-imatrix-llama-quantize.gguf"
        run_qtool("quantize", model, "-o", ours_i, "--output-format", "gguf", "--gguf-type", ty,
                  "--imatrix", imat, "--force", "-q")
        params = llama_capi.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPES[ty]
        params.nthread = 2
        params.imatrix = ctypes.cast(data, ctypes.POINTER(llama_capi.llama_model_imatrix_data))
        rc = llama_capi.llama_model_quantize(str(f32).encode(), str(theirs_i).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {ty} with the importances failed ({rc})")
        differ = compare_files(ours_i, theirs_i)
        report(f"{ty} with imatrix vs llama_model_quantize", not differ, type=ty,
               imatrix_entries=len(entries), differ=differ[:8])

    def mean_kl(p, q):
        """Mean over positions of KL(softmax p || softmax q)."""
        a, b = (x.astype(np.float64) - x.max(axis=1, keepdims=True) for x in (p, q))
        a -= np.log(np.exp(a).sum(axis=1, keepdims=True))
        b -= np.log(np.exp(b).sum(axis=1, keepdims=True))
        return float((np.exp(a) * (a - b)).sum(axis=1).mean())

    def check_gptq_gguf(ty, min_tokens, calib):
        """qtool's GPTQ file of type `ty` has the tensors of its RTN file (names, types, shapes;
        the routers in F32) with other blocks in every expert's slice, which gguf decodes as qtool
        does; llama.cpp loads it, and its logits match `qtool logits` of the same file."""
        gptq, solver = adir / f"GPTQ-{ty}.gguf", adir / f"GPTQ-{ty}.json"
        run_qtool("quantize", model, "-o", gptq, "--output-format", "gguf", "--gguf-type", ty,
                  "--method", "gptq", "--calib", calib, "--nsamples", "16", "--seqlen", "64",
                  "--moe-min-tokens", min_tokens, "--json", solver, "--force", "-q")
        routing = json.loads(solver.read_text())["solver"]["experts"]
        rtn = {t.name: t for t in GGUFReader(str(ours[ty])).tensors}
        differ, same = [], []
        for t in GGUFReader(str(gptq)).tensors:
            r = rtn.pop(t.name, None)
            if r is None or r.tensor_type != t.tensor_type or list(r.shape) != list(t.shape):
                differ.append(t.name)
            elif "ffn_gate_inp" in t.name and t.tensor_type.name != "F32":
                differ.append(f"{t.name}: {t.tensor_type.name}, not F32")
            elif "_exps." in t.name:
                n = int(t.shape[2])
                a = np.asarray(r.data).view(np.uint8).reshape(n, -1)
                b = np.asarray(t.data).view(np.uint8).reshape(n, -1)
                same += [f"{t.name}[{e}]" for e in range(n) if np.array_equal(a[e], b[e])]
        differ += [f"{n}: only in the RTN file" for n in rtn]
        _, decoded = expert_decode_differ(gptq)
        l_gptq, q_gptq = llama_logits(gptq), qtool_logits(gptq, f"GPTQ-{ty}")
        l_rtn, q_rtn = llama_logits(ours[ty]), qtool_logits(ours[ty], f"RTN-{ty}")
        kl_gptq = mean_kl(q_gptq, l_gptq)
        report(f"GPTQ {ty}: RTN's tensors, experts solved, llama.cpp logits == qtool's",
               not differ and not same and not decoded and kl_gptq <= ACTIVATION_KL, type=ty,
               differ=differ[:8], experts_as_rtn=same[:8], gguf_decode_differs=decoded[:8],
               experts=len(routing), fallbacks=sum(e["fallback"] for e in routing),
               llama_vs_qtool_kl=kl_gptq, llama_vs_qtool_kl_rtn=mean_kl(q_rtn, l_rtn),
               llama_vs_qtool_max_rel=rel(l_gptq, q_gptq),
               llama_vs_qtool_max_rel_rtn=rel(l_rtn, q_rtn),
               top1_agreement=float((l_gptq.argmax(1) == q_gptq.argmax(1)).mean()),
               kl_vs_transformers=mean_kl(ref, q_gptq), kl_vs_transformers_rtn=mean_kl(ref, q_rtn))

    # 3. The F32 file back to safetensors: the source tensors and the source model's logits.
    from safetensors.numpy import load_file
    deq = adir / "F32-hf"
    run_qtool("dequantize", f32, "-o", deq, "--force")
    src = {}
    for f in sorted(model.glob("*.safetensors")):
        src.update(load_file(f))
    back = {}
    for f in sorted(deq.glob("*.safetensors")):
        back.update(load_file(f))
    # Tied heads are not in the GGUF file; transformers may save them or not.
    if "lm_head.weight" in src and "lm_head.weight" not in back and "output.weight" not in {
            t.name for t in GGUFReader(str(f32)).tensors}:
        src.pop("lm_head.weight")
    missing = sorted(set(src) - set(back))
    extra = sorted(set(back) - set(src))
    worst, worst_name = 0.0, None
    for n in set(src) & set(back):
        x, y = src[n].astype(np.float32), back[n].astype(np.float32)
        e = rel(y, x) if x.shape == y.shape and np.abs(x).max() > 0 else (
            float("inf") if x.shape != y.shape else float(np.abs(y).max()))
        if e > worst:
            worst, worst_name = e, n
    report("dequantize F32 == source tensors", not missing and not extra and worst <= SAME,
           tensors=len(back), missing=missing[:5], extra=extra[:5], max_rel_diff=worst,
           worst=worst_name)
    tok_file = adir / "sequence.tokens"
    tok_file.write_text("\n".join(map(str, tokens)) + "\n")

    def qtool_logits(m, tag):
        out = adir / f"{tag}.npy"
        run_qtool("logits", m, "--tokens", tok_file, "-o", out)
        return np.load(out)

    l_src, l_back = qtool_logits(model, "qtool-source"), qtool_logits(deq, "qtool-dequantized")
    d = rel(l_back, l_src)
    # Llama 3 RoPE scaling comes back as parameters fitted to the file's float32 divisors, which
    # reproduce them to float32 rounding, not the source's double ones.
    rope_freqs = "rope_freqs.weight" in {t.name for t in GGUFReader(str(f32)).tensors}
    tolerance = ROPE_FREQS_SAME if rope_freqs else SAME
    report("qtool logits of dequantized F32 == source", d <= tolerance, max_rel_diff=d,
           tolerance=tolerance, exact=bool(np.array_equal(l_back, l_src)),
           qtool_vs_transformers=rel(l_src, ref))

    # `qtool eval` reads the GGUF file itself: the sequence's perplexity of the source's.
    def qtool_ppl(m):
        r = subprocess.run([qtool, "eval", str(m), "--tokens", str(tok_file), "--json", "-"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"qtool eval {m} failed ({r.returncode}): {r.stderr.strip()}")
        return json.loads(r.stdout[r.stdout.index("{"):])["ppl"]

    p_src, p_gguf = qtool_ppl(model), qtool_ppl(f32)
    report("qtool eval of the F32 file == source", abs(p_gguf / p_src - 1) <= SAME,
           ppl_source=p_src, ppl_gguf=p_gguf)

    # 4. The 3-D expert tensors of the Q4_K_M file: gguf's decode against qtool's.
    from gguf import quants

    def expert_decode_differ(path):
        """The 3-D expert tensors of the GGUF file `path`, and those gguf decodes otherwise than
        `qtool dequantize` does."""
        reader = GGUFReader(str(path))
        stacked = [t for t in reader.tensors if len(t.shape) == 3 or re.search(r"_exps\.", t.name)]
        if not stacked:
            return stacked, []
        deq = adir / f"{path.stem}-hf"
        run_qtool("dequantize", path, "-o", deq, "--force")
        hf = {}
        for f in sorted(deq.glob("*.safetensors")):
            hf.update(load_file(f))
        hf_part = {"gate": ("gate_proj", "w1"), "up": ("up_proj", "w3"),
                   "down": ("down_proj", "w2")}
        differ = []
        for t in stacked:
            m = re.fullmatch(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight", t.name)
            if m is None:
                differ.append(f"{t.name}: not an expert tensor name")
                continue
            got = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            pat = re.compile(rf"model\.layers\.{m[1]}\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\."
                             rf"(?:{'|'.join(hf_part[m[2]])})\.weight")
            per = sorted((int(pm[1]), k) for k in hf if (pm := pat.fullmatch(k)))
            want = np.stack([hf[k].astype(np.float32) for _, k in per]) if per else None
            if want is None or want.shape != got.shape or not np.array_equal(want, got):
                differ.append(f"{t.name} ({t.tensor_type.name})")
        return stacked, differ

    experts, differ = expert_decode_differ(ours["Q4_K_M"])
    if experts:
        report("gguf decode of Q4_K_M expert tensors == qtool's", not differ,
               tensors=len(experts), types=sorted({t.tensor_type.name for t in experts}),
               differ=differ[:8])

    # 5. GPTQ into GGUF of the mixture-of-experts models.
    if experts:
        calib = adir / "calib.tokens"
        stream = np.random.default_rng(12).integers(3, VOCAB, 4096)
        calib.write_text("\n".join(map(str, stream.tolist())) + "\n")
        for ty, min_tokens in GPTQ_TYPES.items():
            check_gptq_gguf(ty, min_tokens, calib)
    return 0 if ok else CHECKS_FAILED


if __name__ == "__main__":
    main()
