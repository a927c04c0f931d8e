"""Kernel fidelity of the engine: every rule of kernel-semantics.md §1.

Each test names the kernel function (drivers/vhost/iotlb.c, vhost.c, vringh.c) whose
behaviour it pins down.  The ``IOTLB`` fixture (conftest.py) runs every test against
both the Cython engine and the pure-Python twin.
"""
from __future__ import annotations

import array
import copy
import errno
import gc
import pickle
import weakref

import pytest

import iotlb
from iotlb import U64_MAX, IOTLBError, Map, Perm

H = 1 << 63


class Ctx:
    """A ctx object that can be weak-referenced and pickled."""


def entries(t):
    return [tuple(m[:4]) for m in t]


def state(t):
    """Everything observable, including insertion order and ctx."""
    return (entries(t), [(m.start, m.ctx) for m in t], t._insertion_order(), t.limit,
            t.retire)


# --------------------------------------------------------------------------- add_range
class TestAddRange:
    def test_last_below_start_is_efault_and_changes_nothing(self, IOTLB):
        """vhost_iotlb_add_range_ctx: `if (last < start) return -EFAULT;` first."""
        t = IOTLB()
        t.map(0x1000, 0x1fff, 0)
        before = state(t)
        with pytest.raises(IOTLBError) as ei:
            t.map(0x3000, 0x2fff, 0)
        assert ei.value.errno == errno.EFAULT
        assert state(t) == before
        t._check()

    def test_single_byte_range(self, IOTLB):
        """vhost_iotlb_add_range_ctx: start == last is a one-byte entry (size 1)."""
        t = IOTLB()
        t.map(7, 7, 70)
        (m,) = t
        assert (m.start, m.last, m.size, m.addr) == (7, 7, 1, 70)

    def test_full_space_is_split_in_two_halves(self, IOTLB):
        """vhost_iotlb_add_range_ctx: [0, ULONG_MAX] inserts [0, ULONG_MAX/2] then
        continues with start = 2^63, addr += 2^63."""
        t = IOTLB()
        t.map(0, U64_MAX, 0x1000, Perm.RO, ctx="c")
        assert entries(t) == [(0, H - 1, 0x1000, 1), (H, U64_MAX, 0x1000 + H, 1)]
        assert [m.size for m in t] == [H, H]
        assert [m.ctx for m in t] == ["c", "c"]
        t._check()

    @pytest.mark.parametrize("start,last", [(0, U64_MAX - 1), (1, U64_MAX), (0, H),
                                            (H - 1, U64_MAX)])
    def test_only_exact_full_space_is_split(self, IOTLB, start, last):
        """vhost_iotlb_add_range_ctx: the split triggers only for start == 0 &&
        last == ULONG_MAX, never for other large ranges."""
        t = IOTLB()
        t.map(start, last, 0)
        assert entries(t) == [(start, last, 0, 3)]

    def test_full_space_addr_overflow_rejected_before_any_change(self, IOTLB):
        """The kernel wraps addr + 2^63; the engine refuses instead (ARCHITECTURE.md)."""
        t = IOTLB(2, retire=True)
        t.map(5, 5, 5)
        before = state(t)
        with pytest.raises(OverflowError):
            t.map(0, U64_MAX, H)
        assert state(t) == before
        t.map(0, U64_MAX, H - 1)  # the largest addr that fits
        assert entries(t) == [(0, H - 1, H - 1, 3), (H, U64_MAX, U64_MAX, 3)]

    def test_overlaps_and_identical_ranges_are_kept(self, IOTLB):
        """vhost_iotlb_add_range_ctx never rejects overlaps: identical ranges become
        separate entries (rejecting is vhost-vdpa's job, -EEXIST)."""
        t = IOTLB()
        t.map(0x1000, 0x1fff, 1)
        t.map(0x1000, 0x1fff, 2)
        t.map(0x1800, 0x27ff, 3)
        t.map(0, U64_MAX, 4)
        assert len(t) == 5
        t._check()

    def test_perm_unknown_bits_are_kept_verbatim(self, IOTLB):
        """struct vhost_iotlb_map.perm stores whatever the caller passed (vhost-vdpa
        does not validate perm, kernel-semantics §3.4 step 6)."""
        t = IOTLB()
        for p in (0, 4, 0xA5, 255):
            t.map(p * 16, p * 16 + 15, 0, p)
        assert sorted(m[3] for m in t) == [0, 4, 0xA5, 255]
        assert next(iter(t)).perm == Perm.NONE

    def test_limit_without_retire_refuses_with_enospc(self, IOTLB):
        """vhost_iotlb_add_range_ctx: `nmaps >= limit` without RETIRE → -ENOSPC,
        nothing changed ("vhost_iotlb: bound map allocation in add_range", v7.2;
        stable 6.12.114, 6.1.191)."""
        t = IOTLB(2)
        t.map(0, 9, 0)
        t.map(10, 19, 0)
        before = state(t)
        with pytest.raises(IOTLBError) as ei:
            t.map(20, 29, 0)
        assert ei.value.errno == errno.ENOSPC
        assert state(t) == before and t.limit == 2 and not t.retire
        t.unmap(0, 0)
        t.map(20, 29, 0)                       # room again after an unmap
        assert [m.start for m in t] == [10, 20]
        t._check()

    def test_limit_zero_refuses_every_add_with_einval(self, IOTLB):
        """vhost_iotlb_add_range_ctx: `!iotlb->limit` → -EINVAL, after the EFAULT of
        `last < start` (same commit).  None is the model's tree without a limit."""
        for retire in (False, True):
            t = IOTLB(0, retire=retire)
            with pytest.raises(IOTLBError) as ei:
                t.map(0, 9, 0)
            assert ei.value.errno == errno.EINVAL and len(t) == 0
            with pytest.raises(IOTLBError) as ei:
                t.map(9, 0, 0)
            assert ei.value.errno == errno.EFAULT
        t = IOTLB()
        assert t.limit is None
        t.map_many(array.array("Q", range(0, 5000, 2)), array.array("Q", range(1, 5000, 2)),
                   array.array("Q", [0] * 2500))
        assert len(t) == 2500

    def test_full_space_split_checks_both_halves_up_front(self, IOTLB):
        """vhost_iotlb_add_range_ctx, [0, ~0]: `limit < 2` → -ENOSPC even with
        RETIRE; without RETIRE `nmaps > limit - 2` → -ENOSPC before the lower half is
        added, so a refused split leaves nothing behind."""
        t = IOTLB(3)
        t.map(5, 5, 5)
        t.map(6, 6, 6)
        before = state(t)
        with pytest.raises(IOTLBError) as ei:
            t.map(0, U64_MAX, 0)
        assert ei.value.errno == errno.ENOSPC and state(t) == before
        t.unmap(6, 6)
        t.map(0, U64_MAX, 0)
        assert len(t) == 3
        for retire in (False, True):
            with pytest.raises(IOTLBError) as ei:
                IOTLB(1, retire=retire).map(0, U64_MAX, 0)
            assert ei.value.errno == errno.ENOSPC

    def test_map_many_checks_the_limit_before_adding_anything(self, IOTLB):
        """map_many is all-or-nothing: the item that would hit
        vhost_iotlb_add_range_ctx's ENOSPC is reported by index, nothing added."""
        t = IOTLB(3)
        t.map(100, 100, 0)
        q = lambda *v: array.array("Q", v)
        with pytest.raises(IOTLBError) as ei:
            t.map_many(q(0, 1, 2), q(0, 1, 2), q(0, 0, 0))
        assert ei.value.errno == errno.ENOSPC and ei.value.index == 2 and len(t) == 1
        with pytest.raises(IOTLBError) as ei:
            IOTLB(0).map_many(q(0), q(0), q(0))
        assert ei.value.errno == errno.EINVAL and ei.value.index == 0
        r = IOTLB(2, retire=True)
        assert r.map_many(q(0, 1, 2), q(0, 1, 2), q(0, 0, 0)) == 3
        assert [m.start for m in r] == [1, 2]

    def test_retire_evicts_oldest_insertion_fifo(self, IOTLB):
        """VHOST_IOTLB_FLAG_RETIRE frees the first entry of the insertion list."""
        t = IOTLB(3, retire=True)
        for s in (300, 100, 200):
            t.map(s, s + 9, s)
        t.map(400, 409, 400)
        assert [m.start for m in t] == [100, 200, 400]  # 300 was inserted first
        t._check()

    def test_retire_is_not_lru_lookups_do_not_reorder(self, IOTLB):
        """Retirement is FIFO by insertion: lookups never touch the list."""
        t = IOTLB(2, retire=True)
        t.map(0, 9, 0)
        t.map(10, 19, 0)
        for _ in range(3):
            assert t.first(0, 0).start == 0
            t.translate(0, 10)
        t.map(20, 29, 0)
        assert [m.start for m in t] == [10, 20]

    def test_retire_skips_entries_already_unmapped(self, IOTLB):
        """The list holds only present entries: an unmapped entry is never 'evicted'
        again and does not count toward nmaps."""
        t = IOTLB(2, retire=True)
        t.map(0, 9, 0)
        t.map(10, 19, 0)
        assert t.unmap(0, 0) == 1
        t.map(20, 29, 0)  # nmaps was 1: no eviction
        assert [m.start for m in t] == [10, 20]
        t.map(30, 39, 0)  # evicts 10, the oldest present
        assert [m.start for m in t] == [20, 30]
        t._check()

    def test_retire_limit_one_full_space_is_enospc(self, IOTLB):
        """vhost_iotlb_add_range_ctx: limit 1 + RETIRE + [0, ~0] → -ENOSPC (before
        "vhost_iotlb: bound map allocation in add_range" the lower half was evicted
        by the upper one)."""
        t = IOTLB(1, retire=True)
        t.map(7, 7, 7)
        with pytest.raises(IOTLBError) as ei:
            t.map(0, U64_MAX, 0)
        assert ei.value.errno == errno.ENOSPC and entries(t) == [(7, 7, 7, 3)]

    def test_retire_check_runs_once_per_half(self, IOTLB):
        """In the split case the retire check runs for the lower half (inside the
        recursion) and again for the upper half."""
        t = IOTLB(2, retire=True)
        t.map(5, 5, 5)
        t.map(0, U64_MAX, 0)
        assert entries(t) == [(0, H - 1, 0, 3), (H, U64_MAX, H, 3)]
        t2 = IOTLB(3, retire=True)
        t2.map(5, 5, 5)
        t2.map(6, 6, 6)
        t2.map(0, U64_MAX, 0)
        assert [m.start for m in t2] == [0, 6, H]

    def test_reset_keeps_limit_and_retire(self, IOTLB):
        """vhost_iotlb_reset = del_range(0, ~0): limit and flags are kept."""
        t = IOTLB(2, retire=True)
        t.map(0, 9, 0)
        t.map(10, 19, 0)
        t.reset()
        assert len(t) == 0 and t.limit == 2 and t.retire
        for s in (0, 10, 20):
            t.map(s, s + 9, 0)
        assert [m.start for m in t] == [10, 20]


# --------------------------------------------------------------------------- lookup
class TestLookup:
    def test_first_returns_lowest_start(self, IOTLB):
        """vhost_iotlb_itree_first returns the overlapping entry with the lowest start."""
        t = IOTLB()
        t.map(0x3000, 0x3fff, 3)
        t.map(0x1000, 0x5fff, 1)
        t.map(0x2000, 0x2fff, 2)
        assert t.first(0x3800, 0x3800).addr == 1
        assert t.first(0x6000, 0x6000) is None

    def test_first_closed_interval_touching_ends(self, IOTLB):
        """Overlap is closed: e.start <= last && e.last >= start."""
        t = IOTLB()
        t.map(10, 20, 0)
        assert t.first(20, 30).start == 10
        assert t.first(0, 10).start == 10
        assert t.first(21, 30) is None
        assert t.first(0, 9) is None

    def test_ties_iterate_in_insertion_order(self, IOTLB):
        """The interval-tree insert walks right on equal start: ties keep insertion
        order in first(), overlapping() and iteration."""
        t = IOTLB()
        t.map(0x1000, 0x1fff, 1)
        t.map(0x1000, 0x10ff, 2)
        t.map(0x1000, 0x3fff, 3)
        assert t.first(0x1000, 0x1000).addr == 1
        assert [m.addr for m in t.overlapping(0x1000, 0x1000)] == [1, 2, 3]
        assert [m.addr for m in t] == [1, 2, 3]
        t.unmap(0x1f00, 0x1f00)  # removes 1 and 3
        assert [m.addr for m in t] == [2]

    def test_overlapping_ascending_and_complete(self, IOTLB):
        """vhost_iotlb_itree_first + vhost_iotlb_itree_next visit every overlapping
        entry in tree order."""
        t = IOTLB()
        t.map(50, 60, 0)
        t.map(0, 100, 1)
        t.map(10, 20, 2)
        t.map(70, 80, 3)
        t.map(200, 300, 4)
        assert [m.addr for m in t.overlapping(15, 75)] == [1, 2, 0, 3]
        assert list(t.overlapping(101, 199)) == []

    def test_wrapped_query_matches_entries_spanning_both_bounds(self, IOTLB):
        """§1.3: the closed-interval query with start > last (a wrapped caller) still
        matches an entry that spans both bounds."""
        t = IOTLB()
        t.map(0, 0xfff, 0)
        t.map(0x1000, 0x2fff, 1)
        t.map(0x5000, 0x5fff, 2)
        assert [m.addr for m in t.overlapping(0x2000, 0x1800)] == [1]
        assert t.first(0x2000, 0x1800).addr == 1
        assert t.unmap(0x2000, 0x1800) == 1
        assert [m.addr for m in t] == [0, 2]

    def test_boundaries_zero_and_u64_max(self, IOTLB):
        t = IOTLB()
        t.map(U64_MAX, U64_MAX, 1)
        t.map(0, 0, 2)
        assert t.first(U64_MAX, U64_MAX).addr == 1
        assert t.first(0, U64_MAX).addr == 2
        assert t.translate(U64_MAX, 1) == [(1, 1)]


# --------------------------------------------------------------------------- del_range
class TestDelRange:
    def test_whole_entries_removed_never_split(self, IOTLB):
        """vhost_iotlb_del_range frees every entry overlapping by even one byte,
        entirely; entries are never trimmed."""
        t = IOTLB()
        t.map(0, 0xfff, 0)
        t.map(0x1000, 0x1fff, 0x1000)
        t.map(0x2000, 0x2fff, 0x2000)
        assert t.unmap(0xfff, 0x1000) == 2
        assert entries(t) == [(0x2000, 0x2fff, 0x2000, 3)]

    def test_no_overlap_is_noop(self, IOTLB):
        """vhost_iotlb_del_range on a range that overlaps nothing changes nothing."""
        t = IOTLB()
        t.map(10, 20, 0)
        assert t.unmap(21, 100) == 0
        assert len(t) == 1

    def test_unmap_all_default_range(self, IOTLB):
        """vhost_iotlb_reset: del_range(0, ULONG_MAX) removes everything."""
        t = IOTLB()
        for i in range(100):
            t.map(i * 7, i * 7 + 20, i)
        t.map(0, U64_MAX, 0)
        assert t.unmap() == 102
        assert len(t) == 0 and not t
        t._check()

    def test_unmap_removes_identical_and_nested(self, IOTLB):
        t = IOTLB()
        t.map(100, 200, 0)
        t.map(100, 200, 1)
        t.map(120, 130, 2)
        t.map(0, 1000, 3)
        t.map(2000, 3000, 4)
        assert t.unmap(125, 125) == 4
        assert entries(t) == [(2000, 3000, 4, 3)]


# --------------------------------------------------------------------------- translate
class TestTranslate:
    def test_adjacent_entries_give_one_segment_each(self, IOTLB):
        """translate_desc / iotlb_translate emit one segment per entry crossed, even
        when the host addresses are contiguous."""
        t = IOTLB()
        t.map(0x1000, 0x1fff, 0x10000)
        t.map(0x2000, 0x2fff, 0x11000)
        assert t.translate(0x1ff0, 0x20) == [(0x10ff0, 0x10), (0x11000, 0x10)]

    def test_hole_fails_whole_with_first_missing_iova(self, IOTLB):
        """A hole anywhere fails the whole translation (no partial result)."""
        t = IOTLB()
        t.map(0x1000, 0x1fff, 0)
        t.map(0x3000, 0x3fff, 0)
        with pytest.raises(IOTLBError) as ei:
            t.translate(0x1000, 0x3000)
        assert ei.value.errno == errno.EFAULT and ei.value.iova == 0x2000
        with pytest.raises(IOTLBError) as ei:
            t.translate(0x800, 0x1000)
        assert ei.value.iova == 0x800

    def test_perm_miss_is_eperm(self, IOTLB):
        """translate_desc: `!(map->perm & access)` → -EPERM."""
        t = IOTLB()
        t.map(0, 0xfff, 0, Perm.RO)
        t.map(0x1000, 0x1fff, 0, Perm.WO)
        assert t.translate(0, 0x1000, Perm.RO) == [(0, 0x1000)]
        with pytest.raises(IOTLBError) as ei:
            t.translate(0xff0, 0x20, Perm.RO)
        assert ei.value.errno == errno.EPERM and ei.value.iova == 0x1000
        with pytest.raises(IOTLBError) as ei:
            t.translate(0, 1, Perm.WO)
        assert ei.value.errno == errno.EPERM

    def test_access_is_a_mask_every_bit_needed(self, IOTLB):
        """ARCHITECTURE.md: access is a mask and every bit must be in perm."""
        t = IOTLB()
        t.map(0, 0xfff, 0, Perm.RO)
        with pytest.raises(IOTLBError):
            t.translate(0, 1, Perm.RW)
        assert t.translate(0, 1, Perm.NONE) == [(0, 1)]

    def test_lowest_start_entry_wins_under_overlap(self, IOTLB):
        """The consumer loop uses itree_first(addr, last): the lowest-start overlapping
        entry, which covers addr if any entry does."""
        t = IOTLB()
        t.map(0x1000, 0x1fff, 0xA000)
        t.map(0x0000, 0x2fff, 0xB000)
        assert t.translate(0x1800, 0x1000) == [(0xB000 + 0x1800, 0x1000)]

    def test_size_zero_and_overflow(self, IOTLB):
        t = IOTLB()
        t.map(0, U64_MAX, 0)
        with pytest.raises(ValueError):
            t.translate(0, 0)
        # translate_desc's u64 last wraps to 0: itree_first(~0, 0) matches no half of
        # the identity map (neither covers [0, ~0]), so EFAULT at iova
        with pytest.raises(IOTLBError) as e:
            t.translate(U64_MAX, 2)
        assert e.value.errno == errno.EFAULT and e.value.iova == U64_MAX
        assert t.translate(U64_MAX - 1, 2) == [(U64_MAX - 1, 2)]
        assert t.translate(H - 1, 2) == [(H - 1, 1), (H, 1)]

    def test_host_address_wraps_as_in_the_kernel(self, IOTLB):
        """``map->addr + addr - map->start`` is u64 arithmetic (translate_desc): the
        host address wraps modulo 2**64, and a segment is not split there."""
        t = IOTLB()
        t.map(0, 0xffff, U64_MAX - 0xff)
        assert t.translate(0, 0x100) == [(U64_MAX - 0xff, 0x100)]
        assert t.translate(0x100, 1) == [(0, 1)]
        assert t.translate(0x80, 0x100) == [(U64_MAX - 0x7f, 0x100)]

    def test_a_range_past_2_64_wraps_as_in_the_kernel(self, IOTLB):
        """``last = iova + size - 1`` wraps: the first lookup matches only an entry
        covering [last, iova], then the walk continues from 0 (translate_desc)."""
        t = IOTLB()
        t.map(5, U64_MAX, 0x1000)
        t.map(0, 0xf, 0x9000)
        assert t.translate(U64_MAX - 15, 32) == [(0xfeb, 16), (0x9000, 16)]
        u = IOTLB()
        u.map(0x10, U64_MAX, 0x1000)          # starts after last (0xf): no match
        u.map(0, 0xf, 0x9000)
        with pytest.raises(IOTLBError) as e:
            u.translate(U64_MAX - 15, 32)
        assert e.value.errno == errno.EFAULT and e.value.iova == U64_MAX - 15


# --------------------------------------------------------------------------- bad input
BAD_U64 = [-1, 1 << 64, 2 ** 100, 1.0, None, "1", b"1", 1j]


class TestBadInput:
    @pytest.mark.parametrize("bad", BAD_U64, ids=repr)
    @pytest.mark.parametrize("where", range(3))
    def test_map_rejects_and_changes_nothing(self, IOTLB, bad, where):
        t = IOTLB(2, retire=True)
        t.map(0, 9, 0)
        t.map(10, 19, 0)
        before = state(t)
        args = [0x100, 0x1ff, 0x1000]
        args[where] = bad
        with pytest.raises((TypeError, OverflowError, ValueError)):
            t.map(*args)
        assert state(t) == before
        t.map(20, 29, 0)  # the retire queue was not touched either
        assert [m.start for m in t] == [10, 20]
        t._check()

    @pytest.mark.parametrize("bad", [-1, 256, 1.0, None, "rw"], ids=repr)
    def test_bad_perm(self, IOTLB, bad):
        t = IOTLB()
        with pytest.raises((TypeError, OverflowError, ValueError)):
            t.map(0, 1, 0, bad)
        assert len(t) == 0

    @pytest.mark.parametrize("bad", BAD_U64, ids=repr)
    def test_queries_reject(self, IOTLB, bad):
        t = IOTLB()
        t.map(0, 9, 0)
        for call in (lambda: t.first(bad, 1), lambda: t.first(0, bad),
                     lambda: t.unmap(bad, 5), lambda: t.unmap(0, bad),
                     lambda: list(t.overlapping(bad, 1)),
                     lambda: t.translate(bad, 1), lambda: t.translate(0, bad)):
            with pytest.raises((TypeError, OverflowError, ValueError)):
                call()
        assert entries(t) == [(0, 9, 0, 3)]

    def test_same_exception_types_in_both_engines(self, all_engines):

        def kinds(cls):
            out = []
            for args in ([-1, 1, 0], [1 << 64, 1, 0], [1.5, 2, 0], [None, 1, 0],
                         [0, 1, 0, 256], [0, 1, 0, -1], [0, 1, 0, "x"]):
                try:
                    cls().map(*args)
                except Exception as e:  # noqa: BLE001 - comparing types
                    out.append(type(e))
            return out

        results = {name: kinds(cls) for name, cls in all_engines.items()}
        assert len(set(map(tuple, results.values()))) == 1, results

    def test_int_like_values_are_accepted(self, IOTLB):
        np = pytest.importorskip("numpy")
        t = IOTLB()
        t.map(np.uint64(0x1000), np.int64(0x1fff), np.uint64(U64_MAX - 0x1000), np.uint8(1))
        assert entries(t) == [(0x1000, 0x1fff, U64_MAX - 0x1000, 1)]
        assert t.first(np.uint64(0x1000), np.uint64(0x1000)).start == 0x1000

    def test_bad_constructor(self, IOTLB):
        with pytest.raises((TypeError, OverflowError)):
            IOTLB(-1)
        with pytest.raises(TypeError):
            IOTLB(1.0)


# --------------------------------------------------------------------------- container
class TestContainer:
    def test_len_bool_iter_repr(self, IOTLB):
        t = IOTLB()
        assert not t and len(t) == 0 and list(t) == []
        for i in range(20):
            t.map(i * 0x1000, i * 0x1000 + 0xfff, i)
        assert t and len(t) == 20
        r = repr(t)
        assert r.startswith("IOTLB([Map(") and "12 more" in r and "limit=None" in r
        assert all(isinstance(m, Map) for m in t)

    def test_equality_compares_entries_not_ctx(self, IOTLB, all_engines):

        a, b = IOTLB(), IOTLB(5, retire=True)
        a.map(1, 2, 3, ctx="x")
        b.map(1, 2, 3, ctx="y")
        assert a == b
        b.map(4, 5, 6)
        assert a != b
        for other in all_engines.values():  # across engines
            c = other()
            c.map(1, 2, 3)
            assert a == c and c == a
        assert a != [(1, 2, 3, 3)]

    def test_copy_keeps_everything(self, IOTLB):
        """copy() keeps limit, retire, entries, ctx and the insertion order that
        decides ties and retirement."""
        t = IOTLB(3, retire=True)
        t.map(300, 309, 0, ctx="a")
        t.map(100, 109, 0, ctx="b")
        t.map(100, 105, 1, ctx="c")
        for c in (t.copy(), copy.copy(t), pickle.loads(pickle.dumps(t))):
            assert type(c) is type(t)
            assert state(c) == state(t)
            c._check()
            c.map(500, 509, 0)
            assert [m.ctx for m in c] == ["b", "c", None]  # 300 ("a") was oldest
        assert len(t) == 3

    def test_pickle_full_space_and_big_values(self, IOTLB):
        t = IOTLB()
        t.map(0, U64_MAX, H - 1, 255)
        c = pickle.loads(pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL))
        assert entries(c) == entries(t)

    def test_mutation_during_iteration_raises(self, IOTLB):
        t = IOTLB()
        for i in range(10):
            t.map(i, i, 0)
        it = iter(t)
        next(it)
        t.map(100, 100, 0)
        with pytest.raises(RuntimeError):
            list(it)
        it = t.overlapping(0, 5)
        next(it)
        t.unmap(3, 3)
        with pytest.raises(RuntimeError):
            next(it)

    def test_iterator_made_before_a_mutation_sees_the_tree_it_starts_on(self, IOTLB):
        """Both engines take the version at the first next(): an iterator created
        before reset()/unmap()/map() and started after it walks the current tree."""
        for mutate in (lambda t: t.reset(), lambda t: t.unmap(), lambda t: t.unmap(0, 0),
                       lambda t: t.map(0x5000, 0x5fff, 5)):
            t = IOTLB()
            t.map(0x1000, 0x1fff, 0)
            t.map(0, 0, 1)
            its = [iter(t), t.overlapping(0, U64_MAX)]
            mutate(t)
            want = [tuple(m[:4]) for m in t]
            for it in its:
                assert [tuple(m[:4]) for m in it] == want

    def test_ctx_released_on_unmap_reset_retire_and_gc(self, IOTLB):
        def refs():
            objs = [Ctx() for _ in range(4)]
            return objs, [weakref.ref(o) for o in objs]

        t = IOTLB(2, retire=True)
        objs, ws = refs()
        t.map(0, 9, 0, ctx=objs[0])
        t.map(10, 19, 0, ctx=objs[1])
        t.map(20, 29, 0, ctx=objs[2])  # retires objs[0]
        del objs
        gc.collect()
        assert ws[0]() is None and ws[1]() is not None
        t.unmap(10, 10)
        gc.collect()
        assert ws[1]() is None and ws[2]() is not None
        t.reset()
        gc.collect()
        assert ws[2]() is None
        objs, ws = refs()
        t.map(0, U64_MAX, 0, ctx=objs[0])
        del objs
        c = t.copy()
        assert pickle.loads(pickle.dumps(t, 5)) is not None  # ctx holder survives
        del t, c
        gc.collect()
        assert ws[0]() is None


# --------------------------------------------------------------------------- batch forms
class TestBatch:
    def test_map_many_equals_map_loop(self, IOTLB):
        starts = array.array("Q", [0x3000, 0x1000, 0, 0x1000])
        lasts = array.array("Q", [0x3fff, 0x1fff, U64_MAX, 0x10ff])
        addrs = array.array("Q", [3, 1, 0, 9])
        perms = array.array("Q", [1, 2, 3, 0])
        t = IOTLB()
        assert t.map_many(starts, lasts, addrs, perms) == 4
        ref = IOTLB()
        for args in zip(starts, lasts, addrs, perms):
            ref.map(*args)
        assert entries(t) == entries(ref)
        assert t._insertion_order() == ref._insertion_order()
        t._check()

    def test_map_many_numpy_and_scalar_perm(self, IOTLB):
        np = pytest.importorskip("numpy")
        s = np.arange(0, 100, dtype=np.uint64) * 0x1000
        t = IOTLB()
        t.map_many(s, s + 0xfff, s, 1)
        assert len(t) == 100 and {m[3] for m in t} == {1}
        t.map_many(s[::2], s[::2] + 1, s[::2])  # strided views work too
        assert len(t) == 150

    def test_numpy_arrays_for_perms_and_sizes(self, IOTLB):
        """A numpy array has __index__ too: it must still be taken as a buffer."""
        np = pytest.importorskip("numpy")
        s = np.array([0x1000, 0x3000], dtype=np.uint64)
        t = IOTLB()
        t.map_many(s, s + 0xfff, s, np.array([1, 2], dtype=np.uint64))
        assert [m[3] for m in t] == [1, 2]
        t.map_many(s + 0x10000, s + 0x10fff, s, np.uint64(1))  # numpy scalar: one perm
        out = t.translate_many(s, np.array([16, 0x1000], dtype=np.uint64), Perm.NONE)
        assert list(out) == [0x1000, 0x3000]

    def test_map_many_all_or_nothing(self, IOTLB):
        t = IOTLB(3, retire=True)
        t.map(0, 9, 0)
        before = state(t)
        with pytest.raises(IOTLBError) as ei:
            t.map_many(array.array("Q", [100, 200, 300]), array.array("Q", [109, 199, 309]),
                       array.array("Q", [0, 0, 0]))
        assert ei.value.errno == errno.EFAULT and ei.value.index == 1
        with pytest.raises(OverflowError):
            t.map_many(array.array("Q", [100]), array.array("Q", [109]),
                       array.array("Q", [0]), array.array("Q", [256]))
        with pytest.raises(OverflowError):
            t.map_many(array.array("Q", [5, 0]), array.array("Q", [5, U64_MAX]),
                       array.array("Q", [0, H]))
        with pytest.raises(ValueError):
            t.map_many(array.array("Q", [1]), array.array("Q", [1, 2]), array.array("Q", [0]))
        with pytest.raises(TypeError):
            t.map_many(array.array("d", [1.0]), array.array("Q", [1]), array.array("Q", [0]))
        with pytest.raises(TypeError):
            t.map_many([1], [1], [1])
        assert state(t) == before

    def test_translate_many(self, IOTLB):
        t = IOTLB()
        t.map(0x1000, 0x1fff, 0x9000)
        t.map(0x2000, 0x2fff, 0x5000, Perm.RO)
        iovas = array.array("Q", [0x1000, 0x1ff8, 0x2000, 0x8000])
        out = t.translate_many(iovas, 16, default=U64_MAX)
        assert isinstance(out, array.array) and out.typecode == "Q"
        assert list(out) == [0x9000, 0x9ff8, 0x5000, U64_MAX]
        assert list(t.translate_many(iovas[:3], array.array("Q", [1, 1, 1]))) == \
            [0x9000, 0x9ff8, 0x5000]
        with pytest.raises(IOTLBError) as ei:
            t.translate_many(iovas, 16)
        assert ei.value.errno == errno.EFAULT and ei.value.index == 3
        with pytest.raises(IOTLBError) as ei:
            t.translate_many(iovas[:3], 1, Perm.WO)
        assert ei.value.errno == errno.EPERM and ei.value.index == 2
        with pytest.raises(ValueError):
            t.translate_many(iovas, 0, default=0)
        assert len(t.translate_many(array.array("Q"), 1)) == 0


# --------------------------------------------------------------------------- module
def test_module_surface():
    assert iotlb.U64_MAX == 2 ** 64 - 1
    assert iotlb.IMPLEMENTATION in ("cython", "python")
    assert issubclass(iotlb.IOTLBError, OSError)
    assert isinstance(iotlb.IOTLB(), iotlb.IOTLBBase)
    assert Perm.RW == 3 and Perm.RO == 1 and Perm.WO == 2 and Perm.NONE == 0


def test_add_all_is_map_of_every_entry_in_ascending_order():
    """IOTLB.add_all(src) = map(m.start, m.last, m.addr, m.perm) per entry of src,
    ascending, ctx dropped (vdpasim_set_map's copy loop); stops at the first error."""
    import errno
    import random

    from iotlb import IOTLB, IOTLBError

    rng = random.Random(7)
    src = IOTLB()
    for i in range(300):
        s = rng.randrange(0, 1 << 20) * 4096
        src.map(s, s + rng.randrange(1, 8) * 4096 - 1, rng.randrange(1 << 40), rng.randrange(4),
                ctx=i)
    src.map(0, 2**64 - 1, 0x1000)                  # stored as two halves
    want = IOTLB()
    for m in src:
        want.map(m.start, m.last, m.addr, m.perm)
    got = IOTLB()
    assert got.add_all(src) == len(src) == 302
    assert got == want and all(m.ctx is None for m in got)
    assert [tuple(m)[:4] for m in got] == [tuple(m)[:4] for m in src]
    got._check()
    small = IOTLB(10)
    try:
        small.add_all(src)
    except IOTLBError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("ENOSPC expected")
    assert [tuple(m)[:4] for m in small] == [tuple(m)[:4] for m in src][:10]
    try:
        got.add_all(got)
    except ValueError:
        pass
    else:
        raise AssertionError("add_all(self) must be refused")


def test_assign_is_a_wipe_then_add_all_and_wipes_again_on_an_error(IOTLB):
    """IOTLB.assign(src) is the copy a set_map parent keeps (vdpasim_set_map,
    vduse_domain_set_map): vhost_iotlb_reset, then add_all; an error wipes again and
    is raised.  An iterable of Map gives the same; assign(self) is refused with
    nothing changed."""
    src = IOTLB()
    for i in range(40):
        src.map(i * 0x3000, i * 0x3000 + 0x1fff, 0x100000 + i, i % 4, ctx=i)
    src.map(0x1000, 0x1fff, 0x77)                     # overlapping: insertion order kept
    want = IOTLB()
    want.add_all(src)
    for source in (src, list(src), iter(list(src))):
        got = IOTLB()
        got.map(0xdead000, 0xdeadfff, 1, ctx="old")
        assert got.assign(source) is None
        assert got == want and [tuple(m)[:4] for m in got] == [tuple(m)[:4] for m in src]
        assert all(m.ctx is None for m in got)
        got._check()
    for source in (src, list(src)):
        small = IOTLB(10)
        small.map(0xdead000, 0xdeadfff, 1)
        with pytest.raises(IOTLBError) as ei:
            small.assign(source)
        assert ei.value.errno == errno.ENOSPC and len(small) == 0
        small._check()

    def broken():
        yield from list(src)[:3]
        raise KeyError("the source broke")
    with pytest.raises(KeyError):
        got.assign(broken())
    assert len(got) == 0
    got.assign(src)
    with pytest.raises(ValueError):
        got.assign(got)
    assert got == want


def test_pure_twin_refuses_concurrent_mutation_instead_of_corrupting():
    """The pure-Python twin is not thread-safe: a call while another thread is inside
    a mutating method raises RuntimeError and changes nothing (issue 16: was lost
    entries and KeyError), and under real contention the tree stays consistent."""
    import threading

    from iotlb._pyengine import IOTLB as PyIOTLB

    t = PyIOTLB()
    t.map(0, 0xfff, 0)
    t._owner, t._depth = -1, 1                 # as if another thread were mid-map
    for call in (lambda: t.map(0x1000, 0x1fff, 0), lambda: t.unmap(),
                 lambda: t.translate(0, 1), lambda: t.first(0, 1)):
        with pytest.raises(RuntimeError, match="not thread-safe"):
            call()
    t._owner, t._depth = None, 0
    assert [m.start for m in t] == [0]

    refused = []
    stop = threading.Event()

    def writer(base):
        i = 0
        while not stop.is_set() and i < 3000:
            try:
                t.map(base + i * 0x1000, base + i * 0x1000 + 0xfff, i)
                if i % 3 == 0:
                    t.unmap(base + (i // 2) * 0x1000, base + (i // 2) * 0x1000)
            except RuntimeError:
                refused.append(1)
            i += 1

    def reader():
        while not stop.is_set():
            try:
                t.first(0, U64_MAX)
            except RuntimeError:
                refused.append(1)

    threads = [threading.Thread(target=writer, args=(b << 32,)) for b in (1, 2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads[:2]:
        th.join()
    stop.set()
    for th in threads[2:]:
        th.join()
    t._check()                                  # consistent, whatever was refused
    assert t._owner is None and t._depth == 0


# ------------------------------------------------------------ results the caller holds
def test_a_held_map_never_changes_while_later_lookups_run(IOTLB):
    # The compiled engine refills a Map in place when nothing but its spare slot holds
    # it: a Map the caller still holds, in any number, keeps its values.
    t = IOTLB()
    for i in range(8):
        t.map(i * 0x1000, i * 0x1000 + 0xFFF, 0x100000 + i, 1 + i % 3)
    held = [t.first(i * 0x1000, i * 0x1000) for i in range(8)]
    for _ in range(3):
        for i in range(8):
            m = t.first(i * 0x1000 + 5, i * 0x1000 + 5)
            assert m == (i * 0x1000, i * 0x1000 + 0xFFF, 0x100000 + i, 1 + i % 3, None)
            del m
    assert held == [(i * 0x1000, i * 0x1000 + 0xFFF, 0x100000 + i, 1 + i % 3, None)
                    for i in range(8)]
    assert len({id(m) for m in held}) == 8
    assert all(type(m) is Map for m in held)
    # a dropped result, refilled, is an ordinary Map: hashable, comparable, unpackable
    a = t.first(0, 0)
    b = t.first(0x7000, 0x7000)
    assert hash(a) == hash((0, 0xFFF, 0x100000, 1, None)) and a != b
    s, l, addr, perm, ctx = b
    assert (s, l, addr, perm, ctx) == (0x7000, 0x7FFF, 0x100007, 2, None)


_EDGES = [0x101, 0x1000, (1 << 30) - 0x1000, 1 << 30, (1 << 48) - 0x1000, (1 << 60) - 0x1000,
          1 << 60, (1 << 64) - 0x1000]


def test_a_held_int_never_changes_while_later_lookups_run(IOTLB):
    # The compiled engine (CPython < 3.12) also gives a refilled Map's ints their new
    # values in place when the Map is all that holds them: an int the caller took out
    # of a Map (start, last, addr) keeps its value however many lookups follow, and
    # values of every size come out right (1, 2 and 3 digits of 30 bits; small ints
    # the shared ones).
    import operator
    import random
    rng = random.Random(5)
    t = IOTLB()
    for k, base in enumerate(_EDGES):
        t.map(base, base + 0xFF, (base ^ 0x5A5A000) & ~0xFFF, 1 + k % 3)
    t.map(0x10, 0x1F, 0x20, 3)                    # start, last, addr all small ints
    want = {m.start: tuple(m) for m in t}
    held_ints, held_maps = [], []
    for i in range(3000):
        start = rng.choice(sorted(want))
        m = t.first(start, start)
        assert tuple(m) == want[start]
        if i % 7 == 0:
            held_ints.append((start, m.start, m.last, m.addr))   # the ints, not the Map
        elif i % 11 == 0:
            held_maps.append(m)
        del m
    assert all((s, l, a) == want[k][:3] for k, s, l, a in held_ints)
    assert all(tuple(m) == want[m[0]] for m in held_maps)
    small = t.first(0x10, 0x10)
    assert all(operator.is_(x, int(str(x))) for x in small[:4])   # the shared small ints


def test_refilled_small_values_are_the_shared_small_ints(IOTLB):
    # A value CPython keeps as a shared small int (0..256) never goes into a refilled
    # int in place: whatever int the spare held before (1 digit, or 2), the result
    # holds the shared one.
    import operator
    t = IOTLB()
    t.map(0x101, 0x1FF, 0x3000, 1)                # one 30-bit digit each
    t.map(1 << 40, (1 << 40) + 0xFF, 1 << 50, 1)  # two each
    t.map(0x100, 0x100, 0, 1)                     # 256, 256, 0
    t.map(0x10, 0x1F, 0x100, 3)
    for before in (0x101, 1 << 40):
        for q in (0x100, 0x10):
            for _ in range(3):                     # both spare slots, both orders
                m = t.first(before, before)
                del m
                m = t.first(q, q)
                assert all(operator.is_(x, int(str(x))) for x in m[:4]), m
                del m


def test_a_refill_that_runs_out_of_memory_changes_nothing():
    # iotlb_map_refill makes every new int before it changes anything: a MemoryError
    # at any allocation leaves the spare Map (and what later lookups return) intact.
    _testcapi = pytest.importorskip("_testcapi")
    if not hasattr(_testcapi, "set_nomemory"):
        pytest.skip("_testcapi.set_nomemory is not in this build")
    from iotlb import IMPLEMENTATION
    if IMPLEMENTATION != "cython":
        pytest.skip("the refill is the compiled engine's")
    from iotlb._engine import IOTLB as CIOTLB
    t = CIOTLB()
    a, b = 1 << 40, 300
    t.map(a, a + 0xFF, 1 << 59, 1)
    t.map(b, b, 1 << 61, 2)
    outcomes = set()
    for n in range(8):
        m = t.first(a, a)
        before = tuple(m)
        del m
        _testcapi.set_nomemory(n, 0)
        try:
            r = t.first(b, b)
        except MemoryError:
            r = None
        finally:
            _testcapi.remove_mem_hooks()
        outcomes.add(r is None)
        if r is not None:
            assert tuple(r) == (b, b, 1 << 61, 2, None)
            del r
        assert tuple(t.first(a, a)) == before == (a, a + 0xFF, 1 << 59, 1, None)
    assert outcomes == {True, False}        # some allocations failed, later ones not


def test_a_map_with_ctx_is_not_kept_alive_by_the_engine(IOTLB):
    # Only ctx-less Maps are ever kept for refilling: a ctx lives as long as the caller
    # (and the tree) hold it, not longer.
    class Ctx:
        pass

    t = IOTLB()
    c = Ctx()
    ref = weakref.ref(c)
    t.map(0, 0xFFF, 0, ctx=c)
    m = t.first(0, 0)
    assert m.ctx is c
    for _ in range(3):
        assert t.first(0, 0).ctx is c
    del c, m
    t.unmap(0, 0xFFF)
    gc.collect()
    assert ref() is None


def test_a_compiled_iotlb_fits_the_small_object_allocator():
    # A set_map parent may make an IOTLB per message (mlx5: the new MR's copy).  Past
    # 512 bytes CPython allocates an object with malloc and zeroes it all: an inline
    # array of spare inner nodes once made an IOTLB 1,520 bytes and cost ~800
    # instructions a message.  The spares are a stack linked through the nodes now.
    from iotlb import IMPLEMENTATION
    if IMPLEMENTATION != "cython":
        pytest.skip("the object layout is the compiled engine's")
    from iotlb._engine import IOTLB as CIOTLB
    assert CIOTLB.__basicsize__ <= 512, CIOTLB.__basicsize__
    t = CIOTLB()
    for i in range(70 * 64 * 64 // 8):          # three levels: inner spares are used
        t.map(i << 12, (i << 12) | 0xFFF, i << 12)
    u = CIOTLB()
    u.add_all(t)                                # shared nodes: copies take spares
    for i in range(0, 70 * 64 * 64 // 8, 97):
        t.unmap(i << 12, (i << 12) | 0xFFF)
        t.map((i << 12) | 0x800, (i << 12) | 0xFFF, 0)
    t._check()
    u._check()
    assert len(u) == 70 * 64 * 64 // 8
