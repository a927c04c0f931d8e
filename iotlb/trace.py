"""Traces: what userspace sends to a vhost-vdpa device, recorded and replayed.

A trace is a sequence of *operations*.  An operation is a plain ``dict`` with an
``"op"`` key and integer fields, exactly what :func:`apply` executes on an
:class:`iotlb.vdpa.VhostVdpa`:

========================  ==================================================  ======
``op``                    fields (defaults)                                   kind
========================  ==================================================  ======
``update``                ``iova size uaddr`` ``perm`` (RW) ``asid`` (0)       write
``invalidate``            ``iova size`` ``asid`` (0)                           write
``batch_begin``           ``asid`` (0)                                         write
``batch_end``             ``asid`` (0)                                         write
``write``                 ``hex`` (the raw bytes written, any length)          write
``open`` ``release``      --                                                   ioctl
``set_owner``             --                                                   ioctl
``get_backend_features``  --                                                   ioctl
``set_backend_features``  ``features`` (a mask, or a list of feature names)   ioctl
``set_status``            ``status`` (a u8, or a list of status-bit names)     ioctl
``get_status``            --                                                   ioctl
``set_group_asid``        ``group asid``                                       ioctl
``get_vring_group``       ``vq``                                               ioctl
``suspend`` ``resume``    --                                                   ioctl
``get_iova_range``        -- (value ``[first, last]``)                         ioctl
``get_as_num``            --                                                   ioctl
``get_group_num``         --                                                   ioctl
``get_vqs_count``         --                                                   ioctl
``mmap``                  ``uaddr size`` ``kind`` (memfd) ``pa`` (none)        memory
``munmap``                ``uaddr size``                                       memory
``memlock``               ``pages`` (a count or ``"unlimited"``)               memory
``meta``                  ``rules`` (strings) ``recorded`` (an object)         --
========================  ==================================================  ======

The four message operations may also carry ``"version": 1`` (a v1 ``struct
vhost_msg``, which has no asid); every message is encoded with :mod:`iotlb.wire` and
sent through ``write()``, so a replay sees what userspace sees (a handler error is
EFAULT, its ``__cause__`` the handler's errno).  Any operation may carry a free-text
``"comment"``, and ``"inferred": true`` when it was not seen in the log it was
imported from but filled in from the VMM's known sequence (:mod:`iotlb.importer`).

User memory: ``mmap`` declares real memory of the owner at ``uaddr`` -- ``kind``
``"memfd"`` (shared memfd memory, as QEMU's memory-backend-memfd; the default) or
``"anon"`` (private anonymous) -- and ``pa``, when present, its physical placement as
``[offset, pa, length]`` runs (``iotlb conform --record`` writes it from
``/proc/self/pagemap``, so that a replay splits an UPDATE into the same physically
contiguous runs as the kernel did).  The first ``mmap`` makes memory strict: only
declared memory exists.  Without any, the model's memory is one implicit shared
mapping.  ``memlock`` sets ``RLIMIT_MEMLOCK`` in pages.  ``meta`` does nothing: a
trace's first line names the rules it checks there; a trace recorded from a real
device says in ``recorded`` where (kernel release, model profile, backend and options).

Expectations: any operation may carry ``"expect"``, what a real kernel answered (see
:mod:`iotlb.expect`): ``ret``, ``errno`` (a name, or null), ``value``, ``vmpin``
(pinned pages after the op), ``handler`` (the errno of the message handler, 0, or
null when the message never reached it) and ``parent`` (the parent ops it caused).

Two file formats:

* **JSON Lines** (``.jsonl``): one operation per line, numbers as JSON integers or
  strings (``"0x1000"``), ``perm`` also as ``"RO"``/``"WO"``/``"RW"``.  Blank lines
  are ignored.
* **binary**: a raw stream of 72-byte ``vhost_msg`` / ``vhost_msg_v2`` records, each
  replayed as one ``write()`` (ioctls cannot be represented; a replay of a binary
  trace opens the device and acks the backend features itself).

Errors in a trace file are :class:`TraceError` (a ``ValueError``) naming the file and
the line (JSON Lines) or the byte offset (binary).

>>> op = parse_op({"op": "update", "iova": "0x1000", "size": 4096,
...                "uaddr": "0x7f0000001000", "perm": "RO"})
>>> op == {"op": "update", "iova": 4096, "size": 4096, "uaddr": 0x7f0000001000,
...        "perm": 1, "asid": 0}
True
>>> print(to_json(op))
{"op": "update", "iova": "0x1000", "size": "0x1000", "uaddr": "0x7f0000001000", ...}
>>> len(encode_op(op))
72
>>> parse_op({"op": "update", "iova": -1, "size": 1, "uaddr": 0})
Traceback (most recent call last):
...
ValueError: field 'iova' must be in 0..2**64-1, got -1
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

from . import wire

__all__ = [
    "TraceError", "Location", "Entry", "OPS", "MESSAGE_OPS", "IOCTL_OPS", "MEMORY_OPS",
    "MEMORY_KINDS",
    "FEATURE_NAMES", "STATUS_BITS", "parse_op", "to_json", "encode_op",
    "describe", "apply", "apply_memory", "detect_format", "read_trace", "count_ops", "write_trace",
    "truncated_record",
    "Progress",
]

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1

#: virtio device status bits (``include/uapi/linux/virtio_config.h``).
STATUS_BITS = {"ACKNOWLEDGE": 1, "DRIVER": 2, "DRIVER_OK": 4, "FEATURES_OK": 8,
               "NEEDS_RESET": 64, "FAILED": 128}
_STATUS_ALIASES = {"ACK": "ACKNOWLEDGE"}

#: backend feature names accepted in ``set_backend_features`` (with or without the
#: ``IOTLB_`` prefix, or ``VHOST_BACKEND_F_``).
FEATURE_NAMES = {f.name: int(f) for f in wire.BackendFeature}
for _f in list(FEATURE_NAMES):
    if _f.startswith("IOTLB_"):
        FEATURE_NAMES[_f[6:]] = FEATURE_NAMES[_f]
del _f

_PERM_NAMES = {"NONE": 0, "RO": 1, "WO": 2, "RW": 3}
_PERM_TEXT = {v: k for k, v in _PERM_NAMES.items()}

_MSG_TYPE = {"update": wire.VHOST_IOTLB_UPDATE, "invalidate": wire.VHOST_IOTLB_INVALIDATE,
             "batch_begin": wire.VHOST_IOTLB_BATCH_BEGIN,
             "batch_end": wire.VHOST_IOTLB_BATCH_END}

# field kinds: (top, parser name)
_U64, _U32, _U8, _PERM, _FEAT, _STATUS, _HEX, _VER = (
    "u64", "u32", "u8", "perm", "features", "status", "hex", "version")
_KIND, _PLACE, _PAGES, _RULES, _OBJ = "kind", "placement", "pages", "rules", "object"

#: ``mmap`` kinds: shared memfd memory (QEMU's memory-backend-memfd) or private
#: anonymous memory.
MEMORY_KINDS = ("memfd", "anon")

#: ``op -> (required fields, {optional field: default})``.
OPS: Dict[str, tuple] = {
    "update": ({"iova": _U64, "size": _U64, "uaddr": _U64},
               {"perm": (_PERM, 3), "asid": (_U32, 0), "version": (_VER, 2)}),
    "invalidate": ({"iova": _U64, "size": _U64},
                   {"asid": (_U32, 0), "version": (_VER, 2)}),
    "batch_begin": ({}, {"asid": (_U32, 0), "version": (_VER, 2)}),
    "batch_end": ({}, {"asid": (_U32, 0), "version": (_VER, 2)}),
    "write": ({"hex": _HEX}, {}),
    "open": ({}, {}),
    "release": ({}, {}),
    "set_owner": ({}, {}),
    "get_backend_features": ({}, {}),
    "set_backend_features": ({"features": _FEAT}, {}),
    "set_status": ({"status": _STATUS}, {}),
    "get_status": ({}, {}),
    "set_group_asid": ({"group": _U32, "asid": _U32}, {}),
    "get_vring_group": ({"vq": _U32}, {}),
    "suspend": ({}, {}),
    "resume": ({}, {}),
    "get_iova_range": ({}, {}),
    "get_as_num": ({}, {}),
    "get_group_num": ({}, {}),
    "get_vqs_count": ({}, {}),
    "mmap": ({"uaddr": _U64, "size": _U64}, {"kind": (_KIND, "memfd"), "pa": (_PLACE, None)}),
    "munmap": ({"uaddr": _U64, "size": _U64}, {}),
    "memlock": ({"pages": _PAGES}, {}),
    "meta": ({}, {"rules": (_RULES, None), "recorded": (_OBJ, None)}),
}
#: Operations that are a ``write()`` of a message.
MESSAGE_OPS = frozenset(("update", "invalidate", "batch_begin", "batch_end", "write"))
#: Operations on the owner's memory, not on the device.
MEMORY_OPS = frozenset(("mmap", "munmap", "memlock"))
#: Operations that are an ioctl (or open/close of the device node).
IOCTL_OPS = frozenset(OPS) - MESSAGE_OPS - MEMORY_OPS - {"meta"}


class TraceError(ValueError):
    """A bad trace: unreadable file, unknown format, bad line or truncated record.

    ``str()`` is one line: ``FILE:LINE: problem`` (JSON Lines) or ``FILE: byte offset
    N: problem`` (binary) or ``FILE: problem``.

    >>> str(TraceError("bad field", path="t.jsonl", line=3))
    't.jsonl:3: bad field'
    >>> str(TraceError("truncated record", path="t.bin", offset=144))
    't.bin: byte offset 144: truncated record'
    """

    def __init__(self, message: str, *, path: Optional[str] = None,
                 line: Optional[int] = None, offset: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.offset = offset

    def __str__(self) -> str:
        where = self.path if self.path is not None else "<trace>"
        if self.line is not None:
            return f"{where}:{self.line}: {self.message}"
        if self.offset is not None:
            return f"{where}: byte offset {self.offset}: {self.message}"
        return f"{where}: {self.message}"


class Location(NamedTuple):
    """Where an operation came from: a 1-based ``line`` or a byte ``offset``."""

    line: Optional[int] = None
    offset: Optional[int] = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"line {self.line}"
        if self.offset is not None:
            return f"byte offset {self.offset}"
        return "-"

    def as_dict(self) -> dict:
        return {"line": self.line} if self.line is not None else {"offset": self.offset}


class Entry(NamedTuple):
    """One item of a trace being read: ``op`` (a dict) or ``error`` (a TraceError)."""

    where: Location
    op: Optional[dict]
    error: Optional[TraceError] = None


# ------------------------------------------------------------------ field parsing
def _int_value(name: str, value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"field {name!r} must be an integer, got {json.dumps(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""), 0)
        except ValueError:
            raise ValueError(f"field {name!r} must be an integer, got {value!r}") from None
    raise ValueError(f"field {name!r} must be an integer, got {json.dumps(value)}")


def _ranged(name: str, value: Any, top: int, top_text: str) -> int:
    v = _int_value(name, value)
    if v < 0 or v > top:
        raise ValueError(f"field {name!r} must be in 0..{top_text}, got {v}")
    return v


def _names(name: str, value: list, table: dict, aliases: dict, top: int) -> int:
    mask = 0
    for item in value:
        if isinstance(item, str):
            key = item.strip().upper()
            for prefix in ("VHOST_BACKEND_F_", "VIRTIO_CONFIG_S_"):
                if key.startswith(prefix):
                    key = key[len(prefix):]
            key = aliases.get(key, key)
            if key not in table:
                raise ValueError(f"field {name!r}: unknown name {item!r} (known: "
                                 f"{', '.join(sorted(table))})")
            mask |= table[key]
        else:
            mask |= _ranged(name, item, top, hex(top))
    return mask


def _field(name: str, kind: str, value: Any):
    if kind == _U64:
        return _ranged(name, value, U64, "2**64-1")
    if kind == _U32:
        return _ranged(name, value, U32, "2**32-1")
    if kind == _U8:
        return _ranged(name, value, 255, "255")
    if kind == _PERM:
        if isinstance(value, str) and value.strip().upper() in _PERM_NAMES:
            return _PERM_NAMES[value.strip().upper()]
        return _ranged(name, value, 255, "255")
    if kind == _VER:
        v = _int_value(name, value)
        if v not in (1, 2):
            raise ValueError(f"field {name!r} must be 1 (vhost_msg) or 2 (vhost_msg_v2), "
                             f"got {v}")
        return v
    if kind == _FEAT:
        if isinstance(value, list):
            return _names(name, value, FEATURE_NAMES, {}, U64)
        return _ranged(name, value, U64, "2**64-1")
    if kind == _STATUS:
        if isinstance(value, list):
            return _names(name, value, STATUS_BITS, _STATUS_ALIASES, 255)
        return _ranged(name, value, 255, "255")
    if kind == _HEX:
        if not isinstance(value, str):
            raise ValueError(f"field {name!r} must be a hex string, got {json.dumps(value)}")
        text = "".join(value.split())
        if text[:2].lower() == "0x":
            text = text[2:]
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"field {name!r} is not valid hex: {value[:40]!r}") from None
    if kind == _KIND:
        if value not in MEMORY_KINDS:
            raise ValueError(f"field {name!r} must be one of {', '.join(MEMORY_KINDS)}, "
                             f"got {json.dumps(value)}")
        return value
    if kind == _PAGES:
        if value == "unlimited" or value is None:
            return None
        return _ranged(name, value, U64, "2**64-1")
    if kind == _OBJ:
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"field {name!r} must be an object")
        return value
    if kind == _RULES:
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise ValueError(f"field {name!r} must be a list of strings")
        return list(value)
    if kind == _PLACE:
        if value is None:
            return None
        if not isinstance(value, list):
            raise ValueError(f"field {name!r} must be a list of [offset, pa, length] runs")
        runs = []
        for run in value:
            if not isinstance(run, list) or len(run) != 3:
                raise ValueError(f"field {name!r}: each run is [offset, pa, length], "
                                 f"got {json.dumps(run)}")
            runs.append(tuple(_ranged(name, v, U64, "2**64-1") for v in run))
        return runs
    raise AssertionError(kind)  # pragma: no cover


_ANY_OP = frozenset(("op", "comment", "expect", "inferred"))


def parse_op(obj: Any) -> dict:
    """Validate one operation (a decoded JSON object) and return it normalised: every
    field present, as an int (``write``: ``data`` bytes instead of ``hex``).
    Raises ``ValueError`` with a one-line message on any problem.

    >>> parse_op({"op": "set_status", "status": ["ACK", "DRIVER"]})
    {'op': 'set_status', 'status': 3}
    >>> parse_op({"op": "set_backend_features", "features": ["MSG_V2", "BATCH"]})
    {'op': 'set_backend_features', 'features': 6}
    >>> parse_op({"op": "invalidate", "iova": 0, "size": 1, "asdi": 1})
    Traceback (most recent call last):
    ...
    ValueError: op 'invalidate' has no field 'asdi' (fields: iova, size, asid, version, comment, expect, inferred)
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    name = obj.get("op")
    if not isinstance(name, str):
        raise ValueError("missing \"op\" (a string naming the operation)")
    spec = OPS.get(name)
    if spec is None:
        raise ValueError(f"unknown op {name!r} (known: {', '.join(OPS)})")
    required, optional = spec
    out: dict = {"op": name}
    for key in obj:
        if key not in _ANY_OP and key not in required and key not in optional:
            fields = ", ".join(list(required) + list(optional) + ["comment", "expect",
                                                                 "inferred"])
            raise ValueError(f"op {name!r} has no field {key!r} (fields: {fields})")
    for key, kind in required.items():
        if key not in obj:
            raise ValueError(f"op {name!r} needs field {key!r}")
        value = _field(key, kind, obj[key])
        out["data" if kind == _HEX else key] = value
    for key, (kind, default) in optional.items():
        if key in obj:
            out[key] = _field(key, kind, obj[key])
        elif key != "version":
            out[key] = default
    if out.get("version") == 1:
        if out.get("asid"):
            raise ValueError("a version 1 message (struct vhost_msg) has no asid; "
                             f"got asid {out['asid']}")
    if "comment" in obj:
        if not isinstance(obj["comment"], str):
            raise ValueError("field 'comment' must be a string")
        out["comment"] = obj["comment"]
    if "inferred" in obj:
        if not isinstance(obj["inferred"], bool):
            raise ValueError("field 'inferred' must be true or false")
        if obj["inferred"]:
            out["inferred"] = True
    if "expect" in obj:
        from .expect import parse_expect

        out["expect"] = parse_expect(obj["expect"])
    return out


def to_json(op: dict) -> str:
    """One JSON line for ``op`` (addresses as hex strings, perm by name).

    >>> to_json({"op": "write", "data": b"\\x02\\x00"})
    '{"op": "write", "hex": "0200"}'
    >>> to_json({"op": "set_backend_features", "features": 0x10e})
    '{"op": "set_backend_features", "features": "0x10e"}'
    """
    out: dict = {"op": op["op"]}
    for key, value in op.items():
        if key == "op":
            continue
        if key == "data":
            out["hex"] = bytes(value).hex()
        elif key in ("iova", "size", "uaddr", "features"):
            out[key] = hex(value)
        elif key == "pa":
            if value is not None:
                out[key] = [[hex(o), hex(p), hex(n)] for o, p, n in value]
        elif key == "pages":
            out[key] = "unlimited" if value is None else value
        elif key in ("rules", "recorded"):
            if value is not None:
                out[key] = value
        elif key == "expect":
            from .expect import expect_to_json

            out[key] = expect_to_json(value)
        elif key == "perm":
            out[key] = _PERM_TEXT.get(value, value)
        elif key == "version" and value == 2:
            continue
        else:
            out[key] = value
    return json.dumps(out)


def encode_op(op: dict) -> bytes:
    """The bytes a message operation writes: a 72-byte record from :mod:`iotlb.wire`
    (``write``: its raw bytes).

    >>> encode_op({"op": "batch_begin", "asid": 1})[:8].hex()
    '0200000001000000'
    """
    name = op["op"]
    if name == "write":
        return bytes(op["data"])
    t = _MSG_TYPE[name]
    version = op.get("version", 2)
    return wire.encode(t, op.get("iova", 0), op.get("size", 0), op.get("uaddr", 0),
                       op.get("perm", 0), asid=op.get("asid", 0),
                       version=wire.VHOST_IOTLB_MSG if version == 1 else wire.VHOST_IOTLB_MSG_V2)


def describe(op: dict) -> str:
    """A short human description of an operation.

    >>> describe({"op": "update", "iova": 0x1000, "size": 0x2000, "uaddr": 0x9000,
    ...           "perm": 3, "asid": 0})
    'UPDATE asid 0 [0x1000, +0x2000) -> 0x9000 RW'
    >>> describe({"op": "set_status", "status": 0})
    'SET_STATUS(0)'
    """
    name = op["op"]
    ver = " (v1)" if op.get("version") == 1 else ""
    if name == "update":
        return (f"UPDATE asid {op['asid']} [{op['iova']:#x}, +{op['size']:#x}) -> "
                f"{op['uaddr']:#x} {_PERM_TEXT.get(op['perm'], op['perm'])}{ver}")
    if name == "invalidate":
        return f"INVALIDATE asid {op['asid']} [{op['iova']:#x}, +{op['size']:#x}){ver}"
    if name in ("batch_begin", "batch_end"):
        return f"{name.upper()} asid {op['asid']}{ver}"
    if name == "write":
        data = bytes(op["data"])
        try:
            msg = wire.decode(data, asid_acked=True)
        except Exception:  # undecodable: show the size only
            return f"write {len(data)} bytes"
        return (f"write {wire.msg_type_name(msg.type)} asid {msg.asid} "
                f"[{msg.iova:#x}, +{msg.size:#x})")
    if name == "set_status":
        return f"SET_STATUS({_status_text(op['status'])})"
    if name == "set_backend_features":
        names = "|".join(wire.feature_names(op["features"])) or "0"
        return f"SET_BACKEND_FEATURES({names})"
    if name == "set_group_asid":
        return f"SET_GROUP_ASID(group {op['group']}, asid {op['asid']})"
    if name == "get_vring_group":
        return f"GET_VRING_GROUP(vq {op['vq']})"
    if name == "mmap":
        return f"mmap {op.get('kind', 'memfd')} [{op['uaddr']:#x}, +{op['size']:#x})"
    if name == "munmap":
        return f"munmap [{op['uaddr']:#x}, +{op['size']:#x})"
    if name == "memlock":
        pages = op["pages"]
        return f"RLIMIT_MEMLOCK {'unlimited' if pages is None else f'{pages} pages'}"
    if name == "meta":
        return "meta"
    return name.upper()


def _status_text(status: int) -> str:
    if status == 0:
        return "0"
    parts = [n for n, b in STATUS_BITS.items() if status & b]
    rest = status & ~sum(STATUS_BITS.values())
    if rest:
        parts.append(hex(rest))
    return "|".join(parts)


# ------------------------------------------------------------------ execution
def apply(dev, op: dict):
    """Execute one operation on a :class:`iotlb.vdpa.VhostVdpa`; return what the call
    returns (72 for a write, the value for a get).  Failures raise whatever the device
    raises (:class:`iotlb.IOTLBError` with the errno userspace would see)."""
    name = op["op"]
    if name in MESSAGE_OPS:
        return dev.write(encode_op(op))
    if name in MEMORY_OPS:
        return apply_memory(dev.usermem, op)
    if name == "meta":
        return None
    if name == "set_backend_features":
        return dev.set_backend_features(op["features"])
    if name == "set_status":
        return dev.set_status(op["status"])
    if name == "set_group_asid":
        return dev.set_group_asid(op["group"], op["asid"])
    if name == "get_vring_group":
        return dev.get_vring_group(op["vq"])
    if name in OPS:
        return getattr(dev, name)()
    raise ValueError(f"unknown op {name!r}")


def apply_memory(mem, op: dict) -> None:
    """Execute a memory operation on a :class:`iotlb.usermem.UserMemory`: ``mmap``
    (the first one makes the memory strict; a memfd is a shared mapping of its own
    file, placed at ``pa`` when given), ``munmap``, ``memlock``.

    >>> from iotlb.usermem import UserMemory
    >>> mem = UserMemory()
    >>> apply_memory(mem, {"op": "mmap", "uaddr": 0x10000, "size": 0x2000,
    ...                    "kind": "memfd", "pa": [(0x1000, 0x9000, 0x1000)]})
    >>> mem.strict, [v.kind for v in mem.vmas()], hex(mem.pfn(0x11000))
    (True, ['shared-file'], '0x9')
    """
    name = op["op"]
    if name == "memlock":
        mem.memlock_pages = op["pages"]
        return None
    uaddr, size = op["uaddr"], op["size"]
    if name == "munmap":
        mem.munmap(uaddr, size)
        return None
    if not mem.strict:
        mem.strict = True
    if op.get("kind", "memfd") == "memfd":
        mem.map_file(uaddr, size, f"memfd@{uaddr:#x}", shared=True)
    else:
        mem.map_anon(uaddr, size)
    for offset, pa, length in op.get("pa") or ():
        mem.place(uaddr + offset, length, pa)
    return None


# ------------------------------------------------------------------ files
def detect_format(path: str) -> str:
    """``"jsonl"`` or ``"binary"`` from the first bytes of ``path``; an empty file is
    an (empty) JSON Lines trace.  Raises :class:`TraceError` (unknown format, or an
    unreadable file)."""
    with _open(path) as fp:
        head = fp.read(8)
    if head[:3] == b"\xef\xbb\xbf":
        head = head[3:]
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b""):
        return "jsonl"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (
            wire.VHOST_IOTLB_MSG, wire.VHOST_IOTLB_MSG_V2):
        return "binary"
    raise TraceError("unknown trace format (neither JSON Lines nor a stream of 72-byte "
                     "vhost_msg_v2 records); use --format to force one", path=path)


def _open(path: str, mode: str = "rb"):
    try:
        if os.path.isdir(path):
            raise TraceError("is a directory, not a trace file", path=path)
        return open(path, mode)
    except TraceError:
        raise
    except OSError as exc:
        raise TraceError(exc.strerror or str(exc), path=path) from None


def count_ops(path: str, fmt: str) -> int:
    """How many operations (non-blank lines / records) ``path`` holds, for progress."""
    if fmt == "binary":
        return os.path.getsize(path) // wire.VHOST_MSG_SIZE
    n = 0
    with _open(path) as fp:
        for raw in fp:
            if raw.strip():
                n += 1
    return n


def read_trace(path: str, fmt: str = "auto") -> Iterator[Entry]:
    """Yield an :class:`Entry` per operation of the trace file ``path``.

    A bad line or record is yielded as an entry whose ``error`` is set (the caller
    decides whether to stop); an unreadable file or unknown format raises
    :class:`TraceError` at once.
    """
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "binary":
        return _read_binary(path)
    raise TraceError(f"unknown format {fmt!r} (jsonl, binary or auto)", path=path)


def _read_jsonl(path: str) -> Iterator[Entry]:
    fp = _open(path)
    with fp:
        for lineno, raw in enumerate(fp, 1):
            where = Location(line=lineno)
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield Entry(where, None, TraceError(
                    f"not UTF-8 text (byte {exc.start}); is this a binary trace? "
                    "use --format binary", path=path, line=lineno))
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text.rstrip())
            except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
                msg = getattr(exc, "msg", None) or f"{type(exc).__name__}: {exc}"
                col = getattr(exc, "colno", None)
                yield Entry(where, None, TraceError(
                    f"invalid JSON: {msg}" + (f" (column {col})" if col else ""),
                    path=path, line=lineno))
                continue
            try:
                op = parse_op(obj)
            except ValueError as exc:
                yield Entry(where, None, TraceError(str(exc), path=path, line=lineno))
                continue
            yield Entry(where, op)


def truncated_record(path: str, offset: int, got: int) -> TraceError:
    """The error for a binary trace's last record, ``got`` bytes of 72 at ``offset``.

    >>> str(truncated_record("t.bin", 144, 40))
    't.bin: byte offset 144: truncated record (40 of 72 bytes)'
    """
    return TraceError(f"truncated record ({got} of {wire.VHOST_MSG_SIZE} bytes)",
                      path=path, offset=offset)


def _read_binary(path: str) -> Iterator[Entry]:
    fp = _open(path)
    with fp:
        it = wire.iter_records(fp)
        while True:
            try:
                offset, rec = next(it)
            except StopIteration:
                return
            except wire.StreamError as exc:
                got = os.path.getsize(path) - exc.offset
                yield Entry(Location(offset=exc.offset), None,
                            truncated_record(path, exc.offset, got))
                return
            yield Entry(Location(offset=offset), {"op": "write", "data": rec})


def write_trace(path: str, ops: List[dict], fmt: Optional[str] = None) -> int:
    """Write ``ops`` to ``path``: JSON Lines, or binary (``fmt="binary"``, or a
    ``.bin`` file name) where only the messages can be kept.  Returns how many
    operations were dropped (ioctls in a binary trace)."""
    if fmt is None:
        fmt = "binary" if path.endswith((".bin", ".raw")) else "jsonl"
    dropped = 0
    if fmt == "binary":
        with open(path, "wb") as fp:
            for op in ops:
                if op["op"] in MESSAGE_OPS:
                    fp.write(encode_op(op))
                else:
                    dropped += 1
        return dropped
    if fmt != "jsonl":
        raise ValueError(f"unknown trace format {fmt!r}")
    with io.open(path, "w", encoding="utf-8") as fp:
        for op in ops:
            fp.write(to_json(op))
            fp.write("\n")
    return 0


# ------------------------------------------------------------------ progress
class Progress:
    """A progress indicator on stderr for long replays: ``tqdm`` when importable,
    else a minimal ``\\r``-updated line.  Silent unless ``enabled`` (the CLI enables
    it only when stderr is a terminal and the replay is long).

    >>> p = Progress(10, enabled=False); p.update(5); p.close()
    >>> Progress(1000, enabled=False).line(250, 2.0)
    'replaying: 250/1,000 ops ( 25.0%), 125 ops/s, 6s left'
    """

    def __init__(self, total: int, *, enabled: bool, label: str = "replaying") -> None:
        self.total = total
        self.enabled = enabled
        self.label = label
        self.done = 0
        self._bar = None
        self._last = 0.0
        self._t0 = time.monotonic()
        if enabled:
            try:
                import tqdm  # optional

                self._bar = tqdm.tqdm(total=total, unit="op", desc=label, leave=False,
                                      file=sys.stderr)
            except Exception:
                self._bar = None

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            sys.stderr.write("\r" + self.line(self.done, now - self._t0))
            sys.stderr.flush()

    def line(self, done: int, seconds: float) -> str:
        """The progress line after ``done`` ops in ``seconds``: count, share, rate and
        the time left at that rate."""
        pct = 100.0 * done / self.total if self.total else 100.0
        text = f"{self.label}: {done:,}/{self.total:,} ops ({pct:5.1f}%)"
        if seconds > 0 and done:
            rate = done / seconds
            left = max(self.total - done, 0) / rate
            text += f", {rate:,.0f} ops/s, {left:,.0f}s left"
        return text

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            return
        sys.stderr.write("\r" + " " * 79 + "\r")
        sys.stderr.flush()
