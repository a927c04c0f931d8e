"""The platform-IOMMU parents whose answers differ from the generic
:class:`~iotlb_backends.platform_iommu.PlatformIommu`:

* ``vp_vdpa`` -- :class:`VpVdpa`, drivers/vdpa/virtio_pci/vp_vdpa.c behind Intel
  VT-d (what the project runs under QEMU's ``-device intel-iommu``).  ifcvf,
  octeon_ep, pds and alibaba eni share its shape (no ``get_vq_group``, no
  ``suspend``/``resume``, ``nas = ngroups = 1``).
* ``snet`` -- :class:`Snet`, drivers/vdpa/solidrun/snet_main.c: the same, plus
  ``suspend`` and ``resume`` (so vhost-vdpa offers SUSPEND and RESUME).

What changes an answer, from the 6.12.118 and 7.2.13 sources:

* neither parent has ``get_vq_group`` (``vp_vdpa_ops``, ``snet_config_ops``), so
  ``VHOST_VDPA_GET_VRING_GROUP`` is EOPNOTSUPP;
* vhost-vdpa maps with ``iommu_map(domain, iova, pa, size,
  perm_to_iommu_flags(perm))``; a perm that is not exactly RO, WO or RW gets neither
  IOMMU_READ nor IOMMU_WRITE, and the Intel driver refuses such a mapping with
  EINVAL: 6.12 ``__domain_mapping`` ("``(prot & (DMA_PTE_READ|DMA_PTE_WRITE)) == 0``
  → -EINVAL"), 7.2 the generic page table's ``map_range`` ("``WARN_ON(!(prot &
  (IOMMU_READ | IOMMU_WRITE)))`` → -EINVAL", after "iommu/vt-d: Use the generic
  iommu page table").  The UPDATE's write() then fails with EFAULT
  (``vhost_chr_write_iter``), the handler with EINVAL.  Seen on 6.12 under QEMU
  (perm 0, 4, 0xff) before this model existed.
* the usable IOVA range is the IOMMU domain's aperture (``vhost_vdpa_set_iova_range``
  with ``geometry.force_aperture``): option ``iova_range``, by default
  ``[0, 2**48 - 1]`` -- the 4-level VT-d page table QEMU's intel-iommu offers
  (``aw-bits=48``); pass ``iova_range=(0, 2**39 - 1)`` for ``aw-bits=39``.

>>> from iotlb.vdpa import VhostVdpa
>>> dev = VhostVdpa(VpVdpa()); dev.open(); dev.set_owner()
>>> dev.get_vring_group(0)
Traceback (most recent call last):
...
iotlb.errors.IOTLBError: [EOPNOTSUPP] VHOST_VDPA_GET_VRING_GROUP: the parent has no get_vq_group op
>>> dev.release()
"""
from __future__ import annotations

import errno

from iotlb import IOTLBError, Perm
from iotlb_backends.platform_iommu import PlatformIommu, iommu_prot

__all__ = ["VpVdpa", "Snet", "VTD_APERTURE_48", "intel_map_prot_check"]

#: ``[0, 2**48 - 1]``: the aperture of a VT-d domain with a 4-level (48-bit) page
#: table, what QEMU's ``intel-iommu`` (``aw-bits=48``) gives the guest.
VTD_APERTURE_48 = (0, (1 << 48) - 1)


def intel_map_prot_check(prot: int, perm: int) -> None:
    """The Intel IOMMU's refusal of a mapping with neither READ nor WRITE in its IOMMU
    flags ``prot`` (:func:`iommu_prot` of vhost's ``perm``, which only the message
    names): 6.12.118 ``__domain_mapping`` (drivers/iommu/intel/iommu.c, ``(prot &
    (DMA_PTE_READ|DMA_PTE_WRITE)) == 0``), 7.2.13 ``map_range``
    (drivers/iommu/generic_pt/iommu_pt.h, ``!(prot & (IOMMU_READ | IOMMU_WRITE))``,
    "iommu/vt-d: Use the generic iommu page table").

    >>> intel_map_prot_check(iommu_prot(3), 3), intel_map_prot_check(4 | 1, 3)
    (None, None)
    >>> intel_map_prot_check(4, 3)             # IOMMU_CACHE alone: neither
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [EINVAL] iommu_map: perm 0x3 gives neither IOMMU_READ nor IOMMU_WRITE (intel-iommu refuses it)
    >>> intel_map_prot_check(iommu_prot(4), 4)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [EINVAL] iommu_map: perm 0x4 gives neither IOMMU_READ nor IOMMU_WRITE (intel-iommu refuses it)
    """
    # iommu_prot answers members of Perm: RW, RO and WO pass by identity (IntFlag's
    # ``&`` runs Python code, ~0.7 us); anything else is tested as the kernel does
    if prot is not _RW and prot is not _RO and prot is not _WO \
            and not int(prot) & _READ_WRITE:
        raise IOTLBError(errno.EINVAL, f"iommu_map: perm {perm:#x} gives neither "
                         "IOMMU_READ nor IOMMU_WRITE (intel-iommu refuses it)")


_RW, _RO, _WO = Perm.RW, Perm.RO, Perm.WO
_READ_WRITE = int(Perm.RW)              # IOMMU_READ | IOMMU_WRITE


class VpVdpa(PlatformIommu):
    """vp_vdpa behind Intel VT-d.  Options as :class:`PlatformIommu` (``nvqs=3``,
    ``page_size=4096``), ``iova_range`` defaults to :data:`VTD_APERTURE_48`.

    >>> d = VpVdpa(); d.iommu_domain_alloc()
    >>> d.iommu_map(0x1000, 0x1000, 0x9000, 0)
    Traceback (most recent call last):
    ...
    iotlb.errors.IOTLBError: [EINVAL] iommu_map: perm 0x0 gives neither IOMMU_READ nor IOMMU_WRITE (intel-iommu refuses it)
    >>> len(d.device_iotlb(0)), d.get_iova_range() == VTD_APERTURE_48
    (0, True)
    """

    # vp_vdpa_ops / snet_config_ops have no .get_vq_group: a NULL op pointer.
    get_vq_group = None

    def __init__(self, *, nas: int = 1, ngroups: int = 1, nvqs: int = 3,
                 iova_range=VTD_APERTURE_48, page_size: int = 4096) -> None:
        super().__init__(nas=nas, ngroups=ngroups, nvqs=nvqs, iova_range=iova_range,
                         page_size=page_size)

    #: ``iommu_map`` on a VT-d domain: :func:`intel_map_prot_check` once the generic
    #: range checks of :meth:`PlatformIommu.iommu_map` pass, before its overlap
    #: check; nothing is mapped on failure.
    map_prot_check = staticmethod(intel_map_prot_check)


class Snet(VpVdpa):
    """SolidRun's snet: a platform-IOMMU parent with ``suspend``/``resume``
    (``snet_suspend``/``snet_resume`` ask the device's firmware; the mappings, in
    vhost-vdpa's IOMMU domain, are untouched).  The IOMMU is whatever the host has;
    the model assumes VT-d, as for :class:`VpVdpa`.

    >>> s = Snet(); s.suspend(); s.suspended
    True
    >>> s.resume(); s.suspended
    False
    """

    def __init__(self, **options) -> None:
        super().__init__(**options)
        #: True between ``suspend()`` and ``resume()`` (the device's firmware state)
        self.suspended = False

    def suspend(self) -> None:
        """``snet_suspend`` → ``snet_suspend_dev``: the firmware stops the queues."""
        self.suspended = True

    def resume(self) -> None:
        """``snet_resume`` → ``snet_resume_dev``: the firmware restarts the queues."""
        self.suspended = False

    def reset(self) -> None:
        """``snet_reset``: status 0, the device's queues reset (a suspended device is
        running again after a reset); the IOMMU domain is not the parent's.

        >>> s = Snet(); s.suspend(); s.reset(); s.suspended
        False
        """
        super().reset()
        self.suspended = False
