#!/usr/bin/env bash
# Generates a video and writes it as H.264 in an MP4 file.
#
#   pipelines/mp4.sh "a red ball bouncing" [out.mp4]
#
# FRAMES=-1 makes an endless video: stop it with Ctrl-C, the file is then
# finished properly (-e sends EOS).  Settings: see common.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

prompt=${1:?usage: $0 PROMPT [OUT.mp4]}
out=${2:-dualparal.mp4}
src_props "$prompt" 81

exec gst-launch-1.0 -e "${src[@]}" "${scale[@]}" \
  ! video/x-raw,format=I420 ! x264enc ! mp4mux ! filesink location="$(quote "$out")"
