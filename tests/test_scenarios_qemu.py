"""The scenario library against what a real QEMU sent (tests/data/qemu, Debian's QEMU
7.2 on vdpa_sim: boot through iPXE, QMP stop / cont / system_reset / quit).

Compared at the level both share: the memory-listener batches (what is mapped and
unmapped, in which order, batched how) around the status changes.  Where QEMU 7.2 and
the library's QEMU 10.2 differ, the test pins the difference docs/qemu.md states."""
from __future__ import annotations

from pathlib import Path

import pytest

from iotlb import importer as I
from iotlb import trace as T
from iotlb.scenarios import SCENARIOS, GuestLayout, parse_size, run_scenario

DATA = Path(__file__).resolve().parent / "data" / "qemu"
REAL = sorted(DATA.glob("qemu72-*-unlimited.strace"))


def skeleton(ops):
    """The lifecycle as ('map'|'unmap', {(iova, size, perm)}) per batch and
    ('status', value) per SET_STATUS; unbatched messages are ('map1'|'unmap1', ...)."""
    out, batch = [], None
    for op in ops:
        k = op["op"]
        if k == "batch_begin":
            batch = []
        elif k == "batch_end":
            kinds = {b[0] for b in batch}
            assert len(kinds) <= 1, "a batch mixing maps and unmaps"
            out.append(("map" if kinds == {"update"} else "unmap",
                        frozenset(b[1] for b in batch)))
            batch = None
        elif k in ("update", "invalidate"):
            key = (op["iova"], op["size"], op.get("perm", 0) if k == "update" else 0)
            if batch is not None:
                batch.append((k, key))
            else:
                out.append(("map1" if k == "update" else "unmap1", key))
        elif k == "set_status":
            out.append(("status", op["status"]))
        elif k == "suspend":
            out.append(("suspend", None))
    return out


@pytest.fixture(scope="module")
def real():
    assert REAL, "no golden real-QEMU log"
    return I.read_log(str(REAL[0]), "strace").ops


def _sections(sk, kind):
    return [s for k, s in sk if k == kind]


def test_real_qemu_each_stop_unmaps_what_the_start_mapped_in_one_batch(real):
    sk = skeleton(real)
    maps, unmaps = _sections(sk, "map"), _sections(sk, "unmap")
    assert len(maps) == len(unmaps) == 3                 # boot, cont, reset / stop, reset, quit
    assert all(m == maps[0] for m in maps) and all(u == {(i, s, 0) for i, s, _ in maps[0]}
                                                 for u in unmaps)
    assert not any(k in ("map1", "unmap1") for k, _ in sk)
    kinds = [k for k, _ in sk if k in ("map", "unmap")]
    assert kinds == ["map", "unmap"] * 3


@pytest.mark.parametrize("name", ["stop_start", "guest_reset"])
def test_scenario_restart_has_the_real_shape(real, name):
    """What QEMU 7.2 and 10.2 share: from the first DRIVER_OK on, a stop unmaps every
    section in one batch and the start maps them all again in one batch, right before
    DRIVER_OK."""
    r = run_scenario(name, "vdpa_sim", guest=GuestLayout(parse_size("64M")))
    sk = skeleton(r.ops)
    first_ok = next(i for i, (k, v) in enumerate(sk) if k == "status" and v & 4)
    tail = sk[first_ok - 1:]
    kinds = [k for k, _ in tail if k in ("map", "unmap", "map1", "unmap1")]
    assert kinds == ["map", "unmap", "map"]
    maps, unmaps = _sections(tail, "map"), _sections(tail, "unmap")
    assert maps[0] == maps[1] and unmaps[0] == {(i, s, 0) for i, s, _ in maps[0]}
    for seq in (sk, skeleton(real)):
        last_map = max(i for i, (k, _) in enumerate(seq) if k == "map")
        assert seq[last_map + 1][0] == "status" and seq[last_map + 1][1] & 4


def test_where_qemu_72_and_102_differ(real):
    """The differences docs/qemu.md lists, pinned: 7.2 maps RAM at DRIVER_OK (listener
    registered in vhost_vdpa_dev_start), 10.2 before FEATURES_OK (at SET_OWNER /
    board init); 7.2 stops with SET_STATUS(0), ACK|DRIVER, then the unmap batch, 10.2
    with SET_STATUS(0), the unmap batch, SET_STATUS(0), ACK|DRIVER; 7.2 acks
    MSG_V2|BATCH after SET_FEATURES, 10.2 MSG_V2|BATCH|ASID|SUSPEND before SET_OWNER."""
    sk = skeleton(real)
    first_map = next(i for i, (k, _) in enumerate(sk) if k == "map")
    assert [v for k, v in sk[:first_map] if k == "status"] == [3, 11]
    stop = sk[sk.index(("status", 15)) + 1:]
    assert [k if k != "status" else v for k, v in stop[:3]] == [0, 3, "unmap"]
    names = [o["op"] for o in real]
    assert names.index("set_owner") < names.index("set_backend_features")
    assert {o["features"] for o in real if o["op"] == "set_backend_features"} == {0x6}

    class NoSuspend(type(__import__("iotlb").load_backend("vdpa_sim"))):
        suspend = None
        resume = None

    r = run_scenario("stop_start", NoSuspend(), guest=GuestLayout(parse_size("64M")))
    s10 = skeleton(r.ops)
    first_map = next(i for i, (k, _) in enumerate(s10) if k == "map")
    assert ("status", 8) not in s10[:first_map]          # RAM before FEATURES_OK
    stop = s10[s10.index(("status", 12)) + 1:]
    assert [k if k != "status" else v for k, v in stop[:4]] == [0, "unmap", 0, 3]
    names = [o["op"] for o in r.ops]
    assert names.index("set_backend_features") < names.index("set_owner")


def test_hypothetical_scenarios_are_labelled():
    hypo = {n for n, s in SCENARIOS.items() if s.hypothetical}
    assert hypo == {"persist_stop_start", "reset_reupdate"}
    for n in hypo:
        assert SCENARIOS[n].doc.startswith("HYPOTHETICAL")
    for n, s in SCENARIOS.items():
        if n not in hypo:
            assert "vhost_vdpa" in s.doc or "QEMU" in s.doc, n


def test_netdev_hotplug_probe_reset_after_ram_is_mapped():
    """QEMU 10.2 netdev hot-plug: RAM mapped at SET_OWNER, then the CVQ probe's
    SET_STATUS(0): a parent that cleans its maps at reset (vdpa_sim, PERSIST not
    acked) is identity-mapped from then on, one that keeps them (platform IOMMU) or a
    PERSIST-acking VMM (hypothetical for QEMU) still translates; device_add's reset
    unmaps and DRIVER_OK re-maps, so all translate at DRIVER_OK."""
    g = GuestLayout(parse_size("64M"))
    r = run_scenario("netdev_hotplug", "vdpa_sim", guest=g)
    sk = skeleton(r.ops)
    first_map = next(i for i, (k, _) in enumerate(sk) if k == "map")
    assert ("status", 0) in sk[first_map:]
    assert [k for k, _ in sk if k in ("map", "unmap")] == ["map", "unmap", "map"]
    cp = r.checkpoint("after the probe's SET_STATUS(0)")
    assert not cp.translates and cp.asids[0].device == "identity"
    assert r.checkpoint("DRIVER_OK").translates
    assert run_scenario("netdev_hotplug", "platform_iommu", guest=g).checkpoint(
        "after the probe's SET_STATUS(0)").translates
    assert run_scenario("netdev_hotplug", "vdpa_sim", guest=g, persist=True).checkpoint(
        "after the probe's SET_STATUS(0)").translates


# ============================================================== against QEMU 11.1 (10.2 code)
REAL11 = DATA / "qemu111-6.12-b1v0-unlimited.trace"
HOT11 = DATA / "qemu111-6.12-b1v0-hotplug.trace"
_TOK = {"get_iova_range": "IOVA", "get_backend_features": "GBF",
        "set_backend_features": "SBF", "get_vring_group": "GVG", "set_owner": "OWNER",
        "suspend": "SUSPEND", "get_status": "g", "open": "OPEN",
        "set_group_asid": "SGA"}


def shape(ops):
    """The ioctl/status sequence with the memory messages folded: each run of batches
    (and unbatched messages) between two ioctls is one ``mem`` token, and a run of
    SET_STATUS(0) is one ``S0`` (how often a guest driver resets the device is the
    guest's business; a reset of a reset device changes nothing).  The sections
    themselves depend on the machine and are compared separately."""
    out = []
    for op in ops:
        k = op["op"]
        if k in T.MESSAGE_OPS:
            tok = "mem"
        elif k == "set_status":
            tok = f"S{op['status']}"
        elif k in ("release", "memlock", "meta"):
            continue
        else:
            tok = _TOK[k]
        if out and out[-1] == tok and tok in ("mem", "S0"):
            continue
        out.append(tok)
    return out


def _cut(seq, n_starts):
    """``seq`` up to and including the GET_STATUS after the n-th DRIVER_OK."""
    seen = 0
    for i, tok in enumerate(seq):
        if tok[:1] == "S" and tok[1:].isdigit() and int(tok[1:]) & 4:
            seen += 1
            if seen == n_starts:
                return seq[:i + 2]
    raise AssertionError(f"fewer than {n_starts} starts in {seq}")


@pytest.fixture(scope="module")
def real11():
    return shape(I.read_log(str(REAL11), "qemu-trace").ops)


G64 = GuestLayout(parse_size("64M"))


def test_boot_is_what_qemu_11_sent(real11):
    """Cold boot, op for op (memory folded): init, SET_OWNER, the CVQ isolation probe,
    board-init maps, the machine reset's SET_STATUS(0) + unmap, the driver's reset,
    FEATURES_OK (8: status was 0), the listener's re-map, DRIVER_OK (12)."""
    boot = shape(run_scenario("boot", "vdpa_sim", guest=G64).ops)
    assert boot == _cut(real11, 1)
    assert boot == ["OPEN", "IOVA", "GBF", "SBF", "g", "S3", "g", "OWNER", "GBF", "S3",
                    "S11", "GVG", "GVG", "GVG", "S0", "GBF", "mem", "S0", "mem", "S0", "g", "S8", "g",
                    "mem", "g", "S12", "g"]


def test_stop_cont_and_system_reset_are_what_qemu_11_sent(real11):
    """QMP stop + cont (``stop_start``) and system_reset (``guest_reset``): SUSPEND,
    SET_STATUS(0) + unmap, ACK|DRIVER; FEATURES_OK, re-map, DRIVER_OK -- and after a
    system reset the device restarts from status 0."""
    ss = shape(run_scenario("stop_start", "vdpa_sim", guest=G64).ops)
    gr = shape(run_scenario("guest_reset", "vdpa_sim", guest=G64).ops)
    assert ss == _cut(real11, 2)
    assert gr[:len(_cut(real11, 1))] == _cut(real11, 1)
    assert gr[len(_cut(real11, 1)):] == _cut(real11, 3)[len(_cut(real11, 2)):]


def test_the_restart_maps_what_the_stop_unmapped_as_qemu_11_did():
    for ops in (I.read_log(str(REAL11), "qemu-trace").ops,
                run_scenario("stop_start", "vdpa_sim", guest=G64).ops):
        sk = skeleton(ops)
        first_ok = next(i for i, (k, v) in enumerate(sk) if k == "status" and v & 4)
        tail = sk[first_ok - 1:]                       # from the first DRIVER_OK re-map
        maps, unmaps = _sections(tail, "map"), _sections(tail, "unmap")
        assert len(maps) >= 2 and all(m == maps[0] for m in maps)
        assert unmaps and all(u == {(i, s, 0) for i, s, _ in maps[0]} for u in unmaps)
        # before it: the board-init maps, all unmapped by the machine reset
        head = sk[:first_ok - 1]
        mapped = {(i, s) for m in _sections(head, "map") for i, s, _ in m}
        assert mapped and mapped == {(i, s) for u in _sections(head, "unmap") for i, s, _ in u}


def test_netdev_hotplug_is_what_qemu_11_sent():
    """Hot-plug: SET_OWNER maps RAM (one batch) before the probe, whose SET_STATUS(0)
    resets the device; device_add's reset then unmaps it.  (The real run stops there:
    no guest driver takes the hot-plugged NIC; the scenario goes on to DRIVER_OK.)"""
    real = shape(I.read_log(str(HOT11), "qemu-trace").ops)
    sc = shape(run_scenario("netdev_hotplug", "vdpa_sim", guest=G64).ops)
    assert real == ["OPEN", "IOVA", "GBF", "SBF", "g", "S3", "g", "OWNER", "mem", "GBF",
                    "S3", "S11", "GVG", "GVG", "GVG", "S0", "GBF", "S0", "mem"]
    assert sc[:len(real)] == real
    hot = skeleton(I.read_log(str(HOT11), "qemu-trace").ops)
    assert [k for k, _ in hot if k in ("map", "unmap")] == ["map", "unmap"]
