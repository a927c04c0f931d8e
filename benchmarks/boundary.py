#!/usr/bin/env python
"""What a lookup from Python costs before any tree is walked (issue 18).

    python benchmarks/boundary.py [--n 1000] [--repeats 21]

At small N a point lookup is mostly the Python boundary: the call, its two arguments
and the result.  This times, side by side in one process (thread CPU time, the same
20,000 queries of ``iotlb.bench.make_workload(n)``, interleaved repeat by repeat,
median ns per call):

* ``dict.get(q, q)`` on an empty dict: a C call with two arguments that returns an
  existing object (the loop and the call, nothing else);
* ``struct.unpack_from(buf, 0)`` of four u64s: a C call that returns a new tuple of
  three 48-bit ints and a small one, as ``first()``'s Map holds (its ctx is None);
* ``IOTLB.first(q, q)``: the compiled engine (call, conversion, walk, Map);
* the SortedDict model's ``first(q, q)`` (``iotlb.bench.SortedDictModel``).

and prints each one's time over ``first()``'s.  A lookup that builds a fresh Map of
fresh ints cannot cost less than the second line; on CPython < 3.12 ``first()``
refills a Map and its ints that nobody else holds in place (see docs/performance.md),
which is how it can come in under it.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import struct
import time

from iotlb import bench as B
from iotlb._engine import IOTLB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="entries (default 1000)")
    p.add_argument("--repeats", type=int, default=21, help="interleaved repeats (21)")
    a = p.parse_args(argv)
    if a.n < 1 or a.repeats < 1:
        p.error("--n and --repeats must be at least 1")
    w = B.make_workload(a.n, k_lookup=20000)
    S, L, A = w.list("starts"), w.list("lasts"), w.list("addrs")
    t, m = IOTLB(), B.SortedDictModel()
    for s, l, addr in zip(S, L, A):
        t.map(s, l, addr)
        m.map(s, l, addr)
    Q = w.list("lookups")
    buf = struct.pack("<4Q", S[0], L[0], A[0], 3)
    unpack = struct.Struct("<4Q").unpack_from
    empty = {}

    def call_get():
        f = empty.get
        for q in Q:
            f(q, q)

    def call_unpack():
        f, b = unpack, buf
        for _ in Q:
            f(b, 0)

    def call_first():
        f = t.first
        for q in Q:
            f(q, q)

    def call_model():
        f = m.first
        for q in Q:
            f(q, q)

    rows = [("dict.get(q, q), empty dict", call_get),
            ("struct.unpack_from: 4 fresh u64s", call_unpack),
            ("IOTLB.first(q, q)", call_first),
            ("SortedDict model first(q, q)", call_model)]
    samples = {name: [] for name, _ in rows}
    gc.disable()
    try:
        for _ in range(a.repeats):
            for name, fn in rows:
                t0 = time.thread_time_ns()
                fn()
                samples[name].append((time.thread_time_ns() - t0) / len(Q))
    finally:
        gc.enable()
    med = {name: statistics.median(v) for name, v in samples.items()}
    ours = med["IOTLB.first(q, q)"]
    print(f"N = {a.n:,}, {len(Q):,} queries, {a.repeats} interleaved repeats, thread CPU "
          f"time, median ns per call")
    print(f"| call | ns | time over first() |\n|---|---:|---:|")
    for name, _ in rows:
        print(f"| {name} | {med[name]:.1f} | {med[name] / ours:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
