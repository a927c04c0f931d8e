"""The README's matrix and thread-model statements (issue 16): the table shown in
the README is what ``iotlb matrix`` prints, and the pure twin's thread model is
stated where users read (was: only in docs/hardening.md)."""
from __future__ import annotations

import re
from pathlib import Path

import iotlb
from iotlb import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _block_after(marker: str) -> str:
    rest = README[README.index(marker):]
    return rest.split("```\n", 2)[1]


def test_readme_matrix_block_is_the_real_output(capsys):
    block = _block_after("For a 4 GiB guest it prints")
    assert cli.main(["matrix", "--backend", "platform_iommu", "--backend", "vdpa_sim",
                     "--backend", "mlx5"]) == 0
    out = capsys.readouterr().out
    want = re.sub(r"engine \w+", f"engine {iotlb.IMPLEMENTATION}", block)
    assert out.startswith(want.rstrip("\n") + "\n"), (want, out[:len(want) + 200])
    assert max(len(ln) for ln in block.splitlines()) <= 100


def test_readme_keeps_its_two_setup_commands():
    assert ("python3 -m venv .venv && .venv/bin/pip install -q -e . && "
            ".venv/bin/iotlb matrix") in README
    assert ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
            ".venv/bin/python -m pytest -q") in README


def test_readme_states_the_thread_model():
    text = " ".join(README.split())
    assert "The pure-Python twin (`IOTLB_PUREPYTHON=1`) is not thread-safe." in text
    assert "guard a shared one with a `threading.Lock`" in text
    assert "drive each device from one thread at a time" in text
