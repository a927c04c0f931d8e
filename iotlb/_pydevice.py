"""The device core's pure-Python twin: the same names as the compiled ``iotlb._device``.

Five pieces of :mod:`iotlb.vdpa`, :mod:`iotlb.usermem` and the platform-IOMMU
parents are hot on the ``write()`` path and are therefore compiled when the engine
is (``iotlb.IMPLEMENTATION``):

* :class:`PinLedger` -- one owner's pinned runs, ``(pfn, npages, writable) -> count``
  (the page references ``pin_user_pages`` takes, counted per run, never per page);
* :class:`DirtyRecord` -- the runs dirtied on unpin, ``(pfn, npages) -> times``
  (``UserMemory.dirtied``; compiled, the same open-addressing table as the ledger);
* :class:`MemoryCore` -- the base of :class:`iotlb.usermem.UserMemory` that holds the
  books the fast path touches (``pinned_vm``, ``dirtied_pages``, the ledgers);
* :class:`IommuCore` -- the base of the platform-IOMMU parents: the IOMMU core's
  ``iommu_map``/``iommu_unmap`` on the domain vhost-vdpa owns.  Here the twin's
  functions are the reference: the compiled ones decline to them for anything but
  plain ints and an attached domain;
* :class:`DeviceCore` -- the base of :class:`iotlb.vdpa.VhostVdpa` whose ``write()``
  runs the common UPDATE and INVALIDATE in C.

Here, the twin's ``write()`` *is* the reference path (``VhostVdpa._write``): the
compiled one must give the same results, errno for errno, and the suite checks that it
does (``_fast = False`` switches it off).  The bases' attributes are set by the
subclasses' ``__init__``.

>>> book = PinLedger()
>>> book.pin(0x10, 4, True); book.pin(0x10, 4, True); book.pin(0x20, 1, False)
>>> len(book), book.pages, book.count(0x10, 4, True)
(2, 9, 2)
>>> book.unpin(0x10, 4, True), book.unpin(0x30, 1, False)
(True, False)
>>> sorted(book.items())
[((16, 4, True), 1), ((32, 1, False), 1)]
"""
from __future__ import annotations

import errno
from collections import Counter

from ._map import U64_MAX, Perm, u64
from .errors import IOTLBError
from .wire import VHOST_MSG_SIZE, _bytes_view

__all__ = ["PinLedger", "DirtyRecord", "MemoryCore", "IommuCore", "DeviceCore"]

_NPAGES_MAX = (1 << 63) - 1


def _run_key(pfn, npages, writable) -> tuple:
    pfn = u64(pfn, "pfn")
    npages = u64(npages, "npages")
    if npages == 0 or npages > _NPAGES_MAX:
        raise ValueError(f"npages must be in 1..2**63-1, got {npages}")
    return (pfn, npages, bool(writable))


class PinLedger:
    """One owner's pinned runs: ``(pfn, npages, writable) -> count`` (count > 0).

    ``pages`` is the sum of ``npages * count`` -- what the owner charged to
    ``pinned_vm`` -- and stays within 2**63-1 (a pin that would pass it is an
    OverflowError that changes nothing).  :meth:`items` lists the runs in no particular order.

    >>> book = PinLedger(); book.pin(7, 2, False)
    >>> book, bool(book), PinLedger().pages
    (PinLedger({(7, 2, False): 1}), True, 0)
    """

    __slots__ = ("_runs", "_pages")

    def __init__(self) -> None:
        self._runs: dict = {}
        self._pages = 0

    @property
    def pages(self) -> int:
        """Pages pinned: Σ ``npages * count``.

        >>> book = PinLedger(); book.pin(0, 3, True); book.pin(0, 3, True); book.pages
        6
        """
        return self._pages

    def pin(self, pfn: int, npages: int, writable: bool) -> None:
        """Count one more pin of the run.

        >>> book = PinLedger(); book.pin(1, 1, True); book.count(1, 1, True)
        1
        """
        key = _run_key(pfn, npages, writable)
        if self._pages + key[1] > _NPAGES_MAX:
            raise OverflowError(f"pages {self._pages} + {key[1]} would pass 2**63-1")
        self._runs[key] = self._runs.get(key, 0) + 1
        self._pages += key[1]

    def unpin(self, pfn: int, npages: int, writable: bool) -> bool:
        """Drop one pin of the run; False (and nothing changes) if it is not pinned.

        >>> book = PinLedger(); book.pin(1, 1, True)
        >>> book.unpin(1, 1, False), book.unpin(1, 1, True), len(book)
        (False, True, 0)
        """
        key = _run_key(pfn, npages, writable)
        count = self._runs.get(key)
        if count is None:
            return False
        if count == 1:
            del self._runs[key]
        else:
            self._runs[key] = count - 1
        self._pages -= key[1]
        return True

    def count(self, pfn: int, npages: int, writable: bool) -> int:
        """How many times the run is pinned (0 if not).

        >>> PinLedger().count(5, 1, False)
        0
        """
        return self._runs.get(_run_key(pfn, npages, writable), 0)

    def items(self) -> list:
        """``[((pfn, npages, writable), count), ...]`` in no particular order.

        >>> book = PinLedger(); book.pin(3, 1, False); book.items()
        [((3, 1, False), 1)]
        """
        return list(self._runs.copy().items())   # a copy: a finalizer may change _runs

    def __len__(self) -> int:
        return len(self._runs)

    def __repr__(self) -> str:
        return f"PinLedger({dict(sorted(self._runs.items()))!r})"

    def _check(self) -> None:
        """Assert every invariant: counts positive, ``pages`` = Σ npages * count.

        >>> book = PinLedger(); book.pin(0, 2, True); book._check()
        """
        assert all(c > 0 for c in self._runs.values()), "non-positive pin count"
        assert self._pages == sum(k[1] * c for k, c in self._runs.items()), \
            "pages != sum of runs"


class DirtyRecord:
    """The runs dirtied on unpin, counted: ``(pfn, npages) -> times`` (count > 0).
    It only grows, until :meth:`clear`; :meth:`items` lists the runs in no particular
    order.  ``UserMemory.dirtied`` is a read-only snapshot of it.

    >>> rec = DirtyRecord(); rec.add(7, 2); rec.add(7, 2); rec.add(9, 1)
    >>> len(rec), rec.count(7, 2), rec.count(7, 1), sorted(rec.items())
    (2, 2, 0, [((7, 2), 2), ((9, 1), 1)])
    """

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        self._runs: dict = {}

    def add(self, pfn: int, npages: int) -> None:
        """Count one more dirtying of the run.

        >>> rec = DirtyRecord(); rec.add(1, 1); rec.count(1, 1)
        1
        """
        key = _run_key(pfn, npages, False)[:2]
        self._runs[key] = self._runs.get(key, 0) + 1

    def count(self, pfn: int, npages: int) -> int:
        """How many times the run was dirtied (0 if never).

        >>> DirtyRecord().count(5, 1)
        0
        """
        return self._runs.get(_run_key(pfn, npages, False)[:2], 0)

    def items(self) -> list:
        """``[((pfn, npages), count), ...]`` in no particular order.

        >>> rec = DirtyRecord(); rec.add(3, 1); rec.items()
        [((3, 1), 1)]
        """
        return list(self._runs.copy().items())   # a copy: a finalizer may change _runs

    def clear(self) -> None:
        """Forget every run.

        >>> rec = DirtyRecord(); rec.add(3, 1); rec.clear(); len(rec)
        0
        """
        self._runs.clear()

    def __len__(self) -> int:
        return len(self._runs)

    def __repr__(self) -> str:
        return f"DirtyRecord({dict(sorted(self._runs.items()))!r})"

    def _check(self) -> None:
        """Assert every invariant: counts positive, npages >= 1.

        >>> rec = DirtyRecord(); rec.add(0, 2); rec._check()
        """
        assert all(c > 0 for c in self._runs.values()), "non-positive count"
        assert all(n >= 1 for _, n in self._runs), "a run of no page"


class MemoryCore:
    """The base of :class:`iotlb.usermem.UserMemory`: the file references
    (``get_file``/``fput`` counts per owner in ``_files``, owner -> Counter)."""

    __slots__ = ()

    def _file_get(self, owner, file) -> None:
        """Take a reference on ``file`` for ``owner`` (``get_file``)."""
        refs = self._files.get(owner)
        if refs is None:
            refs = self._files[owner] = Counter()
        refs[file] = refs.get(file, 0) + 1

    def _file_put(self, owner, file) -> None:
        """Drop a reference ``owner`` holds on ``file`` (``fput``); AssertionError
        if it holds none."""
        refs = self._files.get(owner)
        count = refs.get(file, 0) if refs is not None else 0
        if count <= 0:
            raise AssertionError(f"fput of a file {owner!r} holds no reference to: "
                                 f"{file!r}")
        if count == 1:
            del refs[file]
        else:
            refs[file] = count - 1


def iommu_prot(perm: int) -> int:
    """``perm_to_iommu_flags`` (drivers/vhost/vdpa.c): RO → READ, WO → WRITE, RW →
    READ|WRITE; anything else WARNs and maps with neither (returned here as
    ``Perm.NONE``).

    >>> [int(iommu_prot(p)) for p in (0, 1, 2, 3, 7)]
    [0, 1, 2, 3, 0]
    """
    return _IOMMU_PROT.get(perm, _PERM_NONE)


_IOMMU_PROT = {int(p): p for p in (Perm.RO, Perm.WO, Perm.RW)}  # a table: no enum call
_PERM_NONE = Perm.NONE


def _iommu_check_range(core, op: str, iova: int, size: int, pa: int = 0) -> int:
    """The checks ``iommu_map``/``iommu_unmap`` make before touching the domain,
    with their diagnosis: no domain ENODEV; zero size, or iova/size/pa not
    multiples of the IOMMU page size, EINVAL (``__iommu_map``/``__iommu_unmap``:
    "unaligned"); ``iova + size - 1`` past 2**64 - 1 EINVAL.  Returns the last
    IOVA.  The ops test the same in one comparison chain and call this only when
    the chain fails (this then raises; it is the authority if the two disagree).
    """
    if core._domain is None:
        raise IOTLBError(errno.ENODEV, f"{op}: no IOMMU domain attached")
    if size == 0 or (iova | size | pa) & (core.page_size - 1):
        raise IOTLBError(errno.EINVAL,
                         f"{op}: iova {iova:#x}, size {size:#x}, pa {pa:#x} must be "
                         f"non-zero multiples of the IOMMU page size {core.page_size:#x}")
    last = iova + size - 1
    if last > U64_MAX:
        raise IOTLBError(errno.EINVAL, f"{op}: iova {iova:#x} + size {size:#x} overflows")
    return last


def _iommu_map(core, iova: int, size: int, pa: int, perm: int) -> None:
    """``iommu_map(domain, iova, pa, size, perm_to_iommu_flags(perm))`` on the
    domain of ``core`` (:class:`IommuCore`): unaligned or zero size is EINVAL, an
    already-mapped IOVA EEXIST, no domain ENODEV; ``core.map_prot_check(prot,
    perm)``, when set, runs after the range checks and before the overlap check."""
    domain = core._domain
    if domain is None or not size or (iova | size | pa) & (core.page_size - 1) \
            or (last := iova + size - 1) > U64_MAX:
        last = core._check_range("iommu_map", iova, size, pa)       # raises
    prot = iommu_prot(perm)
    check = core.map_prot_check
    if check is not None:
        check(prot, perm)
    if domain.first(iova, last) is not None:
        raise IOTLBError(errno.EEXIST, f"iommu_map: [{iova:#x}, {last:#x}] is already mapped")
    domain.map(iova, last, pa, prot)


def _iommu_unmap(core, iova: int, size: int) -> int:
    """``iommu_unmap(domain, iova, size)`` on the domain of ``core``: drops what is
    mapped in the range and returns the bytes unmapped.  vhost-vdpa always unmaps
    whole chunks it mapped, so the model removes whole mappings."""
    domain = core._domain
    if domain is None or not size or (iova | size) & (core.page_size - 1) \
            or (last := iova + size - 1) > U64_MAX:
        last = core._check_range("iommu_unmap", iova, size)          # raises
    m = domain.first(iova, last)
    if m is None:
        return 0                                 # nothing mapped there
    if m[1] >= last:
        # the domain's mappings never overlap (iommu_map refuses an overlap with
        # EEXIST), so the lowest one, reaching past ``last``, is the only one
        gone = m[1] - m[0] + 1                   # Map: (start, last, ...)
    else:
        gone = 0
        for m in domain.overlapping(iova, last):
            gone += m[1] - m[0] + 1
    domain.unmap(iova, last)
    return gone


class IommuCore:
    """The base of the platform-IOMMU parents
    (:class:`iotlb_backends.platform_iommu.PlatformIommu`): the IOMMU core's
    ``iommu_map``/``iommu_unmap`` (drivers/iommu/iommu.c) on the domain vhost-vdpa
    owns, ``_domain`` (an :class:`iotlb.IOTLB`, or None when none is attached), with
    pages of ``page_size`` bytes (a power of two), both set by the subclass.
    ``map_prot_check``: the IOMMU driver's own refusal of a protection, or None.

    The compiled ``iotlb._device.IommuCore`` gives the same answers in C for plain
    ints and an attached domain, and declines to these functions otherwise.
    """

    __slots__ = ()

    #: The IOMMU driver's own refusal of a mapping's protection, called by
    #: :meth:`iommu_map` as ``map_prot_check(prot, perm)`` -- ``prot`` the IOMMU flags
    #: (:func:`iommu_prot`), ``perm`` vhost's, for the message -- after the range
    #: checks and before the overlap check (None: the generic domain refuses none;
    #: VT-d: :func:`~iotlb_backends.vp_vdpa.intel_map_prot_check`).
    map_prot_check = None

    _check_range = _iommu_check_range
    iommu_map = _iommu_map
    iommu_unmap = _iommu_unmap


class DeviceCore:
    """The base of :class:`iotlb.vdpa.VhostVdpa`: ``write()``."""

    __slots__ = ()

    def write(self, data) -> int:
        """The ``write()`` syscall (``vhost_chr_write_iter``): parse, handle, return
        72.  Parse errors raise :class:`~iotlb.IOTLBError` EINVAL (see
        :func:`iotlb.wire.decode`); any handler error raises EFAULT whose
        ``__cause__`` is the handler's own error.

        Compiled, the common UPDATE (one physically contiguous run, or the implicit
        shared-file mapping in VA mode) and INVALIDATE (one entry) run in C, and every
        other case -- or any case the fast path declines before changing anything --
        goes through the reference handler ``_write``, which is all the pure twin's
        ``write()`` does.  Both give identical results (tested).

        >>> from iotlb.vdpa import VhostVdpa
        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> dev = VhostVdpa(P()); dev.open()
        >>> from iotlb.wire import encode, VHOST_IOTLB_UPDATE
        >>> try:
        ...     dev.write(encode(VHOST_IOTLB_UPDATE, 0, 4096, 0))
        ... except Exception as e:
        ...     print(e, "<-", e.__cause__.strerror)
        [EFAULT] vhost_chr_write_iter: the message handler failed (EPERM) <- vhost_vdpa_process_iotlb_msg: vhost_dev_check_owner: caller is not the owner (no VHOST_SET_OWNER)
        """
        return self._write(data)

    def write_many(self, data) -> int:
        """Send a buffer of concatenated 72-byte records as successive ``write()``
        calls; return the number of records written.  The first failing write raises
        (with ``index`` = its record number); a trailing partial record is written
        as a short write (EINVAL).

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        ...     def dma_map(self, *a): pass
        ...     def dma_unmap(self, *a): pass
        >>> from iotlb.vdpa import VhostVdpa
        >>> from iotlb.wire import encode, VHOST_IOTLB_UPDATE as U
        >>> dev = VhostVdpa(P()); dev.open(); dev.set_owner()
        >>> dev.write_many(encode(U, 0, 4096, 0) + encode(U, 4096, 4096, 4096))
        2
        """
        view = memoryview(_bytes_view(data))
        n = len(view)
        write = self.write
        count = 0
        for off in range(0, n, VHOST_MSG_SIZE):
            try:
                write(view[off:off + VHOST_MSG_SIZE])
            except IOTLBError as e:
                e.index = count
                raise
            count += 1
        return count
