"""Replay every committed fuzz corpus file through its fuzz target (no atheris needed).

The targets (``tests/fuzz/fuzz_*.py``) assert the contract themselves; a corpus file
that makes one raise is a regression.  Fast: the committed corpora are small.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
TARGETS = ("wire", "write", "engine")


def _target(name):
    if FUZZ not in sys.path:
        sys.path.insert(0, FUZZ)
    return importlib.import_module(f"fuzz_{name}")


def _files(name):
    d = os.path.join(FUZZ, "corpus", name)
    return sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []


@pytest.mark.parametrize("name", TARGETS)
def test_corpus_replays_clean(name):
    files = _files(name)
    assert files, f"no committed corpus for {name}"
    target = _target(name)
    for path in files:
        with open(path, "rb") as fp:
            data = fp.read()
        try:
            target.TestOneInput(data)
        except Exception as e:  # noqa: BLE001 - name the file that regressed
            raise AssertionError(f"{os.path.relpath(path, FUZZ)}: {type(e).__name__}: "
                                 f"{e}") from e


@pytest.mark.parametrize("name", TARGETS)
def test_target_survives_trivial_inputs(name):
    target = _target(name)
    for data in (b"", b"\x00", b"\xff" * 8, bytes(range(256))):
        target.TestOneInput(data)


def test_engine_target_compares_two_engines():
    """Unless only the twin is available, fuzz_engine drives the compiled engine."""
    eng = _target("engine")
    try:
        from iotlb import _engine  # noqa: F401
    except ImportError:
        pytest.skip("compiled engine not built")
    assert eng.CEngine is not eng.PEngine or os.environ.get("FUZZ_ENGINE_SELF") == "1"
