#!/usr/bin/env bash
# Re-records tests/golden/golden_hashes.json from the test binary of a build (default: build):
# the portable section and the section of every kernel family this CPU runs are cleared, then the
# golden test runs once per family in record mode (QTOOL_GOLDEN_RECORD=1), scalar first. Sections
# of families this CPU lacks are kept as they were. A portable case that comes out different under
# two families fails the recording.
#   bash tests/golden/record.sh [BUILD_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
file=$root/tests/golden/golden_hashes.json
families=()
for isa in scalar avx2 avx512 neon; do
  if QTOOL_ISA=$isa "$build/qtool" --version >/dev/null 2>&1; then families+=("$isa"); fi
done
[[ -f $file ]] || echo '{}' >"$file"
python3 - "$file" portable "${families[@]}" <<'PY'
import json, sys
path = sys.argv[1]
data = json.load(open(path))
for section in sys.argv[2:]:
    data.pop(section, None)
json.dump(data, open(path, "w"), indent=1)
PY
for isa in "${families[@]}"; do
  echo "recording kernel family $isa"
  QTOOL_ISA=$isa QTOOL_GOLDEN_RECORD=1 "$build/tests/qtool_tests" --gtest_filter='Quantize/GoldenOutput.*' \
    --gtest_brief=1
done
