"""Issue 16, plugins: two installed plugins that claim the same backend name are
reported (was: silent, and the winner depended on the current directory); a plugin
declares its own matrix variants (was: a hard-coded dict of the built-ins)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from iotlb.backend import Backend, matrix_variants, register, unregister

PLUGIN = textwrap.dedent('''
    from iotlb_backends.vdpa_sim import VdpaSimSetMap

    class One(VdpaSimSetMap):
        pass

    class Two(VdpaSimSetMap):
        pass
''')


def _dist(root, dist, entry):
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[iotlb.backends]\n{entry}\n")


@pytest.fixture(scope="module")
def two_plugins(tmp_path_factory):
    a = tmp_path_factory.mktemp("site_a")
    b = tmp_path_factory.mktemp("site_b")
    (a / "iotlb_dup_plugins.py").write_text(PLUGIN)
    _dist(a, "iotlb_dup_one", "samename = iotlb_dup_plugins:One")
    _dist(b, "iotlb_dup_two", "samename = iotlb_dup_plugins:Two")
    path = os.pathsep.join(filter(None, [str(a), str(b), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def _cli(*args, env):
    full = {k: v for k, v in os.environ.items() if k != "IOTLB_DEBUG"}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "iotlb", *args], capture_output=True,
                          text=True, timeout=120, env=full)


def test_duplicate_plugin_names_are_reported(two_plugins):
    proc = _cli("backends", env=two_plugins)
    assert proc.returncode == 0
    out = proc.stdout
    assert "DUPLICATE: 'samename' is declared by 2 installed entry points" in out
    assert "iotlb_dup_plugins:One (iotlb_dup_one 0.1" in out
    assert "iotlb_dup_plugins:Two (iotlb_dup_two 0.1" in out
    doc = json.loads(_cli("backends", "--json", env=two_plugins).stdout)
    assert len(doc["duplicates"]["samename"]) == 2
    proc = _cli("matrix", "--guest-size", "8M", "--backend", "samename", "--scenario",
                "boot", env=two_plugins)
    assert proc.returncode == 0
    assert "warning: backend 'samename' is declared by 2 installed entry points" in \
        proc.stderr
    assert "using the first on sys.path (iotlb_dup_plugins:One" in proc.stderr


def test_no_duplicates_no_report():
    proc = _cli("backends", env={})
    assert "DUPLICATE" not in proc.stdout


class _Declares(Backend):
    matrix_variants = [("declares (a)", {}), ("declares (b)", {"nas": 2})]

    def reset(self):
        pass

    def device_iotlb(self, asid):
        import iotlb

        return iotlb.IOTLB()


class _Bad(_Declares):
    matrix_variants = [("bad", "not a dict")]


def test_matrix_variants_come_from_the_class():
    register("t16_declares", _Declares)
    register("t16_bad", _Bad)
    try:
        assert matrix_variants("t16_declares") == [("declares (a)", {}),
                                                   ("declares (b)", {"nas": 2})]
        with pytest.raises(TypeError, match="_Bad.matrix_variants must be"):
            matrix_variants("t16_bad")
        # built-ins without a declaration keep their table; others one row
        assert [label for label, _ in matrix_variants("mlx5")] == [
            "mlx5 (umem_uid_0)", "mlx5 (no umem_uid_0)"]
        assert matrix_variants("platform_iommu") == [("platform_iommu", {})]
    finally:
        unregister("t16_declares")
        unregister("t16_bad")
