#!/usr/bin/env python3
"""A real QEMU on a real vhost-vdpa device, checked against the model: one command.

    python3 tests/kernel/qemu_run.py [--qemu host,sid] [--config b1v0] [--kernel 6.12]
                                     [--venv .venv] [--save tests/data/qemu]

For each QEMU (``host``: the host's Debian bookworm QEMU 7.2, seen read-only through
9p; ``sid``: Debian sid's QEMU 11.1 -- the QEMU 10.2 vhost-vdpa code -- fetched with
apt into the lab cache and run with its own libraries) and each vdpa_sim
configuration in ``CONFIGS`` it boots the kernel with tests/kernel/lab.py and, inside
the guest, runs QEMU on ``/dev/vhost-vdpa-0``::

    strace -f -e trace=openat,ioctl,write -X raw -xx -s 128 -o CASE.strace \\
      qemu-system-x86_64 -machine q35,accel=tcg -m 256 -nographic -nodefaults \\
        -netdev type=vhost-vdpa,vhostdev=/dev/vhost-vdpa-0,id=n0 \\
        -device virtio-net-pci,netdev=n0 -trace 'vhost_vdpa_*' -D CASE.trace -qmp unix:...

with no guest OS: the firmware's iPXE option ROM drives the virtio-net device (it sets
DRIVER_OK, so vhost starts).  QMP then drives the lifecycle: ``stop``, ``cont``,
``system_reset`` (iPXE starts the device again), ``quit`` -- each step waiting until the
trace log shows the vhost device stopped or started.  Each case runs QEMU with a given
``RLIMIT_MEMLOCK`` (Debian's default 8 MiB, where pinning guest RAM fails, and
unlimited); the ``hotplug`` case starts the machine without the NIC and hot-plugs it
(QMP ``netdev_add`` + ``device_add`` into a PCIe root port).  QEMU 11's main loop
writes its eventfd so often that strace of ``write()`` slows it to a crawl: for it
only ``openat,ioctl`` are straced and the messages come from the trace log.

On the host both logs are imported (``iotlb import qemu-trace`` / ``iotlb import
strace``, :mod:`iotlb.importer`), the two imports must agree op by op (what the trace
log implies vs what strace saw), and the strace import is replayed through the model
(vdpa_sim with the same options, the guest kernel's profile; for QEMU 11 the trace
log's sequence with strace's ioctl results) and compared with what strace saw each
call return: 0 differences, else FAIL.  One PASS/FAIL line per case;
exit status 1 on any failure.  ``--save DIR`` keeps the logs (the golden inputs of
tests/test_import.py and tests/test_scenarios_qemu.py in tests/data/qemu).  Needs what lab.py needs, plus ``qemu-system-x86``
and ``strace`` installed on the host.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LAB = HERE / "lab.py"

#: vdpa_sim configuration name -> (module parameters, model options)
CONFIGS = {
    "b1v0": ("batch_mapping=1 use_va=0", {"batch_mapping": True, "use_va": False}),
    "b0v0": ("batch_mapping=0 use_va=0", {"batch_mapping": False, "use_va": False}),
}
#: case name -> RLIMIT_MEMLOCK of QEMU in bytes (None: unlimited)
CASES = {"memlock8m": 8 << 20, "unlimited": None, "hotplug": None}
#: case name -> what QMP does: the stop/cont/system_reset lifecycle, or a netdev_add +
#: device_add into a running machine (no guest driver takes the hot-plugged device)
PLANS = {"memlock8m": "lifecycle", "unlimited": "lifecycle", "hotplug": "hotplug"}
PAGE = 4096


# ============================================================================ guest
def _wait_for(path: Path, needle: str, count: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if path.read_text(errors="replace").count(needle) >= count:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    return False


class QMP:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.fp = self.sock.makefile("rw")
        json.loads(self.fp.readline())                  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **arguments) -> dict:
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.fp.write(json.dumps(msg) + "\n")
        self.fp.flush()
        while True:
            line = self.fp.readline()
            if not line:
                return {"error": "QMP closed"}
            msg = json.loads(line)
            if "event" not in msg:
                return msg


def qemu_command(root: str) -> tuple:
    """(argv prefix, environment) to run the QEMU of an extracted Debian root (its
    own dynamic loader and libraries), or the system's QEMU when ``root`` is empty."""
    if not root:
        return ["qemu-system-x86_64"], dict(os.environ)
    lib = f"{root}/usr/lib/x86_64-linux-gnu"
    return ([f"{lib}/ld-linux-x86-64.so.2", "--library-path", f"{lib}:{lib}/pulseaudio",
             f"{root}/usr/bin/qemu-system-x86_64", "-L", f"{root}/usr/share/qemu",
             "-L", f"{root}/usr/share/seabios"],
            dict(os.environ, QEMU_MODULE_DIR=f"{lib}/qemu"))


def guest_case(out: Path, name: str, memlock, qemu: list, timeout: float,
               env: dict, writes: bool = True) -> dict:
    """Run QEMU once (inside the lab guest); returns what happened."""
    trace, strace = out / f"{name}.trace", out / f"{name}.strace"
    for f in (trace, strace):
        if f.exists():
            f.unlink()
    sockdir = tempfile.mkdtemp()                 # 9p cannot hold a unix socket
    sock = os.path.join(sockdir, "qmp.sock")
    lim = resource.RLIM_INFINITY if memlock is None else memlock
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (lim, lim))
    plan = PLANS[name]
    calls = "openat,ioctl,write" if writes else "openat,ioctl"
    nic = (["-netdev", "type=vhost-vdpa,vhostdev=/dev/vhost-vdpa-0,id=n0",
            "-device", "virtio-net-pci,netdev=n0"] if plan == "lifecycle" else
           ["-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1"])
    cmd = ["strace", "-f", "-e", f"trace={calls}", "-X", "raw", "-xx", "-s", "128",
           "-o", str(strace), *qemu, "-machine", "q35,accel=tcg", "-m", "256",
           "-nographic", "-nodefaults", "-serial", "none", "-monitor", "none", *nic,
           "-trace", "vhost_vdpa_*", "-D", str(trace), "-qmp", f"unix:{sock},server=on,wait=off"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    steps = []
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            proc.kill()
            return {"case": name, "ok": False, "steps": steps,
                    "error": "QEMU did not start: " + (proc.stdout.read() or "")[-400:]}
        time.sleep(0.1)
    time.sleep(0.3)
    qmp = QMP(sock)
    started = "started: 1"
    stopped = "started: 0"

    def step(what: str, needle: str, count: int) -> bool:
        if what:
            r = qmp.cmd(what)
            if "error" in r:
                steps.append(f"{what}: {r['error']}")
                return False
        ok = _wait_for(trace, needle, count, timeout)
        steps.append(f"{what or 'boot'}: {'ok' if ok else 'timeout waiting for ' + repr(needle)}"
                     f" at {time.monotonic() - t0:.1f}s")
        return ok

    if plan == "lifecycle":
        ok = (step("", started, 1) and step("stop", stopped, 1) and step("cont", started, 2)
              and step("system_reset", started, 3))
    else:
        time.sleep(5)                      # the machine is up and running the firmware
        r1 = qmp.cmd("netdev_add", type="vhost-vdpa", id="n0",
                     vhostdev="/dev/vhost-vdpa-0")
        r2 = qmp.cmd("device_add", driver="virtio-net-pci", netdev="n0", bus="rp1", id="nic0")
        ok = "error" not in r1 and "error" not in r2
        steps.append(f"netdev_add: {r1.get('error') or 'ok'}; device_add: "
                     f"{r2.get('error') or 'ok'} at {time.monotonic() - t0:.1f}s")
        # the netdev is up (SET_OWNER traced); give device_add's reset a moment
        ok = ok and _wait_for(trace, "vhost_vdpa_set_owner", 1, timeout)
        time.sleep(3)
    qmp.cmd("quit")
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "killed"
    steps.append(f"quit: exit {rc} at {time.monotonic() - t0:.1f}s")
    shutil.rmtree(sockdir, ignore_errors=True)
    return {"case": name, "ok": ok and rc == 0, "steps": steps,
            "memlock": None if memlock is None else memlock // PAGE,
            "qemu_output": (proc.stdout.read() or "")[-2000:]}


def guest_main(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--qemu-root", default="",
                   help="an extracted Debian root whose QEMU to run (default: the system's)")
    p.add_argument("--timeout", type=float, default=90)
    p.add_argument("--case", action="append")
    p.add_argument("--no-writes", action="store_true",
                   help="strace openat,ioctl only (QEMU 11's main loop writes its eventfd "
                        "so often that tracing write() slows it to a crawl)")
    a = p.parse_args(argv)
    out = Path(a.out)
    qemu, env = qemu_command(a.qemu_root)
    version = subprocess.run([*qemu, "--version"], capture_output=True, text=True,
                             env=env).stdout
    results = {"qemu": version.splitlines()[0] if version else "?",
               "kernel": os.uname().release, "cases": []}
    for name in a.case or list(CASES):
        results["cases"].append(guest_case(out, name, CASES[name], qemu, a.timeout, env,
                                           writes=not a.no_writes))
    (out / "guest.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


# ============================================================================ host
def import_and_check(venv: Path, trace: Path, strace: Path, memlock, kernel: str,
                     options: dict) -> tuple:
    """(ok, lines of report) for one case."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = str(venv / "bin" / "python")
    code = r"""
import json, sys
from iotlb import importer as I
trace, strace, memlock, release, options = sys.argv[1:6]
from iotlb.kernels import kernel_profile_for_release
kernel = kernel_profile_for_release(release)
memlock = None if memlock == "none" else ("unlimited" if memlock == "unlimited" else int(memlock))
options = json.loads(options)
q = I.read_log(trace, "qemu-trace", memlock=memlock)
s = I.read_log(strace, "strace", memlock=memlock)
from iotlb.trace import MESSAGE_OPS
key = lambda o: {k: v for k, v in o.items() if k not in ("comment", "expect", "inferred")}
sops = [o for o in s.ops if not (o["op"] == "release" and o.get("inferred"))]
writes = any(o["op"] in MESSAGE_OPS for o in sops)
# without straced writes (QEMU 11) the trace log gives the messages: compare the rest
qops = [o for o in q.ops if (writes or o["op"] not in MESSAGE_OPS) and
        not (o["op"] == "release" and o.get("inferred"))]
a = [key(o) for o in qops]
b = [key(o) for o in sops]
agree = a == b
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
if writes:
    ops = s.ops
else:
    # the trace log's sequence with strace's results on its ioctls
    ops, it = [], iter(sops)
    for o in q.ops:
        if o["op"] in MESSAGE_OPS:
            ops.append(o)
        else:
            twin = next(it, None)
            ops.append(dict(o, expect=twin["expect"]) if agree and twin and
                       "expect" in twin else o)
n, diffs = I.check(ops, "vdpa_sim", kernel=kernel, **options)
fails = [st for st in ops if st.get("expect") and st["expect"].get("errno")]
print(json.dumps({"trace": q.summary(), "strace": s.summary(), "agree": agree,
                  "first_disagreement": None if agree else [first, a[first:first+1], b[first:first+1]],
                  "checked": n, "differences": [str(d) for d in diffs],
                  "failed_calls": len(fails), "dialect": s.dialect, "profile": kernel}))
"""
    ml = "none" if memlock is False else ("unlimited" if memlock is None else str(memlock))
    r = subprocess.run([py, "-c", code, str(trace), str(strace), ml, kernel,
                        json.dumps(options)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return False, [f"import failed: {r.stderr.strip()[-600:]}"]
    d = json.loads(r.stdout)
    lines = [f"qemu-trace: {d['trace']}", f"strace:     {d['strace']}",
             f"the two imports agree op by op: {d['agree']}"
             + ("" if d["agree"] else f" (first difference at op {d['first_disagreement']})"),
             f"model (kernel profile {d['profile']}) vs strace: {d['checked']} calls "
             f"compared, {len(d['differences'])} "
             f"differences ({d['failed_calls']} calls failed on the real kernel)"]
    lines += ["  " + x for x in d["differences"][:10]]
    return d["agree"] and not d["differences"] and d["checked"] > 0, lines


SID_PACKAGES = ["qemu-system-x86", "seabios", "ipxe-qemu"]


def prepare_sid_qemu() -> Path:
    """Debian sid's qemu-system-x86 (QEMU 11.1 today) extracted with its libraries into
    the lab cache (apt with a private configuration, the machine's mirror), runnable in
    the lab guest through its own dynamic loader; reused when already there."""
    sys.path.insert(0, str(HERE))
    import lab                                   # the lab's mirror discovery

    base = lab.cache_dir() / "qemu"
    apt = base / "apt"
    for sub in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                "debs/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    mirror, _ = lab.host_mirrors()
    (apt / "etc/sources.list").write_text(
        f"deb [signed-by={lab.Apt.KEYRING}] {mirror} sid main\n")
    opts = []
    for k, v in {"Dir::Etc::sourcelist": apt / "etc/sources.list",
                 "Dir::Etc::sourceparts": apt / "etc/sources.list.d",
                 "Dir::Etc::preferencesparts": apt / "etc/preferences.d",
                 "Dir::State": apt / "state", "Dir::State::status": "/dev/null",
                 "Dir::Cache": apt / "cache", "Dir::Cache::archives": apt / "debs",
                 "APT::Architecture": "amd64", "APT::Install-Recommends": "false",
                 "Debug::NoLocking": "true"}.items():
        opts += ["-o", f"{k}={v}"]
    subprocess.run(["apt-get", "-q", *opts, "update"], check=True, capture_output=True)
    pol = subprocess.run(["apt-cache", *opts, "policy", "qemu-system-x86"], check=True,
                         capture_output=True, text=True).stdout
    version = next(ln.split()[1] for ln in pol.splitlines() if "Candidate:" in ln)
    root = base / f"sid-{version.split(':')[-1]}"
    if (root / "usr/bin/qemu-system-x86_64").exists():
        return root
    subprocess.run(["apt-get", "-q", "-y", *opts, "install", "--download-only", *SID_PACKAGES],
                   check=True, capture_output=True)
    tmp = Path(str(root) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in sorted((apt / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    tmp.rename(root)
    return root


def host_main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernel", default="6.12")
    p.add_argument("--config", default="b1v0",
                   help=f"comma list of {', '.join(CONFIGS)} (default: %(default)s)")
    p.add_argument("--venv", default=str(ROOT / ".venv"), help="the venv with iotlb")
    p.add_argument("--save", metavar="DIR", help="keep the logs here (e.g. tests/data/qemu)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--qemu", default="host,sid",
                   help="comma list: host = the host's QEMU (Debian bookworm: 7.2), sid = "
                        "Debian sid's (11.1, fetched with apt into the lab cache; its "
                        "write() calls are not straced, the trace log gives the messages, "
                        "so its memlock8m case is not run by default) (default: %(default)s)")
    p.add_argument("--case", action="append", choices=list(CASES),
                   help="only this case (repeatable; default: all)")
    a = p.parse_args(argv)
    venv = Path(a.venv)
    for tool in ("qemu-system-x86_64", "strace"):
        if shutil.which(tool) is None:
            print(f"qemu_run: {tool} is not installed on the host "
                  "(apt-get install -y qemu-system-x86 strace)", file=sys.stderr)
            return 2
    qemus = a.qemu.split(",")
    if not set(qemus) <= {"host", "sid"}:
        print(f"qemu_run: --qemu: expected host and/or sid, got {a.qemu!r}", file=sys.stderr)
        return 2
    sid_root = prepare_sid_qemu() if "sid" in qemus else None
    t_all = time.monotonic()
    failed = 0
    passed = 0
    work = Path(tempfile.mkdtemp(prefix="qemu-run-"))
    runs = [(q, cfg) for q in qemus for cfg in a.config.split(",")]
    for which, cfg in runs:
        if cfg not in CONFIGS:
            print(f"qemu_run: unknown config {cfg!r} (known: {', '.join(CONFIGS)})", file=sys.stderr)
            return 2
        params, options = CONFIGS[cfg]
        out = work / f"{which}-{cfg}"
        out.mkdir(parents=True)
        t = time.monotonic()
        cmd = [sys.executable, str(LAB), "run", "--kernel", a.kernel, "--vdpa-sim", params,
               "--rw", str(out), "--cwd", str(out), "--timeout", str(a.timeout), "--",
               "python3", str(Path(__file__).resolve()), "guest", str(out)]
        cases = a.case or [c for c in CASES if not (which == "sid" and c == "memlock8m")]
        for c in cases:
            cmd += ["--case", c]
        if which == "sid":
            cmd += ["--qemu-root", str(sid_root), "--no-writes"]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        res_file = out / "guest.json"
        if r.returncode != 0 or not res_file.exists():
            print(f"FAIL {a.kernel} {cfg}: the guest run failed (exit {r.returncode}): "
                  f"{(r.stdout + r.stderr).strip()[-800:]}")
            failed += 1
            continue
        res = json.loads(res_file.read_text())
        print(f"# {a.kernel} {cfg} ({params}): {res['qemu']}, guest kernel {res['kernel']}, "
              f"{time.monotonic() - t:.0f}s")
        for case in res["cases"]:
            name = case["case"]
            trace, strace = out / f"{name}.trace", out / f"{name}.strace"
            head = f"{a.kernel} {cfg} {name}"
            if not case["ok"]:
                print(f"FAIL {head}: the lifecycle did not complete: {case.get('error') or case['steps']}")
                failed += 1
                continue
            ml = case["memlock"]
            ok, lines = import_and_check(venv, trace, strace, ml, res["kernel"], options)
            print(f"{'PASS' if ok else 'FAIL'} {head}: {'; '.join(case['steps'])}")
            for line in lines:
                print("    " + line)
            passed += ok
            failed += not ok
            if a.save:
                dest = Path(a.save)
                dest.mkdir(parents=True, exist_ok=True)
                ver = res["qemu"].split("version ")[-1].split()[0].split(".")
                stem = f"qemu{ver[0]}{ver[1]}-{a.kernel}-{cfg}-{name}"
                # the unix socket path is random: keep the logs byte for byte otherwise
                shutil.copyfile(trace, dest / f"{stem}.trace")
                shutil.copyfile(strace, dest / f"{stem}.strace")
                (dest / f"{stem}.json").write_text(json.dumps({
                    "qemu": res["qemu"], "guest_kernel": res["kernel"],
                    "vdpa_sim": params, "model_options": options,
                    "memlock_pages": "unlimited" if ml is None else ml,
                    "steps": case["steps"]}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"qemu_run: {passed} passed, {failed} failed in {time.monotonic() - t_all:.0f}s")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "guest":
        sys.exit(guest_main(sys.argv[2:]))
    sys.exit(host_main(sys.argv[1:]))
