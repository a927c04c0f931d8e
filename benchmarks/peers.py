#!/usr/bin/env python
"""Side-by-side peer benchmark of ``iotlb.IOTLB`` (GitHub issue 6).

    python benchmarks/peers.py [--quick|--full] [--json OUT] [--markdown OUT] [--plot OUT.png]

One seeded workload (``iotlb.bench.make_workload``: IOTLB-like page-aligned layouts of
4 KiB..1 GiB entries, 48- and 64-bit addresses) drives every contender in the same run,
interleaved repeat by repeat; the report gives medians (ns per op) and each
contender's ratio to the Cython engine.  Absolute times on a shared machine are noise;
the ratios are what this measures.

Contenders: our Cython engine and pure-Python twin; ``intervaltree``, ``quicksect``,
``ncls``, ``superintervals``; a ``SortedDict`` model and a ``bisect`` model; and the
native floor ``benchmarks/floor.cpp`` (``std::map`` and a B+tree with 64-entry leaves
and per-child max-last inner nodes), compiled with the system ``g++ -O2`` into a temp
dir and fed the same workload through a binary file.

``--markdown`` rewrites only the region between ``<!-- peers:begin -->`` and
``<!-- peers:end -->`` of the given file (creating the markers at the end if absent).
"""
from __future__ import annotations

import argparse
import array
import datetime
import gc
import importlib
import json
import operator
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from iotlb import bench as B  # noqa: E402  (installed module; the shared generator)

_start = operator.attrgetter("start")
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1

MODES = {
    # sizes, repeats, per-cell budget (s), queries, 64-bit sizes, memory N
    "quick": dict(sizes=[1000, 10000, 100000], repeats=3, budget=3.0, k_lookup=5000,
                  k_overlap=1000, k_churn=2000, sizes64=[10000], mem_n=100000, traced=False,
                  min_time=0.02, sample_cap=0.15),
    "full": dict(sizes=[1000, 10000, 100000, 1000000], repeats=5, budget=30.0,
                 k_lookup=20000, k_overlap=4000, k_churn=10000, sizes64=[10000, 100000],
                 mem_n=1000000, traced=True, min_time=0.03, sample_cap=0.8),
}

FLOOR = ("std::map (C++)", "B+tree (C++)")


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


# --------------------------------------------------------------------------- peers
class PeerContender(B.Contender):
    """A third-party structure.  ``module`` is imported lazily; failures are results."""

    module = ""
    dist = ""
    dynamic = True
    half_open = False
    i32 = False

    def __init__(self):
        self._mod = None
        self._err = None
        try:
            self._mod = importlib.import_module(self.module)
        except Exception as exc:  # not installed / failed to build: that is its result
            self._err = f"n/a: not installed ({type(exc).__name__})"

    def unavailable(self):
        return self._err

    def na(self, op):
        if self.w.bits == 64 and not self.bits64:
            return f"n/a: {self.coords}"
        if not self.dynamic and op in ("unmap_all", "churn"):
            return "n/a: static"
        return super().na(op)

    def prepare(self, w):
        """Coordinates in the peer's own terms: rank-compressed int32 for 32-bit peers,
        ``last + 1`` ends for half-open ones.  Untimed, so peers pay nothing for it."""
        self.w = w
        if w.bits == 64 and not self.bits64:
            return
        names = ("starts", "lasts", "lookups", "ov_s", "ov_l",
                 "churn_us", "churn_ul", "churn_ms", "churn_ml")
        cols = {k: getattr(w, k, array.array("Q")) for k in names}
        if self.i32:
            import numpy as np
            allv = np.unique(np.concatenate([np.frombuffer(cols[k], dtype=np.uint64)
                                             for k in names[:5]]))
            if len(allv) + 2 > I32_MAX:
                raise RuntimeError("too many coordinates for int32")
            cols = {k: (np.searchsorted(allv, np.frombuffer(cols[k], dtype=np.uint64))
                        .astype(np.int64)).tolist() if k in names[:5] else [] for k in names}
        else:
            cols = {k: v.tolist() for k, v in cols.items()}
        d = 1 if self.half_open else 0
        self.S = cols["starts"]
        self.E = [x + d for x in cols["lasts"]]
        self.A = w.list("addrs")
        self.Q = cols["lookups"]
        self.QE = [x + d for x in self.Q]
        self.OS = cols["ov_s"]
        self.OE = [x + d for x in cols["ov_l"]]
        self.C = (cols["churn_us"], [x + d for x in cols["churn_ul"]], cols["churn_ms"],
                  [x + d for x in cols["churn_ml"]],
                  getattr(w, "churn_ma", array.array("Q")).tolist() if self.dynamic else [])

    def build_args(self):
        return self.S, self.E, self.A

    def churn_steps(self, lo, hi):
        return tuple(c[lo:hi] for c in self.C)

    def count_lookup(self, t, m):
        f = self._lookup1(t)
        return sum(1 for q, qe in zip(self.Q[:m], self.QE[:m]) if f(q, qe))

    def count_overlap(self, t, m):
        f = self._overlap1(t)
        return sum(len(f(s, e)) for s, e in zip(self.OS[:m], self.OE[:m]))


class IntervalTreeContender(PeerContender):
    name = "intervaltree"
    module = dist = "intervaltree"
    semantics = ("half-open [begin, end), Python int (any width), overlaps kept; "
                 "iterate = sorted(tree) (its own iteration is an unordered set)")
    coords = "int"
    half_open = True

    def build(self, S, E, A):
        t = self._mod.IntervalTree()
        add = t.addi
        for s, e, a in zip(S, E, A):
            add(s, e, a)
        return t

    def build_batch(self):
        return self._mod.IntervalTree.from_tuples(zip(self.S, self.E, self.A))

    def lookup(self, t):
        at = t.at
        for q in self.q("Q"):
            at(q)

    def _lookup1(self, t):
        return lambda q, qe: t.at(q)

    def _overlap1(self, t):
        return t.overlap

    def overlap(self, t):
        f = t.overlap
        for s, e in zip(self.q("OS"), self.q("OE")):
            f(s, e)

    def iterate(self, t):
        for _ in sorted(t):  # its own iteration is an unordered set
            pass

    def unmap_all(self, t):
        t.remove_overlap(0, 1 << 64)

    def churn(self, t, lo, hi):
        us, ue, ms, me, ma = self.churn_steps(lo, hi)
        rm, add = t.remove_overlap, t.addi
        for a, b, c, d, e in zip(us, ue, ms, me, ma):
            rm(a, b)
            add(c, d, e)


class QuicksectContender(PeerContender):
    name = "quicksect"
    module = dist = "quicksect"
    semantics = ("closed, C int (32-bit): 48-bit workload rank-compressed into int32; "
                 "insert-only (no delete); iterate = full-range search, sorted by start")
    coords = "i32"
    bits64 = False
    i32 = True

    def na(self, op):
        if op in ("unmap_all", "churn") and self.w.bits != 64:
            return "n/a: no delete"
        return super().na(op)

    def build(self, S, E, A):
        t = self._mod.IntervalTree()
        add = t.add
        for s, e, a in zip(S, E, A):
            add(s, e, a)
        return t

    def lookup(self, t):
        f = t.search
        for q in self.q("Q"):
            f(q, q)

    def _lookup1(self, t):
        return lambda q, qe: t.search(q, q)

    def _overlap1(self, t):
        return t.search

    def overlap(self, t):
        f = t.search
        for s, e in zip(self.q("OS"), self.q("OE")):
            f(s, e)

    def iterate(self, t):
        # no iterator: a full-range search, sorted (the search returns tree pre-order)
        for _ in sorted(t.search(I32_MIN, I32_MAX), key=_start):
            pass


class NclsContender(PeerContender):
    name = "ncls"
    module = dist = "ncls"
    semantics = "half-open, int64 (signed: no IOVA >= 2**63), static (built from arrays); addr kept in a side array"
    coords = "i64 (signed)"
    bits64 = False
    dynamic = False
    half_open = True

    def prepare(self, w):
        super().prepare(w)
        if w.bits == 64:
            return
        import numpy as np
        self.np = np
        self.nS = np.array(self.S, dtype=np.int64)
        self.nE = np.array(self.E, dtype=np.int64)
        self.nI = np.arange(len(self.S), dtype=np.int64)
        self.nA = np.frombuffer(w.addrs, dtype=np.uint64)
        self.nQ = np.array(self.Q, dtype=np.int64)
        self.nQE = self.nQ + 1
        self.nQI = np.arange(len(self.Q), dtype=np.int64)

    def na(self, op):
        if op == "build" and self.w.bits != 64:
            return "n/a: static"
        return super().na(op)

    def build_batch(self):
        # the structure plus the addr column it needs to answer like an IOTLB
        return self._mod.NCLS64(self.nS, self.nE, self.nI), self.nA.copy()

    def build_arrays(self, S, E, A):  # memory child: from fresh arrays
        np = self.np
        return (self._mod.NCLS64(np.array(S, dtype=np.int64), np.array(E, dtype=np.int64),
                                 np.arange(len(S), dtype=np.int64)),
                np.array(A, dtype=np.uint64))

    def lookup(self, t):
        f = t[0].find_overlap
        for q, qe in zip(self.q("Q"), self.q("QE")):
            next(f(q, qe), None)

    def lookup_batch(self, t):
        qi, hit = t[0].first_overlap_both(self.q("nQ"), self.q("nQE"), self.q("nQI"))
        return t[1][hit]

    def count_lookup_batch(self, t, m):
        qi, hit = t[0].first_overlap_both(self.nQ[:m], self.nQE[:m], self.nQI[:m])
        return len(qi)

    def _lookup1(self, t):
        f = t[0].find_overlap
        return lambda q, qe: next(f(q, qe), None) is not None

    def _overlap1(self, t):
        f = t[0].find_overlap
        return lambda s, e: list(f(s, e))

    def overlap(self, t):
        f = t[0].find_overlap
        for s, e in zip(self.q("OS"), self.q("OE")):
            list(f(s, e))

    def iterate(self, t):
        for _ in t[0].intervals():
            pass


class SuperintervalsContender(PeerContender):
    name = "superintervals"
    module = dist = "superintervals"
    semantics = ("closed (end-inclusive), C int (32-bit): 48-bit workload rank-compressed "
                 "into int32; static after build()")
    coords = "i32"
    bits64 = False
    dynamic = False
    i32 = True

    def prepare(self, w):
        super().prepare(w)
        if w.bits == 64:
            return
        import numpy as np
        self.nS = np.array(self.S, dtype=np.int32)
        self.nE = np.array(self.E, dtype=np.int32)
        self.nQ = np.array(self.Q, dtype=np.int32)

    def build(self, S, E, A):
        m = self._mod.IntervalMap()
        add = m.add
        for s, e, a in zip(S, E, A):
            add(s, e, a)
        m.build()
        return m

    def build_batch(self):
        m = self._mod.IntervalMap.from_arrays(self.nS, self.nE, self.A)
        m.build()
        return m

    def lookup(self, m):
        f = m.search_values
        for q in self.q("Q"):
            f(q, q)

    def lookup_batch(self, m):
        return m.search_values_batch(self.q("nQ"), self.q("nQ"))

    def count_lookup_batch(self, m, k):
        return sum(1 for x in m.search_values_batch(self.nQ[:k], self.nQ[:k]) if x)

    def _lookup1(self, m):
        return lambda q, qe: m.search_values(q, q)

    def _overlap1(self, m):
        return m.search_values

    def overlap(self, m):
        f = m.search_values
        for s, e in zip(self.q("OS"), self.q("OE")):
            f(s, e)

    def iterate(self, m):
        for _ in m:
            pass


# --------------------------------------------------------------------------- floor
class Floor:
    """Compiles floor.cpp and runs it on each workload; results land beside the rest."""

    def __init__(self, log):
        self.log = log
        self.tmp = tempfile.mkdtemp(prefix="iotlb-floor-")
        self.exe = os.path.join(self.tmp, "floor")
        self.error = None
        gxx = shutil.which("g++")
        if not gxx:
            self.error = "n/a: no g++"
            return
        cmd = [gxx, "-O2", "-std=c++17", os.path.join(HERE, "floor.cpp"), "-o", self.exe]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            self.error = "n/a: g++ failed"
            self.log(f"floor: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
        else:
            p = subprocess.run([self.exe, "selftest"], capture_output=True, text=True)
            if p.returncode:  # the B+tree disagrees with a brute force: do not trust it
                self.error = "n/a: floor selftest failed"
                self.log(f"floor selftest failed: {p.stderr}")
        self.cmd = " ".join(["g++", "-O2", "-std=c++17", "benchmarks/floor.cpp"])
        self.version = subprocess.run([gxx, "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0]

    def write(self, w, repeats, tag="time"):
        path = os.path.join(self.tmp, f"work-{tag}-{w.bits}-{w.n}.bin")
        with open(path, "wb") as f:
            f.write(b"IOTLBWK1")
            f.write(struct.pack("<6Q", w.n, w.k_lookup, w.k_overlap, w.k_churn,
                                w.churn_chunks, repeats))
            for name in ("starts", "lasts", "addrs", "lookups", "ov_s", "ov_l", "churn_us",
                         "churn_ul", "churn_ms", "churn_ml", "churn_ma"):
                getattr(w, name).tofile(f)
        return path

    def begin(self, runner, w):
        self.w, self.check, self.min_time = w, runner.check, runner.min_time
        self.clock = runner.clock
        self.samples = {name: {} for name in FLOOR}
        self.checks = {}
        self.failed = self.error
        self.path = None if self.error else self.write(w, runner.repeats)

    def repeat(self, r):
        if self.failed:
            return
        p = subprocess.run([self.exe, self.path, "time", str(self.check), str(r),
                            str(int(self.min_time * 1e9)), self.clock],
                           capture_output=True, text=True)
        if p.returncode:
            self.log(f"floor failed: {p.stderr}")
            self.failed = "n/a: floor run failed"
            return
        out = json.loads(p.stdout)
        for name, key in zip(FLOOR, ("stdmap", "btree")):
            d = out[key]
            for op in ("build", "unmap_all", "lookup", "overlap", "iterate", "churn"):
                self.samples[name].setdefault(op, []).extend(d[op])
            self.checks[name] = dict(d["checks"], lookup_batch_hits=d["checks"]["lookup_hits"])

    def end(self, res, chk):
        if self.path:
            os.unlink(self.path)
        for name in FLOOR:
            res[name] = {}
            if self.failed:
                for op in B.OPS:
                    res[name][op] = {"na": self.failed}
                continue
            for op, ns in self.samples[name].items():
                res[name][op] = {"ns": ns, "median": statistics.median(ns),
                                 "note": "native loop"}
            # the native loop is the batch form too
            res[name]["build_batch"] = dict(res[name]["build"], note="native loop (= build)")
            res[name]["lookup_batch"] = dict(res[name]["lookup"], note="native loop (= lookup)")
            chk[name] = self.checks[name]

    def memory(self, w):
        out = {}
        if self.error:
            return {name: {"na": self.error} for name in FLOOR}
        path = self.write(w, 1, "floormem")
        for name, key in zip(FLOOR, ("stdmap", "btree")):
            p = subprocess.run([self.exe, path, "mem", key], capture_output=True, text=True)
            if p.returncode:
                out[name] = {"na": "n/a: floor run failed"}
                continue
            d = json.loads(p.stdout)[key]
            out[name] = {"n": d["n"], "bytes_per_entry": max(d["malloc_bytes_per_entry"],
                                                             d["rss_bytes_per_entry"]),
                         "rss_per_entry": d["rss_bytes_per_entry"],
                         "malloc_per_entry": d["malloc_bytes_per_entry"],
                         "method": "max(glibc mallinfo2 delta = heap bytes in use incl. "
                                   "chunk headers, RSS delta)"}
        os.unlink(path)
        return out

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- contenders
def contenders():
    cons = B.default_contenders()
    cons += [IntervalTreeContender(), QuicksectContender(), NclsContender(),
             SuperintervalsContender()]
    return cons


def describe(cons, floor):
    rows = []
    for c in cons:
        if c.name == "cython":
            lib, ver = "iotlb._engine", "this repo"
        elif c.name == "python":
            lib, ver = "iotlb._pyengine", "this repo"
        elif c.name in ("sorteddict", "bisect"):
            lib = "sortedcontainers.SortedDict" if c.name == "sorteddict" else "bisect + list"
            ver = _version("sortedcontainers") if c.name == "sorteddict" else "stdlib"
        else:
            lib, ver = c.module, _version(c.dist)
        rows.append({"name": c.name, "library": lib, "version": ver,
                     "semantics": c.semantics, "coords": c.coords,
                     "dynamic": getattr(c, "dynamic", True) and c.name != "quicksect",
                     "unavailable": c.unavailable()})
    rows.append({"name": FLOOR[0], "library": "benchmarks/floor.cpp", "version":
                 getattr(floor, "version", "?"), "coords": "u64", "dynamic": True,
                 "semantics": "closed, u64, disjoint only (predecessor lookup), native loop",
                 "unavailable": floor.error})
    rows.append({"name": FLOOR[1], "library": "benchmarks/floor.cpp", "version":
                 getattr(floor, "version", "?"), "coords": "u64", "dynamic": True,
                 "semantics": "closed, u64, overlaps kept, kernel semantics (64-entry leaves, "
                              "per-child max-last), native loop",
                 "unavailable": floor.error})
    return rows


# --------------------------------------------------------------------------- memory
MEM_NOTE = {
    "cython": "`__sizeof__` = the engine's own C allocations (PyMem, so tracemalloc sees "
              "them too)",
    "python": "Python objects: tracemalloc agrees with RSS",
    "sorteddict": "Python objects: tracemalloc agrees with RSS",
    "bisect": "Python objects: tracemalloc agrees with RSS",
    "intervaltree": "Python objects: tracemalloc agrees with RSS",
    "quicksect": "Cython nodes are Python objects: tracemalloc agrees with RSS",
    "ncls": "tracemalloc sees only the numpy addr column; NCLS's own C arrays are malloc'd",
    "superintervals": "tracemalloc sees only the Python addr values; the C++ vectors are "
                      "malloc'd",
}


def memory_child(name, path, n, bits, op, traced=True):
    """Run in a fresh process: build ``name`` from the layout in ``path`` (with ``op``,
    "build" or "build_batch"), report bytes per entry."""
    with open(path, "rb") as f:
        f.read(8 + 48)
        S, L, A = (array.array("Q") for _ in range(3))
        for a in (S, L, A):
            a.fromfile(f, n)
    c = {c.name: c for c in contenders()}[name]
    if c.unavailable():
        return {"na": c.unavailable()}
    w = B.Workload(n=n, bits=bits, starts=S, lasts=L, addrs=A, k_churn=0,
                   lookups=array.array("Q"), ov_s=array.array("Q"), ov_l=array.array("Q"))
    c.prepare(w)
    # the per-call build iterates arrays, so every int the structure keeps is its own
    if isinstance(c, PeerContender):
        typ = "i" if c.i32 else "q"
        SS, EE = array.array(typ, c.S), array.array(typ, c.E)
        if op == "build":
            del c.S, c.E, c.A
    else:
        SS, EE = S, L
    w._lists.clear()

    def build():
        if isinstance(c, NclsContender):
            return c.build_arrays(SS, EE, A)
        if op == "build_batch":
            return c.build_batch()
        return c.build(SS, EE, A)

    gc.collect()
    gc.disable()
    r0 = B._rss()
    t0 = time.perf_counter()
    obj = build()
    dt = time.perf_counter() - t0
    gc.collect()
    r1 = B._rss()
    out = {"n": n, "op": op, "rss_per_entry": (r1 - r0) / n, "build_s": dt}
    if name == "cython":
        out["sizeof_per_entry"] = sys.getsizeof(obj) / n
    del obj
    w._lists.clear()
    gc.collect()
    if traced and dt < 15:
        tracemalloc.start()
        t = tracemalloc.get_traced_memory()[0]
        obj = build()
        out["tracemalloc_per_entry"] = (tracemalloc.get_traced_memory()[0] - t) / n
        tracemalloc.stop()
        del obj
    # the larger of the two views (RSS misses untouched capacity, tracemalloc misses
    # plain malloc): the conservative figure, the same rule for every contender
    out["bytes_per_entry"] = max(out["rss_per_entry"], out.get("tracemalloc_per_entry", 0))
    out["method"] = ("max(RSS delta, tracemalloc) in a fresh process" +
                     (" (built by the bulk constructor)" if op == "build_batch" else "") +
                     "; " + MEM_NOTE.get(name, ""))
    return out


def measure_memory(runner, cons, floor, n, bits, log, traced=True):
    """Bytes per entry for every contender, each in a fresh interpreter."""
    w = runner.workload(n, bits)
    path = floor.write(w, 1, "mem") if not floor.error else None
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="iotlb-mem-"), "work.bin")
        with open(path, "wb") as f:
            f.write(b"IOTLBWK1" + struct.pack("<6Q", n, 0, 0, 0, 0, 1))
            for a in (w.starts, w.lasts, w.addrs):
                a.tofile(f)
    res = {}
    for c in cons:
        if c.unavailable():
            res[c.name] = {"na": c.unavailable()}
            continue
        built = runner.results[bits].get(n, {}).get(c.name, {})
        op = next((o for o in ("build", "build_batch") if "median" in built.get(o, {})),
                  None)
        if op is None:
            res[c.name] = {"na": "skipped: not built at this N (time budget)"}
            continue
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memchild",
                            c.name, path, str(n), str(bits), op]
                           + ([] if traced else ["--no-trace"]), capture_output=True,
                           text=True, cwd=ROOT)
        if p.returncode:
            log(f"memory child for {c.name} failed: {p.stderr[-1500:]}")
            res[c.name] = {"na": "n/a: measurement failed"}
        else:
            res[c.name] = json.loads(p.stdout.strip().splitlines()[-1])
        log(f"  memory {c.name}: {res[c.name]}")
    res.update(floor.memory(w))
    os.unlink(path)
    return res


# --------------------------------------------------------------------------- targets
def med(results, bits, n, name, op):
    return results.get(bits, {}).get(n, {}).get(name, {}).get(op, {}).get("median")


def targets(results, memory, sizes):
    out = []
    R = results
    ops = list(B.OPS)
    big = max(sizes)

    def collect(peer, thresh, label, ops_=ops):
        worst, misses, total = None, [], 0
        for n in sizes:
            for op in ops_:
                o, p = med(R, 48, n, "cython", op), med(R, 48, n, peer, op)
                if o is None or p is None:
                    continue
                total += 1
                r = p / o
                if worst is None or r < worst[0]:
                    worst = (r, op, n)
                if r < thresh:
                    misses.append(f"{op} N={n:,}: {r:.2g}x")
        return worst, misses, total

    for peer in ("intervaltree", "sorteddict"):
        worst, miss, total = collect(peer, 10.0, peer)
        out.append({"target": f">= 10x faster than {peer} on every op and N",
                    "met": bool(total) and not miss, "checked": total,
                    "worst": worst and f"{worst[0]:.3g}x ({worst[1]}, N={worst[2]:,})",
                    "misses": miss})
    for peer in ("quicksect", "superintervals"):
        worst, miss, total = collect(peer, 1.0, peer)
        out.append({"target": f"faster than {peer} on every op it supports",
                    "met": bool(total) and not miss, "checked": total,
                    "worst": worst and f"{worst[0]:.3g}x ({worst[1]}, N={worst[2]:,})",
                    "misses": miss})
    # lookup within 1.5x of the fastest static structure (ncls, superintervals)
    miss, detail = [], []
    for op in ("lookup", "lookup_batch"):
        for n in sizes:
            o = med(R, 48, n, "cython", op)
            st = [(med(R, 48, n, s, op), s) for s in ("ncls", "superintervals")]
            st = [x for x in st if x[0] is not None]
            if o is None or not st:
                continue
            best, who = min(st)
            r = o / best
            detail.append(f"{op} N={n:,}: ours takes {r:.2g}x the time of {who}")
            if r > 1.5:
                miss.append(detail[-1])
    out.append({"target": "lookup within 1.5x of the fastest static structure",
                "met": bool(detail) and not miss, "checked": len(detail),
                "worst": max(detail, key=lambda s: float(s.split("takes ")[1].split("x")[0]))
                if detail else None, "misses": miss})
    # N = largest: lookup and churn per call faster than std::map natively
    miss, detail = [], []
    for op in ("lookup", "churn"):
        o, s = med(R, 48, big, "cython", op), med(R, 48, big, FLOOR[0], op)
        if o is None or s is None:
            continue
        detail.append(f"{op} N={big:,}: ours {o:.0f} ns vs std::map {s:.0f} ns")
        if o >= s:
            miss.append(detail[-1])
    out.append({"target": f"at N={big:,} lookup and churn per call faster than std::map in C++",
                "met": len(detail) == 2 and not miss, "checked": len(detail),
                "worst": "; ".join(detail), "misses": miss})
    # issue 18: per-call lookup at the largest N within 1.5x the native B+tree (the
    # dynamic floor: same semantics, a native loop, measured in the same run)
    miss, detail = [], []
    o, b = med(R, 48, big, "cython", "lookup"), med(R, 48, big, FLOOR[1], "lookup")
    if o is not None and b is not None:
        detail.append(f"lookup N={big:,}: ours {o:.0f} ns = {o / b:.2g}x the C++ B+tree's "
                      f"{b:.0f} ns")
        if o > 1.5 * b:
            miss.append(detail[-1])
    out.append({"target": f"at N={big:,} lookup per call within 1.5x the native C++ B+tree",
                "met": bool(detail) and not miss, "checked": len(detail),
                "worst": "; ".join(detail), "misses": miss})
    # issue 18: >= 10x a SortedDict model on lookup and churn at every N
    worst, miss, total = collect("sorteddict", 10.0, "sorteddict", ("lookup", "churn"))
    out.append({"target": ">= 10x faster than sorteddict on lookup and churn at every N",
                "met": bool(total) and not miss, "checked": total,
                "worst": worst and f"{worst[0]:.3g}x ({worst[1]}, N={worst[2]:,})",
                "misses": miss})
    # batch build within 2x of ncls
    miss, detail = [], []
    for n in sizes:
        o, p = med(R, 48, n, "cython", "build_batch"), med(R, 48, n, "ncls", "build_batch")
        if o is None or p is None:
            continue
        detail.append(f"N={n:,}: ours takes {o / p:.2g}x the time of ncls")
        if o > 2 * p:
            miss.append(detail[-1])
    out.append({"target": "batch build within 2x of ncls", "met": bool(detail) and not miss,
                "checked": len(detail), "worst": "; ".join(detail), "misses": miss})
    # memory
    ours = memory.get("cython", {}).get("bytes_per_entry")
    dyn = ("python", "intervaltree", "quicksect", "sorteddict", "bisect", FLOOR[0])
    miss, detail = [], []
    if ours is not None:
        for peer in dyn:
            b = memory.get(peer, {}).get("bytes_per_entry")
            if b is None:
                continue
            detail.append(f"{peer} {b:.0f}")
            if ours >= b:
                miss.append(f"{peer}: {b:.0f} B <= ours {ours:.0f} B")
        if ours > 64:
            miss.append(f"ours {ours:.0f} B > 64 B")
    out.append({"target": "memory per entry below every dynamic peer and <= 64 B",
                "met": ours is not None and not miss, "checked": len(detail),
                "worst": (f"ours {ours:.0f} B/entry vs " + ", ".join(detail))
                if ours is not None else "not measured", "misses": miss})
    return out


# --------------------------------------------------------------------------- report
def cell_text(cell, base, name, full=None):
    if "median" not in cell:
        return cell.get("na", "-")
    txt = B.fmt_ns(cell["median"])
    if full and cell.get("ops_per_sample", full) < full:
        txt += "*"
    if base and name != "cython":
        txt += f" ({B.fmt_ratio(cell['median'] / base)})"
    return txt


def op_table(results, bits, names, op, meta):
    head = ["N"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    full = {"lookup": meta["k_lookup"], "lookup_batch": meta["k_lookup"],
            "overlap": meta["k_overlap"], "churn": meta["k_churn"]}.get(op)
    for n in sorted(results.get(bits, {})):
        cells = results[bits][n]
        base = cells.get("cython", {}).get(op, {}).get("median")
        row = [f"{n:,}"] + [cell_text(cells.get(nm, {}).get(op, {}), base, nm, full)
                            for nm in names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary(R, names, meta):
    """One row per contender: its time over ours per op at the smallest and largest N."""
    sizes = sorted(R.get(48, {}))
    if not sizes:
        return []
    lo, hi = sizes[0], sizes[-1]
    out = [f"### Summary: time relative to ours (48-bit; N = {lo:,} / N = {hi:,})", "",
           "| contender | " + " | ".join(B.OPS) + " |", "|---|" + "---:|" * len(B.OPS)]
    for nm in names:
        if nm == "cython":
            continue
        row = []
        for op in B.OPS:
            parts = []
            for n in (lo, hi):
                o = R[48][n].get("cython", {}).get(op, {}).get("median")
                c = R[48][n].get(nm, {}).get(op, {})
                if o and "median" in c:
                    parts.append(B.fmt_ratio(c["median"] / o))
                else:
                    na = c.get("na", "-")
                    parts.append("n/a" if na.startswith("n/a") else
                                 "skip" if na.startswith("skip") else "-")
            row.append(" / ".join(parts) if parts[0] != parts[1] or "x" in parts[0]
                       else parts[0])
        out.append(f"| {nm} | " + " | ".join(row) + " |")
    out += ["", "Below 1x the contender is faster than ours. Details per N follow.", ""]
    return out


def markdown(report):
    R = {int(b): {int(n): v for n, v in d.items()} for b, d in report["results"].items()}
    names = [c["name"] for c in report["contenders"]]
    m = report["meta"]
    out = [f"_Generated by `{m['command']}` on {m['date']} ({m['mode']} mode, "
           f"{m['elapsed_s']:.0f} s; engine source `_engine.pyx` sha256 "
           f"{m.get('engine_source', '?')}): {m['cpu']}, {m['cores']} cores, Python "
           f"{m['python']}, {m['gxx']}. Seed {m['seed']}, {m['repeats']} repeats "
           f"(median), {m['k_lookup']:,} lookups / {m['k_overlap']:,} overlap queries / "
           f"{m['k_churn']:,} churn steps per repeat. Other jobs shared the machine: "
           f"read the ratios, not the absolute times._", ""]
    out += ["### Contenders", "",
            "| contender | library (version) | semantics | coordinates |", "|---|---|---|---|"]
    for c in report["contenders"]:
        sem = c["semantics"] + (f" — **{c['unavailable']}**" if c["unavailable"] else "")
        out.append(f"| {c['name']} | {c['library']} ({c['version']}) | {sem} | {c['coords']} |")
    out += ["", "Cells: median ns per op, and in parentheses the contender's time divided by "
            "the Cython engine's (`12x` = 12 times slower than ours; `0.5x` = twice as fast). "
            "`*` = too slow to answer the whole query stream within the budget, so timed on a "
            "prefix of it (same queries, same order). "
            "`n/a: static` = the structure cannot change after it is built, `n/a: no delete` "
            "= it can insert but not remove, `n/a: i32`/`n/a: i64 (signed)` = its "
            "coordinates cannot hold the 64-bit workload, `n/a: no batch API` = nothing to "
            "compare with `map_many`/`translate_many`, `skipped: est. …` = the contender "
            "would exceed the per-cell time budget at that N (estimated from the smaller "
            "N). Times are thread CPU time. The C++ columns are a native loop, so their `_batch` rows repeat the "
            "per-call figure.", ""]
    out += summary(R, names, m)
    out += ["### 48-bit workload", ""]
    for op, what in B.OPS.items():
        out += [f"**{op}** — {what}", "", op_table(R, 48, names, op, m), ""]
    if 64 in R:
        out += ["### 64-bit workload (the same layout at 0xffff000000000000 and up)", ""]
        for op, what in B.OPS.items():
            out += [f"**{op}** — {what}", "", op_table(R, 64, names, op, m), ""]
    mem = report["memory"]
    out += [f"### Bytes per entry (48-bit workload, N = {m['mem_n']:,})", "",
            "| contender | bytes/entry | ratio to ours | RSS delta | tracemalloc | other | method / note |",
            "|---|---:|---:|---:|---:|---:|---|"]
    ours = mem.get("cython", {}).get("bytes_per_entry")
    f = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    for name in names:
        d = mem.get(name, {})
        if "bytes_per_entry" not in d:
            out.append(f"| {name} | {d.get('na', '-')} | | | | | |")
            continue
        other = (f"`__sizeof__` {d['sizeof_per_entry']:.1f}" if "sizeof_per_entry" in d else
                 f"malloc {d['malloc_per_entry']:.1f}" if "malloc_per_entry" in d else "")
        nn = f" (N={d['n']:,})" if d.get("n") and d["n"] != m["mem_n"] else ""
        ratio = f"{d['bytes_per_entry'] / ours:.2g}x" if ours and name != "cython" else ""
        out.append(f"| {name} | {d['bytes_per_entry']:.1f}{nn} | {ratio} | "
                   f"{f(d.get('rss_per_entry'))} | {f(d.get('tracemalloc_per_entry'))} | "
                   f"{other} | {d.get('method', '')} |")
    out += ["", "### Targets (issues 6 and 18)", "",
            "Unless stated otherwise a ratio is the peer's time over ours, as in the tables "
            "(below 1x = the peer is faster).", "",
            "| target | result | detail |", "|---|---|---|"]
    for t in report["targets"]:
        res = "met" if t["met"] else ("**missed**" if t["checked"] else "not measured")
        det = t["worst"] or ""
        if t["misses"] and not t["met"]:
            det = (f"misses ({len(t['misses'])}/{t['checked']}): "
                   + "; ".join(t["misses"][:8]) + (" …" if len(t["misses"]) > 8 else ""))
        elif t["met"] and t["worst"]:
            det = f"closest: {t['worst']}"
        out.append(f"| {t['target']} | {res} | {det} |")
    if report["problems"]:
        out += ["", "Cross-check disagreements (contenders answered differently):", ""]
        out += [f"- {p}" for p in report["problems"]]
    else:
        out += ["", "Cross-check: every contender returned the same lookup hit count, "
                "overlap result count and live size as the workload expects."]
    if report.get("plot"):
        out += ["", f"![ns per op against N]({report['plot']})"]
    return "\n".join(out)


def write_markdown(path, text):
    region = f"{BEGIN}\n{text}\n{END}"
    if os.path.exists(path):
        with open(path) as f:
            doc = f.read()
        if BEGIN in doc and END in doc and doc.index(BEGIN) < doc.index(END):
            doc = doc[:doc.index(BEGIN)] + region + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip("\n") + "\n\n" + region + "\n"
    else:
        doc = f"# Performance\n\n{region}\n"
    with open(path, "w") as f:
        f.write(doc)


def plot(report, path, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipping the plot")
        return False
    R = {int(n): v for n, v in report["results"]["48"].items()}
    names = [c["name"] for c in report["contenders"]]
    ops = list(B.OPS)
    fig, axes = plt.subplots(3, 3, figsize=(15, 13))
    styles = {}
    cmap = plt.get_cmap("tab10")
    for i, nm in enumerate(names):
        styles[nm] = dict(color=cmap(i % 10), marker="os^vD<>ph*"[i % 10],
                          lw=3 if nm == "cython" else 1.3,
                          ls="--" if "C++" in nm else "-")
    for ax, op in zip(axes.flat, ops):
        for nm in names:
            xs = [n for n in sorted(R) if "median" in R[n].get(nm, {}).get(op, {})]
            if xs:
                ax.plot(xs, [R[n][nm][op]["median"] for n in xs], label=nm, **styles[nm])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel("N entries")
        ax.set_ylabel("ns / op")
        ax.grid(True, which="both", alpha=0.3)
    ax = axes.flat[len(ops)]
    mem = report["memory"]
    bars = [(nm, mem[nm]["bytes_per_entry"]) for nm in names
            if "bytes_per_entry" in mem.get(nm, {})]
    ax.barh([b[0] for b in bars], [b[1] for b in bars],
            color=[styles[b[0]]["color"] for b in bars])
    for i, (_, v) in enumerate(bars):
        ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    ax.set_xlim(0, max([b[1] for b in bars] + [64]) * 1.15)
    ax.invert_yaxis()
    ax.set_title(f"bytes per entry (N={report['meta']['mem_n']:,}; dotted: 64 B)")
    ax.axvline(64, color="k", ls=":", lw=1)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for a in axes.flat[1:len(ops)]:
        for h, l in zip(*a.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="lower center", ncol=6)
    fig.suptitle("iotlb vs peers: median ns per op (48-bit workload; lower is better)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _intkeys(d):
    return {int(b): {int(n): v for n, v in per.items()} for b, per in d.items()}


def render(a):
    """Re-render the markdown region and the plot from a saved JSON report."""
    with open(a.render) as f:
        report = json.load(f)
    report["targets"] = targets(_intkeys(report["results"]), report["memory"],
                                report["meta"]["sizes"])
    report.pop("plot", None)
    if a.plot and plot(report, a.plot, lambda m: print(m, file=sys.stderr)):
        report["plot"] = os.path.relpath(a.plot, os.path.dirname(os.path.abspath(
            a.markdown)) if a.markdown else os.getcwd())
    md = markdown(report)
    if a.markdown:
        write_markdown(a.markdown, md)
    else:
        print(md)
    return 0


def _engine_source():
    """The first 12 hex digits of sha256(iotlb/_engine.pyx): which engine was timed."""
    import hashlib
    try:
        with open(os.path.join(ROOT, "iotlb", "_engine.pyx"), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        return "?"


# --------------------------------------------------------------------------- main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_memchild":
        name, path, n, bits, op = argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5]
        print(json.dumps(memory_child(name, path, n, bits, op, argv[6:] != ["--no-trace"])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick",
                   help="N = 1e3..1e5, 3 repeats (under 2 minutes; the default)")
    g.add_argument("--full", dest="mode", action="store_const", const="full",
                   help="N = 1e3..1e6, 5 repeats (under 20 minutes)")
    p.add_argument("--json", metavar="OUT", help="write the full results as JSON")
    p.add_argument("--markdown", metavar="OUT",
                   help="rewrite the peers:begin/end region of OUT (e.g. docs/performance.md)")
    p.add_argument("--plot", metavar="OUT.png", help="plot ns/op against N (needs matplotlib)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="thread CPU time (default: the scheduler's gifts to other jobs on "
                        "a shared machine are not counted) or wall time")
    p.add_argument("--sizes", help="override the mode's sizes, e.g. 1000,100000")
    p.add_argument("--no-64", dest="no64", action="store_true", help="skip the 64-bit workload")
    p.add_argument("--no-memory", dest="nomem", action="store_true",
                   help="skip the bytes-per-entry measurement")
    p.add_argument("--only", metavar="NAMES",
                   help="time only these contenders (comma-separated, e.g. cython,sorteddict;"
                        " the C++ floor always runs): for quick looks, not for the page")
    p.add_argument("--render", metavar="JSON",
                   help="no run: re-render --markdown/--plot from a saved --json report")
    a = p.parse_args(argv)
    if a.render:
        return render(a)
    mode = a.mode or "quick"
    cfg = dict(MODES[mode])
    if a.sizes:
        cfg["sizes"] = [int(float(x)) for x in a.sizes.split(",")]
        cfg["mem_n"] = max(cfg["sizes"])
        cfg["sizes64"] = [n for n in cfg["sizes64"] if n in cfg["sizes"]]
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    engine_source = _engine_source()  # before the run: the source being timed
    cons = contenders()
    if a.only:
        want = set(a.only.split(","))
        unknown = want - {c.name for c in cons}
        if unknown:
            p.error(f"--only: no contender named {', '.join(sorted(unknown))} (have: "
                    f"{', '.join(c.name for c in cons)})")
        if a.markdown:
            p.error("--only and --markdown: the page's tables need every contender")
        cons = [c for c in cons if c.name in want]
    for c in cons:
        if c.unavailable():
            log(f"{c.name}: {c.unavailable()}")
    floor = Floor(log)
    if floor.error:
        log(f"C++ floor: {floor.error}")
    runner = B.Runner(cons, repeats=cfg["repeats"], budget=cfg["budget"], seed=a.seed,
                      k_lookup=cfg["k_lookup"], k_overlap=cfg["k_overlap"],
                      k_churn=cfg["k_churn"], min_time=cfg["min_time"], clock=a.clock,
                      sample_cap=cfg["sample_cap"], log=log)
    runner.external.append(floor)
    try:
        runner.run(cfg["sizes"], bits=48)
        if not a.no64 and cfg["sizes64"]:
            runner.run(cfg["sizes64"], bits=64)
        memory = {}
        if not a.nomem:
            log(f"memory at N={cfg['mem_n']}")
            memory = measure_memory(runner, cons, floor, cfg["mem_n"], 48, log,
                                    traced=cfg["traced"])
    finally:
        floor.close()
    elapsed = time.perf_counter() - t_start
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    shown, skip = [], False  # the command as a reader would rerun it (no --json path)
    for arg in argv:
        if skip or arg == "--json":
            skip = not skip
            continue
        if not arg.startswith("--json="):
            shown.append(arg)
    cmd = "python benchmarks/peers.py " + " ".join(shown)
    report = {
        "meta": {"mode": mode, "command": cmd.strip(), "elapsed_s": elapsed,
                 "date": datetime.date.today().isoformat(), "cpu": cpu,
                 "cores": os.cpu_count(), "python": platform.python_version(),
                 "gxx": getattr(floor, "version", "no g++"), "seed": a.seed,
                 "repeats": cfg["repeats"], "budget_s": cfg["budget"],
                 "k_lookup": cfg["k_lookup"], "k_overlap": cfg["k_overlap"],
                 "k_churn": cfg["k_churn"], "mem_n": cfg["mem_n"],
                 "sizes": cfg["sizes"], "sizes64": cfg["sizes64"],
                 "engine": "cython" if not cons[0].unavailable() else "not built",
                 "engine_source": engine_source,
                 "gc": "automatic GC disabled while timing (as timeit does)",
                 "clock": a.clock, "min_time_s": cfg["min_time"]},
        "ops": B.OPS,
        "contenders": describe(cons, floor),
        "results": {str(b): {str(n): v for n, v in d.items()}
                    for b, d in runner.results.items()},
        "checks": {str(b): {str(n): v for n, v in d.items()}
                   for b, d in runner.checks.items()},
        "memory": memory,
        "problems": B.check_problems(runner.checks),
    }
    report["targets"] = targets(runner.results, memory, cfg["sizes"])
    if a.plot:
        if plot(report, a.plot, log):
            report["plot"] = os.path.relpath(a.plot, os.path.dirname(os.path.abspath(
                a.markdown)) if a.markdown else os.getcwd())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
            f.write("\n")
    md = markdown(report)
    if a.markdown:
        write_markdown(a.markdown, md)
    else:
        print(md)
    for t in report["targets"]:
        log(f"target: {t['target']}: {'met' if t['met'] else 'MISSED'} "
            f"{'; '.join(t['misses'][:5]) or t['worst'] or ''}")
    for msg in report["problems"]:
        log(f"MISMATCH: {msg}")
    log(f"done in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
