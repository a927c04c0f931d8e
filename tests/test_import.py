"""iotlb import: QEMU trace logs and strace logs as traces (iotlb.importer).

The golden inputs in tests/data/qemu/ are real: Debian's QEMU 7.2 (bookworm) and
11.1 (sid: the QEMU 10.2 vhost-vdpa code) run by tests/kernel/qemu_run.py on vdpa_sim
inside the kernel lab (boot through iPXE, QMP stop / cont / system_reset / quit, or a
netdev hot-plug), traced with -trace 'vhost_vdpa_*' and strace.
No kernel is needed here: both logs are imported and the strace import is replayed
through the model, which must answer every call as the real kernel did."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iotlb import importer as I
from iotlb import trace as T

DATA = Path(__file__).resolve().parent / "data" / "qemu"
CASES = sorted(p.stem for p in DATA.glob("*.json"))


def _meta(stem):
    return json.loads((DATA / f"{stem}.json").read_text())


def _memlock(meta):
    m = meta["memlock_pages"]
    return "unlimited" if m == "unlimited" else int(m)


def _key(op):
    return {k: v for k, v in op.items() if k not in ("comment", "expect", "inferred")}


def test_golden_logs_are_there():
    assert len(CASES) >= 4
    metas = [_meta(s) for s in CASES]
    assert {m["memlock_pages"] == "unlimited" for m in metas} == {True, False}
    versions = {m["qemu"].split("version ")[1].split()[0] for m in metas}
    assert any(v.startswith("7.2") for v in versions) and any(v.startswith("11.") for v in versions)


def load(stem):
    """(trace-log import, strace import, the ops to check, meta) of a golden case: the
    strace import, or -- when strace did not trace write() (QEMU 11) -- the trace
    log's sequence with strace's results on its ioctls."""
    meta = _meta(stem)
    ml = _memlock(meta)
    q = I.read_log(str(DATA / f"{stem}.trace"), "qemu-trace", memlock=ml)
    s = I.read_log(str(DATA / f"{stem}.strace"), "strace", memlock=ml)
    writes = any(o["op"] in T.MESSAGE_OPS for o in s.ops)
    if writes:
        return q, s, s.ops, meta
    ops, it = [], iter([o for o in s.ops if not (o["op"] == "release" and o.get("inferred"))])
    for o in q.ops:
        if o["op"] in T.MESSAGE_OPS or (o["op"] == "release" and o.get("inferred")):
            ops.append(o)
        else:
            twin = next(it)
            assert _key(twin) == _key(o)
            ops.append(dict(o, expect=twin["expect"]) if "expect" in twin else o)
    return q, s, ops, meta


@pytest.mark.parametrize("stem", CASES)
def test_real_qemu_both_logs_agree_and_the_model_answers_as_the_kernel(stem):
    q, s, ops, meta = load(stem)
    major = meta["qemu"].split("version ")[1].split(".")[0]
    assert q.dialect == s.dialect == ("7.2" if major == "7" else "10.2")
    # what the trace log implies (events + QEMU's untraced calls) is exactly the
    # sequence strace saw, op by op, values included (QEMU 11: the ioctls)
    writes = any(o["op"] in T.MESSAGE_OPS for o in s.ops)
    assert [_key(o) for o in q.ops if (writes or o["op"] not in T.MESSAGE_OPS) and
            not (o["op"] == "release" and o.get("inferred"))] == \
        [_key(o) for o in s.ops if not (o["op"] == "release" and o.get("inferred"))]
    msgs = [o for o in ops if o["op"] in T.MESSAGE_OPS]
    if "hotplug" in stem and q.dialect == "7.2":
        assert msgs == []      # 7.2 registers the listener at vhost_vdpa_dev_start only
    else:
        assert len(msgs) >= 4 and all(not o.get("inferred") for o in msgs)
    if "hotplug" not in stem:
        # three starts (boot, cont, after system_reset), each ending in DRIVER_OK
        assert sum(1 for o in ops if o["op"] == "set_status" and o["status"] & 4) == 3
    from iotlb.kernels import kernel_profile_for_release

    n, diffs = I.check(ops, "vdpa_sim", kernel=kernel_profile_for_release(meta["guest_kernel"]),
                       **meta["model_options"])
    assert n >= 7 and diffs == [], [str(d) for d in diffs]


def test_real_qemu_memlock_failure_is_reproduced_and_checking_can_fail():
    stem = next(s for s in CASES if _meta(s)["memlock_pages"] != "unlimited" and
                s.startswith("qemu72"))
    meta = _meta(stem)
    s = I.read_log(str(DATA / f"{stem}.strace"), "strace", memlock=_memlock(meta))
    failed = [o for o in s.ops if o.get("expect", {}).get("errno")]
    # pinning 255M of guest RAM under Debian's 8M RLIMIT_MEMLOCK: one UPDATE per start
    assert [o["op"] for o in failed] == ["update"] * 3
    assert all(o["expect"]["errno"] == "EFAULT" for o in failed)
    # VA mode pins nothing: the model then disagrees with the kernel on exactly those
    opts = dict(meta["model_options"], use_va=True)
    _, diffs = I.check(s.ops, "vdpa_sim", kernel="6.12", **opts)
    assert {d.index for d in diffs} == {s.ops.index(o) for o in failed}
    # and without the memlock op the limit is unknown to the model
    s2 = I.read_log(str(DATA / f"{stem}.strace"), "strace")
    _, diffs = I.check(s2.ops, "vdpa_sim", kernel="6.12", **meta["model_options"])
    assert len({d.index for d in diffs}) == 3


# ============================================================== QEMU 10.2 trace log
LOG_102 = """\
12@1700000000.000001:vhost_vdpa_init dev: 0x1000 common dev: 0x9000 vdpa: 0x2000
vhost_vdpa_get_features dev: 0x1000 features: 0x300030028
vhost_vdpa_add_status dev: 0x1000 status: 0x3
vhost_vdpa_set_owner dev: 0x1000
vhost_vdpa_set_vring_call dev: 0x1000 index: 0 fd: 10
vhost_vdpa_set_vring_call dev: 0x1000 index: 1 fd: 11
vhost_vdpa_init dev: 0x3000 common dev: 0x9000 vdpa: 0x4000
vhost_vdpa_set_vring_call dev: 0x3000 index: 2 fd: 12
vhost_vdpa_listener_begin_batch vdpa_shared:0x9000 fd: 9 msg_type: 2 type: 5
vhost_vdpa_listener_region_add vdpa: 0x9000 iova 0x0 llend 0xa0000 vaddr: 0x7f0000000000 read-only: 0
vhost_vdpa_dma_map vdpa_shared:0x9000 fd: 9 msg_type: 2 asid: 0 iova: 0x0 size: 0xa0000 uaddr: 0x7f0000000000 perm: 0x3 type: 2
vhost_vdpa_listener_commit vdpa_shared:0x9000 fd: 9 msg_type: 2 type: 6
vhost_vdpa_set_features dev: 0x1000 features: 0x300030028
vhost_vdpa_add_status dev: 0x1000 status: 0x8
vhost_vdpa_dev_start dev: 0x1000 started: 1
vhost_vdpa_set_address_space_id vhost_vdpa: 0x4000 vq_group: 1 asid: 1
vhost_vdpa_dma_map vdpa_shared:0x9000 fd: 9 msg_type: 2 asid: 1 iova: 0x1000 size: 0x1000 uaddr: 0x7f1000000000 perm: 0x1 type: 2
vhost_vdpa_dev_start dev: 0x3000 started: 1
vhost_vdpa_add_status dev: 0x3000 status: 0x4
vhost_vdpa_dev_start dev: 0x1000 started: 0
vhost_vdpa_suspend dev: 0x1000
vhost_vdpa_dev_start dev: 0x3000 started: 0
vhost_vdpa_reset_device dev: 0x3000
vhost_vdpa_listener_begin_batch vdpa_shared:0x9000 fd: 9 msg_type: 2 type: 5
vhost_vdpa_dma_unmap vdpa_shared:0x9000 fd: 9 msg_type: 2 asid: 0 iova: 0x0 size: 0xa0000 type: 3
vhost_vdpa_listener_commit vdpa_shared:0x9000 fd: 9 msg_type: 2 type: 6
vhost_vdpa_add_status dev: 0x3000 status: 0x3
vhost_vdpa_dma_unmap vdpa_shared:0x9000 fd: 9 msg_type: 2 asid: 1 iova: 0x1000 size: 0x1000 type: 3
"""


def test_qemu_102_log_fills_in_the_probe_and_the_untraced_calls():
    r = I.from_qemu_trace(LOG_102.splitlines(), path="q.log")
    assert r.dialect == "10.2"
    seq = [(o["op"], o.get("status", o.get("vq", o.get("features"))), bool(o.get("inferred")))
           for o in r.ops]
    want_head = [
        ("open", None, True), ("get_iova_range", None, True),
        ("get_backend_features", None, True), ("set_backend_features", 0x1E, True),
        ("get_status", None, True), ("set_status", 3, False), ("get_status", None, True),
        ("set_owner", None, False),
        # the CVQ device: vhost_vdpa_probe_cvq_isolation before its vhost_vdpa_init
        ("get_backend_features", None, True), ("set_status", 3, True),
        ("set_status", 11, True), ("get_vring_group", 2, True),
        ("get_vring_group", 0, True), ("get_vring_group", 1, True),
        ("set_status", 0, True), ("get_backend_features", None, True),
    ]
    assert seq[:len(want_head)] == want_head
    names = [o["op"] for o in r.ops]
    i = names.index("set_group_asid")
    assert r.ops[i - 1] == dict(r.ops[i - 1], op="get_vring_group", vq=2, inferred=True)
    assert (r.ops[i]["group"], r.ops[i]["asid"]) == (1, 1)
    assert [o["asid"] for o in r.ops if o["op"] == "update"] == [0, 1]
    # after the probe's SET_STATUS(0) the status is 0 again: FEATURES_OK is 0|8
    assert [o["status"] for o in r.ops if o["op"] == "set_status" and not o.get("inferred")] \
        == [3, 8, 12, 0, 3]
    assert "suspend" in names
    # replayable: the model runs it without a Python error
    n, diffs = I.check(r.ops, "vdpa_sim")
    assert n == 0 and diffs == []


def test_qemu_102_stop_without_suspend_means_suspend_was_not_acked():
    log = LOG_102.replace("vhost_vdpa_suspend dev: 0x1000\n", "vhost_vdpa_reset_device dev: 0x1000\n")
    r = I.from_qemu_trace(log.splitlines(), path="q.log")
    feats = [o["features"] for o in r.ops if o["op"] == "set_backend_features"]
    assert feats == [0xE] and r.notes and "SUSPEND not acked" in r.notes[0]
    r = I.from_qemu_trace(log.splitlines(), backend_features=0x6)
    assert [o["features"] for o in r.ops if o["op"] == "set_backend_features"] == [0x6]
    assert not any(o["op"] == "get_vring_group" and o.get("inferred") and
                   o["comment"].endswith("(untraced)") is False for o in r.ops[:8])


@pytest.mark.parametrize("lines, where, what", [
    (["vhost_vdpa_dma_map vdpa_shared:0x1 fd: 9 msg_type: 2 asid: 0 iova: 0x0"], 1,
     "missing field 'size'"),
    (["vhost_vdpa_set_owner dev: 0x1", "", "!!! garbage"], 3, "not a QEMU trace line"),
    (["vhost_vdpa_listener_begin_batch vdpa_shared:0x1 fd: 9 msg_type: 7 type: 5"], 1,
     "msg_type 7"),
])
def test_qemu_trace_errors_name_the_line(lines, where, what):
    with pytest.raises(I.ImportError_) as ei:
        I.from_qemu_trace(lines, path="q.log")
    assert str(ei.value).startswith(f"q.log:{where}: ") and what in str(ei.value)


def test_qemu_trace_without_events_is_an_error():
    with pytest.raises(I.ImportError_, match="no trace events"):
        I.from_qemu_trace(["", "  "], path="q.log")
    with pytest.raises(I.ImportError_, match="no vhost-vdpa operations"):
        I.from_qemu_trace(["virtio_set_status vdev 0x1 val 3"], path="q.log")


# ============================================================== strace
def _w(fd, data: bytes, ret=None, pid="77  "):
    esc = "".join(f"\\x{b:02x}" for b in data)
    res = f"= {len(data) if ret is None else ret}"
    return f'{pid}write({fd}, "{esc}", {len(data)}) {res}'


def test_strace_variants_decode_to_ops_with_expectations():
    from iotlb import wire

    upd = wire.encode(wire.VHOST_IOTLB_UPDATE, 0x1000, 0x1000, 0x7f0000001000, 3)
    v1 = wire.encode(wire.VHOST_IOTLB_INVALIDATE, 0x1000, 0x1000, version=wire.VHOST_IOTLB_MSG)
    odd = bytes([2, 0, 0, 0]) + bytes(29) + bytes([9]) + bytes(38)       # type 9
    lines = [
        '[pid 77] 12:00:00.000001 openat(AT_FDCWD, "/dev/vhost-vdpa-0", O_RDWR) = 9',
        '77  openat(-100, "\\x2f\\x65\\x74\\x63", 0x80000) = 3',
        "77  ioctl(9, VHOST_SET_OWNER, 0) = 0",
        "77  ioctl(9, 0x8008af26, 0x7ffd) = 0",
        "77  ioctl(9, 0x4008af25 <unfinished ...>",
        "78  write(15, \"\\x01\", 1) = 1",
        "77  <... ioctl resumed>, 0x7ffd) = 0",
        "77  ioctl(9, 0x8001af71, 0x7ffd) = 0",
        "77  ioctl(9, 0x4001af72, 0x7ffd) = 0",
        "77  ioctl(9, 0x8001af71, 0x7ffd) = 0",
        "77  ioctl(9, 0x4008af20, 0x7ffd) = 0",
        _w(9, upd),
        _w(9, upd, ret="-1 EFAULT (Bad address)"),
        _w(9, v1),
        _w(9, odd, ret="-1 EFAULT (Bad address)"),
        "77  ioctl(9, 0x4001af72, 0x7ffd) = 0",
        "77  close(9) = 0",
        "77  +++ exited with 0 +++",
    ]
    r = I.from_strace(lines, path="s.log")
    names = [o["op"] for o in r.ops]
    assert names == ["open", "set_owner", "get_backend_features", "set_backend_features",
                     "get_status", "set_status", "get_status", "update", "update",
                     "invalidate", "write", "set_status", "release"]
    assert r.skipped == {"VHOST_SET_VRING_KICK": 1}
    assert r.ops[7]["expect"] == {"ret": 72, "errno": None}
    assert r.ops[8]["expect"] == {"ret": None, "errno": "EFAULT"}
    assert r.ops[9]["version"] == 1
    assert r.ops[10]["data"] == odd
    assert [o["status"] for o in r.ops if o["op"] == "set_status"] == [3, 0]
    assert all(o.get("inferred") for o in r.ops if o["op"] in ("set_status", "set_backend_features"))
    assert not any(o.get("inferred") for o in r.ops if o["op"] in ("update", "open", "release"))
    # the model: open/set_owner/... fine; the duplicate UPDATE is EEXIST (EFAULT); the
    # type-9 write EINVAL (EFAULT)
    n, diffs = I.check(r.ops, "vdpa_sim")
    assert diffs == [] and n == len(r.ops)


@pytest.mark.parametrize("lines, where, what", [
    (['1 openat(-100, "/dev/vhost-vdpa-0", 2) = 9', '1 write(9, "\\x02\\x00"..., 72) = 72'],
     2, "truncated"),
    (['1 openat(-100, "/dev/vhost-vdpa-0", 2) = 9', "1 ioctl(9, 0x4001af72 <unfinished ...>"],
     2, "never finished"),
    (['1 <... ioctl resumed>, 0) = 0'], 1, "without its unfinished"),
    (['1 openat(-100, "/dev/vhost-vdpa-0", 2) = 9', "1 ioctl(9, FOO, 0) = 0"], 2,
     "unknown request"),
    (["hello world"], 1, "not an strace line"),
    (['1 ioctl(9, 0xaf01, 0) = 0'], None, "no successful openat"),
    (['1 openat(-100, "/dev/vhost-vdpa-0", 2) = 9', "1 ioctl(9, 0xaf01, 0) = -1"], 2,
     "without an errno"),
])
def test_strace_errors_name_the_line(lines, where, what):
    with pytest.raises(I.ImportError_) as ei:
        I.from_strace(lines, path="s.log")
    msg = str(ei.value)
    assert msg.startswith(f"s.log:{where}: " if where else "s.log: ") and what in msg, msg


# ============================================================== the command
def _iotlb(*args, check=None):
    r = subprocess.run([sys.executable, "-m", "iotlb", *args], capture_output=True, text=True)
    if check is not None:
        assert r.returncode == check, (r.returncode, r.stdout, r.stderr)
    return r


def test_cli_import_writes_a_trace_that_replay_runs(tmp_path):
    stem = next(s for s in CASES if _meta(s)["memlock_pages"] != "unlimited" and
                s.startswith("qemu72"))
    meta = _meta(stem)
    out = tmp_path / "s.jsonl"
    opts = [f"--option={k}={int(v)}" for k, v in meta["model_options"].items()]
    r = _iotlb("import", "strace", str(DATA / f"{stem}.strace"), "-o", str(out),
               "--memlock", str(meta["memlock_pages"]), "--check", "--kernel", "6.12",
               *opts, check=0)
    assert "0 differences" in r.stderr and "inferred" in r.stderr
    r = _iotlb("replay", str(out), "--json", "--kernel", "6.12", *opts, check=0)
    rep = json.loads(r.stdout)
    # strace's results are expectations: the 3 failing UPDATEs are answers, all met
    assert rep["ok"] and rep["failed"] == 0 and rep["messages"] > 40
    assert rep["expectations"]["unmet"] == 0 and rep["expectations"]["checked"] > 40
    # the same log checked against the wrong model: differences, exit 1
    r = _iotlb("import", "strace", str(DATA / f"{stem}.strace"), "-o", str(out), "--memlock",
               str(meta["memlock_pages"]), "--check", "--option=use_va=1", check=1)
    assert "6 differences" in r.stderr
    r = _iotlb("import", "qemu-trace", str(DATA / f"{stem}.trace"), check=0)
    ops = [T.parse_op(json.loads(line)) for line in r.stdout.splitlines()]
    assert ops[0]["op"] == "open" and ops[0]["inferred"]


def test_cli_import_bad_input_is_exit_2_with_the_line(tmp_path):
    bad = tmp_path / "bad.log"
    bad.write_text("vhost_vdpa_set_owner dev: 0x1\n%%% nope\n")
    r = _iotlb("import", "qemu-trace", str(bad), check=2)
    assert f"{bad}:2: not a QEMU trace line" in r.stderr
    r = _iotlb("import", "strace", str(tmp_path / "missing.log"), check=2)
    assert "cannot read" in r.stderr
    r = _iotlb("import", "strace", str(bad), "--memlock", "lots", check=2)
    assert "--memlock" in r.stderr
