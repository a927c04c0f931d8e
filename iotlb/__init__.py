"""iotlb: an exact, fast model of the Linux vhost/vDPA IOTLB.

The engine :class:`IOTLB` is ``struct vhost_iotlb`` (``drivers/vhost/iotlb.c``): a Cython
interval tree by default, or its pure-Python twin when ``IOTLB_PUREPYTHON=1`` is set.
A failed import of the extension is an error, never a silent fallback.

>>> import iotlb
>>> t = iotlb.IOTLB()
>>> t.map(0x1000, 0x1fff, 0x40000, iotlb.Perm.RW)
>>> t.translate(0x1004, 8)
[(262148, 8)]
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._map import U64_MAX, IOTLBBase, Map, Perm
from .errors import IOTLBError
from .kernels import KERNELS, kernel_profile_for_release

if TYPE_CHECKING:
    # Type checkers see the compiled engine's API (iotlb/_engine.pyi): the pure twin
    # has the same one, and both accept anything with __index__ (numpy ints too).
    from ._engine import IOTLB
    from .backend import available_backends, load_backend

    IMPLEMENTATION: str
elif os.environ.get("IOTLB_PUREPYTHON") == "1":
    from ._pyengine import IOTLB

    IMPLEMENTATION = "python"
else:
    try:
        from ._engine import IOTLB
    except ImportError as exc:  # never fall back silently
        raise ImportError(
            "iotlb: the compiled engine iotlb._engine is not importable "
            f"({exc}); reinstall with `pip install -e .` to build it, or set "
            "IOTLB_PUREPYTHON=1 to use the pure-Python twin") from exc
    IMPLEMENTATION = "cython"

__version__ = "0.1.0"

__all__ = ["IOTLB", "IOTLBError", "Map", "Perm", "U64_MAX", "IMPLEMENTATION",
           "IOTLBBase", "load_backend", "available_backends", "KERNELS",
           "kernel_profile_for_release"]


def __getattr__(name: str) -> object:
    # The registry lives in iotlb.backend; importing it lazily keeps `import iotlb`
    # free of entry-point discovery.
    if name in ("load_backend", "available_backends"):
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module 'iotlb' has no attribute {name!r}")
