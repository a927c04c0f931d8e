#!/usr/bin/env python
"""Soak test of the engine: millions of mixed operations on a large tree, with memory
sampled all along.  Not part of the test run.

    python benchmarks/soak.py [--ops 10000000] [--entries 100000] [--samples 10]
                              [--no-tracemalloc] [--seed 1]

The tree is filled with ``--entries`` page-sized entries (1 in 8 with a ``ctx``) out of
twice as many slots, then each operation is one of: replace (unmap one mapped slot and
map one free slot, keeping the size steady), translate, first, overlapping over a few
pages, a ranged unmap of a few slots followed by re-mapping as many, or translate_many
over a batch.  Every sample prints the operations done, entries, RSS (from
/proc/self/statm), the memory tracemalloc traces, and the rate; ``_check()`` runs at
every sample.  At the end ``unmap()`` empties the tree and the memory is compared with
the baseline taken before the tree was built.

Pass criteria printed at the end: traced memory flat across samples (max - min within
``--flat-slack`` KiB once full) and back to baseline (within ``--base-slack`` KiB)
after ``unmap()``.
"""
from __future__ import annotations

import argparse
import array
import gc
import os
import random
import sys
import time
import tracemalloc


def rss_kib() -> int:
    with open("/proc/self/statm") as fp:
        return int(fp.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def traced_kib() -> int:
    if not tracemalloc.is_tracing():
        return -1
    return tracemalloc.get_traced_memory()[0] // 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=10_000_000)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-tracemalloc", action="store_true")
    ap.add_argument("--flat-slack", type=int, default=512, help="KiB")
    ap.add_argument("--base-slack", type=int, default=64, help="KiB")
    args = ap.parse_args(argv)

    import iotlb
    from iotlb import IOTLBError

    rnd = random.Random(args.seed)
    n = args.entries
    slots = 2 * n
    page = 1 << 12
    if not args.no_tracemalloc:
        tracemalloc.start()
    gc.collect()
    base_traced, base_rss = traced_kib(), rss_kib()

    t = iotlb.IOTLB()
    mapped = list(rnd.sample(range(slots), n))        # slot numbers, unordered
    where = {s: i for i, s in enumerate(mapped)}      # slot -> index in mapped
    free = [s for s in range(slots) if s not in where]
    fwhere = {s: i for i, s in enumerate(free)}
    for s in mapped:
        t.map(s * page, s * page + page - 1, (s ^ 0x5A5A) * page, 3,
              ("ctx", s) if s & 7 == 0 else None)
    assert len(t) == n

    def take(lst, idx, i):
        s = lst[i]
        last = lst.pop()
        if i < len(lst):
            lst[i] = last
            idx[last] = i
        del idx[s]
        return s

    def put(lst, idx, s):
        idx[s] = len(lst)
        lst.append(s)

    print(f"soak: engine {iotlb.IMPLEMENTATION}, {n:,} entries in {slots:,} slots, "
          f"{args.ops:,} operations, tracemalloc {'on' if tracemalloc.is_tracing() else 'off'}")
    print(f"baseline: RSS {base_rss / 1024:.1f} MiB, traced {base_traced:,} KiB")
    head = f"{'ops':>12} {'entries':>9} {'RSS MiB':>9} {'traced KiB':>11} {'ops/s':>10}"
    print(head)
    print("-" * len(head))
    gc.collect()
    print(f"{0:>12,} {len(t):>9,} {rss_kib() / 1024:>9.1f} {traced_kib():>11,} {'-':>10}")

    every = max(1, args.ops // args.samples)
    done = 0
    traced_samples = []
    t0 = time.perf_counter()
    tlast = t0
    rand = rnd.random
    randrange = rnd.randrange
    batch = array.array("Q", bytes(8 * 64))
    while done < args.ops:
        r = rand()
        if r < 0.30:                                   # replace: unmap + map
            s = take(mapped, where, randrange(len(mapped)))
            assert t.unmap(s * page, s * page) == 1
            put(free, fwhere, s)
            s = take(free, fwhere, randrange(len(free)))
            t.map(s * page, s * page + page - 1, (s ^ 0x5A5A) * page, 3,
                  ("ctx", s) if s & 7 == 0 else None)
            put(mapped, where, s)
            done += 2
        elif r < 0.70:                                 # translate a mapped page
            s = mapped[randrange(len(mapped))]
            t.translate(s * page + 8, 64)
            done += 1
        elif r < 0.80:
            s = randrange(slots)
            t.first(s * page, s * page + 3 * page)
            done += 1
        elif r < 0.88:
            s = randrange(slots)
            for _ in t.overlapping(s * page, s * page + 4 * page - 1):
                pass
            done += 1
        elif r < 0.96:                                 # a translate that may fail
            s = randrange(slots)
            try:
                t.translate(s * page, 2 * page)
            except IOTLBError:
                pass
            done += 1
        elif r < 0.995:                                # batch of 64 lookups
            for i in range(64):
                batch[i] = mapped[randrange(len(mapped))] * page
            t.translate_many(batch, 8, default=0)
            done += 1
        else:                                          # ranged unmap, then refill
            s = randrange(slots - 8)
            k = t.unmap(s * page, (s + 8) * page - 1)
            for x in range(s, s + 8):
                if x in where:
                    take(mapped, where, where[x])
                    put(free, fwhere, x)
            for _ in range(k):
                x = take(free, fwhere, randrange(len(free)))
                t.map(x * page, x * page + page - 1, (x ^ 0x5A5A) * page, 3,
                      ("ctx", x) if x & 7 == 0 else None)
                put(mapped, where, x)
            done += 1 + k
        if done // every != (done - 2) // every and done >= every * (len(traced_samples) + 1):
            now = time.perf_counter()
            t._check()
            assert len(t) == n, (len(t), n)
            gc.collect()
            tk = traced_kib()
            traced_samples.append(tk)
            rate = every / (now - tlast) if now > tlast else 0
            tlast = time.perf_counter()
            print(f"{done:>12,} {len(t):>9,} {rss_kib() / 1024:>9.1f} {tk:>11,} "
                  f"{rate:>10,.0f}")
            sys.stdout.flush()
    elapsed = time.perf_counter() - t0
    removed = t.unmap()
    del mapped, where, free, fwhere
    gc.collect()
    end_traced, end_rss = traced_kib(), rss_kib()
    print("-" * len(head))
    print(f"{args.ops:,} operations in {elapsed:.1f} s ({args.ops / elapsed:,.0f} ops/s)")
    print(f"after unmap() ({removed:,} removed): RSS {end_rss / 1024:.1f} MiB, traced "
          f"{end_traced:,} KiB (baseline {base_traced:,} KiB, "
          f"diff {end_traced - base_traced:+,} KiB)")
    ok = True
    if tracemalloc.is_tracing():
        steady = traced_samples[1:] or traced_samples
        spread = max(steady) - min(steady)
        flat = spread <= args.flat_slack
        back = end_traced - base_traced <= args.base_slack
        ok = flat and back
        print(f"traced memory while full: min {min(steady):,} max {max(steady):,} KiB "
              f"(spread {spread:,} KiB: {'flat' if flat else 'NOT FLAT'}); "
              f"{'back to baseline' if back else 'NOT back to baseline'} after unmap()")
    print("RSS note: CPython/pymalloc keep freed arenas; RSS is reported, not asserted.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
