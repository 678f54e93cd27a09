#!/usr/bin/env bash
# Perplexity of SmolLM2-135M-Instruct and Gemma 3 270M on stories-eval.txt: base (float32), RTN,
# GPTQ and AWQ at INT4 and INT3, group 128 (the int codec's symmetric grid), GPTQ and AWQ
# calibrated on stories-calib.txt. Writes the table as Markdown to stdout and to
# WORK_DIR/ppl_table.md, and as JSON to WORK_DIR/ppl_table.json (one object per model and method:
# bits, perplexity, quantise wall seconds).
#
# The calibration text is about 1,000 tokens, so the default is 8 windows of 128 tokens (it is
# cut into windows without overlap; longer windows would repeat the same tokens). Each
# quantised checkpoint is kept in WORK_DIR with the command that made it; a rerun with the same
# command and binary reuses it (REUSE=0 to redo everything); runs started side by side on one
# WORK_DIR share the checkpoints.
#
# Usage: bench/ppl_table.sh [WORK_DIR]   (default build/ppl-table; about 2.5 GB free disk)
# Environment: QTOOL_SMOLLM2_DIR (default ~/.cache/qtool/smollm2-135m-f32, materialised from
# ../shared/models/smollm2-135m when absent), QTOOL_GEMMA3_DIR (default
# ~/.cache/qtool/gemma3-270m-f32, made by tests/interop/check_gemma3_270m.py),
# MODELS (default "smollm2 gemma3"), BITS (default "4 3"), METHODS (default "rtn gptq awq"),
# NSAMPLES (8), SEQLEN (128), EVAL_TEXT, CALIB_TEXT, QTOOL (a qtool binary to use instead of
# building build/qtool), QUANTIZE=0 (tabulate only the checkpoints WORK_DIR holds; the others are
# "n/m" in the table and null in the JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-build/ppl-table}
mkdir -p "$work"
work=$(cd "$work" && pwd)
eval_text=${EVAL_TEXT:-../shared/data/stories-eval.txt}
calib_text=${CALIB_TEXT:-../shared/data/stories-calib.txt}
nsamples=${NSAMPLES:-8}
seqlen=${SEQLEN:-128}
models=(${MODELS:-smollm2 gemma3})
bits_list=(${BITS:-4 3})
methods=(${METHODS:-rtn gptq awq})
reuse=${REUSE:-1}
quantize=${QUANTIZE:-1}

if [ -z "${QTOOL:-}" ]; then
  cmake --build build --target qtool_cli >/dev/null
fi
qtool=${QTOOL:-$(pwd)/build/qtool}
binary_id=$(sha256sum "$qtool" | cut -c1-16)

model_dir() {  # NAME -> checkpoint folder, made when absent
  case $1 in
    smollm2)
      local d=${QTOOL_SMOLLM2_DIR:-$HOME/.cache/qtool/smollm2-135m-f32}
      if [ ! -f "$d/model.safetensors" ]; then
        rm -rf "$d.partial" && mkdir -p "$(dirname "$d")"
        "$(bash scripts/pyenv.sh)" ../shared/models/smollm2-135m/materialize.py "$d.partial" >&2
        mv "$d.partial" "$d"
      fi
      echo "$d"
      ;;
    gemma3)
      if [ -n "${QTOOL_GEMMA3_DIR:-}" ]; then
        echo "$QTOOL_GEMMA3_DIR"
      else
        HF_HUB_OFFLINE=1 "$(bash scripts/pyenv.sh)" tests/interop/check_gemma3_270m.py \
          "$qtool" "$eval_text" --materialize-only | tail -1
      fi
      ;;
    *)
      echo "unknown model $1 (smollm2, gemma3)" >&2
      return 2
      ;;
  esac
}

# Context 512, as the transformers reference perplexities (the eval text is one window).
ppl() { "$qtool" eval "$1" --text "$eval_text" --ctx 512 | awk '/^ppl/ {print $2}'; }

json_rows=()
md="| model | bits | base | RTN | GPTQ | AWQ |
| --- | --- | --- | --- | --- | --- |"
for m in "${models[@]}"; do
  dir=$(model_dir "$m")
  base=$(ppl "$dir")
  json_rows+=("{\"model\": \"$m\", \"method\": \"base\", \"bits\": 32, \"ppl\": $base}")
  for b in "${bits_list[@]}"; do
    declare -A cell=([rtn]="" [gptq]="" [awq]="")
    for meth in "${methods[@]}"; do
      out=$work/$m-$meth-int$b
      args=(quantize "$dir" -o "$out" --force --bits "$b" --group 128 --method "$meth")
      if [ "$meth" != rtn ]; then
        args+=(--calib "$calib_text" --nsamples "$nsamples" --seqlen "$seqlen")
      fi
      stamp="$binary_id ${args[*]}"
      secs=null
      # Several runs may fill one WORK_DIR at once (e.g. MODELS or BITS split between them): one
      # quantises a checkpoint while the others wait for it and reuse it.
      exec {lock}>"$out.lock"
      flock "$lock"
      if [ "$reuse" = 1 ] && [ -f "$out.cmd" ] && [ "$(head -1 "$out.cmd")" = "$stamp" ]; then
        secs=$(sed -n 2p "$out.cmd")
      elif [ "$quantize" = 0 ]; then
        exec {lock}>&-
        cell[$meth]="n/m"
        json_rows+=("{\"model\": \"$m\", \"method\": \"$meth\", \"bits\": $b, \"group\": 128, \"ppl\": null}")
        echo "$m int$b $meth: not measured (no checkpoint in $work)" >&2
        continue
      else
        rm -f "$out.cmd"
        t0=$(date +%s.%N)
        "$qtool" "${args[@]}" --json "$out.report.json" >"$out.log" 2>&1 || {
          tail -20 "$out.log" >&2
          exit 1
        }
        secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
        printf '%s\n%s\n' "$stamp" "$secs" >"$out.cmd"
      fi
      exec {lock}>&-
      p=$(ppl "$out")
      cell[$meth]=$p
      json_rows+=("{\"model\": \"$m\", \"method\": \"$meth\", \"bits\": $b, \"group\": 128, \"ppl\": $p, \"quantize_s\": $secs}")
      echo "$m int$b $meth: ppl $p (${secs} s)" >&2
    done
    md+="
| $m | INT$b-g128 | $base | ${cell[rtn]} | ${cell[gptq]} | ${cell[awq]} |"
    unset cell
  done
done

{
  echo "{\"eval_text\": \"$(basename "$eval_text")\", \"calib_text\": \"$(basename "$calib_text")\","
  echo " \"nsamples\": $nsamples, \"seqlen\": $seqlen, \"rows\": ["
  for i in "${!json_rows[@]}"; do
    sep=","
    [ "$i" = $((${#json_rows[@]} - 1)) ] && sep=""
    echo "  ${json_rows[$i]}$sep"
  done
  echo "]}"
} >"$work/ppl_table.json"
echo "$md" | tee "$work/ppl_table.md"
