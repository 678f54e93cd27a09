#!/usr/bin/env bash
# Byte-level BPE tokenisation speed, one core: qtool (bench/bench_tokenizer.cpp) and Hugging Face
# tokenizers (the reference, from scripts/pyenv.sh) on the same English text with SmolLM2's
# tokenizer.json, in the same run. Both rates are bytes per CPU second of the one thread (a loaded
# machine inflates wall time, not CPU time). Needs a build with -DQTOOL_BUILD_BENCH=ON in build/.
# usage: bench/tokenizer_speed.sh [TEXT]   (default: English prose: ../shared/data's stories and
# the licence texts of /usr/share/common-licenses)
set -euo pipefail
cd "$(dirname "$0")/.."
tok=../shared/models/smollm2-135m/tokenizer.json
text=${1:-}
if [ -z "$text" ]; then
  text=$(mktemp)
  trap 'rm -f "$text"' EXIT
  cat ../shared/data/*.txt /usr/share/common-licenses/{GPL-3,LGPL-2.1,Apache-2.0,MPL-2.0} \
    /usr/share/common-licenses/{GFDL-1.3,Artistic} >"$text"
fi
echo "text: $(wc -c <"$text") bytes"
QTOOL_BENCH_TEXT="$text" QTOOL_SHARED_DIR="$PWD/../shared" taskset -c 0 build/bench/qtool_bench \
  --benchmark_filter=BM_TokenizeByteLevelBpe --benchmark_min_time=2 --benchmark_repetitions=3 2>&1 | grep -E "BM_"
py=$(bash scripts/pyenv.sh)
RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false taskset -c 0 "$py" - "$tok" "$text" <<'PY'
import sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
n = len(text.encode("utf-8"))
# tokenizers tracks offsets through every split, which costs it more on one long string than on
# lines: it is timed both ways.
lines = text.splitlines(keepends=True)
for name, run in [("whole text", lambda: tok.encode(text, add_special_tokens=False).ids),
                  ("line by line", lambda: [tok.encode(l, add_special_tokens=False).ids
                                            for l in lines])]:
    run()  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()  # CPU time, as Google Benchmark's rate uses
        run()
        best = min(best, time.process_time() - t0)
    print(f"tokenizers {__import__('tokenizers').__version__}, {name}: {n / best / 1e6:.1f} MB/s "
          f"(best of 3)")
PY
