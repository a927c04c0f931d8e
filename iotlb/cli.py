"""The ``iotlb`` command (also ``python -m iotlb``).

Subcommands:

* ``iotlb matrix``   -- run the QEMU-like scenarios (:mod:`iotlb.scenarios`) on every
  installed backend × {IOTLB_PERSIST not acked, acked} and print what the device
  still translates after SET_STATUS(0), whether a VMM may skip the unmap/re-map
  cycle, the errors userspace hits and what one stop/start costs;
* ``iotlb replay FILE`` -- replay a trace (:mod:`iotlb.trace`: JSON Lines or a raw
  stream of 72-byte ``vhost_msg_v2``) on a backend and report every failure, the
  final state of both layers and the invariant check;
* ``iotlb bench``    -- the quick side-by-side speed run (:func:`iotlb.bench.main`);
* ``iotlb scenarios`` / ``iotlb backends`` -- list what is available.

Exit status: 0 success; 1 an invariant violation (or a backend crashing in a
scenario); 2 bad input (usage, unknown backend/scenario, unreadable or malformed
trace); 3 an internal error (``IOTLB_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import errno as _errno
import json
import os
import sys
from typing import Dict, List, Optional

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


def _unknown_backend(name: str) -> CLIError:
    known = ", ".join(_available()) or "(none)"
    broken = _broken()
    if name in broken:
        exc = broken[name]
        return CLIError(f"backend {name!r} is installed but broken "
                        f"({type(exc).__name__}: {exc}); available: {known}")
    return CLIError(f"unknown backend {name!r} (available: {known})")


def _make_backend(name: str, options: dict):
    from . import IOTLBError
    from .backend import UnknownBackendError, load_backend

    if name not in _available():
        raise _unknown_backend(name)
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
    if markdown:
        def esc(x):
            return str(x).replace("|", "\\|")
        out = ["| " + " | ".join(esc(h) for h in head) + " |",
               "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]

    def line(r):
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _plural(n: int, word: str, plural: Optional[str] = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def _errname(code) -> str:
    if code is None:
        return "-"
    return _errno.errorcode.get(code, str(code))


# ======================================================================= matrix
def _matrix_specs(items: Optional[List[str]]):
    from .scenarios import BackendSpec, default_specs

    available = _available()
    if not items:
        for name, exc in _broken().items():
            _warn(f"backend {name!r} is installed but broken ({type(exc).__name__}: {exc})")
        return default_specs()
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
            specs.extend(default_specs([name]))
    return specs


_DEVICE_TEXT = {"maps": "keeps maps", "identity": "identity",
                "identity (DMA MR)": "DMA MR (identity)", "empty": "nothing",
                "wrong": "wrong maps"}


_SKIP_TEXT = {"identity (DMA MR)": "DMA MR"}


def _device_text(state: Optional[str]) -> str:
    if state is None:
        return "-"
    return _DEVICE_TEXT.get(state, state)


def _cost_text(cost) -> str:
    if cost is None:
        return "-"
    return f"{cost.unpinned:,} / {cost.pinned:,} / {cost.messages}"


def _errors_text(cell) -> str:
    errs = cell.errors
    if not errs:
        return "none"
    parts = []
    for e in errs:
        code = e["cause"] or e["errno"]
        parts.append(f"{code} on {e['what']}")
    return "; ".join(parts)


def _checks_text(cell) -> str:
    if cell.error:
        return "ERROR"
    bad = []
    if cell.crashed:
        bad.append("crashed: " + ", ".join(n.split(":")[0] for n in cell.crashed))
    if cell.invariants:
        bad.append("INVARIANTS: " + ", ".join(n.split(":")[0] for n in cell.invariants))
    other = [n for n in cell.failed
             if not any(b.startswith(n) for b in cell.crashed + cell.invariants)]
    if other:
        bad.append("FAIL: " + ", ".join(other))
    ran = sum(1 for r in cell.results.values() if r.status == "ok")
    na = sum(1 for r in cell.results.values() if r.status == "n/a")
    return "; ".join(bad) if bad else f"{ran} ok" + (f", {na} n/a" if na else "")


MATRIX_HEAD = ["backend", "PERSIST", "after SET_STATUS(0)", "skip re-map",
               "errors userspace hits", "stop/start: unpin / re-pin / msgs",
               "after release", "checks"]


def _matrix_rows(cells) -> List[List[str]]:
    rows = []
    for c in cells:
        if c.error:
            rows.append([c.backend, "-", f"ERROR: {c.error}", "-", "-", "-", "-", "ERROR"])
            continue
        if c.persist == "not offered":
            rows.append([c.backend, "not offered", "-", "-", "-", "-", "-", "-"])
            continue
        safe = c.skip_safe
        if safe is None:
            skip = "-"
        elif safe:
            skip = "safe"
        else:
            skip = f"UNSAFE: {_SKIP_TEXT.get(c.skip_device, _device_text(c.skip_device))}"
        rows.append([c.backend, c.persist, _device_text(c.after_reset), skip,
                     _errors_text(c), _cost_text(c.cost), _device_text(c.after_release),
                     _checks_text(c)])
    return rows


MATRIX_LEGEND = [
    ("after SET_STATUS(0)", "what the device translates guest memory (ASID 0) through right "
     "after QEMU's reset"),
    ("skip re-map", "safe = a stop/start without INVALIDATE-all/UPDATE-all still translates "
     "every guest page at DRIVER_OK (and then costs 0 pages, 0 messages)"),
    ("errors", "the handler's errno behind the EFAULT write() returns; re-UPDATE w/o "
     "INVALIDATE = the listener replayed after SET_STATUS(0) without unmapping first"),
    ("stop/start", "one QEMU stop/start: pages unpinned / re-pinned (VA-mode parents pin "
     "nothing) / write() messages"),
    ("after release", "what the device translates through (ASID 0) once the fd is closed"),
    ("checks", "scenarios whose must-hold checks, expected errors and invariants held"),
]


def _legend(markdown: bool) -> str:
    if markdown:
        return "\n".join(f"- **{k}**: {v}" for k, v in MATRIX_LEGEND)
    import textwrap

    width = max(len(k) for k, _ in MATRIX_LEGEND) + 2
    out = []
    for k, v in MATRIX_LEGEND:
        lines = textwrap.wrap(v, 100 - width)
        out.append(k.ljust(width) + lines[0])
        out += [" " * width + ln for ln in lines[1:]]
    return "\n".join(out)


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def _record_many(out: str, traces: List[tuple]) -> None:
    """``traces``: ``[(name, ops)]``; one → a file, several → a directory."""
    from .trace import write_trace

    if not traces:
        _warn("--record: nothing was run, nothing written")
        return
    if len(traces) == 1 and not os.path.isdir(out):
        dropped = write_trace(out, traces[0][1])
        if dropped:
            _warn(f"--record {out}: the binary format keeps only messages; "
                  f"{dropped} ioctls dropped")
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--record {out}: {len(traces)} traces need a directory, and "
                       f"{out} is a file (restrict with --backend/--scenario to record "
                       "one trace to a file)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--record {out}: {exc.strerror}") from None
    for name, ops in traces:
        write_trace(os.path.join(out, name + ".jsonl"), ops)
    sys.stderr.write(f"{PROG}: recorded {len(traces)} traces in {out}/\n")


def cmd_matrix(args) -> int:
    from . import IMPLEMENTATION
    from .scenarios import SCENARIOS, GuestLayout, format_size, run_matrix

    for n in args.scenario or ():
        if n not in SCENARIOS:
            raise CLIError(f"unknown scenario {n!r} (known: {', '.join(SCENARIOS)})")
    names = list(dict.fromkeys(args.scenario)) if args.scenario else list(SCENARIOS)
    try:
        guest = GuestLayout(args.guest_size)
    except ValueError as exc:
        raise CLIError(f"--guest-size: {exc}") from None
    specs = _matrix_specs(args.backend)
    if args.record:
        parent = os.path.dirname(os.path.abspath(args.record))
        if not os.path.isdir(parent):
            raise CLIError(f"--record {args.record}: directory {parent} does not exist")
    cells = run_matrix(specs, names, guest=guest)
    if args.record:
        traces = []
        for c in cells:
            for n, r in c.results.items():
                if r.status == "ok":
                    traces.append((f"{_slug(c.backend)}.{_slug(c.persist)}.{n}", r.ops))
        _record_many(args.record, traces)
    violated = any(c.invariants or c.crashed or c.error for c in cells)
    if args.json:
        doc = {"guest": guest.as_dict(), "guest_size": guest.size,
               "scenarios": names, "engine": IMPLEMENTATION,
               "cells": [c.as_dict() for c in cells],
               "broken_backends": {k: f"{type(v).__name__}: {v}"
                                   for k, v in _broken().items()},
               "ok": not violated}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 1 if violated else 0
    title = (f"iotlb matrix: guest {format_size(guest.size)} ({len(guest.sections)} "
             f"sections, {guest.total_pages:,} pages), {len(names)} scenarios, "
             f"engine {IMPLEMENTATION}")
    rows = _matrix_rows(cells)
    if args.markdown:
        _out(f"**{title}**")
        _out()
        _out(_table(MATRIX_HEAD, rows, markdown=True))
        _out()
        _out(_legend(True))
    else:
        _out(title)
        _out()
        _out(_table(MATRIX_HEAD, rows))
        _out()
        _out(_legend(False))
    if violated:
        for c in cells:
            for msg in c.invariants + c.crashed + ([c.error] if c.error else []):
                sys.stderr.write(f"{PROG}: {c.backend} ({c.persist}): {msg}\n")
    return 1 if violated else 0


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
            "pinned_pages": state["pinned_pages"], "open": state["open"]}


def cmd_replay(args) -> int:
    from . import IOTLBError, wire
    from .scenarios import QEMU_BACKEND_FEATURES, format_size
    from .trace import (MESSAGE_OPS, Progress, apply, count_ops, describe,
                        detect_format, read_trace, write_trace)
    from .vdpa import VhostVdpa

    path = args.file
    options = _parse_options(args.option or [], "--option")
    backend = _make_backend(args.backend, options)
    fmt = args.format
    if fmt == "auto":
        fmt = detect_format(path)
    entries = read_trace(path, fmt)
    if args.record:
        parent = os.path.dirname(os.path.abspath(args.record))
        if not os.path.isdir(parent):
            raise CLIError(f"--record {args.record}: directory {parent} does not exist")
    show_progress = (not args.quiet and not args.json and sys.stderr.isatty())
    total = count_ops(path, fmt) if show_progress else 0
    progress = Progress(total, enabled=show_progress and total >= 2000)

    dev = VhostVdpa(backend)
    sent: List[dict] = []
    failures: List[dict] = []
    bad: List[dict] = []
    implicit: Optional[List[str]] = None
    n_ops = 0
    persist_bit = int(wire.BackendFeature.IOTLB_PERSIST)

    def run(op: dict, where):
        nonlocal n_ops
        if op["op"] == "set_backend_features" and args.persist is not None:
            op = dict(op)
            op["features"] = (op["features"] | persist_bit if args.persist
                              else op["features"] & ~persist_bit)
        sent.append(op)
        n_ops += 1
        try:
            return apply(dev, op)
        except IOTLBError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
            failures.append({
                **(where.as_dict() if where is not None else {"setup": True}),
                "op": describe(op), "errno": _errname(exc.errno),
                "cause": None if cause is None else _errname(cause.errno),
                "message": (cause.strerror if cause is not None else exc.strerror) or str(exc),
            })
        except (TypeError, ValueError, OverflowError) as exc:
            failures.append({**(where.as_dict() if where is not None else {"setup": True}),
                             "op": describe(op), "errno": None, "cause": None,
                             "message": f"{type(exc).__name__}: {exc}"})

    def preamble() -> List[str]:
        run({"op": "open"}, None)
        run({"op": "set_owner"}, None)
        offered = int(run({"op": "get_backend_features"}, None) or 0)
        ack = offered & QEMU_BACKEND_FEATURES
        if args.persist:
            if offered & persist_bit:
                ack |= persist_bit
            else:
                _warn(f"backend {args.backend!r} does not offer IOTLB_PERSIST; not acked")
        run({"op": "set_backend_features", "features": ack}, None)
        return ["open", "SET_OWNER",
                "SET_BACKEND_FEATURES(" + ("|".join(wire.feature_names(ack)) or "0") + ")"]

    first = True
    try:
        for entry in entries:
            progress.update()
            if entry.error is not None:
                if not args.keep_going:
                    raise entry.error
                bad.append({**entry.where.as_dict(), "message": entry.error.message})
                continue
            if first:
                first = False
                if fmt == "binary" or entry.op["op"] != "open":
                    implicit = preamble()
            run(entry.op, entry.where)
    finally:
        progress.close()
    if first and fmt == "binary":
        implicit = preamble()

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
                  f"{dropped} ioctls dropped")
    status = 1 if invariant_error else 2 if bad else 0

    messages = sum(1 for op in sent if op["op"] in MESSAGE_OPS)
    if args.json:
        json.dump({
            "file": path, "format": fmt, "backend": args.backend, "options": options,
            "operations": n_ops, "messages": messages, "failed": len(failures),
            "bad_lines": len(bad), "implicit_setup": implicit,
            "failures": failures, "bad": bad, "final": final,
            "invariants": {"ok": invariant_error is None, "error": invariant_error},
        }, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return status

    where_word = "line" if fmt == "jsonl" else "record"
    _out(f"replayed {path} ({fmt}) on {args.backend}"
         + (f" ({', '.join(f'{k}={v!r}' for k, v in options.items())})" if options else "")
         + f": {_plural(n_ops, 'operation')} ({_plural(messages, 'message')}), "
         + f"{len(failures)} failed"
         + (f", {_plural(len(bad), 'bad ' + where_word)} skipped"
            if args.keep_going or bad else ""))
    if implicit:
        _out(f"implicit setup: {', '.join(implicit)}")
    for f in failures:
        loc = (f"{path}: implicit setup" if f.get("setup") else
               f"{path}:{f['line']}" if "line" in f else f"{path}: byte offset {f['offset']}")
        errs = f["errno"] or "error"
        if f["cause"] and f["cause"] != f["errno"]:
            errs += f" ({f['cause']})"
        _out(f"{loc}: {f['op']}: {errs}: {f['message']}")
    for b in bad:
        loc = f"{path}:{b['line']}" if "line" in b else f"{path}: byte offset {b['offset']}"
        sys.stderr.write(f"{PROG}: {loc}: {b['message']} (skipped)\n")
    _out()
    head = ["ASID", "vhost IOTLB", "device"]
    rows = []
    for asid, a in final["asids"].items():
        vh = "not created" if a["vhost_entries"] is None else \
            f"{_plural(a['vhost_entries'], 'entry', 'entries')}, " \
            f"{format_size(a['vhost_bytes'])}" \
            if a["vhost_bytes"] else _plural(a["vhost_entries"], "entry", "entries")
        rows.append([str(asid), vh, a["device"]])
    _out(_table(head, rows))
    groups = ", ".join(f"{g}->AS{a}" for g, a in final["groups"].items())
    _out(f"\npinned pages: {final['pinned_pages']:,}; groups: {groups or '-'}; "
         f"device {'open' if final['open'] else 'closed'}")
    _out(f"invariants: {'ok' if invariant_error is None else 'VIOLATED: ' + invariant_error}")
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
def cmd_bench(argv: List[str]) -> int:
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
    from .scenarios import VARIANTS

    avail = _available()
    broken = _broken()
    if args.json:
        json.dump({"available": {n: f"{c.__module__}.{c.__qualname__}"
                                 for n, c in avail.items()},
                   "variants": {n: [label for label, _ in VARIANTS.get(n, [(n, {})])]
                                for n in avail},
                   "broken": {n: f"{type(e).__name__}: {e}" for n, e in broken.items()}},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [[n, f"{c.__module__}.{c.__qualname__}",
             ", ".join(label for label, _ in VARIANTS.get(n, [(n, {})]))]
            for n, c in avail.items()]
    rows += [[n, f"BROKEN: {type(e).__name__}: {e}", "-"] for n, e in broken.items()]
    _out(_table(["backend", "class", "matrix variants"], rows))
    return 0


# ======================================================================= parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog=PROG, description="An executable model of the Linux vhost/vDPA IOTLB.",
        epilog="Exit status: 0 ok, 1 invariant violation, 2 bad input, 3 internal error.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("matrix", help="scenarios x backends x IOTLB_PERSIST table",
                       description="Run the QEMU-like scenarios on every installed backend "
                       "(built-in variants: vdpa_sim set_map/dma_map, mlx5 with/without "
                       "umem_uid_0) with IOTLB_PERSIST not acked and acked.")
    m.add_argument("--backend", action="append", metavar="NAME[:K=V,...]",
                   help="only this backend (all its variants), or one variant with "
                        "these constructor options; repeatable")
    m.add_argument("--scenario", action="append", metavar="NAME",
                   help="only this scenario (repeatable; see `iotlb scenarios`)")
    m.add_argument("--guest-size", default="4G", metavar="SIZE",
                   help="guest RAM, e.g. 64M, 4G, 1T (default: %(default)s)")
    out = m.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table")
    m.add_argument("--record", metavar="OUT",
                   help="write the trace of what was sent: a file for one trace, else a "
                        "directory with one .jsonl per cell and scenario")
    m.set_defaults(func=cmd_matrix)

    r = sub.add_parser("replay", help="replay a trace on a backend",
                       description="Replay a trace (JSON Lines of operations or a raw "
                       "stream of 72-byte vhost_msg_v2) through write()/ioctls of a "
                       "vhost-vdpa device on a backend. A trace that does not start with "
                       "{\"op\": \"open\"} (and every binary trace) is preceded by an "
                       "implicit setup: open, SET_OWNER, SET_BACKEND_FEATURES with what "
                       "QEMU acks.")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--backend", default="vdpa_sim", help="backend name (default: %(default)s)")
    r.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend constructor option (repeatable), e.g. batch_mapping=0")
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
