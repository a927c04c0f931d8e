"""The parents' per-message ops after they were made cheaper (issue 18, "≥ 1 M
messages/s through write_many"): the same answers as the straightforward code they
replaced, checked against it.

* platform_iommu / vp_vdpa / snet: ``iommu_unmap`` finds what it drops with ``first()``
  (and walks ``overlapping()`` only when the first mapping ends before the range);
  ``iommu_map`` runs the VT-d protection check through ``map_prot_check``;
* mlx5: ``kernel in PER_ASID_MR`` set by ``_apply_kernel``, any iterable of Map
  as a ``set_map`` source, the DMA MR's identity;
* the compiled device core: the dirty record and the file references through the
  dict C API;
* the compiled ``IommuCore`` (the platform parents' base): the same returns, errors
  and domains as the twin's functions, which it declines to for odd input.
"""
from __future__ import annotations

import errno
import random
from collections import Counter

import pytest

import iotlb
from iotlb import IOTLBError, Perm
from iotlb.kernels import KERNELS, POLICIES, kernel_profile
from iotlb.usermem import UserMemory
from iotlb.vdpa import VhostVdpa
from iotlb.wire import (VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_UPDATE, BackendFeature,
                        encode)
from iotlb_backends.mlx5 import _DUP_NULL, PER_ASID_MR, Mlx5
from iotlb_backends.platform_iommu import PlatformIommu, iommu_prot
from iotlb_backends.vp_vdpa import Snet, VpVdpa

PAGE = 0x1000


# ----------------------------------------------------------------------------- platform
def _reference_unmap(domain_entries, iova, size):
    """What iommu_unmap returned before: the bytes of every mapping overlapping the
    range (the overlapping() walk)."""
    last = iova + size - 1
    return sum(m.last - m.start + 1 for m in domain_entries
               if m.start <= last and m.last >= iova)


@pytest.mark.parametrize("cls", [PlatformIommu, VpVdpa, Snet])
@pytest.mark.parametrize("seed", range(6))
def test_iommu_unmap_returns_what_the_overlapping_walk_returned(cls, seed):
    rnd = random.Random(seed)
    d = cls()
    d.iommu_domain_alloc()
    for _ in range(400):
        iova = rnd.randrange(0, 64) * PAGE
        size = rnd.randrange(1, 9) * PAGE
        if rnd.random() < 0.55:
            before = list(d.device_iotlb(0))
            overlap = any(m.start <= iova + size - 1 and m.last >= iova for m in before)
            try:
                d.iommu_map(iova, size, rnd.randrange(0, 1 << 20) * PAGE,
                            rnd.choice([1, 2, 3]))
            except IOTLBError as e:
                assert e.errno == errno.EEXIST and overlap
                assert list(d.device_iotlb(0)) == before
            else:
                assert not overlap
        else:
            before = list(d.device_iotlb(0))
            want = _reference_unmap(before, iova, size)
            assert d.iommu_unmap(iova, size) == want
            left = [m for m in before if not (m.start <= iova + size - 1 and m.last >= iova)]
            assert list(d.device_iotlb(0)) == left
        # the model's invariant the first() shortcut rests on: no two mappings overlap
        ms = list(d.device_iotlb(0))
        assert all(a.last < b.start for a, b in zip(ms, ms[1:]))


def test_iommu_unmap_of_several_mappings_and_of_a_partial_one():
    d = PlatformIommu()
    d.iommu_domain_alloc()
    for i in range(3):
        d.iommu_map(i * 2 * PAGE, PAGE, 0x100000 + i * PAGE, 3)    # pages 0, 2, 4
    d.iommu_map(8 * PAGE, 4 * PAGE, 0x200000, 3)                   # pages 8..11
    assert d.iommu_unmap(0, 5 * PAGE) == 3 * PAGE                  # the walk
    assert d.iommu_unmap(9 * PAGE, PAGE) == 4 * PAGE               # whole mapping
    assert len(d.device_iotlb(0)) == 0
    assert d.iommu_unmap(0, PAGE) == 0


@pytest.mark.parametrize("cls", [PlatformIommu, VpVdpa])
def test_iommu_error_order(cls):
    """ENODEV, then alignment / zero size, then overflow; VT-d's protection check
    after those and before EEXIST; nothing changes on an error."""
    d = cls()
    with pytest.raises(IOTLBError) as info:
        d.iommu_map(0x1001, 0, 0, 0)
    assert info.value.errno == errno.ENODEV
    with pytest.raises(IOTLBError) as info:
        d.iommu_unmap(0, PAGE)
    assert info.value.errno == errno.ENODEV
    d.iommu_domain_alloc()
    for args in [(0x1001, PAGE, 0), (PAGE, 0, 0), (PAGE, PAGE, 0x10)]:
        with pytest.raises(IOTLBError) as info:
            d.iommu_map(*args, 0)
        assert info.value.errno == errno.EINVAL and "multiples" in str(info.value)
    with pytest.raises(IOTLBError) as info:
        d.iommu_map(iotlb.U64_MAX - 0xfff, 0x2000, 0, 3)
    assert info.value.errno == errno.EINVAL and "overflows" in str(info.value)
    with pytest.raises(IOTLBError) as info:
        d.iommu_unmap(iotlb.U64_MAX - 0xfff, 0x2000)
    assert info.value.errno == errno.EINVAL and "overflows" in str(info.value)
    d.iommu_map(PAGE, PAGE, 0x5000, 3)
    with pytest.raises(IOTLBError) as info:
        d.iommu_map(PAGE, PAGE, 0x5000, 0)          # mapped, and perm 0
    if cls is VpVdpa:
        assert info.value.errno == errno.EINVAL and "IOMMU_READ" in str(info.value)
    else:
        assert info.value.errno == errno.EEXIST
    assert [(m.start, m.addr, m.perm) for m in d.device_iotlb(0)] == [(PAGE, 0x5000, 3)]
    if cls is PlatformIommu:
        d.iommu_map(2 * PAGE, PAGE, 0, 4)           # generic domain: perm NONE
        assert d.device_iotlb(0).first(2 * PAGE, 2 * PAGE).perm == int(Perm.NONE)


def test_iommu_prot_is_a_member_of_perm():
    """intel_map_prot_check compares by identity: every answer is a Perm member."""
    for p in range(256):
        prot = iommu_prot(p)
        assert any(prot is m for m in Perm.__members__.values())


# ----------------------------------------------------------------------------- mlx5
@pytest.mark.parametrize("name", list(KERNELS) + [f"7.2+{p}" for p in POLICIES])
def test_mlx5_per_asid_answer_is_the_rule(name):
    dev = Mlx5(kernel=name)
    assert dev._per_asid is (kernel_profile(name) in PER_ASID_MR)


def test_mlx5_answer_follows_a_new_binding():
    """An unbound Mlx5 models the default kernel; bound to 6.1 it becomes the 6.1
    driver (one data MR): the answer _apply_kernel set must not outlive the
    binding."""
    dev = Mlx5()
    t = iotlb.IOTLB()
    t.map(0, 0xfff, 0x3000)
    assert dev._per_asid is True
    dev.bind_kernel("6.1")
    assert dev._per_asid is False
    dev.set_map(1, t)                                  # 6.1: data MR of AS 0 stays
    assert dev.mr_kind(0) == "dma" and dev.mr_kind(1) is None
    fresh = Mlx5()
    fresh.bind_kernel("7.2")
    assert fresh._per_asid is True
    fresh.set_map(1, t)
    assert fresh.mr_kind(1) == "user"


@pytest.mark.parametrize("kernel", ["6.1", "7.2"])
def test_mlx5_set_map_takes_any_iterable_of_maps(kernel):
    """set_map with a list of Map (a plugin test's source) installs what the same
    entries in an IOTLB install: MR and CVQ iotlb, on both MR layouts."""
    maps = [iotlb.Map(0x5000, 0x5fff, 0x9000, 3), iotlb.Map(0x1000, 0x1fff, 0x8000, 1)]
    t = iotlb.IOTLB()
    for m in maps:
        t.map(m.start, m.last, m.addr, m.perm)
    a, b = Mlx5(kernel=kernel), Mlx5(kernel=kernel)
    a.set_map(0, maps)
    b.set_map(0, t)
    for dev in (a, b):
        assert dev.mr_kind(0) == "user"
    assert list(a.device_iotlb(0)) == list(b.device_iotlb(0)) == sorted(maps)
    assert list(a.cvq_iotlb) == list(b.cvq_iotlb)


def test_mlx5_dma_mr_is_the_split_identity_and_shares_nothing():
    """The DMA MR and the CVQ iotlb copy dup_iotlb's NULL source (the identity as two
    entries); pruning or refilling one device's copies changes no other device's."""
    a, b = Mlx5(), Mlx5()
    ident = [(0, 2**63 - 1, 0, 3), (2**63, 2**64 - 1, 2**63, 3)]
    for dev in (a, b):
        assert [(m.start, m.last, m.addr, m.perm) for m in dev.device_iotlb(0)] == ident
        assert [(m.start, m.last, m.addr, m.perm) for m in dev.cvq_iotlb] == ident
    t = iotlb.IOTLB()
    t.map(0, 0xfff, 0x3000)
    a.set_map(0, t)
    a.reset_map(0)
    a.set_map(0, iotlb.IOTLB())
    assert len(a.cvq_iotlb) == 0 and a.mr_kind(0) is None
    assert [(m.start, m.last, m.addr, m.perm) for m in b.device_iotlb(0)] == ident
    assert [(m.start, m.last, m.addr, m.perm) for m in b.cvq_iotlb] == ident
    assert [(m.start, m.last, m.addr, m.perm) for m in Mlx5().cvq_iotlb] == ident
    # a tree that shares _DUP_NULL's nodes changed in place copies them first
    c = Mlx5()
    c._cvq.map(0x1000, 0x1fff, 0x5000)
    c._cvq.unmap(0, 0)
    assert [(m.start, m.last, m.addr) for m in c.cvq_iotlb] == [
        (0x1000, 0x1fff, 0x5000), (2**63, 2**64 - 1, 2**63)]
    assert [(m.start, m.last, m.addr, m.perm) for m in _DUP_NULL] == ident
    assert [(m.start, m.last, m.addr, m.perm) for m in Mlx5().device_iotlb(0)] == ident


def test_mlx5_empty_and_nonempty_sources():
    dev = Mlx5()
    t = iotlb.IOTLB()
    dev.set_map(0, t)
    assert dev.mr_kind(0) is None                      # empty: no MR
    t.map(5 * PAGE, 6 * PAGE - 1, 0x9000)
    dev.set_map(0, t)
    assert dev.mr_kind(0) == "user" and len(dev.device_iotlb(0)) == 1


# ----------------------------------------------------------------------------- core
FEATURES = int(BackendFeature.IOTLB_MSG_V2 | BackendFeature.IOTLB_ASID)


def _stream(rnd, n, pages=48):
    out = []
    for _ in range(n):
        page = rnd.randrange(pages)
        if rnd.random() < 0.6:
            out.append(encode(VHOST_IOTLB_UPDATE, page * PAGE, rnd.choice([1, 2]) * PAGE,
                              0x7F0000000000 + page * PAGE, rnd.choice([1, 2, 3])))
        else:
            out.append(encode(VHOST_IOTLB_INVALIDATE, page * PAGE, PAGE))
    return out


def _device(name, fast, **options):
    dev = VhostVdpa(iotlb.load_backend(name, **options))
    dev.open()
    dev.set_owner()
    dev.set_backend_features(FEATURES)
    dev._fast = fast
    return dev


def _state(dev):
    mem = dev.usermem
    tlb = dev.vhost_iotlb(0)
    return (None if tlb is None else list(tlb), list(dev.backend.device_iotlb(0)),
            mem.pinned_vm, mem.dirtied_pages, dict(mem.dirtied), mem.file_refs(dev),
            mem.pins(dev))


@pytest.mark.parametrize("name, options", [
    ("vdpa_sim", {"use_va": False}), ("vdpa_sim", {"use_va": True}),
    ("vdpa_sim", {"use_va": False, "batch_mapping": False}), ("mlx5", {}),
    ("vduse", {}), ("platform_iommu", {}), ("vp_vdpa", {}), ("snet", {})])
@pytest.mark.parametrize("seed", range(3))
def test_fast_path_books_match_the_reference_path(name, options, seed):
    """The dirty record, the pins and the file references after a random stream, on
    every built-in parent: the fast path (compiled) and the reference path agree,
    message by message (errors included)."""
    rnd = random.Random(seed)
    msgs = _stream(rnd, 300)
    fast, ref = _device(name, True, **options), _device(name, False, **options)
    for m in msgs:
        outcome = []
        for dev in (fast, ref):
            try:
                outcome.append(dev.write(m))
            except IOTLBError as e:
                outcome.append((e.errno, getattr(e.__cause__, "errno", None)))
        assert outcome[0] == outcome[1]
        assert _state(fast) == _state(ref)
    fast.check_invariants()
    ref.check_invariants()
    assert fast.usermem.dirtied or options.get("use_va", name == "vduse")


def test_file_references_keep_counter_semantics():
    """UserMemory's file references: counts per owner, a key gone at zero, an fput
    of a reference not held is an AssertionError; also when the owner's record is
    a Counter subclass (the generic path)."""
    mem = UserMemory()
    mem._file_get("d", "f")
    mem._file_get("d", "f")
    mem._file_get("d", "g")
    assert mem.file_refs("d") == Counter({"f": 2, "g": 1})
    mem._file_put("d", "f")
    mem._file_put("d", "g")
    assert mem.file_refs("d") == Counter({"f": 1})
    assert "g" not in mem._files["d"]
    with pytest.raises(AssertionError):
        mem._file_put("d", "g")

    class Tally(Counter):
        pass

    mem._files["e"] = Tally()
    mem._file_get("e", "f")
    mem._file_get("e", "f")
    mem._file_put("e", "f")
    assert type(mem._files["e"]) is Tally and mem._files["e"] == Counter({"f": 1})
    mem._file_put("e", "f")
    assert "f" not in mem._files["e"]


@pytest.mark.parametrize("cls", [PlatformIommu, VpVdpa])
@pytest.mark.parametrize("iova,size,pa", [
    (0, PAGE, 0), (iotlb.U64_MAX - 0xfff, PAGE, 0), (iotlb.U64_MAX - 0x1fff, 2 * PAGE, PAGE),
    (PAGE, PAGE, iotlb.U64_MAX - 0xfff), (0x1001, PAGE, 0), (PAGE, 0, 0), (PAGE, PAGE, 0x10),
    (iotlb.U64_MAX - 0xfff, 2 * PAGE, 0)])
def test_iommu_range_chain_agrees_with_check_range(cls, iova, size, pa):
    """The ops' one-line range test and _check_range (the authority) accept and refuse
    the same ranges, the last IOVA included: a map that passes the chain lands at
    [iova, iova + size - 1], one that fails it raises _check_range's error."""
    d = cls()
    d.iommu_domain_alloc()
    try:
        last = d._check_range("iommu_map", iova, size, pa)
    except IOTLBError as exc:
        want = exc.errno
    else:
        want = None
    try:
        d.iommu_map(iova, size, pa, 3)
    except IOTLBError as exc:
        assert exc.errno == want
        assert len(d.device_iotlb(0)) == 0
    else:
        assert want is None
        assert [(m.start, m.last) for m in d.device_iotlb(0)] == [(iova, last)]
        assert d.iommu_unmap(iova, size) == size


# ----------------------------------------------------------------------------- IommuCore
def _iommu_pair():
    """The compiled IommuCore and the twin's (the reference it declines to), each as
    a bare subclass with an attached domain."""
    pytest.importorskip("iotlb._device")
    if iotlb.IMPLEMENTATION != "cython":
        pytest.skip("the compiled IommuCore is the compiled build's")
    from iotlb._device import IommuCore as Compiled
    from iotlb._pydevice import IommuCore as Twin

    class C(Compiled):
        pass

    class T(Twin):
        pass

    pair = (C(), T())
    for core in pair:
        core._domain = iotlb.IOTLB()
        core.page_size = PAGE
    return pair


def _outcome(call):
    try:
        return ("ok", call())
    except Exception as exc:                 # noqa: BLE001 -- compared, not hidden
        return (type(exc).__name__, getattr(exc, "errno", None), str(exc))


def _odd_value(rnd, page):
    # aligned and unaligned values, int subclasses, negatives, past 2**64, non-ints
    return rnd.choice([
        rnd.randrange(0, 48) * page, rnd.randrange(0, 48) * page + rnd.randrange(page),
        0, page, 2 * page, iotlb.U64_MAX - page + 1, iotlb.U64_MAX, 1 << 64, -page,
        True, Perm.RW, 4096.0, None, "0x1000", iotlb.U64_MAX - 2 * page + 1])


@pytest.mark.parametrize("seed", range(8))
def test_compiled_iommu_core_answers_as_the_twin(seed):
    """Random iommu_map / iommu_unmap, with odd arguments, page sizes, a domain that
    comes and goes, mappings that overlap (added to the domain directly) and a
    map_prot_check that refuses: the compiled ops return and raise exactly what the
    twin's do (type, errno, message), and leave the same domain."""
    rnd = random.Random(seed)
    pair = _iommu_pair()

    def refuse_write(prot, perm):
        if prot & Perm.WO and perm == 2:
            raise IOTLBError(errno.EINVAL, f"refused {int(prot)} {perm}")

    for step in range(1500):
        r = rnd.random()
        if r < 0.02:
            page = rnd.choice([PAGE, 1, 2, 0x10000, 0, True, 4096.0, -PAGE])
            for core in pair:
                core.page_size = page
        elif r < 0.04:
            fresh = rnd.random() < 0.7
            for core in pair:
                core._domain = iotlb.IOTLB() if fresh else None
        elif r < 0.06:
            check = rnd.choice([None, refuse_write])
            for core in pair:
                type(core).map_prot_check = None if check is None else staticmethod(check)
        elif r < 0.10 and pair[0]._domain is not None:
            s = rnd.randrange(0, 48) * PAGE
            l = s + rnd.randrange(1, 6) * PAGE - 1     # may overlap: only here
            for core in pair:
                core._domain.map(s, l, s, 3)
        elif r < 0.55:
            page = pair[0].page_size if type(pair[0].page_size) is int and pair[0].page_size > 0 else PAGE
            args = [_odd_value(rnd, page) if rnd.random() < 0.2
                    else rnd.randrange(0, 48) * page for _ in range(3)]
            if rnd.random() < 0.8:
                args[1] = rnd.randrange(1, 4) * page
            perm = rnd.choice([1, 2, 3, 0, 7, Perm.RO, True, -1, None, 1 << 70])
            got = [_outcome(lambda c=core: c.iommu_map(*args, perm)) for core in pair]
            assert got[0] == got[1], (step, args, perm)
        else:
            page = pair[0].page_size if type(pair[0].page_size) is int and pair[0].page_size > 0 else PAGE
            iova = (_odd_value(rnd, page) if rnd.random() < 0.2
                    else rnd.randrange(0, 48) * page)
            size = (_odd_value(rnd, page) if rnd.random() < 0.2
                    else rnd.randrange(1, 8) * page)
            got = [_outcome(lambda c=core: c.iommu_unmap(iova, size)) for core in pair]
            assert got[0] == got[1], (step, iova, size)
            if got[0][0] == "ok":
                assert type(got[0][1]) is int
        doms = [c._domain for c in pair]
        assert (doms[0] is None) == (doms[1] is None)
        if doms[0] is not None:
            assert list(doms[0]) == list(doms[1]), step
            doms[0]._check()


def test_compiled_iommu_core_declines_for_a_domain_of_another_type():
    """A domain that is not the compiled IOTLB (here the pure twin's) goes through
    the twin's code: same answers, on that domain."""
    from iotlb._pyengine import IOTLB as PyIOTLB
    c, t = _iommu_pair()
    for core in (c, t):
        core._domain = PyIOTLB()
        core.iommu_map(PAGE, 2 * PAGE, 0, 3)
        assert core.iommu_unmap(PAGE, PAGE) == 2 * PAGE
        assert len(core._domain) == 0
