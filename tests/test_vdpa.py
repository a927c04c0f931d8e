"""iotlb.vdpa.VhostVdpa: the vhost-vdpa device model against tiny in-test parents.

Each test names the kernel function (drivers/vhost/vdpa.c, drivers/vhost/vhost.c)
whose rule it checks.  ``check_invariants()`` (kernel-semantics §5.4) runs after
every operation through the ``dev`` helpers.
"""
import errno
from collections import Counter, defaultdict

import pytest

import iotlb
from iotlb import IOTLB, IOTLBError, U64_MAX
from iotlb.usermem import MapFile, UserMemory
from iotlb.vdpa import VDPA_RESET_F_CLEAN_MAP, VIRTIO_CONFIG_S_DRIVER_OK, VhostVdpa
from iotlb.wire import (
    VHOST_IOTLB_ACCESS_FAIL, VHOST_IOTLB_BATCH_BEGIN, VHOST_IOTLB_BATCH_END,
    VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_MISS, VHOST_IOTLB_MSG, VHOST_IOTLB_UPDATE,
    BackendFeature as BF, VhostMsg, encode)

EINVAL, EFAULT, EEXIST, ENOMEM = errno.EINVAL, errno.EFAULT, errno.EEXIST, errno.ENOMEM
EPERM, EBUSY, EBADF, EIO = errno.EPERM, errno.EBUSY, errno.EBADF, errno.EIO
EOPNOTSUPP, ENOBUFS = errno.EOPNOTSUPP, errno.ENOBUFS
PAGE = 4096
ASID = int(BF.IOTLB_ASID)
PERSIST = int(BF.IOTLB_PERSIST)


# =========================================================================== parents
class Parent:
    """Records every op call; ``fail[name] = {n, ...}`` makes the n-th call (1-based)
    of that op raise IOTLBError ENOMEM (after recording it)."""

    def __init__(self, nas=2, ngroups=2, nvqs=3, use_va=False, iova_range=None):
        self.nas, self.ngroups, self.nvqs, self.use_va = nas, ngroups, nvqs, use_va
        self.calls = []
        self.counts = Counter()
        self.fail = {}
        self.status = 0
        self.dev = defaultdict(IOTLB)
        if iova_range is not None:
            self.get_iova_range = lambda: iova_range

    def _call(self, name, *args):
        self.calls.append((name,) + args)
        self.counts[name] += 1
        if self.counts[name] in self.fail.get(name, ()):
            raise IOTLBError(ENOMEM, f"injected {name} failure #{self.counts[name]}")

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

    def device_iotlb(self, asid):
        return self.dev[asid]


class DmaParent(Parent):
    """dma_map/dma_unmap parent (vdpa_sim batch_mapping=0 style)."""

    def dma_map(self, asid, iova, size, pa, perm, opaque):
        self._call("dma_map", asid, iova, size, pa, perm)
        self.dev[asid].map(iova, iova + size - 1, pa, perm)

    def dma_unmap(self, asid, iova, size):
        self._call("dma_unmap", asid, iova, size)
        self.dev[asid].unmap(iova, iova + size - 1)


class SetMapParent(Parent):
    """set_map parent without reset_map/compat_reset (no persistent map)."""

    def set_map(self, asid, iotlb):
        self._call("set_map", asid, [tuple(m[:4]) for m in iotlb])
        self.dev[asid] = iotlb.copy()


class SimLike(SetMapParent):
    """set_map + reset_map + compat_reset (vdpa_sim / mlx5 shape)."""

    def compat_reset(self, flags):
        self._call("compat_reset", flags)
        self.status = 0

    def reset_map(self, asid):
        self._call("reset_map", asid)

    def set_group_asid(self, group, asid):
        self._call("set_group_asid", group, asid)

    def get_vq_group(self, vq):
        return 1 if vq == 2 else 0


class PlatformParent(Parent):
    """No set_map/dma_map: vhost-vdpa programs an IOMMU domain."""

    def __init__(self, **kw):
        kw.setdefault("nas", 1)
        kw.setdefault("ngroups", 1)
        super().__init__(**kw)

    def iommu_domain_alloc(self):
        self._call("iommu_domain_alloc")

    def iommu_domain_free(self):
        self._call("iommu_domain_free")

    def iommu_map(self, iova, size, pa, perm):
        self._call("iommu_map", iova, size, pa, perm)
        self.dev[0].map(iova, iova + size - 1, pa, perm)

    def iommu_unmap(self, iova, size):
        self._call("iommu_unmap", iova, size)
        self.dev[0].unmap(iova, iova + size - 1)


class Dev(VhostVdpa):
    """Runs check_invariants() after every public operation, success or failure."""

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr) or name in (
                "check_invariants", "vhost_iotlb", "batch"):
            return attr

        def checked(*a, **kw):
            try:
                return attr(*a, **kw)
            finally:
                VhostVdpa.check_invariants(self)
        return checked


def opened(parent=None, *, owner=True, features=None, **kw):
    dev = Dev(parent if parent is not None else DmaParent(), **kw)
    dev.open()
    if owner:
        dev.set_owner()
    if features is not None:
        dev.set_backend_features(features)
    return dev


def entries(dev, asid=0):
    t = dev.vhost_iotlb(asid)
    return None if t is None else [tuple(m[:4]) for m in t]


def err(fn, *a, **kw):
    with pytest.raises(IOTLBError) as ei:
        fn(*a, **kw)
    return ei.value


def U(iova, size, uaddr=None, perm=3, asid=0, **kw):
    return encode(VHOST_IOTLB_UPDATE, iova, size, iova if uaddr is None else uaddr,
                  perm, asid=asid, **kw)


def I(iova, size, asid=0):
    return encode(VHOST_IOTLB_INVALIDATE, iova, size, asid=asid)


# =========================================================================== write()
def test_write_iter_39_byte_write_einval():
    """vhost_chr_write_iter: 39-byte write → EINVAL, nothing happens."""
    dev = opened()
    e = err(dev.write, U(0, PAGE)[:39])
    assert e.errno == EINVAL and dev.address_spaces == []


def test_write_iter_outer_type_3_einval():
    """vhost_chr_write_iter: outer type 3 → EINVAL (not EFAULT: no handler ran)."""
    dev = opened()
    e = err(dev.write, U(0, PAGE, version=3))
    assert e.errno == EINVAL and e.__cause__ is None and dev.address_spaces == []


@pytest.mark.parametrize("version", [VHOST_IOTLB_MSG, 2])
def test_write_iter_40_byte_write_returns_72(version):
    """vhost_chr_write_iter: a 40-byte v1/v2 write succeeds and returns 72."""
    dev = opened()
    assert dev.write(U(0x1000, PAGE, version=version)[:40]) == 72
    assert entries(dev) == [(0x1000, 0x1fff, 0x1000, 3)]


def test_write_iter_size0_update_rejected_before_handler():
    """vhost_chr_write_iter: size-0 UPDATE → EINVAL before the handler (no AS is
    created, although UPDATE would create one in the handler)."""
    dev = opened()
    e = err(dev.write, encode(VHOST_IOTLB_UPDATE, 0x1000, 0, 0x1000, 3))
    assert e.errno == EINVAL and dev.address_spaces == []


def test_write_iter_size0_batch_hints_accepted():
    """vhost_chr_write_iter: BATCH_BEGIN/END with size 0 are fine."""
    dev = opened()
    assert dev.write(encode(VHOST_IOTLB_BATCH_BEGIN)) == 72 and dev.in_batch
    assert dev.write(encode(VHOST_IOTLB_BATCH_END)) == 72 and not dev.in_batch


def test_write_iter_handler_error_becomes_efault_with_cause():
    """vhost_chr_write_iter: any nonzero handler result is replaced by -EFAULT."""
    dev = opened()
    dev.write(U(0x1000, PAGE))
    e = err(dev.write, U(0x1000, PAGE))
    assert e.errno == EFAULT
    assert isinstance(e.__cause__, IOTLBError) and e.__cause__.errno == EEXIST


def test_write_iter_asid_ignored_unless_iotlb_asid_acked():
    """vhost_chr_write_iter: v2 asid is used only when IOTLB_ASID is acked."""
    dev = opened()
    dev.write(U(0x1000, PAGE, asid=1))
    assert dev.address_spaces == [0] and entries(dev, 0) == [(0x1000, 0x1fff, 0x1000, 3)]
    dev.set_backend_features(ASID)
    dev.write(U(0x2000, PAGE, asid=1))
    assert dev.address_spaces == [0, 1] and entries(dev, 1) == [(0x2000, 0x2fff, 0x2000, 3)]


def test_write_iter_v1_always_asid_0():
    """vhost_chr_write_iter: v1 messages are asid 0 even with IOTLB_ASID acked."""
    dev = opened(features=ASID)
    raw = bytearray(U(0x1000, PAGE, version=VHOST_IOTLB_MSG))
    raw[4:8] = b"\x01\x00\x00\x00"  # the hole
    assert dev.write(bytes(raw)) == 72 and dev.address_spaces == [0]


@pytest.mark.parametrize("t", [VHOST_IOTLB_MISS, VHOST_IOTLB_ACCESS_FAIL, 0, 7, 255])
def test_process_iotlb_msg_unknown_types_einval(t):
    """vhost_vdpa_process_iotlb_msg: MISS/ACCESS_FAIL/garbage → EINVAL (EFAULT at
    write), once the AS exists; before that the AS lookup fails first (also EINVAL)."""
    dev = opened()
    assert err(dev.process, VhostMsg(t)).errno == EINVAL
    dev.update(0, PAGE, 0)
    assert err(dev.process, VhostMsg(t)).errno == EINVAL
    e = err(dev.write, encode(t))
    assert e.errno == EFAULT and e.__cause__.errno == EINVAL


def test_write_accepts_buffers_and_write_many():
    dev = opened()
    assert dev.write(bytearray(U(0, PAGE))) == 72
    assert dev.write(memoryview(U(PAGE, PAGE))) == 72
    blob = U(2 * PAGE, PAGE) + U(3 * PAGE, PAGE) + U(3 * PAGE, PAGE)
    e = err(dev.write_many, blob)
    assert e.errno == EFAULT and e.index == 2
    assert len(entries(dev)) == 4


# =========================================================================== owner / AS
def test_check_owner_before_set_owner_eperm_no_as_created():
    """vhost_dev_check_owner runs before find_alloc_as: EPERM and no AS."""
    dev = opened(owner=False)
    assert err(dev.update, 0, PAGE, 0).errno == EPERM
    assert err(dev.batch_begin).errno == EPERM
    assert dev.address_spaces == []
    dev.set_owner()
    assert err(dev.set_owner).errno == EBUSY  # vhost_dev_set_owner


def test_find_alloc_as_asid_out_of_range_einval():
    """vhost_vdpa_alloc_as: asid >= nas → NULL → EINVAL; nothing created."""
    dev = opened(features=ASID)
    assert err(dev.update, 0, PAGE, 0, asid=2).errno == EINVAL
    assert err(dev.batch_begin, 2).errno == EINVAL
    e = err(dev.write, U(0, PAGE, asid=2))
    assert e.errno == EFAULT and e.__cause__.errno == EINVAL
    assert dev.address_spaces == []


def test_asid_to_iotlb_invalidate_and_batch_end_need_existing_as():
    """vhost_vdpa_process_iotlb_msg: INVALIDATE / BATCH_END on a fresh device → EINVAL
    (asid_to_iotlb is NULL); they never create the AS."""
    dev = opened()
    assert err(dev.invalidate, 0, PAGE).errno == EINVAL
    assert err(dev.batch_end).errno == EINVAL
    assert dev.address_spaces == []


def test_find_alloc_as_side_effect_survives_failed_update():
    """vhost_vdpa_find_alloc_as: the AS created by a failing UPDATE stays."""
    dev = opened(DmaParent(iova_range=(0x10000, 0xFFFFFFFF)))
    assert err(dev.update, 0x1000, PAGE, 0).errno == EINVAL  # below range.first
    assert dev.address_spaces == [0] and entries(dev) == []
    dev.invalidate(0, PAGE)  # now succeeds: the AS exists


def test_batch_begin_creates_as():
    """vhost_vdpa_process_iotlb_msg: BATCH_BEGIN uses find_alloc_as."""
    dev = opened(features=ASID)
    dev.batch_begin(1)
    assert dev.address_spaces == [1] and dev.in_batch and dev.batch_asid == 1


# =========================================================================== batching
def test_batch_bound_to_one_asid_with_side_effect():
    """vhost_vdpa_process_iotlb_msg: in_batch && batch_asid != asid → EINVAL, after the
    find_alloc_as side effect for UPDATE/BATCH_BEGIN."""
    parent = SetMapParent()
    dev = opened(parent, features=ASID)
    dev.batch_begin(0)
    assert err(dev.update, 0, PAGE, 0, asid=1).errno == EINVAL
    assert dev.address_spaces == [0, 1] and entries(dev, 1) == []
    assert err(dev.invalidate, 0, PAGE, asid=1).errno == EINVAL
    assert err(dev.batch_begin, 1).errno == EINVAL
    assert err(dev.batch_end, 1).errno == EINVAL
    assert dev.in_batch and dev.batch_asid == 0
    dev.batch_begin(0)  # re-BEGIN on the same asid: accepted, no-op
    dev.batch_end(0)
    assert not dev.in_batch
    dev.update(0, PAGE, 0, asid=1)  # batch over: asid 1 works
    assert parent.names() == ["reset", "set_map", "set_map"]


def test_batch_set_map_only_at_batch_end():
    """vhost_vdpa_map / vhost_vdpa_unmap: set_map parents are not told inside a batch;
    BATCH_END calls set_map once with the whole IOTLB."""
    parent = SetMapParent()
    dev = opened(parent)
    with dev.batch():
        dev.update(0, PAGE, 0)
        dev.update(PAGE, PAGE, PAGE)
        dev.invalidate(0, PAGE)
        assert "set_map" not in parent.names()
    assert parent.calls[-1] == ("set_map", 0, [(PAGE, 2 * PAGE - 1, PAGE, 3)])
    assert parent.names().count("set_map") == 1


def test_batch_end_without_batch_no_set_map():
    """BATCH_END with no open batch is accepted and calls no set_map."""
    parent = SetMapParent()
    dev = opened(parent)
    dev.update(0, PAGE, 0)
    n = parent.names().count("set_map")
    dev.batch_end()
    assert parent.names().count("set_map") == n


def test_batch_end_ignores_set_map_result():
    """BATCH_END: ops->set_map's return value is ignored; in_batch cleared."""
    parent = SetMapParent()
    dev = opened(parent)
    dev.batch_begin()
    dev.update(0, PAGE, 0)
    parent.fail["set_map"] = {1}
    dev.batch_end()
    assert not dev.in_batch and entries(dev) == [(0, PAGE - 1, 0, 3)]


def test_batch_does_not_delay_dma_map_or_iommu_parents():
    """vhost_vdpa_map: dma_map and platform parents are programmed per chunk, batch or
    not."""
    for parent, op in ((DmaParent(), "dma_map"), (PlatformParent(), "iommu_map")):
        dev = opened(parent)
        with dev.batch():
            dev.update(0, PAGE, 0)
            assert parent.names()[-1] == op


def test_set_status_0_does_not_clear_in_batch():
    """VHOST_VDPA_SET_STATUS(0) calls _compat_vdpa_reset directly: in_batch stays."""
    dev = opened()
    dev.batch_begin()
    dev.set_status(0)
    assert dev.in_batch


# =========================================================================== UPDATE checks
@pytest.fixture
def ranged():
    return opened(DmaParent(iova_range=(0x10000, 0xFFFFFFFFFF)))


def test_update_iova_below_range_first_einval(ranged):
    """vhost_vdpa_process_iotlb_update: iova < range.first → EINVAL."""
    assert err(ranged.update, 0xF000, 0x2000, 0).errno == EINVAL


def test_update_size_0_einval_at_handler_level(ranged):
    """vhost_vdpa_process_iotlb_update: !size → EINVAL (unreachable via write)."""
    assert err(ranged.update, 0x10000, 0, 0).errno == EINVAL


def test_update_overflow_einval():
    """vhost_vdpa_process_iotlb_update: iova > U64_MAX - size + 1 → EINVAL; iova=1,
    size=U64_MAX passes that check (and PA then fails on npages == 0)."""
    dev = opened()
    e = err(dev.update, 2, U64_MAX, 0)
    assert e.errno == EINVAL and "wraps" in e.strerror
    e = err(dev.update, 1, U64_MAX, 0)
    assert e.errno == EINVAL and "0 pages" in e.strerror


def test_update_last_above_range_last_einval(ranged):
    """vhost_vdpa_process_iotlb_update: iova + size - 1 > range.last → EINVAL."""
    assert err(ranged.update, 0xFFFFFFF000, 0x2000, 0).errno == EINVAL
    ranged.update(0xFFFFFFF000, 0x1000, 0)  # last == range.last is fine


def test_update_eexist_uses_unaligned_range_on_page_expanded_entries():
    """vhost_vdpa_process_iotlb_update: itree_first on the caller's unaligned range;
    entries are page expanded, so byte-disjoint UPDATEs sharing a page conflict."""
    dev = opened()
    dev.update(0x1800, 0x800, 0x1800)
    assert entries(dev) == [(0x1000, 0x1FFF, 0x1000, 3)]
    assert err(dev.update, 0x1000, 0x100, 0x1000).errno == EEXIST
    dev.update(0x2000, 0x100, 0x2000)  # next page: fine


def test_update_perm_not_validated():
    """vhost_vdpa_process_iotlb_update: no perm validation, stored verbatim."""
    dev = opened()
    dev.update(0, PAGE, 0, perm=0)
    dev.update(PAGE, PAGE, PAGE, perm=0xFF)
    assert [e[3] for e in entries(dev)] == [0, 0xFF]


def test_update_validation_order_range_before_eexist(ranged):
    ranged.update(0x10000, PAGE, 0)
    # overlaps an entry AND runs past range.last: EINVAL wins (checked first)
    assert err(ranged.update, 0x10000, 0x10000000000, 0).errno == EINVAL


# =========================================================================== PA mapping
def test_pa_map_page_expansion_uses_iova_offset():
    """vhost_vdpa_pa_map: maps [iova & PAGE_MASK, ...] for PFN_UP(size + (iova &
    ~PAGE_MASK)) pages from uaddr & PAGE_MASK; addr = physical address."""
    dev = opened()
    dev.update(0x1FF0, 0x20, 0x5FF0)       # crosses a page boundary: 2 pages
    assert entries(dev) == [(0x1000, 0x2FFF, 0x5000, 3)]
    assert dev.pinned_pages == 2
    dev.update(0x4000, 0x1000, 0x9800)     # uaddr offset ignored: 1 page from 0x9000
    assert entries(dev)[-1] == (0x4000, 0x4FFF, 0x9000, 3)
    assert dev.pinned_pages == 3 and dev.usermem.pin_count(9) == 1


def test_pa_map_one_entry_per_contiguous_run():
    """vhost_vdpa_pa_map: every PFN discontinuity ends a run; one vhost_vdpa_map (one
    entry, one dma_map) per run; pinned_vm charged per run."""
    parent = DmaParent()
    dev = opened(parent)
    mem = dev.usermem
    mem.place(0x10000, 0x2000, 0x800000)   # pages 0-1 elsewhere
    mem.place(0x13000, 0x1000, 0x900000)   # page 3 elsewhere
    dev.update(0x40000, 0x5000, 0x10000)
    assert entries(dev) == [(0x40000, 0x41FFF, 0x800000, 3),
                            (0x42000, 0x42FFF, 0x12000, 3),
                            (0x43000, 0x43FFF, 0x900000, 3),
                            (0x44000, 0x44FFF, 0x14000, 3)]
    assert [c for c in parent.calls if c[0] == "dma_map"] == [
        ("dma_map", 0, 0x40000, 0x2000, 0x800000, 3),
        ("dma_map", 0, 0x42000, 0x1000, 0x12000, 3),
        ("dma_map", 0, 0x43000, 0x1000, 0x900000, 3),
        ("dma_map", 0, 0x44000, 0x1000, 0x14000, 3)]
    assert dev.pinned_pages == 5 == mem.pinned_vm
    assert parent.device_iotlb(0) == dev.vhost_iotlb(0)


def test_pa_map_adjacent_placements_merge_into_one_run():
    dev = opened()
    dev.usermem.place(0x10000, 0x1000, 0x800000)
    dev.usermem.place(0x11000, 0x1000, 0x801000)
    dev.update(0, 0x2000, 0x10000)
    assert entries(dev) == [(0, 0x1FFF, 0x800000, 3)]


def test_pa_map_memlock_checked_before_pinning():
    """vhost_vdpa_pa_map: npages + pinned_vm > RLIMIT_MEMLOCK → ENOMEM, nothing
    pinned or mapped; exactly at the limit is fine."""
    parent = DmaParent()
    dev = opened(parent, memlock_pages=10)
    dev.update(0, 8 * PAGE, 0)
    assert err(dev.update, 0x100000, 3 * PAGE, 0x100000).errno == ENOMEM
    assert dev.pinned_pages == 8 and len(entries(dev)) == 1
    assert parent.names().count("dma_map") == 1
    dev.update(0x100000, 2 * PAGE, 0x100000)
    assert dev.usermem.pinned_vm == 10


def test_pa_map_memlock_shared_by_devices_of_one_mm():
    """mm->pinned_vm is per process: two devices share the RLIMIT_MEMLOCK budget."""
    mem = UserMemory(memlock_pages=4)
    a = opened(DmaParent(), usermem=mem)
    b = opened(DmaParent(), usermem=mem)
    a.update(0, 3 * PAGE, 0)
    assert err(b.update, 0, 2 * PAGE, 0x10000).errno == ENOMEM
    b.update(0, PAGE, 0)  # the same page pinned twice (two devices): counted twice
    assert mem.pin_count(0) == 2 and mem.pinned_vm == 4
    a.release()
    assert mem.pinned_vm == 1 and mem.pin_count(0) == 1


def test_same_page_in_two_as_pinned_twice():
    """§5.4: the same user page mapped in two ASes is pinned twice."""
    dev = opened(features=ASID)
    dev.write(U(0, PAGE, 0x7000, asid=0))
    dev.write(U(0x9000, PAGE, 0x7000, asid=1))
    assert dev.usermem.pin_counts(7, 1) == [(7, 1, 2)] and dev.pinned_pages == 2


def test_pa_unmap_dirties_exactly_writable_entries():
    """vhost_vdpa_pa_unmap: set_page_dirty_lock iff perm & VHOST_ACCESS_WO."""
    dev = opened()
    dev.update(0, 2 * PAGE, 0x10000, perm=1)       # RO: never dirtied
    dev.update(0x10000, PAGE, 0x20000, perm=2)     # WO
    dev.update(0x20000, PAGE, 0x30000, perm=3)     # RW
    assert dev.dirtied_pages == 0
    dev.invalidate(0, 0x30000)
    mem = dev.usermem
    assert dev.dirtied_pages == 2
    assert (mem.dirty_count(0x10), mem.dirty_count(0x20), mem.dirty_count(0x30)) == (0, 1, 1)
    # the record, as a read-only snapshot; clear_dirtied() forgets it, not the total
    snap = mem.dirtied
    assert snap == {(0x20, 1): 1, (0x30, 1): 1}
    dev.update(0x20000, PAGE, 0x30000, perm=3)
    dev.invalidate(0x20000, PAGE)
    assert snap == {(0x20, 1): 1, (0x30, 1): 1} and mem.dirtied[(0x30, 1)] == 2
    with pytest.raises((TypeError, AttributeError)):
        mem.dirtied[(0x30, 1)] = 0
    mem.clear_dirtied()
    assert mem.dirtied == {} and mem.dirty_count(0x30) == 0 and dev.dirtied_pages == 3


def test_pa_map_fault_in_strict_memory():
    """pin_user_pages on an unmapped first page → -EFAULT; a short pin → ENOMEM;
    either way the UPDATE leaves nothing behind."""
    mem = UserMemory(strict=True)
    mem.map_anon(0x10000, 0x3000)
    dev = opened(usermem=mem)
    e = err(dev.update, 0, PAGE, 0x20000)
    assert e.errno == EFAULT
    e = err(dev.update, 0, 0x4000, 0x10000)    # 3 of 4 pages pinnable
    assert e.errno == ENOMEM
    assert entries(dev) == [] and mem.pinned_pages() == 0
    dev.update(0, 0x3000, 0x10000)
    assert dev.pinned_pages == 3


def test_pa_map_io_vma_not_pinnable():
    mem = UserMemory()
    mem.map_io(0x10000, PAGE)
    dev = opened(usermem=mem)
    assert err(dev.update, 0, PAGE, 0x10000).errno == EFAULT
    assert entries(dev) == []


# =========================================================================== rollback
def _fragmented(dev, base, pages):
    """Make every page of [base, base + pages*PAGE) its own physical run."""
    for i in range(pages):
        dev.usermem.place(base + i * PAGE, PAGE, 0x10000000 + 2 * i * PAGE)


def test_update_rollback_first_run_fails_no_entry_no_pin():
    """vhost_vdpa_map + pa_map error path: dma_map ENOMEM on the first run → entry
    deleted, pins dropped, nothing charged."""
    parent = DmaParent()
    dev = opened(parent)
    _fragmented(dev, 0x100000, 3)
    parent.fail["dma_map"] = {1}
    e = err(dev.write, U(0, 3 * PAGE, 0x100000))
    assert e.errno == EFAULT and e.__cause__.errno == ENOMEM
    assert entries(dev) == [] and dev.pinned_pages == 0
    assert dev.usermem.pinned_pages() == 0 and dev.leaked_pages == 0


def test_update_rollback_unmaps_mapped_runs_across_gup_batches():
    """vhost_vdpa_pa_map: runs already mapped are removed by vhost_vdpa_unmap (unpin,
    pinned_vm, dma_unmap); the failing run's pages are unpinned when its pinning
    spanned a previous pin_user_pages batch (nchunks != 0)."""
    parent = DmaParent()
    dev = opened(parent, memlock_pages=4096)
    # runs: pages [0, 600) contiguous, [600, 1100) elsewhere, [1100, 1200) elsewhere
    dev.usermem.place(0x1000000 + 600 * PAGE, 500 * PAGE, 0x40000000)
    dev.usermem.place(0x1000000 + 1100 * PAGE, 100 * PAGE, 0x50000000)
    parent.fail["dma_map"] = {2}
    e = err(dev.update, 0, 1200 * PAGE, 0x1000000, perm=3)
    assert e.errno == ENOMEM
    dm = [c for c in parent.calls if c[0] in ("dma_map", "dma_unmap")]
    assert dm == [("dma_map", 0, 0, 600 * PAGE, 0x1000000, 3),
                  ("dma_map", 0, 600 * PAGE, 500 * PAGE, 0x40000000, 3),
                  ("dma_unmap", 0, 0, 600 * PAGE)]
    assert entries(dev) == [] and dev.usermem.pinned_pages() == 0
    assert dev.usermem.pinned_vm == 0 and dev.leaked_pages == 0
    assert parent.device_iotlb(0) == IOTLB()


def test_update_rollback_kernel_leaks_run_after_a_run_mapped_in_same_gup_batch():
    """vhost_vdpa_pa_map error path, as the kernel has it: ``nchunks`` is reset to 0
    when a run is mapped; if the *next* run fails to map within the same
    pin_user_pages batch, ``if (nchunks)`` skips unpinning it.  The model keeps that
    pin (not charged to pinned_vm, no entry) and reports it as leaked_pages."""
    parent = DmaParent()
    dev = opened(parent)
    _fragmented(dev, 0x100000, 3)
    parent.fail["dma_map"] = {2}
    assert err(dev.update, 0, 3 * PAGE, 0x100000, perm=3).errno == ENOMEM
    assert entries(dev) == [] and dev.pinned_pages == 0
    assert dev.usermem.pinned_vm == 0
    # run 0 (mapped, then unmapped + dirtied) is clean; run 1 stays pinned
    assert dev.leaked_pages == 1
    assert dev.usermem.leaked(dev) == Counter({(0x10002, 1, True): 1})
    assert dev.usermem.pin_count(0x10002) == 1 and dev.usermem.pin_count(0x10000) == 0
    dev.release()
    assert dev.leaked_pages == 1  # a leak outlives the file


def test_update_rollback_final_chunk_failure():
    """Failure on "Pin the rest chunk" of a single-run UPDATE: no leak."""
    parent = DmaParent()
    dev = opened(parent)
    parent.fail["dma_map"] = {1}
    assert err(dev.update, 0, 8 * PAGE, 0).errno == ENOMEM
    assert dev.usermem.pinned_pages() == 0 and dev.leaked_pages == 0


def test_update_rollback_set_map_parent_extra_set_map():
    """vhost_vdpa_map with set_map: the failing set_map's entry is deleted, then the
    error path's vhost_vdpa_unmap calls set_map once more (not in a batch)."""
    parent = SetMapParent()
    dev = opened(parent)
    dev.update(0x100000, PAGE, 0x100000)
    parent.fail["set_map"] = {2}
    assert err(dev.update, 0, PAGE, 0).errno == ENOMEM
    sm = [c for c in parent.calls if c[0] == "set_map"]
    assert sm == [("set_map", 0, [(0x100000, 0x100FFF, 0x100000, 3)]),
                  ("set_map", 0, [(0, 0xFFF, 0, 3), (0x100000, 0x100FFF, 0x100000, 3)]),
                  ("set_map", 0, [(0x100000, 0x100FFF, 0x100000, 3)])]
    assert entries(dev) == [(0x100000, 0x100FFF, 0x100000, 3)]
    assert dev.pinned_pages == 1


def test_update_rollback_platform_iommu_unmap():
    """Platform parent: iommu_map failure on run 2 → iommu_unmap of run 1."""
    parent = PlatformParent()
    dev = opened(parent, memlock_pages=None)
    dev.usermem.place(0x200000 + 600 * PAGE, 10 * PAGE, 0x70000000)
    parent.fail["iommu_map"] = {2}
    assert err(dev.update, 0, 610 * PAGE, 0x200000).errno == ENOMEM
    assert parent.calls[-1] == ("iommu_unmap", 0, 600 * PAGE)
    assert entries(dev) == [] and len(parent.device_iotlb(0)) == 0


# =========================================================================== INVALIDATE
def test_invalidate_removes_whole_entries():
    """vhost_vdpa_iotlb_unmap: every entry overlapping by one byte goes whole; the
    device is unmapped per entry with the entry's own range."""
    parent = DmaParent()
    dev = opened(parent)
    dev.update(0, 0x4000, 0)
    dev.update(0x4000, 0x2000, 0x4000)
    dev.update(0x8000, 0x1000, 0x8000)
    dev.invalidate(0x3FFF, 2)
    assert entries(dev) == [(0x8000, 0x8FFF, 0x8000, 3)]
    assert [c for c in parent.calls if c[0] == "dma_unmap"] == [
        ("dma_unmap", 0, 0, 0x4000), ("dma_unmap", 0, 0x4000, 0x2000)]
    assert dev.pinned_pages == 1


def test_invalidate_nothing_still_calls_set_map():
    """vhost_vdpa_unmap: set_map parents get set_map even if nothing was removed
    (not in a batch); INVALIDATE always succeeds once the AS exists."""
    parent = SetMapParent()
    dev = opened(parent)
    dev.update(0, PAGE, 0)
    n = parent.names().count("set_map")
    dev.invalidate(0x100000, PAGE)
    assert parent.names().count("set_map") == n + 1
    parent.fail["set_map"] = {n + 2}
    dev.invalidate(0, PAGE)  # set_map failure ignored
    assert entries(dev) == []


def test_invalidate_u64_wrap_matches_entries_spanning_both_bounds():
    """vhost_vdpa_unmap: iova + size - 1 wraps; the query [iova, wrapped] with
    start > last still removes entries that contain both bounds."""
    dev = opened()
    dev.update(0, PAGE, 0)
    dev.update(0x1000, 0x2000, 0x1000)   # [0x1000, 0x2fff]
    dev.update(0x3000, PAGE, 0x3000)
    dev.invalidate(0x2000, U64_MAX)      # last = 0x2000 + U64_MAX - 1 = 0x1ffe
    assert entries(dev) == [(0, 0xFFF, 0, 3), (0x3000, 0x3FFF, 0x3000, 3)]


def test_invalidate_size0_at_handler_level_wraps_to_everything():
    """vhost_vdpa_unmap(iova=0, size=0): last = ~0 → everything goes (reachable only
    below write(), which rejects size 0)."""
    dev = opened()
    dev.update(0, PAGE, 0)
    dev.update(0x10000, PAGE, 0x10000)
    dev.process(VhostMsg(VHOST_IOTLB_INVALIDATE, 0, 0))
    assert entries(dev) == [] and dev.pinned_pages == 0


def test_reupdate_after_reset_needs_invalidate():
    """§4.5 note: after SET_STATUS(0) vhost still holds entries → re-UPDATE EEXIST
    (EFAULT at write); INVALIDATE first works (QEMU's stop/start)."""
    parent = SimLike()
    dev = opened(parent, features=int(BF.IOTLB_MSG_V2 | BF.IOTLB_BATCH | ASID))
    with dev.batch():
        dev.write(U(0, 0x200000))
    dev.set_status(0)
    assert parent.calls[-1] == ("compat_reset", VDPA_RESET_F_CLEAN_MAP)
    assert entries(dev) == [(0, 0x1FFFFF, 0, 3)] and dev.pinned_pages == 512
    assert err(dev.write, U(0, 0x200000)).__cause__.errno == EEXIST
    with dev.batch():
        dev.write(I(0, 0x200000))
    with dev.batch():
        dev.write(U(0, 0x200000))
    assert dev.pinned_pages == 512 and dev.dirtied_pages == 512


# =========================================================================== status / reset
def test_set_status_clearing_bits_einval():
    """vhost_vdpa_set_status: nonzero status that removes bits → EINVAL."""
    parent = DmaParent()
    dev = opened(parent)
    dev.set_status(1)
    dev.set_status(3)
    assert err(dev.set_status, 1).errno == EINVAL
    assert dev.get_status() == 3
    dev.set_status(7)
    assert parent.calls[-1] == ("set_status", 7)


def test_set_status_0_compat_reset_per_persist():
    """_compat_vdpa_reset: CLEAN_MAP iff vqs exist and IOTLB_PERSIST not acked;
    vdpa_reset uses compat_reset only for nonzero flags."""
    parent = SimLike()
    dev = opened(parent)
    dev.update(0, PAGE, 0)
    dev.set_status(0)
    assert parent.calls[-1] == ("compat_reset", 1)
    dev.set_backend_features(PERSIST)
    dev.set_status(0)
    assert parent.calls[-1] == ("reset",)
    assert entries(dev) == [(0, 0xFFF, 0, 3)] and dev.pinned_pages == 1


def test_set_status_0_without_compat_reset_op_uses_reset():
    parent = DmaParent()
    dev = opened(parent)
    dev.set_status(0)
    assert parent.calls[-1] == ("reset",)


def test_set_status_0_propagates_reset_error():
    parent = DmaParent()
    dev = opened(parent)
    parent.fail["reset"] = {2}
    assert err(dev.set_status, 0).errno == ENOMEM


def test_set_status_0_clears_suspended():
    class P(SimLike):
        def suspend(self):
            self._call("suspend")

        def resume(self):
            self._call("resume")
    dev = opened(P())
    dev.set_status(VIRTIO_CONFIG_S_DRIVER_OK)
    dev.suspend()
    assert dev.suspended
    dev.set_status(0)
    assert not dev.suspended
    dev.suspend()
    dev.resume()
    assert not dev.suspended


# =========================================================================== open / release
def test_open_busy_and_reset_flags_0():
    """vhost_vdpa_open: EBUSY while open; vhost_vdpa_reset with no vqs → flags 0 →
    plain .reset (never compat_reset)."""
    parent = SimLike()
    dev = Dev(parent)
    dev.open()
    assert err(dev.open).errno == EBUSY
    assert parent.names() == ["reset"]
    dev.release()
    dev.open()
    assert parent.names()[-1] == "reset"


def test_open_failure_leaves_device_closed():
    parent = DmaParent()
    parent.fail["reset"] = {1}
    dev = Dev(parent)
    assert err(dev.open).errno == ENOMEM and not dev.is_open
    dev.open()
    assert dev.is_open


def test_open_platform_allocates_domain_and_failure():
    """vhost_vdpa_alloc_domain for parents with neither set_map nor dma_map."""
    parent = PlatformParent()
    dev = opened(parent)
    assert parent.names() == ["reset", "iommu_domain_alloc"]
    dev.release()
    assert parent.names()[-1] == "iommu_domain_free"
    parent.fail["iommu_domain_alloc"] = {2}
    assert err(dev.open).errno == ENOMEM and not dev.is_open
    assert parent.names()[-1] == "iommu_domain_alloc"  # nothing to free


def test_open_iova_range():
    """vhost_vdpa_set_iova_range: get_iova_range or [0, ~0]."""
    assert opened().get_iova_range() == (0, U64_MAX)
    assert opened(DmaParent(iova_range=(0x1000, 0xFFFF))).iova_range == (0x1000, 0xFFFF)


def test_features_zeroed_at_open_and_release():
    """vhost_dev_init / vhost_dev_cleanup zero the acked backend features."""
    dev = opened(features=ASID)
    assert dev.backend_features == ASID
    dev.release()
    assert dev.backend_features == 0
    dev.open()
    assert dev.backend_features == 0


@pytest.mark.parametrize("persist", [False, True])
def test_release_order_several_asids(persist):
    """vhost_vdpa_release: in_batch = 0, _compat_vdpa_reset (per PERSIST), then
    remove_as for every existing ASID ascending: per entry unpin + dma_unmap, then
    reset_map(asid)."""
    class P(DmaParent):
        def reset_map(self, asid):
            self._call("reset_map", asid)

        def compat_reset(self, flags):
            self._call("compat_reset", flags)
    parent = P()
    dev = opened(parent, features=ASID | (PERSIST if persist else 0))
    dev.write(U(0x3000, PAGE, asid=1))
    dev.write(U(0x1000, PAGE, asid=0))
    dev.write(U(0x5000, PAGE, asid=1))
    dev.batch_begin(1)
    del parent.calls[:]
    dev.release()
    assert parent.calls == [
        ("reset",) if persist else ("compat_reset", 1),
        ("dma_unmap", 0, 0x1000, PAGE), ("reset_map", 0),
        ("dma_unmap", 1, 0x3000, PAGE), ("dma_unmap", 1, 0x5000, PAGE),
        ("reset_map", 1)]
    assert not dev.in_batch and dev.address_spaces == [] and dev.pinned_pages == 0
    assert dev.usermem.pinned_vm == 0 and dev.dirtied_pages == 3


def test_release_set_map_parent_calls_no_set_map():
    """vhost_vdpa_remove_as uses vhost_vdpa_iotlb_unmap directly: no set_map."""
    parent = SimLike()
    dev = opened(parent)
    dev.update(0, PAGE, 0)
    del parent.calls[:]
    dev.release()
    assert parent.calls == [("compat_reset", 1), ("reset_map", 0)]


def test_release_platform_unmaps_then_frees_domain():
    parent = PlatformParent()
    dev = opened(parent)
    dev.update(0, 2 * PAGE, 0)
    del parent.calls[:]
    dev.release()
    assert parent.calls == [("reset",), ("iommu_unmap", 0, 2 * PAGE),
                            ("iommu_domain_free",)]
    assert len(parent.device_iotlb(0)) == 0


def test_release_mid_batch_after_reset_and_reopen():
    """Release from a batch, after SET_STATUS(0); reopen gives a fresh file."""
    parent = SetMapParent()
    dev = opened(parent)
    dev.batch_begin()
    dev.update(0, PAGE, 0)
    dev.set_status(0)
    dev.release()
    assert not dev.in_batch and dev.pinned_pages == 0
    assert "set_map" not in parent.names()
    dev.open()
    assert dev.address_spaces == [] and not dev.has_owner
    assert err(dev.update, 0, PAGE, 0).errno == EPERM
    dev.set_owner()
    dev.update(0, PAGE, 0)


def test_release_ignores_reset_error():
    parent = DmaParent()
    dev = opened(parent)
    dev.update(0, PAGE, 0)
    parent.fail["reset"] = {2}
    dev.release()
    assert not dev.is_open and dev.pinned_pages == 0


def test_operations_on_released_device_ebadf():
    dev = opened()
    dev.release()
    for call in (lambda: dev.write(U(0, PAGE)), lambda: dev.update(0, PAGE, 0),
                 lambda: dev.invalidate(0, PAGE), dev.batch_begin, dev.release,
                 dev.set_owner, lambda: dev.set_status(0), dev.get_status,
                 dev.get_backend_features, lambda: dev.set_backend_features(0),
                 lambda: dev.set_group_asid(0, 0), lambda: dev.get_vring_group(0),
                 dev.suspend, dev.resume, lambda: dev.process(VhostMsg(5))):
        assert err(call).errno == EBADF


def test_context_manager_opens_and_releases():
    with Dev(DmaParent()) as dev:
        dev.set_owner()
        dev.update(0, PAGE, 0)
    assert not dev.is_open and dev.pinned_pages == 0


# =========================================================================== features
def test_get_backend_features_composition():
    """VHOST_GET_BACKEND_FEATURES: base | SUSPEND/RESUME/DESC_ASID by op presence |
    IOTLB_PERSIST by vhost_vdpa_has_persistent_map | parent's get_backend_features."""
    base = int(BF.IOTLB_MSG_V2 | BF.IOTLB_BATCH | ASID)
    assert opened(DmaParent()).get_backend_features() == base
    assert opened(SetMapParent()).get_backend_features() == base
    assert opened(PlatformParent()).get_backend_features() == base | PERSIST
    assert opened(SimLike()).get_backend_features() == base | PERSIST

    class Full(SetMapParent):
        def suspend(self): pass
        def resume(self): pass
        def get_vq_desc_group(self, vq): return 0
        def get_backend_features(self):
            return int(BF.ENABLE_AFTER_DRIVER_OK | BF.IOTLB_PERSIST)
    assert opened(Full()).get_backend_features() == 0x1FE


@pytest.mark.parametrize("mask,parent,eno", [
    (1 << 0, DmaParent, EOPNOTSUPP),                      # bit 0 unused
    (1 << 9, DmaParent, EOPNOTSUPP),                      # > 8 unknown
    (1 << 26, DmaParent, EOPNOTSUPP),                     # VHOST_F_LOG_ALL: virtio bit
    (int(BF.SUSPEND), DmaParent, EOPNOTSUPP),
    (int(BF.RESUME), DmaParent, EOPNOTSUPP),
    (int(BF.DESC_ASID), DmaParent, EINVAL),               # without IOTLB_ASID
    (int(BF.DESC_ASID) | ASID, DmaParent, EOPNOTSUPP),    # no get_vq_desc_group
    (PERSIST, DmaParent, EOPNOTSUPP),                     # no persistent map
    (PERSIST, SetMapParent, EOPNOTSUPP),
    ((1 << 9) | int(BF.DESC_ASID), DmaParent, EOPNOTSUPP),  # unknown checked first
    (int(BF.SUSPEND | BF.DESC_ASID), DmaParent, EOPNOTSUPP),  # suspend before desc
])
def test_set_backend_features_rules(mask, parent, eno):
    """VHOST_SET_BACKEND_FEATURES checks, in the kernel's order; a refused request
    leaves the acked set unchanged."""
    dev = opened(parent(), features=ASID)
    assert err(dev.set_backend_features, mask).errno == eno
    assert dev.backend_features == ASID


def test_set_backend_features_accepts_and_replaces():
    dev = opened(SimLike())
    dev.set_backend_features(int(BF.ENABLE_AFTER_DRIVER_OK))  # never checked
    dev.set_backend_features(ASID | PERSIST)
    assert dev.backend_features == ASID | PERSIST
    dev.set_backend_features(0)
    assert dev.backend_features == 0
    pdev = opened(PlatformParent(), owner=False)
    pdev.set_backend_features(PERSIST)  # no owner needed

    class Desc(DmaParent):
        def get_vq_desc_group(self, vq): return 0
    opened(Desc()).set_backend_features(int(BF.DESC_ASID) | ASID)

    class ParentPersist(DmaParent):
        def get_backend_features(self): return PERSIST
    opened(ParentPersist()).set_backend_features(PERSIST)


# =========================================================================== vring ioctls
def test_set_group_asid_errnos():
    """VHOST_VDPA_SET_GROUP_ASID: EPERM (vhost_dev_ioctl owner check) → ENOBUFS
    (index >= nvqs) → EINVAL (asid >= nas) → EOPNOTSUPP (no op) → parent's result."""
    parent = SimLike()
    dev = opened(parent, owner=False)
    assert err(dev.set_group_asid, 0, 0).errno == EPERM
    dev.set_owner()
    assert err(dev.set_group_asid, 3, 5).errno == ENOBUFS
    assert err(dev.set_group_asid, 1, 2).errno == EINVAL
    dev.set_group_asid(1, 1)
    assert parent.calls[-1] == ("set_group_asid", 1, 1)
    assert dev.address_spaces == []  # no AS created
    parent.fail["set_group_asid"] = {2}
    assert err(dev.set_group_asid, 1, 0).errno == ENOMEM
    dev2 = opened(DmaParent())
    assert err(dev2.set_group_asid, 1, 5).errno == EINVAL
    assert err(dev2.set_group_asid, 1, 1).errno == EOPNOTSUPP
    with pytest.raises(OverflowError):
        dev2.set_group_asid(2**32, 0)


def test_get_vring_group_errnos():
    """VHOST_VDPA_GET_VRING_GROUP: EPERM, ENOBUFS, EOPNOTSUPP, EIO (>= ngroups)."""
    class Bad(SimLike):
        def get_vq_group(self, vq):
            return 7
    dev = opened(SimLike(), owner=False)
    assert err(dev.get_vring_group, 0).errno == EPERM
    dev.set_owner()
    assert [dev.get_vring_group(i) for i in range(3)] == [0, 0, 1]
    assert err(dev.get_vring_group, 3).errno == ENOBUFS
    assert err(opened(DmaParent()).get_vring_group, 0).errno == EOPNOTSUPP
    assert err(opened(Bad()).get_vring_group, 0).errno == EIO
    d = opened(DmaParent())
    assert (d.get_as_num(), d.get_group_num(), d.get_vqs_count()) == (2, 2, 3)


def test_suspend_resume_without_ops():
    """vhost_vdpa_suspend/resume: the op check comes after the DRIVER_OK test."""
    dev = opened()
    dev.suspend()                          # DRIVER_OK clear: 0, the op is not looked at
    dev.resume()
    dev.set_status(VIRTIO_CONFIG_S_DRIVER_OK)
    assert err(dev.suspend).errno == EOPNOTSUPP
    assert err(dev.resume).errno == EOPNOTSUPP


# =========================================================================== VA mode
def test_va_map_entries_are_user_addresses_with_file_ctx():
    """vhost_vdpa_va_map: no page expansion, addr = uaddr, ctx = vdpa_map_file, no
    pins; unmap fputs."""
    parent = DmaParent(use_va=True)
    dev = opened(parent)
    dev.update(0x1800, 0x900, 0x7F0000001800)
    (m,) = dev.vhost_iotlb(0)
    assert (m.start, m.last, m.addr) == (0x1800, 0x20FF, 0x7F0000001800)
    assert m.ctx == MapFile(UserMemory.DEFAULT_FILE, 0x7F0000001800)
    assert dev.pinned_pages == 0 and dev.usermem.pinned_vm == 0
    assert parent.calls[-1] == ("dma_map", 0, 0x1800, 0x900, 0x7F0000001800, 3)
    dev.update(0x2100, 0x100, 0)  # byte-disjoint: fine in VA mode
    assert dev.usermem.file_refs(dev)[UserMemory.DEFAULT_FILE] == 2
    dev.invalidate(0, 0x3000)
    assert dev.usermem.file_refs(dev) == Counter()


def test_va_map_skips_non_shared_file_vmas():
    """vhost_vdpa_va_map: only file-backed VM_SHARED non-IO VMAs are mapped; others
    are skipped silently (the UPDATE succeeds with a hole)."""
    mem = UserMemory(strict=True)
    mem.map_file(0x10000, 0x2000, "ram", offset=0x100000)
    mem.map_anon(0x12000, 0x1000)
    mem.map_file(0x13000, 0x1000, "priv", shared=False)
    mem.map_io(0x14000, 0x1000)
    mem.map_anon(0x15000, 0x1000, shared=True)     # shmem-backed: has a vm_file
    dev = opened(DmaParent(use_va=True), usermem=mem)
    dev.update(0x1000, 0x6000, 0x10000)
    got = [(m.start, m.last, m.addr, m.ctx) for m in dev.vhost_iotlb(0)]
    assert got == [(0x1000, 0x2FFF, 0x10000, MapFile("ram", 0x100000)),
                   (0x6000, 0x6FFF, 0x15000, MapFile("shmem:anon@0x15000", 0))]


def test_va_map_no_vma_einval_rolls_back():
    """vhost_vdpa_va_map: find_vma NULL → EINVAL; pieces mapped so far are unmapped
    (vhost_vdpa_unmap(iova, map_iova - iova)) and their file refs dropped."""
    mem = UserMemory(strict=True)
    mem.map_file(0x10000, 0x2000, "ram")
    parent = DmaParent(use_va=True)
    dev = opened(parent, usermem=mem)
    dev.update(0x100000, 0x1000, 0x10000)           # unrelated entry stays
    assert err(dev.update, 0x1000, 0x3000, 0x11000).errno == EINVAL
    assert entries(dev) == [(0x100000, 0x100FFF, 0x10000, 3)]
    assert parent.calls[-1] == ("dma_unmap", 0, 0x1000, 0x1000)
    assert mem.file_refs(dev) == Counter({"ram": 1})


def test_va_map_find_vma_gap_semantics():
    """find_vma returns the next VMA above a gap; va_map maps gap + VMA as one piece
    with offset = pgoff + uaddr - vm_start in u64 (wraps)."""
    mem = UserMemory(strict=True)
    mem.map_file(0x20000, 0x1000, "ram")
    dev = opened(DmaParent(use_va=True), usermem=mem)
    dev.update(0, 0x2000, 0x1F000)
    (m,) = dev.vhost_iotlb(0)
    assert (m.start, m.last) == (0, 0x1FFF)
    assert m.ctx == MapFile("ram", (0x1F000 - 0x20000) & U64_MAX)


def test_va_map_first_piece_failure_at_iova_0_wipes_the_as():
    """vhost_vdpa_va_map error path at iova 0 with nothing mapped yet:
    vhost_vdpa_unmap(v, iotlb, 0, 0) → last = 0 - 1 = ~0 → every entry of the AS is
    removed (kernel behaviour, kept)."""
    parent = DmaParent(use_va=True)
    dev = opened(parent)
    dev.update(0x10000, PAGE, 0x10000)
    dev.update(0x20000, PAGE, 0x20000)
    parent.fail["dma_map"] = {3}
    assert err(dev.update, 0, PAGE, 0).errno == ENOMEM
    assert entries(dev) == [] and dev.usermem.file_refs(dev) == Counter()
    # at any other iova the wrapped query [iova, iova-1] matches nothing
    dev.update(0x10000, PAGE, 0x10000)
    parent.fail["dma_map"] = {5}
    assert err(dev.update, 0x30000, PAGE, 0x30000).errno == ENOMEM
    assert entries(dev) == [(0x10000, 0x10FFF, 0x10000, 3)]


def test_va_release_drops_file_refs():
    dev = opened(SimLike(use_va=True))
    dev.update(0, 0x10000, 0x10000)
    dev.release()
    assert dev.usermem.file_refs() == Counter()


# =========================================================================== misc
def test_argument_validation_is_programming_error():
    dev = opened()
    with pytest.raises(OverflowError):
        dev.update(-1, PAGE, 0)
    with pytest.raises(TypeError):
        dev.update("0", PAGE, 0)
    with pytest.raises(OverflowError):
        dev.update(0, PAGE, 0, perm=256)
    with pytest.raises(OverflowError):
        dev.update(0, PAGE, 0, asid=2**32)
    with pytest.raises(OverflowError):
        dev.set_status(256)
    assert dev.address_spaces == []


def test_engine_is_the_selected_one():
    dev = opened()
    dev.update(0, PAGE, 0)
    assert type(dev.vhost_iotlb(0)) is iotlb.IOTLB


def test_qemu_like_boot_stop_start():
    """QEMU: negotiate, SET_OWNER, batch of UPDATEs, DRIVER_OK; stop = SET_STATUS(0) +
    INVALIDATE-all batch; start = UPDATE-all batch."""
    parent = SimLike()
    dev = Dev(parent, memlock_pages=1 << 20)
    dev.open()
    feats = dev.get_backend_features() & int(BF.IOTLB_MSG_V2 | BF.IOTLB_BATCH | ASID
                                              | BF.SUSPEND)
    dev.set_backend_features(feats)
    dev.set_owner()
    sections = [(0, 0xA0000), (0x100000, 0x7FF00000), (0x100000000, 0x80000000)]
    hva = 0x7F0000000000
    dev.write(encode(VHOST_IOTLB_BATCH_BEGIN))
    for gpa, size in sections:
        dev.write(U(gpa, size, hva + gpa))
    dev.write(encode(VHOST_IOTLB_BATCH_END))
    dev.set_status(1 | 2 | 8 | 4)
    assert parent.names().count("set_map") == 1
    pages = sum(s for _, s in sections) // PAGE
    assert dev.pinned_pages == pages
    dev.set_status(0)
    dev.set_status(3)
    dev.write(encode(VHOST_IOTLB_BATCH_BEGIN))
    for gpa, size in sections:
        dev.write(I(gpa, size))
    dev.write(encode(VHOST_IOTLB_BATCH_END))
    assert dev.pinned_pages == 0 and parent.device_iotlb(0) == IOTLB()
    assert dev.dirtied_pages == pages


# =========================================================================== fast path
def _script(dev):
    """A fixed stream touching every branch of write()'s inline fast path."""
    out = []

    def w(data):
        try:
            out.append(dev.write(data))
        except IOTLBError as e:
            out.append((e.errno, getattr(e.__cause__, "errno", None)))
    w(U(0x1000, PAGE, 0x10000))
    w(U(0x1800, 0x100, 0x10000))               # EEXIST → declined → reference path
    w(U(0x3ff0, 0x20, 0x20ff0, perm=2))        # two pages, WO
    w(U(0x10000, 0x3000, 0x30000, perm=1))
    w(I(0x10800, 0x10))                       # hits one entry, partial range
    w(I(0x0, 0x5000))                         # hits several entries
    w(I(0x100000, PAGE))                      # hits nothing
    w(I(0x2000, U64_MAX))                     # u64 wrap → reference path
    w(encode(VHOST_IOTLB_BATCH_BEGIN))
    w(U(0x40000, 0x8000, 0x40000))
    w(U(0x50000, PAGE, 0x50000, asid=1))      # asid ignored (not acked) → asid 0
    w(encode(VHOST_IOTLB_BATCH_END))
    op = next(name for cls, name in ((DmaParent, "dma_map"), (SetMapParent, "set_map"),
                                     (PlatformParent, "iommu_map"))
              if isinstance(dev.backend, cls))
    dev.backend.fail[op] = {dev.backend.counts[op] + 1}
    w(U(0x60000, PAGE, 0x60000))              # device failure → rollback
    w(U(0, PAGE, 0))                          # iova 0
    w(I(0, 0x100000))
    return out


@pytest.mark.parametrize("cls", [DmaParent, SetMapParent, PlatformParent])
@pytest.mark.parametrize("use_va", [False, True])
def test_write_fast_path_matches_reference_handler(cls, use_va):
    """write()'s inline common case gives exactly what the reference path
    (vhost_chr_write_iter → vhost_vdpa_process_iotlb_msg) gives: results, entries,
    pins, parent calls."""
    runs = []
    for fast in (True, False):
        dev = opened(cls(use_va=use_va))
        dev._fast = fast
        out = _script(dev)
        runs.append((out, {a: entries(dev, a) for a in dev.address_spaces},
                     dev.usermem.pins(dev), dev.usermem.file_refs(dev),
                     dev.usermem.dirtied_pages, dev.backend.calls))
    assert runs[0] == runs[1]


_MAP_OPS = frozenset(("set_map", "dma_map", "dma_unmap", "iommu_map", "iommu_unmap"))


@pytest.mark.parametrize("cls", [DmaParent, SetMapParent, PlatformParent])
def test_write_fast_path_looks_ops_up_as_the_reference(cls):
    """The fast path asks the parent for its mapping ops (``ops->set_map`` ...)
    exactly as often as the reference path: a parent whose op is computed on each
    lookup (a property, ``__getattr__``) sees the same sequence either way."""
    class Counting(cls):
        def __getattribute__(self, name):
            if name in _MAP_OPS:
                object.__getattribute__(self, "lookups").append(name)
            return object.__getattribute__(self, name)

    runs = []
    for fast in (True, False):
        parent = Counting()
        parent.lookups = []
        dev = opened(parent)
        dev._fast = fast
        _script(dev)
        runs.append(parent.lookups)
    assert runs[0] == runs[1] and runs[0]


def _tagged(fn, tag, parent):
    # a function that records ("via", tag) in the parent's calls, then calls fn
    def op(*args):
        parent.calls.append(("via", tag))
        return fn(*args)
    return op


class _CallableOp:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def _shape_ops(parent, how):
    """``parent`` with its mapping ops provided as ``how`` says: a function in the
    instance (shadowing the class's), a callable object in the instance, a property
    or a staticmethod of a subclass; each records ("via", how) before the call."""
    ops = [n for n in sorted(_MAP_OPS) if callable(getattr(type(parent), n, None))]
    if how in ("instance", "callable"):
        for n in ops:
            op = _tagged(getattr(parent, n), how, parent)
            setattr(parent, n, op if how == "instance" else _CallableOp(op))
        return parent
    shaped = type("Shaped", (type(parent),), {})
    new = shaped.__new__(shaped)
    new.__dict__.update(parent.__dict__)
    for n in ops:
        fn = getattr(type(parent), n)
        setattr(shaped, n, property(lambda self, fn=fn: _tagged(fn.__get__(self), how, self))
                if how == "property" else staticmethod(_tagged(fn.__get__(new), how, new)))
    return new


@pytest.mark.parametrize("cls", [DmaParent, SetMapParent, PlatformParent])
@pytest.mark.parametrize("how", ["class", "instance", "callable", "property",
                                 "staticmethod"])
def test_write_fast_path_calls_ops_however_they_are_provided(cls, how):
    """The fast path calls a parent's op without making a bound method when the op
    is a method of the parent's class (iotlb_getop, CPython's LOAD_METHOD); an op
    that is an instance attribute shadowing it, a callable object, a property or a
    staticmethod is found and called exactly as the reference path's getattr finds
    and calls it: the same calls, results and state."""
    runs = []
    for fast in (True, False):
        parent = cls()
        if how != "class":
            parent = _shape_ops(parent, how)
        dev = opened(parent)
        dev._fast = fast
        out = _script(dev)
        runs.append((out, {a: entries(dev, a) for a in dev.address_spaces},
                     dev.usermem.pins(dev), parent.calls))
    assert runs[0] == runs[1] and runs[0][3]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "array-Q",
                                  "strided"])
@pytest.mark.parametrize("use_va", [False, True])
def test_write_many_matches_one_write_per_record(kind, use_va):
    """write_many = vhost_chr_write_iter once per 72-byte record, whatever buffer
    holds them: the same results, books and parent calls as the reference path,
    up to the first failure (its record number in ``index``), then nothing more."""
    import array
    blob = b"".join([U(i * PAGE, PAGE, 0x100000 + i * PAGE, perm=1 + i % 3)
                     for i in range(1, 40)] + [I(5 * PAGE, 1), I(0, 8 * PAGE),
                    encode(VHOST_IOTLB_BATCH_BEGIN), U(0x80000, 4 * PAGE),
                    encode(VHOST_IOTLB_BATCH_END), U(20 * PAGE, PAGE),   # EEXIST
                    U(0x90000, PAGE)])
    wrap = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview,
            "array-Q": lambda b: array.array("Q", b),
            "strided": lambda b: memoryview(bytes(x for c in b for x in (c, 0)))[::2]}
    runs = []
    for fast in (True, False):
        dev = opened(SetMapParent(use_va=use_va) if use_va else DmaParent())
        dev._fast = fast
        with pytest.raises(IOTLBError) as ei:
            dev.write_many(wrap[kind](blob))
        runs.append((ei.value.index, ei.value.errno, entries(dev),
                     dev.usermem.pins(dev), dev.usermem.file_refs(dev), dev.backend.calls))
    assert runs[0] == runs[1]
    assert runs[0][:2] == (39 + 2 + 3, EFAULT)
    dev.write_many(wrap[kind](blob[-72:]) if kind != "strided" else blob[-72:])
    assert dev.write_many(b"") == 0
    with pytest.raises(IOTLBError) as ei:
        dev.write_many(U(0xa0000, PAGE) + U(0xb0000, PAGE)[:39])   # short write
    assert (ei.value.index, ei.value.errno) == (1, EINVAL)


@pytest.mark.parametrize("bad", [2**63, 2**64 - 1, -1, 1.5])
def test_memlock_pages_is_a_page_count_of_the_address_space(bad):
    """RLIMIT_MEMLOCK >> PAGE_SHIFT: at most (2**64-1) >> page_shift, so pinned_vm
    (atomic64_t) cannot pass 2**63-1; anything else is refused up front."""
    with pytest.raises((OverflowError, TypeError)):
        UserMemory(2, memlock_pages=bad)
    mem = UserMemory(2, memlock_pages=5)
    with pytest.raises((OverflowError, TypeError)):
        mem.memlock_pages = bad
    assert mem.memlock_pages == 5
    with pytest.raises(ValueError):
        UserMemory(1)                          # no page shift, no page count limit


def test_huge_runs_keep_exact_books_fast_or_not():
    """2-byte pages: runs of 2**62 pages.  vhost_vdpa_pa_map's RLIMIT_MEMLOCK check
    (RLIM_INFINITY >> PAGE_SHIFT = 2**63-1 pages) refuses the second half of the
    space with ENOMEM; dirtied_pages only grows and never wraps."""
    runs = []
    for fast in (True, False):
        dev = opened(DmaParent(), usermem=UserMemory(2), page_size=2)
        dev._fast = fast
        out = []
        for msg in (U(0, 1 << 63, 0), U(1 << 63, (1 << 63) - 1, 1 << 63),
                    I(0, 1 << 63), U(0, 1 << 63, 0), I(0, 1 << 63), I(0, 1 << 63)):
            try:
                out.append(dev.write(msg))
            except IOTLBError as e:
                out.append((e.errno, e.__cause__.errno))
        dev.check_invariants()
        runs.append((out, dev.usermem.pinned_vm, dev.usermem.dirtied_pages,
                     dev.pinned_pages))
    assert runs[0] == runs[1]
    assert runs[0] == ([72, (EFAULT, ENOMEM), 72, 72, 72, 72], 0, 2**63, 0)


def test_va_file_records_are_collected_in_cycles():
    """A vdpa_map_file record (MapFile) whose file is an arbitrary object stays under
    the cycle collector: a file that refers back to the device does not leak.  With
    the default (str) file the record cannot be in a cycle, and the compiled path
    leaves it out of the collector's traversals, as CPython does with plain tuples."""
    import gc
    import weakref

    class File:
        pass

    dev = opened(DmaParent(use_va=True))
    dev.write(U(0x1000, PAGE, 0x7F0000001000))   # creates AS 0: the reference path
    dev.write(U(0x3000, PAGE, 0x7F0000003000))   # the common case
    plain = dev.vhost_iotlb(0).first(0x3000, 0x3000).ctx
    assert plain.file == UserMemory.DEFAULT_FILE
    if iotlb.IMPLEMENTATION == "cython":
        assert not gc.is_tracked(plain)
    f = File()
    f.dev = dev                               # the cycle: dev -> IOTLB -> ctx -> f -> dev
    dev.usermem.DEFAULT_FILE = f
    dev.write(U(0x2000, PAGE, 0x7F0000002000))
    ctx = dev.vhost_iotlb(0).first(0x2000, 0x2000).ctx
    assert ctx.file is f and gc.is_tracked(ctx)
    dev.check_invariants()
    gone = weakref.ref(f)
    del f, ctx, dev, plain
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("page", [2, 4, 8])
def test_pa_map_non_contiguous_with_tiny_pages(page):
    """vhost_vdpa_pa_map's pin_user_pages batch is PAGE_SIZE / sizeof(struct page *)
    pages; with pages smaller than a pointer it is still one page, never zero."""
    mem = UserMemory(page)
    mem.place(2 * page, page, 0x100 * page)          # one page elsewhere
    dev = opened(DmaParent(), usermem=mem, page_size=page)
    dev.write(U(0, 4 * page, 0))
    assert entries(dev) == [(0, 2 * page - 1, 0, 3), (2 * page, 3 * page - 1, 0x100 * page, 3),
                            (3 * page, 4 * page - 1, 3 * page, 3)]
    assert dev.pinned_pages == 4
    mem.strict = True                               # pages 2.. of 0x1000 page are unmapped
    mem.map_anon(0x1000 * page, 2 * page)
    e = err(dev.write, U(0x40000 * page, 4 * page, 0x1000 * page))
    assert (e.errno, e.__cause__.errno) == (EFAULT, EFAULT)
    assert dev.pinned_pages == 4 and len(entries(dev)) == 3
    dev.check_invariants()


class _ReleasingParent(Parent):
    """A parent whose op closes the device from inside the callback (hot unplug):
    the address space the message works on is gone before the op returns."""

    def __init__(self, op, **kw):
        super().__init__(nas=1, ngroups=1, **kw)
        self.op = op
        self.vdev = None

    def dma_map(self, asid, iova, size, pa, perm, opaque):
        self._call("dma_map", asid, iova, size, pa, perm)
        if self.op == "dma_map":
            self.vdev.release()
            raise IOTLBError(EIO, "device gone")

    def dma_unmap(self, asid, iova, size):
        self._call("dma_unmap", asid, iova, size)
        if self.op == "dma_unmap":
            try:
                self.vdev.release()
            except AssertionError:
                pass


@pytest.mark.parametrize("op", ["dma_map", "dma_unmap"])
@pytest.mark.parametrize("use_va", [False, True])
def test_write_when_the_parent_releases_the_device_in_its_op(op, use_va):
    """The message keeps the vhost IOTLB it works on alive (the kernel holds
    v->mutex; the model holds a reference): releasing the device from inside a
    parent op gives the reference path's result and never touches freed memory."""
    runs = []
    for fast in (True, False):
        parent = _ReleasingParent(op, use_va=use_va)
        dev = VhostVdpa(parent)
        parent.vdev = dev
        dev._fast = fast
        dev.open()
        dev.set_owner()
        dev.write(encode(VHOST_IOTLB_BATCH_BEGIN))     # creates AS 0
        dev.write(encode(VHOST_IOTLB_BATCH_END))
        out = []
        for msg in ((U(0x1000, PAGE, 0x1000),) if op == "dma_map" else
                    (U(0x1000, PAGE, 0x1000), I(0x1000, PAGE))):
            try:
                out.append(dev.write(msg))
            except (IOTLBError, AssertionError) as e:
                out.append((type(e).__name__, getattr(e, "errno", None)))
        runs.append((out, dev.is_open, dev.address_spaces, parent.calls))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("shape", ["absent", "none", "platform-none"])
@pytest.mark.parametrize("use_va", [False, True])
def test_invalidate_binds_the_unmap_op_before_changing_anything(shape, use_va):
    """vhost_vdpa_iotlb_unmap: an absent dma_unmap/iommu_unmap fails before any
    unpin or fput; one set to None is simply not called (a NULL op)."""
    class P:
        nas = ngroups = nvqs = 1

        def __init__(self):
            self.use_va = use_va

        def reset(self):
            pass

    if shape == "platform-none":
        P.iommu_map = lambda self, *a: None
        P.iommu_unmap = None
    else:
        P.dma_map = lambda self, *a: None
        if shape == "none":
            P.dma_unmap = None
    runs = []
    for fast in (True, False):
        dev = VhostVdpa(P())
        dev._fast = fast
        dev.open()
        dev.set_owner()
        out = []
        for msg in (U(0x1000, PAGE, 0x1000), U(0x3000, PAGE, 0x3000), I(0x3000, PAGE)):
            try:
                out.append(dev.write(msg))
            except Exception as e:
                out.append(type(e).__name__)
        runs.append((out, entries(dev), dev.usermem.pins(dev), dev.usermem.file_refs(dev),
                     dev.usermem.pinned_vm, dev.usermem.dirtied_pages))
    assert runs[0] == runs[1]
    if shape == "absent":
        assert runs[0][0][2] == "AttributeError" and len(runs[0][1]) == 2


def test_va_default_file_none_is_skipped_like_a_file_less_vma():
    """vhost_vdpa_va_map maps only VMAs with a file: with the implicit mapping's
    file set to None an UPDATE maps nothing and calls nothing, fast or not."""
    runs = []
    for fast in (True, False):
        parent = DmaParent(use_va=True)
        dev = opened(parent)
        dev._fast = fast
        dev.write(U(0x1000, PAGE, 0x1000))
        dev.usermem.DEFAULT_FILE = None
        dev.write(U(0x3000, PAGE, 0x3000))
        runs.append((entries(dev), dev.usermem.file_refs(dev), parent.calls))
    assert runs[0] == runs[1] and len(runs[0][0]) == 1


def test_invalidate_of_a_sub_page_va_entry_after_use_va_is_switched_off():
    """An entry mapped in VA mode (any size) met by PA-mode unmapping: the fast
    path leaves it to the reference path, whose error it then is."""
    runs = []
    for fast in (True, False):
        parent = DmaParent()
        dev = opened(parent)
        dev._fast = fast
        dev.write(U(0x10000, PAGE, 0x10000))
        parent.use_va = True
        dev.write(U(0x1000, 0x10, 0x1000))
        parent.use_va = False
        try:
            out = dev.write(I(0x1000, 0x10))
        except Exception as e:
            out = type(e).__name__
        runs.append((out, entries(dev), dev.usermem.pins(dev)))
    assert runs[0] == runs[1]


class _CountingDev(VhostVdpa):
    """Counts the messages write() hands to the reference path."""

    declined = 0

    def _write(self, data):
        self.declined += 1
        return super()._write(data)


@pytest.mark.skipif(iotlb.IMPLEMENTATION != "cython",
                    reason="the twin's write() is the reference path")
@pytest.mark.parametrize("cls", [DmaParent, SetMapParent, PlatformParent])
@pytest.mark.parametrize("use_va", [False, True])
def test_write_fast_path_takes_the_common_messages(cls, use_va):
    """The compiled write() handles a running guest's UPDATE (one entry) and
    INVALIDATE (one entry, or none) itself, and declines what it does not model."""
    dev = _CountingDev(cls(use_va=use_va))
    dev.open()
    dev.set_owner()
    dev.write(U(0x1000, PAGE, 0x10000))       # creates AS 0: the reference path
    assert dev.declined == 1
    for i in range(2, 50):
        dev.write(U(i * PAGE, PAGE, 0x10000 + i * PAGE, perm=1 + i % 3))
    for i in range(2, 50, 2):
        dev.write(I(i * PAGE + 8, 16))         # inside one entry
    dev.write(I(0x800000, PAGE))               # no entry
    assert dev.declined == 1
    dev.write(I(0, 0x10000))                   # several entries
    assert dev.declined == 2
    with pytest.raises(IOTLBError):
        dev.write(U(0x11000, PAGE))            # EEXIST
    assert dev.declined == 3
    assert entries(dev) == [(i * PAGE, i * PAGE + PAGE - 1, 0x10000 + i * PAGE,
                             1 + i % 3) for i in range(17, 50, 2)]
    dev.check_invariants()


class _MeddlingParent(DmaParent):
    """A parent whose dma_unmap also maps into the vhost IOTLB it is told about --
    the tree changes under the fast path's feet."""

    vdev = None

    def dma_unmap(self, asid, iova, size):
        super().dma_unmap(asid, iova, size)
        t = self.vdev.vhost_iotlb(asid)
        if iova == 0x2000:
            t.map(0x2080, 0x20ff, 0, 3)       # inside the range being invalidated
            t.map(0x9000, 0x9fff, 0, 3)       # elsewhere


def test_write_fast_path_when_the_parent_changes_the_tree():
    """vhost_vdpa_iotlb_unmap removes what overlaps at the end
    (vhost_iotlb_del_range): the fast path re-checks the tree after the parent's
    dma_unmap and gives what the reference path gives."""
    runs = []
    for fast in (True, False):
        parent = _MeddlingParent()
        dev = VhostVdpa(parent)
        parent.vdev = dev
        dev._fast = fast
        dev.open()
        dev.set_owner()
        dev.write(U(0x1000, PAGE))
        dev.write(U(0x2000, PAGE))
        dev.write(I(0x2000, 0x100))
        runs.append((entries(dev), dev.usermem.pins(dev), dev.pinned_pages,
                     parent.calls))
    assert runs[0] == runs[1]
    assert runs[0][0] == [(0x1000, 0x1fff, 0x1000, 3), (0x9000, 0x9fff, 0, 3)]


@pytest.mark.parametrize("memlock", [None, 0, 3, 4, 5])
@pytest.mark.parametrize("record_dirty", [False, True])
def test_write_fast_path_memlock_and_dirty_books(memlock, record_dirty):
    """vhost_vdpa_pa_map's RLIMIT_MEMLOCK check at and around the limit, and the
    dirtying of writable runs on unpin (set_page_dirty_lock), fast or not."""
    runs = []
    for fast in (True, False):
        mem = UserMemory(memlock_pages=memlock, record_dirty=record_dirty)
        dev = opened(DmaParent(), usermem=mem)
        dev._fast = fast
        out = []
        for msg in (U(0x1000, PAGE), U(0x3000, 2 * PAGE, perm=2), U(0x8000, PAGE, perm=1),
                    I(0x3000, 1), U(0x10000, 3 * PAGE), I(0x1000, PAGE), I(0x10000, 1)):
            try:
                out.append(dev.write(msg))
            except IOTLBError as e:
                out.append((e.errno, e.__cause__.errno))
        dev.check_invariants()
        runs.append((out, entries(dev), mem.pins(dev), mem.pinned_vm,
                     mem.dirtied_pages, dict(mem.dirtied)))
    assert runs[0] == runs[1]
    if memlock == 3:
        assert runs[0][0][4] == (EFAULT, ENOMEM)


# =========================================================================== usermem
def test_usermem_placement_carving_and_runs():
    mem = UserMemory()
    mem.place(0x10000, 0x4000, 0x100000)       # upfn 16..19 → pfn 256..259
    mem.place(0x11000, 0x1000, 0x900000)       # carve upfn 17 out
    assert [mem.pfn(0x10000 + i * PAGE) for i in range(5)] == [256, 0x900, 258, 259, 20]
    runs, n = mem.runs(16, 5)
    assert n == 5 and runs == [(0, 256, 1), (1, 0x900, 1), (2, 258, 2), (4, 20, 1)]
    mem.place(0x11000, 0x1000, 0x101000)       # put it back: one run again
    assert mem.runs(16, 4) == ([(0, 256, 4)], 4)
    with pytest.raises(ValueError):
        mem.place(0x10001, PAGE, 0)


def test_usermem_runs_wrap_at_2_64():
    """The kernel's unsigned long cursor wraps: pages past 2**64 are page 0.."""
    mem = UserMemory()
    top = (1 << 52) - 1
    assert mem.runs(top, 3) == ([(0, top, 1), (1, 0, 2)], 3)


def test_usermem_pin_counts_on_ranges_without_page_objects():
    """Per-page pin counts as ranges; a 1 TiB run is one ledger key."""
    mem = UserMemory()
    mem.pin("a", 0, 1 << 28, True)             # 1 TiB of 4 KiB pages
    mem.pin("b", 1 << 27, 16, False)
    assert mem.pinned_vm == (1 << 28) + 16
    assert mem.pin_counts((1 << 27) - 1, 18) == [((1 << 27) - 1, 1, 1),
                                                 (1 << 27, 16, 2),
                                                 ((1 << 27) + 16, 1, 1)]
    mem.unpin("a", 0, 1 << 28, True)
    assert mem.dirtied_pages == 1 << 28 and mem.pinned_pages("a") == 0
    with pytest.raises(AssertionError):
        mem.unpin("a", 0, 1, False)
    mem.check()


def test_usermem_find_vma_and_strict_toggle():
    mem = UserMemory()
    mem.map_anon(0x10000, 0x2000)
    assert mem.find_vma(0x10800).kind == "anon"
    v = mem.find_vma(0x5000)                   # gap: the implicit shared mapping
    assert (v.start, v.end, v.kind) == (0, 0x10000, "shared-file")
    mem.strict = True
    assert mem.find_vma(0x5000).start == 0x10000 and mem.find_vma(0x12000) is None
    mem.munmap(0x10000, 0x1000)
    assert [(x.start, x.end) for x in mem.vmas()] == [(0x11000, 0x12000)]
    f = mem.map_file(0x20000, 0x3000, "img", offset=0x5000)
    mem.munmap(0x21000, 0x1000)
    assert [(x.start, x.pgoff) for x in mem.vmas()][-2:] == [(0x20000, 5), (0x22000, 7)]
    assert f.va_mappable and not mem.find_vma(0x11000).va_mappable


@pytest.mark.parametrize("boundary,leaked", [(600, 424), (300, 0)])
def test_pa_map_short_pin_after_mapped_run_kernel_leak_rule(boundary, leaked):
    """vhost_vdpa_pa_map, pin_user_pages failing on the batch at page 1024 (only
    1030 pages mapped, strict memory): run 0 was mapped at ``boundary``.  If that
    happened in the previous batch (512..1023) ``nchunks`` is 0 and the pages of the
    unfinished run stay pinned (424 = 1024 - 600); otherwise they are unpinned."""
    mem = UserMemory(strict=True)
    base = 0x10000000
    mem.map_anon(base, 1030 * PAGE)
    mem.place(base + boundary * PAGE, (1030 - boundary) * PAGE, 0x80000000)
    parent = DmaParent()
    dev = opened(parent, usermem=mem)
    e = err(dev.update, 0, 1100 * PAGE, base)
    assert e.errno == ENOMEM  # 6 of 76 pages pinned in the failing batch
    assert [c[0] for c in parent.calls if c[0].startswith("dma")] == ["dma_map",
                                                                      "dma_unmap"]
    assert entries(dev) == [] and mem.pinned_vm == 0
    assert dev.leaked_pages == leaked
    if leaked:
        assert mem.leaked(dev) == Counter({(0x80000, 424, True): 1})


def test_pa_map_fault_on_batch_start_is_efault():
    """pin_user_pages returning -EFAULT (first page of the batch unmapped) is passed
    through; a short pin is -ENOMEM."""
    mem = UserMemory(strict=True)
    mem.map_anon(0, 1024 * PAGE)
    dev = opened(usermem=mem)
    assert err(dev.update, 0, 1100 * PAGE, 0).errno == EFAULT
    assert err(dev.update, 0, 1025 * PAGE, PAGE).errno == ENOMEM
    assert mem.pinned_pages() == 0 and entries(dev) == []
