#!/usr/bin/env python
"""Replay cost per parent, side by side in one run (issue 18).

    python benchmarks/bench_replay.py [--quick] [--json OUT] [--cli] [--vs PYTHON]
        [--n N] [--repeats R] [--how write_many,write]

Two message streams of unbatched 72-byte ``vhost_msg_v2`` records (PA mode, 4 KiB
pages, AS 0), as a vIOMMU sends them:

* **churn** (a): UPDATE page i, and from i = 2,000 on INVALIDATE page i - 2,000 after
  it: about 2,000 entries live, under vdpa_sim's default 2,048-entry limit;
* **fill** (b): UPDATE pages 0 .. M-1, then INVALIDATE them in the same order; the
  limits are raised to M (vdpa_sim's ``max_iotlb_entries`` option and
  ``VhostVdpa(max_iotlb_entries=M)``) so nothing fails.

Each is sent through ``VhostVdpa.write_many`` (one buffer) and through
``VhostVdpa.write`` (one call per record), on every built-in parent (the entry points
of ``iotlb.backends``: :data:`BUILTIN`): vdpa_sim with ``set_map`` (the default op
table) and with ``dma_map``, mlx5 (``set_map``), vduse (``set_map``, VA mode),
platform_iommu, vp_vdpa and snet (platform IOMMU, VT-d).  Times are CPU time; every
contender runs the same records, interleaved repeat by repeat; the ratio column is
the time over platform_iommu's.

``--vs PYTHON`` times two builds side by side in one run: this script runs in two
worker processes, one with ``PYTHON`` (e.g. the venv of a checkout of the commit
before a change) and one with this interpreter, and every measurement is made in
both, interleaved (same records, same order); the tables then give both times and
their ratio (now over before).  Each worker reports its own CPU time of the
measured call only.  ``--cli`` also times ``iotlb replay FILE`` as a subprocess (the
children's CPU time and peak RSS) on both traces for vdpa_sim and platform_iommu,
with the same limits (``--max-iotlb-entries``, and vdpa_sim's own as an ``--option``).

A parent that would blow the time budget at a size is skipped with an estimate (a
per-message cost that grows with the number of entries shows up as a drop in
messages/s between the quick and the full size).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time

import iotlb
from iotlb.vdpa import VhostVdpa
from iotlb.wire import VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_UPDATE, BackendFeature, encode

PAGE = 4096
HVA = 0x7F0000000000
LIVE = 2000
# what QEMU acks (no BATCH: every message is its own set_map)
FEATURES = int(BackendFeature.IOTLB_MSG_V2 | BackendFeature.IOTLB_ASID)


def churn_records(n: int, live: int = LIVE) -> bytes:
    """n records: UPDATE page i, and once i >= live an INVALIDATE of page i - live."""
    out = bytearray()
    i = 0
    while True:
        if len(out) // 72 >= n:
            break
        out += encode(VHOST_IOTLB_UPDATE, i * PAGE, PAGE, HVA + i * PAGE, 3)
        if i >= live and len(out) // 72 < n:
            out += encode(VHOST_IOTLB_INVALIDATE, (i - live) * PAGE, PAGE)
        i += 1
    return bytes(out)


def fill_records(n: int) -> bytes:
    """n // 2 UPDATEs of consecutive pages, then INVALIDATEs of them in order."""
    m = n // 2
    ups = b"".join(encode(VHOST_IOTLB_UPDATE, i * PAGE, PAGE, HVA + i * PAGE, 3)
                   for i in range(m))
    inv = b"".join(encode(VHOST_IOTLB_INVALIDATE, i * PAGE, PAGE) for i in range(m))
    return ups + inv


def streams(n: int, names=("churn", "fill")) -> dict:
    """``{stream: (records, limit)}`` with ``n`` messages a stream, for the streams
    in ``names``: churn under the default 2,048-entry limit, fill with the limits
    raised to ``n``."""
    make = {"churn": lambda: (churn_records(n), 2048), "fill": lambda: (fill_records(n), n)}
    return {name: make[name]() for name in names}


PARENTS = {
    "vdpa_sim set_map": ("vdpa_sim", {"use_va": False}),
    "vdpa_sim dma_map": ("vdpa_sim", {"use_va": False, "batch_mapping": False}),
    "mlx5 set_map": ("mlx5", {}),
    "vduse set_map": ("vduse", {}),
    "platform_iommu": ("platform_iommu", {}),
    "vp_vdpa": ("vp_vdpa", {}),
    "snet": ("snet", {}),
}

#: the built-in parents (pyproject's ``iotlb.backends`` entry points): each must
#: be measured (main() refuses to run when one is missing from PARENTS)
BUILTIN = ("platform_iommu", "vdpa_sim", "mlx5", "vduse", "vp_vdpa", "snet")
#: parents with their own entry limit (module parameter ``max_iotlb_entries``),
#: raised with vhost_vdpa's for the fill stream
OWN_LIMIT = ("vdpa_sim", "vduse")


def parent_setup(parent: str, limit: int) -> tuple:
    """(backend name, its options, vhost_vdpa's max_iotlb_entries) for ``limit`` live
    entries: both limits raised when it passes the default 2,048."""
    name, options = PARENTS[parent]
    options = dict(options)
    if name in OWN_LIMIT and limit > 2048:
        options["max_iotlb_entries"] = limit
    return name, options, max(limit, 2048)


def make_device(parent: str, limit: int) -> VhostVdpa:
    name, options, vhost_limit = parent_setup(parent, limit)
    dev = VhostVdpa(iotlb.load_backend(name, **options), max_iotlb_entries=vhost_limit)
    dev.open()
    dev.set_owner()
    dev.set_backend_features(FEATURES)
    return dev


def run_once(parent: str, records: bytes, limit: int, how: str) -> float:
    """CPU seconds to send every record (device set-up not counted)."""
    dev = make_device(parent, limit)
    if how == "write_many":
        t = time.process_time()
        n = dev.write_many(records)
        dt = time.process_time() - t
    else:
        write = dev.write
        mv = memoryview(records)
        t = time.process_time()
        for off in range(0, len(records), 72):
            write(mv[off:off + 72])
        dt = time.process_time() - t
        n = len(records) // 72
    assert n == len(records) // 72
    dev.check_invariants()
    return dt


def estimate(run, parent: str, stream: str, n: int, budget: float) -> float:
    """Estimated seconds for the whole stream from prefixes of 1/1000, 1/100, 1/10
    of it: the growth between two prefixes gives the exponent (1: constant cost
    per message, 2: a cost per message that grows with the entries), clamped to
    [1, 2]; stops as soon as the estimate leaves the budget."""
    prev = None
    est = 0.0
    for div in (1000, 100, 10):
        k = max(1, n // div)
        t = max(run(parent, stream, k, "write_many"), 1e-6)
        e = 1.0 if prev is None else min(2.0, max(1.0, math.log10(t / prev)))
        est = t * (n / k) ** e
        if est > budget:
            return est
        prev = t
    return est


class Local:
    """Measures in this process."""

    label = "now"

    def __init__(self, streams: dict) -> None:
        self.streams = streams

    def run(self, parent: str, stream: str, k: int, how: str) -> float:
        records, limit = self.streams[stream]
        return run_once(parent, records[:k * 72], limit, how)

    def close(self) -> None:
        pass


class Worker:
    """This script in another process (``--worker``), run by ``python``: the same
    streams, one measurement per request line, CPU time of that process."""

    def __init__(self, python: str, label: str, n: int) -> None:
        self.label = label
        self.python = python
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", str(n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        hello = json.loads(self.proc.stdout.readline())
        self.engine = hello["engine"]

    def run(self, parent: str, stream: str, k: int, how: str) -> float:
        self.proc.stdin.write(json.dumps([parent, stream, k, how]) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.python} died")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.python}: {answer['error']}")
        return answer["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def worker(n: int) -> int:
    """``--worker N``: answer ``[parent, stream, k, how]`` lines with the CPU seconds
    of the first k records of the stream (N messages)."""
    local = Local(streams(n))
    print(json.dumps({"engine": iotlb.IMPLEMENTATION}), flush=True)
    for line in sys.stdin:
        parent, stream, k, how = json.loads(line)
        try:
            print(json.dumps({"seconds": local.run(parent, stream, k, how)}), flush=True)
        except Exception as e:                       # reported, not hidden
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    return 0


#: Run by cli_once between this process and ``iotlb replay``: a child's peak RSS
#: starts at its parent's at the fork (Linux keeps the high-water mark across exec),
#: so the replay is started from this small fresh interpreter, not from the
#: benchmark holding the traces in memory; it prints the replay's own rusage last.
_RUSAGE = """if True:
    import os, subprocess, sys
    proc = subprocess.Popen(sys.argv[1:])
    _, status, ru = os.wait4(proc.pid, 0)
    print(f"@rusage {ru.ru_utime + ru.ru_stime} {ru.ru_maxrss} "
          f"{os.waitstatus_to_exitcode(status)}", flush=True)
"""


def cli_once(parent: str, path: str, limit: int) -> tuple:
    """(CPU seconds, peak RSS MiB) of ``iotlb replay`` on the trace, with the entry
    limits raised to ``limit`` as :func:`make_device` does."""
    name, options, vhost_limit = parent_setup(parent, limit)
    cmd = [sys.executable, "-m", "iotlb", "replay", "-q", "--backend", name,
           "--max-iotlb-entries", str(vhost_limit)]
    for k, v in options.items():
        cmd += ["--option", f"{k}={int(v) if isinstance(v, bool) else v}"]
    cmd.append(path)
    with tempfile.TemporaryFile("w+") as out:
        subprocess.run([sys.executable, "-c", _RUSAGE, *cmd], stdout=out,
                       stderr=subprocess.STDOUT, text=True, check=False)
        out.seek(0)
        text = out.read()
    last = text.rstrip().rsplit("\n", 1)[-1].split()
    if last[:1] != ["@rusage"] or last[3] != "0" or " 0 failed" not in text:
        raise RuntimeError(f"{' '.join(cmd)}:\n{text}")
    return float(last[1]), int(last[2]) / 1024


def _arg(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def _median(ts):
    return sorted(ts)[len(ts) // 2]


_FLAGS = ("--quick", "--cli")
_VALUED = ("--n", "--repeats", "--json", "--vs", "--how")


def _usage(argv) -> None:
    # -h/--help prints the usage; an unknown option is an error, not silently ignored
    usage = __doc__.split("\n\n")[1]
    if "-h" in argv or "--help" in argv:
        print(usage)
        raise SystemExit(0)
    i = 0
    while i < len(argv):
        if argv[i] in _VALUED and i + 1 < len(argv):
            i += 2
        elif argv[i] in _FLAGS:
            i += 1
        else:
            raise SystemExit(f"bench_replay: unknown or incomplete option {argv[i]!r}\n"
                             + usage)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return worker(int(_arg(argv, "--worker")))
    _usage(argv)
    missing = [b for b in BUILTIN if b not in {name for name, _ in PARENTS.values()}]
    if missing:
        raise SystemExit(f"bench_replay: built-in parents not measured: {missing}")
    quick = "--quick" in argv
    n = int(_arg(argv, "--n", 100_000 if quick else 1_000_000))
    repeats = int(_arg(argv, "--repeats", 1 if not quick else 3))
    budget = float(os.environ.get("IOTLB_BENCH_BUDGET", 120))
    out_json = _arg(argv, "--json")
    vs = _arg(argv, "--vs")
    print(f"engine {iotlb.IMPLEMENTATION}; {n:,} unbatched messages per stream; "
          f"CPU time, median of {repeats}")
    by_stream = streams(n)
    if vs:
        runners = [Worker(vs, "before", n), Worker(sys.executable, "now", n)]
        for r in runners:
            print(f"  {r.label}: {r.python} (engine {r.engine})")
    else:
        runners = [Local(by_stream)]
    results = {}
    try:
        for sname, (records, limit) in by_stream.items():
            skip = {}
            for parent in PARENTS:
                for r in runners:
                    est = estimate(r.run, parent, sname, n, budget)
                    if est > budget:
                        skip[(r.label, parent)] = est
            for how in _arg(argv, "--how", "write_many,write").split(","):
                times = {(r.label, p): None if (r.label, p) in skip else []
                         for r in runners for p in PARENTS}
                for _ in range(repeats):
                    for parent in PARENTS:
                        for r in runners:
                            if times[(r.label, parent)] is not None:
                                times[(r.label, parent)].append(r.run(parent, sname, n, how))
                print(f"\n{sname} ({'limit ' + format(limit, ',')}), {how}:")
                head = "".join(f" {r.label + ' s':>9} {r.label + ' M/s':>9} {'vs pl.':>7}"
                               for r in runners)
                print(f"  {'parent':18}{head}" + ("  now/before" if vs else ""))
                for parent in PARENTS:
                    row = f"  {parent:18}"
                    meds = {}
                    for r in runners:
                        ts = times[(r.label, parent)]
                        key = f"{sname}/{how}/{parent}" + ("" if not vs else f"/{r.label}")
                        base = times[(r.label, "platform_iommu")]
                        if ts is None:
                            row += f" skipped: est. {skip[(r.label, parent)]:,.0f} s".ljust(27)
                            results[key] = None
                            continue
                        med = meds[r.label] = _median(ts)
                        rate = n / med
                        vs_pl = med / _median(base) if base else float("nan")
                        row += f" {med:9.3f} {rate / 1e6:9.3f} {vs_pl:6.2f}x"
                        results[key] = {"seconds": med, "msgs_per_s": rate,
                                        "vs_platform": vs_pl, "all": ts}
                    if vs and len(meds) == 2:
                        row += f"  {meds['now'] / meds['before']:9.2f}x"
                        results[f"{sname}/{how}/{parent}/now_over_before"] = \
                            meds["now"] / meds["before"]
                    print(row, flush=True)
    finally:
        for r in runners:
            r.close()
    if "--cli" in argv:
        for sname, (records, limit) in by_stream.items():
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, sname + ".bin")
                with open(path, "wb") as f:
                    f.write(records)
                print(f"\niotlb replay of the {sname} trace ({n:,} records), subprocess:")
                print(f"  {'parent':18} {'cpu s':>9} {'peak RSS':>10} {'vs platform_iommu':>18}")
                cli = {p: cli_once(p, path, limit)
                       for p in ("vdpa_sim set_map", "platform_iommu")}
                for p, (cpu, rss) in cli.items():
                    print(f"  {p:18} {cpu:9.2f} {rss:8.0f} MiB "
                          f"{cpu / cli['platform_iommu'][0]:17.2f}x")
                    results[f"cli/{sname}/{p}"] = {"cpu_seconds": cpu, "peak_rss_mib": rss}
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"messages": n, "engine": iotlb.IMPLEMENTATION, "results": results},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
