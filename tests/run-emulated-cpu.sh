#!/usr/bin/env bash
# Runs a test program on an emulated x86-64 CPU (qemu-user):
#   run-emulated-cpu.sh CPU PROGRAM [ARGS...]
# Code built for several instruction sets (GCC target_clones) picks the best
# one the CPU has when it loads, so on this machine the other builds would
# never run; an emulated CPU without them makes the test run those.  Exit 77
# (skipped) without qemu-x86_64 (Debian: qemu-user, which tools/setup.sh
# installs) or on another architecture.
set -u
cpu=$1
shift
if [ "$(uname -m)" != x86_64 ]; then
  echo "not an x86-64 machine"
  exit 77
fi
if ! command -v qemu-x86_64 > /dev/null; then
  echo "qemu-x86_64 not found (install qemu-user): the $cpu build of the code is not tested"
  exit 77
fi
exec qemu-x86_64 -cpu "$cpu" "$@"
