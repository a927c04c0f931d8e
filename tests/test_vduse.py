"""The ``vduse`` backend: the conformance kit on every VDUSE shape, then the rules of
drivers/vdpa/vdpa_user/{vduse_dev.c,iova_domain.c} (6.12.118, 7.2.13) one by one,
through the device model."""
import errno

import pytest

import iotlb
from iotlb import U64_MAX
from iotlb.backend import BACKEND_F_IOTLB_PERSIST, has_persistent_map, load_backend
from iotlb.testing import BackendConformance
from iotlb.vdpa import VhostVdpa
from iotlb_backends.vduse import Vduse, Vduse72, Vduse612

# ----------------------------------------------------------------------------- the kit

#: The kit passes on every VDUSE variant: what VDUSE does differently from other
#: parents is declared as kernel findings (Vduse.kernel_findings) with its source.


class TestVduse72Kit(BackendConformance):
    def make_backend(self):
        return Vduse()


class TestVduse72ApiV0Kit(BackendConformance):
    def make_backend(self):
        return Vduse(api_version=0)


class TestVduse72MultiAsKit(BackendConformance):
    def make_backend(self):
        return Vduse(nas=3, ngroups=2, nvqs=3, vq_groups=(0, 0, 1))


class TestVduse612Kit(BackendConformance):
    def make_backend(self):
        return Vduse(kernel="6.12")


# ----------------------------------------------------------------------------- helpers
def _open(backend, kernel="7.2", ack=0):
    dev = VhostVdpa(backend, kernel=kernel)
    dev.open()
    dev.set_owner()
    if ack:
        dev.set_backend_features(ack)
    return dev


def _entries(tlb):
    return [(m.start, m.last, m.addr, m.perm) for m in tlb]


# ----------------------------------------------------------------------------- shape
def test_registered_under_vduse():
    b = load_backend("vduse", nas=2, ngroups=2)
    assert isinstance(b, Vduse72) and (b.nas, b.ngroups, b.use_va) == (2, 2, True)


@pytest.mark.parametrize("kernel", ["6.12", "7.2"])
def test_no_reset_map_no_compat_reset_no_persist(kernel):
    """vduse_vdpa_config_ops has neither reset_map nor compat_reset, so vhost-vdpa does
    not offer IOTLB_PERSIST and refuses to have it acked."""
    b = Vduse(kernel=kernel)
    assert getattr(b, "reset_map", None) is None and getattr(b, "compat_reset", None) is None
    assert not has_persistent_map(b)
    dev = _open(b, kernel)
    assert not dev.get_backend_features() & BACKEND_F_IOTLB_PERSIST
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.set_backend_features(BACKEND_F_IOTLB_PERSIST)
    assert exc.value.errno == errno.EOPNOTSUPP
    dev.release()


def test_no_suspend_resume_no_desc_group_full_iova_range():
    b = Vduse()
    for op in ("suspend", "resume", "get_vq_desc_group", "dma_map", "dma_unmap"):
        assert getattr(b, op, None) is None, op
    assert b.get_iova_range() == (0, U64_MAX)


def test_option_errors_change_nothing():
    with pytest.raises(ValueError, match="VDUSE is modelled on kernels"):
        Vduse(kernel="6.1")
    with pytest.raises(ValueError, match="does not exist on 6.12"):
        Vduse(kernel="6.12", api_version=1)
    with pytest.raises(ValueError, match="API v0 has one address space"):
        Vduse(kernel="6.12", nas=2)
    with pytest.raises(ValueError, match="vq_groups"):
        Vduse(nas=2, ngroups=2, nvqs=2, vq_groups=(0, 2))
    with pytest.raises(ValueError, match="max_iotlb_entries"):
        Vduse(max_iotlb_entries=0)
    with pytest.raises(ValueError, match="models kernel 7.2"):
        Vduse72(kernel="6.12")


# ----------------------------------------------------------------------------- set_map
@pytest.mark.parametrize("kernel", ["6.12", "7.2"])
def test_update_copies_the_whole_vhost_iotlb_va_mode(kernel):
    """vduse_domain_set_map: the domain is the vhost IOTLB, user addresses (VA mode),
    and the daemon is told VDUSE_UPDATE_IOTLB [0, ~0] every time."""
    b = Vduse(kernel=kernel)
    dev = _open(b, kernel)
    dev.update(0x100000, 0x2000, 0x7F0000000000, perm=3)
    dev.update(0x200000, 0x1000, 0x7F0000100000, perm=1)
    assert _entries(b.device_iotlb(0)) == _entries(dev.vhost_iotlb(0))
    assert b.device_iotlb(0).first(0x100000, 0x100000).addr == 0x7F0000000000
    assert dev.pinned_pages == 0                         # VA mode: nothing pinned
    assert b.messages.count(("UPDATE_IOTLB", 0, 0, U64_MAX)) == 2
    dev.invalidate(0x100000, 0x2000)
    assert _entries(b.device_iotlb(0)) == _entries(dev.vhost_iotlb(0))
    dev.release()


def test_batch_sends_one_set_map():
    b = Vduse()
    dev = _open(b)
    with dev.batch():
        dev.update(0x1000, 0x1000, 0x7F0000000000)
        dev.update(0x3000, 0x1000, 0x7F0000001000)
        assert len(b.device_iotlb(0)) == 0
    assert len(b.device_iotlb(0)) == 2
    assert [m for m in b.messages if m[0] == "UPDATE_IOTLB"] == [("UPDATE_IOTLB", 0, 0, U64_MAX)]
    dev.release()


def test_domain_entry_limit_is_enospc_and_wipes_the_domain():
    """iova_domain.c: the domain's vhost_iotlb has max_iotlb_entries (flags 0): an
    entry past the limit fails set_map with ENOSPC after the domain was wiped.
    Outside a batch vhost_vdpa_map deletes the new range and vhost_vdpa_va_map's
    error path (vhost_vdpa_unmap) calls set_map again with what is left; at
    BATCH_END the error is ignored and the domain stays empty."""
    b = Vduse(max_iotlb_entries=2)
    dev = _open(b)
    dev.update(0x1000, 0x1000, 0x7F0000000000)
    dev.update(0x3000, 0x1000, 0x7F0000001000)
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.update(0x5000, 0x1000, 0x7F0000002000)
    assert exc.value.errno == errno.ENOSPC
    assert [m[0] for m in dev.vhost_iotlb(0)] == [0x1000, 0x3000]
    assert _entries(b.device_iotlb(0)) == _entries(dev.vhost_iotlb(0))
    with dev.batch():
        dev.update(0x5000, 0x1000, 0x7F0000002000)
    assert len(dev.vhost_iotlb(0)) == 3 and len(b.device_iotlb(0)) == 0
    dev.release()


# ----------------------------------------------------------------------------- reset
@pytest.mark.parametrize("kernel", ["6.12", "7.2"])
def test_set_status_0_keeps_the_user_map(kernel):
    """vduse_vdpa_reset → vduse_dev_reset drops only bounce maps: the map vhost set
    survives SET_STATUS(0) (no compat_reset, so no CLEAN_MAP either)."""
    b = Vduse(kernel=kernel)
    dev = _open(b, kernel)
    dev.update(0x100000, 0x2000, 0x7F0000000000)
    before = _entries(b.device_iotlb(0))
    dev.set_status(0xF)
    dev.set_status(0)
    assert _entries(b.device_iotlb(0)) == before != []
    assert b.get_status() == 0 and ("SET_STATUS", 0) in b.messages
    dev.release()


@pytest.mark.parametrize("kernel", ["6.12", "7.2"])
def test_release_leaves_the_last_map_in_the_domain(kernel):
    """No reset_map: vhost_vdpa_remove_as unmaps its IOTLB without set_map, so the
    domain keeps the last map until the next set_map (a new open's first UPDATE)."""
    b = Vduse(kernel=kernel)
    dev = _open(b, kernel)
    dev.update(0x100000, 0x2000, 0x7F0000000000)
    last = _entries(b.device_iotlb(0))
    dev.release()
    assert _entries(b.device_iotlb(0)) == last != []
    assert dev.vhost_iotlb(0) is None
    dev = _open(b, kernel)
    dev.update(0x900000, 0x1000, 0x7F0000900000)
    assert [m.start for m in b.device_iotlb(0)] == [0x900000]
    dev.release()


# ----------------------------------------------------------------------------- groups / AS
def test_612_has_no_vq_group_ops():
    """6.12's vduse_vdpa_config_ops: no get_vq_group, no set_group_asid."""
    b = Vduse(kernel="6.12")
    assert type(b) is Vduse612
    dev = _open(b, "6.12")
    for call in (lambda: dev.get_vring_group(0), lambda: dev.set_group_asid(0, 0)):
        with pytest.raises(iotlb.IOTLBError) as exc:
            call()
        assert exc.value.errno == errno.EOPNOTSUPP
    dev.release()


def test_72_api_v0_group_0_and_set_group_asid_einval():
    b = Vduse(api_version=0)
    dev = _open(b)
    assert dev.get_vring_group(1) == 0
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.set_group_asid(0, 0)
    assert exc.value.errno == errno.EINVAL
    dev.release()


def test_72_api_v1_address_spaces_and_groups():
    """API v1: one domain per AS, set_map of AS n fills domain n only; the groups are
    what VDUSE_VQ_SETUP said; SET_GROUP_ASID reaches the daemon and rebinds; a reset
    keeps the binding (vduse_dev_reset does not touch dev->groups)."""
    b = Vduse(nas=2, ngroups=2, nvqs=3, vq_groups=(0, 0, 1))
    dev = _open(b)
    assert [dev.get_vring_group(vq) for vq in range(3)] == [0, 0, 1]
    dev.update(0x1000, 0x1000, 0x7F0000000000, asid=1)
    assert len(b.device_iotlb(0)) == 0 and len(b.device_iotlb(1)) == 1
    assert ("UPDATE_IOTLB", 1, 0, U64_MAX) in b.messages
    dev.set_group_asid(1, 1)
    assert ("SET_VQ_GROUP_ASID", 1, 1) in b.messages and b.group_asid(1) == 1
    dev.set_status(0)
    assert b.group_asid(1) == 1 and len(b.device_iotlb(1)) == 1
    with pytest.raises(iotlb.IOTLBError) as exc:        # vhost-vdpa's bound check
        dev.set_group_asid(2, 0)
    assert exc.value.errno == errno.EINVAL
    dev.release()


def test_set_map_asid_out_of_range_is_a_model_error():
    with pytest.raises(ValueError, match="asid must be in 0..0"):
        Vduse().set_map(1, iotlb.IOTLB())


def test_matrix_reports_the_kernel_findings_not_failures(capsys):
    """VDUSE keeps its last map after release, as the real kernel does: the matrix
    says so as a kernel finding and exits 0; without the declaration the same rows
    fail the release check (exit 1)."""
    from iotlb import cli
    from iotlb.backend import register, unregister

    assert cli.main(["matrix", "--guest-size", "16M", "--backend", "vduse"]) == 0
    out = capsys.readouterr().out
    assert "kernel findings" in out and "vduse: after release: VDUSE has no reset_map" in out

    class Undeclared(Vduse72):
        kernel_findings = {}

    register("t_undeclared_vduse", Undeclared)
    try:
        assert cli.main(["matrix", "--guest-size", "16M", "--backend",
                         "t_undeclared_vduse"]) == 1
    finally:
        unregister("t_undeclared_vduse")
    assert "release_reopen" in capsys.readouterr().out
