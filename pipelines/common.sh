# Sourced by the pipeline scripts in this folder (bash).
#
# Finds the dualparalsrc element (installed, on GST_PLUGIN_PATH, or in a
# build directory of this source tree) and turns the environment into the
# element's properties, in the array `src`:
#   MODEL    model directory (diffusers layout); default: the element's default
#   FRAMES   frame count, 4k+1, or -1 for endless video
#   STEPS    sampler steps          SEED      noise seed
#   GUIDANCE guidance scale         SAMPLER   unipc | euler
#   DEVICES  "cpu", "cuda:0" or "0,1,2,3"
#   NEGATIVE negative prompt        EXTRA     more properties, e.g. "block-frames=4"
#   SCALE_TO WxH: scale the frames for viewing (e.g. 256x256 for the
#            embedded 64 x 64 model); the array `scale` holds those elements

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! gst-inspect-1.0 dualparalsrc >/dev/null 2>&1; then
  # build/ (tools/build.sh's) first; a plugin that does not load on its own
  # (a sanitizer build, for instance) is passed over.
  for dir in "$here"/../build/gst "$here"/../build?*/gst; do
    plugin_path="$dir${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
    if [ -e "$dir/libgstdualparal.so" ] &&
       GST_PLUGIN_PATH="$plugin_path" gst-inspect-1.0 dualparalsrc >/dev/null 2>&1; then
      export GST_PLUGIN_PATH="$plugin_path"
      break
    fi
  done
  if ! gst-inspect-1.0 dualparalsrc >/dev/null 2>&1; then
    echo "dualparalsrc not found: build the plugin (meson setup build && ninja -C build)" \
         "and export GST_PLUGIN_PATH=<build>/gst, or install it" >&2
    exit 1
  fi
fi

# A property value quoted for gst-launch-1.0's parser.
quote () {
  local v=${1//\\/\\\\}
  printf '"%s"' "${v//\"/\\\"}"
}

# src_props PROMPT DEFAULT_FRAMES: fills the array `src`.
src_props () {
  src=(dualparalsrc "prompt=$(quote "$1")" "num-frames=${FRAMES:-$2}")
  [ -n "${MODEL:-}" ] && src+=("model=$(quote "$MODEL")")
  [ -n "${NEGATIVE:-}" ] && src+=("negative-prompt=$(quote "$NEGATIVE")")
  [ -n "${STEPS:-}" ] && src+=("steps=$STEPS")
  [ -n "${SEED:-}" ] && src+=("seed=$SEED")
  [ -n "${GUIDANCE:-}" ] && src+=("guidance-scale=$GUIDANCE")
  [ -n "${SAMPLER:-}" ] && src+=("sampler=$SAMPLER")
  [ -n "${DEVICES:-}" ] && src+=("devices=$(quote "$DEVICES")")
  # shellcheck disable=SC2206 # EXTRA is a list of properties on purpose
  [ -n "${EXTRA:-}" ] && src+=($EXTRA)
  scale=()
  if [ -n "${SCALE_TO:-}" ]; then
    if [[ ! $SCALE_TO =~ ^([0-9]+)x([0-9]+)$ ]]; then
      echo "SCALE_TO must be WIDTHxHEIGHT, e.g. 256x256 (got '$SCALE_TO')" >&2
      exit 2
    fi
    # Nearest neighbour keeps a small model's pixels sharp; the videoconvert
    # lets the script's own caps filter follow (two filters cannot touch).
    scale=(! videoscale method=nearest-neighbour
           ! "video/x-raw,width=${BASH_REMATCH[1]},height=${BASH_REMATCH[2]}" ! videoconvert)
  fi
  return 0
}
