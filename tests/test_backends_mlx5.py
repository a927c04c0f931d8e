"""mlx5 (drivers/vdpa/mlx5/core/mr.c, net/mlx5_vnet.c): unit tests of every op and
quirk, plus the conformance kit with and without umem_uid_0."""
from __future__ import annotations

import errno

import pytest

import iotlb
from iotlb import U64_MAX, IOTLBError, Perm
from iotlb.backend import VDPA_RESET_F_CLEAN_MAP, is_identity
from iotlb.testing import BackendConformance
from iotlb_backends.mlx5 import CVQ_GROUP, DATAVQ_DESC_GROUP, DATAVQ_GROUP, Mlx5


def entries(tlb):
    return [tuple(m)[:4] for m in tlb]


def tlb_of(*ranges):
    t = iotlb.IOTLB()
    for start, last, addr in ranges:
        t.map(start, last, addr, Perm.RW)
    return t


A = (0x1000, 0x1fff, 0xA000)
B = (0x4000, 0x4fff, 0xB000)


@pytest.fixture(params=[True, False], ids=["umem_uid_0", "no_umem_uid_0"])
def umem(request):
    return request.param


# --------------------------------------------------------------------------- creation
def test_defaults():
    dev = Mlx5()
    assert (dev.nas, dev.ngroups, dev.nvqs, dev.use_va) == (2, 3, 3, False)
    assert dev.cvq_index == 2 and dev.umem_uid_0
    assert Mlx5(nvqs=4).cvq_index is None


def test_device_add(umem):
    """mlx5_vdpa_dev_add: a DMA MR for AS 0 (and CVQ identity) iff umem_uid_0."""
    dev = Mlx5(umem_uid_0=umem)
    assert dev.mr_kind(0) == ("dma" if umem else None)
    assert dev.mr_kind(1) is None
    assert is_identity(dev.device_iotlb(0)) == umem
    assert len(dev.device_iotlb(1)) == 0
    assert is_identity(dev.cvq_iotlb) == umem
    assert [dev.group_asid(g) for g in range(3)] == [0, 0, 0]


def test_optional_op_variants():
    assert callable(Mlx5().get_vq_desc_group) and callable(Mlx5().resume)
    bare = Mlx5(desc_group=False, resume=False)
    assert getattr(bare, "get_vq_desc_group", None) is None
    assert getattr(bare, "resume", None) is None
    assert isinstance(bare, Mlx5) and callable(bare.suspend)
    assert getattr(Mlx5(), "dma_map", None) is None
    with pytest.raises(ValueError, match="ngroups >= 3"):
        Mlx5(ngroups=2)
    assert Mlx5(ngroups=2, desc_group=False).ngroups == 2


# --------------------------------------------------------------------------- set_map
def test_set_map_builds_user_mr_from_whole_iotlb(umem):
    dev = Mlx5(umem_uid_0=umem)
    src = tlb_of(A, B)
    dev.set_map(0, src)
    assert dev.mr_kind(0) == "user"
    assert entries(dev.device_iotlb(0)) == [(*A, 3), (*B, 3)]
    assert entries(dev.cvq_iotlb) == [(*A, 3), (*B, 3)]     # CVQ group on AS 0
    src.unmap()
    assert len(dev.device_iotlb(0)) == 2 and len(dev.cvq_iotlb) == 2
    dev.set_map(0, tlb_of(B))                                 # a new MR, whole table
    assert entries(dev.device_iotlb(0)) == [(*B, 3)]


def test_set_map_empty_means_no_mr_not_dma_mr(umem):
    dev = Mlx5(umem_uid_0=umem)
    dev.set_map(0, tlb_of(A))
    dev.set_map(0, iotlb.IOTLB())
    assert dev.mr_kind(0) is None and len(dev.device_iotlb(0)) == 0
    assert len(dev.cvq_iotlb) == 0                            # dup of an empty IOTLB


def test_set_map_cvq_only_when_cvq_bound_to_asid():
    dev = Mlx5()
    dev.set_map(1, tlb_of(B))
    assert is_identity(dev.cvq_iotlb)                         # CVQ still on AS 0
    dev.set_group_asid(CVQ_GROUP, 1)
    assert entries(dev.cvq_iotlb) == [(*B, 3)]
    dev.set_map(1, tlb_of(A))
    assert entries(dev.cvq_iotlb) == [(*A, 3)]
    dev.set_map(0, tlb_of(B))
    assert entries(dev.cvq_iotlb) == [(*A, 3)]


def test_set_map_copy_drops_the_opaque():
    """dup_iotlb (core/mr.c, 6.1 to 7.2) copies with vhost_iotlb_add_range: the
    entry's opaque (vhost-vdpa's map file in VA mode) is not copied."""
    dev = Mlx5()
    src = iotlb.IOTLB()
    src.map(0x1000, 0x1fff, 0x2000, Perm.RO, ctx="c")
    dev.set_map(0, src)
    (m,) = dev.device_iotlb(0)
    assert (m.start, m.last, m.addr, m.perm, m.ctx) == (0x1000, 0x1fff, 0x2000, 1, None)


def test_set_map_bad_asid():
    dev = Mlx5()
    with pytest.raises(IOTLBError) as info:
        dev.set_map(2, tlb_of(A))
    assert info.value.errno == errno.EINVAL
    assert dev.mr_kind(0) == "dma"


# --------------------------------------------------------------------------- resets
def test_compat_reset_clean_map(umem):
    """mlx5_vdpa_compat_reset(CLEAN_MAP): every MR dropped, CVQ iotlb pruned,
    group2asid = 0, then (umem_uid_0) the DMA MR for AS 0 and CVQ identity."""
    dev = Mlx5(umem_uid_0=umem)
    dev.set_map(0, tlb_of(A))
    dev.set_map(1, tlb_of(B))
    dev.set_group_asid(CVQ_GROUP, 1)
    dev.set_group_asid(DATAVQ_GROUP, 1)
    dev.set_status(0xF)
    dev.suspend()
    dev.compat_reset(VDPA_RESET_F_CLEAN_MAP)
    assert dev.mr_kind(0) == ("dma" if umem else None)
    assert dev.mr_kind(1) is None and len(dev.device_iotlb(1)) == 0
    assert is_identity(dev.cvq_iotlb) == umem
    assert umem or len(dev.cvq_iotlb) == 0
    assert [dev.group_asid(g) for g in range(3)] == [0, 0, 0]
    assert dev.get_status() == 0 and not dev.suspended


@pytest.mark.parametrize("how", ["reset", "compat_reset(0)"])
def test_plain_reset_keeps_mrs_and_cvq(umem, how):
    dev = Mlx5(umem_uid_0=umem)
    dev.set_map(1, tlb_of(B))
    dev.set_group_asid(CVQ_GROUP, 1)
    dev.reset() if how == "reset" else dev.compat_reset(0)
    assert dev.mr_kind(1) == "user" and entries(dev.cvq_iotlb) == [(*B, 3)]
    assert dev.mr_kind(0) == ("dma" if umem else None)
    assert [dev.group_asid(g) for g in range(3)] == [0, 0, 0]


def test_reset_map_asid0(umem):
    """mlx5_vdpa_reset_mr(0): drop the MR; umem_uid_0 → a new DMA MR (+ CVQ identity
    since the CVQ is on AS 0); otherwise update_cvq_iotlb(NULL, 0) → CVQ identity."""
    dev = Mlx5(umem_uid_0=umem)
    dev.set_map(0, tlb_of(A))
    dev.reset_map(0)
    assert dev.mr_kind(0) == ("dma" if umem else None)
    assert is_identity(dev.cvq_iotlb)


def test_reset_map_asid1_cvq_identity_only_if_bound():
    dev = Mlx5()
    dev.set_map(1, tlb_of(B))
    dev.reset_map(1)
    assert dev.mr_kind(1) is None and is_identity(dev.cvq_iotlb)   # CVQ on AS 0: untouched
    dev.set_map(0, tlb_of(A))
    dev.set_map(1, tlb_of(B))
    dev.reset_map(1)
    assert entries(dev.cvq_iotlb) == [(*A, 3)]                     # still AS 0's copy
    dev.set_group_asid(CVQ_GROUP, 1)                               # mr[1] None: no copy
    assert entries(dev.cvq_iotlb) == [(*A, 3)]
    dev.reset_map(1)
    assert is_identity(dev.cvq_iotlb)


def test_reset_map_bad_asid():
    with pytest.raises(IOTLBError) as info:
        Mlx5().reset_map(2)
    assert info.value.errno == errno.EINVAL


# --------------------------------------------------------------------------- groups
def test_vq_groups():
    dev = Mlx5()
    assert [dev.get_vq_group(vq) for vq in range(3)] == [DATAVQ_GROUP, DATAVQ_GROUP, CVQ_GROUP]
    assert [dev.get_vq_desc_group(vq) for vq in range(3)] == [DATAVQ_DESC_GROUP] * 2 + [CVQ_GROUP]
    five = Mlx5(nvqs=5)
    assert [five.get_vq_group(vq) for vq in range(5)] == [0, 0, 0, 0, 1]
    assert [Mlx5(nvqs=4).get_vq_group(vq) for vq in range(4)] == [0, 0, 0, 0]
    with pytest.raises(IOTLBError):
        dev.get_vq_group(3)


def test_set_group_asid_copies_mr_into_cvq():
    dev = Mlx5()
    dev.set_map(1, tlb_of(B))
    dev.set_group_asid(DATAVQ_GROUP, 1)                        # not the CVQ group
    assert is_identity(dev.cvq_iotlb) and dev.group_asid(DATAVQ_GROUP) == 1
    dev.set_group_asid(CVQ_GROUP, 1)
    assert entries(dev.cvq_iotlb) == [(*B, 3)]
    dev.set_group_asid(CVQ_GROUP, 0)                           # DMA MR → identity
    assert is_identity(dev.cvq_iotlb)
    dev.set_group_asid(DATAVQ_DESC_GROUP, 1)
    assert dev.group_asid(DATAVQ_DESC_GROUP) == 1
    assert dev.mr_kind(0) == "dma" and dev.mr_kind(1) == "user"


def test_set_group_asid_bounds_are_vhost_vdpas():
    """mlx5_set_group_asid checks no bound (since "vhost: move vdpa group bound check
    to vhost_vdpa"); vhost-vdpa refuses first, so a direct call outside them is a
    ValueError and changes nothing, and through the device it is EINVAL, no op."""
    from iotlb.vdpa import VhostVdpa

    dev = Mlx5()
    for group, asid in ((3, 0), (0, 2)):
        with pytest.raises(ValueError):
            dev.set_group_asid(group, asid)
    assert [dev.group_asid(g) for g in range(3)] == [0, 0, 0]
    vd = VhostVdpa(Mlx5())
    vd.open()
    vd.set_owner()
    with pytest.raises(IOTLBError) as info:
        vd.set_group_asid(0, 2)          # asid >= nas
    assert info.value.errno == errno.EINVAL


# --------------------------------------------------------------------------- misc
def test_suspend_resume_features_snapshots():
    dev = Mlx5()
    dev.suspend()
    assert dev.suspended
    dev.resume()
    assert not dev.suspended
    assert dev.get_backend_features() == 0
    snap = dev.cvq_iotlb
    snap.unmap()
    assert is_identity(dev.cvq_iotlb)
    snap = dev.device_iotlb(0)
    snap.unmap()
    assert is_identity(dev.device_iotlb(0))
    with pytest.raises(ValueError):
        dev.device_iotlb(2)
    with pytest.raises(ValueError):
        dev.mr_kind(2)
    assert dev.get_iova_range() == (0, U64_MAX)


# --------------------------------------------------------------------------- conformance kit
class TestMlx5Conformance(BackendConformance):
    def make_backend(self):
        return Mlx5()


class TestMlx5NoUmemUid0Conformance(BackendConformance):
    def make_backend(self):
        return Mlx5(umem_uid_0=False, desc_group=False, resume=False)
