#!/usr/bin/env python
"""Device throughput: messages per second through ``VhostVdpa.write()`` (issue 3).

    pytest benchmarks/bench_device.py --benchmark-only      # pytest-benchmark
    python benchmarks/bench_device.py [--quick]             # plain report

On a shared machine add ``--benchmark-timer=time.process_time`` (the plain report
always uses CPU time); each pytest-benchmark result carries ``msgs_per_s`` (from
the fastest round) in its ``extra_info``.

Workloads (all messages are pre-encoded 72-byte ``vhost_msg_v2`` records):

* **boot** -- QEMU's memory-listener replay: BATCH_BEGIN, one UPDATE per 2 MiB RAM
  section of a 1 TiB guest (524288 UPDATEs), BATCH_END, on a fresh device;
* **stop/start** -- QEMU's stop + start on a booted guest: an INVALIDATE-all batch
  then an UPDATE-all batch (2 x (N + 2) messages);
* **vIOMMU churn** -- unbatched UPDATE/INVALIDATE of 4 KiB buffers keeping 10^5 live
  (invalidate the oldest, map a new one).

Parents: ``null-dma`` / ``null-setmap`` (in-file no-op parents: what is measured is
the device model itself, PA mode with page pinning) and ``null-va`` (VA mode), plus
the installed built-ins ``platform_iommu`` and ``vdpa_sim`` (dma_map op table) when
they load.  Sizes: ``IOTLB_BENCH_SECTIONS`` (boot sections, default 524288),
``IOTLB_BENCH_LIVE`` (churn live buffers, default 100000), ``IOTLB_BENCH_CHURN``
(churn messages per round, default 200000).  The engine is ``iotlb.IMPLEMENTATION``
(``IOTLB_PUREPYTHON=1`` selects the pure twin).
"""
from __future__ import annotations

import os
import sys
import time

import iotlb
from iotlb.usermem import UserMemory
from iotlb.vdpa import VhostVdpa
from iotlb.wire import (VHOST_IOTLB_BATCH_BEGIN, VHOST_IOTLB_BATCH_END,
                        VHOST_IOTLB_INVALIDATE, VHOST_IOTLB_UPDATE, BackendFeature,
                        encode)

PAGE = 4096
SECTION = 2 << 20
HVA = 0x7F0000000000
SECTIONS = int(os.environ.get("IOTLB_BENCH_SECTIONS", 524288))
LIVE = int(os.environ.get("IOTLB_BENCH_LIVE", 100000))
CHURN = int(os.environ.get("IOTLB_BENCH_CHURN", 200000))
FEATURES = int(BackendFeature.IOTLB_MSG_V2 | BackendFeature.IOTLB_BATCH
               | BackendFeature.IOTLB_ASID)


# ------------------------------------------------------------------ parents
class NullDma:
    """A dma_map parent whose ops do nothing: the device model's own cost."""

    nas, ngroups, nvqs, use_va = 2, 2, 3, False
    status = 0

    def reset(self):
        self.status = 0

    def get_status(self):
        return self.status

    def set_status(self, status):
        self.status = status

    def dma_map(self, asid, iova, size, pa, perm, opaque):
        pass

    def dma_unmap(self, asid, iova, size):
        pass


class NullSetMap(NullDma):
    """A set_map parent (told once per batch) whose op does nothing."""

    dma_map = dma_unmap = None  # absent ops, like NULL pointers

    def set_map(self, asid, iotlb):
        pass


class NullVa(NullDma):
    """VA mode (vdpa_sim's default / VDUSE): no pinning, file-backed entries."""

    use_va = True


def _builtin(name, **options):
    def make():
        return iotlb.load_backend(name, **options)
    return make


PARENTS = {"null-dma": NullDma, "null-setmap": NullSetMap, "null-va": NullVa,
           "platform_iommu": _builtin("platform_iommu"),
           "vdpa_sim": _builtin("vdpa_sim", batch_mapping=False, use_va=False)}
CHURN_PARENTS = ("null-dma", "null-va", "platform_iommu", "vdpa_sim")


def make_device(parent: str) -> VhostVdpa:
    """A fresh opened device with owner and QEMU's features, on ``parent``."""
    dev = VhostVdpa(PARENTS[parent](), usermem=UserMemory(record_dirty=False))
    dev.open()
    dev.set_backend_features(FEATURES)
    dev.set_owner()
    return dev


# ------------------------------------------------------------------ message streams
def boot_messages(sections: int = SECTIONS) -> list:
    """BATCH_BEGIN, an UPDATE per 2 MiB section, BATCH_END."""
    msgs = [encode(VHOST_IOTLB_BATCH_BEGIN)]
    msgs += [encode(VHOST_IOTLB_UPDATE, i * SECTION, SECTION, HVA + i * SECTION, 3)
             for i in range(sections)]
    msgs.append(encode(VHOST_IOTLB_BATCH_END))
    return msgs


def stop_start_messages(sections: int = SECTIONS) -> list:
    """INVALIDATE-all batch then UPDATE-all batch (SET_STATUS(0) sends nothing)."""
    msgs = [encode(VHOST_IOTLB_BATCH_BEGIN)]
    msgs += [encode(VHOST_IOTLB_INVALIDATE, i * SECTION, SECTION)
             for i in range(sections)]
    msgs.append(encode(VHOST_IOTLB_BATCH_END))
    return msgs + boot_messages(sections)


class Churn:
    """A vIOMMU ring of ``live`` 4 KiB buffers: each step unmaps the oldest and maps
    a new one (unbatched, as QEMU's IOMMU notifier sends them)."""

    def __init__(self, dev: VhostVdpa, live: int = LIVE) -> None:
        self.dev = dev
        self.old = 0
        self.next = 0
        write = dev.write
        for _ in range(live):
            write(self._update())

    def _update(self) -> bytes:
        i = self.next
        self.next += 1
        return encode(VHOST_IOTLB_UPDATE, i * PAGE, PAGE, HVA + i * PAGE, 3)

    def messages(self, n: int = CHURN) -> list:
        out = []
        for _ in range(n // 2):
            out.append(encode(VHOST_IOTLB_INVALIDATE, self.old * PAGE, PAGE))
            self.old += 1
            out.append(self._update())
        return out


def send(write, msgs) -> int:
    """The timed loop: one ``write()`` per message."""
    for m in msgs:
        write(m)
    return len(msgs)


# ------------------------------------------------------------------ pytest-benchmark
try:
    import pytest
except ImportError:  # pragma: no cover - plain report mode only
    pytest = None

if pytest is not None:
    def _device_or_skip(parent):
        try:
            return make_device(parent)
        except Exception as exc:  # a built-in that is not installed / loadable
            pytest.skip(f"{parent}: {exc}")

    def _report(benchmark, n):
        best = benchmark.stats.stats.min
        benchmark.extra_info.update(messages=n, engine=iotlb.IMPLEMENTATION,
                                    msgs_per_s=round(n / best))

    @pytest.mark.parametrize("parent", sorted(PARENTS))
    def test_boot(benchmark, parent):
        """1 TiB boot: one batch of 524288 UPDATEs (2 MiB sections) on a fresh device."""
        _device_or_skip(parent).release()
        msgs = boot_messages()

        def setup():
            return (make_device(parent).write, msgs), {}
        benchmark.pedantic(send, setup=setup, rounds=3, iterations=1)
        _report(benchmark, len(msgs))

    @pytest.mark.parametrize("parent", sorted(PARENTS))
    def test_stop_start(benchmark, parent):
        """QEMU stop/start: INVALIDATE-all batch + UPDATE-all batch on a booted guest."""
        dev = _device_or_skip(parent)
        send(dev.write, boot_messages())
        msgs = stop_start_messages()
        benchmark.pedantic(send, args=(dev.write, msgs), rounds=3, iterations=1)
        _report(benchmark, len(msgs))
        dev.check_invariants()

    @pytest.mark.parametrize("parent", CHURN_PARENTS)
    def test_viommu_churn(benchmark, parent):
        """vIOMMU: UPDATE/INVALIDATE of 4 KiB buffers, 10^5 live, unbatched."""
        dev = _device_or_skip(parent)
        ring = Churn(dev)

        def setup():
            return (dev.write, ring.messages()), {}
        benchmark.pedantic(send, setup=setup, rounds=5, iterations=1)
        _report(benchmark, CHURN // 2 * 2)
        dev.check_invariants()


# ------------------------------------------------------------------ plain report
def _rate(write, msgs, repeats=1):
    """Messages per CPU second (process time: robust on a shared machine)."""
    best = 0.0
    for _ in range(repeats):
        t = time.process_time()
        send(write, msgs)
        best = max(best, len(msgs) / max(time.process_time() - t, 1e-9))
    return best


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sections = 16384 if "--quick" in argv else SECTIONS
    live = 20000 if "--quick" in argv else LIVE
    print(f"engine {iotlb.IMPLEMENTATION}; boot {sections} x 2 MiB sections; churn "
          f"{live} live 4 KiB buffers")
    print(f"{'parent':16} {'boot msg/s':>12} {'stop/start msg/s':>17} {'churn msg/s':>12}")
    for parent in PARENTS:
        try:
            dev = make_device(parent)
        except Exception as exc:
            print(f"{parent:16} skipped: {exc}")
            continue
        boot = boot_messages(sections)
        r_boot = _rate(dev.write, boot)
        r_cycle = _rate(dev.write, stop_start_messages(sections))
        r_churn = float("nan")
        if parent in CHURN_PARENTS:
            dev2 = make_device(parent)
            ring = Churn(dev2, live)
            r_churn = max(_rate(dev2.write, ring.messages(100000)) for _ in range(3))
            dev2.check_invariants()
        dev.check_invariants()
        print(f"{parent:16} {r_boot:12,.0f} {r_cycle:17,.0f} {r_churn:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
