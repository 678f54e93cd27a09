#!/usr/bin/env bash
# Quality of GGUF quantisation on SmolLM2-135M, measured by llama.cpp itself, and the time and
# peak memory of writing a 1B-shaped model to Q4_K_M.
#
# For Q3_K_M, Q4_K_M, Q2_K and IQ4_XS: llama-quantize without and with an importance matrix
# (llama-imatrix's), qtool RTN, qtool with an importance matrix (qtool imatrix's) and qtool's
# GPTQ into GGUF (`--method gptq --output-format gguf`, reported "not available" when this build
# refuses it), and AWQ into GGUF for the types in AWQ_TYPES (default Q4_K_M; the same calibration). Each file's size, and llama-perplexity's KL divergence (mean, and 99th percentile)
# and perplexity against the F32 model (--kl-divergence-base, --kl-divergence) on the eval text.
# Both importance matrices come from the same calibration text (consecutive chunks of 256 tokens,
# BOS first: llama-imatrix's convention, `qtool imatrix --sequential`).
# Then a synthetic Llama of TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 22 layers,
# vocab 32000; F32) to Q4_K_M: qtool from the safetensors checkpoint, llama-quantize from qtool's
# F32 GGUF of the same weights; wall time and peak RSS from /usr/bin/time -v, one after the other.
#
# Usage: bench/gguf_quality.sh [WORK_DIR]   (default build/gguf-quality; about 12 GB free disk)
# Environment: QTOOL_SMOLLM2_DIR (default ~/.cache/qtool/smollm2-135m-f32, materialised from
# ../shared/models/smollm2-135m when absent), LLAMA_TOOLS (default: what
# tests/interop/build_llama_cpp_tools.sh builds), EVAL_TEXT, CALIB_TEXT, CTX (default 128),
# AWQ_TYPES (space separated, default "Q4_K_M"; "" for none), SKIP_SPEED=1 to leave the 1B timing
# out.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-build/gguf-quality}
mkdir -p "$work"
work=$(cd "$work" && pwd)
eval_text=${EVAL_TEXT:-../shared/data/stories-eval.txt}
calib_text=${CALIB_TEXT:-../shared/data/stories-calib.txt}
ctx=${CTX:-128}
types=(Q3_K_M Q4_K_M Q2_K IQ4_XS)
awq_types=" ${AWQ_TYPES-Q4_K_M} "

cmake --build build --target qtool_cli >/dev/null
qtool=$(pwd)/build/qtool
tools=${LLAMA_TOOLS:-$(bash tests/interop/build_llama_cpp_tools.sh)}
smollm2=${QTOOL_SMOLLM2_DIR:-$HOME/.cache/qtool/smollm2-135m-f32}
if [ ! -f "$smollm2/model.safetensors" ]; then
  rm -rf "$smollm2.partial" && mkdir -p "$(dirname "$smollm2")"
  "$(bash scripts/pyenv.sh)" ../shared/models/smollm2-135m/materialize.py "$smollm2.partial"
  mv "$smollm2.partial" "$smollm2"
fi

# llama.cpp runs on plain CPU buffers (-nr: no repacking into the AMX/interleaved layouts).
perplexity() {  # FILE -> "mean_kld p99_kld ppl"
  "$tools/llama-perplexity" -m "$1" -f "$eval_text" -c "$ctx" -t 2 -nr \
    --kl-divergence-base "$work/base.kld" --kl-divergence >"$work/ppl.log" 2>&1 || {
    tail -20 "$work/ppl.log" >&2
    return 1
  }
  local kld p99 ppl
  kld=$(grep -m1 'Mean    KLD:' "$work/ppl.log" | awk '{print $3}' || true)
  p99=$(grep -m1 '99.0%   KLD:' "$work/ppl.log" | awk '{print $3}' || true)
  ppl=$(grep -m1 'Mean PPL(Q) ' "$work/ppl.log" | awk '{print $4}' || true)
  echo "$kld $p99 $ppl"
}

# Old outputs are removed first, so that no file of an earlier run is measured.
rm -f "$work"/*.gguf
f32="$work/smollm2-F32.gguf"
"$qtool" quantize "$smollm2" -o "$f32" --output-format gguf --gguf-type F32 --force -q
"$tools/llama-perplexity" -m "$f32" -f "$eval_text" -c "$ctx" -t 2 -nr \
  --kl-divergence-base "$work/base.kld" >"$work/base.log" 2>&1 || {
  tail -20 "$work/base.log" >&2
  exit 1
}
base_ppl=$(grep -o 'Final estimate: PPL = [0-9.]*' "$work/base.log" | awk '{print $5}' || true)
chunks=$(grep -o 'calculating perplexity over [0-9]* chunks' "$work/base.log" | awk '{print $4}' ||
  true)

"$tools/llama-imatrix" -m "$f32" -f "$calib_text" -o "$work/imatrix-llama.gguf" -c 256 -t 2 -nr \
  --no-ppl >"$work/imatrix-llama.log" 2>&1 || {
  tail -20 "$work/imatrix-llama.log" >&2
  exit 1
}
"$qtool" imatrix "$smollm2" --calib "$calib_text" --sequential --seqlen 256 --nsamples 1000 \
  -o "$work/imatrix-qtool.gguf" --force -q --threads 2

gptq_available=1
out="$work/probe.gguf"
if ! "$qtool" quantize "$smollm2" -o "$out" --output-format gguf --gguf-type Q4_K_M \
  --method gptq --calib "$calib_text" --nsamples 4 --seqlen 256 --force -q \
  >"$work/gptq-probe.log" 2>&1; then
  grep -q 'does not apply\|not available\|unknown' "$work/gptq-probe.log" && gptq_available=0
  [ "$gptq_available" = 0 ] || {
    cat "$work/gptq-probe.log" >&2
    exit 1
  }
fi
rm -f "$out"

table="$work/table.md"
{
  echo "SmolLM2-135M, llama-perplexity -c $ctx on $(basename "$eval_text") (F32 base PPL $base_ppl;" \
    "$chunks chunks of $ctx tokens, the second half of each scored)"
  echo
  echo "| type | quantiser | size (MB) | mean KLD | KLD p99 | PPL |"
  echo "| --- | --- | --- | --- | --- | --- |"
} >"$table"
row() {  # TYPE LABEL FILE
  local size r
  size=$(awk -v b="$(stat -c %s "$3")" 'BEGIN {printf "%.2f", b / 1e6}')
  r=($(perplexity "$3"))
  echo "| $1 | $2 | $size | ${r[0]} | ${r[1]} | ${r[2]} |" | tee -a "$table"
}
for t in "${types[@]}"; do
  q="$work/q.gguf"
  rm -f "$q"
  "$tools/llama-quantize" "$f32" "$q" "$t" 2 >"$work/quantize.log" 2>&1
  row "$t" "llama.cpp" "$q"
  "$tools/llama-quantize" --imatrix "$work/imatrix-llama.gguf" "$f32" "$q" "$t" 2 \
    >"$work/quantize.log" 2>&1
  row "$t" "llama.cpp + imatrix" "$q"
  rm -f "$q"
  "$qtool" quantize "$smollm2" -o "$q" --output-format gguf --gguf-type "$t" --force -q \
    --threads 2
  row "$t" "qtool RTN" "$q"
  rm -f "$q"
  "$qtool" quantize "$smollm2" -o "$q" --output-format gguf --gguf-type "$t" --force -q \
    --threads 2 --imatrix "$work/imatrix-qtool.gguf"
  row "$t" "qtool + imatrix" "$q"
  rm -f "$q"
  if [ "$gptq_available" = 1 ]; then
    "$qtool" quantize "$smollm2" -o "$q" --output-format gguf --gguf-type "$t" --force -q \
      --threads 2 --method gptq --calib "$calib_text" --nsamples 32 --seqlen 256
    row "$t" "qtool GPTQ" "$q"
  else
    echo "| $t | qtool GPTQ | not available | | | |" | tee -a "$table"
  fi
  rm -f "$q"
  if [[ "$awq_types" == *" $t "* ]]; then
    "$qtool" quantize "$smollm2" -o "$q" --output-format gguf --gguf-type "$t" --force -q \
      --threads 2 --method awq --calib "$calib_text" --nsamples 32 --seqlen 256
    row "$t" "qtool AWQ" "$q"
    rm -f "$q"
  fi
done

if [ "${SKIP_SPEED:-0}" != 1 ]; then
  cmake -S . -B build -DQTOOL_BUILD_BENCH=ON >/dev/null
  cmake --build build --target qtool_synth >/dev/null
  synth="$work/synth-1b"
  if [ ! -f "$synth/model.safetensors" ]; then
    build/bench/qtool_synth -o "$synth" --hidden 2048 --intermediate 5632 --layers 22 --heads 32 \
      --kv-heads 4 --vocab 32000 --dtype f32 --force
  fi
  rm -f "$work/synth-F32.gguf"
  "$qtool" quantize "$synth" -o "$work/synth-F32.gguf" --output-format gguf --gguf-type F32 \
    --force -q
  speed() {  # LABEL COMMAND...
    local label=$1
    shift
    rm -f "$work/synth-q.gguf"
    cat "$synth/model.safetensors" "$work/synth-F32.gguf" >/dev/null  # both in the page cache
    /usr/bin/time -v "$@" >"$work/speed.log" 2>&1
    local wall rss
    wall=$(grep 'Elapsed (wall clock)' "$work/speed.log" | awk '{print $NF}')
    rss=$(grep 'Maximum resident set size' "$work/speed.log" | awk '{printf "%.2f", $NF / 1048576}')
    echo "| $label | $wall | $rss | $(stat -c %s "$work/synth-q.gguf") |" | tee -a "$table"
  }
  {
    echo
    echo "1.1B-shaped synthetic Llama (F32, $(du -m "$synth/model.safetensors" | cut -f1) MB) to" \
      "Q4_K_M, 2 threads each"
    echo
    echo "| quantiser | wall (m:s) | peak RSS (GiB) | output bytes |"
    echo "| --- | --- | --- | --- |"
  } >>"$table"
  speed "qtool (safetensors F32)" "$qtool" quantize "$synth" -o "$work/synth-q.gguf" \
    --output-format gguf --gguf-type Q4_K_M -q --threads 2
  speed "llama-quantize (GGUF F32)" "$tools/llama-quantize" "$work/synth-F32.gguf" \
    "$work/synth-q.gguf" Q4_K_M 2
  rm -f "$work/synth-q.gguf"
fi
echo
cat "$table"
