"""A Hypothesis state machine driving VhostVdpa with random message streams.

Valid and garbage writes, random ASIDs, batch begin/end, SET_STATUS, feature
negotiation, injected parent failures, release/reopen.  After every step
``check_invariants()`` (kernel-semantics §5.4) must hold, and a failed write must
have changed nothing observable in the vhost layer except what the kernel itself
changes on that path:

* UPDATE/BATCH_BEGIN create their AS before any check that can fail
  (``vhost_vdpa_find_alloc_as``);
* a failed PA UPDATE may leave a run pinned (``vhost_vdpa_pa_map``'s ``nchunks``
  error path; tracked as ``leaked_pages``) and dirties writable runs it unmaps;
* a failed VA UPDATE at iova 0 whose first piece failed empties the AS
  (``vhost_vdpa_unmap(v, iotlb, 0, 0)`` wraps to ``[0, ~0]``).

Every step also runs on a twin device with the inline ``write()`` fast path
disabled (``_fast = False``): results, vhost state and the parent's call log must be
identical.
"""
import errno
from collections import Counter, defaultdict

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

import iotlb
from iotlb import IOTLB, IOTLBError
from iotlb.usermem import UserMemory
from iotlb.vdpa import VhostVdpa
from iotlb.wire import (VHOST_IOTLB_BATCH_BEGIN, VHOST_IOTLB_BATCH_END,
                        VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_UPDATE, VhostMsg, encode)

PAGE = 4096


class _Parent:
    def __init__(self, nas, use_va):
        self.nas, self.ngroups, self.nvqs, self.use_va = nas, 2, 3, use_va
        self.status = 0
        self.counts = Counter()
        self.fail = {}
        self.dev = defaultdict(IOTLB)
        self.log = []

    def _call(self, name, *args):
        self.log.append((name,) + args)
        self.counts[name] += 1
        if self.counts[name] in self.fail.get(name, ()):
            raise IOTLBError(errno.ENOMEM, f"injected {name} failure")

    def reset(self):
        self._call("reset")
        self.status = 0

    def get_status(self):
        return self.status

    def set_status(self, s):
        self.status = s

    def set_group_asid(self, group, asid):
        self._call("set_group_asid")


class _Dma(_Parent):
    def dma_map(self, asid, iova, size, pa, perm, opaque):
        self._call("dma_map", asid, iova, size, pa, perm, opaque)
        self.dev[asid].map(iova, iova + size - 1, pa, perm)

    def dma_unmap(self, asid, iova, size):
        self._call("dma_unmap", asid, iova, size)
        self.dev[asid].unmap(iova, iova + size - 1)


class _SetMap(_Parent):
    def set_map(self, asid, iotlb):
        self._call("set_map", asid, tuple(iotlb))
        self.dev[asid] = iotlb.copy()


class _Sim(_SetMap):
    def compat_reset(self, flags):
        self._call("reset")
        self.status = 0

    def reset_map(self, asid):
        self.dev[asid] = IOTLB()


class _Platform(_Parent):
    def __init__(self, nas, use_va):
        super().__init__(1, use_va)
        self.ngroups = 1

    def iommu_map(self, iova, size, pa, perm):
        self._call("iommu_map", iova, size, pa, perm)
        self.dev[0].map(iova, iova + size - 1, pa, perm)

    def iommu_unmap(self, iova, size):
        self._call("iommu_unmap", iova, size)
        self.dev[0].unmap(iova, iova + size - 1)


_KINDS = {"dma": (_Dma, "dma_map"), "setmap": (_SetMap, "set_map"),
          "sim": (_Sim, "set_map"), "platform": (_Platform, "iommu_map")}

asids = st.integers(0, 3)
pages = st.integers(0, 40)
offsets = st.sampled_from([0, 0, 0, 1, 0x800, 0xFFF])
sizes = st.one_of(st.integers(1, 6).map(lambda n: n * PAGE),
                  st.sampled_from([1, 0x800, 0x1001, 0, 2**64 - 1, 2**63]))


def snapshot(dev):
    mem = dev.usermem
    return dict(
        open=dev.is_open, owner=dev.has_owner, features=dev.backend_features,
        in_batch=dev.in_batch, batch_asid=dev.batch_asid if dev.in_batch else None,
        ases={a: tuple(dev.vhost_iotlb(a)) for a in dev.address_spaces},
        pinned=dev.pinned_pages, pinned_vm=mem.pinned_vm, pins=mem.pins(dev),
        files=mem.file_refs(dev), leaked=dev.leaked_pages)


class DeviceMachine(RuleBasedStateMachine):
    @initialize(kind=st.sampled_from(sorted(_KINDS)), use_va=st.booleans(),
                memlock=st.sampled_from([None, None, 24]), frag=st.booleans(),
                strict=st.booleans(), kernel=st.sampled_from(iotlb.KERNELS),
                max_entries=st.sampled_from([2048, 2048, 4, 1, 0]))
    def setup(self, kind, use_va, memlock, frag, strict, kernel, max_entries):
        cls, self.map_op = _KINDS[kind]
        self.use_va = use_va
        devs = []
        for fast in (True, False):
            mem = UserMemory(memlock_pages=memlock, strict=strict and use_va)
            if frag:  # every third page of the uaddr pool lives elsewhere
                for i in range(0, 48, 3):
                    mem.place(0x100000 + i * PAGE, PAGE, 0x40000000 + 8 * i * PAGE)
            if strict and use_va:
                mem.map_file(0x100000, 0x10000, "ram")
                mem.map_anon(0x110000, 0x8000)
                mem.map_file(0x118000, 0x8000, "ram2", shared=False)
                mem.map_file(0x120000, 0x10000, "ram3", offset=0x1000000)
            # max_iotlb_entries small enough to hit vhost_iotlb_add_range_ctx's ENOSPC
            # (and 0: vhost_vdpa_alloc_as fails) on both paths
            dev = VhostVdpa(cls(2, use_va), usermem=mem, kernel=kernel,
                            max_iotlb_entries=max_entries)
            dev._fast = fast
            dev.open()
            dev.set_owner()
            devs.append(dev)
        self.dev, self.twin = devs
        self.parent = self.dev.backend

    def _twin(self, call):
        """Run ``call(dev)`` on the reference twin; return (result, errno, cause)."""
        try:
            return call(self.twin), None, None
        except IOTLBError as e:
            cause = e.__cause__.errno if isinstance(e.__cause__, IOTLBError) else None
            return None, e.errno, cause

    def _same(self, outcome, expected):
        assert outcome == expected, (outcome, expected)
        assert snapshot(self.dev) == snapshot(self.twin)
        assert self.dev.backend.log == self.twin.backend.log
        assert self.dev.usermem.dirtied_pages == self.twin.usermem.dirtied_pages

    # ------------------------------------------------------------------ writes
    def _write(self, data, kind=None, asid=None, iova=None):
        expected = self._twin(lambda d: d.write(data))
        try:
            self._write_checked(data, kind, asid, iova)
        except IOTLBError as e:
            cause = e.__cause__.errno if isinstance(e.__cause__, IOTLBError) else None
            self._same((None, e.errno, cause), expected)
        else:
            self._same((72, None, None), expected)

    def _write_checked(self, data, kind, asid, iova):
        dev = self.dev
        before = snapshot(dev)
        try:
            n = dev.write(data)
        except IOTLBError as e:
            after = snapshot(dev)
            if e.errno == errno.EBADF:
                assert not before["open"] and after == before
            elif e.errno == errno.EINVAL:  # parse error: the handler never ran
                assert e.__cause__ is None and after == before
            else:
                assert e.errno == errno.EFAULT and isinstance(e.__cause__, IOTLBError)
                self._check_failed(before, after, kind, asid, iova)
            raise
        assert n == 72

    def _check_failed(self, before, after, kind, asid, iova):
        exp_ases = dict(before["ases"])
        created = (kind in (VHOST_IOTLB_UPDATE, VHOST_IOTLB_BATCH_BEGIN)
                   and before["owner"] and asid is not None and asid < self.parent.nas
                   and asid not in exp_ases
                   and self.dev.max_iotlb_entries > 0)   # else vhost_vdpa_alloc_as fails
        if created:
            exp_ases[asid] = ()
        assert after["leaked"] >= before["leaked"]
        if kind == VHOST_IOTLB_UPDATE and self.use_va and iova == 0 \
                and asid in exp_ases and after["ases"].get(asid) == ():
            exp_ases[asid] = ()  # the wrapped [0, ~0] unmap of the VA error path
            assert after["ases"] == exp_ases
            return
        assert after["ases"] == exp_ases, (after["ases"], exp_ases)
        for key in ("open", "owner", "features", "in_batch", "batch_asid", "pinned",
                    "pinned_vm", "pins", "files"):
            assert after[key] == before[key], key

    def _eff_asid(self, asid, version=2):
        acked = self.dev.backend_features & (1 << 3)
        return asid if (version == 2 and acked) else 0

    @rule(asid=asids, page=pages, off=offsets, size=sizes, upage=st.integers(0, 60),
          perm=st.integers(0, 3), version=st.sampled_from([1, 2, 2]))
    def update(self, asid, page, off, size, upage, perm, version):
        iova = page * PAGE + off
        uaddr = 0x100000 + upage * PAGE + off
        a = asid if version == 2 else 0
        self._write(encode(VHOST_IOTLB_UPDATE, iova, size, uaddr, perm, asid=a,
                           version=version),
                    VHOST_IOTLB_UPDATE, self._eff_asid(a, version), iova)

    @rule(asid=asids, page=pages, off=offsets, size=sizes)
    def invalidate(self, asid, page, off, size):
        self._write(encode(VHOST_IOTLB_INVALIDATE, page * PAGE + off, size, asid=asid),
                    VHOST_IOTLB_INVALIDATE, self._eff_asid(asid))

    @rule(asid=asids)
    def batch_begin(self, asid):
        self._write(encode(VHOST_IOTLB_BATCH_BEGIN, asid=asid), VHOST_IOTLB_BATCH_BEGIN,
                    self._eff_asid(asid))

    @rule(asid=asids)
    def batch_end(self, asid):
        self._write(encode(VHOST_IOTLB_BATCH_END, asid=asid), VHOST_IOTLB_BATCH_END,
                    self._eff_asid(asid))

    @rule(data=st.binary(max_size=90))
    def garbage(self, data):
        self._write(data, kind=None if len(data) < 34 else data[33],
                    asid=None, iova=None)

    @rule(outer=st.integers(0, 3), t=st.integers(0, 8), asid=asids, page=pages,
          size=sizes, length=st.sampled_from([39, 40, 72]))
    def structured_garbage(self, outer, t, asid, page, size, length):
        data = encode(t, page * PAGE, size, 0x100000, 3, asid=asid if outer != 1 else 0,
                      version=outer)[:length]
        self._write(data, t, self._eff_asid(asid, outer), page * PAGE)

    def _both(self, call, errnos=()):
        """``call(dev)`` on the device and its twin: same outcome, same state."""
        expected = self._twin(call)
        try:
            got = (call(self.dev), None, None)
        except IOTLBError as e:
            assert e.errno in errnos, e
            cause = e.__cause__.errno if isinstance(e.__cause__, IOTLBError) else None
            got = (None, e.errno, cause)
        self._same(got, expected)
        return got

    @rule(asid=asids, page=pages)
    def handler_invalidate_size0(self, asid, page):
        """Below write(): INVALIDATE size 0 wraps (iova 0 → everything)."""
        msg = VhostMsg(VHOST_IOTLB_INVALIDATE, page * PAGE, 0, asid=asid)
        self._both(lambda d: d.process(msg), (errno.EINVAL, errno.EPERM, errno.EBADF))

    @rule(asid=asids, page=pages, off=offsets, size=sizes, upage=st.integers(0, 60),
          perm=st.integers(0, 3))
    def handler_update(self, asid, page, off, size, upage, perm):
        """The helper API (handler level) agrees with the twin as well."""
        self._both(lambda d: d.update(page * PAGE + off, size,
                                      0x100000 + upage * PAGE + off, perm, asid),
                   (errno.EINVAL, errno.EPERM, errno.EBADF, errno.EEXIST, errno.ENOMEM,
                    errno.EFAULT, errno.ENOSPC))   # ENOSPC: setup's max_entries

    # ------------------------------------------------------------------ ioctls
    @rule(mask=st.sampled_from([0, 0x2, 0xE, 0x6, 0x10E, 0x100, 0x8E, 0x1, 0x200,
                                0x4E]))
    def features(self, mask):
        before = snapshot(self.dev)
        got = self._both(lambda d: d.set_backend_features(mask),
                         (errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF))
        if got[1] is None:
            assert self.dev.backend_features == mask
        else:
            assert snapshot(self.dev) == before

    @rule(status=st.sampled_from([0, 0, 1, 3, 7, 11, 15, 2]))
    def set_status(self, status):
        before = snapshot(self.dev)
        self._both(lambda d: d.set_status(status),
                   (errno.EINVAL, errno.EBADF, errno.ENOMEM))
        # device reset never changes the vhost IOTLB, pins or in_batch
        assert snapshot(self.dev) == before

    @rule(group=st.integers(0, 3), asid=asids)
    def set_group_asid(self, group, asid):
        before = snapshot(self.dev)
        self._both(lambda d: d.set_group_asid(group, asid),
                   (errno.ENOBUFS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM,
                    errno.EBADF, errno.ENOMEM, errno.EBUSY))
        assert snapshot(self.dev) == before

    @rule(n=st.integers(1, 3))
    def inject_failure(self, n):
        for d in (self.dev, self.twin):
            d.backend.fail[self.map_op] = {d.backend.counts[self.map_op] + n}

    @precondition(lambda self: self.dev.is_open)
    @rule()
    def release(self):
        leaked = self.dev.leaked_pages
        self._both(lambda d: d.release())
        dev = self.dev
        assert dev.address_spaces == [] and dev.pinned_pages == 0
        assert not dev.in_batch and not dev.has_owner and dev.backend_features == 0
        assert dev.usermem.pins(dev) == Counter() and dev.usermem.file_refs(dev) == Counter()
        assert dev.leaked_pages == leaked

    @precondition(lambda self: not self.dev.is_open)
    @rule(owner=st.booleans())
    def reopen(self, owner):
        for d in (self.dev, self.twin):
            d.open()
            if owner:
                d.set_owner()
        self._same(None, None)

    @invariant()
    def invariants(self):
        self.dev.check_invariants()
        self.twin.check_invariants()
        if not self.use_va:
            assert self.dev.usermem.file_refs(self.dev) == Counter()


DeviceMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestDeviceMachine = DeviceMachine.TestCase
