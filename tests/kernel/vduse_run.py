#!/usr/bin/env python3
"""The real-kernel VDUSE run: a VDUSE virtio-net device, created by a minimal daemon
in a lab guest, bound to vhost-vdpa, and the corpus through ``iotlb conform
--backend vduse`` on it.

    python3 tests/kernel/vduse_run.py [--kernel 7.2] [--api-version 1 --nas 2 --ngroups 2
                                      --vq-groups 0,1] [--corpus PATH...] [--venv DIR]

The lab (tests/kernel/lab.py) stages a kernel with the vDPA core but without
``vduse``; Debian builds it (CONFIG_VDPA_USER=m), so this script takes ``vduse.ko``
from the very Debian package of the staged kernel (linux-modules-R for forky/sid
kernels, linux-image-R before), checks its vermagic and dependencies against the
stage, and keeps it in ``<lab cache>/parents/KEY/VERSION/vduse.ko``.  It then boots
the kernel with ``lab.py run --no-device`` (vdpa_sim is loaded but no vdpa_sim
device exists, so the VDUSE device is the only vhost-vdpa device) and runs
tests/kernel/vduse_daemon.py, which loads the module, creates the device, answers its
messages and runs ``iotlb conform --json --device {device} --backend vduse:...``.

Prints one PASS/FAIL line (traces, ops, agreed, differing), the differing ops, and
exits 1 on any difference.  ``--domain-check`` runs the corpus in the daemon itself
and compares, before every op and after every trace, the device's domain read back
with ``VDUSE_IOTLB_GET_FD`` with the model's ``device_iotlb``.  Uses lab.py's functions by import; lab.py is unchanged.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import lab  # noqa: E402
from conformance import _q, add_run_args, print_result  # noqa: E402


def parents_dir(key: str, version: str) -> Path:
    return lab.cache_dir() / "parents" / key / version


def stage_module(key: str, module: str, relpath: str) -> Path:
    """``module``.ko of the staged ``key`` kernel, from Debian's package (cached)."""
    manifest = lab.current_manifest(key, lab.pinned(key, None))
    out = parents_dir(key, manifest["version"]) / f"{module}.ko"
    if out.is_file():
        return out
    release = manifest["release"]
    apt = lab.Apt(key)
    apt.setup()
    with tempfile.TemporaryDirectory(prefix="parents-", dir=lab.cache_dir()) as tmp:
        got = None
        for pkg in (f"linux-modules-{release}", f"linux-image-{release}-unsigned",
                    f"linux-image-{release}"):
            res = subprocess.run(["apt-get", "-q", *apt.opts(), "download",
                                  f"{pkg}={manifest['version']}"], cwd=tmp,
                                 capture_output=True, text=True)
            debs = sorted(Path(tmp).glob(f"{pkg}_*.deb"))
            if res.returncode == 0 and debs:
                listing = subprocess.run(["dpkg-deb", "-c", str(debs[0])], capture_output=True,
                                         text=True, check=True).stdout
                names = [line.split()[-1] for line in listing.splitlines()]
                hits = [n for n in names if f"/{relpath}/{module}.ko" in n]
                if hits:
                    got = (debs[0], hits[0])
                    break
        if got is None:
            raise lab.LabError(f"{key}: no {module}.ko in Debian's packages of {release}")
        deb, member = got
        ko = Path(tmp) / Path(member).name
        with open(ko, "wb") as fp:
            p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-xOf", "-", member], stdin=p1.stdout, stdout=fp, check=True)
            p1.stdout.close()
            p1.wait()
        data = lab.decompress_module(ko)
    info = lab.modinfo(data)
    vermagic = info.get("vermagic", ["?"])[0]
    if vermagic != manifest["vermagic"]:
        raise lab.LabError(f"{module}.ko vermagic {vermagic!r} != staged {manifest['vermagic']!r}")
    staged = set(manifest["boot_modules"]) | set(manifest["vdpa_modules"])
    deps = [d for d in ",".join(info.get("depends", [""])).split(",") if d]
    missing = [d for d in deps if d not in staged]
    if missing:
        raise lab.LabError(f"{module}.ko needs {', '.join(missing)}, which the stage lacks")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpout = out.with_suffix(".tmp")
    tmpout.write_bytes(data)
    tmpout.rename(out)
    lab.log(f"{key}: staged {module}.ko ({len(data)} bytes, depends {','.join(deps)}) at {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="7.2", choices=["6.12", "7.2"])
    ap.add_argument("--api-version", type=int, default=None,
                    help="VDUSE API version (default: 0 on 6.12, 1 on 7.2)")
    ap.add_argument("--nas", type=int, default=1)
    ap.add_argument("--ngroups", type=int, default=1)
    ap.add_argument("--vq-groups", default="0,0")
    add_run_args(ap, json_help="keep the conform JSON here")
    ap.add_argument("--domain-check", action="store_true",
                    help="also read the device's domain back (VDUSE_IOTLB_GET_FD) before "
                         "every op and compare it with the model's device_iotlb")
    args = ap.parse_args(argv)
    api = args.api_version if args.api_version is not None else (0 if args.kernel == "6.12" else 1)
    try:
        ko = stage_module(args.kernel, "vduse", "drivers/vdpa/vdpa_user")
    except lab.LabError as exc:
        print(f"FAIL {args.kernel} vduse: {exc}")
        return 1
    corpus = [str(Path(p).resolve()) for p in (args.corpus or [str(ROOT / "tests" / "corpus")])]
    opts = [f"kernel={args.kernel}", f"api_version={api}"]
    if api >= 1:
        opts += [f"nas={args.nas}", f"ngroups={args.ngroups}",
                 f"vq_groups=({args.vq_groups},)"]
    nvqs = len(args.vq_groups.split(","))
    opts.append(f"nvqs={nvqs}")
    with tempfile.TemporaryDirectory(prefix="vduse-run-") as out:
        out = Path(out)
        result = out / "conform.json"
        python = str(Path(args.venv) / "bin" / "python") if args.domain_check else sys.executable
        daemon = [python, str(HERE / "vduse_daemon.py"), "--ko", str(ko),
                  "--api-version", str(api), "--vq-groups", args.vq_groups]
        if api >= 1:
            daemon += ["--nas", str(args.nas), "--ngroups", str(args.ngroups)]
        if args.domain_check:
            daemon += ["--domain-check", "--backend-options", ",".join(opts)]
            conform = corpus
        else:
            conform = [str(Path(args.venv) / "bin" / "iotlb"), "conform", "--json",
                       "--device", "{device}", "--backend", "vduse:" + ",".join(opts), *corpus]
        job = " ".join(_q(a) for a in daemon + ["--"] + conform) + f" > {_q(str(result))}"
        cmd = [sys.executable, str(HERE / "lab.py"), "run", "--kernel", args.kernel,
               "--no-device", "--timeout", str(args.timeout), "--rw", str(out),
               "--cwd", str(ROOT), "--", "sh", "-c", job]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        seconds = time.monotonic() - t0
        try:
            data = json.loads(result.read_text())
        except (OSError, ValueError) as exc:
            print(f"FAIL {args.kernel} vduse: no result ({type(exc).__name__}); lab exit "
                  f"{proc.returncode}\n" + "\n".join(proc.stdout.splitlines()[-40:]))
            return 1
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    data["seconds"] = seconds
    for line in proc.stdout.splitlines():
        if line.startswith("vduse_daemon:"):
            print(line)
    if args.domain_check:
        ok = not (data["domain_differences"] or data["conform_differing"] or data["errors"])
        print(f"{'PASS' if ok else 'FAIL'} {args.kernel} vduse domain ({', '.join(opts)}): "
              f"{data['traces']} traces, {data['ops']} ops, {data['domain_checks']} domain "
              f"reads, {data['domain_differences']} differing, {data['conform_differing']} "
              f"op answers differing, {data['errors']} could not run ({seconds:.0f} s)")
        for d in data["first"][:args.max_diffs]:
            print(f"  {d['trace']} {d['where']} asid {d['asid']}:\n    - kernel {d['kernel']}"
                  f"\n    + model  {d['model']}")
        return 0 if ok else 1
    _report(args.kernel, opts, data, args.max_diffs)
    return 0 if data.get("ok") and data.get("failed") == 0 else 1


def _report(kernel: str, opts, data: dict, max_diffs: int, parent: str = "vduse") -> None:
    print_result(f"{kernel} {parent} ({', '.join(opts)})", data, max_diffs)


if __name__ == "__main__":
    sys.exit(main())
