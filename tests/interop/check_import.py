"""Checks that qtool reads checkpoints written by the tools' own writers, on CPU.

Each case quantises a model with a tool's own writer, loads the result with that tool's reader,
and compares the reader's logits on a fixed sequence with `qtool logits` of the same directory
(relative difference: max |a - b| / max |b|):
- bitsandbytes: transformers with BitsAndBytesConfig (NF4 with nested absmax, FP4) quantises
  SmolLM2-135M at load and saves it. qtool reads both through its NF4 codec (FP4 with its map),
  and `qtool quantize` of the same f32 weights must write bitsandbytes' codes (and absmax where
  not nested) byte for byte. bitsandbytes' CPU forward computes in bf16 on AVX512-BF16
  machines, so the reader's logits are taken with each Linear4bit run as an f32 product of the
  weight bitsandbytes itself dequantises (tolerance F32_TOL), and the dequantised weights are
  compared with `qtool dequantize`'s bit for bit. The model is saved before any forward
  (bitsandbytes 0.50 corrupts absmax when saving after one), and SmolLM2's widths (576, 1536) are
  multiples of 64 (its CPU 4-bit path decodes other widths wrongly).
- bitsandbytes LLM.int8: BitsAndBytesConfig(load_in_8bit=True) on SmolLM2-135M. qtool's decoding
  must equal the weights bitsandbytes dequantises (int8_vectorwise_dequant) bit for bit. Both
  quantise each Linear's input as bitsandbytes' forward does, which on SmolLM2 moves the
  logits by up to about 1e-1 under ulp-sized changes of the inputs (check_export.py's
  LLM_INT8_TOL): the logits are compared as loaded within LLM_INT8_TOL.
- GPTQ: gptqmodel quantises babyllama-tok105 on CPU (4 bits, group 32, calibration from
  stories-calib.txt) and saves it (checkpoint_format gptq: zero-points stored minus one). It is
  loaded with transformers + gptqmodel's torch kernel with its scales widened to f32, so that the
  reader computes the grid in f32 as qtool does (tolerance F32_TOL), and the weights it
  dequantises, rounded to the checkpoint's dtype (gptqmodel saves bf16), are compared with
  `qtool dequantize`'s bit for bit.
- AWQ: gptqmodel quantises babyllama-tok105 the same way (GEMM, asymmetric; bf16 scales, as
  gptqmodel saves them) with its clip search off (it asserts output widths that are multiples
  of 64; 352 is not). Its torch kernel computes in f16 whatever the scales, so each AWQ layer
  runs as an f32 product of the weight the reader dequantises (with f32 scales): F32_TOL.

Usage: check_import.py QTOOL_BINARY SHARED_DIR WORK_DIR [CACHE_DIR]
(QTOOL_IMPORT_CASES=bnb,int8,gptq,awq: the cases to run; all by default.)
"""
import logging
import os
import shutil
import subprocess
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ["TORCHDYNAMO_DISABLE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_models import smollm2_f32  # noqa: E402

F32_TOL = 1e-4  # logits, relative, where the reader computes in f32 as qtool does
LLM_INT8_TOL = 0.15  # LLM.int8's quantised inputs (see check_export.py)

QTOOL, SHARED, WORK = (os.path.abspath(a) for a in sys.argv[1:4])
CACHE = os.path.abspath(sys.argv[4]) if len(sys.argv) > 4 else os.path.expanduser("~/.cache/qtool")
torch.set_num_threads(os.cpu_count() or 1)
# bitsandbytes warns on every LLM.int8 forward that it casts the inputs to f16.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def run(*args):
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def qtool_logits(model, tokens):
    path = os.path.join(WORK, "tokens.txt")
    with open(path, "w") as f:
        f.write("\n".join(str(int(i)) for i in tokens) + "\n")
    run(QTOOL, "logits", model, "--tokens", path, "-o", model + ".logits.npy")
    return np.load(model + ".logits.npy")


def qtool_weights(model):
    """`qtool dequantize`'s tensors (torch: the weights' original type may be bf16)."""
    from safetensors.torch import load_file as load_torch
    shutil.rmtree(model + "-deq", ignore_errors=True)
    run(QTOOL, "dequantize", model, "-o", model + "-deq")
    w = load_torch(os.path.join(model + "-deq", "model.safetensors"))
    shutil.rmtree(model + "-deq")
    return w


def differing_bytes(got, want):
    """Bytes of f32 `got` that differ from `want` once rounded to want's type (qtool writes the
    weights in their original type, as the reader's own save does)."""
    got = got.to(want.dtype).contiguous()
    a = got.view(torch.uint8).numpy()
    b = want.contiguous().view(torch.uint8).numpy()
    assert a.shape == b.shape, (a.shape, b.shape)
    return int((a != b).sum())


def compare(tag, reader_logits, model, tokens, checked, bad, started, tol=F32_TOL):
    q = qtool_logits(model, tokens)
    rel = float(np.abs(reader_logits - q).max() / np.abs(q).max())
    ok = rel <= tol and bad == 0 and checked > 0
    print(f"{'ok  ' if ok else 'FAIL'} {tag}: logits rel {rel:.2e} (tol {tol:.2g}); weights of "
          f"{checked} modules, {bad} bytes differ from qtool's; {time.time() - started:.1f} s",
          flush=True)
    return ok


def compare_bnb(tag, model, out, tokens, started, weight_of, tol=F32_TOL, f32_products=False):
    """`compare` for a bitsandbytes model saved to `out`: weight_of(m) is module m's weight as
    bitsandbytes dequantises it (None for other modules), which `qtool dequantize` must equal bit
    for bit; with f32_products each such module then runs as an f32 product of that weight."""
    deq = qtool_weights(out)
    checked = bad = 0
    for name, m in model.named_modules():
        with torch.no_grad():
            w = weight_of(m)
        if w is None:
            continue
        bad += differing_bytes(w, deq[name + ".weight"])
        checked += 1
        if f32_products:
            m.forward = lambda x, w=w, b=m.bias: torch.nn.functional.linear(x, w, b)
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float().numpy()
    return compare(tag, logits, out, tokens, checked, bad, started, tol)


def bnb_int8_case(src, tokens):
    """LLM.int8 (weight I8 with its row absmax SCB), its inputs quantised as loaded (threshold
    6), against the weights bitsandbytes dequantises (int8_vectorwise_dequant)."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    started = time.time()
    tag = "bitsandbytes-int8"
    out = os.path.join(WORK, tag)
    shutil.rmtree(out, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(load_in_8bit=True)).eval()
    model.save_pretrained(out)
    ok = compare_bnb(tag, model, out, tokens, started, lambda m: (
        bnb.functional.int8_vectorwise_dequant(m.weight.data, m.weight.SCB).float()
        if isinstance(m, bnb.nn.Linear8bitLt) else None), LLM_INT8_TOL)
    shutil.rmtree(out, ignore_errors=True)
    return ok


def bnb_case(src, tokens, quant_type, nested):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    started = time.time()
    tag = f"bitsandbytes-{quant_type}{'-nested' if nested else ''}"
    out = os.path.join(WORK, tag)
    shutil.rmtree(out, ignore_errors=True)
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                             bnb_4bit_use_double_quant=nested,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32,
                                                 quantization_config=cfg).eval()
    model.save_pretrained(out)  # before any forward (see above)
    # qtool's own quantiser of the same f32 weights writes bitsandbytes' codes and absmax.
    # With nested absmax bitsandbytes takes their offset as torch's f32 mean, whose summation
    # order qtool (which sums in double) does not follow: the offset can differ by a few ulps and
    # move a few 8-bit absmax codes, so for nested statistics the differences are only counted.
    mine = out + "-qtool"
    shutil.rmtree(mine, ignore_errors=True)
    fmt = "nf4" if quant_type == "nf4" else "bnb-fp4"
    run(QTOOL, "quantize", src, "-o", mine, "-q", "--format", fmt,
        *(["--double-quant"] if nested else []), "--output-format", "bnb")
    quantiser_bad = stats_bad = weights = 0
    with safe_open(os.path.join(out, "model.safetensors"), "np") as f, \
            safe_open(os.path.join(mine, "model.safetensors"), "np") as g:
        for k in f.keys():
            if k.endswith(".weight") and k + ".absmax" in f.keys():
                weights += 1
                quantiser_bad += int((f.get_tensor(k) != g.get_tensor(k)).sum())
                a, b = f.get_tensor(k + ".absmax"), g.get_tensor(k + ".absmax")
                differ = int((a.view(np.uint8) != b.view(np.uint8)).sum())
                if nested:
                    stats_bad += differ
                else:
                    quantiser_bad += differ
    shutil.rmtree(mine)
    print(f"{'ok  ' if quantiser_bad == 0 else 'FAIL'} {tag}: qtool quantize --format {fmt} "
          f"against bitsandbytes' quantiser: codes{'' if nested else ' and absmax'} of {weights} "
          f"weights, {quantiser_bad} bytes differ"
          + (f" ({stats_bad} bytes of the nested 8-bit absmax)" if nested else ""), flush=True)
    ok = compare_bnb(tag, model, out, tokens, started, lambda m: (
        bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
        if isinstance(m, bnb.nn.Linear4bit) else None), f32_products=True) and quantiser_bad == 0
    shutil.rmtree(out, ignore_errors=True)
    return ok


def gptqmodel_case(src, tokens, calib_text, method):
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoModelForCausalLM, AwqConfig, GPTQConfig
    started = time.time()
    tag = f"gptqmodel-{method}-int4-g32"
    out = os.path.join(WORK, tag)
    shutil.rmtree(out, ignore_errors=True)
    # gptqmodel loads a tokenizer from the model folder, and babyllama-tok105's SentencePiece
    # model is not one transformers reads without tiktoken: the folder gets SmolLM2's
    # tokenizer.json, which gptqmodel only loads, as the calibration is given as ids (bytes of
    # stories-calib.txt mapped into the 105-token vocabulary).
    model_dir = os.path.join(WORK, "babyllama-tok105-src")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(src, f), model_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(smollm2_f32(SHARED, CACHE), f), model_dir)
    src = model_dir
    ids = [1] + [b % 104 + 1 for b in calib_text.encode()[:4096]]
    calib = [{"input_ids": torch.tensor([ids[i:i + 128]]),
              "attention_mask": torch.ones(1, 128, dtype=torch.long)}
             for i in range(0, len(ids) - 128, 128)]
    if method == "gptq":
        qcfg = QuantizeConfig(bits=4, group_size=32, desc_act=False)
    else:
        # AWQ's clip search takes output channels 64 at a time and asserts that they divide
        # babyllama-tok105's 352: it is switched off (the scale search and the GEMM packing, the
        # layout read here, are unchanged).
        import gptqmodel.looper.awq_processor as awq_processor
        init = awq_processor.AWQProcessor.__init__

        def no_clip_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.apply_clip = False
        awq_processor.AWQProcessor.__init__ = no_clip_init
        qcfg = QuantizeConfig(bits=4, group_size=32, sym=False, quant_method="awq",
                              format="gemm")
    qmodel = GPTQModel.load(src, qcfg, device="cpu")
    qmodel.quantize(calib, batch_size=1)
    qmodel.save(out)
    del qmodel
    deq = qtool_weights(out)
    qc = (GPTQConfig(bits=4, backend="gptq_torch") if method == "gptq"
          else AwqConfig(bits=4, backend="torch_awq"))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                 quantization_config=qc).eval()
    checked = bad = 0
    for name, m in model.named_modules():
        if hasattr(m, "qweight"):
            m.scales = m.scales.float()
            with torch.no_grad():
                if method == "gptq":
                    got = m.dequantize_weight().T.float()
                else:
                    dequantize_gemm = sys.modules[type(m).__module__].dequantize_gemm
                    w = dequantize_gemm(qweight=m.qweight, qzeros=m.qzeros, scales=m.scales,
                                        bits=m.bits, group_size=m.group_size).float()
                    got = w.T
                    # The AWQ kernel casts to f16 whatever the scales: run the layer as an f32
                    # product of the weight the reader dequantises.
                    m.forward = lambda x, w=got.contiguous(), b=m.bias: (
                        torch.nn.functional.linear(x, w, b))
            bad += differing_bytes(got, deq[name + ".weight"])
            checked += 1
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float().numpy()
    ok = compare(tag, logits, out, tokens, checked, bad, started)
    shutil.rmtree(out, ignore_errors=True)
    return ok


def main():
    os.makedirs(WORK, exist_ok=True)
    os.chdir(WORK)  # gptqmodel writes its logs under ./logs
    cases = os.environ.get("QTOOL_IMPORT_CASES", "bnb,int8,gptq,awq").split(",")
    failures = []
    started = time.time()
    if "bnb" in cases:
        smol = smollm2_f32(SHARED, CACHE)
        ref = load_file(os.path.join(SHARED,
                                     "models/smollm2-135m/ref/smollm2-hf-f32-logits64.safetensors"))
        tokens = ref["tokens"].tolist()
        # NF4 with nested absmax and FP4 go through qtool's NF4 codec (its FP4 map), with and
        # without double quantisation. (Plain NF4 is the nested case's first half; it is left out
        # to keep the check short.)
        for quant_type, nested in (("nf4", True), ("fp4", False)):
            if not bnb_case(smol, tokens, quant_type, nested):
                failures.append(f"bitsandbytes {quant_type} nested={nested}")
    if "int8" in cases:
        smol = smollm2_f32(SHARED, CACHE)
        ref = load_file(os.path.join(SHARED,
                                     "models/smollm2-135m/ref/smollm2-hf-f32-logits64.safetensors"))
        if not bnb_int8_case(smol, ref["tokens"].tolist()):
            failures.append("bitsandbytes int8")
    if "gptq" in cases or "awq" in cases:
        tiny = os.path.join(SHARED, "models/babyllama-tok105/hf")
        ref = load_file(os.path.join(SHARED,
                                     "models/babyllama-tok105/ref/hf-logits-eval64.safetensors"))
        calib = open(os.path.join(SHARED, "data/stories-calib.txt")).read()
        for method in ("gptq", "awq"):
            if method in cases and not gptqmodel_case(tiny, ref["tokens"].tolist(), calib,
                                                      method):
                failures.append("gptqmodel " + method)
    print(f"check_import: {time.time() - started:.0f} s")
    if failures:
        sys.exit("check_import: failed: " + ", ".join(failures))
    print("check_import: qtool read every writer's checkpoint and matched its reader's logits")


if __name__ == "__main__":
    main()
