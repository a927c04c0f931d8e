"""Value types shared by both engines: ``U64_MAX``, :class:`Perm`, :class:`Map`,
and the argument checks that turn bad input into ``TypeError``/``OverflowError``.
"""
from __future__ import annotations

import abc
import enum
import operator

__all__ = ["U64_MAX", "HALF", "Perm", "Map", "IOTLBBase", "as_int", "u64", "perm8"]

#: The largest u64, ``~0`` / ``ULONG_MAX`` on x86_64.
U64_MAX = (1 << 64) - 1
#: ``2**63``: where the kernel splits a full-space ``[0, ~0]`` mapping.
HALF = 1 << 63


class Perm(enum.IntFlag):
    """Access bits of an entry (``VHOST_MAP_RO/WO/RW``, ``VHOST_ACCESS_*``).

    Any int in 0..255 is accepted where a perm is expected: the kernel stores unknown
    bits verbatim.

    >>> Perm.RW == Perm.RO | Perm.WO
    True
    >>> int(Perm.WO)
    2
    """

    NONE = 0
    RO = 1
    WO = 2
    RW = 3


def as_int(value, name: str) -> int:
    """``value`` as a plain int through ``__index__`` (numpy ints, IntFlag), or
    TypeError: floats, strings and objects without ``__index__`` are not ints.

    >>> as_int(Perm.RW, "perm"), as_int(True, "flag")
    (3, 1)
    >>> as_int(1.0, "iova")
    Traceback (most recent call last):
    ...
    TypeError: iova must be an int, got float
    """
    if isinstance(value, (float, complex, str, bytes)) or value is None:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    try:
        return int(operator.index(value))  # exact int: 3.9 returns bools as is
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def u64(value, name: str) -> int:
    """Return ``value`` as an int in 0..2**64-1, or raise TypeError/OverflowError.

    >>> u64(5, "iova")
    5
    >>> u64(-1, "iova")
    Traceback (most recent call last):
    ...
    OverflowError: iova must be in 0..2**64-1, got -1
    """
    if type(value) is not int:
        value = as_int(value, name)
    if value < 0 or value > U64_MAX:
        raise OverflowError(f"{name} must be in 0..2**64-1, got {value}")
    return value


def perm8(value, name: str = "perm") -> int:
    """Return ``value`` as an int in 0..255 (a ``u8`` perm), or raise.

    >>> perm8(Perm.RO)
    1
    >>> perm8(256)
    Traceback (most recent call last):
    ...
    OverflowError: perm must be in 0..255, got 256
    """
    if type(value) is not int:
        value = as_int(value, name)
    if value < 0 or value > 255:
        raise OverflowError(f"{name} must be in 0..255, got {value}")
    return value


class Map(tuple):
    """One IOTLB entry (``struct vhost_iotlb_map``): an immutable record.

    ``start`` and ``last`` are inclusive; ``size = last - start + 1``; ``addr`` is the
    target address of ``start``; ``perm`` is a :class:`Perm`; ``ctx`` is the owner
    cookie (the kernel's ``opaque``).  Equality and hashing are those of the tuple
    ``(start, last, addr, perm, ctx)``.

    >>> m = Map(0x1000, 0x1fff, 0x8000, Perm.RO)
    >>> m.size, hex(m.addr), m.perm
    (4096, '0x8000', <Perm.RO: 1>)
    >>> m == (0x1000, 0x1fff, 0x8000, 1, None)
    True
    """

    __slots__ = ()
    _fields = ("start", "last", "addr", "perm", "ctx")

    def __new__(cls, start, last, addr, perm=Perm.RW, ctx=None):
        start = u64(start, "start")
        last = u64(last, "last")
        if last < start:
            raise ValueError(f"Map last {last:#x} < start {start:#x}")
        return tuple.__new__(cls, (start, last, u64(addr, "addr"), perm8(perm), ctx))

    def __getnewargs__(self):
        return tuple(self)

    start = property(operator.itemgetter(0), doc="first IOVA (inclusive)")
    last = property(operator.itemgetter(1), doc="last IOVA (inclusive)")
    addr = property(operator.itemgetter(2), doc="target address of start")
    ctx = property(operator.itemgetter(4), doc="owner cookie (kernel: opaque)")

    @property
    def perm(self) -> Perm:
        """Access bits, as a :class:`Perm` (unknown bits kept)."""
        return Perm(self[3])

    @property
    def size(self) -> int:
        """``last - start + 1`` (``2**64`` cannot occur: full space is split)."""
        return self[1] - self[0] + 1

    def __repr__(self) -> str:
        ctx = "" if self[4] is None else f", ctx={self[4]!r}"
        return (f"Map(start={self[0]:#x}, last={self[1]:#x}, addr={self[2]:#x}, "
                f"perm={self[3]}{ctx})")


class IOTLBBase(abc.ABC):
    """Abstract base both engines register with: ``isinstance(x, IOTLBBase)`` is true
    for either implementation, and ``==`` works across them."""
