#!/usr/bin/env python3
"""Kernel lab: boot Debian's real kernels under QEMU (TCG) with a vdpa_sim_net device.

    python3 tests/kernel/lab.py prepare [--kernel 6.12|7.2|6.1|all]
    python3 tests/kernel/lab.py run --kernel 6.12 --vdpa-sim 'batch_mapping=1 use_va=0' -- CMD ARGS...
    python3 tests/kernel/lab.py list

`prepare` downloads a Debian kernel (image, headers, linux-source of exactly the same
version) with a private apt configuration, unpacks the packages into a throw-away
root of that Debian suite, builds the vDPA modules Debian does not ship (vringh,
vdpa_sim, vdpa_sim_net, and for 6.1 the whole vDPA core) there with the compiler the
kernel was built with, and stages kernel + decompressed modules in the cache.  `run`
boots a staged kernel with the host's root file system as a read-only 9p root, loads
the vDPA stack, creates /dev/vhost-vdpa-0 and runs CMD inside the guest.  See
README.md next to this file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import json
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init.sh"

# Bump when the staged layout or the build recipe changes: older stages are rebuilt.
RECIPE = 2

DEFAULT_CACHE = "/var/cache/iotlb-kernel"
FLAVOUR = "amd64"

# The kernel table: a series and the Debian suites whose newest kernel of that series
# the lab uses.  The version is resolved at run time from the linux-image-amd64
# metapackage of those suites, unless pinned (--version, IOTLB_KERNEL_VERSION_6_12=...).
KERNELS = {
    "6.1": {"suites": ["bookworm", "bookworm-updates", "bookworm-security"]},
    "6.12": {"suites": ["trixie", "trixie-updates", "trixie-security"]},
    "7.2": {"suites": ["sid"]},
}

# Modules the guest needs, by module name; their dependencies are added from the
# modules' own .modinfo "depends=" and everything is loaded in dependency order.
# (a name the kernel has built in is skipped)
BOOT_MODULES = ["virtio_pci", "9p", "9pnet_virtio"]  # the host root over virtio-9p
VDPA_MODULES = ["vhost_vdpa", "vdpa_sim_net"]  # the vDPA stack with the simulator

# Where a module Debian does not ship comes from in linux-source: (directory, file stem).
SOURCES = {
    "vhost_iotlb": ("drivers/vhost", "iotlb"),
    "vhost": ("drivers/vhost", "vhost"),
    "vringh": ("drivers/vhost", "vringh"),
    "vhost_vdpa": ("drivers/vhost", "vdpa"),
    "vdpa": ("drivers/vdpa", "vdpa"),
    "vdpa_sim": ("drivers/vdpa/vdpa_sim", "vdpa_sim"),
    "vdpa_sim_net": ("drivers/vdpa/vdpa_sim", "vdpa_sim_net"),
}
SOURCE_DIRS = ["drivers/vhost", "drivers/vdpa"]  # what is unpacked from the tarball
# Kconfig symbols of the modules built out of tree, defined for their compilation
# (a kernel configured without vDPA has none of them in its autoconf.h).
BUILD_CONFIG = {
    "vhost_iotlb": "VHOST_IOTLB",
    "vhost": "VHOST",
    "vringh": "VHOST_RING",
    "vhost_vdpa": "VHOST_VDPA",
    "vdpa": "VDPA",
    "vdpa_sim": "VDPA_SIM",
    "vdpa_sim_net": "VDPA_SIM_NET",
}

# What the chroot needs besides the kernel packages (which pull in the compiler).
BUILD_PACKAGES = ["make", "mawk", "dash", "coreutils", "sed", "grep", "findutils"]
# Host tools: executable -> Debian package (installed with the host's apt if missing).
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "zstd": "zstd",
    "xz": "xz-utils",
    "/usr/sbin/vdpa": "iproute2",
    "/bin/busybox": "busybox-static",
    "strace": "strace",              # tests/kernel/qemu_run.py
}
BUSYBOX = "/bin/busybox"

EXIT_TIMEOUT = 124
EXIT_LAB = 125


class LabError(Exception):
    pass


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("IOTLB_KERNEL_CACHE") or DEFAULT_CACHE)


def sh(cmd, *, capture=False, check=True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(
        cmd, text=True, stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None, **kw)
    if check and res.returncode != 0:
        detail = (res.stderr or "").strip()[-2000:] if capture else ""
        raise LabError(f"command failed ({res.returncode}): {shlex.join(map(str, cmd))}\n{detail}")
    return res


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------- host side

def is_static_elf(path: str) -> bool:
    """True if the ELF file at path has no program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        data = f.read(4096)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, off)[0] == 3:  # PT_INTERP
            return False
    return True


def ensure_host_tools() -> None:
    missing = []
    for tool, pkg in HOST_TOOLS.items():
        path = tool if tool.startswith("/") else shutil.which(tool)
        if not path or not os.path.exists(path):
            missing.append(pkg)
        elif tool == BUSYBOX and not is_static_elf(path):
            missing.append(pkg)
    if not missing:
        return
    if os.geteuid() != 0:
        raise LabError(f"missing host packages {missing}; install them (as root)")
    log(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(["apt-get", "-q", "update"], capture=True, env=env)
    sh(["apt-get", "-q", "install", "-y", "--no-install-recommends", *missing],
       capture=True, env=env)


def _deb822_stanzas(text: str):
    stanza: dict[str, str] = {}
    key = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, val = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = val.strip()


def host_mirrors() -> tuple[str, str]:
    """(debian mirror, debian-security mirror) read from the machine's apt sources."""
    main = os.environ.get("IOTLB_APT_MIRROR")
    sec = os.environ.get("IOTLB_APT_SECURITY_MIRROR")
    entries = []  # (uri, suite)
    d = Path("/etc/apt/sources.list.d")
    for f in sorted(d.glob("*.sources")) if d.is_dir() else []:
        for st in _deb822_stanzas(f.read_text()):
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes") == "no":
                continue
            for uri in st.get("uris", "").split():
                for suite in st.get("suites", "").split():
                    entries.append((uri, suite))
    lists = [Path("/etc/apt/sources.list")] + (sorted(d.glob("*.list")) if d.is_dir() else [])
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                entries.append((line[1], line[2]))
    for uri, suite in entries:
        if suite.endswith("-security"):
            sec = sec or uri
        else:
            main = main or uri
    if not main or not sec:
        raise LabError("cannot find the Debian mirror and the debian-security mirror in the "
                       "machine's apt sources (set IOTLB_APT_MIRROR / IOTLB_APT_SECURITY_MIRROR)")
    return main.rstrip("/"), sec.rstrip("/")


# --------------------------------------------------------------------- private apt

class Apt:
    """apt-get/apt-cache with sources, lists, archives and an (empty) dpkg status of
    their own under the cache dir; the host's apt.conf.d (proxies, ...) still applies."""

    KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

    def __init__(self, key: str):
        self.key = key
        self.root = cache_dir() / "apt" / key
        self.suites = KERNELS[key]["suites"]

    def opts(self, archives: Path | None = None) -> list[str]:
        r = self.root
        o = {
            "Dir::Etc::sourcelist": r / "etc/sources.list",
            "Dir::Etc::sourceparts": r / "etc/sources.list.d",
            "Dir::Etc::preferencesparts": r / "etc/preferences.d",
            "Dir::State": r / "state",
            "Dir::State::status": "/dev/null",
            "Dir::Cache": r / "cache",
            "APT::Architecture": FLAVOUR,
            "APT::Install-Recommends": "false",
            "Debug::NoLocking": "true",
        }
        if archives is not None:
            o["Dir::Cache::archives"] = archives
        out = []
        for k, v in o.items():
            out += ["-o", f"{k}={v}"]
        return out

    def setup(self) -> None:
        mirror, secmirror = host_mirrors()
        for sub in ("etc/sources.list.d", "etc/preferences.d",
                    "state/lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lines = []
        for suite in self.suites:
            uri = secmirror if suite.endswith("-security") else mirror
            lines.append(f"deb [signed-by={self.KEYRING}] {uri} {suite} main")
        (self.root / "etc/sources.list").write_text("\n".join(lines) + "\n")

    def update(self) -> None:
        self.setup()
        sh(["apt-get", "-q", *self.opts(), "update"], capture=True)

    def cache(self, *args: str) -> str:
        return sh(["apt-cache", *self.opts(), *args], capture=True).stdout

    def download(self, dest: Path, pkgs: list[str]) -> None:
        (dest / "partial").mkdir(parents=True, exist_ok=True)
        sh(["apt-get", "-q", "-y", *self.opts(dest), "install", "--download-only", *pkgs],
           capture=True)


def resolve(key: str, apt: Apt, pin: str | None) -> dict:
    """The kernel of this row: {"abi": "6.12.118+deb13", "version": "6.12.118-1"}."""
    if pin is None:
        pol = apt.cache("policy", f"linux-image-{FLAVOUR}")
        m = re.search(r"Candidate:\s*(\S+)", pol)
        if not m or m.group(1) == "(none)":
            raise LabError(f"no linux-image-{FLAVOUR} in {apt.suites}")
        show = apt.cache("show", f"linux-image-{FLAVOUR}={m.group(1)}")
        dep = re.search(r"^Depends:.*?linux-image-(\S+)-" + FLAVOUR + r"(?:-unsigned)?"
                        r"\s*\(=\s*([^)\s]+)\)", show, re.M)
        if not dep:
            raise LabError(f"cannot read the kernel from linux-image-{FLAVOUR} {m.group(1)}")
        abi, version = dep.group(1), dep.group(2)
    else:
        version = pin
        names = apt.cache("pkgnames", "linux-image-").split()
        cands = [n for n in names if re.fullmatch(rf"linux-image-(.+)-{FLAVOUR}", n)
                 and not n.endswith("-unsigned")]
        abi = None
        if cands:
            mad = apt.cache("madison", *cands)
            for line in mad.splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) >= 2 and parts[1] == version:
                    abi = re.fullmatch(rf"linux-image-(.+)-{FLAVOUR}", parts[0]).group(1)
                    break
        if abi is None:
            raise LabError(f"kernel version {version} is not available in {apt.suites}")
    series = ".".join(version.split(".")[:2])
    if series != key:
        raise LabError(f"the kernel row {key} resolved to {version} ({apt.suites} moved on?); "
                       f"pin a {key}.x version or add a row for {series} to KERNELS")
    return {"abi": abi, "version": version}


def pinned(key: str, cli: str | None) -> str | None:
    return cli or os.environ.get("IOTLB_KERNEL_VERSION_" + key.replace(".", "_")) or None


# --------------------------------------------------------------------- modules

def modinfo(data: bytes) -> dict[str, list[str]]:
    """The .modinfo section of a (decompressed) ELF64 kernel module."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise LabError("not an ELF64 module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _typ, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in data[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode(errors="replace").split("=", 1)
                    info.setdefault(k, []).append(v)
            return info
    return {}


def decompress_module(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-q", "-dc", str(path)], check=True,
                              stdout=subprocess.PIPE).stdout
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def modname(filename: str) -> str:
    return filename.split(".ko")[0].replace("-", "_")


def image_modules(moddir: Path) -> dict[str, Path]:
    return {modname(p.name): p for p in moddir.rglob("*.ko*") if re.search(r"\.ko(\.\w+)?$", p.name)}


def load_order(roots: list[str], deps: dict[str, list[str]]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(m, stack=()):
        if m in seen:
            return
        if m in stack:
            raise LabError(f"module dependency cycle at {m}")
        if m not in deps:
            raise LabError(f"module {m} is neither in the kernel image nor buildable")
        for d in deps[m]:
            visit(d, stack + (m,))
        seen.add(m)
        order.append(m)

    for r in roots:
        visit(r)
    return order


# --------------------------------------------------------------------- prepare

def stage_dir(key: str, version: str) -> Path:
    return cache_dir() / "stage" / key / version


def staged(key: str, version: str) -> dict | None:
    mf = stage_dir(key, version) / "manifest.json"
    if not mf.is_file():
        return None
    m = json.loads(mf.read_text())
    return m if m.get("recipe") == RECIPE else None


def resolved_file(key: str) -> Path:
    return cache_dir() / "resolved" / key


def prepare(key: str, pin: str | None = None, keep_work: bool = False, offline: bool = False) -> dict:
    t0 = time.monotonic()
    with locked(cache_dir() / "lock"):
        if pin and staged(key, pin):
            m = staged(key, pin)
            log(f"{key}: linux {m['version']} ({m['abi']}) already staged")
            return m
        apt = Apt(key)
        if offline:
            last = resolved_file(key)
            if last.is_file() and staged(key, last.read_text().strip()):
                m = staged(key, last.read_text().strip())
                log(f"{key}: linux {m['version']} (offline: last resolved, staged)")
                return m
            raise LabError(f"{key}: nothing staged to use offline")
        ensure_host_tools()
        apt.update()
        k = resolve(key, apt, pin)
        log(f"{key}: linux-image-{k['abi']}-{FLAVOUR} {k['version']} from {' '.join(apt.suites)}"
            f"{' (pinned)' if pin else ''}")
        m = staged(key, k["version"])
        if m is None:
            m = build_stage(key, apt, k, keep_work)
            log(f"{key}: staged in {time.monotonic() - t0:.1f}s at {stage_dir(key, k['version'])}")
        else:
            log(f"{key}: already staged at {stage_dir(key, k['version'])}")
        if not pin:
            resolved_file(key).parent.mkdir(parents=True, exist_ok=True)
            resolved_file(key).write_text(k["version"] + "\n")
        return m


def build_stage(key: str, apt: Apt, k: dict, keep_work: bool) -> dict:
    abi, version = k["abi"], k["version"]
    kname = f"{abi}-{FLAVOUR}"
    work = cache_dir() / "work" / f"{key}-{version}"
    if work.exists():
        shutil.rmtree(work)
    debs, root, src = work / "debs", work / "root", work / "src"
    for d in (debs, root, src):
        d.mkdir(parents=True)

    t = time.monotonic()
    pkgs = [f"linux-image-{kname}={version}", f"linux-headers-{kname}={version}",
            f"linux-source-{key}={version}", *BUILD_PACKAGES]
    apt.download(debs, pkgs)
    files = sorted(debs.glob("*.deb"))
    size = sum(f.stat().st_size for f in files) / 1e6
    log(f"{key}: downloaded {len(files)} packages ({size:.0f} MB) in {time.monotonic() - t:.1f}s")

    # A root of the kernel's suite: the packages unpacked (no maintainer scripts) onto
    # merged-/usr links.  The kernel's headers, its host tools and its compiler run there.
    t = time.monotonic()
    (root / "usr").mkdir()
    for d in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / d).mkdir()
        os.symlink(f"usr/{d}", root / d)
    srcdeb = [f for f in files if f.name.startswith(f"linux-source-{key}_")]
    if len(srcdeb) != 1:
        raise LabError(f"linux-source-{key} was not downloaded")

    def unpack(deb: Path):
        sh(["dpkg-deb", "-x", str(deb), str(root)])

    def unpack_source():
        tarname = f"./usr/src/linux-source-{key}.tar.xz"
        top = f"linux-source-{key}"
        p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(srcdeb[0])], stdout=subprocess.PIPE)
        p2 = subprocess.Popen(["tar", "-xOf", "-", tarname], stdin=p1.stdout, stdout=subprocess.PIPE)
        p1.stdout.close()
        p3 = subprocess.run(["tar", "-xJf", "-", "-C", str(src), "--strip-components=1",
                             *[f"{top}/{d}" for d in SOURCE_DIRS]], stdin=p2.stdout)
        p2.stdout.close()
        if p1.wait() or p2.wait() or p3.returncode:
            raise LabError(f"cannot unpack {', '.join(SOURCE_DIRS)} from {srcdeb[0].name}")

    with ThreadPoolExecutor(max_workers=3) as ex:
        jobs = [ex.submit(unpack_source)]
        jobs += [ex.submit(unpack, f) for f in files if f not in srcdeb]
        for j in jobs:
            j.result()
    log(f"{key}: unpacked the root and the sources in {time.monotonic() - t:.1f}s")

    awk = root / "usr/bin/awk"
    if not awk.exists():
        os.symlink("mawk", awk)
    (root / "dev").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    if not (root / "dev/null").exists():
        os.mknod(root / "dev/null", 0o20666, os.makedev(1, 3))
        os.chmod(root / "dev/null", 0o666)

    headers = f"/usr/src/linux-headers-{kname}"
    config = (root / headers.lstrip("/") / ".config").read_text()
    ccm = re.search(r'^CONFIG_CC_VERSION_TEXT="(\S+)[^"]*"', config, re.M)
    if not ccm:
        raise LabError("no CONFIG_CC_VERSION_TEXT in the headers' .config")
    cc = ccm.group(1)
    if not (root / "usr/bin" / cc).exists():
        raise LabError(f"the kernel was built with {cc}, which the {key} root lacks")

    # What the image ships, what must be built.
    moddir = root / "lib/modules" / kname
    shipped = image_modules(moddir)
    shipped_info = {}

    def info_of(name):
        if name not in shipped_info:
            shipped_info[name] = modinfo(decompress_module(shipped[name]))
        return shipped_info[name]

    need_build = [m for m in SOURCES if m not in shipped]
    # vdpa_sim needs vringh; build whatever it and the rest need that the image lacks.
    t = time.monotonic()
    built = build_modules(key, root, src, headers, cc, need_build)
    log(f"{key}: built {', '.join(need_build)} with {cc} in {time.monotonic() - t:.1f}s")

    deps: dict[str, list[str]] = {}
    blobs: dict[str, bytes] = {}
    infos: dict[str, dict] = {}
    for name, data in built.items():
        blobs[name] = data
        infos[name] = modinfo(data)

    def dep_closure(roots):
        todo = list(roots)
        while todo:
            m = todo.pop()
            if m in deps:
                continue
            if m not in infos:
                if m not in shipped:
                    raise LabError(f"module {m} is neither in linux-image-{kname} nor built")
                blobs[m] = decompress_module(shipped[m])
                infos[m] = modinfo(blobs[m])
            d = [x for x in ",".join(infos[m].get("depends", [""])).split(",") if x]
            deps[m] = d
            todo += d

    builtin = set()
    if (moddir / "modules.builtin").is_file():
        builtin = {modname(Path(line).name) for line in (moddir / "modules.builtin").read_text().split()}
    boot_roots = [m for m in BOOT_MODULES if not (m in builtin and m not in shipped)]
    vdpa_roots = [m for m in VDPA_MODULES if not (m in builtin and m not in shipped)]
    dep_closure(boot_roots + vdpa_roots)
    boot_order = load_order(boot_roots, deps)
    vdpa_order = [m for m in load_order(vdpa_roots, deps) if m not in boot_order]

    vermagic = {m: infos[m].get("vermagic", ["?"])[0] for m in deps}
    if len(set(vermagic.values())) != 1:
        raise LabError(f"vermagic mismatch: {vermagic}")

    out = stage_dir(key, version)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "modules").mkdir(parents=True)
    # /boot/vmlinuz-R up to trixie, /usr/lib/modules/R/vmlinuz from forky on.
    for name, there in (("vmlinuz", [f"boot/vmlinuz-{kname}", f"usr/lib/modules/{kname}/vmlinuz"]),
                        ("config", [f"boot/config-{kname}", f"usr/lib/modules/{kname}/config"])):
        found = [root / p for p in there if (root / p).is_file()]
        if not found:
            raise LabError(f"no {name} in linux-image-{kname} (looked at {', '.join(there)})")
        shutil.copy(found[0], tmp / name)
    for m in deps:
        (tmp / "modules" / f"{m}.ko").write_bytes(blobs[m])
    parms = {}
    for p in infos["vdpa_sim"].get("parm", []):
        n, _, desc = p.partition(":")
        parms[n] = desc
    manifest = {
        "recipe": RECIPE, "key": key, "abi": abi, "version": version, "release": kname,
        "suites": apt.suites, "cc": cc, "cc_version_text": ccm.group(0).split("=", 1)[1].strip('"'),
        "vermagic": next(iter(vermagic.values())),
        "boot_modules": boot_order, "vdpa_modules": vdpa_order,
        "built": sorted(built), "vdpa_sim_parameters": parms,
        "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if not keep_work:
        shutil.rmtree(work)
    return manifest


def build_modules(key: str, root: Path, src: Path, headers: str, cc: str,
                  names: list[str]) -> dict[str, bytes]:
    """Build the named modules out of tree in the chroot; {name: .ko bytes}."""
    build = root / "build"
    if build.exists():
        shutil.rmtree(build)
    by_dir: dict[str, list[str]] = {}
    for n in names:
        by_dir.setdefault(SOURCES[n][0], []).append(n)
    top = []
    defines = " ".join(f"-DCONFIG_{BUILD_CONFIG[n]}_MODULE=1" for n in names)
    for d, mods in by_dir.items():
        bd = build / d
        bd.mkdir(parents=True)
        for f in (src / d).iterdir():
            if f.is_file() and f.suffix in (".c", ".h"):
                shutil.copy(f, bd / f.name)
        lines = []
        for n in mods:
            stem = SOURCES[n][1]
            lines.append(f"obj-m += {n}.o")
            if stem != n:
                lines.append(f"{n}-y := {stem}.o")
        lines.append(f"ccflags-y += {defines}")
        (bd / "Kbuild").write_text("\n".join(lines) + "\n")
        top.append(f"obj-y += {d}/")
    (build / "Kbuild").write_text("\n".join(top) + "\n")
    env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp", "LC_ALL=C"]
    # objtool reads /proc: a private /proc in a mount+pid namespace that dies with make.
    (root / "proc").mkdir(exist_ok=True)
    res = sh(["unshare", "--mount", "--pid", "--fork", f"--mount-proc={root / 'proc'}",
              "chroot", str(root), *env, "make", f"-j{os.cpu_count() or 2}", "-C", headers,
              "M=/build", f"CC={cc}", "modules"], capture=True, check=False)
    (root / "build" / "make.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise LabError(f"{key}: building {names} failed:\n{(res.stdout + res.stderr)[-3000:]}")
    out = {}
    for n in names:
        ko = build / SOURCES[n][0] / f"{n}.ko"
        if not ko.is_file():
            raise LabError(f"{key}: {ko} was not built")
        out[n] = ko.read_bytes()
    return out


# --------------------------------------------------------------------- run

def cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of (name, mode, data, rdev) entries."""
    chunks = []
    ino = 1
    for name, mode, data, rdev in entries + [("TRAILER!!!", 0, b"", 0)]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            ino, mode, 0, 0, 2 if mode & 0o170000 == 0o040000 else 1, 0, len(data),
            0, 0, os.major(rdev), os.minor(rdev), len(nb), 0))
        ino += 1
        rec = hdr.encode() + nb
        rec += b"\0" * (-len(rec) % 4)
        rec += data + b"\0" * (-len(data) % 4)
        chunks.append(rec)
    return b"".join(chunks)


def make_initramfs(stage: Path, manifest: dict, conf: str) -> bytes:
    d, f = 0o040755, 0o100644
    entries = [("bin", d, b"", 0), ("dev", d, b"", 0),
               ("dev/console", 0o020600, b"", os.makedev(5, 1)),
               ("lib", d, b"", 0), ("lib/lab", d, b"", 0),
               ("init", 0o100755, INIT_SCRIPT.read_bytes(), 0),
               ("bin/busybox", 0o100755, Path(BUSYBOX).read_bytes(), 0),
               ("lab.conf", f, conf.encode(), 0)]
    for m in manifest["boot_modules"] + manifest["vdpa_modules"]:
        entries.append((f"lib/lab/{m}.ko", f, (stage / "modules" / f"{m}.ko").read_bytes(), 0))
    return cpio_newc(entries)


def parse_vdpa_sim(spec: str, manifest: dict) -> list[str]:
    known = manifest["vdpa_sim_parameters"]
    out = []
    for item in spec.replace(",", " ").split():
        k, sep, v = item.partition("=")
        if not sep or not v:
            raise LabError(f"--vdpa-sim: {item!r} is not KEY=VALUE")
        if k not in known:
            raise LabError(f"--vdpa-sim: vdpa_sim has no parameter {k!r} (it has {', '.join(known)})")
        if not re.fullmatch(r"[0-9]+|0x[0-9a-fA-F]+|[YNyn]|true|false", v):
            raise LabError(f"--vdpa-sim: bad value {item!r}")
        out.append(f"{k}={v}")
    return out


class Follower(threading.Thread):
    """Copies files that grow (the guest's stdout/stderr) to host streams."""

    def __init__(self, pairs: list[tuple[Path, object]]):
        super().__init__(daemon=True)
        self.pairs = pairs
        self.offsets = [0] * len(pairs)
        self.stop = threading.Event()

    def pump(self) -> None:
        for i, (path, stream) in enumerate(self.pairs):
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[i])
                    data = f.read()
            except FileNotFoundError:
                continue
            if data:
                self.offsets[i] += len(data)
                stream.write(data)
                stream.flush()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.pump()

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.pump()


def current_manifest(key: str, pin: str | None) -> dict:
    version = pin
    if version is None and resolved_file(key).is_file():
        version = resolved_file(key).read_text().strip()
    m = staged(key, version) if version else None
    if m is None:
        log(f"{key}: not staged yet, preparing")
        m = prepare(key, pin)
    return m


def run(args) -> int:
    key = args.kernel
    manifest = current_manifest(key, pinned(key, args.version))
    stage = stage_dir(key, manifest["version"])
    params = parse_vdpa_sim(args.vdpa_sim, manifest)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("run: no command (… -- CMD ARGS)")
    cwd = os.path.realpath(args.cwd or os.getcwd())
    rw = [os.path.realpath(p) for p in args.rw]
    for p in rw:
        if not os.path.isdir(p) or p == "/" or re.search(r"\s", p):
            raise LabError(f"--rw {p}: not a usable directory")
    # the guest mounts a tmpfs on /tmp, /run and /var/tmp: the working directory,
    # this project (a CI clone may live there, with its venv) and the cache (files
    # the guest loads: modules, a QEMU) are shared instead
    for need in (cwd, os.path.realpath(HERE.parent.parent), os.path.realpath(cache_dir())):
        if re.match(r"/(tmp|run|var/tmp)(/|$)", need) and \
                not any(need == p or need.startswith(p + "/") for p in rw):
            log(f"{need} lies under a guest tmpfs (/tmp, /run, /var/tmp): shared with --rw")
            rw.append(need)

    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=runs))
    out = rundir / "out"
    out.mkdir()
    os.chmod(out, 0o777)

    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/tmp/home", "LANG": "C.UTF-8", "TERM": "dumb", "USER": "root", "LOGNAME": "root",
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({k: v for k, v in os.environ.items()
                if k.startswith("IOTLB_") and not k.startswith("IOTLB_KERNEL")})
    for e in args.env:
        k, sep, v = e.partition("=")
        env[k] = v if sep else os.environ.get(k, "")
    env.update({"IOTLB_LAB_KERNEL": manifest["release"], "IOTLB_LAB_KERNEL_VERSION": manifest["version"],
                "IOTLB_LAB_VDPA_SIM": " ".join(params)})
    job = ["# written by tests/kernel/lab.py; run by the guest's init, chrooted into the host root"]
    job += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if re.fullmatch(r"[A-Za-z_]\w*", k)]
    job += ['mkdir -p "$HOME"',
            f"cd {shlex.quote(cwd)} || {{ echo 'cannot cd to {shlex.quote(cwd)} in the guest' "
            f"> /run/iotlb-lab/lab-error; exit {EXIT_LAB}; }}",
            "exec " + shlex.join(cmd)]
    (out / "job.sh").write_text("\n".join(job) + "\n")

    conf = {
        "BOOT_MODULES": " ".join(manifest["boot_modules"]),
        "VDPA_MODULES": " ".join(manifest["vdpa_modules"]),
        "VDPA_SIM_PARAMS": " ".join(params),
        "VDPA_DEV": "" if args.no_device else "vdpa0",
        "RW_PATHS": " ".join(rw),
        "MSIZE": "262144",
        "ROOT_CACHE": os.environ.get("IOTLB_LAB_ROOT_CACHE", "loose"),
    }
    conf_text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items())
    initrd = rundir / "initramfs.cpio"
    initrd.write_bytes(make_initramfs(stage, manifest, conf_text))

    append = ["console=ttyS0", "panic=-1", "mitigations=off", "random.trust_cpu=on",
              "8250.nr_uarts=1", "no_timer_check"]
    if not args.console:
        append += ["quiet", "loglevel=3"]
    qemu = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-M", "pc",
            "-smp", str(args.smp), "-m", args.memory,
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(stage / "vmlinuz"), "-initrd", str(initrd), "-append", " ".join(append),
            "-chardev", f"file,id=con,path={rundir / 'console.log'}", "-serial", "chardev:con",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out},mount_tag=labout,security_model=none,multidevs=remap"]
    for i, p in enumerate(rw):
        qemu += ["-virtfs", f"local,path={p},mount_tag=rw{i},security_model=none,multidevs=remap"]

    log(f"booting linux {manifest['release']} ({manifest['version']}), vdpa_sim {' '.join(params) or '(defaults)'}")
    pairs = [(out / "stdout", sys.stdout.buffer), (out / "stderr", sys.stderr.buffer)]
    if args.console:
        pairs.append((rundir / "console.log", sys.stderr.buffer))
    follower = Follower(pairs)
    t0 = time.monotonic()
    proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    follower.start()
    timed_out = False
    try:
        qout, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        qout, _ = proc.communicate()
    finally:
        follower.finish()
    elapsed = time.monotonic() - t0

    def tail(path: Path, n=40) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(none)"

    status = out / "status"
    err = out / "lab-error"
    rc: int
    if timed_out:
        log(f"TIMEOUT after {args.timeout}s ({'the job was running' if (out / 'booted').exists() else 'during boot'})")
        rc = EXIT_TIMEOUT
    elif err.exists():
        log(f"FAILED: {err.read_text().strip()}")
        rc = EXIT_LAB
    elif status.exists():
        rc = int(status.read_text().strip() or EXIT_LAB)
    else:
        log(f"FAILED: the guest stopped without running the job (qemu exit {proc.returncode})")
        rc = EXIT_LAB
    if rc in (EXIT_TIMEOUT, EXIT_LAB) and not status.exists():
        if qout.strip():
            log("qemu said:\n" + qout.decode(errors="replace")[-2000:])
        log(f"console ({rundir / 'console.log'}):\n" + tail(rundir / "console.log"))
        if (out / "dmesg").exists():
            log("guest dmesg (tail):\n" + tail(out / "dmesg", 20))
    log(f"guest done in {elapsed:.1f}s, exit status {rc}")
    if args.keep_run or rc == EXIT_LAB or timed_out:
        log(f"run files kept in {rundir}")
    else:
        shutil.rmtree(rundir, ignore_errors=True)
    return rc


# --------------------------------------------------------------------- list / cli

def du(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def cmd_list(args) -> int:
    c = cache_dir()
    print(f"cache: {c}" + ("" if c.exists() else " (empty)"))
    for key, row in KERNELS.items():
        pin = pinned(key, None)
        rf = resolved_file(key)
        ver = pin or (rf.read_text().strip() if rf.is_file() else None)
        line = f"{key:5} {' '.join(row['suites']):45}"
        if ver is None:
            print(line + " not resolved yet (run prepare)")
            continue
        m = staged(key, ver)
        if m:
            print(line + f" {m['version']} {m['release']} staged ({du(stage_dir(key, ver)) / 1e6:.0f} MB), "
                  f"cc {m['cc']}, built: {' '.join(m['built'])}{' [pinned]' if pin else ''}")
        else:
            print(line + f" {ver} not staged{' [pinned]' if pin else ''}")
    for sub in ("apt", "stage", "work", "runs"):
        if (c / sub).exists():
            print(f"  {c / sub}: {du(c / sub) / 1e6:.0f} MB")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="download, build and stage kernels (cached)")
    p.add_argument("--kernel", default="all", help=f"{'|'.join(KERNELS)}|all (default: all), or a comma list")
    p.add_argument("--version", help="pin the Debian version (one kernel only), e.g. 6.12.117-1")
    p.add_argument("--keep-work", action="store_true", help="keep the unpacked root and packages")
    p.add_argument("--offline", action="store_true", help="no network: use what is staged")
    r = sub.add_parser("run", help="boot a kernel and run a command in the guest")
    r.add_argument("--kernel", required=True, choices=list(KERNELS))
    r.add_argument("--version", help="pinned Debian version of that kernel")
    r.add_argument("--vdpa-sim", default="", help="vdpa_sim parameters, e.g. 'batch_mapping=1 use_va=0'")
    r.add_argument("--no-device", action="store_true", help="load the modules but create no vdpa device")
    r.add_argument("--timeout", type=float, default=900, help="seconds for boot + command (default 900)")
    r.add_argument("--rw", action="append", default=[], metavar="DIR",
                   help="share host DIR writable at the same path (repeatable)")
    r.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set (or pass through) an environment variable in the guest")
    r.add_argument("--cwd", help="working directory in the guest (default: the current one)")
    r.add_argument("--memory", default="2G")
    r.add_argument("--smp", type=int, default=1,
                   help="guest CPUs (default 1: on a 2-core host a second TCG vCPU competes with "
                        "QEMU's 9p server and boots and runs slower)")
    r.add_argument("--console", action="store_true", help="show the guest's console on stderr")
    r.add_argument("--keep-run", action="store_true", help="keep the run directory")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("list", help="show the kernels, their versions and the cache")
    args = ap.parse_args(argv)
    try:
        if args.what == "prepare":
            keys = list(KERNELS) if args.kernel == "all" else args.kernel.split(",")
            for k in keys:
                if k not in KERNELS:
                    raise LabError(f"unknown kernel {k!r} (known: {', '.join(KERNELS)})")
            if args.version and len(keys) != 1:
                raise LabError("--version needs a single --kernel")
            for k in keys:
                prepare(k, pinned(k, args.version), args.keep_work, args.offline)
            return 0
        if args.what == "run":
            return run(args)
        return cmd_list(args)
    except LabError as e:
        log(f"error: {e}")
        return EXIT_LAB


if __name__ == "__main__":
    sys.exit(main())
