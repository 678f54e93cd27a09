#!/usr/bin/env bash
# Speed of `qtool convert` on SmolLM2-135M INT4 (g128: qtool <-> GPTQ; g64: compressed-tensors,
# whose groups must divide the 576 columns), each conversion beside `cat` of its input from the
# page cache in the same minute, beside `cp` of its input into the output's directory (from the
# page cache into the page cache, nothing on the device yet: the least any tool that writes its
# output takes), and beside the device's ceiling for its output: writing as many bytes with direct
# I/O as qtool writes them (8 MB blocks, three dd processes, one per third).
# Prints, per conversion, the best of RUNS runs of each: convert wall and CPU time, cat's wall
# time, the ratio cat / convert (1 or more: convert keeps up with reading its input from the page
# cache), cp's wall time and cat / cp, and the write ceiling's time with convert / ceiling.
# Usage: bench/convert_speed.sh [QTOOL] [SMOLLM2_F32_DIR] [WORK_DIR]
#   QTOOL defaults to build/qtool; SMOLLM2_F32_DIR to ~/.cache/qtool/smollm2-135m-f32 (made by
#   ../shared/models/smollm2-135m/materialize.py, as tests/interop/check_export.py makes it);
#   WORK_DIR to build/convert-bench (about 1.2 GB). RUNS (environment) defaults to 3.
set -euo pipefail
cd "$(dirname "$0")/.."
qtool=${1:-build/qtool}
model=${2:-$HOME/.cache/qtool/smollm2-135m-f32}
work=${3:-build/convert-bench}
runs=${RUNS:-3}
[ -f "$model/model.safetensors" ] || { echo "no $model/model.safetensors" >&2; exit 2; }
mkdir -p "$work"
[ -d "$work/q128" ] || "$qtool" quantize "$model" -o "$work/q128" --bits 4 --group 128 -q
[ -d "$work/q64" ] || "$qtool" quantize "$model" -o "$work/q64" --bits 4 --group 64 -q
[ -d "$work/gptq128" ] || "$qtool" convert "$work/q128" -o "$work/gptq128" --output-format gptq -q
[ -d "$work/gptq64" ] || "$qtool" convert "$work/q64" -o "$work/gptq64" --output-format gptq -q
[ -d "$work/ct64" ] ||
  "$qtool" convert "$work/q64" -o "$work/ct64" --output-format compressed-tensors -q

now() { date +%s.%N; }
best() { sort -g | head -n 1; }
printf '| conversion | convert wall s | convert CPU s | cat IN s | cat / convert | cp IN s | cat / cp '
printf '| write ceiling s | convert / ceiling |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
while read -r name in fmt; do
  conv=() cpu=() cats=() cps=() ceil=()
  for _ in $(seq "$runs"); do
    cat "$work/$in"/*.safetensors >/dev/null  # into the page cache
    t0=$(now)
    cat "$work/$in"/*.safetensors >/dev/null
    t1=$(now)
    cats+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
    rm -rf "$work/cp"
    mkdir -p "$work/cp"
    t0=$(now)
    cp "$work/$in"/*.safetensors "$work/cp/"
    t1=$(now)
    cps+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
    rm -rf "$work/cp"
    rm -rf "$work/out"
    /usr/bin/time -f '%e %U %S' -o "$work/time.txt" \
      "$qtool" convert "$work/$in" -o "$work/out" --output-format "$fmt" -q
    read -r wall user sys <"$work/time.txt"
    conv+=("$wall")
    cpu+=("$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')")
    bytes=$(cat "$work/out"/*.safetensors | wc -c)
    blocks=$(((bytes + 8388607) / 8388608))
    rm -rf "$work/out" "$work/ceiling"
    t0=$(now)
    for part in 0 1 2; do
      first=$((blocks * part / 3))
      dd if=/dev/zero of="$work/ceiling" bs=8M seek=$first \
        count=$((blocks * (part + 1) / 3 - first)) oflag=direct conv=notrunc status=none &
    done
    wait
    t1=$(now)
    rm -f "$work/ceiling"
    ceil+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
  done
  w=$(printf '%s\n' "${conv[@]}" | best)
  c=$(printf '%s\n' "${cpu[@]}" | best)
  k=$(printf '%s\n' "${cats[@]}" | best)
  p=$(printf '%s\n' "${cps[@]}" | best)
  d=$(printf '%s\n' "${ceil[@]}" | best)
  ratio=$(awk -v k="$k" -v w="$w" 'BEGIN {printf "%.2f", k / w}')
  cp_ratio=$(awk -v k="$k" -v p="$p" 'BEGIN {printf "%.2f", k / p}')
  ceil_ratio=$(awk -v w="$w" -v d="$d" 'BEGIN {printf "%.2f", w / d}')
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$w" "$c" "$k" "$ratio" "$p" \
    "$cp_ratio" "$d" "$ceil_ratio"
done <<'LIST'
qtool-int4-g128->gptq q128 gptq
gptq-g128->qtool gptq128 qtool
qtool-int4-g64->compressed-tensors q64 compressed-tensors
gptq-g64->compressed-tensors gptq64 compressed-tensors
compressed-tensors-g64->qtool ct64 qtool
qtool->qtool-(byte-copy) q128 qtool
LIST
