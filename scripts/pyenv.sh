#!/usr/bin/env bash
# Makes (once) the Python environment of the reference readers and tokenizers that the interop
# checks run against, from tests/interop/requirements.txt (or the requirements file given as the
# argument, for a tool that pins other versions), and prints its interpreter's path.
# The environment is kept under ~/.cache/qtool, named by the requirements' hash, so a machine
# that has made it once reuses it, and a changed requirements file makes a new one.
# QTOOL_VENV names the folder instead (for the default requirements only).
set -euo pipefail
cd "$(dirname "$0")/.."
req=${1:-tests/interop/requirements.txt}
hash=$(sha256sum "$req" | cut -c1-16)
venv="$HOME/.cache/qtool/venv-$hash"
if [ $# -eq 0 ]; then venv="${QTOOL_VENV:-$venv}"; fi
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "pyenv: making $venv from $req" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
