"""Loads a split GGUF model written by qtool in llama.cpp itself (through llama-cpp-python).

qtool writes MODEL to WORK/whole.gguf and, with --gguf-split-max-size, to WORK/split-0000i-of-N.gguf.
Then:
 - llama.cpp loads the split from its first file and gives the same logits (bit for bit) on the
   text's first window as the whole file: every tensor of the split was found and read;
 - llama.cpp's tokenisation of the text (with the vocabulary of the split's first file) equals
   qtool's tokenisation with the tokenizer it rebuilds from that file's metadata (`qtool tokenize`
   of the `qtool dequantize` output, which reads the split);
 - `qtool eval` of the split (its own tokenisation) and llama.cpp give close perplexities.

Usage: check_gguf_split_llama_cpp.py QTOOL MODEL_DIR TEXT WORK_DIR [--type=Q4_K_M]
       [--max-size=40M] [--ctx=128]
(llama_cpp must be importable: the llama-cpp-python venv of check_gguf_llama_cpp.py.)
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
from llama_cpp import Llama

import llama_cpp_support  # noqa: F401,E402  (plain CPU buffers)


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    qtool, model, text_path, work = args
    gtype = opts.get("type", "Q4_K_M")
    max_size = opts.get("max-size", "40M")
    ctx = int(opts.get("ctx", "128"))
    os.makedirs(work, exist_ok=True)
    for f in glob.glob(os.path.join(work, "*.gguf")):
        os.remove(f)
    whole = os.path.join(work, "whole.gguf")
    run([qtool, "quantize", model, "-o", whole, "--output-format", "gguf", "--gguf-type", gtype,
         "-q", "--force"])
    run([qtool, "quantize", model, "-o", os.path.join(work, "split.gguf"), "--output-format",
         "gguf", "--gguf-type", gtype, "--gguf-split-max-size", max_size, "-q", "--force"])
    splits = sorted(glob.glob(os.path.join(work, "split-*-of-*.gguf")))
    assert len(splits) > 1, f"{max_size} gave {len(splits)} file(s); choose a smaller size"
    print(f"{gtype}: {len(splits)} files, {[os.path.getsize(s) for s in splits]} bytes; whole "
          f"{os.path.getsize(whole)} bytes")

    text = open(text_path, encoding="utf-8").read()
    llm_split = Llama(model_path=splits[0], n_ctx=ctx, logits_all=True, n_threads=2,
                      verbose=False)
    ids = llm_split.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    llm_whole = Llama(model_path=whole, n_ctx=ctx, logits_all=True, n_threads=2, verbose=False)
    assert llm_whole.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ids
    bos = llm_split.token_bos()
    window = [bos] + ids[:ctx - 1]
    logits = []
    for llm in (llm_split, llm_whole):
        llm.reset()
        llm.eval(window)
        logits.append(np.array(llm.scores[:len(window)], dtype=np.float32))
    diff = float(np.max(np.abs(logits[0] - logits[1])))
    print(f"split vs whole in llama.cpp: max |logit difference| {diff} over {len(window)} positions")
    assert diff == 0.0, "the split's logits differ from the whole file's"

    # qtool's tokenisation with the tokenizer rebuilt from the split's metadata.
    deq = os.path.join(work, "deq")
    run([qtool, "dequantize", splits[1], "-o", deq, "--force"])
    out = run([qtool, "tokenize", deq, "--text", text_path, "--json", "-"])
    qids = json.loads(out[out.index("{"):])["ids"]
    same = qids == ids
    print(f"tokens: llama.cpp {len(ids)}, qtool (rebuilt tokenizer) {len(qids)}, equal: {same}")
    assert same, "qtool's rebuilt tokenizer and llama.cpp tokenise the text differently"

    # Perplexity, qtool's convention: windows of ctx - 1 tokens after BOS.
    nll, n = 0.0, 0
    for start in range(0, len(ids), ctx - 1):
        w = ids[start:start + ctx - 1]
        llm_split.reset()
        llm_split.eval([bos] + w)
        lg = np.array(llm_split.scores[:len(w) + 1], dtype=np.float64)
        for i, t in enumerate(w):
            row = lg[i]
            m = row.max()
            nll += m + np.log(np.exp(row - m).sum()) - row[t]
            n += 1
    ppl_llama = float(np.exp(nll / n))
    out = run([qtool, "eval", splits[0], "--text", text_path, "--ctx", str(ctx), "--json", "-",
               "--threads", "2"])
    q = json.loads(out[out.index("{"):])
    print(f"ppl: llama.cpp {ppl_llama:.5f} ({n} tokens), qtool eval of the split {q['ppl']:.5f} "
          f"({q['tokens']} tokens), difference {100 * (q['ppl'] / ppl_llama - 1):+.2f}%")
    assert q["tokens"] == n
    print("OK")


if __name__ == "__main__":
    main()
