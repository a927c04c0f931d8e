"""Import what a VMM really sent: a QEMU trace log or an strace log, as a trace.

Two readers turn a log into the operations of :mod:`iotlb.trace` (write them with
:func:`iotlb.trace.write_trace`, replay them with ``iotlb replay``):

* :func:`from_qemu_trace` reads QEMU's ``-trace 'vhost_vdpa_*' -D FILE`` log (the
  ``log`` trace backend: one ``EVENT FORMATTED-ARGS`` line per event, optionally
  prefixed ``PID@SECONDS.MICROS:``) with the format strings of QEMU's
  ``hw/virtio/trace-events`` and ``net/trace-events``.  The events fire *before* the
  write or ioctl and do not record its result, so these traces carry no ``expect``.
* :func:`from_strace` reads ``strace -f -e trace=openat,ioctl,write[,close] -X raw
  -xx -s 128`` of the VMM: the ``openat`` of ``/dev/vhost-vdpa-N`` gives the fd, every
  72-byte ``write()`` to it is decoded (``struct vhost_msg_v2``, or v1), every
  vhost/vhost-vdpa ``ioctl()`` becomes its operation, and what strace saw the call
  return becomes the operation's ``expect`` (``ret``/``errno``).

What a log cannot show is filled in from QEMU's known sequence and marked
``"inferred": true``: the untraced ioctls of a QEMU trace log (``open``, the
backend-feature negotiation, ``vhost_vdpa_probe_cvq_isolation``,
``GET_VRING_GROUP``, the ``GET_STATUS`` around ``vhost_vdpa_add_status``), and in an
strace log the *values* strace cannot print for an unknown ioctl (the status a
``SET_STATUS`` sets, the features a ``SET_BACKEND_FEATURES`` acks, the vq of
``GET_VRING_GROUP``, the group of ``SET_GROUP_ASID``).  The vhost ioctls the model
does not need (``GET/SET_FEATURES``, ``SET_VRING_*``, config...) are skipped and
counted.

Two QEMU dialects are known and told apart from the log itself (or forced with
``qemu=``): ``"10.2"`` (QEMU 10.2, and 11.1 as run for real: ``vdpa_shared:`` and an
``asid:`` in the IOTLB events; backend features MSG_V2|BATCH|ASID|SUSPEND negotiated in
``vhost_vdpa_init``; the memory listener registered at ``vhost_vdpa_set_owner``) and
``"7.2"`` (Debian bookworm's QEMU 7.2: no asid; MSG_V2|BATCH negotiated after each
``SET_FEATURES`` by ``vhost_dev_set_features``; the listener registered at
``vhost_vdpa_dev_start`` and unregistered at stop).

Bad input raises :class:`ImportError_` (a :class:`iotlb.trace.TraceError`) naming the
file and line.

>>> log = '''vhost_vdpa_init dev: 0x55 common dev: 0x66 vdpa: 0x77
... vhost_vdpa_add_status dev: 0x55 status: 0x3
... vhost_vdpa_set_owner dev: 0x55
... vhost_vdpa_listener_begin_batch vdpa_shared:0x66 fd: 9 msg_type: 2 type: 5
... vhost_vdpa_dma_map vdpa_shared:0x66 fd: 9 msg_type: 2 asid: 0 iova: 0x0 size: 0xa0000 uaddr: 0x7f0000000000 perm: 0x3 type: 2
... vhost_vdpa_listener_commit vdpa_shared:0x66 fd: 9 msg_type: 2 type: 6
... '''
>>> res = from_qemu_trace(log.splitlines(), path="qemu.log")
>>> res.dialect
'10.2'
>>> [(op["op"], bool(op.get("inferred"))) for op in res.ops][:4]
[('open', True), ('get_iova_range', True), ('get_backend_features', True), ('set_backend_features', True)]
>>> [(op["op"], bool(op.get("inferred"))) for op in res.ops][4:7]
[('get_status', True), ('set_status', False), ('get_status', True)]
>>> [op["op"] for op in res.ops][7:]
['set_owner', 'batch_begin', 'update', 'batch_end']
>>> from_qemu_trace(["vhost_vdpa_dma_map vdpa_shared:0x1 fd: 9 msg_type: 2 asid: 0"], path="q.log")
Traceback (most recent call last):
...
iotlb.importer.ImportError_: q.log:1: vhost_vdpa_dma_map: missing field 'iova'
"""
from __future__ import annotations

import errno as _errno
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from . import wire
from .trace import TraceError, encode_op, parse_op

__all__ = ["ImportError_", "Imported", "from_qemu_trace", "from_strace", "read_log",
           "check", "Difference", "IOCTLS", "QEMU_FEATURES", "DIALECTS"]

F = wire.BackendFeature
#: What ``vhost_vdpa_set_backend_cap`` acks when offered, per QEMU dialect.
QEMU_FEATURES = {
    "10.2": int(F.IOTLB_MSG_V2 | F.IOTLB_BATCH | F.IOTLB_ASID | F.SUSPEND),
    "7.2": int(F.IOTLB_MSG_V2 | F.IOTLB_BATCH),
}
DIALECTS = tuple(QEMU_FEATURES)

ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8


class ImportError_(TraceError):
    """A log that cannot be imported: ``FILE:LINE: problem``."""


@dataclass
class Imported:
    """What a log gave: the trace operations, the QEMU ``dialect`` they follow, the
    skipped ioctls (name -> count) and other notes."""

    ops: List[dict]
    dialect: str
    source: str
    skipped: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def inferred(self) -> int:
        return sum(1 for op in self.ops if op.get("inferred"))

    def summary(self) -> str:
        n = len(self.ops)
        msgs = sum(1 for op in self.ops if op["op"] in
                   ("update", "invalidate", "batch_begin", "batch_end", "write"))
        skipped = sum(self.skipped.values())
        return (f"{n} operations ({msgs} messages, {self.inferred} inferred) from a "
                f"{self.source} log (QEMU {self.dialect} sequence); "
                f"{skipped} calls not modelled skipped")


def _op(obj: dict, *, inferred: bool = False, comment: str = "") -> dict:
    d = dict(obj)
    if comment:
        d["comment"] = comment
    if inferred:
        d["inferred"] = True
    return parse_op(d)


# ====================================================================== QEMU trace log
_PREFIX = re.compile(r"^(?:\d+@\d+\.\d+:)?(?P<event>[a-z_][a-z0-9_]*)(?:\s+(?P<args>.*))?$")
# "key: value" / "key:value" / "key value" pairs of the format strings
_FIELD = re.compile(r"([a-z_]+)\s*[: ]\s*(0x[0-9a-fA-F]+|-?\d+|\(nil\))")
_EVENTS_USED = {
    "vhost_vdpa_init", "vhost_vdpa_add_status", "vhost_vdpa_set_owner",
    "vhost_vdpa_get_iova_range", "vhost_vdpa_set_features", "vhost_vdpa_reset_device",
    "vhost_vdpa_suspend", "vhost_vdpa_dev_start", "vhost_vdpa_dma_map",
    "vhost_vdpa_dma_unmap", "vhost_vdpa_listener_begin_batch",
    "vhost_vdpa_listener_commit", "vhost_vdpa_set_address_space_id",
    "vhost_vdpa_set_vring_call", "vhost_vdpa_cleanup", "vhost_vdpa_get_features",
}
_MSG_TYPES = {wire.VHOST_IOTLB_MSG: 1, wire.VHOST_IOTLB_MSG_V2: 2}


@dataclass
class _Event:
    line: int
    name: str
    args: Dict[str, int]
    text: str


def _parse_args(text: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for key, val in _FIELD.findall(text or ""):
        # the first "dev:" is the vhost device ("common dev:" comes after it)
        out.setdefault(key, 0 if val == "(nil)" else int(val, 0))
    # "vdpa_shared:%p" / "vdpa:%p" / "vhost_vdpa: %p" name the shared state
    return out


def _need(ev: _Event, path: str, *keys: str) -> List[int]:
    out = []
    for k in keys:
        if k not in ev.args:
            raise ImportError_(f"{ev.name}: missing field {k!r}", path=path, line=ev.line)
        out.append(ev.args[k])
    return out


def _read_events(lines: Iterable[str], path: str) -> List[_Event]:
    events = []
    seen_any = False
    for n, raw in enumerate(lines, 1):
        text = raw.rstrip("\n").rstrip("\r")
        if not text.strip():
            continue
        m = _PREFIX.match(text.strip())
        if m is None:
            raise ImportError_(f"not a QEMU trace line (expected 'EVENT ARGS', optionally "
                               f"prefixed PID@SEC.USEC:): {text[:60]!r}", path=path, line=n)
        name = m.group("event")
        seen_any = True
        if not name.startswith("vhost_vdpa_"):
            continue          # other events traced alongside: not ours
        events.append(_Event(n, name, _parse_args(m.group("args") or ""), text))
    if not seen_any:
        raise ImportError_("no trace events (was QEMU run with -trace 'vhost_vdpa_*' "
                           "-D FILE?)", path=path)
    return events


def _detect_dialect(events: List[_Event]) -> str:
    for ev in events:
        if ev.name in ("vhost_vdpa_dma_map", "vhost_vdpa_dma_unmap"):
            return "10.2" if "asid" in ev.args else "7.2"
        if ev.name in ("vhost_vdpa_listener_begin_batch", "vhost_vdpa_listener_commit"):
            return "10.2" if "vdpa_shared" in ev.text else "7.2"
        if ev.name in ("vhost_vdpa_suspend", "vhost_vdpa_set_address_space_id"):
            return "10.2"
        if ev.name == "vhost_vdpa_init":
            return "10.2" if "common dev" in ev.text else "7.2"
    return "10.2"


def from_qemu_trace(lines: Iterable[str], *, path: str = "<log>", qemu: Optional[str] = None,
                    backend_features: Optional[int] = None, queue_pairs: Optional[int] = None,
                    probe_groups: int = 2, memlock: Optional[object] = None) -> Imported:
    """Operations from a QEMU ``-trace 'vhost_vdpa_*'`` log (see the module doc).

    ``qemu``: ``"10.2"`` or ``"7.2"`` (default: told from the log).
    ``backend_features``: the mask ``SET_BACKEND_FEATURES`` acks (default: what the
    dialect's ``vhost_vdpa_set_backend_cap`` acks, less SUSPEND when the log shows a
    stop without ``vhost_vdpa_suspend``).  ``queue_pairs``: data queue pairs (default:
    counted from the vhost devices in the log).  ``probe_groups``: how many
    ``GET_VRING_GROUP`` the CVQ isolation probe sends (2 = the CVQ and vq 0 are in
    different groups and vq 1 too: vdpa_sim, mlx5; the answers decide it, the log
    cannot show them).
    """
    events = _read_events(lines, path)
    dialect = qemu or _detect_dialect(events)
    if dialect not in QEMU_FEATURES:
        raise ImportError_(f"unknown QEMU dialect {dialect!r} (known: {', '.join(DIALECTS)})",
                           path=path)
    # --- classify the vhost devices: data (2 vqs) or CVQ (1 vq), by their
    # vhost_vdpa_set_vring_call indexes between their init and the next init
    devs: List[int] = []
    nvq: Dict[int, int] = {}
    cur = None
    for ev in events:
        if ev.name == "vhost_vdpa_init":
            cur = _need(ev, path, "dev")[0]
            if cur not in devs:
                devs.append(cur)
                nvq[cur] = 0
        elif ev.name in ("vhost_vdpa_set_features", "vhost_vdpa_dev_start"):
            cur = None            # vhost_dev_init is over: start-time calls follow
        elif ev.name == "vhost_vdpa_set_vring_call" and cur is not None and \
                ev.args.get("dev") == cur:
            nvq[cur] += 1
    first_dev = devs[0] if devs else None
    cvq_devs = {d for d in devs[1:] if nvq.get(d) == 1} if dialect == "10.2" else set()
    qps = queue_pairs or max(1, len(devs) - len(cvq_devs))
    cvq_index = 2 * qps

    feats = backend_features
    notes: List[str] = []
    if feats is None:
        feats = QEMU_FEATURES[dialect]
        if dialect == "10.2" and feats & F.SUSPEND:
            # vhost_vdpa_suspend traces iff SUSPEND is acked; a stop that goes straight
            # to vhost_vdpa_reset_device proves it was not
            stops = [i for i, e in enumerate(events)
                     if e.name == "vhost_vdpa_dev_start" and e.args.get("started") == 0]
            for i in stops:
                nxt = next((e.name for e in events[i + 1:] if e.name in
                            ("vhost_vdpa_suspend", "vhost_vdpa_reset_device")), None)
                if nxt == "vhost_vdpa_reset_device":
                    feats &= ~int(F.SUSPEND)
                    notes.append(f"line {events[i].line}: a stop without "
                                 "vhost_vdpa_suspend: SUSPEND not acked")
                    break
                if nxt == "vhost_vdpa_suspend":
                    break

    ops: List[dict] = []
    status = 0
    opened = False

    def emit(obj, ev: Optional[_Event], inferred=False, why=""):
        where = f"line {ev.line}: {ev.name}" if ev is not None else ""
        comment = "; ".join(x for x in (where, why) if x)
        ops.append(_op(obj, inferred=inferred, comment=comment))

    def ensure_open(ev):
        nonlocal opened, status
        if not opened:
            emit({"op": "open"}, ev, True, "net_init_vhost_vdpa: qemu_open(vhostdev)")
            if dialect == "10.2":
                emit({"op": "get_iova_range"}, ev, True,
                     "net_init_vhost_vdpa: vhost_vdpa_get_iova_range (untraced)")
            opened = True
            status = 0

    def add_status(ev, bits):
        nonlocal status
        emit({"op": "get_status"}, ev, True, "vhost_vdpa_add_status: GET_STATUS")
        if dialect == "10.2" and status & bits == bits:
            return                          # "Don't set bits already set"
        status |= bits
        emit({"op": "set_status", "status": status}, ev, False,
             f"vhost_vdpa_add_status: GET_STATUS | {bits:#x}")
        emit({"op": "get_status"}, ev, True, "vhost_vdpa_add_status: GET_STATUS")

    def probe(ev):
        """vhost_vdpa_probe_cvq_isolation (net/vhost-vdpa.c), untraced."""
        nonlocal status
        why = "vhost_vdpa_probe_cvq_isolation (untraced)"
        emit({"op": "get_backend_features"}, ev, True, why)
        if not feats & F.IOTLB_ASID:
            return
        emit({"op": "set_status", "status": ACK | DRIVER}, ev, True, why)
        emit({"op": "set_status", "status": ACK | DRIVER | FEATURES_OK}, ev, True,
             why + " after SET_FEATURES")
        emit({"op": "get_vring_group", "vq": cvq_index}, ev, True, why)
        for i in range(min(probe_groups, cvq_index)):
            emit({"op": "get_vring_group", "vq": i}, ev, True, why)
        emit({"op": "set_status", "status": 0}, ev, True, why + ": SET_STATUS(0) always")
        status = 0

    for ev in events:
        name = ev.name
        if name == "vhost_vdpa_init":
            dev = _need(ev, path, "dev")[0]
            ensure_open(ev)
            if dialect == "10.2":
                if dev in cvq_devs:
                    probe(ev)
                # vhost_vdpa_set_backend_cap: GET always, SET on the first device
                emit({"op": "get_backend_features"}, ev, True, "vhost_vdpa_set_backend_cap")
                if dev == first_dev:
                    emit({"op": "set_backend_features", "features": feats}, ev, True,
                         "vhost_vdpa_set_backend_cap: offered & MSG_V2|BATCH|ASID|SUSPEND")
        elif name == "vhost_vdpa_get_iova_range":
            ensure_open(ev)
            emit({"op": "get_iova_range"}, ev)
        elif name == "vhost_vdpa_add_status":
            ensure_open(ev)
            add_status(ev, _need(ev, path, "status")[0])
        elif name == "vhost_vdpa_set_owner":
            ensure_open(ev)
            emit({"op": "set_owner"}, ev)
        elif name == "vhost_vdpa_set_features":
            if dialect == "7.2":
                pass     # backend features follow add_status(FEATURES_OK): see below
        elif name == "vhost_vdpa_reset_device":
            ensure_open(ev)
            emit({"op": "set_status", "status": 0}, ev)
            status = 0
        elif name == "vhost_vdpa_suspend":
            emit({"op": "suspend"}, ev)
        elif name in ("vhost_vdpa_dma_map", "vhost_vdpa_dma_unmap",
                      "vhost_vdpa_listener_begin_batch", "vhost_vdpa_listener_commit"):
            ensure_open(ev)
            mt, = _need(ev, path, "msg_type")
            if mt not in _MSG_TYPES:
                raise ImportError_(f"{name}: msg_type {mt} is neither VHOST_IOTLB_MSG (1) "
                                   "nor VHOST_IOTLB_MSG_V2 (2)", path=path, line=ev.line)
            asid = ev.args.get("asid", 0)
            base = {"asid": asid}
            if _MSG_TYPES[mt] == 1:
                base = {"version": 1}
            if name == "vhost_vdpa_dma_map":
                iova, size, uaddr, perm = _need(ev, path, "iova", "size", "uaddr", "perm")
                emit({"op": "update", "iova": iova, "size": size, "uaddr": uaddr,
                      "perm": perm, **base}, ev)
            elif name == "vhost_vdpa_dma_unmap":
                iova, size = _need(ev, path, "iova", "size")
                emit({"op": "invalidate", "iova": iova, "size": size, **base}, ev)
            elif name == "vhost_vdpa_listener_begin_batch":
                emit({"op": "batch_begin", **base}, ev)
            else:
                emit({"op": "batch_end", **base}, ev)
        elif name == "vhost_vdpa_set_address_space_id":
            group, asid = _need(ev, path, "vq_group", "asid")
            emit({"op": "get_vring_group", "vq": cvq_index}, ev, True,
                 "vhost_vdpa_net_cvq_start: vhost_vdpa_get_vring_group (untraced)")
            emit({"op": "set_group_asid", "group": group, "asid": asid}, ev)
        elif name == "vhost_vdpa_cleanup":
            pass
        # 7.2: vhost_dev_set_features -> vhost_vdpa_set_backend_cap right after
        # vhost_vdpa_set_features' add_status(FEATURES_OK)
        if dialect == "7.2" and name == "vhost_vdpa_add_status" and \
                ev.args.get("status") == FEATURES_OK:
            emit({"op": "get_backend_features"}, ev, True,
                 "vhost_dev_set_features -> vhost_vdpa_set_backend_cap (untraced)")
            emit({"op": "set_backend_features", "features": feats}, ev, True,
                 "vhost_vdpa_set_backend_cap: offered & MSG_V2|BATCH")
    if any(e.name == "vhost_vdpa_cleanup" for e in events):
        last = [e for e in events if e.name == "vhost_vdpa_cleanup"][-1]
        emit({"op": "release"}, last, True, "net client cleanup: qemu_close(vdpa fd)")
    if not ops:
        raise ImportError_("no vhost-vdpa operations in the log", path=path)
    return Imported(_with_memlock(ops, memlock), dialect, "QEMU trace", {}, notes)


def _with_memlock(ops: List[dict], memlock) -> List[dict]:
    """``ops`` with a ``memlock`` op for the VMM's RLIMIT_MEMLOCK (pages, or
    ``"unlimited"``; not in either log, so given by whoever ran the VMM) right after
    the first ``open`` (a trace that starts with ``open`` is replayed as is)."""
    if memlock is None:
        return ops
    m = _op({"op": "memlock", "pages": memlock},
            comment="the VMM's RLIMIT_MEMLOCK (given, not in the log)")
    at = 1 if ops and ops[0]["op"] == "open" else 0
    return ops[:at] + [m] + ops[at:]


# ====================================================================== strace log
def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0xAF << 8) | nr


_N, _W, _R = 0, 1, 2
#: ioctl request -> (name, op or None when the model does not need it)
IOCTLS: Dict[int, Tuple[str, Optional[str]]] = {
    _ioc(_R, 0x00, 8): ("VHOST_GET_FEATURES", None),
    _ioc(_W, 0x00, 8): ("VHOST_SET_FEATURES", None),
    _ioc(_N, 0x01, 0): ("VHOST_SET_OWNER", "set_owner"),
    _ioc(_N, 0x02, 0): ("VHOST_RESET_OWNER", None),
    _ioc(_W, 0x03, 8): ("VHOST_SET_MEM_TABLE", None),
    _ioc(_W, 0x04, 8): ("VHOST_SET_LOG_BASE", None),
    _ioc(_W, 0x07, 4): ("VHOST_SET_LOG_FD", None),
    _ioc(_W, 0x10, 8): ("VHOST_SET_VRING_NUM", None),
    _ioc(_W, 0x11, 40): ("VHOST_SET_VRING_ADDR", None),
    _ioc(_W, 0x12, 8): ("VHOST_SET_VRING_BASE", None),
    _ioc(_R | _W, 0x12, 8): ("VHOST_GET_VRING_BASE", None),
    _ioc(_W, 0x20, 8): ("VHOST_SET_VRING_KICK", None),
    _ioc(_W, 0x21, 8): ("VHOST_SET_VRING_CALL", None),
    _ioc(_W, 0x22, 8): ("VHOST_SET_VRING_ERR", None),
    _ioc(_W, 0x25, 8): ("VHOST_SET_BACKEND_FEATURES", "set_backend_features"),
    _ioc(_R, 0x26, 8): ("VHOST_GET_BACKEND_FEATURES", "get_backend_features"),
    _ioc(_R, 0x70, 4): ("VHOST_VDPA_GET_DEVICE_ID", None),
    _ioc(_R, 0x71, 1): ("VHOST_VDPA_GET_STATUS", "get_status"),
    _ioc(_W, 0x72, 1): ("VHOST_VDPA_SET_STATUS", "set_status"),
    _ioc(_R, 0x73, 8): ("VHOST_VDPA_GET_CONFIG", None),
    _ioc(_W, 0x74, 8): ("VHOST_VDPA_SET_CONFIG", None),
    _ioc(_W, 0x75, 8): ("VHOST_VDPA_SET_VRING_ENABLE", None),
    _ioc(_R, 0x76, 2): ("VHOST_VDPA_GET_VRING_NUM", None),
    _ioc(_W, 0x77, 4): ("VHOST_VDPA_SET_CONFIG_CALL", None),
    _ioc(_R, 0x78, 16): ("VHOST_VDPA_GET_IOVA_RANGE", "get_iova_range"),
    _ioc(_R, 0x79, 4): ("VHOST_VDPA_GET_CONFIG_SIZE", None),
    _ioc(_R, 0x7A, 4): ("VHOST_VDPA_GET_AS_NUM", "get_as_num"),
    _ioc(_R | _W, 0x7B, 8): ("VHOST_VDPA_GET_VRING_GROUP", "get_vring_group"),
    _ioc(_W, 0x7C, 8): ("VHOST_VDPA_SET_GROUP_ASID", "set_group_asid"),
    _ioc(_N, 0x7D, 0): ("VHOST_VDPA_SUSPEND", "suspend"),
    _ioc(_N, 0x7E, 0): ("VHOST_VDPA_RESUME", "resume"),
    _ioc(_R | _W, 0x7F, 8): ("VHOST_VDPA_GET_VRING_DESC_GROUP", None),
    _ioc(_R, 0x80, 4): ("VHOST_VDPA_GET_VQS_COUNT", "get_vqs_count"),
    _ioc(_R, 0x81, 4): ("VHOST_VDPA_GET_GROUP_NUM", "get_group_num"),
    _ioc(_R | _W, 0x82, 8): ("VHOST_VDPA_GET_VRING_SIZE", None),
}
_BY_NAME = {name: (req, op) for req, (name, op) in IOCTLS.items()}

_ST_LINE = re.compile(
    r"^(?:\[pid\s+(?P<pid1>\d+)\]\s+|(?P<pid2>\d+)\s+)?"
    r"(?:(?:\d{2}:\d{2}:\d{2}(?:\.\d+)?|\d+\.\d+)\s+)?(?P<rest>.*)$")
_ST_CALL = re.compile(r"^(?P<name>[a-z_0-9]+)\((?P<args>.*?)(?P<unfinished> <unfinished \.\.\.>)?$")
_ST_RESUMED = re.compile(r"^<\.\.\. (?P<name>[a-z_0-9]+) resumed>(?P<args>.*)$")
_ST_RESULT = re.compile(r"^(?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|0x[0-9a-f]+|\?)"
                        r"(?:\s+(?P<errno>E[A-Z0-9]+)\s*(?:\(.*\))?)?(?:\s+<[\d.]+>)?\s*$")


def _unescape(s: str) -> bytes:
    """The bytes of a C string as strace prints it (``-xx``: every byte ``\\xNN``;
    without, printable characters and ``\\n``-style escapes)."""
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "\\": 92, '"': 34, "'": 39}
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n == "x":
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
            m = re.match(r"[0-7]{1,3}", s[i + 1:])
            if m:
                out.append(int(m.group(0), 8))
                i += 1 + len(m.group(0))
                continue
        out.extend(c.encode("latin-1"))
        i += 1
    return bytes(out)


def _split_args(args: str) -> List[str]:
    """Top-level comma split of an strace argument list (strings and brackets kept)."""
    parts, cur, depth, quote = [], [], 0, False
    i = 0
    while i < len(args):
        c = args[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(args):
                cur.append(args[i + 1])
                i += 2
                continue
            if c == '"':
                quote = False
        elif c == '"':
            quote = True
            cur.append(c)
        elif c in "[{(":
            depth += 1
            cur.append(c)
        elif c in "]})":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur or parts:
        parts.append("".join(cur).strip())
    return parts


def _string_arg(arg: str) -> Tuple[bytes, bool]:
    """(bytes, truncated) of a quoted strace string argument."""
    m = re.match(r'^"(.*)"(\.\.\.)?$', arg, re.S)
    if m is None:
        raise ValueError(f"expected a quoted string, got {arg[:40]!r}")
    return _unescape(m.group(1)), bool(m.group(2))


@dataclass
class _Call:
    line: int
    pid: int
    name: str
    args: List[str]
    ret: Optional[int]
    errno: Optional[str]


def _read_calls(lines: Iterable[str], path: str) -> List[_Call]:
    calls: List[_Call] = []
    pending: Dict[Tuple[int, str], Tuple[int, str]] = {}
    for n, raw in enumerate(lines, 1):
        text = raw.rstrip("\n").rstrip("\r")
        if not text.strip():
            continue
        m = _ST_LINE.match(text)
        pid = int(m.group("pid1") or m.group("pid2") or 0)
        rest = m.group("rest").strip()
        if rest.startswith(("+++", "---")) or rest.startswith("strace:"):
            if rest.startswith("+++ exited") or rest.startswith("+++ killed"):
                calls.append(_Call(n, pid, "+++exit", [], None, None))
            continue
        r = _ST_RESUMED.match(rest)
        if r is not None:
            key = (pid, r.group("name"))
            if key not in pending:
                raise ImportError_(f"'{r.group('name')} resumed' without its unfinished "
                                   "call", path=path, line=n)
            start, head = pending.pop(key)
            rest = head + r.group("args")
            line_no = start
        else:
            line_no = n
        c = _ST_CALL.match(rest)
        if c is None:
            raise ImportError_(f"not an strace line: {text[:60]!r}", path=path, line=n)
        if c.group("unfinished"):
            pending[(pid, c.group("name"))] = (n, f"{c.group('name')}({c.group('args')}")
            continue
        res = _ST_RESULT.match(c.group("args"))
        if res is None:
            if c.group("name") in ("exit", "exit_group"):
                continue
            raise ImportError_(f"{c.group('name')}: no result (expected '... ) = N'): "
                               f"{text[:60]!r}", path=path, line=n)
        ret_text = res.group("ret")
        ret = None if ret_text == "?" else int(ret_text, 0)
        err = res.group("errno")
        if ret is not None and ret < 0 and err is None:
            raise ImportError_(f"{c.group('name')}: result {ret} without an errno name",
                               path=path, line=n)
        calls.append(_Call(line_no, pid, c.group("name"), _split_args(res.group("args")),
                           None if err else ret, err))
    if pending:
        (pid, name), (n, _) = next(iter(pending.items()))
        raise ImportError_(f"{name} never finished (strace cut short?)", path=path, line=n)
    return calls


def _int_arg(arg: str) -> int:
    a = arg.strip()
    if a in ("NULL",):
        return 0
    return int(a, 0)


def from_strace(lines: Iterable[str], *, path: str = "<log>",
                device: str = r"/dev/vhost-vdpa-\d+", qemu: Optional[str] = None,
                backend_features: Optional[int] = None, queue_pairs: int = 1,
                cvq_group: int = 1, memlock: Optional[object] = None) -> Imported:
    """Operations with ``expect`` from an strace log of a VMM (see the module doc).

    ``device``: a regular expression for the device path (the first such ``openat``
    that succeeded gives the fd; a ``close`` of it is ``release``; reopening is
    followed).  ``qemu``: the dialect whose sequence fills in what strace cannot show
    (default: ``"10.2"`` when ``GET_BACKEND_FEATURES`` comes before the first
    ``SET_STATUS``, else ``"7.2"``).  ``backend_features``: the mask
    ``SET_BACKEND_FEATURES`` acked (default: the dialect's, with ASID only if the log
    uses ASIDs and SUSPEND only if it suspends).  ``queue_pairs``/``cvq_group``: for
    the inferred vq of ``GET_VRING_GROUP`` and group of ``SET_GROUP_ASID``.
    """
    calls = _read_calls(lines, path)
    dev_re = re.compile(device)
    # --- pass 1: the device fds over time, and the dialect
    fds: set = set()
    seq: List[Tuple[_Call, str]] = []          # (call, kind) on a device fd
    for c in calls:
        if c.name == "+++exit":
            if fds:
                seq.append((c, "exit"))
            continue
        if c.name in ("openat", "open"):
            a = c.args[1] if c.name == "openat" else c.args[0]
            try:
                p, trunc = _string_arg(a)
            except ValueError as exc:
                raise ImportError_(f"{c.name}: {exc}", path=path, line=c.line) from None
            if dev_re.fullmatch(p.decode("latin-1")) and c.ret is not None:
                fds.add(c.ret)
                seq.append((c, "open"))
            continue
        if not c.args:
            continue
        try:
            fd = int(c.args[0], 0)
        except ValueError:
            continue
        if fd not in fds:
            continue
        if c.name == "close":
            seq.append((c, "close"))
            fds.discard(fd)
        elif c.name == "ioctl":
            seq.append((c, "ioctl"))
        elif c.name in ("write", "pwrite64", "writev"):
            seq.append((c, c.name))
    if not any(k == "open" for _, k in seq):
        raise ImportError_(f"no successful openat of a device matching {device!r} "
                           "(was strace run with -e trace=openat,ioctl,write?)", path=path)

    def req_of(c: _Call) -> int:
        a = c.args[1] if len(c.args) > 1 else ""
        if a in _BY_NAME:
            return _BY_NAME[a][0]
        try:
            return int(a, 0)
        except ValueError:
            raise ImportError_(f"ioctl: unknown request {a!r}", path=path,
                               line=c.line) from None

    reqs = [(c, req_of(c)) for c, k in seq if k == "ioctl"]
    names = [IOCTLS.get(r, ("?", None))[0] for _, r in reqs]
    if qemu is None:
        # 10.2 negotiates backend features in vhost_vdpa_init, before its first
        # add_status; 7.2 only after SET_FEATURES
        if "VHOST_VDPA_SET_STATUS" in names:
            first_set = names.index("VHOST_VDPA_SET_STATUS")
            qemu = "10.2" if "VHOST_GET_BACKEND_FEATURES" in names[:first_set] else "7.2"
        elif "VHOST_SET_BACKEND_FEATURES" in names and "VHOST_SET_FEATURES" in names:
            qemu = "7.2" if names.index("VHOST_SET_FEATURES") < \
                names.index("VHOST_SET_BACKEND_FEATURES") else "10.2"
        else:
            qemu = "10.2"
    if qemu not in QEMU_FEATURES:
        raise ImportError_(f"unknown QEMU dialect {qemu!r} (known: {', '.join(DIALECTS)})",
                           path=path)
    feats = backend_features
    if feats is None:
        feats = QEMU_FEATURES[qemu]
        # SUSPEND: QEMU acks it when offered; a log that stops a started device
        # (a SET_STATUS(0) after DRIVER_OK is set) without VHOST_VDPA_SUSPEND shows it
        # was not.  DRIVER_OK is the 3rd distinct add_status, so: a reset after a
        # GET/SET/GET/... run that reached it -- approximated by "some SET_STATUS
        # follows a VHOST_SET_VRING_KICK", i.e. a started device was reset.
        if "VHOST_VDPA_SUSPEND" not in names and "VHOST_SET_VRING_KICK" in names and \
                "VHOST_VDPA_SET_STATUS" in names[names.index("VHOST_SET_VRING_KICK"):]:
            feats &= ~int(F.SUSPEND)
        if not ({"VHOST_VDPA_GET_VRING_GROUP", "VHOST_VDPA_SET_GROUP_ASID"} & set(names)):
            feats &= ~int(F.IOTLB_ASID)

    # --- pass 2: operations
    ops: List[dict] = []
    skipped: Dict[str, int] = {}
    status = 0
    prev: Optional[str] = None          # previous vhost ioctl name on the device
    before_get: Optional[str] = None    # the ioctl before the GET_STATUS of add_status
    # the next ioctl after each position (writes skipped), for the probe's first
    # SET_STATUS, which is followed by VHOST_SET_FEATURES
    nxt: List[Optional[str]] = [None] * len(seq)
    upcoming: Optional[str] = None
    for i in range(len(seq) - 1, -1, -1):
        nxt[i] = upcoming
        if seq[i][1] == "ioctl":
            upcoming = IOCTLS.get(req_of(seq[i][0]), ("?", None))[0]
    confirm = False                     # the GET_STATUS after add_status' SET_STATUS
    vring_group_calls = 0

    def expect_of(c: _Call) -> dict:
        return {"ret": c.ret, "errno": c.errno}

    def emit(obj: dict, c: _Call, why: str = "", inferred: bool = False,
             expect: bool = True) -> None:
        d = dict(obj)
        if expect:
            d["expect"] = expect_of(c)
        comment = f"line {c.line}" + (f": {why}" if why else "")
        ops.append(_op(d, inferred=inferred, comment=comment))

    for pos, (c, kind) in enumerate(seq):
        if kind == "open":
            ops.append(_op({"op": "open", "expect": {"ret": 0, "errno": None}},
                           comment=f"line {c.line}: openat (fd {c.ret})"))
            status, prev = 0, None
            continue
        if kind in ("close", "exit"):
            if kind == "exit" and (not ops or ops[-1]["op"] == "release"):
                continue
            if kind == "close":
                emit({"op": "release"}, c, "close")
            else:
                emit({"op": "release"}, c, "process exit closes the fd", inferred=True,
                     expect=False)
            continue
        if kind in ("pwrite64", "writev"):
            raise ImportError_(f"{kind} to the device is not supported (QEMU uses "
                               "write())", path=path, line=c.line)
        if kind == "write":
            try:
                data, trunc = _string_arg(c.args[1])
                count = _int_arg(c.args[2])
            except (ValueError, IndexError) as exc:
                raise ImportError_(f"write: {exc}", path=path, line=c.line) from None
            if trunc or len(data) < count:
                raise ImportError_(f"write of {count} bytes shown truncated to "
                                   f"{len(data)}: run strace with -s 128 (and -xx)",
                                   path=path, line=c.line)
            ops.append(_msg_op(data[:count], c, expect_of(c)))
            continue
        # ioctl
        req = req_of(c)
        name, op = IOCTLS.get(req, (f"ioctl {req:#x}", None))
        if op is None:
            skipped[name] = skipped.get(name, 0) + 1
            prev = name
            continue
        if op == "set_status":
            if prev == "VHOST_VDPA_GET_STATUS":
                # vhost_vdpa_add_status: which bits, from what came before the GET
                if before_get == "VHOST_SET_FEATURES":
                    bits = FEATURES_OK                   # vhost_vdpa_set_features
                elif before_get in _INIT_IOCTLS or before_get in (
                        "VHOST_VDPA_SET_STATUS", "VHOST_VDPA_SUSPEND"):
                    bits = ACK | DRIVER                  # vhost_vdpa_init / reset_status
                else:
                    bits = DRIVER_OK                     # vhost_vdpa_dev_start
                value, why = status | bits, "vhost_vdpa_add_status: GET_STATUS | " \
                    f"{bits:#x}"
            elif nxt[pos] == "VHOST_SET_FEATURES":
                value, why = ACK | DRIVER, "vhost_vdpa_probe_cvq_isolation: ACK|DRIVER"
            elif prev == "VHOST_SET_FEATURES" and status & (ACK | DRIVER):
                value, why = status | FEATURES_OK, \
                    "vhost_vdpa_probe_cvq_isolation: |FEATURES_OK"
            else:
                value, why = 0, "a reset (no GET_STATUS before it)"
            emit({"op": "set_status", "status": value}, c, "status inferred: " + why,
                 inferred=True)
            if c.errno is None:
                status = value
            confirm = prev == "VHOST_VDPA_GET_STATUS"
            vring_group_calls = 0
        elif op == "set_backend_features":
            emit({"op": op, "features": feats}, c,
                 f"features inferred: QEMU {qemu}'s vhost_vdpa_set_backend_cap", inferred=True)
        elif op == "get_vring_group":
            vq = 2 * queue_pairs if vring_group_calls == 0 else vring_group_calls - 1
            vring_group_calls += 1
            emit({"op": op, "vq": vq}, c, "vq inferred (the CVQ first, then 0, 1...)",
                 inferred=True)
        elif op == "set_group_asid":
            emit({"op": op, "group": cvq_group, "asid": 1}, c,
                 "group/asid inferred: the CVQ group to VHOST_VDPA_NET_CVQ_ASID",
                 inferred=True)
            vring_group_calls = 0
        elif op == "get_status" and confirm:
            confirm = False
            emit({"op": op}, c, "vhost_vdpa_add_status: the GET_STATUS after SET_STATUS")
            prev = "confirming GET_STATUS"
            continue
        elif op == "get_status":
            before_get = prev
            emit({"op": op}, c, name)
        else:
            emit({"op": op}, c, name)
        prev = name
    return Imported(_with_memlock(ops, memlock), qemu, "strace", skipped, [])


#: ioctls of device initialisation: an add_status after them is ACK|DRIVER
_INIT_IOCTLS = frozenset((None, "VHOST_GET_FEATURES", "VHOST_GET_BACKEND_FEATURES",
                          "VHOST_SET_BACKEND_FEATURES", "VHOST_VDPA_GET_IOVA_RANGE",
                          "VHOST_SET_OWNER", "VHOST_VDPA_GET_DEVICE_ID",
                          "VHOST_VDPA_GET_CONFIG", "VHOST_VDPA_SET_CONFIG"))


def _msg_op(data: bytes, c: _Call, expect: dict) -> dict:
    """The operation of one written buffer: a structured message when it re-encodes
    to the same bytes, else a raw ``write``."""
    comment = f"line {c.line}"
    if len(data) == wire.VHOST_MSG_SIZE:
        import struct

        mtype, asid, iova, size, uaddr, perm, itype = struct.unpack_from("<iIQQQBB", data)
        names = {wire.VHOST_IOTLB_UPDATE: "update", wire.VHOST_IOTLB_INVALIDATE: "invalidate",
                 wire.VHOST_IOTLB_BATCH_BEGIN: "batch_begin",
                 wire.VHOST_IOTLB_BATCH_END: "batch_end"}
        if mtype in _MSG_TYPES and itype in names:
            obj = {"op": names[itype]}
            if names[itype] == "update":
                obj.update(iova=iova, size=size, uaddr=uaddr, perm=perm)
            elif names[itype] == "invalidate":
                obj.update(iova=iova, size=size)
            if _MSG_TYPES[mtype] == 1:
                obj["version"] = 1
            else:
                obj["asid"] = asid
            try:
                op = _op(dict(obj, expect=expect), comment=comment)
                if encode_op(op) == data:
                    return op
            except ValueError:
                pass
    return _op({"op": "write", "hex": data.hex(), "expect": expect}, comment=comment)


# ====================================================================== files
def read_log(path: str, kind: str, **options) -> Imported:
    """Import the log at ``path``: ``kind`` ``"qemu-trace"`` or ``"strace"``."""
    try:
        with open(path, "r", encoding="latin-1") as fp:
            lines = fp.read().splitlines()
    except OSError as exc:
        raise ImportError_(f"cannot read: {exc.strerror}", path=path) from None
    if kind == "qemu-trace":
        return from_qemu_trace(lines, path=path, **options)
    if kind == "strace":
        return from_strace(lines, path=path, **options)
    raise ValueError(f"unknown log kind {kind!r} (known: qemu-trace, strace)")


# ====================================================================== checking
@dataclass
class Difference:
    """One operation whose model answer differs from what the log saw."""

    index: int
    op: dict
    key: str
    expected: object
    found: object

    def __str__(self) -> str:
        from .trace import describe

        where = self.op.get("comment", f"op {self.index}")
        return (f"{where}: {describe(self.op)}: {self.key}: log saw {self.expected!r}, "
                f"model says {self.found!r}")


def check(ops: List[dict], backend="vdpa_sim", *, kernel: Optional[str] = None,
          memlock_pages: Optional[int] = None, **options) -> Tuple[int, List[Difference]]:
    """Replay ``ops`` on a fresh model device (``backend`` with ``options``, kernel
    profile ``kernel``) and compare every answer with the op's ``expect``: returns
    (ops checked, differences).

    >>> ops = [{"op": "open"}, {"op": "set_owner", "expect": {"ret": 0, "errno": None}},
    ...        {"op": "set_owner", "expect": {"ret": 0, "errno": None}}]
    >>> n, diffs = check([parse_op(o) for o in ops])
    >>> n, [(d.index, d.key, d.expected, d.found) for d in diffs]
    (2, [(2, 'errno', None, 'EBUSY'), (2, 'ret', 0, None)])
    """
    from .backend import load_backend
    from .expect import mismatches, observe
    from .vdpa import VhostVdpa

    be = load_backend(backend, **options) if isinstance(backend, str) else backend
    dev = VhostVdpa(be, kernel=kernel, memlock_pages=memlock_pages)
    diffs: List[Difference] = []
    checked = 0
    for i, op in enumerate(ops):
        out = observe(dev, op)
        exp = op.get("expect")
        if not exp:
            continue
        checked += 1
        for key, want, got in sorted(mismatches(exp, out), key=lambda t: t[0]):
            diffs.append(Difference(i, op, key, want, got))
    return checked, diffs


# ====================================================================== the command
HELP = """\
Turn what a VMM really sent into a trace (JSON Lines, see iotlb.trace) that
`iotlb replay` runs:

  iotlb import qemu-trace LOG   QEMU run with -trace 'vhost_vdpa_*' -D LOG
  iotlb import strace LOG       strace -f -e trace=openat,ioctl,write -X raw -xx -s 128

What the log cannot show is filled in from QEMU's known sequence and marked
"inferred": true.  An strace import carries what each call returned ("expect");
--check replays it on the model and reports every difference (exit status 1).
"""


def _mask(text: str) -> int:
    from .trace import _field, _FEAT

    t = text.strip()
    value = [x for x in t.replace(",", "|").split("|") if x] if not t[:1].isdigit() else t
    return _field("features", _FEAT, value)


def _pages(text: str):
    import argparse

    m = text.strip().lower()
    if m == "unlimited":
        return m
    try:
        n = int(m, 0)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a page count or 'unlimited', got {text!r}")
    return n


def add_arguments(p) -> None:
    """The arguments of ``iotlb import``."""
    p.add_argument("kind", choices=("qemu-trace", "strace"), help="what LOG is")
    p.add_argument("log", metavar="LOG")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="write the trace here (default: standard output)")
    p.add_argument("--qemu", choices=DIALECTS,
                   help="the QEMU sequence to infer from (default: told from the log)")
    p.add_argument("--backend-features", type=_mask, metavar="MASK",
                   help="what SET_BACKEND_FEATURES acked (a mask or names, e.g. "
                        "MSG_V2|BATCH); default: QEMU's choice given what the log shows")
    p.add_argument("--memlock", metavar="PAGES", type=_pages,
                   help="the VMM's RLIMIT_MEMLOCK in pages (or 'unlimited'): a memlock op "
                        "first (neither log shows it)")
    p.add_argument("--check", action="store_true",
                   help="replay on the model and compare with what the log saw (strace)")
    p.add_argument("--backend", default="vdpa_sim", help="for --check (default: %(default)s)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend option for --check (repeatable), e.g. batch_mapping=0")
    p.add_argument("--kernel", help="kernel profile for --check (default: the model's)")


def cmd(args, *, make_backend=None, parse_options=None) -> int:
    """Run ``iotlb import`` (parsed ``args``): write the trace, print a summary on
    standard error, and with ``--check`` the differences (exit status 1 if any)."""
    import sys

    from .trace import write_trace, to_json

    memlock = args.memlock
    res = read_log(args.log, args.kind, qemu=args.qemu,
                   backend_features=args.backend_features, memlock=memlock)
    if args.output:
        write_trace(args.output, res.ops, "jsonl")
    else:
        for op in res.ops:
            sys.stdout.write(to_json(op) + "\n")
    sys.stderr.write(f"iotlb import: {args.log}: {res.summary()}\n")
    for note in res.notes:
        sys.stderr.write(f"iotlb import: {args.log}: {note}\n")
    if not args.check:
        return 0
    options = parse_options(args.option or []) if parse_options else {}
    backend = make_backend(args.backend, options) if make_backend else args.backend
    checked, diffs = check(res.ops, backend, kernel=args.kernel)
    for d in diffs:
        sys.stderr.write(f"iotlb import: {args.log}: {d}\n")
    sys.stderr.write(f"iotlb import: {args.log}: {checked} answers compared with the model "
                     f"({args.backend}, kernel profile {args.kernel or 'default'}): "
                     f"{len(diffs)} differences\n")
    if not checked:
        sys.stderr.write(f"iotlb import: {args.log}: nothing to compare (a QEMU trace log "
                         "records no results; use an strace log)\n")
    return 1 if diffs else 0
