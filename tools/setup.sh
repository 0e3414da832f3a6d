#!/usr/bin/env bash
# Installs every Debian package dualparal needs to build and test (idempotent:
# packages already present are skipped, apt is not touched when none is missing).
set -euo pipefail

packages=(
  meson ninja-build pkg-config gcc g++ clang
  libglib2.0-dev libjson-glib-dev libopenblas-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad
  check libclang-rt-14-dev valgrind
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Optional: qemu-user runs the test suite 'clones' (the CPU code built for
# instruction sets this machine does not pick); without it those tests skip.
if ! dpkg-query -W -f='${Status}' qemu-user 2>/dev/null | grep -q "install ok installed"; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "setup: installing qemu-user (optional)"
  { $sudo_cmd apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends qemu-user >/dev/null; } ||
    echo "setup: qemu-user could not be installed: the 'clones' tests will skip" >&2
fi
echo "setup: all packages present"
