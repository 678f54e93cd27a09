#!/usr/bin/env python3
"""Compares qtool's GPTQ with the reference implementation of GPTQ (IST-DASLab/gptq).

Optional check, not part of the build or CI. Needs PyTorch (CPU is enough), numpy, the
`safetensors` package, and a checkout of https://github.com/IST-DASLab/gptq, whose own `gptq.py`
and `quant.py` are imported from that directory (nothing of it is copied here).

    ./build/bench/qtool_gptq_reference_data /tmp/gref
    python3 bench/gptq_reference_check.py --reference ~/src/gptq \
        /tmp/gref/gptq_reference_data.safetensors

The data file holds a seeded layer W [rows, cols], its calibration inputs X [samples, cols] and
qtool's dequantised INT4 g128 results: RTN, and GPTQ in natural order, with act-order, and with
act-order and static groups, each symmetric and asymmetric. The reference GPTQ runs on the same W
and X exactly as its llama.py does for every linear layer: GPTQ(layer) on an nn.Linear holding W,
add_batch once per sequence of --seqlen rows of X (llama.py's forward hook), a Quantizer
configured with (4, perchannel=True, sym, mse=False), then fasterquant(blocksize=128,
percdamp=.01, groupsize=128, actorder, static_groups), in float32 on the CPU. RTN with the
reference's quantizer (its find_params on each group of 128 columns, then its quantize()) is the
baseline.

Printed: the relative output error ||X W^T - X W^^T||^2 / ||X W^T||^2 (in float64) of each
result and qtool GPTQ / reference GPTQ; then the share of elements on which qtool's RTN and the
reference's differ (0 when qtool's grid is the reference's), the share of elements on which the
two GPTQ results lie on different levels and the number of rows holding them, the same for the
reference against itself run with the rows of X reversed (the same H summed in another order:
the spread float32 rounding alone produces), and both implementations' GPTQ wall time (each the
fastest of --repeat runs). The GPTQ results differ where float32 rounding decides a tie, e.g.: a
group's first column is quantised with parameters fitted on the same values, so when that column
holds the group's most negative weight, x / scale is -(2^b - 1) / 2 up to rounding in symmetric
groups, and which of the two nearest levels it takes depends on the last bits of the updated
weights (each implementation sums the updates in another order); the other choice is then
compensated in that row's later columns. Exits 1 when a qtool GPTQ error is not within
--tolerance (2%) of the reference's or above --max-rtn-ratio (0.3) times the reference RTN error.

CPU adaptations, all made from outside the reference's files: its fasterquant ends with
torch.cuda.synchronize() (and free() calls torch.cuda.empty_cache()), which raise on a machine
without a CUDA device, so both are replaced by no-ops when CUDA is unavailable; gptq.py imports
`transformers` only for an isinstance test against transformers.Conv1D, so when transformers is
not installed a stand-in module with an empty Conv1D class is registered (an nn.Linear is never
a Conv1D, so the reference takes the same path either way).
"""

import argparse
import contextlib
import io
import re
import sys
import time
import types


def import_reference(directory):
    import torch

    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *args, **kwargs: None
        torch.cuda.empty_cache = lambda: None
    try:
        import transformers  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("transformers")
        stand_in.Conv1D = type("Conv1D", (), {})
        sys.modules["transformers"] = stand_in
    sys.path.insert(0, directory)
    import gptq
    import quant

    return gptq, quant


def output_error(x, w):
    """The function W^ -> ||X (W - W^)^T||^2 / ||X W^T||^2, in float64."""
    xd = x.double()
    energy = float((xd @ w.double().t()).square().sum())
    return lambda wq: float((xd @ (w - wq).double().t()).square().sum()) / energy


def reference_rtn(quant, w, sym, group_size):
    q = quant.Quantizer()
    q.configure(4, perchannel=True, sym=sym, mse=False)
    out = w.clone()
    for c in range(0, w.shape[1], group_size):
        g = w[:, c:c + group_size]
        q.find_params(g, weight=True)
        out[:, c:c + group_size] = quant.quantize(g, q.scale, q.zero, q.maxq)
    return out


# Name suffix in the data file, the reference's fasterquant options (actorder, static_groups).
VARIANTS = (("", False, False), ("_act", True, False), ("_act_static", True, True))


def reference_gptq(gptq, quant, w, x, sym, seqlen, actorder=False, static_groups=False):
    """The reference's per-layer sequence of llama.py; returns (W^, fasterquant seconds, loss)."""
    import torch

    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    layer.weight.data = w.clone()
    g = gptq.GPTQ(layer)
    g.quantizer = quant.Quantizer()
    g.quantizer.configure(4, perchannel=True, sym=sym, mse=False)
    for r in range(0, x.shape[0], seqlen):
        inp = x[r:r + seqlen].unsqueeze(0)
        g.add_batch(inp, layer(inp))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        t0 = time.perf_counter()
        g.fasterquant(blocksize=128, percdamp=.01, groupsize=128, actorder=actorder,
                      static_groups=static_groups)
        seconds = time.perf_counter() - t0
    m = re.search(r"error ([-+0-9.eE]+|nan|inf)", printed.getvalue())
    loss = float(m.group(1)) if m else float("nan")
    return layer.weight.data.clone(), seconds, loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="gptq_reference_data.safetensors (qtool_gptq_reference_data)")
    ap.add_argument("--reference", required=True, help="checkout of IST-DASLab/gptq")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of the reference GPTQ; its time is the fastest")
    ap.add_argument("--seqlen", type=int, default=2048,
                    help="rows of X per add_batch call (llama.py: one sequence of 2048 tokens)")
    ap.add_argument("--tolerance", type=float, default=0.02,
                    help="largest |qtool / reference - 1| of the GPTQ errors")
    ap.add_argument("--max-rtn-ratio", type=float, default=0.3,
                    help="largest qtool GPTQ error / reference RTN error")
    args = ap.parse_args()

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    gptq, quant = import_reference(args.reference)
    t = load_file(args.data)
    with safe_open(args.data, framework="pt") as f:
        metadata = f.metadata() or {}
    w, x = t["w"], t["x"]
    print(f"W {list(w.shape)}, X {list(x.shape)}, int4 g128, block 128, damp 0.01, "
          f"torch {torch.__version__}, {args.threads} threads")

    relative_output_error = output_error(x, w)
    step = 1e-4 * float(w.abs().max())  # far below any group's level spacing

    def other_levels(a, b):
        """Share of elements of a and b on different levels, and the rows holding them."""
        other = (a - b).abs() > step
        return float(other.double().mean()), int(other.any(1).sum())

    # Warm-up (thread pool, first LAPACK calls) so that the timed runs measure fasterquant alone.
    reference_gptq(gptq, quant, w[:128, :256].clone(), x[:, :256].contiguous(), True, args.seqlen)
    errors, agreement, failures = [], [], []
    for sym in (True, False):
        kind = "sym" if sym else "asym"
        rtn_ref = reference_rtn(quant, w, sym, 128)
        e_rtn_ref = relative_output_error(rtn_ref)
        e_rtn_q = relative_output_error(t[f"rtn_{kind}"])
        rtn_diff = float((rtn_ref != t[f"rtn_{kind}"]).double().mean())
        for suffix, actorder, static_groups in VARIANTS:
            name = f"gptq_{kind}{suffix}"
            label = f"{kind}{suffix}"

            def run(xs):
                return reference_gptq(gptq, quant, w, xs, sym, args.seqlen, actorder,
                                      static_groups)

            runs = [run(x) for _ in range(args.repeat)]
            gptq_ref, _, loss = runs[0]
            seconds = min(r[1] for r in runs)
            # The reference against itself with the rows of X reversed: H is the same matrix
            # summed in another order, so this is the spread float32 rounding alone produces.
            gptq_rev = run(x.flip(0).contiguous())[0]
            e_gptq_ref = relative_output_error(gptq_ref)
            e_gptq_rev = relative_output_error(gptq_rev)
            e_gptq_q = relative_output_error(t[name])
            ratio = e_gptq_q / e_gptq_ref
            errors.append(f"{label:15} {e_rtn_ref:10.4e} {e_gptq_ref:10.4e} {e_rtn_q:10.4e} "
                          f"{e_gptq_q:10.4e} {ratio:9.4f} {e_gptq_q / e_rtn_ref:8.4f}")
            q_share, q_rows = other_levels(t[name], gptq_ref)
            r_share, r_rows = other_levels(gptq_rev, gptq_ref)
            agreement.append(f"{label:15} {rtn_diff:9.2e} {q_share:9.2e} {q_rows:5d} "
                             f"{r_share:9.2e} {r_rows:5d} {e_gptq_rev / e_gptq_ref:9.4f} "
                             f"{seconds:8.2f}s {metadata.get(name + '_seconds', '?'):>9}s")
            print(f"{label}: reference fasterquant loss {loss:.6g}", flush=True)
            if abs(ratio - 1) > args.tolerance:
                failures.append(f"{label}: qtool GPTQ error {e_gptq_q:.4e} is not within "
                                f"{args.tolerance:.0%} of the reference's {e_gptq_ref:.4e}")
            if e_gptq_q > args.max_rtn_ratio * e_rtn_ref:
                failures.append(f"{label}: qtool GPTQ error {e_gptq_q:.4e} is above "
                                f"{args.max_rtn_ratio} x RTN's {e_rtn_ref:.4e}")
    print("\nrelative output error ||X W^T - X W^^T||^2 / ||X W^T||^2")
    print(f"{'grid, options':15} {'RTN ref':>10} {'GPTQ ref':>10} {'RTN qtool':>10} "
          f"{'GPTQ qtool':>10} {'qtool/ref':>9} {'GPTQ/RTN':>8}")
    print("\n".join(errors))
    print("\nagreement (share of elements on another level, rows holding them) and time")
    print(f"{'grid, options':15} {'RTN diff':>9} {'qtool':>9} {'rows':>5} {'ref rev':>9} "
          f"{'rows':>5} {'rev error':>9} {'ref time':>9} {'qtool time':>10}")
    print("\n".join(agreement))
    print("RTN diff: qtool RTN vs the reference's quantizer; qtool: qtool GPTQ vs reference GPTQ; "
          "ref rev: reference GPTQ with the rows of X reversed vs reference GPTQ (the float32 "
          "noise floor), rev error its error / the reference's; act: act-order, static: static "
          "groups; ref time: the reference's "
          "fasterquant; qtool time: its Gptq() (Hessian given) in qtool_gptq_reference_data")
    for f in failures:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
