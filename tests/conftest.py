"""Shared fixtures: every engine test runs against both engines.

The Cython engine is always tested when it is importable; it is skipped only when the
whole run uses the pure twin (``IOTLB_PUREPYTHON=1``) and the extension is not built.
"""
from __future__ import annotations

import os

import pytest

from iotlb import _pyengine

try:
    from iotlb import _engine
except ImportError:  # pragma: no cover - depends on the build
    _engine = None
    if os.environ.get("IOTLB_PUREPYTHON") != "1":
        raise

ENGINES = {"python": _pyengine.IOTLB}
if _engine is not None:
    ENGINES["cython"] = _engine.IOTLB


@pytest.fixture(params=sorted(ENGINES), ids=lambda name: name)
def IOTLB(request):
    """The engine class under test (each test runs once per engine)."""
    return ENGINES[request.param]


@pytest.fixture
def all_engines():
    """``{name: engine class}`` for tests that compare the engines directly."""
    return dict(ENGINES)
