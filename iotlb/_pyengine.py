"""The pure-Python twin of the engine: ``struct vhost_iotlb`` on sortedcontainers.

This module is the executable specification of :class:`iotlb.IOTLB`.  The Cython
engine (``_engine.pyx``) has the same names and must give the same answers; the test
suite runs against both and a Hypothesis state machine checks that they agree.

Layout (mirrors ``drivers/vhost/iotlb.c``):

* ``_keys``    -- the "interval tree": a SortedList of ``(start, seq)``; ``seq`` is a
  per-tree insertion counter, so equal starts iterate in insertion order (the kernel's
  interval-tree insert walks right on ties).
* ``_entries`` -- ``seq -> (start, last, addr, perm, ctx)``; a dict keeps insertion
  order, so it is also the kernel's ``list`` that retirement pops from.
* ``_spans``   -- a SortedList of ``last - start`` of every entry.  Its maximum bounds
  how far left of a query an overlapping entry can start, which makes ``first`` a
  bisect plus a short scan instead of a walk of the whole tree.  (The Cython engine
  keeps the exact augmentation, ``max(last)`` per subtree, instead.)
"""
from __future__ import annotations

import array
import errno as _errno
import functools
import itertools
from threading import get_ident as _get_ident
from typing import Iterable, Iterator, Optional

from sortedcontainers import SortedList

from ._map import HALF, U64_MAX, IOTLBBase, Map, Perm, perm8, u64
from ._wrap import translate_wrapped
from .errors import IOTLBError

__all__ = ["IOTLB"]

_FULL = U64_MAX  # last of a full-space range


def _u64_buffer(obj, name: str):
    """A read-only view of ``obj`` as 1-D unsigned 64-bit integers."""
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{name} must be a buffer of uint64 (array.array('Q'), numpy "
                        f"uint64), got {type(obj).__name__}") from None
    fmt = view.format.lstrip("@=<")
    if view.ndim != 1 or view.itemsize != 8 or fmt not in ("Q", "L"):
        raise TypeError(f"{name} must be a 1-D buffer of uint64, got format "
                        f"{view.format!r} with {view.ndim} dimension(s)")
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B").cast("Q")


def _is_scalar(obj) -> bool:
    """Whether a batch argument is one value for all items rather than a buffer.

    A numpy array has ``__index__`` too (it raises unless the array has one element),
    so the test is the buffer protocol: no buffer, or a 0-d one (a numpy scalar).
    """
    try:
        return memoryview(obj).ndim == 0
    except TypeError:
        return True


def _busy_error(self, name: str) -> RuntimeError:
    return RuntimeError(f"IOTLB.{name}: another thread is changing this pure-Python "
                        "IOTLB; it is not thread-safe (guard every call with one "
                        "threading.Lock, or use the compiled engine)")


def _exclusive(fn):
    """A mutating method: refuses (RuntimeError, nothing changed) while another thread
    is inside a mutating method of the same tree, instead of corrupting it.  The same
    thread may re-enter (a ctx finalizer may change the tree)."""
    @functools.wraps(fn)
    def guarded(self, *args, **kwargs):
        me = _get_ident()
        if self._owner is not None and self._owner != me:
            raise _busy_error(self, fn.__name__)
        self._owner = me
        self._depth += 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if not self._depth:
                self._owner = None
    return guarded


def _reader(fn):
    """A reading method: refuses (RuntimeError) while another thread is changing the
    tree, instead of answering from a half-changed one."""
    @functools.wraps(fn)
    def guarded(self, *args, **kwargs):
        if self._owner is not None and self._owner != _get_ident():
            raise _busy_error(self, fn.__name__)
        return fn(self, *args, **kwargs)
    return guarded


class IOTLB:
    """An IOTLB: overlapping-allowed interval map of inclusive u64 ranges.

    ``limit`` is ``struct vhost_iotlb``'s ``limit``; ``None`` (the default) is a tree
    with no limit at all, which no kernel has had since "vhost_iotlb: bound map
    allocation in add_range".  With a limit, ``vhost_iotlb_add_range_ctx``'s rules
    hold (see :meth:`map`): ``retire=True`` (``VHOST_IOTLB_FLAG_RETIRE``) evicts the
    oldest insertion when full, without it a full tree refuses with ENOSPC, and a
    limit of 0 refuses every add with EINVAL.

    >>> t = IOTLB()
    >>> t.map(0x1000, 0x1fff, 0x8000)
    >>> t.translate(0x1800, 16)
    [(34816, 16)]
    >>> len(t), t.unmap(), len(t)
    (1, 1, 0)
    """

    __slots__ = ("_keys", "_entries", "_spans", "_seq", "_limit", "_retire",
                 "_version", "_owner", "_depth", "__weakref__")

    def __init__(self, limit: Optional[int] = None, *, retire: bool = False) -> None:
        if limit is not None:
            limit = u64(limit, "limit")
        if not isinstance(retire, (bool, int)):
            raise TypeError(f"retire must be a bool, got {type(retire).__name__}")
        self._limit = limit
        self._retire = bool(retire)
        self._keys = SortedList()
        self._entries: dict = {}
        self._spans = SortedList()
        self._seq = itertools.count()
        self._version = 0
        self._owner = None          # the thread inside a mutating method (_exclusive)
        self._depth = 0

    # ----------------------------------------------------------------- properties
    @property
    def limit(self) -> Optional[int]:
        """The entry limit, or None for a tree without one.

        >>> IOTLB(8, retire=True).limit, IOTLB().limit
        (8, None)
        """
        return self._limit

    @property
    def retire(self) -> bool:
        """Whether ``VHOST_IOTLB_FLAG_RETIRE`` is set.

        >>> IOTLB(8, retire=True).retire
        True
        """
        return self._retire

    # ----------------------------------------------------------------- mutation
    @_exclusive
    def map(self, start: int, last: int, addr: int, perm: int = Perm.RW,
            ctx: object = None) -> None:
        """Add ``[start, last] -> addr`` (``vhost_iotlb_add_range_ctx``).

        Overlaps are kept.  ``last < start`` is EFAULT.  Exactly ``[0, 2**64-1]`` is
        stored as two halves ``[0, 2**63-1] -> addr`` and ``[2**63, ~0] -> addr+2**63``.

        >>> t = IOTLB()
        >>> t.map(0, 2**64 - 1, 0)
        >>> [(hex(m.start), hex(m.last), hex(m.addr)) for m in t]
        [('0x0', '0x7fffffffffffffff', '0x0'), ('0x8000000000000000', '0xffffffffffffffff', '0x8000000000000000')]
        """
        start = u64(start, "start")
        last = u64(last, "last")
        addr = u64(addr, "addr")
        perm = perm8(perm)
        if last < start:
            raise IOTLBError(_errno.EFAULT,
                             f"map: last {last:#x} < start {start:#x}")
        full = start == 0 and last == _FULL
        if full and addr > U64_MAX - HALF:
            raise OverflowError(f"map: full-space mapping needs addr + 2**63 to fit "
                                f"in 64 bits, got addr {addr:#x}")
        self._add_range_ctx_limit(len(self._entries), full)
        if full:
            self._add(0, HALF - 1, addr, perm, ctx)
            start, addr = HALF, addr + HALF
        self._add(start, last, addr, perm, ctx)

    def _add_range_ctx_limit(self, nmaps: int, full: bool,
                             index: Optional[int] = None) -> int:
        """``vhost_iotlb_add_range_ctx``'s limit checks for one add (``full``: exactly
        ``[0, ~0]``, stored as two entries) into a tree of ``nmaps`` entries: raise
        what the kernel returns before anything changes, else return ``nmaps`` after
        the add.  ``index`` tags the error (map_many).

        Since "vhost_iotlb: bound map allocation in add_range" (v7.2; stable
        6.12.114, 6.1.191): ``!limit`` → -EINVAL; ``[0, ~0]`` with ``limit < 2`` →
        -ENOSPC (RETIRE or not), without RETIRE ``nmaps > limit - 2`` → -ENOSPC (both
        halves checked up front); ``nmaps >= limit``: RETIRE reuses the oldest entry,
        else -ENOSPC.  Before it a limit without RETIRE was not enforced.
        """
        k = 2 if full else 1
        lim = self._limit
        if lim is None:
            return nmaps + k
        if lim == 0:
            raise IOTLBError(_errno.EINVAL, "vhost_iotlb_add_range_ctx: limit 0",
                             index=index)
        if full and lim < 2:
            raise IOTLBError(_errno.ENOSPC, f"vhost_iotlb_add_range_ctx: [0, ~0] needs "
                             f"two entries, limit {lim}", index=index)
        if self._retire:
            return min(nmaps + k, lim)
        if nmaps + k > lim:
            raise IOTLBError(_errno.ENOSPC, f"vhost_iotlb_add_range_ctx: {nmaps} "
                             f"entries, limit {lim}", index=index)
        return nmaps + k

    def _add(self, start, last, addr, perm, ctx) -> None:
        """Retire the oldest entry if full, then insert (the core of add_range_ctx,
        once :meth:`_add_range_ctx_limit` has passed)."""
        evicted = None  # released on return, once the tree is consistent again
        if self._limit is not None and self._retire and \
                len(self._entries) >= self._limit:
            evicted = self._remove(next(iter(self._entries)))
        seq = next(self._seq)
        self._entries[seq] = (start, last, addr, perm, ctx)
        self._keys.add((start, seq))
        self._spans.add(last - start)
        self._version += 1

    def _remove(self, seq) -> tuple:
        """``vhost_iotlb_map_free``: drop one entry from tree and list."""
        entry = self._entries.pop(seq)
        self._keys.remove((entry[0], seq))
        self._spans.remove(entry[1] - entry[0])
        self._version += 1
        return entry  # the caller drops it (and its ctx) when the tree is consistent

    @_exclusive
    def add_all(self, src: "IOTLB") -> int:
        """``map(m.start, m.last, m.addr, m.perm)`` for every entry ``m`` of ``src``,
        ascending, ctx not copied: the copy loop of a parent's ``set_map``
        (``vdpasim_set_map``: ``vhost_iotlb_add_range`` per entry of the given IOTLB).

        As in the kernel the loop stops at the first failing add and raises its error,
        keeping what was added before it (the caller decides whether to wipe).
        Returns the number of entries added.

        >>> src = IOTLB(); src.map(0x3000, 0x3fff, 7, ctx="f"); src.map(0, 0xfff, 5)
        >>> dst = IOTLB(1); dst.add_all(src)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [ENOSPC] vhost_iotlb_add_range_ctx: 1 entries, limit 1
        >>> [(m.start, m.addr, m.ctx) for m in dst]
        [(0, 5, None)]
        """
        if not isinstance(src, IOTLB):
            raise TypeError(f"add_all: src must be an IOTLB, got {type(src).__name__}")
        if src is self:
            raise ValueError("add_all: source and destination are the same IOTLB")
        n = 0
        for m in list(src):
            self.map(m.start, m.last, m.addr, m.perm)
            n += 1
        return n

    def assign(self, src: "IOTLB | Iterable[Map]") -> None:
        """Make this IOTLB the copy a ``set_map`` parent keeps of the IOTLB it is given
        (``vdpasim_set_map``, VDUSE's ``vduse_domain_set_map``): wipe it
        (``vhost_iotlb_reset``), then add every entry of ``src`` in ascending order
        (:meth:`add_all`: ``vhost_iotlb_add_range``, ctx not kept); if an add fails
        (ENOSPC past the limit) wipe it again and raise.  ``src`` may also be any
        iterable of Map (each added with ``map(m.start, m.last, m.addr, m.perm)``).
        ``src`` being this IOTLB is a ValueError that changes nothing.

        >>> src = IOTLB(); src.map(0, 0xfff, 0x5000); src.map(0x1000, 0x1fff, 0x6000)
        >>> small = IOTLB(1); small.map(0x9000, 0x9fff, 0)
        >>> small.assign(src)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [ENOSPC] vhost_iotlb_add_range_ctx: 1 entries, limit 1
        >>> len(small)
        0
        >>> small.assign(list(src)[1:]); [hex(m.addr) for m in small]
        ['0x6000']
        """
        if src is self:
            raise ValueError("assign: source and destination are the same IOTLB")
        self.reset()
        try:
            if isinstance(src, IOTLB):
                self.add_all(src)
            else:
                for m in src:
                    self.map(m.start, m.last, m.addr, m.perm)
        except BaseException:
            self.reset()
            raise

    @_exclusive
    def unmap(self, start: int = 0, last: int = U64_MAX) -> int:
        """Remove every entry overlapping ``[start, last]`` whole; return how many.

        Entries are never split (``vhost_iotlb_del_range``).  With no arguments
        everything goes, in O(n).

        >>> t = IOTLB()
        >>> t.map(0, 0xfff, 0); t.map(0x1000, 0x1fff, 0x1000)
        >>> t.unmap(0xfff, 0xfff), [m.start for m in t]
        (1, [4096])
        """
        start = u64(start, "start")
        last = u64(last, "last")
        if start == 0 and last == _FULL:
            n = len(self._entries)
            self.reset()
            return n
        doomed = [seq for seq in self._hits(start, last)]
        gone = [self._remove(seq) for seq in doomed]  # ctx released after the loop
        return len(gone)

    @_exclusive
    def reset(self) -> None:
        """Remove everything; ``limit`` and ``retire`` stay (``vhost_iotlb_reset``).

        >>> t = IOTLB(4, retire=True); t.map(0, 1, 2); t.reset()
        >>> len(t), t.limit, t.retire
        (0, 4, True)
        """
        old = self._entries  # its ctx objects go only after the tree is empty
        self._keys = SortedList()
        self._entries = {}
        self._spans = SortedList()
        self._version += 1
        del old

    # ----------------------------------------------------------------- lookup
    def _hits(self, start: int, last: int) -> Iterator[int]:
        """Seqs of entries with ``e.start <= last and e.last >= start``, tree order.

        The closed-interval predicate is the kernel's; with ``start > last`` (only a
        wrapped caller produces it) it still matches entries spanning both bounds.
        """
        if not self._keys:
            return
        reach = self._spans[-1]
        lo = start - reach if start > reach else 0
        entries = self._entries
        for key_start, seq in self._keys.irange((lo, -1)):
            if key_start > last:
                return
            if entries[seq][1] >= start:
                yield seq

    def _map(self, seq) -> Map:
        return tuple.__new__(Map, self._entries[seq])

    @_reader
    def first(self, start: int, last: int) -> Optional[Map]:
        """The overlapping entry with the lowest start, ties by insertion
        (``vhost_iotlb_itree_first``), or None.

        >>> t = IOTLB(); t.map(0x2000, 0x2fff, 0); t.map(0x1000, 0x2fff, 7)
        >>> t.first(0x2800, 0x2800).addr
        7
        >>> t.first(0x3000, 0x4000) is None
        True
        """
        start = u64(start, "start")
        last = u64(last, "last")
        for seq in self._hits(start, last):
            return self._map(seq)
        return None

    def overlapping(self, start: int, last: int) -> Iterator[Map]:
        """All entries overlapping ``[start, last]``, ascending start, ties in
        insertion order (``vhost_iotlb_itree_first`` + ``_next``).

        Mutating the tree while iterating raises RuntimeError.

        >>> t = IOTLB(); t.map(0, 9, 0); t.map(5, 20, 0); t.map(30, 40, 0)
        >>> [m.start for m in t.overlapping(8, 30)]
        [0, 5, 30]
        """
        start = u64(start, "start")
        last = u64(last, "last")
        return self._iterate(self._hits(start, last))

    def _iterate(self, seqs) -> Iterator[Map]:
        version = self._version
        for seq in seqs:
            if self._version != version:
                raise RuntimeError("IOTLB changed size during iteration")
            yield self._map(seq)
            if self._version != version:
                raise RuntimeError("IOTLB changed size during iteration")

    @_reader
    def translate(self, iova: int, size: int, access: int = Perm.RO) -> list:
        """Translate ``[iova, iova+size-1]`` into ``(host_addr, length)`` segments,
        one per entry crossed (vhost.c ``translate_desc``, vringh ``iotlb_translate``).

        A hole anywhere raises IOTLBError EFAULT with ``.iova`` = first missing
        address; an entry whose perm lacks any bit of ``access`` raises EPERM.  There
        is never a partial result.

        >>> t = IOTLB(); t.map(0, 0xfff, 0x10000); t.map(0x1000, 0x1fff, 0x30000, Perm.RO)
        >>> [(hex(a), n) for a, n in t.translate(0xff0, 0x20)]
        [('0x10ff0', 16), ('0x30000', 16)]
        >>> t.translate(0x1000, 1, Perm.WO)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EPERM] translate: entry [0x1000, 0x1fff] has perm 1, access 2 needed at iova 0x1000
        """
        iova = u64(iova, "iova")
        size = u64(size, "size")
        access = perm8(access, "access")
        if size == 0:
            raise ValueError("translate: size must be > 0")
        if size - 1 > U64_MAX - iova:              # the kernel's u64 wraps
            return translate_wrapped(self, iova, size, access)
        last = iova + size - 1
        addr = iova
        out = []
        while True:
            m = next(self._hits(addr, last), None)
            if m is None or self._entries[m][0] > addr:
                raise IOTLBError(_errno.EFAULT, f"translate: no mapping at iova {addr:#x}",
                                 iova=addr)
            e_start, e_last, e_addr, e_perm, _ = self._entries[m]
            if e_perm & access != access:
                raise IOTLBError(_errno.EPERM,
                                 f"translate: entry [{e_start:#x}, {e_last:#x}] has perm "
                                 f"{e_perm}, access {access} needed at iova {addr:#x}",
                                 iova=addr)
            host = e_addr + (addr - e_start)
            end = min(last, e_last)
            if host > U64_MAX - (end - addr):      # the kernel's u64 wraps
                return translate_wrapped(self, iova, size, access)
            out.append((host, end - addr + 1))
            if end == last:
                return out
            addr = end + 1

    # ----------------------------------------------------------------- batch forms
    @_exclusive
    def map_many(self, starts, lasts, addrs, perms=Perm.RW) -> int:
        """``map`` for every i, in order, from uint64 buffers; all-or-nothing.

        ``perms`` is one int for all or a uint64 buffer.  Every item is checked before
        anything is inserted; a bad item raises with ``.index`` (IOTLBError) or names
        its index (TypeError/OverflowError).  Returns the number of items.

        >>> from array import array
        >>> t = IOTLB()
        >>> t.map_many(array('Q', [0, 0x1000]), array('Q', [0xfff, 0x1fff]), array('Q', [0, 0]))
        2
        """
        vs = _u64_buffer(starts, "starts")
        vl = _u64_buffer(lasts, "lasts")
        va = _u64_buffer(addrs, "addrs")
        n = len(vs)
        if len(vl) != n or len(va) != n:
            raise ValueError(f"map_many: buffers differ in length ({n}, {len(vl)}, "
                             f"{len(va)})")
        if _is_scalar(perms):
            p = perm8(perms)
            vp = None
        else:
            vp = _u64_buffer(perms, "perms")
            if len(vp) != n:
                raise ValueError(f"map_many: perms has {len(vp)} items, expected {n}")
        nmaps = len(self._entries)
        for i in range(n):
            s, l, a = vs[i], vl[i], va[i]
            if vp is not None and vp[i] > 255:
                raise OverflowError(f"map_many: perms[{i}] must be in 0..255, got "
                                    f"{vp[i]}")
            if l < s:
                raise IOTLBError(_errno.EFAULT, f"map_many: item {i}: last {l:#x} < "
                                 f"start {s:#x}", index=i)
            if s == 0 and l == _FULL and a > U64_MAX - HALF:
                raise OverflowError(f"map_many: item {i}: full-space mapping needs "
                                    f"addr + 2**63 to fit in 64 bits")
            nmaps = self._add_range_ctx_limit(nmaps, s == 0 and l == _FULL, i)
        for i in range(n):
            self.map(vs[i], vl[i], va[i], p if vp is None else vp[i])
        return n

    @_reader
    def translate_many(self, iovas, sizes=1, access: int = Perm.RO, *,
                       default=None) -> array.array:
        """For every i, the host address of ``iovas[i]`` when all of
        ``[iovas[i], iovas[i]+sizes[i]-1]`` translates with ``access``.

        ``sizes`` is one int or a uint64 buffer.  A failing item raises its
        IOTLBError with ``.index`` set, or, when ``default`` is given, yields
        ``default`` instead.  Returns ``array('Q')``.

        >>> from array import array
        >>> t = IOTLB(); t.map(0x1000, 0x1fff, 0x9000)
        >>> list(t.translate_many(array('Q', [0x1000, 0x1ff0, 0x5000]), 16, default=0))
        [36864, 40944, 0]
        """
        vi = _u64_buffer(iovas, "iovas")
        n = len(vi)
        if _is_scalar(sizes):
            size = u64(sizes, "sizes")
            vsz = None
        else:
            vsz = _u64_buffer(sizes, "sizes")
            if len(vsz) != n:
                raise ValueError(f"translate_many: sizes has {len(vsz)} items, "
                                 f"expected {n}")
        if default is not None:
            default = u64(default, "default")
        out = array.array("Q", bytes(8 * n))
        for i in range(n):
            try:
                out[i] = self.translate(vi[i], size if vsz is None else vsz[i],
                                        access)[0][0]
            except IOTLBError as e:
                if default is None:
                    e.index = i
                    raise
                out[i] = default
            except (ValueError, OverflowError) as e:
                raise type(e)(f"translate_many: item {i}: {e}") from None
        return out

    # ----------------------------------------------------------------- container
    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[Map]:
        return self._iterate(self._all_seqs())

    def _all_seqs(self) -> Iterator[int]:
        # a generator, so self._keys is looked up at the first next(), after _iterate
        # took the version: reset() swaps in new containers
        for _, seq in self._keys:
            yield seq

    def __eq__(self, other) -> bool:
        if not isinstance(other, IOTLBBase):
            return NotImplemented
        if len(self) != len(other):
            return False
        return all(a[:4] == b[:4] for a, b in zip(self, other))

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        shown = [repr(m) for m in itertools.islice(self, 8)]
        if len(self) > 8:
            shown.append(f"... {len(self) - 8} more")
        return (f"IOTLB([{', '.join(shown)}], limit={self._limit}, "
                f"retire={self._retire})")

    def _insertion_order(self) -> list:
        """Every entry as ``(start, last, addr, perm, ctx)``, oldest first."""
        return list(self._entries.values())

    @_exclusive
    def _load(self, entries) -> None:
        """Append stored entries (already split halves) in the given order."""
        for start, last, addr, perm, ctx in entries:
            start, last = u64(start, "start"), u64(last, "last")
            addr, perm = u64(addr, "addr"), perm8(perm)
            if last < start:
                raise ValueError(f"_load: last {last:#x} < start {start:#x}")
            if self._limit is not None and not self._retire and \
                    len(self._entries) >= self._limit:
                raise ValueError(f"_load: more entries than limit {self._limit}")
            self._add(start, last, addr, perm, ctx)

    def copy(self) -> "IOTLB":
        """A new tree with the same limit, retire flag, entries, ctx and insertion
        order.

        >>> t = IOTLB(); t.map(1, 2, 3, ctx="x"); c = t.copy()
        >>> c == t, next(iter(c)).ctx
        (True, 'x')
        """
        new = type(self)(self._limit, retire=self._retire)
        new._load(self._insertion_order())
        return new

    __copy__ = copy

    def __reduce__(self):
        return (_restore, (type(self), self._limit, self._retire,
                           self._insertion_order()))

    def __sizeof__(self) -> int:
        return object.__sizeof__(self)

    # ----------------------------------------------------------------- invariants
    def _check(self) -> None:
        """Assert every structural invariant (sortedcontainers' ``_check`` idiom)."""
        self._keys._check()
        self._spans._check()
        assert len(self._keys) == len(self._entries) == len(self._spans)
        for start, seq in self._keys:
            e = self._entries[seq]
            assert e[0] == start and e[0] <= e[1] <= U64_MAX
            assert 0 <= e[2] <= U64_MAX and 0 <= e[3] <= 255
        assert sorted(self._spans) == sorted(e[1] - e[0] for e in self._entries.values())
        seqs = list(self._entries)
        assert seqs == sorted(seqs), "list is not in insertion order"
        if self._limit is not None:
            assert len(self._entries) <= self._limit


def _restore(cls, limit, retire, entries):
    """Unpickle: rebuild a tree of ``cls`` from entries in insertion order."""
    tree = cls(limit, retire=retire)
    tree._load(entries)
    return tree


IOTLBBase.register(IOTLB)
