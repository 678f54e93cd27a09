#!/usr/bin/env bash
# Runs tests/interop/check_llmcompressor.py in llm-compressor's own environment (not run in CI):
# made once by scripts/pyenv.sh from tests/interop/requirements-llmcompressor.txt, cached under
# ~/.cache/qtool by the file's hash as the main one is.
# Usage: tests/interop/check_llmcompressor.sh [QTOOL] [SHARED_DIR] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(bash scripts/pyenv.sh tests/interop/requirements-llmcompressor.txt)
HF_HUB_OFFLINE=1 "$py" tests/interop/check_llmcompressor.py "${1:-build/qtool}" \
  "${2:-../shared}" "${3:-build/interop/llmcompressor}"
