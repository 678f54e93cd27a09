#!/usr/bin/env bash
# Perplexity table of the quantisation methods on the shared models: calibrated on
# stories-calib.txt (32 samples of 128 tokens), evaluated on stories-eval.txt. RTN is the int
# codec's symmetric round-to-nearest; HQQ is asymmetric by construction.
#
#   bench/gptq_quality_table.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
work=${2:-/tmp/qtool-quality}
shared=${QTOOL_SHARED_DIR:-$here/../shared}
q=$build/qtool
calib=$shared/data/stories-calib.txt
eval_text=$shared/data/stories-eval.txt
mkdir -p "$work"

ppl() { "$q" eval "$1" --text "$eval_text" | awk '/^ppl/ {print $2}'; }
quant() {  # quant NAME ARGS...: quantise into $work/NAME, print its perplexity
  local name=$1
  shift
  "$q" quantize "$model" -o "$work/$name" --force -q --calib "$calib" --nsamples 32 --seqlen 128 "$@"
  ppl "$work/$name"
}

printf "| model | format | FP | RTN | GPTQ | GPTQ act-order | AWQ | HQQ |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n"
for m in stories260K babyllama-tok105; do
  model=$shared/models/$m/hf
  fp=$(ppl "$model")
  for fmt in "4 32" "4 16" "3 32"; do
    set -- $fmt
    b=$1 g=$2
    rtn=$(quant rtn --bits $b --group $g)
    gptq=$(quant gptq --bits $b --group $g --method gptq)
    gptq_ao=$(quant gptq_ao --bits $b --group $g --method gptq --act-order)
    awq=$(quant awq --bits $b --group $g --method awq)
    hqq=$(quant hqq --bits $b --group $g --method hqq --asym)
    printf "| %s | INT%s-g%s | %s | %s | %s | %s | %s | %s |\n" $m $b $g $fp $rtn $gptq $gptq_ao $awq $hqq
  done
  w8a8=$(quant w8a8 --bits 8 --granularity channel --activations int8)
  sq=$(quant sq --method smoothquant)
  sq_auto=$(quant sq_auto --method smoothquant --alpha auto)
  printf "| %s | W8A8 (per-channel, per-token) | %s | plain %s | SmoothQuant %s | alpha auto %s | | |\n" \
    $m $fp $w8a8 $sq $sq_auto
done
