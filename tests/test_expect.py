"""Outcomes and expectations (iotlb.expect): what the model answers per operation, in
the vocabulary a real kernel is observed in (iotlb.conform)."""
import pytest

import iotlb
from iotlb import expect as ex
from iotlb.trace import parse_op
from iotlb.vdpa import VhostVdpa

RAM = 0x100000000000


def _dev(**options):
    options.setdefault("use_va", False)
    backend = iotlb.load_backend("vdpa_sim", **options)
    log = ex.ParentLog(backend)
    dev = VhostVdpa(backend)
    for op in ({"op": "open"}, {"op": "set_owner"},
               {"op": "set_backend_features", "features": 0x6}):
        ex.observe(dev, parse_op(op), log)
    return dev, log


def _obs(dev, log, **op):
    return ex.observe(dev, parse_op(op), log)


def test_update_then_invalidate_on_set_map_parent():
    """vhost_vdpa_map outside a batch calls set_map with the whole IOTLB (vdpa.c)."""
    dev, log = _dev()
    out = _obs(dev, log, op="update", iova=0x1000, size=0x2000, uaddr=RAM)
    assert out == {"ret": 72, "errno": None, "value": None, "handler": 0, "vmpin": 2,
                   "parent": ["set_map(0)"]}
    out = _obs(dev, log, op="invalidate", iova=0x1000, size=0x1000)
    assert (out["ret"], out["handler"], out["vmpin"], out["parent"]) == (72, 0, 0,
                                                                        ["set_map(0)"])


def test_dma_map_parent_sees_each_run_through_the_compiled_path():
    """The ParentLog wraps instance ops, so the compiled fast path's calls are seen."""
    dev, log = _dev(batch_mapping=False)
    dev.usermem.place(RAM, 0x2000, 0x40000000)
    out = _obs(dev, log, op="update", iova=0, size=0x3000, uaddr=RAM, perm="RO")
    assert out["parent"] == ["dma_map(0, 0, 0x2000, 0x40000000, 1)",
                             "dma_map(0, 0x2000, 0x1000, 0x100000002000, 1)"]
    for i in range(5):
        out = _obs(dev, log, op="update", iova=0x10000 * (i + 1), size=0x1000, uaddr=RAM)
        assert out["parent"] == [f"dma_map(0, {0x10000 * (i + 1):#x}, 0x1000, 0x40000000, 3)"]
    assert _obs(dev, log, op="invalidate", iova=0, size=0x3000)["parent"] == [
        "dma_unmap(0, 0, 0x2000)", "dma_unmap(0, 0x2000, 0x1000)"]


def test_handler_errno_and_write_errno():
    """vhost_chr_write_iter: a handler error is EFAULT; a message it rejects itself
    never reaches the handler."""
    dev, log = _dev()
    out = _obs(dev, log, op="invalidate", iova=0, size=0x1000, asid=1)
    assert (out["errno"], out["handler"], out["ret"]) == ("EFAULT", "EINVAL", None)
    out = _obs(dev, log, op="update", iova=0, size=0, uaddr=RAM)
    assert (out["errno"], out["handler"]) == ("EINVAL", None)
    out = _obs(dev, log, op="write", hex="02000000")
    assert (out["errno"], out["handler"]) == ("EINVAL", None)


def test_get_values_and_eopnotsupp_name():
    dev, log = _dev()
    assert _obs(dev, log, op="get_iova_range")["value"] == [0, 2**64 - 1]
    assert _obs(dev, log, op="get_as_num")["value"] == 2
    assert _obs(dev, log, op="get_vqs_count")["value"] == 3
    assert ex.errno_name(95) == "EOPNOTSUPP"


def test_strict_memory_after_mmap():
    """The first mmap makes memory strict: an UPDATE of undeclared memory faults in
    pin_user_pages (vhost_vdpa_pa_map), a declared one pins."""
    dev, log = _dev()
    _obs(dev, log, op="mmap", uaddr=RAM, size=0x2000, pa=[[0, 0x7000, 0x2000]])
    ok = _obs(dev, log, op="update", iova=0, size=0x2000, uaddr=RAM)
    assert (ok["errno"], ok["vmpin"]) == (None, 2)
    bad = _obs(dev, log, op="update", iova=0x10000, size=0x1000, uaddr=RAM + 0x10000)
    assert bad["errno"] == "EFAULT" and bad["handler"] is not None and bad["vmpin"] == 2
    assert [m.addr for m in dev.vhost_iotlb(0)] == [0x7000]


def test_memlock_op_sets_the_limit():
    dev, log = _dev()
    _obs(dev, log, op="memlock", pages=1)
    out = _obs(dev, log, op="update", iova=0, size=0x2000, uaddr=RAM)
    assert (out["errno"], out["handler"], out["vmpin"]) == ("EFAULT", "ENOMEM", 0)
    _obs(dev, log, op="memlock", pages="unlimited")
    assert dev.usermem.memlock_pages is None


def test_mismatches_report_only_expected_keys():
    out = {"ret": 72, "errno": None, "handler": 0, "vmpin": 1, "parent": ["set_map(0)"]}
    assert ex.mismatches({"ret": 72, "vmpin": 1}, out) == []
    assert ex.mismatches({"parent": []}, out) == [("parent", [], ["set_map(0)"])]
    assert ex.mismatches({"value": 3}, {"ret": 0}) == [("value", 3, "<not observed>")]
    assert ex.format_mismatch("errno", "EFAULT", None) == "errno: expected EFAULT, found none"


@pytest.mark.parametrize("bad", [{"errno": "EFOO"}, {"vmpin": "x"}, {"parent": "set_map"},
                                 [], {"ret": True}])
def test_bad_expectations_are_clear_errors(bad):
    with pytest.raises(ValueError, match="expect"):
        parse_op({"op": "get_status", "expect": bad})
