"""platform_iommu (a parent without set_map/dma_map: vhost-vdpa programs an IOMMU
domain): unit tests and the conformance kit."""
from __future__ import annotations

import errno

import pytest

from iotlb import U64_MAX, IOTLBError, Perm
from iotlb.testing import BackendConformance
from iotlb_backends.platform_iommu import PlatformIommu, iommu_prot


def entries(tlb):
    return [tuple(m)[:4] for m in tlb]


@pytest.fixture
def dev():
    d = PlatformIommu()
    d.iommu_domain_alloc()
    return d


def test_defaults_and_op_table():
    d = PlatformIommu()
    assert (d.nas, d.ngroups, d.nvqs, d.use_va) == (1, 1, 3, False)
    for op in ("set_map", "dma_map", "dma_unmap", "compat_reset", "reset_map",
               "set_group_asid", "get_vq_desc_group", "suspend", "resume"):
        assert getattr(d, op, None) is None, op
    assert [d.get_vq_group(vq) for vq in range(3)] == [0, 0, 0]
    assert d.group_asid(0) == 0 and d.get_backend_features() == 0


@pytest.mark.parametrize("opts", [{"nas": 2}, {"ngroups": 2}])
def test_probe_refuses_more_than_one_as_or_group(opts):
    """vhost_vdpa_probe: a platform parent must have nas = ngroups = 1."""
    with pytest.raises(IOTLBError) as info:
        PlatformIommu(**opts)
    assert info.value.errno == errno.EOPNOTSUPP


def test_no_domain_no_translation():
    d = PlatformIommu()
    assert not d.domain_allocated and len(d.device_iotlb(0)) == 0
    with pytest.raises(IOTLBError) as info:
        d.iommu_map(0, 0x1000, 0, Perm.RW)
    assert info.value.errno == errno.ENODEV
    d.iommu_domain_free()                                  # no domain: no-op
    assert d.domain_frees == 0


def test_domain_lifecycle(dev):
    assert dev.domain_allocated and dev.domain_allocs == 1
    with pytest.raises(IOTLBError) as info:
        dev.iommu_domain_alloc()
    assert info.value.errno == errno.EBUSY
    dev.iommu_map(0x1000, 0x1000, 0x9000, Perm.RW)
    dev.iommu_domain_free()
    assert not dev.domain_allocated and len(dev.device_iotlb(0)) == 0
    dev.iommu_domain_alloc()
    assert len(dev.device_iotlb(0)) == 0 and dev.domain_allocs == 2


def test_map_unmap(dev):
    dev.iommu_map(0x1000, 0x2000, 0x80000, Perm.RO)
    dev.iommu_map(0x4000, 0x1000, 0x90000, Perm.RW)
    assert entries(dev.device_iotlb(0)) == [(0x1000, 0x2fff, 0x80000, 1),
                                            (0x4000, 0x4fff, 0x90000, 3)]
    with pytest.raises(IOTLBError) as info:
        dev.iommu_map(0x2000, 0x1000, 0, Perm.RW)
    assert info.value.errno == errno.EEXIST
    assert dev.iommu_unmap(0x1000, 0x2000) == 0x2000
    assert entries(dev.device_iotlb(0)) == [(0x4000, 0x4fff, 0x90000, 3)]
    assert dev.iommu_unmap(0x1000, 0x1000) == 0


@pytest.mark.parametrize("args", [(0x1001, 0x1000, 0), (0x1000, 0x800, 0),
                                  (0x1000, 0x1000, 0x10), (0x1000, 0, 0)])
def test_map_alignment(dev, args):
    with pytest.raises(IOTLBError) as info:
        dev.iommu_map(*args, Perm.RW)
    assert info.value.errno == errno.EINVAL
    assert len(dev.device_iotlb(0)) == 0


def test_map_overflow(dev):
    with pytest.raises(IOTLBError) as info:
        dev.iommu_map(U64_MAX - 0xfff, 0x2000, 0, Perm.RW)
    assert info.value.errno == errno.EINVAL


def test_perm_to_iommu_flags(dev):
    """Unknown vhost perms WARN and map with neither READ nor WRITE."""
    assert [int(iommu_prot(p)) for p in (0, 1, 2, 3, 4, 0xff)] == [0, 1, 2, 3, 0, 0]
    dev.iommu_map(0, 0x1000, 0, 7)
    assert next(iter(dev.device_iotlb(0))).perm == Perm.NONE


def test_reset_keeps_domain(dev):
    dev.iommu_map(0x1000, 0x1000, 0x9000, Perm.RW)
    dev.set_status(0xF)
    dev.reset()
    assert dev.get_status() == 0
    assert entries(dev.device_iotlb(0)) == [(0x1000, 0x1fff, 0x9000, 3)]


def test_observation(dev):
    dev.iommu_map(0x1000, 0x1000, 0x9000, Perm.RW)
    snap = dev.device_iotlb(0)
    snap.unmap()
    assert len(dev.device_iotlb(0)) == 1
    with pytest.raises(ValueError):
        dev.device_iotlb(1)
    with pytest.raises(ValueError):
        dev.group_asid(1)
    with pytest.raises(ValueError):
        PlatformIommu(page_size=3000)


class TestPlatformIommuConformance(BackendConformance):
    def make_backend(self):
        return PlatformIommu()


class TestPlatformIommuNarrowRangeConformance(BackendConformance):
    def make_backend(self):
        return PlatformIommu(iova_range=(0x4000_0000, 0x4fff_ffff))
