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
from iotlb import U64_MAX, IOTLBError, Perm
from iotlb.backend import Backend

__all__ = ["PlatformIommu", "iommu_prot"]


def iommu_prot(perm: int) -> int:
    """``perm_to_iommu_flags``: RO → READ, WO → WRITE, RW → READ|WRITE; anything else
    WARNs and maps with neither (returned here as ``Perm.NONE``).

    >>> [int(iommu_prot(p)) for p in (0, 1, 2, 3, 7)]
    [0, 1, 2, 3, 0]
    """
    return _IOMMU_PROT.get(perm, _PERM_NONE)


_IOMMU_PROT = {int(p): p for p in (Perm.RO, Perm.WO, Perm.RW)}  # a table: no enum call
_PERM_NONE = Perm.NONE


class PlatformIommu(Backend):
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

    def _check_range(self, op: str, iova: int, size: int, pa: int = 0) -> int:
        """The checks ``iommu_map``/``iommu_unmap`` make before touching the domain,
        with their diagnosis: no domain ENODEV; zero size, or iova/size/pa not
        multiples of the IOMMU page size, EINVAL (``__iommu_map``/``__iommu_unmap``:
        "unaligned"); ``iova + size - 1`` past 2**64 - 1 EINVAL.  Returns the last
        IOVA.  The ops test the same in one comparison chain and call this only when
        the chain fails (this then raises; it is the authority if the two disagree).

        >>> d = PlatformIommu(); d.iommu_domain_alloc(); hex(d._check_range("x", 0x1000, 0x1000))
        '0x1fff'
        """
        if self._domain is None:
            raise IOTLBError(errno.ENODEV, f"{op}: no IOMMU domain attached")
        if size == 0 or (iova | size | pa) & (self.page_size - 1):
            raise IOTLBError(errno.EINVAL,
                             f"{op}: iova {iova:#x}, size {size:#x}, pa {pa:#x} must be "
                             f"non-zero multiples of the IOMMU page size {self.page_size:#x}")
        last = iova + size - 1
        if last > U64_MAX:
            raise IOTLBError(errno.EINVAL, f"{op}: iova {iova:#x} + size {size:#x} overflows")
        return last

    #: The IOMMU driver's own refusal of a mapping's protection, called by
    #: :meth:`iommu_map` as ``map_prot_check(prot, perm)`` -- ``prot`` the IOMMU flags
    #: (:func:`iommu_prot`), ``perm`` vhost's, for the message -- after the range
    #: checks and before the overlap check (None: the generic domain refuses none;
    #: VT-d: :func:`~iotlb_backends.vp_vdpa.intel_map_prot_check`).
    map_prot_check = None

    def iommu_map(self, iova: int, size: int, pa: int, perm: int) -> None:
        """``iommu_map(domain, iova, pa, size, perm_to_iommu_flags(perm))``: unaligned
        or zero size is EINVAL, an already-mapped IOVA EEXIST, no domain ENODEV.

        >>> d = PlatformIommu(); d.iommu_domain_alloc(); d.iommu_map(0, 0x1000, 0, 1)
        >>> d.iommu_map(0, 0x1000, 0, 1)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EEXIST] iommu_map: [0x0, 0xfff] is already mapped
        """
        domain = self._domain
        if domain is None or not size or (iova | size | pa) & (self.page_size - 1) \
                or (last := iova + size - 1) > U64_MAX:
            last = self._check_range("iommu_map", iova, size, pa)       # raises
        prot = iommu_prot(perm)
        check = self.map_prot_check
        if check is not None:
            check(prot, perm)
        if domain.first(iova, last) is not None:
            raise IOTLBError(errno.EEXIST, f"iommu_map: [{iova:#x}, {last:#x}] is already mapped")
        domain.map(iova, last, pa, prot)

    def iommu_unmap(self, iova: int, size: int) -> int:
        """``iommu_unmap(domain, iova, size)``: drops what is mapped in the range and
        returns the bytes unmapped.  vhost-vdpa always unmaps whole chunks it mapped,
        so the model removes whole mappings.

        >>> d = PlatformIommu(); d.iommu_domain_alloc(); d.iommu_unmap(0, 0x1000)
        0
        """
        domain = self._domain
        if domain is None or not size or (iova | size) & (self.page_size - 1) \
                or (last := iova + size - 1) > U64_MAX:
            last = self._check_range("iommu_unmap", iova, size)          # raises
        m = domain.first(iova, last)
        if m is None:
            return 0                                 # nothing mapped there
        if m[1] >= last:
            # the domain's mappings never overlap (iommu_map refuses an overlap with
            # EEXIST), so the lowest one, reaching past ``last``, is the only one
            gone = m[1] - m[0] + 1                   # Map: (start, last, ...)
        else:
            gone = 0
            for m in domain.overlapping(iova, last):
                gone += m[1] - m[0] + 1
        domain.unmap(iova, last)
        return gone

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
