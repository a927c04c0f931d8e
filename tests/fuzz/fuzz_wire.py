#!/usr/bin/env python3
"""Fuzz target: the vhost_msg codec (``iotlb.wire``).

Contract checked:

* ``decode`` / ``decode_stream`` / ``iter_records`` / ``decode_iova_range`` /
  ``decode_vring_state`` on any bytes raise only :class:`iotlb.IOTLBError`
  (``StreamError`` for streams) -- never anything else;
* a decoded message re-encodes to the same fields (round trip), and the decoded
  fields are exactly the little-endian fields of the buffer;
* reading a stream from a file object (any chunk size) gives the same records as
  reading it from bytes;
* the constructors (``VhostMsg``, ``encode``, ``encode_iova_range``,
  ``encode_vring_state``, ``feature_names``) given any Python value raise only
  ``TypeError`` / ``ValueError`` / ``OverflowError`` for a bad one.

Input layout: byte 0 = mode bits, the rest drives the chosen checks.

    python tests/fuzz/fuzz_wire.py -max_total_time=600 tests/fuzz/corpus/wire
"""
from __future__ import annotations

import enum
import io
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fuzzlib import EDGES, U64, Reader, run_atheris  # noqa: E402

from iotlb import IOTLBError  # noqa: E402
from iotlb import wire  # noqa: E402

PROGRAMMING = (TypeError, ValueError, OverflowError)
#: FUZZ_STRICT=1: also fail on the known AttributeError of wire._uint/_int32 for an
#: argument without __index__ (tests/test_hardening.py::test_wire_constructors_reject_non_ints)
STRICT = os.environ.get("FUZZ_STRICT") == "1"


class _Flag(enum.IntFlag):
    A = 1
    B = 2


class _Index:
    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v


class _BadIndex:
    def __index__(self):
        return "not an int"


def _value(r: Reader):
    """A Python value for a constructor argument: mostly ints in and around every
    field's range, sometimes another type altogether."""
    k = r.u8() % 16
    if k <= 7:
        return r.pick(EDGES) if k & 1 else r.u8()
    if k == 8:
        return -r.u16() - 1
    if k == 9:
        return U64 + 1 + r.u16()
    if k == 10:
        return bool(r.u8() & 1)
    if k == 11:
        return _Flag(r.u8() & 3)
    if k == 12:
        return _Index(r.pick(EDGES))
    if k == 13:
        return r.pick((1.0, "1", b"\x01", None, [1], object(), 1j, _BadIndex()))
    if k == 14:
        return -(1 << 31) - r.u8()
    return r.u32()


def _check_decoded(msg, rec: bytes, acked: bool) -> None:
    outer, asid, iova, size, uaddr, perm, t = struct.unpack_from("<iIQQQBB", rec)
    assert msg.version == outer and outer in (1, 2), (msg, outer)
    assert (msg.type, msg.iova, msg.size, msg.uaddr, msg.perm) == (t, iova, size, uaddr,
                                                                    perm)
    assert msg.asid == (asid if (outer == 2 and acked) else 0)
    if t == wire.VHOST_IOTLB_UPDATE:     # a size-0 INVALIDATE is accepted since v6.6
        assert size != 0
    again = wire.decode(msg.encode(), asid_acked=acked)
    assert again == msg, (again, msg)
    assert wire.VhostMsg(*msg[:5], asid=msg.asid, version=msg.version) == msg
    repr(msg)


def _decode_one(payload: bytes, acked: bool) -> None:
    try:
        msg = wire.decode(payload, asid_acked=acked)
    except IOTLBError as e:
        assert e.errno == 22, e  # EINVAL only
        return
    assert len(payload) >= wire.VHOST_MSG_MIN_WRITE
    _check_decoded(msg, payload, acked)


def _streams(payload: bytes, acked: bool, chunk: int) -> None:
    whole = len(payload) // 72
    got = []
    try:
        for off, rec in wire.iter_records(payload):
            got.append((off, rec))
    except wire.StreamError as e:
        assert e.offset == whole * 72 and e.index == whole and e.errno == 22
        assert len(payload) % 72
    else:
        assert len(payload) % 72 == 0
    assert [o for o, _ in got] == [72 * i for i in range(whole)]
    got2 = []
    try:
        for item in wire.iter_records(io.BytesIO(payload), chunk_records=chunk):
            got2.append(item)
    except wire.StreamError as e:
        assert e.offset == whole * 72
    assert got2 == got
    n = 0
    try:
        for off, msg in wire.decode_stream(payload, asid_acked=acked):
            _check_decoded(msg, payload[off:off + 72], acked)
            n += 1
    except wire.StreamError as e:
        assert e.errno == 22 and e.offset == 72 * e.index and e.index >= n
        assert isinstance(e.__cause__, IOTLBError) or e.index == whole


def _other_structs(payload: bytes) -> None:
    for fn, need in ((wire.decode_iova_range, 16), (wire.decode_vring_state, 8)):
        try:
            out = fn(payload)
        except IOTLBError as e:
            assert len(payload) < need and e.errno == 14
        else:
            assert len(payload) >= need and len(out) == 2


def _constructors(r: Reader) -> None:
    calls = (
        lambda: wire.VhostMsg(_value(r), _value(r), _value(r), _value(r), _value(r),
                              asid=_value(r), version=_value(r)),
        lambda: wire.encode(_value(r), _value(r), _value(r), _value(r), _value(r),
                            asid=_value(r), version=_value(r)),
        lambda: wire.encode_iova_range(_value(r), _value(r)),
        lambda: wire.encode_vring_state(_value(r), _value(r)),
        lambda: wire.feature_names(_value(r)),
        lambda: wire.msg_type_name(_value(r)),
    )
    for _ in range(1 + r.u8() % 4):
        which = r.u8() % len(calls)
        try:
            out = calls[which]()
        except PROGRAMMING:
            continue
        except AttributeError as e:
            if STRICT or "__index__" not in str(e):
                raise
            continue
        if isinstance(out, wire.VhostMsg):
            enc = out.encode()
            assert len(enc) == 72
            dec = wire.decode(enc, asid_acked=True) if (
                out.version in (1, 2) and (out.size or out.type not in (2, 3))) else None
            assert dec is None or dec == out, (dec, out)
        elif isinstance(out, bytes):
            assert len(out) in (72, 16, 8)


def _views(payload: bytes, kind: int):
    """The same bytes as another buffer type (decode takes any bytes-like)."""
    if kind == 0:
        return payload
    if kind == 1:
        return bytearray(payload)
    if kind == 2:
        return memoryview(payload)
    if kind == 3 and len(payload) % 8 == 0:
        return memoryview(payload).cast("Q")
    if kind == 4:  # non-contiguous
        return memoryview(bytes(x for c in payload for x in (c, 0xA5)))[::2]
    return payload


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    acked = bool(mode & 1)
    payload = data[1:]
    if mode & 0x80:
        # constructors with arbitrary Python values
        _constructors(Reader(payload))
        return
    view = _views(payload, (mode >> 1) & 7)
    try:
        via_view = wire.decode(view, asid_acked=acked)
    except IOTLBError as e:
        assert e.errno == 22
        via_view = None
    try:
        via_bytes = wire.decode(payload, asid_acked=acked)
    except IOTLBError:
        via_bytes = None
    assert via_view == via_bytes, (via_view, via_bytes)
    _decode_one(payload, acked)
    if mode & 0x10:
        _streams(payload, acked, 1 + ((mode >> 5) & 3))
    if mode & 0x40:
        _other_structs(payload)


if __name__ == "__main__":
    run_atheris(TestOneInput)
