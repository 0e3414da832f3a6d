#!/bin/sh
# Live-mode check of dualparalsrc (issue 17), the figures of docs/usage.md
# ("Live timestamps and latency"):
#   1. 60 s of  dualparalsrc num-frames=-1 is-live=true (steps=50, embedded
#      model) ! fakesink sync=true max-lateness=20000000 qos=true
#      - frames shown / dropped (the sink's QoS), LATENCY messages, when the
#      first frame is shown and how long after the first block was ready;
#   2. the same with PLAYING -> PAUSED at 40 s, PLAYING again at 43 s: the
#      timestamp jump between the last frame shown before and the first after;
#   3. videotestsrc is-live=true at 64x64, 16/1 with the same sink and pause,
#      for comparison.
#
#   tools/live-check.sh [BUILD_DIR]        (default: build)
#
# Environment: SECONDS_RUN (60), STEPS (50), EXTRA (more dualparalsrc
# properties), OMP_NUM_THREADS (see below).  Each run's figures are
# "key: value" lines from dualparal-live-check (gst/, built with the plugin).
#
# On a shared or busy machine OMP_NUM_THREADS=1 (the CPU threads) was
# needed with the OpenMP build: with more threads than free cores, every
# parallel region waited for a descheduled thread.  The backend's own pool
# never waits for a thread that has not started, so the default may do now
# (not measured here again).
set -eu

build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
case $build in /*) ;; *) build=$root/$build ;; esac
check=$build/gst/dualparal-live-check
if [ ! -x "$check" ]; then
  echo "live-check.sh: $check not found (build the project with GStreamer first)" >&2
  exit 1
fi
export GST_PLUGIN_PATH="$build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
secs=${SECONDS_RUN:-60}
steps=${STEPS:-50}
extra=${EXTRA:-}
sink="fakesink name=sink sync=true max-lateness=20000000 qos=true"
src="dualparalsrc num-frames=-1 is-live=true steps=$steps $extra"

echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "== 1. $src ! $sink, ${secs} s"
"$check" --seconds "$secs" --pipeline "$src ! $sink"
echo "== 2. the same, PAUSED at 40 s for 3 s"
"$check" --seconds "$secs" --pause-at 40 --pause-for 3 --pipeline "$src ! $sink"
echo "== 3. videotestsrc is-live=true 64x64 16/1, PAUSED at 20 s for 3 s, 30 s"
"$check" --seconds 30 --pause-at 20 --pause-for 3 --pipeline \
  "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=16/1 ! $sink"
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
