"""iotlb conform's machinery without a kernel: the kernel side is played by a second
model (possibly configured differently), so that agreement, every kind of difference,
recording and the real user-memory code are exercised here; the real-kernel run is
tests/kernel/."""
import json
import os

import pytest

import iotlb
from iotlb import conform
from iotlb import expect as ex
from iotlb.trace import parse_op, read_trace
from iotlb.vdpa import VhostVdpa

RAM = 0x100000000000
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="/proc/self/pagemap frame numbers need root")


class ModelAsKernel:
    """Stands in for RealDevice: a model device answering as the kernel would, on
    the memory RealMemory really mapped (its placement, as the kernel sees it)."""

    def __init__(self, **options):
        self.dev = VhostVdpa(iotlb.load_backend("vdpa_sim", **options))
        self.mapped = []

    def run(self, op):
        from iotlb.trace import apply_memory

        while self.mapped:
            apply_memory(self.dev.usermem, self.mapped.pop(0))
        out = ex.observe(self.dev, op)
        return {k: out[k] for k in ("ret", "errno", "value")}

    def close(self):
        if self.dev.is_open:
            self.dev.release()

    def vmpin(self, page_size):
        return self.dev.usermem.pinned_vm


def _ops(*lines):
    return [parse_op(x) for x in lines]


TRACE = _ops(
    {"op": "meta", "rules": ["§3"], "comment": "a small life"},
    {"op": "open"}, {"op": "set_owner"}, {"op": "get_backend_features"},
    {"op": "set_backend_features", "features": ["MSG_V2", "BATCH", "ASID"]},
    {"op": "get_as_num"}, {"op": "get_iova_range"},
    {"op": "update", "iova": 0, "size": 0x4000, "uaddr": RAM},
    {"op": "update", "iova": 0x1000, "size": 0x1000, "uaddr": RAM + 0x1000},
    {"op": "invalidate", "iova": 0x8000, "size": 0x1000, "asid": 1},
    {"op": "set_group_asid", "group": 5, "asid": 0},
    {"op": "invalidate", "iova": 0, "size": 0x1000},
    {"op": "release"},
)


@pytest.fixture(autouse=True)
def _kernel_sees_real_memory(monkeypatch):
    """Every RealMemory.mmap is shown to the ModelAsKernel of the test."""
    real_mmap = conform.RealMemory.mmap

    def mmap(self, uaddr, size, kind):
        runs = real_mmap(self, uaddr, size, kind)
        if _KERNEL:
            _KERNEL[-1].mapped.append({"op": "mmap", "uaddr": uaddr, "size": size,
                                       "kind": kind, "pa": runs})
        return runs

    monkeypatch.setattr(conform.RealMemory, "mmap", mmap)
    yield
    _KERNEL.clear()


_KERNEL = []


def _run(kernel_options, model_options, ops=TRACE, record=None):
    kernel = ModelAsKernel(**kernel_options)
    _KERNEL.append(kernel)

    def make_model():
        backend = iotlb.load_backend("vdpa_sim", **model_options)
        return VhostVdpa(backend), ex.ParentLog(backend)

    return conform.run_trace("t", ops, device_path="/nonexistent", make_model=make_model,
                             page_size=4096, real=kernel, vmpin=kernel.vmpin,
                             record=record)


@needs_root
def test_same_model_on_both_sides_agrees_and_records():
    res = _run({"use_va": False}, {"use_va": False}, record={"backend": "vdpa_sim"})
    assert res.ok, res.as_dict()
    assert res.ops == len(TRACE) - 1 + 2        # meta skipped; memlock, one mmap added
    assert res.recorded[1]["op"] == "memlock"
    mmap = res.recorded[2]
    assert mmap["op"] == "mmap" and mmap["uaddr"] == RAM and mmap["size"] == 0x4000
    assert sum(n for _o, _p, n in mmap["pa"]) == 0x4000
    upd = next(op for op in res.recorded if op["op"] == "update")
    assert upd["expect"]["ret"] == 72 and upd["expect"]["vmpin"] == 4


@needs_root
def test_recorded_trace_round_trips_and_holds_on_the_model(tmp_path):
    res = _run({"use_va": False}, {"use_va": False}, record={"backend": "vdpa_sim"})
    path = tmp_path / "t.jsonl"
    conform.write_recorded(str(path), res.recorded)
    ops = [e.op for e in read_trace(str(path))]
    assert ops[0]["op"] == "meta" and ops[0]["recorded"] == {"backend": "vdpa_sim"}
    assert "expect" in ops[-1]
    backend = iotlb.load_backend("vdpa_sim", use_va=False)
    dev = VhostVdpa(backend)
    for op in ops:
        out = ex.observe(dev, op)
        assert ex.mismatches(op.get("expect", {}), out) == [], op


@needs_root
def test_differences_are_reported_per_op_and_key():
    # the "kernel" has one address space: the AS-1 INVALIDATE and nas differ
    res = _run({"use_va": False, "nas": 1}, {"use_va": False})
    assert not res.ok
    by_op = {d["op"]: d for d in res.differences}
    assert by_op["GET_AS_NUM"]["keys"] == ["value"]
    assert (by_op["GET_AS_NUM"]["kernel"]["value"], by_op["GET_AS_NUM"]["model"]["value"]) \
        == (1, 2)
    assert all(d["line"] is None for d in res.differences)  # ops built in memory


@needs_root
def test_vmpin_difference_is_seen():
    # VA mode pins nothing: the model in PA mode pins 4 pages the "kernel" does not
    res = _run({"use_va": True}, {"use_va": False})
    keys = {k for d in res.differences for k in d["keys"]}
    assert "vmpin" in keys


@needs_root
def test_memory_in_the_way_is_an_error_not_a_difference():
    ops = _ops({"op": "mmap", "uaddr": RAM, "size": 0x1000},
               {"op": "mmap", "uaddr": RAM, "size": 0x1000})
    res = _run({}, {}, ops=ops)
    assert res.error and "in use" in res.error and not res.ok


def test_cli_bad_input_exit_2(tmp_path, capsys):
    from iotlb.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op": "update"}\n')
    assert main(["conform", str(bad)]) == 2
    assert "needs field 'iova'" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"op": "open"}\n')
    assert main(["conform", "--device", str(tmp_path / "nope"), str(good)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["conform", str(tmp_path / "empty-dir-none")]) == 2


def test_tracer_parses_ftrace_lines(tmp_path):
    """The kprobe/kretprobe lines as tracefs prints them."""
    (tmp_path / "trace").write_text(
        "# tracer: nop\n"
        "   python3-123 [001] ..... 10.1: msg: (vhost_chr_write_iter+0x1/0x2 <- "
        "vhost_vdpa_process_iotlb_msg) ret=-28\n"
        "   python3-123 [001] ..... 10.2: dma_map: (vdpasim_dma_map+0x0/0x90 [vdpa_sim]) "
        "asid=0 iova=0x1000 size=0x2000 pa=0x5000 perm=3\n"
        "   python3-123 [001] ..... 10.3: reset: (vdpasim_reset+0x0/0x10 [vdpa_sim])\n"
        "   python3-123 [001] ..... 10.4: compat_reset: (vdpasim_compat_reset+0x0/0x10 "
        "[vdpa_sim]) flags=0\n")
    t = conform.Tracer("vdpa_sim", tracefs=str(tmp_path))
    rets, calls = t.take()
    assert rets == [-28]
    assert calls == ["dma_map(0, 0x1000, 0x2000, 0x5000, 3)", "reset()"]
    assert (tmp_path / "trace").read_text() == ""


def test_model_options_from_sysfs(tmp_path):
    sysfs = tmp_path
    for mod, params in {"vdpa_sim": {"batch_mapping": "0", "use_va": "Y",
                                     "max_iotlb_entries": "2048"},
                        "vhost_vdpa": {"max_iotlb_entries": "100"}}.items():
        d = sysfs / "module" / mod / "parameters"
        d.mkdir(parents=True)
        for k, v in params.items():
            (d / k).write_text(v + "\n")
    (sysfs / "devices" / "vdpa0" / "vhost-vdpa-0").mkdir(parents=True)
    (sysfs / "bus" / "vdpa" / "devices").mkdir(parents=True)
    os.symlink(sysfs / "devices" / "vdpa0", sysfs / "bus" / "vdpa" / "devices" / "vdpa0")
    (sysfs / "module" / "vdpa_sim_net").mkdir()
    cfg = conform.read_config("/dev/vhost-vdpa-0", sysfs=str(sysfs))
    assert (cfg["parent"], cfg["vdpa_device"]) == ("vdpa_sim", "vdpa0")
    backend, device = conform.model_options(cfg)
    assert backend == {"batch_mapping": False, "use_va": True, "max_iotlb_entries": 2048}
    assert device == {"max_iotlb_entries": 100}
    json.dumps(cfg)
