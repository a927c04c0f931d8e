"""vdpa_sim (drivers/vdpa/vdpa_sim/vdpa_sim.c): unit tests of every op and quirk,
plus the conformance kit on both op tables and both address modes."""
from __future__ import annotations

import errno

import pytest

import iotlb
from iotlb import U64_MAX, IOTLBError, Map, Perm
from iotlb.backend import VDPA_RESET_F_CLEAN_MAP, is_identity
from iotlb.testing import BackendConformance
from iotlb_backends.vdpa_sim import VdpaSim, VdpaSimDmaMap, VdpaSimSetMap

H = 1 << 63


def entries(tlb):
    return [tuple(m)[:4] for m in tlb]


def tlb_of(*ranges):
    t = iotlb.IOTLB()
    for start, last, addr in ranges:
        t.map(start, last, addr, Perm.RW)
    return t


@pytest.fixture(params=["set_map", "dma_map"])
def sim(request):
    return VdpaSim(batch_mapping=request.param == "set_map")


def program(sim, asid, *ranges):
    """Put ``ranges`` into the device through whichever mapping op it has."""
    if isinstance(sim, VdpaSimSetMap):
        sim.set_map(asid, tlb_of(*ranges))
    else:
        for start, last, addr in ranges:
            sim.dma_map(asid, start, last - start + 1, addr, Perm.RW, None)


# --------------------------------------------------------------------------- creation
def test_defaults(sim):
    assert (sim.nas, sim.ngroups, sim.nvqs, sim.use_va) == (2, 2, 3, True)
    assert sim.get_iova_range() == (0, U64_MAX)
    assert isinstance(sim, VdpaSim)


def test_creation_identity_pt_and_vrings(sim):
    """vdpasim_create: every AS identity [0,H-1]->0, [H,~0]->H; pt; vrings on AS 0."""
    for asid in range(sim.nas):
        assert entries(sim.device_iotlb(asid)) == [(0, H - 1, 0, 3), (H, U64_MAX, H, 3)]
        assert sim.iommu_pt(asid)
    assert [sim.vring_asid(vq) for vq in range(3)] == [0, 0, 0]


def test_two_op_tables():
    s, d = VdpaSim(), VdpaSim(batch_mapping=False)
    assert type(s) is VdpaSimSetMap and type(d) is VdpaSimDmaMap
    assert s.batch_mapping and not d.batch_mapping
    assert getattr(s, "dma_map", None) is None and getattr(s, "dma_unmap", None) is None
    assert getattr(d, "set_map", None) is None
    for b in (s, d):
        for op in ("compat_reset", "reset_map", "set_group_asid", "suspend", "resume"):
            assert callable(getattr(b, op))
        assert getattr(b, "get_vq_desc_group", None) is None
    assert type(VdpaSimDmaMap()) is VdpaSimDmaMap
    with pytest.raises(ValueError, match="contradicts"):
        VdpaSimDmaMap(batch_mapping=True)
    with pytest.raises(ValueError, match="contradicts"):
        VdpaSimSetMap(batch_mapping=False)


def test_subclass_gets_the_table_mixed_in():
    class Failing(VdpaSim):
        def dma_map(self, asid, iova, size, pa, perm, opaque):
            raise IOTLBError(errno.ENOMEM, "injected")

    d = Failing(batch_mapping=False)
    assert isinstance(d, Failing) and isinstance(d, VdpaSimDmaMap)
    assert type(d) is type(Failing(batch_mapping=False))     # cached, stable class
    with pytest.raises(IOTLBError) as info:
        d.dma_map(0, 0, 0x1000, 0, 3, None)
    assert info.value.errno == errno.ENOMEM
    assert callable(d.dma_unmap) and getattr(d, "set_map", None) is None
    s = Failing()
    assert isinstance(s, VdpaSimSetMap) and callable(s.set_map)


# --------------------------------------------------------------------------- set_map
def test_set_map_replaces_whole_as():
    sim = VdpaSim()
    sim.set_map(1, tlb_of((0x1000, 0x1fff, 0xA000), (0x3000, 0x3fff, 0xB000)))
    assert entries(sim.device_iotlb(1)) == [(0x1000, 0x1fff, 0xA000, 3),
                                            (0x3000, 0x3fff, 0xB000, 3)]
    assert not sim.iommu_pt(1) and sim.iommu_pt(0)
    sim.set_map(1, tlb_of((0x8000, 0x8fff, 0xC000)))
    assert entries(sim.device_iotlb(1)) == [(0x8000, 0x8fff, 0xC000, 3)]
    assert is_identity(sim.device_iotlb(0))


def test_set_map_empty_leaves_as_empty():
    """An empty source IOTLB empties the AS; it is not identity."""
    sim = VdpaSim()
    sim.set_map(0, iotlb.IOTLB())
    assert len(sim.device_iotlb(0)) == 0 and not sim.iommu_pt(0)


def test_set_map_copies_entries_not_reference_nor_ctx():
    sim = VdpaSim()
    src = iotlb.IOTLB()
    src.map(0x1000, 0x1fff, 0x9000, Perm.RO, ctx="file")
    sim.set_map(0, src)
    src.unmap()
    (m,) = list(sim.device_iotlb(0))
    assert tuple(m) == (0x1000, 0x1fff, 0x9000, 1, None)   # add_range: no opaque


def test_set_map_copy_error_resets_to_empty():
    """vdpasim_set_map: an add_range error wipes the AS again and is returned."""

    class Exploding:
        def __iter__(self):
            yield Map(0x1000, 0x1fff, 0x5000)
            raise IOTLBError(errno.ENOMEM, "add_range: -ENOMEM")

    sim = VdpaSim()
    with pytest.raises(IOTLBError) as info:
        sim.set_map(0, Exploding())
    assert info.value.errno == errno.ENOMEM
    assert len(sim.device_iotlb(0)) == 0 and not sim.iommu_pt(0)


def test_set_map_bad_asid():
    sim = VdpaSim()
    with pytest.raises(IOTLBError) as info:
        sim.set_map(2, tlb_of((0, 0xfff, 0)))
    assert info.value.errno == errno.EINVAL
    assert all(sim.iommu_pt(a) for a in range(2))


# --------------------------------------------------------------------------- dma_map
def test_dma_map_first_map_drops_identity():
    sim = VdpaSim(batch_mapping=False)
    sim.dma_map(0, 0x1000, 0x2000, 0x40000, Perm.RO, "opaque")
    (m,) = list(sim.device_iotlb(0))
    assert tuple(m) == (0x1000, 0x2fff, 0x40000, 1, "opaque")
    assert not sim.iommu_pt(0) and sim.iommu_pt(1)
    sim.dma_map(0, 0x2000, 0x1000, 0x50000, Perm.RW, None)     # no overlap check
    assert len(sim.device_iotlb(0)) == 2


def test_dma_unmap_whole_entries_and_first_unmap_after_clean_reset():
    sim = VdpaSim(batch_mapping=False)
    sim.dma_map(0, 0x1000, 0x2000, 0x40000, Perm.RW, None)
    sim.dma_map(0, 0x5000, 0x1000, 0x50000, Perm.RW, None)
    sim.dma_unmap(0, 0x2000, 0x1)                # overlaps the first entry: all of it
    assert entries(sim.device_iotlb(0)) == [(0x5000, 0x5fff, 0x50000, 3)]
    sim.compat_reset(VDPA_RESET_F_CLEAN_MAP)
    assert is_identity(sim.device_iotlb(0)) and sim.iommu_pt(0)
    sim.dma_unmap(0, 0x5000, 0x1000)             # pt: the AS is emptied, not identity
    assert len(sim.device_iotlb(0)) == 0 and not sim.iommu_pt(0)


def test_dma_unmap_wrapping_range_still_removes_spanning_entries():
    sim = VdpaSim(batch_mapping=False)
    sim.dma_map(0, 0x1000, 0x1000, 0, Perm.RW, None)
    sim.dma_unmap(0, 0x1800, U64_MAX)            # iova + size - 1 wraps to 0x17fe
    assert len(sim.device_iotlb(0)) == 0


@pytest.mark.parametrize("op, args", [("dma_map", (0, 0x1000, 0, 3, None)),
                                      ("dma_unmap", (0, 0x1000))])
def test_dma_ops_bad_asid(op, args):
    sim = VdpaSim(batch_mapping=False)
    with pytest.raises(IOTLBError) as info:
        getattr(sim, op)(2, *args)
    assert info.value.errno == errno.EINVAL
    assert sim.iommu_pt(0) and sim.iommu_pt(1)


# --------------------------------------------------------------------------- resets
def test_compat_reset_clean_map_restores_identity_everywhere(sim):
    program(sim, 0, (0x1000, 0x1fff, 0xA000))
    program(sim, 1, (0x2000, 0x2fff, 0xB000))
    sim.set_group_asid(1, 1)
    sim.set_status(0xF)
    gen = sim.generation
    sim.compat_reset(VDPA_RESET_F_CLEAN_MAP)
    for asid in range(2):
        assert is_identity(sim.device_iotlb(asid)) and sim.iommu_pt(asid)
    assert [sim.vring_asid(vq) for vq in range(3)] == [0, 0, 0]
    assert sim.get_status() == 0 and sim.generation == gen + 1


@pytest.mark.parametrize("how", ["reset", "compat_reset(0)"])
def test_plain_reset_keeps_maps_rebinds_vrings(sim, how):
    program(sim, 1, (0x2000, 0x2fff, 0xB000))
    sim.set_group_asid(1, 1)
    sim.suspend()
    sim.reset() if how == "reset" else sim.compat_reset(0)
    assert entries(sim.device_iotlb(1)) == [(0x2000, 0x2fff, 0xB000, 3)]
    assert not sim.iommu_pt(1)
    assert sim.group_asid(1) == 0 and sim.vring_asid(2) == 0
    # vdpasim_do_reset: "vdpa_sim: reset must not run" (stable 6.1.83; every profile)
    assert not sim.running


def test_reset_map(sim):
    before = entries(sim.device_iotlb(0))
    sim.reset_map(0)                              # pt: no-op
    assert entries(sim.device_iotlb(0)) == before and sim.iommu_pt(0)
    program(sim, 0, (0x1000, 0x1fff, 0xA000))
    sim.reset_map(0)
    assert is_identity(sim.device_iotlb(0)) and sim.iommu_pt(0)
    with pytest.raises(IOTLBError) as info:
        sim.reset_map(2)
    assert info.value.errno == errno.EINVAL


# --------------------------------------------------------------------------- groups
def test_vq_groups():
    sim = VdpaSim()
    assert [sim.get_vq_group(vq) for vq in range(3)] == [0, 0, 1]
    with pytest.raises(IOTLBError):
        sim.get_vq_group(3)


def test_set_group_asid_rebinds_vrings_only(sim):
    program(sim, 1, (0x2000, 0x2fff, 0xB000))
    spaces = [entries(sim.device_iotlb(a)) for a in range(2)]
    sim.set_group_asid(1, 1)
    assert sim.group_asid(1) == 1 and sim.group_asid(0) == 0
    assert [sim.vring_asid(vq) for vq in range(3)] == [0, 0, 1]
    sim.set_group_asid(0, 1)
    assert [sim.vring_asid(vq) for vq in range(3)] == [1, 1, 1]
    assert [entries(sim.device_iotlb(a)) for a in range(2)] == spaces


def test_set_group_asid_bounds_are_vhost_vdpas():
    """vdpasim_set_group_asid checks no bound (6.1.192, 6.12.118, 7.2.13: "vhost: move
    vdpa group bound check to vhost_vdpa"); vhost-vdpa refuses first, so a direct
    call outside them is a ValueError and rebinds nothing."""
    sim = VdpaSim()
    for group, asid in ((2, 1), (3, 0), (0, 2)):
        with pytest.raises(ValueError):
            sim.set_group_asid(group, asid)
    assert [sim.vring_asid(vq) for vq in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError):
        sim.group_asid(2)


# --------------------------------------------------------------------------- misc
def test_suspend_resume_features_and_observation():
    sim = VdpaSim()
    sim.suspend()
    assert not sim.running
    sim.resume()
    assert sim.running
    assert sim.get_backend_features() == 1 << 6
    snap = sim.device_iotlb(0)
    snap.unmap()
    assert is_identity(sim.device_iotlb(0))
    with pytest.raises(ValueError):
        sim.device_iotlb(2)
    assert VdpaSim(use_va=False).use_va is False
    assert "VdpaSimSetMap" in repr(sim)


def test_custom_sizes():
    sim = VdpaSim(nas=4, ngroups=3, nvqs=5, iova_range=(0x1000, 0xFFFFF))
    assert sim.nas == 4 and len(sim.device_iotlb(3)) == 2
    sim.set_group_asid(1, 3)
    assert sim.vring_asid(2) == 3 and sim.group_asid(2) == 0   # group 2 has no vq


# --------------------------------------------------------------------------- conformance kit
class TestVdpaSimSetMapConformance(BackendConformance):
    def make_backend(self):
        return VdpaSim()


class TestVdpaSimDmaMapConformance(BackendConformance):
    def make_backend(self):
        return VdpaSim(batch_mapping=False)


class TestVdpaSimPaModeConformance(BackendConformance):
    def make_backend(self):
        return VdpaSim(use_va=False, batch_mapping=False)


def test_own_max_iotlb_entries_is_enospc_and_set_map_wipes_the_as():
    """vdpa_sim's own IOTLBs have its max_iotlb_entries module parameter as limit,
    without RETIRE ("vhost_iotlb: bound map allocation in add_range"): set_map past it
    fails ENOSPC and vdpasim_set_map's error path leaves the AS empty (pt cleared);
    dma_map past it fails ENOSPC and keeps what was mapped."""
    src = iotlb.IOTLB()
    for i in range(4):
        src.map(i * 0x1000, i * 0x1000 + 0xfff, 0x10000 + i * 0x1000)
    sim = VdpaSim(max_iotlb_entries=3)
    with pytest.raises(IOTLBError) as info:
        sim.set_map(0, src)
    assert info.value.errno == errno.ENOSPC
    assert len(sim.device_iotlb(0)) == 0 and not sim.iommu_pt(0)
    sim.set_map(1, _first(src, 3))
    assert len(sim.device_iotlb(1)) == 3
    dma = VdpaSim(batch_mapping=False, max_iotlb_entries=3)
    for i in range(3):
        dma.dma_map(0, i * 0x1000, 0x1000, 0x10000, 3, None)
    with pytest.raises(IOTLBError) as info:
        dma.dma_map(0, 0x3000, 0x1000, 0x10000, 3, None)
    assert info.value.errno == errno.ENOSPC and len(dma.device_iotlb(0)) == 3
    with pytest.raises(ValueError):
        VdpaSim(max_iotlb_entries=1)        # vdpasim_create refuses: no device


def _first(src, n):
    out = iotlb.IOTLB()
    for m in list(src)[:n]:
        out.map(m.start, m.last, m.addr, m.perm)
    return out
