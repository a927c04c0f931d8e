"""The parent-driver plugin contract (``struct vdpa_config_ops``) and its registry.

A *backend* models one vDPA parent driver: what the device translates, per address
space (ASID), and how that changes when vhost-vdpa maps, unmaps, resets and releases.
The device model :class:`iotlb.vdpa.VhostVdpa` drives a backend exactly the way
``drivers/vhost/vdpa.c`` drives a parent: it looks each op up on the backend
*instance* (``getattr(backend, "reset_map", None)``) and branches on its presence,
so **an op a backend does not support is simply not defined** -- the Python twin of
a NULL pointer in ``struct vdpa_config_ops``.  :class:`Backend` therefore defines
only the ops every parent must have; the optional ones (:data:`OPTIONAL_OPS`) are
left to subclasses.

Backends are found through the entry-point group ``iotlb.backends``
(:data:`ENTRY_POINT_GROUP`); :func:`load_backend` is exactly ``BackendClass(**options)``
for the class registered under a name, :func:`available_backends` lists what is
installed, :func:`broken_backends` what failed to load and why, and :func:`register`
adds a class for this process only (tests, notebooks).

>>> import iotlb
>>> from iotlb.backend import load_backend, mapping_style
>>> sim = load_backend("vdpa_sim")
>>> mapping_style(sim), sim.nas, sim.use_va
('set_map', 2, True)
>>> getattr(sim, "dma_map", None) is None      # an absent op, like a NULL pointer
True
>>> "platform_iommu" in iotlb.available_backends()
True
"""
from __future__ import annotations

import abc
import errno
import inspect
import logging
import sys
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

from . import IMPLEMENTATION, IOTLB, U64_MAX, IOTLBError, Perm
from ._pydevice import iommu_prot
from .kernels import KernelProfile, kernel_profile
from .wire import BackendFeature

if IMPLEMENTATION == "cython":
    from ._device import IommuCore
else:
    from ._pydevice import IommuCore

__all__ = [
    "Backend", "ENTRY_POINT_GROUP", "VDPA_RESET_F_CLEAN_MAP",
    "BACKEND_F_IOTLB_MSG_V2", "BACKEND_F_IOTLB_BATCH", "BACKEND_F_IOTLB_ASID",
    "BACKEND_F_SUSPEND", "BACKEND_F_RESUME", "BACKEND_F_ENABLE_AFTER_DRIVER_OK",
    "BACKEND_F_DESC_ASID", "BACKEND_F_IOTLB_PERSIST",
    "REQUIRED_OPS", "OPTIONAL_OPS", "MAPPING_OPS", "PLATFORM_OPS",
    "UnknownBackendError",
    "load_backend", "available_backends", "broken_backends", "refresh",
    "register", "unregister", "duplicate_backends", "matrix_variants",
    "identity_iotlb", "copy_iotlb", "is_identity", "mapping_style", "has_persistent_map", "NULLABLE_OPS",
    "present_ops", "validate_backend", "IommuCore", "iommu_prot",
]

log = logging.getLogger(__name__)

#: The entry-point group a plugin distribution declares its backend classes in.
ENTRY_POINT_GROUP = "iotlb.backends"

#: ``include/linux/vdpa.h``: the ``flags`` bit of ``compat_reset`` asking a parent
#: that historically cleared its mappings on reset to keep doing so.
VDPA_RESET_F_CLEAN_MAP = 1

# Backend feature *masks* (``1 << VHOST_BACKEND_F_*``), the values of
# :class:`iotlb.wire.BackendFeature`; ``get_backend_features()`` returns a mask of these.
BACKEND_F_IOTLB_MSG_V2 = int(BackendFeature.IOTLB_MSG_V2)
BACKEND_F_IOTLB_BATCH = int(BackendFeature.IOTLB_BATCH)
BACKEND_F_IOTLB_ASID = int(BackendFeature.IOTLB_ASID)
BACKEND_F_SUSPEND = int(BackendFeature.SUSPEND)
BACKEND_F_RESUME = int(BackendFeature.RESUME)
BACKEND_F_ENABLE_AFTER_DRIVER_OK = int(BackendFeature.ENABLE_AFTER_DRIVER_OK)
BACKEND_F_DESC_ASID = int(BackendFeature.DESC_ASID)
BACKEND_F_IOTLB_PERSIST = int(BackendFeature.IOTLB_PERSIST)

#: Ops every backend has (defined, with a default where one makes sense, on
#: :class:`Backend`), plus the two observation methods.
REQUIRED_OPS = ("get_status", "set_status", "reset", "get_vq_group",
                "get_backend_features", "get_iova_range", "device_iotlb", "group_asid")
#: Required ops a parent may nonetheless set to None, as the kernel allows a NULL
#: pointer there: ``get_vq_group`` (``vhost_vdpa_vring_ioctl``: GET_VRING_GROUP is
#: EOPNOTSUPP without it; vp_vdpa and VDUSE of 6.12 have none).  Every vq is then in
#: group 0.
NULLABLE_OPS = ("get_vq_group",)
#: The DMA mapping ops: ``dma_map``+``dma_unmap`` (incremental) or ``set_map`` (whole
#: IOTLB); a backend with neither is a platform-IOMMU parent.
MAPPING_OPS = ("dma_map", "dma_unmap", "set_map")
#: What a platform-IOMMU parent (no mapping op) provides instead: the IOMMU domain
#: that vhost-vdpa allocates, attaches and programs (``iommu_domain_alloc``,
#: ``iommu_attach_device``, ``iommu_map``, ``iommu_unmap``, ``iommu_domain_free``).
PLATFORM_OPS = ("iommu_domain_alloc", "iommu_domain_free", "iommu_map", "iommu_unmap")
#: Ops that may be absent.  :class:`Backend` must never define any of them.
OPTIONAL_OPS = MAPPING_OPS + PLATFORM_OPS + (
    "compat_reset", "reset_map", "set_group_asid", "get_vq_desc_group",
    "suspend", "resume")


# --------------------------------------------------------------------------- helpers
def copy_iotlb(tlb: IOTLB, src) -> None:
    """The copy a ``set_map`` parent keeps of the IOTLB it is given
    (``vdpasim_set_map``, VDUSE's ``vduse_domain_set_map``): ``tlb.assign(src)``
    (:meth:`IOTLB.assign`, where the rule lives): ``tlb`` is wiped, then every entry
    of ``src`` is added in ascending order (``vhost_iotlb_add_range``, ctx not kept);
    on an error (ENOSPC past ``tlb``'s limit) ``tlb`` is wiped again and the error
    raised.  ``src`` may also be any iterable of Map.

    >>> src = IOTLB(); src.map(0, 0xfff, 0x5000); src.map(0x1000, 0x1fff, 0x6000)
    >>> small = IOTLB(1); small.map(0x9000, 0x9fff, 0)
    >>> copy_iotlb(small, src)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [ENOSPC] vhost_iotlb_add_range_ctx: 1 entries, limit 1
    >>> len(small)
    0
    """
    tlb.assign(src)


def identity_iotlb(perm: int = Perm.RW) -> IOTLB:
    """A new IOTLB holding the identity mapping ``add_range(0, ULONG_MAX, 0, perm)``.

    The kernel stores it as the split pair ``[0, 2**63-1] -> 0`` and
    ``[2**63, ~0] -> 2**63`` (what vdpa_sim and mlx5's DMA MR translate by default).

    >>> [(hex(m.start), hex(m.last), hex(m.addr)) for m in identity_iotlb()]
    [('0x0', '0x7fffffffffffffff', '0x0'), ('0x8000000000000000', '0xffffffffffffffff', '0x8000000000000000')]
    """
    t = IOTLB()
    t.map(0, U64_MAX, 0, perm)
    return t


def is_identity(tlb) -> bool:
    """True iff ``tlb`` holds exactly the identity pair (any perm with RW bits).

    >>> is_identity(identity_iotlb()), is_identity(IOTLB())
    (True, False)
    """
    return tlb == _IDENTITY


_IDENTITY = identity_iotlb()


def present_ops(backend) -> frozenset:
    """The optional ops this backend (instance or class) defines.

    >>> from iotlb_backends.platform_iommu import PlatformIommu
    >>> sorted(present_ops(PlatformIommu()))
    ['iommu_domain_alloc', 'iommu_domain_free', 'iommu_map', 'iommu_unmap']
    """
    return frozenset(op for op in OPTIONAL_OPS if getattr(backend, op, None) is not None)


def mapping_style(backend) -> str:
    """How vhost-vdpa programs this parent: ``"dma_map"``, ``"set_map"`` or
    ``"platform"`` (neither op: the IOMMU domain).  ``dma_map`` wins when a backend
    has both, as in ``vhost_vdpa_map``.

    >>> from iotlb_backends.vdpa_sim import VdpaSim
    >>> mapping_style(VdpaSim()), mapping_style(VdpaSim(batch_mapping=False))
    ('set_map', 'dma_map')
    """
    if getattr(backend, "dma_map", None) is not None:
        return "dma_map"
    if getattr(backend, "set_map", None) is not None:
        return "set_map"
    return "platform"


def has_persistent_map(backend) -> bool:
    """``vhost_vdpa_has_persistent_map()``: may IOTLB_PERSIST be offered?

    True for platform parents (no ``set_map``/``dma_map``), for parents with
    ``reset_map``, and for parents whose ``get_backend_features()`` has IOTLB_PERSIST
    -- on a kernel that knows IOTLB_PERSIST at all (the backend's
    :attr:`Backend.kernel`; 6.1 does not).

    >>> from iotlb_backends.mlx5 import Mlx5
    >>> has_persistent_map(Mlx5()), has_persistent_map(Mlx5(kernel="6.1"))
    (True, False)
    """
    profile = getattr(backend, "kernel", None)
    if isinstance(profile, KernelProfile) and not profile.iotlb_persist:
        return False
    if getattr(backend, "set_map", None) is None and getattr(backend, "dma_map", None) is None:
        return True
    if getattr(backend, "reset_map", None) is not None:
        return True
    return bool(backend.get_backend_features() & BACKEND_F_IOTLB_PERSIST)


def validate_backend(backend) -> None:
    """Raise ``TypeError`` (wrong shape) or ``ValueError`` (inconsistent sizes) if
    ``backend`` breaks the static part of the contract; return None otherwise.

    Checked: it is a :class:`Backend`; every required op is callable; each optional
    op is absent or callable; ``dma_map`` and ``dma_unmap`` come together; a
    platform parent has all of :data:`PLATFORM_OPS` and ``nas == ngroups == 1``
    (``vhost_vdpa_probe``); ``nas``, ``ngroups``, ``nvqs`` are positive ints;
    ``get_iova_range()`` is an ordered pair of u64.

    >>> from iotlb_backends.vdpa_sim import VdpaSim
    >>> validate_backend(VdpaSim())
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"{backend!r} is not an iotlb.backend.Backend")
    for op in REQUIRED_OPS:
        value = getattr(backend, op, None)
        if value is None and op in NULLABLE_OPS:
            continue
        if not callable(value):
            raise TypeError(f"{type(backend).__name__}: required op {op}() is missing")
    for op in OPTIONAL_OPS:
        value = getattr(backend, op, None)
        if value is not None and not callable(value):
            raise TypeError(f"{type(backend).__name__}.{op} must be absent or callable, "
                            f"got {type(value).__name__}")
    has_map = getattr(backend, "dma_map", None) is not None
    has_unmap = getattr(backend, "dma_unmap", None) is not None
    if has_map != has_unmap:
        raise TypeError(f"{type(backend).__name__}: dma_map and dma_unmap must be "
                        "defined together")
    for attr in ("nas", "ngroups", "nvqs"):
        value = getattr(backend, attr, None)
        if type(value) is not int or value < 1:
            raise ValueError(f"{type(backend).__name__}.{attr} must be a positive int, "
                             f"got {value!r}")
    if mapping_style(backend) == "platform":
        missing = [op for op in PLATFORM_OPS if getattr(backend, op, None) is None]
        if missing:
            raise TypeError(f"{type(backend).__name__}: a parent without set_map/dma_map "
                            f"is a platform-IOMMU parent and needs {', '.join(missing)}")
        if backend.nas != 1 or backend.ngroups != 1:
            raise ValueError(f"{type(backend).__name__}: a platform-IOMMU parent must "
                             f"have nas = ngroups = 1 (vhost_vdpa_probe), got "
                             f"nas={backend.nas}, ngroups={backend.ngroups}")
    first, last = backend.get_iova_range()
    if not (0 <= first <= last <= U64_MAX):
        raise ValueError(f"{type(backend).__name__}.get_iova_range() must be "
                         f"(first, last) with 0 <= first <= last <= 2**64-1, got "
                         f"({first!r}, {last!r})")


def _positive(value, name: str) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        value = value.__index__()
    if value < 1 or value > 0xFFFFFFFF:
        raise ValueError(f"{name} must be in 1..2**32-1, got {value}")
    return value


# --------------------------------------------------------------------------- contract
class Backend(abc.ABC):
    """Base class of every backend: one vDPA parent driver (``struct vdpa_config_ops``).

    **Attributes** (set by ``__init__``): ``nas`` (address spaces), ``ngroups``
    (virtqueue groups), ``nvqs`` (virtqueues), ``use_va`` (vhost-vdpa uses its VA
    path: no pinning, entries carry user addresses).

    **Required ops** (defined here; override as needed): :meth:`get_status`,
    :meth:`set_status`, :meth:`reset` (abstract), :meth:`get_vq_group`,
    :meth:`get_backend_features`, :meth:`get_iova_range`; **observation**:
    :meth:`device_iotlb` (abstract) and :meth:`group_asid`.

    **Optional ops** -- define them in a subclass, or leave them out *entirely* (the
    device tests ``getattr(backend, op, None) is None``, like a NULL op pointer):

    - mapping, one style: ``dma_map(asid, iova, size, pa, perm, opaque)`` +
      ``dma_unmap(asid, iova, size)``; or ``set_map(asid, iotlb)`` (receives the vhost
      IOTLB itself: copy what you need, never keep a reference); or neither, and then
      the platform-IOMMU domain ops ``iommu_domain_alloc()``, ``iommu_domain_free()``,
      ``iommu_map(iova, size, pa, perm)``, ``iommu_unmap(iova, size)`` (nas =
      ngroups = 1);
    - ``compat_reset(flags)`` (called instead of ``reset`` when ``flags`` is non-zero,
      i.e. :data:`VDPA_RESET_F_CLEAN_MAP`), ``reset_map(asid)``,
      ``set_group_asid(group, asid)``, ``get_vq_desc_group(vq)``, ``suspend()``,
      ``resume()``.

    An op fails by raising :class:`iotlb.IOTLBError` with the errno the kernel op
    returns.  Keep the device state in :class:`iotlb.IOTLB` instances (identity =
    ``map(0, U64_MAX, 0)``, wipe = ``unmap()``).

    An op is *absent* when ``getattr(backend, op, None) is None``: leave it
    undefined, or hide an inherited one with ``op = None`` in a subclass.

    ``__init__(*, nas=1, ngroups=1, nvqs=2, iova_range=(0, U64_MAX), use_va=False,
    kernel=None)`` validates and stores the attributes; subclasses pass their own
    defaults.

    **Kernel.**  A parent driver differs between kernels too (vdpa_sim on 6.1 has no
    ``reset_map``, and its reset empties its maps).  :attr:`kernel` is the
    :class:`~iotlb.kernels.KernelProfile` the backend models: the ``kernel=``
    option, or else the one :class:`~iotlb.vdpa.VhostVdpa` binds it to with
    :meth:`bind_kernel` (the default kernel until then).  A subclass whose ops or
    initial state depend on the kernel overrides :meth:`_apply_kernel`.
    Helpers for subclasses: ``self._check_op_asid(op, asid)`` raises the parents'
    ``IOTLBError(EINVAL)`` for ``asid >= nas``; ``self._check_asid(asid)`` raises
    ``ValueError`` (for observation methods).

    >>> import iotlb
    >>> from iotlb.backend import Backend
    >>> class Flat(Backend):
    ...     '''A set_map parent with one address space and nothing else.'''
    ...     def __init__(self, **options):
    ...         super().__init__(**options)
    ...         self._tlb = iotlb.IOTLB()
    ...     def set_map(self, asid, tlb):
    ...         self._tlb.unmap()
    ...         for m in tlb:
    ...             self._tlb.map(m.start, m.last, m.addr, m.perm)
    ...     def reset(self):
    ...         self.set_status(0)
    ...     def device_iotlb(self, asid):
    ...         self._check_asid(asid)
    ...         return self._tlb.copy()
    >>> b = Flat()
    >>> src = iotlb.IOTLB(); src.map(0x1000, 0x1fff, 0x9000)
    >>> b.set_map(0, src); src.unmap()
    1
    >>> len(b.device_iotlb(0)), getattr(b, "reset_map", None)
    (1, None)
    """

    #: Checks of the matrix and the kit this parent fails *because the kernel does*:
    #: check point label (e.g. ``"after release"``) -> the kernel's reason, with its
    #: source.  Such a check is reported as a kernel finding, not a failure.  Empty
    #: for every parent that behaves; a plugin must not use it to hide its own bugs.
    kernel_findings: Dict[str, str] = {}

    def __init__(self, *, nas: int = 1, ngroups: int = 1, nvqs: int = 2,
                 iova_range: Tuple[int, int] = (0, U64_MAX), use_va: bool = False,
                 kernel=None) -> None:
        self._kernel: Optional[KernelProfile] = (None if kernel is None
                                                 else kernel_profile(kernel))
        self.nas = _positive(nas, "nas")
        self.ngroups = _positive(ngroups, "ngroups")
        self.nvqs = _positive(nvqs, "nvqs")
        if not isinstance(use_va, (bool, int)):
            raise TypeError(f"use_va must be a bool, got {type(use_va).__name__}")
        self.use_va = bool(use_va)
        try:
            first, last = iova_range
        except (TypeError, ValueError):
            raise TypeError(f"iova_range must be a pair (first, last), got "
                            f"{iova_range!r}") from None
        for value, what in ((first, "iova_range first"), (last, "iova_range last")):
            if type(value) is not int:
                raise TypeError(f"{what} must be an int, got {type(value).__name__}")
            if not 0 <= value <= U64_MAX:
                raise OverflowError(f"{what} must be in 0..2**64-1, got {value}")
        if first > last:
            raise ValueError(f"iova_range first {first:#x} > last {last:#x}")
        self._iova_range = (first, last)
        self._status = 0

    # ---------------------------------------------------------------- kernel
    @property
    def kernel(self) -> KernelProfile:
        """The kernel profile this parent models: the ``kernel=`` option or the
        profile :meth:`bind_kernel` bound it to; the default kernel while unbound.

        >>> from iotlb_backends.platform_iommu import PlatformIommu
        >>> PlatformIommu().kernel.name, PlatformIommu(kernel="6.1").kernel.name
        ('7.2', '6.1')
        """
        return self._kernel if self._kernel is not None else kernel_profile()

    @property
    def kernel_bound(self) -> bool:
        """Whether a kernel was given (``kernel=``) or bound (:meth:`bind_kernel`)."""
        return self._kernel is not None

    def bind_kernel(self, profile) -> None:
        """Make this parent the one of ``profile``'s kernel (called by
        :class:`~iotlb.vdpa.VhostVdpa` when it is built on this backend).

        An unbound backend takes the profile and, when the kernel differs from the
        default it modelled so far, re-applies :meth:`_apply_kernel` (op table,
        offered features and the parent's *initial* state: bind before use).  A
        bound backend accepts another profile of the same real kernel (a what-if
        policy changes vhost-vdpa, not the parent) and refuses any other with a
        ValueError: one parent driver belongs to one kernel.

        >>> from iotlb_backends.vdpa_sim import VdpaSim
        >>> sim = VdpaSim(); sim.bind_kernel("6.1"); sim.kernel.name, sim.use_va
        ('6.1', False)
        >>> sim.bind_kernel("7.2")
        Traceback (most recent call last):
        ...
        ValueError: VdpaSimSetMap models the parent driver of kernel 6.1; it cannot serve kernel 7.2
        """
        profile = kernel_profile(profile)
        if self._kernel is not None:
            if self._kernel.base != profile.base:
                raise ValueError(f"{type(self).__name__} models the parent driver of "
                                 f"kernel {self._kernel.base}; it cannot serve kernel "
                                 f"{profile.base}")
            return
        before = self.kernel
        self._kernel = profile
        if before.base != profile.base:
            try:
                self._apply_kernel()
            except BaseException:
                self._kernel = None         # still unbound, nothing else changed
                raise

    def _apply_kernel(self) -> None:
        """Set up what depends on :attr:`kernel` (nothing here).  Subclasses call it
        at the end of ``__init__``; :meth:`bind_kernel` calls it again when an
        unbound backend is bound to another kernel.  It must check everything it
        can refuse (a ValueError) before it changes anything."""

    def _hide_ops(self, ops) -> None:
        """Make each op in ``ops`` absent on this instance (a NULL op pointer of the
        kernel's ``vdpa_config_ops``)."""
        for op in ops:
            setattr(self, op, None)

    # ---------------------------------------------------------------- required ops
    def get_status(self) -> int:
        """``get_status``: the virtio device status byte the parent keeps.

        >>> from iotlb_backends.platform_iommu import PlatformIommu
        >>> b = PlatformIommu(); b.set_status(0x3); b.get_status()
        3
        """
        return self._status

    def set_status(self, status: int) -> None:
        """``set_status``: store a (non-zero) status.  vhost-vdpa never calls it with
        0 -- a reset goes through :meth:`reset` / ``compat_reset``.

        >>> from iotlb_backends.platform_iommu import PlatformIommu
        >>> b = PlatformIommu(); b.set_status(0xF); b.get_status()
        15
        """
        if type(status) is not int or not 0 <= status <= 0xFF:
            raise ValueError(f"status must be a u8, got {status!r}")
        self._status = status

    @abc.abstractmethod
    def reset(self) -> None:
        """``reset``: reset the device (status 0).  Whether mappings survive is the
        parent's business (kernel-semantics §4.4)."""

    def get_vq_group(self, vq: int) -> int:
        """``get_vq_group``: the virtqueue group of ``vq``; every vq is in group 0
        unless a subclass says otherwise.

        >>> from iotlb_backends.platform_iommu import PlatformIommu
        >>> PlatformIommu().get_vq_group(1)
        0
        """
        self._check_vq(vq)
        return 0

    def get_backend_features(self) -> int:
        """``get_backend_features``: extra backend feature bits (a mask) the parent
        offers on top of what vhost-vdpa derives from the ops present.  0 here.

        >>> from iotlb_backends.mlx5 import Mlx5
        >>> Mlx5().get_backend_features()
        0
        """
        return 0

    def get_iova_range(self) -> Tuple[int, int]:
        """``get_iova_range``: ``(first, last)``, inclusive, usable IOVAs.

        >>> from iotlb_backends.vdpa_sim import VdpaSim
        >>> VdpaSim(iova_range=(0x1000, 0xffff)).get_iova_range()
        (4096, 65535)
        """
        return self._iova_range

    # ---------------------------------------------------------------- observation
    @abc.abstractmethod
    def device_iotlb(self, asid: int) -> IOTLB:
        """What the device translates through address space ``asid`` *now*, as a new
        :class:`iotlb.IOTLB` the caller owns (a snapshot, never the live state).
        Identity is the split pair ``[0,2**63-1]->0``, ``[2**63,~0]->2**63``; no
        mapping at all is an empty IOTLB.  ``asid >= nas`` is a ``ValueError``."""

    def group_asid(self, group: int) -> int:
        """The address space virtqueue group ``group`` is bound to; 0 unless a
        subclass with ``set_group_asid`` says otherwise.

        >>> from iotlb_backends.platform_iommu import PlatformIommu
        >>> PlatformIommu().group_asid(0)
        0
        """
        self._check_group(group)
        return 0

    # ---------------------------------------------------------------- helpers
    def _check_asid(self, asid: int) -> None:
        """``ValueError`` unless ``0 <= asid < nas`` (for observation methods)."""
        if type(asid) is not int or not 0 <= asid < self.nas:
            raise ValueError(f"asid must be in 0..{self.nas - 1}, got {asid!r}")

    def _check_group(self, group: int) -> None:
        if type(group) is not int or not 0 <= group < self.ngroups:
            raise ValueError(f"group must be in 0..{self.ngroups - 1}, got {group!r}")

    def _check_vq(self, vq: int) -> None:
        if type(vq) is not int or not 0 <= vq < self.nvqs:
            raise IOTLBError(errno.EINVAL, f"vq must be in 0..{self.nvqs - 1}, got {vq!r}")

    def _check_op_asid(self, op: str, asid: int) -> None:
        """The parents' ``asid >= nas -> -EINVAL`` check, as an IOTLBError."""
        if type(asid) is not int or asid < 0:
            raise TypeError(f"{op}: asid must be a non-negative int, got {asid!r}")
        if asid >= self.nas:
            raise IOTLBError(errno.EINVAL, f"{op}: asid {asid} >= nas {self.nas}")

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} nas={self.nas} ngroups={self.ngroups} "
                f"nvqs={self.nvqs} use_va={self.use_va} mapping={mapping_style(self)}>")


def _no_optional_ops_on_base() -> None:
    leaked = [op for op in OPTIONAL_OPS if hasattr(Backend, op)]
    assert not leaked, f"Backend must not define optional ops: {leaked}"


_no_optional_ops_on_base()


# --------------------------------------------------------------------------- registry
class UnknownBackendError(LookupError):
    """:func:`load_backend` was given a name no usable backend is registered under
    (unknown, or installed but broken -- then ``__cause__`` is the load error).
    The message lists the known names.  A ``LookupError``, not a ``KeyError``, so
    that ``str(exc)`` is the plain message.

    >>> try:
    ...     load_backend("no-such-parent")
    ... except UnknownBackendError as exc:
    ...     print(str(exc).split(";")[0])
    unknown iotlb backend 'no-such-parent'
    """


_lock = threading.RLock()
_discovered: Optional[Dict[str, Type[Backend]]] = None   # from entry points
_broken: Dict[str, BaseException] = {}
_origin: Dict[str, str] = {}                    # name -> entry point value
_duplicates: Dict[str, List[str]] = {}          # name -> every declaration, winner first
_registered: Dict[str, Type[Backend]] = {}      # register()ed in this process


def _entry_points() -> Iterable:
    from importlib import metadata

    if sys.version_info >= (3, 10):
        return metadata.entry_points(group=ENTRY_POINT_GROUP)
    return metadata.entry_points().get(ENTRY_POINT_GROUP, ())  # pragma: no cover


def _check_class(cls, what: str) -> None:
    if not inspect.isclass(cls) or not issubclass(cls, Backend):
        raise TypeError(f"{what} is {cls!r}, not a subclass of iotlb.backend.Backend")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise TypeError(f"{what} ({cls.__qualname__}) does not implement the abstract "
                        f"op(s) {missing}")


def _declaration(ep) -> str:
    """``value (distribution version at location)`` of an entry point, for messages."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value
    try:
        where = str(dist.locate_file(""))
    except Exception:  # pragma: no cover - exotic finders
        where = "?"
    name = dist.metadata.get("Name", "?") if dist.metadata is not None else "?"
    return f"{ep.value} ({name} {dist.version} at {where})"


def _discover() -> Dict[str, Type[Backend]]:
    found: Dict[str, Type[Backend]] = {}
    broken: Dict[str, BaseException] = {}
    origin: Dict[str, str] = {}
    decl: Dict[str, List[str]] = {}
    first_dist: Dict[str, Any] = {}
    dups: Dict[str, List[str]] = {}
    for ep in _entry_points():
        d = _declaration(ep)
        if ep.name in origin:
            dist = getattr(ep, "dist", None)
            prev = first_dist.get(ep.name)
            same_dist = (dist is not None and prev is not None and
                         dist.metadata.get("Name") == prev.metadata.get("Name"))
            # the same distribution found twice on sys.path with the same value is
            # one plugin; anything else is two plugins fighting over one name
            if ep.value != origin[ep.name] or not same_dist:
                if d not in decl[ep.name]:
                    decl[ep.name].append(d)
                    dups[ep.name] = decl[ep.name]
                    n = len(decl[ep.name])
                    log.warning("iotlb backend %r is declared %s (%s); "
                                "using the first on sys.path: %s", ep.name,
                                "twice" if n == 2 else f"{n} times",
                                "; ".join(decl[ep.name]), decl[ep.name][0])
            continue
        origin[ep.name] = ep.value
        decl[ep.name] = [d]
        first_dist[ep.name] = getattr(ep, "dist", None)
        try:
            cls = ep.load()
            _check_class(cls, f"entry point {ep.name} = {ep.value}")
        except Exception as exc:  # a broken plugin is never fatal to discovery
            log.warning("iotlb backend %r (%s) cannot be used: %s: %s",
                        ep.name, ep.value, type(exc).__name__, exc)
            broken[ep.name] = exc
            continue
        found[ep.name] = cls
    global _broken, _origin, _duplicates
    _broken, _origin, _duplicates = broken, origin, dups
    return found


def _table() -> Dict[str, Type[Backend]]:
    global _discovered
    with _lock:
        if _discovered is None:
            _discovered = _discover()
        table = dict(_discovered)
        table.update(_registered)  # register() refuses taken names up front
        return table


def refresh() -> Dict[str, Type[Backend]]:
    """Forget the cached discovery and scan the entry points again (after installing
    or removing a plugin in this process).  Returns :func:`available_backends`.

    >>> "vdpa_sim" in refresh()
    True
    """
    global _discovered
    with _lock:
        _discovered = None
        return available_backends()


def available_backends() -> Dict[str, Type[Backend]]:
    """``{name: backend class}`` for every usable backend, sorted by name: the
    installed entry points of group ``iotlb.backends`` plus :func:`register`\\ ed
    classes.  Discovery runs once and is cached (:func:`refresh` rescans); a plugin
    that fails to import or is not a :class:`Backend` is left out, logged, and
    reported by :func:`broken_backends` -- never fatal.

    >>> sorted(set(available_backends()) & {"mlx5", "platform_iommu", "vdpa_sim"})
    ['mlx5', 'platform_iommu', 'vdpa_sim']
    """
    table = _table()
    return {name: table[name] for name in sorted(table)}


def broken_backends() -> Dict[str, BaseException]:
    """``{name: exception}`` for the installed backends that could not be loaded
    (import error, not a Backend subclass, abstract ops left unimplemented...).

    >>> isinstance(broken_backends(), dict)
    True
    """
    _table()
    with _lock:
        return dict(sorted(_broken.items()))


def matrix_variants(name: str) -> List[Tuple[str, Dict[str, Any]]]:
    """The rows ``iotlb matrix`` shows for backend ``name``: ``[(label, options)]``.

    A backend class declares them as the class attribute ``matrix_variants`` (a
    sequence of ``(label, constructor options)``); without it the built-in table
    :data:`iotlb.scenarios.VARIANTS` is used, and otherwise the backend runs once,
    with its defaults, labelled ``name``.  A malformed declaration is a
    ``TypeError`` naming the class.

    >>> matrix_variants("vdpa_sim")
    [('vdpa_sim (set_map)', {'batch_mapping': True}), ('vdpa_sim (dma_map)', {'batch_mapping': False})]
    >>> class Two(Backend):
    ...     matrix_variants = [("two (fast)", {}), ("two (slow)", {"nas": 2})]
    ...     def reset(self): pass
    ...     def device_iotlb(self, asid): return IOTLB()
    >>> register("two", Two); matrix_variants("two"); unregister("two")
    [('two (fast)', {}), ('two (slow)', {'nas': 2})]
    """
    table = _table()
    cls = table.get(name)
    if cls is None:
        raise UnknownBackendError(f"unknown iotlb backend {name!r}; available: "
                                  f"{', '.join(sorted(table)) or '(none)'}")
    declared = getattr(cls, "matrix_variants", None)
    if declared is None:
        from .scenarios import VARIANTS

        return [(label, dict(opts)) for label, opts in VARIANTS.get(name, [(name, {})])]
    out: List[Tuple[str, Dict[str, Any]]] = []
    try:
        for label, opts in declared:
            if not isinstance(label, str) or not isinstance(opts, dict):
                raise TypeError
            out.append((label, dict(opts)))
    except (TypeError, ValueError):
        raise TypeError(f"{cls.__qualname__}.matrix_variants must be a sequence of "
                        f"(label, options dict), got {declared!r}") from None
    if not out:
        raise TypeError(f"{cls.__qualname__}.matrix_variants declares no variant")
    return out


def duplicate_backends() -> Dict[str, List[str]]:
    """``{name: [declaration, ...]}`` for every backend name that more than one
    installed entry point declares (the first one on ``sys.path`` wins, so which
    plugin runs can depend on the current directory): ``iotlb backends`` and
    ``iotlb matrix`` report them.  Each declaration is ``module:Class
    (distribution version at location)``.

    >>> duplicate_backends().get("vdpa_sim") is None
    True
    """
    _table()
    with _lock:
        return {k: list(v) for k, v in sorted(_duplicates.items())}


def load_backend(name: str, **options: Any) -> Backend:
    """Instantiate the backend registered as ``name``: exactly
    ``BackendClass(**options)``.  An unknown or broken name raises
    :class:`UnknownBackendError` listing what is available.

    >>> b = load_backend("mlx5", umem_uid_0=False)
    >>> type(b).__name__, b.use_va
    ('Mlx5', False)
    """
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    table = _table()
    cls = table.get(name)
    if cls is None:
        known = ", ".join(sorted(table)) or "(none)"
        with _lock:
            cause = _broken.get(name)
        if cause is not None:
            raise UnknownBackendError(
                f"iotlb backend {name!r} is installed but broken "
                f"({type(cause).__name__}: {cause}); available: {known}") from cause
        raise UnknownBackendError(f"unknown iotlb backend {name!r}; available: {known}")
    return cls(**options)


def register(name: str, cls: Type[Backend]) -> None:
    """Register ``cls`` under ``name`` for this process only (no packaging needed:
    tests, notebooks).  A name already taken -- installed or registered -- is refused
    with ``ValueError``; ``cls`` must be a concrete :class:`Backend` subclass
    (``TypeError`` otherwise).  Undo with :func:`unregister`.

    >>> from iotlb_backends.vdpa_sim import VdpaSim
    >>> class MySim(VdpaSim):
    ...     pass
    >>> register("my_sim", MySim)
    >>> isinstance(load_backend("my_sim"), MySim)
    True
    >>> register("my_sim", MySim)
    Traceback (most recent call last):
    ...
    ValueError: iotlb backend name 'my_sim' is already taken by ...MySim...; unregister it first or pick another name
    >>> unregister("my_sim")
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"backend name must be a non-empty str, got {name!r}")
    _check_class(cls, f"register({name!r}, ...)")
    with _lock:
        table = _table()
        if name in table or name in _broken:
            taken = table.get(name) or f"a broken installed plugin ({_origin.get(name)})"
            if inspect.isclass(taken):
                taken = f"{taken.__module__}.{taken.__qualname__}"
            raise ValueError(f"iotlb backend name {name!r} is already taken by {taken}; "
                             "unregister it first or pick another name")
        _registered[name] = cls


def unregister(name: str) -> None:
    """Remove a name added by :func:`register`.  Installed entry points cannot be
    unregistered (``ValueError``); an unknown name is :class:`UnknownBackendError`.

    >>> unregister("vdpa_sim")
    Traceback (most recent call last):
    ...
    ValueError: iotlb backend 'vdpa_sim' comes from an installed entry point (iotlb_backends.vdpa_sim:VdpaSim) and cannot be unregistered
    """
    with _lock:
        if name in _registered:
            del _registered[name]
            return
        _table()
        if name in _origin:
            raise ValueError(f"iotlb backend {name!r} comes from an installed entry point "
                             f"({_origin[name]}) and cannot be unregistered")
        raise UnknownBackendError(f"iotlb backend {name!r} was not registered")
