#!/usr/bin/env bash
# Perplexity of RTN-GGUF and GPTQ-GGUF (qtool quantize --method gptq --output-format gguf) on
# stories-eval.txt, calibrated on stories-calib.txt: one line per type.
# Usage: scripts/gguf_gptq_quality.sh QTOOL MODEL WORK [TYPES...] (default Q4_K_M Q3_K_M Q2_K IQ4_XS)
# NSAMPLES and SEQLEN (default 128, 512) size the calibration.
set -euo pipefail
qtool=$1 model=$2 work=$3
shift 3
types=("$@")
[ $# -gt 0 ] || types=(Q4_K_M Q3_K_M Q2_K IQ4_XS)
shared=$(dirname "$0")/../../shared
calib=$shared/data/stories-calib.txt eval_text=$shared/data/stories-eval.txt
mkdir -p "$work"
ppl() {  # GGUF file -> perplexity (through an F32 checkpoint, which qtool eval reads)
  rm -rf "$1.dir"
  "$qtool" dequantize "$1" -o "$1.dir" >/dev/null
  "$qtool" eval "$1.dir" --tokenizer "$model/tokenizer.json" --text "$eval_text" \
    --json "$1.json" >/dev/null
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ppl"])' "$1.json"
  rm -rf "$1.dir" "$1.json"
}
echo "type rtn_bytes gptq_bytes ppl_rtn ppl_gptq"
for t in "${types[@]}"; do
  "$qtool" quantize "$model" -o "$work/rtn-$t.gguf" --output-format gguf --gguf-type "$t" --force -q
  "$qtool" quantize "$model" -o "$work/gptq-$t.gguf" --output-format gguf --gguf-type "$t" \
    --method gptq --calib "$calib" --nsamples "${NSAMPLES:-128}" --seqlen "${SEQLEN:-512}" --force -q
  echo "$t $(stat -c %s "$work/rtn-$t.gguf") $(stat -c %s "$work/gptq-$t.gguf")" \
    "$(ppl "$work/rtn-$t.gguf") $(ppl "$work/gptq-$t.gguf")"
done
