"""The platform-IOMMU variants that change an answer: ``vp_vdpa`` (behind Intel VT-d)
and ``snet`` (the same with suspend/resume) -- the conformance kit, then their rules
through the device model."""
import errno

import pytest

import iotlb
from iotlb.backend import (BACKEND_F_IOTLB_PERSIST, BACKEND_F_RESUME, BACKEND_F_SUSPEND,
                           load_backend, mapping_style)
from iotlb.testing import BackendConformance
from iotlb.vdpa import VhostVdpa
from iotlb_backends.vp_vdpa import VTD_APERTURE_48, Snet, VpVdpa



class TestVpVdpaKit(BackendConformance):
    """No get_vq_group (a NULL op the kernel allows: iotlb.backend.NULLABLE_OPS)."""

    def make_backend(self):
        return VpVdpa()


class TestSnetKit(BackendConformance):
    def make_backend(self):
        return Snet()


def _open(backend, ack=0):
    dev = VhostVdpa(backend)
    dev.open()
    dev.set_owner()
    if ack:
        dev.set_backend_features(ack)
    return dev


@pytest.mark.parametrize("name, cls", [("vp_vdpa", VpVdpa), ("snet", Snet)])
def test_registered(name, cls):
    b = load_backend(name)
    assert type(b) is cls and mapping_style(b) == "platform"
    assert (b.nas, b.ngroups, b.use_va) == (1, 1, False)


@pytest.mark.parametrize("cls", [VpVdpa, Snet])
def test_get_vring_group_is_eopnotsupp(cls):
    dev = _open(cls())
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.get_vring_group(0)
    assert exc.value.errno == errno.EOPNOTSUPP
    dev.release()


@pytest.mark.parametrize("cls", [VpVdpa, Snet])
@pytest.mark.parametrize("perm", [0, 4, 0xFF])
def test_perm_not_ro_wo_rw_is_einval_from_the_iommu(cls, perm):
    """perm_to_iommu_flags gives neither READ nor WRITE; intel-iommu's map refuses it
    with EINVAL (the handler's errno; write() says EFAULT); nothing stays mapped or
    pinned."""
    b = cls()
    dev = _open(b)
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.update(0x100000, 0x2000, 0x7F0000000000, perm=perm)
    assert exc.value.errno == errno.EINVAL
    assert len(b.device_iotlb(0)) == 0 and len(dev.vhost_iotlb(0)) == 0
    assert dev.pinned_pages == 0
    dev.update(0x100000, 0x2000, 0x7F0000000000, perm=1)
    assert len(b.device_iotlb(0)) == 1
    dev.release()


def test_perm_einval_through_write_is_efault():
    """The same UPDATE through the char device's write(): EFAULT."""
    from iotlb.wire import VHOST_IOTLB_UPDATE, encode

    b = VpVdpa()
    dev = _open(b)
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.write(encode(VHOST_IOTLB_UPDATE, 0x100000, 0x1000, 0x7F0000000000, 4))
    assert exc.value.errno == errno.EFAULT
    dev.release()


def test_iova_range_is_the_vtd_aperture():
    """vhost_vdpa_set_iova_range: no get_iova_range, a domain with force_aperture →
    the aperture; beyond it an UPDATE is EINVAL in vhost-vdpa already."""
    dev = _open(VpVdpa())
    assert dev.get_iova_range() == VTD_APERTURE_48
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.update(1 << 48, 0x1000, 0x7F0000000000)
    assert exc.value.errno == errno.EINVAL
    dev.release()
    dev = _open(VpVdpa(iova_range=(0, (1 << 39) - 1)))
    assert dev.get_iova_range() == (0, (1 << 39) - 1)
    dev.release()


def test_vp_vdpa_offers_persist_but_not_suspend():
    dev = _open(VpVdpa())
    f = dev.get_backend_features()
    assert f & BACKEND_F_IOTLB_PERSIST and not f & (BACKEND_F_SUSPEND | BACKEND_F_RESUME)
    with pytest.raises(iotlb.IOTLBError) as exc:
        dev.set_backend_features(BACKEND_F_SUSPEND)
    assert exc.value.errno == errno.EOPNOTSUPP
    dev.release()


def test_snet_offers_suspend_resume_and_keeps_maps():
    b = Snet()
    dev = _open(b, BACKEND_F_SUSPEND | BACKEND_F_RESUME | BACKEND_F_IOTLB_PERSIST)
    dev.update(0x100000, 0x2000, 0x7F0000000000)
    dev.set_status(0xF)
    dev.suspend()
    assert b.suspended and len(b.device_iotlb(0)) == 1
    dev.resume()
    assert not b.suspended
    dev.suspend()
    dev.set_status(0)
    assert not b.suspended and len(b.device_iotlb(0)) == 1
    dev.release()
    assert b.domain_frees == 1 and len(b.device_iotlb(0)) == 0


@pytest.mark.parametrize("cls", [VpVdpa, Snet])
def test_nas_ngroups_must_be_one(cls):
    with pytest.raises(iotlb.IOTLBError) as exc:
        cls(nas=2)
    assert exc.value.errno == errno.EOPNOTSUPP
