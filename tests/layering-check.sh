#!/usr/bin/env bash
# The layering (issue 20, docs/architecture.md): the core knows the device
# registry, never a backend.  Fails when a file under core/ includes a
# header of kernels/, calls a function that kernels/ defines, or tests
# DP_HAVE_CUDA.  The names are read from kernels/ itself, so a new kernels/
# header or function is covered without editing this script.
#   tests/layering-check.sh SOURCE_DIR
set -euo pipefail
src=$1
cd "$src"

headers=$(find kernels -name '*.h' -o -name '*.cuh' | xargs -n1 basename | sort -u)
# Functions defined in kernels/ (a definition starts a line: "name (").
functions=$(grep -hoE '^[a-z_][a-z0-9_]* \(' kernels/src/*.c kernels/src/*.cu | sed 's/ ($//' | sort -u)
[ -n "$headers" ] && [ -n "$functions" ] || { echo "layering: found no kernels/ headers or functions"; exit 1; }
# A function named like a core one is the core's own; skip those defined in core/.
core_functions=$(grep -rhoE '^[a-z_][a-z0-9_]* \(' core --include=*.c | sed 's/ ($//' | sort -u)
functions=$(comm -23 <(echo "$functions") <(echo "$core_functions"))

bad=0
for h in $headers; do
  if grep -rnE "#\s*include\s*[<\"]([^\">]*/)?$h[\">]" core; then
    echo "layering: core/ includes kernels/ header $h (above)"; bad=1
  fi
done
for f in $functions; do
  if grep -rnE "\\b$f\\s*\\(" core --include=*.c --include=*.h | grep -vE '^\S+:[0-9]+:\s*(/?\*|//)'; then
    echo "layering: core/ calls $f, defined in kernels/ (above)"; bad=1
  fi
done
if grep -rn 'DP_HAVE_CUDA\|kernels' core --include=meson.build; then
  echo "layering: core/'s build refers to kernels/ or DP_HAVE_CUDA (above)"; bad=1
fi
if grep -rnw 'DP_HAVE_CUDA' core; then
  echo "layering: core/ tests DP_HAVE_CUDA (above): ask the device registry instead"; bad=1
fi
n_h=$(echo "$headers" | wc -w); n_f=$(echo "$functions" | wc -w)
if [ $bad -eq 0 ]; then
  echo "layering: core/ includes none of kernels/' $n_h headers and calls none of its $n_f functions"
fi
exit $bad
