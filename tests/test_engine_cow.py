"""Copy-on-write snapshots: ``copy()`` and ``add_all`` into an empty tree share nodes.

Trees that share nodes must behave as if each had its own: a pool of trees per engine
runs the same random operations (map, unmap, reset, map_many, copy, add_all, assign) and every
tree of every engine must equal the pure twin's (entries with ctx, insertion order,
errors); ``_check()`` runs on every tree after every step, so a shared node written in
place, a reference count off by one or a stale aggregate fails here.
"""
from __future__ import annotations

import os
import random
from array import array

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from iotlb import U64_MAX, IOTLBError
from iotlb import _pyengine

ENGINES = []
try:
    from iotlb import _engine

    ENGINES.append(_engine.IOTLB)
except ImportError:  # pragma: no cover - only in a pure-Python-only run
    if os.environ.get("IOTLB_PUREPYTHON") != "1":
        raise

REF = _pyengine.IOTLB
SLOTS = 4
KINDS = [(None, False), (64, False), (3000, False), (40, True), (5000, True)]


def _outcome(fn):
    try:
        return ("ok", fn())
    except IOTLBError as e:
        return ("err", type(e), e.errno)
    except (ValueError, OverflowError, TypeError, RuntimeError) as e:
        return ("exc", type(e))


def _state(t):
    return [tuple(m) for m in t], t._insertion_order(), len(t), t.limit, t.retire


coord = st.integers(0, 1 << 16)


class CowMachine(RuleBasedStateMachine):
    @initialize(kinds=st.lists(st.sampled_from(KINDS), min_size=SLOTS, max_size=SLOTS))
    def setup(self, kinds):
        self.pools = [[cls(lim, retire=r) for lim, r in kinds] for cls in [REF] + ENGINES]

    def _all(self, fn):
        outs = [_outcome(lambda p=p: fn(p)) for p in self.pools]
        assert all(o == outs[0] for o in outs[1:]), outs

    @rule(k=st.integers(0, SLOTS - 1), s=coord, n=st.integers(0, 1 << 12),
          a=st.integers(0, 1 << 20), ctx=st.sampled_from([None, "c", 7]))
    def map(self, k, s, n, a, ctx):
        self._all(lambda p: p[k].map(s, s + n, a, 3, ctx))

    @rule(k=st.integers(0, SLOTS - 1))
    def map_full_space(self, k):
        self._all(lambda p: p[k].map(0, U64_MAX, 0))

    @rule(k=st.integers(0, SLOTS - 1), s=coord, n=st.integers(0, 1 << 14))
    def unmap(self, k, s, n):
        self._all(lambda p: p[k].unmap(s, s + n))

    @rule(k=st.integers(0, SLOTS - 1))
    def reset(self, k):
        self._all(lambda p: p[k].reset())

    @rule(k=st.integers(0, SLOTS - 1), seed=st.integers(0, 2**32), n=st.integers(1, 3000))
    def map_many(self, k, seed, n):
        rnd = random.Random(seed)
        starts = [rnd.randrange(1 << 24) for _ in range(n)]
        lasts = [s + rnd.randrange(1 << 12) for s in starts]
        addrs = [rnd.randrange(1 << 30) for _ in range(n)]
        self._all(lambda p: p[k].map_many(array("Q", starts), array("Q", lasts),
                                          array("Q", addrs), 1))

    @rule(j=st.integers(0, SLOTS - 1), k=st.integers(0, SLOTS - 1))
    def copy(self, j, k):
        def op(p):
            p[j] = p[k].copy()
        self._all(op)

    @rule(j=st.integers(0, SLOTS - 1), k=st.integers(0, SLOTS - 1), wipe=st.booleans())
    def add_all(self, j, k, wipe):
        def op(p):
            if wipe:
                p[j].unmap()
            return p[j].add_all(p[k])
        self._all(op)

    @rule(j=st.integers(0, SLOTS - 1), k=st.integers(0, SLOTS - 1), as_list=st.booleans())
    def assign(self, j, k, as_list):
        def op(p):
            p[j].assign(list(p[k]) if as_list else p[k])
        self._all(op)

    @rule(j=st.integers(0, SLOTS - 1), kind=st.sampled_from(KINDS))
    def fresh(self, j, kind):
        for p in self.pools:
            p[j] = type(p[j])(kind[0], retire=kind[1])

    @invariant()
    def agree(self):
        if not hasattr(self, "pools"):
            return
        for p in self.pools:
            for t in p:
                t._check()
        ref = [_state(t) for t in self.pools[0]]
        for p in self.pools[1:]:
            assert [_state(t) for t in p] == ref


TestCow = CowMachine.TestCase
TestCow.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                            suppress_health_check=list(HealthCheck))


def test_snapshots_survive_churn_on_every_side():
    """Trees of height 2 (70,000 entries), twelve generations of snapshots, every one changed after
    it was taken; all checked against copies made entry by entry."""
    for cls in ENGINES + [REF]:
        rnd = random.Random(5)
        t = cls()
        n = 70_000 if cls is not REF else 8_000
        t.map_many(array("Q", [i * 16 for i in range(n)]),
                   array("Q", [i * 16 + 7 for i in range(n)]),
                   array("Q", range(n)), 3)
        gens = []
        for g in range(12):
            snap = t.copy() if g % 2 else cls(None)
            if not g % 2:
                snap.add_all(t)
            gens.append((snap, [tuple(m)[:4] for m in t]))
            for _ in range(300):
                i = rnd.randrange(n)
                if rnd.random() < 0.5:
                    t.unmap(i * 16, i * 16)
                else:
                    t.map(i * 16 + 8, i * 16 + 15, g, 1, ctx=g)
            for snap, _ in gens[::3]:
                i = rnd.randrange(n)
                snap.unmap(i * 16, i * 16 + 15)
        t._check()
        for snap, want in gens:
            snap._check()
            got = [tuple(m)[:4] for m in snap]
            assert len(got) <= len(want) and set(got) <= set(want)
        for snap, want in gens[1::3]:
            assert [tuple(m)[:4] for m in snap] == want
        del gens
        t._check()


def test_add_all_shares_only_what_the_loop_would_copy():
    """The O(1) path must give the loop's answers at its edges: limit exactly met,
    exceeded (ENOSPC after `limit` adds), an unsplit [0, ~0] from _load (split by the
    loop), RETIRE destinations, ctx dropped."""
    for cls in ENGINES + [REF]:
        src = cls()
        for i in range(10):
            src.map(i * 0x1000, i * 0x1000 + 0xfff, i, ctx=("c", i))
        dst = cls(10)
        assert dst.add_all(src) == 10
        assert [m.ctx for m in dst] == [None] * 10 and dst == src
        dst._check()
        dst = cls(9)
        try:
            dst.add_all(src)
        except IOTLBError as e:
            assert e.errno == 28
        else:
            raise AssertionError("no ENOSPC")
        assert len(dst) == 9
        full = cls()
        full._load([(0, U64_MAX, 5, 3, None)])
        dst = cls()
        assert dst.add_all(full) == 1 and len(dst) == 2
        dst = cls(4, retire=True)
        assert dst.add_all(src) == 10
        assert [m.start for m in dst] == [i * 0x1000 for i in range(6, 10)]
        dst._check()
