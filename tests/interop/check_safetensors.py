"""Checks qtool's files with the reference safetensors reader and writer (Hugging Face's
`safetensors` package), independently of qtool's own parser:

1. A checkpoint quantised by qtool opens with safetensors; every quantised weight, decoded with
   numpy from the layout in docs/FORMAT.md, equals what `qtool dequantize` wrote, and that output
   opens with safetensors too.
2. A file written by the safetensors package is read by `qtool inspect`.

Usage: check_safetensors.py QTOOL_BINARY MODEL_DIR WORK_DIR   (MODEL_DIR: an F32 checkpoint,
numpy having no bfloat16)
"""
import json
import os
import subprocess
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def unpack(packed, cols, bits):
    """Codes of each row from the little-endian bit stream of docs/FORMAT.md."""
    bitstream = np.unpackbits(packed, axis=1, bitorder="little")[:, : cols * bits]
    weights = (1 << np.arange(bits)).astype(np.uint32)
    return (bitstream.reshape(packed.shape[0], cols, bits) * weights).sum(axis=2)


def decode_int(tensors, name, rec):
    rows, cols = rec["shape"]
    bits = rec["bits"]
    codes = unpack(tensors[name + ".qweight"], cols, bits).astype(np.float32)
    scales = tensors[name + ".scales"]
    if rec["symmetric"]:
        zeros = np.full(scales.shape, 1 << (bits - 1), dtype=np.float32)
    else:
        zeros = tensors[name + ".zeros"].astype(np.float32)
    if rec["granularity"] == "tensor":
        group = cols
        scales = np.broadcast_to(scales, (rows, 1))
        zeros = np.broadcast_to(zeros, (rows, 1))
    elif rec["granularity"] == "channel":
        group = cols
    else:
        group = rec["group_size"]
    index = np.arange(cols) // group  # row-local groups, the last one possibly shorter
    return ((codes - zeros[:, index]) * scales[:, index]).astype(np.float32)


def main():
    qtool, model, work = sys.argv[1:4]
    checked = 0
    for args in (["--bits", "4", "--group", "32"], ["--bits", "3", "--group", "16", "--asym"],
                 ["--bits", "8", "--granularity", "channel"]):
        q, d = os.path.join(work, "q"), os.path.join(work, "d")
        subprocess.run([qtool, "quantize", model, "-o", q, "--force", "-q"] + args, check=True)
        subprocess.run([qtool, "dequantize", q, "-o", d, "--force"], check=True)
        with safe_open(os.path.join(q, "model.safetensors"), "np") as f:
            record = json.loads(f.metadata()["qtool.quantization"])
        tensors = load_file(os.path.join(q, "model.safetensors"))
        plain = load_file(os.path.join(d, "model.safetensors"))
        for name, rec in record["tensors"].items():
            want = decode_int(tensors, name, rec)
            got = plain[name].astype(np.float32)
            if got.shape != tuple(rec["shape"]) or not np.array_equal(
                    want.astype(got.dtype).astype(np.float32), got):
                sys.exit(f"{name} {args}: numpy decoding differs from qtool dequantize")
            checked += 1
        for name, t in plain.items():
            if name not in record["tensors"] and not np.array_equal(t, tensors[name]):
                sys.exit(f"{name}: an unquantised tensor changed")

    ref = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.float16),
           "c": np.array([1, 2, 3], dtype=np.int64)}
    path = os.path.join(work, "ref.safetensors")
    save_file(ref, path, metadata={"format": "pt"})
    out = subprocess.run([qtool, "inspect", path, "--json", "-"], check=True, capture_output=True,
                         text=True).stdout
    seen = {t["name"]: (t["dtype"], t["shape"]) for t in json.loads(out)["tensors"]}
    want = {"a": ("F32", [3, 4]), "b": ("F16", [5]), "c": ("I64", [3])}
    if seen != want:
        sys.exit(f"qtool inspect read {seen}, expected {want}")
    print(f"safetensors {__import__('safetensors').__version__}: {checked} quantised tensors decoded "
          "with numpy equal qtool dequantize; a file written by safetensors reads in qtool")


if __name__ == "__main__":
    main()
