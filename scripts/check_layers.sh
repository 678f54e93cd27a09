#!/usr/bin/env bash
# Fails when a header or source of the library includes a layer above its own (docs/ARCHITECTURE.md):
# core → format → kernels → quant → io → pipeline → model → solvers, the CLI (tools/) on top.
# A file's layer is its folder under include/qtool/ or src/; include/qtool/kernels.hpp is the
# kernels' and include/qtool/quant.hpp the quant layer's header; include/qtool/qtool.hpp is the
# umbrella of them all. Prints each upward include as FILE:LINE: LAYER includes HIGHER-LAYER.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=(core format kernels quant io pipeline model solvers)
rank() {
  local i
  for i in "${!layers[@]}"; do
    if [ "${layers[$i]}" = "$1" ]; then
      echo "$i"
      return
    fi
  done
  echo -1
}
# The layer a path or an include names: qtool/LAYER/..., src/LAYER/..., qtool/kernels.hpp, ...
layer_of() {
  local p=${1#include/}
  p=${p#src/}
  p=${p#qtool/}
  case "$p" in
    kernels.hpp) echo kernels ;;
    quant.hpp) echo quant ;;
    */*) echo "${p%%/*}" ;;
    *) echo "" ;;
  esac
}
bad=0
checked=0
while IFS= read -r file; do
  [ "$file" = include/qtool/qtool.hpp ] && continue
  own=$(layer_of "$file")
  own_rank=$(rank "$own")
  if [ "$own_rank" -lt 0 ]; then
    echo "$file: in no layer (${layers[*]})"
    bad=1
    continue
  fi
  checked=$((checked + 1))
  while IFS=: read -r line inc; do
    # A relative include names a file beside this one.
    [[ "$inc" == qtool/* ]] || inc=$(realpath -m --relative-to=. "$(dirname "$file")/$inc")
    target=$(layer_of "$inc")
    [ -z "$target" ] && continue
    target_rank=$(rank "$target")
    if [ "$target_rank" -gt "$own_rank" ]; then
      echo "$file:$line: $own includes $target ($inc)"
      bad=1
    fi
  done < <(grep -n -o '^#include "[^"]*"' "$file" | sed 's/#include "\(.*\)"/\1/')
done < <(find include/qtool src -name '*.hpp' -o -name '*.cpp' | sort)
if [ "$bad" -ne 0 ]; then
  echo "includes that run up a layer (above)"
  exit 1
fi
echo "$checked files: no include runs up a layer"
