#!/usr/bin/env python
"""Instructions a message through ``write_many``, per built-in parent (callgrind).

    python benchmarks/instructions.py [--n N] [--stream churn,fill]
        [--parent NAME ...] [--json OUT]

The deterministic side of ``bench_replay.py``: the same two message streams
(``churn``: UPDATE page i, INVALIDATE page i - 2,000; ``fill``: UPDATEs then
INVALIDATEs, limits raised) on the same devices (:func:`bench_replay.make_device`),
each sent with one ``VhostVdpa.write_many`` call in its own process under

    valgrind --tool=callgrind --toggle-collect=<the compiled write_many's body>

so the count covers ``write_many`` and what it calls (the device core, the engine,
the parent's Python ops), not building the records or the device.  Printed:
instructions divided by the number of messages.  The count moves by a few per
cent with the allocator's layout, not with the machine's load, so it compares two
builds where timings on a shared machine cannot (``docs/performance.md`` quotes
it as "callgrind, instructions a message").  At about 1 µs a message on this
machine a parent needs roughly 9,000 instructions a message for 1 M messages/s.

Needs ``valgrind`` on PATH and the compiled engine (the pure twin has no compiled
``write_many`` to count); without either it exits 2 and says why.  Each count
takes ~10-40 s (callgrind runs ~50x slower than the CPU) at the default N = 2·10⁴.

>>> toggle_symbol()
'__pyx_pf_5iotlb_7_device_10DeviceCore_*write_many'
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_replay as R  # noqa: E402  (the streams and devices, shared)

#: callgrind's summary line: "==PID== Collected : N" (with --toggle-collect the
#: collected count is the toggled part; "I refs" says the same for Ir)
_COLLECTED = re.compile(r"==\d+== (?:Collected|I\s+refs)\s*:\s*([\d,]+)")


def toggle_symbol() -> str:
    """The C function of ``DeviceCore.write_many``'s body as Cython names it
    (``__pyx_pf_`` + the mangled module and class path + the method); only the body,
    not the ``__pyx_pw_`` wrapper, which would toggle collection off again on the
    way in."""
    return "__pyx_pf_5iotlb_7_device_10DeviceCore_*write_many"


def worker(parent: str, stream: str, n: int) -> None:
    """Build the device and the records, then one write_many (the counted part)."""
    records, limit = R.streams(n, (stream,))[stream]
    dev = R.make_device(parent, limit)
    sent = dev.write_many(records)
    if sent != len(records) // 72:
        raise SystemExit(f"{parent} {stream}: write_many took {sent} messages, "
                         f"expected {len(records) // 72}")
    print(f"@messages {sent}", flush=True)


def count(parent: str, stream: str, n: int) -> float:
    """Instructions a message of ``parent`` on ``stream``, from one callgrind run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", f"--toggle-collect={toggle_symbol()}",
               f"--callgrind-out-file={os.path.join(tmp, 'cg.out')}",
               sys.executable, os.path.abspath(__file__), "--worker", parent, stream,
               str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    sent = re.findall(r"^@messages (\d+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not sent:
        raise RuntimeError(f"{parent} {stream}: callgrind run failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    found = _COLLECTED.findall(proc.stderr)
    if not found:
        raise RuntimeError(f"{parent} {stream}: no instruction count in callgrind's "
                           f"output:\n{proc.stderr[-2000:]}")
    total = int(found[-1].replace(",", ""))
    if total == 0:
        raise RuntimeError(f"{parent} {stream}: callgrind collected nothing: "
                           f"{toggle_symbol()} not entered (a build without it?)")
    return total / int(sent[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="messages per stream")
    ap.add_argument("--stream", default="churn",
                    help="comma-separated: churn, fill (default churn)")
    ap.add_argument("--parent", action="append", choices=sorted(R.PARENTS),
                    help="a parent of bench_replay.PARENTS (default: all)")
    ap.add_argument("--json", help="write the counts here too")
    ap.add_argument("--worker", nargs=3, metavar=("PARENT", "STREAM", "N"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        parent, stream, n = args.worker
        worker(parent, stream, int(n))
        return 0
    import iotlb._engine  # noqa: F401  (refuse early when only the pure twin exists)
    if os.environ.get("IOTLB_PUREPYTHON") == "1":
        print("instructions.py: IOTLB_PUREPYTHON=1: the pure twin has no compiled "
              "write_many to count", file=sys.stderr)
        return 2
    if shutil.which("valgrind") is None:
        print("instructions.py: valgrind is not on PATH (Debian: apt install valgrind)",
              file=sys.stderr)
        return 2
    if args.n < 4000:
        print("instructions.py: --n must be at least 4,000 (the churn stream keeps "
              "2,000 entries live)", file=sys.stderr)
        return 2
    streams = [s.strip() for s in args.stream.split(",") if s.strip()]
    for s in streams:
        if s not in ("churn", "fill"):
            print(f"instructions.py: unknown stream {s!r}: churn or fill",
                  file=sys.stderr)
            return 2
    parents = args.parent or list(R.PARENTS)
    print(f"callgrind, instructions a message through write_many, {args.n:,} messages "
          f"a stream (toggle {toggle_symbol()})")
    print(f"  {'parent':<18}" + "".join(f"{s:>10}" for s in streams))
    result = {}
    for parent in parents:
        row = {s: count(parent, s, args.n) for s in streams}
        result[parent] = row
        print(f"  {parent:<18}" + "".join(f"{row[s]:>10,.0f}" for s in streams),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "counts": result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
