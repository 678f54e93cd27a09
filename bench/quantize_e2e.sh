#!/usr/bin/env bash
# End-to-end benchmark of `qtool quantize` INT4-g128 on a synthetic Llama-shaped bf16 checkpoint
# (about 1.5 GB: hidden 2048, intermediate 5632, 14 layers, vocab 32000), read from the page cache.
# Reports input GB/s, wall time and peak RSS against the largest tensor, and two ceilings, both
# as GB/s of the run's input. The processor's: the input over the run's CPU time (user + system)
# shared by the cores, the rate if no core ever waited. The device's, timed in the same minute
# after each run: writing as many bytes as the output has with direct I/O as qtool writes (8 MB
# blocks, three writes in flight: three dd processes, one per third of the file).
# Usage: bench/quantize_e2e.sh [WORK_DIR]   (default: build/e2e; needs about 2.2 GB free)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-build/e2e}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target qtool_cli qtool_synth >/dev/null
mkdir -p "$work"
if [ ! -f "$work/synth/model.safetensors" ]; then
  build/bench/qtool_synth -o "$work/synth" --force
fi
cat "$work/synth/model.safetensors" >/dev/null  # into the page cache
# Each run writes a fresh output directory: replacing an existing one (--force) would add the
# removal of the old 590 MB file to the timed run.
for run in 1 2 3 4 5; do
  rm -rf "$work/q"
  /usr/bin/time -f '%e %M %U %S' -o "$work/time.txt" \
    build/qtool quantize "$work/synth" -o "$work/q" --bits 4 --group 128 \
    --json "$work/report.json" >"$work/report.txt"
  read -r wall rss_kb user sys <"$work/time.txt"
  gbps=$(grep -o '"input_gb_per_s": [0-9.e+-]*' "$work/report.json" | awk '{print $2}')
  largest=$(grep -o '"largest_tensor_bytes": [0-9]*' "$work/report.json" | awk '{print $2}')
  bytes_in=$(grep -o '"bytes_in": [0-9]*' "$work/report.json" | head -n 1 | awk '{print $2}')
  bytes_out=$(grep -o '"bytes_out": [0-9]*' "$work/report.json" | head -n 1 | awk '{print $2}')
  rm -f "$work/ceiling"
  blocks=$(((bytes_out + 8388607) / 8388608))
  start=$(date +%s.%N)
  for part in 0 1 2; do
    first=$((blocks * part / 3))
    dd if=/dev/zero of="$work/ceiling" bs=8M seek=$first count=$((blocks * (part + 1) / 3 - first)) \
      oflag=direct conv=notrunc status=none &
  done
  wait
  end=$(date +%s.%N)
  rm -f "$work/ceiling"
  ceiling=$(awk -v b="$bytes_in" -v s="$start" -v e="$end" 'BEGIN {printf "%.2f", b / (e - s) / 1e9}')
  cpu=$(awk -v b="$bytes_in" -v u="$user" -v s="$sys" -v c="$(nproc)" \
    'BEGIN {printf "%.2f s, ceiling %.2f", u + s, b / ((u + s) / c) / 1e9}')
  echo "run $run: wall ${wall} s, quantize ${gbps} GB/s of input (device ceiling ${ceiling};" \
    "CPU time ${cpu}), peak RSS" \
    "$((rss_kb / 1024)) MiB, largest tensor $((largest / 1048576)) MiB (bound: 2x + 200 MiB =" \
    "$((2 * largest / 1048576 + 200)) MiB)"
done
tail -n 4 "$work/report.txt"
