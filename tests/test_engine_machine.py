"""Hypothesis state machine: both engines and a brute-force list model must agree.

The model is the most literal reading of kernel-semantics.md §1 there is: a Python
list in insertion order (the kernel's ``list``), scanned whole for every query.  Every
engine available (Cython, pure twin) runs the same random operation sequence on
adversarial shapes -- nested, identical, adjacent, touching 0 and 2**64-1 -- and every
return value, exception type and errno must match; ``_check()`` runs after each step.
"""
from __future__ import annotations

import errno
import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from iotlb import U64_MAX, IOTLBError
from iotlb import _pyengine

ENGINES = [_pyengine.IOTLB]
try:
    from iotlb import _engine

    ENGINES.append(_engine.IOTLB)
except ImportError:  # pragma: no cover - only in a pure-Python-only run
    if os.environ.get("IOTLB_PUREPYTHON") != "1":
        raise

H = 1 << 63


class Model:
    """struct vhost_iotlb as a list, for reference only (O(n) everything)."""

    def __init__(self, limit, retire):
        self.limit, self.retire, self.list = limit, retire, []

    def _add(self, s, l, a, p, c):
        if self.limit is not None and len(self.list) >= self.limit:
            if not self.retire:
                raise IOTLBError(errno.ENOSPC, "full")
            self.list.pop(0)
        self.list.append((s, l, a, p, c))

    def map(self, s, l, a, p, c):
        # vhost_iotlb_add_range_ctx since "vhost_iotlb: bound map allocation in
        # add_range" (limit None: the model's tree without a limit)
        if l < s:
            raise IOTLBError(errno.EFAULT, "last < start")
        if s == 0 and l == U64_MAX and a + H > U64_MAX:
            raise OverflowError("full space addr")
        if self.limit == 0:
            raise IOTLBError(errno.EINVAL, "limit 0")
        if s == 0 and l == U64_MAX:
            if self.limit is not None and (self.limit < 2 or (
                    not self.retire and len(self.list) > self.limit - 2)):
                raise IOTLBError(errno.ENOSPC, "full")
            self._add(0, H - 1, a, p, c)
            s, a = H, a + H
        self._add(s, l, a, p, c)

    def ordered(self):
        return sorted(self.list, key=lambda e: e[0])  # stable: ties by insertion

    def hits(self, s, l):
        return [e for e in self.ordered() if e[0] <= l and e[1] >= s]

    def unmap(self, s, l):
        doomed = self.hits(s, l)
        self.list = [e for e in self.list if not any(e is d for d in doomed)]
        return len(doomed)

    def translate(self, iova, size, access):
        # translate_desc's loop, with its u64 arithmetic (last and addr wrap)
        if size == 0:
            raise ValueError
        last, addr, covered, out = (iova + size - 1) & U64_MAX, iova, 0, []
        while size > covered:
            if addr <= last:
                h = self.hits(addr, last)
            else:       # itree_first(addr, last) with addr > last
                h = [e for e in self.hits(0, last) if e[1] >= addr]
            if not h or h[0][0] > addr:
                raise IOTLBError(errno.EFAULT, "hole", iova=addr)
            s, l, a, p, _ = h[0]
            if p & access != access:
                raise IOTLBError(errno.EPERM, "perm", iova=addr)
            seg = l - addr + 1
            out.append(((a + addr - s) & U64_MAX, min(size - covered, seg)))
            covered += seg
            addr = (addr + seg) & U64_MAX
        return out


# Values that sit on the edges the kernel cares about, plus small and random ones.
EDGES = [0, 1, 2, 0xfff, 0x1000, H - 2, H - 1, H, H + 1, U64_MAX - 1, U64_MAX]
point = st.one_of(st.sampled_from(EDGES), st.integers(0, 64),
                  st.integers(0, U64_MAX))
perm = st.one_of(st.integers(0, 3), st.integers(0, 255))


@st.composite
def ranges(draw):
    a, b = draw(point), draw(point)
    shape = draw(st.sampled_from(["sorted", "sorted", "sorted", "raw", "full", "one"]))
    if shape == "full":
        return 0, U64_MAX
    if shape == "one":
        return a, a
    if shape == "sorted":
        return min(a, b), max(a, b)
    return a, b  # may be reversed: EFAULT for map, a wrapped query otherwise


def outcome(fn):
    try:
        return ("ok", fn())
    except IOTLBError as e:
        return ("IOTLBError", e.errno, e.iova)
    except (TypeError, ValueError, OverflowError) as e:
        return (type(e).__name__,)


class EngineMachine(RuleBasedStateMachine):
    @initialize(limit=st.sampled_from([None, None, 0, 1, 2, 3, 5]), retire=st.booleans())
    def setup(self, limit, retire):
        self.model = Model(limit, retire)
        self.trees = [cls(limit, retire=retire) for cls in ENGINES]
        self.ctxs = [object() for _ in range(3)]

    def agree(self, model_fn, tree_fn):
        want = outcome(model_fn)
        for t in self.trees:
            got = outcome(lambda: tree_fn(t))
            if want[0] in ("ok", "IOTLBError"):
                assert got == want, (type(t), got, want)
            else:  # programming errors: same exception type
                assert got[0] == want[0], (type(t), got, want)
        return want

    @rule(r=ranges(), addr=point, p=perm, c=st.integers(0, 3))
    def map(self, r, addr, p, c):
        ctx = None if c == 3 else self.ctxs[c]
        self.agree(lambda: self.model.map(r[0], r[1], addr, p, ctx),
                   lambda t: t.map(r[0], r[1], addr, p, ctx))

    @rule(r=ranges(), k=st.integers(1, 6))
    def map_nested_or_adjacent(self, r, k):
        s, l = min(r), max(r)
        span = l - s
        for i in range(k):  # k ranges nested in, or adjacent to, [s, l]
            lo = s + span * i // (2 * k)
            hi = l - span * i // (2 * k)
            self.agree(lambda: self.model.map(lo, hi, lo, 3, None),
                       lambda t: t.map(lo, hi, lo, 3, None))
        if l < U64_MAX:
            self.agree(lambda: self.model.map(l + 1, l + 1, 0, 1, None),
                       lambda t: t.map(l + 1, l + 1, 0, 1, None))

    @rule(r=ranges())
    def unmap(self, r):
        self.agree(lambda: self.model.unmap(*r), lambda t: t.unmap(*r))

    @rule()
    def unmap_all(self):
        self.agree(lambda: self.model.unmap(0, U64_MAX), lambda t: t.unmap())

    @rule()
    def reset(self):
        self.agree(lambda: self.model.list.clear(), lambda t: t.reset())

    @rule(r=ranges())
    def first(self, r):
        def model():
            h = self.model.hits(*r)
            return tuple(h[0][:4]) if h else None

        self.agree(model, lambda t: None if t.first(*r) is None else tuple(t.first(*r)[:4]))

    @rule(r=ranges())
    def overlapping(self, r):
        self.agree(lambda: [e[:4] for e in self.model.hits(*r)],
                   lambda t: [tuple(m[:4]) for m in t.overlapping(*r)])

    @rule(iova=point, size=st.one_of(st.sampled_from([0, 1, 2, 0x1000, H, U64_MAX]),
                                     st.integers(0, U64_MAX)),
          access=st.integers(0, 3))
    def translate(self, iova, size, access):
        self.agree(lambda: self.model.translate(iova, size, access),
                   lambda t: t.translate(iova, size, access))

    @rule()
    def copy_roundtrip(self):
        self.trees = [t.copy() for t in self.trees]

    @invariant()
    def same_contents(self):
        want = [e[:4] for e in self.model.ordered()]
        for t in self.trees:
            t._check()
            assert len(t) == len(self.model.list)
            assert [tuple(m[:4]) for m in t] == want
            assert [e[4] for e in t._insertion_order()] == [e[4] for e in self.model.list]


EngineMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("IOTLB_HYPOTHESIS_EXAMPLES", "150")),
    stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestEngineMachine = EngineMachine.TestCase
