"""Runs qtool's GGUF files in llama.cpp itself (through llama-cpp-python) and compares with qtool.

For each type: `qtool quantize --output-format gguf`, then llama.cpp loads the file and
 - tokenises the text; `qtool eval` of the GGUF's weights (decoded to a Hugging Face checkpoint by
   `qtool dequantize`) runs once on llama.cpp's token ids and once on its own tokenisation of the
   text: the same token count and perplexity show the tokenisations agree;
 - computes the perplexity with qtool's convention (windows of ctx - 1 tokens, each after BOS),
   compared with qtool's perplexity of the same weights: the difference is what llama.cpp's own
   arithmetic (8-bit quantised activations in its quantised matrix products) adds;
 - for F32, when reference logits are given (BOS + the first tokens of the text, from transformers),
   the maximum difference of llama.cpp's logits from them.

Then llama.cpp's own quantiser (llama_model_quantize, as llama-quantize runs it) requantises
qtool's F32 file to each llama-quantize type, and every tensor must have the type and the bytes
that qtool wrote for that type: the per-tensor recipe, the fallbacks and the block quantisers.

Usage: check_gguf_llama_cpp.py QTOOL MODEL_DIR TEXT WORK_DIR [REF_LOGITS] [--types=T,T,...]
       [--quantize-types=T,T,...]
(llama_cpp must be importable: pip install llama-cpp-python, a source build of llama.cpp; and
gguf, numpy, safetensors.)
"""
import json
import os
import subprocess
import sys

import llama_cpp.llama_cpp as llama_capi
import numpy as np
from llama_cpp import Llama

import llama_cpp_support  # noqa: F401  (plain CPU buffers)



def qtool_eval(qtool, model, work, text=None, tokens=None, tokenizer=None):
    cmd = [qtool, "eval", model, "--json", "-", "--threads", "2"]
    cmd += ["--text", text] if text else ["--tokens", tokens]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def llama_ppl(llm, tokens, ctx, bos):
    nll, n = 0.0, 0
    for start in range(0, len(tokens), ctx - 1):
        window = tokens[start:start + ctx - 1]
        llm.reset()
        llm.eval([bos] + window)
        logits = np.array(llm.scores[:len(window)], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= logp[np.arange(len(window)), window].sum()
        n += len(window)
    return float(np.exp(nll / n)), n


LLAMA_FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11,
                "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
                "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "TQ1_0": 36, "TQ2_0": 37}


def compare_with_llama_quantize(qtool, model, work, names):
    """llama.cpp requantises qtool's F32 file; each tensor must match qtool's file byte for byte."""
    from gguf import GGUFReader
    f32 = os.path.join(work, "F32.gguf")
    subprocess.run([qtool, "quantize", model, "-o", f32, "--output-format", "gguf",
                    "--gguf-type", "F32", "--force", "-q"], check=True)
    failed = []
    for name in names:
        ours = os.path.join(work, f"{name}.gguf")
        theirs = os.path.join(work, f"{name}-llama-quantize.gguf")
        subprocess.run([qtool, "quantize", model, "-o", ours, "--output-format", "gguf",
                        "--gguf-type", name, "--force", "-q"], check=True)
        params = llama_capi.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPES[name]
        params.nthread = 2
        if llama_capi.llama_model_quantize(f32.encode(), theirs.encode(), params) != 0:
            sys.exit(f"{name}: llama_model_quantize failed")
        a = {t.name: t for t in GGUFReader(ours).tensors}
        b = {t.name: t for t in GGUFReader(theirs).tensors}
        differ = []
        for n, tb in b.items():
            ta = a.get(n)
            if ta is None or ta.tensor_type != tb.tensor_type or not np.array_equal(
                    np.asarray(ta.data).view(np.uint8).reshape(-1),
                    np.asarray(tb.data).view(np.uint8).reshape(-1)):
                differ.append(n)
        print(json.dumps({"llama_quantize": name, "tensors": len(b),
                          "identical": len(b) - len(differ), "differ": differ[:5]}))
        if differ or len(a) != len(b):
            failed.append(name)
    return failed


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    types = ["F32", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K"]
    quantize_types = list(LLAMA_FTYPES)
    for a in sys.argv[1:]:
        if a.startswith("--types="):
            types = a.split("=", 1)[1].split(",")
        if a.startswith("--quantize-types="):
            quantize_types = a.split("=", 1)[1].split(",")
    qtool, model, text, work = args[:4]
    ref = args[4] if len(args) > 4 else None
    os.makedirs(work, exist_ok=True)
    config = json.load(open(os.path.join(model, "config.json")))
    tokenizer = os.path.join(model, "tokenizer.model")
    ctx = min(config["max_position_embeddings"], 512)
    raw = open(text, encoding="utf-8").read()
    rows = []
    for ty in types:
        gguf = os.path.join(work, f"{ty}.gguf")
        subprocess.run([qtool, "quantize", model, "-o", gguf, "--output-format", "gguf",
                        "--gguf-type", ty, "--force", "-q"], check=True)
        deq = os.path.join(work, f"{ty}-hf")
        subprocess.run([qtool, "dequantize", gguf, "-o", deq, "--force"], check=True)
        llm = Llama(model_path=gguf, n_ctx=ctx, logits_all=True, n_threads=2, verbose=False)
        bos = llm.token_bos()
        toks = llm.tokenize(raw.encode("utf-8"), add_bos=False, special=False)
        tok_file = os.path.join(work, "llama-tokens.txt")
        open(tok_file, "w").write("\n".join(map(str, toks)) + "\n")
        ours_toks = qtool_eval(qtool, deq, work, tokens=tok_file)
        if os.path.exists(tokenizer):
            ours_text = qtool_eval(qtool, deq, work, text=text, tokenizer=tokenizer)
            same_tokens = (ours_text["tokens"] == ours_toks["tokens"] == len(toks) and
                           ours_text["ppl"] == ours_toks["ppl"])
        else:  # qtool's runtime reads SentencePiece tokenizers only: compare on llama.cpp's ids
            ours_text, same_tokens = ours_toks, None
        ppl, n = llama_ppl(llm, toks, ctx, bos)
        row = {"type": ty, "bytes": os.path.getsize(gguf), "tokens": n,
               "tokenisation_equal": same_tokens, "ppl_llama_cpp": ppl,
               "ppl_qtool": ours_text["ppl"],
               "rel_diff": ppl / ours_text["ppl"] - 1}
        if ty == "F32" and ref:
            from safetensors.numpy import load_file
            r = load_file(ref)
            ids = [int(t) for t in r["tokens"]]
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[:len(ids)], dtype=np.float32)
            row["max_logit_diff_vs_transformers"] = float(np.abs(got - r["logits"]).max())
            row["ref_tokens_equal"] = ids[1:] == toks[:len(ids) - 1]
            if not row["ref_tokens_equal"]:
                sys.exit(f"llama.cpp's tokens {toks[:8]}... differ from the reference {ids[1:9]}...")
        rows.append(row)
        print(json.dumps(row))
        del llm
    bad = [r["type"] for r in rows if r["tokenisation_equal"] is False]
    if bad:
        sys.exit(f"tokenisations differ for {bad}")
    failed = compare_with_llama_quantize(qtool, model, work, quantize_types)
    if failed:
        sys.exit(f"llama.cpp's quantiser writes other tensors for {failed}")


if __name__ == "__main__":
    main()
