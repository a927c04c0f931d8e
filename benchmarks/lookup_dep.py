#!/usr/bin/env python
"""Does the native B+tree win at N = 10^6 by overlapping lookups? (issue 18)

    python benchmarks/lookup_dep.py [--n 1000000] [--rounds 3]

``peers.py`` times the C++ B+tree of ``floor.cpp`` in a native loop of independent
lookups, whose memory loads the CPU may overlap from one lookup to the next; a call
from Python cannot.  ``floor.cpp`` also times ``lookup_dep``: the same lookups, each
query's address made to depend on the previous result, so no two overlap.  Each
round runs the floor once (both loops) and then times ``IOTLB.first(q, q)`` from
Python on the same workload (``iotlb.bench.make_workload(n, k_lookup=20000)``,
thread CPU time, median of 5) and prints the three times and our ratios to both
loops.  Ratios only within one round: absolute times move with the machine's load.
Needs g++ (as ``peers.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402  (benchmarks/ is not a package)

import iotlb  # noqa: E402
from iotlb import bench as B  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    w = B.make_workload(a.n, k_lookup=20000)
    floor = peers.Floor(lambda m: print(m, file=sys.stderr))
    try:
        return _rounds(floor, w, a)
    finally:
        floor.close()


def _rounds(floor, w, a) -> int:
    if floor.error:
        print(f"lookup_dep: the C++ floor is unavailable: {floor.error}", file=sys.stderr)
        return 1
    path = floor.write(w, 1, "dep")
    t = iotlb.IOTLB(limit=None)
    for s, l, addr in zip(w.starts, w.lasts, w.addrs):
        t.map(s, l, addr)
    qs, first = list(w.lookups), t.first
    for _ in range(a.rounds):
        p = subprocess.run([floor.exe, path, "time", "2000", "0", "200000000", "cpu"],
                           capture_output=True, text=True, check=True)
        bt = json.loads(p.stdout)["btree"]
        ours = []
        for _ in range(5):
            t0 = time.thread_time_ns()
            for q in qs:
                first(q, q)
            ours.append((time.thread_time_ns() - t0) / len(qs))
        free, dep = statistics.median(bt["lookup"]), statistics.median(bt["lookup_dep"])
        o = statistics.median(ours)
        print(f"N={a.n}: B+tree {free:.0f} ns (independent), {dep:.0f} ns (dependent);"
              f" ours {o:.0f} ns = {o / free:.2f}x / {o / dep:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
