"""The kernel profile "6.1" (Debian bookworm's 6.1.192), one test per rule that
differs from the newer profiles, each naming the kernel function it copies (read in
linux-source-6.1 6.1.192-3, and checked on the real kernel by
``tests/kernel/conformance.py --kernel 6.1``).

Message tests run on the compiled write() and on the reference path (``fast``); the
whole file runs on both engines (the suite runs twice, IOTLB_PUREPYTHON=1).
"""
from __future__ import annotations

import errno

import pytest

import iotlb
from iotlb import IOTLBError
from iotlb.backend import is_identity
from iotlb.kernels import kernel_profile
from iotlb.vdpa import VIRTIO_CONFIG_S_DRIVER_OK, VhostVdpa
from iotlb.wire import VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_UPDATE, BackendFeature as F, encode
from iotlb_backends.mlx5 import Mlx5
from iotlb_backends.platform_iommu import PlatformIommu
from iotlb_backends.vdpa_sim import VdpaSim

PAGE = 4096
EFAULT, EINVAL, EPERM, EOPNOTSUPP = errno.EFAULT, errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP


class Parent:
    """A parent with every optional op the newer kernels use, recording calls."""

    nas, ngroups, nvqs, use_va = 2, 2, 3, False

    def __init__(self):
        self.calls = []
        self.status = 0

    def _call(self, *c):
        self.calls.append(c)

    def names(self):
        return [c[0] for c in self.calls]

    def reset(self):
        self._call("reset")
        self.status = 0

    def compat_reset(self, flags):
        self._call("compat_reset", flags)
        self.status = 0

    def reset_map(self, asid):
        self._call("reset_map", asid)

    def get_status(self):
        return self.status

    def set_status(self, status):
        self.status = status

    def dma_map(self, asid, iova, size, pa, perm, opaque):
        self._call("dma_map", asid, iova, size)

    def dma_unmap(self, asid, iova, size):
        self._call("dma_unmap", asid, iova, size)

    def suspend(self):
        self._call("suspend")

    def resume(self):
        self._call("resume")

    def get_vq_desc_group(self, vq):
        return 0

    def get_backend_features(self):
        self._call("get_backend_features")
        return int(F.ENABLE_AFTER_DRIVER_OK)


@pytest.fixture(params=[True, False], ids=["fast", "reference"])
def fast(request):
    return request.param


def dev_on(parent, kernel="6.1", *, fast=True, owner=True):
    dev = VhostVdpa(parent, kernel=kernel)
    dev._fast = fast
    dev.open()
    if owner:
        dev.set_owner()
    return dev


def err(fn, *a):
    with pytest.raises(IOTLBError) as ei:
        fn(*a)
    return ei.value.errno


# ============================================================== the profile itself
def test_profile_6_1_is_a_real_kernel_older_than_6_12():
    p = kernel_profile("6.1")
    assert iotlb.KERNELS[0] == "6.1" and p.release == (6, 1, 192)
    assert not p.hypothetical and str(p) == "6.1" and p.base == "6.1"
    assert iotlb.kernel_profile_for_release("6.1.0-57-amd64") == "6.1"   # the lab's guest
    assert iotlb.kernel_profile_for_release("6.1.0-41-amd64") == "6.1"


# ================================================== GET/SET_BACKEND_FEATURES
@pytest.mark.parametrize("backend,offered", [
    (lambda: VdpaSim(kernel="6.1"), 0x1E), (lambda: VdpaSim(kernel="7.2"), 0x17E),
    (lambda: Mlx5(kernel="6.1"), 0x1E), (lambda: PlatformIommu(kernel="6.1"), 0x0E),
    (lambda: Parent(), 0x1E)])
def test_get_backend_features_6_1(backend, offered):
    """vhost_vdpa_unlocked_ioctl, VHOST_GET_BACKEND_FEATURES (6.1):
    VHOST_VDPA_BACKEND_FEATURES (MSG_V2|BATCH|ASID) | SUSPEND if
    vhost_vdpa_can_suspend -- no RESUME, DESC_ASID, IOTLB_PERSIST, and the parent's
    get_backend_features is never called (there is no such op in 6.1)."""
    be = backend()
    kernel = getattr(be, "kernel", kernel_profile("6.1"))
    dev = dev_on(be, kernel=kernel.name)
    assert dev.get_backend_features() == offered
    assert "get_backend_features" not in getattr(be, "names", lambda: [])()


@pytest.mark.parametrize("bit", [F.RESUME, F.ENABLE_AFTER_DRIVER_OK, F.DESC_ASID,
                                 F.IOTLB_PERSIST])
def test_newer_bits_are_unknown_on_6_1(bit):
    """vhost_vdpa_unlocked_ioctl, VHOST_SET_BACKEND_FEATURES (6.1): features &
    ~(VHOST_VDPA_BACKEND_FEATURES | SUSPEND) → -EOPNOTSUPP, even with the op that
    would offer the bit on 7.2 (Parent has resume, get_vq_desc_group, a persistent
    map ...); the acked set is kept."""
    new = dev_on(Parent(), kernel="7.2")
    new.set_backend_features(int(bit) | int(F.IOTLB_ASID))      # accepted on 7.2
    dev = dev_on(Parent())
    dev.set_backend_features(int(F.IOTLB_ASID | F.SUSPEND))
    assert err(dev.set_backend_features, int(bit) | int(F.IOTLB_ASID)) == EOPNOTSUPP
    assert dev.backend_features == int(F.IOTLB_ASID | F.SUSPEND)


def test_unknown_bit_before_desc_asid_einval():
    """DESC_ASID without IOTLB_ASID: EINVAL on 7.2 (vhost_vdpa_unlocked_ioctl's
    DESC_ASID check), EOPNOTSUPP on 6.1 (an unknown bit, checked first)."""
    assert err(dev_on(Parent(), kernel="7.2").set_backend_features, int(F.DESC_ASID)) == EINVAL
    assert err(dev_on(Parent()).set_backend_features, int(F.DESC_ASID)) == EOPNOTSUPP


# =================================================================== RESUME
def test_resume_is_no_ioctl_on_6_1():
    """VHOST_VDPA_RESUME is not handled by vhost_vdpa_unlocked_ioctl on 6.1: the
    default branch calls vhost_dev_ioctl (vhost_dev_check_owner: EPERM without the
    owner; then -ENOIOCTLCMD) and vhost_vdpa_vring_ioctl, whose get_user(idx, argp)
    of the NULL argument is -EFAULT.  The parent's resume is never called."""
    parent = Parent()
    dev = dev_on(parent, owner=False)
    assert err(dev.resume) == EPERM
    dev.set_owner()
    dev.set_status(VIRTIO_CONFIG_S_DRIVER_OK)
    dev.suspend()
    assert err(dev.resume) == EFAULT
    assert "resume" not in parent.names() and parent.names()[-1] == "suspend"


# =================================================================== SUSPEND
def test_suspend_before_driver_ok_calls_the_parent_on_6_1():
    """vhost_vdpa_suspend (6.1): no DRIVER_OK test ("vdpa: skip suspend/resume ops if
    not DRIVER_OK" is v6.8): the parent's suspend runs with status 0; no op →
    EOPNOTSUPP."""
    parent = Parent()
    dev = dev_on(parent)
    dev.suspend()
    assert parent.names() == ["reset", "suspend"]
    sim = VdpaSim(kernel="6.1")
    dev_on(sim).suspend()
    assert not sim.running
    bare = dev_on(PlatformIommu(kernel="6.1"))
    assert err(bare.suspend) == EOPNOTSUPP


# ======================================================= SET_STATUS(0) / release
def test_set_status_0_and_release_call_the_plain_reset():
    """vhost_vdpa_set_status / vhost_vdpa_reset (6.1) call vdpa_reset(vdpa), which
    has no flags and calls ops->reset: never compat_reset, whatever is acked."""
    parent = Parent()
    dev = dev_on(parent)
    dev.update(0x1000, PAGE, 0x1000)
    dev.set_status(0)
    dev.release()
    assert "compat_reset" not in parent.names()
    assert parent.names().count("reset") == 3          # open, SET_STATUS(0), release


def test_release_calls_no_reset_map():
    """vhost_vdpa_remove_as (6.1): unlink, vhost_vdpa_iotlb_unmap(0, ~0), kfree --
    no reset_map (v6.7, "vhost-vdpa: reset vendor specific mapping to initial state
    in .release")."""
    parent = Parent()
    dev = dev_on(parent)
    dev.set_backend_features(int(F.IOTLB_ASID))
    dev.update(0x1000, PAGE, 0x1000)
    dev.update(0x1000, PAGE, 0x1000, asid=1)
    dev.release()
    assert "reset_map" not in parent.names()
    assert parent.names()[-3:] == ["reset", "dma_unmap", "dma_unmap"]
    new = dev_on(Parent(), kernel="7.2")
    new.update(0x1000, PAGE, 0x1000)
    new.release()
    assert new.backend.names()[-1] == "reset_map"


# ============================================================ the parents on 6.1
@pytest.mark.parametrize("batch_mapping", [True, False])
def test_vdpa_sim_6_1_reset_clears_its_maps(batch_mapping, fast):
    """vdpasim_do_reset (6.1): vhost_iotlb_reset of every AS (no CLEAN_MAP flag, no
    identity re-map); vdpasim_create leaves every AS empty (no passthrough);
    vdpa_alloc_device(..., use_va false): vhost-vdpa pins (PA path)."""
    sim = VdpaSim(batch_mapping=batch_mapping)          # unbound: bound by the device
    dev = dev_on(sim, fast=fast)
    assert sim.kernel.name == "6.1" and not sim.use_va
    assert len(sim.device_iotlb(0)) == 0 and len(sim.device_iotlb(1)) == 0
    dev.write(encode(VHOST_IOTLB_UPDATE, 0x1000, 2 * PAGE, 0x7000, 3))
    assert [m.start for m in sim.device_iotlb(0)] == [0x1000] and dev.pinned_pages == 2
    dev.set_status(0)
    assert len(sim.device_iotlb(0)) == 0                 # the device forgot
    assert len(dev.vhost_iotlb(0)) == 1 and dev.pinned_pages == 2  # vhost did not
    dev.write(encode(VHOST_IOTLB_INVALIDATE, 0x1000, 2 * PAGE))
    dev.release()
    assert len(sim.device_iotlb(0)) == 0 and dev.pinned_pages == 0
    for op in ("reset_map", "compat_reset", "resume", "get_backend_features"):
        assert getattr(sim, op, None) is None, op
    assert sim.suspend is not None and getattr(sim, "set_group_asid") is not None


def test_vdpa_sim_6_1_has_no_use_va():
    """vdpa_sim on 6.1 has no use_va module parameter ("vdpa_sim: add support for
    user VA" is v6.3): asking for it is an error, not a silent PA model."""
    with pytest.raises(ValueError, match="no use_va parameter"):
        VdpaSim(use_va=True, kernel="6.1")
    sim = VdpaSim(use_va=True)
    with pytest.raises(ValueError, match="no use_va parameter"):
        VhostVdpa(sim, kernel="6.1")
    assert not sim.kernel_bound and sim.use_va and sim.kernel.name == "7.2"  # unchanged
    assert getattr(sim, "reset_map", None) is not None
    assert not VdpaSim(use_va=False, kernel="6.1").use_va


def test_mlx5_6_1_reset_clears_its_maps():
    """mlx5_vdpa_reset (6.1): mlx5_vdpa_destroy_mr, group2asid back to 0, then the
    DMA MR again with umem_uid_0 (mlx5_vdpa_create_mr(mvdev, NULL, 0)); no
    reset_map/compat_reset/resume/get_vq_desc_group, two vq groups."""
    mlx = Mlx5(kernel="6.1")
    assert mlx.ngroups == 2
    for op in ("reset_map", "compat_reset", "resume", "get_vq_desc_group"):
        assert getattr(mlx, op, None) is None, op
    dev = dev_on(mlx)
    dev.update(0x1000, PAGE, 0x1000)
    assert mlx.mr_kind(0) == "user"
    dev.set_status(0)
    assert mlx.mr_kind(0) == "dma" and is_identity(mlx.cvq_iotlb)
    with pytest.raises(ValueError):
        Mlx5(kernel="6.1", desc_group=True)


def test_platform_parent_6_1_keeps_its_maps(fast):
    """A platform-IOMMU parent's reset never touches the IOMMU domain vhost-vdpa
    owns: the mappings survive SET_STATUS(0) on 6.1 as on every kernel."""
    plat = PlatformIommu()
    dev = dev_on(plat, fast=fast)
    dev.write(encode(VHOST_IOTLB_UPDATE, 0x1000, PAGE, 0x1000, 3))
    dev.set_status(0)
    assert [m.start for m in plat.device_iotlb(0)] == [0x1000]
    assert plat.kernel.name == "6.1"


# =============================================== rules 6.1.192 shares (backports)
def test_6_1_has_size0_invalidate_and_entry_limit(fast):
    """Backported to 6.1: vhost_chr_write_iter refuses only UPDATE with size 0
    (6.1.61, "vhost: Allow null msg.size on VHOST_IOTLB_INVALIDATE"), and
    vhost_iotlb_add_range_ctx's -ENOSPC past max_iotlb_entries (6.1.191,
    "vhost_iotlb: bound map allocation in add_range")."""
    p = kernel_profile("6.1")
    assert p.invalidate_size_zero and p.iotlb_entry_limit and p.group_asid_bound_check
    dev = VhostVdpa(Parent(), kernel="6.1", max_iotlb_entries=2)
    dev._fast = fast
    dev.open()
    dev.set_owner()
    dev.write(encode(VHOST_IOTLB_UPDATE, 0x1000, PAGE, 0x1000, 3))
    dev.write(encode(VHOST_IOTLB_UPDATE, 0x3000, PAGE, 0x3000, 3))
    with pytest.raises(IOTLBError) as ei:
        dev.write(encode(VHOST_IOTLB_UPDATE, 0x5000, PAGE, 0x5000, 3))
    assert ei.value.errno == EFAULT and ei.value.__cause__.errno == errno.ENOSPC
    assert dev.write(encode(VHOST_IOTLB_INVALIDATE, 0, 0)) == 72
    assert len(dev.vhost_iotlb(0)) == 0 and dev.pinned_pages == 0


# ================================================= how the profile reaches the parent
def test_the_profile_reaches_the_backend():
    """VhostVdpa(backend, kernel=K) binds an unbound backend to K; a backend built
    for a kernel gives the device that kernel; a conflict is an error."""
    sim = VdpaSim()
    assert not sim.kernel_bound and sim.kernel.name == "7.2" and sim.use_va
    dev = VhostVdpa(sim, kernel="6.1")
    assert sim.kernel is dev.kernel and not sim.use_va
    assert VhostVdpa(VdpaSim(kernel="6.1")).kernel.name == "6.1"
    with pytest.raises(ValueError, match="kernel 6.1; it cannot serve kernel 7.2"):
        VhostVdpa(sim, kernel="7.2")
    with pytest.raises(ValueError, match="kernel 6.12; it cannot serve kernel 6.1"):
        VhostVdpa(Mlx5(kernel="6.12"), kernel="6.1")
    assert VhostVdpa(VdpaSim(kernel="7.2"), kernel="7.2+no-release-reset-map").kernel.policy


def test_mlx5_6_1_has_one_data_mr():
    """mlx5 on 6.1 keeps one data-vq MR (mvdev->mr): mlx5_vdpa_set_map →
    mlx5_vdpa_handle_set_map / mlx5_vdpa_change_map touch it only for the AS the
    data group is bound to (_mlx5_vdpa_create_dvq_mr / _destroy_dvq_mr);
    mlx5_set_group_asid only records group2asid; _mlx5_vdpa_create_cvq_mr appends
    to the CVQ iotlb (dup_iotlb) without a prune while no data MR exists."""
    t = iotlb.IOTLB()
    t.map(0x1000, 0x1fff, 0x9000)
    mlx = Mlx5(kernel="6.1")
    mlx.set_group_asid(1, 1)                 # CVQ on AS 1: no copy of anything
    assert is_identity(mlx.cvq_iotlb)
    mlx.set_map(1, t)                        # the data MR (AS 0) stays the DMA MR
    assert mlx.mr_kind(0) == "dma" and mlx.mr_kind(1) is None
    assert [m.addr for m in mlx.cvq_iotlb] == [0x9000]       # pruned, then copied
    mlx.set_group_asid(0, 1)                 # the data group moves to AS 1 ...
    assert mlx.mr_kind(1) == "dma" and mlx.mr_kind(0) is None   # ... and sees the MR
    bare = Mlx5(kernel="6.1", umem_uid_0=False)
    bare.set_group_asid(0, 1)                # data on AS 1, CVQ on AS 0: no data MR
    bare.set_map(0, t)
    bare.set_map(0, t)
    assert len(bare.cvq_iotlb) == 2 and bare.mr_kind(1) is None
    new = Mlx5(kernel="7.2")                 # per-AS MRs: set_map(1) makes MR 1
    new.set_map(1, t)
    assert new.mr_kind(1) == "user" and new.mr_kind(0) == "dma"
