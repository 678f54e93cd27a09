"""llama.cpp's tokenisation of qtool's GGUF tokenizer metadata, and qtool's tokenizer rebuilt from a
GGUF file, each against the reference tokenizer.

1. Export: `qtool quantize MODEL --output-format gguf --gguf-type Q8_0` (or --gguf FILE, a GGUF
   that qtool wrote for MODEL); llama.cpp loads its vocabulary (vocab_only) and tokenises TEXT and
   awkward texts (runs of spaces, a leading space, newlines and tabs, digits, accents, CJK,
   Cyrillic, emoji and a character that need byte fallback, control characters, a literal U+2581).
   Its ids (no BOS, special=False) must equal Hugging Face `tokenizers`' ids for
   MODEL/tokenizer.json (add_special_tokens=False). For a SentencePiece-style tokenizer.json
   (byte fallback) also texts built around every overlapping pair of merges that make one token
   (x|y|z with xy = yz, yz ranked first: Hugging Face picks yz by rank, llama.cpp xy by position;
   see src/io/gguf_tokenizer.cpp).
2. Rebuild: `qtool dequantize FILE -o DIR` rebuilds a tokenizer from the metadata; `qtool tokenize`
   with it must give llama.cpp's ids for FILE, for qtool's file and for --reference.
3. --reference FILE (llama.cpp's own GGUF of the model, e.g. gemma-3-270m-q4_k_m.gguf): its
   tokenizer.* keys are compared with qtool's (tokens, token types, special ids, flags, and the
   order of the merged tokens' scores); the differences are printed. The reference itself is
   tokenised by llama.cpp and compared with `tokenizers`, for information.

A GGUF whose user-defined tokens hold spaces (llama.cpp's converter writes Gemma's runs of U+2581
so) is matched by llama.cpp in the raw text; the rebuilt SentencePiece model matches them after
spaces become U+2581, so a text with a literal U+2581 beside spaces tokenises differently there:
those texts are reported, not failed, for such a file.

usage: check_gguf_tokenizer.py QTOOL MODEL_DIR TEXT WORK_DIR [--gguf FILE] [--reference FILE]
(run by hand, not in scripts/test.sh, with a Python where llama_cpp (llama-cpp-python 0.3.36),
gguf, numpy and tokenizers (0.23.3) import: the llama-cpp-python environment of
check_gguf_llama_cpp.py plus `pip install tokenizers==0.23.3`.) Exit status 1 when a tokenisation
that must agree does not.
"""
import argparse
import collections
import functools
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
from llama_cpp import Llama
from tokenizers import Tokenizer

META = "\u2581"
AWKWARD = [
    " leading space,  two spaces,     five, trailing  ",
    "newlines\n\n\nthree\nand\ttabs\t\t\tthree\r\nCRLF",
    "digits 1234567890 3.14159 1,000,000 0x7f 2026-12-06",
    "naïve café Ça va? Straße — “quotes” ‘single’ … ½ °C",
    "東京は日本の首都です。 Привет, мир! مرحبا नमस्ते 안녕하세요",
    "emoji 🙂🦙👩‍👩‍👧 🇫🇷 and 𝔹𝕠𝕝𝕕 \U0001F9EC rare 龘 𪚥",
    "control \x01\x02\x7f bell\x07 end",
    "<b>tags</b> <table><td>x</td></table> ----==== ....!!!! ____",
    "a" + " " * 40 + "b\n" + "\t" * 35 + "c",
]
WITH_META = [f"literal {META}x {META}{META} y  {META} z", f"{META}{META}{META}lead and  {META}"]


def tokenizer_json_kind(model_dir):
    tj = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    return tj, bool(tj.get("model", {}).get("byte_fallback"))


def overlap_texts(tj):
    """Texts around each pair of merges x+y, y+z of one token t = xy = yz with y+z ranked first."""
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in tj["model"]["merges"]]
    by_token = collections.defaultdict(dict)
    for rank, (a, b) in enumerate(merges):
        by_token[a + b].setdefault((a, b), rank)
    texts = []
    for t, ranks in by_token.items():
        for (x, y), r in ranks.items():
            z = t[len(y):] if t.startswith(y) else None
            if z and x + y == t and ranks.get((y, z), r) < r:
                s = (x + y + z).replace(META, " ")
                texts += [s, "a" + s, s + "s", "the " + s + " end"]
    return texts


def llama_ids(path, texts):
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    ids = [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    del llm
    return ids


def qtool_rebuilt_ids(qtool, gguf_path, work, texts):
    out_dir = Path(work) / (Path(gguf_path).stem + "-hf")
    subprocess.run([qtool, "dequantize", str(gguf_path), "-o", str(out_dir), "--force"],
                   check=True, capture_output=True)
    lines = Path(work) / "texts.jsonl"
    lines.write_text("".join(json.dumps(t) + "\n" for t in texts))
    out = subprocess.run([qtool, "tokenize", str(out_dir), "--lines", str(lines), "--json", "-"],
                         check=True, capture_output=True, text=True).stdout
    return [r["ids"] for r in json.loads(out[out.index("["):])]


def compare(label, names, got, want):
    """Prints where the first five texts that differ do; returns the number that differ."""
    bad = 0
    for name, a, b in zip(names, got, want):
        if a != b:
            bad += 1
            if bad <= 5:
                k = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]),
                         min(len(a), len(b)))
                print(f"  {label}: {name!r}: {len(a)} vs {len(b)} tokens, first difference at "
                      f"{k}: {a[k:k + 4]} vs {b[k:k + 4]}")
    total = sum(len(x) for x in want)
    print(f"{label}: {len(names) - bad}/{len(names)} texts equal ({total} tokens)")
    return bad


@functools.lru_cache(maxsize=None)
def tokenizer_keys(path):
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}


def compare_metadata(ours_path, ref_path):
    ours, ref = tokenizer_keys(ours_path), tokenizer_keys(ref_path)
    print("metadata, reference vs qtool:")
    for k in sorted(set(ref) - set(ours)):
        print(f"  only in the reference: {k} = {str(ref[k])[:60]}")
    for k in sorted(set(ours) - set(ref)):
        print(f"  only in qtool's: {k} = {str(ours[k])[:60]}")
    for k in sorted(set(ours) & set(ref)):
        if isinstance(ref[k], list):
            continue
        print(f"  {k}: {ref[k]!r} vs {ours[k]!r}{'' if ref[k] == ours[k] else '  DIFFERENT'}")
    rt, ot = ref["tokenizer.ggml.tokens"], ours["tokenizer.ggml.tokens"]
    print(f"  tokens: {len(rt)} vs {len(ot)}")
    n = min(len(rt), len(ot))
    diff = [i for i in range(n) if rt[i] != ot[i]]
    print(f"  token texts that differ: {len(diff)}"
          + (f", e.g. {[(i, rt[i], ot[i]) for i in diff[:3]]}" if diff else ""))
    ry = np.array(ref["tokenizer.ggml.token_type"][:n])
    oy = np.array(ours["tokenizer.ggml.token_type"][:n])
    pairs = collections.Counter(zip(ry[ry != oy].tolist(), oy[ry != oy].tolist()))
    print(f"  token types that differ (reference type, qtool type): {dict(pairs)}")
    rs = np.array(ref["tokenizer.ggml.scores"][:n])
    os_ = np.array(ours["tokenizer.ggml.scores"][:n])
    merged = np.where(os_ > os_.min())[0]
    order = merged[np.argsort(-os_[merged], kind="stable")]
    rises = np.where(rs[order][1:] > rs[order][:-1])[0]
    examples = [(int(order[i + 1]), ot[order[i + 1]], float(rs[order[i + 1]])) for i in rises[:3]]
    print(f"  merged tokens (a merge makes them): {len(merged)}; along qtool's score order the "
          f"reference's score rises {len(rises)} times"
          + (f", e.g. at {examples}" if examples else ""))


def user_defined_with_spaces(path):
    keys = tokenizer_keys(path)
    return any(y == 4 and " " in t
               for t, y in zip(keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("qtool")
    p.add_argument("model_dir")
    p.add_argument("text")
    p.add_argument("work")
    p.add_argument("--gguf", help="a GGUF qtool wrote for MODEL_DIR (default: export one)")
    p.add_argument("--reference", help="llama.cpp's own GGUF of the model")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ours = Path(a.gguf) if a.gguf else work / "model.gguf"
    if not a.gguf:
        subprocess.run([a.qtool, "quantize", a.model_dir, "--output-format", "gguf",
                        "--gguf-type", "Q8_0", "-o", str(ours), "--force"], check=True)
    tj, spm_style = tokenizer_json_kind(a.model_dir)
    hf = Tokenizer.from_file(str(Path(a.model_dir) / "tokenizer.json"))
    texts = [Path(a.text).read_text()] + AWKWARD + WITH_META
    names = [a.text] + AWKWARD + WITH_META
    if spm_style:
        extra = overlap_texts(tj)
        print(f"{len(extra)} texts around overlapping merges of one token")
        texts += extra
        names += extra
    want = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    bad = compare("llama.cpp on qtool's GGUF vs tokenizers", names, llama_ids(ours, texts), want)
    core = [Path(a.text).read_text()] + AWKWARD + WITH_META
    core_names = [a.text] + AWKWARD + WITH_META
    n = len(core) - len(WITH_META)
    for f in [ours] + ([Path(a.reference)] if a.reference else []):
        if f != ours:
            compare_metadata(ours, f)
        llama = llama_ids(f, core)
        got = qtool_rebuilt_ids(a.qtool, f, work, core)
        bad += compare(f"qtool tokenize (rebuilt from {f.name}) vs llama.cpp", core_names[:n],
                       got[:n], llama[:n])
        m = compare("  and on texts with a literal U+2581", core_names[n:], got[n:], llama[n:])
        if m and user_defined_with_spaces(f):
            print("  (expected: user-defined tokens with spaces, see the docstring)")
        else:
            bad += m
        if f != ours:
            compare(f"llama.cpp on {f.name} vs tokenizers (information)", core_names, llama,
                    [hf.encode(t, add_special_tokens=False).ids for t in core])
    print("FAILED" if bad else "OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
