"""qtool's mixture-of-experts runtime and calibration against transformers (float32, CPU).

Builds small randomly initialised Mixtral, Qwen2-MoE and Qwen3-MoE models from small configs with a
fixed seed (no Hub), saves them, and checks that `qtool logits` equals transformers' logits on a
fixed sequence (max relative difference <= 1e-4, routing included). Then quantises the random
Qwen3-MoE and Mixtral with `qtool quantize --method gptq` and `--method awq` (INT4, group 32) on
token-id calibration data, checks the report's tokens per expert (one entry per expert and layer,
top_k per calibration token, the fallback flag set exactly below --moe-min-tokens), and prints the
logit error of RTN, GPTQ and AWQ (GPTQ must beat RTN).

Usage: check_moe.py QTOOL WORKDIR
"""

import json
import os
import subprocess
import sys

import numpy as np
import torch
from transformers import (MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM,
                          Qwen3MoeConfig, Qwen3MoeForCausalLM)

QTOOL, WORK = sys.argv[1], sys.argv[2]
VOCAB = 256
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
MODELS = {
    "mixtral": (MixtralConfig, MixtralForCausalLM,
                dict(intermediate_size=96, num_local_experts=6, num_experts_per_tok=2)),
    # Layer 1 is dense (mlp_only_layers); norm_topk_prob false as Qwen1.5-MoE's config.
    "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM,
                  dict(intermediate_size=96, moe_intermediate_size=48, num_experts=6,
                       num_experts_per_tok=2, shared_expert_intermediate_size=80,
                       mlp_only_layers=[1], norm_topk_prob=False)),
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM,
                  dict(intermediate_size=96, moe_intermediate_size=48, num_experts=8,
                       num_experts_per_tok=2, head_dim=32, norm_topk_prob=True)),
}
failures = []


def run(*args):
    r = subprocess.run([QTOOL, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"qtool {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def build(name):
    cfg_cls, model_cls, extra = MODELS[name]
    torch.manual_seed(1234)
    model = model_cls(cfg_cls(**COMMON, **extra)).eval()
    # transformers initialises weights with std 0.02, which makes every router's softmax nearly
    # uniform; larger router weights give routing decisions with real margins.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("mlp.gate.weight") or n.endswith("block_sparse_moe.gate.weight"):
                p.normal_(0, 0.5)
            elif "norm" in n:
                p.uniform_(0.5, 1.5)
    path = os.path.join(WORK, name)
    model.save_pretrained(path)
    return model, path


def logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def qtool_logits(path, tokens, tag):
    tok = os.path.join(WORK, f"{tag}.tokens")
    with open(tok, "w") as f:
        f.write("\n".join(map(str, tokens)) + "\n")
    out = os.path.join(WORK, f"{tag}.npy")
    run("logits", path, "--tokens", tok, "-o", out)
    return np.load(out)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


rng = np.random.default_rng(7)
sequence = [1] + rng.integers(3, VOCAB, 95).tolist()
models = {}
for name in MODELS:
    model, path = build(name)
    models[name] = (model, path)
    ref = logits(model, sequence)
    got = qtool_logits(path, sequence, name)
    d = rel(got, ref)
    print(f"{name}: logits max relative difference {d:.2e} over {len(sequence)} tokens")
    if d > 1e-4:
        failures.append(f"{name}: logits differ by {d:.2e} (> 1e-4)")

# Calibration: a token-id file (one id per line) drawn from a fixed generator; windows of 64
# tokens after BOS.
calib = os.path.join(WORK, "calib.tokens")
stream = rng.integers(3, VOCAB, 4000)
with open(calib, "w") as f:
    f.write("\n".join(map(str, stream.tolist())) + "\n")
eval_seq = [1] + rng.integers(3, VOCAB, 127).tolist()

# Minimum tokens per expert: 8 leaves every expert of the random models on its own tokens; for
# Mixtral, 330 is near the mean of its experts' counts (2 x 1024 tokens / 6 experts), so some
# experts take the fallback and the pipeline runs both ways.
MIN_TOKENS = {"qwen3_moe": 8, "mixtral": 330, "qwen2_moe": 8}
for name in ("qwen3_moe", "mixtral", "qwen2_moe"):
    model, path = models[name]
    min_tokens = MIN_TOKENS[name]
    ref = logits(model, eval_seq)
    errors = {}
    for method in ("rtn", "gptq", "awq"):
        out = os.path.join(WORK, f"{name}-{method}")
        report = os.path.join(WORK, f"{name}-{method}.json")
        args = ["quantize", path, "-o", out, "--format", "int4", "--group", "32",
                "--method", method, "--json", report, "--force", "--quiet"]
        if method != "rtn":
            args += ["--calib", calib, "--nsamples", "16", "--seqlen", "64",
                     "--moe-min-tokens", str(min_tokens)]
        run(*args)
        got = qtool_logits(out, eval_seq, f"{name}-{method}")
        errors[method] = float(np.sqrt(np.mean((got - ref) ** 2)))
        if method == "rtn":
            continue
        with open(report) as f:
            solver = json.load(f)["solver"]
        experts = solver["experts"]
        n_experts = model.config.num_local_experts if name == "mixtral" else model.config.num_experts
        sparse = [i for i in range(model.config.num_hidden_layers)
                  if i not in getattr(model.config, "mlp_only_layers", [])]
        if len(experts) != len(sparse) * n_experts:
            failures.append(f"{name} {method}: {len(experts)} expert entries, not "
                            f"{len(sparse) * n_experts}")
        windows = solver["calibration"]["windows"] * solver["calibration"]["window_tokens"]
        for layer in sparse:
            counts = [e["tokens"] for e in experts if e["block"] == layer]
            top_k = model.config.num_experts_per_tok
            if sum(counts) != windows * top_k:
                failures.append(f"{name} {method} block {layer}: {sum(counts)} routed tokens, "
                                f"not {windows} x top_k {top_k}")
            for e in experts:
                if e["block"] == layer and (e["tokens"] < min_tokens) != e["fallback"]:
                    failures.append(f"{name} {method}: expert {e} fallback flag is wrong")
        fallbacks = [e for e in experts if e["fallback"]]
        if any(e.get("fallback_tokens") != windows for e in fallbacks):
            failures.append(f"{name} {method}: a fallback is not on all {windows} block tokens")
        if method == "gptq":
            example = [(e["expert"], e["tokens"]) for e in experts if e["block"] == 0]
            print(f"{name} gptq: tokens per expert in block 0 (expert, tokens): {example}; "
                  f"{len(fallbacks)} of {len(experts)} experts below {min_tokens} took the "
                  "fallback")
    print(f"{name}: logit RMS error vs float32, INT4 g32: RTN {errors['rtn']:.4e}, "
          f"GPTQ {errors['gptq']:.4e}, AWQ {errors['awq']:.4e}")
    if not errors["gptq"] < errors["rtn"]:
        failures.append(f"{name}: GPTQ's logit error {errors['gptq']:.4e} is not below RTN's "
                        f"{errors['rtn']:.4e}")

if failures:
    sys.exit("FAILED:\n  " + "\n  ".join(failures))
print("mixture-of-experts checks passed")
