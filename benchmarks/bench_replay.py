#!/usr/bin/env python
"""Replay cost per parent, side by side in one run (issue 18).

    python benchmarks/bench_replay.py [--quick] [--json OUT] [--cli]

Two message streams of unbatched 72-byte ``vhost_msg_v2`` records (PA mode, 4 KiB
pages, AS 0), as a vIOMMU sends them:

* **churn** (a): UPDATE page i, and from i = 2,000 on INVALIDATE page i - 2,000 after
  it: about 2,000 entries live, under vdpa_sim's default 2,048-entry limit;
* **fill** (b): UPDATE pages 0 .. M-1, then INVALIDATE them in the same order; the
  limits are raised to M (vdpa_sim's ``max_iotlb_entries`` option and
  ``VhostVdpa(max_iotlb_entries=M)``) so nothing fails.

Each is sent through ``VhostVdpa.write_many`` (one buffer) and through
``VhostVdpa.write`` (one call per record), on every built-in parent: vdpa_sim with
``set_map`` (the default op table) and with ``dma_map``, mlx5 (``set_map``) and
platform_iommu.  Times are this process's CPU time; every contender runs the same
records, interleaved repeat by repeat; the ratio column is the time over
platform_iommu's.  ``--cli`` also times ``iotlb replay FILE`` as a subprocess (the
children's CPU time and peak RSS) on the churn trace for vdpa_sim and
platform_iommu (the CLI cannot raise vhost_vdpa's own limit, so no fill run there).

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


PARENTS = {
    "vdpa_sim set_map": ("vdpa_sim", {"use_va": False}),
    "vdpa_sim dma_map": ("vdpa_sim", {"use_va": False, "batch_mapping": False}),
    "mlx5 set_map": ("mlx5", {}),
    "platform_iommu": ("platform_iommu", {}),
}


def make_device(parent: str, limit: int) -> VhostVdpa:
    name, options = PARENTS[parent]
    options = dict(options)
    if name == "vdpa_sim" and limit > 2048:
        options["max_iotlb_entries"] = limit
    dev = VhostVdpa(iotlb.load_backend(name, **options),
                    max_iotlb_entries=max(limit, 2048))
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


def estimate(parent: str, records: bytes, limit: int, budget: float) -> float:
    """Estimated seconds for the whole stream from prefixes of 1/1000, 1/100, 1/10
    of it: the growth between two prefixes gives the exponent (1: constant cost
    per message, 2: a cost per message that grows with the entries), clamped to
    [1, 2]; stops as soon as the estimate leaves the budget."""
    n = len(records) // 72
    prev = None
    est = 0.0
    for div in (1000, 100, 10):
        k = max(1, n // div)
        t = max(run_once(parent, records[:k * 72], limit, "write_many"), 1e-6)
        e = 1.0 if prev is None else min(2.0, max(1.0, math.log10(t / prev)))
        est = t * (n / k) ** e
        if est > budget:
            return est
        prev = t
    return est


def cli_once(parent: str, path: str) -> tuple:
    """(children CPU seconds, peak RSS MiB) of ``iotlb replay`` on the trace."""
    name, options = PARENTS[parent]
    cmd = [sys.executable, "-m", "iotlb", "replay", "-q", "--backend", name]
    for k, v in options.items():
        cmd += ["--option", f"{k}={int(v) if isinstance(v, bool) else v}"]
    cmd.append(path)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, ru = os.wait4(proc.pid, 0)      # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0 or " 0 failed" not in text:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.returncode}\n{text}")
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    n = 100_000 if quick else 1_000_000
    repeats = 1 if not quick else 3
    budget = float(os.environ.get("IOTLB_BENCH_BUDGET", 120))
    out_json = argv[argv.index("--json") + 1] if "--json" in argv else None
    print(f"engine {iotlb.IMPLEMENTATION}; {n:,} unbatched messages per stream; "
          f"CPU time, median of {repeats}")
    streams = {"churn": (churn_records(n), 2048),
               "fill": (fill_records(n), n)}
    results = {}
    for sname, (records, limit) in streams.items():
        skip = {}
        for parent in PARENTS:
            est = estimate(parent, records, limit, budget)
            if est > budget:
                skip[parent] = est
        for how in ("write_many", "write"):
            times = {p: None if p in skip else [] for p in PARENTS}
            for _ in range(repeats):
                for parent in PARENTS:
                    if times[parent] is None:
                        continue
                    times[parent].append(run_once(parent, records, limit, how))
            base = sorted(times["platform_iommu"])[len(times["platform_iommu"]) // 2]
            print(f"\n{sname} ({'limit ' + format(limit, ',')}), {how}:")
            print(f"  {'parent':18} {'seconds':>9} {'msg/s':>12} {'vs platform_iommu':>18}")
            for parent, ts in times.items():
                if ts is None:
                    print(f"  {parent:18} skipped: est. {skip[parent]:,.0f} s > "
                          f"{budget:.0f} s budget")
                    results[f"{sname}/{how}/{parent}"] = None
                    continue
                med = sorted(ts)[len(ts) // 2]
                rate = (len(records) // 72) / med
                print(f"  {parent:18} {med:9.3f} {rate:12,.0f} {med / base:17.2f}x")
                results[f"{sname}/{how}/{parent}"] = {"seconds": med, "msgs_per_s": rate,
                                                      "vs_platform": med / base}
    if "--cli" in argv:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "churn.bin")
            with open(path, "wb") as f:
                f.write(streams["churn"][0])
            print(f"\niotlb replay of the churn trace ({n:,} records), subprocess:")
            print(f"  {'parent':18} {'cpu s':>9} {'peak RSS':>10} {'vs platform_iommu':>18}")
            cli = {p: cli_once(p, path) for p in ("vdpa_sim set_map", "platform_iommu")}
            for p, (cpu, rss) in cli.items():
                print(f"  {p:18} {cpu:9.2f} {rss:8.0f} MiB "
                      f"{cpu / cli['platform_iommu'][0]:17.2f}x")
                results[f"cli/{p}"] = {"cpu_seconds": cpu, "peak_rss_mib": rss}
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"messages": n, "engine": iotlb.IMPLEMENTATION, "results": results},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
