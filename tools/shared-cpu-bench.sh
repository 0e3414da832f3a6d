#!/usr/bin/env bash
# Shared-CPU benchmark (issue 17): the wall time of one dualparal-generate
# run with the embedded model (81 frames, 10 steps by default) on an idle
# machine and beside busy processes (`yes > /dev/null`, one per CPU by
# default), alternating, REPEAT times; prints every time, the medians and
# the ratio busy / idle of the medians and of the best times.  Run from the repository root:
#
#   tools/shared-cpu-bench.sh [BUILD_DIR] [-- EXTRA dualparal-generate OPTIONS]
#
# BUILD_DIR defaults to build-cpu.  Environment:
#   REPEAT=N    rounds (default 5); each round is one idle and one busy run
#   BUSY=N      busy processes beside the busy run (default 2)
#   GEN_ARGS    the generate options (default: the issue's case,
#               -p "a red ball moving to the right" --steps 10)
#   PIPELINE=1  time a GStreamer pipeline instead, the element beside the
#               encoder it feeds: dualparalsrc (81 frames, 10 steps, the
#               same prompt, plus the properties in ELEMENT_PROPS, e.g.
#               "threads=1") ! videoconvert ! x264enc ! fakesink, with
#               GST_PLUGIN_PATH=BUILD_DIR/gst
# Anything else in the environment (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS)
# reaches dualparal-generate unchanged.  To compare two builds under the
# same load, alternate them (one round of each in turn) rather than run
# this twice.
# Other users of the machine make both figures noisy: compare medians,
# and only figures of one call.
set -u
BUILD=build-cpu
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  BUILD=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
REPEAT=${REPEAT:-5}
BUSY=${BUSY:-2}
GEN=$BUILD/tools/dualparal-generate
if [ "${PIPELINE:-0}" = 1 ]; then
  if [ ! -e "$BUILD/gst/libgstdualparal.so" ]; then
    echo "shared-cpu-bench: $BUILD/gst/libgstdualparal.so not found" >&2
    exit 2
  fi
  export GST_PLUGIN_PATH=$PWD/$BUILD/gst
  [ "${BUILD#/}" != "$BUILD" ] && export GST_PLUGIN_PATH=$BUILD/gst
elif [ ! -x "$GEN" ]; then
  echo "shared-cpu-bench: $GEN not found (build first: ninja -C $BUILD)" >&2
  exit 2
fi
OUTF=$(mktemp --suffix=.y4m)
BUSY_PIDS=()
cleanup () {
  for p in "${BUSY_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  rm -f "$OUTF"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One run; prints its wall time and the CPU time it used (user + system),
# in seconds.
run_once () {
  local TIMEFORMAT='%3R %3U %3S' t
  if [ "${PIPELINE:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    t=$( { time gst-launch-1.0 -q dualparalsrc prompt="a red ball moving to the right" num-frames=81 \
             steps=10 ${ELEMENT_PROPS:-} ! videoconvert ! x264enc ! fakesink > /dev/null 2>&3; } 3>&2 2>&1 ) || return 1
  elif [ -n "${GEN_ARGS:-}" ]; then
    t=$( { time eval "\"$GEN\" $GEN_ARGS -q -o \"$OUTF\" \"\$@\"" 2>&3; } 3>&2 2>&1 ) || return 1
  else
    t=$( { time "$GEN" -p "a red ball moving to the right" --steps 10 -q -o "$OUTF" "$@" 2>&3; } 3>&2 2>&1 ) || return 1
  fi
  awk '{ printf "%.3f %.3f\n", $1, $2 + $3 }' <<< "$t"
}

median () {
  sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs available, load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "${PIPELINE:-0}" = 1 ]; then
  echo "# gst-launch-1.0 dualparalsrc prompt=\"a red ball moving to the right\" num-frames=81 steps=10 ${ELEMENT_PROPS:-} ! videoconvert ! x264enc ! fakesink (GST_PLUGIN_PATH=$GST_PLUGIN_PATH)"
else
  echo "# $GEN ${GEN_ARGS:--p \"a red ball moving to the right\" --steps 10} $*"
fi
echo "# OMP_NUM_THREADS=${OMP_NUM_THREADS-(unset)} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS-(unset)}; $BUSY busy processes"
run_once "$@" > /dev/null || { echo "shared-cpu-bench: the warm-up run failed" >&2; exit 1; }
IDLE=()
LOADED=()
for ((r = 1; r <= REPEAT; r++)); do
  read -r t c < <(run_once "$@") || exit 1
  [ -n "$t" ] || exit 1
  IDLE+=("$t")
  ci=$c
  for ((b = 0; b < BUSY; b++)); do
    yes > /dev/null &
    BUSY_PIDS+=("$!")
  done
  sleep 0.2
  read -r t c < <(run_once "$@") || exit 1
  [ -n "$t" ] || exit 1
  LOADED+=("$t")
  for p in "${BUSY_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  BUSY_PIDS=()
  echo "round $r: idle ${IDLE[-1]} s (CPU $ci s), beside $BUSY busy ${LOADED[-1]} s (CPU $c s)"
done
MI=$(printf '%s\n' "${IDLE[@]}" | median)
ML=$(printf '%s\n' "${LOADED[@]}" | median)
NI=$(printf '%s\n' "${IDLE[@]}" | sort -g | head -1)
NL=$(printf '%s\n' "${LOADED[@]}" | sort -g | head -1)
echo "median: idle $MI s, beside $BUSY busy $ML s, ratio $(awk -v a="$MI" -v b="$ML" 'BEGIN { printf "%.2f", b / a }')"
echo "best:   idle $NI s, beside $BUSY busy $NL s, ratio $(awk -v a="$NI" -v b="$NL" 'BEGIN { printf "%.2f", b / a }')"
