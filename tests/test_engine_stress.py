"""Stress: deep trees, random range unmaps, and ``_check()`` (sortedcontainers style).

The state machine in test_engine_machine.py keeps trees small; the compiled engine's
rebalancing only runs several levels deep on tens of thousands of entries, so this test
builds such trees in shuffled order and tears them down with random range unmaps,
asserting every invariant and agreement with the pure twin as it goes.
"""
from __future__ import annotations

import random

import pytest

from iotlb import U64_MAX
from iotlb import _pyengine

PAGE = 0x1000


def _ops(seed: int, n: int):
    """A seeded stream: n shuffled page maps (some sharing starts, some nested), then
    interleaved range unmaps of every width, re-maps and point queries."""
    rng = random.Random(seed)
    pages = list(range(n))
    rng.shuffle(pages)
    ops = [("map", p * PAGE, p * PAGE + PAGE - 1, p) for p in pages]
    ops += [("map", p * PAGE, p * PAGE + rng.choice([0, PAGE - 1, 8 * PAGE]), 7)
            for p in rng.sample(range(n), n // 20)]
    ops.append(("map", U64_MAX - PAGE + 1, U64_MAX, 1))
    ops.append(("map", 1 << 63, U64_MAX, 2))
    for _ in range(1500):
        kind = rng.random()
        a = rng.randrange(n + 2) * PAGE
        if kind < 0.55:
            width = rng.choice([1, 2, 5, 17, 29, 64, 300, 3000, n // 3]) * PAGE
            ops.append(("unmap", a, min(U64_MAX, a + width - 1)))
        elif kind < 0.85:
            ops.append(("map", a, a + rng.choice([PAGE, 4 * PAGE]) - 1, a))
        elif kind < 0.95:
            ops.append(("first", a + rng.randrange(PAGE), a + 3 * PAGE))
        else:
            ops.append(("unmap", U64_MAX, U64_MAX))
    return ops


def _apply(t, op):
    kind, *args = op
    if kind == "map":
        return t.map(*args)
    if kind == "unmap":
        return t.unmap(*args)
    m = t.first(*args)
    return None if m is None else tuple(m[:4])


@pytest.mark.parametrize("seed", [959270189, 1, 2])
def test_deep_tree_random_unmaps_keep_invariants(IOTLB, seed):
    n = 30000 if IOTLB is not _pyengine.IOTLB else 6000
    t = IOTLB()
    ref = _pyengine.IOTLB() if IOTLB is not _pyengine.IOTLB else None
    for i, op in enumerate(_ops(seed, n)):
        got = _apply(t, op)
        if ref is not None:
            assert got == _apply(ref, op), (i, op)
        if op[0] != "map" and i % 40 == 0:
            t._check()
    t._check()
    if ref is not None:
        assert [tuple(m[:4]) for m in t] == [tuple(m[:4]) for m in ref]
    left = len(t)
    assert t.unmap() == left and len(t) == 0
    t._check()
