#!/usr/bin/env bash
# Generates a video and shows it in a window.
#
#   pipelines/display.sh "a red ball bouncing"
#
# Frames are shown at their time (16 fps).  When generation is slower than
# real time the sink drops late frames; SYNC=false shows every frame as soon
# as it is made instead.  SINK picks another video sink (default
# autovideosink), e.g. SINK=glimagesink.  Settings: see common.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

prompt=${1:?usage: $0 PROMPT}
src_props "$prompt" 81

exec gst-launch-1.0 "${src[@]}" "${scale[@]}" ! queue ! videoconvert ! "${SINK:-autovideosink}" sync="${SYNC:-true}"
