#!/usr/bin/env bash
# Runs tests/interop/check_llmcompressor.py in llm-compressor's own environment (not run in CI):
# made once from tests/interop/requirements-llmcompressor.txt under ~/.cache/qtool, named by the
# file's hash, as scripts/pyenv.sh makes the main one.
# Usage: tests/interop/check_llmcompressor.sh [QTOOL] [SHARED_DIR] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
req=tests/interop/requirements-llmcompressor.txt
hash=$(sha256sum "$req" | cut -c1-16)
venv="$HOME/.cache/qtool/venv-llmc-$hash"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "check_llmcompressor: making $venv from $req" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
"$venv/bin/python" tests/interop/check_llmcompressor.py "${1:-build/qtool}" "${2:-../shared}" \
  "${3:-build/interop/llmcompressor}"
