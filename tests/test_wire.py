"""iotlb.wire: struct vhost_msg / vhost_msg_v2 codec, constants, stream decoding.

Each parsing test names the kernel function whose behaviour it pins down
(``vhost_chr_write_iter`` in drivers/vhost/vhost.c; layouts from
include/uapi/linux/vhost_types.h).
"""
import errno
import io
import pickle
import struct

import pytest
from hypothesis import given, settings, strategies as st

from iotlb import IOTLBError, U64_MAX
from iotlb import wire
from iotlb.wire import (
    VHOST_IOTLB_ACCESS_FAIL, VHOST_IOTLB_BATCH_BEGIN, VHOST_IOTLB_BATCH_END,
    VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_MISS, VHOST_IOTLB_MSG, VHOST_IOTLB_MSG_V2,
    VHOST_IOTLB_UPDATE, BackendFeature, StreamError, VhostMsg, decode, decode_stream,
    encode, iter_records)


def raw(outer=2, asid=0, iova=0, size=0, uaddr=0, perm=0, t=0, length=72, fill=0):
    """Hand-built bytes, independent of wire.encode (layout of §2.2)."""
    b = bytearray([fill]) * max(length, 72)
    struct.pack_into("<i", b, 0, outer)
    struct.pack_into("<I", b, 4, asid)
    struct.pack_into("<QQQ", b, 8, iova, size, uaddr)
    b[32] = perm
    b[33] = t
    return bytes(b[:length])


# ----------------------------------------------------------------------- constants
def test_constants_match_vhost_types_h():
    """include/uapi/linux/vhost_types.h values."""
    assert (VHOST_IOTLB_MSG, VHOST_IOTLB_MSG_V2) == (1, 2)
    assert [VHOST_IOTLB_MISS, VHOST_IOTLB_UPDATE, VHOST_IOTLB_INVALIDATE,
            VHOST_IOTLB_ACCESS_FAIL, VHOST_IOTLB_BATCH_BEGIN,
            VHOST_IOTLB_BATCH_END] == [1, 2, 3, 4, 5, 6]
    assert (wire.VHOST_ACCESS_RO, wire.VHOST_ACCESS_WO, wire.VHOST_ACCESS_RW) == (1, 2, 3)
    assert (wire.VHOST_MAP_RO, wire.VHOST_MAP_WO, wire.VHOST_MAP_RW) == (1, 2, 3)
    bits = [wire.VHOST_BACKEND_F_IOTLB_MSG_V2, wire.VHOST_BACKEND_F_IOTLB_BATCH,
            wire.VHOST_BACKEND_F_IOTLB_ASID, wire.VHOST_BACKEND_F_SUSPEND,
            wire.VHOST_BACKEND_F_RESUME, wire.VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK,
            wire.VHOST_BACKEND_F_DESC_ASID, wire.VHOST_BACKEND_F_IOTLB_PERSIST]
    assert bits == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [int(f) for f in BackendFeature] == [1 << b for b in bits]
    assert wire.VHOST_VDPA_BACKEND_FEATURES == 0xE
    assert wire.KNOWN_BACKEND_FEATURES == 0x1FE
    assert (wire.VHOST_F_LOG_ALL, wire.VHOST_NET_F_VIRTIO_NET_HDR) == (26, 27)
    assert wire.VHOST_MSG_SIZE == 72 and wire.VHOST_MSG_MIN_WRITE == 40


def test_feature_names():
    assert wire.feature_names(0) == []
    assert wire.feature_names(0x1FE)[-1] == "IOTLB_PERSIST"
    assert wire.feature_names(1) == ["bit 0"]
    assert wire.msg_type_name(VHOST_IOTLB_UPDATE) == "UPDATE"


# ----------------------------------------------------------------------- layout
def test_v2_layout_offsets():
    """struct vhost_msg_v2: type@0 u32, asid@4 u32, iotlb@8 (iova, size, uaddr u64,
    perm u8 @32, type u8 @33), 72 bytes, unused bytes zero."""
    b = encode(VHOST_IOTLB_UPDATE, 0x1122334455667788, 0x1000, 0xAABBCCDD00112233,
               wire.VHOST_ACCESS_WO, asid=0x01020304)
    assert len(b) == 72
    assert b == raw(2, 0x01020304, 0x1122334455667788, 0x1000, 0xAABBCCDD00112233, 2, 2)
    assert b[34:] == bytes(38)


def test_v1_layout_has_hole():
    """struct vhost_msg: int type, 4-byte hole, same union at 8."""
    b = encode(VHOST_IOTLB_INVALIDATE, 5, 6, 7, 1, version=VHOST_IOTLB_MSG)
    assert b == raw(1, 0, 5, 6, 7, 1, 3)
    with pytest.raises(ValueError):
        VhostMsg(VHOST_IOTLB_UPDATE, asid=1, version=VHOST_IOTLB_MSG)


def test_encode_accepts_record_or_fields():
    m = VhostMsg(VHOST_IOTLB_UPDATE, 1, 2, 3, 3, asid=4)
    assert encode(m) == m.encode() == bytes(m) == encode(VHOST_IOTLB_UPDATE, 1, 2, 3, 3,
                                                           asid=4)
    with pytest.raises(TypeError):
        encode(m, 1)


def test_garbage_fields_can_be_encoded():
    """Unknown outer/inner types and perms are representable (to test the parser)."""
    b = encode(200, perm=0xFF, version=3)
    assert b[:4] == b"\x03\0\0\0" and b[32] == 0xFF and b[33] == 200
    assert encode(1, version=-1)[:4] == b"\xff\xff\xff\xff"


# ----------------------------------------------------------------------- record
def test_record_is_immutable_with_readable_repr():
    m = VhostMsg(VHOST_IOTLB_UPDATE, 0x1000, 0x2000, 0x3000, 3, asid=1)
    with pytest.raises(AttributeError):
        m.iova = 5
    assert repr(m) == ("VhostMsg(v2, UPDATE, asid=1, iova=0x1000, size=0x2000, "
                       "uaddr=0x3000, perm=RW)")
    assert "type=9" in repr(VhostMsg(9)) and "outer=7" in repr(VhostMsg(1, version=7))
    assert m._asdict()["uaddr"] == 0x3000
    assert m._replace(iova=0).iova == 0
    assert pickle.loads(pickle.dumps(m)) == m
    assert hash(m) == hash(VhostMsg(VHOST_IOTLB_UPDATE, 0x1000, 0x2000, 0x3000, 3, asid=1))


@pytest.mark.parametrize("kw,exc", [
    (dict(type=256), OverflowError), (dict(type=-1), OverflowError),
    (dict(type=2, iova=-1), OverflowError), (dict(type=2, size=2**64), OverflowError),
    (dict(type=2, perm=256), OverflowError), (dict(type=2, asid=2**32), OverflowError),
    (dict(type=2.0), TypeError), (dict(type=2, iova="0"), TypeError),
    (dict(type=2, version=2**32), OverflowError),
])
def test_record_validates_fields(kw, exc):
    t = kw.pop("type")
    with pytest.raises(exc):
        VhostMsg(t, **kw)


# ----------------------------------------------------------------------- decode
@pytest.mark.parametrize("n", [0, 1, 3])
def test_write_iter_short_type_einval(n):
    """vhost_chr_write_iter: fewer than 4 bytes for the type → EINVAL."""
    with pytest.raises(IOTLBError) as ei:
        decode(raw(length=72)[:n], asid_acked=False)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("acked", [False, True])
def test_write_iter_39_bytes_einval(acked):
    """vhost_chr_write_iter: 39-byte write → EINVAL (32-byte iotlb copy is short)."""
    with pytest.raises(IOTLBError) as ei:
        decode(raw(2, 0, 0, 4096, 0, 3, VHOST_IOTLB_UPDATE, length=39), asid_acked=acked)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("outer", [0, 3, -1, 0x7FFFFFFF, 0x100])
def test_write_iter_unknown_outer_type_einval(outer):
    """vhost_chr_write_iter: outer type other than 1/2 → EINVAL (e.g. type 3)."""
    with pytest.raises(IOTLBError) as ei:
        decode(raw(outer, 0, 0, 4096, 0, 3, VHOST_IOTLB_UPDATE), asid_acked=True)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("outer", [1, 2])
def test_write_iter_40_bytes_accepted(outer):
    """vhost_chr_write_iter: 40 bytes is the minimum; bytes past 40 are never read."""
    m = decode(raw(outer, 0, 0x1000, 0x1000, 0x5000, 3, VHOST_IOTLB_UPDATE, length=40),
               asid_acked=False)
    assert (m.type, m.iova, m.size, m.uaddr, m.perm, m.version) == (2, 0x1000, 0x1000,
                                                                    0x5000, 3, outer)
    longer = raw(outer, 0, 0x1000, 0x1000, 0x5000, 3, VHOST_IOTLB_UPDATE, length=200,
                 fill=0xEE)
    assert decode(longer, asid_acked=False) == m


def test_write_iter_size0_update_einval():
    """vhost_chr_write_iter: size 0 rejected for UPDATE only."""
    with pytest.raises(IOTLBError) as ei:
        decode(raw(2, 0, 0x1000, 0, 0, 3, VHOST_IOTLB_UPDATE), asid_acked=False)
    assert ei.value.errno == errno.EINVAL


def test_write_iter_size0_invalidate_accepted_since_v6_6():
    """vhost_chr_write_iter: a size-0 INVALIDATE passes the parse since v6.6 ("vhost:
    Allow null msg.size on VHOST_IOTLB_INVALIDATE"); invalidate_size_zero=False is
    the rule before it."""
    rec = raw(2, 0, 0x1000, 0, 0, 3, VHOST_IOTLB_INVALIDATE)
    assert decode(rec, asid_acked=False).size == 0
    with pytest.raises(IOTLBError) as ei:
        decode(rec, asid_acked=False, invalidate_size_zero=False)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(IOTLBError):
        list(decode_stream(rec, asid_acked=False, invalidate_size_zero=False))


@pytest.mark.parametrize("t", [VHOST_IOTLB_MISS, VHOST_IOTLB_ACCESS_FAIL,
                               VHOST_IOTLB_BATCH_BEGIN, VHOST_IOTLB_BATCH_END, 0, 7, 255])
def test_write_iter_size0_other_types_accepted(t):
    """vhost_chr_write_iter: size 0 is fine for every other inner type (batch hints
    carry no range; unknown types fail later, in the handler)."""
    assert decode(raw(2, 0, 0, 0, 0, 0, t), asid_acked=False).type == t


def test_write_iter_v2_asid_ignored_unless_acked():
    """vhost_chr_write_iter: a v2 asid is read only when IOTLB_ASID is acked."""
    b = raw(2, 7, 0, 4096, 0, 3, VHOST_IOTLB_UPDATE)
    assert decode(b, asid_acked=False).asid == 0
    assert decode(b, asid_acked=True).asid == 7


def test_write_iter_v1_hole_never_an_asid():
    """vhost_chr_write_iter: v1 skips bytes 4..7 (a hole), asid is 0 even if acked."""
    b = raw(1, 0xFFFFFFFF, 0, 4096, 0, 3, VHOST_IOTLB_UPDATE)
    m = decode(b, asid_acked=True)
    assert m.asid == 0 and m.version == VHOST_IOTLB_MSG


def test_decode_accepts_buffers():
    b = encode(VHOST_IOTLB_UPDATE, 0, 4096, 0, 3)
    for data in (b, bytearray(b), memoryview(b), memoryview(bytearray(b))):
        assert decode(data, asid_acked=False).size == 4096
    import array
    arr = array.array("Q", b)  # 9 uint64 = 72 bytes, non-'B' format
    assert decode(arr, asid_acked=False).size == 4096
    with pytest.raises(TypeError):
        decode("not bytes", asid_acked=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100), st.booleans())
def test_decode_never_trusts_input(data, acked):
    """Any byte string either decodes or raises IOTLBError EINVAL -- nothing else."""
    try:
        m = decode(data, asid_acked=acked)
    except IOTLBError as e:
        assert e.errno == errno.EINVAL
        return
    assert len(data) >= 40
    assert m.encode()[8:34] == data[8:34]
    assert m.version in (1, 2)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(0, U64_MAX), st.integers(1, U64_MAX),
       st.integers(0, U64_MAX), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_encode_decode_roundtrip(t, iova, size, uaddr, perm, asid):
    m = VhostMsg(t, iova, size, uaddr, perm, asid=asid)
    assert decode(encode(m), asid_acked=True) == m
    assert decode(encode(m), asid_acked=False) == m._replace(asid=0)


# ----------------------------------------------------------------------- streams
def _stream(n):
    return b"".join(encode(VHOST_IOTLB_UPDATE, i << 12, 4096, i << 12, 3)
                    for i in range(n))


@pytest.mark.parametrize("as_file", [False, True])
def test_iter_records_whole_stream(as_file):
    blob = _stream(10)
    src = io.BytesIO(blob) if as_file else blob
    recs = list(iter_records(src, chunk_records=3))
    assert [o for o, _ in recs] == [72 * i for i in range(10)]
    assert b"".join(r for _, r in recs) == blob


@pytest.mark.parametrize("as_file", [False, True])
@pytest.mark.parametrize("tail", [1, 39, 40, 71])
def test_stream_reports_offset_of_truncated_trailing_record(as_file, tail):
    blob = _stream(5) + encode(VHOST_IOTLB_BATCH_END)[:tail]
    src = io.BytesIO(blob) if as_file else bytearray(blob)
    seen = []
    with pytest.raises(StreamError) as ei:
        for off, msg in decode_stream(src, asid_acked=False):
            seen.append(off)
    assert seen == [0, 72, 144, 216, 288]
    assert ei.value.offset == 360 and ei.value.index == 5
    assert ei.value.errno == errno.EINVAL
    assert "360" in str(ei.value)


def test_decode_stream_reports_bad_record_offset_and_cause():
    blob = _stream(2) + raw(3) + _stream(1)
    it = decode_stream(blob, asid_acked=False)
    assert next(it)[0] == 0 and next(it)[0] == 72
    with pytest.raises(StreamError) as ei:
        next(it)
    assert (ei.value.offset, ei.value.index) == (144, 2)
    assert isinstance(ei.value.__cause__, IOTLBError)
    e2 = pickle.loads(pickle.dumps(ei.value))
    assert (e2.offset, e2.index, e2.errno) == (144, 2, errno.EINVAL)


def test_empty_stream():
    assert list(decode_stream(b"", asid_acked=False)) == []
    assert list(iter_records(io.BytesIO(b""))) == []


def test_stream_honours_asid_ack():
    blob = encode(VHOST_IOTLB_BATCH_BEGIN, asid=1)
    assert next(decode_stream(blob, asid_acked=True))[1].asid == 1
    assert next(decode_stream(blob, asid_acked=False))[1].asid == 0


# ----------------------------------------------------------------------- other structs
def test_iova_range_and_vring_state():
    assert wire.encode_iova_range(1, U64_MAX) == struct.pack("<QQ", 1, U64_MAX)
    assert wire.decode_iova_range(struct.pack("<QQ", 5, 9)) == (5, 9)
    assert wire.encode_vring_state(3, 1) == struct.pack("<II", 3, 1)
    s = wire.decode_vring_state(struct.pack("<II", 2, 0))
    assert (s.index, s.num) == (2, 0)
    for bad in (lambda: wire.decode_iova_range(b"\0" * 15),
                lambda: wire.decode_vring_state(b"\0" * 7)):
        with pytest.raises(IOTLBError) as ei:
            bad()
        assert ei.value.errno == errno.EFAULT
    with pytest.raises(OverflowError):
        wire.encode_vring_state(2**32, 0)
