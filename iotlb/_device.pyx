# cython: language_level=3, cdivision=True, initializedcheck=False, autotestdict=False
"""The device core, compiled: the hot part of ``iotlb.vdpa`` and ``iotlb.usermem``.

Same names and answers as the pure twin ``iotlb._pydevice``:

* :class:`PinLedger` -- one owner's pinned runs ``(pfn, npages, writable) -> count``
  in an open-addressing hash table in C memory (linear probing, backward-shift
  deletion; 24 bytes a slot, at most half full);
* :class:`DirtyRecord` -- the runs dirtied on unpin ``(pfn, npages) -> times``, in
  the same kind of table (it only grows, until ``clear()``);
* :class:`MemoryCore` -- the base of :class:`iotlb.usermem.UserMemory`: the books the
  fast path touches, as C fields;
* :class:`IommuCore` -- the base of the platform-IOMMU parents: the IOMMU core's
  ``iommu_map``/``iommu_unmap`` on the domain vhost-vdpa owns (in C for plain ints
  and an attached domain; otherwise it declines to the twin's, the reference);
* :class:`DeviceCore` -- the base of :class:`iotlb.vdpa.VhostVdpa`: ``write()``.

``write()`` is ``vhost_chr_write_iter`` for the two messages a running guest sends
most: an UPDATE that the kernel maps as one entry (PA mode: one physically contiguous
run, identity placement; VA mode: the implicit shared-file mapping) and an INVALIDATE
that removes at most one entry.  It reads the message in place, calls the tree
without building ``Map`` objects, and keeps the pins in the ledger.  Every other case
-- a size-0 INVALIDATE, an AS at its entry limit, and every case it cannot finish
without an error -- it declines *before changing
anything* and hands the bytes to ``VhostVdpa._write``, the reference path, so both
paths give the same results by construction of the split, and the suite checks they
do (``_fast = False``).  The steps, in the kernel's order, are those of
``vhost_vdpa_process_iotlb_update`` → ``vhost_vdpa_pa_map``/``va_map`` →
``vhost_vdpa_map``, and ``vhost_vdpa_unmap`` → ``vhost_vdpa_iotlb_unmap``.

No tree path is used across a Python call unless the tree's version counter shows the
tree unchanged (the parent's op, a finalizer or another thread may change it).

>>> book = PinLedger()
>>> book.pin(0x10, 4, True); book.pin(0x10, 4, True); book.pin(0x20, 1, False)
>>> len(book), book.pages, book.count(0x10, 4, True)
(2, 9, 2)
>>> book.unpin(0x10, 4, True), book.unpin(0x30, 1, False)
(True, False)
>>> sorted(book.items())
[((16, 4, True), 1), ((32, 1, False), 1)]
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_DelItem, PyDict_GetItem, PyDict_SetItem
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyTypeObject
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset

from ._engine cimport HASCTX, IOTLB, Path

from collections import Counter
from errno import EEXIST as _EEXIST

from ._map import u64 as _py_u64
from ._pydevice import _IOMMU_PROT as _py_iommu_prot_table
from ._pydevice import _PERM_NONE
from ._pydevice import _iommu_check_range as _ref_iommu_check_range
from ._pydevice import _iommu_map as _ref_iommu_map
from ._pydevice import _iommu_unmap as _ref_iommu_unmap
from .errors import IOTLBError
from .wire import _bytes_view
from .wire import (VHOST_ACCESS_WO, VHOST_BACKEND_F_IOTLB_ASID, VHOST_IOTLB_INVALIDATE,
                   VHOST_IOTLB_MSG, VHOST_IOTLB_MSG_V2, VHOST_IOTLB_UPDATE,
                   VHOST_MSG_MIN_WRITE, VHOST_MSG_SIZE)

__all__ = ["PinLedger", "DirtyRecord", "MemoryCore", "IommuCore", "DeviceCore"]

cdef extern from *:
    """
    #include <string.h>
    /* Little-endian loads of the wire format, wherever the record sits. */
    static inline unsigned long long iotlb_le64(const unsigned char *p)
    {
        unsigned long long v;
        memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    static inline unsigned int iotlb_le32(const unsigned char *p)
    {
        unsigned int v;
        memcpy(&v, p, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap32(v);
    #endif
        return v;
    }
    /* A parent op looked up as getattr(obj, name, None) does -- once, through the
       type's getattro, so a property or a __getattribute__ sees one lookup -- but
       without a bound method when the op is a method of obj's class that the
       instance does not shadow: then *self_first is 1 and the op is the class's
       function, to be called with obj first (what CPython's LOAD_METHOD does,
       _PyObject_GetMethod).  Absent: None, or with strict an AttributeError.  A new
       reference, or NULL with an exception set. */
    static PyObject *iotlb_getop(PyObject *obj, PyObject *name, int strict,
                                 int *self_first)
    {
        PyObject *r = NULL;
        int found;
        *self_first = 0;
    #if PY_VERSION_HEX >= 0x03090000 && PY_VERSION_HEX < 0x030D0000
        {
            PyTypeObject *tp = Py_TYPE(obj);
            PyObject *descr;
            if (tp->tp_getattro == PyObject_GenericGetAttr && PyUnicode_CheckExact(name)
                    && (descr = _PyType_Lookup(tp, name)) != NULL
                    && PyType_HasFeature(Py_TYPE(descr), Py_TPFLAGS_METHOD_DESCRIPTOR)) {
                *self_first = _PyObject_GetMethod(obj, name, &r);
                return r;
            }
        }
    #endif
        if (strict)
            return PyObject_GetAttr(obj, name);
    #if PY_VERSION_HEX >= 0x030D0000
        found = PyObject_GetOptionalAttr(obj, name, &r);
    #else
        found = _PyObject_LookupAttr(obj, name, &r);
    #endif
        if (found < 0)
            return NULL;
        if (found == 0) {
            Py_INCREF(Py_None);
            r = Py_None;
        }
        return r;
    }
    """
    uint64_t iotlb_le64(const unsigned char *p) noexcept nogil
    void PyObject_GC_UnTrack(void *op) noexcept
    uint32_t iotlb_le32(const unsigned char *p) noexcept nogil
    object iotlb_getop(object obj, object name, int strict, int *self_first)

cdef uint64_t UMAX = 0xFFFFFFFFFFFFFFFF
cdef int64_t NPAGES_MAX = 0x7FFFFFFFFFFFFFFF

# the wire layout (struct vhost_msg / vhost_msg_v2, little-endian): outer type @0,
# asid @4 (v2), then struct vhost_iotlb_msg @8: iova, size, uaddr, perm @32, type @33
cdef uint32_t MSG_V1 = VHOST_IOTLB_MSG
cdef uint32_t MSG_V2 = VHOST_IOTLB_MSG_V2
cdef int T_UPDATE = VHOST_IOTLB_UPDATE
cdef int T_INVALIDATE = VHOST_IOTLB_INVALIDATE
cdef uint64_t ACCESS_WO = VHOST_ACCESS_WO
cdef uint64_t F_ASID = 1 << VHOST_BACKEND_F_IOTLB_ASID
cdef Py_ssize_t MIN_WRITE = VHOST_MSG_MIN_WRITE
cdef object _MSG_SIZE = VHOST_MSG_SIZE
cdef Py_ssize_t MSG_SIZE = VHOST_MSG_SIZE
cdef object _IOTLBError = IOTLBError
cdef object _Counter = Counter
cdef object _MapFile = None


cdef object _mapfile_type():
    # iotlb.usermem.MapFile, looked up once (usermem imports this module)
    global _MapFile
    if _MapFile is None:
        from .usermem import MapFile
        _MapFile = MapFile
    return _MapFile


# ----------------------------------------------------------------------------- pins
ctypedef struct Run:
    uint64_t pfn
    uint64_t nw        # npages << 1 | writable; 0 marks an empty slot (npages >= 1)
    int64_t count


cdef enum:
    RUN_BLOCK = 2   # 2**RUN_BLOCK consecutive pfns (same nw) have consecutive homes:
                    # 4 runs, 96 bytes; 8 cost ~440 instructions a message more than
                    # scattered homes on a churn replay (the table sits near half full,
                    # so clusters of whole blocks lengthen probes and backward shifts),
                    # 4 ~200; what a fill replay gains (fewer cache misses; 0.8-1.0x
                    # the time, with the machine's load) is in docs/performance.md


cdef inline uint64_t run_hash(uint64_t pfn, uint64_t nw) noexcept nogil:
    # the home slot (masked by the caller) of the run (pfn, nw): an aligned block of
    # 2**RUN_BLOCK pfns is scattered as a whole, and within it pfn's low bits pick
    # the slot, so page-by-page pins and unpins (a replay's UPDATE i, INVALIDATE i)
    # walk the table in order instead of missing the cache once a run
    cdef uint64_t h = (pfn >> RUN_BLOCK) * <uint64_t>0x9E3779B97F4A7C15 ^ nw * <uint64_t>0xC2B2AE3D27D4EB4F
    h ^= h >> 29
    return h << RUN_BLOCK | (pfn & ((1 << RUN_BLOCK) - 1))


cdef inline Py_ssize_t runs_find(const Run *slot, Py_ssize_t cap, uint64_t pfn,
                                  uint64_t nw) noexcept:
    # the slot of an open-addressing table of cap slots (a power of two, or 0) that
    # holds the run (pfn, nw), or -1
    cdef Py_ssize_t mask = cap - 1, i
    if cap == 0:
        return -1
    i = <Py_ssize_t>(run_hash(pfn, nw) & <uint64_t>mask)
    while slot[i].nw != 0:
        if slot[i].nw == nw and slot[i].pfn == pfn:
            return i
        i = (i + 1) & mask
    return -1


cdef Run *runs_rehash(Run *slot, Py_ssize_t cap, Py_ssize_t new_cap) noexcept:
    # a new table of new_cap slots (a power of two > the runs held) with every run of
    # slot[cap]; slot is freed.  NULL, with slot untouched and no exception set, when
    # the memory is not there
    cdef Run *new = <Run *>PyMem_Malloc(new_cap * sizeof(Run))
    cdef Py_ssize_t i, j, mask = new_cap - 1
    if new == NULL:
        return NULL
    memset(new, 0, new_cap * sizeof(Run))
    for i in range(cap):
        if slot[i].nw != 0:
            j = <Py_ssize_t>(run_hash(slot[i].pfn, slot[i].nw) & <uint64_t>mask)
            while new[j].nw != 0:
                j = (j + 1) & mask
            new[j] = slot[i]
    PyMem_Free(slot)
    return new


cdef Py_ssize_t runs_slot(Run **slot, Py_ssize_t *cap, Py_ssize_t *used, uint64_t pfn,
                          uint64_t nw) except -1:
    # the slot of the run (pfn, nw), claimed with count 0 if it is not in the table
    # (doubled first when it would pass half full); MemoryError, nothing changed,
    # when the table cannot grow
    cdef Py_ssize_t i = runs_find(slot[0], cap[0], pfn, nw), mask
    cdef Run *new
    if i >= 0:
        return i
    if 2 * (used[0] + 1) > cap[0]:
        new = runs_rehash(slot[0], cap[0], cap[0] * 2 if cap[0] else 16)
        if new == NULL:
            raise MemoryError()
        slot[0] = new
        cap[0] = cap[0] * 2 if cap[0] else 16
    mask = cap[0] - 1
    i = <Py_ssize_t>(run_hash(pfn, nw) & <uint64_t>mask)
    while slot[0][i].nw != 0:
        i = (i + 1) & mask
    slot[0][i].pfn = pfn
    slot[0][i].nw = nw
    slot[0][i].count = 0
    used[0] += 1
    return i


cdef int runs_check(const Run *slot, Py_ssize_t cap, Py_ssize_t used) except -1:
    # assert the table's shape: used = occupied slots, at most half full, every run
    # reachable from its home slot without crossing an empty one, counts positive
    cdef Py_ssize_t i, j, n = 0, mask = cap - 1
    for i in range(cap):
        if slot[i].nw == 0:
            continue
        n += 1
        assert slot[i].count > 0, "non-positive count"
        j = <Py_ssize_t>(run_hash(slot[i].pfn, slot[i].nw) & <uint64_t>mask)
        while j != i:
            assert slot[j].nw != 0, "run not reachable from its home slot"
            j = (j + 1) & mask
    assert n == used, f"used {used} != occupied slots {n}"
    assert 2 * used <= cap or cap == 0, "more than half full"
    return 0


cdef int _run_key(object pfn, object npages, object writable, uint64_t *p,
                  uint64_t *nw) except -1:
    cdef uint64_t n
    p[0] = _py_u64(pfn, "pfn")
    n = _py_u64(npages, "npages")
    if n == 0 or n > <uint64_t>NPAGES_MAX:
        raise ValueError(f"npages must be in 1..2**63-1, got {n}")
    nw[0] = n << 1 | (1 if writable else 0)
    return 0


cdef class _RunTable:
    """(internal) The storage of :class:`PinLedger` and :class:`DirtyRecord`: an
    open-addressing table of runs (``runs_find``/``runs_slot``/``runs_rehash``), at
    most half full; ``items()`` is the subclass's."""

    cdef Run *slot
    cdef Py_ssize_t cap       # a power of two, or 0 before the first run
    cdef Py_ssize_t used

    def __dealloc__(self):
        PyMem_Free(self.slot)

    def __len__(self):
        return self.used

    def __repr__(self):
        return f"{type(self).__name__}({dict(sorted(self.items()))!r})"

    def __sizeof__(self):
        return object.__sizeof__(self) + self.cap * sizeof(Run)

    cdef list _items(self, bint writable):
        # [((pfn, npages, writable) or (pfn, npages), count), ...], in slot order.
        # The tuples allocate, so a collection may run a finalizer that changes the
        # table (clear(), a pin that rehashes): the bound and the table are read
        # again at every slot, never kept across an allocation
        cdef Py_ssize_t i = 0
        cdef list out = []
        cdef Run r
        while i < self.cap:
            r = self.slot[i]
            i += 1
            if r.nw != 0:
                out.append((((r.pfn, r.nw >> 1, bool(r.nw & 1)) if writable
                             else (r.pfn, r.nw >> 1)), r.count))
        return out


@cython.final
cdef class PinLedger(_RunTable):
    """One owner's pinned runs: ``(pfn, npages, writable) -> count`` (count > 0).

    ``pages`` is the sum of ``npages * count`` -- what the owner charged to
    ``pinned_vm`` -- and stays within 2**63-1 (a pin that would pass it is an
    OverflowError that changes nothing).  :meth:`items` lists the runs in no particular order.

    >>> book = PinLedger(); book.pin(7, 2, False)
    >>> book, bool(book), PinLedger().pages
    (PinLedger({(7, 2, False): 1}), True, 0)
    """

    cdef int64_t _pages

    # ---------------------------------------------------------------- C level
    cdef inline Py_ssize_t _find(self, uint64_t pfn, uint64_t nw) noexcept:
        # the slot holding the run, or -1
        return runs_find(self.slot, self.cap, pfn, nw)

    cdef int _resize(self, Py_ssize_t cap) noexcept:
        # rehash into cap slots (a power of two >= 2 * used): 0, or -1 with nothing
        # changed when the memory is not there (no exception set)
        cdef Run *new = runs_rehash(self.slot, self.cap, cap)
        if new == NULL:
            return -1
        self.slot = new
        self.cap = cap
        return 0

    cdef int _pin(self, uint64_t pfn, uint64_t nw) except -1:
        # one more pin of the run (nw = npages << 1 | writable, 1 <= npages < 2**63);
        # OverflowError, nothing changed, if pages would pass 2**63-1
        cdef Py_ssize_t i
        if <int64_t>(nw >> 1) > NPAGES_MAX - self._pages:
            raise OverflowError(f"pages {self._pages} + {nw >> 1} would pass 2**63-1")
        i = runs_slot(&self.slot, &self.cap, &self.used, pfn, nw)
        self.slot[i].count += 1
        self._pages += <int64_t>(nw >> 1)
        return 0

    cdef bint _unpin(self, uint64_t pfn, uint64_t nw) noexcept:
        # one pin fewer; False (nothing changed) if the run is not pinned; the table
        # halves when it falls below an eighth full
        cdef Py_ssize_t i = self._find(pfn, nw), j, mask = self.cap - 1
        cdef Py_ssize_t home
        if i < 0:
            return False
        self._pages -= <int64_t>(nw >> 1)
        self.slot[i].count -= 1
        if self.slot[i].count > 0:
            return True
        # backward-shift deletion: pull later members of the cluster into the hole
        # when their home slot is not cyclically in (i, j]
        self.used -= 1
        j = i
        while True:
            j = (j + 1) & mask
            if self.slot[j].nw == 0:
                break
            home = <Py_ssize_t>(run_hash(self.slot[j].pfn, self.slot[j].nw)
                                & <uint64_t>mask)
            if (i <= j and (home <= i or home > j)) or \
                    (i > j and home <= i and home > j):
                self.slot[i] = self.slot[j]
                i = j
        self.slot[i].nw = 0
        self.slot[i].count = 0
        if 8 * self.used < self.cap and self.cap > 16:
            # give memory back as runs go (a released device's ledger ends small);
            # on MemoryError the table just stays as large as it is
            self._resize(self.cap // 2)
        return True

    # ---------------------------------------------------------------- Python level
    @property
    def pages(self):
        """Pages pinned: Σ ``npages * count``.

        >>> book = PinLedger(); book.pin(0, 3, True); book.pin(0, 3, True); book.pages
        6
        """
        return self._pages

    def pin(self, pfn, npages, writable):
        """Count one more pin of the run.

        >>> book = PinLedger(); book.pin(1, 1, True); book.count(1, 1, True)
        1
        """
        cdef uint64_t p, nw
        _run_key(pfn, npages, writable, &p, &nw)
        self._pin(p, nw)

    def unpin(self, pfn, npages, writable):
        """Drop one pin of the run; False (and nothing changes) if it is not pinned.

        >>> book = PinLedger(); book.pin(1, 1, True)
        >>> book.unpin(1, 1, False), book.unpin(1, 1, True), len(book)
        (False, True, 0)
        """
        cdef uint64_t p, nw
        _run_key(pfn, npages, writable, &p, &nw)
        return self._unpin(p, nw)

    def count(self, pfn, npages, writable):
        """How many times the run is pinned (0 if not).

        >>> PinLedger().count(5, 1, False)
        0
        """
        cdef uint64_t p, nw
        cdef Py_ssize_t i
        _run_key(pfn, npages, writable, &p, &nw)
        i = self._find(p, nw)
        return self.slot[i].count if i >= 0 else 0

    def items(self):
        """``[((pfn, npages, writable), count), ...]`` in no particular order.

        >>> book = PinLedger(); book.pin(3, 1, False); book.items()
        [((3, 1, False), 1)]
        """
        return self._items(True)

    def _check(self):
        """Assert every invariant: counts positive, ``pages`` = Σ npages * count,
        ``used`` = occupied slots, at most half full, every run reachable from its
        home slot without crossing an empty one.

        >>> book = PinLedger(); book.pin(0, 2, True); book._check()
        """
        cdef Py_ssize_t i
        runs_check(self.slot, self.cap, self.used)
        pages = 0                    # a Python int: the sum is checked, not trusted
        for i in range(self.cap):
            if self.slot[i].nw != 0:
                pages += (self.slot[i].nw >> 1) * self.slot[i].count
        assert pages == self._pages, f"pages {self._pages} != sum of runs {pages}"


@cython.final
cdef class DirtyRecord(_RunTable):
    """The runs dirtied on unpin, counted: ``(pfn, npages) -> times`` (count > 0).
    It only grows, until :meth:`clear`; :meth:`items` lists the runs in no particular
    order.  ``UserMemory.dirtied`` is a read-only snapshot of it.

    >>> rec = DirtyRecord(); rec.add(7, 2); rec.add(7, 2); rec.add(9, 1)
    >>> len(rec), rec.count(7, 2), rec.count(7, 1), sorted(rec.items())
    (2, 2, 0, [((7, 2), 2), ((9, 1), 1)])
    """

    cdef int _add(self, uint64_t pfn, uint64_t npages) except -1:
        # one more dirtying of the run (1 <= npages < 2**63); MemoryError, nothing
        # changed, when the table cannot grow
        cdef Py_ssize_t i = runs_slot(&self.slot, &self.cap, &self.used, pfn, npages << 1)
        self.slot[i].count += 1
        return 0

    def add(self, pfn, npages):
        """Count one more dirtying of the run.

        >>> rec = DirtyRecord(); rec.add(1, 1); rec.count(1, 1)
        1
        """
        cdef uint64_t p, nw
        _run_key(pfn, npages, False, &p, &nw)
        self._add(p, nw >> 1)

    def count(self, pfn, npages):
        """How many times the run was dirtied (0 if never).

        >>> DirtyRecord().count(5, 1)
        0
        """
        cdef uint64_t p, nw
        cdef Py_ssize_t i
        _run_key(pfn, npages, False, &p, &nw)
        i = runs_find(self.slot, self.cap, p, nw)
        return self.slot[i].count if i >= 0 else 0

    def items(self):
        """``[((pfn, npages), count), ...]`` in no particular order.

        >>> rec = DirtyRecord(); rec.add(3, 1); rec.items()
        [((3, 1), 1)]
        """
        return self._items(False)

    def clear(self):
        """Forget every run.

        >>> rec = DirtyRecord(); rec.add(3, 1); rec.clear(); len(rec)
        0
        """
        PyMem_Free(self.slot)
        self.slot = NULL
        self.cap = self.used = 0

    def _check(self):
        """Assert every invariant: counts positive, ``used`` = occupied slots, at
        most half full, every run reachable from its home slot, npages >= 1.

        >>> rec = DirtyRecord(); rec.add(0, 2); rec._check()
        """
        cdef Py_ssize_t i
        runs_check(self.slot, self.cap, self.used)
        for i in range(self.cap):
            assert self.slot[i].nw & 1 == 0, "a dirty run keyed as writable"


# ----------------------------------------------------------------------------- memory
cdef class MemoryCore:
    """The base of :class:`iotlb.usermem.UserMemory`: the books ``write()`` touches.

    ``UserMemory.__init__`` sets every field; the compiled fast path reads them as C
    values.  ``pinned_vm`` is signed 64-bit, as the kernel's ``atomic64_t``: the
    RLIMIT_MEMLOCK check keeps it below 2**63 (``page_size >= 2``,
    ``memlock_pages <= (2**64-1) >> page_shift``); ``dirtied_pages`` only grows and
    is a Python int.
    """

    cdef public dict _pins          # owner -> PinLedger
    cdef public long long pinned_vm
    cdef public object dirtied_pages  # cumulative: a Python int, never wraps
    cdef public bint record_dirty
    cdef public DirtyRecord _dirty  # (pfn, npages) -> times dirtied (record_dirty)
    cdef public object _memlock     # memlock_pages (validated by UserMemory)
    cdef public bint _simple_pa     # identity placement, every page pinnable
    cdef public bint _simple_va     # every address in the implicit shared mapping
    cdef public dict _files         # owner -> Counter(file -> references)

    def __cinit__(self, *args, **kwargs):
        self._pins = {}
        self._dirty = DirtyRecord()
        self._files = {}

    cpdef _file_get(self, owner, file):
        """Take a reference on ``file`` for ``owner`` (``get_file``)."""
        cdef PyObject *found = PyDict_GetItem(self._files, owner)
        if found == NULL:
            refs = self._files[owner] = _Counter()
        else:
            refs = <object>found
        if type(refs) is _Counter:
            # a Counter's own __delitem__ routes every item store through the slow
            # slot; Counter keeps dict's __setitem__ and get, so call them directly
            found = PyDict_GetItem(refs, file)
            PyDict_SetItem(refs, file, 1 if found == NULL else <object>found + 1)
        else:
            refs[file] = refs.get(file, 0) + 1

    cpdef _file_put(self, owner, file):
        """Drop a reference ``owner`` holds on ``file`` (``fput``); AssertionError
        if it holds none."""
        cdef PyObject *found = PyDict_GetItem(self._files, owner)
        refs = <object>found if found != NULL else None
        if type(refs) is _Counter and PyDict_GetItem(refs, file) != NULL:
            count = <object>PyDict_GetItem(refs, file)      # held: dict's get
        else:
            count = refs.get(file, 0) if refs is not None else 0
        if count <= 0:
            raise AssertionError(f"fput of a file {owner!r} holds no reference to: "
                                 f"{file!r}")
        if type(refs) is _Counter:
            # dict's own item store and delete: what Counter's resolve to for a key
            # that is there (see _file_get)
            if count == 1:
                PyDict_DelItem(refs, file)
            else:
                PyDict_SetItem(refs, file, count - 1)
        elif count == 1:
            del refs[file]
        else:
            refs[file] = count - 1


cdef inline PinLedger _ledger(MemoryCore mem, object owner):
    # the owner's ledger, or None when it has pinned nothing yet
    cdef PyObject *book
    if mem._pins is None:
        return None
    book = PyDict_GetItem(mem._pins, owner)
    if book == NULL or type(<object>book) is not PinLedger:
        return None
    return <PinLedger>book


# ----------------------------------------------------------------------------- IOMMU
cdef extern from "Python.h":
    # declared without an exception value: _plain_u64 checks and clears the error
    unsigned long long _as_ull "PyLong_AsUnsignedLongLong"(object)


cdef inline bint _plain_u64(object v, uint64_t *out) noexcept:
    # an exact int in 0..2**64-1 as a C value; False (no error set) for anything else
    if type(v) is not int:
        return False
    out[0] = _as_ull(v)
    if out[0] == <uint64_t>-1 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        return False
    return True


#: iommu_prot's table (perm -> Perm), typed so that .get is the dict C call
cdef dict _IOMMU_PROT = _py_iommu_prot_table


cdef class IommuCore:
    """The base of the platform-IOMMU parents
    (:class:`iotlb_backends.platform_iommu.PlatformIommu`): the IOMMU core's
    ``iommu_map``/``iommu_unmap`` on the domain vhost-vdpa owns, ``_domain`` (an
    :class:`iotlb.IOTLB`, or None), with pages of ``page_size`` bytes.

    Same answers as the twin's (``iotlb._pydevice.IommuCore``), which is the
    reference: with plain ints and an attached domain these run in C, and they
    decline to the twin's functions for anything else (a failed check, an int
    subclass, a domain of another type, an unmap that meets several mappings).
    """

    cdef public object _domain
    cdef public object page_size

    #: as the twin's (``map_prot_check(prot, perm)`` or None)
    map_prot_check = None

    _check_range = _ref_iommu_check_range

    def __cinit__(self, *args, **kwargs):
        self._domain = None
        self.page_size = None

    def iommu_map(self, iova, size, pa, perm):
        """``iommu_map(domain, iova, pa, size, perm_to_iommu_flags(perm))``: unaligned
        or zero size is EINVAL, an already-mapped IOVA EEXIST, no domain ENODEV."""
        cdef uint64_t s, n, a, pg, last
        cdef Path p
        domain = self._domain
        if (type(domain) is not IOTLB or not _plain_u64(iova, &s)
                or not _plain_u64(size, &n) or not _plain_u64(pa, &a)
                or not _plain_u64(self.page_size, &pg) or n == 0
                or (s | n | a) & (pg - 1) or s + (n - 1) < s):
            return _ref_iommu_map(self, iova, size, pa, perm)    # the reference decides
        last = s + (n - 1)
        prot = _IOMMU_PROT.get(perm, _PERM_NONE)                 # iommu_prot's table
        check = self.map_prot_check
        if check is not None:
            check(prot, perm)
        if (<IOTLB>domain)._find_first(s, last, &p):
            raise IOTLBError(_EEXIST, f"iommu_map: [{s:#x}, {last:#x}] is already mapped")
        (<IOTLB>domain)._add_range_ctx(s, last, a, <uint64_t>prot, None, "map")

    def iommu_unmap(self, iova, size):
        """``iommu_unmap(domain, iova, size)``: drops what is mapped in the range and
        returns the bytes unmapped."""
        cdef uint64_t s, n, pg, last, gone
        cdef Path p
        domain = self._domain
        if (type(domain) is not IOTLB or not _plain_u64(iova, &s)
                or not _plain_u64(size, &n) or not _plain_u64(self.page_size, &pg)
                or n == 0 or (s | n) & (pg - 1) or s + (n - 1) < s):
            return _ref_iommu_unmap(self, iova, size)
        last = s + (n - 1)
        if not (<IOTLB>domain)._find_first(s, last, &p):
            return 0
        if p.leaf.last[p.slot] < last or not (<IOTLB>domain)._is_sole(&p, last):
            return _ref_iommu_unmap(self, iova, size)    # several mappings: the twin sums
        gone = p.leaf.last[p.slot] - p.leaf.start[p.slot] + 1
        ctx = (<IOTLB>domain)._delete_path(&p)
        ctx = None                                       # released with the tree whole
        return gone


# ----------------------------------------------------------------------------- device
cdef class DeviceCore:
    """The base of :class:`iotlb.vdpa.VhostVdpa`: its state as C fields, ``write()``.

    ``VhostVdpa.__init__`` sets every field; the reference handler (Python) and the
    fast path (C) read and write the same ones.
    """

    cdef public bint _opened
    cdef public bint _owner
    cdef public bint _in_batch
    cdef public bint _fast          # write()'s fast path on (tests compare it with off)
    cdef public uint64_t _features
    cdef public uint32_t _batch_asid
    cdef public int _shift
    cdef public uint64_t _offmask
    cdef public long long _pinned   # pages this device charged to pinned_vm
    cdef public dict _as            # asid -> IOTLB (v->as[] hash)
    cdef public object _backend
    cdef public MemoryCore _mem
    cdef uint64_t _first, _last     # the IOVA range (_range)

    def __cinit__(self, *args, **kwargs):
        self._as = {}
        self._fast = True
        self._last = UMAX

    @property
    def _range(self):
        return (self._first, self._last)

    @_range.setter
    def _range(self, value):
        first, last = value
        self._first = first
        self._last = last

    def write(self, data):
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
        if type(data) is bytes and PyBytes_GET_SIZE(data) >= MIN_WRITE and \
                self._handle_fast(<const unsigned char *>PyBytes_AS_STRING(data)):
            return _MSG_SIZE
        return self._write(data)

    def write_many(self, data):
        """Send a buffer of concatenated 72-byte records as successive ``write()``
        calls; return the number of records written.  The first failing write raises
        (with ``index`` = its record number); a trailing partial record is written
        as a short write (EINVAL).

        >>> from iotlb.vdpa import VhostVdpa
        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        ...     def dma_map(self, *a): pass
        ...     def dma_unmap(self, *a): pass
        >>> from iotlb.wire import encode, VHOST_IOTLB_UPDATE as U
        >>> dev = VhostVdpa(P()); dev.open(); dev.set_owner()
        >>> dev.write_many(encode(U, 0, 4096, 0) + encode(U, 4096, 4096, 4096))
        2
        """
        view = memoryview(_bytes_view(data))
        cdef const unsigned char[::1] buf = view
        cdef Py_ssize_t n = buf.shape[0], off = 0, count = 0
        while off < n:
            try:
                if n - off < MSG_SIZE or not self._handle_fast(&buf[off]):
                    self._write(view[off:off + MSG_SIZE])
            except _IOTLBError as e:
                e.index = count
                raise
            count += 1
            off += MSG_SIZE
        return count

    cdef int _handle_fast(self, const unsigned char *b) except -1:
        # vhost_chr_write_iter → vhost_vdpa_process_iotlb_msg on a record of at least
        # MIN_WRITE bytes: 1 done, 0 declined (nothing changed; the caller hands the
        # record to _write, the reference path)
        cdef uint32_t outer, asid
        cdef uint64_t iova, size, perm
        cdef int t
        cdef PyObject *found
        cdef IOTLB iotlb
        if not self._fast or not self._owner or not self._opened:
            return 0
        outer = iotlb_le32(b)
        asid = iotlb_le32(b + 4)
        iova = iotlb_le64(b + 8)
        size = iotlb_le64(b + 16)
        perm = b[32]
        t = b[33]
        if outer == MSG_V2:
            if not self._features & F_ASID:
                asid = 0
        elif outer != MSG_V1:
            return 0                                  # EINVAL: reference
        else:
            asid = 0
        if size == 0 or (self._in_batch and self._batch_asid != asid):
            return 0
        found = PyDict_GetItem(self._as, asid)
        if found == NULL or type(<object>found) is not IOTLB:
            return 0                                  # AS to create, or EINVAL
        # a reference of our own: a parent op may remove the AS (release() from a
        # callback) while the tree is still in use here
        iotlb = <IOTLB>found
        if t == T_UPDATE:
            return self._update(iotlb, asid, iova, size, iotlb_le64(b + 24), perm)
        if t == T_INVALIDATE:
            return self._invalidate(iotlb, asid, iova, size)
        return 0

    cdef int _update(self, IOTLB iotlb, uint32_t asid, uint64_t iova, uint64_t size,
                     uint64_t uaddr, uint64_t perm) except -1:
        # vhost_vdpa_process_iotlb_update for one entry: 1 done, 0 declined (nothing
        # changed; the reference path takes the message)
        cdef Path p
        cdef uint64_t last, off, span, npages = 0, upfn = 0, limit, map_iova, map_size
        cdef uint64_t pa, map_last
        cdef MemoryCore mem = self._mem
        cdef PinLedger pins
        cdef bint use_va
        cdef int self_first = 0
        if mem is None or iova < self._first or iova > UMAX - size + 1:
            return 0
        last = iova + size - 1
        if last > self._last or iotlb._find_first(iova, last, &p):
            return 0                                  # EINVAL / EEXIST: reference
        backend = self._backend
        use_va = bool(backend.use_va)
        if use_va:
            # vhost_vdpa_va_map, one VMA: the implicit shared-file mapping (a VMA
            # with no file is skipped by the kernel: the reference path's case)
            f = mem.DEFAULT_FILE
            if not mem._simple_va or uaddr > UMAX - size + 1 or f is None:
                return 0
            map_iova = iova
            map_size = size
            pa = uaddr
        else:
            # vhost_vdpa_pa_map, one run: identity placement, every page pinnable
            if not mem._simple_pa or self._shift <= 0 or self._shift >= 64:
                return 0
            off = self._offmask
            if size > UMAX - (iova & off) - off:
                return 0                              # npages wraps: reference
            span = size + (iova & off) + off
            npages = span >> self._shift
            upfn = uaddr >> self._shift
            limit = UMAX >> self._shift               # RLIM_INFINITY
            if mem._memlock is not None:
                if type(mem._memlock) is not int or mem._memlock < 0 \
                        or mem._memlock > limit:
                    return 0
                limit = mem._memlock
            if mem.pinned_vm < 0 or npages > limit \
                    or <uint64_t>mem.pinned_vm > limit - npages:
                return 0                              # ENOMEM: reference
            if upfn + npages > (<uint64_t>1 << (64 - self._shift)):
                return 0                              # runs past the address space
            map_iova = iova & ~off
            map_size = npages << self._shift
            pa = upfn << self._shift
        map_last = map_iova + map_size - 1
        if map_iova == 0 and map_last == UMAX:
            return 0                                  # split in two: reference
        if not iotlb._add_range_ctx_fits():
            return 0                                  # ENOSPC/EINVAL/RETIRE: reference
        opaque = None
        if use_va:
            # get_file on the implicit mapping: file DEFAULT_FILE, offset = uaddr
            mem._file_get(self, f)
            # tuple.__new__(MapFile, (f, uaddr)), through the slot: no method lookup
            args = ((f, uaddr),)
            opaque = (<PyTypeObject *>tuple).tp_new(_mapfile_type(), <PyObject *>args,
                                                    NULL)
            if type(f) is str:
                # a (str, int) record can be in no reference cycle: untrack it, as
                # CPython untracks plain tuples of atomic items (a MapFile, a tuple
                # subclass, never is), so full collections skip one object an entry
                PyObject_GC_UnTrack(<void *>opaque)
        # vhost_vdpa_map
        iotlb._add(map_iova, map_last, pa, perm, opaque)
        try:
            # getattr(backend, op, None), without a bound method (iotlb_getop)
            dma_map = iotlb_getop(backend, "dma_map", 0, &self_first)
            if dma_map is not None:
                if self_first:
                    dma_map(backend, asid, map_iova, map_size, pa, perm, opaque)
                else:
                    dma_map(asid, map_iova, map_size, pa, perm, opaque)
            else:
                set_map = iotlb_getop(backend, "set_map", 0, &self_first)
                if set_map is not None:
                    if not self._in_batch:
                        if self_first:
                            set_map(backend, asid, iotlb)
                        else:
                            set_map(asid, iotlb)
                else:
                    backend.iommu_map(map_iova, map_size, pa, perm)
        except _IOTLBError as e:
            iotlb.unmap(map_iova, map_last)           # vhost_iotlb_del_range
            if use_va:
                mem.fput(self, opaque)
                self._unmap(asid, iotlb, iova, 0)     # map_iova - iova == 0
            else:
                self._unmap(asid, iotlb, iova, size)
            raise self._handler_failed(e) from e
        if not use_va:
            pins = _ledger(mem, self)
            if pins is None:
                mem.pin(self, upfn, npages, bool(perm & ACCESS_WO))
            else:
                pins._pin(upfn, npages << 1 | (1 if perm & ACCESS_WO else 0))
                mem.pinned_vm += <long long>npages
            self._pinned += <long long>npages
        return 1

    cdef int _invalidate(self, IOTLB iotlb, uint32_t asid, uint64_t iova,
                         uint64_t size) except -1:
        # vhost_vdpa_unmap without u64 wrap, removing at most one entry: 1 done, 0
        # declined (nothing changed)
        cdef Path p
        cdef uint64_t last, m_start, m_last, m_addr, meta, m_size, n
        cdef Py_ssize_t version
        cdef MemoryCore mem = self._mem
        cdef PinLedger pins
        cdef bint writable, use_va, dma
        cdef int self_first = 0, unmap_self_first = 0
        if mem is None or size - 1 > UMAX - iova:
            return 0
        last = iova + size - 1
        backend = self._backend
        if iotlb._find_first(iova, last, &p):
            if not iotlb._is_sole(&p, last):
                return 0                              # several entries: reference
            m_start = p.leaf.start[p.slot]
            m_last = p.leaf.last[p.slot]
            m_addr = p.leaf.addr[p.slot]
            meta = p.leaf.meta[p.slot]
            version = iotlb._version              # p is valid while this holds
            m_size = m_last - m_start + 1
            ctx = None
            if meta & HASCTX:
                ctx = iotlb._ctx.get(meta >> 9)
            use_va = bool(backend.use_va)
            n = m_size >> self._shift
            if not use_va and n == 0:
                return 0                              # a sub-page VA entry: reference
            # vhost_vdpa_general_unmap's op, bound before anything changes (an absent
            # op fails here, an op set to None means "no call")
            dma = iotlb_getop(backend, "dma_map", 0, &self_first) is not None
            if dma:
                dev_unmap = iotlb_getop(backend, "dma_unmap", 1, &unmap_self_first)
            elif iotlb_getop(backend, "set_map", 0, &self_first) is None:
                dev_unmap = iotlb_getop(backend, "iommu_unmap", 1, &unmap_self_first)
            else:
                dev_unmap = None
            if use_va:
                mem._file_put(self, ctx.file)                # fput
            else:
                writable = (meta & ACCESS_WO) != 0
                pins = _ledger(mem, self)
                if pins is None or not pins._unpin(m_addr >> self._shift,
                                                   n << 1 | writable):
                    raise AssertionError(f"unpin of a run that was not pinned: "
                                         f"[{m_start:#x}, {m_last:#x}] -> {m_addr:#x}")
                mem.pinned_vm -= <long long>n
                if writable:
                    mem.dirtied_pages += n
                    if mem.record_dirty:
                        if mem._dirty is None:        # as UserMemory.unpin's call
                            raise AttributeError("'NoneType' object has no attribute "
                                                 "'add'")
                        mem._dirty._add(m_addr >> self._shift, n)
                self._pinned -= <long long>n
            if dev_unmap is not None:
                try:
                    if dma:
                        if unmap_self_first:
                            dev_unmap(backend, asid, m_start, m_size)
                        else:
                            dev_unmap(asid, m_start, m_size)
                    elif unmap_self_first:
                        dev_unmap(backend, m_start, m_size)
                    else:
                        dev_unmap(m_start, m_size)
                except _IOTLBError:
                    pass                              # void in the kernel
            if iotlb._version == version:             # p still points at the entry
                ctx = iotlb._delete_path(&p)
                ctx = None                            # released with the tree whole
            else:
                iotlb.unmap(iova, last)
        set_map = iotlb_getop(backend, "set_map", 0, &self_first)
        if set_map is not None and not self._in_batch:
            try:
                if self_first:
                    set_map(backend, asid, iotlb)
                else:
                    set_map(asid, iotlb)
            except _IOTLBError:
                pass
        return 1
