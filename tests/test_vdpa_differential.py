"""The compiled write() against the reference path, on random device lives.

``VhostVdpa.write()`` runs the common UPDATE/INVALIDATE in C (``iotlb/_device.pyx``)
and must either give exactly what ``vhost_chr_write_iter`` → ``vhost_vdpa_process_iotlb_msg``
gives in the reference path (``_fast = False``) or decline before changing anything.
Each case builds two identical devices -- one fast, one not -- on one of six parent
shapes (dma_map, set_map, both, set_map + reset_map, platform IOMMU, ops present as
``None``), in PA or VA mode, with 2-byte to 2 MiB pages, an IOVA range, RLIMIT_MEMLOCK,
injected parent failures (IOTLBError, other exceptions, a re-entrant write, a release
from inside the op), and sends both the same stream: v1/v2/garbage records of every
type, ``write_many`` buffers, short writes, and between them changes of strict memory,
dirty recording, the implicit mapping's file, ``use_va``, memlock, placements, VMAs,
features and release/reopen.  After every step the result (value or exception, errno,
cause) and every observable (entries with ctx, pins, ``pinned_vm``, dirty books, file
references, leaks, the parent's call log, batch and open state, ``check_invariants()``)
must be equal.

``IOTLB_DIFF_CASES`` sets the number of cases (default 2000, about 4 s); on the
core before the fix of bugs 15-18 the first divergence shows at case 17.
"""
from __future__ import annotations

import errno
import os
import random
import struct
from collections import Counter

import pytest

import iotlb
from iotlb import IOTLBError
from iotlb.usermem import UserMemory
from iotlb.vdpa import VhostVdpa
from iotlb.wire import (VHOST_IOTLB_BATCH_BEGIN as BEGIN, VHOST_IOTLB_BATCH_END as END,
                        VHOST_IOTLB_INVALIDATE as INV, VHOST_IOTLB_MSG, VHOST_IOTLB_MSG_V2,
                        VHOST_IOTLB_UPDATE as UPD)

pytestmark = pytest.mark.skipif(iotlb.IMPLEMENTATION != "cython",
                                reason="the twin's write() is the reference path")

UMAX = 2**64 - 1
CASES = int(os.environ.get("IOTLB_DIFF_CASES", 2000))


# ----------------------------------------------------------------------- parents
class _Parent:
    """Logs every op; ``fail[(op, n)]`` makes the n-th call of ``op`` misbehave."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.nas, self.ngroups, self.nvqs = cfg["nas"], 2, 3
        self.use_va = cfg["use_va"]
        self.status = 0
        self.log = []
        self.calls = Counter()
        self.vdev = None

    def _call(self, name, *args):
        self.log.append((name,) + args)
        self.calls[name] += 1
        how = self.cfg["fail"].get((name, self.calls[name]))
        if how == "iotlb":
            raise IOTLBError(errno.ENOMEM, f"injected {name}")
        if how == "other":
            raise RuntimeError(f"injected {name}")
        if how == "reenter" and self.vdev.is_open:
            try:
                self.vdev.write(self.cfg["reenter"])
            except Exception as e:
                self.log.append(("reenter-failed", type(e).__name__, getattr(e, "errno", None)))
        if how == "release" and self.vdev.is_open:
            try:
                self.vdev.release()
            except AssertionError as e:       # books of a half-done op: both paths
                self.log.append(("release-failed", str(e)[:40]))

    def reset(self):
        self._call("reset")
        self.status = 0

    def get_status(self):
        return self.status

    def set_status(self, status):
        self.status = status

    def get_iova_range(self):
        return self.cfg["range"]


class Dma(_Parent):
    def dma_map(self, asid, iova, size, pa, perm, opaque):
        self._call("dma_map", asid, iova, size, pa, perm, opaque)

    def dma_unmap(self, asid, iova, size):
        self._call("dma_unmap", asid, iova, size)


class SetMap(_Parent):
    def set_map(self, asid, iotlb_):
        self._call("set_map", asid, tuple(iotlb_))


class SetMapDma(SetMap, Dma):      # both: vhost-vdpa prefers dma_map
    pass


class Sim(SetMap):
    def compat_reset(self, flags):
        self._call("compat_reset", flags)
        self.status = 0

    def reset_map(self, asid):
        self._call("reset_map", asid)


class Platform(_Parent):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.nas = self.ngroups = 1

    def iommu_domain_alloc(self):
        self._call("iommu_domain_alloc")

    def iommu_domain_free(self):
        self._call("iommu_domain_free")

    def iommu_map(self, iova, size, pa, perm):
        self._call("iommu_map", iova, size, pa, perm)

    def iommu_unmap(self, iova, size):
        self._call("iommu_unmap", iova, size)


class DmaNoneOps(Dma):             # ops present as None: NULL pointers
    set_map = None
    iommu_map = None


SHAPES = (Dma, SetMap, SetMapDma, Sim, Platform, DmaNoneOps)


# ----------------------------------------------------------------------- streams
def _record(outer, asid, t, iova, size, uaddr, perm, tail=b""):
    return struct.pack("<IIQQQBB", outer, asid, iova & UMAX, size & UMAX, uaddr & UMAX,
                       perm, t) + bytes(38) + tail


def _case(rng: random.Random):
    page = rng.choice([2, 4, 8, 4096, 4096, 4096, 2**21])
    first = rng.choice([0, 0, page, UMAX - 64 * page])
    last = rng.choice([UMAX, UMAX, 2**48 - 1, UMAX - page, first + 200 * page])
    if last < first or last > UMAX:
        last = UMAX
    ops = ("dma_map", "dma_unmap", "set_map", "iommu_map", "iommu_unmap")
    fail = {(rng.choice(ops), rng.randint(1, 12)):
            rng.choice(["iotlb", "iotlb", "other", "reenter", "release"])
            for _ in range(rng.choice([0, 0, 1, 3, 6]))}
    cfg = dict(page=page, shape=rng.choice(SHAPES), use_va=rng.random() < 0.4,
               nas=rng.choice([1, 2, 4]), range=(first, last),
               memlock=rng.choice([None, None, 0, 1, 5, 40, 64,
                                   UMAX >> (page.bit_length() - 1)]),
               strict=rng.random() < 0.1, record_dirty=rng.random() < 0.7, fail=fail,
               features=rng.choice([0, 0, 0xE, 1 << 3]))

    def addr():
        r = rng.random()
        if r < 0.6:
            return first + rng.randint(0, 40) * page + rng.choice([0, 0, 0, 1, page // 2,
                                                                  page - 1])
        if r < 0.7:
            return rng.choice([0, 1, page, UMAX, UMAX - page + 1, 2**63, 2**63 - page])
        if r < 0.8:
            return last - rng.randint(0, 4) * page
        return rng.randint(0, UMAX)

    def size():
        r = rng.random()
        if r < 0.6:
            return rng.randint(1, 6) * page
        if r < 0.8:
            return rng.choice([1, page // 2 or 1, page + 1, 2 * page - 1])
        return rng.choice([0, UMAX, 2**63, UMAX - page + 1, rng.randint(0, UMAX)])

    def uaddr():
        if rng.random() < 0.7:
            return rng.randint(0, 60) * page + rng.choice([0, 0, 1, page - 1])
        return rng.choice([0, UMAX, UMAX - page + 1, 2**63, rng.randint(0, UMAX)])

    def message():
        return _record(rng.choice([VHOST_IOTLB_MSG_V2] * 6 + [VHOST_IOTLB_MSG] * 2 + [3, 0]),
                       rng.choice([0, 0, 0, 1, 2, 3, 2**32 - 1]),
                       rng.choice([UPD] * 8 + [INV] * 5 + [BEGIN, END, 7, 0]),
                       addr(), size(), uaddr(), rng.choice([1, 2, 3, 3, 3, 0,
                                                            rng.randint(0, 255)]),
                       rng.choice([b"", b"", b"", b"x" * rng.randint(1, 80)]))

    cfg["reenter"] = message()[:72]
    steps = [("write", _record(VHOST_IOTLB_MSG_V2, a, BEGIN, 0, 0, 0, 0))
             for a in range(cfg["nas"])]               # create the ASes up front, so
    steps.append(("write", _record(VHOST_IOTLB_MSG_V2, 0, END, 0, 0, 0, 0)))  # fast
    for _ in range(rng.randint(5, 60)):                # paths are reachable at once
        r = rng.random()
        if r < 0.03:
            steps.append(("strict", rng.random() < 0.5))
        elif r < 0.05:
            steps.append(("record_dirty", rng.random() < 0.5))
        elif r < 0.06:
            steps.append(("default_file", rng.choice(["other-file", 7, ("t", 1), None])))
        elif r < 0.08:
            steps.append(("use_va", rng.random() < 0.5))
        elif r < 0.10:
            steps.append(("memlock", rng.choice([None, 0, 3, 50])))
        elif r < 0.11:
            steps.append(("release_open", None))
        elif r < 0.13:
            steps.append((rng.choice(["place", "vma"]), None))
        elif r < 0.14:
            steps.append(("features", rng.choice([0, 0xE, 6])))
        elif r < 0.22:
            steps.append(("many", b"".join(message()[:72] for _ in range(rng.randint(1, 4)))
                          + rng.choice([b"", b"zz"])))
        elif r < 0.25:
            steps.append(("write", message()[:rng.randint(0, 71)]))
        elif r < 0.27:
            steps.append(("write", bytearray(message())))
        else:
            steps.append(("write", message()))
    return cfg, steps


# ----------------------------------------------------------------------- running
def _device(cfg, fast):
    mem = UserMemory(cfg["page"], memlock_pages=cfg["memlock"], strict=cfg["strict"],
                     record_dirty=cfg["record_dirty"])
    parent = cfg["shape"](cfg)
    dev = VhostVdpa(parent, usermem=mem, page_size=cfg["page"])
    parent.vdev = dev
    dev._fast = fast
    dev.open()
    dev.set_owner()
    if cfg["features"]:
        try:
            dev.set_backend_features(cfg["features"])
        except IOTLBError:
            pass
    return dev, parent


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:
        c = e.__cause__
        return ("raised", type(e).__name__, getattr(e, "errno", None),
                type(c).__name__ if c is not None else None, getattr(c, "errno", None),
                getattr(e, "index", None))


def _step(dev, parent, kind, arg):
    mem = dev.usermem
    page = mem.page_size
    if kind == "write":
        return _outcome(lambda: dev.write(arg))
    if kind == "many":
        return _outcome(lambda: dev.write_many(arg))
    if kind == "strict":
        mem.strict = arg
    elif kind == "record_dirty":
        mem.record_dirty = arg
    elif kind == "default_file":
        mem.DEFAULT_FILE = arg
    elif kind == "use_va":
        parent.use_va = arg
    elif kind == "memlock":
        return _outcome(lambda: setattr(mem, "memlock_pages", arg))
    elif kind == "features":
        return _outcome(lambda: dev.set_backend_features(arg))
    elif kind == "place":
        return _outcome(lambda: mem.place(5 * page, 3 * page, 100 * page))
    elif kind == "vma":
        return _outcome(lambda: mem.map_anon(8 * page, 4 * page))
    elif kind == "release_open":
        def cycle():
            if dev.is_open:
                dev.release()
            dev.open()
            dev.set_owner()
        return _outcome(cycle)
    return None


def _observe(dev, parent):
    mem = dev.usermem
    try:
        dev.check_invariants()
        invariants = "hold"
    except AssertionError:
        invariants = "broken"
    return dict(entries={a: tuple(dev.vhost_iotlb(a)) for a in dev.address_spaces},
                in_batch=dev.in_batch, open=dev.is_open, pinned=dev.pinned_pages,
                pinned_vm=mem.pinned_vm, pins=mem.pins(dev), dirtied=mem.dirtied_pages,
                dirty_runs=dict(mem.dirtied), files=mem.file_refs(dev),
                leaked=mem.leaked(dev), calls=list(parent.log), invariants=invariants)


@pytest.mark.parametrize("block", range(10))
def test_fast_write_agrees_with_the_reference_path(block):
    """Both devices answer and end up alike after every step (see module doc)."""
    for n in range(block * CASES // 10, (block + 1) * CASES // 10):
        cfg, steps = _case(random.Random(n))
        fast, fparent = _device(cfg, True)
        ref, rparent = _device(cfg, False)
        for i, (kind, arg) in enumerate(steps):
            got = _step(fast, fparent, kind, arg)
            want = _step(ref, rparent, kind, arg)
            seen, expected = _observe(fast, fparent), _observe(ref, rparent)
            assert (got, seen) == (want, expected), (
                f"case {n} ({cfg['shape'].__name__}, page {cfg['page']}, use_va "
                f"{cfg['use_va']}) step {i} {kind} {arg!r}: "
                f"{ {k: (seen[k], expected[k]) for k in seen if seen[k] != expected[k]} }")
