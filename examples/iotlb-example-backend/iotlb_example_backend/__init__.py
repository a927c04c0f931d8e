"""An example iotlb backend: a ``dma_map`` vDPA parent whose default translation
state is *no mapping at all*.

It models a parent that is programmed chunk by chunk (``dma_map``/``dma_unmap``),
keeps its mappings across a plain ``reset``, clears them on a CLEAN_MAP
``compat_reset`` (what vhost-vdpa asks for when IOTLB_PERSIST is not acked), and
has ``reset_map`` -- so vhost-vdpa offers IOTLB_PERSIST for it.

>>> import iotlb
>>> dev = ExampleDma(nas=2)          # what iotlb.load_backend("example_dma", nas=2) does
>>> dev.dma_map(1, 0x1000, 0x1000, 0x80000, iotlb.Perm.RW, None)
>>> dev.device_iotlb(1).translate(0x1010, 4)
[(524304, 4)]
>>> dev.compat_reset(1)              # VDPA_RESET_F_CLEAN_MAP
>>> len(dev.device_iotlb(1))
0
"""
import iotlb
from iotlb import U64_MAX
from iotlb.backend import VDPA_RESET_F_CLEAN_MAP, Backend

__all__ = ["ExampleDma"]


class ExampleDma(Backend):
    """A dma_map parent with ``nas`` address spaces, all empty by default.

    >>> ExampleDma().nas, ExampleDma().use_va
    (1, False)
    """

    def __init__(self, *, nas=1, ngroups=1, nvqs=2, iova_range=(0, U64_MAX)):
        super().__init__(nas=nas, ngroups=ngroups, nvqs=nvqs, iova_range=iova_range,
                         use_va=False)
        # The device state: one IOTLB per address space.
        self._as = [iotlb.IOTLB() for _ in range(self.nas)]

    # Mapping style: dma_map + dma_unmap (no set_map).
    def dma_map(self, asid, iova, size, pa, perm, opaque):
        self._check_op_asid("dma_map", asid)
        self._as[asid].map(iova, iova + size - 1, pa, perm, opaque)

    def dma_unmap(self, asid, iova, size):
        self._check_op_asid("dma_unmap", asid)
        self._as[asid].unmap(iova, iova + size - 1)

    # Resets.
    def reset(self):
        self.set_status(0)               # mappings are kept

    def compat_reset(self, flags):
        self.reset()
        if flags & VDPA_RESET_F_CLEAN_MAP:
            for tlb in self._as:
                tlb.unmap()

    def reset_map(self, asid):
        self._check_op_asid("reset_map", asid)
        self._as[asid].unmap()           # back to the default: no mapping

    # Observation.
    def device_iotlb(self, asid):
        self._check_asid(asid)
        return self._as[asid].copy()
