#!/usr/bin/env bash
# Sets up, builds qtool (Release) and quantises the embedded stories260K model to INT4 (groups of
# 32), printing the per-tensor error report; then measures what the quantisation cost on a short
# story (perplexity, KL divergence and top-1 agreement against the original model).
# Extra arguments go to `qtool quantize` (e.g. --bits 3, --format nf4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target qtool_cli
model=examples/models/stories260K
mkdir -p build/demo
build/qtool quantize "$model" -o build/demo/stories260K-q --bits 4 --group 32 --force "$@"
echo
build/qtool eval build/demo/stories260K-q --ref "$model" --text examples/data/story.txt
