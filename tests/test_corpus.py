"""The conformance corpus (tests/corpus): every trace parses, names its rules, and replays
through the model in the four vdpa_sim configurations without a Python exception (a
kernel error -- IOTLBError -- is an answer, not a failure); the generator is
deterministic and the committed files are what it writes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from iotlb import IOTLBError
from iotlb import trace as T
from iotlb.backend import load_backend
from iotlb.vdpa import VhostVdpa

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted(CORPUS.rglob("*.jsonl"))
CONFIGS = [(use_va, bm) for use_va in (False, True) for bm in (False, True)]
WIN_LO, WIN_HI = 0x1000_0000_0000, 0x2000_0000_0000


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ops(path: Path):
    ops = []
    for entry in T.read_trace(str(path)):
        assert entry.error is None, str(entry.error)
        ops.append(entry.op)
    return ops


def test_corpus_size():
    assert len(FILES) >= 110
    hand = [f for f in FILES if f.parent == CORPUS]
    assert len(hand) >= 110
    total = sum(len(_ops(f)) for f in FILES)
    assert total <= 16000


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_trace_replays(path):
    ops = _ops(path)
    assert ops[0]["op"] == "meta" and ops[0]["rules"], "first line: meta with rules"
    assert all(isinstance(r, str) and r for r in ops[0]["rules"])
    assert ops[0].get("comment")
    assert ops[1]["op"] == "open"
    assert ops[-1]["op"] == "release"
    assert len(ops) <= 2500
    for op in ops:
        assert "expect" not in op, "expectations are recorded from the kernel, not written"
        if op["op"] in ("update", "mmap", "munmap"):
            assert WIN_LO <= op["uaddr"] < WIN_HI
    for use_va, bm in CONFIGS:
        dev = VhostVdpa(load_backend("vdpa_sim", use_va=use_va, batch_mapping=bm),
                        memlock_pages=2048)
        for op in ops:
            try:
                T.apply(dev, op)
            except IOTLBError:
                pass
        assert not dev.is_open
        dev.check_invariants()


def test_generator_is_deterministic_and_committed(tmp_path):
    gen = _load_generator()
    gen.build(str(tmp_path))
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                  if p.is_file())
    committed = sorted(p.relative_to(CORPUS) for p in CORPUS.rglob("*")
                       if p.is_file() and (p.suffix == ".jsonl" or p.name == "README.md"))
    assert made == committed
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (CORPUS / rel).read_bytes(), str(rel)


def test_every_rule_has_a_trace():
    gen = _load_generator()
    used = set()
    for fn in gen.TRACES:
        used.update(fn().rule_ids)
    assert set(gen.RULES) - {"qemu"} <= used | {"qemu"}
    assert not set(gen.RULES) - used
    for path in FILES:
        meta = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        assert meta["op"] == "meta"
