#!/usr/bin/env bash
# Run the atheris fuzz targets, each for SECONDS (default 60).
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]      TARGET: wire write engine (default: all)
#
# Environment:
#   PYTHON=...        interpreter with iotlb + atheris (default: ../venv/bin/python, python3)
#   FUZZ_JOBS=N       run N targets at once (default 1; each target is one process)
#   FUZZ_SANCOV=1     also guide by C coverage of the Cython extensions (engine and device
#                     core): build an instrumented copy (build_instrumented.sh sancov, needs
#                     clang) into fuzz-artifacts/build and preload libFuzzer (default: 1 if
#                     clang exists); rebuilt whenever a source differs from the copy built
#   FUZZ_ARGS="..."   extra libFuzzer flags (e.g. -max_len=2048 -dict=...)
#
# Everything generated goes to fuzz-artifacts/ (git-ignored): the growing corpus
# (fuzz-artifacts/corpus/TARGET, seeded from tests/fuzz/corpus/TARGET, which is
# read-only here), crash/timeout reproducers (fuzz-artifacts/crash/TARGET-*), logs.
# Exit status: non-zero if any target found a crash.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_PER=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(wire write engine)
PY=${PYTHON:-$ROOT/../venv/bin/python}
[ -x "$PY" ] || PY=python3
ART=$ROOT/fuzz-artifacts
mkdir -p "$ART/crash" "$ART/logs"

if ! "$PY" -c "import atheris" 2>/dev/null; then
  echo "atheris is not installed for $PY (pip install atheris)" >&2
  exit 2
fi

SANCOV=${FUZZ_SANCOV:-auto}
if [ "$SANCOV" = auto ]; then
  if command -v clang >/dev/null; then SANCOV=1; else SANCOV=0; fi
fi
ENV_EXTRA=()
if [ "$SANCOV" = 1 ]; then
  LIBDIR=$(clang -print-resource-dir)/lib/linux
  exec 9>"$ART/.build.lock"     # concurrent run.sh invocations build once
  flock 9
  STALE=0
  [ -f "$ART/build/libfuzzer_no_main.so" ] || STALE=1
  for f in _engine.pyx _engine.pxd _device.pyx; do   # the sources build_instrumented.sh copies
    cmp -s "$ROOT/iotlb/$f" "$ART/build/src/$f" || STALE=1
  done
  if [ "$STALE" = 1 ]; then
    "$HERE/build_instrumented.sh" sancov "$ART/build" >"$ART/logs/build.log" 2>&1 \
      || { echo "instrumented build failed, see $ART/logs/build.log" >&2; exit 2; }
    clang++ -shared -fPIC -o "$ART/build/libfuzzer_no_main.so" -Wl,--whole-archive \
      "$LIBDIR/libclang_rt.fuzzer_no_main-x86_64.a" -Wl,--no-whole-archive -lpthread \
      || { echo "could not build libfuzzer_no_main.so" >&2; exit 2; }
  fi
  flock -u 9
  ENV_EXTRA=(LD_PRELOAD="$ART/build/libfuzzer_no_main.so" PYTHONPATH="$ART/build" FUZZ_SANCOV=1)
  echo "engine + device: instrumented copy $ART/build (sha256 _engine.pyx" \
    "$(head -1 "$ART/build/ENGINE_SHA256" | cut -c1-12), _device.pyx" \
    "$(head -1 "$ART/build/DEVICE_SHA256" | cut -c1-12))"
else
  echo "engine + device: the tree's build (Python-level coverage only)"
fi

run_one() {
  local t=$1
  mkdir -p "$ART/corpus/$t"
  local log="$ART/logs/$t.log"
  echo "== $t: ${SECONDS_PER}s, log $log"
  # shellcheck disable=SC2086
  (cd "$ART" && env "${ENV_EXTRA[@]}" nice -n 10 "$PY" "$HERE/fuzz_$t.py" \
      -max_total_time="$SECONDS_PER" -timeout=20 -rss_limit_mb=3072 -max_len=4096 \
      -print_final_stats=1 -artifact_prefix="$ART/crash/$t-" ${FUZZ_ARGS:-} \
      "$ART/corpus/$t" "$HERE/corpus/$t") >"$log" 2>&1
  local rc=$?
  local execs cov
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -oE '(cov|ft): [0-9]+' "$log" | tail -2 | tr '\n' ' ')
  echo "== $t: exit $rc, executions ${execs:-?}, ${cov:-} corpus $(ls "$ART/corpus/$t" | wc -l)"
  return $rc
}

JOBS=${FUZZ_JOBS:-1}
status=0
pids=()
for t in "${TARGETS[@]}"; do
  if [ "$JOBS" -gt 1 ]; then
    run_one "$t" & pids+=($!)
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  else
    run_one "$t" || status=1
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
ls "$ART"/crash/ 2>/dev/null | sed 's/^/crash: /'
exit $status
