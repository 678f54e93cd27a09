#!/usr/bin/env bash
# Installs the Debian packages qtool builds against. Idempotent: does nothing when all are present.
set -euo pipefail
pkgs=(cmake ninja-build g++ clang clang-format libclang-rt-14-dev libeigen3-dev libfmt-dev
      libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest libbenchmark-dev
      libsentencepiece-dev libre2-dev libpcre2-dev libutf8proc-dev pkg-config time ccache)
# A package counts only when installed for this machine's architecture (or for all): the Arm
# script installs some of the same -dev packages for arm64.
arch=$(dpkg --print-architecture)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status} ${Architecture}\n' "$p" 2>/dev/null |
    grep -qE "^install ok installed ($arch|all)$" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
