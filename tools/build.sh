#!/usr/bin/env bash
# Installs missing Debian packages, configures (once) and builds dualparal.
#   tools/build.sh [BUILD_DIR] [meson options...]      (default BUILD_DIR: build)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
dir=${1:-build}
shift || true
if [ -f "$dir/build.ninja" ]; then
  [ $# -eq 0 ] || meson configure "$dir" "$@"
else
  meson setup "$dir" "$@"
fi
ninja -C "$dir"
