"""``iotlb replay``'s answers: exit status, expectations, --strict, stdin, empty traces
(issue 13: "a recorded trace replays with `iotlb replay`, exit 0 when every expectation
holds and 1 otherwise"; issue 16: "failures must fail")."""
import json
from pathlib import Path

from iotlb import cli

DATA = Path(__file__).resolve().parent / "data"


def _run(capsys, *argv):
    rc = cli.main(["replay", "-q", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_failures_without_expectations_exit_0_unless_strict(capsys):
    rc, out, _ = _run(capsys, str(DATA / "hand_written.jsonl"))
    assert rc == 0 and "3 failed" in out
    rc, out, _ = _run(capsys, "--strict", str(DATA / "hand_written.jsonl"))
    assert rc == 1 and "--strict: 3 operations failed" in out
    rc, out, _ = _run(capsys, "--strict", "--json", str(DATA / "hand_written.jsonl"))
    doc = json.loads(out)
    assert rc == 1 and doc["ok"] is False and doc["failed_by_errno"] == {"EFAULT": 2, "EINVAL": 1}


def test_an_expectation_of_an_error_is_an_answer_not_a_failure(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"op": "open"}\n{"op": "set_owner"}\n'
        '{"op": "set_owner", "expect": {"errno": "EBUSY"}}\n'
        '{"op": "get_vqs_count", "expect": {"ret": 0, "value": 3}}\n')
    rc, out, _ = _run(capsys, "--json", str(trace))
    doc = json.loads(out)
    assert rc == 0 and doc["ok"] and doc["failed"] == 0
    assert doc["expectations"] == {"checked": 2, "unmet": 0, "ops": []}
    trace.write_text(trace.read_text().replace('"value": 3', '"value": 4'))
    rc, out, _ = _run(capsys, str(trace))
    assert rc == 1
    assert "t.jsonl:4: GET_VQS_COUNT" in out and "value: expected" in out


def test_unmet_expectations_are_capped_then_counted(tmp_path, capsys):
    lines = ['{"op": "open"}'] + ['{"op": "get_vqs_count", "expect": {"value": 9}}'] * 25
    trace = tmp_path / "many.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    rc, out, _ = _run(capsys, str(trace))
    assert rc == 1
    assert out.count("NOT MET") == cli._LIST_CAP
    assert "... and 5 more ops whose expectations were not met" in out


def test_an_empty_trace_warns(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, out, err = _run(capsys, str(empty))
    assert rc == 0 and "holds no operations" in err


def test_memory_ops_before_open_do_not_make_the_setup_implicit(tmp_path, capsys):
    trace = tmp_path / "mem.jsonl"
    trace.write_text('{"op": "memlock", "pages": 16}\n{"op": "open"}\n{"op": "set_owner"}\n')
    rc, out, _ = _run(capsys, "--json", str(trace))
    assert rc == 0 and json.loads(out)["implicit_setup"] is None


def test_an_unknown_kernel_profile_is_bad_input(capsys):
    rc, _, err = _run(capsys, "--kernel", "5.4", str(DATA / "hand_written.jsonl"))
    assert rc == 2 and "unknown kernel profile '5.4'" in err
