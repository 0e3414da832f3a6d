#!/usr/bin/env bash
# GPU check in one go, for a machine with an NVIDIA GPU: the GPU op tests,
# the backend benchmark (ceilings, ops, attention, DiT forward at 1.3B
# shapes) and the PyTorch anchor, all in the same call so that ratios
# compare.  Run from the repository root:
#
#   tools/gpu-check.sh [BUILD_DIR]          (default build-cuda)
#
# BUILD_DIR must hold tests/test_gpu_ops, tests/test_gpu_models, tests/test_gpu_engine and
# tools/dualparal-bench built with -Dcuda=enabled (copies of just these four,
# stripped, are enough).  Libraries the machine lacks (GLib, json-glib, OpenBLAS...)
# may be put in .device/lib; cuBLASLt and NCCL are looked up in the CUDA toolkit
# and in Python's nvidia packages.  The PyTorch anchor runs when
# .bench/pytorch_wan_anchor.py (a copy of ../shared/bench/) is present.
# Logs go to $OUT (default ./out/gpu-check).  Skip parts with
# GPU_CHECK_SKIP="tests ops dit anchor" (any subset); GPU_CHECK_DIT_ARGS adds
# the options of that benchmark call (default "--dit --compare-fused --vae
# --vae-size 832x480 --engine": the DiT with and without the fused ops, one
# model load, the VAE decode of 81 frames at 480p and a whole DualParal run;
# tools/gpu-vae-check.sh is the VAE's own check; "--compare-attn" adds the
# mma.sync attention kernel); GPU_CHECK_SANITIZE=1 also
# runs part of the tests under compute-sanitizer's memcheck;
# GPU_CHECK_14B=1 also times the DiT at Wan2.1-14B shapes (one Wan2.2
# A14B expert), ours beside the anchor's --model 14b;
# GPU_CHECK_COMPILE=SECONDS also runs the anchor with --compile at the three
# shapes under that time limit (torch.compile of 30 blocks takes minutes).
# Each GPU test case runs in a process of its own, so one failure does not
# hide the results of the others.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-$PWD/out/gpu-check}
SKIP=${GPU_CHECK_SKIP:-}
mkdir -p "$OUT"
status=0

skip () { case " $SKIP " in *" $1 "*) return 0 ;; esac; return 1; }

libdirs=$PWD/.device/lib
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  [ -e "$d/libcublasLt.so.13" ] && libdirs=$libdirs:$d
done
if ! echo "$libdirs" | grep -q cuda; then
  lt=$(find /usr/local /opt /usr/lib /root -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
  [ -n "$lt" ] && libdirs=$libdirs:$(dirname "$lt")
fi
# NCCL (the engine's multi-GPU transport): the toolkit's, else the one a
# Python package (nvidia-nccl) brings.
if ! ls ${libdirs//:/\/libnccl.so.2 }/libnccl.so.2 >/dev/null 2>&1; then
  nccl=$(find /usr/local /opt /usr/lib /root -name 'libnccl.so.2*' 2>/dev/null | head -1)
  [ -n "$nccl" ] && libdirs=$libdirs:$(dirname "$nccl")
fi
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export DP_TEST_DATA=$PWD/tests/data
# The DiT benchmark writes a 2.8 GB random checkpoint: keep it in RAM.
[ -d /dev/shm ] && export TMPDIR=/dev/shm

echo "== $(date -u +%FT%TZ) $(hostname)"
nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if ldd "$BUILD/tests/test_gpu_ops" "$BUILD/tests/test_gpu_models" "$BUILD/tests/test_gpu_engine" "$BUILD/tools/dualparal-bench" | grep "not found"; then
  echo "missing libraries: see above"
  status=1
fi

if ! skip tests; then
  echo "== GPU tests (one process per test case)"
  : > "$OUT/gpu-tests.log"
  for prog in test_gpu_ops test_gpu_models test_gpu_engine; do
    for path in $("$BUILD/tests/$prog" -l 2>/dev/null | grep '^/'); do
      timeout 60 "$BUILD/tests/$prog" --verbose -p "$path" 2>&1 | grep -v '^#' | tee -a "$OUT/gpu-tests.log"
      rc=${PIPESTATUS[0]}
      echo "$prog $path exit $rc" | tee -a "$OUT/gpu-tests.log"
      [ "$rc" = 0 ] || status=1
    done
  done
fi
if [ -n "${GPU_CHECK_SANITIZE:-}" ] && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck: attention, layouts, VAE ops"
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 99 "$BUILD/tests/test_gpu_ops" \
    -p /gpu/attention -p /gpu/layouts -p /gpu/vae_ops 2>&1 | tail -n 40 | tee "$OUT/sanitizer.log"
  rc=${PIPESTATUS[0]}
  echo "compute-sanitizer exit $rc"
  [ "$rc" = 0 ] || status=1
fi
if ! skip ops; then
  echo "== backend ops"
  timeout 60 "$BUILD/tools/dualparal-bench" --ops 2>&1 | tee "$OUT/bench-ops.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if ! skip dit; then
  echo "== DiT forward, VAE decode, a whole engine run (ours)"
  timeout 240 "$BUILD/tools/dualparal-bench" ${GPU_CHECK_DIT_ARGS:---dit --compare-fused --vae --vae-size 832x480 --engine} 2>&1 | tee "$OUT/bench-dit.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if ! skip anchor && [ -f .bench/pytorch_wan_anchor.py ]; then
  echo "== PyTorch anchor (eager)"
  PYTHONUNBUFFERED=1 timeout 80 python3 .bench/pytorch_wan_anchor.py --model 1.3b --frames 21 --frames 8+2 \
    --frames 4+2 2>&1 | tee "$OUT/anchor.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if ! skip anchor && [ -n "${GPU_CHECK_COMPILE:-}" ] && [ -f .bench/pytorch_wan_anchor.py ]; then
  echo "== PyTorch anchor (torch.compile, limit ${GPU_CHECK_COMPILE} s)"
  PYTHONUNBUFFERED=1 timeout "$GPU_CHECK_COMPILE" python3 .bench/pytorch_wan_anchor.py --model 1.3b --compile \
    --frames 21 --frames 8+2 --frames 4+2 2>&1 | tail -n 20 | tee "$OUT/anchor-compile.log"
  echo "anchor --compile exit ${PIPESTATUS[0]} (124: time limit)"
fi
# Wan2.1-14B shapes, the shape of each Wan2.2 T2V-A14B expert (issue 21):
# ours and the anchor at --model 14b, both at full depth (40 layers) and the
# same three cases, 2 timed forwards each (a 21-frame forward takes seconds
# at 14B).  28 GB of random weights go to TMPDIR; a few minutes, not timed.
if [ -n "${GPU_CHECK_14B:-}" ]; then
  echo "== DiT forward at Wan2.1-14B / A14B-expert shapes (ours)"
  timeout 300 "$BUILD/tools/dualparal-bench" --dit --model 14b --dit-repeat 2 2>&1 | tee "$OUT/bench-dit14b.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  if [ -f .bench/pytorch_wan_anchor.py ]; then
    echo "== PyTorch anchor (eager), 14b"
    PYTHONUNBUFFERED=1 timeout 200 python3 .bench/pytorch_wan_anchor.py --model 14b --repeat 2 --frames 21 \
      --frames 8+2 --frames 4+2 2>&1 | tee "$OUT/anchor14b.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  fi
fi
echo "== gpu-check exit $status"
exit $status
