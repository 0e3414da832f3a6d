#!/usr/bin/env bash
# Live HLS stream of an endless video: H.264 in MPEG-TS segments of about 2 s
# and a playlist, written into a directory that any web server can serve.
#
#   pipelines/hls-live.sh "a red ball bouncing" [dir]
#   python3 -m http.server --directory dir 8080     # then play
#   ffplay http://HOST:8080/playlist.m3u8           # or VLC, Safari, hls.js
#
# The element runs live (is-live=true): frames leave at their time when the
# generator keeps up with 16 fps.  FRAMES=81 (say) makes a finite stream.
# Stop with Ctrl-C.  Settings: see common.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

prompt=${1:?usage: $0 PROMPT [DIR]}
dir=${2:-hls}
mkdir -p "$dir"
src_props "$prompt" -1
src+=(is-live=true)

# key-int-max 32 = a keyframe every 2 s at 16 fps, so segments can be cut there.
exec gst-launch-1.0 -e "${src[@]}" \
  ! video/x-raw,format=I420 ! x264enc tune=zerolatency key-int-max=32 ! h264parse \
  ! hlssink2 target-duration=2 playlist-length=6 max-files=12 \
      location="$(quote "$dir/segment%05d.ts")" playlist-location="$(quote "$dir/playlist.m3u8")"
