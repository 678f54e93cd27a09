#!/usr/bin/env bash
# Cross-compiles the library, the CLI and the kernel tests for AArch64 and runs them under
# qemu-aarch64: once on a CPU with the dot product extension (the NEON SDOT paths, qemu's "max")
# and once on a Cortex-A72 without it (the integer GEMMs then fall back to the reference).
# Idempotent: installs only missing Debian packages, reuses the build directory.
#   scripts/test-arm.sh [extra gtest args]     (build dir: $QTOOL_ARM_BUILD or build-arm64)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${QTOOL_ARM_BUILD:-$root/build-arm64}
jobs=${QTOOL_JOBS:-2}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
fi
pkgs=(g++-aarch64-linux-gnu qemu-user-static libc6:arm64 libstdc++6:arm64 libfmt-dev:arm64
      libgtest-dev:arm64 libeigen3-dev nlohmann-json3-dev libcli11-dev pkg-config cmake ninja-build)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-arm: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# libsentencepiece-dev, RE2, PCRE2 and utf8proc cannot be installed for two architectures at once
# (installing the arm64 one removes the host's), and pkg-config looks for the arm64 libraries in
# the build directory only, so their arm64 packages are unpacked there.
export QTOOL_ARM_DEPS="$build/deps/root"
if [ ! -f "$build/deps/.unpacked-3" ]; then
  mkdir -p "$build/deps/debs" "$QTOOL_ARM_DEPS"
  (cd "$build/deps/debs" &&
    apt-get download -qq libsentencepiece-dev:arm64 libsentencepiece0:arm64 libprotobuf-lite32:arm64 \
      libre2-dev:arm64 libre2-9:arm64 libpcre2-dev:arm64 libpcre2-8-0:arm64 libutf8proc-dev:arm64 \
      libutf8proc2:arm64)
  for deb in "$build"/deps/debs/*.deb; do dpkg-deb -x "$deb" "$QTOOL_ARM_DEPS"; done
  touch "$build/deps/.unpacked-3"
fi

cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchains/aarch64-linux-gnu.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DQTOOL_BUILD_TOOLS=ON -DQTOOL_BUILD_BENCH=OFF -DQTOOL_INSTALL=OFF \
  -DQTOOL_KERNEL_TESTS_ONLY=ON -DQTOOL_UNITY_TESTS=ON
# The CLI is built too, for its report of the CPU features and kernel paths.
cmake --build "$build" -j"$jobs" --target qtool_tests

# The kernel tests (every operation on scalar and NEON against the reference) and the half tests;
# the other suites need the models and a native qtool, so they run on the host only.
for cpu in max cortex-a72; do
  echo "test-arm: qemu -cpu $cpu"
  run=(qemu-aarch64-static -cpu "$cpu"
       -E LD_LIBRARY_PATH="$QTOOL_ARM_DEPS/usr/lib/aarch64-linux-gnu")
  "${run[@]}" "$build/qtool" --version
  "${run[@]}" "$build/tests/qtool_tests" "$@"
done
