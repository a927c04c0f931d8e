"""iotlb.scenarios: the guest layout, the QEMU-like scenarios, and golden matrix cells.

The golden expectations below are transcribed from the table of kernel-semantics §4.5
(and its notes), not from running the code.  Columns: P = platform IOMMU parent, D =
vdpa_sim batch_mapping=0 (dma_map), S-sim = vdpa_sim default (set_map), S-mlx5 = mlx5.
"""
from __future__ import annotations

import errno
import json

import pytest

import iotlb
from iotlb import scenarios as sc
from iotlb import trace
from iotlb.scenarios import (BackendSpec, GuestLayout, MiB, GiB, TiB, parse_size,
                             run_matrix, run_scenario)

GUEST = GuestLayout(16 * MiB)          # small and fast; same section shapes as 4G

P = BackendSpec("platform_iommu", {}, "P")
D = BackendSpec("vdpa_sim", {"batch_mapping": False}, "D")
S_SIM = BackendSpec("vdpa_sim", {"batch_mapping": True}, "S-sim")
MLX5 = BackendSpec("mlx5", {"umem_uid_0": True}, "S-mlx5")
MLX5_NO_UMEM = BackendSpec("mlx5", {"umem_uid_0": False}, "S-mlx5 (no umem_uid_0)")
ALL = [P, D, S_SIM, MLX5, MLX5_NO_UMEM]


def run(name, spec, persist):
    r = run_scenario(name, spec, persist=persist, guest=GUEST)
    assert r.status in ("ok", "n/a"), r.reason
    return r


# ======================================================================= sizes, layout
@pytest.mark.parametrize("text, value", [
    ("4G", 4 * GiB), ("4GiB", 4 * GiB), ("4gb", 4 * GiB), ("1T", TiB), ("512M", 512 * MiB),
    ("64K", 64 << 10), ("4096", 4096), ("0x1000", 4096), (" 2M ", 2 * MiB), ("1.5G", 3 << 29),
    (8192, 8192),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "4X", "G", "-1G", "0x10G", "4 G B", "1e3"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("size", ["2M", "64M", "3G", "4G", "17G", "1T"])
def test_guest_layout_is_x86_like(size):
    g = GuestLayout(size)
    n = parse_size(size)
    secs = sorted(g.sections, key=lambda s: s.iova)
    for s in secs:
        assert s.iova % 4096 == 0 and s.size % 4096 == 0 and s.uaddr % 4096 == 0
        assert s.size > 0 and s.uaddr != s.iova
        assert s.perm in (iotlb.Perm.RO, iotlb.Perm.RW)
    for a, b in zip(secs, secs[1:]):
        assert a.last < b.iova                      # disjoint
    ram = [s for s in secs if s.perm == iotlb.Perm.RW]
    roms = [s for s in secs if s.perm == iotlb.Perm.RO]
    assert {s.name for s in roms} == {"rom-option", "rom-isa-bios", "bios"}
    # RAM adds up to the guest size minus the legacy hole 640K..1M
    assert sum(s.size for s in ram) == n - (0x100000 - 0xA0000)
    # nothing in the PCI hole [3G, 4G - 256K); RAM above 4G only for guests > 3G
    for s in ram:
        assert s.last < 3 * GiB or s.iova >= 4 * GiB
    above = [s for s in ram if s.iova >= 4 * GiB]
    assert (sum(s.size for s in above) == n - 3 * GiB) if n > 3 * GiB else not above
    assert g.total_pages == sum(s.size for s in secs) // 4096
    # the DIMM goes after RAM, 1G-aligned; the CVQ buffers start at one page
    assert g.dimm.iova % GiB == 0 and g.dimm.iova > max(s.last for s in secs)
    assert min(s.iova for s in g.cvq) == 4096


@pytest.mark.parametrize("size", ["1M", "4097", "65T"])
def test_guest_layout_rejects(size):
    with pytest.raises(ValueError):
        GuestLayout(size)


# ======================================================================= §4.5 golden cells
# SET_STATUS(0) row: what the device translates guest memory through afterwards.
AFTER_RESET = {
    # "P (acked or not): .reset; domain mappings kept"
    ("P", False): "maps", ("P", True): "maps",
    # "D not acked: compat_reset(CLEAN_MAP): every AS -> identity"; "D acked: maps kept"
    ("D", False): "identity", ("D", True): "maps",
    # "S-sim: same as D"
    ("S-sim", False): "identity", ("S-sim", True): "maps",
    # "S-mlx5 not acked: all MRs dropped ..., then (umem_uid_0) AS0 = DMA identity MR"
    ("S-mlx5", False): "identity (DMA MR)", ("S-mlx5", True): "maps",
    # without umem_uid_0 no DMA MR is created: nothing is left
    ("S-mlx5 (no umem_uid_0)", False): "empty", ("S-mlx5 (no umem_uid_0)", True): "maps",
}

# release row, ASID 0: "P: domain unmapped then freed"; "D/S-sim: allocated AS ->
# identity"; "S-mlx5: AS0 DMA MR (umem_uid_0)"; no umem_uid_0: no MR.
AFTER_RELEASE = {"P": "empty", "D": "identity", "S-sim": "identity",
                 "S-mlx5": "identity (DMA MR)", "S-mlx5 (no umem_uid_0)": "empty"}


@pytest.mark.parametrize("persist", [False, True], ids=["not-acked", "acked"])
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.label)
def test_golden_set_status_0(spec, persist):
    r = run("stop_start", spec, persist)
    assert r.persist == ("acked" if persist else "not acked")
    running = r.checkpoint("running")
    after = r.checkpoint("after SET_STATUS(0)")
    assert after.asids[0].device == AFTER_RESET[(spec.label, persist)]
    assert after.asids[0].translates == (AFTER_RESET[(spec.label, persist)] == "maps")
    # "vhost IOTLB & pins untouched in every column"
    assert after.pinned == running.pinned
    assert {a: v.vhost_entries for a, v in after.asids.items()} == \
        {a: v.vhost_entries for a, v in running.asids.items()}
    # and QEMU's full cycle always ends with a working device
    assert r.checkpoint("DRIVER_OK after restart").translates
    assert r.passed


@pytest.mark.parametrize("persist", [False, True], ids=["not-acked", "acked"])
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.label)
def test_golden_skip_is_safe_iff_maps_kept(spec, persist):
    """§6.4: with maps kept across SET_STATUS(0) a VMM may skip INVALIDATE-all /
    UPDATE-all; where the reset wiped the device, skipping leaves it translating the
    wrong thing at DRIVER_OK."""
    r = run("persist_stop_start", spec, persist)
    cp = r.checkpoint("DRIVER_OK after restart")
    kept = AFTER_RESET[(spec.label, persist)] == "maps"
    assert cp.translates == kept
    if not kept:
        assert cp.asids[0].device == AFTER_RESET[(spec.label, persist)]
    cost = r.costs["stop/start"]
    assert (cost.messages, cost.pinned, cost.unpinned) == (0, 0, 0)


@pytest.mark.parametrize("persist", [False, True], ids=["not-acked", "acked"])
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.label)
def test_golden_reupdate_without_invalidate_is_eexist(spec, persist):
    """Note of §4.5: after SET_STATUS(0) vhost still holds the entries, so re-sending
    the same UPDATE gets -EEXIST (EFAULT at write).  Layer 1 is the same in every
    column, with or without PERSIST."""
    r = run("reset_reupdate", spec, persist)
    reupdates = [st for st in r.steps if st.label == "re-UPDATE w/o INVALIDATE"]
    assert len(reupdates) == len(GUEST.sections)
    for st in reupdates:
        assert not st.ok and st.errno == errno.EFAULT and st.cause == errno.EEXIST
    assert r.passed          # the EEXISTs are what the scenario expects


def test_golden_reupdate_device_state_depends_on_mapping_style():
    """Note of §4.5 / 3.6: a set_map parent is told the whole IOTLB at BATCH_END even
    when every UPDATE in the batch failed, so the wiped simulator is reprogrammed;
    a dma_map parent is only called for successful UPDATEs and stays identity."""
    assert run("reset_reupdate", S_SIM, False).checkpoint("DRIVER_OK").translates
    cp = run("reset_reupdate", D, False).checkpoint("DRIVER_OK")
    assert not cp.translates and cp.asids[0].device == "identity"


@pytest.mark.parametrize("persist", [False, True], ids=["not-acked", "acked"])
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.label)
def test_golden_release(spec, persist):
    """release row: "end: vhost empty, 0 pins"; the device is left at the parent
    default whether or not PERSIST was acked ("same end state")."""
    r = run("release_reopen", spec, persist)
    cp = r.checkpoint("after release")
    assert cp.pinned == 0
    assert all(v.vhost_entries is None for v in cp.asids.values())
    assert cp.asids[0].device == AFTER_RELEASE[spec.label]
    assert all(v.stale == 0 for v in cp.asids.values())
    if spec.label.startswith("S-mlx5"):
        # "AS1 no MR"; "CVQ identity (CVQ->0 after reset)"; without umem_uid_0 the
        # reset_map row still gives the CVQ identity ("update_cvq_iotlb(NULL)")
        assert cp.asids[1].device == "empty"
        assert cp.cvq == "identity"
    if spec.label in ("D", "S-sim"):
        # every AS vhost had allocated -> identity; the other one was never touched
        assert cp.asids[1].device == "identity"
    assert r.checkpoint("DRIVER_OK after reopen").translates
    cost = r.costs["release"]
    pa = spec.label != "D" and spec.label != "S-sim"      # vdpa_sim: VA mode, no pins
    assert cost.unpinned == (GUEST.total_pages if pa else 0) and cost.pinned == 0


@pytest.mark.parametrize("persist", [False, True], ids=["not-acked", "acked"])
@pytest.mark.parametrize("spec", [D, S_SIM, MLX5, MLX5_NO_UMEM], ids=lambda s: s.label)
def test_golden_set_status_0_rebinds_groups_to_as0(spec, persist):
    """SET_STATUS(0) row: "vrings -> AS0" (vdpa_sim) / "group2asid=0" (mlx5), acked or
    not; SET_GROUP_ASID row: the binding is recorded, no mapping changes."""
    r = run("shadow_cvq", spec, persist)
    running = r.checkpoint("DRIVER_OK")
    cvq_group = 1
    assert running.groups[cvq_group] == 1 and running.translates
    assert running.asids[1].device == "maps"
    after = r.checkpoint("after SET_STATUS(0)")
    assert set(after.groups.values()) == {0}
    if spec.label.startswith("S-mlx5"):
        if persist:
            # "MRs + CVQ iotlb kept; group2asid=0": the CVQ iotlb still holds the
            # ASID 1 copy although the CVQ group now points at ASID 0
            assert after.cvq not in ("identity", "identity (DMA MR)", "empty", "maps")
        else:
            # "CVQ iotlb emptied ... then (umem_uid_0) CVQ iotlb identity"
            assert after.cvq == ("identity" if spec is MLX5 else "empty")
    assert r.checkpoint("DRIVER_OK after restart").translates
    assert r.passed


def test_shadow_cvq_needs_two_address_spaces():
    """SET_GROUP_ASID row, P: nas = ngroups = 1, there is nothing to isolate."""
    r = run("shadow_cvq", P, False)
    assert r.status == "n/a" and "nas=1" in r.reason and r.passed


# ======================================================================= every scenario
@pytest.mark.parametrize("persist", [False, True], ids=["not-acked", "acked"])
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.label)
def test_every_scenario_passes_its_must_checks(spec, persist):
    for name in sc.SCENARIOS:
        r = run(name, spec, persist)
        assert r.passed, (name, [cp.as_dict() for cp in r.checkpoints if cp.must],
                          [st.as_dict() for st in r.unexpected_failures], r.invariants)
        assert r.invariants is None
        if r.status == "ok":
            json.dumps(r.as_dict(steps=True))      # JSON-ready


def test_boot_sends_what_qemu_sends():
    """QEMU 10.2 (hw/virtio/vhost-vdpa.c, net/vhost-vdpa.c, hw/virtio/virtio.c):
    backend features and ACK|DRIVER in vhost_vdpa_init before SET_OWNER; the CVQ
    isolation probe (ending in SET_STATUS(0)); RAM mapped at board init (a batch per
    region) before any SET_FEATURES; the machine reset unmaps it (virtio_reset); the
    guest driver's reset; FEATURES_OK, RAM mapped again, DRIVER_OK.  The real QEMU
    11.1 run (tests/data/qemu) has the same shape (tests/test_scenarios_qemu.py)."""
    r = run("boot", S_SIM, persist=False)
    names = [op["op"] for op in r.ops]
    n = len(GUEST.sections)
    board = len(GUEST.board_sections)
    add = ["get_status", "set_status", "get_status"]
    assert names == (["open", "get_iova_range", "get_backend_features",
                      "set_backend_features"] + add + ["set_owner"] +
                     ["get_backend_features", "set_status", "set_status"] +
                     ["get_vring_group"] * 3 + ["set_status", "get_backend_features"] +
                     ["batch_begin", "update", "batch_end"] * board +
                     ["set_status", "batch_begin"] + ["invalidate"] * board +
                     ["batch_end", "set_status"] + add +
                     ["batch_begin"] + ["update"] * n + ["batch_end"] + add)
    # QEMU acks MSG_V2|BATCH|ASID|SUSPEND (as offered), never PERSIST unless asked
    assert r.ops[3]["features"] == 0x1E
    # after the resets status is 0: FEATURES_OK then DRIVER_OK on top
    assert [op["status"] for op in r.ops if op["op"] == "set_status"] == \
        [3, 3, 11, 0, 0, 0, 8, 12]
    assert all(op["asid"] == 0 for op in r.ops if op["op"] in ("update", "batch_begin"))
    acked = run("boot", S_SIM, persist=True)
    assert acked.ops[3]["features"] == 0x11E


def test_stop_start_cost_is_the_whole_guest_for_pa_parents():
    msgs = 2 * (len(GUEST.sections) + 2)            # two batches
    for spec in (P, MLX5):
        c = run("stop_start", spec, False).costs["stop/start"]
        assert (c.unpinned, c.pinned, c.messages) == (GUEST.total_pages,) * 2 + (msgs,)
    c = run("stop_start", S_SIM, False).costs["stop/start"]   # VA mode: no pins
    assert (c.unpinned, c.pinned, c.messages) == (0, 0, msgs)


def test_stop_uses_suspend_only_when_acked():
    class NoSuspend(iotlb.load_backend("vdpa_sim").__class__):
        suspend = None
        resume = None

    r = run_scenario("stop_start", NoSuspend(), guest=GUEST)
    seq = [op.get("status", op["op"]) for op in r.ops
           if op["op"] in ("suspend", "set_status", "batch_begin")]
    # QEMU 10.2 stop without SUSPEND: vhost_vdpa_reset_device (SET_STATUS(0) + the
    # listener's INVALIDATE batch), then vhost_vdpa_reset_status' SET_STATUS(0), ACK|DRIVER
    assert seq[12:] == [0, "batch_begin", 0, 3, 11, "batch_begin", 15]
    r = run_scenario("stop_start", "vdpa_sim", guest=GUEST)
    seq = [op.get("status", op["op"]) for op in r.ops
           if op["op"] in ("suspend", "set_status", "batch_begin")]
    assert seq[12:] == ["suspend", 0, "batch_begin", 3, 11, "batch_begin", 15]


def test_hotunplug_leaves_nothing_stale():
    for spec in ALL:
        r = run("hotunplug", spec, False)
        cp = r.checkpoint("after hot-unplug")
        assert cp.translates and cp.asids[0].stale == 0
        assert r.costs["hot-unplug"].messages == 3


def test_viommu_churn_is_unbatched_and_ends_empty():
    r = run("viommu", D, False)
    # batches only before DRIVER_OK (RAM at board init, INVALIDATEd at DRIVER_OK)
    ok = max(i for i, op in enumerate(r.ops) if op["op"] == "set_status")
    assert not any(op["op"] == "batch_begin" for op in r.ops[ok:])
    end = r.checkpoint("all unmapped")
    assert end.asids[0].vhost_entries == 0 and end.asids[0].device == "empty"


def test_scenario_traces_are_valid_trace_operations():
    for name in sc.SCENARIOS:
        r = run(name, MLX5, True)
        for op in r.ops:
            assert trace.parse_op(json.loads(trace.to_json(op))) == op


def test_run_scenario_accepts_name_spec_factory_instance():
    from iotlb_backends.vdpa_sim import VdpaSim

    for backend in ("vdpa_sim", S_SIM, VdpaSim, VdpaSim()):
        r = run_scenario("boot", backend, guest=GUEST)
        assert r.passed and r.checkpoint("DRIVER_OK").translates
    with pytest.raises(KeyError):
        run_scenario("no-such-scenario")


def test_invariant_violation_is_reported():
    """A set_map parent that modifies the IOTLB it is handed (the contract says copy,
    never keep or change it) breaks the pins/entries invariant."""
    from iotlb_backends.vdpa_sim import VdpaSimSetMap

    class Vandal(VdpaSimSetMap):
        def set_map(self, asid, tlb):
            super().set_map(asid, tlb)
            tlb.unmap()

    r = run_scenario("boot", Vandal(use_va=False), guest=GUEST)
    assert r.invariants and not r.passed


def test_a_crashing_backend_is_an_error_result_not_an_exception():
    from iotlb_backends.vdpa_sim import VdpaSimDmaMap

    class Crash(VdpaSimDmaMap):
        def dma_map(self, *args):
            raise RuntimeError("plugin bug")

    r = run_scenario("boot", Crash(), guest=GUEST)
    assert r.status == "error" and "plugin bug" in r.reason and not r.passed


# ======================================================================= the matrix
def test_matrix_rows_and_not_offered():
    from iotlb.backend import register, unregister
    from iotlb_backends.vdpa_sim import VdpaSimSetMap

    class NoPersist(VdpaSimSetMap):
        """set_map without reset_map and no PERSIST bit: not offered (§3.2)."""
        reset_map = None

    register("test_no_persist", NoPersist)
    try:
        specs = sc.default_specs(["platform_iommu", "test_no_persist"])
        assert [s.label for s in specs] == ["platform_iommu", "test_no_persist"]
        cells = run_matrix(specs, ["stop_start", "persist_stop_start"], guest=GUEST)
    finally:
        unregister("test_no_persist")
    assert [(c.backend, c.persist) for c in cells] == [
        ("platform_iommu", "not acked"), ("platform_iommu", "acked"),
        ("test_no_persist", "not acked"), ("test_no_persist", "not offered")]
    assert cells[3].results == {} and cells[3].as_dict()["persist"] == "not offered"
    assert cells[2].after_reset == "identity" and cells[2].skip_safe is False
    assert cells[0].skip_safe is True and cells[0].cost.messages == 2 * (len(GUEST.sections) + 2)


def test_default_specs_cover_the_builtin_variants():
    labels = [s.label for s in sc.default_specs()]
    for want in ("platform_iommu", "vdpa_sim (set_map)", "vdpa_sim (dma_map)",
                 "mlx5 (umem_uid_0)", "mlx5 (no umem_uid_0)"):
        assert want in labels
    with pytest.raises(KeyError):
        run_matrix(sc.default_specs(["vdpa_sim"]), ["nope"], guest=GUEST)
