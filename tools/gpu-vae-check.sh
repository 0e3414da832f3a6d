#!/usr/bin/env bash
# The video path on a GPU in one call (issue 22): the GPU tests of the VAE
# (tiled, pinned copies, decode thread; the untiled VAE against the CPU),
# our VAE decode at 832x480 and 1280x720 (untiled and in 256-pixel tiles),
# diffusers' AutoencoderKLWan decode at the same shapes (eager, then
# torch.compile), a whole run (umT5-XXL encode, 50 steps of the DualParal
# engine on one stage, every block decoded) and the ratio table.  No
# network, no GStreamer.  Run from the repository root:
#
#   tools/gpu-vae-pack.sh build                      (here: packs the programs, copies ../shared/bench to .bench)
#   tools/gpu-vae-check.sh build/gpu-vae-carry.tar.xz   (there, with build/gpu-vae-carry.tar.xz and .bench carried)
#
# The argument is the archive tools/gpu-vae-pack.sh makes (bin/ and lib/) or
# a build folder.  cuBLASLt and NCCL are looked up in the CUDA toolkit and in
# Python's nvidia packages (as tools/gpu-check.sh does).  The PyTorch anchor
# is .bench/pytorch_vae_anchor.py (a copy of ../shared/bench, which does not
# travel; it installs diffusers offline from .bench/wheels).
#
# Everything must fit one call of at most 9 minutes: BUDGET (seconds,
# default 500) is the time the parts may take; each part has an estimate and
# is skipped (and said so) when it would not fit, and no part runs past HARD
# seconds (default 530) whatever its own time limit; most important first:
# tests, our VAE (im2col, then cuDNN convs: DP_CUDA_CONV=cudnn, libcudnn.so.9
# found in the toolkit or torch's nvidia packages), the anchor eager, the
# whole run with the decode thread, the anchor compiled at 480p and 720p,
# the whole run decoding inline.  Each part also has a hard timeout.
#
# Settings: OUT (logs, default ./out/gpu-vae-check); SKIP (any of "tests
# vae cudnn anchor compile whole whole_inline"); VAE_FRAMES (latent frames per
# decode, default 9: 33 video frames, both sides); DEVICE=cpu rehearses the
# script on a machine without a GPU (the benchmarks at --tiny sizes on the
# CPU backend, the anchor's --cpu case, the GPU tests skip with 77).
set -u
SRC=${1:-build/gpu-vae-carry.tar.xz}
OUT=${OUT:-$PWD/out/gpu-vae-check}
SKIP=${SKIP:-}
BUDGET=${BUDGET:-500}
HARD=${HARD:-530}      # no part runs past this many seconds: the call ends within 9 minutes
VAE_FRAMES=${VAE_FRAMES:-9}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
rm -f "$OUT"/*.log
status=0
t_start=$SECONDS

skip () { case " $SKIP " in *" $1 "*) return 0 ;; esac; return 1; }
elapsed () { echo $((SECONDS - t_start)); }

# part NAME ESTIMATE TIMEOUT LOG COMMAND...: runs COMMAND under TIMEOUT
# seconds when ESTIMATE more seconds fit the budget; output to LOG.
part () {
  local name=$1 est=$2 limit=$3 log=$4
  shift 4
  if [ $(( $(elapsed) + est )) -gt "$BUDGET" ]; then
    echo "== $name: SKIPPED (at $(elapsed) s, needs about $est s of the $BUDGET s budget)" | tee -a "$OUT/skipped.log"
    return 0
  fi
  [ $(( $(elapsed) + limit )) -gt "$HARD" ] && limit=$(( HARD - $(elapsed) ))
  echo "== $name (at $(elapsed) s, limit $limit s)"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name exit $rc$([ "$rc" = 124 ] && echo ' (time limit)')"
  case $rc in 0|77) ;; *) status=1 ;; esac
  return 0
}

# The programs.
if [ -f "$SRC" ]; then
  unpack=$(mktemp -d)
  tar -C "$unpack" -xJf "$SRC" || { echo "cannot unpack $SRC"; exit 1; }
  BIN=$unpack/bin
  libdirs=$unpack/lib
elif [ -d "$SRC" ]; then
  BIN=$(mktemp -d)
  for p in tools/dualparal-bench tests/test_gpu_vae tests/test_gpu_models tests/test_gpu_ops; do
    ln -s "$(cd "$SRC" && pwd)/$p" "$BIN/$(basename "$p")"
  done
  libdirs=$PWD/.device/lib
else
  echo "usage: $0 ARCHIVE|BUILD_DIR (tools/gpu-vae-pack.sh makes the archive)"
  exit 2
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  [ -e "$d/libcublasLt.so.13" ] && libdirs=$libdirs:$d
done
if ! ls ${libdirs//:/\/libcublasLt.so.13 }/libcublasLt.so.13 >/dev/null 2>&1; then
  lt=$(find /usr/local /opt /usr/lib /root -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
  [ -n "$lt" ] && libdirs=$libdirs:$(dirname "$lt")
fi
if ! ls ${libdirs//:/\/libnccl.so.2 }/libnccl.so.2 >/dev/null 2>&1; then
  nccl=$(find /usr/local /opt /usr/lib /root -name 'libnccl.so.2*' 2>/dev/null | head -1)
  [ -n "$nccl" ] && libdirs=$libdirs:$(dirname "$nccl")
fi
# cuDNN (DP_CUDA_CONV=cudnn, opened at run time): the toolkit's, else the
# one torch's nvidia-cudnn package brings (its sub-libraries sit beside it).
if ! ls ${libdirs//:/\/libcudnn.so.9 }/libcudnn.so.9 >/dev/null 2>&1; then
  cudnn=$(find /usr/local /opt /usr/lib /root -name 'libcudnn.so.9*' 2>/dev/null | head -1)
  [ -n "$cudnn" ] && libdirs=$libdirs:$(dirname "$cudnn")
fi
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export DP_TEST_DATA=$PWD/tests/data
# The random models (a 9 GB text encoder, a 2.8 GB transformer) stay in RAM.
[ -d /dev/shm ] && export TMPDIR=/dev/shm

echo "== $(date -u +%FT%TZ) $(hostname) DEVICE=$DEVICE BUDGET=$BUDGET s VAE_FRAMES=$VAE_FRAMES"
if [ "$DEVICE" = cpu ]; then
  bench_dev=(--device cpu --tiny)
  anchor_args=(--cpu)
  sizes="96x64,160x96"
else
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  bench_dev=(--device cuda)
  anchor_args=()
  sizes="832x480,1280x720"
fi
if ldd "$BIN"/* | grep "not found"; then
  echo "missing libraries: see above (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
  status=1
fi

# 1. GPU tests, one process per test case (one failure hides nothing).
if ! skip tests; then
  cases=()
  for path in $("$BIN/test_gpu_vae" -l 2>/dev/null | grep '^/'); do cases+=("test_gpu_vae $path"); done
  cases+=("test_gpu_models /gpu/vae")
  [ "${#cases[@]}" -gt 1 ] || echo "test_gpu_vae lists no cases (no GPU: it exits 77)"
  for c in "${cases[@]}"; do
    set -- $c
    part "test $1 $2" 20 120 gpu-tests.log "$BIN/$1" --verbose -p "$2"
  done
fi

# 2. Our VAE decode: untiled and in 256-pixel tiles (stride 192), each size.
skip vae || part "ours: VAE decode at $sizes" 100 240 vae-ours.log \
  "$BIN/dualparal-bench" "${bench_dev[@]}" --vae --vae-size "$sizes" --vae-tile 256 --vae-frames "$VAE_FRAMES"

# 2b. The same through cuDNN's convolutions (TF32), untiled.
[ "$DEVICE" = cpu ] || skip cudnn || part "ours: VAE decode with cuDNN convs at $sizes" 60 180 vae-ours.log \
  env DP_CUDA_CONV=cudnn "$BIN/dualparal-bench" "${bench_dev[@]}" --vae --vae-size "$sizes" --vae-frames "$VAE_FRAMES"

# 3. diffusers' decode, eager (bf16), same latent frames and sizes.
anchor=(env PYTHONUNBUFFERED=1 python3 .bench/pytorch_vae_anchor.py --frames "$VAE_FRAMES" "${anchor_args[@]}")
if [ -f .bench/pytorch_vae_anchor.py ]; then
  if ! skip anchor; then
    part "anchor eager 832x480" 40 150 vae-anchor.log "${anchor[@]}" --height 480 --width 832
    [ "$DEVICE" = cpu ] || part "anchor eager 1280x720" 40 150 vae-anchor.log "${anchor[@]}" --height 720 --width 1280
  fi
else
  echo "== no .bench/pytorch_vae_anchor.py (run tools/gpu-vae-pack.sh and carry .bench): anchor skipped" \
    | tee -a "$OUT/skipped.log"
fi

# 4. A whole run: text encode, 50 steps, every block decoded on its own thread.
skip whole || part "ours: whole run, decode thread" 120 300 whole.log \
  "$BIN/dualparal-bench" "${bench_dev[@]}" --whole --vae-thread

# 5. diffusers compiled (torch.compile of the decoder: minutes of compiling).
if [ -f .bench/pytorch_vae_anchor.py ] && ! skip compile; then
  part "anchor torch.compile 832x480" 150 200 vae-anchor.log "${anchor[@]}" --compile --height 480 --width 832
  [ "$DEVICE" = cpu ] || part "anchor torch.compile 1280x720" 150 200 vae-anchor.log "${anchor[@]}" --compile \
    --height 720 --width 1280
fi
skip whole_inline || part "ours: whole run, decode inline" 120 300 whole.log \
  "$BIN/dualparal-bench" "${bench_dev[@]}" --whole

# 6. The ratio table (times of this call only).
echo "== ratio table (ms per decoded frame; ratio = peer / ours, > 1: ours faster)"
python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
ours, peer, whole = {}, {}, []
for path in sorted(glob.glob(os.path.join(out, "*.log"))):
    for line in open(path, errors="replace"):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if "vae_decode" in d and "tile" in d:
            ours[(d["size"], "cudnn" if d.get("conv") == "cudnn" else d["tile"] > 0)] = d
        elif d.get("case") == "vae_decode":
            lat = d["latent"]
            peer[("%dx%d" % (lat[4] * 8, lat[3] * 8), d["compiled"])] = d
        elif "whole_run" in d:
            whole.append(d)
sizes = sorted({k[0] for k in ours} | {k[0] for k in peer}, key=lambda s: int(s.split("x")[0]))
fmt = "| {:>9} | {:>12} | {:>12} | {:>12} | {:>12} | {:>12} | {:>13} | {:>16} | {:>16} | {:>9} | {:>9} |"
print(fmt.format("size", "ours", "ours tiled", "ours cuDNN", "diffusers", "compiled", "eager / ours", "compiled / ours",
                 "compiled / cuDNN", "ours GiB", "peer GiB"))
def ms(d):
    return d["ms_per_frame"] if d else None
def f(v):
    return "-" if v is None else "%.2f" % v
for s in sizes:
    o, t, k = ours.get((s, False)), ours.get((s, True)), ours.get((s, "cudnn"))
    e, c = peer.get((s, False)), peer.get((s, True))
    r = lambda p, q: "-" if p is None or q is None else "%.2fx" % (ms(p) / ms(q))
    print(fmt.format(s, f(ms(o)), f(ms(t)), f(ms(k)), f(ms(e)), f(ms(c)), r(e, o), r(c, o), r(c, k),
                     f(o and o["peak_gib"]), f((c or e) and (c or e)["peak_gib"])))
for w in whole:
    print("whole run (%s, %s, text encoder %s): %d frames %s, %d steps: encode %.1f + %.1f ms, run %.1f s, "
          "first frames %.1f s, %.3f frames/s, total %.1f s, peak %.2f GiB (+ VAE backend %.2f GiB)"
          % (w["vae"], "tiles %d" % w["vae_tile"] if w["vae_tile"] else "untiled", w["text_encoder"], w["frames"],
             w["size"], w["steps"], w["encode_prompt_ms"], w["encode_negative_ms"], w["run_s"], w["first_frames_s"],
             w["frames_per_s"], w["total_s"], w["peak_gib"], w["vae_peak_gib"]))
EOF
[ -f "$OUT/skipped.log" ] && { echo "== skipped for time or files:"; cat "$OUT/skipped.log"; }
echo "== gpu-vae-check exit $status after $(elapsed) s"
exit $status
