"""iotlb.trace: the operation schema, the two file formats, apply() on a real device."""
from __future__ import annotations

import errno
import json
import struct
from pathlib import Path

import pytest

import iotlb
from iotlb import trace, wire
from iotlb.trace import TraceError, parse_op, to_json

DATA = Path(__file__).resolve().parent / "data"
U64_MAX = 2**64 - 1


# ------------------------------------------------------------------ parse_op
@pytest.mark.parametrize("obj, want", [
    ({"op": "update", "iova": 4096, "size": "0x1000", "uaddr": "0x7f0000001000"},
     {"op": "update", "iova": 4096, "size": 4096, "uaddr": 0x7F0000001000, "perm": 3,
      "asid": 0}),
    ({"op": "update", "iova": "0", "size": 1, "uaddr": 0, "perm": "ro", "asid": 1},
     {"op": "update", "iova": 0, "size": 1, "uaddr": 0, "perm": 1, "asid": 1}),
    ({"op": "update", "iova": U64_MAX, "size": 1, "uaddr": 0, "perm": 255},
     {"op": "update", "iova": U64_MAX, "size": 1, "uaddr": 0, "perm": 255, "asid": 0}),
    ({"op": "invalidate", "iova": 0, "size": 1, "asid": 2**32 - 1},
     {"op": "invalidate", "iova": 0, "size": 1, "asid": 2**32 - 1}),
    ({"op": "batch_begin"}, {"op": "batch_begin", "asid": 0}),
    ({"op": "batch_end", "asid": 1, "version": 2},
     {"op": "batch_end", "asid": 1, "version": 2}),
    ({"op": "write", "hex": "02 00 00 00"}, {"op": "write", "data": b"\x02\0\0\0"}),
    ({"op": "write", "hex": ""}, {"op": "write", "data": b""}),
    ({"op": "set_backend_features", "features": ["MSG_V2", "IOTLB_BATCH", "PERSIST"]},
     {"op": "set_backend_features", "features": 0x106}),
    ({"op": "set_backend_features", "features": ["VHOST_BACKEND_F_SUSPEND"]},
     {"op": "set_backend_features", "features": 0x10}),
    ({"op": "set_backend_features", "features": "0x10e"},
     {"op": "set_backend_features", "features": 0x10E}),
    ({"op": "set_status", "status": ["ACK", "DRIVER", "FEATURES_OK"]},
     {"op": "set_status", "status": 11}),
    ({"op": "set_status", "status": 0}, {"op": "set_status", "status": 0}),
    ({"op": "set_group_asid", "group": 1, "asid": 1},
     {"op": "set_group_asid", "group": 1, "asid": 1}),
    ({"op": "get_vring_group", "vq": 2}, {"op": "get_vring_group", "vq": 2}),
    ({"op": "open", "comment": "hello"}, {"op": "open", "comment": "hello"}),
])
def test_parse_op_normalises(obj, want):
    assert parse_op(obj) == want


@pytest.mark.parametrize("obj, message", [
    ([1], "expected a JSON object"),
    ({"iova": 1}, 'missing "op"'),
    ({"op": 3}, 'missing "op"'),
    ({"op": "frob"}, "unknown op 'frob'"),
    ({"op": "update", "iova": 0, "size": 1}, "needs field 'uaddr'"),
    ({"op": "update", "iova": 0, "size": 1, "uaddr": 0, "prem": 3}, "no field 'prem'"),
    ({"op": "open", "asid": 0}, "no field 'asid'"),
    ({"op": "update", "iova": -1, "size": 1, "uaddr": 0}, "'iova' must be in 0..2**64-1"),
    ({"op": "update", "iova": 2**64, "size": 1, "uaddr": 0}, "'iova' must be in"),
    ({"op": "update", "iova": 0, "size": 1, "uaddr": 0, "perm": 256}, "'perm' must be in 0..255"),
    ({"op": "update", "iova": 0, "size": 1, "uaddr": 0, "perm": "rwx"},
     "'perm' must be an integer"),
    ({"op": "update", "iova": True, "size": 1, "uaddr": 0}, "'iova' must be an integer"),
    ({"op": "update", "iova": 1.5, "size": 1, "uaddr": 0}, "'iova' must be an integer"),
    ({"op": "update", "iova": None, "size": 1, "uaddr": 0}, "'iova' must be an integer"),
    ({"op": "update", "iova": "12z", "size": 1, "uaddr": 0}, "'iova' must be an integer"),
    ({"op": "invalidate", "iova": 0, "size": 1, "asid": 2**32}, "'asid' must be in 0..2**32-1"),
    ({"op": "set_status", "status": 256}, "'status' must be in 0..255"),
    ({"op": "set_status", "status": ["BOGUS"]}, "unknown name 'BOGUS'"),
    ({"op": "set_backend_features", "features": ["NOPE"]}, "unknown name 'NOPE'"),
    ({"op": "set_backend_features", "features": -1}, "'features' must be in"),
    ({"op": "set_group_asid", "group": 0}, "needs field 'asid'"),
    ({"op": "write", "hex": "zz"}, "not valid hex"),
    ({"op": "write", "hex": 12}, "must be a hex string"),
    ({"op": "batch_begin", "version": 3}, "must be 1 (vhost_msg) or 2"),
    ({"op": "batch_begin", "version": 1, "asid": 1}, "has no asid"),
    ({"op": "open", "comment": 5}, "'comment' must be a string"),
])
def test_parse_op_rejects(obj, message):
    with pytest.raises(ValueError) as info:
        parse_op(obj)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_op_round_trips_through_json():
    ops = [
        {"op": "update", "iova": 0x1000, "size": 0x2000, "uaddr": 0x7F0000001000,
         "perm": 1, "asid": 1},
        {"op": "update", "iova": 0, "size": 1, "uaddr": 5, "perm": 200, "asid": 0,
         "version": 1},
        {"op": "invalidate", "iova": U64_MAX, "size": U64_MAX, "asid": 0},
        {"op": "batch_begin", "asid": 0}, {"op": "batch_end", "asid": 1},
        {"op": "write", "data": bytes(range(40))},
        {"op": "set_backend_features", "features": 0x11E},
        {"op": "set_status", "status": 15}, {"op": "set_group_asid", "group": 1, "asid": 1},
        {"op": "get_vring_group", "vq": 2},
        {"op": "mmap", "uaddr": 0x100000000000, "size": 0x4000, "kind": "memfd",
         "pa": [(0, 0x5000, 0x1000), (0x1000, 0x9000, 0x3000)]},
        {"op": "mmap", "uaddr": 0x100000010000, "size": 0x1000, "kind": "anon", "pa": None},
        {"op": "munmap", "uaddr": 0x100000000000, "size": 0x1000},
        {"op": "memlock", "pages": 2048}, {"op": "memlock", "pages": None},
        {"op": "meta", "rules": ["§2.6"], "recorded": None},
        {"op": "meta", "rules": None, "recorded": {"release": "6.12.118+deb13-amd64"}},
        {"op": "get_status", "expect": {"ret": 0, "errno": None, "value": 3, "vmpin": 0}},
        {"op": "update", "iova": 0, "size": 0x1000, "uaddr": 0x100000000000, "perm": 3,
         "asid": 0, "expect": {"errno": "EFAULT", "handler": "ENOSPC", "parent": []}},
    ] + [{"op": name} for name in ("open", "release", "set_owner", "get_backend_features",
                                   "get_status", "suspend", "resume", "get_iova_range",
                                   "get_as_num", "get_group_num", "get_vqs_count")]
    assert {op["op"] for op in ops} == set(trace.OPS)
    for op in ops:
        line = to_json(op)
        assert "\n" not in line
        assert parse_op(json.loads(line)) == op


# ------------------------------------------------------------------ encoding
def test_encode_op_layout_is_vhost_msg_v2():
    """kernel-semantics §2.2: type u32 @0, asid u32 @4, iova @8, size @16, uaddr @24,
    perm u8 @32, iotlb.type u8 @33, 72 bytes, little endian."""
    data = trace.encode_op({"op": "update", "iova": 0x1122, "size": 0x3344,
                            "uaddr": 0x5566, "perm": 1, "asid": 7})
    assert len(data) == 72
    assert struct.unpack_from("<IIQQQBB", data) == (2, 7, 0x1122, 0x3344, 0x5566, 1, 2)
    assert data[34:] == bytes(38)
    inv = trace.encode_op({"op": "invalidate", "iova": 1, "size": 2, "asid": 0})
    assert inv[33] == 3
    assert trace.encode_op({"op": "batch_begin", "asid": 1})[33] == 5
    assert trace.encode_op({"op": "batch_end", "asid": 1})[33] == 6
    v1 = trace.encode_op({"op": "batch_end", "asid": 0, "version": 1})
    assert struct.unpack_from("<I", v1)[0] == 1
    assert trace.encode_op({"op": "write", "data": b"\x01\x02"}) == b"\x01\x02"


def test_describe_is_one_line():
    for line in (DATA / "hand_written.jsonl").read_text().splitlines():
        if line.strip():
            text = trace.describe(parse_op(json.loads(line)))
            assert text and "\n" not in text


# ------------------------------------------------------------------ files
def test_detect_format(tmp_path):
    assert trace.detect_format(str(DATA / "boot_vdpa_sim.jsonl")) == "jsonl"
    assert trace.detect_format(str(DATA / "messages.bin")) == "binary"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert trace.detect_format(str(empty)) == "jsonl"
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"op": "open"}\n')
    assert trace.detect_format(str(bom)) == "jsonl"
    assert [e.op for e in trace.read_trace(str(bom))] == [{"op": "open"}]
    v1 = tmp_path / "v1.bin"
    v1.write_bytes(wire.encode(wire.VHOST_IOTLB_BATCH_BEGIN, version=wire.VHOST_IOTLB_MSG))
    assert trace.detect_format(str(v1)) == "binary"
    junk = tmp_path / "junk"
    junk.write_bytes(b"GIF89a....")
    with pytest.raises(TraceError) as info:
        trace.detect_format(str(junk))
    assert str(info.value).startswith(f"{junk}: unknown trace format")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TraceError) as info:
        trace.detect_format(str(tmp_path / "nope.jsonl"))
    assert "No such file" in str(info.value) and "nope.jsonl" in str(info.value)
    with pytest.raises(TraceError, match="is a directory"):
        list(trace.read_trace(str(tmp_path), "jsonl"))


def test_read_jsonl_line_numbers_and_errors():
    entries = list(trace.read_trace(str(DATA / "bad_field.jsonl")))
    assert [e.where.line for e in entries] == [1, 2, 3, 4]
    assert [e.error is None for e in entries] == [True, True, False, True]
    err = entries[2].error
    assert err.line == 3 and "prem" in str(err)
    assert str(err).startswith(f"{DATA / 'bad_field.jsonl'}:3: ")
    entries = list(trace.read_trace(str(DATA / "invalid_json.jsonl")))
    # the blank line 3 is skipped, numbering is by file line
    assert [e.where.line for e in entries] == [1, 2, 4]
    assert "invalid JSON" in str(entries[1].error)
    entries = list(trace.read_trace(str(DATA / "out_of_range.jsonl")))
    assert [str(e.where) for e in entries if e.error] == ["line 3", "line 4"]


def test_read_jsonl_rejects_binary_bytes(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b'{"op": "open"}\n\xff\xfe\n')
    entries = list(trace.read_trace(str(p), "jsonl"))
    assert entries[1].error is not None and "not UTF-8" in str(entries[1].error)


def test_read_binary_records_and_truncation():
    entries = list(trace.read_trace(str(DATA / "messages.bin")))
    assert [e.where.offset for e in entries] == [0, 72, 144, 216, 288, 360]
    assert all(e.op["op"] == "write" and len(e.op["data"]) == 72 for e in entries)
    entries = list(trace.read_trace(str(DATA / "truncated.bin")))
    assert [e.error is None for e in entries] == [True, True, False]
    err = entries[-1].error
    assert err.offset == 144
    assert str(err) == (f"{DATA / 'truncated.bin'}: byte offset 144: "
                        "truncated record (40 of 72 bytes)")


def test_write_trace_both_formats(tmp_path):
    ops = [parse_op(json.loads(line)) for line in
           (DATA / "boot_vdpa_sim.jsonl").read_text().splitlines()]
    out = tmp_path / "copy.jsonl"
    assert trace.write_trace(str(out), ops) == 0
    assert [e.op for e in trace.read_trace(str(out))] == ops
    binary = tmp_path / "copy.bin"
    msgs = [op for op in ops if op["op"] in trace.MESSAGE_OPS]
    assert trace.write_trace(str(binary), ops) == len(ops) - len(msgs)
    assert binary.stat().st_size == 72 * len(msgs)
    back = [e.op["data"] for e in trace.read_trace(str(binary))]
    assert back == [trace.encode_op(op) for op in msgs]


def test_count_ops():
    assert trace.count_ops(str(DATA / "invalid_json.jsonl"), "jsonl") == 3
    assert trace.count_ops(str(DATA / "messages.bin"), "binary") == 6


# ------------------------------------------------------------------ apply
def test_apply_on_a_device_sees_what_userspace_sees():
    from iotlb.vdpa import VhostVdpa

    dev = VhostVdpa(iotlb.load_backend("vdpa_sim"))
    upd = {"op": "update", "iova": 0x1000, "size": 0x1000, "uaddr": 0x7F0000001000,
           "perm": 3, "asid": 0}
    trace.apply(dev, {"op": "open"})
    with pytest.raises(iotlb.IOTLBError) as info:      # before SET_OWNER
        trace.apply(dev, upd)
    assert info.value.errno == errno.EFAULT and info.value.__cause__.errno == errno.EPERM
    trace.apply(dev, {"op": "set_owner"})
    offered = trace.apply(dev, {"op": "get_backend_features"})
    assert offered & wire.BackendFeature.IOTLB_PERSIST
    trace.apply(dev, {"op": "set_backend_features", "features": 0x0E})
    assert trace.apply(dev, upd) == 72
    with pytest.raises(iotlb.IOTLBError) as info:
        trace.apply(dev, upd)
    assert info.value.errno == errno.EFAULT and info.value.__cause__.errno == errno.EEXIST
    with pytest.raises(iotlb.IOTLBError) as info:
        trace.apply(dev, {"op": "write", "data": b"\x02\0\0\0"})
    assert info.value.errno == errno.EINVAL
    assert trace.apply(dev, {"op": "get_vring_group", "vq": 2}) == 1
    trace.apply(dev, {"op": "set_group_asid", "group": 1, "asid": 1})
    trace.apply(dev, {"op": "set_status", "status": 3})
    assert trace.apply(dev, {"op": "get_status"}) == 3
    assert len(dev.vhost_iotlb(0)) == 1
    trace.apply(dev, {"op": "release"})
    assert dev.vhost_iotlb(0) is None


def test_progress_disabled_is_silent(capsys):
    p = trace.Progress(100, enabled=False)
    for _ in range(100):
        p.update()
    p.close()
    assert capsys.readouterr() == ("", "")
    assert p.done == 100
