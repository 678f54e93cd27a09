#!/usr/bin/env python3
"""Compares two builds of qtool_bench in one run: before and after a change.

Runs the two binaries in alternation, ROUNDS times each (A, B, A, B, ...), so that both see the
same machine state, and reports per benchmark the median time of each, the ratio B/A, and the
noise: the spread of A's own rounds (max/min), below which a ratio means nothing.

  bench/ab_compare.py OLD/qtool_bench NEW/qtool_bench --filter 'BM_Rtn|Kernel|BM_Gptq' \
      --rounds 5 --json ab.json
"""
import argparse
import json
import statistics
import subprocess
import sys


def run(binary, filter_, min_time):
    out = subprocess.run(
        [binary, f"--benchmark_filter={filter_}", f"--benchmark_min_time={min_time}",
         "--benchmark_format=json"],
        check=True, capture_output=True, text=True).stdout
    times = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration":
            continue
        times[b["name"]] = b["real_time"] * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[
            b["time_unit"]]
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--filter", default=".")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", default="0.2", help="seconds (a plain number)")
    p.add_argument("--json", help="write the table as JSON here")
    a = p.parse_args()
    runs = {"before": [], "after": []}
    for r in range(a.rounds):
        for side, binary in (("before", a.before), ("after", a.after)):
            runs[side].append(run(binary, a.filter, a.min_time))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    names = [n for n in runs["before"][0] if all(n in t for t in runs["before"] + runs["after"])]
    rows = []
    for n in names:
        before = [t[n] for t in runs["before"]]
        after = [t[n] for t in runs["after"]]
        rows.append({
            "name": n,
            "before_s": statistics.median(before),
            "after_s": statistics.median(after),
            "ratio": statistics.median(after) / statistics.median(before),
            "noise": max(before) / min(before),
        })
    only = sorted(set(runs["before"][0]) ^ set(runs["after"][0]))
    print(f"{'benchmark':58} {'before':>10} {'after':>10} {'after/before':>12} {'noise':>6}")
    for r in rows:
        print(f"{r['name'][:58]:58} {r['before_s'] * 1e3:9.3f}ms {r['after_s'] * 1e3:9.3f}ms "
              f"{r['ratio']:12.3f} {r['noise']:6.2f}")
    ratios = [r["ratio"] for r in rows]
    if ratios:
        print(f"geometric mean of after/before over {len(rows)} benchmarks: "
              f"{statistics.geometric_mean(ratios):.3f}")
    if only:
        print("in one build only (not compared): " + ", ".join(only))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": a.rounds, "rows": rows, "one_side_only": only}, f, indent=1)


if __name__ == "__main__":
    main()
