#!/usr/bin/env python3
"""Fuzz target: ``VhostVdpa.write()`` (and the ioctls around it) on every built-in
backend.

Input layout:

* byte 0 picks the backend (mod 7): platform_iommu; vdpa_sim with batch_mapping
  True/False x use_va True/False; mlx5 with umem_uid_0 True/False;
* byte 1 configures the device: IOVA range, RLIMIT_MEMLOCK, strict user memory,
  non-contiguous placement / VMA declarations, backend features acked, 2-byte pages;
* the rest is a stream of operations: mostly ``write()`` of a structured or raw
  record, sometimes an ioctl (SET_STATUS, SET_BACKEND_FEATURES, SET_GROUP_ASID,
  SUSPEND/RESUME, release + reopen).

Contract checked after every operation:

* ``write()`` returns 72 or raises :class:`iotlb.IOTLBError` -- nothing else; a
  handler failure is EFAULT whose ``__cause__`` is an ``IOTLBError``; a parse failure
  is EINVAL;
* the ioctls (called with well-typed arguments) raise only ``IOTLBError``;
* ``VhostVdpa.check_invariants()`` holds, and every vhost and device IOTLB passes the
  engine's own ``_check()``.

    python tests/fuzz/fuzz_write.py -max_total_time=600 tests/fuzz/corpus/write
"""
from __future__ import annotations

import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fuzzlib import U64, Reader, run_atheris  # noqa: E402

import iotlb  # noqa: E402
from iotlb import IOTLBError, wire  # noqa: E402
from iotlb.usermem import UserMemory  # noqa: E402
from iotlb.vdpa import VhostVdpa  # noqa: E402

BACKENDS = (
    ("platform_iommu", {}),
    ("vdpa_sim", {"batch_mapping": True, "use_va": True}),
    ("vdpa_sim", {"batch_mapping": True, "use_va": False}),
    ("vdpa_sim", {"batch_mapping": False, "use_va": True}),
    ("vdpa_sim", {"batch_mapping": False, "use_va": False}),
    ("mlx5", {"umem_uid_0": True}),
    ("mlx5", {"umem_uid_0": False}),
)

#: set when a run of many ops should stop early (big inputs stay fast)
MAX_OPS = 64
#: the usual page; config bit 32 picks TINY pages instead, where one UPDATE of the
#: whole space pins 2**62 pages and the page counters approach 2**63 (bug 13)
PAGE = 4096
TINY = 2

_TYPES = (wire.VHOST_IOTLB_UPDATE,) * 6 + (wire.VHOST_IOTLB_INVALIDATE,) * 3 + (
    wire.VHOST_IOTLB_BATCH_BEGIN, wire.VHOST_IOTLB_BATCH_END, wire.VHOST_IOTLB_MISS,
    wire.VHOST_IOTLB_ACCESS_FAIL, 0, 7, 255)
_RANGES = ((0, U64), (0x1000, U64), (0, (1 << 48) - 1), (0x10000, 0x3FFFFF),
           (0, 0xFFFFFFFF))
_MEMLOCK = (None, None, 0, 1, 4, 64, 1 << 20, "top")   # top: (2**64-1) >> page_shift


def make_device(r: Reader):
    name, opts = BACKENDS[r.u8() % len(BACKENDS)]
    cfg = r.u8()
    opts = dict(opts)
    if cfg & 1:
        opts["iova_range"] = _RANGES[r.u8() % len(_RANGES)]
    backend = iotlb.load_backend(name, **opts)
    page = TINY if cfg & 32 else PAGE
    memlock = _MEMLOCK[r.u8() % len(_MEMLOCK)]
    if memlock == "top":
        memlock = U64 >> (page.bit_length() - 1)
    mem = UserMemory(page, memlock_pages=memlock, strict=bool(cfg & 2))
    if cfg & 4:
        # declare some memory layout: placements (non-contiguous PA) and VMAs
        for _ in range(r.u8() % 6):
            k = r.u8() % 5
            a = (r.u8() & 0x3F) * page
            n = ((r.u8() & 0x7) + 1) * page
            try:
                if k == 0:
                    mem.place(a, n, (r.u8() & 0xFF) * page)
                elif k == 1:
                    mem.map_anon(a, n, shared=bool(r.u8() & 1))
                elif k == 2:
                    mem.map_file(a, n, shared=bool(r.u8() & 1))
                elif k == 3:
                    mem.map_io(a, n)
                else:
                    mem.munmap(a, n)
            except (ValueError, OverflowError, IOTLBError):
                pass
    dev = VhostVdpa(backend, usermem=mem, page_size=page)
    dev.open()
    dev.set_owner()
    offered = dev.get_backend_features()
    want = r.u16() | wire.BackendFeature.IOTLB_MSG_V2 if cfg & 8 else r.u16()
    try:
        dev.set_backend_features(want & offered if cfg & 16 else want & 0x1FF)
    except IOTLBError:
        dev.set_backend_features(offered & int(wire.BackendFeature.IOTLB_MSG_V2
                                               | wire.BackendFeature.IOTLB_BATCH
                                               | wire.BackendFeature.IOTLB_ASID))
    return dev, backend


def _record(r: Reader) -> bytes:
    k = r.u8()
    if k & 0xC0 == 0xC0:   # raw bytes of any length
        return r.take(r.u8() % 80)
    t = _TYPES[k % len(_TYPES)]
    version = 1 if k & 0x20 else 2
    asid = 0 if version == 1 else (r.u8() % 4 if k & 0x10 else 0)
    iova = r.addr()
    size = r.size()
    uaddr = r.addr() if k & 0x08 else iova + ((r.u8() & 3) << 20)
    perm = r.pick((3, 3, 1, 2, 0, 0xFF, 4))
    rec = wire.encode(t, iova, size, uaddr & U64, perm, asid=asid, version=version)
    if r.u8() & 0xF0 == 0xF0:  # short or long write of a real record
        rec = (rec + bytes(16))[:r.u8() % 88]
    return rec


def _write(dev, rec: bytes) -> None:
    try:
        n = dev.write(rec)
    except IOTLBError as e:
        if e.errno == errno.EFAULT:
            assert isinstance(e.__cause__, IOTLBError), repr(e.__cause__)
        else:
            assert e.errno in (errno.EINVAL, errno.EBADF), e
        return
    assert n == 72, n


def _ioctl(dev, backend, r: Reader) -> None:
    k = r.u8() % 10
    try:
        if k == 0:
            dev.set_status(r.pick((0, 1, 3, 7, 15, 0x0F, 0x40, 0x80, r.u8())))
        elif k == 1:
            dev.set_status(0)
        elif k == 2:
            dev.set_backend_features(dev.get_backend_features() & r.u16())
        elif k == 3:
            dev.set_group_asid(r.u8() % 4, r.u8() % 3)
        elif k == 4:
            dev.suspend()
        elif k == 5:
            dev.resume()
        elif k == 6:
            dev.release()
            dev.open()
            if r.u8() & 1:
                dev.set_owner()
                dev.set_backend_features(dev.get_backend_features()
                                         & (r.u16() | 0x2))
        elif k == 7:
            dev.get_vring_group(r.u8() % 4)
        elif k == 8:
            dev.write_many(b"".join(_record(r) for _ in range(r.u8() % 3)))
        else:
            dev.update(r.addr(), r.size(), r.addr(), r.pick((1, 2, 3)), r.u8() % 3)
    except IOTLBError:
        pass


def _check(dev, backend) -> None:
    dev.check_invariants()
    for asid in range(backend.nas):
        t = dev.vhost_iotlb(asid)
        if t is not None:
            t._check()
        backend.device_iotlb(asid)._check()


def TestOneInput(data: bytes) -> None:
    r = Reader(data)
    dev, backend = make_device(r)
    _check(dev, backend)
    ops = 0
    while not r.exhausted and ops < MAX_OPS:
        ops += 1
        if r.u8() < 0xE0:
            _write(dev, _record(r))
        else:
            _ioctl(dev, backend, r)
        _check(dev, backend)
    if dev.is_open:
        dev.release()
        _check(dev, backend)
        assert dev.pinned_pages == 0


if __name__ == "__main__":
    run_atheris(TestOneInput)
