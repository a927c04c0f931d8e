"""``vdpa_sim``: the vDPA device simulator parent (drivers/vdpa/vdpa_sim/vdpa_sim.c).

Per address space the simulator keeps ``iommu[asid]`` (a vhost_iotlb created with
the module parameter ``max_iotlb_entries``, default 2048, without RETIRE: since
"vhost_iotlb: bound map allocation in add_range" the 2,049th entry is ENOSPC) and a
passthrough flag
``iommu_pt[asid]``.  Every AS starts as the identity mapping with ``pt`` set, and every
vring starts bound to AS 0.

Two op tables, chosen by the ``batch_mapping`` module parameter (default 1):
``set_map`` (:class:`VdpaSimSetMap`) or ``dma_map``/``dma_unmap``
(:class:`VdpaSimDmaMap`).  ``VdpaSim(batch_mapping=...)`` returns an instance of the
right one, so the other table's ops are truly absent.  Both have ``reset``,
``compat_reset``, ``reset_map``, ``set_group_asid``, ``suspend``, ``resume`` and offer
``ENABLE_AFTER_DRIVER_OK``.

The simulator of each kernel (:attr:`~iotlb.backend.Backend.kernel`, ``kernel=`` or
bound by :class:`~iotlb.vdpa.VhostVdpa`): the rules below are :class:`Since` markers
read against it.  On 6.1 (Debian's 6.1.192) the op tables have only ``reset`` and
``suspend`` of those (no ``compat_reset``, ``reset_map``, ``resume``,
``get_backend_features``), every AS starts *empty* (no identity map, no
passthrough flag), ``reset`` empties every AS, and there is no ``use_va``
parameter: vhost-vdpa always takes its PA path.

>>> import iotlb
>>> from iotlb.backend import VDPA_RESET_F_CLEAN_MAP, is_identity
>>> sim = VdpaSim()
>>> is_identity(sim.device_iotlb(0)), sim.iommu_pt(0)
(True, True)
>>> t = iotlb.IOTLB(); t.map(0x1000, 0x1fff, 0x7000)
>>> sim.set_map(0, t)                       # whole-IOTLB replacement, pt cleared
>>> [(hex(m.start), hex(m.addr)) for m in sim.device_iotlb(0)], sim.iommu_pt(0)
([('0x1000', '0x7000')], False)
>>> sim.compat_reset(VDPA_RESET_F_CLEAN_MAP)  # back to identity on every AS
>>> is_identity(sim.device_iotlb(0))
True
"""
from __future__ import annotations

import errno

import iotlb
from iotlb import U64_MAX, IOTLBError, Perm
from iotlb.backend import BACKEND_F_ENABLE_AFTER_DRIVER_OK, VDPA_RESET_F_CLEAN_MAP, Backend
from iotlb.kernels import Since

__all__ = ["VdpaSim", "VdpaSimSetMap", "VdpaSimDmaMap", "MAX_IOTLB_ENTRIES"]

#: ``max_iotlb_entries`` module parameter (default): the per-AS limit of
#: ``vdpasim->iommu[]``, created without RETIRE, so enforced (ENOSPC) on every kernel
#: with "vhost_iotlb: bound map allocation in add_range" (v7.2; stable 6.12.114).
MAX_IOTLB_ENTRIES = 2048

#: vq 2 is the control queue of the simulated net device, in group 1
#: (``vdpasim_get_vq_group``: "RX and TX belongs to group 0, CVQ belongs to group 1").
CVQ_INDEX = 2
CVQ_GROUP = 1

# --- vdpa_sim's rules by kernel (absent before the version: see VdpaSim._apply_kernel)
#: the ``use_va`` module parameter: vhost-vdpa's VA path (before it, always PA)
USE_VA = Since((6, 3), "vdpa_sim: add support for user VA")
#: the ``resume`` op
RESUME = Since((6, 3), "vdpa_sim: Implement resume vdpa op")
#: the ``get_backend_features`` op offering ENABLE_AFTER_DRIVER_OK
ENABLE_AFTER_DRIVER_OK = Since((6, 6), "vdpa_sim: offer VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK")
#: ``reset_map`` and ``compat_reset``: a plain reset keeps the maps, CLEAN_MAP (or
#: reset_map) restores the default; before it ``vdpasim_do_reset`` empties every AS
RESET_MAP = Since((6, 7), "vdpa_sim: implement .reset_map support")
#: every AS starts as the identity map with ``iommu_pt`` set (passthrough; dma_map,
#: dma_unmap and set_map drop it first); before it every AS starts empty.  Bracketed:
#: absent in 6.1.192, present in 6.12.118.
PASSTHROUGH = Since((6, 2), "(unverified) vdpa_sim: identity map and iommu_pt by "
                    "default", verified=False)


class VdpaSim(Backend):
    """The simulator; ``VdpaSim(...)`` returns a :class:`VdpaSimSetMap` (default,
    ``batch_mapping=True``) or a :class:`VdpaSimDmaMap` (``batch_mapping=False``).

    Options: ``nas=2, ngroups=2, nvqs=3`` (vdpasim_net), ``iova_range=(0, U64_MAX)``,
    ``use_va`` (module parameter; vhost-vdpa then uses its VA path, no pinning;
    default None = the kernel's default: True, or False on a kernel without the
    parameter, where True is a ValueError), ``batch_mapping=True``,
    ``max_iotlb_entries=2048`` (module parameter: the limit of each
    ``iommu[asid]``), ``kernel`` (see :class:`~iotlb.backend.Backend`).

    Subclassing works for tests: a subclass of ``VdpaSim`` gets the table mixed in
    according to ``batch_mapping``; a subclass of ``VdpaSimSetMap``/``VdpaSimDmaMap``
    keeps its own table.

    >>> import errno, iotlb
    >>> class NoMem(VdpaSim):
    ...     def dma_map(self, asid, iova, size, pa, perm, opaque):
    ...         raise iotlb.IOTLBError(errno.ENOMEM, "injected")
    >>> b = NoMem(batch_mapping=False)
    >>> isinstance(b, NoMem), getattr(b, "set_map", None)
    (True, None)
    """

    _tables: dict = {}

    def __new__(cls, *args, batch_mapping=None, **options):
        if cls is VdpaSim or not issubclass(cls, (VdpaSimSetMap, VdpaSimDmaMap)):
            table = VdpaSimSetMap if batch_mapping is None or batch_mapping else VdpaSimDmaMap
            if cls is not VdpaSim:
                key = (cls, table)
                mixed = VdpaSim._tables.get(key)
                if mixed is None:
                    mixed = type(cls.__name__, (cls, table),
                                 {"__module__": cls.__module__,
                                  "__qualname__": cls.__qualname__})
                    VdpaSim._tables[key] = mixed
                table = mixed
            cls = table
        elif batch_mapping is not None and bool(batch_mapping) != issubclass(cls, VdpaSimSetMap):
            style = "set_map" if issubclass(cls, VdpaSimSetMap) else "dma_map"
            raise ValueError(f"{cls.__name__} is the {style} op table; "
                             f"batch_mapping={batch_mapping!r} contradicts it")
        return object.__new__(cls)

    def __init__(self, *, nas: int = 2, ngroups: int = 2, nvqs: int = 3,
                 iova_range=(0, U64_MAX), use_va=None,
                 batch_mapping: bool = True,
                 max_iotlb_entries: int = MAX_IOTLB_ENTRIES, kernel=None) -> None:
        if use_va is not None and not isinstance(use_va, (bool, int)):
            raise TypeError(f"use_va must be a bool, got {type(use_va).__name__}")
        super().__init__(nas=nas, ngroups=ngroups, nvqs=nvqs, iova_range=iova_range,
                         use_va=bool(use_va), kernel=kernel)
        self._use_va_option = use_va
        if type(max_iotlb_entries) is not int or not 2 <= max_iotlb_entries < 2**31:
            # below 2 vdpasim_create refuses (the identity map [0, ~0] needs two
            # entries): no device is created
            raise ValueError(f"max_iotlb_entries must be an int in 2..2**31-1 (smaller "
                             f"values are not modelled), got {max_iotlb_entries!r}")
        self.batch_mapping = isinstance(self, VdpaSimSetMap)
        self.max_iotlb_entries = max_iotlb_entries
        self._iommu = [iotlb.IOTLB(max_iotlb_entries) for _ in range(self.nas)]
        self._pt = [False] * self.nas
        self._vring_asid = [0] * self.nvqs
        #: ``vdpasim->running``: set by DRIVER_OK and resume, cleared by suspend and
        #: reset ("vdpa_sim: reset must not run").
        self.running = True
        #: config generation, bumped by every reset.
        self.generation = 0
        self._apply_kernel()

    def _apply_kernel(self) -> None:
        """The simulator of :attr:`kernel`: ``use_va``, the op table, and the state
        ``vdpasim_create`` leaves (every AS identity with ``pt`` set -- or empty,
        before :data:`PASSTHROUGH`; every vring on AS 0).

        >>> sim = VdpaSim(kernel="6.1")
        >>> sim.use_va, len(sim.device_iotlb(0)), getattr(sim, "reset_map", None)
        (False, 0, None)
        """
        kernel = self.kernel
        option = self._use_va_option
        if kernel in USE_VA:
            self.use_va = True if option is None else bool(option)
        elif option:
            raise ValueError(f"vdpa_sim on kernel {kernel.base} has no use_va parameter "
                             f"(added in v{'.'.join(map(str, USE_VA.version))}, "
                             f"{USE_VA.subject!r}): vhost-vdpa always uses its PA path")
        else:
            self.use_va = False
        hidden = []
        if kernel not in RESUME:
            hidden.append("resume")
        if kernel not in ENABLE_AFTER_DRIVER_OK:
            hidden.append("get_backend_features")
        if kernel not in RESET_MAP:
            hidden += ["reset_map", "compat_reset"]
        self._hide_ops(hidden)
        # vdpasim_create
        pt = kernel in PASSTHROUGH
        for asid in range(self.nas):
            if pt:
                self._identity(asid)
            else:
                self._iommu[asid].unmap()
                self._pt[asid] = False
        for vq in range(self.nvqs):
            self._vring_asid[vq] = 0

    # ------------------------------------------------------------------ reset
    def _do_reset(self, flags: int) -> None:
        """``vdpasim_do_reset``: reset every vq and rebind it to ``iommu[0]``; with
        CLEAN_MAP every AS back to identity with ``pt`` set -- before
        :data:`RESET_MAP` (6.1: no flags) every AS is emptied instead; not running
        afterwards."""
        for vq in range(self.nvqs):
            self._vring_asid[vq] = 0
        if self.kernel not in RESET_MAP:
            for asid in range(self.nas):
                self._iommu[asid].unmap()       # vhost_iotlb_reset
        elif flags & VDPA_RESET_F_CLEAN_MAP:
            for asid in range(self.nas):
                self._identity(asid)
        self.running = False
        self._status = 0
        self.generation += 1

    def _identity(self, asid: int) -> None:
        tlb = self._iommu[asid]
        tlb.unmap()
        tlb.map(0, U64_MAX, 0, Perm.RW)
        self._pt[asid] = True

    def set_status(self, status: int) -> None:
        """``vdpasim_set_status``: store the status; running iff DRIVER_OK is set.

        >>> b = VdpaSim(); b.reset(); b.running, (b.set_status(7), b.running)[1]
        (False, True)
        """
        super().set_status(status)
        self.running = bool(status & 0x4)

    def reset(self) -> None:
        """``vdpasim_reset`` = ``compat_reset(0)``: vrings back to AS 0, maps kept
        (6.1: every AS emptied).

        >>> b = VdpaSim(); b.set_group_asid(1, 1); b.reset(); b.group_asid(1)
        0
        >>> import iotlb
        >>> old = VdpaSim(kernel="6.1"); t = iotlb.IOTLB(); t.map(0, 0xfff, 0x5000)
        >>> old.set_map(0, t); old.reset(); len(old.device_iotlb(0))
        0
        """
        self._do_reset(0)

    def compat_reset(self, flags: int) -> None:
        """``vdpasim_compat_reset(flags)``: as :meth:`reset`; with
        ``VDPA_RESET_F_CLEAN_MAP`` every AS becomes identity with ``pt`` set.

        >>> import iotlb
        >>> b = VdpaSim(); b.set_map(1, iotlb.IOTLB()); len(b.device_iotlb(1))
        0
        >>> b.compat_reset(1); len(b.device_iotlb(1)), b.iommu_pt(1)
        (2, True)
        """
        self._do_reset(flags)

    def reset_map(self, asid: int) -> None:
        """``vdpasim_reset_map``: ``asid >= nas`` is EINVAL; a no-op when ``pt`` is
        already set; otherwise the AS becomes identity with ``pt`` set.

        >>> import iotlb
        >>> b = VdpaSim(); b.set_map(0, iotlb.IOTLB()); b.reset_map(0)
        >>> len(b.device_iotlb(0)), b.iommu_pt(0)
        (2, True)
        """
        self._check_op_asid("reset_map", asid)
        if self._pt[asid]:
            return
        self._identity(asid)

    # ------------------------------------------------------------------ groups
    def get_vq_group(self, vq: int) -> int:
        """``vdpasim_get_vq_group``: vq 2 (the CVQ) is group 1, the others group 0.

        >>> [VdpaSim().get_vq_group(vq) for vq in range(3)]
        [0, 0, 1]
        """
        self._check_vq(vq)
        return CVQ_GROUP if vq == CVQ_INDEX else 0

    def set_group_asid(self, group: int, asid: int) -> None:
        """``vdpasim_set_group_asid``: every vring of ``group`` is rebound to
        ``iommu[asid]``; no mapping changes.  The driver checks neither bound (it lost
        its checks with "vhost: move vdpa group bound check to vhost_vdpa", v7.0,
        stable 6.12.75 and 6.1.191): vhost-vdpa refuses ``group >= ngroups`` or
        ``asid >= nas`` with EINVAL before calling, so a direct call outside them is a
        ValueError here.

        >>> b = VdpaSim(); b.set_group_asid(1, 1); b.group_asid(1), b.vring_asid(2)
        (1, 1)
        >>> b.set_group_asid(0, 2)
        Traceback (most recent call last):
        ...
        ValueError: set_group_asid: group 0 / asid 2 outside ngroups 2 / nas 2 (vhost-vdpa never passes them)
        """
        if type(group) is not int or group < 0:
            raise TypeError(f"set_group_asid: group must be a non-negative int, got {group!r}")
        if group >= self.ngroups or type(asid) is not int or not 0 <= asid < self.nas:
            raise ValueError(f"set_group_asid: group {group!r} / asid {asid!r} outside "
                             f"ngroups {self.ngroups} / nas {self.nas} (vhost-vdpa never "
                             "passes them)")
        for vq in range(self.nvqs):
            if self.get_vq_group(vq) == group:
                self._vring_asid[vq] = asid

    def group_asid(self, group: int) -> int:
        """The AS the vrings of ``group`` are bound to (the lowest such vq; 0 for a
        group with no vq).  vdpa_sim keeps the binding per vring, not per group.

        >>> VdpaSim().group_asid(1)
        0
        """
        self._check_group(group)
        for vq in range(self.nvqs):
            if self.get_vq_group(vq) == group:
                return self._vring_asid[vq]
        return 0

    def vring_asid(self, vq: int) -> int:
        """The AS vring ``vq`` translates through (``vringh_set_iotlb`` target).

        >>> VdpaSim().vring_asid(0)
        0
        """
        if type(vq) is not int or not 0 <= vq < self.nvqs:
            raise ValueError(f"vq must be in 0..{self.nvqs - 1}, got {vq!r}")
        return self._vring_asid[vq]

    # ------------------------------------------------------------------ misc ops
    def suspend(self) -> None:
        """``vdpasim_suspend``: stop processing (``running = False``).

        >>> b = VdpaSim(); b.suspend(); b.running
        False
        """
        self.running = False

    def resume(self) -> None:
        """``vdpasim_resume``: ``running = True``.

        >>> b = VdpaSim(); b.suspend(); b.resume(); b.running
        True
        """
        self.running = True

    def get_backend_features(self) -> int:
        """``vdpasim_get_backend_features``: ENABLE_AFTER_DRIVER_OK (``1 << 6``).

        >>> VdpaSim().get_backend_features()
        64
        """
        return BACKEND_F_ENABLE_AFTER_DRIVER_OK

    # ------------------------------------------------------------------ observation
    def device_iotlb(self, asid: int) -> iotlb.IOTLB:
        """A snapshot of ``iommu[asid]``.

        >>> len(VdpaSim().device_iotlb(1))
        2
        """
        self._check_asid(asid)
        return self._iommu[asid].copy()

    def iommu_pt(self, asid: int) -> bool:
        """The passthrough flag ``iommu_pt[asid]``.

        >>> VdpaSim().iommu_pt(0)
        True
        """
        self._check_asid(asid)
        return self._pt[asid]


class VdpaSimSetMap(VdpaSim):
    """``vdpasim_batch_config_ops`` (``batch_mapping=1``): ``set_map``, no
    ``dma_map``/``dma_unmap``.

    >>> type(VdpaSim()).__name__
    'VdpaSimSetMap'
    """

    def set_map(self, asid: int, iotlb_) -> None:
        """``vdpasim_set_map``: ``asid >= nas`` is EINVAL; wipe the AS, clear ``pt``,
        copy every entry of ``iotlb_`` (ascending: :meth:`iotlb.IOTLB.assign`).  An
        empty source leaves the AS empty (not identity).  A copy error (ENOSPC past
        ``max_iotlb_entries``) wipes the AS again and is raised.

        >>> import iotlb
        >>> b = VdpaSim(); src = iotlb.IOTLB(); src.map(0, 0xfff, 0x5000)
        >>> b.set_map(1, src); src.unmap(); len(b.device_iotlb(1))
        1
        1
        """
        if type(asid) is not int or not 0 <= asid < self.nas:
            self._check_op_asid("set_map", asid)          # raises: asid >= nas EINVAL
        self._pt[asid] = False
        self._iommu[asid].assign(iotlb_)      # wipe, copy; wiped again on an error


class VdpaSimDmaMap(VdpaSim):
    """``vdpasim_config_ops`` (``batch_mapping=0``): ``dma_map``/``dma_unmap``, no
    ``set_map``.

    >>> type(VdpaSim(batch_mapping=False)).__name__
    'VdpaSimDmaMap'
    """

    def dma_map(self, asid: int, iova: int, size: int, pa: int, perm: int,
                opaque=None) -> None:
        """``vdpasim_dma_map``: ``asid >= nas`` is EINVAL; if ``pt`` is set the AS is
        wiped first and ``pt`` cleared; then ``add_range_ctx`` (no overlap check).

        >>> b = VdpaSim(batch_mapping=False)
        >>> b.dma_map(0, 0x1000, 0x1000, 0x8000, 3, None)
        >>> [(hex(m.start), hex(m.last)) for m in b.device_iotlb(0)]
        [('0x1000', '0x1fff')]
        """
        if type(asid) is not int or not 0 <= asid < self.nas:
            self._check_op_asid("dma_map", asid)          # raises: asid >= nas EINVAL
        tlb = self._iommu[asid]
        if self._pt[asid]:
            tlb.unmap()
            self._pt[asid] = False
        tlb.map(iova, (iova + size - 1) & U64_MAX, pa, perm, opaque)

    def dma_unmap(self, asid: int, iova: int, size: int) -> None:
        """``vdpasim_dma_unmap``: ``asid >= nas`` is EINVAL; if ``pt`` is set the AS
        is wiped and ``pt`` cleared (so the first unmap after a CLEAN_MAP reset
        leaves the AS *empty*); then ``del_range(iova, iova + size - 1)``.

        >>> b = VdpaSim(batch_mapping=False)
        >>> b.dma_unmap(0, 0x1000, 0x1000); len(b.device_iotlb(0)), b.iommu_pt(0)
        (0, False)
        """
        if type(asid) is not int or not 0 <= asid < self.nas:
            self._check_op_asid("dma_unmap", asid)          # raises: asid >= nas EINVAL
        tlb = self._iommu[asid]
        if self._pt[asid]:
            tlb.unmap()
            self._pt[asid] = False
        tlb.unmap(iova, (iova + size - 1) & U64_MAX)
