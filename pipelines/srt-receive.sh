#!/usr/bin/env bash
# Receives the SRT stream of srt.sh and shows it in a window.
#
#   pipelines/srt-receive.sh HOST [port]
#
# decodebin picks the installed H.264 decoder (avdec_h264, openh264dec, a
# hardware one).  No dualparal plugin is needed on this side.
set -euo pipefail

host=${1:?usage: $0 HOST [PORT]}
port=${2:-8888}

exec gst-launch-1.0 srtsrc uri="srt://$host:$port?mode=caller" \
  ! tsdemux ! h264parse ! decodebin ! videoconvert ! autovideosink
