#!/usr/bin/env python3
"""The real-kernel conformance run: the corpus on real kernels, compared with the model.

    python3 tests/kernel/conformance.py [--kernel 6.1,6.12,7.2] [--config all]
                                        [--record DIR] [--doc docs/conformance.md]

For every kernel x vdpa_sim configuration (batch_mapping 0/1 x use_va 0/1) it boots
the kernel with tests/kernel/lab.py (a configuration the kernel's vdpa_sim cannot
express is skipped, and said so: 6.1 has no use_va parameter, it is always PA), and inside the guest runs
``iotlb conform --json`` over the corpus (tests/corpus) on /dev/vhost-vdpa-0: the same
command a user runs on real hardware.  It prints one PASS/FAIL line per kernel x
configuration, the differing ops of every failing trace (kernel answer, model
answer), and a closing ``conformance: N passed, M failed`` line; the exit status is 1
on any difference or failed boot.

``--record DIR`` also keeps every trace with the kernel's answers as expectations
(DIR/KERNEL/CONFIG/*.jsonl, replayable with ``iotlb replay``); ``--doc FILE`` rewrites
the results table between the markers in FILE.  Needs root and what lab.py needs
(see tests/kernel/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LAB = HERE / "lab.py"
CONFIGS = {f"b{b}v{v}": {"batch_mapping": b, "use_va": v} for b in (1, 0) for v in (0, 1)}
DEFAULT_KERNELS = ("6.1", "6.12", "7.2")
#: What a kernel whose vdpa_sim lacks a parameter does instead: before "vdpa_sim: add
#: support for user VA" (v6.3; Debian's 6.1) vdpa_sim is always PA (use_va=0).
ABSENT_PARAMETER = {"use_va": 0}
DOC_BEGIN = "<!-- conformance-table: begin (tests/kernel/conformance.py --doc) -->"
DOC_END = "<!-- conformance-table: end -->"


def config_text(name: str) -> str:
    c = CONFIGS[name]
    return f"batch_mapping={c['batch_mapping']} use_va={c['use_va']}"


def lab_parameters(kernel: str) -> dict:
    """The staged kernel's vdpa_sim module parameters (preparing it if needed)."""
    sys.path.insert(0, str(HERE))
    try:
        import lab
    finally:
        sys.path.remove(str(HERE))
    return lab.current_manifest(kernel, lab.pinned(kernel, None))["vdpa_sim_parameters"]


def cell_spec(config: str, known) -> tuple:
    """``(the --vdpa-sim text, None)`` for a configuration the kernel's vdpa_sim can
    run, or ``(None, why not)``: a parameter it lacks is dropped when its value is
    what the kernel does anyway (:data:`ABSENT_PARAMETER`), else the cell is skipped.

    >>> cell_spec("b1v0", {"batch_mapping": "", "max_iotlb_entries": ""})
    ('batch_mapping=1', None)
    >>> cell_spec("b0v1", {"batch_mapping": ""})[1]
    'vdpa_sim has no use_va parameter here (it always behaves as use_va=0)'
    """
    parts = []
    for key, value in CONFIGS[config].items():
        if key in known:
            parts.append(f"{key}={value}")
        elif ABSENT_PARAMETER.get(key) != value:
            return None, (f"vdpa_sim has no {key} parameter here (it always behaves as "
                          f"{key}={ABSENT_PARAMETER.get(key)})")
    return " ".join(parts), None


def run_cell(kernel: str, config: str, spec: str, corpus: list, venv: Path, out: Path,
             record: Path | None, timeout: float) -> dict:
    """Boot ``kernel`` with vdpa_sim ``config`` and run the corpus; the parsed JSON of
    ``iotlb conform`` (or a failure record)."""
    result = out / f"{kernel}-{config}.json"
    log = out / f"{kernel}-{config}.log"
    conform = [str(venv / "bin" / "iotlb"), "conform", "--json"]
    if record is not None:
        rec = record / kernel / config
        if rec.exists():
            shutil.rmtree(rec)
        rec.mkdir(parents=True)
        conform += ["--record", str(rec)]
    conform += [str(p) for p in corpus]
    job = " ".join(_q(a) for a in conform) + f" > {_q(str(result))}"
    rw = shared_dirs([out] + ([record] if record is not None else []), venv, corpus)
    cmd = [sys.executable, str(LAB), "run", "--kernel", kernel, "--vdpa-sim",
           spec, "--timeout", str(timeout)]
    for d in rw:
        cmd += ["--rw", d]
    cmd += ["--cwd", str(ROOT), "--", "sh", "-c", job]
    t0 = time.monotonic()
    with open(log, "wb") as fp:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=fp, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - t0
    try:
        data = json.loads(result.read_text())
    except (OSError, ValueError) as exc:
        return {"ok": False, "seconds": seconds, "boot_error": True,
                "error": f"no result ({type(exc).__name__}); lab exit {proc.returncode}; "
                         f"log:\n" + _tail(log)}
    data["seconds"] = seconds
    data["lab_exit"] = proc.returncode
    return data


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'" if re.search(r"[^\w@%+=:,./-]", s) else s


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _show(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(x if isinstance(x, str) else hex(x) for x in v) + "]"
    return "none" if v is None else str(v)


_HIDDEN = re.compile(r"/(tmp|run|var/tmp)(/|$)")


def shared_dirs(writable: list, venv: Path, corpus: list) -> list:
    """The directories the guest must get with ``--rw``: the ones it writes, and the
    project, the venv and the corpus when they lie under a path the guest hides with a
    tmpfs (/tmp, /run, /var/tmp: a CI clone may be there).  Nested ones are dropped."""
    dirs = [Path(os.path.realpath(d)) for d in writable]
    for p in [ROOT, venv] + list(corpus):
        p = Path(os.path.realpath(p))
        if _HIDDEN.match(str(p)):
            dirs.append(p if p.is_dir() else p.parent)
    out: list = []
    for d in sorted(set(dirs), key=lambda d: len(d.parts)):
        if not any(d == o or o in d.parents for o in out):
            out.append(d)
    return [str(d) for d in out]


def report(kernel: str, config: str, data: dict, max_diffs: int) -> None:
    label = f"{kernel:4} {config_text(config)}"
    if data.get("skipped"):
        print(f"SKIP {label}: {data['skipped']}")
        return
    if data.get("boot_error"):
        print(f"FAIL {label}: {data['error']}")
        return
    print_result(label, data, max_diffs)


def print_result(label: str, data: dict, max_diffs: int) -> None:
    """PASS/FAIL with the counts of one `iotlb conform --json` result, then every
    differing op (the kernel's answer and the model's), at most ``max_diffs`` a trace."""
    ok = data.get("ok") and data.get("failed") == 0
    print(f"{'PASS' if ok else 'FAIL'} {label}: {data['traces']} traces, {data['ops']} ops, "
          f"{data['agreed']} agreed, {data['differing']} differing, {data['errors']} could "
          f"not run ({data['release']}; profile {data['kernel_profile']}; kprobes: "
          f"{data['kprobes']}; {data['seconds']:.0f} s)")
    for r in data["results"]:
        if r["ok"]:
            continue
        if r["error"]:
            print(f"  {r['trace']}: {r['error']}")
        for d in r["differences"][:max_diffs]:
            where = f"line {d['line']}" if d.get("line") else f"op {d['index']}"
            print(f"  {r['trace']}:{where}: {d['op']}")
            for key in d["keys"]:
                print(f"    - kernel {key}: {_show(d['kernel'][key])}")
                print(f"    + model  {key}: {_show(d['model'].get(key))}")
        if len(r["differences"]) > max_diffs:
            print(f"  {r['trace']}: ... {len(r['differences']) - max_diffs} more")


def doc_table(cells: list) -> str:
    head = ("| kernel | Debian version | configuration | traces | ops | agreed | differing | "
            "could not run | kprobes |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for kernel, config, d in cells:
        if d.get("skipped"):
            rows.append(f"| {kernel} | - | {config_text(config)} | not applicable: "
                        f"{d['skipped']} | | | | | |")
            continue
        if d.get("boot_error"):
            rows.append(f"| {kernel} | - | {config_text(config)} | boot failed | | | | | |")
            continue
        rows.append(f"| {kernel} | {d['release']} | {config_text(config)} | {d['traces']} | "
                    f"{d['ops']} | {d['agreed']} | {d['differing']} | {d['errors']} | "
                    f"{'yes' if 'parent ops' in d['kprobes'] else d['kprobes']} |")
    return head + "\n".join(rows) + "\n\n" + trace_table(cells)


def trace_table(cells: list) -> str:
    """Per trace: its ops and, per cell, ``ok`` or the number of differing ops (``-``
    where the trace did not run, ``error`` where it could not)."""
    live = [(k, c, d) for k, c, d in cells if not d.get("boot_error")]
    if not live:
        return ""
    per: dict = {}
    for k, c, d in live:
        for r in d.get("results", []):
            name = Path(r["trace"]).name
            per.setdefault(name, {})[(k, c)] = r
    head = ("| trace | ops | " + " | ".join(f"{k} {c}" for k, c, _ in live) + " |\n"
            "|---|---|" + "---|" * len(live) + "\n")
    rows = []
    for name in sorted(per):
        runs = per[name]
        ops = sorted({r["ops"] for r in runs.values()})
        marks = []
        for k, c, _ in live:
            r = runs.get((k, c))
            marks.append("-" if r is None else "error" if r.get("error") else
                         "ok" if r["ok"] else f"**{r['differing']} differ**")
        rows.append(f"| {name} | {'/'.join(map(str, ops))} | " + " | ".join(marks) + " |")
    return ("Per trace (ops as run, including the memory set-up; `ok` = every op agreed):"
            "\n\n" + head + "\n".join(rows) + "\n")


def write_doc(path: Path, table: str) -> None:
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{path}: no {DOC_BEGIN!r} ... {DOC_END!r} markers")
    before, rest = text.split(DOC_BEGIN, 1)
    _, after = rest.split(DOC_END, 1)
    path.write_text(before + DOC_BEGIN + "\n" + table + DOC_END + after)


def add_run_args(ap, json_help: str) -> None:
    """The options every corpus run in a guest takes (this script, vduse_run.py,
    vp_vdpa_run.py): --corpus, --venv, --json, --timeout, --max-diffs."""
    ap.add_argument("--corpus", action="append",
                    help="traces or directories (default: tests/corpus)")
    ap.add_argument("--venv", default=str(ROOT / ".venv"),
                    help="the venv with iotlb installed (default: %(default)s)")
    ap.add_argument("--json", metavar="FILE", help=json_help)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per boot")
    ap.add_argument("--max-diffs", type=int, default=8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default=",".join(DEFAULT_KERNELS),
                    help="comma-separated lab kernels (default: %(default)s)")
    ap.add_argument("--config", default="all",
                    help=f"comma-separated of {', '.join(CONFIGS)} or all (b=batch_mapping, "
                         "v=use_va)")
    add_run_args(ap, json_help="write every cell's result as JSON")
    ap.add_argument("--record", metavar="DIR", help="keep the traces with the kernel's answers")
    ap.add_argument("--doc", metavar="FILE", help="rewrite the results table in FILE")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="guests booted at once (default: the number of CPUs)")
    args = ap.parse_args(argv)

    kernels = [k for k in args.kernel.split(",") if k]
    configs = list(CONFIGS) if args.config == "all" else args.config.split(",")
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r} (known: {', '.join(CONFIGS)})")
    corpus = [Path(p).resolve() for p in (args.corpus or [str(ROOT / "tests" / "corpus")])]
    for p in corpus:
        if not p.exists():
            ap.error(f"{p} does not exist")
    venv = Path(args.venv).resolve()
    if not (venv / "bin" / "iotlb").exists():
        ap.error(f"{venv}/bin/iotlb not found: install the project into that venv first")
    record = Path(args.record).resolve() if args.record else None
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
    # outside /tmp: the guest mounts a tmpfs there
    out = Path(tempfile.mkdtemp(prefix="conformance-", dir=str(ROOT)))
    todo = [(k, c) for k in kernels for c in configs]
    cells = []
    specs = {}
    for k in kernels:
        known = lab_parameters(k)
        for c in configs:
            spec, why = cell_spec(c, known)
            if spec is None:
                data = {"skipped": why}
                report(k, c, data, args.max_diffs)
                cells.append((k, c, data))
            else:
                specs[(k, c)] = spec
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_cell, k, c, specs[(k, c)], corpus, venv, out, record,
                                   args.timeout): (k, c) for k, c in todo if (k, c) in specs}
            for fut in as_completed(futures):
                kernel, config = futures[fut]
                data = fut.result()
                report(kernel, config, data, args.max_diffs)
                sys.stdout.flush()
                cells.append((kernel, config, data))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    cells.sort(key=lambda c: todo.index(c[:2]))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"kernel": k, "config": c, **d} for k, c, d in cells], indent=1, default=str))
    if args.doc:
        write_doc(Path(args.doc), doc_table(cells))
    passed = sum(1 for _k, _c, d in cells if d.get("ok") and d.get("failed") == 0)
    skipped = sum(1 for _k, _c, d in cells if d.get("skipped"))
    failed = len(cells) - passed - skipped
    print(f"conformance: {passed} passed, {failed} failed"
          + (f", {skipped} skipped (not applicable to that kernel)" if skipped else ""))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
