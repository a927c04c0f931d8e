"""kernel-semantics §4.5, row by row: every event × every parent × IOTLB_PERSIST
acked or not, asserting both layers of state:

1. the vhost IOTLB per ASID and the pinned pages (``VhostVdpa.vhost_iotlb``,
   ``pinned_pages``, ``check_invariants``);
2. the device (``Backend.device_iotlb``, ``group_asid``, mlx5 ``cvq_iotlb``).

Columns: **P** platform IOMMU; **D** vdpa_sim ``batch_mapping=0`` (dma_map);
**S-sim** vdpa_sim default (set_map); **S-mlx5** mlx5, with and without
``umem_uid_0``.  vdpa_sim runs in PA mode (pins) and in its default VA mode.

The session every row starts from is QEMU's (kernel-semantics §6): open, SET_OWNER,
SET_BACKEND_FEATURES(MSG_V2|BATCH|ASID [|IOTLB_PERSIST]), BATCH_BEGIN(0), UPDATE ×2 on
ASID 0, BATCH_END(0); on multi-AS parents also an UPDATE on ASID 1 (shadow CVQ) and
SET_GROUP_ASID(CVQ group 1 → AS 1).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Callable

import pytest

import iotlb
from iotlb import U64_MAX, IOTLBError
from iotlb.backend import (BACKEND_F_IOTLB_ASID, BACKEND_F_IOTLB_BATCH,
                           BACKEND_F_IOTLB_MSG_V2, BACKEND_F_IOTLB_PERSIST,
                           VDPA_RESET_F_CLEAN_MAP)
from iotlb.vdpa import VhostVdpa
from iotlb_backends.mlx5 import Mlx5
from iotlb_backends.platform_iommu import PlatformIommu
from iotlb_backends.vdpa_sim import VdpaSim

H = 1 << 63
IDENTITY = [(0, H - 1, 0, 3), (H, U64_MAX, H, 3)]
CVQ_GROUP = 1
FEATURES = BACKEND_F_IOTLB_MSG_V2 | BACKEND_F_IOTLB_BATCH | BACKEND_F_IOTLB_ASID

AS0_UPDATES = [(0x10_0000, 0x4000, 0x7F00_0010_0000), (0x20_0000, 0x2000, 0x7F00_0020_0000)]
AS1_UPDATES = [(0x30_0000, 0x1000, 0x7F00_0090_0000)]


@dataclass(frozen=True)
class Variant:
    id: str
    column: str                      # "P", "D", "S-sim", "S-mlx5"
    make: Callable
    umem_uid_0: bool = False


VARIANTS = [
    Variant("platform", "P", PlatformIommu),
    Variant("vdpa_sim-dma_map", "D", lambda: VdpaSim(batch_mapping=False, use_va=False)),
    Variant("vdpa_sim-dma_map-va", "D", lambda: VdpaSim(batch_mapping=False)),
    Variant("vdpa_sim-set_map", "S-sim", lambda: VdpaSim(use_va=False)),
    Variant("vdpa_sim-set_map-va", "S-sim", lambda: VdpaSim()),
    Variant("mlx5-umem_uid_0", "S-mlx5", lambda: Mlx5(), True),
    Variant("mlx5-no_umem_uid_0", "S-mlx5", lambda: Mlx5(umem_uid_0=False), False),
]
CASES = [pytest.param(v, acked, id=f"{v.id}-{'acked' if acked else 'not_acked'}")
         for v in VARIANTS for acked in (False, True)]
SIM = ("D", "S-sim")


# --------------------------------------------------------------------------- helpers
def entries(tlb):
    return None if tlb is None else [tuple(m)[:4] for m in tlb]


class Spy:
    """Records every parent op vhost-vdpa calls (instance attributes shadow the
    methods, so presence is unchanged) and can snapshot state at a call."""

    OPS = ("reset", "compat_reset", "reset_map", "set_map", "dma_map", "dma_unmap",
           "iommu_map", "iommu_unmap", "iommu_domain_alloc", "iommu_domain_free",
           "set_group_asid")

    def __init__(self, backend, on_call=None):
        self.log = []
        self.on_call = on_call
        for op in self.OPS:
            fn = getattr(backend, op, None)
            if fn is not None:
                setattr(backend, op, self._wrap(op, fn))

    def _wrap(self, op, fn):
        def call(*args):
            if self.on_call is not None:
                self.on_call(op, args)
            self.log.append((op, args))
            return fn(*args)
        return call

    def ops(self):
        return [op for op, _ in self.log]

    def clear(self):
        self.log.clear()


class Session:
    """A QEMU-like session on one backend: both layers observable."""

    def __init__(self, variant: Variant, acked: bool, backend=None):
        self.variant = variant
        self.acked = acked
        self.backend = backend if backend is not None else variant.make()
        self.spy = Spy(self.backend)
        self.dev = VhostVdpa(self.backend)

    @property
    def multi_as(self) -> bool:
        return self.backend.nas > 1

    def open(self):
        self.dev.open()
        self.dev.set_owner()
        self.dev.set_backend_features(FEATURES | (BACKEND_F_IOTLB_PERSIST if self.acked else 0))
        return self

    def populate(self):
        dev = self.dev
        with dev.batch(0):
            for iova, size, uaddr in AS0_UPDATES:
                dev.update(iova, size, uaddr)
        if self.multi_as:
            for iova, size, uaddr in AS1_UPDATES:
                dev.update(iova, size, uaddr, asid=1)
            dev.set_group_asid(CVQ_GROUP, 1)
        dev.check_invariants()
        return self

    # ---- layer 1
    def vhost(self):
        return ({a: entries(self.dev.vhost_iotlb(a)) for a in range(self.backend.nas)},
                self.dev.pinned_pages)

    def expected_pins(self):
        if self.backend.use_va:
            return 0
        return sum(size // 4096 for a in range(self.backend.nas)
                   for _, size, _ in (AS0_UPDATES if a == 0 else AS1_UPDATES))

    # ---- layer 2
    def device(self, asid):
        return entries(self.backend.device_iotlb(asid))

    def groups(self):
        return [self.backend.group_asid(g) for g in range(self.backend.ngroups)]

    def cvq(self):
        return entries(self.backend.cvq_iotlb)


def populated(variant, acked):
    return Session(variant, acked).open().populate()


def mapped(session, asid):
    """What a device translates right after the session's UPDATEs: the vhost
    entries of that AS."""
    return entries(session.dev.vhost_iotlb(asid))


# --------------------------------------------------------------------------- the session itself
@pytest.mark.parametrize("variant, acked", CASES)
def test_session_both_layers_agree(variant, acked):
    """Starting point of every row: after the UPDATEs (``vhost_vdpa_map`` →
    ``dma_map`` / ``set_map`` at BATCH_END and outside batches / ``iommu_map``) the
    device translates exactly what the vhost IOTLB holds; pins = entry pages."""
    s = populated(variant, acked)
    vhost, pins = s.vhost()
    assert pins == s.expected_pins()
    assert [e[:2] for e in vhost[0]] == [(0x10_0000, 0x10_3fff), (0x20_0000, 0x20_1fff)]
    for asid in range(s.backend.nas):
        assert s.device(asid) == vhost[asid]
    if variant.column == "S-mlx5":
        assert s.cvq() == vhost[1]                       # update_cvq_iotlb (CVQ → AS 1)
        assert s.groups() == [0, 1, 0]
    elif variant.column in SIM:
        assert s.groups() == [0, 1]


# --------------------------------------------------------------------------- SET_STATUS(0)
@pytest.mark.parametrize("variant, acked", CASES)
def test_set_status_0(variant, acked):
    """``VHOST_VDPA_SET_STATUS(0)`` → ``_compat_vdpa_reset`` → ``vdpa_reset(flags)``
    (CLEAN_MAP iff not acked) → ``ops->compat_reset(flags)`` if present and flags,
    else ``ops->reset``.  The vhost IOTLB, the pins and ``in_batch`` are untouched
    in every column."""
    s = populated(variant, acked)
    before_vhost = s.vhost()
    before_dev = {a: s.device(a) for a in range(s.backend.nas)}
    before_cvq = s.cvq() if variant.column == "S-mlx5" else None
    s.dev.batch_begin(0)
    s.spy.clear()
    s.dev.set_status(0)
    assert s.dev.in_batch                                   # not vhost_vdpa_reset
    assert s.vhost() == before_vhost
    s.dev.check_invariants()
    assert s.backend.get_status() == 0
    clean = not acked
    calls = s.spy.log[:1]
    if variant.column == "P":
        # platform parents: no compat_reset, .reset never touches the domain
        assert calls == [("reset", ())]
        assert s.device(0) == before_dev[0]
    elif variant.column in SIM:
        # vdpasim_compat_reset → vdpasim_do_reset(flags)
        assert calls == ([("compat_reset", (VDPA_RESET_F_CLEAN_MAP,))] if clean
                         else [("reset", ())])
        for asid in range(2):
            if clean:
                assert s.device(asid) == IDENTITY and s.backend.iommu_pt(asid)
            else:
                assert s.device(asid) == before_dev[asid]
        assert s.groups() == [0, 0]                         # vrings → iommu[0]
        assert [s.backend.vring_asid(vq) for vq in range(3)] == [0, 0, 0]
    else:
        # mlx5_vdpa_compat_reset: clean_mrs, init_group_to_asid_map, create_dma_mr
        assert calls == ([("compat_reset", (VDPA_RESET_F_CLEAN_MAP,))] if clean
                         else [("reset", ())])
        assert s.groups() == [0, 0, 0]
        if clean:
            assert s.device(0) == (IDENTITY if variant.umem_uid_0 else [])
            assert s.backend.mr_kind(0) == ("dma" if variant.umem_uid_0 else None)
            assert s.device(1) == [] and s.backend.mr_kind(1) is None
            assert s.cvq() == (IDENTITY if variant.umem_uid_0 else [])
        else:
            assert s.device(0) == before_dev[0] and s.device(1) == before_dev[1]
            assert s.cvq() == before_cvq
    # The batch still open across the reset ends now: set_map parents get the whole
    # vhost AS 0 again (overwriting the reset default), the others nothing.
    s.spy.clear()
    s.dev.batch_end(0)
    if getattr(s.backend, "set_map", None) is not None:
        assert s.spy.ops()[:1] == ["set_map"] and s.device(0) == before_dev[0]
    else:
        assert s.spy.log == []
    assert s.vhost() == before_vhost
    s.dev.release()


@pytest.mark.parametrize("variant, acked", CASES)
def test_set_status_0_then_same_update_is_eexist(variant, acked):
    """After SET_STATUS(0) vhost still holds the entries, so re-sending the same
    UPDATE fails with EEXIST (``vhost_vdpa_process_iotlb_update``); QEMU must
    INVALIDATE first."""
    s = populated(variant, acked)
    s.dev.set_status(0)
    iova, size, uaddr = AS0_UPDATES[0]
    with pytest.raises(IOTLBError) as info:
        s.dev.update(iova, size, uaddr)
    assert info.value.errno == errno.EEXIST
    s.dev.release()


# --------------------------------------------------------------------------- compat reset
@pytest.mark.parametrize("variant, acked", CASES)
def test_compat_reset_only_via_set_status_0_and_release_when_not_acked(variant, acked):
    """``compat_reset(CLEAN_MAP)`` is reached only through ``_compat_vdpa_reset``
    (SET_STATUS(0) and ``vhost_vdpa_release``) with IOTLB_PERSIST not acked and the
    vqs present; open resets with flags 0; acked → never invoked; platform parents
    have no such op (``vdpa_reset`` falls back to ``.reset``)."""
    s = Session(variant, acked)
    s.open()
    assert ("compat_reset", (VDPA_RESET_F_CLEAN_MAP,)) not in s.spy.log   # open: flags 0
    s.populate()
    s.dev.set_status(0)
    s.dev.release()
    clean_calls = [c for c in s.spy.log if c == ("compat_reset", (VDPA_RESET_F_CLEAN_MAP,))]
    if variant.column == "P":
        assert getattr(s.backend, "compat_reset", None) is None
        assert s.spy.ops().count("reset") == 3              # open, SET_STATUS(0), release
    elif acked:
        assert clean_calls == []
    else:
        assert len(clean_calls) == 2                        # SET_STATUS(0) and release


@pytest.mark.parametrize("variant, acked", CASES)
def test_compat_reset_clean_map_direct(variant, acked):
    """The op itself (what CLEAN_MAP does), called on a populated device: vdpa_sim →
    every AS identity, pt, vrings → AS 0; mlx5 → MRs dropped, CVQ pruned, groups 0,
    DMA MR + CVQ identity with umem_uid_0.  The vhost layer never changes."""
    s = populated(variant, acked)
    op = getattr(s.backend, "compat_reset", None)
    if variant.column == "P":
        assert op is None
        return
    before = s.vhost()
    op(VDPA_RESET_F_CLEAN_MAP)
    assert s.vhost() == before
    if variant.column in SIM:
        assert all(s.device(a) == IDENTITY for a in range(2)) and s.groups() == [0, 0]
    else:
        umem = variant.umem_uid_0
        assert s.device(0) == (IDENTITY if umem else []) and s.device(1) == []
        assert s.cvq() == (IDENTITY if umem else []) and s.groups() == [0, 0, 0]
    s.dev.release()


# --------------------------------------------------------------------------- open
@pytest.mark.parametrize("variant, acked", CASES)
def test_open(variant, acked):
    """``vhost_vdpa_open`` → ``vhost_vdpa_reset`` with the vqs not yet allocated ⇒
    flags 0 ⇒ ``.reset``: device maps kept (after a previous release that is the
    parent default: identity for vdpa_sim, AS 0 DMA MR for mlx5 with umem_uid_0);
    groups back to AS 0; no vhost AS, no pins, no acked features; platform parents
    get a fresh IOMMU domain (``vhost_vdpa_alloc_domain``)."""
    s = populated(variant, acked)
    s.dev.release()
    after_release = {a: s.device(a) for a in range(s.backend.nas)}
    cvq = s.cvq() if variant.column == "S-mlx5" else None
    if s.multi_as:
        s.backend.set_group_asid(CVQ_GROUP, 1)               # something for open to undo
    s.spy.clear()
    s.dev.open()
    assert s.spy.log[0] == ("reset", ())
    assert all(c != ("compat_reset", (VDPA_RESET_F_CLEAN_MAP,)) for c in s.spy.log)
    assert s.vhost() == ({a: None for a in range(s.backend.nas)}, 0)
    assert s.dev.backend_features == 0
    if variant.column == "P":
        assert s.spy.ops() == ["reset", "iommu_domain_alloc"]
        assert s.backend.domain_allocated and s.device(0) == []
    else:
        assert {a: s.device(a) for a in range(s.backend.nas)} == after_release
        assert s.groups() == [0] * s.backend.ngroups
    if variant.column in SIM:
        assert after_release == {0: IDENTITY, 1: IDENTITY}
    if variant.column == "S-mlx5":
        assert s.device(0) == (IDENTITY if variant.umem_uid_0 else [])
        assert s.cvq() == cvq
    s.dev.release()


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.column != "P"],
                         ids=lambda v: v.id)
def test_open_keeps_device_maps_set_before(variant):
    """``.reset`` at open keeps whatever the device had (maps put there before the
    device node was opened): vdpa_sim and mlx5 ``reset`` = ``compat_reset(0)``."""
    backend = variant.make()
    if variant.column == "D":
        backend.dma_map(1, 0x5000, 0x1000, 0x9000, 3, None)
    else:
        t = iotlb.IOTLB()
        t.map(0x5000, 0x5fff, 0x9000)
        backend.set_map(1, t)
    before = [entries(backend.device_iotlb(a)) for a in range(backend.nas)]
    dev = VhostVdpa(backend)
    dev.open()
    assert [entries(backend.device_iotlb(a)) for a in range(backend.nas)] == before
    dev.release()


# --------------------------------------------------------------------------- reset_map
@pytest.mark.parametrize("variant, acked", CASES)
def test_reset_map_only_from_remove_as(variant, acked):
    """``vhost_vdpa_reset_map`` is called only by ``vhost_vdpa_remove_as`` (release),
    once per existing AS, ascending, after that AS's entries were unmapped; never on
    SET_STATUS(0), SET_GROUP_ASID, INVALIDATE or open.  Platform parents: op absent."""
    s = populated(variant, acked)
    s.dev.set_status(0)
    iova, size, _ = AS0_UPDATES[1]
    s.dev.invalidate(iova, size)
    if s.multi_as:
        s.dev.set_group_asid(0, 1)
    assert "reset_map" not in s.spy.ops()
    s.spy.clear()
    s.dev.release()
    calls = [args for op, args in s.spy.log if op == "reset_map"]
    if variant.column == "P":
        assert getattr(s.backend, "reset_map", None) is None and calls == []
    else:
        assert calls == [(0,), (1,)]


@pytest.mark.parametrize("variant, acked", CASES)
def test_reset_map_op(variant, acked):
    """The op on a populated device, per column: vdpasim_reset_map (identity + pt
    unless pt already set: no-op); mlx5_vdpa_reset_mr (drop mr[asid]; AS 0 → DMA MR
    with umem_uid_0 (+ CVQ identity if CVQ → 0), else ``update_cvq_iotlb(NULL,
    asid)`` → CVQ identity iff the CVQ group is on ``asid``)."""
    s = populated(variant, acked)
    op = getattr(s.backend, "reset_map", None)
    if variant.column == "P":
        assert op is None
        return
    before = s.vhost()
    if variant.column in SIM:
        for asid in range(2):
            assert not s.backend.iommu_pt(asid)
            op(asid)
            assert s.device(asid) == IDENTITY and s.backend.iommu_pt(asid)
            op(asid)                                           # pt: no-op
            assert s.device(asid) == IDENTITY
        assert s.groups() == [0, 1]                            # bindings untouched
    else:
        umem = variant.umem_uid_0
        vhost_as0 = mapped(s, 0)
        op(1)                                                  # CVQ is on AS 1
        assert s.backend.mr_kind(1) is None and s.device(1) == []
        assert s.cvq() == IDENTITY
        op(0)                                                  # CVQ not on AS 0
        assert s.backend.mr_kind(0) == ("dma" if umem else None)
        assert s.device(0) == (IDENTITY if umem else [])
        assert s.cvq() == IDENTITY
        s.backend.set_map(0, s.dev.vhost_iotlb(0))
        s.backend.set_group_asid(CVQ_GROUP, 0)
        assert s.cvq() == vhost_as0
        op(0)                                                  # CVQ on AS 0 now
        assert s.cvq() == IDENTITY
    with pytest.raises(IOTLBError) as info:
        op(s.backend.nas)
    assert info.value.errno == errno.EINVAL
    assert s.vhost() == before
    s.dev.release()


# --------------------------------------------------------------------------- remove_as
@pytest.mark.parametrize("variant, acked", CASES)
def test_remove_as(variant, acked):
    """``vhost_vdpa_remove_as`` (from ``vhost_vdpa_cleanup`` at release): per entry
    unpin/fput and ``vhost_vdpa_general_unmap`` -- ``iommu_unmap`` (P),
    ``dma_unmap`` (D), nothing (set_map parents: no device call, no set_map) --
    then ``reset_map(asid)``.  Captured at each ``reset_map``: that AS's pins are
    gone and the device AS is what the unmaps left."""
    s = populated(variant, acked)
    vhost, _ = s.vhost()
    seen = {}

    def on_call(op, args):
        if op == "reset_map":
            asid = args[0]
            seen[asid] = (s.device(asid), s.dev.pinned_pages,
                          s.backend.iommu_pt(asid) if variant.column in SIM else None)

    s.spy.on_call = on_call
    s.spy.clear()
    s.dev.release()
    ops = s.spy.ops()
    reset = "reset" if (acked or variant.column == "P") else "compat_reset"
    assert ops[0] == reset
    device_calls = [(op, args) for op, args in s.spy.log
                    if op in ("dma_unmap", "iommu_unmap", "set_map", "dma_map", "iommu_map")]
    if variant.column == "P":
        assert device_calls == [("iommu_unmap", (e[0], e[1] - e[0] + 1)) for e in vhost[0]]
        assert "reset_map" not in ops
        assert ops[-1] == "iommu_domain_free"
        return
    assert "set_map" not in ops
    if variant.column == "D":
        want = [("dma_unmap", (a, e[0], e[1] - e[0] + 1)) for a in (0, 1) for e in vhost[a]]
        assert device_calls == want
    else:
        assert device_calls == []
    pins_as1 = 0 if s.backend.use_va else sum(sz // 4096 for _, sz, _ in AS1_UPDATES)
    assert seen[0][1] == pins_as1 and seen[1][1] == 0      # AS 0 unpinned, then AS 1
    for asid in (0, 1):
        dev_state, _, pt = seen[asid]
        if variant.column == "D":
            # dma_unmap of every entry: after CLEAN_MAP the first one empties the
            # pt AS, else each removes its own entry -- empty either way
            assert dev_state == [] and pt is False
        elif variant.column == "S-sim":
            assert dev_state == (IDENTITY if not acked else vhost[asid])
            assert pt is (not acked)
        else:
            umem = variant.umem_uid_0
            if not acked:
                assert dev_state == ((IDENTITY if umem else []) if asid == 0 else [])
            else:
                assert dev_state == vhost[asid]                  # user MRs survive reset


# --------------------------------------------------------------------------- release
@pytest.mark.parametrize("variant, acked", CASES)
def test_release(variant, acked):
    """``vhost_vdpa_release``: ``_compat_vdpa_reset`` + ``remove_as`` for 0..nas-1 +
    teardown.  End: vhost IOTLB gone and 0 pins everywhere; device per column --
    P: domain unmapped then freed; D/S-sim: allocated ASes identity; mlx5: AS 0 DMA
    MR (umem_uid_0) or no MR, AS 1 no MR, CVQ identity (CVQ → 0 after the reset).
    PERSIST only changes the transient state, not the end state."""
    s = populated(variant, acked)
    s.dev.release()
    assert s.vhost() == ({a: None for a in range(s.backend.nas)}, 0)
    s.dev.check_invariants()
    assert not s.dev.is_open and s.dev.backend_features == 0
    if variant.column == "P":
        assert not s.backend.domain_allocated and s.backend.domain_frees == 1
        assert s.device(0) == []
    elif variant.column in SIM:
        assert s.device(0) == IDENTITY and s.device(1) == IDENTITY
        assert s.backend.iommu_pt(0) and s.backend.iommu_pt(1)
        assert s.groups() == [0, 0]
    else:
        umem = variant.umem_uid_0
        assert s.backend.mr_kind(0) == ("dma" if umem else None)
        assert s.device(0) == (IDENTITY if umem else [])
        assert s.backend.mr_kind(1) is None and s.device(1) == []
        assert s.cvq() == IDENTITY
        assert s.groups() == [0, 0, 0]


@pytest.mark.parametrize("variant, acked", [c for c in CASES if c.values[0].column in SIM])
def test_release_never_allocated_as(variant, acked):
    """vdpa_sim, only AS 0 used by vhost, AS 1 changed on the device beforehand:
    not acked → CLEAN_MAP makes AS 1 identity; acked → ``.reset`` keeps AS 1 as it
    was and ``remove_as`` never visits it (the §4.5 "never-allocated ASes keep
    whatever the device had")."""
    backend = variant.make()
    s = Session(variant, acked, backend=backend).open()
    if variant.column == "D":
        backend.dma_map(1, 0x5000, 0x1000, 0x9000, 3, None)
    else:
        t = iotlb.IOTLB()
        t.map(0x5000, 0x5fff, 0x9000)
        backend.set_map(1, t)
    s.dev.update(0x10_0000, 0x1000, 0x7F00_0010_0000)
    s.dev.release()
    assert s.device(0) == IDENTITY
    assert s.device(1) == (IDENTITY if not acked else [(0x5000, 0x5fff, 0x9000, 3)])
    assert [args for op, args in s.spy.log if op == "reset_map"] == [(0,)]


@pytest.mark.parametrize("variant, acked",
                         [c for c in CASES if c.values[0].column == "S-mlx5"])
def test_release_mlx5_only_as1_used(variant, acked):
    """mlx5 with only AS 1 allocated by vhost: not acked → CLEAN_MAP drops the MRs,
    then (umem_uid_0) DMA MR + CVQ identity, else an empty CVQ iotlb; ``reset_map(1)``
    leaves the CVQ alone (CVQ → 0).  Acked: AS 0 keeps its DMA MR (or nothing)."""
    s = Session(variant, acked).open()
    s.dev.update(0x30_0000, 0x1000, 0x7F00_0090_0000, asid=1)
    s.dev.release()
    umem = variant.umem_uid_0
    assert s.backend.mr_kind(0) == ("dma" if umem else None)
    assert s.backend.mr_kind(1) is None
    assert s.cvq() == (IDENTITY if umem else [])


@pytest.mark.parametrize("variant, acked", CASES)
def test_reopen_after_release(variant, acked):
    """Release then open again: the same UPDATEs succeed (no EEXIST: the vhost AS
    died with the file), pins come back, the device translates them again."""
    s = populated(variant, acked)
    s.dev.release()
    s.open().populate()
    vhost, pins = s.vhost()
    assert pins == s.expected_pins()
    for asid in range(s.backend.nas):
        assert s.device(asid) == vhost[asid]
    s.dev.release()


# --------------------------------------------------------------------------- SET_GROUP_ASID
@pytest.mark.parametrize("variant, acked", CASES)
def test_set_group_asid(variant, acked):
    """``VHOST_VDPA_SET_GROUP_ASID`` → ``ops->set_group_asid``: P: no op →
    EOPNOTSUPP; vdpa_sim (vdpasim_set_group_asid): rebind the group's vrings, no
    map change; mlx5 (mlx5_set_group_asid): group2asid updated, for the CVQ group
    ``mr[asid]``'s IOTLB copied into the CVQ iotlb if that MR exists.  Never touches
    the vhost layer and never creates a vhost AS."""
    s = populated(variant, acked)
    before_vhost = s.vhost()
    before_dev = {a: s.device(a) for a in range(s.backend.nas)}
    if variant.column == "P":
        with pytest.raises(IOTLBError) as info:
            s.dev.set_group_asid(0, 0)
        assert info.value.errno == errno.EOPNOTSUPP
    elif variant.column in SIM:
        s.dev.set_group_asid(CVQ_GROUP, 0)
        assert s.groups() == [0, 0]
        s.dev.set_group_asid(0, 1)
        assert s.groups() == [1, 0]
        assert [s.backend.vring_asid(vq) for vq in range(3)] == [1, 1, 0]
    else:
        s.dev.set_group_asid(CVQ_GROUP, 0)                 # mr[0] = user MR of AS 0
        assert s.cvq() == before_dev[0] and s.groups() == [0, 0, 0]
        s.dev.set_group_asid(2, 1)                         # descriptor group
        assert s.groups() == [0, 0, 1] and s.cvq() == before_dev[0]
        s.dev.set_status(0)                                # groups → 0 (both flag values)
        cvq = s.cvq()
        s.dev.set_group_asid(CVQ_GROUP, 1)
        if acked:                                          # mr[1] survived the reset
            assert s.cvq() == before_dev[1]
        else:                                              # no MR: CVQ iotlb unchanged
            assert s.cvq() == cvq
        assert s.groups() == [0, 1, 0]
    assert s.vhost() == before_vhost
    if variant.column != "S-mlx5":
        assert {a: s.device(a) for a in range(s.backend.nas)} == before_dev
    # errors checked by vhost before the parent: ENOBUFS (group >= nvqs), EINVAL
    with pytest.raises(IOTLBError) as info:
        s.dev.set_group_asid(s.backend.nvqs, 0)
    assert info.value.errno == errno.ENOBUFS
    with pytest.raises(IOTLBError) as info:
        s.dev.set_group_asid(0, s.backend.nas)
    assert info.value.errno == errno.EINVAL
    s.dev.release()


# ------------------------------------------------------------ INVALIDATE after CLEAN_MAP
@pytest.mark.parametrize("variant, acked", CASES)
def test_invalidate_after_reset(variant, acked):
    """§4.5 note: for set_map parents an INVALIDATE after a CLEAN_MAP reset calls
    ``set_map`` with the remaining IOTLB, overwriting the default (vdpa_sim: a copy,
    pt=false; mlx5: empty IOTLB ⇒ no MR); for vdpa_sim dma_map the first
    ``dma_unmap`` after CLEAN_MAP empties the pt AS; platform: ``iommu_unmap``."""
    s = populated(variant, acked)
    s.dev.set_status(0)
    for iova, size, _ in AS0_UPDATES:
        s.dev.invalidate(iova, size)
    assert s.vhost()[0][0] == []
    if variant.column == "S-mlx5":
        assert s.backend.mr_kind(0) is None and s.device(0) == []
    else:
        assert s.device(0) == []
        if variant.column in SIM:
            assert not s.backend.iommu_pt(0)
    s.dev.check_invariants()
    s.dev.release()
