#!/usr/bin/env python3
"""A real QEMU on a real vhost-vdpa device, checked against the model: one command.

    python3 tests/kernel/qemu_run.py [--kernel 6.12] [--venv .venv] [--save tests/data/qemu]

For each vdpa_sim configuration in ``CONFIGS`` it boots the kernel with
tests/kernel/lab.py and, inside the guest, runs Debian's own ``qemu-system-x86_64``
(the host's, seen read-only through 9p) on ``/dev/vhost-vdpa-0``::

    strace -f -e trace=openat,ioctl,write -X raw -xx -s 128 -o CASE.strace \\
      qemu-system-x86_64 -machine q35,accel=tcg -m 256 -nographic -nodefaults \\
        -netdev type=vhost-vdpa,vhostdev=/dev/vhost-vdpa-0,id=n0 \\
        -device virtio-net-pci,netdev=n0 -trace 'vhost_vdpa_*' -D CASE.trace -qmp unix:...

with no guest OS: the firmware's iPXE option ROM drives the virtio-net device (it sets
DRIVER_OK, so vhost starts).  QMP then drives the lifecycle: ``stop``, ``cont``,
``system_reset`` (iPXE starts the device again), ``quit`` -- each step waiting until the
trace log shows the vhost device stopped or started.  Each case runs QEMU with a given
``RLIMIT_MEMLOCK`` (Debian's default 8 MiB, where pinning guest RAM fails, and
unlimited).

On the host both logs are imported (``iotlb import qemu-trace`` / ``iotlb import
strace``, :mod:`iotlb.importer`), the two imports must agree op by op (what the trace
log implies vs what strace saw), and the strace import is replayed through the model
(vdpa_sim with the same options, the guest kernel's profile) and compared with what
strace saw each call return: 0 differences, else FAIL.  One PASS/FAIL line per case;
exit status 1 on any failure.  ``--save DIR`` keeps the logs (the golden inputs of
tests/test_import_qemu_real.py).  Needs what lab.py needs, plus ``qemu-system-x86``
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
CASES = {"memlock8m": 8 << 20, "unlimited": None}
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

    def cmd(self, name: str) -> dict:
        self.fp.write(json.dumps({"execute": name}) + "\n")
        self.fp.flush()
        while True:
            line = self.fp.readline()
            if not line:
                return {"error": "QMP closed"}
            msg = json.loads(line)
            if "event" not in msg:
                return msg


def guest_case(out: Path, name: str, memlock, qemu: str, timeout: float) -> dict:
    """Run QEMU once (inside the lab guest); returns what happened."""
    trace, strace = out / f"{name}.trace", out / f"{name}.strace"
    for f in (trace, strace):
        if f.exists():
            f.unlink()
    sockdir = tempfile.mkdtemp()                 # 9p cannot hold a unix socket
    sock = os.path.join(sockdir, "qmp.sock")
    lim = resource.RLIM_INFINITY if memlock is None else memlock
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (lim, lim))
    cmd = ["strace", "-f", "-e", "trace=openat,ioctl,write", "-X", "raw", "-xx", "-s", "128",
           "-o", str(strace), qemu, "-machine", "q35,accel=tcg", "-m", "256",
           "-nographic", "-nodefaults", "-serial", "none", "-monitor", "none",
           "-netdev", "type=vhost-vdpa,vhostdev=/dev/vhost-vdpa-0,id=n0",
           "-device", "virtio-net-pci,netdev=n0",
           "-trace", "vhost_vdpa_*", "-D", str(trace), "-qmp", f"unix:{sock},server=on,wait=off"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
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

    ok = (step("", started, 1) and step("stop", stopped, 1) and step("cont", started, 2)
          and step("system_reset", started, 3))
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
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--timeout", type=float, default=90)
    p.add_argument("--case", action="append")
    a = p.parse_args(argv)
    out = Path(a.out)
    version = subprocess.run([a.qemu, "--version"], capture_output=True, text=True).stdout
    results = {"qemu": version.splitlines()[0] if version else "?",
               "kernel": os.uname().release, "cases": []}
    for name in a.case or list(CASES):
        results["cases"].append(guest_case(out, name, CASES[name], a.qemu, a.timeout))
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
key = lambda o: {k: v for k, v in o.items() if k not in ("comment", "expect", "inferred")}
a = [key(o) for o in q.ops]
b = [key(o) for o in s.ops if not (o["op"] == "release" and o.get("inferred"))]
agree = a == b
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
n, diffs = I.check(s.ops, "vdpa_sim", kernel=kernel, **options)
fails = [st for st in s.ops if st.get("expect") and st["expect"].get("errno")]
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


def host_main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernel", default="6.12")
    p.add_argument("--config", default=",".join(CONFIGS),
                   help=f"comma list of {', '.join(CONFIGS)} (default: all)")
    p.add_argument("--venv", default=str(ROOT / ".venv"), help="the venv with iotlb")
    p.add_argument("--save", metavar="DIR", help="keep the logs here (e.g. tests/data/qemu)")
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args(argv)
    venv = Path(a.venv)
    for tool in ("qemu-system-x86_64", "strace"):
        if shutil.which(tool) is None:
            print(f"qemu_run: {tool} is not installed on the host "
                  "(apt-get install -y qemu-system-x86 strace)", file=sys.stderr)
            return 2
    t_all = time.monotonic()
    failed = 0
    passed = 0
    work = Path(tempfile.mkdtemp(prefix="qemu-run-"))
    for cfg in a.config.split(","):
        if cfg not in CONFIGS:
            print(f"qemu_run: unknown config {cfg!r} (known: {', '.join(CONFIGS)})", file=sys.stderr)
            return 2
        params, options = CONFIGS[cfg]
        out = work / cfg
        out.mkdir(parents=True)
        t = time.monotonic()
        cmd = [sys.executable, str(LAB), "run", "--kernel", a.kernel, "--vdpa-sim", params,
               "--rw", str(out), "--cwd", str(out), "--timeout", str(a.timeout), "--",
               "python3", str(Path(__file__).resolve()), "guest", str(out)]
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
                stem = f"qemu72-{a.kernel}-{cfg}-{name}"
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
