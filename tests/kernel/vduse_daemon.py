#!/usr/bin/env python3
"""A minimal VDUSE device daemon: create a virtio-net VDUSE device, answer its
messages, add it to the vDPA bus (vhost-vdpa binds it) and run a command on it.

    vduse_daemon.py [--ko vduse.ko] [--api-version 0|1] [--nas N] [--ngroups N]
                    [--vq-groups 0,1] [--name vduse0] -- CMD ARGS...

Run as root inside a guest (tests/kernel/vduse_run.py does that).  Steps:

1. load ``vduse`` (``finit_module`` of ``--ko``) unless /dev/vduse/control exists;
2. ``/dev/vduse/control``: ``VDUSE_SET_API_VERSION``, ``VDUSE_CREATE_DEV`` (virtio-net,
   2 vqs, VERSION_1 | ACCESS_PLATFORM | MAC; API v1 adds ``ngroups``/``nas``);
3. ``/dev/vduse/NAME``: ``VDUSE_VQ_SETUP`` of every vq (API v1: with its group), then
   a thread answers every request: ``GET_VQ_STATE`` (index, avail 0), ``SET_STATUS``,
   ``UPDATE_IOTLB`` and ``SET_VQ_GROUP_ASID`` all OK;
4. ``vdpa dev add name NAME mgmtdev vduse``; the vhost-vdpa char device is found on
   the vdpa bus (``/sys/bus/vdpa/devices/NAME/vhost-vdpa-N``);
5. CMD runs with ``{device}`` in its arguments replaced by ``/dev/vhost-vdpa-N`` (and
   ``IOTLB_VDUSE_DEVICE`` in its environment);
6. ``vdpa dev del``, ``VDUSE_DESTROY_DEV``; exit status = CMD's, or 3 when the device
   could not be set up.  A summary of the messages answered goes to stderr.

``--domain-check`` replaces CMD: the remaining arguments are traces (or directories),
run in this process (it holds /dev/vduse/NAME, the only way to read the device's
domain) with iotlb.conform's own runner, the model being ``vduse`` with
``--backend-options``.  Before every op and once the trace closed the device, the
domain of every AS is read back from the kernel (``VDUSE_IOTLB_GET_FD``/``GET_FD2``:
start, last, perm and file offset of each entry) and compared with the model's
``device_iotlb`` -- what vhost-vdpa's answers cannot show: that SET_STATUS(0) keeps
the user map, that release leaves the last map, what a failed set_map leaves.  Prints
a JSON summary; exit 1 on any difference.  Needs the venv's python (iotlb importable).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

VDUSE_BASE = 0x81
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (VDUSE_BASE << 8) | nr


VDUSE_NAME_MAX = 256
# struct vduse_dev_config without its flexible config[]: name, vendor_id, device_id,
# features, vq_num, vq_align, ngroups, nas, reserved[11], config_size  (336 bytes)
DEV_CONFIG = struct.Struct(f"<{VDUSE_NAME_MAX}sIIQIIII44sI")
VQ_CONFIG = struct.Struct("<IHHI20s")      # index, max_size, reserved1, group, reserved2
VDUSE_GET_API_VERSION = _ioc(_IOC_READ, 0x00, 8)
VDUSE_SET_API_VERSION = _ioc(_IOC_WRITE, 0x01, 8)
VDUSE_CREATE_DEV = _ioc(_IOC_WRITE, 0x02, DEV_CONFIG.size)
VDUSE_DESTROY_DEV = _ioc(_IOC_WRITE, 0x03, VDUSE_NAME_MAX)
VDUSE_VQ_SETUP = _ioc(_IOC_WRITE, 0x14, VQ_CONFIG.size)

# struct vduse_dev_request / vduse_dev_response: 152 bytes each
REQUEST = struct.Struct("<II16s128s")      # type, request_id, reserved, union
RESPONSE = struct.Struct("<II16s128s")     # request_id, result, reserved, union
# struct vduse_iotlb_entry (32 bytes) and vduse_iotlb_entry_v2 (80 bytes, API v1)
IOTLB_ENTRY = struct.Struct("<QQQB7x")
IOTLB_ENTRY_V2 = struct.Struct("<QQQB7xI44x")
VDUSE_IOTLB_GET_FD = _ioc(_IOC_READ | _IOC_WRITE, 0x10, IOTLB_ENTRY.size)
VDUSE_IOTLB_GET_FD2 = _ioc(_IOC_READ | _IOC_WRITE, 0x1b, IOTLB_ENTRY_V2.size)
U64_MAX = (1 << 64) - 1
REQ_TYPES = {0: "GET_VQ_STATE", 1: "SET_STATUS", 2: "UPDATE_IOTLB", 3: "SET_VQ_GROUP_ASID"}
RESULT_OK = 0

VIRTIO_ID_NET = 1
VIRTIO_NET_F_MAC = 5
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
NET_CONFIG = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]) + struct.pack("<HHH", 1, 1, 1500)
SYS_finit_module = 313  # x86-64


def load_module(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.syscall(SYS_finit_module, fd, b"", 0) != 0:
            err = ctypes.get_errno()
            if err != errno.EEXIST:
                raise OSError(err, f"finit_module({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Daemon(threading.Thread):
    """Answers the device's requests until the file is closed or :meth:`stop`."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.seen: Counter = Counter()
        self.log: list = []
        self.error = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        import select
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        while not self._halt.is_set():
            if not poll.poll(200):
                continue
            try:
                data = os.read(self.fd, REQUEST.size)
            except BlockingIOError:
                continue
            except OSError as exc:
                self.error = exc
                return
            rtype, rid, _res, body = REQUEST.unpack(data)
            name = REQ_TYPES.get(rtype, f"type{rtype}")
            self.seen[name] += 1
            reply = bytes(128)
            if rtype == 0:                   # GET_VQ_STATE: index, split avail 0
                (index,) = struct.unpack_from("<I", body)
                reply = struct.pack("<IH", index, 0).ljust(128, b"\0")
                detail = f"vq {index}"
            elif rtype == 1:
                detail = f"status {body[0]:#x}"
            elif rtype == 2:
                start, last = struct.unpack_from("<QQ", body)
                asid = struct.unpack_from("<I", body, 16)[0]
                detail = f"[{start:#x}, {last:#x}] asid {asid}"
            elif rtype == 3:
                detail = "group %d asid %d" % struct.unpack_from("<II", body)
            else:
                detail = body[:16].hex()
            self.log.append(f"{name} {detail}")
            os.write(self.fd, RESPONSE.pack(rid, RESULT_OK, bytes(16), reply))


def domain_entries(dev: int, asid: int, v1: bool) -> list:
    """The domain of ``asid`` as ``[(start, last, perm, file offset)]``: one
    ``VDUSE_IOTLB_GET_FD``/``GET_FD2`` per entry (the first overlapping [start, ~0];
    EINVAL when there is none), closing every fd it hands out."""
    out = []
    start = 0
    while True:
        if v1:
            buf = bytearray(IOTLB_ENTRY_V2.pack(0, start, U64_MAX, 0, asid))
            req = VDUSE_IOTLB_GET_FD2
        else:
            if asid:
                raise ValueError("VDUSE API v0 has only AS 0")
            buf = bytearray(IOTLB_ENTRY.pack(0, start, U64_MAX, 0))
            req = VDUSE_IOTLB_GET_FD
        try:
            fd = fcntl.ioctl(dev, req, buf, True)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return out
            raise
        os.close(fd)
        offset, first, last, perm = struct.unpack_from("<QQQB", buf)
        out.append((first, last, perm, offset))
        if last == U64_MAX:
            return out
        start = last + 1


def domain_check(dev: int, device: str, paths: list, options: dict, v1: bool) -> int:
    """The corpus through iotlb.conform's runner, with the domain of every AS
    compared with the model's ``device_iotlb`` before every op and after the trace.
    One model backend for the whole run, one device model per trace."""
    import json

    import iotlb.conform as cf
    import iotlb.expect as ex
    from iotlb.backend import load_backend
    from iotlb.vdpa import VhostVdpa

    page = os.sysconf("SC_PAGE_SIZE")
    cfg = cf.read_config(device)
    _, dev_options = cf.model_options(cfg)
    dev_options["kernel"] = cf._profile(None, cfg["release"])[0]
    nas = options.get("nas", 1)
    # one device for the whole run, as in the kernel: what a trace leaves in the
    # domain (release keeps the last map) is what the next trace starts with
    backend = load_backend("vduse", **options)
    # the file offset of a domain entry is relative to the memory of the trace whose
    # set_map put it there (a later trace may start with it): remember, per AS, the
    # memory regions of the trace that called set_map last
    current = {"regions": []}
    set_by = {}
    set_map = backend.set_map

    def recording_set_map(asid, tlb):
        set_by[asid] = current["regions"]
        return set_map(asid, tlb)

    backend.set_map = recording_set_map
    log = ex.ParentLog(backend)
    summary = {"traces": 0, "ops": 0, "domain_checks": 0, "domain_differences": 0,
               "conform_differing": 0, "errors": 0, "first": []}

    for path in cf.iter_traces(paths):
        ops = cf.load_ops(path)
        regions = [(op["uaddr"], op["size"]) for op in ops if op["op"] == "mmap"]
        if not regions:
            regions = [(m["uaddr"], m["size"]) for m in cf.auto_memory(ops, page)]
        current["regions"] = regions
        state = {"model": None, "index": 0}

        def offset_of(asid, addr):
            """vhost_vdpa_va_map's ``map_file->offset`` of an entry at user address
            ``addr``: ``vm_pgoff * PAGE_SIZE + addr - vm_start`` of ``find_vma(addr)``
            (the region holding addr, else the next one: a hole before a VMA is
            absorbed into it and the offset wraps below 0), i.e. ``addr - base`` of
            that memfd region, modulo 2**64."""
            spans = sorted(set_by.get(asid, ()))
            for base, size in spans:
                if base + size > addr:
                    return (addr - base) & U64_MAX
            return None

        def compare(where):
            model = state["model"]
            if model is None:
                return
            for asid in range(nas):
                kernel = domain_entries(dev, asid, v1)
                mine = [(m.start, m.last, m.perm, offset_of(asid, m.addr))
                        for m in model.backend.device_iotlb(asid)]
                summary["domain_checks"] += 1
                if kernel != mine:
                    summary["domain_differences"] += 1
                    if len(summary["first"]) < 10:
                        summary["first"].append({"trace": path, "where": where, "asid": asid,
                                                 "kernel": [list(map(hex, e[:2])) + list(e[2:])
                                                            for e in kernel[:6]],
                                                 "model": [list(map(hex, e[:2])) + list(e[2:])
                                                           for e in mine[:6]]})

        class Real(cf.RealDevice):
            def run(self, op):
                compare(f"before op {state['index']} ({op['op']})")
                state["index"] += 1
                return super().run(op)

            def close(self):
                super().close()
                compare("after the trace")

        def make_model():
            model = VhostVdpa(backend, page_size=page, **dev_options)
            state["model"] = model
            return model, log

        res = cf.run_trace(os.path.relpath(path), ops, device_path=device,
                           make_model=make_model, page_size=page, real=Real(device))
        summary["traces"] += 1
        summary["ops"] += res.ops
        summary["conform_differing"] += len(res.differences)
        summary["errors"] += res.error is not None
    print(json.dumps(summary, indent=1))
    return 0 if not (summary["domain_differences"] or summary["conform_differing"]
                     or summary["errors"]) else 1


def vhost_device(name: str, timeout: float = 10.0) -> str:
    d = f"/sys/bus/vdpa/devices/{name}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.isdir(d):
            for entry in os.listdir(d):
                if entry.startswith("vhost-vdpa-") and os.path.exists(f"/dev/{entry}"):
                    return f"/dev/{entry}"
        time.sleep(0.1)
    raise RuntimeError(f"no vhost-vdpa device appeared under {d} (is vhost_vdpa loaded?)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ko", help="vduse.ko to load when /dev/vduse/control is missing")
    ap.add_argument("--api-version", type=int, default=None,
                    help="VDUSE_SET_API_VERSION (default: what VDUSE_GET_API_VERSION says)")
    ap.add_argument("--name", default="vduse0")
    ap.add_argument("--nas", type=int, default=1)
    ap.add_argument("--ngroups", type=int, default=1)
    ap.add_argument("--vq-groups", default="0,0", help="group of each vq (API v1)")
    ap.add_argument("--vq-size", type=int, default=256)
    ap.add_argument("--domain-check", action="store_true",
                    help="CMD is a list of traces: compare the device's domain with the model")
    ap.add_argument("--backend-options", default="",
                    help="with --domain-check: the vduse model's options, K=V,... ")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command (... -- CMD ARGS)")
    groups = [int(g) for g in args.vq_groups.split(",")]

    def say(msg):
        print(f"vduse_daemon: {msg}", file=sys.stderr, flush=True)

    if not os.path.exists("/dev/vduse/control"):
        if not args.ko:
            say("no /dev/vduse/control and no --ko")
            return 3
        load_module(args.ko)
        for _ in range(50):
            if os.path.exists("/dev/vduse/control"):
                break
            time.sleep(0.1)
    ctl = os.open("/dev/vduse/control", os.O_RDWR | os.O_CLOEXEC)
    buf = bytearray(8)
    fcntl.ioctl(ctl, VDUSE_GET_API_VERSION, buf)
    offered = struct.unpack("<Q", buf)[0]
    version = offered if args.api_version is None else args.api_version
    fcntl.ioctl(ctl, VDUSE_SET_API_VERSION, struct.pack("<Q", version))
    v1 = version >= 1
    features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_ACCESS_PLATFORM) | (1 << VIRTIO_NET_F_MAC)
    config = DEV_CONFIG.pack(args.name.encode(), 0, VIRTIO_ID_NET, features, len(groups), 4096,
                             args.ngroups if v1 else 0, args.nas if v1 else 0, bytes(44),
                             len(NET_CONFIG)) + NET_CONFIG
    fcntl.ioctl(ctl, VDUSE_CREATE_DEV, config)
    say(f"created {args.name}: virtio-net, API v{version} (kernel offers v{offered}), "
        f"{len(groups)} vqs" + (f", nas {args.nas}, ngroups {args.ngroups}, vq groups "
                                f"{groups}" if v1 else ""))
    dev = os.open(f"/dev/vduse/{args.name}", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    daemon = Daemon(dev)
    added = False
    rc = 3
    try:
        for index, group in enumerate(groups):
            fcntl.ioctl(dev, VDUSE_VQ_SETUP,
                        VQ_CONFIG.pack(index, args.vq_size, 0, group if v1 else 0, bytes(20)))
        daemon.start()
        subprocess.run(["vdpa", "dev", "add", "name", args.name, "mgmtdev", "vduse"], check=True)
        added = True
        path = vhost_device(args.name)
        say(f"{args.name} is {path}")
        if args.domain_check:
            from iotlb.cli import _parse_options, _split_commas
            options = _parse_options(_split_commas(args.backend_options), "--backend-options")
            rc = domain_check(dev, path, cmd, options, v1)
        else:
            env = dict(os.environ, IOTLB_VDUSE_DEVICE=path)
            rc = subprocess.run([a.replace("{device}", path) for a in cmd], env=env).returncode
    finally:
        if added:
            subprocess.run(["vdpa", "dev", "del", args.name])
        daemon.stop()
        daemon.join(2)
        os.close(dev)
        name = args.name.encode().ljust(VDUSE_NAME_MAX, b"\0")
        try:
            fcntl.ioctl(ctl, VDUSE_DESTROY_DEV, name)
        except OSError as exc:
            say(f"VDUSE_DESTROY_DEV: {exc}")
        os.close(ctl)
        say("answered " + (", ".join(f"{n} x{c}" for n, c in sorted(daemon.seen.items()))
                           or "no message"))
        if daemon.error:
            say(f"message loop stopped: {daemon.error}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
