"""Golden traces: what real kernels answered, replayed through the model.

``tests/data/kernel/<kernel>/<config>/*.jsonl`` were recorded by the real-kernel run
(``python3 tests/kernel/conformance.py --record tests/data/kernel``, i.e. ``iotlb
conform --record`` inside the kernel lab; traces of 20 kB and more are left out to keep
the repository small).  Each starts with a meta op naming where it was recorded
(release, kernel profile, backend and options, page size) and every op carries what the
kernel answered: return, errno, GET value, VmPin, and -- recorded with kprobes -- the
handler's errno and the parent ops.  ``iotlb replay`` builds the model the meta names
and checks every expectation: this is the real-kernel check that runs without a kernel.
"""
import json
from pathlib import Path

import pytest

from iotlb import cli

GOLDEN = Path(__file__).resolve().parent / "data" / "kernel"
FILES = sorted(GOLDEN.rglob("*.jsonl")) if GOLDEN.is_dir() else []
CONFIGS = {"b1v0", "b1v1", "b0v0", "b0v1"}


def _replay(capsys, path, *extra):
    rc = cli.main(["replay", "--json", "-q", str(path), *extra])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(GOLDEN)) for p in FILES])
def test_golden_trace_holds_on_the_model(path, capsys):
    ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert ops[0]["op"] == "meta" and ops[0].get("recorded"), "a golden trace says where"
    rc, out = _replay(capsys, path)
    unmet = "\n".join(f"line {u.get('line')}: {u['op']}: {u['mismatches']}"
                      for u in out["expectations"]["ops"][:20])
    assert rc == 0 and out["ok"], f"{path.name} ({ops[0]['recorded']['release']}):\n{unmet}"
    assert out["kernel"] == ops[0]["recorded"]["profile"]
    assert out["expectations"]["checked"] == sum(1 for op in ops if "expect" in op) > 0


def test_golden_set_covers_both_kernels_and_all_configurations():
    """The golden set is what the real-kernel run recorded: every kernel x config."""
    if not FILES:
        pytest.fail(f"no golden traces under {GOLDEN}")
    cells = {p.relative_to(GOLDEN).parts[:2] for p in FILES}
    kernels = {k for k, _ in cells}
    assert {"6.12", "7.2"} <= kernels, kernels
    for k in kernels:
        assert {c for kk, c in cells if kk == k} == CONFIGS, k
    # the recording's own meta agrees with the directory it is filed under
    for p in FILES[::50]:
        rec = json.loads(p.read_text().splitlines()[0])["recorded"]
        k, c = p.relative_to(GOLDEN).parts[:2]
        assert rec["profile"] == k
        assert c == f"b{int(rec['options']['batch_mapping'])}v{int(rec['options']['use_va'])}"


def _golden(name, kernel="6.12", config="b1v0"):
    path = GOLDEN / kernel / config / name
    if not path.exists():
        pytest.fail(f"golden trace {path} missing")
    return path


def test_a_changed_answer_is_caught(tmp_path, capsys):
    """One expectation changed (EEXIST -> EINVAL): exit 1, the op and the key named."""
    src = _golden("qemu_persist_skip.jsonl")
    text = src.read_text()
    assert '"handler": "EEXIST"' in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text.replace('"handler": "EEXIST"', '"handler": "EINVAL"', 1))
    rc, out = _replay(capsys, bad)
    assert rc == 1 and not out["ok"]
    (u,) = out["expectations"]["ops"]
    assert u["mismatches"] == [{"key": "handler", "expected": "EINVAL", "found": "EEXIST"}]


def test_the_wrong_kernel_profile_is_caught(capsys):
    """A 6.12 recording of a trace whose answer differs on 7.2 fails under --kernel 7.2
    (SET_GROUP_ASID after DRIVER_OK: EBUSY only on 7.2)."""
    path = _golden("group_asid_driver_ok.jsonl")
    rc, out = _replay(capsys, path)
    assert rc == 0
    rc, out = _replay(capsys, path, "--kernel", "7.2")
    assert rc == 1 and out["kernel"] == "7.2"
    assert any(m["key"] == "errno" and m["found"] == "EBUSY"
               for u in out["expectations"]["ops"] for m in u["mismatches"])


def test_replay_reads_standard_input(monkeypatch, capsys):
    import io
    import sys

    data = _golden("qemu_persist_skip.jsonl").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc, out = _replay(capsys, "-")
    assert rc == 0 and out["file"] == "<stdin>" and out["expectations"]["checked"] > 0
