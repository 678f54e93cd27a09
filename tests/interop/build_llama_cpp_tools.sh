#!/usr/bin/env bash
# Builds llama.cpp's llama-quantize, llama-imatrix and llama-perplexity from the llama.cpp sources
# vendored in the llama-cpp-python sdist (the same llama.cpp that tests/interop/check_gguf_llama_cpp.py
# runs), once per version and machine, and prints the directory that holds the binaries:
#   ~/.cache/qtool/llama-cpp-tools/<version>/bin
# About 5 minutes on 2 idle cores. Needs pip (PyPI), cmake, ninja and a C++ compiler.
set -euo pipefail
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache=${QTOOL_CACHE:-$HOME/.cache/qtool}/llama-cpp-tools/$version
tools=(llama-quantize llama-imatrix llama-perplexity)
have_all() { for t in "${tools[@]}"; do [[ -x $cache/bin/$t ]] || return 1; done; }
if have_all; then
  echo "$cache/bin"
  exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" \
  -d "$work" >&2
tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
# Native code for this machine, as the llama-cpp-python wheel is built; shared libraries off so
# that the binaries can be moved into the cache.
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON >&2
cmake --build "$work/build" -j"${JOBS:-2}" --target "${tools[@]}" >&2
mkdir -p "$cache/bin.tmp"
for t in "${tools[@]}"; do cp "$work/build/bin/$t" "$cache/bin.tmp/"; done
rm -rf "$cache/bin"
mv "$cache/bin.tmp" "$cache/bin"
echo "$cache/bin"
