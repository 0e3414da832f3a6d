#!/usr/bin/env bash
# Streams an endless video over SRT: H.264 in MPEG-TS, the element live, this
# side listening on a UDP port for one receiver.
#
#   pipelines/srt.sh "a red ball bouncing" [port]      # sender, default port 8888
#   pipelines/srt-receive.sh HOST [port]               # receiver, shows the video
#   ffplay srt://HOST:8888                             # or any SRT player
#
# FRAMES=81 (say) makes a finite stream.  Stop with Ctrl-C.  Settings: see
# common.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

prompt=${1:?usage: $0 PROMPT [PORT]}
port=${2:-8888}
src_props "$prompt" -1
src+=(is-live=true)

# config-interval=-1 repeats SPS/PPS before every keyframe so that a receiver
# can join at any time; alignment=7 packs 7 TS packets (1316 bytes) per
# buffer, the SRT live payload: larger buffers (keyframes) would be lost.
# wait-for-connection=false: the stream runs while no receiver is connected
# (waiting would block the pipeline, and Ctrl-C's EOS with it).
exec gst-launch-1.0 -e "${src[@]}" \
  ! video/x-raw,format=I420 ! x264enc tune=zerolatency key-int-max=32 \
  ! h264parse config-interval=-1 ! mpegtsmux alignment=7 \
  ! srtsink uri="srt://:$port?mode=listener" wait-for-connection=false
