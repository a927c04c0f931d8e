"""The ``iotlb`` command (also ``python -m iotlb``).

Subcommands:

* ``iotlb matrix``   -- run the QEMU-like scenarios (:mod:`iotlb.scenarios`) on every
  installed backend × {IOTLB_PERSIST not acked, acked} × the chosen kernel profiles
  and print what the device still translates after SET_STATUS(0), whether a VMM may
  skip the unmap/re-map cycle and what skipping saves, the errors userspace hits and
  what one stop/start costs; every row is judged by the checks of
  :mod:`iotlb.testing` (the plugin conformance kit's), and every failure is
  explained;
* ``iotlb replay FILE`` -- replay a trace (:mod:`iotlb.trace`: JSON Lines or a raw
  stream of 72-byte ``vhost_msg_v2``) on a backend and report every failure, the
  final state of both layers and the invariant check;
* ``iotlb bench``    -- the quick side-by-side speed run (:func:`iotlb.bench.main`);
* ``iotlb scenarios`` / ``iotlb backends`` -- list what is available.

Exit status: 0 success; 1 a failed check (``matrix``: any check of any row; a crashed
scenario counts) or an invariant violation; 2 bad input (usage, unknown
backend/scenario/kernel, a backend option of the wrong type, unreadable or malformed
trace); 3 an internal error.  ``IOTLB_DEBUG=1`` prints the traceback of an internal
error and of every backend exception the matrix meets.
"""
from __future__ import annotations

import argparse
import errno as _errno
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["main", "CLIError"]

PROG = "iotlb"


class CLIError(Exception):
    """A user error: printed as ``iotlb: error: <message>``, exit status 2."""


# ======================================================================= helpers
def _parse_value(text: str):
    """``key=value`` values: ints (``0x..`` too), booleans, None, else the string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return int(t.replace("_", ""), 0)
    except ValueError:
        pass
    if t.startswith(("(", "[")) and t.endswith((")", "]")):
        parts = [p for p in t[1:-1].split(",") if p.strip()]
        return tuple(_parse_value(p) for p in parts)
    return t


def _parse_options(items: List[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"{what} {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise CLIError(f"{what} {item!r}: {key!r} is not an option name")
        out[key] = _parse_value(value)
    return out


def _split_commas(text: str) -> List[str]:
    """Split ``a=1,b=(1,2)`` on the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _available() -> Dict[str, type]:
    from .backend import available_backends

    return available_backends()


def _broken() -> dict:
    from .backend import broken_backends

    return broken_backends()


def _warn_duplicates() -> None:
    """Say which backend names more than one installed plugin declares."""
    from .backend import duplicate_backends

    for name, decls in duplicate_backends().items():
        _warn(f"backend {name!r} is declared by {len(decls)} installed entry points: "
              f"{'; '.join(decls)}; using the first on sys.path ({decls[0]})")


def _unknown_backend(name: str) -> CLIError:
    known = ", ".join(_available()) or "(none)"
    broken = _broken()
    if name in broken:
        exc = broken[name]
        return CLIError(f"backend {name!r} is installed but broken "
                        f"({type(exc).__name__}: {exc}); available: {known}")
    return CLIError(f"unknown backend {name!r} (available: {known})")


def _check_option_types(name: str, cls: type, options: dict) -> None:
    """A ``key=value`` option whose constructor parameter is a bool (or an int) must
    parse as one: ``umem_uid_0=abc`` is bad input, not a truthy string."""
    import inspect

    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return
    for key, value in options.items():
        p = params.get(key)
        if p is None:
            continue
        default = p.default
        ann = p.annotation if isinstance(p.annotation, str) else \
            getattr(p.annotation, "__name__", "")
        if isinstance(default, bool) or ann == "bool":
            if not (isinstance(value, bool) or (type(value) is int and value in (0, 1))):
                raise CLIError(f"backend {name!r}: option {key}={value!r} is not a "
                               "boolean (use true/false, yes/no, on/off or 1/0)")
        elif (type(default) is int or ann == "int") and type(value) is not int:
            raise CLIError(f"backend {name!r}: option {key}={value!r} is not an "
                           "integer")


def _make_backend(name: str, options: dict):
    from . import IOTLBError
    from .backend import UnknownBackendError, load_backend

    if name not in _available():
        raise _unknown_backend(name)
    _check_option_types(name, _available()[name], options)
    try:
        return load_backend(name, **options)
    except UnknownBackendError:
        raise _unknown_backend(name) from None
    except (TypeError, ValueError, OverflowError, IOTLBError) as exc:
        opts = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"
        raise CLIError(f"backend {name!r} with {opts}: {exc}") from None


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _warn(text: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {text}\n")


def _table(head: List[str], rows: List[List[str]], *, markdown: bool = False) -> str:
    """A left-aligned text table (cells and headers may span lines: ``"\n"``), or a
    Markdown table."""
    if markdown:
        def esc(x):
            return str(x).replace("|", "\\|").replace("\n", " ")
        out = ["| " + " | ".join(esc(h) for h in head) + " |",
               "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        return "\n".join(out)
    split_rows = [[str(c).split("\n") for c in r] for r in rows]
    split_head = [str(h).split("\n") for h in head]
    widths = [max(len(ln) for r in split_rows + [split_head] for ln in r[i])
              for i in range(len(head))]

    def lines(cells, bottom=False):
        height = max(len(c) for c in cells)
        out = []
        for k in range(height):
            parts = []
            for c, w in zip(cells, widths):
                pad = height - len(c) if bottom else 0
                parts.append((c[k - pad] if 0 <= k - pad < len(c) else "").ljust(w))
            out.append("  ".join(parts).rstrip())
        return out
    out = lines(split_head, bottom=True)
    out.append("  ".join("-" * w for w in widths))
    for r in split_rows:
        out += lines(r)
    return "\n".join(out)


def _plural(n: int, word: str, plural: Optional[str] = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def _errname(code) -> str:
    if code is None:
        return "-"
    return _errno.errorcode.get(code, str(code))


# ======================================================================= matrix
def _variant_specs(names: List[str]):
    from .backend import matrix_variants
    from .scenarios import BackendSpec

    specs = []
    for name in names:
        try:
            variants = matrix_variants(name)
        except TypeError as exc:
            raise CLIError(f"backend {name!r}: {exc}") from None
        specs += [BackendSpec(name, opts, label) for label, opts in variants]
    return specs


def _matrix_specs(items: Optional[List[str]]):
    from .scenarios import VARIANTS, BackendSpec

    available = _available()
    if not items:
        for name, exc in _broken().items():
            _warn(f"backend {name!r} is installed but broken ({type(exc).__name__}: {exc})")
        order = {n: i for i, n in enumerate(VARIANTS)}
        return _variant_specs(sorted(available, key=lambda n: (order.get(n, len(order)), n)))
    specs = []
    for item in items:
        name, _, opts = item.partition(":")
        name = name.strip()
        if name not in available:
            raise _unknown_backend(name)
        if opts.strip():
            options = _parse_options(_split_commas(opts), "--backend")
            _make_backend(name, options)  # bad options are bad input (exit 2), now
            specs.append(BackendSpec(name, options))
        else:
            specs.extend(_variant_specs([name]))
    return specs


#: The version of QEMU whose behaviour the matrix states (issue: it never acks
#: IOTLB_PERSIST: ``vhost_vdpa_set_backend_cap`` keeps MSG_V2|BATCH|ASID|SUSPEND).
QEMU_VERSION = "10.2"
QEMU_NOTE = (f"QEMU {QEMU_VERSION} never acks IOTLB_PERSIST: it gets the \"not acked\" "
             "rows. The \"acked\" rows are what a PERSIST-aware VMM would get "
             "(hypothetical: no QEMU release acks it).")


def _policies() -> Optional[Dict[str, str]]:
    """``iotlb.kernels.POLICIES`` (policy name -> description), None if this build has
    no policy variants."""
    from . import kernels

    pol = getattr(kernels, "POLICIES", None)
    return dict(pol) if pol else None


def _matrix_kernels(kernel_arg: Optional[str], policy_arg: Optional[str]) -> List[str]:
    """The kernel profiles (``"7.2"``, ``"7.2+<policy>"``) the matrix runs, in order."""
    from . import kernels

    known = list(getattr(kernels, "KERNELS"))
    if not kernel_arg:
        names = [kernels.DEFAULT_KERNEL]
    elif kernel_arg.strip() == "all":
        names = known
    else:
        names = []
        for k in _split_commas(kernel_arg):
            k = k.strip()
            try:
                name = kernels.kernel_profile(k).name
            except ValueError as exc:
                raise CLIError(f"--kernel: {exc}") from None
            if name not in names:
                names.append(name)
    if not policy_arg:
        return names
    policies = _policies()
    if not policies:
        raise CLIError("--policy: no policies known (this build has no "
                       "iotlb.kernels.POLICIES; --kernel runs the real kernels only)")
    if policy_arg.strip() == "all":
        chosen = list(policies)
    else:
        chosen = []
        for p in _split_commas(policy_arg):
            p = p.strip()
            if p not in policies:
                raise CLIError(f"--policy: unknown policy {p!r} (known: "
                               f"{', '.join(policies)})")
            if p not in chosen:
                chosen.append(p)
    out: List[str] = []
    skipped = []
    for k in names:
        out.append(k)
        for p in chosen:
            try:
                kernels.kernel_profile(f"{k}+{p}")
            except ValueError as exc:
                skipped.append(f"{k}+{p} ({exc})")
                continue
            out.append(f"{k}+{p}")
    if len(out) == len(names):
        raise CLIError(f"--policy: no chosen policy applies to kernel "
                       f"{', '.join(names)}: {'; '.join(skipped)}")
    for s in skipped:
        _warn(f"--policy: skipped {s}")
    return out


def _kernel_findings(rows) -> Dict[Tuple[str, str], str]:
    """(backend label, check) -> the kernel's reason, for the kernel findings the
    scenario results declare (``Backend.kernel_findings``)."""
    out: Dict[Tuple[str, str], str] = {}
    for r in rows:
        for res in r.cell.results.values():
            for point, why in (getattr(res, "kernel_findings", None) or {}).items():
                out.setdefault((r.cell.backend, point), why)
    return out


class _Row:
    """One matrix row: a scenarios.Cell (backend variant × PERSIST) on one kernel
    profile, judged by the shared checks of :mod:`iotlb.testing`."""

    def __init__(self, kernel: str, cell, contract=()) -> None:
        self.kernel = kernel
        self.cell = cell
        self.contract = list(contract)
        self.scenario_failures: Dict[str, list] = {}
        self.note = 0  # footnote number of its failures in the text table

    @property
    def failures(self) -> list:
        out = []
        for fs in self.scenario_failures.values():
            out += fs
        out += self.contract
        if self.cell.error:
            from .testing import CheckFailure

            out.insert(0, CheckFailure("crash", "probe", None, "open + GET_BACKEND_FEATURES",
                                       "the backend can be created and probed",
                                       self.cell.error))
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed_scenarios(self) -> List[str]:
        return [n for n, fs in self.scenario_failures.items() if fs]

    def _result(self, name: str):
        r = self.cell.results.get(name)
        return None if r is None or r.status != "ok" else r

    @property
    def skip(self) -> str:
        """The skip re-map verdict: ``safe``, ``UNSAFE``, ``failed`` (the scenario
        behind it failed a check: no verdict), ``nothing mapped`` or ``not run``."""
        r = self._result("persist_stop_start")
        if r is None:
            return "not run"
        if self.scenario_failures.get("persist_stop_start"):
            return "failed"
        running = r.checkpoint("running")
        if running is not None and not any(v.mapped for v in running.asids.values()):
            return "nothing mapped"
        safe = self.cell.skip_safe
        return "not run" if safe is None else "safe" if safe else "UNSAFE"

    @property
    def saving(self):
        """What skipping the unmap/re-map saves (a stop/start minus the skipping
        one): ``{"unpinned", "pinned", "messages", "ioctls"}``, when skipping is
        safe."""
        if self.skip != "safe" or self.scenario_failures.get("stop_start"):
            return None
        full, skip = self.cell.cost, self.cell.skip_cost
        if full is None or skip is None:
            return None
        return {k: getattr(full, k) - getattr(skip, k)
                for k in ("unpinned", "pinned", "messages", "ioctls")}

    @property
    def vmm(self) -> str:
        if self.cell.persist == "acked":
            return "PERSIST-aware VMM (hypothetical)"
        if self.cell.persist == "not acked":
            return f"QEMU {QEMU_VERSION}"
        return "-"

    def as_dict(self) -> dict:
        d: Dict[str, Any] = {"kernel": self.kernel}
        d.update(self.cell.as_dict())
        d["vmm"] = self.vmm
        if not self.cell.error and self.cell.persist != "not offered":
            skip = self.skip
            d["skip"] = skip
            d["skip_safe"] = {"safe": True, "UNSAFE": False}.get(skip)
            d["skip_saving"] = self.saving
            d["failed"] = self.failed_scenarios
        d["ok"] = self.ok
        d["failures"] = [f.as_dict() for f in self.failures]
        return d


def _probe(spec, kernel: str) -> int:
    from .vdpa import VhostVdpa

    dev = VhostVdpa(spec.create(), kernel=kernel)
    dev.open()
    try:
        return int(dev.get_backend_features())
    finally:
        dev.release()


def _run_matrix(specs, names: List[str], kernels: List[str], guest) -> List[_Row]:
    from .scenarios import Cell
    from .testing import contract_failures, run_scenario_checked
    from .wire import BackendFeature

    persist_bit = int(BackendFeature.IOTLB_PERSIST)
    rows: List[_Row] = []
    for spec in specs:
        for kernel in kernels:
            try:
                offered = _probe(spec, kernel)
            except Exception as exc:  # a broken plugin: one row, never fatal
                _debug_traceback(f"{spec.label} on kernel {kernel}: probing")
                rows.append(_Row(kernel, Cell(spec.label, spec, "-",
                                              error=f"{type(exc).__name__}: {exc}")))
                continue
            contract = contract_failures(spec.create, kernel=kernel)
            for persist in (False, True):
                if persist and not offered & persist_bit:
                    rows.append(_Row(kernel, Cell(spec.label, spec, "not offered")))
                    continue
                cell = Cell(spec.label, spec, "acked" if persist else "not acked")
                row = _Row(kernel, cell, contract)
                for n in names:
                    result, fails = run_scenario_checked(n, spec, persist=persist,
                                                         guest=guest, kernel=kernel,
                                                         page_size=guest.page_size)
                    cell.results[n] = result
                    row.scenario_failures[n] = fails
                    if result.status == "error":
                        _debug_traceback(f"{spec.label} on kernel {kernel}, PERSIST "
                                         f"{cell.persist}, scenario {n}: {result.reason}",
                                         rerun=(n, spec, persist, guest, kernel))
                rows.append(row)
    return rows


def _debug_traceback(what: str, rerun=None) -> None:
    """``IOTLB_DEBUG=1``: print the traceback of a backend's exception.  A scenario
    records only the exception's text, so the scenario is run once more, without
    the catch, to show where the plugin raised."""
    if not os.environ.get("IOTLB_DEBUG"):
        return
    import traceback

    sys.stderr.write(f"{PROG}: debug: {what}\n")
    if rerun is None:
        traceback.print_exc()
        return
    from .scenarios import SCENARIOS, Session

    name, spec, persist, guest, kernel = rerun
    try:
        s = Session(spec.create(), persist=persist, guest=guest,
                    page_size=guest.page_size, kernel=kernel)
        SCENARIOS[name].run(s)
        # a plugin's exception the model handled as the op's error (PluginError)
        for exc in getattr(s.backend, "_iotlb_plugin_exceptions", ())[:1]:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            return
    except Exception:
        traceback.print_exc()
    else:
        sys.stderr.write(f"{PROG}: debug: the scenario did not raise when run again\n")


# The device-state vocabulary is the scenarios' (AsidView.device), in the table and
# in the JSON alike.
MATRIX_STATES = [
    ("maps", "the device translates every range userspace mapped, to the right address"),
    ("identity", "the identity map (iova = address) instead of the user's maps"),
    ("identity (DMA MR)", "mlx5's DMA MR: identity"),
    ("empty", "the device translates nothing"),
    ("wrong", "entries, but not the ones userspace mapped"),
]


def _skip_text(row: _Row, wide: bool) -> str:
    skip = row.skip
    if skip == "UNSAFE":
        dev = row.cell.skip_device
        if wide or (dev and dev != row.cell.after_reset):
            return f"UNSAFE: {dev}"
        return "UNSAFE"
    if skip == "failed":
        return "FAIL"
    if skip in ("not run", "nothing mapped"):
        return "-" if skip == "not run" else "nothing mapped"
    return skip


def _saving_text(row: _Row) -> str:
    s = row.saving
    if s is None:
        return "-"
    return f"{s['pinned']:,} / {s['messages']:,}"


def _cost_text(cost) -> str:
    if cost is None:
        return "-"
    return f"{cost.unpinned:,} / {cost.pinned:,} / {cost.messages:,}"


def _errors_text(cell) -> str:
    errs = cell.errors
    if not errs:
        return "none"
    return "; ".join(f"{e['cause'] or e['errno']} on {e['what']}" for e in errs)


def _checks_text(row: _Row) -> str:
    c = row.cell
    if c.error:
        return f"FAIL [{row.note}]"
    run = [r for r in c.results.values() if r.status != "n/a"]
    na = len(c.results) - len(run)
    if not row.ok:
        failed = len(row.failed_scenarios)
        what = f"{failed}/{len(run)}" if failed else "kit"
        return f"FAIL {what} [{row.note}]"
    return f"{len(run)} ok" + (f", {na} n/a" if na else "")


def _kernel_labels(kernels: List[str], wide: bool) -> Dict[str, str]:
    """Kernel column text: the profile name; in the narrow table a policy variant
    ``7.2+<policy>`` becomes ``7.2+P1`` (keyed under the table)."""
    if wide:
        return {k: k for k in kernels}
    pols = []
    for k in kernels:
        if "+" in k and k.split("+", 1)[1] not in pols:
            pols.append(k.split("+", 1)[1])
    out = {}
    for k in kernels:
        if "+" in k:
            base, pol = k.split("+", 1)
            out[k] = f"{base}+P{pols.index(pol) + 1}"
        else:
            out[k] = k
    return out


NARROW_HEAD = ["kernel", "backend", "PERSIST", "after\nSET_STATUS(0)", "skip\nre-map",
               "skipping saves\nre-pins / msgs", "checks"]
WIDE_HEAD = ["kernel", "backend", "PERSIST", "after SET_STATUS(0)", "skip re-map",
             "skipping saves: re-pins / msgs", "errors userspace hits",
             "stop/start: unpin / re-pin / msgs", "after release", "checks"]


def _matrix_rows(rows: List[_Row], wide: bool) -> List[List[str]]:
    labels = _kernel_labels(list(dict.fromkeys(r.kernel for r in rows)), wide)
    out = []
    for r in rows:
        c = r.cell
        k = labels[r.kernel]
        if c.error:
            short = f"ERROR: {c.error}"
            if not wide and len(short) > 40:
                short = short[:37] + "..."
            cols = [k, c.backend, "-", short, "-", "-"]
            cols += ["-", "-", "-"] if wide else []
            out.append(cols + [_checks_text(r)])
            continue
        if c.persist == "not offered":
            cols = [k, c.backend, "not offered", "-", "-", "-"]
            cols += ["-", "-", "-"] if wide else []
            out.append(cols + ["-"])
            continue
        cols = [k, c.backend, c.persist, c.after_reset or "-", _skip_text(r, wide),
                _saving_text(r)]
        if wide:
            cols += [_errors_text(c), _cost_text(c.cost), c.after_release or "-"]
        out.append(cols + [_checks_text(r)])
    return out


MATRIX_LEGEND = [
    ("kernel", "the kernel profile the device model follows (iotlb.KERNELS; --kernel)"),
    ("after SET_STATUS(0)", "what the device translates guest memory (ASID 0) through "
     "right after QEMU's reset: " + "; ".join(f"{k} = {v}" for k, v in MATRIX_STATES)),
    ("skip re-map", "safe = a stop/start without INVALIDATE-all/UPDATE-all still "
     "translates every guest page at DRIVER_OK; FAIL = the scenario failed a check, "
     "so no verdict"),
    ("skipping saves", "what skipping the cycle saves where it is safe: pages re-pinned "
     "(as many are unpinned; VA-mode parents pin nothing) / write() messages"),
    ("errors", "the handler's errno behind the EFAULT write() returns; re-UPDATE w/o "
     "INVALIDATE = the listener replayed after SET_STATUS(0) without unmapping first"),
    ("stop/start", "one QEMU stop/start: pages unpinned / re-pinned / write() messages"),
    ("after release", "what the device translates through (ASID 0) once the fd is closed"),
    ("checks", "scenarios whose must-hold checks, expected errors and invariants held, "
     "plus the conformance kit's contract checks (iotlb.testing, the same checks)"),
]


def _wrap(text: str, width: int = 100, indent: str = "") -> List[str]:
    import textwrap

    return textwrap.wrap(text, width, initial_indent=indent,
                         subsequent_indent=indent + "  ", break_on_hyphens=False) or [indent]


def _legend(markdown: bool, wide: bool) -> str:
    keys = [k for k, _ in MATRIX_LEGEND
            if wide or markdown or k not in ("errors", "stop/start", "after release")]
    items = [(k, v) for k, v in MATRIX_LEGEND if k in keys]
    if markdown:
        return "\n".join(f"- **{k}**: {v}" for k, v in items)
    import textwrap

    width = max(len(k) for k, _ in items) + 2
    out = []
    for k, v in items:
        lines = textwrap.wrap(v, 100 - width)
        out.append(k.ljust(width) + lines[0])
        out += [" " * width + ln for ln in lines[1:]]
    return "\n".join(out)


def _fit_backend_column(table_rows: List[List[str]], head: List[str], limit: int) -> None:
    """Wrap long backend labels (column 1) onto several lines so the table fits in
    ``limit`` columns."""
    def width(col):
        cells = [str(r[col]) for r in table_rows] + [head[col]]
        return max(len(ln) for c in cells for ln in c.split("\n"))
    total = sum(width(i) for i in range(len(head))) + 2 * (len(head) - 1)
    if total <= limit:
        return
    import textwrap

    room = max(12, width(1) - (total - limit))
    for r in table_rows:
        text = str(r[1])
        if len(text) > room:
            r[1] = "\n".join(textwrap.wrap(text, room, break_long_words=False))


def _error_summary(rows: List[_Row]) -> List[str]:
    seen: Dict[str, List[str]] = {}
    live = [r for r in rows if not r.cell.error and r.cell.persist != "not offered"]
    for r in live:
        for e in r.cell.errors:
            key = f"{e['cause'] or e['errno']} on {e['what']}"
            seen.setdefault(key, []).append(f"{r.cell.backend} {r.cell.persist}")
    out = []
    for i, (key, where) in enumerate(seen.items()):
        if i == 6:
            out.append(f"  ... and {len(seen) - 6} more (--wide or --json shows them all)")
            break
        scope = "every row" if len(where) == len(live) else \
            f"{len(where)} rows: " + ", ".join(where[:3]) + (" ..." if len(where) > 3 else "")
        out += _wrap(f"{key} ({scope})", indent="  ")
    return out


def _na_summary(rows: List[_Row]) -> List[str]:
    import re

    seen: Dict[tuple, List[str]] = {}
    for r in rows:
        for n, res in r.cell.results.items():
            if res.status == "n/a":
                why = re.sub(r" \(first: step \d+\)", "", res.reason)
                names = seen.setdefault((r.cell.backend, why), [])
                if n not in names:
                    names.append(n)
    out = []
    for (backend, why), names in seen.items():
        out += _wrap(f"{backend}: {', '.join(names)}: {why}", indent="  ")
    return out


def _row_facts(r: _Row) -> Dict[str, object]:
    c = r.cell
    return {"after SET_STATUS(0)": c.after_reset, "skip re-map": r.skip,
            "after release": c.after_release,
            "errors": sorted(f"{e['cause'] or e['errno']} on {e['what']}" for e in c.errors),
            "failed": r.failed_scenarios}


def _scenario_outcome(res) -> tuple:
    steps = tuple((st.ok, st.errno, st.cause) for st in res.steps)
    cps = tuple((cp.label, tuple((a, v.device, v.translates, v.stale)
                                 for a, v in sorted(cp.asids.items())))
                for cp in res.checkpoints)
    return res.status, steps, cps


def _policy_diffs(rows: List[_Row]) -> Dict[int, List[str]]:
    """For each row of a policy variant ``K+P``: how it differs from the same backend
    and PERSIST row on kernel ``K`` (the answers, and which scenarios' traces end
    differently: step results or device states at check points)."""
    base = {(r.kernel, r.cell.backend, r.cell.persist): r for r in rows}
    out: Dict[int, List[str]] = {}
    for i, r in enumerate(rows):
        if "+" not in r.kernel or r.cell.error or r.cell.persist == "not offered":
            continue
        b = base.get((r.kernel.split("+", 1)[0], r.cell.backend, r.cell.persist))
        if b is None or b.cell.error:
            continue
        diffs = []
        fa, fb = _row_facts(r), _row_facts(b)
        for key in fa:
            if fa[key] != fb[key]:
                diffs.append(f"{key}: {fb[key]} -> {fa[key]}")
        changed = [n for n, res in r.cell.results.items()
                   if n in b.cell.results and
                   _scenario_outcome(res) != _scenario_outcome(b.cell.results[n])]
        if changed:
            diffs.append("scenarios whose steps or check points change: "
                         + ", ".join(changed))
        out[i] = diffs
    return out


def _record_paths_are_file(out: str) -> bool:
    return out.lower().endswith((".jsonl", ".json", ".bin")) and not os.path.isdir(out)


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def _record_many(out: str, traces: List[tuple]) -> None:
    """``traces``: ``[(name, ops)]``; one → a file, several → a directory (a path
    ending in .jsonl/.json/.bin is a file: more than one trace is then an error)."""
    from .trace import write_trace

    if not traces:
        _warn("--record: nothing was run, nothing written")
        return
    if len(traces) == 1 and not os.path.isdir(out):
        dropped = write_trace(out, traces[0][1])
        if dropped:
            _warn(f"--record {out}: the binary format keeps only messages; "
                  f"{dropped:,} ioctls dropped")
        return
    if (os.path.exists(out) and not os.path.isdir(out)) or _record_paths_are_file(out):
        raise CLIError(f"--record {out}: {len(traces)} traces need a directory, and "
                       f"{out} is a file name (restrict with --backend/--scenario/--kernel "
                       "to record one trace to a file, or give a directory name)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--record {out}: {exc.strerror}") from None
    for name, ops in traces:
        write_trace(os.path.join(out, name + ".jsonl"), ops)
    sys.stderr.write(f"{PROG}: recorded {len(traces):,} traces in {out}/\n")


def _guest(text: str):
    import re

    from .scenarios import GuestLayout, parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise CLIError(f"--guest-size: {exc}") from None
    try:
        return GuestLayout(size)
    except ValueError as exc:
        # GuestLayout rounds the size it quotes ("got 4K" for 4097): say it exactly
        msg = re.sub(r", got [^,;]*$", "", str(exc))
        raise CLIError(f"--guest-size {text}: {msg}; {text} is {size:,} bytes") from None


def cmd_matrix(args) -> int:
    from . import IMPLEMENTATION
    from .scenarios import SCENARIOS, format_size

    for n in args.scenario or ():
        if n not in SCENARIOS:
            raise CLIError(f"unknown scenario {n!r} (known: {', '.join(SCENARIOS)})")
    names = list(dict.fromkeys(args.scenario)) if args.scenario else list(SCENARIOS)
    guest = _guest(args.guest_size)
    kernels = _matrix_kernels(args.kernel, args.policy)
    specs = _matrix_specs(args.backend)
    _warn_duplicates()
    if args.record:
        parent = os.path.dirname(os.path.abspath(args.record))
        if not os.path.isdir(parent):
            raise CLIError(f"--record {args.record}: directory {parent} does not exist")
    rows = _run_matrix(specs, names, kernels, guest)
    if args.record:
        multi_kernel = len(kernels) > 1
        traces = []
        for r in rows:
            for n, res in r.cell.results.items():
                if res.status == "ok":
                    k = f"{_slug(r.kernel)}." if multi_kernel else ""
                    traces.append((f"{k}{_slug(r.cell.backend)}.{_slug(r.cell.persist)}.{n}",
                                   res.ops))
        _record_many(args.record, traces)
    ok = all(r.ok for r in rows)
    policies = _policies() or {}
    if args.json:
        diffs = _policy_diffs(rows)
        cells = []
        for i, r in enumerate(rows):
            d = r.as_dict()
            if i in diffs:
                d["policy_changes"] = diffs[i]
            cells.append(d)
        doc = {"kernels": kernels,
               "policies": {k.split("+", 1)[1]: policies.get(k.split("+", 1)[1])
                            for k in kernels if "+" in k},
               "qemu": {"version": QEMU_VERSION, "acks_persist": False,
                        "rows": "persist == 'not acked'", "note": QEMU_NOTE},
               "guest": guest.as_dict(), "guest_size": guest.size,
               "scenarios": names, "engine": IMPLEMENTATION,
               "cells": cells,
               "broken_backends": {k: f"{type(v).__name__}: {v}"
                                   for k, v in _broken().items()},
               "ok": ok}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if ok else 1
    wide = args.wide or args.markdown
    title = (f"iotlb matrix: kernel {', '.join(kernels)}; guest {format_size(guest.size)} "
             f"({len(guest.sections)} sections, {guest.total_pages:,} pages); "
             f"{_plural(len(names), 'scenario')}; engine {IMPLEMENTATION}")
    head = WIDE_HEAD if wide else NARROW_HEAD
    note = 0
    for r in rows:
        if not r.ok:
            note += 1
            r.note = note
    table_rows = _matrix_rows(rows, wide)
    if args.markdown:
        _out(f"**{title}**")
        _out()
        _out(QEMU_NOTE)
        _out()
        _out(_table(head, table_rows, markdown=True))
        _out()
        _out(_legend(True, True))
    else:
        for ln in _wrap(title):
            _out(ln)
        for ln in _wrap(QEMU_NOTE):
            _out(ln)
        _out()
        if not wide:
            _fit_backend_column(table_rows, head, 100)
        _out(_table(head, table_rows))
        _out()
        if not wide:
            errs = _error_summary(rows)
            if errs:
                _out("errors userspace hits (the handler's errno behind write()'s EFAULT):")
                for ln in errs:
                    _out(ln)
                _out()
        na = _na_summary(rows)
        if na:
            _out("n/a (scenarios that do not apply):")
            for ln in na:
                _out(ln)
            _out()
        findings = _kernel_findings(rows)
        if findings:
            _out("kernel findings (checks a parent fails because its kernel does; not "
                 "counted as failures):")
            for (label, point), why in findings.items():
                for ln in _wrap(f"{label}: {point}: {why}"):
                    _out(ln)
            _out()
        labels = _kernel_labels(kernels, wide)
        for k in kernels:
            if labels[k] != k or ("+" in k and wide):
                pol = k.split("+", 1)[1]
                for ln in _wrap(f"{labels[k]} = {k}: {policies.get(pol, '')}"):
                    _out(ln)
        diffs = _policy_diffs(rows)
        if diffs:
            _out()
            _out("what each policy changes (against the same row on its kernel):")
            for i, d in diffs.items():
                r = rows[i]
                head_ln = f"{labels[r.kernel]} {r.cell.backend}, PERSIST {r.cell.persist}: "
                for ln in _wrap(head_ln + ("; ".join(d) if d else "nothing"), indent="  "):
                    _out(ln)
            _out()
        _out(_legend(False, wide))
    if not ok:
        if args.markdown:
            _out()
            _out("**Failures** (`--json` has all of them, in full):")
            _out()
            for r in rows:
                if not r.ok:
                    for f in r.failures[:3]:
                        _out(f"- [{r.note}] {r.kernel} {r.cell.backend}, PERSIST "
                             f"{r.cell.persist}: {f.short(200)}")
                    if len(r.failures) > 3:
                        _out(f"- [{r.note}] ... and {len(r.failures) - 3:,} more")
        else:
            _out()
            _out("failures (--json has all of them, in full):")
            for r in rows:
                if r.ok:
                    continue
                fs = r.failures
                scen = r.failed_scenarios
                what = (f"{len(scen)} scenario(s) failed" if scen else "checks failed") + \
                    f" ({len(fs):,} failed check(s))"
                for ln in _wrap(f"[{r.note}] {r.kernel} {r.cell.backend}, PERSIST "
                                f"{r.cell.persist}: {what}"):
                    _out(ln)
                groups: Dict[str, list] = {}
                for f in fs:
                    groups.setdefault(f.scenario, []).append(f)
                for i, (scenario, group) in enumerate(groups.items()):
                    if i == 4:
                        _out(f"    ... and {len(groups) - 4} more")
                        break
                    more = f" (+{len(group) - 1:,} more)" if len(group) > 1 else ""
                    for ln in _wrap(group[0].short(150) + more, indent="    "):
                        _out(ln)
        sys.stderr.write(f"{PROG}: {sum(not r.ok for r in rows)} of {len(rows)} matrix "
                         "rows failed their checks\n")
    return 0 if ok else 1


# ======================================================================= replay
def _compare(dev_tlb, vhost_tlb) -> str:
    """How the device's IOTLB relates to the vhost IOTLB of the same ASID."""
    from . import IOTLBError
    from .backend import is_identity

    if vhost_tlb is not None and len(vhost_tlb):
        missing = 0
        for m in vhost_tlb:
            try:
                segs = dev_tlb.translate(m.start, m.size, m.perm & 3)
            except IOTLBError:
                missing += 1
                continue
            addr = m.addr
            for host, length in segs:
                if host != addr:
                    missing += 1
                    break
                addr += length
        if not missing:
            return "translates every vhost entry"
        n = len(vhost_tlb)
        kind = "identity" if is_identity(dev_tlb) else \
            "empty" if not len(dev_tlb) else f"{len(dev_tlb)} entries"
        return f"{kind}: {missing} of {n} vhost entries not translated"
    if is_identity(dev_tlb):
        return "identity"
    if not len(dev_tlb):
        return "empty"
    return f"{len(dev_tlb)} entries (vhost has none)"


def _final_state(dev, backend) -> dict:
    from .scenarios import final_state

    state = final_state(dev, backend)
    asids = {}
    for asid in range(backend.nas):
        vt = dev.vhost_iotlb(asid)
        dt = backend.device_iotlb(asid)
        asids[asid] = {
            "vhost_entries": None if vt is None else len(vt),
            "vhost_bytes": None if vt is None else sum(m.size for m in vt),
            "device_entries": len(dt),
            "device": _compare(dt, vt),
            "vhost": state["asids"][str(asid)]["vhost"],
            "device_map": state["asids"][str(asid)]["device"],
        }
    return {"asids": asids, "groups": state["groups"],
            "pinned_pages": state["pinned_pages"], "dirtied_pages": dev.dirtied_pages,
            "open": state["open"]}


def _replay_source(path: str) -> str:
    """``-`` (standard input) is spooled to a temporary file (formats are detected from
    the first bytes and progress counts lines, so the reader needs a real file); the
    file is removed at exit."""
    if path != "-":
        return path
    import atexit
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix="iotlb-replay-", suffix=".trace")
    atexit.register(lambda: os.path.exists(tmp) and os.unlink(tmp))
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    return tmp


#: ops that touch only the user memory or describe the trace: they may precede
#: ``open`` without making the setup implicit
_SETUP_NEUTRAL = ("meta", "mmap", "munmap", "memlock")
#: records a binary replay hands to write_many() at a time
_REPLAY_CHUNK = 4096
#: mismatches and failures listed one per line before the rest are only counted
_LIST_CAP = 20


def cmd_replay(args) -> int:
    import itertools

    from . import IOTLBError, wire
    from . import expect as ex
    from .scenarios import QEMU_BACKEND_FEATURES, format_size
    from .trace import (MESSAGE_OPS, Location, Progress, TraceError, apply, count_ops,
                        describe, detect_format, read_trace, truncated_record,
                        write_trace)
    from .vdpa import MAX_IOTLB_ENTRIES, VhostVdpa

    path = _replay_source(args.file)
    shown = "<stdin>" if args.file == "-" else args.file
    fmt = args.format
    if fmt == "auto":
        fmt = detect_format(path)
    entries = read_trace(path, fmt)
    # a trace recorded by `iotlb conform --record` starts with a meta op saying where:
    # that names the model (backend, options, kernel profile, page size) unless the
    # command line does
    head = next(entries, None)
    recorded = None
    if head is not None and head.error is None and head.op["op"] == "meta":
        recorded = head.op.get("recorded") or None
    entries = itertools.chain([head] if head is not None else [], entries)
    options = _parse_options(args.option or [], "--option")
    backend_name = args.backend
    device_options: dict = {}
    if backend_name is None and recorded is not None:
        backend_name = recorded.get("backend", "vdpa_sim")
        options = {**(recorded.get("options") or {}), **options}
        device_options = dict(recorded.get("device_options") or {})
        if recorded.get("page_size"):
            device_options["page_size"] = recorded["page_size"]
    backend_name = backend_name or "vdpa_sim"
    kernel = args.kernel or (recorded or {}).get("profile")
    if kernel is not None:
        try:
            from .kernels import kernel_profile
            kernel_profile(kernel)
        except ValueError as exc:
            raise CLIError(f"--kernel: {exc}") from None
        device_options["kernel"] = kernel
    if args.max_iotlb_entries is not None:
        device_options["max_iotlb_entries"] = args.max_iotlb_entries
    backend = _make_backend(backend_name, options)
    # parent ops can only be observed if the log wraps the backend before the device
    # holds it: traces that start with a recorded meta get one
    log = ex.ParentLog(backend) if recorded is not None else None
    if args.record:
        parent = os.path.dirname(os.path.abspath(args.record))
        if not os.path.isdir(parent):
            raise CLIError(f"--record {args.record}: directory {parent} does not exist")
    show_progress = (not args.quiet and not args.json and sys.stderr.isatty())
    total = count_ops(path, fmt) if show_progress else 0
    progress = Progress(total, enabled=show_progress and total >= 2000)

    try:
        dev = VhostVdpa(backend, **device_options)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CLIError(f"model device with {device_options}: {exc}") from None
    # nothing a replay reports reads the per-run dirty record (UserMemory.dirtied),
    # which keeps an entry per writable run ever unpinned: O(messages) on a vIOMMU
    dev.usermem.record_dirty = False
    sent: List[dict] = []
    failures: List[dict] = []
    unmet: List[dict] = []
    bad: List[dict] = []
    implicit: Optional[List[str]] = None
    n_ops = checked = messages = 0
    persist_bit = int(wire.BackendFeature.IOTLB_PERSIST)

    def failed(exc: IOTLBError, where, op: dict) -> None:
        # an operation the device refused: what the report lists
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
        failures.append({
            **(where.as_dict() if where is not None else {"setup": True}),
            "op": describe(op), "errno": _errname(exc.errno),
            "cause": None if cause is None else _errname(cause.errno),
            "message": (cause.strerror if cause is not None else exc.strerror) or str(exc),
        })

    def run(op: dict, where):
        nonlocal n_ops, checked, messages
        if op["op"] == "set_backend_features" and args.persist is not None:
            op = dict(op)
            op["features"] = (op["features"] | persist_bit if args.persist
                              else op["features"] & ~persist_bit)
        if args.record:                   # kept only to be written (a long replay
            sent.append(op)               # streams: no per-op objects kept)
        n_ops += 1
        if op["op"] in MESSAGE_OPS:
            messages += 1
        want = op.get("expect")
        if want is not None:
            # an expectation: an error is an answer to compare, not a failure
            checked += 1
            try:
                got = ex.observe(dev, op, log)
            except (TypeError, ValueError, OverflowError) as exc:
                got = {"error": f"{type(exc).__name__}: {exc}"}
            diff = ex.mismatches(want, got)
            if diff:
                unmet.append({**(where.as_dict() if where is not None else {}),
                              "op": describe(op),
                              "mismatches": [{"key": k, "expected": w, "found": f}
                                             for k, w, f in diff]})
            return got.get("value")
        try:
            result = apply(dev, op)
        except IOTLBError as exc:
            failed(exc, where, op)
            return None
        except (TypeError, ValueError, OverflowError) as exc:
            failures.append({**(where.as_dict() if where is not None else {"setup": True}),
                             "op": describe(op), "errno": None, "cause": None,
                             "message": f"{type(exc).__name__}: {exc}"})
            return None
        if log is not None:
            log.take()
        return result

    def preamble() -> List[str]:
        run({"op": "open"}, None)
        run({"op": "set_owner"}, None)
        offered = int(run({"op": "get_backend_features"}, None) or 0)
        ack = offered & QEMU_BACKEND_FEATURES
        if args.persist:
            if offered & persist_bit:
                ack |= persist_bit
            else:
                _warn(f"backend {backend_name!r} does not offer IOTLB_PERSIST; not acked")
        run({"op": "set_backend_features", "features": ack}, None)
        return ["open", "SET_OWNER",
                "SET_BACKEND_FEATURES(" + ("|".join(wire.feature_names(ack)) or "0") + ")"]

    def run_binary() -> None:
        # A binary trace is messages only, with no expectation and nothing to record
        # per op: hand whole records to write_many() a chunk at a time (the same
        # successive write()s); at a refused record, list it and resume after it.
        nonlocal n_ops, messages, n_file
        size = wire.VHOST_MSG_SIZE
        base = 0                                 # byte offset of buf in the file
        buf = b""
        with open(path, "rb") as fp:
            while True:
                more = fp.read(size * _REPLAY_CHUNK)
                buf = buf + more if buf else more
                whole = len(buf) - len(buf) % size
                if not more and whole == 0:
                    break
                view = memoryview(buf)[:whole]
                done = 0
                while done < whole:
                    try:
                        done += dev.write_many(view[done:]) * size
                    except IOTLBError as exc:
                        done += exc.index * size
                        failed(exc, Location(offset=base + done),
                               {"op": "write", "data": bytes(view[done:done + size])})
                        done += size
                view.release()
                n = whole // size
                n_ops += n
                messages += n
                n_file += n
                progress.update(n)
                base += whole
                buf = buf[whole:]
        if buf:                                  # a truncated last record
            error = truncated_record(path, base, len(buf))
            if not args.keep_going:
                raise error
            n_file += 1
            bad.append({**Location(offset=base).as_dict(), "message": error.message})

    first = True
    n_file = 0
    try:
        if fmt == "binary" and not args.record:
            implicit = preamble()
            first = False
            run_binary()
            entries = iter(())
        for entry in entries:
            progress.update()
            n_file += 1
            if entry.error is not None:
                if not args.keep_going:
                    raise entry.error
                bad.append({**entry.where.as_dict(), "message": entry.error.message})
                continue
            if first and (fmt == "binary" or entry.op["op"] not in _SETUP_NEUTRAL):
                first = False
                if fmt == "binary" or entry.op["op"] != "open":
                    implicit = preamble()
            run(entry.op, entry.where)
    except TraceError as exc:
        raise CLIError(f"{shown}: {exc}") from None
    finally:
        progress.close()
    if first and fmt == "binary":
        implicit = preamble()
    if n_file == 0:
        _warn(f"{shown}: the trace holds no operations")

    final = _final_state(dev, backend)
    try:
        dev.check_invariants()
        invariant_error = None
    except AssertionError as exc:
        invariant_error = str(exc) or "invariant violated"
    if args.record:
        dropped = write_trace(args.record, sent)
        if dropped:
            _warn(f"--record {args.record}: the binary format keeps only messages; "
                  f"{dropped:,} ioctls dropped")
    strict_fail = bool(args.strict and failures)
    ok = invariant_error is None and not unmet and not strict_fail
    status = 2 if bad else 0 if ok else 1

    by_errno: dict = {}
    for f in failures:
        key = f["errno"] or "error"
        by_errno[key] = by_errno.get(key, 0) + 1
    if args.json:
        json.dump({
            "file": shown, "format": fmt, "backend": backend_name, "options": options,
            "kernel": dev.kernel.name, "max_iotlb_entries": dev.max_iotlb_entries,
            "recorded": recorded,
            "operations": n_ops, "messages": messages, "failed": len(failures),
            "failed_by_errno": by_errno, "bad_lines": len(bad),
            "implicit_setup": implicit, "failures": failures, "bad": bad,
            "expectations": {"checked": checked, "unmet": len(unmet), "ops": unmet},
            "strict": bool(args.strict), "ok": ok, "final": final,
            "invariants": {"ok": invariant_error is None, "error": invariant_error},
        }, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return status

    where_word = "line" if fmt == "jsonl" else "record"
    model = f"{backend_name}" + (f" ({', '.join(f'{k}={v!r}' for k, v in options.items())})"
                                 if options else "")
    if dev.max_iotlb_entries != MAX_IOTLB_ENTRIES:
        model += f", vhost_vdpa max_iotlb_entries={dev.max_iotlb_entries}"
    _out(f"replayed {shown} ({fmt}) on {model}, kernel profile {dev.kernel.name}"
         + (f" (recorded on {recorded.get('release')})" if recorded else "")
         + f": {_plural(n_ops, 'operation')} ({_plural(messages, 'message')}), "
         + f"{len(failures):,} failed"
         + (f", {_plural(len(bad), 'bad ' + where_word)} skipped"
            if args.keep_going or bad else ""))
    if checked:
        _out(f"expectations: {checked:,} ops checked, "
             + (f"all held" if not unmet else f"{len(unmet):,} not met"))
    if implicit:
        _out(f"implicit setup: {', '.join(implicit)}")

    def loc(f: dict) -> str:
        return (f"{shown}: implicit setup" if f.get("setup") else
                f"{shown}:{f['line']}" if "line" in f else
                f"{shown}: byte offset {f['offset']}" if "offset" in f else shown)

    for u in unmet[:_LIST_CAP]:
        text = "; ".join(ex.format_mismatch(m["key"], m["expected"], m["found"])
                         for m in u["mismatches"])
        _out(f"{loc(u)}: {u['op']}: NOT MET: {text}")
    if len(unmet) > _LIST_CAP:
        _out(f"... and {len(unmet) - _LIST_CAP:,} more ops whose expectations were not met")
    for f in failures[:_LIST_CAP]:
        errs = f["errno"] or "error"
        if f["cause"] and f["cause"] != f["errno"]:
            errs += f" ({f['cause']})"
        _out(f"{loc(f)}: {f['op']}: {errs}: {f['message']}")
    if len(failures) > _LIST_CAP:
        _out(f"... and {len(failures) - _LIST_CAP:,} more failures; by errno: "
             + ", ".join(f"{k} {v:,}" for k, v in sorted(by_errno.items())))
    for b in bad:
        where = f"{shown}:{b['line']}" if "line" in b else f"{shown}: byte offset {b['offset']}"
        sys.stderr.write(f"{PROG}: {where}: {b['message']} (skipped)\n")
    _out()
    head_row = ["ASID", "vhost IOTLB", "device"]
    rows = []
    for asid, a in final["asids"].items():
        vh = "not created" if a["vhost_entries"] is None else \
            f"{_plural(a['vhost_entries'], 'entry', 'entries')}, " \
            f"{format_size(a['vhost_bytes'])}" \
            if a["vhost_bytes"] else _plural(a["vhost_entries"], "entry", "entries")
        rows.append([str(asid), vh, a["device"]])
    _out(_table(head_row, rows))
    groups = ", ".join(f"{g}->AS{a}" for g, a in final["groups"].items())
    _out(f"\npinned pages: {final['pinned_pages']:,}; dirtied on unpin: "
         f"{final['dirtied_pages']:,}; groups: {groups or '-'}; "
         f"device {'open' if final['open'] else 'closed'}")
    _out(f"invariants: {'ok' if invariant_error is None else 'VIOLATED: ' + invariant_error}")
    if strict_fail:
        _out(f"--strict: {len(failures):,} operations failed")
    return status


# ======================================================================= conform
def cmd_conform(args) -> int:
    from . import conform

    def backend_spec(spec: str):
        name, _, rest = spec.partition(":")
        options = _parse_options(_split_commas(rest), "--backend") if rest else {}
        if name not in _available():
            raise _unknown_backend(name)
        return name, lambda **o: _make_backend(name, o), options

    try:
        return conform.cmd(args, backend_spec)
    except conform.ConformError as exc:
        raise CLIError(str(exc)) from None


# ======================================================================= others
def _check_bench_args(argv: List[str]) -> None:
    """``--repeat`` must be a positive int and ``--budget`` a positive number (the
    checks the bench's own parser lacks)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--repeat")
    pre.add_argument("--budget")
    known, _ = pre.parse_known_args(argv)
    if known.repeat is not None:
        try:
            ok = int(known.repeat) >= 1
        except ValueError:
            ok = False
        if not ok:
            raise CLIError(f"bench --repeat: must be a positive integer, got "
                           f"{known.repeat!r}")
    if known.budget is not None:
        try:
            value = float(known.budget)
            ok = value > 0 and value == value and value != float("inf")
        except ValueError:
            ok = False
        if not ok:
            raise CLIError(f"bench --budget: must be a positive number of seconds, got "
                           f"{known.budget!r}")


def cmd_bench(argv: List[str]) -> int:
    _check_bench_args(argv)
    try:
        from . import bench
    except ImportError as exc:
        raise CLIError(f"bench is not available in this installation ({exc})") from None
    main_fn = getattr(bench, "main", None)
    if main_fn is None:
        raise CLIError("bench is not available in this installation "
                       "(iotlb.bench has no main())")
    rc = main_fn(argv)
    return 0 if rc is None else int(rc)


def cmd_import(args) -> int:
    """``iotlb import qemu-trace|strace LOG``: :func:`iotlb.importer.cmd`."""
    from . import importer

    return importer.cmd(args, make_backend=_make_backend,
                        parse_options=lambda items: _parse_options(items, "--option"))


def cmd_scenarios(args) -> int:
    from .scenarios import SCENARIOS

    if args.json:
        json.dump([{"name": s.name, "title": s.title, "doc": s.doc}
                   for s in SCENARIOS.values()], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for s in SCENARIOS.values():
        _out(f"{s.name}  --  {s.title}")
        for ln in s.doc.splitlines():
            _out("    " + ln.strip())
        _out()
    return 0


def cmd_backends(args) -> int:
    from .backend import duplicate_backends, matrix_variants

    avail = _available()
    broken = _broken()
    dups = duplicate_backends()

    def variants(n):
        try:
            return [label for label, _ in matrix_variants(n)]
        except TypeError as exc:
            return [f"INVALID: {exc}"]
    if args.json:
        json.dump({"available": {n: f"{c.__module__}.{c.__qualname__}"
                                 for n, c in avail.items()},
                   "variants": {n: variants(n) for n in avail},
                   "broken": {n: f"{type(e).__name__}: {e}" for n, e in broken.items()},
                   "duplicates": dups},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [[n, f"{c.__module__}.{c.__qualname__}", ", ".join(variants(n))]
            for n, c in avail.items()]
    rows += [[n, f"BROKEN: {type(e).__name__}: {e}", "-"] for n, e in broken.items()]
    _out(_table(["backend", "class", "matrix variants"], rows))
    for name, decls in dups.items():
        _out()
        _out(f"DUPLICATE: {name!r} is declared by {len(decls)} installed entry points; "
             "the first on sys.path wins:")
        for d in decls:
            _out(f"  {d}")
    return 0


# ======================================================================= parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog=PROG, description="An executable model of the Linux vhost/vDPA IOTLB.",
        epilog="Exit status: 0 ok, 1 a check failed (matrix) or an invariant violation, "
               "2 bad input, 3 internal error (IOTLB_DEBUG=1 prints the traceback).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("matrix", help="scenarios x backends x IOTLB_PERSIST table",
                       description="Run the QEMU-like scenarios on every installed backend "
                       "(built-in variants: vdpa_sim set_map/dma_map, mlx5 with/without "
                       "umem_uid_0) with IOTLB_PERSIST not acked and acked, on the chosen "
                       f"kernel profiles. {QEMU_NOTE} Exit status 1 when any check "
                       "fails (each FAIL is explained under the table, in full with "
                       "--json).")
    m.add_argument("--backend", action="append", metavar="NAME[:K=V,...]",
                   help="only this backend (all its variants), or one variant with "
                        "these constructor options; repeatable")
    m.add_argument("--scenario", action="append", metavar="NAME",
                   help="only this scenario (repeatable; see `iotlb scenarios`)")
    m.add_argument("--guest-size", default="4G", metavar="SIZE",
                   help="guest RAM, e.g. 64M, 4G, 1T (default: %(default)s)")
    m.add_argument("--kernel", metavar="K[,K...]|all",
                   help="kernel profiles to run (iotlb.KERNELS; default: the newest; "
                        "'all': every one); the kernel is a column")
    m.add_argument("--policy", metavar="P[,P...]|all",
                   help="also run each kernel with these what-if policies "
                        "(iotlb.kernels.POLICIES), as rows '<kernel>+<policy>'")
    out = m.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (every failure in "
                     "full, under each cell's \"failures\")")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table "
                     "(all columns)")
    out.add_argument("--wide", action="store_true", help="all columns (errors, the full "
                     "stop/start cost, after release): wider than 100 columns")
    m.add_argument("--record", metavar="OUT",
                   help="write the trace of what was sent: a file for one trace, else a "
                        "directory with one .jsonl per cell and scenario")
    m.set_defaults(func=cmd_matrix)

    r = sub.add_parser("replay", help="replay a trace on a backend",
                       description="Replay a trace (JSON Lines of operations or a raw "
                       "stream of 72-byte vhost_msg_v2) through write()/ioctls of a "
                       "vhost-vdpa device on a backend. A trace whose first device "
                       "operation is not {\"op\": \"open\"} (and every binary trace) is "
                       "preceded by an implicit setup: open, SET_OWNER, "
                       "SET_BACKEND_FEATURES with what QEMU acks. Operations with an "
                       "\"expect\" (e.g. recorded from a real kernel by `iotlb conform "
                       "--record`) are checked. Exit status: 0 when every expectation "
                       "holds and the invariants hold; 1 when one does not (or, with "
                       "--strict, when an operation failed); 2 for bad input.")
    r.add_argument("file", metavar="FILE", help="the trace; - reads standard input")
    r.add_argument("--backend", default=None,
                   help="backend name (default: the one a recorded trace names, else "
                        "vdpa_sim)")
    r.add_argument("--kernel", default=None, metavar="PROFILE",
                   help="kernel profile of the model (default: the one a recorded "
                        "trace names, else the newest)")
    r.add_argument("--strict", action="store_true",
                   help="exit 1 when any operation fails (without it only unmet "
                        "expectations and broken invariants do)")
    r.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend constructor option (repeatable), e.g. batch_mapping=0")
    r.add_argument("--max-iotlb-entries", type=int, default=None, metavar="N",
                   help="vhost_vdpa's max_iotlb_entries module parameter: each address "
                        "space's entry limit (default: the one a recorded trace names, "
                        "else 2048); a parent's own limit is an --option, e.g. "
                        "max_iotlb_entries=N for vdpa_sim")
    pg = r.add_mutually_exclusive_group()
    pg.add_argument("--persist", dest="persist", action="store_true", default=None,
                    help="ack IOTLB_PERSIST (added to every SET_BACKEND_FEATURES)")
    pg.add_argument("--no-persist", dest="persist", action="store_false",
                    help="never ack IOTLB_PERSIST (removed from every SET_BACKEND_FEATURES)")
    r.add_argument("--format", choices=("auto", "jsonl", "binary"), default="auto")
    r.add_argument("--keep-going", action="store_true",
                   help="skip bad lines/records (counted; exit status 2 at the end)")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.add_argument("--record", metavar="OUT",
                   help="write the trace of what was sent (.bin: binary, else JSON Lines)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress indicator")
    r.set_defaults(func=cmd_replay)

    from .conform import HELP as _CONFORM_HELP, add_arguments as _conform_arguments

    c = sub.add_parser("conform", help="check the model against a real vhost-vdpa device",
                       description=_CONFORM_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _conform_arguments(c)
    c.set_defaults(func=cmd_conform)

    b = sub.add_parser("bench", help="quick side-by-side speed run (iotlb.bench)",
                       add_help=False)
    b.set_defaults(func=None)

    s = sub.add_parser("scenarios", help="list the scenarios")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_scenarios)

    from .importer import HELP as _IMPORT_HELP, add_arguments as _import_arguments

    i = sub.add_parser("import", help="a QEMU trace log or an strace log as a trace",
                       description=_IMPORT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _import_arguments(i)
    i.set_defaults(func=cmd_import)

    k = sub.add_parser("backends", help="list the installed backends")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_backends)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``iotlb`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not os.environ.get("IOTLB_DEBUG"):
        # the registry logs broken plugins; the command reports them itself
        import logging

        logging.getLogger("iotlb").addHandler(logging.NullHandler())
    try:
        if argv and argv[0] == "bench":
            return cmd_bench(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except CLIError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except ValueError as exc:
        from .trace import TraceError

        if isinstance(exc, TraceError):
            sys.stderr.write(f"{PROG}: error: {exc}\n")
            return 2
        return _internal(exc)
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:
        return _internal(exc)


def _internal(exc: BaseException) -> int:
    if os.environ.get("IOTLB_DEBUG"):
        raise exc
    sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc} "
                     "(set IOTLB_DEBUG=1 for the traceback)\n")
    return 3
