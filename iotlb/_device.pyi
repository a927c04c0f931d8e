"""Type stubs for the compiled device core ``iotlb._device`` (same API as
``iotlb._pydevice``)."""
from __future__ import annotations

from typing import Callable, Optional, SupportsIndex

from ._engine import IOTLB

__all__ = ["PinLedger", "DirtyRecord", "MemoryCore", "IommuCore", "DeviceCore"]

_Run = tuple[int, int, bool]

class PinLedger:
    """One owner's pinned runs: ``(pfn, npages, writable) -> count``."""

    def __init__(self) -> None: ...
    @property
    def pages(self) -> int: ...
    def pin(self, pfn: SupportsIndex, npages: SupportsIndex, writable: bool) -> None: ...
    def unpin(self, pfn: SupportsIndex, npages: SupportsIndex, writable: bool) -> bool: ...
    def count(self, pfn: SupportsIndex, npages: SupportsIndex, writable: bool) -> int: ...
    def items(self) -> list[tuple[_Run, int]]: ...
    def __len__(self) -> int: ...
    def _check(self) -> None: ...

class DirtyRecord:
    """The runs dirtied on unpin, counted: ``(pfn, npages) -> times``."""

    def __init__(self) -> None: ...
    def add(self, pfn: SupportsIndex, npages: SupportsIndex) -> None: ...
    def count(self, pfn: SupportsIndex, npages: SupportsIndex) -> int: ...
    def items(self) -> list[tuple[tuple[int, int], int]]: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def _check(self) -> None: ...

class MemoryCore:
    """The base of ``iotlb.usermem.UserMemory``."""

    _pins: dict[object, PinLedger]
    pinned_vm: int
    dirtied_pages: int
    record_dirty: bool
    _dirty: Optional[DirtyRecord]
    _memlock: Optional[int]
    _simple_pa: bool
    _simple_va: bool
    _files: dict[object, dict[object, int]]
    def _file_get(self, owner: object, file: object) -> None: ...
    def _file_put(self, owner: object, file: object) -> None: ...

class IommuCore:
    """The base of the platform-IOMMU parents: the IOMMU core's ops on ``_domain``."""

    _domain: Optional[IOTLB]
    page_size: int
    map_prot_check: Optional[Callable[[int, int], None]]
    def _check_range(self, op: str, iova: int, size: int, pa: int = ...) -> int: ...
    def iommu_map(self, iova: int, size: int, pa: int, perm: int) -> None: ...
    def iommu_unmap(self, iova: int, size: int) -> int: ...

class DeviceCore:
    """The base of ``iotlb.vdpa.VhostVdpa``."""

    _opened: bool
    _owner: bool
    _in_batch: bool
    _fast: bool
    _features: int
    _batch_asid: int
    _shift: int
    _offmask: int
    _pinned: int
    _as: dict
    _backend: object
    _mem: MemoryCore
    _range: tuple[int, int]
    def write(self, data: bytes) -> int: ...
