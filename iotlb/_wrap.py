"""The kernel's translate loop where its u64 arithmetic wraps: one rule for both
engines.  The compiled and the pure engine translate every range themselves and
decline to :func:`translate_wrapped` only when ``iova + size - 1`` or a host address
runs past ``2**64 - 1`` (rare: a fast path does not copy this rule).
"""
from __future__ import annotations

import errno as _errno

from ._map import U64_MAX
from .errors import IOTLBError

__all__ = ["translate_wrapped"]


def translate_wrapped(tlb, iova: int, size: int, access: int) -> list:
    """``translate_desc`` (drivers/vhost/vhost.c; vringh's ``iotlb_translate`` is the
    same loop) with its u64 arithmetic, for a range or host address that wraps:

    ``last = iova + size - 1`` wraps modulo 2**64; each step looks up
    ``vhost_iotlb_itree_first(addr, last)``, whose overlap test ``start <= last &&
    addr <= node.last`` with ``addr > last`` matches only an entry covering all of
    ``[last, addr]``; a hole (or an entry starting after ``addr``) is EFAULT at
    ``addr``, an entry lacking ``access`` EPERM; the segment's host address is
    ``map->addr + addr - map->start`` modulo 2**64; ``addr`` then advances by the rest
    of the entry, modulo 2**64, until ``size`` bytes are covered.

    >>> from iotlb import IOTLB
    >>> t = IOTLB(); t.map(0, 2**64 - 1, 0)        # identity, stored as two halves
    >>> translate_wrapped(t, 2**64 - 16, 32, 1)    # no half covers [15, 2**64-16]
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [EFAULT] translate: no mapping at iova 0xfffffffffffffff0
    >>> t = IOTLB(); t.map(5, 2**64 - 1, 0x1000); t.map(0, 0xf, 0x9000)
    >>> [(hex(a), n) for a, n in translate_wrapped(t, 2**64 - 16, 32, 1)]
    [('0xfeb', 16), ('0x9000', 16)]
    """
    last = (iova + size - 1) & U64_MAX
    addr, covered, out = iova, 0, []
    while size > covered:
        if addr <= last:
            m = tlb.first(addr, last)
        else:
            m = next((e for e in tlb.overlapping(0, last) if e.last >= addr), None)
        if m is None or m.start > addr:
            raise IOTLBError(_errno.EFAULT, f"translate: no mapping at iova {addr:#x}",
                             iova=addr)
        if m.perm & access != access:
            raise IOTLBError(_errno.EPERM,
                             f"translate: entry [{m.start:#x}, {m.last:#x}] has perm "
                             f"{int(m.perm)}, access {access} needed at iova {addr:#x}",
                             iova=addr)
        seg = m.last - addr + 1                   # map->size - addr + map->start
        out.append(((m.addr + addr - m.start) & U64_MAX, min(size - covered, seg)))
        covered += seg
        addr = (addr + seg) & U64_MAX
    return out
