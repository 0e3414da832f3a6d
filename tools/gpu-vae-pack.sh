#!/usr/bin/env bash
# Packs what tools/gpu-vae-check.sh runs on a GPU machine into one archive
# small enough to travel with a device call (the lent machines take 64 MiB
# of carried files; the programs and their libraries are about 70 MB, xz
# makes them about a fifth of that), and copies ../shared/bench into the
# git-ignored .bench/ (../shared does not travel).  Run from the repository
# root after building BUILD_DIR with -Dcuda=enabled:
#
#   tools/gpu-vae-pack.sh [BUILD_DIR]        (default build)
#
# Writes BUILD_DIR/gpu-vae-carry.tar.xz: bin/ (dualparal-bench, test_gpu_vae,
# test_gpu_models, test_gpu_ops, stripped) and lib/ (libdualparal and every
# library they load that is neither part of glibc / libstdc++ nor CUDA's big
# ones: cuBLASLt and NCCL are looked up on the GPU machine, as gpu-check.sh
# does).  Then carry BUILD_DIR/gpu-vae-carry.tar.xz and .bench.
set -eu
BUILD=${1:-build}
ARCHIVE=$BUILD/gpu-vae-carry.tar.xz
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
progs="$BUILD/tools/dualparal-bench $BUILD/tests/test_gpu_vae $BUILD/tests/test_gpu_models $BUILD/tests/test_gpu_ops"
for p in $progs; do
  [ -x "$p" ] || { echo "missing $p: build $BUILD with -Dcuda=enabled first" >&2; exit 1; }
  cp "$p" "$stage/bin/"
  strip "$stage/bin/$(basename "$p")"
done
# Libraries: everything ldd resolves except the C / C++ runtime and the CUDA
# libraries the GPU machine brings (cuBLASLt, NCCL); libcudart is small and
# carried.
ldd $progs | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libstdc++.so*|libgcc_s.so*|ld-linux*) continue ;;
    libcublas*|libnccl*) continue ;;
  esac
  cp -L "$lib" "$stage/lib/$(basename "$lib")"
done
tar -C "$stage" -cJf "$ARCHIVE" bin lib
rm -rf .bench
mkdir -p .bench
cp -r ../shared/bench/. .bench/
chmod -R u+w .bench
echo "$ARCHIVE: $(du -h "$ARCHIVE" | cut -f1) ($(ls "$stage/lib" | wc -l) libraries); .bench: $(du -sh .bench | cut -f1)"
echo "carry: $ARCHIVE .bench   then run: tools/gpu-vae-check.sh $ARCHIVE"
