"""Issue 16, types: a user's script using the public API passes ``mypy --strict``
after the README's editable install (``pip install -e .``), numpy integers included.

Was: mypy could not find ``iotlb`` at all after the editable install (setuptools
installs an import hook, which mypy cannot follow), ``iotlb.IOTLB`` was typed as the
pure twin (``int`` only: numpy ints rejected though accepted at run time), and
``load_backend`` / ``available_backends`` were ``Any``.  Runs only where mypy is
installed (it is in the ``test`` extra)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

mypy = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install "
                           "-e '.[test]' brings it)")

SCRIPT = textwrap.dedent('''
    from __future__ import annotations

    import numpy as np

    import iotlb
    from iotlb import IOTLB, IOTLBError, Perm, wire
    from iotlb.backend import Backend, available_backends, load_backend
    from iotlb.testing import BackendConformance, CheckFailure, run_conformance
    from iotlb.vdpa import VhostVdpa


    class Flat(Backend):
        def __init__(self) -> None:
            super().__init__()
            self._tlb = IOTLB()

        def set_map(self, asid: int, tlb: IOTLB) -> None:
            self._tlb.unmap()
            for m in tlb:
                self._tlb.map(m.start, m.last, m.addr, m.perm)

        def reset(self) -> None:
            self.set_status(0)

        def device_iotlb(self, asid: int) -> IOTLB:
            self._check_asid(asid)
            return self._tlb.copy()


    class TestFlat(BackendConformance):
        def make_backend(self) -> Backend:
            return Flat()


    def main() -> int:
        t = IOTLB()
        t.map(np.uint64(0x1000), np.int64(0x1FFF), 0x40000, Perm.RW)
        segs: list[tuple[int, int]] = t.translate(np.uint64(0x1004), 8)
        names: list[str] = sorted(available_backends())
        b: Backend = load_backend("mlx5", umem_uid_0=False)
        also: Backend = iotlb.load_backend("vdpa_sim")
        dev = VhostVdpa(b, kernel=iotlb.KERNELS[-1])
        dev.open()
        dev.set_owner()
        n: int = dev.write(wire.encode(wire.VHOST_IOTLB_UPDATE, 0, 0x200000,
                                       0x7F0000000000, 3))
        try:
            dev.update(0, 0x1000, 0x7F0000000000)
        except IOTLBError as exc:
            print(exc.errno)
        pinned: int = dev.pinned_pages
        dev.release()
        print(segs, names, n, pinned, also.nas, iotlb.IMPLEMENTATION,
              CheckFailure("errno", "boot", 1, "x", "success", "EIO").short())
        return 0
''')

BACKEND_PROPERTY = textwrap.dedent('''
    from iotlb.backend import Backend
    from iotlb.vdpa import VhostVdpa


    def backend_of(dev: VhostVdpa) -> Backend:
        return dev.backend
''')


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One mypy cache for the module's runs (the package is analysed once)."""
    return tmp_path_factory.mktemp("mypy_cache")


def _mypy(tmp_path: Path, source: str, cache: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "user_script.py"
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    # run from the script's own directory, far from the checkout: mypy must find
    # iotlb the way it finds any installed package
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache),
         "--python-executable", sys.executable, script.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_user_script_passes_mypy_strict(tmp_path, cache_dir):
    proc = _mypy(tmp_path, SCRIPT, cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_rejects_a_wrong_type(tmp_path, cache_dir):
    """The check can fail: the package's types are really used."""
    proc = _mypy(tmp_path, SCRIPT + "\nx: str = IOTLB().translate(0, 1)\n", cache_dir)
    assert proc.returncode == 1 and "Incompatible types in assignment" in proc.stdout


def test_vhost_vdpa_backend_is_typed(tmp_path, cache_dir):
    proc = _mypy(tmp_path, BACKEND_PROPERTY, cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_in_the_test_extra():
    text = (ROOT / "pyproject.toml").read_text()
    test_extra = text.split("test = [", 1)[1].split("]", 1)[0]
    assert '"mypy' in test_extra
