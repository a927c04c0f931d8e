"""QEMU-like scenarios: what a VMM really sends to ``/dev/vhost-vdpa-N``, step by step.

Every scenario drives a fresh :class:`iotlb.vdpa.VhostVdpa` on a fresh backend
through a :class:`Session`, which sends each IOTLB message through ``write()`` as a
72-byte ``vhost_msg_v2`` (encoded by :mod:`iotlb.wire`) and each ioctl through the
device method, recording *what was sent* (a replayable trace, :mod:`iotlb.trace`),
*what happened* (ok, or the errno userspace sees and the handler's errno behind it),
and, at check points, *observations*: does the device translate every page userspace
mapped to the right address (the user address in VA mode, the physical address of
the user-memory model in PA mode), what the device holds instead (identity, nothing,
stale entries), pins, messages.

The sequences follow QEMU 10.2.2 (``hw/virtio/vhost-vdpa.c``, ``net/vhost-vdpa.c``,
``hw/virtio/vhost.c``; docs/qemu.md), each step's docstring naming the QEMU function it
mirrors:

=======================  =================================================================
``boot``                 open, GET_IOVA_RANGE; ``vhost_vdpa_init``: GET/SET_BACKEND_FEATURES
                         (MSG_V2|BATCH|ASID|SUSPEND as offered; never PERSIST unless the
                         session plays a hypothetical PERSIST-aware VMM), add_status(ACK|
                         DRIVER); SET_OWNER (listener registered); the CVQ isolation probe
                         (... SET_STATUS(0)); RAM mapped at board init (a batch per
                         region, ASID 0); machine reset: SET_STATUS(0) + INVALIDATE batch;
                         the driver's reset; FEATURES_OK, UPDATE batch, DRIVER_OK
``stop_start``           boot; QMP stop (SUSPEND if acked else SET_STATUS(0) + INVALIDATE
                         batch; SET_STATUS(0) [+ INVALIDATE batch]; ACK|DRIVER); cont
                         (FEATURES_OK, UPDATE batch, DRIVER_OK)
``guest_reset``          QMP system_reset: stop, virtio_reset, the driver's reset, start
``persist_stop_start``   HYPOTHETICAL VMM: the same stop/start without the unmap / re-map
``hotplug``              boot; a DIMM hot-added: BATCH_BEGIN, UPDATE, BATCH_END
``hotunplug``            hotplug, then the DIMM removed: BATCH_BEGIN, INVALIDATE, BATCH_END
``shadow_cvq``           the control vq isolated in ASID 1 (GET_VRING_GROUP, SET_GROUP_ASID,
                         CVQ buffers then shadow rings, unbatched), then stop/cont
``netdev_hotplug``       netdev hot-plug: RAM mapped at SET_OWNER, the probe's
                         SET_STATUS(0), device_add's reset, DRIVER_OK re-maps (needs a CVQ)
``reset_reupdate``       HYPOTHETICAL VMM: SET_STATUS(0), re-UPDATE without INVALIDATE
``release_reopen``       boot; release (close); open again and boot again
``viommu``               a guest vIOMMU: at DRIVER_OK the listener goes to the vIOMMU, guest
                         IOMMU mappings replayed, then one unbatched UPDATE / INVALIDATE
                         per guest map / unmap, seeded churn
=======================  =================================================================

The guest is a realistic x86 layout (:class:`GuestLayout`): RAM below 4 GiB up to the
PCI hole at 3 GiB, the rest above 4 GiB, the legacy ROM/BIOS sections read-only.

>>> g = GuestLayout(parse_size("4G"))
>>> [(s.name, hex(s.iova), hex(s.size)) for s in g.sections][-2:]
[('bios', '0xfffc0000', '0x40000'), ('ram-above-4g', '0x100000000', '0x40000000')]
>>> r = run_scenario("stop_start", "vdpa_sim", guest=GuestLayout(parse_size("64M")))
>>> r.checkpoint("after SET_STATUS(0)").asids[0].device    # CLEAN_MAP reset
'identity'
>>> r.checkpoint("DRIVER_OK after restart").translates
True
"""
from __future__ import annotations

import errno as _errno
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from . import U64_MAX, IOTLBError, Perm, wire
from . import trace as _trace

__all__ = [
    "KiB", "MiB", "GiB", "TiB", "parse_size", "format_size",
    "Section", "GuestLayout", "BackendSpec", "Step", "AsidView", "Checkpoint", "Cost",
    "Session", "Scenario", "ScenarioResult", "SCENARIOS", "scenario", "run_scenario",
    "STATUS_ACK", "STATUS_DRIVER", "STATUS_FEATURES_OK", "STATUS_DRIVER_OK",
    "QEMU_BACKEND_FEATURES", "VARIANTS", "default_specs", "probe_features", "Cell",
    "run_matrix", "final_state",
]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

STATUS_ACK = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8

F = wire.BackendFeature
#: What QEMU's ``vhost_vdpa_set_backend_cap`` acks when offered.
QEMU_BACKEND_FEATURES = int(F.IOTLB_MSG_V2 | F.IOTLB_BATCH | F.IOTLB_ASID | F.SUSPEND)

_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1 << 50}


def parse_size(text) -> int:
    """A size in bytes from ``"4G"``, ``"512MiB"``, ``"1T"``, ``"0x1000"`` or an int
    (binary units).  ``ValueError`` on anything else.

    >>> parse_size("4G"), parse_size("1TiB") == 1 << 40, parse_size("2M"), parse_size(4096)
    (4294967296, True, 2097152, 4096)
    >>> parse_size("4X")
    Traceback (most recent call last):
    ...
    ValueError: bad size '4X' (expected e.g. 4G, 512M, 1T or a byte count)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    m = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(?:i?[bB])?", s)
    if not m or (m.group(1).startswith("0x") and m.group(2)):
        raise ValueError(f"bad size {text!r} (expected e.g. 4G, 512M, 1T or a byte count)")
    num, unit = m.group(1), m.group(2).upper()
    if num.startswith("0x"):
        return int(num, 16)
    value = float(num) * _UNITS[unit] if "." in num else int(num) * _UNITS[unit]
    return int(value)


def format_size(n: int) -> str:
    """``4G``, ``640K``, ``1.5G``... (binary units).

    >>> format_size(4 << 30), format_size(640 << 10), format_size(3 << 29), format_size(100)
    ('4G', '640K', '1.5G', '100B')
    >>> format_size(8000000)
    '7.63M'
    """
    for unit, mult in (("P", 1 << 50), ("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= mult:
            q = n / mult
            return f"{q:.0f}{unit}" if q == int(q) or q >= 100 else f"{q:.3g}{unit}"
    return f"{n}B"


# ======================================================================= guest memory
@dataclass(frozen=True)
class Section:
    """One memory-listener section: guest-physical ``[iova, iova+size)`` backed by the
    host user address ``uaddr``, mapped ``perm`` (RO for ROMs, RW for RAM)."""

    name: str
    iova: int
    size: int
    uaddr: int
    perm: int = int(Perm.RW)

    @property
    def last(self) -> int:
        return self.iova + self.size - 1

    def as_dict(self) -> dict:
        return {"name": self.name, "iova": self.iova, "size": self.size,
                "uaddr": self.uaddr, "perm": _PERM_TEXT.get(self.perm, self.perm)}


_PERM_TEXT = {0: "NONE", 1: "RO", 2: "WO", 3: "RW"}


class GuestLayout:
    """The memory sections QEMU's listener sends for an x86 (``pc``) guest of
    ``size`` bytes of RAM:

    * ``ram-low``       ``[0, 640K)`` RW -- conventional memory;
    * ``rom-option``    ``[0xc0000, 0xe0000)`` RO -- option ROMs (``pc.rom``);
    * ``rom-isa-bios``  ``[0xe0000, 1M)`` RO -- the BIOS alias below 1 MiB;
    * ``ram-below-4g``  ``[1M, min(size, 3G))`` RW;
    * ``bios``          ``[4G-256K, 4G)`` RO -- the BIOS at the top of 4 GiB;
    * ``ram-above-4g``  ``[4G, 4G + size - 3G)`` RW when ``size > 3G``.

    RAM is one host block (``uaddr`` = its base + offset, placed well away from the
    guest-physical addresses, so an identity-mapped device translates to the *wrong*
    place); the ROMs are two more blocks (the ISA-BIOS alias shares its pages with
    the top of the BIOS, as in QEMU).  Everything is page aligned.

    >>> g = GuestLayout(64 * MiB)
    >>> [s.name for s in g.sections]
    ['ram-low', 'rom-option', 'rom-isa-bios', 'ram-below-4g', 'bios']
    >>> g.total_pages == (64 * MiB - 256 * KiB + 256 * KiB + 128 * KiB) // 4096
    True
    """

    LOW_RAM_END = 0xA0000
    ROM_START = 0xC0000
    ISA_BIOS = 0xE0000
    HIGH_START = 0x100000
    PCI_HOLE = 3 * GiB
    BIOS_SIZE = 256 * KiB
    FOUR_G = 4 * GiB
    HVA_TOP = 0x7F00_0000_0000

    def __init__(self, size: int, *, page_size: int = 4096) -> None:
        size = parse_size(size)
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        if size < 2 * MiB:
            raise ValueError(f"guest size must be at least 2M, got {format_size(size)}")
        if size % page_size:
            raise ValueError(f"guest size must be a multiple of the page size "
                             f"({page_size}), got {size}")
        if size > 64 * TiB:
            raise ValueError(f"guest size must be at most 64T, got {format_size(size)}")
        self.size = size
        self.page_size = page_size
        below = min(size, self.PCI_HOLE)
        above = size - below
        ram_hva = (self.HVA_TOP - _round_up(size, GiB) - GiB)
        rom_hva = self.HVA_TOP + 0x10_0000_0000          # pc.rom, 128K
        bios_hva = rom_hva + 2 * MiB                      # pc.bios, 256K
        self.ram_hva = ram_hva
        secs = [
            Section("ram-low", 0, self.LOW_RAM_END, ram_hva, int(Perm.RW)),
            Section("rom-option", self.ROM_START, self.ISA_BIOS - self.ROM_START,
                    rom_hva, int(Perm.RO)),
            Section("rom-isa-bios", self.ISA_BIOS, self.HIGH_START - self.ISA_BIOS,
                    bios_hva + self.BIOS_SIZE - (self.HIGH_START - self.ISA_BIOS),
                    int(Perm.RO)),
            Section("ram-below-4g", self.HIGH_START, below - self.HIGH_START,
                    ram_hva + self.HIGH_START, int(Perm.RW)),
            Section("bios", self.FOUR_G - self.BIOS_SIZE, self.BIOS_SIZE, bios_hva,
                    int(Perm.RO)),
        ]
        if above:
            secs.append(Section("ram-above-4g", self.FOUR_G, above, ram_hva + below,
                                int(Perm.RW)))
        self.sections: Tuple[Section, ...] = tuple(secs)
        # device memory (hot-plug) starts 1 GiB-aligned after RAM above 4 GiB
        dimm_size = min(max(_round_down(size // 4, 2 * MiB), 2 * MiB), 128 * GiB)
        dimm_base = _round_up(self.FOUR_G + above, GiB)
        self.dimm = Section("dimm0", dimm_base, dimm_size, ram_hva - dimm_size - GiB,
                            int(Perm.RW))
        # shadow CVQ (ASID 1): SVQ rings + command buffers, IOVAs from the SVQ
        # IOVA tree's first fit starting at one page (page 0 is never handed out)
        heap = 0x5600_0000_0000
        p = page_size
        # what the listener sees during board init, before the firmware splits the
        # low RAM with the ROM/PAM regions: RAM below 4G whole, the BIOS, RAM above
        # 4G -- each added in its own memory transaction (its own batch)
        board = [Section("ram-below-4g (board init)", 0, below, ram_hva, int(Perm.RW)),
                 secs[4]]
        if above:
            board.append(secs[5])
        self.board_sections: Tuple[Section, ...] = tuple(board)
        # in QEMU 10.2's order: vhost_vdpa_net_cvq_start maps the buffers, then
        # vhost_vdpa_svqs_start the rings
        self.cvq = (
            Section("cvq-out-buffer", p, p, heap + 32 * p, int(Perm.RO)),
            Section("cvq-in-buffer", 2 * p, p, heap + 48 * p, int(Perm.RW)),
            Section("svq-driver-area", 3 * p, p, heap, int(Perm.RO)),
            Section("svq-device-area", 4 * p, p, heap + 16 * p, int(Perm.RW)),
        )
        # with a vIOMMU: the guest's IOMMU mappings that exist at DRIVER_OK (its
        # rings, mapped by the driver before it), replayed by
        # memory_region_iommu_replay; Linux's IOVA allocator works down from 4 GiB
        self.iommu_boot = (
            Section("iommu-ring-0", self.FOUR_G - 2 * p, p, ram_hva + 0x10_0000, int(Perm.RW)),
            Section("iommu-ring-1", self.FOUR_G - 4 * p, 2 * p, ram_hva + 0x20_0000,
                    int(Perm.RW)),
        )

    @property
    def total_pages(self) -> int:
        """Pages of all boot sections (what a PA-mode device pins for them)."""
        return sum(s.size for s in self.sections) // self.page_size

    def as_dict(self) -> dict:
        return {"size": self.size, "sections": [s.as_dict() for s in self.sections],
                "dimm": self.dimm.as_dict()}

    def __repr__(self) -> str:
        return f"GuestLayout({format_size(self.size)}, {len(self.sections)} sections)"


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _round_down(x: int, a: int) -> int:
    return x // a * a


# ======================================================================= backends
@dataclass(frozen=True)
class BackendSpec:
    """A backend to instantiate: registry ``name``, constructor ``options`` and a
    display ``label``; :meth:`create` returns a fresh instance each call.

    >>> BackendSpec("vdpa_sim", {"batch_mapping": False}).label
    'vdpa_sim (batch_mapping=False)'
    """

    name: str
    options: Tuple[Tuple[str, object], ...] = ()
    display: Optional[str] = None

    def __init__(self, name: str, options=None, label: Optional[str] = None) -> None:
        opts = tuple(sorted(dict(options or {}).items()))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "display", label)

    @property
    def label(self) -> str:
        if self.display:
            return self.display
        if not self.options:
            return self.name
        return f"{self.name} ({', '.join(f'{k}={v!r}' for k, v in self.options)})"

    def create(self):
        from .backend import load_backend

        return load_backend(self.name, **dict(self.options))


# ======================================================================= records
@dataclass
class Step:
    """One operation sent: ``op`` (a trace operation), ``label`` (what it is for),
    ``ok``, ``errno`` (what userspace sees), ``cause`` (the handler's errno behind an
    EFAULT from ``write()``), ``message``, ``result`` (of a get), ``pinned`` (pages
    pinned by the device afterwards), ``expected`` (an errno the scenario expects)."""

    index: int
    op: dict
    label: str = ""
    ok: bool = True
    errno: Optional[int] = None
    cause: Optional[int] = None
    message: str = ""
    result: object = None
    pinned: int = 0
    expected: Optional[int] = None

    @property
    def error_name(self) -> str:
        """``EEXIST`` (the handler's errno when ``write()`` said EFAULT), or ``""``."""
        if self.ok:
            return ""
        code = self.cause if self.cause is not None else self.errno
        return _errno.errorcode.get(code, str(code))

    def as_dict(self) -> dict:
        d = {"index": self.index, "op": _trace.describe(self.op), "label": self.label,
             "ok": self.ok}
        if not self.ok:
            d["errno"] = _errno.errorcode.get(self.errno, self.errno)
            if self.cause is not None:
                d["cause"] = _errno.errorcode.get(self.cause, self.cause)
            d["message"] = self.message
        return d


@dataclass
class AsidView:
    """Both layers of one address space at a check point.

    ``vhost_entries`` (None: the AS does not exist), ``device_entries``, ``device``
    (``"maps"`` -- translates everything userspace mapped, correctly; ``"identity"``;
    ``"identity (DMA MR)"``; ``"empty"``; ``"wrong"`` -- entries, but not the right
    ones), ``translates`` (every mapped range reaches the right address through the
    device), ``stale`` (ranges userspace unmapped that the device still translates to
    their old address), ``bad`` (a few of the failing ranges, for humans)."""

    asid: int
    vhost_entries: Optional[int]
    device_entries: int
    device: str
    translates: bool
    mapped: int = 0
    stale: int = 0
    bad: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Checkpoint:
    """Observations at one point of a scenario (see :class:`AsidView`)."""

    label: str
    step: int
    pinned: int
    messages: int
    asids: Dict[int, AsidView]
    groups: Dict[int, int]
    cvq: Optional[str] = None
    invariants: Optional[str] = None
    must: bool = False
    note: str = ""
    cvq_ok: bool = True

    @property
    def translates(self) -> bool:
        """Every mapped range of every ASID reaches the right address, nothing stale
        (and the mlx5 CVQ iotlb translates what its group's ASID maps)."""
        return all(v.translates and not v.stale for v in self.asids.values()) and \
            self.cvq_ok

    def as_dict(self) -> dict:
        return {"label": self.label, "step": self.step, "pinned": self.pinned,
                "messages": self.messages, "translates": self.translates,
                "must": self.must, "asids": {str(a): v.as_dict() for a, v in self.asids.items()},
                "groups": {str(g): a for g, a in self.groups.items()}, "cvq": self.cvq,
                "invariants": self.invariants, "note": self.note}


@dataclass
class Cost:
    """What a window of a scenario cost: pages unpinned and (re-)pinned, write()
    messages and ioctls sent."""

    unpinned: int = 0
    pinned: int = 0
    messages: int = 0
    ioctls: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# ======================================================================= session
class Session:
    """One userspace process driving one device: sends operations, records them and
    what happened, and observes the device at check points.

    ``persist``: ack IOTLB_PERSIST when the backend offers it.  ``guest``: the
    :class:`GuestLayout` (default 64M).  ``kernel``: the kernel profile (None: the
    default).  The device is ``VhostVdpa(backend, kernel=..., memlock_pages=...,
    page_size=...)``.
    """

    def __init__(self, backend, *, persist: bool = False, guest: Optional[GuestLayout] = None,
                 page_size: int = 4096, memlock_pages: Optional[int] = None,
                 kernel: Optional[str] = None) -> None:
        from .vdpa import VhostVdpa

        self.backend = backend
        self.dev = VhostVdpa(backend, kernel=kernel, memlock_pages=memlock_pages,
                             page_size=page_size)
        self.page_size = page_size
        self.persist_requested = bool(persist)
        self.guest = guest or GuestLayout(64 * MiB, page_size=page_size)
        self.ops: List[dict] = []
        self.steps: List[Step] = []
        self.checkpoints: List[Checkpoint] = []
        self.windows: Dict[str, Tuple[int, int]] = {}
        self._open_windows: Dict[str, int] = {}
        self.offered: Optional[int] = None
        self.acked = 0
        self.status = 0
        self.messages = 0
        self.iova_range: Tuple[int, int] = (0, U64_MAX)
        self.listener_registered = False    # VhostVDPAShared.listener_registered
        self.cvq_isolated = False           # vhost_vdpa_probe_cvq_isolation's answer
        self.cvq_active = False             # the shadow CVQ is mapped in ASID 1
        self.listener_sections: List["Section"] = []   # what the listener has mapped
        self.ioctls = 0
        # what userspace believes is mapped / has unmapped: asid -> {iova: (size, uaddr, perm)}
        self.mapped: Dict[int, Dict[int, Tuple[int, int, int]]] = {}
        self.removed: Dict[int, Dict[int, Tuple[int, int, int]]] = {}

    # ------------------------------------------------------------ sending
    def send(self, op: dict, label: str = "", *, expect: Optional[int] = None) -> Step:
        """Send one trace operation, record it and its outcome; never raises for a
        kernel error (it is recorded)."""
        self.ops.append(dict(op, comment=label) if label and "comment" not in op else op)
        is_msg = op["op"] in _trace.MESSAGE_OPS
        if is_msg:
            self.messages += 1
        else:
            self.ioctls += 1
        step = Step(len(self.steps), op, label, expected=expect)
        try:
            step.result = _trace.apply(self.dev, op)
        except IOTLBError as exc:
            step.ok = False
            step.errno = exc.errno
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno is not None:
                step.cause = cause.errno
            step.message = str(cause if isinstance(cause, OSError) else exc)
        step.pinned = self._pinned()
        self.steps.append(step)
        if step.ok:
            self._track(op)
        return step

    def _pinned(self) -> int:
        return int(getattr(self.dev, "pinned_pages", 0) or 0)

    def _track(self, op: dict) -> None:
        name = op["op"]
        if name == "update":
            asid = op["asid"] if self.acked & F.IOTLB_ASID else 0
            self.mapped.setdefault(asid, {})[op["iova"]] = (op["size"], op["uaddr"], op["perm"])
            _drop_overlapping(self.removed.get(asid, {}), op["iova"], op["size"])
        elif name == "invalidate":
            asid = op["asid"] if self.acked & F.IOTLB_ASID else 0
            gone = _drop_overlapping(self.mapped.get(asid, {}), op["iova"], op["size"])
            self.removed.setdefault(asid, {}).update(gone)
        elif name == "release":
            for asid, m in self.mapped.items():
                self.removed.setdefault(asid, {}).update(m)
            self.mapped = {}
            self.acked = 0
            self.status = 0
        elif name == "open":
            self.status = 0
        elif name == "set_backend_features":
            self.acked = op["features"]
        elif name == "set_status":
            self.status = op["status"]

    # ------------------------------------------------------------ ioctl helpers
    def open(self) -> Step:
        return self.send({"op": "open"}, "open /dev/vhost-vdpa-N")

    def release(self) -> Step:
        return self.send({"op": "release"}, "close the fd")

    def set_owner(self) -> Step:
        return self.send({"op": "set_owner"}, "VHOST_SET_OWNER")

    def negotiate(self) -> int:
        """GET_BACKEND_FEATURES, then SET_BACKEND_FEATURES with what QEMU acks
        (MSG_V2|BATCH|ASID|SUSPEND as offered) plus IOTLB_PERSIST if asked for and
        offered.  Returns the acked mask."""
        step = self.send({"op": "get_backend_features"}, "offered backend features")
        offered = int(step.result or 0) if step.ok else 0
        self.offered = offered
        ack = offered & QEMU_BACKEND_FEATURES
        if self.persist_requested and offered & F.IOTLB_PERSIST:
            ack |= int(F.IOTLB_PERSIST)
        self.send({"op": "set_backend_features", "features": ack},
                  "ack " + ("|".join(wire.feature_names(ack)) or "nothing"))
        return ack

    @property
    def persist_acked(self) -> bool:
        return bool(self.acked & F.IOTLB_PERSIST)

    def set_status(self, status: int, label: str = "") -> Step:
        return self.send({"op": "set_status", "status": status},
                         label or f"SET_STATUS({_trace._status_text(status)})")

    def add_status(self, bits: int, label: str = "") -> Optional[Step]:
        """``vhost_vdpa_add_status`` (QEMU 10.2): GET_STATUS; nothing more if the bits
        are already set; else SET_STATUS(status | bits) and GET_STATUS again."""
        self.send({"op": "get_status"}, "vhost_vdpa_add_status: GET_STATUS")
        if self.status & bits == bits:
            return None
        st = self.set_status(self.status | bits, label)
        self.send({"op": "get_status"}, "vhost_vdpa_add_status: GET_STATUS")
        return st

    def in_range(self, sec: "Section") -> bool:
        """``vhost_vdpa_listener_skipped_section``: a section outside GET_IOVA_RANGE is
        skipped."""
        first, last = self.iova_range
        return sec.iova >= first and sec.last <= last

    # ------------------------------------------------------------ message helpers
    def update(self, sec: Section, asid: int = 0, label: str = "", *,
               expect: Optional[int] = None) -> Step:
        return self.send({"op": "update", "iova": sec.iova, "size": sec.size,
                          "uaddr": sec.uaddr, "perm": sec.perm, "asid": asid},
                         label or f"UPDATE {sec.name}", expect=expect)

    def invalidate(self, sec: Section, asid: int = 0, label: str = "") -> Step:
        return self.send({"op": "invalidate", "iova": sec.iova, "size": sec.size,
                          "asid": asid}, label or f"INVALIDATE {sec.name}")

    @property
    def batching(self) -> bool:
        return bool(self.acked & F.IOTLB_BATCH)

    def transaction(self, adds=(), dels=(), asid: int = 0, label: str = "", *,
                    expect: Optional[int] = None) -> None:
        """One memory-listener transaction: BATCH_BEGIN (if BATCH is acked),
        INVALIDATE of every removed section, UPDATE of every added one, BATCH_END."""
        adds = [sec for sec in adds if self.in_range(sec)]
        dels = [sec for sec in dels if self.in_range(sec)]
        if not adds and not dels:
            return
        if self.batching:
            self.send({"op": "batch_begin", "asid": asid}, f"{label}: BATCH_BEGIN")
        for sec in dels:
            self.invalidate(sec, asid, f"{label}: INVALIDATE {sec.name}")
        for sec in adds:
            self.update(sec, asid, f"{label}: UPDATE {sec.name}", expect=expect)
        if self.batching:
            self.send({"op": "batch_end", "asid": asid}, f"{label}: BATCH_END")

    # ------------------------------------------------------------ windows
    def begin(self, name: str) -> None:
        self._open_windows[name] = len(self.steps)

    def end(self, name: str) -> None:
        self.windows[name] = (self._open_windows.pop(name), len(self.steps))

    def cost(self, name: str) -> Optional[Cost]:
        """The :class:`Cost` of a window opened by :meth:`begin` and closed by
        :meth:`end`, or None if there was no such window."""
        if name not in self.windows:
            return None
        a, b = self.windows[name]
        prev = self.steps[a - 1].pinned if a > 0 else 0
        c = Cost()
        for st in self.steps[a:b]:
            delta = st.pinned - prev
            prev = st.pinned
            if delta > 0:
                c.pinned += delta
            else:
                c.unpinned -= delta
            if st.op["op"] in _trace.MESSAGE_OPS:
                c.messages += 1
            else:
                c.ioctls += 1
        return c

    # ------------------------------------------------------------ observation
    def _expected_addr(self, uaddr: int) -> int:
        if self.backend.use_va:
            return uaddr
        mem = None
        for attr in ("mem", "user_memory", "usermem", "mm"):
            mem = getattr(self.dev, attr, None)
            if mem is not None and callable(getattr(mem, "pfn", None)):
                break
            mem = None
        if mem is None:
            return uaddr
        shift = self.page_size.bit_length() - 1
        return (mem.pfn(uaddr) << shift) | (uaddr & (self.page_size - 1))

    def _check_range(self, tlb, iova: int, size: int, uaddr: int, perm: int) -> Optional[str]:
        """None if ``tlb`` translates ``[iova, +size)`` contiguously to the right
        address with ``perm``; else why not."""
        want = self._expected_addr(uaddr)
        access = perm & int(Perm.RW)
        try:
            segs = tlb.translate(iova, size, access)
        except IOTLBError as exc:
            what = "no mapping" if exc.errno == _errno.EFAULT else \
                "no permission" if exc.errno == _errno.EPERM else str(exc)
            at = f" at {exc.iova:#x}" if getattr(exc, "iova", None) is not None else ""
            return f"[{iova:#x}, +{size:#x}): {what}{at}"
        addr = want
        for host, length in segs:
            if host != addr:
                return f"[{iova:#x}, +{size:#x}): page at {iova + (addr - want):#x} -> " \
                       f"{host:#x}, expected {addr:#x}"
            addr += length
        return None

    def _is_stale(self, tlb, iova: int, size: int, uaddr: int) -> bool:
        want = self._expected_addr(uaddr)
        try:
            segs = tlb.translate(iova, min(size, self.page_size), 0)
        except IOTLBError:
            return False
        return bool(segs) and segs[0][0] == want

    def _classify(self, tlb, asid: int, bad: List[str], mapped: dict) -> str:
        from .backend import is_identity

        if mapped and not bad:
            return "maps"
        if is_identity(tlb):
            kind = getattr(self.backend, "mr_kind", None)
            try:
                if callable(kind) and kind(asid) == "dma":
                    return "identity (DMA MR)"
            except Exception:  # observation only
                pass
            return "identity"
        if len(tlb) == 0:
            return "empty"
        return "wrong" if mapped else f"{len(tlb)} entries"

    def checkpoint(self, label: str, *, must: bool = False, note: str = "") -> Checkpoint:
        """Observe both layers now: for every ASID of the backend, whether the device
        translates what userspace mapped (and nothing it unmapped), and what the
        device holds; plus the group → ASID bindings, the mlx5 CVQ iotlb when there is
        one, and the device's invariant check."""
        b = self.backend
        asids: Dict[int, AsidView] = {}
        for asid in range(b.nas):
            dtlb = b.device_iotlb(asid)
            vt = self.dev.vhost_iotlb(asid)
            mapped = self.mapped.get(asid, {})
            bad: List[str] = []
            for iova, (size, uaddr, perm) in sorted(mapped.items()):
                why = self._check_range(dtlb, iova, size, uaddr, perm)
                if why is not None:
                    bad.append(why)
            stale = sum(1 for iova, (size, uaddr, perm) in self.removed.get(asid, {}).items()
                        if self._is_stale(dtlb, iova, size, uaddr))
            asids[asid] = AsidView(
                asid, None if vt is None else len(vt), len(dtlb),
                self._classify(dtlb, asid, bad, mapped), not bad, len(mapped), stale,
                bad[:3])
        groups = {}
        for g in range(b.ngroups):
            try:
                groups[g] = b.group_asid(g)
            except Exception:  # observation only
                pass
        cvq, cvq_ok = None, True
        if hasattr(type(b), "cvq_iotlb") or "cvq_iotlb" in getattr(b, "__dict__", {}):
            cvq_group = _cvq_group(b)
            asid = groups.get(cvq_group, 0) if cvq_group is not None else 0
            ctlb = b.cvq_iotlb
            mapped = self.mapped.get(asid, {})
            bad = [w for iova, (size, uaddr, perm) in sorted(mapped.items())
                   if (w := self._check_range(ctlb, iova, size, uaddr, perm)) is not None]
            cvq, cvq_ok = self._classify(ctlb, -1, bad, mapped), not bad
        cp = Checkpoint(label, len(self.steps), self._pinned(), self.messages, asids,
                        groups, cvq, self._invariants(), must, note, cvq_ok)
        self.checkpoints.append(cp)
        return cp

    def _invariants(self) -> Optional[str]:
        check = getattr(self.dev, "check_invariants", None)
        if check is None:
            return None
        try:
            result = check()
        except AssertionError as exc:
            return str(exc) or "invariant violated"
        except IOTLBError as exc:
            return str(exc)
        if result in (None, True) or result == [] or result == ():
            return None
        if result is False:
            return "invariant violated"
        return "; ".join(map(str, result)) if isinstance(result, (list, tuple)) else str(result)


def _entries(tlb, limit: int) -> Optional[list]:
    if tlb is None:
        return None
    if len(tlb) > limit:
        return [f"{len(tlb)} entries"]
    return [[m.start, m.last, m.addr, int(m.perm)] for m in tlb]


def final_state(dev, backend, *, limit: int = 1000) -> dict:
    """Both layers now, JSON-ready: ``{"asids": {"0": {"vhost": [[start, last, addr,
    perm], ...] or None, "device": [...]}}, "groups": {"0": asid}, "pinned_pages": n,
    "open": bool}``; an IOTLB of more than ``limit`` entries is summarised."""
    asids = {}
    for asid in range(backend.nas):
        asids[str(asid)] = {"vhost": _entries(dev.vhost_iotlb(asid), limit),
                            "device": _entries(backend.device_iotlb(asid), limit)}
    groups = {}
    for g in range(backend.ngroups):
        try:
            groups[str(g)] = backend.group_asid(g)
        except Exception:  # observation only
            pass
    return {"asids": asids, "groups": groups,
            "pinned_pages": int(getattr(dev, "pinned_pages", 0) or 0),
            "open": bool(getattr(dev, "is_open", False))}


def _drop_overlapping(table: dict, iova: int, size: int) -> dict:
    """Remove from ``{iova: (size, ...)}`` every range overlapping ``[iova, +size)``
    whole (like the kernel) and return what was removed."""
    last = (iova + size - 1) & U64_MAX
    gone = {}
    for start, val in list(table.items()):
        end = start + val[0] - 1
        if start <= last and end >= iova:   # the kernel's closed-interval test
            gone[start] = table.pop(start)
    return gone


def _cvq_group(backend) -> Optional[int]:
    """The virtqueue group of the control vq (the last vq), or None."""
    try:
        return backend.get_vq_group(backend.nvqs - 1)
    except Exception:
        return None


# ======================================================================= scenarios
@dataclass(frozen=True)
class Scenario:
    """A named scenario: ``run(session)`` drives it; ``requires(session)`` returns a
    reason it does not apply to this backend (or None)."""

    name: str
    title: str
    doc: str
    run: Callable[[Session], None]
    requires: Optional[Callable[[Session], Optional[str]]] = None

    @property
    def hypothetical(self) -> bool:
        """True for a what-if VMM, not what QEMU 10.2 does."""
        return self.title.startswith("hypothetical")


#: name -> :class:`Scenario`, in presentation order.
SCENARIOS: Dict[str, Scenario] = {}


def scenario(name: str, title: str, requires=None):
    """Register a scenario function under ``name`` (its docstring is the doc)."""
    def deco(fn):
        SCENARIOS[name] = Scenario(name, title, (fn.__doc__ or "").strip(), fn, requires)
        return fn
    return deco


def _has_cvq(s: Session) -> bool:
    """virtio-net with VIRTIO_NET_F_CTRL_VQ: an odd number of vqs, the last the CVQ
    (``vhost_vdpa_get_max_queue_pairs``: ``has_cvq``)."""
    return s.backend.nvqs % 2 == 1


def _vring_group(s: Session, vq: int, label: str) -> Optional[int]:
    st = s.send({"op": "get_vring_group", "vq": vq}, label)
    return int(st.result) if st.ok and st.result is not None else None


def _probe_cvq_isolation(s: Session) -> None:
    """``vhost_vdpa_probe_cvq_isolation`` (net/vhost-vdpa.c, QEMU 10.2), untraced by
    QEMU: GET_BACKEND_FEATURES; if ASID is offered SET_STATUS(ACK|DRIVER),
    SET_FEATURES, SET_STATUS(|FEATURES_OK), GET_VRING_GROUP of the CVQ then of vq 0,
    1... until one shares the CVQ's group; then SET_STATUS(0) *always* -- a device
    reset, whatever the device held."""
    why = "vhost_vdpa_probe_cvq_isolation"
    st = s.send({"op": "get_backend_features"}, f"{why}: GET_BACKEND_FEATURES")
    offered = int(st.result or 0) if st.ok else 0
    s.cvq_isolated = False
    if not offered & F.IOTLB_ASID:
        return
    s.set_status(STATUS_ACK | STATUS_DRIVER, f"{why}: SET_STATUS(ACK|DRIVER)")
    s.set_status(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK,
                 f"{why}: SET_STATUS(|FEATURES_OK) after SET_FEATURES")
    cvq_index = s.backend.nvqs - 1
    cvq_group = _vring_group(s, cvq_index, f"{why}: GET_VRING_GROUP of the CVQ")
    if cvq_group is not None:
        isolated = True
        for i in range(cvq_index):
            g = _vring_group(s, i, f"{why}: GET_VRING_GROUP({i})")
            if g is None or g == cvq_group:
                isolated = False
                break
        s.cvq_isolated = isolated
    s.set_status(0, f"{why}: SET_STATUS(0) (always)")


def _listener_register(s: Session, label: str) -> None:
    """``memory_listener_register`` of the vhost-vdpa listener: one transaction of
    ``vhost_vdpa_listener_region_add`` per RAM/ROM section (BATCH_BEGIN once,
    ``vhost_vdpa_dma_map`` each, ``vhost_vdpa_listener_commit``: BATCH_END), ASID 0."""
    s.listener_registered = True
    s.listener_sections = list(s.guest.sections)
    s.transaction(adds=s.guest.sections, label=label)


def _listener_unregister(s: Session, label: str) -> None:
    """``memory_listener_unregister``: ``vhost_vdpa_listener_region_del`` for every
    section the listener holds (INVALIDATE, one batch), ASID 0; nothing if it is not
    registered."""
    if not s.listener_registered:
        return
    s.listener_registered = False
    dels, s.listener_sections = s.listener_sections, []
    s.transaction(dels=dels, label=label)


def _virtio_reset(s: Session, why: str) -> None:
    """``virtio_reset`` (hw/virtio/virtio.c) of the virtio-net device -- a system
    reset, a hot-plugged device's reset at realize, or the guest driver resetting the
    device -- calls ``vhost_reset_device`` -> ``vhost_vdpa_reset_device``:
    SET_STATUS(0), then the listener unregistered (INVALIDATE batch) if it was
    registered."""
    s.set_status(0, f"{why}: virtio_reset -> vhost_vdpa_reset_device")
    _listener_unregister(s, f"{why}: vhost_vdpa_reset_device: listener unregistered")


def _boot(s: Session, *, cvq: bool = False, memory: bool = True,
          hotplug: bool = False) -> None:
    """QEMU 10.2 bringing a vhost-vdpa netdev up, then the guest driver starting it.

    ``net_init_vhost_vdpa``: open, GET_IOVA_RANGE.  ``vhost_vdpa_init`` (data queue
    pair 0, the first device): ``vhost_vdpa_set_backend_cap`` (GET/SET_BACKEND_FEATURES:
    MSG_V2|BATCH|ASID|SUSPEND as offered -- never IOTLB_PERSIST; ``persist`` sessions
    are a hypothetical PERSIST-aware VMM), ``vhost_vdpa_add_status(ACK|DRIVER)``.
    ``vhost_vdpa_set_owner``: SET_OWNER, then the memory listener is registered on
    ``address_space_memory`` -- a hot-plugged netdev (``hotplug``) maps RAM right
    there.  With a CVQ: ``vhost_vdpa_probe_cvq_isolation`` (ends in SET_STATUS(0)),
    then the CVQ device's ``vhost_vdpa_init`` (GET_BACKEND_FEATURES only).  A
    cold-plugged netdev gets RAM mapped during board init, before any SET_FEATURES,
    one transaction per region; then the machine's reset (``virtio_reset`` ->
    ``vhost_vdpa_reset_device``) sets status 0 and unregisters the listener
    (INVALIDATE batch) -- a hot-plugged device gets the same reset at realize.  The
    guest driver resets the device once more (SET_STATUS(0)).  Then :func:`_start`
    (the guest driver's DRIVER_OK) registers the listener again.  This is what the
    real QEMU 11.1 run shows (tests/data/qemu).  ``memory=False``: a guest with a
    vIOMMU (see ``viommu``)."""
    s.open()
    st = s.send({"op": "get_iova_range"}, "net_init_vhost_vdpa: GET_IOVA_RANGE")
    if st.ok and st.result is not None:
        s.iova_range = (int(st.result[0]), int(st.result[1]))
    s.negotiate()
    s.add_status(STATUS_ACK | STATUS_DRIVER, "vhost_vdpa_init: add_status(ACK|DRIVER)")
    s.set_owner()
    if hotplug:
        _listener_register(s, "vhost_vdpa_set_owner: listener registered (RAM exists)")
    else:
        s.listener_registered = True
    if _has_cvq(s):
        _probe_cvq_isolation(s)
        if hotplug:
            s.checkpoint("after the probe's SET_STATUS(0)",
                         note="RAM was mapped at SET_OWNER; the device was reset after it")
        s.send({"op": "get_backend_features"},
               "vhost_vdpa_init (CVQ device): vhost_vdpa_set_backend_cap, GET only")
    if not hotplug:
        for sec in s.guest.board_sections:
            s.listener_sections.append(sec)
            s.transaction(adds=[sec], label="board init: memory_region_add_subregion")
        _virtio_reset(s, "system reset at machine start")
    else:
        _virtio_reset(s, "device_add: the hot-plugged device is reset at realize")
    _virtio_reset(s, "the guest driver resets the device at probe")
    _start(s, cvq=cvq, viommu=not memory)


def _start(s: Session, *, remap: bool = True, cvq: bool = False,
           viommu: bool = False) -> None:
    """``vhost_net_start`` (QEMU 10.2).  Data queue pair: ``vhost_dev_start`` ->
    ``vhost_vdpa_set_features`` (SET_FEATURES, ``add_status(FEATURES_OK)``).  CVQ
    (``cvq``: the guest negotiated the control vq and the probe found it isolated):
    ``vhost_vdpa_net_cvq_start`` (GET_VRING_GROUP, SET_GROUP_ASID(group, 1), the
    command-out buffer RO and the status buffer RW in ASID 1), then
    ``vhost_vdpa_svqs_start`` maps its shadow rings (driver area RO, device area RW;
    unbatched).  The last device's ``vhost_vdpa_dev_start``: the listener is
    registered again only if it was unregistered (``remap=False``: a hypothetical VMM
    that never unregistered it) or the DMA address space changed (``viommu``: the RAM
    is INVALIDATEd, and the guest's IOMMU mappings are replayed as unbatched
    UPDATEs); then ``add_status(DRIVER_OK)``."""
    s.add_status(STATUS_FEATURES_OK, "vhost_vdpa_set_features: add_status(FEATURES_OK)")
    if cvq and s.cvq_isolated:
        _cvq_start(s)
    if viommu:
        _listener_unregister(s, "vhost_vdpa_dev_start: dma_as changed, listener unregistered")
        s.listener_registered = True       # on the vIOMMU's address space: no RAM
        for sec in s.guest.iommu_boot:
            s.update(sec, 0, "vhost_vdpa_iommu_map_notify: replayed guest mapping")
    elif remap and not s.listener_registered:
        _listener_register(s, "vhost_vdpa_dev_start: listener registered again")
    s.add_status(STATUS_DRIVER_OK, "vhost_vdpa_dev_start: add_status(DRIVER_OK)")


def _stop(s: Session, *, unmap: bool = True) -> None:
    """``vhost_net_stop`` (QEMU 10.2).  The first device's ``vhost_vdpa_dev_start(false)``
    -> ``vhost_vdpa_suspend``: SUSPEND if acked, else ``vhost_vdpa_reset_device``
    (SET_STATUS(0), then the listener unregistered: INVALIDATE batch).  The CVQ's
    shadow rings are unmapped (``vhost_vdpa_svqs_stop``).  The last device's
    ``vhost_vdpa_reset_status``: ``vhost_vdpa_reset_device`` (SET_STATUS(0), and the
    unregister batch if still registered), ``add_status(ACK|DRIVER)``; then
    ``vhost_vdpa_net_cvq_stop`` unmaps the CVQ buffers.  ``unmap=False``: a
    hypothetical VMM that keeps its mappings (never unregisters the listener)."""
    first_reset = True

    def reset_device(label: str) -> None:
        nonlocal first_reset
        s.set_status(0, label)
        if first_reset:
            s.checkpoint("after SET_STATUS(0)")
            first_reset = False
        if unmap:
            _listener_unregister(s, "vhost_vdpa_reset_device: listener unregistered")

    if s.acked & F.SUSPEND:
        s.send({"op": "suspend"}, "vhost_vdpa_suspend: VHOST_VDPA_SUSPEND")
    else:
        reset_device("vhost_vdpa_suspend without SUSPEND: vhost_vdpa_reset_device")
    if s.cvq_active:
        for sec in s.guest.cvq[2:]:
            s.invalidate(sec, 1, f"vhost_vdpa_svqs_stop: unmap {sec.name} in ASID 1")
    reset_device("vhost_vdpa_reset_status: vhost_vdpa_reset_device")
    s.add_status(STATUS_ACK | STATUS_DRIVER, "vhost_vdpa_reset_status: add_status(ACK|DRIVER)")
    if s.cvq_active:
        for sec in s.guest.cvq[:2]:
            s.invalidate(sec, 1, f"vhost_vdpa_net_cvq_stop: unmap {sec.name} in ASID 1")
        s.cvq_active = False


@scenario("boot", "QEMU 10.2 boot")
def _sc_boot(s: Session) -> None:
    """QEMU 10.2, cold-plugged netdev, a guest driver without the control vq (e.g.
    iPXE): ``net_init_vhost_vdpa``, ``vhost_vdpa_init``, ``vhost_vdpa_set_owner``
    (listener registered), the CVQ isolation probe (SET_STATUS(0)), RAM mapped at board
    init (one batch, ASID 0), then FEATURES_OK and DRIVER_OK (no re-map: the listener
    is still registered).  Check: the device translates every guest page."""
    _boot(s)
    s.checkpoint("DRIVER_OK", must=True)


@scenario("stop_start", "QEMU 10.2 stop/cont")
def _sc_stop_start(s: Session) -> None:
    """Boot; QMP ``stop`` (``vhost_net_stop``: SUSPEND if acked, else SET_STATUS(0) and
    the INVALIDATE batch; SET_STATUS(0) again by ``vhost_vdpa_reset_status``, the
    INVALIDATE batch there when SUSPEND was used; ACK|DRIVER), then ``cont``
    (``vhost_net_start``: FEATURES_OK, the listener registered again: UPDATE batch,
    DRIVER_OK).  Checks: what the device translates right after SET_STATUS(0), and
    everything at DRIVER_OK again.  The window ``stop/start`` is the cost."""
    _boot(s)
    s.checkpoint("running", must=True)
    s.begin("stop/start")
    _stop(s)
    s.checkpoint("stopped")
    _start(s)
    s.end("stop/start")
    s.checkpoint("DRIVER_OK after restart", must=True)


@scenario("guest_reset", "QEMU 10.2 guest reset")
def _sc_guest_reset(s: Session) -> None:
    """Boot; QMP ``system_reset``: ``virtio_net_set_status`` -> ``vhost_net_stop`` (as
    ``stop_start``), ``virtio_reset`` -> ``vhost_vdpa_reset_device`` (SET_STATUS(0);
    the listener is already unregistered), the guest driver's own reset, then
    ``vhost_net_start`` from status 0 (FEATURES_OK = 8, DRIVER_OK = 12).  The real
    QEMU 11.1 run shows the same (iPXE resets twice where this guest resets once)."""
    _boot(s)
    s.checkpoint("running", must=True)
    _stop(s)
    _virtio_reset(s, "system_reset")
    _virtio_reset(s, "the guest driver resets the device at probe")
    _start(s)
    s.checkpoint("DRIVER_OK after reset", must=True)


@scenario("persist_stop_start", "hypothetical VMM: stop/start skipping unmap/re-map")
def _sc_persist(s: Session) -> None:
    """HYPOTHETICAL -- not what QEMU 10.2 does: a VMM that skips the INVALIDATE-all /
    UPDATE-all cycle of ``stop_start`` (as IOTLB_PERSIST would allow; it skips even
    when PERSIST is not acked).  The check at DRIVER_OK answers: is skipping safe
    here?"""
    _boot(s)
    s.checkpoint("running", must=True)
    s.begin("stop/start")
    _stop(s, unmap=False)
    _start(s, remap=False)
    s.end("stop/start")
    s.checkpoint("DRIVER_OK after restart", note="skip is safe iff this translates")


@scenario("hotplug", "QEMU 10.2 memory hot-plug")
def _sc_hotplug(s: Session) -> None:
    """Boot; a DIMM is hot-added: one memory transaction
    (``vhost_vdpa_listener_region_add`` -> BATCH_BEGIN, UPDATE of the new section,
    ``vhost_vdpa_listener_commit`` -> BATCH_END).  Check: old and new memory
    translate."""
    _boot(s)
    s.begin("hot-plug")
    s.transaction(adds=[s.guest.dimm], label="hot-plug")
    s.end("hot-plug")
    s.checkpoint("after hot-plug", must=True)


@scenario("hotunplug", "QEMU 10.2 memory hot-unplug")
def _sc_hotunplug(s: Session) -> None:
    """Boot; hot-add a DIMM; hot-remove it: one transaction
    (``vhost_vdpa_listener_region_del``: BATCH_BEGIN, INVALIDATE of the DIMM,
    BATCH_END).  Check: the rest still translates and the DIMM is no longer reachable
    at its old address."""
    _boot(s)
    s.transaction(adds=[s.guest.dimm], label="hot-plug")
    s.checkpoint("after hot-plug", must=True)
    s.begin("hot-unplug")
    s.transaction(dels=[s.guest.dimm], label="hot-unplug")
    s.end("hot-unplug")
    s.checkpoint("after hot-unplug", must=True)


def _needs_two_as(s: Session) -> Optional[str]:
    b = s.backend
    if b.nas < 2:
        return f"nas={b.nas}: the CVQ cannot be isolated"
    if b.ngroups < 2:
        return f"ngroups={b.ngroups}: the CVQ cannot be isolated"
    if getattr(b, "set_group_asid", None) is None:
        return "no set_group_asid op"
    return None


def _cvq_start(s: Session) -> None:
    """``vhost_vdpa_net_cvq_start``: ``vhost_vdpa_get_vring_group`` of the CVQ,
    ``vhost_vdpa_set_address_space_id(group, VHOST_VDPA_NET_CVQ_ASID=1)``,
    ``vhost_vdpa_cvq_map_buf`` of the command-out buffer (RO) and the status buffer
    (RW) in ASID 1; then ``vhost_vdpa_svq_map_rings`` of the CVQ's shadow vq: driver
    area RO, device area RW (all unbatched)."""
    vq = s.backend.nvqs - 1
    group = _vring_group(s, vq, "vhost_vdpa_net_cvq_start: GET_VRING_GROUP of the CVQ")
    s.send({"op": "set_group_asid", "group": 1 if group is None else group, "asid": 1},
           "vhost_vdpa_set_address_space_id(cvq group, 1)")
    for sec in s.guest.cvq:
        s.update(sec, 1, f"shadow CVQ: UPDATE {sec.name} in ASID 1")
    s.cvq_active = True


@scenario("shadow_cvq", "QEMU 10.2 shadow CVQ in ASID 1", requires=_needs_two_as)
def _sc_shadow_cvq(s: Session) -> None:
    """A guest driver that negotiates the control vq (Linux) on a device whose CVQ the
    probe found isolated: at start ``vhost_vdpa_net_cvq_start`` binds the CVQ group to
    ASID 1 and maps the CVQ buffers and shadow rings there; guest memory stays in
    ASID 0.  Then QMP stop/cont: the rings are unmapped, the reset (which rebinds
    every group to ASID 0) and ACK|DRIVER, the buffers unmapped; on start everything
    is bound and mapped again.  Needs nas >= 2 and ngroups >= 2."""
    _boot(s, cvq=True)
    s.checkpoint("DRIVER_OK", must=True)
    s.begin("stop/start")
    _stop(s)
    _start(s, cvq=True)
    s.end("stop/start")
    s.checkpoint("DRIVER_OK after restart", must=True)


def _needs_cvq(s: Session) -> Optional[str]:
    return None if _has_cvq(s) else "no control vq: no isolation probe"


@scenario("netdev_hotplug", "QEMU 10.2 netdev hot-plug", requires=_needs_cvq)
def _sc_netdev_hotplug(s: Session) -> None:
    """``netdev_add type=vhost-vdpa`` + ``device_add`` on a running guest: RAM
    already exists, so ``vhost_vdpa_set_owner``'s listener registration maps it (one
    batch); then the CVQ isolation probe's SET_STATUS(0) resets the device *after*
    RAM is mapped (check point: what the device holds now -- identity on vdpa_sim
    without PERSIST, the DMA MR on mlx5, the domain kept on a platform IOMMU).  Then
    ``device_add`` resets the new device (``virtio_reset``: SET_STATUS(0) and the
    listener unregistered: INVALIDATE batch), and the guest driver's DRIVER_OK
    registers it again: every parent translates at DRIVER_OK.  The real QEMU 11.1 run
    (tests/data/qemu, hotplug) shows the steps up to the device's reset."""
    _boot(s, hotplug=True)
    s.checkpoint("DRIVER_OK", must=True)


@scenario("reset_reupdate", "hypothetical VMM: reset, re-UPDATE without INVALIDATE")
def _sc_reupdate(s: Session) -> None:
    """HYPOTHETICAL -- not what QEMU 10.2 does: boot; SET_STATUS(0) and back to
    ACK|DRIVER|FEATURES_OK; then the memory listener replayed *without* INVALIDATE-ing
    first.  vhost still holds every entry (a device reset never touches it), so every
    UPDATE fails with EEXIST (EFAULT from write()).  Check: what the device translates
    at DRIVER_OK anyway."""
    _boot(s)
    s.set_status(0, "SET_STATUS(0)")
    s.checkpoint("after SET_STATUS(0)")
    s.set_status(STATUS_ACK | STATUS_DRIVER)
    s.add_status(STATUS_FEATURES_OK)
    if s.batching:
        s.send({"op": "batch_begin", "asid": 0}, "re-map: BATCH_BEGIN")
    for sec in s.guest.sections:
        s.update(sec, 0, "re-UPDATE w/o INVALIDATE", expect=_errno.EEXIST)
    if s.batching:
        s.send({"op": "batch_end", "asid": 0}, "re-map: BATCH_END")
    s.add_status(STATUS_DRIVER_OK)
    s.checkpoint("DRIVER_OK")


@scenario("release_reopen", "netdev_del and netdev_add again")
def _sc_release(s: Session) -> None:
    """Boot; the fd is closed (``netdev_del``, or QEMU exiting: release resets the
    device, every address space removed, pins dropped); check what the device is
    left with; open again and boot again (the QEMU 10.2 cold sequence)."""
    _boot(s)
    s.begin("release")
    s.release()
    s.listener_registered = False
    s.end("release")
    s.checkpoint("after release", must=True)
    s.begin("reopen")
    _boot(s)
    s.end("reopen")
    s.checkpoint("DRIVER_OK after reopen", must=True)


@scenario("viommu", "QEMU 10.2 with a vIOMMU")
def _sc_viommu(s: Session, rounds: int = 32, per_round: int = 8, seed: int = 0x5EED) -> None:
    """A guest with a vIOMMU: RAM is mapped at board init as usual (the listener is on
    ``address_space_memory`` from SET_OWNER) and unmapped by the machine reset; at
    DRIVER_OK ``vhost_vdpa_dev_start`` registers the listener on the device's DMA
    address space (were it still registered on system memory, the RAM would be
    INVALIDATEd first), so the vIOMMU's existing guest mappings are replayed
    (``vhost_vdpa_iommu_map_notify``: unbatched UPDATEs).  Then
    seeded churn: each guest IOMMU map / unmap is one unbatched UPDATE / INVALIDATE in
    ASID 0, naturally aligned, of size ``addr_mask + 1``; finally everything unmapped.
    Checks: mid-way and at the end, the device translates exactly what is mapped and
    nothing that was unmapped."""
    _boot(s, memory=False)
    rng = random.Random(seed)
    page = s.page_size
    ram = max(s.guest.sections, key=lambda sec: sec.size)
    next_iova = 0x1000_0000
    live: List[Section] = list(s.guest.iommu_boot)
    for rnd in range(rounds):
        for _ in range(per_round):
            pages = rng.choice((1, 1, 2, 4, 16, 64))
            size = pages * page
            next_iova = _round_up(next_iova, size)
            off = rng.randrange(0, max(1, (ram.size - size) // page)) * page
            sec = Section(f"iommu-map-{rnd}", next_iova, size, ram.uaddr + off,
                          rng.choice((int(Perm.RO), int(Perm.RW))))
            next_iova += size + rng.choice((0, page, 16 * page))
            s.update(sec, 0, "vhost_vdpa_iommu_map_notify: map")
            live.append(sec)
        for sec in rng.sample(live, len(live) // 2):
            s.invalidate(sec, 0, "vhost_vdpa_iommu_map_notify: unmap")
            live.remove(sec)
        if rnd == rounds // 2:
            s.checkpoint("mid-churn", must=True)
    for sec in live:
        s.invalidate(sec, 0, "vhost_vdpa_iommu_map_notify: unmap")
    s.checkpoint("all unmapped", must=True)


# ======================================================================= running
@dataclass
class ScenarioResult:
    """The outcome of one scenario on one backend with one PERSIST choice.

    ``status``: ``"ok"`` (ran; see ``passed``), ``"n/a"`` (does not apply: ``reason``)
    or ``"error"`` (an exception that is not a kernel error: ``reason``).
    ``passed``: every must-hold check point translates and every failed step failed
    with the errno the scenario expects."""

    scenario: str
    backend: str
    persist: str
    status: str = "ok"
    reason: str = ""
    steps: List[Step] = field(default_factory=list)
    checkpoints: List[Checkpoint] = field(default_factory=list)
    costs: Dict[str, Cost] = field(default_factory=dict)
    ops: List[dict] = field(default_factory=list)
    offered: Optional[int] = None
    acked: Optional[int] = None
    invariants: Optional[str] = None
    final: Optional[dict] = None
    #: what the plugin raised besides IOTLBError (iotlb.errors.PluginError texts)
    plugin_errors: List[str] = field(default_factory=list)
    #: the backend's declared kernel findings (Backend.kernel_findings)
    kernel_findings: Dict[str, str] = field(default_factory=dict)

    def checkpoint(self, label: str) -> Optional[Checkpoint]:
        """The last check point with this label, or None."""
        for cp in reversed(self.checkpoints):
            if cp.label == label:
                return cp
        return None

    @property
    def failures(self) -> List[Step]:
        return [st for st in self.steps if not st.ok]

    @property
    def unexpected_failures(self) -> List[Step]:
        return [st for st in self.steps if not st.ok and
                st.expected not in (st.cause, st.errno)]

    @property
    def passed(self) -> bool:
        if self.status != "ok":
            return self.status == "n/a"
        return (not self.unexpected_failures and self.invariants is None and
                all(cp.translates for cp in self.checkpoints if cp.must))

    def as_dict(self, *, steps: bool = False) -> dict:
        d = {"scenario": self.scenario, "backend": self.backend, "persist": self.persist,
             "status": self.status, "passed": self.passed}
        if self.reason:
            d["reason"] = self.reason
        if self.status == "ok":
            d["offered"] = self.offered
            d["acked"] = self.acked
            d["invariants"] = self.invariants
            d["messages"] = sum(1 for st in self.steps
                                if st.op["op"] in _trace.MESSAGE_OPS)
            d["failures"] = [st.as_dict() for st in self.failures]
            d["checkpoints"] = [cp.as_dict() for cp in self.checkpoints]
            d["costs"] = {k: v.as_dict() for k, v in self.costs.items()}
            d["final"] = self.final
            if steps:
                d["steps"] = [st.as_dict() for st in self.steps]
        return d


def run_scenario(name: str, backend="vdpa_sim", *, persist: bool = False,
                 guest: Optional[GuestLayout] = None, page_size: int = 4096,
                 memlock_pages: Optional[int] = None, label: Optional[str] = None,
                 kernel: Optional[str] = None, **options) -> ScenarioResult:
    """Run scenario ``name`` on a fresh backend and device (kernel profile ``kernel``;
    None: the default).

    ``backend`` is a registry name (instantiated with ``options``), a
    :class:`BackendSpec`, a zero-argument factory or a backend instance (used as is).
    Kernel errors are recorded in the steps; any other exception ends the scenario
    with ``status="error"``.
    """
    sc = SCENARIOS.get(name)
    if sc is None:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    if isinstance(backend, str):
        backend = BackendSpec(backend, options)
    if isinstance(backend, BackendSpec):
        label = label or backend.label
        be = backend.create()
    elif isinstance(backend, type) or (callable(backend) and
                                       not hasattr(backend, "device_iotlb")):
        be = backend()
    else:
        be = backend
    label = label or type(be).__name__
    guest = guest or GuestLayout(64 * MiB, page_size=page_size)
    s = Session(be, persist=persist, guest=guest, page_size=page_size,
                memlock_pages=memlock_pages, kernel=kernel)
    res = ScenarioResult(name, label, "acked" if persist else "not acked")
    if sc.requires is not None:
        why = sc.requires(s)
        if why:
            res.status, res.reason = "n/a", why
            return res
    try:
        sc.run(s)
    except Exception as exc:  # a backend/plugin bug: report, never crash the matrix
        res.status = "error"
        res.reason = f"{type(exc).__name__}: {exc}"
    # a plugin's own exceptions (iotlb.errors.PluginError): the model went on as the
    # kernel does on that op's error return, but the scenario judges a broken plugin
    res.plugin_errors = s.dev.plugin_errors
    res.kernel_findings = dict(getattr(be, "kernel_findings", None) or {})
    if res.plugin_errors and res.status == "ok":
        res.status = "error"
        res.reason = res.plugin_errors[0]
    if persist and s.offered is not None and not s.offered & F.IOTLB_PERSIST:
        res.persist = "not offered"
    res.steps, res.checkpoints, res.ops = s.steps, s.checkpoints, s.ops
    res.offered, res.acked = s.offered, s.acked
    res.costs = {k: s.cost(k) for k in s.windows}
    try:
        res.final = final_state(s.dev, be)
    except Exception:  # observation only; a crashed backend may not answer
        res.final = None
    if res.status == "ok":
        res.invariants = s._invariants() or next(
            (cp.invariants for cp in s.checkpoints if cp.invariants), None)
    return res


# ======================================================================= the matrix
#: The variants ``iotlb matrix`` runs for the built-in backends (registry name ->
#: ``[(label, options)]``); any other installed backend runs once with its defaults.
VARIANTS: Dict[str, List[Tuple[str, dict]]] = {
    "platform_iommu": [("platform_iommu", {})],
    "vdpa_sim": [("vdpa_sim (set_map)", {"batch_mapping": True}),
                 ("vdpa_sim (dma_map)", {"batch_mapping": False})],
    "mlx5": [("mlx5 (umem_uid_0)", {"umem_uid_0": True}),
             ("mlx5 (no umem_uid_0)", {"umem_uid_0": False})],
}


def default_specs(names=None) -> List[BackendSpec]:
    """The backend variants of the matrix: for each installed backend (or each of
    ``names``), the :data:`VARIANTS` of a built-in, or the backend with its defaults.

    >>> [s.label for s in default_specs(["vdpa_sim"])]
    ['vdpa_sim (set_map)', 'vdpa_sim (dma_map)']
    """
    if names is None:
        from .backend import available_backends

        names = list(available_backends())
        order = {n: i for i, n in enumerate(VARIANTS)}
        names.sort(key=lambda n: (order.get(n, len(order)), n))
    out = []
    for name in names:
        for label, opts in VARIANTS.get(name, [(name, {})]):
            out.append(BackendSpec(name, opts, label))
    return out


def probe_features(spec) -> int:
    """The backend features a fresh device on ``spec`` offers (GET_BACKEND_FEATURES
    after open)."""
    from .vdpa import VhostVdpa

    be = spec.create() if isinstance(spec, BackendSpec) else spec
    dev = VhostVdpa(be)
    dev.open()
    try:
        return int(dev.get_backend_features())
    finally:
        dev.release()


@dataclass
class Cell:
    """One row of the matrix: a backend variant with IOTLB_PERSIST acked or not
    (``persist``: ``"acked"``, ``"not acked"`` or ``"not offered"``), and the
    :class:`ScenarioResult` of every scenario run (``results``).  The properties
    distil the answers the matrix prints."""

    backend: str
    spec: BackendSpec
    persist: str
    results: Dict[str, ScenarioResult] = field(default_factory=dict)
    error: str = ""

    def _cp(self, scenario_name: str, label: str) -> Optional[Checkpoint]:
        r = self.results.get(scenario_name)
        if r is None or r.status != "ok":
            return None
        return r.checkpoint(label)

    @property
    def after_reset(self) -> Optional[str]:
        """What the device translates for guest memory (ASID 0) right after
        SET_STATUS(0) in ``stop_start``: ``maps`` (kept), ``identity``, ``empty``..."""
        cp = self._cp("stop_start", "after SET_STATUS(0)")
        return None if cp is None else cp.asids[0].device

    @property
    def skip_safe(self) -> Optional[bool]:
        """Whether ``persist_stop_start`` (no INVALIDATE-all / UPDATE-all) ends with the
        device translating every guest page right at DRIVER_OK."""
        cp = self._cp("persist_stop_start", "DRIVER_OK after restart")
        return None if cp is None else cp.translates

    @property
    def skip_device(self) -> Optional[str]:
        cp = self._cp("persist_stop_start", "DRIVER_OK after restart")
        return None if cp is None else cp.asids[0].device

    @property
    def after_release(self) -> Optional[str]:
        cp = self._cp("release_reopen", "after release")
        return None if cp is None else cp.asids[0].device

    @property
    def cost(self) -> Optional[Cost]:
        """One QEMU stop/start (``stop_start``): pages unpinned, re-pinned, messages."""
        r = self.results.get("stop_start")
        return None if r is None or r.status != "ok" else r.costs.get("stop/start")

    @property
    def skip_cost(self) -> Optional[Cost]:
        r = self.results.get("persist_stop_start")
        return None if r is None or r.status != "ok" else r.costs.get("stop/start")

    @property
    def errors(self) -> List[dict]:
        """The errors userspace hits, grouped: ``{"errno", "cause", "what",
        "scenario", "count"}`` (``cause`` is the handler's errno behind EFAULT)."""
        seen: Dict[tuple, dict] = {}
        for name, r in self.results.items():
            for st in r.failures:
                key = (st.errno, st.cause, st.label)
                if key in seen:
                    seen[key]["count"] += 1
                    if name not in seen[key]["scenarios"]:
                        seen[key]["scenarios"].append(name)
                    continue
                seen[key] = {"errno": _errno.errorcode.get(st.errno, st.errno),
                             "cause": None if st.cause is None else
                             _errno.errorcode.get(st.cause, st.cause),
                             "what": st.label, "scenarios": [name], "count": 1,
                             "expected": st.expected in (st.cause, st.errno)}
        return list(seen.values())

    @property
    def invariants(self) -> List[str]:
        return [f"{n}: {r.invariants}" for n, r in self.results.items() if r.invariants]

    @property
    def failed(self) -> List[str]:
        """Scenarios that did not pass (a must-hold check, an unexpected error, an
        invariant violation or a crash)."""
        return [n for n, r in self.results.items() if not r.passed]

    @property
    def crashed(self) -> List[str]:
        return [f"{n}: {r.reason}" for n, r in self.results.items() if r.status == "error"]

    def as_dict(self) -> dict:
        d = {"backend": self.backend, "name": self.spec.name,
             "options": dict(self.spec.options), "persist": self.persist}
        if self.error:
            d["error"] = self.error
        if self.persist == "not offered" or self.error:
            return d
        d.update({
            "after_set_status_0": self.after_reset,
            "skip_safe": self.skip_safe,
            "skip_device": self.skip_device,
            "after_release": self.after_release,
            "errors": self.errors,
            "stop_start_cost": None if self.cost is None else self.cost.as_dict(),
            "skip_cost": None if self.skip_cost is None else self.skip_cost.as_dict(),
            "invariants": self.invariants,
            "failed": self.failed,
            "scenarios": {n: r.as_dict() for n, r in self.results.items()},
        })
        return d


def run_matrix(specs: Optional[List[BackendSpec]] = None, scenarios=None, *,
               guest: Optional[GuestLayout] = None, page_size: int = 4096,
               on_cell: Optional[Callable[[Cell], None]] = None) -> List[Cell]:
    """Run ``scenarios`` (default: all) on every spec × {PERSIST not acked, acked}.

    A PERSIST-acked row is ``"not offered"`` (and not run) when the backend does not
    offer IOTLB_PERSIST; a backend that cannot even be probed gives one row with
    ``error`` set.

    >>> cells = run_matrix(default_specs(["platform_iommu"]), ["stop_start"],
    ...                    guest=GuestLayout(parse_size("16M")))
    >>> [(c.persist, c.after_reset) for c in cells]
    [('not acked', 'maps'), ('acked', 'maps')]
    """
    specs = default_specs() if specs is None else specs
    names = list(SCENARIOS) if scenarios is None else list(scenarios)
    for n in names:
        if n not in SCENARIOS:
            raise KeyError(f"unknown scenario {n!r} (known: {', '.join(SCENARIOS)})")
    guest = guest or GuestLayout(4 * GiB, page_size=page_size)
    cells: List[Cell] = []
    for spec in specs:
        try:
            offered = probe_features(spec)
        except Exception as exc:  # a broken plugin: one row, never fatal
            cell = Cell(spec.label, spec, "-", error=f"{type(exc).__name__}: {exc}")
            cells.append(cell)
            if on_cell:
                on_cell(cell)
            continue
        for persist in (False, True):
            if persist and not offered & F.IOTLB_PERSIST:
                cell = Cell(spec.label, spec, "not offered")
            else:
                cell = Cell(spec.label, spec, "acked" if persist else "not acked")
                for n in names:
                    cell.results[n] = run_scenario(n, spec, persist=persist, guest=guest,
                                                   page_size=page_size)
            cells.append(cell)
            if on_cell:
                on_cell(cell)
    return cells
