"""The vhost IOTLB wire format: ``struct vhost_msg`` (v1) and ``struct vhost_msg_v2``.

Constants carry the names of ``include/uapi/linux/vhost_types.h``.  Both message
versions are 72 bytes, little-endian (x86_64)::

    offset size field
         0    4 type  (int: VHOST_IOTLB_MSG = 1, VHOST_IOTLB_MSG_V2 = 2)
         4    4 asid  (u32, v2 only; a hole in v1)
         8    8 iotlb.iova
        16    8 iotlb.size
        24    8 iotlb.uaddr
        32    1 iotlb.perm
        33    1 iotlb.type  (VHOST_IOTLB_MISS .. VHOST_IOTLB_BATCH_END)
        34   38 unused (union padding)

:func:`decode` parses exactly as ``vhost_chr_write_iter`` (``drivers/vhost/vhost.c``)
does; :func:`encode` builds a record; :func:`iter_records` / :func:`decode_stream` read
a buffer or file of concatenated records.

>>> data = encode(VHOST_IOTLB_UPDATE, 0x1000, 0x2000, 0x7f0000001000, VHOST_ACCESS_RW)
>>> len(data)
72
>>> decode(data, asid_acked=False)
VhostMsg(v2, UPDATE, asid=0, iova=0x1000, size=0x2000, uaddr=0x7f0000001000, perm=RW)
"""
from __future__ import annotations

import enum
import errno as _errno
import struct
from typing import Iterator, NamedTuple, Tuple

from ._map import U64_MAX, as_int, u64
from .errors import IOTLBError

__all__ = [
    # outer message types
    "VHOST_IOTLB_MSG", "VHOST_IOTLB_MSG_V2",
    # inner iotlb.type
    "VHOST_IOTLB_MISS", "VHOST_IOTLB_UPDATE", "VHOST_IOTLB_INVALIDATE",
    "VHOST_IOTLB_ACCESS_FAIL", "VHOST_IOTLB_BATCH_BEGIN", "VHOST_IOTLB_BATCH_END",
    # perm
    "VHOST_ACCESS_RO", "VHOST_ACCESS_WO", "VHOST_ACCESS_RW",
    "VHOST_MAP_RO", "VHOST_MAP_WO", "VHOST_MAP_RW",
    # backend feature bits and masks
    "VHOST_BACKEND_F_IOTLB_MSG_V2", "VHOST_BACKEND_F_IOTLB_BATCH",
    "VHOST_BACKEND_F_IOTLB_ASID", "VHOST_BACKEND_F_SUSPEND", "VHOST_BACKEND_F_RESUME",
    "VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK", "VHOST_BACKEND_F_DESC_ASID",
    "VHOST_BACKEND_F_IOTLB_PERSIST", "BackendFeature", "VHOST_VDPA_BACKEND_FEATURES",
    "KNOWN_BACKEND_FEATURES", "VHOST_F_LOG_ALL", "VHOST_NET_F_VIRTIO_NET_HDR",
    # sizes and codecs
    "VHOST_MSG_SIZE", "VHOST_MSG_MIN_WRITE", "VhostMsg", "encode", "decode",
    "iter_records", "decode_stream", "StreamError", "msg_type_name", "feature_names",
    "encode_iova_range", "decode_iova_range", "encode_vring_state",
    "decode_vring_state",
]

# ------------------------------------------------------------------ constants
#: Outer ``type`` of ``struct vhost_msg`` (v1).
VHOST_IOTLB_MSG = 0x1
#: Outer ``type`` of ``struct vhost_msg_v2``.
VHOST_IOTLB_MSG_V2 = 0x2

VHOST_IOTLB_MISS = 1
VHOST_IOTLB_UPDATE = 2
VHOST_IOTLB_INVALIDATE = 3
VHOST_IOTLB_ACCESS_FAIL = 4
#: Batch hints (vhost-vdpa only): everything but the v2 ``asid`` is ignored.
VHOST_IOTLB_BATCH_BEGIN = 5
VHOST_IOTLB_BATCH_END = 6

VHOST_ACCESS_RO = 0x1
VHOST_ACCESS_WO = 0x2
VHOST_ACCESS_RW = 0x3
# kernel-side aliases (include/linux/vhost_iotlb.h)
VHOST_MAP_RO = VHOST_ACCESS_RO
VHOST_MAP_WO = VHOST_ACCESS_WO
VHOST_MAP_RW = VHOST_ACCESS_RW

# Backend feature *bit numbers* (VHOST_{GET,SET}_BACKEND_FEATURES), as in the header.
VHOST_BACKEND_F_IOTLB_MSG_V2 = 0x1
VHOST_BACKEND_F_IOTLB_BATCH = 0x2
VHOST_BACKEND_F_IOTLB_ASID = 0x3
VHOST_BACKEND_F_SUSPEND = 0x4
VHOST_BACKEND_F_RESUME = 0x5
VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK = 0x6
VHOST_BACKEND_F_DESC_ASID = 0x7
VHOST_BACKEND_F_IOTLB_PERSIST = 0x8

# Virtio-level feature bits that live in the same header (not backend features).
VHOST_F_LOG_ALL = 26
VHOST_NET_F_VIRTIO_NET_HDR = 27


class BackendFeature(enum.IntFlag):
    """Backend feature *masks* (``1 << VHOST_BACKEND_F_*``).

    >>> BackendFeature.IOTLB_ASID == 1 << VHOST_BACKEND_F_IOTLB_ASID
    True
    >>> hex(BackendFeature.IOTLB_PERSIST)
    '0x100'
    """

    IOTLB_MSG_V2 = 1 << VHOST_BACKEND_F_IOTLB_MSG_V2
    IOTLB_BATCH = 1 << VHOST_BACKEND_F_IOTLB_BATCH
    IOTLB_ASID = 1 << VHOST_BACKEND_F_IOTLB_ASID
    SUSPEND = 1 << VHOST_BACKEND_F_SUSPEND
    RESUME = 1 << VHOST_BACKEND_F_RESUME
    ENABLE_AFTER_DRIVER_OK = 1 << VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK
    DESC_ASID = 1 << VHOST_BACKEND_F_DESC_ASID
    IOTLB_PERSIST = 1 << VHOST_BACKEND_F_IOTLB_PERSIST


_FEATURE_NAMES = {f.value.bit_length() - 1: f.name for f in BackendFeature}

#: What vhost-vdpa always offers (``VHOST_VDPA_BACKEND_FEATURES``).
VHOST_VDPA_BACKEND_FEATURES = int(BackendFeature.IOTLB_MSG_V2 | BackendFeature.IOTLB_BATCH
                                  | BackendFeature.IOTLB_ASID)
#: Every bit ``VHOST_SET_BACKEND_FEATURES`` knows; anything else is EOPNOTSUPP.
KNOWN_BACKEND_FEATURES = int(
    VHOST_VDPA_BACKEND_FEATURES | BackendFeature.DESC_ASID | BackendFeature.IOTLB_PERSIST
    | BackendFeature.SUSPEND | BackendFeature.RESUME
    | BackendFeature.ENABLE_AFTER_DRIVER_OK)

#: ``sizeof(struct vhost_msg) == sizeof(struct vhost_msg_v2)`` on x86_64.
VHOST_MSG_SIZE = 72
#: The shortest write ``vhost_chr_write_iter`` accepts: 8-byte header + 32-byte iotlb.
VHOST_MSG_MIN_WRITE = 40

_TYPE_NAMES = {
    VHOST_IOTLB_MISS: "MISS", VHOST_IOTLB_UPDATE: "UPDATE",
    VHOST_IOTLB_INVALIDATE: "INVALIDATE", VHOST_IOTLB_ACCESS_FAIL: "ACCESS_FAIL",
    VHOST_IOTLB_BATCH_BEGIN: "BATCH_BEGIN", VHOST_IOTLB_BATCH_END: "BATCH_END",
}
_PERM_NAMES = {0: "NONE", VHOST_ACCESS_RO: "RO", VHOST_ACCESS_WO: "WO",
               VHOST_ACCESS_RW: "RW"}

# The whole record, and the prefix decode needs (type, asid|hole, iova, size, uaddr,
# perm, iotlb.type): 34 bytes.  Outer type is a C ``int``.
_RECORD = struct.Struct("<iIQQQBB38x")
_HEAD = struct.Struct("<iIQQQBB")
_IOVA_RANGE = struct.Struct("<QQ")
_VRING_STATE = struct.Struct("<II")


def msg_type_name(t: int) -> str:
    """The name of an inner ``iotlb.type`` (``"UPDATE"``), or ``"type N"``.

    >>> msg_type_name(VHOST_IOTLB_BATCH_END), msg_type_name(9)
    ('BATCH_END', 'type 9')
    """
    return _TYPE_NAMES.get(t, f"type {t}")


def feature_names(mask: int) -> list:
    """Names of the backend feature bits set in ``mask``; unknown bits as ``bit N``.

    >>> feature_names(0x10e)
    ['IOTLB_MSG_V2', 'IOTLB_BATCH', 'IOTLB_ASID', 'IOTLB_PERSIST']
    >>> feature_names(1 << 9)
    ['bit 9']
    """
    mask = u64(mask, "mask")
    out = []
    for bit in range(64):
        if mask >> bit & 1:
            out.append(_FEATURE_NAMES.get(bit, f"bit {bit}"))
    return out


# ------------------------------------------------------------------ the record
class VhostMsg(tuple):
    """One decoded message: an immutable record.

    Fields: ``type`` (inner ``iotlb.type``), ``iova``, ``size``, ``uaddr``, ``perm``,
    ``asid`` (0 for v1, or when IOTLB_ASID is not acked), ``version`` (the outer type:
    :data:`VHOST_IOTLB_MSG` or :data:`VHOST_IOTLB_MSG_V2`).  Any ``u8`` type/perm is
    accepted, so garbage can be represented and encoded.

    >>> m = VhostMsg(VHOST_IOTLB_INVALIDATE, 0x1000, 0x1000, asid=1)
    >>> m.type, m.asid, m.version
    (3, 1, 2)
    >>> m
    VhostMsg(v2, INVALIDATE, asid=1, iova=0x1000, size=0x1000, uaddr=0x0, perm=NONE)
    >>> m._replace(asid=0).asid
    0
    """

    __slots__ = ()
    _fields = ("type", "iova", "size", "uaddr", "perm", "asid", "version")

    def __new__(cls, type: int, iova: int = 0, size: int = 0, uaddr: int = 0,
                perm: int = 0, *, asid: int = 0, version: int = VHOST_IOTLB_MSG_V2):
        t = _uint(type, "type", 0xFF)
        a = _uint(asid, "asid", 0xFFFFFFFF)
        v = _int32(version, "version")
        if v == VHOST_IOTLB_MSG and a:
            raise ValueError("a v1 message (struct vhost_msg) has no asid field")
        return tuple.__new__(cls, (t, u64(iova, "iova"), u64(size, "size"),
                                   u64(uaddr, "uaddr"), _uint(perm, "perm", 0xFF), a, v))

    def __getnewargs_ex__(self):
        t, i, s, u, p, a, v = self
        return (t, i, s, u, p), {"asid": a, "version": v}

    type = property(lambda self: self[0], doc="inner iotlb.type")
    iova = property(lambda self: self[1], doc="I/O virtual address")
    size = property(lambda self: self[2], doc="length in bytes")
    uaddr = property(lambda self: self[3], doc="user virtual address")
    perm = property(lambda self: self[4], doc="VHOST_ACCESS_* bits")
    asid = property(lambda self: self[5], doc="address space id (v2)")
    version = property(lambda self: self[6], doc="outer type: 1 (v1) or 2 (v2)")

    def _replace(self, **changes) -> "VhostMsg":
        """A copy with some fields changed."""
        d = dict(zip(self._fields, self))
        d.update(changes)
        return VhostMsg(d["type"], d["iova"], d["size"], d["uaddr"], d["perm"],
                        asid=d["asid"], version=d["version"])

    def _asdict(self) -> dict:
        """The fields as a dict.

        >>> VhostMsg(VHOST_IOTLB_BATCH_BEGIN)._asdict()["type"]
        5
        """
        return dict(zip(self._fields, self))

    def encode(self) -> bytes:
        """The 72-byte record (same as :func:`encode`).

        >>> len(VhostMsg(VHOST_IOTLB_BATCH_END).encode())
        72
        """
        t, i, s, u, p, a, v = self
        return _RECORD.pack(v, a, i, s, u, p, t)

    __bytes__ = encode

    def __repr__(self) -> str:
        t, i, s, u, p, a, v = self
        ver = {VHOST_IOTLB_MSG: "v1", VHOST_IOTLB_MSG_V2: "v2"}.get(v, f"outer={v}")
        return (f"VhostMsg({ver}, {_TYPE_NAMES.get(t, f'type={t}')}, asid={a}, "
                f"iova={i:#x}, size={s:#x}, uaddr={u:#x}, "
                f"perm={_PERM_NAMES.get(p, p)})")


def _uint(value, name: str, top: int) -> int:
    if type(value) is not int:
        value = as_int(value, name)
    if value < 0 or value > top:
        raise OverflowError(f"{name} must be in 0..{top:#x}, got {value}")
    return value


def _int32(value, name: str) -> int:
    """A C ``int`` (outer type): -2**31..2**32-1 accepted, stored as signed."""
    if type(value) is not int:
        value = as_int(value, name)
    if value < -(1 << 31) or value > 0xFFFFFFFF:
        raise OverflowError(f"{name} must fit in 32 bits, got {value}")
    return value - (1 << 32) if value >= 1 << 31 else value


# ------------------------------------------------------------------ codec
def encode(msg, iova: int = 0, size: int = 0, uaddr: int = 0, perm: int = 0, *,
           asid: int = 0, version: int = VHOST_IOTLB_MSG_V2) -> bytes:
    """Build a 72-byte ``vhost_msg_v2`` (or v1 with ``version=VHOST_IOTLB_MSG``).

    ``msg`` is a :class:`VhostMsg` (the other arguments must then be left out) or the
    inner type.  Unused bytes are zero.

    >>> b = encode(VHOST_IOTLB_INVALIDATE, 0x1000, 0x1000, asid=1)
    >>> b[:8].hex(), b[33]
    ('0200000001000000', 3)
    >>> encode(VhostMsg(VHOST_IOTLB_BATCH_BEGIN, version=VHOST_IOTLB_MSG))[:4].hex()
    '01000000'
    """
    if isinstance(msg, VhostMsg):
        if (iova, size, uaddr, perm, asid, version) != (0, 0, 0, 0, 0, VHOST_IOTLB_MSG_V2):
            raise TypeError("encode(VhostMsg) takes no other fields")
        return msg.encode()
    return VhostMsg(msg, iova, size, uaddr, perm, asid=asid, version=version).encode()


def _bytes_view(data):
    """``data`` as something with byte length and ``struct.unpack_from`` support."""
    if type(data) is bytes or type(data) is bytearray:
        return data
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}") from None
    if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view


def decode(data, *, asid_acked: bool, invalidate_size_zero: bool = True) -> VhostMsg:
    """Parse one write, exactly as ``vhost_chr_write_iter`` does.

    1. fewer than 4 bytes (the ``int type``) → EINVAL;
    2. outer type 1 (v1): skip the hole, asid 0; type 2 (v2): read ``asid`` only when
       IOTLB_ASID is acked (``asid_acked``), else skip it (a nonzero asid is silently
       ignored); any other outer type → EINVAL;
    3. fewer than 40 bytes in all → EINVAL; bytes past 40 are never read;
    4. ``size == 0`` with type UPDATE → EINVAL (other types may have 0).  With
       ``invalidate_size_zero=False`` INVALIDATE with size 0 is EINVAL too: the rule
       before v6.6's "vhost: Allow null msg.size on VHOST_IOTLB_INVALIDATE" (stable
       6.5.10, 6.1.61; :attr:`iotlb.kernels.KernelProfile.invalidate_size_zero`).

    Never trusts ``data``; every failure is :class:`IOTLBError` EINVAL.

    >>> decode(encode(VHOST_IOTLB_UPDATE, 0, 4096, 0, asid=3), asid_acked=False).asid
    0
    >>> decode(encode(VHOST_IOTLB_UPDATE, 0, 4096, 0, asid=3), asid_acked=True).asid
    3
    >>> decode(b"\\x02" + bytes(38), asid_acked=False)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [EINVAL] vhost_chr_write_iter: 39 bytes, a message needs at least 40
    >>> decode(encode(VHOST_IOTLB_INVALIDATE, 0x1000, 0), asid_acked=False).size
    0
    """
    data = _bytes_view(data)
    n = len(data)
    if n < 4:
        raise IOTLBError(_errno.EINVAL, f"vhost_chr_write_iter: {n} bytes, the message "
                         f"type needs 4")
    outer = int.from_bytes(data[:4], "little", signed=True)
    if outer != VHOST_IOTLB_MSG and outer != VHOST_IOTLB_MSG_V2:
        raise IOTLBError(_errno.EINVAL, f"vhost_chr_write_iter: unknown message type "
                         f"{outer}")
    if outer == VHOST_IOTLB_MSG_V2 and asid_acked and n < 8:
        raise IOTLBError(_errno.EINVAL, f"vhost_chr_write_iter: {n} bytes, the asid "
                         f"needs 8")
    if n < VHOST_MSG_MIN_WRITE:
        raise IOTLBError(_errno.EINVAL, f"vhost_chr_write_iter: {n} bytes, a message "
                         f"needs at least {VHOST_MSG_MIN_WRITE}")
    _, asid, iova, size, uaddr, perm, t = _HEAD.unpack_from(data)
    if size == 0 and (t == VHOST_IOTLB_UPDATE or (t == VHOST_IOTLB_INVALIDATE
                                                 and not invalidate_size_zero)):
        raise IOTLBError(_errno.EINVAL, f"vhost_chr_write_iter: {_TYPE_NAMES[t]} with "
                         f"size 0")
    if outer != VHOST_IOTLB_MSG_V2 or not asid_acked:
        asid = 0
    return tuple.__new__(VhostMsg, (t, iova, size, uaddr, perm, asid, outer))


# ------------------------------------------------------------------ streams
class StreamError(IOTLBError):
    """A bad record in a stream: errno EINVAL, with ``offset`` (byte offset of the
    record) and ``index`` (record number)."""

    def __init__(self, errno: int, message: str, *, offset: int, index: int) -> None:
        super().__init__(errno, message, index=index)
        self.offset = offset

    def __reduce__(self):
        return (_rebuild_stream_error, (self.errno, self.strerror, self.offset,
                                        self.index))


def _rebuild_stream_error(errno, message, offset, index):
    return StreamError(errno, message, offset=offset, index=index)


def iter_records(source, *, record_size: int = VHOST_MSG_SIZE,
                 chunk_records: int = 4096) -> Iterator[Tuple[int, bytes]]:
    """Yield ``(offset, record)`` for every whole record of a stream of concatenated
    records; ``source`` is bytes-like or a binary file object (read in chunks).

    A truncated trailing record raises :class:`StreamError` (after every whole record
    has been yielded) whose ``offset`` is where it starts.

    >>> blob = encode(VHOST_IOTLB_BATCH_BEGIN) + encode(VHOST_IOTLB_BATCH_END)
    >>> [off for off, _ in iter_records(blob)]
    [0, 72]
    >>> list(iter_records(blob + b"\\x02\\x00"))
    Traceback (most recent call last):
    ...
    iotlb.wire.StreamError: [EINVAL] truncated record at byte offset 144: 2 of 72 bytes
    """
    if record_size <= 0:
        raise ValueError("record_size must be positive")
    read = getattr(source, "read", None)
    offset = 0
    index = 0
    if read is None:
        data = _bytes_view(source)
        n = len(data)
        whole = n - n % record_size
        mv = memoryview(data)
        while offset < whole:
            yield offset, bytes(mv[offset:offset + record_size])
            offset += record_size
            index += 1
        tail = n - whole
    else:
        tail = 0
        pending = b""
        while True:
            chunk = read(record_size * chunk_records)
            if not chunk:
                break
            buf = pending + bytes(chunk) if pending else bytes(chunk)
            whole = len(buf) - len(buf) % record_size
            for pos in range(0, whole, record_size):
                yield offset, buf[pos:pos + record_size]
                offset += record_size
                index += 1
            pending = buf[whole:]
        tail = len(pending)
    if tail:
        raise StreamError(_errno.EINVAL, f"truncated record at byte offset {offset}: "
                          f"{tail} of {record_size} bytes", offset=offset, index=index)


def decode_stream(source, *, asid_acked: bool,
                  invalidate_size_zero: bool = True) -> Iterator[Tuple[int, VhostMsg]]:
    """Yield ``(offset, VhostMsg)`` for every 72-byte record of ``source``
    (``invalidate_size_zero`` as in :func:`decode`).

    A record that :func:`decode` rejects raises :class:`StreamError` with its offset
    and index (``__cause__`` is the decode error); a truncated trailing record too.

    >>> blob = encode(VHOST_IOTLB_UPDATE, 0, 4096, 0) + encode(VHOST_IOTLB_UPDATE)
    >>> it = decode_stream(blob, asid_acked=False)
    >>> next(it)[1].type
    2
    >>> next(it)
    Traceback (most recent call last):
    ...
    iotlb.wire.StreamError: [EINVAL] record 1 at byte offset 72: vhost_chr_write_iter: UPDATE with size 0
    """
    for index, (offset, rec) in enumerate(iter_records(source)):
        try:
            msg = decode(rec, asid_acked=asid_acked,
                         invalidate_size_zero=invalidate_size_zero)
        except IOTLBError as e:
            raise StreamError(e.errno, f"record {index} at byte offset {offset}: "
                              f"{e.strerror}", offset=offset, index=index) from e
        yield offset, msg


# ------------------------------------------------------------------ other uapi structs
def encode_iova_range(first: int, last: int) -> bytes:
    """``struct vhost_vdpa_iova_range { u64 first; u64 last; }`` (inclusive).

    >>> decode_iova_range(encode_iova_range(0x1000, U64_MAX)) == (0x1000, U64_MAX)
    True
    """
    return _IOVA_RANGE.pack(u64(first, "first"), u64(last, "last"))


def decode_iova_range(data) -> Tuple[int, int]:
    """``(first, last)`` from 16 bytes; shorter input is EFAULT (copy_to_user).

    >>> decode_iova_range(bytes(16))
    (0, 0)
    """
    data = _bytes_view(data)
    if len(data) < _IOVA_RANGE.size:
        raise IOTLBError(_errno.EFAULT, f"vhost_vdpa_iova_range needs 16 bytes, got "
                         f"{len(data)}")
    return _IOVA_RANGE.unpack_from(data)


class VringState(NamedTuple):
    """``struct vhost_vring_state { unsigned int index; unsigned int num; }``."""

    index: int
    num: int


def encode_vring_state(index: int, num: int) -> bytes:
    """Pack a ``vhost_vring_state`` (SET_GROUP_ASID: index = group, num = asid).

    >>> encode_vring_state(1, 2).hex()
    '0100000002000000'
    """
    return _VRING_STATE.pack(_uint(index, "index", 0xFFFFFFFF),
                             _uint(num, "num", 0xFFFFFFFF))


def decode_vring_state(data) -> VringState:
    """Unpack a ``vhost_vring_state``; shorter than 8 bytes is EFAULT.

    >>> decode_vring_state(encode_vring_state(2, 1))
    VringState(index=2, num=1)
    """
    data = _bytes_view(data)
    if len(data) < _VRING_STATE.size:
        raise IOTLBError(_errno.EFAULT, f"vhost_vring_state needs 8 bytes, got "
                         f"{len(data)}")
    return VringState(*_VRING_STATE.unpack_from(data))
