"""``platform_iommu``: a parent that translates through the platform IOMMU
(ifcvf, vp_vdpa, pds, octeon_ep: no ``set_map``, no ``dma_map``).

vhost-vdpa owns an ``iommu_domain`` for such a parent: it allocates and attaches it at
open (``vhost_vdpa_alloc_domain``), programs it with ``iommu_map``/``iommu_unmap`` for
every chunk it maps or unmaps, and frees it at release (``vhost_vdpa_free_domain``),
after ``remove_as`` has unmapped everything.  The parent has no ``compat_reset``,
``reset_map`` or ``set_group_asid``, and its ``reset`` never touches the domain, so
mappings always survive SET_STATUS(0).  ``nas = ngroups = 1`` (``vhost_vdpa_probe``).

>>> dev = PlatformIommu()
>>> dev.iommu_domain_alloc()
>>> dev.iommu_map(0x1000, 0x2000, 0x80000, 3)
>>> [(hex(m.start), hex(m.last), hex(m.addr)) for m in dev.device_iotlb(0)]
[('0x1000', '0x2fff', '0x80000')]
>>> dev.reset(); len(dev.device_iotlb(0))     # reset keeps the domain's mappings
1
>>> dev.iommu_unmap(0x1000, 0x2000), dev.iommu_domain_free(), dev.domain_allocated
(8192, None, False)
"""
from __future__ import annotations

import errno

import iotlb
from iotlb import U64_MAX, IOTLBError
from iotlb.backend import Backend, IommuCore, iommu_prot

__all__ = ["PlatformIommu", "iommu_prot"]


class PlatformIommu(IommuCore, Backend):
    """A platform-IOMMU parent.

    Options: ``nas=1``, ``ngroups=1`` (anything else is refused with EOPNOTSUPP, as
    ``vhost_vdpa_probe`` refuses to bind such a device), ``nvqs=3``,
    ``iova_range=(0, U64_MAX)`` (the domain aperture), ``page_size=4096`` (the IOMMU's
    smallest page: ``iommu_map``/``iommu_unmap`` need aligned iova, pa and size),
    ``kernel`` (:class:`~iotlb.backend.Backend`; the platform parents behave the same
    on every profile: no ``compat_reset``/``reset_map`` on any kernel, a ``reset``
    that never touches the domain -- so on 6.1 too the mappings survive
    SET_STATUS(0)).
    ``use_va`` is always False.

    The domain's ops (:class:`~iotlb.backend.IommuCore`): ``iommu_map`` refuses an
    unaligned or zero size, or a range past 2**64 - 1 (EINVAL), an IOVA already
    mapped (EEXIST) and a missing domain (ENODEV); ``iommu_unmap`` returns the bytes
    it unmapped:

    >>> d = PlatformIommu(); d.iommu_domain_alloc(); d.iommu_map(0, 0x1000, 0, 1)
    >>> d.iommu_map(0, 0x1000, 0, 1)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [EEXIST] iommu_map: [0x0, 0xfff] is already mapped
    >>> d.iommu_map(0x800, 0x1000, 0, 1)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [EINVAL] iommu_map: iova 0x800, size 0x1000, pa 0x0 must be non-zero multiples of the IOMMU page size 0x1000
    >>> d.iommu_unmap(0, 0x2000), d.iommu_unmap(0, 0x1000), hex(d._check_range("x", 0x1000, 0x1000))
    (4096, 0, '0x1fff')
    >>> PlatformIommu().iommu_unmap(0, 0x1000)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [ENODEV] iommu_unmap: no IOMMU domain attached

    >>> PlatformIommu(nas=2)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [...] platform-IOMMU parents need nas = ngroups = 1 (vhost_vdpa_probe), got nas=2, ngroups=1
    """

    def __init__(self, *, nas: int = 1, ngroups: int = 1, nvqs: int = 3,
                 iova_range=(0, U64_MAX), page_size: int = 4096, kernel=None) -> None:
        super().__init__(nas=nas, ngroups=ngroups, nvqs=nvqs, iova_range=iova_range,
                         use_va=False, kernel=kernel)
        if self.nas != 1 or self.ngroups != 1:
            raise IOTLBError(errno.EOPNOTSUPP,
                             f"platform-IOMMU parents need nas = ngroups = 1 "
                             f"(vhost_vdpa_probe), got nas={self.nas}, ngroups={self.ngroups}")
        if type(page_size) is not int or page_size < 1 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size!r}")
        self.page_size = page_size
        self._domain = None
        #: How many domains were allocated / freed over the device's life.
        self.domain_allocs = 0
        self.domain_frees = 0

    # ------------------------------------------------------------------ domain
    @property
    def domain_allocated(self) -> bool:
        """True while an IOMMU domain is allocated and attached.

        >>> PlatformIommu().domain_allocated
        False
        """
        return self._domain is not None

    def iommu_domain_alloc(self) -> None:
        """``iommu_domain_alloc`` + ``iommu_attach_device`` (vhost_vdpa_alloc_domain,
        at open).  A second domain while one is attached is EBUSY.

        >>> d = PlatformIommu(); d.iommu_domain_alloc(); d.domain_allocated
        True
        """
        if self._domain is not None:
            raise IOTLBError(errno.EBUSY, "iommu_domain_alloc: a domain is already attached")
        self._domain = iotlb.IOTLB()
        self.domain_allocs += 1

    def iommu_domain_free(self) -> None:
        """``iommu_detach_device`` + ``iommu_domain_free`` (vhost_vdpa_free_domain,
        at release); whatever is still mapped goes with the domain.  No domain: no-op.

        >>> d = PlatformIommu(); d.iommu_domain_alloc(); d.iommu_domain_free()
        >>> d.domain_allocated, d.domain_frees
        (False, 1)
        """
        if self._domain is None:
            return
        self._domain = None
        self.domain_frees += 1

    # iommu_map(iova, size, pa, perm), iommu_unmap(iova, size), _check_range and
    # map_prot_check are IommuCore's (iotlb.backend): the IOMMU core's functions
    # (drivers/iommu/iommu.c) on self._domain, not the parent's; compiled with the
    # engine.  Their examples are in the class docstring.

    # ------------------------------------------------------------------ ops
    def reset(self) -> None:
        """The parent's ``.reset``: status 0; the IOMMU domain is not the parent's and
        is left alone.

        >>> d = PlatformIommu(); d.set_status(7); d.reset(); d.get_status()
        0
        """
        self._status = 0

    def device_iotlb(self, asid: int) -> iotlb.IOTLB:
        """The domain's mappings (empty when no domain is attached: the device then
        reaches no user memory at all).

        >>> len(PlatformIommu().device_iotlb(0))
        0
        """
        self._check_asid(asid)
        return iotlb.IOTLB() if self._domain is None else self._domain.copy()
