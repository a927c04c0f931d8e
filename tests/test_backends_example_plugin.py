"""The third-party plugin path, for real: the example distribution under
examples/iotlb-example-backend is installed into a temporary directory and a fresh
interpreter discovers it through its ``iotlb.backends`` entry point, loads it, and
runs the conformance kit (its own tests/ with pytest).  Also: docs/plugins.md shows
exactly the example's code.

Offline and fast (a few seconds): ``pip install --no-deps --no-build-isolation
--no-index --target``.  setuptools < 70.1 needs the ``wheel`` package to build a
wheel; where neither is available the metadata is built with setuptools'
``egg_info`` from the same pyproject.toml and the package copied beside it, which is
what an installation leaves on sys.path for ``importlib.metadata`` to find.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "iotlb-example-backend"
DOC = ROOT / "docs" / "plugins.md"

pytestmark = pytest.mark.skipif(not EXAMPLE.is_dir(), reason="examples/ not in this tree")


def _can_build_wheels() -> bool:
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        import setuptools
    except ImportError:  # pragma: no cover
        return False
    major, minor = (int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    return (major, minor) >= (70, 1)


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(target dir, source copy)``: the example installed into ``target``."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = tmp / "site"
    target.mkdir()
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    if _can_build_wheels():
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
              "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
             env=env)
    else:
        _run([sys.executable, "-c", "from setuptools import setup; setup()",
              "egg_info", "--egg-base", str(target)], cwd=src, env=env)
        shutil.copytree(src / "iotlb_example_backend", target / "iotlb_example_backend")
    assert (target / "iotlb_example_backend" / "__init__.py").is_file()
    return target, src


def _env(target: Path) -> dict:
    path = [str(target)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def test_installed_plugin_is_discovered_in_a_fresh_interpreter(installed):
    target, _ = installed
    script = textwrap.dedent("""\
        import doctest, json, iotlb
        from iotlb import backend
        import iotlb_example_backend
        table = iotlb.available_backends()
        cls = table["example_dma"]
        dev = iotlb.load_backend("example_dma", nas=2)
        dev.dma_map(1, 0x1000, 0x1000, 0x80000, iotlb.Perm.RW, None)
        print(json.dumps({
            "names": sorted(table),
            "module": cls.__module__,
            "file": __import__(cls.__module__).__file__,
            "is_backend": issubclass(cls, backend.Backend),
            "type": type(dev).__name__,
            "nas": dev.nas,
            "translate": dev.device_iotlb(1).translate(0x1010, 4),
            "style": backend.mapping_style(dev),
            "persist": backend.has_persistent_map(dev),
            "broken": sorted(backend.broken_backends()),
            "doctests": doctest.testmod(iotlb_example_backend).failed,
        }))
        """)
    out = json.loads(_run([sys.executable, "-c", script], env=_env(target)).stdout)
    assert {"example_dma", "mlx5", "platform_iommu", "vdpa_sim"} <= set(out["names"])
    assert out["module"] == "iotlb_example_backend"
    assert Path(out["file"]).resolve().is_relative_to(target.resolve())
    assert out["is_backend"] and out["type"] == "ExampleDma" and out["nas"] == 2
    assert out["translate"] == [[0x80010, 4]]
    assert out["style"] == "dma_map" and out["persist"] is True
    assert out["broken"] == [] and out["doctests"] == 0


def test_not_discovered_without_it():
    script = "import iotlb; print('example_dma' in iotlb.available_backends())"
    env = dict(os.environ)
    assert _run([sys.executable, "-c", script], env=env).stdout.strip() == "False"


def test_example_conformance_suite_passes(installed):
    """The example's own tests/ (the iotlb.testing kit) pass against the install."""
    target, src = installed
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "--rootdir", str(src), str(src / "tests")], env=_env(target),
                cwd=target.parent)
    assert re.search(r"\b\d+ passed\b", proc.stdout), proc.stdout
    assert "failed" not in proc.stdout.splitlines()[-1]


# --------------------------------------------------------------------------- doc == example
def _doc_blocks(lang: str) -> list:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _code_without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def test_doc_shows_the_example_module():
    module = (EXAMPLE / "iotlb_example_backend" / "__init__.py").read_text()
    blocks = [b for b in _doc_blocks("python") if "class ExampleDma(Backend)" in b]
    assert len(blocks) == 1
    assert _code_without_docstrings(blocks[0]) == _code_without_docstrings(module)


def test_doc_shows_the_example_tests():
    tests = (EXAMPLE / "tests" / "test_conformance.py").read_text()
    blocks = [b for b in _doc_blocks("python") if "class TestExampleDma(" in b]
    assert len(blocks) == 1
    assert _code_without_docstrings(blocks[0]) == _code_without_docstrings(tests)


def test_doc_shows_the_example_pyproject():
    blocks = [b for b in _doc_blocks("toml") if "[project]" in b]
    assert len(blocks) == 1
    assert blocks[0].strip() == (EXAMPLE / "pyproject.toml").read_text().strip()
