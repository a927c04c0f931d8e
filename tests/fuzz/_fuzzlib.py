"""Shared helpers of the fuzz targets: a byte reader that never runs dry, the
interesting values the readers draw from, and the atheris entry point.

The targets import neither atheris nor anything outside the standard library and
``iotlb`` at module level, so ``tests/test_fuzz_corpus.py`` can replay the corpora
through the very same ``TestOneInput`` functions without atheris installed.
"""
from __future__ import annotations

import os
import sys

U64 = (1 << 64) - 1
HALF = 1 << 63

#: u64 values where the engine and the device do boundary arithmetic.
EDGES = (0, 1, 2, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0xFFFF, 0x10000,
         0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, (1 << 47) - 1, 1 << 47,
         HALF - 0x1000, HALF - 1, HALF, HALF + 1, U64 - 0x1FFF, U64 - 0x1000,
         U64 - 0xFFF, U64 - 1, U64)


class Reader:
    """Consume a fuzz input as typed fields; past the end every read is 0.

    >>> r = Reader(b"\\x01\\x02")
    >>> r.u8(), r.u8(), r.u8(), r.exhausted
    (1, 2, 0, True)
    """

    __slots__ = ("data", "pos", "n")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.n = len(self.data)

    @property
    def exhausted(self) -> bool:
        return self.pos >= self.n

    def take(self, k: int) -> bytes:
        b = self.data[self.pos:self.pos + k]
        self.pos += k
        if len(b) < k:
            b += bytes(k - len(b))
        return b

    def u8(self) -> int:
        if self.pos < self.n:
            v = self.data[self.pos]
            self.pos += 1
            return v
        self.pos += 1
        return 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def pick(self, seq):
        return seq[self.u8() % len(seq)]

    def addr(self, small_shift: int = 12) -> int:
        """A u64 biased to values that collide: small page multiples, page-unaligned
        small values, the boundary table, offsets from the boundaries, or anything."""
        k = self.u8()
        kind = k & 7
        if kind <= 2:     # small, page granular: collisions between entries
            return (self.u8() & 0x3F) << small_shift
        if kind == 3:     # small, unaligned
            return self.u16()
        if kind == 4:
            return EDGES[self.u8() % len(EDGES)]
        if kind == 5:     # near a boundary
            base = EDGES[self.u8() % len(EDGES)]
            d = self.u8() - 128
            return (base + d) & U64
        if kind == 6:
            return self.u32()
        return self.u64()

    def size(self) -> int:
        """A length: mostly a few pages, sometimes 0, huge or anything."""
        k = self.u8() & 7
        if k <= 3:
            return ((self.u8() & 0xF) + 1) << 12
        if k == 4:
            return self.u8()
        if k == 5:
            return EDGES[self.u8() % len(EDGES)]
        if k == 6:
            return (U64 - self.u16()) & U64
        return self.u64()


def run_atheris(test_one_input, skip=()) -> None:
    """``python tests/fuzz/fuzz_X.py [libFuzzer flags] [corpus dirs]``.

    Python code is instrumented with ``atheris.instrument_all()`` (every module already
    imported, ``iotlb`` included).  With ``FUZZ_SANCOV=1`` the Cython engine is expected
    to be a build compiled with ``-fsanitize=fuzzer-no-link`` (see run.sh), whose
    SanitizerCoverage counters libFuzzer then sees as well.
    """
    import atheris  # only here: the corpus replay in the test suite never needs it

    if os.environ.get("FUZZ_INSTRUMENT") == "all":
        atheris.instrument_all()
    else:
        instrument_project(atheris, skip)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def instrument_project(atheris, skip=()) -> None:
    """``atheris.instrument_all()`` restricted to the project's own code (``iotlb`` and
    the built-in backends): instrumenting sortedcontainers, numpy, enum ... as well
    makes every execution several times slower for coverage that does not matter."""
    import gc

    from atheris import instrument_bytecode as ib

    marks = (f"{os.sep}iotlb{os.sep}", f"{os.sep}backends{os.sep}",
             f"{os.sep}iotlb_backends{os.sep}")
    funcs = [o for o in gc.get_objects()
             if ib._is_instrumentable(o)
             and any(m in o.__code__.co_filename for m in marks)
             and not any(k in o.__code__.co_filename for k in skip)]
    done = 0
    for f in funcs:
        try:
            ib.instrument_func(f)
            done += 1
        except Exception as e:  # noqa: BLE001 - same policy as atheris.instrument_all
            sys.stderr.write(f"ERROR: failed to instrument {f}: {e}\n")
    sys.stderr.write(f"INFO: instrumented {done} project functions\n")


def engine_info() -> str:
    import iotlb

    mod = sys.modules.get("iotlb._engine")
    where = getattr(mod, "__file__", "-") if mod else "-"
    return f"engine={iotlb.IMPLEMENTATION} ext={where} pid={os.getpid()}"
