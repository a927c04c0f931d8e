"""Check the model against a real vhost-vdpa device: ``iotlb conform``.

Each trace runs twice, op by op: on a real ``/dev/vhost-vdpa-N`` (``os.open``,
``fcntl.ioctl``, ``os.write``; real user memory mapped at the trace's addresses) and
on a fresh model of the same parent, and every op where the two answer differently is
reported.  Per op it compares what :mod:`iotlb.expect` calls an outcome:

* the return value and the errno (by number: Python's ``ENOTSUP`` is the kernel's
  ``EOPNOTSUPP``), and the value a GET ioctl returns;
* ``VmPin`` from ``/proc/self/status`` (the owner's ``mm->pinned_vm``) against the
  model's pinned pages;
* where ftrace kprobes are available (root, tracefs, a parent listed in
  :data:`PARENT_SYMBOLS`): the errno ``vhost_vdpa_process_iotlb_msg`` returned for each
  message (a kretprobe: the reason behind every EFAULT), and the parent ops each op
  called, with their arguments (kprobes on the parent's ``vdpa_config_ops``).

User memory is real.  ``mmap`` ops of the trace are honoured (``MAP_FIXED_NOREPLACE``;
``memfd`` is shared memfd memory as QEMU's memory-backend-memfd, ``anon`` private
anonymous memory); a trace without any gets shared memfd memory under every UPDATE.
Each page is touched, then its frame is read from ``/proc/self/pagemap`` and handed
to the model (``UserMemory.place``), so that an UPDATE splits into the same physically
contiguous runs -- the same IOTLB entries and parent calls -- as in the kernel.  The
page size and ``RLIMIT_MEMLOCK`` are the running system's.

The model's parent comes from ``backend`` or, for ``vdpa_sim``, from its module
parameters in sysfs (``batch_mapping``, ``use_va``, ``max_iotlb_entries``); vhost-vdpa's
own ``max_iotlb_entries`` is read from sysfs too, and the address-space, group and vq
counts from the device itself.

``record`` writes each trace back with every op's real outcome as its ``"expect"`` and
the measured physical placement in its ``mmap`` ops: a golden file that ``iotlb
replay`` checks without the hardware.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import json
import os
import re
import resource
import struct
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import expect as ex
from . import trace as tr

__all__ = ["ConformError", "RealDevice", "RealMemory", "Tracer", "TraceResult",
           "SysfsConfig", "PARENT_SYMBOLS", "auto_memory", "run_trace", "read_config"]

# ------------------------------------------------------------------ ioctl numbers
# include/uapi/asm-generic/ioctl.h: dir << 30 | size << 16 | type << 8 | nr
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
VHOST_VIRTIO = 0xAF


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (VHOST_VIRTIO << 8) | nr


#: op -> (request, kind): the vhost / vhost-vdpa ioctls a trace can hold
#: (include/uapi/linux/vhost.h).
IOCTLS = {
    "set_owner": (_ioc(_IOC_NONE, 0x01, 0), "none"),
    "set_backend_features": (_ioc(_IOC_WRITE, 0x25, 8), "u64_in"),
    "get_backend_features": (_ioc(_IOC_READ, 0x26, 8), "u64_out"),
    "get_status": (_ioc(_IOC_READ, 0x71, 1), "u8_out"),
    "set_status": (_ioc(_IOC_WRITE, 0x72, 1), "u8_in"),
    "get_iova_range": (_ioc(_IOC_READ, 0x78, 16), "range_out"),
    "get_as_num": (_ioc(_IOC_READ, 0x7A, 4), "u32_out"),
    "get_vring_group": (_ioc(_IOC_READ | _IOC_WRITE, 0x7B, 8), "vring_state_inout"),
    "set_group_asid": (_ioc(_IOC_WRITE, 0x7C, 8), "vring_state_in"),
    "suspend": (_ioc(_IOC_NONE, 0x7D, 0), "none"),
    "resume": (_ioc(_IOC_NONE, 0x7E, 0), "none"),
    "get_vqs_count": (_ioc(_IOC_READ, 0x80, 4), "u32_out"),
    "get_group_num": (_ioc(_IOC_READ, 0x81, 4), "u32_out"),
}


class ConformError(Exception):
    """The check cannot run here (no device, no permission, memory in the way)."""


# ------------------------------------------------------------------ the device
class RealDevice:
    """A real vhost-vdpa character device driven op by op (no model involved)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1

    def run(self, op: dict) -> Dict[str, Any]:
        """Execute ``op``; return ``ret``, ``errno`` and ``value`` (the kernel's
        answer, as :mod:`iotlb.expect` names it)."""
        name = op["op"]
        out: Dict[str, Any] = {"ret": None, "errno": None, "value": None}
        try:
            if name in tr.MESSAGE_OPS:
                out["ret"] = os.write(self.fd, tr.encode_op(op))
            elif name == "open":
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                if self.fd < 0:
                    self.fd = fd
                else:  # a second open of a node already open: keep the first
                    os.close(fd)
                out["ret"] = 0
            elif name == "release":
                fd, self.fd = self.fd, -1
                os.close(fd)
                out["ret"] = 0
            else:
                out["ret"], out["value"] = 0, self._ioctl(name, op)
        except OSError as exc:
            out["ret"] = None
            out["errno"] = ex.errno_name(exc.errno)
        return out

    def _ioctl(self, name: str, op: dict):
        request, kind = IOCTLS[name]
        if kind == "none":
            fcntl.ioctl(self.fd, request)
            return None
        if kind == "u64_in":
            fcntl.ioctl(self.fd, request, struct.pack("<Q", op["features"]))
            return None
        if kind == "u8_in":
            fcntl.ioctl(self.fd, request, struct.pack("<B", op["status"]))
            return None
        if kind == "vring_state_in":
            fcntl.ioctl(self.fd, request, struct.pack("<II", op["group"], op["asid"]))
            return None
        if kind == "vring_state_inout":
            buf = bytearray(struct.pack("<II", op["vq"], 0))
            fcntl.ioctl(self.fd, request, buf, True)
            return struct.unpack("<II", buf)[1]
        size, fmt = {"u64_out": (8, "<Q"), "u8_out": (1, "<B"), "u32_out": (4, "<I"),
                     "range_out": (16, "<QQ")}[kind]
        buf = bytearray(size)
        fcntl.ioctl(self.fd, request, buf, True)
        values = struct.unpack(fmt, buf)
        return list(values) if len(values) > 1 else values[0]


# ------------------------------------------------------------------ user memory
_PROT_READ, _PROT_WRITE = 1, 2
_MAP_SHARED, _MAP_PRIVATE, _MAP_ANONYMOUS = 0x01, 0x02, 0x20
_MAP_FIXED_NOREPLACE = 0x100000
_MAP_FAILED = ctypes.c_void_p(-1).value


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


class RealMemory:
    """The owner's real memory for one trace: maps, measures and unmaps it, and sets
    ``RLIMIT_MEMLOCK`` (restored by :meth:`close`)."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._libc = _libc()
        self._maps: Dict[int, Tuple[int, Optional[int]]] = {}  # uaddr -> (size, memfd)
        self._limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)

    def mmap(self, uaddr: int, size: int, kind: str) -> List[Tuple[int, int, int]]:
        """Map ``[uaddr, uaddr+size)`` exactly there, touch every page, and return its
        physical placement as ``(offset, pa, length)`` runs."""
        fd = -1
        if kind == "memfd":
            fd = os.memfd_create(f"iotlb-{uaddr:x}", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            flags = _MAP_SHARED
        else:
            flags = _MAP_PRIVATE | _MAP_ANONYMOUS
        addr = self._libc.mmap(uaddr, size, _PROT_READ | _PROT_WRITE,
                               flags | _MAP_FIXED_NOREPLACE, fd, 0)
        if addr in (None, _MAP_FAILED) or addr != uaddr:
            err = ctypes.get_errno()
            if fd >= 0:
                os.close(fd)
            if addr not in (None, _MAP_FAILED):
                self._libc.munmap(addr, size)
            raise ConformError(f"mmap {kind} [{uaddr:#x}, +{size:#x}) failed: "
                               f"{os.strerror(err) if err else 'placed elsewhere'} (the "
                               "address range is in use by this process)")
        self._maps[uaddr] = (size, fd if fd >= 0 else None)
        step = self.page_size
        ctypes.memset(uaddr, 0, 1)
        for off in range(0, size, step):  # fault every page in (write: no zero page)
            ctypes.memset(uaddr + off, 0x5a, 1)
        return self.placement(uaddr, size)

    def placement(self, uaddr: int, size: int) -> List[Tuple[int, int, int]]:
        """``(offset, pa, length)`` runs of ``[uaddr, uaddr+size)`` from
        ``/proc/self/pagemap`` (needs CAP_SYS_ADMIN to see frame numbers)."""
        ps = self.page_size
        n = size // ps
        with open("/proc/self/pagemap", "rb") as fp:
            fp.seek((uaddr // ps) * 8)
            raw = fp.read(n * 8)
        runs: List[List[int]] = []
        for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
            if not entry >> 63 & 1:
                raise ConformError(f"page {uaddr + i * ps:#x} is not present after being "
                                   "touched")
            pfn = entry & ((1 << 55) - 1)
            if pfn == 0:
                raise ConformError("/proc/self/pagemap hides frame numbers: run as root "
                                   "(CAP_SYS_ADMIN)")
            if runs and runs[-1][1] + runs[-1][2] == pfn * ps:
                runs[-1][2] += ps
            else:
                runs.append([i * ps, pfn * ps, ps])
        return [tuple(r) for r in runs]  # type: ignore[misc]

    def munmap(self, uaddr: int, size: int) -> None:
        if self._libc.munmap(uaddr, size) != 0:
            raise ConformError(f"munmap [{uaddr:#x}, +{size:#x}): "
                               f"{os.strerror(ctypes.get_errno())}")
        # the memfds stay open until close(): an unmapped part keeps its file alive

    def memlock(self, pages: Optional[int]) -> None:
        value = (resource.RLIM_INFINITY if pages is None
                 else min(pages * self.page_size, (1 << 64) - 1))
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (value, value))

    def close(self) -> None:
        for uaddr, (size, fd) in self._maps.items():
            self._libc.munmap(uaddr, size)
            if fd is not None:
                os.close(fd)
        self._maps.clear()
        resource.setrlimit(resource.RLIMIT_MEMLOCK, self._limit)


_STATUS_FD = -1


def vmpin_pages(page_size: int) -> int:
    """``VmPin`` of this process in pages (``/proc/self/status``, kept open and
    re-read with ``pread``: this runs after every op)."""
    global _STATUS_FD
    if _STATUS_FD < 0:
        _STATUS_FD = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    text = os.pread(_STATUS_FD, 1 << 16, 0)
    i = text.find(b"\nVmPin:")
    if i < 0:
        raise ConformError("/proc/self/status has no VmPin line")
    return int(text[i + 7:text.index(b"kB", i)]) * 1024 // page_size


def memlock_pages(page_size: int) -> Optional[int]:
    """The soft ``RLIMIT_MEMLOCK`` in pages (None = unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft // page_size


def auto_memory(ops: List[dict], page_size: int) -> List[dict]:
    """The ``mmap`` ops a trace without any gets: shared memfd memory covering the
    page-aligned range of every UPDATE (raw writes included), overlapping and adjacent
    ranges merged.

    >>> auto_memory([{"op": "update", "iova": 0, "size": 0x1800, "uaddr": 0x10000800},
    ...              {"op": "update", "iova": 0, "size": 0x10, "uaddr": 0x10002000}], 4096)
    [{'op': 'mmap', 'uaddr': 268435456, 'size': 12288, 'kind': 'memfd', 'pa': None}]
    """
    from .wire import VHOST_IOTLB_UPDATE, decode

    spans = []
    for op in ops:
        if op["op"] == "update":
            uaddr, size = op["uaddr"], op["size"]
        elif op["op"] == "write":
            try:
                msg = decode(bytes(op["data"]), asid_acked=True)
            except Exception:
                continue
            if msg.type != VHOST_IOTLB_UPDATE:
                continue
            uaddr, size = msg.uaddr, msg.size
        else:
            continue
        if size == 0 or uaddr + size > 1 << 64:
            continue
        lo = uaddr & ~(page_size - 1)
        hi = -(-(uaddr + size) // page_size) * page_size
        spans.append((lo, hi))
    spans.sort()
    merged: List[List[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [{"op": "mmap", "uaddr": lo, "size": hi - lo, "kind": "memfd", "pa": None}
            for lo, hi in merged]


# ------------------------------------------------------------------ kprobes
#: parent driver (kernel module) -> {parent op: its vdpa_config_ops function}.  The
#: arguments probed are those of :data:`iotlb.expect.PARENT_OPS` (x86-64 ``$argN``;
#: ``$arg1`` is the ``struct vdpa_device *``).
PARENT_SYMBOLS = {
    "vdpa_sim": {"set_map": "vdpasim_set_map", "dma_map": "vdpasim_dma_map",
                 "dma_unmap": "vdpasim_dma_unmap", "reset_map": "vdpasim_reset_map",
                 "compat_reset": "vdpasim_compat_reset", "reset": "vdpasim_reset",
                 "set_group_asid": "vdpasim_set_group_asid", "suspend": "vdpasim_suspend",
                 "resume": "vdpasim_resume"},
    "vduse": {"set_map": "vduse_vdpa_set_map", "reset": "vduse_vdpa_reset",
              "set_group_asid": "vduse_set_group_asid"},
}
_ARG_TYPES = {"asid": "u32", "iova": "x64", "size": "x64", "pa": "x64", "perm": "u32",
              "flags": "u32", "group": "u32"}
_GROUP = "iotlb_conform"
_EVENT = re.compile(r"\s(\w+): \((\w+)[^)]*\)\s*(.*)$")


class Tracer:
    """ftrace kprobes on the parent's ops and a kretprobe on
    ``vhost_vdpa_process_iotlb_msg``, read after every op."""

    def __init__(self, module: str, tracefs: str = "/sys/kernel/tracing") -> None:
        self.module = module
        self.tracefs = tracefs
        self.parent_ops = module in PARENT_SYMBOLS
        self._defined = False
        self.absent: List[str] = []
        self._pipe = -1

    def _write(self, name: str, text: str, append: bool = False) -> None:
        # os.open, not open(): Python seeks to the end of a file opened for append,
        # which tracefs refuses with EINVAL
        flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
        fd = os.open(os.path.join(self.tracefs, name), flags)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def start(self) -> None:
        """Define and enable the probes; raise :class:`ConformError` when the kernel
        has no kprobe events or the symbols are missing."""
        if not os.path.exists(os.path.join(self.tracefs, "kprobe_events")):
            raise ConformError(f"no {self.tracefs}/kprobe_events (mount tracefs; needs "
                               "root and CONFIG_KPROBE_EVENTS)")
        self.stop()
        defs = [f"r:{_GROUP}/msg vhost_vdpa:vhost_vdpa_process_iotlb_msg ret=$retval:s32"]
        if self.parent_ops:
            for op, sym in PARENT_SYMBOLS[self.module].items():
                args = " ".join(f"{a}=$arg{i + 2}:{_ARG_TYPES[a]}"
                                for i, a in enumerate(ex.PARENT_OPS[op]))
                defs.append(f"p:{_GROUP}/{op} {self.module}:{sym} {args}".rstrip())
        #: parent ops whose function this kernel's module lacks (e.g. reset_map and
        #: compat_reset before v6.7): never called, so their absence is exact
        self.absent = []
        try:
            for d in defs:
                try:
                    self._write("kprobe_events", d + "\n", append=True)
                except OSError:
                    if not d.startswith("p:"):
                        raise
                    self.absent.append(d.split()[0].split("/")[1])
                    continue
                self._defined = True
            self._defined = True
            self._write(f"events/{_GROUP}/enable", "1")
            self._write("tracing_on", "1")
            self._write("trace", "")
        except OSError as exc:
            self.stop()
            raise ConformError(f"cannot set kprobes ({exc.strerror}): {d}") from None

    def stop(self) -> None:
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        try:
            self._write(f"events/{_GROUP}/enable", "0")
        except OSError:
            pass
        try:
            with open(os.path.join(self.tracefs, "kprobe_events")) as fp:
                mine = [line.split()[0] for line in fp if f":{_GROUP}/" in line]
            for m in mine:
                self._write("kprobe_events", f"-:{m.split(':', 1)[1]}\n", append=True)
        except OSError:
            pass
        self._defined = False

    def _read_events(self) -> str:
        """Everything traced since the last read: drained from ``trace_pipe``
        (non-blocking), or read from ``trace`` and cleared where there is no pipe."""
        pipe = os.path.join(self.tracefs, "trace_pipe")
        if self._pipe < 0 and os.path.exists(pipe):
            self._pipe = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if self._pipe < 0:
            with open(os.path.join(self.tracefs, "trace")) as fp:
                text = fp.read()
            self._write("trace", "")
            return text
        chunks = []
        while True:
            try:
                chunk = os.read(self._pipe, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def take(self) -> Tuple[List[Optional[int]], List[str]]:
        """``(handler returns, parent calls)`` since the last call."""
        text = self._read_events()
        rets: List[Optional[int]] = []
        calls: List[str] = []
        if not text:
            return rets, calls
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = _EVENT.search(line)
            if not m:
                continue
            event, _sym, rest = m.groups()
            fields = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
            if event == "msg":
                rets.append(int(fields["ret"]))
            elif event in ex.PARENT_OPS:
                calls.append(ex.format_parent(event, tuple(
                    int(fields[a], 0) for a in ex.PARENT_OPS[event])))
        return rets, normalize_parent(calls)


def normalize_parent(calls: List[str]) -> List[str]:
    """vdpa_sim's ``reset()`` is ``compat_reset(0)`` inside: one call at the
    vhost-vdpa boundary, whether or not the compiler inlined the inner one.

    >>> normalize_parent(["reset()", "compat_reset(0)", "compat_reset(1)"])
    ['reset()', 'compat_reset(1)']
    """
    out: List[str] = []
    for c in calls:
        if c == "compat_reset(0)" and out and out[-1] == "reset()":
            continue
        out.append(c)
    return out


# ------------------------------------------------------------------ configuration
class SysfsConfig(dict):
    """What the running system says about the device: parent module, its module
    parameters, vhost-vdpa's ``max_iotlb_entries``, the kernel release."""


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fp:
            return fp.read().strip()
    except OSError:
        return None


#: vdpa management device (``vdpa mgmtdev show``) or kernel module -> model parent.
PARENT_OF = {"vdpasim_net": "vdpa_sim", "vdpa_sim": "vdpa_sim", "mlx5_vdpa": "mlx5",
             "vp_vdpa": "vp_vdpa", "vduse": "vduse", "ifcvf": "ifcvf",
             "octep_vdpa": "octep_vdpa", "pds_vdpa": "pds_vdpa", "snet_vdpa": "snet_vdpa",
             "alibaba_eni_vdpa": "alibaba_eni_vdpa"}


def _mgmtdev(vdpa_name: str) -> Optional[str]:
    """The management device of a vdpa device, from iproute2's ``vdpa -j dev show``."""
    import shutil
    import subprocess

    tool = shutil.which("vdpa")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "-j", "dev", "show", vdpa_name], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        return json.loads(out)["dev"][vdpa_name]["mgmtdev"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None


def read_config(dev_path: str, sysfs: str = "/sys") -> SysfsConfig:
    """The parent driver behind ``dev_path`` (e.g. ``/dev/vhost-vdpa-0``) and the
    module parameters the model needs.  The vdpa device is the sysfs directory on the
    vdpa bus holding ``vhost-vdpa-N``; its parent is named by its management device
    (``vdpa dev show``), else by the one parent module loaded."""
    cfg = SysfsConfig(release=os.uname().release, parent=None, params={}, vdpa_device=None,
                      mgmtdev=None)
    name = os.path.basename(dev_path)
    bus = os.path.join(sysfs, "bus", "vdpa", "devices")
    for vdpa in sorted(os.listdir(bus)) if os.path.isdir(bus) else ():
        if os.path.exists(os.path.join(bus, vdpa, name)):
            cfg["vdpa_device"] = vdpa
            break
    if cfg["vdpa_device"] and sysfs == "/sys":
        cfg["mgmtdev"] = _mgmtdev(cfg["vdpa_device"])
    mgmt = (cfg["mgmtdev"] or "").split("/")[0]
    if mgmt in PARENT_OF:
        cfg["parent"] = PARENT_OF[mgmt]
    else:
        loaded = [m for m in PARENT_OF if os.path.isdir(os.path.join(sysfs, "module", m))]
        parents = {PARENT_OF[m] for m in loaded}
        if len(parents) == 1:
            cfg["parent"] = parents.pop()
    for module in ("vdpa_sim", "vhost_vdpa"):
        d = os.path.join(sysfs, "module", module, "parameters")
        if os.path.isdir(d):
            cfg["params"][module] = {p: _read(os.path.join(d, p)) for p in sorted(os.listdir(d))}
    return cfg


def _flag(value: Optional[str]) -> bool:
    return (value or "").strip().upper() in ("1", "Y", "YES", "TRUE")


def model_options(cfg: SysfsConfig) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(backend options, VhostVdpa options)`` for the model from ``cfg``."""
    backend: Dict[str, Any] = {}
    device: Dict[str, Any] = {}
    sim = cfg["params"].get("vdpa_sim")
    if cfg["parent"] == "vdpa_sim" and sim:
        if sim.get("batch_mapping") is not None:
            backend["batch_mapping"] = _flag(sim["batch_mapping"])
        if sim.get("use_va") is not None:
            backend["use_va"] = _flag(sim["use_va"])
        if sim.get("max_iotlb_entries") is not None:
            backend["max_iotlb_entries"] = int(sim["max_iotlb_entries"])
    vv = cfg["params"].get("vhost_vdpa") or {}
    if vv.get("max_iotlb_entries") is not None:
        device["max_iotlb_entries"] = int(vv["max_iotlb_entries"])
    return backend, device


# ------------------------------------------------------------------ one trace
class TraceResult:
    """The comparison of one trace: per-op differences and, for recording, the
    kernel's outcomes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ops = 0
        self.differences: List[dict] = []
        self.recorded: List[dict] = []
        self.error: Optional[str] = None
        self.seconds = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.differences

    def as_dict(self) -> dict:
        return {"trace": self.name, "ok": self.ok, "ops": self.ops,
                "differing": len(self.differences), "differences": self.differences,
                "error": self.error, "seconds": round(self.seconds, 3)}


def run_trace(name: str, ops: List[dict], *, device_path: str,
              make_model: Callable[[], Tuple[Any, Any]], page_size: int,
              tracer: Optional[Tracer] = None, record: Optional[dict] = None,
              real: Any = None, vmpin: Callable[[int], int] = None) -> TraceResult:
    """Run ``ops`` on the real device and on a fresh model (``make_model()`` returns
    ``(VhostVdpa, ParentLog or None)``); compare op by op.  ``real`` (a
    :class:`RealDevice` of ``device_path`` by default) and ``vmpin`` (default
    :func:`vmpin_pages`) are the kernel side.  ``record``: keep the ops with the
    kernel's outcomes as expectations, after a meta op whose ``recorded`` is it."""
    vmpin = vmpin or vmpin_pages
    result = TraceResult(name)
    t0 = time.monotonic()
    ops = [dict(op) for op in ops if op["op"] != "meta" or record is not None]
    if record is not None:
        meta = next((op for op in ops if op["op"] == "meta"), None)
        if meta is None:
            meta = {"op": "meta", "rules": None}
            ops.insert(0, meta)
        meta["recorded"] = record
    first = next((i for i, op in enumerate(ops) if op["op"] != "meta"), len(ops))
    # the system's RLIMIT_MEMLOCK, said explicitly so that a recording replays under it
    setup = [{"op": "memlock", "pages": memlock_pages(page_size)}]
    if not any(op["op"] == "mmap" for op in ops):
        setup += auto_memory(ops, page_size)
    ops[first:first] = setup
    real = real if real is not None else RealDevice(device_path)
    mem = RealMemory(page_size)
    model, log = make_model()
    start_pin = vmpin(page_size)
    try:
        if tracer is not None:
            tracer.take()
        for index, op in enumerate(ops):
            if op["op"] == "meta":
                result.recorded.append(op)
                continue
            result.ops += 1
            kernel = _run_real(real, mem, op, page_size, tracer, start_pin, vmpin)
            if op["op"] == "mmap":
                op["pa"] = kernel.pop("pa")
            model_out = ex.observe(model, op, log)
            if tracer is None or op["op"] not in tr.MESSAGE_OPS:
                model_out.pop("handler", None)
            if tracer is None or not tracer.parent_ops:
                model_out.pop("parent", None)
            keys = [k for k in ex.KEYS if k in kernel]
            diff = ex.mismatches({k: kernel[k] for k in keys}, model_out)
            if diff:
                result.differences.append({
                    "index": index, "line": op.get("_line"), "op": tr.describe(op),
                    "kernel": {k: kernel[k] for k in keys},
                    "model": {k: model_out.get(k) for k in keys},
                    "keys": [d[0] for d in diff]})
            if record is not None:
                rec = {k: v for k, v in op.items() if not k.startswith("_")}
                rec["expect"] = kernel
                result.recorded.append(rec)
    except ConformError as exc:
        result.error = str(exc)
    finally:
        real.close()
        mem.close()
        if tracer is not None:
            try:
                tracer.take()
            except OSError:
                pass
    left = vmpin(page_size) - start_pin
    if left and result.error is None:
        result.error = f"{left} pages still pinned after the trace closed the device"
    result.seconds = time.monotonic() - t0
    return result


def _run_real(real: RealDevice, mem: RealMemory, op: dict, page_size: int,
              tracer: Optional[Tracer], start_pin: int,
              vmpin: Callable[[int], int]) -> Dict[str, Any]:
    name = op["op"]
    if name == "mmap":
        out: Dict[str, Any] = {"ret": 0, "errno": None, "value": None}
        out["pa"] = mem.mmap(op["uaddr"], op["size"], op.get("kind", "memfd"))
    elif name == "munmap":
        mem.munmap(op["uaddr"], op["size"])
        out = {"ret": 0, "errno": None, "value": None}
    elif name == "memlock":
        mem.memlock(op["pages"])
        out = {"ret": 0, "errno": None, "value": None}
    else:
        out = real.run(op)
    out["vmpin"] = vmpin(page_size) - start_pin
    if tracer is not None:
        rets, calls = tracer.take()
        if name in tr.MESSAGE_OPS:
            if len(rets) > 1:
                raise ConformError(f"{len(rets)} handler returns for one write")
            out["handler"] = ex.errno_name(-rets[0]) if rets else None
        if tracer.parent_ops:
            out["parent"] = calls
    return out


def load_ops(path: str) -> List[dict]:
    """All ops of a JSON Lines trace (``_line`` = its line); a bad line raises
    :class:`iotlb.trace.TraceError`."""
    ops = []
    for entry in tr.read_trace(path, "jsonl"):
        if entry.error is not None:
            raise entry.error
        op = dict(entry.op)
        op["_line"] = entry.where.line
        ops.append(op)
    return ops


def iter_traces(paths: Iterable[str]) -> List[str]:
    """The ``.jsonl`` files named, directories searched recursively, sorted."""
    out: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, _dirs, files in os.walk(p):
                out.extend(os.path.join(root, f) for f in files if f.endswith(".jsonl"))
        else:
            out.append(p)
    return sorted(out)


def write_recorded(path: str, ops: List[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fp:
        for op in ops:
            fp.write(tr.to_json({k: v for k, v in op.items() if not k.startswith("_")}))
            fp.write("\n")


def summarize(results: List[TraceResult]) -> Dict[str, Any]:
    ops = sum(r.ops for r in results)
    differing = sum(len(r.differences) for r in results)
    return {"traces": len(results), "failed": sum(1 for r in results if not r.ok),
            "ops": ops, "agreed": ops - differing, "differing": differing,
            "errors": sum(1 for r in results if r.error)}


def json_dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


_ = _errno  # errno numbers are named through iotlb.expect


# ------------------------------------------------------------------ the command
HELP = """\
Run traces on a real vhost-vdpa device and through the model, and print every op
where they differ (return value, errno, GET value, VmPin; with kprobes also the
message handler's errno and the parent ops called).  Exit status: 0 when the model
agrees with the kernel on every op, 1 on any difference or a trace that could not run,
2 for bad input (no device, unreadable trace, unknown backend).

On your own hardware (mlx5, vp_vdpa, ...), as root, with vhost_vdpa loaded and the
device bound to it (`vdpa dev add ...`; /dev/vhost-vdpa-N exists), no VM using it:

    iotlb conform --device /dev/vhost-vdpa-0 --backend mlx5 tests/corpus
    iotlb conform --backend mlx5 --record results/ tests/corpus   # send us results/

The model's parent is --backend (with NAME:KEY=VALUE,... options), or, for vdpa_sim,
taken from its module parameters in sysfs.  The kernel profile is --kernel, or picked
from `uname -r`.  Parent-op and handler checks need tracefs kprobes (root); they are
skipped, and said so, where unavailable (--no-kprobes skips them on purpose).  The
device must be idle: each trace opens it, drives it and releases it.
"""


def add_arguments(p) -> None:
    p.add_argument("traces", nargs="+", metavar="TRACE",
                   help="JSON Lines traces, or directories of them (searched recursively)")
    p.add_argument("--device", default="/dev/vhost-vdpa-0",
                   help="the vhost-vdpa character device (default: %(default)s)")
    p.add_argument("--backend", metavar="NAME[:K=V,...]",
                   help="the model's parent (default: from sysfs, vdpa_sim only)")
    p.add_argument("--kernel", metavar="PROFILE",
                   help="the model's kernel profile (default: from `uname -r`)")
    p.add_argument("--record", metavar="DIR",
                   help="write each trace with the kernel's outcomes as expectations")
    p.add_argument("--no-kprobes", action="store_true",
                   help="do not compare the handler errno and the parent ops")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--max-diffs", type=int, default=10, metavar="N",
                   help="differing ops shown per trace (default: %(default)s)")


def _profile(requested: Optional[str], release: str) -> Tuple[Optional[str], str]:
    import iotlb

    known = getattr(iotlb, "KERNELS", None)
    if known is None:  # pragma: no cover - profiles arrive with the kernel-profile work
        return None, "the model has no kernel profiles"
    if requested:
        if requested not in known:
            raise ValueError(f"unknown kernel profile {requested!r} (known: "
                             f"{', '.join(known)})")
        return requested, f"{requested} (--kernel)"
    picked = iotlb.kernel_profile_for_release(release)
    return picked, f"{picked} (from uname -r {release})"


def cmd(args, make_backend: Callable[[str], Tuple[str, Any, Dict[str, Any]]]) -> int:
    """``iotlb conform``; ``make_backend(spec)`` -> (name, backend class factory, options)."""
    import sys

    import iotlb
    from .vdpa import VhostVdpa

    paths = iter_traces(args.traces)
    if not paths:
        raise ValueError("no .jsonl traces found in " + " ".join(args.traces))
    traces = [(p, load_ops(p)) for p in paths]   # bad input: before touching the device
    if not os.path.exists(args.device):
        raise ConformError(f"{args.device} does not exist (load vhost_vdpa and add a "
                           "vDPA device: `vdpa dev add ...`)")
    cfg = read_config(args.device)
    sim_options, dev_options = model_options(cfg)
    if args.backend:
        name, factory, options = make_backend(args.backend)
    elif cfg["parent"] == "vdpa_sim":
        name, factory, options = make_backend("vdpa_sim")
        options = {**options, **sim_options}
    else:
        raise ConformError(f"cannot tell which parent drives {args.device} (vdpa device "
                           f"{cfg['vdpa_device']}, management device {cfg['mgmtdev']}); "
                           "name its model with --backend")
    kernel, kernel_text = _profile(args.kernel, cfg["release"])
    if kernel is not None:
        dev_options["kernel"] = kernel
    page_size = os.sysconf("SC_PAGE_SIZE")
    tracer = None
    probe_text = "off (--no-kprobes)"
    if not args.no_kprobes:
        module = "vdpa_sim" if cfg["parent"] == "vdpa_sim" else (cfg["parent"] or "")
        try:
            tracer = Tracer(module)
            tracer.start()
            probe_text = ("handler errno and parent ops" if tracer.parent_ops else
                          f"handler errno only (no probe table for parent {module!r})")
            if tracer.absent:
                probe_text += (f" ({', '.join(tracer.absent)}: not in this kernel's "
                               f"{module})")
        except (ConformError, OSError) as exc:
            tracer = None
            probe_text = f"off: {exc}"

    def make_model():
        backend = factory(**options)
        log = ex.ParentLog(backend)
        return VhostVdpa(backend, page_size=page_size, **dev_options), log

    head = {"device": args.device, "release": cfg["release"], "parent": cfg["parent"],
            "params": cfg["params"], "backend": name, "backend_options": options,
            "device_options": dev_options, "kernel_profile": kernel_text,
            "kprobes": probe_text, "engine": iotlb.IMPLEMENTATION}
    if not args.json:
        opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
        print(f"iotlb conform: {args.device} on {cfg['release']} (parent "
              f"{cfg['parent'] or 'unknown'}); model {name}({opts}), kernel profile "
              f"{kernel_text}; kprobes: {probe_text}")
        sys.stdout.flush()
    if args.record:
        os.makedirs(args.record, exist_ok=True)
    recorded = {"release": cfg["release"], "profile": kernel, "backend": name,
                "options": options,
                "device_options": {k: v for k, v in dev_options.items() if k != "kernel"},
                "parent": cfg["parent"], "kprobes": probe_text, "page_size": page_size}
    results: List[TraceResult] = []
    try:
        for path, ops in traces:
            res = run_trace(os.path.relpath(path), ops, device_path=args.device,
                            make_model=make_model, page_size=page_size, tracer=tracer,
                            record=recorded if args.record else None)
            results.append(res)
            if args.record and res.error is None:
                write_recorded(os.path.join(args.record, os.path.basename(path)),
                               res.recorded)
            if not args.json:
                _print_result(res, args.max_diffs)
    finally:
        if tracer is not None:
            tracer.stop()
    summary = summarize(results)
    if args.json:
        print(json_dump({**head, **summary, "ok": summary["failed"] == 0,
                         "results": [r.as_dict() for r in results]}))
    else:
        print(f"{summary['traces']} traces, {summary['ops']} ops: {summary['agreed']} "
              f"agreed, {summary['differing']} differing; {summary['failed']} traces "
              f"failed ({summary['errors']} could not run)")
    return 0 if summary["failed"] == 0 else 1


def _print_result(res: TraceResult, max_diffs: int) -> None:
    if res.ok:
        print(f"PASS {res.name} ({res.ops} ops)")
        return
    if res.error:
        print(f"FAIL {res.name}: {res.error}")
    if res.differences:
        print(f"FAIL {res.name}: {len(res.differences)} of {res.ops} ops differ")
    for d in res.differences[:max_diffs]:
        where = f"line {d['line']}" if d.get("line") else f"op {d['index']}"
        print(f"  {where}: {d['op']}")
        for key in d["keys"]:
            print(f"    - kernel {key}: {_show(d['kernel'][key])}")
            print(f"    + model  {key}: {_show(d['model'].get(key))}")
    if len(res.differences) > max_diffs:
        print(f"  ... {len(res.differences) - max_diffs} more")


def _show(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(str(x) if isinstance(x, str) else hex(x) for x in v) + "]"
    return "none" if v is None else str(v)
