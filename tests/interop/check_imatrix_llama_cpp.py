"""Checks qtool's importance matrices against llama.cpp's own tools (llama-imatrix, llama-quantize).

1. qtool writes the model as an F32 GGUF file; llama-imatrix computes its importance matrix on the
   first CHUNKS chunks of CTX tokens of TEXT (F32 KV cache, plain CPU buffers). `qtool imatrix
   --sequential` computes one on the same token ids (llama.cpp's tokenisation of TEXT, BOS in the
   first position of each chunk as llama-imatrix puts it): the entries, shapes and counts must be
   equal, and the importances (in_sum2 / counts) within a relative difference that the report
   states (llama.cpp accumulates in float, over its own matrix products; qtool in double).
2. For each type, llama-quantize --imatrix and `qtool quantize --output-format gguf --imatrix`
   quantise the same F32 weights with the same importance matrix (llama.cpp's, then qtool's):
   every tensor must have the same type and the same bytes.

Usage: check_imatrix_llama_cpp.py QTOOL TOOLS_DIR MODEL_DIR TEXT WORK_DIR [--chunks=N] [--ctx=N]
       [--types=T,T,...] [--max-rel=X]
TOOLS_DIR holds llama-imatrix and llama-quantize (tests/interop/build_llama_cpp_tools.sh builds
them); llama_cpp (llama-cpp-python, for llama.cpp's tokenisation), gguf and numpy must be
importable. With TOOLS_DIR "-" (no tools), step 1 is left out and step 2 runs llama.cpp's
quantiser through llama-cpp-python's llama_model_quantize, whose parameters carry the importances
(llama_model_imatrix_data, computed from the file as llama-quantize's load_imatrix does), on
qtool's importance matrix computed from the text. Exits 1 when a check fails.
"""
import json
import os
import subprocess
import sys

import numpy as np
from gguf import GGUFReader

DEFAULT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M",
                 "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"]


def run(cmd, **kw):
    if "-o" in cmd and os.path.isfile(cmd[cmd.index("-o") + 1]):
        os.remove(cmd[cmd.index("-o") + 1])  # --force replaces directories, not files
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


def read_imatrix(path):
    r = GGUFReader(path)
    sums, counts = {}, {}
    for t in r.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[:-8]] = np.array(t.data, dtype=np.float64).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[:-7]] = np.array(t.data, dtype=np.float64).reshape(-1)
    keys = {k: r.fields[k] for k in r.fields}
    return sums, counts, keys


def llama_tokens(f32, text):
    from llama_cpp import Llama
    llm = Llama(model_path=f32, vocab_only=True, verbose=False)
    data = open(text, "rb").read()
    with_special = llm.tokenize(data, add_bos=True, special=False)
    plain = llm.tokenize(data, add_bos=False, special=False)
    add_bos = len(with_special) != len(plain)
    return with_special, (llm.token_bos() if add_bos else None)


LLAMA_FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11,
                "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
                "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30}


def ctypes_quantize(f32, out, t, imat):
    """llama_model_quantize with the importances of `imat` (in_sum2 / counts in float32)."""
    import ctypes
    import llama_cpp.llama_cpp as capi
    from llama_cpp_support import imatrix_data
    sums, counts, _ = read_imatrix(imat)
    keep, entries = [], []
    for name in sorted(sums):
        c = np.float32(counts[name][0])
        v = (sums[name].astype(np.float32) / c if c > 0
             else np.ones_like(sums[name], dtype=np.float32)).astype(np.float32)
        v = np.ascontiguousarray(v)
        keep.append(v)
        entries.append((name.encode(), v))
    arr = imatrix_data(entries)
    params = capi.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[t]
    params.nthread = 2
    params.imatrix = ctypes.cast(arr, ctypes.POINTER(capi.llama_model_imatrix_data))
    if capi.llama_model_quantize(f32.encode(), out.encode(), params) != 0:
        sys.exit(f"{t}: llama_model_quantize failed")
    del keep


def tensors_of(path):
    r = GGUFReader(path)
    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in r.tensors}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    qtool, tools, model, text, work = args
    chunks = int(opts.get("chunks", 8))
    ctx = int(opts.get("ctx", 512))
    types = opts["types"].split(",") if "types" in opts else DEFAULT_TYPES
    max_rel = float(opts.get("max-rel", 1e-2))
    os.makedirs(work, exist_ok=True)
    f32 = os.path.join(work, "F32.gguf")
    run([qtool, "quantize", model, "-o", f32, "--output-format", "gguf", "--gguf-type", "F32",
         "--force", "-q"])

    have_tools = tools != "-"
    # llama.cpp's importance matrix.
    ref = os.path.join(work, "imatrix-llama.gguf")
    if have_tools:
        run([os.path.join(tools, "llama-imatrix"), "-m", f32, "-f", text, "-o", ref, "-c",
             str(ctx), "--chunks", str(chunks), "-t", "2", "-nr", "--no-ppl", "-ctk", "f32",
             "-ctv", "f32"])

    # qtool's, on llama.cpp's tokens: the chunks llama-imatrix runs, BOS first where it adds one.
    stream, bos = llama_tokens(f32, text)
    ids = []
    for c in range(chunks):
        chunk = list(stream[c * ctx:(c + 1) * ctx])
        if bos is not None:
            chunk[0] = bos
        ids += chunk
    ids_path = os.path.join(work, "calib.ids")
    with open(ids_path, "w") as f:
        f.write("\n".join(map(str, ids)) + "\n")
    ours = os.path.join(work, "imatrix-qtool.gguf")
    run([qtool, "imatrix", model, "--calib", ids_path, "--sequential", "--seqlen", str(ctx),
         "--nsamples", str(chunks), "-o", ours, "--force", "-q", "--threads", "2"])

    failed = []
    if not have_tools:
        ref = ours
    s_ref, c_ref, _ = read_imatrix(ref)
    s_our, c_our, keys = read_imatrix(ours)
    if set(s_ref) != set(s_our):
        failed.append(f"imatrix entries differ: only llama.cpp {sorted(set(s_ref) - set(s_our))}, "
                      f"only qtool {sorted(set(s_our) - set(s_ref))}")
    worst, worst_name, rels = 0.0, "", []
    for name in sorted(set(s_ref) & set(s_our)):
        if s_ref[name].shape != s_our[name].shape or not np.array_equal(c_ref[name], c_our[name]):
            failed.append(f"{name}: shapes {s_ref[name].shape}/{s_our[name].shape}, counts "
                          f"{c_ref[name]}/{c_our[name]}")
            continue
        a = s_our[name] / c_our[name][0]
        b = s_ref[name] / c_ref[name][0]
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-30)
        rels.append(rel)
        if rel.max() > worst:
            worst, worst_name = float(rel.max()), name
    allrel = np.concatenate(rels) if rels else np.zeros(1)
    print(f"imatrix: {len(s_ref)} entries, counts equal; importance relative difference: max "
          f"{worst:.3e} ({worst_name}), median {np.median(allrel):.3e}, 99th percentile "
          f"{np.percentile(allrel, 99):.3e}")
    if worst > max_rel:
        failed.append(f"importance relative difference {worst:.3e} > {max_rel} ({worst_name})")

    # The quantisers with the same importance matrix.
    summary = {}
    imats = (("llama.cpp imatrix", ref), ("qtool imatrix", ours)) if have_tools else (
        ("qtool imatrix", ours),)
    for label, imat in imats:
        for t in types:
            lq = os.path.join(work, f"llama-{t}.gguf")
            qq = os.path.join(work, f"qtool-{t}.gguf")
            if have_tools:
                run([os.path.join(tools, "llama-quantize"), "--imatrix", imat, f32, lq, t, "2"])
            else:
                ctypes_quantize(f32, lq, t, imat)
            run([qtool, "quantize", model, "-o", qq, "--output-format", "gguf", "--gguf-type", t,
                 "--imatrix", imat, "--force", "-q", "--threads", "2"])
            a, b = tensors_of(lq), tensors_of(qq)
            same = sum(1 for n in a if n in b and a[n] == b[n])
            diff = [n for n in a if n not in b or a[n] != b[n]]
            summary[(label, t)] = (same, len(a))
            print(f"{label:18} {t:7} {same}/{len(a)} tensors identical"
                  + (f"; differ: {diff[:4]}" if diff else ""))
            for n in diff[:2]:
                ta, tb = a[n][0], b.get(n, ("absent", b""))[0]
                print(f"    {n}: llama.cpp {ta}, qtool {tb}")
            if diff or set(a) != set(b):
                failed.append(f"{label} {t}: {len(diff)} tensors differ")
            os.remove(lq)
            os.remove(qq)
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump({"imatrix_max_rel": worst, "imatrix_median_rel": float(np.median(allrel)),
                   "quantize": {f"{k[0]} {k[1]}": v for k, v in summary.items()}}, f, indent=1)
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
