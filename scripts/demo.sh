#!/usr/bin/env bash
# Sets up, builds qtool (Release) and quantises the embedded stories260K model to INT4 (groups of
# 32), printing the per-tensor error report. Extra arguments go to `qtool quantize`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target qtool_cli
build/qtool quantize examples/models/stories260K -o build/demo/stories260K-int4 --bits 4 --group 32 \
  --force "$@"
