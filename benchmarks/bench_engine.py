"""pytest-benchmark suites for the engine: the Cython engine against its pure-Python twin.

    python -m pytest benchmarks/bench_engine.py --benchmark-only          # N = 1e3..1e5
    IOTLB_BENCH_FULL=1 python -m pytest benchmarks/bench_engine.py --benchmark-only

One ``group`` per operation; every group runs each engine at N = 1e3, 1e4, 1e5 (and 1e6
with ``IOTLB_BENCH_FULL=1``).  The layout is N disjoint 4 KiB pages scattered over 4N
page slots, mapped in random order; lookups hit random bytes of random entries; churn
unmaps a random live entry and maps a random free page.  Rounds cycle through a pool of
256 K distinct queries (and fresh pages / victims), so that at large N a round does not
find its leaves already in cache from the previous one.  One benchmark round runs a
batch of ops (``extra_info["ops"]``), so per-op time = round time / ops; a table of ns/op
and of the Cython/Python ratio (measured in the same run, which is what counts on a
shared machine) is printed at the end.  The file is not named ``test_*.py`` and lives
outside ``tests/``, so ``pytest`` / ``pytest tests`` never collect it.
"""
from __future__ import annotations

import array
import collections
import gc
import os
import random
import tracemalloc

import pytest

from iotlb import _pyengine

try:
    from iotlb import _engine
except ImportError:  # pragma: no cover - a pure-only build
    _engine = None

ENGINES = {"python": _pyengine.IOTLB}
if _engine is not None:
    ENGINES["cython"] = _engine.IOTLB

FULL = os.environ.get("IOTLB_BENCH_FULL") == "1"
SIZES = [1_000, 10_000, 100_000] + ([1_000_000] if FULL else [])
PAGE = 4096
K = 1000          # ops per round for the per-call benchmarks
POOL = 256 * K    # distinct queries cycled through, K per round
ROUNDS = 15       # rounds for the benchmarks that mutate the tree

engine_param = pytest.mark.parametrize("engine", sorted(ENGINES))
size_param = pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N={n:.0e}".replace("+0", ""))


class Layout:
    """N pages at random slots of 4N, the trees built from them, and query streams."""

    def __init__(self, n: int, seed: int = 1):
        rng = random.Random(f"bench-engine:{seed}:{n}")
        self.n = n
        self.rng = rng
        pages = rng.sample(range(4 * n), n)
        self.pages = pages
        self.free = sorted(set(range(4 * n)).difference(pages))
        rng.shuffle(self.free)
        # Python ints are made in the order they are used so no contender pays for
        # cache misses on scattered int objects
        self.starts = [p * PAGE for p in pages]
        self.lasts = [p * PAGE + PAGE - 1 for p in pages]
        self.addrs = [(1 << 40) + p * PAGE for p in pages]
        # POOL distinct queries, K per round, so that at large N every round touches
        # leaves the previous rounds did not (lookups are cold, as they would be)
        self.lookups = [self.starts[rng.randrange(n)] + rng.randrange(PAGE - 8)
                        for _ in range(POOL)]
        self.ov = [(p, p + 16 * PAGE) for p in
                   (rng.randrange(4 * n) * PAGE for _ in range(POOL))]
        self._trees = {}

    def tree(self, engine: str):
        """The full tree for ``engine`` (shared: benchmarks that mutate use a copy)."""
        if engine not in self._trees:
            t = ENGINES[engine]()
            m = t.map
            for s, l, a in zip(self.starts, self.lasts, self.addrs):
                m(s, l, a)
            self._trees[engine] = t
        return self._trees[engine]

    def churn(self, steps: int):
        """``steps`` (unmap start, map start, map last) triples, from the full layout."""
        rng = random.Random(f"bench-engine-churn:{self.n}")
        live = list(self.pages)
        free = collections.deque(self.free)
        out = []
        for _ in range(steps):
            j = rng.randrange(self.n)
            old, new = live[j], free.popleft()
            free.append(old)
            live[j] = new
            out.append((old * PAGE, new * PAGE, new * PAGE + PAGE - 1))
        return out


_LAYOUTS: dict = {}


def cycle_chunks(pool, k=K):
    """``pool`` cut into lists of ``k``."""
    return [pool[i:i + k] for i in range(0, len(pool) - k + 1, k)]


def cycle(pool, k=K):
    """A callable returning the next ``k`` items of ``pool`` on every call, cyclically."""
    chunks = cycle_chunks(pool, k)
    state = [0]

    def nxt():
        i = state[0]
        state[0] = (i + 1) % len(chunks)
        return chunks[i]

    return nxt


def layout(n: int) -> Layout:
    if n not in _LAYOUTS:
        _LAYOUTS.clear()  # keep one size in memory at a time (N = 1e6 is big)
        gc.collect()
        _LAYOUTS[n] = Layout(n)
    return _LAYOUTS[n]


def rounds_for(engine: str, n: int, base: int = ROUNDS) -> int:
    """Fewer rounds where one round is slow (the twin at large N)."""
    if engine == "python" and n >= 100_000:
        return max(3, base // 5)
    return base


# ----------------------------------------------------------------------------- mutation
@engine_param
@size_param
def test_map(benchmark, engine, n):
    """map() of K new random pages into a tree of N (undone between rounds)."""
    benchmark.group = "map"
    lay = layout(n)
    t = lay.tree(engine).copy()
    rounds = rounds_for(engine, n)
    free = lay.free[:K * rounds]
    nxt = cycle([p * PAGE for p in free])  # fresh pages every round while 3N are free
    m, um = t.map, t.unmap
    last = []

    def setup():
        for s in last:   # undo the previous round: N stays the same
            um(s, s)
        last[:] = nxt()
        return (last,), {}

    def run(new):
        for s in new:
            m(s, s + PAGE - 1, s)

    benchmark.extra_info.update(ops=K, engine=engine, n=n)
    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)


@engine_param
@size_param
def test_unmap_one(benchmark, engine, n):
    """unmap(start, start) of K random live entries (re-mapped between rounds)."""
    benchmark.group = "unmap one"
    lay = layout(n)
    t = lay.tree(engine).copy()
    rounds = rounds_for(engine, n)
    k = min(K, n)
    # distinct victims every round while N allows (cold leaves), else the same ones
    # re-mapped between rounds (N small: everything is in cache anyway)
    idx = random.Random(2).sample(range(n), min(n, k * rounds))
    # new int objects, made in the order they are used (see Layout)
    victims = [(q * PAGE, q * PAGE + PAGE - 1, (1 << 40) + q * PAGE)
               for q in (lay.pages[i] for i in idx)]
    nxt = cycle(victims, k)
    m, um = t.map, t.unmap
    last = []

    def setup():
        for s, l, a in last:
            if len(idx) < k * rounds:
                m(s, l, a)
        last[:] = nxt()
        return (last,), {}

    def run(chunk):
        for s, _, _ in chunk:
            um(s, s)

    benchmark.extra_info.update(ops=k, engine=engine, n=n)
    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)


@engine_param
@size_param
def test_unmap_all(benchmark, engine, n):
    """unmap() of a full tree of N (vhost_iotlb_reset: O(n))."""
    benchmark.group = "unmap all"
    lay = layout(n)
    full = lay.tree(engine)
    holder = {}

    def setup():
        holder["t"] = full.copy()

    def run():
        assert holder["t"].unmap() == n

    benchmark.extra_info.update(ops=n, engine=engine, n=n)
    benchmark.pedantic(run, setup=setup, rounds=rounds_for(engine, n, 5), iterations=1)


@engine_param
@size_param
def test_churn(benchmark, engine, n):
    """Interleaved unmap(random live) + map(random free page), N stays constant."""
    benchmark.group = "churn"
    lay = layout(n)
    t = lay.tree(engine).copy()
    rounds = rounds_for(engine, n)
    steps = lay.churn(K * (rounds + 1))
    chunks = iter([steps[r * K:(r + 1) * K] for r in range(rounds + 1)])
    m, um = t.map, t.unmap

    def setup():
        return (next(chunks),), {}

    def run(chunk):
        for old, s, l in chunk:
            um(old, old)
            m(s, l, s)

    benchmark.extra_info.update(ops=2 * K, engine=engine, n=n, note="ops = unmaps + maps")
    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    assert len(t) == n


# ----------------------------------------------------------------------------- lookup
@engine_param
@size_param
def test_lookup_first(benchmark, engine, n):
    """first(iova, iova) of K random hits."""
    benchmark.group = "lookup first"
    t = layout(n).tree(engine)
    nxt = cycle(layout(n).lookups)
    f = t.first

    def run():
        for x in nxt():
            f(x, x)

    benchmark.extra_info.update(ops=K, engine=engine, n=n)
    benchmark(run)


@engine_param
@size_param
def test_lookup_translate(benchmark, engine, n):
    """translate(iova, 8) of K random hits (one segment each)."""
    benchmark.group = "lookup translate"
    t = layout(n).tree(engine)
    nxt = cycle(layout(n).lookups)
    tr = t.translate

    def run():
        for x in nxt():
            tr(x, 8)

    benchmark.extra_info.update(ops=K, engine=engine, n=n)
    benchmark(run)


@engine_param
@size_param
def test_overlapping_query(benchmark, engine, n):
    """list(overlapping(s, s + 64 KiB)) at K random places (~4 hits each)."""
    benchmark.group = "overlapping query"
    t = layout(n).tree(engine)
    nxt = cycle(layout(n).ov)
    o = t.overlapping

    def run():
        for s, l in nxt():
            list(o(s, l))

    benchmark.extra_info.update(ops=K, engine=engine, n=n)
    benchmark(run)


@engine_param
@size_param
def test_iteration(benchmark, engine, n):
    """Iterating every entry of a tree of N (per entry)."""
    benchmark.group = "iteration"
    t = layout(n).tree(engine)

    def run():
        for _ in t:
            pass

    benchmark.extra_info.update(ops=n, engine=engine, n=n)
    benchmark.pedantic(run, rounds=rounds_for(engine, n, 5), iterations=1)


# ----------------------------------------------------------------------------- batch
@engine_param
@size_param
def test_map_many(benchmark, engine, n):
    """map_many of the N-entry layout into an empty tree (per entry)."""
    benchmark.group = "map_many"
    lay = layout(n)
    s = array.array("Q", lay.starts)
    l = array.array("Q", lay.lasts)
    a = array.array("Q", lay.addrs)
    cls = ENGINES[engine]

    def setup():
        return (cls(),), {}

    def run(t):
        t.map_many(s, l, a, 3)

    benchmark.extra_info.update(ops=n, engine=engine, n=n)
    benchmark.pedantic(run, setup=setup, rounds=rounds_for(engine, n, 5), iterations=1)


@engine_param
@size_param
def test_translate_many(benchmark, engine, n):
    """translate_many of K random hits in one call (per item)."""
    benchmark.group = "translate_many"
    t = layout(n).tree(engine)
    nxt = cycle([array.array("Q", c) for c in cycle_chunks(layout(n).lookups)], 1)

    def run():
        t.translate_many(nxt()[0], 8)

    benchmark.extra_info.update(ops=K, engine=engine, n=n)
    benchmark(run)


# ----------------------------------------------------------------------------- memory
@engine_param
@size_param
def test_memory(benchmark, engine, n):
    """Bytes per entry after mapping N pages: tracemalloc and __sizeof__ (timed: the
    traced build, one round)."""
    benchmark.group = "memory (traced build)"
    lay = layout(n)
    holder = {}

    def run():
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            t = ENGINES[engine]()
            m = t.map
            for s, l, a in zip(lay.starts, lay.lasts, lay.addrs):
                m(s, l, a)
            holder["traced"] = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        holder["sizeof"] = t.__sizeof__()

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(ops=n, engine=engine, n=n,
                                traced_bytes_per_entry=holder["traced"] / n,
                                sizeof_bytes_per_entry=holder["sizeof"] / n)


# ----------------------------------------------------------------------------- report
@pytest.fixture(scope="module", autouse=True)
def _per_op_report(request):
    """After the module: ns/op per group, N and engine, and the cython/python ratio."""
    yield
    session = getattr(request.config, "_benchmarksession", None)
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if session is None or tr is None:
        return
    rows = collections.defaultdict(dict)
    mem = collections.defaultdict(dict)
    for b in getattr(session, "benchmarks", []):
        info = getattr(b, "extra_info", {}) or {}
        stats = getattr(b, "stats", None)
        if "ops" not in info or "engine" not in info or stats is None:
            continue
        if "traced_bytes_per_entry" not in info:
            rows[(b.group, info["n"])][info["engine"]] = stats.min / info["ops"] * 1e9
        else:  # the traced build's time is tracemalloc's, not the engine's
            mem[info["n"]][info["engine"]] = (info["traced_bytes_per_entry"],
                                              info["sizeof_bytes_per_entry"])
    if not rows and not mem:
        return
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            _write_report(tr, rows, mem)
    else:  # pragma: no cover - capture plugin disabled
        _write_report(tr, rows, mem)


def _write_report(tr, rows, mem):
    tr.write_line("")
    tr.write_sep("-", "engine: min ns per op (python / cython = speed-up)")
    tr.write_line(f"{'group':22s} {'N':>9s} {'cython':>12s} {'python':>12s} {'speed-up':>9s}")
    for (group, n), by in sorted(rows.items()):
        c, p = by.get("cython"), by.get("python")
        ratio = f"{p / c:8.1f}x" if c and p else ""
        tr.write_line(f"{group:22s} {n:>9d} {c or float('nan'):12.1f} "
                      f"{p or float('nan'):12.1f} {ratio:>9s}")
    if mem:
        tr.write_line("bytes per entry (tracemalloc / __sizeof__):")
        for n, by in sorted(mem.items()):
            parts = [f"{e}: {v[0]:.1f} / {v[1]:.1f}" for e, v in sorted(by.items())]
            tr.write_line(f"  N={n:>9d}  " + "   ".join(parts))
