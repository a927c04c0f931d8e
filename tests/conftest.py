"""Shared fixtures: every engine (and pin ledger) test runs against both implementations.

The Cython engine is always tested when it is importable; it is skipped only when the
whole run uses the pure twin (``IOTLB_PUREPYTHON=1``) and the extension is not built.
"""
from __future__ import annotations

import os

import pytest

from iotlb import _pydevice, _pyengine

try:
    from iotlb import _device, _engine
except ImportError:  # pragma: no cover - depends on the build
    _device = _engine = None
    if os.environ.get("IOTLB_PUREPYTHON") != "1":
        raise

ENGINES = {"python": _pyengine.IOTLB}
LEDGERS = {"python": _pydevice.PinLedger}
RECORDS = {"python": _pydevice.DirtyRecord}
if _engine is not None:
    ENGINES["cython"] = _engine.IOTLB
    LEDGERS["cython"] = _device.PinLedger
    RECORDS["cython"] = _device.DirtyRecord


@pytest.fixture(params=sorted(ENGINES), ids=lambda name: name)
def IOTLB(request):
    """The engine class under test (each test runs once per engine)."""
    return ENGINES[request.param]


@pytest.fixture
def all_engines():
    """``{name: engine class}`` for tests that compare the engines directly."""
    return dict(ENGINES)


@pytest.fixture(params=sorted(LEDGERS), ids=lambda name: name)
def PinLedger(request):
    """The pin ledger class under test (compiled device core, then its twin)."""
    return LEDGERS[request.param]


@pytest.fixture(params=sorted(RECORDS), ids=lambda name: name)
def DirtyRecord(request):
    """The dirty record class under test (compiled device core, then its twin)."""
    return RECORDS[request.param]


@pytest.fixture(scope="session")
def all_ledgers():
    """``{name: PinLedger class}`` for tests that compare the implementations."""
    return dict(LEDGERS)
