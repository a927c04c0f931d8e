"""The user-memory model behind vhost-vdpa: the owner's ``mm``.

:class:`UserMemory` answers the questions ``vhost_vdpa_pa_map`` / ``vhost_vdpa_va_map``
ask the kernel's memory management, and keeps the books they keep:

* **physical placement** -- user page → page frame (``pin_user_pages`` +
  ``page_to_pfn``).  Identity by default (``pfn = uaddr >> PAGE_SHIFT``); :meth:`place`
  moves ranges elsewhere so that one UPDATE spans several physically contiguous runs;
* **VMAs** -- ``find_vma`` for VA mode: anonymous, shared/private file, and IO/PFNMAP
  mappings.  By default (``strict=False``) every address not covered by a declared VMA
  lies in one implicit shared file mapping (``DEFAULT_FILE``, file offset = address),
  like guest RAM backed by a shared memfd; ``strict=True`` makes such addresses
  unmapped (``pin_user_pages`` faults, ``find_vma`` moves on to the next VMA);
* **pins** -- per pinned run, never per page: a ledger ``(pfn, npages, writable) →
  count`` per owner (a 1 TiB guest in 2 MiB sections is 524288 ledger keys, no page
  objects).  Per-page pin counts are computed on ranges by a sweep
  (:meth:`pin_counts`);
* ``pinned_vm`` (``mm->pinned_vm``, shared by every device of this mm) and
  ``RLIMIT_MEMLOCK`` (``memlock_pages``; ``None`` = ``RLIM_INFINITY``);
* **dirtying** -- ``set_page_dirty_lock`` on unpin of a writable run;
* **file references** -- ``get_file``/``fput`` of the ``vdpa_map_file`` records VA
  mode stores as the entry ``ctx``.

>>> mem = UserMemory()
>>> hex(mem.pfn(0x7f0000003000))
'0x7f0000003'
>>> mem.place(0x10000, 0x2000, pa=0x900000)       # two pages moved elsewhere
>>> mem.runs(0x10000 >> 12, 4)                     # (page index, pfn, pages), pinnable
([(0, 2304, 2), (2, 18, 2)], 4)
"""
from __future__ import annotations

import bisect
from collections import Counter
from types import MappingProxyType
from typing import List, Mapping, NamedTuple, Optional, Tuple

from . import IMPLEMENTATION
from ._map import U64_MAX, u64

if IMPLEMENTATION == "cython":
    from ._device import DirtyRecord, MemoryCore, PinLedger
else:
    from ._pydevice import DirtyRecord, MemoryCore, PinLedger

__all__ = ["UserMemory", "Vma", "MapFile"]

_ADDR_END = 1 << 64  # one past the last user address of the model
_S64_MAX = (1 << 63) - 1  # atomic64_t: pinned_vm


class Vma(NamedTuple):
    """A ``vm_area_struct``: ``[start, end)``, backing ``file`` (None = anonymous),
    ``pgoff`` (file offset of ``start`` in pages), ``shared`` (VM_SHARED), ``io``
    (VM_IO | VM_PFNMAP)."""

    start: int
    end: int
    file: object
    pgoff: int
    shared: bool
    io: bool

    @property
    def kind(self) -> str:
        """``"io"``, ``"anon"``, ``"shared-file"`` or ``"private-file"``.

        >>> Vma(0, 4096, None, 0, False, False).kind
        'anon'
        """
        if self.io:
            return "io"
        if self.file is None:
            return "anon"
        return "shared-file" if self.shared else "private-file"

    @property
    def va_mappable(self) -> bool:
        """What ``vhost_vdpa_va_map`` maps: ``vm_file && VM_SHARED && !(VM_IO|VM_PFNMAP)``.

        >>> Vma(0, 4096, "f", 0, True, False).va_mappable
        True
        """
        return self.file is not None and self.shared and not self.io


class MapFile(NamedTuple):
    """``struct vdpa_map_file``: the VA-mode entry ``ctx`` (holds a file reference)."""

    file: object
    offset: int


def _tally(books: dict, owner) -> Counter:
    """``owner``'s book (key -> count) as a Counter, or every owner's added up when
    ``owner`` is None."""
    if owner is not None:
        return Counter(books.get(owner, {}))
    out: Counter = Counter()
    for book in books.values():
        out.update(book)
    return out


class UserMemory(MemoryCore):
    """The owner process's memory: placement, VMAs, pins, ``pinned_vm``, dirtying.

    ``memlock_pages`` is ``RLIMIT_MEMLOCK >> PAGE_SHIFT`` (None = unlimited, i.e.
    ``RLIM_INFINITY >> PAGE_SHIFT``).  ``record_dirty=False`` keeps only the total of
    dirtied pages (no per-run record).

    >>> mem = UserMemory(memlock_pages=512)
    >>> mem.lock_limit, mem.pinned_vm
    (512, 0)
    """

    #: The backing file of the implicit mapping (``strict=False``).
    DEFAULT_FILE = "memfd:guest-ram"

    def __init__(self, page_size: int = 4096, *, memlock_pages: Optional[int] = None,
                 strict: bool = False, record_dirty: bool = True) -> None:
        if type(page_size) is not int or page_size < 2 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two >= 2, got {page_size!r}")
        self.page_size = page_size
        self.page_shift = page_size.bit_length() - 1
        self._npfn = _ADDR_END >> self.page_shift
        self.memlock_pages = memlock_pages
        self._strict = bool(strict)
        self.record_dirty = bool(record_dirty)
        # placement: parallel sorted lists of non-overlapping [upfn, upfn+n) -> pfn
        self._pl_start: List[int] = []
        self._pl_n: List[int] = []
        self._pl_pfn: List[int] = []
        # VMAs: sorted, non-overlapping; _vma_end parallel for bisect
        self._vmas: List[Vma] = []
        self._vma_end: List[int] = []
        self._has_io = False
        self._simple_pa = self._simple_va = not self._strict
        # books
        self._pins: dict = {}        # owner -> PinLedger
        self._leaked: dict = {}      # owner -> {(pfn, n, writable): count}
        self._files: dict = {}       # owner -> Counter(file -> refs)
        self.pinned_vm = 0
        self.dirtied_pages = 0
        self._dirty = DirtyRecord()  # (pfn, npages) -> times dirtied (record_dirty)

    # ------------------------------------------------------------ mode
    @property
    def strict(self) -> bool:
        """Whether addresses outside declared VMAs are unmapped (else they are in the
        implicit shared mapping of ``DEFAULT_FILE``).

        >>> UserMemory(strict=True).strict
        True
        """
        return self._strict

    @strict.setter
    def strict(self, value: bool) -> None:
        self._strict = bool(value)
        self._update_flags()

    def _update_flags(self) -> None:
        """Fast-path flags: PA = identity placement, every page pinnable; VA = every
        address in the implicit shared-file mapping."""
        self._has_io = any(v.io for v in self._vmas)
        self._simple_pa = not (self._strict or self._has_io or self._pl_start)
        self._simple_va = not (self._strict or self._vmas)

    # ------------------------------------------------------------ limits
    @property
    def memlock_pages(self) -> Optional[int]:
        """``RLIMIT_MEMLOCK >> PAGE_SHIFT`` (None = ``RLIM_INFINITY``): None or an int
        in ``0 .. (2**64-1) >> page_shift``, so that ``pinned_vm`` (the kernel's
        ``atomic64_t``) can never pass 2**63-1.

        >>> mem = UserMemory(); mem.memlock_pages = 2**52 - 1; mem.memlock_pages == 2**52 - 1
        True
        >>> mem.memlock_pages = 2**52
        Traceback (most recent call last):
        ...
        OverflowError: memlock_pages must be in 0..4503599627370495 (RLIMIT_MEMLOCK >> PAGE_SHIFT), got 4503599627370496
        """
        return self._memlock

    @memlock_pages.setter
    def memlock_pages(self, value: Optional[int]) -> None:
        if value is not None:
            value = u64(value, "memlock_pages")
            top = U64_MAX >> self.page_shift
            if value > top:
                raise OverflowError(f"memlock_pages must be in 0..{top} (RLIMIT_MEMLOCK "
                                    f">> PAGE_SHIFT), got {value}")
        self._memlock = value

    @property
    def lock_limit(self) -> int:
        """``PFN_DOWN(rlimit(RLIMIT_MEMLOCK))`` in pages.

        >>> UserMemory().lock_limit == (2**64 - 1) >> 12
        True
        """
        if self._memlock is None:
            return U64_MAX >> self.page_shift
        return self._memlock

    # ------------------------------------------------------------ placement
    def _check_aligned(self, name: str, value: int) -> int:
        if value & (self.page_size - 1):
            raise ValueError(f"{name} {value:#x} is not page aligned")
        return value

    def place(self, uaddr: int, size: int, pa: int) -> None:
        """Declare that ``[uaddr, uaddr+size)`` lives at physical ``[pa, pa+size)``.

        Page aligned; a later placement replaces an earlier one where they overlap.

        >>> mem = UserMemory(); mem.place(0x1000, 0x1000, 0x5000)
        >>> mem.pfn(0x1000), mem.pfn(0x2000)
        (5, 2)
        """
        uaddr = self._check_aligned("uaddr", u64(uaddr, "uaddr"))
        size = self._check_aligned("size", u64(size, "size"))
        pa = self._check_aligned("pa", u64(pa, "pa"))
        if size == 0:
            return
        if uaddr + size > _ADDR_END or pa + size > _ADDR_END:
            raise OverflowError("placement runs past 2**64")
        sh = self.page_shift
        self._carve_placement(uaddr >> sh, (uaddr + size) >> sh)
        i = bisect.bisect_left(self._pl_start, uaddr >> sh)
        self._pl_start.insert(i, uaddr >> sh)
        self._pl_n.insert(i, size >> sh)
        self._pl_pfn.insert(i, pa >> sh)
        self._update_flags()

    def _carve_placement(self, lo: int, hi: int) -> None:
        """Remove placement of upfns in ``[lo, hi)``, splitting segments."""
        starts, ns, pfns = self._pl_start, self._pl_n, self._pl_pfn
        i = bisect.bisect_right(starts, lo) - 1
        if i < 0:
            i = 0
        keep = []
        j = i
        while j < len(starts) and starts[j] < hi:
            s, n, p = starts[j], ns[j], pfns[j]
            e = s + n
            if e > lo:
                if s < lo:
                    keep.append((s, lo - s, p))
                if e > hi:
                    keep.append((hi, e - hi, p + (hi - s)))
            else:
                keep.append((s, n, p))
            j += 1
        del starts[i:j], ns[i:j], pfns[i:j]
        for k, (s, n, p) in enumerate(keep):
            starts.insert(i + k, s)
            ns.insert(i + k, n)
            pfns.insert(i + k, p)

    def pfn(self, uaddr: int) -> int:
        """The page frame of the page holding ``uaddr``.

        >>> UserMemory().pfn(0x2fff)
        2
        """
        upfn = u64(uaddr, "uaddr") >> self.page_shift
        i = bisect.bisect_right(self._pl_start, upfn) - 1
        if i >= 0 and upfn < self._pl_start[i] + self._pl_n[i]:
            return self._pl_pfn[i] + (upfn - self._pl_start[i])
        return upfn

    def _placed(self, upfn: int, n: int, index: int, out: list) -> None:
        """Append ``(index, pfn, count)`` pieces of ``[upfn, upfn+n)`` (no wrap)."""
        starts = self._pl_start
        end = upfn + n
        if not starts:
            out.append((index, upfn, n))
            return
        ns, pfns = self._pl_n, self._pl_pfn
        i = bisect.bisect_right(starts, upfn) - 1
        if i < 0 or starts[i] + ns[i] <= upfn:
            i += 1
        u = upfn
        while u < end:
            if i < len(starts) and starts[i] <= u:
                s = starts[i]
                take = min(end, s + ns[i]) - u
                out.append((index + (u - upfn), pfns[i] + (u - s), take))
                i += 1
            else:
                nxt = starts[i] if i < len(starts) else end
                take = min(end, nxt) - u
                out.append((index + (u - upfn), u, take))
            u += take

    def runs(self, upfn: int, npages: int) -> Tuple[list, int]:
        """Physically contiguous runs of the user pages ``upfn .. upfn+npages-1``.

        Returns ``(runs, pinnable)``: ``runs`` is a list of maximal
        ``(page_index, pfn, count)`` covering pages ``0 .. pinnable-1``; ``pinnable``
        is how many leading pages ``pin_user_pages`` can pin (``npages`` unless a page
        is unmapped in strict mode or lies in an IO/PFNMAP VMA).  User page numbers
        wrap at 2**64 like the kernel's ``unsigned long`` cursor.

        >>> UserMemory().runs(16, 3)
        ([(0, 16, 3)], 3)
        """
        npfn = self._npfn
        upfn %= npfn
        pinnable = self._pinnable(upfn, npages)
        if not self._pl_start and upfn + pinnable <= npfn:
            return ([(0, upfn, pinnable)] if pinnable else []), pinnable
        pieces: list = []
        first = min(pinnable, npfn - upfn)
        if first:
            self._placed(upfn, first, 0, pieces)
        if pinnable > first:
            self._placed(0, pinnable - first, first, pieces)
        merged: list = []
        for idx, pfn, cnt in pieces:
            if merged:
                pi, pp, pc = merged[-1]
                if pp + pc == pfn:
                    merged[-1] = (pi, pp, pc + cnt)
                    continue
            merged.append((idx, pfn, cnt))
        return merged, pinnable

    def _pinnable(self, upfn: int, npages: int) -> int:
        """Leading pages of ``upfn..`` that gup can pin (FOLL_LONGTERM)."""
        if not self.strict and not self._has_io:
            return npages
        sh = self.page_shift
        done = 0
        u = upfn
        while done < npages:
            addr = u << sh
            i = bisect.bisect_right(self._vma_end, addr)
            vmas = self._vmas
            if i < len(vmas) and vmas[i].start <= addr:
                v = vmas[i]
                if v.io:
                    return done
                stop = v.end >> sh
            else:
                if self.strict:
                    return done
                stop = (vmas[i].start >> sh) if i < len(vmas) else self._npfn
            step = min(npages - done, stop - u)
            done += step
            u += step
            if u >= self._npfn:
                u = 0
        return npages

    # ------------------------------------------------------------ VMAs
    def _add_vma(self, start: int, size: int, file, offset: int, shared: bool,
                 io: bool) -> Vma:
        start = self._check_aligned("start", u64(start, "start"))
        size = self._check_aligned("size", u64(size, "size"))
        offset = self._check_aligned("offset", u64(offset, "offset"))
        if size == 0:
            raise ValueError("a VMA needs a nonzero size")
        if start + size > _ADDR_END:
            raise OverflowError("VMA runs past 2**64")
        self.munmap(start, size)
        vma = Vma(start, start + size, file, offset >> self.page_shift, bool(shared),
                  bool(io))
        i = bisect.bisect_left(self._vma_end, vma.end)
        self._vmas.insert(i, vma)
        self._vma_end.insert(i, vma.end)
        self._update_flags()
        return vma

    def map_anon(self, start: int, size: int, *, shared: bool = False) -> Vma:
        """An anonymous mapping.  Private ones are skipped by VA mode; a shared one is
        shmem-backed (it has a ``vm_file``, as in Linux) and is mapped.

        >>> UserMemory(strict=True).map_anon(0x10000, 0x4000).kind
        'anon'
        """
        file = f"shmem:anon@{start:#x}" if shared else None
        return self._add_vma(start, size, file, 0, shared, False)

    def map_file(self, start: int, size: int, file: object = None, *, offset: int = 0,
                 shared: bool = True) -> Vma:
        """A file mapping (``MAP_SHARED`` by default); ``offset`` is the file offset
        of ``start``.

        >>> UserMemory().map_file(0x10000, 0x4000, "ram.img").kind
        'shared-file'
        """
        if file is None:
            file = f"file@{start:#x}"
        return self._add_vma(start, size, file, offset, shared, False)

    def map_io(self, start: int, size: int, file: object = None) -> Vma:
        """A ``VM_IO | VM_PFNMAP`` mapping (device memory): not pinnable, skipped by
        VA mode.

        >>> UserMemory().map_io(0x10000, 0x1000).kind
        'io'
        """
        return self._add_vma(start, size, file if file is not None else "io", 0, True,
                             True)

    def munmap(self, start: int, size: int) -> None:
        """Remove declared VMAs from ``[start, start+size)``, splitting as needed.

        >>> mem = UserMemory(strict=True); _ = mem.map_anon(0, 0x3000)
        >>> mem.munmap(0x1000, 0x1000); [(v.start, v.end) for v in mem.vmas()]
        [(0, 4096), (8192, 12288)]
        """
        start = self._check_aligned("start", u64(start, "start"))
        size = self._check_aligned("size", u64(size, "size"))
        end = start + size
        sh = self.page_shift
        out = []
        for v in self._vmas:
            if v.end <= start or v.start >= end:
                out.append(v)
                continue
            if v.start < start:
                out.append(v._replace(end=start))
            if v.end > end:
                out.append(v._replace(start=end, pgoff=v.pgoff + ((end - v.start) >> sh)))
        self._vmas = out
        self._vma_end = [v.end for v in out]
        self._update_flags()

    def vmas(self) -> list:
        """The declared VMAs, ascending.

        >>> UserMemory().vmas()
        []
        """
        return list(self._vmas)

    def find_vma(self, addr: int) -> Optional[Vma]:
        """``find_vma(mm, addr)``: the first VMA with ``end > addr`` -- which may start
        *above* ``addr`` (the kernel's semantics), or None.  With ``strict=False`` a
        gap between declared VMAs is the implicit shared mapping of ``DEFAULT_FILE``.

        >>> mem = UserMemory(strict=True); _ = mem.map_anon(0x10000, 0x1000)
        >>> mem.find_vma(0x2000).start, mem.find_vma(0x11000)
        (65536, None)
        >>> UserMemory().find_vma(0x2000).file
        'memfd:guest-ram'
        """
        vmas = self._vmas
        i = bisect.bisect_right(self._vma_end, addr)
        if i < len(vmas) and (self.strict or vmas[i].start <= addr):
            return vmas[i]
        if self.strict:
            return None
        gap_start = vmas[i - 1].end if i > 0 else 0
        gap_end = vmas[i].start if i < len(vmas) else _ADDR_END
        return Vma(gap_start, gap_end, self.DEFAULT_FILE, gap_start >> self.page_shift,
                   True, False)

    # ------------------------------------------------------------ pins
    def pin(self, owner, pfn: int, npages: int, writable: bool) -> None:
        """Pin a run (``pin_user_pages``) and charge it to ``pinned_vm`` -- what the
        device does once the parent accepted the run.

        >>> mem = UserMemory(); mem.pin("dev", 16, 4, True)
        >>> mem.pinned_vm, mem.pin_count(17)
        (4, 1)
        """
        if self.pinned_vm + npages > _S64_MAX:
            raise OverflowError(f"pinned_vm {self.pinned_vm} + {npages} pages would pass "
                                f"2**63-1 (atomic64_t)")
        book = self._pins.get(owner)
        if book is None:
            book = self._pins[owner] = PinLedger()
        book.pin(pfn, npages, writable)
        self.pinned_vm += npages

    def unpin(self, owner, pfn: int, npages: int, writable: bool) -> None:
        """Unpin a run (``unpin_user_page`` per page), dirtying it first when
        writable (``set_page_dirty_lock``), and uncharge ``pinned_vm``.

        >>> mem = UserMemory(); mem.pin("dev", 16, 4, True); mem.unpin("dev", 16, 4, True)
        >>> mem.pinned_vm, mem.pin_count(17), mem.dirtied_pages
        (0, 0, 4)
        """
        book = self._pins.get(owner)
        if book is None or not book.unpin(pfn, npages, writable):
            raise AssertionError(f"unpin of a run that {owner!r} has not pinned: "
                                 f"pfn {pfn:#x} +{npages}")
        self.pinned_vm -= npages
        if writable:
            self.dirtied_pages += npages
            if self.record_dirty:
                self._dirty.add(pfn, npages)

    def leak(self, owner, pfn: int, npages: int, writable: bool) -> None:
        """Record pages that stay pinned with no IOTLB entry and no ``pinned_vm``
        charge (the kernel's error path can leave such pins, see ``VhostVdpa``).

        >>> mem = UserMemory(); mem.leak("dev", 5, 1, False); mem.pin_count(5), mem.pinned_vm
        (1, 0)
        """
        book = self._leaked.setdefault(owner, {})
        key = (pfn, npages, writable)
        book[key] = book.get(key, 0) + 1

    def pins(self, owner) -> Counter:
        """``owner``'s pinned runs: ``Counter((pfn, npages, writable) -> count)``.

        >>> mem = UserMemory(); mem.pin("d", 1, 2, False); mem.pins("d")
        Counter({(1, 2, False): 1})
        """
        book = self._pins.get(owner)
        return Counter(dict(book.items())) if book is not None else Counter()

    def leaked(self, owner=None) -> Counter:
        """Leaked runs of ``owner`` (or of every owner).

        >>> UserMemory().leaked()
        Counter()
        """
        return _tally(self._leaked, owner)

    def accounted(self, owner) -> int:
        """Pages of ``pinned_vm`` charged by ``owner`` (its pinned runs; leaks are
        never charged).

        >>> mem = UserMemory(); mem.pin("d", 0, 3, False); mem.accounted("d")
        3
        """
        book = self._pins.get(owner)
        return book.pages if book is not None else 0

    def pinned_pages(self, owner=None) -> int:
        """Pages pinned (leaks included) by ``owner`` or by everyone.

        >>> mem = UserMemory(); mem.pin("d", 0, 3, False); mem.pinned_pages()
        3
        """
        if owner is None:
            pinned = sum(book.pages for book in self._pins.values())
        else:
            pinned = self.accounted(owner)
        return pinned + sum(k[1] * c for k, c in _tally(self._leaked, owner).items())

    def pin_counts(self, pfn: int, npages: int) -> list:
        """Per-page pin counts of frames ``pfn .. pfn+npages-1`` as ranges:
        ``[(first_pfn, pages, count), ...]`` for every stretch with count > 0
        (leaked pins included), computed by a sweep over pinned runs.

        >>> mem = UserMemory(); mem.pin("a", 0, 4, False); mem.pin("b", 2, 4, False)
        >>> mem.pin_counts(0, 8)
        [(0, 2, 1), (2, 2, 2), (4, 2, 1)]
        """
        lo, hi = pfn, pfn + npages
        deltas: Counter = Counter()
        for book in list(self._pins.values()) + list(self._leaked.values()):
            for (p, n, _w), c in book.items():
                s, e = max(p, lo), min(p + n, hi)
                if s < e:
                    deltas[s] += c
                    deltas[e] -= c
        out = []
        level = 0
        prev = None
        for x in sorted(deltas):
            if prev is not None and level > 0 and x > prev:
                if out and out[-1][0] + out[-1][1] == prev and out[-1][2] == level:
                    f, n, c = out[-1]
                    out[-1] = (f, n + x - prev, c)
                else:
                    out.append((prev, x - prev, level))
            level += deltas[x]
            prev = x
        return out

    def pin_count(self, pfn: int) -> int:
        """Pin count of one page frame.

        >>> UserMemory().pin_count(7)
        0
        """
        counts = self.pin_counts(pfn, 1)
        return counts[0][2] if counts else 0

    def dirty_count(self, pfn: int) -> int:
        """How many times frame ``pfn`` was dirtied (needs ``record_dirty``).

        >>> mem = UserMemory(); mem.pin("d", 8, 2, True); mem.unpin("d", 8, 2, True)
        >>> mem.dirty_count(9), mem.dirty_count(10)
        (1, 0)
        """
        return sum(c for (p, n), c in self._dirty.items() if p <= pfn < p + n)

    @property
    def dirtied(self) -> Mapping[Tuple[int, int], int]:
        """The runs dirtied on unpin so far, ``{(pfn, npages): times}`` (needs
        ``record_dirty``): a read-only snapshot made from the record (O(runs)), which
        later unpins do not change; :meth:`clear_dirtied` forgets the record.

        >>> mem = UserMemory(); mem.pin("d", 8, 2, True); mem.unpin("d", 8, 2, True)
        >>> dict(mem.dirtied), mem.dirtied_pages
        ({(8, 2): 1}, 2)
        >>> mem.dirtied.clear()
        Traceback (most recent call last):
        ...
        AttributeError: 'mappingproxy' object has no attribute 'clear'
        """
        return MappingProxyType(dict(self._dirty.items()))

    def clear_dirtied(self) -> None:
        """Forget the runs dirtied so far (:attr:`dirtied`); ``dirtied_pages``, the
        total, keeps counting.

        >>> mem = UserMemory(); mem.pin("d", 8, 2, True); mem.unpin("d", 8, 2, True)
        >>> mem.clear_dirtied(); len(mem.dirtied), mem.dirtied_pages
        (0, 2)
        """
        self._dirty.clear()

    # ------------------------------------------------------------ files
    def get_file(self, owner, vma: Vma, uaddr: int) -> MapFile:
        """Take a reference on ``vma.file`` and return the ``vdpa_map_file`` record;
        ``offset = (vm_pgoff << PAGE_SHIFT) + uaddr - vm_start`` in u64 arithmetic.

        >>> mem = UserMemory(); v = mem.find_vma(0x5000)
        >>> mem.get_file("d", v, 0x5123), mem.file_refs()
        (MapFile(file='memfd:guest-ram', offset=20771), Counter({'memfd:guest-ram': 1}))
        """
        self._file_get(owner, vma.file)
        return MapFile(vma.file, ((vma.pgoff << self.page_shift) + uaddr - vma.start)
                       & U64_MAX)

    def fput(self, owner, map_file: MapFile) -> None:
        """Drop the reference a :class:`MapFile` holds.

        >>> mem = UserMemory(); mf = mem.get_file("d", mem.find_vma(0), 0)
        >>> mem.fput("d", mf); mem.file_refs()
        Counter()
        """
        self._file_put(owner, map_file.file)

    def file_refs(self, owner=None) -> Counter:
        """File references held (by ``owner`` or everyone): ``file -> count``.

        >>> UserMemory().file_refs("d")
        Counter()
        """
        return _tally(self._files, owner)

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        """Assert the books balance: ``pinned_vm`` = Σ pinned runs of every owner
        (leaks excluded), no non-positive counts.

        >>> mem = UserMemory(); mem.pin("d", 0, 2, False); mem.check()
        """
        total = 0
        for owner, book in self._pins.items():
            book._check()                         # counts positive, pages exact
            total += book.pages
        assert total == self.pinned_vm, f"pinned_vm {self.pinned_vm} != pins {total}"
        for refs in self._files.values():
            assert all(c > 0 for c in refs.values()), "non-positive file refcount"

    def __repr__(self) -> str:
        return (f"UserMemory(page_size={self.page_size}, pinned_vm={self.pinned_vm}, "
                f"memlock_pages={self.memlock_pages}, strict={self.strict}, "
                f"placements={len(self._pl_start)}, vmas={len(self._vmas)})")
