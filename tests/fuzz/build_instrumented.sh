#!/usr/bin/env bash
# Build an instrumented copy of the Cython extensions (the engine iotlb._engine and
# the device core iotlb._device) OUTSIDE the source tree, for the fuzzers
# (SanitizerCoverage) or for ASan/UBSan runs.  The tree's own iotlb/*.so are never
# touched.
#
#   tests/fuzz/build_instrumented.sh sancov /tmp/iotlb-sancov   # -fsanitize=fuzzer-no-link
#   tests/fuzz/build_instrumented.sh asan   /tmp/iotlb-asan     # -fsanitize=address,undefined
#
# Result: OUT/iotlb/ = symlinks to every iotlb/*.py (and *.pxd, *.pyi, py.typed) of
# this tree + the instrumented _engine and _device .so; use it with PYTHONPATH=OUT
# (it shadows the editable install).  OUT/src/ keeps the sources compiled and the .c
# files; OUT/ENGINE_SHA256 (_engine.pyx) and OUT/DEVICE_SHA256 (_device.pyx and the
# _engine.pxd it was compiled against) record which sources they were.
# Needs clang (Debian: apt-get install clang libclang-rt-14-dev) and Cython.
set -euo pipefail
MODE=${1:?usage: build_instrumented.sh sancov|asan OUTDIR}
OUT=${2:?usage: build_instrumented.sh sancov|asan OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/../venv/bin/python}
[ -x "$PY" ] || PY=python3
CC=${CC:-clang}

case "$MODE" in
  # fuzzer-no-link minus stack-depth (atheris's libFuzzer does not export
  # __sancov_lowest_stack)
  sancov) SAN="-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp" ;;
  # pointer-overflow stays recoverable (reported, not fatal): Cython's generated
  # argument parsing computes NULL + 0 (__Pyx_KwValues_FASTCALL_TPNEW) in every
  # __cinit__ wrapper, which UBSan flags though it is not engine code
  asan)   SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize-recover=pointer-overflow -fno-omit-frame-pointer" ;;
  *) echo "mode must be sancov or asan" >&2; exit 2 ;;
esac

rm -rf "$OUT"
mkdir -p "$OUT/iotlb" "$OUT/src"
for f in "$ROOT"/iotlb/*.py "$ROOT"/iotlb/*.pxd "$ROOT"/iotlb/*.pyi "$ROOT"/iotlb/py.typed; do
  ln -s "$f" "$OUT/iotlb/$(basename "$f")"
done
# the device core cimports the engine's layout and IOTLB type from _engine.pxd
cp "$ROOT/iotlb/_engine.pyx" "$ROOT/iotlb/_engine.pxd" "$ROOT/iotlb/_device.pyx" "$OUT/src/"
(cd "$OUT/src" && sha256sum _engine.pyx) > "$OUT/ENGINE_SHA256"
(cd "$OUT/src" && sha256sum _device.pyx _engine.pxd) > "$OUT/DEVICE_SHA256"

INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
SUFFIX=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# cythonize as the package modules iotlb._engine and iotlb._device (the package
# directory src/iotlb/ lets `from ._engine cimport ...` find _engine.pxd)
(cd "$OUT/src" && mkdir -p iotlb && cp _engine.pyx _engine.pxd _device.pyx iotlb/ &&
 touch iotlb/__init__.py &&
 for m in _engine _device; do
   "$PY" -m cython -3 --module-name "iotlb.$m" "iotlb/$m.pyx" -o "$m.c"
 done)
for m in _engine _device; do
  # shellcheck disable=SC2086
  $CC -shared -fPIC -O1 -g $SAN -I"$INC" "$OUT/src/$m.c" -o "$OUT/iotlb/$m$SUFFIX"
done
echo "built $OUT/iotlb/_engine$SUFFIX and _device$SUFFIX ($MODE) from" \
  "_engine.pyx $(head -1 "$OUT/ENGINE_SHA256" | cut -c1-12)," \
  "_device.pyx $(head -1 "$OUT/DEVICE_SHA256" | cut -c1-12)," \
  "_engine.pxd $(sed -n 2p "$OUT/DEVICE_SHA256" | cut -c1-12)"
