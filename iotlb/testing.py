"""A conformance kit for backend plugin authors.

Subclass :class:`BackendConformance` in your own test file under a name pytest
collects (``Test...``) and implement :meth:`~BackendConformance.make_backend`; every
``test_*`` method then runs against your backend, through the real device model
:class:`iotlb.vdpa.VhostVdpa`::

    from iotlb.testing import BackendConformance
    from my_plugin import MyParent

    class TestMyParent(BackendConformance):
        def make_backend(self):
            return MyParent()

The checks are the invariants that hold for *every* parent driver (kernel-semantics
§3-§5): the contract's shape (required ops present, optional ops absent or
callable, one mapping style, sane sizes), offered backend features consistent with
the ops present, the device translating what vhost mapped, a device reset (with or
without IOTLB_PERSIST) never touching the vhost IOTLB or the pins, release leaving no
pins and no vhost address space, reopen working, ``device_iotlb`` returning a snapshot
IOTLB for every ``asid < nas``, ``set_map`` copying rather than keeping its argument.
Parent-specific behaviour (what survives a reset, identity defaults...) is yours to
test on top.

**The kit and** ``iotlb matrix`` **share one set of checks.**  Besides the contract
checks above, the kit runs every scenario of :mod:`iotlb.scenarios` on your backend
(``test_scenario_<name>``, PERSIST not acked and, when offered, acked) and judges it
with :func:`scenario_failures` -- the function ``iotlb matrix`` uses for its
``checks`` column and its ``"failures"`` JSON; the matrix in turn runs the contract
checks (:func:`contract_failures`) on every backend variant it shows.  A plugin
therefore passes the kit if and only if its matrix rows say ``ok``.  Every failure is
a :class:`CheckFailure`: which check, which scenario step, expected versus found.

Without pytest, :func:`run_conformance` runs the same checks and returns a report:

>>> from iotlb_backends.vdpa_sim import VdpaSim
>>> report = run_conformance(VdpaSim)
>>> sorted(set(report.values()))
['passed']
"""
from __future__ import annotations

import errno as _errno
import unittest
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

import iotlb
from iotlb import U64_MAX, IOTLBBase, Perm
from iotlb.backend import (
    BACKEND_F_DESC_ASID, BACKEND_F_IOTLB_ASID, BACKEND_F_IOTLB_BATCH, BACKEND_F_IOTLB_MSG_V2,
    BACKEND_F_IOTLB_PERSIST, BACKEND_F_RESUME, BACKEND_F_SUSPEND, NULLABLE_OPS, OPTIONAL_OPS,
    REQUIRED_OPS,
    Backend, has_persistent_map, mapping_style, validate_backend)

if TYPE_CHECKING:  # pragma: no cover
    from iotlb.scenarios import BackendSpec, GuestLayout, ScenarioResult
    from iotlb.vdpa import VhostVdpa

__all__ = ["BackendConformance", "run_conformance", "vhost_snapshot", "CheckFailure",
           "scenario_failures", "contract_failures", "run_scenario_checked",
           "KIT_GUEST_SIZE"]

#: Guest RAM of the scenarios the kit runs (the matrix uses its ``--guest-size``).
KIT_GUEST_SIZE = 16 << 20

_BASE_FEATURES = BACKEND_F_IOTLB_MSG_V2 | BACKEND_F_IOTLB_BATCH | BACKEND_F_IOTLB_ASID


def _skip(reason: str) -> None:
    """Skip the running check (pytest when it is running, unittest otherwise)."""
    try:
        import pytest
    except ImportError:  # pragma: no cover - the kit is normally run by pytest
        raise unittest.SkipTest(reason) from None
    pytest.skip(reason)


def vhost_snapshot(dev) -> Tuple[Dict[int, Optional[list]], int]:
    """``({asid: entries or None}, pinned_pages)`` of a ``VhostVdpa``: layer (1) of
    kernel-semantics §4.1, the part a device reset must never change.

    >>> from iotlb.vdpa import VhostVdpa
    >>> from iotlb_backends.platform_iommu import PlatformIommu
    >>> dev = VhostVdpa(PlatformIommu()); dev.open(); dev.set_owner()
    >>> dev.update(0x1000, 0x1000, 0x7000)
    >>> vhost_snapshot(dev)
    ({0: [(4096, 8191, 28672, 3)]}, 1)
    >>> dev.release()
    """
    spaces = {}
    for asid in range(dev.backend.nas):
        tlb = dev.vhost_iotlb(asid)
        spaces[asid] = None if tlb is None else [tuple(m)[:4] for m in tlb]
    return spaces, dev.pinned_pages


# =========================================================================== shared checks
def _errname(code: Optional[int]) -> str:
    if code is None:
        return "success"
    return _errno.errorcode.get(code, str(code))


@dataclass(frozen=True)
class CheckFailure:
    """One failed check, the same object for the kit and ``iotlb matrix``.

    ``check``: ``"errno"`` (a step failed, or failed with another errno than the
    scenario expects), ``"translation"`` (at a must-hold check point the device does
    not translate what userspace mapped, or still translates what it unmapped),
    ``"invariants"`` (the device model's invariant check), ``"crash"`` (the backend
    raised something that is not a kernel error) or ``"contract"`` (a kit check);
    ``scenario``: the scenario (or kit check) name; ``step``: the index of the step
    in the scenario's trace (None when not tied to one); ``where``: what that step or
    check point is; ``expected`` / ``found``: what should have happened and what did.

    >>> f = CheckFailure("errno", "boot", 6, "UPDATE ram-low", "success", "EINVAL")
    >>> f.short()
    'boot: step 6 UPDATE ram-low: EINVAL (expected success)'
    """

    check: str
    scenario: str
    step: Optional[int]
    where: str
    expected: str
    found: str
    #: a shorter ``where: found`` for a table footnote ("" = built from the fields)
    brief: str = ""

    def short(self, limit: int = 0) -> str:
        """One line for a table footnote; ``limit`` > 0 truncates it."""
        if self.brief:
            text = f"{self.scenario}: {self.brief}"
        else:
            at = f"step {self.step} " if self.step is not None else ""
            text = f"{self.scenario}: {at}{self.where}: {self.found} (expected {self.expected})"
        if limit and len(text) > limit:
            text = text[:limit - 3].rstrip() + "..."
        return text

    def __str__(self) -> str:
        at = f"step {self.step}, " if self.step is not None else ""
        return (f"[{self.check}] {self.scenario}: {at}{self.where}: expected "
                f"{self.expected}; found {self.found}")

    def as_dict(self) -> Dict[str, Any]:
        return {"check": self.check, "scenario": self.scenario, "step": self.step,
                "where": self.where, "expected": self.expected, "found": self.found,
                "brief": self.short()}


def scenario_failures(result: "ScenarioResult") -> List[CheckFailure]:
    """Every check a scenario run failed, with the reason: the one verdict of both
    ``iotlb matrix`` (its ``checks`` column and JSON ``failures``) and the kit's
    ``test_scenario_<name>``.  Empty = passed; a scenario that does not apply
    (``status == "n/a"``) passes.

    The checks: (1) no exception other than a kernel error (:class:`iotlb.IOTLBError`)
    escaped the backend; (2) every step succeeded, or failed with the errno the
    scenario expects (``Step.expected``; EFAULT's cause counts); (3) at every
    must-hold check point every address space translates every range userspace
    mapped to the right address and no range it unmapped (``stale``), and the mlx5
    CVQ iotlb translates what its group's address space maps; (4) the device model's
    invariants hold at the end and at every check point.

    >>> from iotlb.scenarios import GuestLayout, run_scenario
    >>> r = run_scenario("boot", "vdpa_sim", guest=GuestLayout(16 << 20))
    >>> scenario_failures(r)
    []
    >>> r = run_scenario("boot", "mlx5", guest=GuestLayout(16 << 20), memlock_pages=8)
    >>> f = scenario_failures(r)[0]              # RLIMIT_MEMLOCK of 8 pages: ENOMEM
    >>> f.check, f.scenario, f.expected, f.found.split(" ")[0]
    ('errno', 'boot', 'success', 'ENOMEM')
    """
    from iotlb import trace as _trace

    name = result.scenario
    out: List[CheckFailure] = []
    if result.status == "n/a":
        return out
    if result.status == "error":
        last = result.steps[-1] if result.steps else None
        where = ("before the first step" if last is None else
                 f"during or after {last.label or _trace.describe(last.op)}")
        out.append(CheckFailure("crash", name, None if last is None else last.index,
                                where, "only kernel errors (IOTLBError) from the backend",
                                result.reason, f"crashed {where}: {result.reason}"))
    # exceptions a plugin raised where the kernel ignores the op's result (set_map at
    # BATCH_END, dma_unmap, reset_map...): the model goes on as the kernel does, and
    # records them as ``plugin_errors`` once it catches every exception of a parent op
    for err in getattr(result, "plugin_errors", None) or ():
        out.append(CheckFailure("crash", name, None, "a parent op whose result the "
                                "kernel ignores", "only kernel errors (IOTLBError) from "
                                "the backend", str(err), f"plugin raised: {err}"))
    for st in result.steps:
        if st.ok or st.expected in (st.cause, st.errno):
            continue
        found = _errname(st.errno)
        code = found
        if st.cause is not None and st.cause != st.errno:
            code = _errname(st.cause)
            found = f"{code} (write() returned {found})"
        if st.message:
            found += f": {st.message}"
        what = _trace.describe(st.op)
        where = f"{st.label} ({what})" if st.label and st.label != what else what
        out.append(CheckFailure("errno", name, st.index, where, _errname(st.expected),
                                found, f"step {st.index} {st.label or what}: {code} "
                                f"(expected {_errname(st.expected)})"))
    findings = getattr(result, "kernel_findings", None) or {}
    for cp in result.checkpoints:
        if not cp.must or cp.translates:
            continue
        for asid, view in sorted(cp.asids.items()):
            if view.translates and not view.stale:
                continue
            if view.translates and cp.label in findings:
                continue      # stale ranges the kernel itself leaves (declared finding)
            parts = [f"device holds {view.device} ({view.device_entries} entries)"]
            if view.bad:
                parts.append("not translated: " + "; ".join(view.bad)
                             + (" ..." if view.mapped and len(view.bad) >= 3 else ""))
            if view.stale:
                parts.append(f"{view.stale} unmapped range(s) still translated to "
                             "their old address")
            brief = [f"device holds {view.device}"]
            if not view.translates:
                brief.append(f"{view.mapped} mapped range(s) not all translated")
            if view.stale:
                brief.append(f"{view.stale} unmapped range(s) still translated")
            out.append(CheckFailure(
                "translation", name, cp.step, f"check point {cp.label!r}, ASID {asid}",
                f"the device translates the {view.mapped} mapped range(s) and no "
                "unmapped one", ", ".join(parts),
                f"at {cp.label!r} ASID {asid}: {', '.join(brief)}"))
        if not cp.cvq_ok:
            out.append(CheckFailure("translation", name, cp.step,
                                    f"check point {cp.label!r}, CVQ iotlb",
                                    "the CVQ iotlb translates its address space's maps",
                                    f"CVQ iotlb holds {cp.cvq}"))
    seen = set()
    for cp in result.checkpoints:
        if cp.invariants and cp.invariants not in seen:
            seen.add(cp.invariants)
            out.append(CheckFailure("invariants", name, cp.step,
                                    f"check point {cp.label!r}",
                                    "the device model's invariants hold", cp.invariants,
                                    f"at {cp.label!r}: invariant violated: {cp.invariants}"))
    if result.invariants and result.invariants not in seen:
        out.append(CheckFailure("invariants", name, None, "end of the scenario",
                                "the device model's invariants hold", result.invariants,
                                f"at the end: invariant violated: {result.invariants}"))
    return out


def run_scenario_checked(name: str, backend: Any, *, persist: bool = False,
                         guest: Optional["GuestLayout"] = None, kernel: Optional[str] = None,
                         page_size: int = 4096, memlock_pages: Optional[int] = None,
                         ) -> Tuple["ScenarioResult", List[CheckFailure]]:
    """:func:`iotlb.scenarios.run_scenario` on ``backend`` (a :class:`BackendSpec`, a
    factory or a registry name) under kernel profile ``kernel`` (None: the default),
    and its :func:`scenario_failures`.

    >>> r, failures = run_scenario_checked("stop_start", "mlx5", kernel="6.12")
    >>> r.checkpoint("after SET_STATUS(0)").asids[0].device, failures
    ('identity (DMA MR)', [])
    """
    from iotlb.scenarios import GuestLayout, run_scenario

    guest = guest or GuestLayout(KIT_GUEST_SIZE, page_size=page_size)
    kwargs: Dict[str, Any] = {"persist": persist, "guest": guest, "page_size": page_size,
                              "memlock_pages": memlock_pages}
    result = run_scenario(name, backend, kernel=kernel, **kwargs)
    _outside_iova_range(result, backend)
    return result, scenario_failures(result)


def _outside_iova_range(result: "ScenarioResult", backend: Any) -> None:
    """A scenario that sent an UPDATE outside the device's GET_IOVA_RANGE is not what
    QEMU sends (``vhost_vdpa_listener_skipped_section`` and the IOMMU notifier skip
    such ranges): its verdict would judge the scenario library, not the backend, so
    it becomes ``n/a`` with the reason.  The kit and the matrix share this rule."""
    if result.status != "ok":
        return
    from iotlb.scenarios import BackendSpec

    try:
        if isinstance(backend, str):
            backend = BackendSpec(backend)
        be = backend.create() if isinstance(backend, BackendSpec) else \
            backend() if callable(backend) and not hasattr(backend, "device_iotlb") \
            else backend
        first, last = be.get_iova_range()
    except Exception:  # the scenario's own checks report a broken backend
        return
    for st in result.steps:
        op = st.op
        if op.get("op") == "update" and (op["iova"] < first or
                                         op["iova"] + op["size"] - 1 > last):
            result.status = "n/a"
            result.reason = (f"it sends UPDATEs outside the IOVA range [{first:#x}, "
                             f"{last:#x}] (first: step {st.index}), which QEMU never sends "
                             "(it skips such sections); the scenario library does not "
                             "filter by GET_IOVA_RANGE")
            return


def contract_failures(make_backend: Callable[[], "Backend"], *,
                      kernel: Optional[str] = None) -> List[CheckFailure]:
    """The kit's contract checks (every ``test_*`` of :class:`BackendConformance`
    except the ``test_scenario_*`` ones) on ``make_backend``, as
    :class:`CheckFailure` objects (``check == "contract"``); ``iotlb matrix`` runs
    these on every backend variant.

    >>> from iotlb_backends.mlx5 import Mlx5
    >>> contract_failures(Mlx5)
    []
    """
    results = _run_checks(make_backend, kernel=kernel, scenarios=False)
    return [CheckFailure("contract", name, None, "iotlb.testing.BackendConformance",
                         "the check passes", why[len("FAILED: "):],
                         f"kit check failed: {why[len('FAILED: '):]}")
            for name, why in results.items() if why.startswith("FAILED")]


class BackendConformance:
    """Base class of the conformance checks; not collected itself (no ``Test``
    prefix).  Override :meth:`make_backend`; optionally ``page_size`` and
    ``memlock_pages`` (passed to ``VhostVdpa``) and ``persist_variants``.

    Every check is a plain method ``test_*`` that raises ``AssertionError`` on a
    violation and skips (``pytest.skip``) when it does not apply to the backend.

    >>> from iotlb_backends.mlx5 import Mlx5
    >>> class TestMlx5(BackendConformance):
    ...     def make_backend(self):
    ...         return Mlx5()
    >>> TestMlx5().test_device_reset_keeps_vhost_layer()
    """

    #: page size of the device model.
    page_size: int = 4096
    #: RLIMIT_MEMLOCK in pages for the device model (None = unlimited).
    memlock_pages: Optional[int] = None
    #: the kernel profile of the device model (None: the default, the newest).
    kernel: Optional[str] = None
    #: guest RAM of the scenario checks (``test_scenario_<name>``).
    guest_size: int = KIT_GUEST_SIZE

    # ------------------------------------------------------------------ hooks
    def make_backend(self) -> Backend:
        """Return a new backend instance to check (override this)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_backend()")

    def make_device(self, backend: Optional[Backend] = None):
        """A fresh, closed ``VhostVdpa`` for ``backend`` (default: a new one)."""
        from iotlb.vdpa import VhostVdpa

        if backend is None:
            backend = self.make_backend()
        return VhostVdpa(backend, kernel=self.kernel, memlock_pages=self.memlock_pages,
                         page_size=self.page_size)

    def open_device(self, persist: bool = False, backend: Optional[Backend] = None):
        """An opened, owned device with MSG_V2|BATCH|ASID acked, plus IOTLB_PERSIST
        when ``persist`` (skips the check if the device does not offer it)."""
        dev = self.make_device(backend)
        dev.open()
        dev.set_owner()
        offered = dev.get_backend_features()
        want = offered & _BASE_FEATURES
        if persist:
            if not offered & BACKEND_F_IOTLB_PERSIST:
                dev.release()
                _skip("IOTLB_PERSIST is not offered for this backend")
            want |= BACKEND_F_IOTLB_PERSIST
        dev.set_backend_features(want)
        return dev

    def persist_variants(self, backend: Backend) -> List[bool]:
        """The IOTLB_PERSIST settings to exercise: not acked, and acked if offered."""
        return [False, True] if has_persistent_map(backend) else [False]

    def sample_ranges(self, backend: Backend) -> List[Tuple[int, int]]:
        """Two page-aligned ``(iova, size)`` chunks inside the backend's IOVA range,
        with a hole between them."""
        first, last = backend.get_iova_range()
        page = self.page_size
        base = -(-max(first, 0x100000) // page) * page
        if base + 8 * page - 1 > last:
            base = -(-first // page) * page
        if base + 8 * page - 1 > last:
            _skip(f"the IOVA range [{first:#x}, {last:#x}] is too small for the checks")
        return [(base, 2 * page), (base + 4 * page, page)]

    def populate(self, dev) -> List[Tuple[int, int, int]]:
        """UPDATE the sample ranges into every address space; return
        ``[(asid, iova, size)]``."""
        done = []
        be = dev.backend
        if be.nas > 1 and be.ngroups > 1:
            # as QEMU's shadow CVQ does: the last group on the last AS, so that every
            # AS is used by a vq group (a device may translate an AS only through the
            # groups bound to it, e.g. mlx5 on 6.1)
            dev.set_group_asid(be.ngroups - 1, be.nas - 1)
        for asid in range(dev.backend.nas):
            for n, (iova, size) in enumerate(self.sample_ranges(dev.backend)):
                uaddr = 0x7F00_0000_0000 + asid * 0x1000_0000 + n * 0x10_0000
                dev.update(iova, size, uaddr, Perm.RW, asid=asid)
                done.append((asid, iova, size))
        self._invariants(dev)
        return done

    @staticmethod
    def _invariants(dev) -> None:
        check = getattr(dev, "check_invariants", None)
        if check is not None:
            check()

    # ------------------------------------------------------------------ shape
    def test_is_a_valid_backend(self):
        """A :class:`~iotlb.backend.Backend` passing
        :func:`~iotlb.backend.validate_backend` (required ops callable, optional
        ops absent or callable, dma_map with dma_unmap, platform parents complete
        with nas = ngroups = 1, positive sizes, sane IOVA range)."""
        backend = self.make_backend()
        assert isinstance(backend, Backend), f"{backend!r} is not an iotlb.backend.Backend"
        validate_backend(backend)

    def test_required_ops_and_attributes(self):
        """Every required op is callable; ``nas``, ``ngroups``, ``nvqs`` are positive
        ints; ``use_va`` is a bool."""
        backend = self.make_backend()
        for op in REQUIRED_OPS:
            value = getattr(backend, op, None)
            if value is None and op in NULLABLE_OPS:
                continue                       # a NULL op the kernel allows
            assert callable(value), f"required op {op}() missing"
        for attr in ("nas", "ngroups", "nvqs"):
            value = getattr(backend, attr)
            assert type(value) is int and value >= 1, f"{attr} = {value!r}"
        assert isinstance(backend.use_va, bool), f"use_va = {backend.use_va!r}"

    def test_optional_ops_absent_or_callable(self):
        """An optional op is either absent (``getattr(b, op, None) is None``, a NULL
        pointer) or callable -- never some other value."""
        backend = self.make_backend()
        for op in OPTIONAL_OPS:
            value = getattr(backend, op, None)
            assert value is None or callable(value), f"{op} = {value!r}"

    def test_groups_and_asids_in_range(self):
        """``get_vq_group`` (and ``get_vq_desc_group``) of every vq is a group
        ``< ngroups`` (vhost answers EIO otherwise); ``group_asid`` of every group is
        an AS ``< nas``."""
        backend = self.make_backend()
        desc = getattr(backend, "get_vq_desc_group", None)
        vq_group = getattr(backend, "get_vq_group", None) or (lambda vq: 0)
        for vq in range(backend.nvqs):
            group = vq_group(vq)
            assert type(group) is int and 0 <= group < backend.ngroups, (vq, group)
            if desc is not None:
                group = desc(vq)
                assert type(group) is int and 0 <= group < backend.ngroups, (vq, group)
        for group in range(backend.ngroups):
            asid = backend.group_asid(group)
            assert type(asid) is int and 0 <= asid < backend.nas, (group, asid)

    def test_iova_range(self):
        """``get_iova_range()`` is ``(first, last)`` with ``first <= last`` in u64."""
        first, last = self.make_backend().get_iova_range()
        assert type(first) is int and type(last) is int
        assert 0 <= first <= last <= U64_MAX

    def test_backend_features_is_a_mask(self):
        """``get_backend_features()`` is a non-negative int mask."""
        features = self.make_backend().get_backend_features()
        assert type(features) is int and features >= 0, features

    # ------------------------------------------------------------------ observation
    def test_device_iotlb_every_asid(self):
        """``device_iotlb(asid)`` is an IOTLB for every ``asid < nas``, a snapshot the
        caller may change freely; ``asid == nas`` is a ``ValueError``."""
        backend = self.make_backend()
        for asid in range(backend.nas):
            tlb = backend.device_iotlb(asid)
            assert isinstance(tlb, IOTLBBase), f"device_iotlb({asid}) = {tlb!r}"
            before = [tuple(m)[:4] for m in tlb]
            tlb.unmap()
            tlb.map(0xDEAD000, 0xDEADFFF, 0xBEEF000)
            after = [tuple(m)[:4] for m in backend.device_iotlb(asid)]
            assert after == before, f"device_iotlb({asid}) returned live state"
        try:
            backend.device_iotlb(backend.nas)
        except ValueError:
            pass
        else:
            raise AssertionError("device_iotlb(nas) must raise ValueError")

    def test_set_map_copies_its_argument(self):
        """``set_map(asid, iotlb)`` copies what it needs: changing the IOTLB afterwards
        does not change the device."""
        backend = self.make_backend()
        if getattr(backend, "set_map", None) is None:
            _skip("no set_map op")
        (iova, size), _ = self.sample_ranges(backend)
        src = iotlb.IOTLB()
        src.map(iova, iova + size - 1, 0x4000_0000, Perm.RW)
        backend.set_map(0, src)
        before = [tuple(m)[:4] for m in backend.device_iotlb(0)]
        src.unmap()
        src.map(iova + size, iova + 2 * size - 1, 0x5000_0000, Perm.RO)
        after = [tuple(m)[:4] for m in backend.device_iotlb(0)]
        assert after == before, "set_map kept a reference to the vhost IOTLB"

    # ------------------------------------------------------------------ via the device
    def test_offered_features_match_ops(self):
        """GET_BACKEND_FEATURES offers MSG_V2|BATCH|ASID always; SUSPEND iff
        ``suspend``, RESUME iff ``resume``, DESC_ASID iff ``get_vq_desc_group``,
        IOTLB_PERSIST iff ``vhost_vdpa_has_persistent_map()``; plus every bit of the
        backend's own ``get_backend_features()``."""
        backend = self.make_backend()
        dev = self.make_device(backend)
        dev.open()
        try:
            offered = dev.get_backend_features()
            known = dev.kernel.known_backend_features
            # the parent's own op is called only since v6.6 (profile flag)
            own_op = getattr(backend, "get_backend_features", None)
            own = own_op() if own_op is not None and dev.kernel.parent_backend_features \
                else 0
            assert offered & _BASE_FEATURES == _BASE_FEATURES, hex(offered)
            assert offered & own == own, (hex(offered), hex(own))
            assert offered & ~known == 0, (hex(offered), hex(known))
            for bit, present in (
                    (BACKEND_F_SUSPEND, getattr(backend, "suspend", None) is not None),
                    (BACKEND_F_RESUME, getattr(backend, "resume", None) is not None),
                    (BACKEND_F_DESC_ASID,
                     getattr(backend, "get_vq_desc_group", None) is not None),
                    (BACKEND_F_IOTLB_PERSIST, has_persistent_map(backend))):
                if not own & bit:
                    present = present and bool(known & bit)   # an unknown bit: never
                    assert bool(offered & bit) == present, (hex(bit), hex(offered), present)
        finally:
            dev.release()

    def test_update_reaches_device_and_invalidate_removes(self):
        """After an UPDATE outside a batch the device translates the range as the vhost
        IOTLB does; after the INVALIDATE it no longer translates it."""
        for persist in self.persist_variants(self.make_backend()):
            dev = self.open_device(persist)
            try:
                for asid, iova, size in self.populate(dev):
                    want = dev.vhost_iotlb(asid).translate(iova, size, Perm.RW)
                    got = dev.backend.device_iotlb(asid).translate(iova, size, Perm.RW)
                    assert got == want, (asid, hex(iova), got, want)
                for asid, iova, size in self.populate_done(dev):
                    dev.invalidate(iova, size, asid=asid)
                    tlb = dev.backend.device_iotlb(asid)
                    assert tlb.first(iova, iova + size - 1) is None, (
                        f"asid {asid}: [{iova:#x}, +{size:#x}) still translates after "
                        f"INVALIDATE: {list(tlb.overlapping(iova, iova + size - 1))}")
                self._invariants(dev)
            finally:
                dev.release()

    @staticmethod
    def populate_done(dev) -> Iterator[Tuple[int, int, int]]:
        """``(asid, iova, size)`` of every vhost entry, in ascending order per AS."""
        for asid in range(dev.backend.nas):
            tlb = dev.vhost_iotlb(asid)
            for m in (list(tlb) if tlb is not None else ()):
                yield asid, m.start, m.size

    def test_device_reset_keeps_vhost_layer(self):
        """SET_STATUS(0) -- a CLEAN_MAP compat reset without IOTLB_PERSIST, a plain
        reset with it -- never changes the vhost IOTLBs or the pins."""
        for persist in self.persist_variants(self.make_backend()):
            dev = self.open_device(persist)
            try:
                self.populate(dev)
                dev.set_status(0x1 | 0x2)
                before = vhost_snapshot(dev)
                dev.set_status(0)
                assert vhost_snapshot(dev) == before, f"persist={persist}"
                assert dev.backend.get_status() == 0
                self._invariants(dev)
            finally:
                dev.release()

    def test_reset_rebinds_groups_to_as0(self):
        """After ``set_group_asid`` and a device reset every group is bound to AS 0
        again (what QEMU relies on when it re-sets the group ASIDs after reset)."""
        backend = self.make_backend()
        if getattr(backend, "set_group_asid", None) is None:
            _skip("no set_group_asid op")
        finding = backend.kernel_findings.get("reset rebinds groups")
        if finding:
            _skip(f"kernel finding: {finding}")
        for group in range(backend.ngroups):
            try:
                backend.set_group_asid(group, backend.nas - 1)
            except iotlb.IOTLBError:
                _skip("set_group_asid refuses this device (a kernel answer)")
        backend.reset()
        assert [backend.group_asid(g) for g in range(backend.ngroups)] == [0] * backend.ngroups

    def test_set_group_asid_records_binding(self):
        """``set_group_asid(group, asid)`` for a group some vq belongs to makes
        ``group_asid(group) == asid`` -- or refuses with an IOTLBError and changes
        nothing -- and changes no mapping."""
        backend = self.make_backend()
        op = getattr(backend, "set_group_asid", None)
        if op is None:
            _skip("no set_group_asid op")
        vq_group = getattr(backend, "get_vq_group", None) or (lambda vq: 0)
        used = {vq_group(vq) for vq in range(backend.nvqs)}
        desc = getattr(backend, "get_vq_desc_group", None)
        if desc is not None:
            used |= {desc(vq) for vq in range(backend.nvqs)}
        spaces = [[tuple(m)[:4] for m in backend.device_iotlb(a)] for a in range(backend.nas)]
        for group in sorted(used):
            for asid in range(backend.nas):
                before = backend.group_asid(group)
                try:
                    op(group, asid)
                except iotlb.IOTLBError:
                    # the parent refuses (a kernel answer, e.g. VDUSE API v0: EINVAL):
                    # then nothing changes
                    assert backend.group_asid(group) == before, (group, asid)
                    continue
                assert backend.group_asid(group) == asid, (group, asid)
        after = [[tuple(m)[:4] for m in backend.device_iotlb(a)] for a in range(backend.nas)]
        assert after == spaces, "set_group_asid changed a device mapping"

    def test_reset_map_accepts_every_asid(self):
        """``reset_map(asid)`` succeeds for every ``asid < nas`` (vhost ignores its
        result, so failing would silently leave stale mappings)."""
        backend = self.make_backend()
        op = getattr(backend, "reset_map", None)
        if op is None:
            _skip("no reset_map op")
        for asid in range(backend.nas):
            op(asid)
            assert isinstance(backend.device_iotlb(asid), IOTLBBase)

    def test_release_leaves_nothing(self):
        """Release (reset + remove_as of every AS + teardown) leaves no vhost address
        space and no pinned page, with or without IOTLB_PERSIST -- and the device no
        longer translates any range that was mapped to its old address (the memory
        behind it is no longer pinned or referenced: a parent that keeps such maps
        after release lets the device reach freed memory).  The same rule is the
        matrix's ``release_reopen`` check point "after release"."""
        finding = self.make_backend().kernel_findings.get("after release")
        for persist in self.persist_variants(self.make_backend()):
            dev = self.open_device(persist)
            self.populate(dev)
            mapped = {asid: [(m.start, m.addr) for m in dev.vhost_iotlb(asid) or ()]
                      for asid in range(dev.backend.nas)}
            dev.release()
            spaces, pinned = vhost_snapshot(dev)
            assert all(v is None for v in spaces.values()), spaces
            assert pinned == 0, f"{pinned} pages still pinned after release"
            for asid in range(dev.backend.nas):
                tlb = dev.backend.device_iotlb(asid)
                assert isinstance(tlb, IOTLBBase)
                stale = []
                for iova, addr in mapped[asid]:
                    try:
                        segs = tlb.translate(iova, 1, 0)
                    except iotlb.IOTLBError:
                        continue
                    if segs and segs[0][0] == addr:
                        stale.append(f"{iova:#x} -> {addr:#x}")
                if finding and stale:
                    continue      # the kernel's own behaviour, declared with its source
                assert not stale, (
                    f"PERSIST {'acked' if persist else 'not acked'}: after release "
                    f"ASID {asid} still translates {len(stale)} unmapped range(s) to "
                    f"their old address: {', '.join(stale[:3])}")

    # ------------------------------------------------------------------ scenarios
    def check_scenario(self, name: str) -> None:
        """Run scenario ``name`` (PERSIST not acked, and acked when offered) on a new
        backend from :meth:`make_backend` and fail with every
        :func:`scenario_failures` reason; skip when it applies to no variant."""
        from iotlb.scenarios import GuestLayout

        guest = GuestLayout(self.guest_size, page_size=self.page_size)
        problems: List[str] = []
        not_applicable: List[str] = []
        for persist in self.persist_variants(self.make_backend()):
            result, failures = run_scenario_checked(
                name, self.make_backend, persist=persist, guest=guest, kernel=self.kernel,
                page_size=self.page_size, memlock_pages=self.memlock_pages)
            if result.status == "n/a":
                not_applicable.append(result.reason)
                continue
            label = "acked" if persist else "not acked"
            problems += [f"PERSIST {label}: {f}" for f in failures]
        if problems:
            raise AssertionError(f"scenario {name!r} fails the matrix checks:\n  "
                                 + "\n  ".join(problems))
        if not_applicable and len(not_applicable) == len(
                self.persist_variants(self.make_backend())):
            _skip(f"scenario {name!r} does not apply: {not_applicable[0]}")

    def test_reopen(self):
        """After release the same backend can be opened again and the same ranges
        mapped anew (no EEXIST, no leftover pins)."""
        backend = self.make_backend()
        for persist in self.persist_variants(backend):
            for _ in range(2):
                dev = self.open_device(persist, backend=backend)
                try:
                    self.populate(dev)
                    for asid, iova, size in self.populate_done(dev):
                        want = dev.vhost_iotlb(asid).translate(iova, size)
                        assert dev.backend.device_iotlb(asid).translate(iova, size) == want
                finally:
                    dev.release()
                assert dev.pinned_pages == 0

    def test_mapping_style_is_stable(self):
        """The op table does not change while a device uses the backend."""
        backend = self.make_backend()
        style = mapping_style(backend)
        dev = self.open_device(False, backend=backend)
        try:
            self.populate(dev)
            dev.set_status(0)
        finally:
            dev.release()
        assert mapping_style(backend) == style


def _add_scenario_checks() -> None:
    """One ``test_scenario_<name>`` per scenario of :mod:`iotlb.scenarios`."""
    from iotlb.scenarios import SCENARIOS

    for name, sc in SCENARIOS.items():
        def check(self, _name=name):
            self.check_scenario(_name)
        check.__name__ = check.__qualname__ = f"test_scenario_{name}"
        check.__doc__ = (f"Scenario {name!r} ({sc.title}) passes the matrix's checks "
                         f"(:func:`scenario_failures`).")
        setattr(BackendConformance, check.__name__, check)


_add_scenario_checks()


def _run_checks(make_backend: Callable[[], Backend], *, kernel: Optional[str] = None,
                scenarios: bool = True) -> Dict[str, str]:
    kit = type("Conformance", (BackendConformance,),
               {"make_backend": staticmethod(make_backend), "kernel": kernel})()
    results: Dict[str, str] = {}
    skip_types: tuple = (unittest.SkipTest,)
    try:
        import pytest

        skip_types += (pytest.skip.Exception,)
    except ImportError:  # pragma: no cover
        pass
    for name in sorted(n for n in dir(BackendConformance) if n.startswith("test_")):
        if not scenarios and name.startswith("test_scenario_"):
            continue
        try:
            getattr(kit, name)()
        except skip_types as exc:
            results[name] = f"skipped: {getattr(exc, 'msg', None) or exc}"
        except Exception as exc:  # report every failure, not just the first
            results[name] = f"FAILED: {type(exc).__name__}: {exc}"
        else:
            results[name] = "passed"
    return results


def run_conformance(make_backend: Callable[[], Backend], *,
                    kernel: Optional[str] = None) -> Dict[str, str]:
    """Run every :class:`BackendConformance` check (contract and scenarios) without
    pytest.

    Returns ``{check name: "passed" | "skipped: why"}``; raises ``AssertionError``
    naming every failed check (with its error) if any failed.

    >>> from iotlb_backends.platform_iommu import PlatformIommu
    >>> run_conformance(PlatformIommu)["test_set_map_copies_its_argument"]
    'skipped: no set_map op'
    >>> run_conformance(PlatformIommu)["test_scenario_shadow_cvq"]
    "skipped: scenario 'shadow_cvq' does not apply: nas=1: the CVQ cannot be isolated"
    """
    results = _run_checks(make_backend, kernel=kernel)
    failures = [f"{name}: {why[len('FAILED: '):]}" for name, why in results.items()
                if why.startswith("FAILED")]
    if failures:
        raise AssertionError("conformance failures:\n  " + "\n  ".join(failures))
    return results
