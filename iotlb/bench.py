"""``iotlb bench``: a quick side-by-side speed run of the engine against simple models.

Four contenders run the same seeded workload, interleaved repeat by repeat so that noise
from a busy machine hits them alike; the table reports medians and each contender's
ratio to the Cython engine (``2.0x`` = the contender takes twice as long per operation):

* ``cython``     -- ``iotlb._engine.IOTLB`` (the default engine);
* ``python``     -- ``iotlb._pyengine.IOTLB``, the pure-Python twin;
* ``sorteddict`` -- a ``sortedcontainers.SortedDict`` keyed by start;
* ``bisect``     -- two plain lists kept sorted with :mod:`bisect`.

The two models are what a Python user would write for a non-overlapping interval map:
lookup is "the predecessor by start, if it reaches the address", so they are exact only
for disjoint entries (the workload's layout is disjoint) and carry no augmentation; a
key that is mapped twice overwrites.  Both are thus *cheaper* than real
``vhost_iotlb`` semantics -- a conservative baseline.

The workload generator here is the one the full peer comparison
(``benchmarks/peers.py``) uses too: an IOTLB-like layout of page-aligned entries of
4 KiB to 1 GiB (huge pages aligned), random gaps, inserted in shuffled order; point
lookups that hit 90 % of the time; short overlap queries; churn that unmaps one live
entry and maps a replacement in its slot, so N stays constant.  ``bits=64`` is the
same layout shifted to the top of the address space (bit 63 set).

>>> w = make_workload(100, seed=1)
>>> len(w.starts), all(s <= l for s, l in zip(w.starts, w.lasts))
(100, True)
>>> sum(w.lookup_is_hit) == w.lookup_hits
True
"""
from __future__ import annotations

import argparse
import array
import bisect
import gc
import itertools
import json
import os
import random
import statistics
import sys
import time
from typing import Dict, List, Optional

from sortedcontainers import SortedDict

__all__ = ["Workload", "make_workload", "NotApplicable", "Contender", "EngineContender",
           "SortedDictModel", "BisectModel", "SortedDictContender", "BisectContender",
           "Runner", "OPS", "main"]

PAGE = 4096
U64_MAX = (1 << 64) - 1
#: Added to every IOVA of the 48-bit layout to make the 64-bit one.
SHIFT64 = (1 << 64) - (1 << 48)

#: (log2 of the size in pages, weight): 40 % 4 KiB, 25 % 8-64 KiB, 12 % 128 KiB-1 MiB,
#: 15 % 2 MiB huge pages, 7.5 % 4-512 MiB, 0.5 % 1 GiB huge pages.
_SIZE_MIX = ([(0, 40.0)] + [(e, 6.25) for e in range(1, 5)] + [(e, 3.0) for e in range(5, 9)]
             + [(9, 15.0)] + [(e, 7.5 / 8) for e in range(10, 18)] + [(18, 0.5)])

#: Operation keys, in table order, with what one "op" is.
OPS = {
    "build": "map() one entry, per call from Python (N calls into an empty structure)",
    "build_batch": "batch build of N entries (map_many / the peer's bulk constructor), per entry",
    "lookup": "point lookup first(iova, iova), per call from Python, 90 % hits",
    "lookup_batch": "point lookups as one batch call (translate_many / vectorised query), per query",
    "overlap": "all entries overlapping a 4 KiB-16 MiB range, per query (list of results)",
    "iterate": "in-order iteration over every entry, per entry",
    "unmap_all": "range-unmap 0..~0 of a full structure, per entry removed",
    "churn": "one unmap(start, last) of a live entry + one map() of its replacement, per pair",
}


class Workload:
    """A seeded workload: the layout in insertion order plus every query stream.

    Arrays are ``array('Q')``; the ``*_list`` properties give cached Python lists (the
    per-call loops iterate lists so that no contender pays for unboxing).
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)
        self._lists: Dict[str, list] = {}

    def list(self, name: str) -> list:
        if name not in self._lists:
            self._lists[name] = getattr(self, name).tolist()
        return self._lists[name]

    def churn_steps(self, lo: int, hi: int):
        """Churn steps ``lo..hi-1`` as lists (us, ul, ms, ml, ma).  Steps must be applied
        in order: each starts from the state the ones before it leave."""
        return tuple(self.list(f)[lo:hi]
                     for f in ("churn_us", "churn_ul", "churn_ms", "churn_ml", "churn_ma"))


def make_workload(n: int, *, bits: int = 48, seed: int = 1, k_lookup: int = 10000,
                  k_overlap: int = 2000, k_churn: int = 5000,
                  churn_chunks: int = 3) -> Workload:
    """Generate the workload for ``n`` entries; the same arguments give the same bytes.

    ``bits`` is 48 or 64 (the 64-bit layout is the 48-bit one plus :data:`SHIFT64`).
    ``churn_chunks`` chunks of ``k_churn`` steps are generated back to back (each chunk
    starts from the state the previous one left), one per timed repeat.

    >>> a = make_workload(50, seed=7); b = make_workload(50, seed=7)
    >>> a.starts == b.starts and a.lookups == b.lookups
    True
    >>> c = make_workload(50, seed=7, bits=64)
    >>> c.starts[0] - a.starts[0] == SHIFT64
    True
    """
    if bits not in (48, 64):
        raise ValueError("bits must be 48 or 64")
    rng = random.Random(f"iotlb-bench:{seed}:{n}")
    exps = rng.choices([e for e, _ in _SIZE_MIX], [w for _, w in _SIZE_MIX], k=n)
    # lay the slots out in address order: [start, start+size) then a gap
    pos = 0
    starts = [0] * n
    sizes = [0] * n
    for i, e in enumerate(exps):
        if e in (0, 9, 18):
            pages = 1 << e
        else:
            pages = rng.randint((1 << (e - 1)) + 1, 1 << e)
        size = pages * PAGE
        if e in (9, 18):  # huge pages are naturally aligned
            align = size
            pos = (pos + align - 1) // align * align
        starts[i] = pos
        sizes[i] = size
        pos += size + rng.randint(1, 256) * PAGE
    span = pos
    room = (1 << 48) - span - (2 << 30)
    if room <= 0:
        raise ValueError(f"{n} entries do not fit in 48 bits")
    base = (1 << 30) + rng.randrange(0, room >> 30) * (1 << 30)
    offset = base + (SHIFT64 if bits == 64 else 0)
    sorted_starts = [s + offset for s in starts]
    sorted_lasts = [s + z - 1 for s, z in zip(sorted_starts, sizes)]
    # slot j's region ends where slot j+1 starts
    region_end = sorted_starts[1:] + [sorted_lasts[-1] + 1 + 256 * PAGE]

    order = list(range(n))
    rng.shuffle(order)
    addrs = [(1 << 40) + rng.randrange(1 << 24) * PAGE for _ in range(n)]

    # point lookups: 90 % hit a uniformly chosen entry at any byte, 10 % fall in a gap
    lookups = []
    is_hit = []
    rnd, rr = rng.random, rng.randrange
    for _ in range(k_lookup):
        j = rr(n)
        if rnd() < 0.9:
            lookups.append(sorted_starts[j] + rr(sizes[j]))
            is_hit.append(1)
        else:
            gap_lo = sorted_lasts[j] + 1
            lookups.append(gap_lo + rr(region_end[j] - gap_lo))
            is_hit.append(0)
    # overlap queries: start inside an entry, 4 KiB .. 16 MiB long
    ov_s, ov_l = [], []
    for _ in range(k_overlap):
        j = rr(n)
        s = sorted_starts[j] + rr(sizes[j])
        ov_s.append(s)
        ov_l.append(s + (1 << rng.randint(12, 24)) - 1)
    # churn: toggle a slot between its original entry and an alternative in its region
    alt: Dict[int, tuple] = {}
    current = {}
    us, ul, ms, ml, ma = [], [], [], [], []
    for _ in range(k_churn * churn_chunks):
        j = rr(n)
        orig = (sorted_starts[j], sorted_lasts[j])
        if j not in alt:
            region_pages = (region_end[j] - sorted_starts[j]) // PAGE
            p = rr(1, region_pages + 1)
            off = rr(region_pages - p + 1)
            a0 = sorted_starts[j] + off * PAGE
            alt[j] = (a0, a0 + p * PAGE - 1)
        cur = current.get(j, orig)
        new = alt[j] if cur == orig else orig
        current[j] = new
        us.append(cur[0]); ul.append(cur[1])
        ms.append(new[0]); ml.append(new[1])
        ma.append((1 << 40) + rr(1 << 24) * PAGE)

    Q = lambda xs: array.array("Q", xs)  # noqa: E731
    return Workload(
        n=n, bits=bits, seed=seed, k_lookup=k_lookup, k_overlap=k_overlap,
        k_churn=k_churn, churn_chunks=churn_chunks,
        starts=Q([sorted_starts[i] for i in order]),
        lasts=Q([sorted_lasts[i] for i in order]),
        addrs=Q(addrs),
        lookups=Q(lookups), lookup_is_hit=array.array("B", is_hit),
        lookup_hits=sum(is_hit),
        ov_s=Q(ov_s), ov_l=Q(ov_l),
        churn_us=Q(us), churn_ul=Q(ul), churn_ms=Q(ms), churn_ml=Q(ml), churn_ma=Q(ma),
    )


# --------------------------------------------------------------------------- models
class SortedDictModel:
    """A disjoint interval map on ``SortedDict``: ``start -> (last, addr, perm)``.

    >>> m = SortedDictModel(); m.map(0x1000, 0x1fff, 0x9000); m.map(0x3000, 0x3fff, 0)
    >>> m.first(0x1800, 0x1800), m.first(0x2000, 0x2fff)
    ((4096, 8191, 36864, 3), None)
    >>> m.unmap(0, U64_MAX), len(m)
    (2, 0)
    """

    __slots__ = ("_d",)

    def __init__(self):
        self._d = SortedDict()

    def map(self, start, last, addr, perm=3):
        self._d[start] = (last, addr, perm)

    def first(self, start, last):
        d = self._d
        i = d.bisect_right(start) - 1
        if i >= 0:
            k, v = d.peekitem(i)
            if v[0] >= start:
                return (k,) + v
        i += 1
        if i < len(d):
            k, v = d.peekitem(i)
            if k <= last:
                return (k,) + v
        return None

    def overlapping(self, start, last):
        d = self._d
        keys = d.keys()
        i = d.bisect_right(start) - 1
        if i < 0 or d[keys[i]][0] < start:
            i += 1
        j = d.bisect_right(last)
        return [(k,) + d[k] for k in keys[i:j]]

    def unmap(self, start=0, last=U64_MAX):
        d = self._d
        keys = d.keys()
        i = d.bisect_right(start) - 1
        if i < 0 or d[keys[i]][0] < start:
            i += 1
        j = d.bisect_right(last)
        if i == 0 and j == len(d):
            d.clear()
            return j
        for k in keys[i:j]:
            del d[k]
        return j - i

    @classmethod
    def from_arrays(cls, starts, lasts, addrs, perm=3):
        """Bulk load: one sort of the keys (a later duplicate start wins, as in map)."""
        m = cls()
        m._d = SortedDict(zip(starts, zip(lasts, addrs, itertools.repeat(perm))))
        return m

    def __iter__(self):
        return iter(self._d.items())

    def __len__(self):
        return len(self._d)


class BisectModel:
    """A disjoint interval map on two parallel lists kept sorted with :mod:`bisect`.

    >>> m = BisectModel(); m.map(0x3000, 0x3fff, 0); m.map(0x1000, 0x1fff, 0x9000)
    >>> m.first(0x1800, 0x1800), m.first(0x2000, 0x2fff)
    ((4096, 8191, 36864, 3), None)
    >>> m.unmap(0x1fff, 0x3000), len(m)
    (2, 0)
    """

    __slots__ = ("_starts", "_ents")

    def __init__(self):
        self._starts: List[int] = []
        self._ents: List[tuple] = []

    def map(self, start, last, addr, perm=3):
        i = bisect.bisect_right(self._starts, start)
        self._starts.insert(i, start)
        self._ents.insert(i, (last, addr, perm))

    def first(self, start, last):
        s = self._starts
        i = bisect.bisect_right(s, start) - 1
        if i >= 0 and self._ents[i][0] >= start:
            return (s[i],) + self._ents[i]
        i += 1
        if i < len(s) and s[i] <= last:
            return (s[i],) + self._ents[i]
        return None

    def _span(self, start, last):
        s = self._starts
        i = bisect.bisect_right(s, start) - 1
        if i < 0 or self._ents[i][0] < start:
            i += 1
        return i, bisect.bisect_right(s, last)

    def overlapping(self, start, last):
        i, j = self._span(start, last)
        return [(s,) + e for s, e in zip(self._starts[i:j], self._ents[i:j])]

    def unmap(self, start=0, last=U64_MAX):
        i, j = self._span(start, last)
        del self._starts[i:j]
        del self._ents[i:j]
        return j - i

    @classmethod
    def from_arrays(cls, starts, lasts, addrs, perm=3):
        """Bulk load: one stable sort by start (ties keep insertion order, as in map)."""
        m = cls()
        order = sorted(range(len(starts)), key=starts.__getitem__)
        m._starts = [starts[i] for i in order]
        m._ents = [(lasts[i], addrs[i], perm) for i in order]
        return m

    def __iter__(self):
        return zip(self._starts, self._ents)

    def __len__(self):
        return len(self._starts)


# --------------------------------------------------------------------------- contenders
class NotApplicable(Exception):
    """A contender cannot do an operation (the message says why: "static", ...)."""


class Contender:
    """One structure under test.  Every timed method runs a whole loop and returns.

    ``semantics`` is the short note shown in the table header; ``coords`` the coordinate
    type ("u64", "i64", "i32", "int"); ``bits64`` whether the 64-bit workload fits.
    """

    name = "?"
    semantics = ""
    coords = "u64"
    bits64 = True
    #: how the per-op build cost grows with N: "log" or "n" (list insertion)
    build_growth = "log"

    def unavailable(self) -> Optional[str]:
        return None

    #: how many queries of each stream the timed loops use (None = all); the runner
    #: lowers it for contenders too slow to answer the whole stream within the budget
    k: Optional[int] = None

    def prepare(self, w: Workload) -> None:
        """Untimed per-workload setup (coordinate transforms, typed arrays)."""
        self.w = w

    def q(self, name: str):
        """Query stream ``name`` limited to the first ``self.k`` items (cached).

        ``name`` is an attribute of the contender (its own converted copy) or of the
        workload (``w.list(name)``; ``name + "_arr"`` gives the ``array('Q')``)."""
        if self.__dict__.get("_qw") is not self.w:
            self._qw, self._qcache = self.w, {}
        cache = self._qcache
        key = (name, self.k)
        if key not in cache:
            if name in self.__dict__:
                src = self.__dict__[name]
            elif name.endswith("_arr"):
                src = getattr(self.w, name[:-4])
            else:
                src = self.w.list(name)
            cache[key] = src if self.k is None or self.k >= len(src) else src[:self.k]
        return cache[key]

    def na(self, op: str) -> Optional[str]:
        """Why ``op`` cannot run for this workload, or None."""
        if op == "lookup_batch" or op == "build_batch":
            if not hasattr(self, op):
                return "n/a: no batch API"
        if w_bits(self) == 64 and not self.bits64:
            return f"n/a: {self.coords}"
        if not hasattr(self, op):
            return "n/a"
        return None

    # timed operations (subclasses define what they support):
    # build(S, L, A) -> obj; build_batch() -> obj; lookup(obj); lookup_batch(obj);
    # overlap(obj); iterate(obj); unmap_all(obj); churn(obj, r)
    # checks: count_lookup(obj, m) -> hits among the first m; count_overlap(obj, m)


def w_bits(c: Contender) -> int:
    return c.w.bits if hasattr(c, "w") else 48


class _IOTLBOps:
    """The timed operations every structure with the IOTLB API (map/unmap/first,
    iteration) runs the same way; mixed into the engine and model contenders only,
    because ``Contender.na`` reads a missing method as "cannot do this"."""

    def empty(self):
        """A new, empty structure of this contender."""
        raise NotImplementedError

    def build(self, S, L, A):
        t = self.empty()
        m = t.map
        for s, l, a in zip(S, L, A):
            m(s, l, a)
        return t

    def lookup(self, t):
        f = t.first
        for q in self.q("lookups"):
            f(q, q)

    def iterate(self, t):
        for _ in t:
            pass

    def unmap_all(self, t):
        return t.unmap()

    def churn(self, t, lo, hi):
        us, ul, ms, ml, ma = self.w.churn_steps(lo, hi)
        u, m = t.unmap, t.map
        for a, b, c, d, e in zip(us, ul, ms, ml, ma):
            u(a, b)
            m(c, d, e)

    def count_lookup(self, t, m):
        f = t.first
        return sum(f(q, q) is not None for q in self.w.list("lookups")[:m])


class EngineContender(_IOTLBOps, Contender):
    """``iotlb.IOTLB`` (either engine), driven exactly as a user would."""

    semantics = "closed [start, last], u64, overlaps kept, kernel semantics"

    def __init__(self, name: str, cls):
        self.name = name
        self.cls = cls

    def empty(self):
        return self.cls()

    def build_batch(self):
        t = self.cls()
        t.map_many(self.w.starts, self.w.lasts, self.w.addrs)
        return t

    def lookup_batch(self, t):
        return t.translate_many(self.q("lookups_arr"), 1, default=0)

    def overlap(self, t):
        f = t.overlapping
        for s, l in zip(self.q("ov_s"), self.q("ov_l")):
            list(f(s, l))

    def count_lookup_batch(self, t, m):
        out = t.translate_many(self.w.lookups[:m], 1, default=0)
        return sum(1 for x in out if x)

    def count_overlap(self, t, m):
        f = t.overlapping
        return sum(len(list(f(s, l)))
                   for s, l in zip(self.w.list("ov_s")[:m], self.w.list("ov_l")[:m]))


class _ModelContender(_IOTLBOps, Contender):
    model = None

    def empty(self):
        return self.model()

    def build_batch(self):
        w = self.w
        return self.model.from_arrays(w.list("starts"), w.list("lasts"), w.list("addrs"))

    def overlap(self, t):
        f = t.overlapping
        for s, l in zip(self.q("ov_s"), self.q("ov_l")):
            f(s, l)


    def count_overlap(self, t, m):
        f = t.overlapping
        return sum(len(f(s, l))
                   for s, l in zip(self.w.list("ov_s")[:m], self.w.list("ov_l")[:m]))


class SortedDictContender(_ModelContender):
    name = "sorteddict"
    semantics = "closed, Python int, disjoint only (predecessor lookup)"
    coords = "int"
    model = SortedDictModel


class BisectContender(_ModelContender):
    name = "bisect"
    semantics = "closed, Python int, disjoint only (predecessor lookup), O(N) insert"
    coords = "int"
    build_growth = "n"
    model = BisectModel


# --------------------------------------------------------------------------- runner
def _rss() -> int:
    """Resident set size of this process in bytes (Linux), or 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class Runner:
    """Runs contenders side by side over sizes and collects per-op samples (ns/op).

    ``budget`` (seconds) caps one cell: an op whose estimated time for one sample
    (extrapolated from the previous size) exceeds it is reported as skipped; repeats
    shrink so that a cell takes about a third of it; query streams shrink to a prefix
    (``sample_cap``) for contenders too slow to answer all of them.
    """

    def __init__(self, contenders, *, repeats=3, budget=10.0, seed=1, k_lookup=10000,
                 k_overlap=2000, k_churn=5000, check=2000, min_time=0.02, clock="cpu",
                 sample_cap=None, log=None):
        self.contenders = contenders
        #: "cpu" = this thread's CPU time (CLOCK_THREAD_CPUTIME_ID): time the scheduler
        #: hands to other jobs on a shared machine is not counted; "wall" = perf_counter
        self.clock = clock
        self.repeats = repeats
        #: seconds each (contender, op, repeat) keeps sampling a fast op (median of all)
        self.min_time = min_time
        #: seconds one sample of a query stream may take; slower contenders answer a
        #: prefix of the stream (default: budget / (3 * repeats))
        self.sample_cap = sample_cap or budget / (3 * repeats)
        self.budget = budget
        self.seed = seed
        self.k = dict(k_lookup=k_lookup, k_overlap=k_overlap, k_churn=k_churn)
        self.check = check
        self.log = log or (lambda msg: None)
        #: results[bits][n][contender][op] = {"ns": [...], "note": str} or {"na": reason}
        self.results: Dict[int, dict] = {}
        self.checks: Dict[int, dict] = {}
        #: external contenders (the C++ floor): objects with ``begin(runner, w)``,
        #: ``repeat(r)`` (called once per query repeat, interleaved with the others) and
        #: ``end(results_for_n, checks_for_n)``
        self.external = []
        self._last: Dict[tuple, tuple] = {}  # (name, op) -> (n, ns/op), any bits

    def workload(self, n, bits):
        return make_workload(n, bits=bits, seed=self.seed, churn_chunks=self.repeats,
                             **self.k)

    def _count(self, op, n, w):
        return {"build": n, "build_batch": n, "unmap_all": n, "iterate": n,
                "lookup": w.k_lookup, "lookup_batch": w.k_lookup,
                "overlap": w.k_overlap, "churn": w.k_churn}[op]

    def _plan(self, bits, c, op, n, w):
        """``(repeats, k, why)``: how many repeats to run (0 = skip, ``why`` says so)
        and, for query streams, how many queries per sample (None = all)."""
        full = self._count(op, n, w)
        prev = self._last.get((c.name, op))
        if prev is None:
            return self.repeats, None, None
        pn, pns = prev
        growth = 1.25 if n > pn else 1.0
        if op in ("build", "churn", "unmap_all") and c.build_growth == "n":
            growth = n / pn
        per_op = pns * growth / 1e9
        k = None
        if op in ("lookup", "lookup_batch", "overlap", "churn") and \
                per_op * full > self.sample_cap:
            k = max(200, int(self.sample_cap / per_op))
            if k >= full:
                k = None
        est = per_op * (k or full)
        if est > self.budget:
            return 0, None, f"skipped: est. {est:.0f} s/sample > {self.budget:.0f} s budget"
        return max(1, min(self.repeats, int(self.budget / 3 / est))), k, None

    def _record(self, bits, n, c, op, ns_total, count):
        cell = self.results[bits][n][c.name].setdefault(op, {"ns": []})
        cell["ns"].append(ns_total / count)
        cell["ops_per_sample"] = count

    def run(self, sizes, bits=48):
        res = self.results.setdefault(bits, {})
        chk = self.checks.setdefault(bits, {})
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for n in sizes:
                self._run_n(n, bits, res, chk)
        finally:
            if gc_was:
                gc.enable()
        return self.results

    def _run_n(self, n, bits, res, chk):
        t0 = time.perf_counter()
        w = self.workload(n, bits)
        self.log(f"[{bits}-bit N={n}] workload in {time.perf_counter() - t0:.1f} s")
        res[n] = {}
        chk[n] = {}
        live = []
        for c in self.contenders:
            res[n][c.name] = {}
            why = c.unavailable()
            if why:
                for op in OPS:
                    res[n][c.name][op] = {"na": why}
                continue
            c.prepare(w)
            live.append(c)
        clock = time.thread_time_ns if self.clock == "cpu" else time.perf_counter_ns

        ks = {}

        def plan(c, op):
            why = c.na(op)
            if why:
                res[n][c.name][op] = {"na": why}
                return 0
            reps, k, why = self._plan(bits, c, op, n, w)
            if why:
                res[n][c.name][op] = {"na": why}
            ks[(c.name, op)] = k
            return reps

        def sampled(c, op, fn, count, before=None):
            """Time ``fn`` until min_time has passed (at least once; at most 100)."""
            stop = clock() + int(self.min_time * 1e9)
            for _ in range(100):
                if before is not None:
                    before()
                t = clock()
                fn()
                self._record(bits, n, c, op, clock() - t, count)
                if clock() >= stop:
                    break

        # phase A: build by single inserts; the structure built before is range-unmapped
        # 0..~0 (timed) first.  The last one built is kept to serve the queries: real
        # IOTLBs grow one map() at a time, so no contender gets a bulk-packed structure.
        objs = {}
        reps = {c.name: (plan(c, "build"), plan(c, "unmap_all")) for c in live}
        for r in range(self.repeats):
            for c in live:
                rb, ru = reps[c.name]
                if r >= rb:
                    continue
                S, L, A = c.build_args()

                def drop(c=c, ru=ru):
                    prev = objs.pop(c.name, None)
                    if prev is not None and ru:
                        t = clock()
                        c.unmap_all(prev)
                        self._record(bits, n, c, "unmap_all", clock() - t, n)
                    del prev

                def build(c=c, S=S, L=L, A=A):
                    objs[c.name] = c.build(S, L, A)

                sampled(c, "build", build, n, before=drop)
                if r == 0:
                    obj = objs[c.name]
                    chk[n].setdefault(c.name, {})["len"] = (
                        len(obj) if hasattr(obj, "__len__") else None)
                    del obj
        # phase B: batch build (timed, then dropped unless nothing else can serve queries)
        reps = {c.name: plan(c, "build_batch") for c in live}
        for r in range(self.repeats):
            for c in live:
                if r >= reps[c.name]:
                    continue
                keep = c.name not in objs or c.na("build")
                box = []

                def bulk(c=c, box=box):
                    box[:] = [c.build_batch()]

                sampled(c, "build_batch", bulk, n, before=box.clear)
                if keep:
                    objs[c.name] = box[0]
                box.clear()
        query_ops = ("lookup", "lookup_batch", "overlap", "iterate", "churn")
        have = [c for c in live if c.name in objs]
        for c in live:
            if c.name not in objs:
                for op in query_ops + ("unmap_all",):
                    if "median" not in res[n][c.name].get(op, {}):
                        res[n][c.name].setdefault(op, {"na": c.na(op) or
                                                       "skipped: build over budget"})
        # correctness cross-check (untimed): every contender must see the same answers
        m = min(self.check, w.k_lookup)
        for c in have:
            d = chk[n].setdefault(c.name, {})
            if not c.na("lookup") and hasattr(c, "count_lookup"):
                d["lookup_hits"] = c.count_lookup(objs[c.name], m)
            if not c.na("lookup_batch") and hasattr(c, "count_lookup_batch"):
                d["lookup_batch_hits"] = c.count_lookup_batch(objs[c.name], m)
            if not c.na("overlap") and hasattr(c, "count_overlap"):
                d["overlap_results"] = c.count_overlap(objs[c.name], min(m, w.k_overlap))
        chk[n]["expected_lookup_hits"] = sum(w.lookup_is_hit[:m])
        # phase C: queries, interleaved (external contenders run one repeat each time)
        plans = {(c.name, op): plan(c, op) for c in have for op in query_ops[:4]}
        for ext in self.external:
            ext.begin(self, w)
        for r in range(self.repeats):
            for ext in self.external:
                ext.repeat(r)
            for op in query_ops[:4]:
                for c in have:
                    if r >= plans[(c.name, op)]:
                        continue
                    c.k = ks.get((c.name, op))
                    sampled(c, op, lambda c=c, op=op: getattr(c, op)(objs[c.name]),
                            c.k or self._count(op, n, w))
                    c.k = None
        # phase D: churn keeps N live; one chunk of steps per repeat (chunks follow on)
        reps = {c.name: plan(c, "churn") for c in have}
        cursor = {}
        for r in range(self.repeats):
            for c in have:
                if r >= reps[c.name]:
                    continue
                obj = objs[c.name]
                lo = cursor.get(c.name, 0)
                hi = cursor[c.name] = lo + (ks.get((c.name, "churn")) or w.k_churn)
                t = clock()
                c.churn(obj, lo, hi)
                self._record(bits, n, c, "churn", clock() - t, hi - lo)
        for c in have:
            if not c.na("churn") and hasattr(objs[c.name], "__len__"):
                chk[n][c.name]["len_after_churn"] = len(objs[c.name])
        # last: range-unmap 0..~0 of the (churned) query structure
        for c in have:
            if not c.na("unmap_all") and "na" not in res[n][c.name].get("unmap_all", {}):
                t = clock()
                c.unmap_all(objs[c.name])
                self._record(bits, n, c, "unmap_all", clock() - t, n)
        objs.clear()
        gc.collect()
        for c in live:
            for op, cell in res[n][c.name].items():
                if cell.get("ns"):
                    cell["median"] = statistics.median(cell["ns"])
                    self._last[(c.name, op)] = (n, cell["median"])
        for ext in self.external:
            ext.end(res[n], chk[n])
        self.log(f"[{bits}-bit N={n}] done in {time.perf_counter() - t0:.1f} s")


def _build_args(self):
    w = self.w
    return w.list("starts"), w.list("lasts"), w.list("addrs")


Contender.build_args = _build_args


# --------------------------------------------------------------------------- report
def fmt_ns(ns: float) -> str:
    """Compact ns/op.

    >>> fmt_ns(12.345), fmt_ns(1234.5), fmt_ns(2.5e6)
    ('12.3', '1.2 µs', '2.5 ms')
    """
    if ns < 1000:
        return f"{ns:.1f}" if ns < 100 else f"{ns:.0f}"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns / 1e6:.1f} ms"


def fmt_ratio(r: float) -> str:
    """A ratio with two significant digits, never in exponent form.

    >>> fmt_ratio(0.456), fmt_ratio(3.14159), fmt_ratio(123.4)
    ('0.46x', '3.1x', '123x')
    """
    return f"{r:.2g}x" if r < 10 else f"{r:.0f}x"


def ratio_table(results, names, base, bits=48, markdown=False) -> str:
    """Rows (op, N), one column per contender: median ns/op and ratio to ``base``."""
    rows = []
    head = ["op", "N"] + names
    for op in OPS:
        for n in sorted(results.get(bits, {})):
            row = [op, f"{n:.0e}".replace("e+0", "e")]
            cells = results[bits][n]
            b = cells.get(base, {}).get(op, {}).get("median")
            for name in names:
                cell = cells.get(name, {}).get(op, {})
                if "median" in cell:
                    txt = fmt_ns(cell["median"])
                    if b and name != base:
                        txt += f" ({fmt_ratio(cell['median'] / b)})"
                    row.append(txt)
                else:
                    row.append(cell.get("na", "-"))
            rows.append(row)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def check_problems(checks) -> List[str]:
    """Disagreements between contenders in the untimed cross-check."""
    out = []
    for bits, per_n in checks.items():
        for n, d in per_n.items():
            exp = d.get("expected_lookup_hits")
            for name, v in d.items():
                if not isinstance(v, dict):
                    continue
                for key in ("lookup_hits", "lookup_batch_hits"):
                    if key in v and v[key] != exp:
                        out.append(f"{bits}-bit N={n} {name}: {key}={v[key]}, expected {exp}")
                for key in ("len", "len_after_churn"):
                    if key in v and v[key] is not None and v[key] != n:
                        out.append(f"{bits}-bit N={n} {name}: {key}={v[key]}, expected {n}")
            ovs = {name: v["overlap_results"] for name, v in d.items()
                   if isinstance(v, dict) and "overlap_results" in v}
            if len(set(ovs.values())) > 1:
                out.append(f"{bits}-bit N={n}: overlap result counts differ: {ovs}")
    return out


def default_contenders():
    """``[cython (if built), python twin, sorteddict, bisect]``."""
    from . import _pyengine

    out = []
    try:
        from . import _engine
    except ImportError:
        c = EngineContender("cython", None)
        c.unavailable = lambda: "n/a: not built"
        out.append(c)
    else:
        out.append(EngineContender("cython", _engine.IOTLB))
    out += [EngineContender("python", _pyengine.IOTLB), SortedDictContender(),
            BisectContender()]
    return out


def main(argv=None) -> int:
    """``iotlb bench [-n SIZES] [--repeat R] [--seed S] [--json]``; returns the exit code."""
    p = argparse.ArgumentParser(prog="iotlb bench", description=(
        "Quick side-by-side speed run: the Cython engine vs the pure-Python twin vs a "
        "SortedDict model vs a bisect model, on one seeded IOTLB-like workload. Ratios "
        "are contender time / Cython time, measured in the same run."))
    p.add_argument("-n", "--sizes", default="1000,10000,100000",
                   help="comma-separated entry counts (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="repeats per op (median)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bits", type=int, choices=(48, 64), default=48)
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds one op may take per contender and size before it is "
                        "skipped (default: %(default)s)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="thread CPU time (default; robust on a busy machine) or wall time")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    try:
        sizes = [int(float(x)) for x in a.sizes.split(",") if x.strip()]
    except ValueError:
        p.error(f"bad --sizes {a.sizes!r}")
    if not sizes or min(sizes) < 1:
        p.error("sizes must be positive")
    cons = default_contenders()
    log = (lambda m: print(m, file=sys.stderr)) if not a.json else None
    runner = Runner(cons, repeats=max(1, a.repeat), budget=a.budget, seed=a.seed,
                    k_lookup=5000, k_overlap=1000, k_churn=2000, clock=a.clock, log=log)
    runner.run(sizes, bits=a.bits)
    names = [c.name for c in cons]
    base = "cython" if not cons[0].unavailable() else "python"
    problems = check_problems(runner.checks)
    if a.json:
        json.dump({"bits": a.bits, "base": base, "ops": OPS,
                   "results": runner.results[a.bits], "checks": runner.checks[a.bits],
                   "problems": problems}, sys.stdout, indent=1, default=str)
        print()
    else:
        print(f"median ns/op ({a.clock} time), (Nx) = N times slower than {base}; "
              f"{a.bits}-bit workload, {a.repeat} repeats, seed {a.seed}")
        print(ratio_table(runner.results, names, base, bits=a.bits))
        for c in cons:
            why = c.unavailable()
            print(f"  {c.name}: {why or c.semantics}")
        for msg in problems:
            print(f"  MISMATCH: {msg}")
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
