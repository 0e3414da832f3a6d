#!/usr/bin/env bash
# The GPU recipe of the embedded model (issue 23): the whole run in one call on
# a lent GPU machine (no network), from the repository root:
#
#   tools/train-shapes-gpu.sh
#
# 1. diffusers, installed offline from .bench/wheels (a git-ignored copy of
#    ../shared/bench/wheels; the script makes the copy when ../shared is
#    there; the device run must carry .bench) unless Python already has it;
# 2. tools/train_shapes_model.py at 128 x 128 on the GPU: the same data
#    generator, diffusers layout, Wan2.1 architecture and seed (1234) as the
#    CPU recipe, with batches, crops and a latent bank sized for a GPU, within
#    MINUTES (7) of wall clock including its saves and its diffusers checks
#    (checks.json: colour, direction, shape, ghosts);
# 3. the C model suite on the new model (shape, ghosts, motion over time, the
#    257-frame seams; not the steering cases) and a timed
#    dualparal-generate run, where BUILD (default build) holds
#    tests/test_shapes_model and tools/dualparal-generate that run here
#    (libraries the machine lacks may be put in .device/lib); skipped with a
#    note otherwise: run them on the CPU machine after copying the model back.
#
# One device call: about 8.5 minutes (install seconds, training 7 minutes
# with its saves and checks, generate seconds, C checks at most 60 s), under
# the 600 s a call may run.
#
# Everything goes to $OUT (default ./out/train-shapes-gpu): shapes-gpu/ (the
# model, with training_log.txt and checks.json), run.log, c-checks.log,
# c-figures.json (the C checks' figures, as models/shapes-tiny/figures.json),
# generate.log, frames/.  The exit status is the training's.
#
# Environment (defaults are the GPU recipe; a CPU rehearsal changes a few):
#   DEVICE=cuda MINUTES=7 SIZE=128 BANK=2000 THREADS=8 SEED=1234
#   PYTHON=python3 BUILD=build C_CHECK_SECONDS=60 EXTRA_ARGS="" SKIP_TRAIN=0
# CPU rehearsal (docs/model-card-shapes-tiny.md, "GPU recipe"):
#   DEVICE=cpu MINUTES=2 BANK=24 THREADS=2 PYTHON=/tmp/w22venv/bin/python \
#     OUT=/tmp/shapes-gpu-rehearsal tools/train-shapes-gpu.sh
set -u
OUT=${OUT:-$PWD/out/train-shapes-gpu}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-7}
SIZE=${SIZE:-128}
BANK=${BANK:-2000}
THREADS=${THREADS:-8}
SEED=${SEED:-1234}
PYTHON=${PYTHON:-python3}
BUILD=${BUILD:-build}
C_CHECK_SECONDS=${C_CHECK_SECONDS:-60}
EXTRA_ARGS=${EXTRA_ARGS:-}
MODEL=$OUT/shapes-gpu
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
t0=$(date +%s)
stamp () { echo "[$(( $(date +%s) - t0 )) s] $*"; }

stamp "train-shapes-gpu: device $DEVICE, $MINUTES min, ${SIZE}x$SIZE, bank $BANK, seed $SEED, out $OUT"
"$PYTHON" - <<'EOF' || true
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
EOF

# 1. diffusers, offline.
if ! "$PYTHON" -c 'import diffusers' 2>/dev/null; then
  if [ ! -d .bench/wheels ] && [ -d ../shared/bench/wheels ]; then
    mkdir -p .bench && cp -r ../shared/bench/wheels .bench/
  fi
  stamp "installing diffusers from .bench/wheels (offline)"
  # With its dependencies where the wheels hold them; the machine's own
  # transformers stack already brings huggingface_hub, safetensors, regex,
  # requests and filelock (diffusers also needs Pillow), so --no-deps is the
  # fallback.
  "$PYTHON" -m pip install --no-index --find-links .bench/wheels diffusers \
    || "$PYTHON" -m pip install --no-index --find-links .bench/wheels --no-deps diffusers
  "$PYTHON" -c 'import diffusers; print("diffusers", diffusers.__version__)' || { stamp "no diffusers: stop"; exit 2; }
else
  stamp "diffusers already there: $("$PYTHON" -c 'import diffusers; print(diffusers.__version__)')"
fi

# torch.compile needs triton on a GPU (a C compiler on the CPU).
compile=--compile
if [ "$DEVICE" != cpu ] && ! "$PYTHON" -c 'import triton' 2>/dev/null; then
  compile=--no-compile
  stamp "no triton: training without torch.compile"
fi

# The script asks torch for deterministic algorithms (warn_only); cuBLAS is
# deterministic only with a fixed workspace.
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}

# 2. Training (SKIP_TRAIN=1: only the C checks of step 3, on the model
# already in $OUT/shapes-gpu).
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
# 2. Training.  GPU sizes: 64 x 64 crops for the VAE and the decoder stage
# (the CPU recipe's 32 x 32 crops are for its speed), DiT batch 64, a bank of
# 2000 encoded clips (about half a minute to encode on a GPU; the CPU recipe
# has 1000, bounded by its encoding time), the VAE a fifth of the budget,
# the checks 45 s (the six diffusers prompts take seconds on a GPU), saves
# every 2 minutes so that a cut run still leaves a model.
stamp "training"
rm -rf "$MODEL"
# shellcheck disable=SC2086
"$PYTHON" tools/train_shapes_model.py --out "$MODEL" --device "$DEVICE" --threads "$THREADS" \
  --seed "$SEED" --size "$SIZE" --minutes "$MINUTES" --vae-frac 0.2 --check-reserve 45 --save-every 2 \
  --bank "$BANK" --dit-batch 64 --vae-batch 8 --vae-crop 64 --vae-image-batch 32 --vae-image-crop 64 \
  --dec-batch 4 --dec-crop 64 --check-png "$OUT/check-png" $compile $EXTRA_ARGS
status=$?
stamp "training exit $status"
else
  status=0
  stamp "SKIP_TRAIN=1: checking the model already in $MODEL"
fi
du -sb "$MODEL" 2>/dev/null | awk '{printf "model size: %.1f MB\n", $1 / 1e6}'
[ -f "$MODEL/model_index.json" ] || { stamp "no model written"; exit $status; }

# 3. The C checks, where the build runs here.
export LD_LIBRARY_PATH=$PWD/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if "$BUILD/tools/dualparal-generate" --help >/dev/null 2>&1; then
  stamp "dualparal-generate: README's prompt, 81 frames, 20 steps, 2 threads"
  g0=$(date +%s.%N)
  "$BUILD/tools/dualparal-generate" --model "$MODEL" --prompt "a red ball moving to the right" --frames 81 \
    --steps 20 --threads 2 --png-dir "$OUT/frames" -q > "$OUT/generate.log" 2>&1
  echo "exit $? in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $g0 }") s" | tee -a "$OUT/generate.log"
else
  stamp "skipped: $BUILD/tools/dualparal-generate does not run here"
fi
# -l lists the cases; without DP_SHAPES_MODEL_DIR it exits 77 (skipped).
"$BUILD/tests/test_shapes_model" -l >/dev/null 2>&1
case $? in 0 | 77) c_suite_runs=1 ;; *) c_suite_runs=0 ;; esac
if [ "$c_suite_runs" = 1 ] && [ "$C_CHECK_SECONDS" -gt 0 ]; then
  stamp "C model suite (not the steering cases), at most $C_CHECK_SECONDS s"
  DP_SHAPES_MODEL_DIR=$MODEL DP_SHAPES_FIGURES=$OUT/c-figures.json timeout "$C_CHECK_SECONDS" "$BUILD/tests/test_shapes_model" --keep-going \
    -s /model/steer/switch -s /model/steer/transition -s /model/steer/schedule > "$OUT/c-checks.log" 2>&1
  echo "exit $?" >> "$OUT/c-checks.log"
  grep -E '^(ok|not ok)|missed' "$OUT/c-checks.log"
else
  stamp "skipped: $BUILD/tests/test_shapes_model does not run here, or C_CHECK_SECONDS is 0"
fi
stamp "done"
exit $status
