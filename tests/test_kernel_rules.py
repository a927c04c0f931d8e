"""The rules real kernels disagree with the old model on, one test (or more) per rule,
each naming its kernel function, version and upstream commit subject.

Every device test runs on the compiled write() and on the reference path (``fast``),
and the whole file runs on both engines (the suite runs twice, IOTLB_PUREPYTHON=1).
"""
from __future__ import annotations

import errno

import pytest

import iotlb
from iotlb import IOTLBError
from iotlb.kernels import DEFAULT_KERNEL, KernelProfile, kernel_profile
from iotlb.vdpa import MAX_IOTLB_ENTRIES, VIRTIO_CONFIG_S_DRIVER_OK, VhostVdpa
from iotlb.wire import VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_UPDATE, encode


PAGE = 4096
EFAULT, EINVAL, ENOSPC, EBUSY = errno.EFAULT, errno.EINVAL, errno.ENOSPC, errno.EBUSY


class Parent:
    """A parent that records its op calls (like tests/test_vdpa.py's)."""

    def __init__(self, nas=2, ngroups=2, nvqs=3, use_va=False):
        self.nas, self.ngroups, self.nvqs, self.use_va = nas, ngroups, nvqs, use_va
        self.calls = []
        self.status = 0
        self.dev = {}

    def _call(self, name, *args):
        self.calls.append((name,) + args)

    def names(self):
        return [c[0] for c in self.calls]

    def reset(self):
        self._call("reset")
        self.status = 0

    def get_status(self):
        return self.status

    def set_status(self, status):
        self._call("set_status", status)
        self.status = status


class DmaParent(Parent):
    def dma_map(self, asid, iova, size, pa, perm, opaque):
        self._call("dma_map", asid, iova, size, pa, perm)

    def dma_unmap(self, asid, iova, size):
        self._call("dma_unmap", asid, iova, size)


class SetMapParent(Parent):
    def set_map(self, asid, tlb):
        self._call("set_map", asid, len(tlb))


class SimLike(SetMapParent):
    def compat_reset(self, flags):
        self._call("compat_reset", flags)
        self.status = 0

    def reset_map(self, asid):
        self._call("reset_map", asid)

    def set_group_asid(self, group, asid):
        self._call("set_group_asid", group, asid)


def entries(dev, asid=0):
    t = dev.vhost_iotlb(asid)
    return None if t is None else [tuple(m[:4]) for m in t]


def err(fn, *a, **kw):
    with pytest.raises(IOTLBError) as ei:
        fn(*a, **kw)
    return ei.value


@pytest.fixture(params=[True, False], ids=["fast", "reference"])
def fast(request):
    return request.param


def dev_on(parent=None, *, fast=True, **kw):
    dev = VhostVdpa(parent if parent is not None else DmaParent(), **kw)
    dev._fast = fast
    dev.open()
    dev.set_owner()
    return dev


def U(iova, size, uaddr=None, asid=0):
    return encode(VHOST_IOTLB_UPDATE, iova, size, iova if uaddr is None else uaddr, 3,
                  asid=asid)


def I(iova, size, asid=0):
    return encode(VHOST_IOTLB_INVALIDATE, iova, size, asid=asid)


def wfail(dev, data):
    """write() must fail with EFAULT; returns the handler's errno."""
    with pytest.raises(IOTLBError) as ei:
        dev.write(data)
    assert ei.value.errno == EFAULT
    return ei.value.__cause__.errno


# ====================================================================== profiles
def test_profiles_api():
    """iotlb.KERNELS lists the profiles oldest first; the newest is the default;
    an unknown name is a ValueError naming the known ones."""
    assert iotlb.KERNELS == ("6.1", "6.12", "7.2") and DEFAULT_KERNEL == "7.2"
    assert VhostVdpa(DmaParent()).kernel is kernel_profile("7.2")
    assert VhostVdpa(DmaParent(), kernel="6.12").kernel.release == (6, 12, 118)
    with pytest.raises(ValueError, match="'6.1', '6.12', '7.2'"):
        VhostVdpa(DmaParent(), kernel="6.6")
    p = kernel_profile("6.12")
    assert isinstance(p, KernelProfile) and kernel_profile(p) is p
    with pytest.raises(Exception):
        p.invalidate_size_zero = False       # frozen


@pytest.mark.parametrize("release,name", [
    ("6.12.118+deb13-amd64", "6.12"), ("6.12.57+deb13-cloud-amd64", "6.12"),
    ("6.13.0", "6.12"), ("7.1.9", "6.12"), ("7.2.13-amd64", "7.2"), ("7.2", "7.2"),
    ("7.3.0-rc7", "7.2"), ("10.0.1", "7.2"), ("6.1.0-57-amd64", "6.1"),
    ("6.1.0-41-amd64", "6.1"), ("6.11.2", "6.1")])
def test_kernel_profile_for_release(release, name):
    """uname -r → the newest profile whose major.minor is at or below it."""
    assert iotlb.kernel_profile_for_release(release) == name


@pytest.mark.parametrize("release", ["6.0.9", "5.10.0", "", "linux", None])
def test_kernel_profile_for_release_refuses(release):
    with pytest.raises(ValueError):
        iotlb.kernel_profile_for_release(release)


def test_max_iotlb_entries_option_is_a_c_int():
    with pytest.raises(TypeError):
        VhostVdpa(DmaParent(), max_iotlb_entries=2.0)
    with pytest.raises(OverflowError):
        VhostVdpa(DmaParent(), max_iotlb_entries=2**31)
    assert VhostVdpa(DmaParent()).max_iotlb_entries == MAX_IOTLB_ENTRIES == 2048


# ================================================ vhost_chr_write_iter: size-0 INVALIDATE
@pytest.mark.parametrize("kernel", iotlb.KERNELS)
def test_size0_invalidate_at_iova_0_unmaps_the_whole_as(kernel, fast):
    """vhost_chr_write_iter refuses only UPDATE with size 0 (v6.6, "vhost: Allow null
    msg.size on VHOST_IOTLB_INVALIDATE"); vhost_vdpa_unmap then removes
    [0, 0 - 1] = [0, ~0]: everything, pins dropped, dma_unmap per entry."""
    parent = DmaParent()
    dev = dev_on(parent, fast=fast, kernel=kernel)
    dev.write(U(0x1000, PAGE))
    dev.write(U(0x10000, 2 * PAGE))
    assert dev.write(I(0, 0)) == 72
    assert entries(dev) == [] and dev.pinned_pages == 0
    assert [c[0] for c in parent.calls[-2:]] == ["dma_unmap", "dma_unmap"]
    dev.check_invariants()


def test_size0_invalidate_at_iova_n_is_the_wrapped_query(fast):
    """vhost_vdpa_unmap(iova, 0): [iova, iova - 1], start > last: only entries that
    contain both iova - 1 and iova go (kernel-semantics §1.3)."""
    dev = dev_on(fast=fast)
    dev.write(U(0x1000, 2 * PAGE))          # [0x1000, 0x2fff] spans 0x1fff/0x2000
    dev.write(U(0x4000, PAGE))              # [0x4000, 0x4fff]
    dev.write(I(0x4000, 0))                 # [0x4000, 0x3fff]: nothing spans it
    assert [e[0] for e in entries(dev)] == [0x1000, 0x4000]
    dev.write(I(0x2000, 0))
    assert [e[0] for e in entries(dev)] == [0x4000]
    dev.check_invariants()


def test_size0_invalidate_calls_set_map_and_needs_the_as(fast):
    """The size-0 INVALIDATE is a normal INVALIDATE: no AS → EINVAL (EFAULT at
    write); a set_map parent gets set_map with what remains."""
    parent = SetMapParent()
    dev = dev_on(parent, fast=fast)
    assert wfail(dev, I(0, 0)) == EINVAL
    dev.write(U(0x1000, PAGE))
    dev.write(I(0, 0))
    assert parent.calls[-1][0] == "set_map" and entries(dev) == []


def test_size0_update_still_einval_before_the_handler(fast):
    dev = dev_on(fast=fast)
    with pytest.raises(IOTLBError) as ei:
        dev.write(U(0x1000, 0))
    assert ei.value.errno == EINVAL and ei.value.__cause__ is None
    assert dev.address_spaces == []


# ====================================================== the AS entry limit (ENOSPC)
@pytest.mark.parametrize("kernel", iotlb.KERNELS)
def test_entry_past_max_iotlb_entries_is_enospc_before_any_parent_op(kernel, fast):
    """vhost_vdpa_alloc_as: vhost_iotlb_init(&as->iotlb, max_iotlb_entries, 0);
    vhost_vdpa_map → vhost_iotlb_add_range_ctx: nmaps >= limit without RETIRE →
    -ENOSPC, before dma_map ("vhost_iotlb: bound map allocation in add_range", v7.2;
    stable 6.12.114, 6.1.191).  write() says EFAULT."""
    parent = DmaParent()
    dev = dev_on(parent, fast=fast, kernel=kernel, max_iotlb_entries=4)
    for i in range(4):
        dev.write(U(0x10000 * (i + 1), PAGE))
    calls = len(parent.calls)
    assert wfail(dev, U(0x100000, PAGE)) == ENOSPC
    assert len(parent.calls) == calls       # no dma_map, no dma_unmap
    assert len(dev.vhost_iotlb(0)) == 4 and dev.pinned_pages == 4
    assert dev.vhost_iotlb(0).limit == 4
    dev.write(I(0x10000, PAGE))
    dev.write(U(0x100000, PAGE))            # room again
    dev.check_invariants()


def test_default_limit_is_2048_per_address_space():
    """max_iotlb_entries defaults to 2048; each AS has its own count."""
    dev = dev_on(kernel="6.12")
    dev.set_backend_features(0xE)           # IOTLB_ASID: asid 1 is honoured
    for i in range(2048):
        dev.update((i + 1) * PAGE, PAGE, (i + 1) * PAGE)
    assert err(dev.update, 0x10000000, PAGE, 0).errno == ENOSPC
    dev.update(PAGE, PAGE, PAGE, asid=1)
    assert len(dev.vhost_iotlb(0)) == 2048 and len(dev.vhost_iotlb(1)) == 1


@pytest.mark.parametrize("n", [0, -1])
def test_max_iotlb_entries_not_positive_fails_alloc_as(n, fast):
    """vhost_vdpa_alloc_as: max_iotlb_entries <= 0 → NULL → EINVAL for UPDATE and
    BATCH_BEGIN; no AS is created."""
    dev = dev_on(fast=fast, max_iotlb_entries=n)
    assert wfail(dev, U(0x1000, PAGE)) == EINVAL
    assert err(dev.batch_begin).errno == EINVAL
    assert dev.address_spaces == []


@pytest.mark.parametrize("kernel,leaked", [("7.2", 1), ("6.12", 0)])
def test_multi_run_pa_update_hits_the_limit_mid_way(kernel, leaked, fast):
    """vhost_vdpa_pa_map, one entry per physically contiguous run: with one free
    slot the first run is added and dma_mapped, the second is -ENOSPC in
    vhost_iotlb_add_range_ctx (no dma_map for it), and the error path unmaps the
    first run again (dma_unmap, unpin).  The failed run's pin stays on the 7.2.13
    profile (``if (nchunks)``: a run was mapped earlier in the same pin batch) and is
    dropped on 6.12.118 ("vhost-vdpa: fix pinned page leak in vhost_vdpa_pa_map()
    error path")."""
    parent = DmaParent()
    dev = dev_on(parent, fast=fast, kernel=kernel, max_iotlb_entries=3)
    dev.write(U(0x100000, PAGE))
    dev.write(U(0x200000, PAGE))
    for i in range(3):                      # three pages, three physical runs
        dev.usermem.place(0x700000 + i * PAGE, PAGE, 0x10000000 + 2 * i * PAGE)
    before = [c[0] for c in parent.calls]
    assert wfail(dev, U(0x300000, 3 * PAGE, 0x700000)) == ENOSPC
    assert [c[0] for c in parent.calls][len(before):] == ["dma_map", "dma_unmap"]
    assert len(dev.vhost_iotlb(0)) == 2 and dev.pinned_pages == 2
    assert dev.usermem.pinned_vm == 2
    assert dev.leaked_pages == leaked
    dev.check_invariants()


def test_multi_run_update_fits_exactly():
    """The limit counts entries, not UPDATEs: a 3-run UPDATE needs 3 free slots."""
    dev = dev_on(max_iotlb_entries=3)
    for i in range(3):
        dev.usermem.place(0x700000 + i * PAGE, PAGE, 0x10000000 + 2 * i * PAGE)
    dev.update(0x300000, 3 * PAGE, 0x700000)
    assert len(dev.vhost_iotlb(0)) == 3


def test_limit_in_a_batch_set_map_parent(fast):
    """In a batch a set_map parent is not called per map: the limit still refuses
    the entry in vhost_iotlb_add_range_ctx; BATCH_END passes what fitted."""
    parent = SetMapParent()
    dev = dev_on(parent, fast=fast, max_iotlb_entries=2)
    dev.batch_begin()
    dev.write(U(0x1000, PAGE))
    dev.write(U(0x2000, PAGE))
    assert wfail(dev, U(0x3000, PAGE)) == ENOSPC
    dev.batch_end()
    assert parent.calls[-1][0] == "set_map" and len(dev.vhost_iotlb(0)) == 2


def test_va_mode_limit(fast):
    """vhost_vdpa_va_map: the refused piece's file reference is dropped (fput)."""
    parent = DmaParent(use_va=True)
    dev = dev_on(parent, fast=fast, max_iotlb_entries=1)
    dev.write(U(0x1000, PAGE, 0x7F0000001000))
    assert wfail(dev, U(0x2000, PAGE, 0x7F0000002000)) == ENOSPC
    assert sum(dev.usermem.file_refs(dev).values()) == 1
    dev.check_invariants()


# ============================================================ VHOST_VDPA_SET_GROUP_ASID
@pytest.mark.parametrize("kernel", iotlb.KERNELS)
def test_set_group_asid_group_bound_checked_by_vhost_vdpa(kernel):
    """vhost_vdpa_vring_ioctl: idx >= nvqs → ENOBUFS first (parsed as a vring
    index), then idx >= ngroups || asid >= nas → EINVAL before the parent ("vhost:
    move vdpa group bound check to vhost_vdpa"; stable 6.12.75, 6.1.191)."""
    parent = SimLike(ngroups=2, nvqs=3)
    dev = dev_on(parent, kernel=kernel)
    assert err(dev.set_group_asid, 3, 0).errno == errno.ENOBUFS
    assert err(dev.set_group_asid, 2, 0).errno == EINVAL      # group == ngroups < nvqs
    assert err(dev.set_group_asid, 2, 9).errno == EINVAL
    assert "set_group_asid" not in parent.names()
    dev.set_group_asid(1, 1)
    assert parent.calls[-1] == ("set_group_asid", 1, 1)


@pytest.mark.parametrize("kernel,busy", [("7.2", True), ("6.12", False)])
def test_set_group_asid_ebusy_after_driver_ok(kernel, busy):
    """7.2: DRIVER_OK set → EBUSY, after the bound check, before the op check."""
    parent = SimLike()
    dev = dev_on(parent, kernel=kernel)
    dev.set_status(VIRTIO_CONFIG_S_DRIVER_OK)
    assert err(dev.set_group_asid, 2, 0).errno == EINVAL       # bound check first
    if busy:
        assert err(dev.set_group_asid, 1, 1).errno == EBUSY
        assert "set_group_asid" not in parent.names()
        nop = dev_on(DmaParent(), kernel=kernel)               # no op: EBUSY first
        nop.set_status(VIRTIO_CONFIG_S_DRIVER_OK)
        assert err(nop.set_group_asid, 1, 1).errno == EBUSY
    else:
        dev.set_group_asid(1, 1)
        assert parent.calls[-1] == ("set_group_asid", 1, 1)
    dev.set_status(0)
    dev.set_group_asid(1, 0)


# ===================================================================== SUSPEND / RESUME
@pytest.mark.parametrize("kernel", [k for k in iotlb.KERNELS
                                    if kernel_profile(k).suspend_resume_need_driver_ok])
def test_suspend_resume_skip_the_parent_without_driver_ok(kernel):
    """vhost_vdpa_suspend/resume: !(status & DRIVER_OK) → 0, no parent call, no op
    check, v->suspended unchanged ("vdpa: skip suspend/resume ops if not
    DRIVER_OK")."""
    class P(SimLike):
        def suspend(self):
            self._call("suspend")

        def resume(self):
            self._call("resume")
    parent = P()
    dev = dev_on(parent, kernel=kernel)
    dev.suspend()
    dev.resume()
    assert "suspend" not in parent.names() and not dev.suspended
    dev.set_status(VIRTIO_CONFIG_S_DRIVER_OK)
    dev.suspend()
    assert parent.calls[-1] == ("suspend",) and dev.suspended
    dev.resume()
    assert parent.calls[-1] == ("resume",) and not dev.suspended
