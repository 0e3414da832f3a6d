#!/usr/bin/env bash
# The DualParal pipeline over processes on ONE GPU (docs/distributed.md,
# "Checked on a GPU"): 2 and 3 processes, each made to look like a host of
# its own to NCCL (its own NCCL_HOSTID, NCCL_SOCKET_IFNAME=lo, so NCCL uses
# its network transport over loopback), started the way a launcher starts
# them (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT), with the NCCL
# transport and with the socket transport; each video must equal, byte for
# byte, the one-process run on the same GPU.  Needs only the build folder
# (CUDA build, no GStreamer) and models/shapes-tiny.
#
#   tools/multiproc-gpu-check.sh [BUILD_DIR]      (default: build)
#
# DEVICE=cpu TRANSPORTS=socket runs the same launcher path on the CPU (a
# rehearsal of the script on a machine without a GPU).
#
# Prints one line per case and ends with "multiproc-gpu-check: N passed,
# M failed"; exits 1 when any case failed.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
device=${DEVICE:-cuda:0}
transports=${TRANSPORTS:-nccl socket}
gen=$build/tools/dualparal-generate
worker=$build/tools/dualparal-worker
model=models/shapes-tiny
out=$(mktemp -d)
trap 'rm -rf "$out"; kill $(jobs -p) 2>/dev/null' EXIT
passed=0
failed=0

common=(--model "$model" -p "a red ball moving to the right" --frames 33 --steps 6 --seed 5
        --engine dualparal --block-frames 2 --context-frames 1 --quiet)
export DUALPARAL_SECRET=multiproc-gpu-check DUALPARAL_CONNECT_TIMEOUT=60 DUALPARAL_HEARTBEAT_TIMEOUT=30
export NCCL_SOCKET_IFNAME=lo NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1

t0=$(date +%s.%N)
if ! "$gen" "${common[@]}" --device "$device" -o "$out/one.y4m"; then
  echo "multiproc-gpu-check: the one-process reference run failed"
  echo "multiproc-gpu-check: 0 passed, 1 failed"
  exit 1
fi
echo "reference: 1 process, $device: $(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s"

# run_case NAME N TRANSPORT: rank 0 (dualparal-generate) and N - 1 workers,
# all on GPU 0, each with its own NCCL host id.
run_case () {
  local name=$1 n=$2 transport=$3 port=$((29600 + RANDOM % 1000))
  local t0 pids=() ok=true
  t0=$(date +%s.%N)
  for ((r = 1; r < n; r++)); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port NCCL_HOSTID=dp-host-$r \
      DUALPARAL_TRANSPORT=$transport "$worker" --device "$device" > "$out/$name-worker$r.log" 2>&1 &
    pids+=($!)
  done
  RANK=0 WORLD_SIZE=$n LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port NCCL_HOSTID=dp-host-0 \
    DUALPARAL_TRANSPORT=$transport "$gen" "${common[@]}" --device "$device" --processes launcher \
    -o "$out/$name.y4m" > "$out/$name-rank0.log" 2>&1 || ok=false
  # Rank 0 failed before its workers joined: they would wait out their
  # connect timeout.
  $ok || kill "${pids[@]}" 2>/dev/null
  for p in "${pids[@]}"; do
    wait "$p" || ok=false
  done
  local secs
  secs=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
  if $ok && cmp -s "$out/one.y4m" "$out/$name.y4m"; then
    echo "PASS $name: $n processes on $device, $transport transport, frames equal the one-process run ($secs s)"
    passed=$((passed + 1))
  else
    echo "FAIL $name: $n processes on $device, $transport transport ($secs s)"
    $ok || echo "  a process failed:"
    $ok && echo "  the frames differ from the one-process run"
    tail -n 5 "$out/$name"-*.log | sed 's/^/  /'
    failed=$((failed + 1))
  fi
}

for transport in $transports; do
  run_case "$transport-2" 2 "$transport"
  run_case "$transport-3" 3 "$transport"
done
echo "multiproc-gpu-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
