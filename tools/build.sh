#!/usr/bin/env bash
# Installs missing Debian packages, configures (once) and builds dualparal.
#   tools/build.sh [BUILD_DIR] [meson options...]      (default BUILD_DIR: build)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
dir=${1:-build}
shift || true
# A machine with the CUDA toolkit builds the CUDA backend, and a CUDA file
# that does not compile fails the build (meson's "auto" would drop the
# backend without a word when nvcc is not on PATH).  -Dcuda=... overrides.
if [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
cuda_default=()
if command -v nvcc >/dev/null && [[ " $* " != *" -Dcuda="* ]]; then
  cuda_default=(-Dcuda=enabled)
fi
if [ -f "$dir/build.ninja" ]; then
  [ $# -eq 0 ] || meson configure "$dir" "$@"
else
  meson setup "$dir" "${cuda_default[@]}" "$@"
fi
ninja -C "$dir"
