#!/usr/bin/env bash
# Build an instrumented copy of the Cython engine OUTSIDE the source tree, for the
# fuzzers (SanitizerCoverage) or for ASan/UBSan runs.  The tree's own
# iotlb/_engine*.so is never touched.
#
#   tests/fuzz/build_instrumented.sh sancov /tmp/iotlb-sancov   # -fsanitize=fuzzer-no-link
#   tests/fuzz/build_instrumented.sh asan   /tmp/iotlb-asan     # -fsanitize=address,undefined
#
# Result: OUT/iotlb/ = symlinks to every iotlb/*.py of this tree + the instrumented
# _engine .so; use it with PYTHONPATH=OUT (it shadows the editable install).
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
for f in "$ROOT"/iotlb/*.py "$ROOT"/iotlb/py.typed; do
  ln -s "$f" "$OUT/iotlb/$(basename "$f")"
done
cp "$ROOT/iotlb/_engine.pyx" "$OUT/src/_engine.pyx"
sha256sum "$OUT/src/_engine.pyx" > "$OUT/ENGINE_SHA256"

INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
SUFFIX=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# cythonize as the package module iotlb._engine
(cd "$OUT/src" && mkdir -p iotlb && cp _engine.pyx iotlb/ && touch iotlb/__init__.py &&
 "$PY" -m cython -3 --module-name iotlb._engine iotlb/_engine.pyx -o _engine.c)
# shellcheck disable=SC2086
$CC -shared -fPIC -O1 -g $SAN -I"$INC" "$OUT/src/_engine.c" -o "$OUT/iotlb/_engine$SUFFIX"
echo "built $OUT/iotlb/_engine$SUFFIX ($MODE) from $(cut -c1-12 "$OUT/ENGINE_SHA256")"
