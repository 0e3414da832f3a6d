#!/usr/bin/env bash
# The installed set works on its own (issue 20): installs the build into a
# temporary folder (meson install --destdir), hides the source and build
# trees (a private mount namespace with empty folders over them), then runs
# the installed plugin with its default model (gst-launch to a file), the
# installed dualparal-generate (one process, then its spawned workers), the
# embedding example built through pkg-config against the installed library,
# and asks for devices=cuda with no CUDA module.  Also checks that the
# installed plugin and library link no CUDA, cuBLAS or NCCL library and that
# only the public headers are installed.
#   tests/install-check.sh MESON BUILD_DIR SOURCE_DIR
# Exit 77 (skip) only when this machine cannot make a private mount
# namespace (unshare); any other problem fails.
set -euo pipefail
meson=$1
build=$(realpath "$2")
src=$(realpath "$3")

fail () { echo "install-check: FAIL: $*" >&2; exit 1; }

if ! unshare --user --map-root-user --mount true 2>/dev/null; then
  echo "install-check: SKIP: no private mount namespace here (unshare --user --mount refused), so the source tree cannot be hidden"
  exit 77
fi

tmp=$(mktemp -d /tmp/dualparal-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
case "$tmp" in "$src"/*|"$build"/*) fail "the temporary folder $tmp is inside the trees it hides" ;; esac

option () {
  "$meson" introspect "$build" --buildoptions |
    python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == sys.argv[1]))' "$1"
}
prefix=$(option prefix)
libdir=$(option libdir)
bindir=$(option bindir)
includedir=$(option includedir)
case "$libdir" in /*) ;; *) libdir=$prefix/$libdir ;; esac
case "$bindir" in /*) ;; *) bindir=$prefix/$bindir ;; esac
case "$includedir" in /*) ;; *) includedir=$prefix/$includedir ;; esac

root=$tmp/root
"$meson" install -C "$build" --no-rebuild --quiet --destdir "$root" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "meson install"; }

lib=$root$libdir/libdualparal.so
plugin=$root$libdir/gstreamer-1.0/libgstdualparal.so
for f in "$lib" "$root$bindir/dualparal-generate" "$root$bindir/dualparal-worker" \
         "$root$libdir/pkgconfig/dualparal.pc" "$root$includedir/dualparal/generator.h"; do
  [ -e "$f" ] || fail "not installed: ${f#$root}"
done
# The model goes to the data folder (wherever datadir is, under the prefix).
model_index=$(find "$root" -path '*/dualparal/models/shapes-tiny/model_index.json' | head -n 1)
[ -n "$model_index" ] || fail "the embedded model is not installed (share/dualparal/models/shapes-tiny)"

# Only the public API: the generator and what it includes.
headers=$(cd "$root$includedir/dualparal" && ls | sort | tr '\n' ' ')
[ "$headers" = "error.h generator.h sampler_kind.h " ] || fail "installed headers: $headers (expected error.h generator.h sampler_kind.h)"

# No CUDA library in the library or the plugin (the CUDA module has them).
for f in "$lib" "$plugin"; do
  [ -e "$f" ] || { [ "$f" = "$plugin" ] && continue; fail "not installed: ${f#$root}"; }
  if ldd "$f" | grep -iE 'libcuda|libcublas|libnccl|libnvrtc'; then
    fail "${f#$root} links a CUDA library (above)"
  fi
done

cp "$src/examples/embed.c" "$tmp/embed.c"
mkdir -p "$tmp/hide"

# Everything below runs with the source and build trees hidden.
cat >"$tmp/hidden.sh" <<HIDDEN
set -euo pipefail
fail () { echo "install-check: FAIL: \$*" >&2; exit 1; }
[ ! -e "$src/models/shapes-tiny/model_index.json" ] || fail "the source tree is not hidden"
[ ! -e "$build/build.ninja" ] || fail "the build tree is not hidden"
# meson test points LD_LIBRARY_PATH at the build tree: the installed
# programs must find the installed library by themselves.
unset DUALPARAL_MODEL DUALPARAL_WORKER DUALPARAL_MODULE_DIR GST_PLUGIN_PATH_1_0 LD_LIBRARY_PATH || :
export G_DEBUG=fatal-criticals

# 1. The installed dualparal-generate, default model, one process.
"$root$bindir/dualparal-generate" -q --prompt "a red ball moving to the right" --frames 5 --steps 4 \
    -o "$tmp/gen.y4m" || fail "the installed dualparal-generate"
[ -s "$tmp/gen.y4m" ] || fail "dualparal-generate wrote nothing"

# 2. Two stages in spawned processes: the installed worker is found.
"$root$bindir/dualparal-generate" -q --prompt "a red ball moving to the right" --frames 17 --steps 4 \
    --engine dualparal --stages 2 --processes spawn -o "$tmp/spawn.y4m" ||
  fail "the installed dualparal-generate with spawned workers"

# 3. The installed plugin with its default model, through a pipeline to a file.
if [ -e "$plugin" ]; then
  GST_PLUGIN_PATH="$root$libdir/gstreamer-1.0" GST_REGISTRY_1_0="$tmp/registry.bin" \
    gst-launch-1.0 -q dualparalsrc prompt="a red ball moving to the right" num-frames=5 steps=4 \
      ! video/x-raw,format=RGB ! filesink location="$tmp/element.rgb" || fail "gst-launch with the installed plugin"
  size=\$(stat -c %s "$tmp/element.rgb")
  # The embedded model's native size is 64 x 64.
  [ "\$size" -eq \$((5 * 64 * 64 * 3)) ] || fail "the element wrote \$size bytes, not 5 RGB frames of 64x64"
fi

# 4. The example, built through pkg-config against the installed library.
# The .pc names the configured prefix: point it at where the files went
# (--define-variable would move glib's prefix too).
mkdir -p "$tmp/pc"
sed 's|^prefix=.*|prefix=$root$prefix|' "$root$libdir/pkgconfig/dualparal.pc" >"$tmp/pc/dualparal.pc"
flags=\$(PKG_CONFIG_PATH="$tmp/pc" pkg-config --cflags --libs dualparal) || fail "pkg-config dualparal"
cc "$tmp/embed.c" -o "$tmp/embed" \$flags -Wl,-rpath,"$root$libdir" || fail "building the example with: \$flags"
"$tmp/embed" "$tmp/frames" || fail "the example"
[ "\$(ls "$tmp/frames" | wc -l)" -eq 5 ] || fail "the example did not write 5 frames"

# 5. devices=cuda.  With the CUDA module installed (a CUDA build): it is
#    loaded (the run works on a GPU, or fails with a CUDA error without
#    one), and with its CUDA libraries hidden the error says so.  Then
#    without the module: a clear error, no crash.
module="$root$libdir/dualparal/libdualparal-cuda.so"
if [ -e "\$module" ]; then
  set +e
  "$root$bindir/dualparal-generate" -q --prompt x --frames 5 --steps 1 --device cuda -o "$tmp/cuda.y4m" \
      2>"$tmp/cuda.err"
  rc=\$?
  set -e
  cat "$tmp/cuda.err"
  [ \$rc -lt 128 ] || fail "devices=cuda with the module: exit status \$rc"
  ! grep -q "could not be loaded" "$tmp/cuda.err" || fail "devices=cuda: the installed module did not load"
  # Each CUDA library the module needs, replaced by an empty file.
  hide=""
  for l in \$(ldd "\$module" | awk '/libcudart|libcublas|libnccl/ { print \$3 }'); do
    hide="\$hide mount --bind /dev/null '\$l' &&"
  done
  [ -n "\$hide" ] || fail "ldd names no CUDA library of the module"
  set +e
  unshare --user --map-root-user --mount bash -c "\$hide exec '$root$bindir/dualparal-generate' -q --prompt x \
      --frames 5 --steps 1 --device cuda -o '$tmp/cuda.y4m'" 2>"$tmp/cuda.err"
  rc=\$?
  set -e
  cat "$tmp/cuda.err"
  [ \$rc -ne 0 ] && [ \$rc -lt 128 ] || fail "devices=cuda without the CUDA libraries: exit status \$rc"
  grep -q "libdualparal-cuda.so could not be loaded" "$tmp/cuda.err" || fail "devices=cuda without CUDA libraries: unclear error"
  # A CPU run needs none of them, though the module is installed.
  unshare --user --map-root-user --mount bash -c "\$hide exec '$root$bindir/dualparal-generate' -q \
      --prompt 'a red ball moving to the right' --frames 5 --steps 2 --device cpu -o '$tmp/cpu.y4m'" ||
    fail "a CPU run with the CUDA libraries hidden"
  if [ -e "$plugin" ]; then
    unshare --user --map-root-user --mount bash -c "\$hide GST_PLUGIN_PATH='$root$libdir/gstreamer-1.0' \
        GST_REGISTRY_1_0='$tmp/registry-nocuda.bin' exec gst-launch-1.0 -q dualparalsrc \
        prompt='a red ball moving to the right' num-frames=5 steps=2 devices=cpu ! fakesink" ||
      fail "the installed plugin on the CPU with the CUDA libraries hidden"
  fi
fi
rm -rf "$root$libdir/dualparal"
set +e
"$root$bindir/dualparal-generate" -q --prompt x --frames 5 --steps 1 --device cuda -o "$tmp/cuda.y4m" \
    2>"$tmp/cuda.err"
rc=\$?
set -e
cat "$tmp/cuda.err"
[ \$rc -ne 0 ] && [ \$rc -lt 128 ] || fail "devices=cuda without the module: exit status \$rc"
grep -q "libdualparal-cuda.so could not be loaded" "$tmp/cuda.err" || fail "devices=cuda: unclear error"
echo "install-check: all checks passed"
HIDDEN

unshare --user --map-root-user --mount bash -c "
  mount -t tmpfs none '$src' && { case '$build' in '$src'/*) ;; *) mount -t tmpfs none '$build' ;; esac; } &&
  exec bash '$tmp/hidden.sh'"
