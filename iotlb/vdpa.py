"""The vhost-vdpa character device (``drivers/vhost/vdpa.c``) as an executable model.

:class:`VhostVdpa` is one ``/dev/vhost-vdpa-N`` bound to a parent driver (a backend,
see ``iotlb.backend``).  It keeps what the kernel keeps per open file -- owner, acked
backend features, the lazily created address spaces (ASID → :class:`iotlb.IOTLB`),
the batch state, the IOVA range, the IOMMU domain of platform parents -- and the
page pins / ``pinned_vm`` charge / file references that the vhost IOTLB owns, through
a :class:`iotlb.usermem.UserMemory` (the owner's ``mm``).

Every branch that depends on a parent op tests the op's presence on the backend
instance (``getattr(backend, "reset_map", None)``), exactly like the kernel tests a
``NULL`` op pointer.  Kernel functions are named in the docstrings; the behaviour is
theirs, including u64 wrap-around and the error paths.

>>> class Parent:                    # a minimal dma_map parent
...     nas, ngroups, nvqs, use_va = 2, 2, 3, False
...     status = 0
...     def reset(self): self.status = 0
...     def get_status(self): return self.status
...     def set_status(self, s): self.status = s
...     def dma_map(self, asid, iova, size, pa, perm, opaque): pass
...     def dma_unmap(self, asid, iova, size): pass
>>> dev = VhostVdpa(Parent())
>>> dev.open(); dev.set_owner()
>>> from iotlb.wire import encode, VHOST_IOTLB_UPDATE
>>> dev.write(encode(VHOST_IOTLB_UPDATE, 0x1000, 0x2000, 0x7f0000001000, 3))
72
>>> list(dev.vhost_iotlb(0)), dev.pinned_pages
([Map(start=0x1000, last=0x2fff, addr=0x7f0000001000, perm=3)], 2)
>>> dev.release(); dev.pinned_pages, dev.vhost_iotlb(0)
(0, None)
"""
from __future__ import annotations

import contextlib
import errno as _errno
from collections import Counter
from typing import TYPE_CHECKING, Iterator, Optional, Tuple

from . import IMPLEMENTATION, IOTLB
from ._map import U64_MAX, perm8, u64
from .errors import IOTLBError, PluginError
from .kernels import KernelProfile, kernel_profile
from .usermem import MapFile, UserMemory
from .wire import (VHOST_ACCESS_WO, VHOST_BACKEND_F_DESC_ASID,
                   VHOST_BACKEND_F_IOTLB_ASID, VHOST_BACKEND_F_IOTLB_PERSIST,
                   VHOST_BACKEND_F_RESUME, VHOST_BACKEND_F_SUSPEND,
                   VHOST_IOTLB_BATCH_BEGIN,
                   VHOST_IOTLB_BATCH_END, VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_MSG,
                   VHOST_IOTLB_MSG_V2, VHOST_IOTLB_UPDATE, VHOST_MSG_MIN_WRITE,
                   VHOST_MSG_SIZE, VHOST_VDPA_BACKEND_FEATURES, VhostMsg, _HEAD,
                   _bytes_view, decode, msg_type_name)

if TYPE_CHECKING:  # pragma: no cover
    from .backend import Backend

if IMPLEMENTATION == "cython":
    from ._device import DeviceCore
else:
    from ._pydevice import DeviceCore

__all__ = ["VhostVdpa", "VDPA_RESET_F_CLEAN_MAP", "MAX_IOTLB_ENTRIES", "VIRTIO_CONFIG_S_ACKNOWLEDGE",
           "VIRTIO_CONFIG_S_DRIVER", "VIRTIO_CONFIG_S_DRIVER_OK",
           "VIRTIO_CONFIG_S_FEATURES_OK", "VIRTIO_CONFIG_S_NEEDS_RESET",
           "VIRTIO_CONFIG_S_FAILED"]

#: ``include/linux/vdpa.h``: the ``flags`` bit of ``vdpa_reset``/``compat_reset``.
VDPA_RESET_F_CLEAN_MAP = 1

# include/uapi/linux/virtio_config.h
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

_F_ASID = 1 << VHOST_BACKEND_F_IOTLB_ASID
_F_PERSIST = 1 << VHOST_BACKEND_F_IOTLB_PERSIST
_F_SUSPEND = 1 << VHOST_BACKEND_F_SUSPEND
_F_RESUME = 1 << VHOST_BACKEND_F_RESUME
_F_DESC_ASID = 1 << VHOST_BACKEND_F_DESC_ASID
_U32_MAX = 0xFFFFFFFF
_INT_MIN, _INT_MAX = -2**31, 2**31 - 1

#: ``max_iotlb_entries``, vhost_vdpa's module parameter: the limit of every address
#: space's vhost IOTLB (flags 0, so ``vhost_iotlb_add_range_ctx`` refuses the entry
#: past it with -ENOSPC).  "vhost_iotlb: bound map allocation in add_range".
MAX_IOTLB_ENTRIES = 2048

_EINVAL, _EFAULT, _EEXIST, _ENOMEM = _errno.EINVAL, _errno.EFAULT, _errno.EEXIST, \
    _errno.ENOMEM
_EPERM, _EBUSY, _EBADF = _errno.EPERM, _errno.EBUSY, _errno.EBADF
_EOPNOTSUPP, _ENOBUFS, _EIO = _errno.EOPNOTSUPP, _errno.ENOBUFS, _errno.EIO

_UPDATE, _INVALIDATE = VHOST_IOTLB_UPDATE, VHOST_IOTLB_INVALIDATE
_BEGIN, _END = VHOST_IOTLB_BATCH_BEGIN, VHOST_IOTLB_BATCH_END
_unpack_head = _HEAD.unpack_from


def _u32(value, name: str) -> int:
    value = u64(value, name)
    if value > _U32_MAX:
        raise OverflowError(f"{name} must be in 0..2**32-1, got {value}")
    return value


class _DemoParent:
    """A tiny dma_map parent for the examples in this module's docstrings."""

    nas, ngroups, nvqs, use_va = 2, 2, 3, False
    status = 0

    def reset(self):
        self.status = 0

    def get_status(self):
        return self.status

    def set_status(self, status):
        self.status = status

    def dma_map(self, asid, iova, size, pa, perm, opaque):
        pass

    def dma_unmap(self, asid, iova, size):
        pass

    def get_vq_group(self, vq):
        return 1 if vq == 2 else 0

    def set_group_asid(self, group, asid):
        return 0

    def suspend(self):
        pass

    def resume(self):
        pass

    def get_iova_range(self):
        return (0x1000, 2**48 - 1)


def _demo() -> "VhostVdpa":
    """An opened, owned device on :class:`_DemoParent` (for examples)."""
    dev = VhostVdpa(_DemoParent())
    dev.open()
    dev.set_owner()
    return dev


#: The parent ops whose errors the kernel handles (``vdpa_config_ops`` it calls and
#: checks, or deliberately ignores), guarded by :func:`_guard_parent_ops`.
_GUARDED_OPS = ("set_map", "dma_map", "dma_unmap", "iommu_map", "iommu_unmap",
                "reset", "compat_reset", "reset_map", "set_status", "set_group_asid",
                "suspend", "resume")
#: Modules whose backends are the project's own (their op errors are IOTLBError):
#: left unwrapped, so the hot path pays nothing.
_BUILTIN_MODULES = ("iotlb.", "iotlb_backends.")
#: how many plugin errors a backend keeps (the first ones)
_PLUGIN_ERRORS_KEPT = 1000


def _guard_parent_ops(backend) -> None:
    """Make every exception of a plugin's parent op an :class:`IOTLBError`.

    The device model follows the kernel on an op's error return (``vhost_vdpa_map``
    deletes the range and unpins; ``vhost_vdpa_general_unmap`` and the release path
    ignore it) for IOTLBError.  A plugin may raise anything: each op of
    :data:`_GUARDED_OPS` that the backend has is shadowed by an instance attribute
    that turns any other :class:`Exception` into :class:`~iotlb.errors.PluginError`
    (``__cause__`` = the plugin's exception), records it in the backend's
    ``_iotlb_plugin_errors`` (and the exception in ``_iotlb_plugin_exceptions``; the
    first 1,000) and logs it with its traceback (logger ``iotlb.vdpa``).
    Built-in backends are left as they are; guarding twice is a no-op.
    """
    cls = type(backend)
    if cls.__module__.startswith(_BUILTIN_MODULES) or \
            getattr(backend, "_iotlb_guarded", False):
        return
    try:
        errors = backend.__dict__.setdefault("_iotlb_plugin_errors", [])
        raised = backend.__dict__.setdefault("_iotlb_plugin_exceptions", [])
    except AttributeError:                 # no instance dict (__slots__): leave it
        return
    for name in _GUARDED_OPS:
        fn = getattr(backend, name, None)
        if fn is None:
            continue
        guard = _op_guard(fn, f"{cls.__name__}.{name}", errors, raised)
        guard.__name__ = name
        guard.__wrapped__ = fn
        backend.__dict__[name] = guard
    backend.__dict__["_iotlb_guarded"] = True


def _op_guard(fn, qual: str, errors: list, raised: list):
    """``fn`` wrapped as :func:`_guard_parent_ops` describes, ``qual`` naming it in
    the PluginError.  Everything reaches the wrapper through closure cells, not
    keyword defaults: it runs once per parent op call, and filling in keyword
    defaults cost ~240 instructions a call (callgrind, a no-op plugin parent through
    ``write_many``: 4,730 -> 4,490 a message; ~3,680 unguarded)."""
    import logging

    log = logging.getLogger("iotlb.vdpa")

    def guard(*args):
        try:
            return fn(*args)
        except IOTLBError:
            raise
        except Exception as exc:
            err = PluginError(qual, exc)
            if len(errors) < _PLUGIN_ERRORS_KEPT:
                errors.append(str(err))
                raised.append(exc)       # with its traceback (IOTLB_DEBUG=1)
            log.error("%s", err, exc_info=True)
            raise err from exc

    return guard


class VhostVdpa(DeviceCore):
    """One vhost-vdpa device node bound to ``backend`` (not yet opened).

    ``kernel`` names the kernel profile whose rules apply (:data:`iotlb.KERNELS`, or
    a what-if ``"<kernel>+<policy>"`` of :data:`iotlb.kernels.POLICIES`; an unknown
    name is a ValueError).  None = the kernel the backend was built for when it
    names one (``VdpaSim(kernel="6.1")``), else the newest,
    :data:`iotlb.kernels.DEFAULT_KERNEL`.  The profile reaches the parent too: a
    backend with ``bind_kernel`` (every :class:`iotlb.backend.Backend`) is bound to
    it here, so its op table and offered features are that kernel's parent's.
    ``max_iotlb_entries`` is vhost_vdpa's module parameter of that name: each
    address space's entry limit (default 2048; ``<= 0`` makes
    ``vhost_vdpa_alloc_as`` fail, so UPDATE/BATCH_BEGIN get EINVAL).
    ``memlock_pages`` is ``RLIMIT_MEMLOCK`` in pages (None = unlimited); ``usermem``
    is the owner's memory model (a fresh identity-mapped :class:`UserMemory` by
    default; pass a shared one to model several devices in one process -- then
    ``memlock_pages``, when given, sets its limit).

    >>> class P:
    ...     nas = ngroups = nvqs = 1; use_va = False
    ...     def reset(self): pass
    ...     def get_status(self): return 0
    ...     def set_status(self, s): pass
    >>> dev = VhostVdpa(P(), memlock_pages=1024)
    >>> dev.is_open, dev.usermem.lock_limit, dev.kernel.name, dev.max_iotlb_entries
    (False, 1024, '7.2', 2048)
    """

    def __init__(self, backend, *, kernel=None,
                 max_iotlb_entries: int = MAX_IOTLB_ENTRIES,
                 memlock_pages: Optional[int] = None,
                 page_size: int = 4096, usermem: Optional[UserMemory] = None) -> None:
        if kernel is None and getattr(backend, "kernel_bound", False):
            profile = kernel_profile(backend.kernel)
        else:
            profile = kernel_profile(kernel)
        if type(max_iotlb_entries) is not int:
            raise TypeError(f"max_iotlb_entries must be an int, got "
                            f"{type(max_iotlb_entries).__name__}")
        if not _INT_MIN <= max_iotlb_entries <= _INT_MAX:
            raise OverflowError(f"max_iotlb_entries is a C int, got {max_iotlb_entries}")
        if usermem is None:
            usermem = UserMemory(page_size, memlock_pages=memlock_pages)
        else:
            if usermem.page_size != page_size:
                raise ValueError(f"usermem page_size {usermem.page_size} != "
                                 f"page_size {page_size}")
            if memlock_pages is not None:
                usermem.memlock_pages = memlock_pages
        bind = getattr(backend, "bind_kernel", None)
        if bind is not None:
            bind(profile)       # the parent driver of the same kernel (ValueError if not)
        _guard_parent_ops(backend)
        self._backend = backend
        self._kernel = profile
        self._max_iotlb_entries = max_iotlb_entries
        self._mem = usermem
        self._page_size = page_size
        self._shift = page_size.bit_length() - 1
        self._offmask = page_size - 1
        # pin_user_pages batch: one page of struct page * (PAGE_SIZE / 8 entries)
        self._gup_batch = max(1, page_size // 8)   # at least one page (tiny pages)
        self._opened = False
        self._vqs = False          # v->vdev.vqs != NULL (between dev_init and cleanup)
        self._owner = False
        self._features = 0         # acked backend features (vq 0)
        self._as: dict = {}        # asid -> IOTLB  (v->as[] hash)
        self._in_batch = False
        self._batch_asid = 0
        self._range: Tuple[int, int] = (0, U64_MAX)
        self._domain = False       # platform parents: IOMMU domain allocated
        self._suspended = False
        self._pinned = 0           # pages this device charged to pinned_vm
        self._fast = True          # write() fast path (tests compare it with False)

    # ================================================================ observation
    @property
    def backend(self) -> "Backend":
        """The parent driver model."""
        return self._backend

    @property
    def plugin_errors(self) -> list:
        """Every :class:`~iotlb.errors.PluginError` a parent op raised on this backend
        (also where the kernel ignores the op's result and the model goes on), as
        strings, oldest first; empty for the built-in parents."""
        return list(getattr(self._backend, "_iotlb_plugin_errors", ()))

    @property
    def kernel(self) -> KernelProfile:
        """The kernel profile whose rules this device follows.

        >>> VhostVdpa(object(), kernel="6.12").kernel.release
        (6, 12, 118)
        """
        return self._kernel

    @property
    def max_iotlb_entries(self) -> int:
        """vhost_vdpa's ``max_iotlb_entries`` module parameter (each AS's limit)."""
        return self._max_iotlb_entries

    @property
    def usermem(self) -> UserMemory:
        """The owner's memory model (pins, ``pinned_vm``, VMAs, placement)."""
        return self._mem

    @property
    def is_open(self) -> bool:
        """Whether the device node is open (``v->opened``)."""
        return self._opened

    @property
    def has_owner(self) -> bool:
        """Whether ``VHOST_SET_OWNER`` succeeded since open."""
        return self._owner

    @property
    def backend_features(self) -> int:
        """The acked backend features (0 when closed)."""
        return self._features

    @property
    def in_batch(self) -> bool:
        """``v->in_batch``."""
        return self._in_batch

    @property
    def batch_asid(self) -> int:
        """``v->batch_asid`` (meaningful while :attr:`in_batch`).

        >>> dev = _demo(); dev.batch_begin(1); dev.batch_asid
        1
        """
        return self._batch_asid

    @property
    def iova_range(self) -> Tuple[int, int]:
        """``v->range`` as ``(first, last)``, set at open."""
        return self._range

    @property
    def suspended(self) -> bool:
        """``v->suspended``: set by a successful SUSPEND, cleared by RESUME and reset."""
        return self._suspended

    @property
    def pinned_pages(self) -> int:
        """Pages this device charged to ``pinned_vm`` (the pages of its PA entries).

        >>> dev = _demo(); dev.update(0x1000, 0x2001, 0x1000); dev.pinned_pages
        3
        """
        return self._pinned

    @property
    def leaked_pages(self) -> int:
        """Pages left pinned by this device's UPDATE error paths (kernel behaviour,
        see :meth:`update`)."""
        return sum(k[1] * c for k, c in self._mem.leaked(self).items())

    @property
    def dirtied_pages(self) -> int:
        """Pages dirtied on unpin so far, in this device's ``mm``.

        >>> dev = _demo(); dev.update(0x1000, 0x1000, 0, perm=3); dev.release()
        >>> dev.dirtied_pages
        1
        """
        return self._mem.dirtied_pages

    @property
    def address_spaces(self) -> list:
        """ASIDs whose address space exists, ascending.

        >>> dev = _demo(); dev.update(0x1000, 0x1000, 0, asid=1); dev.address_spaces
        [1]
        """
        return sorted(self._as)

    def vhost_iotlb(self, asid: int = 0) -> Optional[IOTLB]:
        """The vhost IOTLB of ``asid`` (layer 1), or None if that AS does not exist.

        The returned tree is the device's own; do not modify it.

        >>> VhostVdpa(object()).vhost_iotlb(0) is None
        True
        """
        return self._as.get(asid)

    def __repr__(self) -> str:
        state = "open" if self._opened else "closed"
        return (f"<VhostVdpa {state} backend={type(self._backend).__name__} "
                f"as={self.address_spaces} in_batch={self._in_batch} "
                f"pinned={self._pinned} features={self._features:#x}>")

    # ================================================================ helpers
    def _op(self, name: str):
        return getattr(self._backend, name, None)

    def _check_open(self) -> None:
        if not self._opened:
            raise IOTLBError(_EBADF, "vhost-vdpa: the device is not open")

    def _vdpa_reset(self, flags: int) -> None:
        """``vdpa_reset(vdev, flags)``: ``compat_reset(flags)`` if the op exists and
        ``flags != 0``, else ``reset()``; before
        :attr:`~iotlb.kernels.KernelProfile.compat_reset` (6.1) ``vdpa_reset(vdev)``
        has no flags and always calls ``reset()``."""
        compat = self._op("compat_reset") if self._kernel.compat_reset else None
        if compat is not None and flags:
            compat(flags)
        else:
            self._backend.reset()

    def _compat_vdpa_reset(self) -> None:
        """``_compat_vdpa_reset``: CLEAN_MAP iff the vqs exist and IOTLB_PERSIST is
        not acked (6.1: ``vdpa_reset(vdpa)``, no flags)."""
        self._suspended = False
        flags = 0
        if self._kernel.compat_reset and self._vqs and not self._features & _F_PERSIST:
            flags = VDPA_RESET_F_CLEAN_MAP
        self._vdpa_reset(flags)

    def _vhost_vdpa_reset(self) -> None:
        """``vhost_vdpa_reset``: ``in_batch = 0`` then ``_compat_vdpa_reset``."""
        self._in_batch = False
        self._compat_vdpa_reset()

    def _has_persistent_map(self) -> bool:
        """``vhost_vdpa_has_persistent_map`` (False where IOTLB_PERSIST is not a known
        bit: :attr:`~iotlb.kernels.KernelProfile.iotlb_persist`)."""
        if not self._kernel.iotlb_persist:
            return False
        return ((self._op("set_map") is None and self._op("dma_map") is None)
                or self._op("reset_map") is not None
                or bool(self._parent_features() & _F_PERSIST))

    def _parent_features(self) -> int:
        """``vhost_vdpa_get_backend_features``: the parent's op, or 0 (always 0
        before :attr:`~iotlb.kernels.KernelProfile.parent_backend_features`)."""
        if not self._kernel.parent_backend_features:
            return 0
        op = self._op("get_backend_features")
        return int(op()) if op is not None else 0

    # ================================================================ open / release
    def open(self) -> None:
        """``vhost_vdpa_open``: EBUSY while open; ``vhost_vdpa_reset`` (no vqs yet ⇒
        flags 0 ⇒ ``backend.reset()``); fresh vhost_dev (no owner, features 0, no
        AS); IOMMU domain for platform parents (``iommu_domain_alloc()`` if the
        backend has it); IOVA range from ``get_iova_range`` or ``[0, ~0]``.

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> dev = VhostVdpa(P()); dev.open()
        >>> dev.open()
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EBUSY] vhost_vdpa_open: the device is already open
        """
        if self._opened:
            raise IOTLBError(_EBUSY, "vhost_vdpa_open: the device is already open")
        self._opened = True
        try:
            self._vhost_vdpa_reset()
        except IOTLBError:
            self._opened = False
            raise
        # vhost_dev_init
        self._vqs = True
        self._owner = False
        self._features = 0
        # vhost_vdpa_alloc_domain
        if self._op("set_map") is None and self._op("dma_map") is None:
            alloc = self._op("iommu_domain_alloc")
            if alloc is not None:
                try:
                    alloc()
                except IOTLBError:
                    self._cleanup()
                    self._opened = False
                    raise
            self._domain = True
        # vhost_vdpa_set_iova_range
        get_range = self._op("get_iova_range")
        if get_range is not None:
            first, last = get_range()
            self._range = (u64(first, "iova range first"), u64(last, "iova range last"))
        else:
            self._range = (0, U64_MAX)

    def release(self) -> None:
        """``vhost_vdpa_release``, in the kernel's order: ``in_batch = 0``;
        ``_compat_vdpa_reset`` (CLEAN_MAP unless IOTLB_PERSIST acked; its error is
        ignored); ``vhost_vdpa_cleanup``: ``remove_as`` for every existing ASID
        ascending (each entry unpinned/fput, uncharged and unmapped from the device:
        ``dma_unmap`` / ``iommu_unmap`` / nothing for set_map parents; then
        ``reset_map(asid)`` if the op exists), IOMMU domain freed
        (``iommu_domain_free()`` if present), owner dropped, features zeroed.

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> dev = VhostVdpa(P()); dev.open(); dev.release(); dev.open(); dev.is_open
        True
        """
        self._check_open()
        self._in_batch = False
        try:
            self._compat_vdpa_reset()
        except IOTLBError:
            pass  # vhost_vdpa_release ignores the reset's result
        self._cleanup()
        self._opened = False

    def _cleanup(self) -> None:
        """``vhost_vdpa_cleanup``."""
        nas = self._backend.nas
        for asid in sorted(a for a in self._as if a < nas):
            self._remove_as(asid)
        if self._domain:
            free = self._op("iommu_domain_free")
            if free is not None:
                free()
            self._domain = False
        # vhost_dev_cleanup
        self._owner = False
        self._features = 0
        self._vqs = False

    def _remove_as(self, asid: int) -> None:
        """``vhost_vdpa_remove_as``: unlink, unmap ``[0, ~0]``, ``reset_map``
        (``vhost_vdpa_reset_map``; not before
        :attr:`~iotlb.kernels.KernelProfile.reset_map_at_release`, and under the
        what-if :attr:`~iotlb.kernels.KernelProfile.reset_map_needs_persist` only
        with IOTLB_PERSIST acked -- the features are still acked here: they are
        zeroed after the ASes are removed)."""
        iotlb = self._as.pop(asid)
        self._iotlb_unmap(asid, iotlb, 0, U64_MAX)
        profile = self._kernel
        if not profile.reset_map_at_release or (profile.reset_map_needs_persist and
                                                not self._features & _F_PERSIST):
            return
        reset_map = self._op("reset_map")
        if reset_map is not None:
            try:
                reset_map(asid)
            except IOTLBError:
                pass  # vhost_vdpa_reset_map ignores the result

    def __enter__(self) -> "VhostVdpa":
        """``with VhostVdpa(b) as dev:`` opens, and releases on exit."""
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        if self._opened:
            self.release()

    # ================================================================ ioctls
    def set_owner(self) -> None:
        """``VHOST_SET_OWNER`` (``vhost_dev_set_owner``): EBUSY if already owned.

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> dev = VhostVdpa(P()); dev.open(); dev.set_owner(); dev.has_owner
        True
        """
        self._check_open()
        if self._owner:
            raise IOTLBError(_EBUSY, "vhost_dev_set_owner: the device already has an "
                             "owner")
        self._owner = True

    def _check_owner(self, what: str) -> None:
        if not self._owner:
            raise IOTLBError(_EPERM, f"{what}: vhost_dev_check_owner: caller is not the "
                             f"owner (no VHOST_SET_OWNER)")

    def get_backend_features(self) -> int:
        """``VHOST_GET_BACKEND_FEATURES``: MSG_V2|BATCH|ASID, plus SUSPEND/RESUME if
        the ops exist, DESC_ASID if ``get_vq_desc_group`` exists, IOTLB_PERSIST if
        ``vhost_vdpa_has_persistent_map``, plus the parent's
        ``get_backend_features()``.

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> dev = VhostVdpa(P()); dev.open(); hex(dev.get_backend_features())
        '0x10e'
        """
        self._check_open()
        profile = self._kernel
        features = VHOST_VDPA_BACKEND_FEATURES
        if self._op("suspend") is not None:
            features |= _F_SUSPEND
        if profile.resume_ioctl and self._op("resume") is not None:
            features |= _F_RESUME
        if profile.desc_asid and self._op("get_vq_desc_group") is not None:
            features |= _F_DESC_ASID
        if self._has_persistent_map():
            features |= _F_PERSIST
        return (features | self._parent_features()) & U64_MAX

    def set_backend_features(self, features: int) -> None:
        """``VHOST_SET_BACKEND_FEATURES``, checks in the kernel's order: unknown bit →
        EOPNOTSUPP; SUSPEND/RESUME without the op → EOPNOTSUPP; DESC_ASID without
        IOTLB_ASID in the same request → EINVAL; DESC_ASID without
        ``get_vq_desc_group`` → EOPNOTSUPP; IOTLB_PERSIST without a persistent map →
        EOPNOTSUPP; then the mask replaces the acked set.  The known bits are the
        profile's (:attr:`~iotlb.kernels.KernelProfile.known_backend_features`: 6.1
        knows only MSG_V2, BATCH, ASID and SUSPEND, so there RESUME, DESC_ASID,
        ENABLE_AFTER_DRIVER_OK and IOTLB_PERSIST are unknown bits).

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> import errno
        >>> dev = VhostVdpa(P()); dev.open()
        >>> try:
        ...     dev.set_backend_features(1 << 9)
        ... except IOTLBError as e:
        ...     print(e.errno == errno.EOPNOTSUPP, e.strerror)
        True VHOST_SET_BACKEND_FEATURES: unknown bits 0x200
        """
        self._check_open()
        features = u64(features, "features")
        known = self._kernel.known_backend_features
        if features & ~known:
            raise IOTLBError(_EOPNOTSUPP, f"VHOST_SET_BACKEND_FEATURES: unknown bits "
                             f"{features & ~known:#x}")
        if features & _F_SUSPEND and self._op("suspend") is None:
            raise IOTLBError(_EOPNOTSUPP, "VHOST_SET_BACKEND_FEATURES: SUSPEND but the "
                             "parent has no suspend op")
        if features & _F_RESUME and self._op("resume") is None:
            raise IOTLBError(_EOPNOTSUPP, "VHOST_SET_BACKEND_FEATURES: RESUME but the "
                             "parent has no resume op")
        if features & _F_DESC_ASID and not features & _F_ASID:
            raise IOTLBError(_EINVAL, "VHOST_SET_BACKEND_FEATURES: DESC_ASID without "
                             "IOTLB_ASID")
        if features & _F_DESC_ASID and self._op("get_vq_desc_group") is None:
            raise IOTLBError(_EOPNOTSUPP, "VHOST_SET_BACKEND_FEATURES: DESC_ASID but the "
                             "parent has no get_vq_desc_group op")
        if features & _F_PERSIST and not self._has_persistent_map():
            raise IOTLBError(_EOPNOTSUPP, "VHOST_SET_BACKEND_FEATURES: IOTLB_PERSIST "
                             "but the parent has no persistent map")
        self._features = features

    def get_status(self) -> int:
        """``VHOST_VDPA_GET_STATUS``: the parent's ``get_status()``.

        >>> dev = _demo(); dev.set_status(1); dev.get_status()
        1
        """
        self._check_open()
        return self._backend.get_status()

    def set_status(self, status: int) -> None:
        """``VHOST_VDPA_SET_STATUS``: a nonzero status that clears bits of the current
        one → EINVAL; 0 → ``_compat_vdpa_reset`` (``in_batch`` and the vhost IOTLB
        untouched; the reset's error is returned); else ``backend.set_status``.

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False; st = 0
        ...     def reset(self): self.st = 0
        ...     def get_status(self): return self.st
        ...     def set_status(self, s): self.st = s
        >>> dev = VhostVdpa(P()); dev.open(); dev.set_status(3); dev.set_status(1)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EINVAL] VHOST_VDPA_SET_STATUS: 0x1 clears bits of 0x3
        """
        self._check_open()
        status = perm8(status, "status")
        old = self._backend.get_status()
        if status != 0 and (old & ~status) != 0:
            raise IOTLBError(_EINVAL, f"VHOST_VDPA_SET_STATUS: {status:#x} clears bits "
                             f"of {old:#x}")
        if status == 0:
            self._compat_vdpa_reset()
        else:
            self._backend.set_status(status)

    def set_group_asid(self, group: int, asid: int):
        """``VHOST_VDPA_SET_GROUP_ASID`` (a vring ioctl): not the owner → EPERM
        (``vhost_dev_ioctl`` runs first); ``group >= nvqs`` → ENOBUFS (parsed as a
        vring index); ``group >= ngroups || asid >= nas`` → EINVAL ("vhost: move
        vdpa group bound check to vhost_vdpa"; before it only ``asid >= nas``);
        DRIVER_OK set → EBUSY (7.2 profile); no ``set_group_asid`` op → EOPNOTSUPP;
        else the parent's result.  No AS is created, no mapping touched.

        >>> dev = _demo(); dev.set_group_asid(1, 1), dev.address_spaces
        (0, [])
        >>> dev.set_group_asid(3, 0)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [ENOBUFS] VHOST_VDPA_SET_GROUP_ASID: index 3 >= nvqs 3
        """
        self._check_open()
        group = _u32(group, "group")
        asid = _u32(asid, "asid")
        self._check_owner("VHOST_VDPA_SET_GROUP_ASID")
        if group >= self._backend.nvqs:
            raise IOTLBError(_ENOBUFS, f"VHOST_VDPA_SET_GROUP_ASID: index {group} >= "
                             f"nvqs {self._backend.nvqs}")
        profile = self._kernel
        # vhost_vdpa_vring_ioctl, VHOST_VDPA_SET_GROUP_ASID
        if profile.group_asid_bound_check and group >= self._backend.ngroups:
            raise IOTLBError(_EINVAL, f"VHOST_VDPA_SET_GROUP_ASID: group {group} >= "
                             f"ngroups {self._backend.ngroups}")
        if asid >= self._backend.nas:
            raise IOTLBError(_EINVAL, f"VHOST_VDPA_SET_GROUP_ASID: asid {asid} >= nas "
                             f"{self._backend.nas}")
        if profile.set_group_asid_busy_after_driver_ok and \
                self._backend.get_status() & VIRTIO_CONFIG_S_DRIVER_OK:
            raise IOTLBError(_EBUSY, "VHOST_VDPA_SET_GROUP_ASID: DRIVER_OK is set")
        op = self._op("set_group_asid")
        if op is None:
            raise IOTLBError(_EOPNOTSUPP, "VHOST_VDPA_SET_GROUP_ASID: the parent has no "
                             "set_group_asid op")
        return op(group, asid)

    def get_vring_group(self, vq: int) -> int:
        """``VHOST_VDPA_GET_VRING_GROUP``: EPERM without owner, ENOBUFS for
        ``vq >= nvqs``, EOPNOTSUPP without ``get_vq_group``, EIO if the parent answers
        a group ``>= ngroups``.

        >>> [_demo().get_vring_group(vq) for vq in range(3)]
        [0, 0, 1]
        """
        self._check_open()
        vq = _u32(vq, "vq")
        self._check_owner("VHOST_VDPA_GET_VRING_GROUP")
        if vq >= self._backend.nvqs:
            raise IOTLBError(_ENOBUFS, f"VHOST_VDPA_GET_VRING_GROUP: index {vq} >= nvqs "
                             f"{self._backend.nvqs}")
        op = self._op("get_vq_group")
        if op is None:
            raise IOTLBError(_EOPNOTSUPP, "VHOST_VDPA_GET_VRING_GROUP: the parent has no "
                             "get_vq_group op")
        group = op(vq)
        if group >= self._backend.ngroups:
            raise IOTLBError(_EIO, f"VHOST_VDPA_GET_VRING_GROUP: parent answered group "
                             f"{group} >= ngroups {self._backend.ngroups}")
        return int(group)

    def _driver_ok_or_skip(self) -> bool:
        """``vhost_vdpa_suspend``/``resume``'s first test: False (return 0, no parent
        call, no op check) while DRIVER_OK is clear -- "vdpa: skip suspend/resume
        ops if not DRIVER_OK" (:attr:`KernelProfile.suspend_resume_need_driver_ok`)."""
        if not self._kernel.suspend_resume_need_driver_ok:
            return True
        return bool(self._backend.get_status() & VIRTIO_CONFIG_S_DRIVER_OK)

    def suspend(self) -> None:
        """``VHOST_VDPA_SUSPEND``: 0 without calling the parent while DRIVER_OK is
        clear; else EOPNOTSUPP without the op, else the parent's ``suspend()``.

        >>> dev = _demo(); dev.suspend(); dev.suspended
        False
        >>> dev.set_status(VIRTIO_CONFIG_S_DRIVER_OK); dev.suspend(); dev.suspended
        True
        """
        self._check_open()
        if not self._driver_ok_or_skip():
            return
        op = self._op("suspend")
        if op is None:
            raise IOTLBError(_EOPNOTSUPP, "VHOST_VDPA_SUSPEND: the parent has no suspend "
                             "op")
        op()
        self._suspended = True

    def resume(self) -> None:
        """``VHOST_VDPA_RESUME``: 0 without calling the parent while DRIVER_OK is
        clear; else EOPNOTSUPP without the op, else the parent's ``resume()``.

        >>> dev = _demo(); dev.set_status(VIRTIO_CONFIG_S_DRIVER_OK)
        >>> dev.suspend(); dev.resume(); dev.suspended
        False

        Before :attr:`~iotlb.kernels.KernelProfile.resume_ioctl` (6.1) the number is
        no vhost-vdpa ioctl: ``vhost_dev_ioctl`` wants the owner (EPERM), then
        ``vhost_vdpa_vring_ioctl`` reads a vring index from the NULL argument:

        >>> dev = VhostVdpa(_DemoParent(), kernel="6.1"); dev.open(); dev.set_owner()
        >>> dev.resume()
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EFAULT] VHOST_VDPA_RESUME (not an ioctl before v6.3): vhost_vdpa_vring_ioctl: get_user of the vring index from NULL
        """
        self._check_open()
        if not self._kernel.resume_ioctl:
            self._check_owner("VHOST_VDPA_RESUME (not an ioctl before v6.3): "
                              "vhost_dev_ioctl")
            raise IOTLBError(_EFAULT, "VHOST_VDPA_RESUME (not an ioctl before v6.3): "
                             "vhost_vdpa_vring_ioctl: get_user of the vring index "
                             "from NULL")
        if not self._driver_ok_or_skip():
            return
        op = self._op("resume")
        if op is None:
            raise IOTLBError(_EOPNOTSUPP, "VHOST_VDPA_RESUME: the parent has no resume "
                             "op")
        op()
        self._suspended = False

    def get_iova_range(self) -> Tuple[int, int]:
        """``VHOST_VDPA_GET_IOVA_RANGE``: ``(first, last)``.

        >>> [hex(x) for x in _demo().get_iova_range()]
        ['0x1000', '0xffffffffffff']
        """
        self._check_open()
        return self._range

    def get_as_num(self) -> int:
        """``VHOST_VDPA_GET_AS_NUM``.

        >>> _demo().get_as_num()
        2
        """
        self._check_open()
        return self._backend.nas

    def get_group_num(self) -> int:
        """``VHOST_VDPA_GET_GROUP_NUM``.

        >>> _demo().get_group_num()
        2
        """
        self._check_open()
        return self._backend.ngroups

    def get_vqs_count(self) -> int:
        """``VHOST_VDPA_GET_VQS_COUNT``.

        >>> _demo().get_vqs_count()
        3
        """
        self._check_open()
        return self._backend.nvqs

    # ================================================================ write()
    # write() and write_many() are DeviceCore's: compiled (iotlb._device) they run the
    # common UPDATE and INVALIDATE in C and hand every other message to _write; in the
    # twin (iotlb._pydevice) write() is _write.
    def _write(self, data) -> int:
        """``vhost_chr_write_iter`` → ``vhost_vdpa_process_iotlb_msg``: the reference
        path of :meth:`write`."""
        if not self._opened:
            raise IOTLBError(_EBADF, "vhost-vdpa: the device is not open")
        if type(data) is not bytes and type(data) is not bytearray:
            data = _bytes_view(data)
        if len(data) < VHOST_MSG_MIN_WRITE:
            decode(data, asid_acked=bool(self._features & _F_ASID),
                   invalidate_size_zero=self._kernel.invalidate_size_zero)  # EINVAL
            raise AssertionError("unreachable")  # pragma: no cover
        outer, asid, iova, size, uaddr, perm, t = _unpack_head(data)
        if outer == VHOST_IOTLB_MSG_V2:
            if not self._features & _F_ASID:
                asid = 0
        elif outer == VHOST_IOTLB_MSG:
            asid = 0
        else:
            raise IOTLBError(_EINVAL, f"vhost_chr_write_iter: unknown message type "
                             f"{outer}")
        # vhost_chr_write_iter: only UPDATE with size 0 since v6.6 ("vhost: Allow
        # null msg.size on VHOST_IOTLB_INVALIDATE"); the handler then unmaps the
        # wrapped [iova, iova - 1] (iova 0: the whole AS)
        if size == 0 and (t == _UPDATE or (t == _INVALIDATE and
                                           not self._kernel.invalidate_size_zero)):
            raise IOTLBError(_EINVAL, f"vhost_chr_write_iter: {msg_type_name(t)} with "
                             f"size 0")
        try:
            self._handle(asid, t, iova, size, uaddr, perm)
        except IOTLBError as e:
            raise self._handler_failed(e) from e
        return VHOST_MSG_SIZE

    @staticmethod
    def _handler_failed(error: IOTLBError) -> IOTLBError:
        """The EFAULT ``vhost_chr_write_iter`` returns for any handler error."""
        return IOTLBError(_EFAULT, f"vhost_chr_write_iter: the message handler failed "
                          f"({_errno.errorcode.get(error.errno, error.errno)})")


    # ================================================================ handler level
    def process(self, msg: VhostMsg) -> None:
        """``vhost_vdpa_process_iotlb_msg(dev, msg.asid, msg)``: the handler, raising
        its own errno (no EFAULT folding, no write-level size check).

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> dev = VhostVdpa(P()); dev.open(); dev.set_owner()
        >>> dev.process(VhostMsg(VHOST_IOTLB_INVALIDATE, 0, 4096))
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EINVAL] vhost_vdpa_process_iotlb_msg: no iotlb for asid 0
        """
        self._check_open()
        t, iova, size, uaddr, perm, asid, _ = msg
        self._handle(asid, t, iova, size, uaddr, perm)

    def update(self, iova: int, size: int, uaddr: int, perm: int = 3,
               asid: int = 0) -> None:
        """An UPDATE at handler level (``vhost_vdpa_process_iotlb_update``).

        Validation, in order: ``iova < range.first``, ``size == 0``, ``iova + size - 1``
        wraps, ``> range.last`` → EINVAL; an entry overlapping the caller's unaligned
        ``[iova, iova+size-1]`` → EEXIST.  Then PA mode pins and maps
        ``[iova & PAGE_MASK, ...]`` as one entry per physically contiguous run
        (``npages == 0`` → EINVAL, ``npages + pinned_vm > RLIMIT_MEMLOCK`` → ENOMEM),
        VA mode maps one entry per shared-file VMA piece.  On failure everything this
        UPDATE mapped is unmapped again (kernel error path -- which, like the
        kernel, can leave a run pinned when a later run of physically
        non-contiguous memory fails: see :attr:`leaked_pages`).

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        ...     def dma_map(self, *a): pass
        ...     def dma_unmap(self, *a): pass
        >>> dev = VhostVdpa(P()); dev.open(); dev.set_owner()
        >>> dev.update(0x1800, 0x800, 0x1800); dev.update(0x1000, 0x100, 0x1000)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EEXIST] vhost_vdpa_process_iotlb_update: [0x1000, 0x10ff] overlaps Map(start=0x1000, last=0x1fff, addr=0x1000, perm=3)
        """
        self._check_open()
        self._handle(_u32(asid, "asid"), _UPDATE, u64(iova, "iova"), u64(size, "size"),
                     u64(uaddr, "uaddr"), perm8(perm))

    def invalidate(self, iova: int, size: int, asid: int = 0) -> None:
        """An INVALIDATE at handler level (``vhost_vdpa_unmap``): every entry
        overlapping ``[iova, iova+size-1]`` (u64 wrap kept) goes whole; always
        succeeds once the AS exists.

        >>> dev = _demo(); dev.update(0x1000, 0x3000, 0x1000)
        >>> dev.invalidate(0x2000, 1); dev.vhost_iotlb(0), dev.pinned_pages
        (IOTLB([], limit=2048, retire=False), 0)
        """
        self._check_open()
        self._handle(_u32(asid, "asid"), _INVALIDATE, u64(iova, "iova"),
                     u64(size, "size"), 0, 0)

    def batch_begin(self, asid: int = 0) -> None:
        """BATCH_BEGIN (creates the AS; binds the batch to ``asid``).

        >>> dev = _demo(); dev.batch_begin(0); dev.in_batch, dev.address_spaces
        (True, [0])
        """
        self._check_open()
        self._handle(_u32(asid, "asid"), _BEGIN, 0, 0, 0, 0)

    def batch_end(self, asid: int = 0) -> None:
        """BATCH_END (``set_map`` of the whole IOTLB if in a batch and the op exists;
        its result ignored).

        >>> dev = _demo(); dev.batch_begin(); dev.batch_end(); dev.in_batch
        False
        """
        self._check_open()
        self._handle(_u32(asid, "asid"), _END, 0, 0, 0, 0)

    @contextlib.contextmanager
    def batch(self, asid: int = 0) -> Iterator["VhostVdpa"]:
        """``with dev.batch(asid):`` sends BATCH_BEGIN, then BATCH_END on exit (also
        when the body raises).

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False; calls = 0
        ...     def reset(self): pass
        ...     def set_map(self, asid, iotlb): P.calls += 1
        >>> dev = VhostVdpa(P()); dev.open(); dev.set_owner()
        >>> with dev.batch():
        ...     dev.update(0, 4096, 0); dev.update(4096, 4096, 4096)
        >>> P.calls, len(dev.vhost_iotlb(0))
        (1, 2)
        """
        self.batch_begin(asid)
        try:
            yield self
        finally:
            self.batch_end(asid)

    def _handle(self, asid: int, t: int, iova: int, size: int, uaddr: int,
                perm: int) -> None:
        """``vhost_vdpa_process_iotlb_msg``, in the kernel's order."""
        if not self._owner:
            raise IOTLBError(_EPERM, "vhost_vdpa_process_iotlb_msg: vhost_dev_check_owner"
                             ": caller is not the owner (no VHOST_SET_OWNER)")
        iotlb = self._as.get(asid)
        if iotlb is None and (t == _UPDATE or t == _BEGIN):
            # vhost_vdpa_find_alloc_as: the AS stays even if a later check fails
            iotlb = self._as[asid] = self._alloc_as(asid)
        if self._in_batch and self._batch_asid != asid:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_msg: batch id "
                             f"{self._batch_asid} asid {asid}")
        if iotlb is None:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_msg: no iotlb for asid "
                             f"{asid}")
        if t == _UPDATE:
            self._update(asid, iotlb, iova, size, uaddr, perm)
        elif t == _INVALIDATE:
            self._unmap(asid, iotlb, iova, size)
        elif t == _BEGIN:
            self._batch_asid = asid
            self._in_batch = True
        elif t == _END:
            set_map = getattr(self._backend, "set_map", None)
            if self._in_batch and set_map is not None:
                try:
                    set_map(asid, iotlb)
                except IOTLBError:
                    pass  # result ignored
            self._in_batch = False
        else:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_msg: unsupported "
                             f"message {msg_type_name(t)}")

    def _alloc_as(self, asid: int) -> IOTLB:
        """``vhost_vdpa_alloc_as``: NULL (→ EINVAL) for ``asid >= nas`` or, with the
        entry limit ("vhost_iotlb: bound map allocation in add_range"),
        ``max_iotlb_entries <= 0``; else an IOTLB limited to ``max_iotlb_entries``
        (flags 0: ``vhost_iotlb_add_range_ctx`` refuses the entry past it, ENOSPC)."""
        if asid >= self._backend.nas:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_msg: can't find and "
                             f"alloc asid {asid} (nas {self._backend.nas})")
        if not self._kernel.iotlb_entry_limit:
            return IOTLB()
        if self._max_iotlb_entries <= 0:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_msg: can't find and "
                             f"alloc asid {asid} (max_iotlb_entries "
                             f"{self._max_iotlb_entries})")
        return IOTLB(self._max_iotlb_entries)

    # ---------------------------------------------------------------- UPDATE
    def _update(self, asid, iotlb, iova, size, uaddr, perm) -> None:
        """``vhost_vdpa_process_iotlb_update``."""
        first, last_ok = self._range
        if iova < first:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_update: iova {iova:#x} "
                             f"< range.first {first:#x}")
        if size == 0:
            raise IOTLBError(_EINVAL, "vhost_vdpa_process_iotlb_update: size 0")
        if iova > U64_MAX - size + 1:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_update: iova {iova:#x} "
                             f"+ size {size:#x} wraps past 2**64")
        last = iova + size - 1
        if last > last_ok:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_process_iotlb_update: last {last:#x} "
                             f"> range.last {last_ok:#x}")
        hit = iotlb.first(iova, last)
        if hit is not None:
            raise IOTLBError(_EEXIST, f"vhost_vdpa_process_iotlb_update: [{iova:#x}, "
                             f"{last:#x}] overlaps {hit!r}")
        if self._backend.use_va:
            self._va_map(asid, iotlb, iova, size, uaddr, perm)
        else:
            self._pa_map(asid, iotlb, iova, size, uaddr, perm)

    def _map(self, asid, iotlb, iova, size, pa, perm, opaque) -> None:
        """``vhost_vdpa_map``: add the entry, program the device (``dma_map``, or
        ``set_map`` when not in a batch, or ``iommu_map``); on device failure delete
        the entry again and raise.  (Pin accounting is done by the caller.)"""
        last = iova + size - 1
        iotlb.map(iova, last, pa, perm, opaque)
        backend = self._backend
        try:
            dma_map = getattr(backend, "dma_map", None)
            if dma_map is not None:
                dma_map(asid, iova, size, pa, perm, opaque)
            else:
                set_map = getattr(backend, "set_map", None)
                if set_map is not None:
                    if not self._in_batch:
                        set_map(asid, iotlb)
                else:
                    backend.iommu_map(iova, size, pa, perm)
        except IOTLBError:
            iotlb.unmap(iova, last)  # vhost_iotlb_del_range
            raise

    def _pa_map(self, asid, iotlb, iova, size, uaddr, perm) -> None:
        """``vhost_vdpa_pa_map``: page expansion, RLIMIT_MEMLOCK check, one entry per
        physically contiguous run, the kernel's error path."""
        shift = self._shift
        npages = ((((size + (iova & self._offmask)) & U64_MAX) + self._offmask)
                  & U64_MAX) >> shift
        if npages == 0:
            raise IOTLBError(_EINVAL, f"vhost_vdpa_pa_map: size {size:#x} + page offset "
                             f"of iova {iova:#x} wraps to 0 pages")
        mem = self._mem
        if npages + mem.pinned_vm > mem.lock_limit:
            raise IOTLBError(_ENOMEM, f"vhost_vdpa_pa_map: {npages} pages + pinned_vm "
                             f"{mem.pinned_vm} > RLIMIT_MEMLOCK {mem.lock_limit} pages")
        runs, pinnable = mem.runs(uaddr >> shift, npages)
        writable = bool(perm & VHOST_ACCESS_WO)
        cur = iova & ~self._offmask
        if pinnable == npages and len(runs) == 1:
            # the common case: one run, nothing can leak
            _, pfn, cnt = runs[0]
            try:
                self._map(asid, iotlb, cur, cnt << shift, pfn << shift, perm, None)
            except IOTLBError:
                self._unmap(asid, iotlb, iova, size)
                raise
            mem.pin(self, pfn, cnt, writable)
            self._pinned += cnt
            return
        batch = self._gup_batch
        k = len(runs)
        if pinnable < npages:
            fault_batch = pinnable - pinnable % batch
            # runs whose end was seen, i.e. whose successor's first page was processed
            n_map = 0
            while n_map + 1 < k and runs[n_map + 1][0] < fault_batch:
                n_map += 1
        else:
            fault_batch = -1
            n_map = k
        err = None
        leak = None
        for r in range(n_map):
            idx, pfn, cnt = runs[r]
            try:
                self._map(asid, iotlb, cur, cnt << shift, pfn << shift, perm, None)
            except IOTLBError as e:
                err = e
                # nchunks == 0 iff a run was mapped earlier in the gup batch whose
                # processing hit this failure: the failing run's pages then stay pinned
                if r + 1 < k:
                    at = runs[r + 1][0]                 # boundary being processed
                else:
                    at = npages - 1                     # "Pin the rest chunk"
                if r > 0 and idx >= at - at % batch:
                    leak = (pfn, cnt)
                break
            mem.pin(self, pfn, cnt, writable)
            self._pinned += cnt
            cur += cnt << shift
        if err is None:
            if fault_batch < 0:
                return
            # pin_user_pages failed on the batch starting at page fault_batch
            f = pinnable
            if f == fault_batch:
                err = IOTLBError(_EFAULT, f"vhost_vdpa_pa_map: pin_user_pages: no page "
                                 f"at user address {(uaddr & ~self._offmask) + (f << shift):#x}")
            else:
                err = IOTLBError(_ENOMEM, f"vhost_vdpa_pa_map: pin_user_pages pinned "
                                 f"{f - fault_batch} of "
                                 f"{min(batch, npages - fault_batch)} pages")
            if fault_batch > 0:
                idx, pfn, _ = runs[n_map]
                if n_map > 0 and idx - idx % batch == fault_batch - batch:
                    leak = (pfn, fault_batch - idx)
        if leak is not None and not self._kernel.pa_map_unpins_failed_run:
            mem.leak(self, leak[0], leak[1], writable)
        self._unmap(asid, iotlb, iova, size)
        raise err

    def _va_map(self, asid, iotlb, iova, size, uaddr, perm) -> None:
        """``vhost_vdpa_va_map``: walk ``find_vma``; map each shared-file VMA piece
        (``addr`` = user address, ``ctx`` = :class:`MapFile` holding a file
        reference); skip other VMAs silently; no VMA → EINVAL; on failure unmap
        ``[iova, map_iova - iova)`` (u64 arithmetic, as the kernel)."""
        mem = self._mem
        map_iova = iova
        remaining = size
        u = uaddr
        err = None
        while remaining:
            vma = mem.find_vma(u)
            if vma is None:
                err = IOTLBError(_EINVAL, f"vhost_vdpa_va_map: no VMA at or above user "
                                 f"address {u:#x}")
                break
            map_size = min(remaining, vma.end - u)
            if vma.file is not None and vma.shared and not vma.io:
                map_file = mem.get_file(self, vma, u)
                try:
                    self._map(asid, iotlb, map_iova, map_size, u, perm, map_file)
                except IOTLBError as e:
                    mem.fput(self, map_file)
                    err = e
                    break
            remaining -= map_size
            u = (u + map_size) & U64_MAX
            map_iova += map_size
        if err is not None:
            self._unmap(asid, iotlb, iova, (map_iova - iova) & U64_MAX)
            raise err

    # ---------------------------------------------------------------- unmap
    def _unmap(self, asid, iotlb, iova, size) -> None:
        """``vhost_vdpa_unmap``: remove entries overlapping ``[iova, iova+size-1]``
        (u64 wrap kept), then ``set_map`` for set_map parents when not in a batch --
        even if nothing was removed; its result ignored."""
        self._iotlb_unmap(asid, iotlb, iova, (iova + size - 1) & U64_MAX)
        set_map = getattr(self._backend, "set_map", None)
        if set_map is not None and not self._in_batch:
            try:
                set_map(asid, iotlb)
            except IOTLBError:
                pass

    def _iotlb_unmap(self, asid, iotlb, start, last) -> None:
        """``vhost_vdpa_iotlb_unmap`` → ``pa_unmap``/``va_unmap``: per entry overlapping
        ``[start, last]`` (a wrapped ``start > last`` still matches entries spanning
        both bounds), ascending: unpin (dirtying writable runs) and uncharge, or fput;
        then ``vhost_vdpa_general_unmap``: ``dma_unmap`` / ``iommu_unmap`` / nothing."""
        if start == 0 and last == U64_MAX:
            hits = list(iotlb)
        else:
            hits = list(iotlb.overlapping(start, last))
            if not hits:
                return
        backend = self._backend
        mem = self._mem
        use_va = backend.use_va
        dma_map = getattr(backend, "dma_map", None)
        if dma_map is not None:
            dev_unmap = backend.dma_unmap
        elif getattr(backend, "set_map", None) is None:
            dev_unmap = backend.iommu_unmap
        else:
            dev_unmap = None
        shift = self._shift
        for m in hits:
            m_start, m_last, m_addr, m_perm, m_ctx = m
            m_size = m_last - m_start + 1
            if use_va:
                mem.fput(self, m_ctx)
            else:
                n = m_size >> shift
                mem.unpin(self, m_addr >> shift, n, bool(m_perm & VHOST_ACCESS_WO))
                self._pinned -= n
            if dev_unmap is not None:
                try:
                    if dma_map is not None:
                        dev_unmap(asid, m_start, m_size)
                    else:
                        dev_unmap(m_start, m_size)
                except IOTLBError:
                    pass  # void in the kernel
        if start == 0 and last == U64_MAX:
            iotlb.unmap()
        else:
            iotlb.unmap(start, last)

    # ================================================================ invariants
    def check_invariants(self) -> None:
        """Assert kernel-semantics §5.4 (raises AssertionError):

        * every PA entry of every AS is page aligned and its run is pinned exactly
          once by this device (the ledger of pinned runs equals the multiset of
          entries, so every page's pin count equals the number of entries covering
          it, across ASes); ``pinned_pages`` = Σ entry pages = what this device
          charged to ``pinned_vm``; ``pinned_vm`` balances in the memory model;
        * every VA entry holds exactly one file reference (``MapFile`` ctx);
        * entries of one AS never overlap; an open batch's AS exists;
        * closed: no AS, no pins, no file references, no owner, features 0.

        >>> class P:
        ...     nas = ngroups = nvqs = 1; use_va = False
        ...     def reset(self): pass
        >>> dev = VhostVdpa(P()); dev.check_invariants()
        """
        mem = self._mem
        mem.check()
        shift, offmask = self._shift, self._offmask
        want_pins: Counter = Counter()
        want_files: Counter = Counter()
        pages = 0
        nas = getattr(self._backend, "nas", None)
        for asid, iotlb in self._as.items():
            assert nas is None or asid < nas, f"AS {asid} exists but nas is {nas}"
            prev_last = -1
            for m in iotlb:
                start, last, addr, perm, ctx = m
                assert start > prev_last, f"AS {asid}: overlapping entries at {m!r}"
                prev_last = last
                if isinstance(ctx, MapFile):
                    want_files[ctx.file] += 1
                else:
                    assert ctx is None, f"AS {asid}: unexpected ctx {ctx!r}"
                    size = last - start + 1
                    assert not (start & offmask or size & offmask or addr & offmask), \
                        f"AS {asid}: PA entry not page aligned: {m!r}"
                    n = size >> shift
                    want_pins[(addr >> shift, n, bool(perm & VHOST_ACCESS_WO))] += 1
                    pages += n
        have_pins = mem.pins(self)
        assert have_pins == want_pins, (
            f"pinned runs != entries: extra {dict(have_pins - want_pins)}, "
            f"missing {dict(want_pins - have_pins)}")
        assert self._pinned == pages, f"pinned_pages {self._pinned} != entry pages {pages}"
        assert mem.accounted(self) == pages, (
            f"pinned_vm charge {mem.accounted(self)} != entry pages {pages}")
        have_files = mem.file_refs(self)
        assert have_files == want_files, (
            f"file references {dict(have_files)} != VA entries {dict(want_files)}")
        if self._in_batch:
            assert self._opened and self._batch_asid in self._as, \
                "in a batch whose AS does not exist"
        if not self._opened:
            assert not self._as, "closed device still has address spaces"
            assert not self._in_batch and not self._owner and self._features == 0, \
                "closed device keeps owner/features/batch state"
            assert not self._domain, "closed device still holds an IOMMU domain"
            assert pages == 0 and not want_files
