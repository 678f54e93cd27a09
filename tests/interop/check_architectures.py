"""qtool's runtime against transformers on small randomly initialised models of every dense
architecture beyond Llama: Qwen3, Gemma 2, Gemma 3 (text), Phi-3.

Each model is built by transformers from a small config with a fixed seed (no download), saved
as float32 safetensors, and run by `qtool logits` on a fixed token sequence longer than its
sliding windows; the logits must equal transformers' float32 logits on CPU within 1e-4 relative
(max |qtool - ref| / max |ref|). Each architecture runs in the config style transformers 5 writes
(rope_parameters, layer_types) and in the older style (top-level rope_theta, rope_scaling,
rope_local_base_freq, sliding_window_pattern, no layer_types), which must give the same logits.

Then each model is quantised to INT8 by AWQ and SmoothQuant, whose scales fold into the
architecture's norms (Gemma's 1 + w form, its pre-feed-forward norm) and into the preceding
Linear's rows (Phi-3's fused qkv_proj and gate_up_proj), and by GPTQ, calibrated on random token
ids. These random models amplify weight error (INT8 round-to-nearest alone moves their logits by
1e-2 to 1e-1 relative), so each method's logit error is bounded by a multiple of RTN's at the
same format (QUANT_RATIO): a scale folded into a (1 + w) norm as if it were w moved Gemma's logits
by 12 to 19 times RTN's error when this check was written, and AWQ's v -> o and up -> down scales
folded into the wrong rows of Phi-3's fused layers by 2.3 times (correct folds: at most 1.2).

usage: check_architectures.py QTOOL WORKDIR
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

TOLERANCE = 1e-4
QUANT_RATIO = {"rtn": 1.0, "awq": 1.5, "gptq": 2.5, "smoothquant": 2.5}
SEQ_LEN = 40  # longer than every sliding window below

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    # Large enough weights that attention is far from uniform and the soft-caps bite.
    initializer_range=0.25,
)


def cases():
    """(name, model class, config class, new-style kwargs, older-style edits of config.json)."""
    return [
        (
            "qwen3",
            transformers.Qwen3ForCausalLM,
            transformers.Qwen3Config,
            dict(COMMON, num_hidden_layers=3, head_dim=24,
                 rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
            {"drop": ["rope_parameters", "layer_types"], "set": {"rope_theta": 50000.0}},
        ),
        (
            "qwen3-sliding",
            transformers.Qwen3ForCausalLM,
            transformers.Qwen3Config,
            dict(COMMON, num_hidden_layers=3, head_dim=16, use_sliding_window=True,
                 sliding_window=7, max_window_layers=1, tie_word_embeddings=True,
                 rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
            {"drop": ["rope_parameters", "layer_types"],
             "set": {"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}},
        ),
        (
            "gemma2",
            transformers.Gemma2ForCausalLM,
            transformers.Gemma2Config,
            dict(COMMON, num_hidden_layers=4, head_dim=16, sliding_window=9,
                 query_pre_attn_scalar=24, attn_logit_softcapping=1.5,
                 final_logit_softcapping=2.0, tie_word_embeddings=True,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
            {"drop": ["rope_parameters", "layer_types"],
             "set": {"rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh",
                     "sliding_window_size": 9, "cache_implementation": "hybrid"}},
        ),
        (
            "gemma3",
            transformers.Gemma3ForCausalLM,
            transformers.Gemma3TextConfig,
            dict(COMMON, num_hidden_layers=5, head_dim=32, sliding_window=8,
                 query_pre_attn_scalar=32, tie_word_embeddings=True, sliding_window_pattern=3,
                 rope_parameters={
                     "full_attention": {"rope_type": "linear", "factor": 4.0,
                                        "rope_theta": 1000000.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
            {"drop": ["rope_parameters", "layer_types", "_sliding_window_pattern"],
             "set": {"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                     "rope_scaling": {"rope_type": "linear", "factor": 4.0},
                     "sliding_window_pattern": 3}},
        ),
        (
            "phi3",
            transformers.Phi3ForCausalLM,
            transformers.Phi3Config,
            dict(COMMON, num_hidden_layers=3, sliding_window=11, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                  "partial_rotary_factor": 0.5}),
            {"drop": ["rope_parameters"],
             "set": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
        ),
    ]


def randomise_norms(model, gen):
    # Fresh models have norm weights of 1 (0 in Gemma's 1 + w form); random ones check that every
    # norm is read and applied in its architecture's form.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (0 if "gemma" in
                        type(model).__name__.lower() else 1))


def run_qtool(qtool, model_dir, tokens, out):
    tok_file = out.with_suffix(".tokens")
    tok_file.write_text("\n".join(str(t) for t in tokens) + "\n")
    subprocess.run([qtool, "logits", str(model_dir), "--tokens", str(tok_file), "-o", str(out)],
                   check=True)
    return np.load(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qtool")
    ap.add_argument("workdir")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokens = [int(t) for t in torch.randint(3, COMMON["vocab_size"], (SEQ_LEN,),
                                            generator=torch.Generator().manual_seed(1))]
    tokens[0] = 2
    calib = work / "calib.tokens"
    calib.write_text("\n".join(str(int(t)) for t in torch.randint(
        3, COMMON["vocab_size"], (400,), generator=torch.Generator().manual_seed(3))) + "\n")
    failures = 0
    for name, model_cls, config_cls, kwargs, older in cases():
        torch.manual_seed(0)
        config = config_cls(**kwargs)
        model = model_cls(config).eval().float()
        randomise_norms(model, torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = model(torch.tensor([tokens])).logits[0].float().numpy()
        new_dir = work / f"{name}-new"
        model.save_pretrained(new_dir, safe_serialization=True)
        old_dir = work / f"{name}-old"
        model.save_pretrained(old_dir, safe_serialization=True)
        cfg = json.loads((old_dir / "config.json").read_text())
        for k in older["drop"]:
            cfg.pop(k, None)
        cfg.update(older["set"])
        (old_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        # The older-style config must mean the same model to transformers too.
        with torch.no_grad():
            ref_old = model_cls.from_pretrained(old_dir, dtype=torch.float32).eval()(
                torch.tensor([tokens])).logits[0].numpy()
        assert np.array_equal(ref, ref_old), f"{name}: the older-style config changes the model"
        for style, d in (("transformers 5 config", new_dir), ("older config", old_dir)):
            got = run_qtool(args.qtool, d, tokens, work / f"{name}-{d.name}.npy")
            rel = float(np.abs(got - ref).max() / np.abs(ref).max())
            ok = got.shape == ref.shape and rel <= TOLERANCE
            failures += not ok
            print(f"{name:14s} {style:22s} max rel diff {rel:.2e} "
                  f"{'ok' if ok else 'FAIL'}")
        for method, fmt in (("rtn", ["--bits", "8", "--group", "32"]),
                            ("awq", ["--bits", "8", "--group", "32"]),
                            ("gptq", ["--bits", "8", "--group", "32"]),
                            ("smoothquant", ["--bits", "8", "--granularity", "channel"])):
            q_dir = work / f"{name}-{method}"
            subprocess.run([args.qtool, "quantize", str(new_dir), "-o", str(q_dir), "--format",
                            "int", *fmt, "--method", method, "--force", "-q"]
                           + ([] if method == "rtn" else ["--calib", str(calib), "--nsamples", "4",
                                                          "--seqlen", "32"]), check=True)
            got = run_qtool(args.qtool, q_dir, tokens, work / f"{name}-{method}.npy")
            rel = float(np.abs(got - ref).max() / np.abs(ref).max())
            if method == "rtn":
                rtn = rel
            ok = rel <= QUANT_RATIO[method] * rtn
            failures += not ok
            print(f"{name:14s} {method + ' INT8':22s} max rel diff {rel:.2e} "
                  f"({rel / rtn:.2f} x RTN) {'ok' if ok else 'FAIL'}")
    if failures:
        print(f"{failures} comparisons failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
