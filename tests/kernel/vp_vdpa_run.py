#!/usr/bin/env python3
"""The real-kernel vp_vdpa run: a virtio-net-pci device behind QEMU's Intel IOMMU,
bound to ``vp_vdpa`` in the guest, so that vhost-vdpa programs a real IOMMU domain
(``iommu_map``/``iommu_unmap``); the corpus through ``iotlb conform --backend
vp_vdpa`` on it.

    python3 tests/kernel/vp_vdpa_run.py [--kernel 7.2] [--corpus PATH...] [--venv DIR]
                                        [--prepare-only]

Built on tests/kernel/lab.py by import, without changing it:

* **the module.**  Debian does not build vp_vdpa (``# CONFIG_VP_VDPA is not set``),
  so this script runs lab.py's own ``prepare`` with vp_vdpa added to the modules it
  builds from linux-source (``drivers/vdpa/virtio_pci/vp_vdpa.c``, against the
  kernel's headers, with the kernel's compiler) and to the modules the guest loads
  at boot.  That stage lives in a cache of its own (``<lab cache>/parents/vp_vdpa``,
  via ``IOTLB_KERNEL_CACHE``) so the lab's stage is never touched.
* **the machine.**  ``lab.run`` is used as is, with its QEMU command rewritten on the
  way to ``Popen``: ``-M q35`` instead of ``-M pc``, ``-device
  intel-iommu,caching-mode=on,aw-bits=48`` and ``-device
  virtio-net-pci,disable-legacy=on,iommu_platform=on,addr=0x10`` added, and
  ``intel_iommu=on`` on the kernel command line.  ``--no-device``: no vdpa_sim
  device is created, so the vp_vdpa device is /dev/vhost-vdpa-0.
* **in the guest** (the job): the virtio-net function is taken from virtio-pci
  (built in) and given to vp-vdpa (``driver_override``), ``vdpa dev add name vdpa0
  mgmtdev pci/BDF``, then ``iotlb conform --json --backend vp_vdpa``.

Prints one PASS/FAIL line and the differing ops; exit 1 on any difference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import lab  # noqa: E402
from conformance import _q, add_run_args  # noqa: E402

NET_ADDR = "0x10"                 # PCI slot of the virtio-net function on q35's root bus
NET_BDF = "0000:00:10.0"
IOMMU_AW_BITS = 48                # the aperture the model's vp_vdpa default expects

# lab.py's tables, extended for this process only: build vp_vdpa, load it at boot.
lab.SOURCES.setdefault("vp_vdpa", ("drivers/vdpa/virtio_pci", "vp_vdpa"))
lab.BUILD_CONFIG.setdefault("vp_vdpa", "VP_VDPA")
# (its sources come with drivers/vdpa, which lab.SOURCE_DIRS already unpacks)
if "vp_vdpa" not in lab.VDPA_MODULES:
    lab.VDPA_MODULES.append("vp_vdpa")


def use_own_cache() -> Path:
    """Point lab.py at a cache of its own (the stage with vp_vdpa)."""
    if "IOTLB_VP_VDPA_CACHE" in os.environ:
        own = Path(os.environ["IOTLB_VP_VDPA_CACHE"])
    else:
        own = lab.cache_dir() / "parents" / "vp_vdpa"
    os.environ["IOTLB_KERNEL_CACHE"] = str(own)
    return own


def rewrite_qemu(argv: list) -> list:
    """lab.run's QEMU command for the q35 + intel-iommu + virtio-net-pci machine."""
    out = list(argv)
    i = out.index("-M")
    if out[i + 1] != "pc":
        raise lab.LabError(f"lab.run's machine is {out[i + 1]!r}, expected 'pc'")
    out[i + 1] = "q35"
    j = out.index("-append")
    out[j + 1] += " intel_iommu=on"
    out += ["-device", f"intel-iommu,caching-mode=on,aw-bits={IOMMU_AW_BITS}",
            "-device", f"virtio-net-pci,disable-legacy=on,iommu_platform=on,addr={NET_ADDR}"]
    return out


def guest_job(conform: list, result: Path) -> str:
    bind = (
        f"d=/sys/bus/pci/devices/{NET_BDF}; "
        f"[ -e $d/driver ] && echo {NET_BDF} > $d/driver/unbind; "
        f"echo vp-vdpa > $d/driver_override && echo {NET_BDF} > /sys/bus/pci/drivers_probe && "
        f"vdpa dev add name vdpa0 mgmtdev pci/{NET_BDF} && "
        "n=0; while [ ! -c /dev/vhost-vdpa-0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done; "
        "echo \"vp_vdpa_run: $(readlink $d/driver); $(ls /sys/bus/vdpa/devices/vdpa0 | grep vhost); "
        "iommu group $(basename $(readlink $d/iommu_group))\" >&2; ")
    return bind + " ".join(_q(a) for a in conform) + f" > {_q(str(result))}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="7.2", choices=["6.12", "7.2"])
    add_run_args(ap, json_help="keep the conform JSON here")
    ap.add_argument("--backend", default="vp_vdpa",
                    help="the model's parent (default: %(default)s; platform_iommu is the "
                         "IOMMU-agnostic control, which must differ on odd perms)")
    ap.add_argument("--prepare-only", action="store_true",
                    help="build and stage the kernel with vp_vdpa, boot nothing")
    args = ap.parse_args(argv)
    own = use_own_cache()
    t0 = time.monotonic()
    try:
        manifest = lab.current_manifest(args.kernel, lab.pinned(args.kernel, None))
    except lab.LabError as exc:
        print(f"FAIL {args.kernel} vp_vdpa: cannot stage the kernel with vp_vdpa: {exc}")
        return 1
    if "vp_vdpa" not in manifest["vdpa_modules"]:
        print(f"FAIL {args.kernel} vp_vdpa: the stage in {own} has no vp_vdpa "
              f"({manifest['vdpa_modules']}); remove it and run again")
        return 1
    lab.log(f"{args.kernel}: stage with vp_vdpa ready in {own} ({time.monotonic() - t0:.0f} s)")
    if args.prepare_only:
        return 0
    corpus = [str(Path(p).resolve()) for p in (args.corpus or [str(ROOT / "tests" / "corpus")])]
    real_popen = subprocess.Popen

    def popen(cmd, *a, **kw):
        if isinstance(cmd, list) and cmd and cmd[0] == "qemu-system-x86_64":
            cmd = rewrite_qemu(cmd)
        return real_popen(cmd, *a, **kw)

    with tempfile.TemporaryDirectory(prefix="vp-vdpa-run-") as out:
        out = Path(out)
        result = out / "conform.json"
        conform = [str(Path(args.venv) / "bin" / "iotlb"), "conform", "--json",
                   "--device", "/dev/vhost-vdpa-0", "--backend", args.backend, *corpus]
        lab_args = ["run", "--kernel", args.kernel, "--no-device", "--timeout",
                    str(args.timeout), "--rw", str(out), "--cwd", str(ROOT), "--",
                    "sh", "-c", guest_job(conform, result)]
        t0 = time.monotonic()
        lab.subprocess.Popen = popen
        try:
            rc = lab.main(lab_args)
        finally:
            lab.subprocess.Popen = real_popen
        seconds = time.monotonic() - t0
        try:
            data = json.loads(result.read_text())
        except (OSError, ValueError) as exc:
            print(f"FAIL {args.kernel} vp_vdpa: no result ({type(exc).__name__}); lab exit {rc}")
            return 1
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    data["seconds"] = seconds
    from vduse_run import _report
    _report(args.kernel, [f"behind intel-iommu, aw-bits={IOMMU_AW_BITS}",
                         f"model {args.backend}"], data, args.max_diffs, parent="vp_vdpa")
    return 0 if data.get("ok") and data.get("failed") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
