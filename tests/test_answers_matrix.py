"""Issue 16 (answers a user can trust) and the matrix parts of issues 14 and 15, for
``iotlb matrix``: failures fail and say why, the kit and the matrix share one set of
checks, the kernel as a column, QEMU's rows named, 100 columns, one vocabulary,
the saving of skipping shown, and the small input checks.

Each test failed on the main branch this work started from (8ea2873) and passes
after it; the reason is in its docstring."""
from __future__ import annotations

import errno
import json

import pytest

import iotlb
from iotlb import IOTLBError, cli
from iotlb.backend import register, unregister
from iotlb.scenarios import SCENARIOS, GuestLayout, run_scenario
from iotlb.testing import (BackendConformance, run_conformance,
                           scenario_failures)
from iotlb_backends.vdpa_sim import VdpaSimDmaMap, VdpaSimSetMap

SMALL = "16M"
BUILTINS = ["--backend", "platform_iommu", "--backend", "vdpa_sim", "--backend", "mlx5"]


class Leaky(VdpaSimSetMap):
    """A set_map parent that never drops its maps: no reset_map, and its CLEAN_MAP
    reset keeps them -- after release the device still reaches the old memory."""

    reset_map = None

    def __init__(self, **kw):
        kw.setdefault("use_va", False)
        super().__init__(**kw)

    def compat_reset(self, flags):
        self.reset()


class Refuses(VdpaSimDmaMap):
    """A dma_map parent whose dma_map always fails (EIO): nothing ever maps."""

    def dma_map(self, asid, iova, size, pa, perm, opaque):
        raise IOTLBError(errno.EIO, "refuses")


class Crashy(VdpaSimSetMap):
    """A plugin bug: set_map divides by zero once the guest is being mapped."""

    def set_map(self, asid, tlb):
        if len(tlb):
            return 1 // 0
        return super().set_map(asid, tlb)


class Variants(VdpaSimSetMap):
    """Declares its own matrix rows."""

    matrix_variants = [("variants (pa)", {"use_va": False}),
                       ("variants (va)", {"use_va": True})]


PLUGINS = {"t16_leaky": Leaky, "t16_refuses": Refuses, "t16_crashy": Crashy,
           "t16_variants": Variants}


@pytest.fixture(autouse=True, scope="module")
def plugins():
    for name, cls in PLUGINS.items():
        register(name, cls)
    yield
    for name in PLUGINS:
        unregister(name)


def run(capsys, *args, env=None, monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.delenv("IOTLB_DEBUG", raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def matrix_json(capsys, *args):
    rc, out, err = run(capsys, "matrix", "--json", "--guest-size", SMALL, *args)
    return rc, json.loads(out)


# ============================================================ failures fail, with reasons
def test_failed_check_exits_1_and_json_ok_false(capsys):
    """Was: exit 0 and ``"ok": true`` with ``"failures": []`` (only ``"stale"`` as a
    clue) for a parent whose device keeps translating freed memory after release."""
    rc, doc = matrix_json(capsys, "--backend", "t16_leaky", "--scenario", "release_reopen")
    assert rc == 1 and doc["ok"] is False
    cell = doc["cells"][0]
    assert cell["ok"] is False and cell["failed"] == ["release_reopen"]
    f = [f for f in cell["failures"] if f["scenario"] == "release_reopen"][0]
    assert f["check"] == "translation"
    assert f["where"] == "check point 'after release', ASID 0"
    assert "still translated to their old address" in f["found"]
    assert f["expected"].startswith("the device translates the 0 mapped range(s)")
    assert isinstance(f["step"], int)
    # the kit's release check is the same rule, reported by the matrix too
    assert any(f["check"] == "contract" and f["scenario"] == "test_release_leaves_nothing"
               for f in cell["failures"])


def test_failed_check_table_says_why(capsys):
    """Was: ``FAIL: release_reopen`` with no reason anywhere in the table output."""
    rc, out, err = run(capsys, "matrix", "--guest-size", SMALL, "--backend", "t16_leaky",
                       "--scenario", "release_reopen")
    assert rc == 1
    row = [ln for ln in out.splitlines() if ln.startswith("7.2 ") and "not acked" in ln][0]
    assert "FAIL 1/1 [1]" in row
    footnote = " ".join(out[out.index("\n[1] "):].split())
    assert "release_reopen: at 'after release' ASID 0: device holds" in footnote
    assert "unmapped range(s) still translated" in footnote
    assert "matrix rows failed their checks" in err


def test_skip_verdict_is_never_safe_when_its_scenario_failed(capsys):
    """Was: ``skip re-map: safe`` on rows where every scenario FAILed (nothing was
    ever mapped, so 'translates everything' held vacuously)."""
    rc, doc = matrix_json(capsys, "--backend", "t16_refuses", "--scenario",
                          "persist_stop_start")
    assert rc == 1
    for cell in doc["cells"]:
        if cell["persist"] == "not offered":
            continue
        assert cell["skip"] == "failed" and cell["skip_safe"] is None
        assert cell["failures"][0]["found"].startswith("EIO")
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, "--backend", "t16_refuses",
                     "--scenario", "persist_stop_start")
    rows = [ln for ln in out.splitlines() if ln.startswith("7.2 ")]
    assert rows and all(" safe " not in r and " FAIL " in r for r in rows)


def test_good_backends_pass_and_exit_0(capsys):
    rc, doc = matrix_json(capsys, *BUILTINS)
    assert rc == 0 and doc["ok"] is True
    assert all(c["ok"] and c["failures"] == [] for c in doc["cells"])


# ============================================================ one set of checks
def test_kit_fails_what_the_matrix_fails():
    """Was: the kit passed a plugin (``test_release_leaves_nothing`` included) that
    the matrix failed.  Now the kit's release check and its scenario checks fail it."""
    with pytest.raises(AssertionError) as info:
        run_conformance(Leaky)
    text = str(info.value)
    assert "test_release_leaves_nothing" in text and "still translates" in text
    assert "test_scenario_release_reopen" in text
    # and the kit runs every scenario of the library, with the matrix's verdict
    assert {f"test_scenario_{n}" for n in SCENARIOS} <= set(dir(BackendConformance))


class TestLeakyIsCaughtByTheKit(BackendConformance):
    """The kit under pytest: the release check fails (asserted inverted here)."""

    def make_backend(self):
        return Leaky()

    def test_release_leaves_nothing(self):
        with pytest.raises(AssertionError, match="still translates"):
            super().test_release_leaves_nothing()

    def test_scenario_release_reopen(self):
        with pytest.raises(AssertionError, match="after release"):
            super().test_scenario_release_reopen()


def test_matrix_and_kit_share_scenario_failures():
    r = run_scenario("boot", Refuses, guest=GuestLayout(16 << 20))
    fails = scenario_failures(r)
    assert fails and {f.check for f in fails} == {"errno"}
    assert all(f.expected == "success" and f.found.startswith("EIO") for f in fails)


# ============================================================ the QEMU developer's table
def test_default_table_fits_100_columns_and_wide_has_everything(capsys):
    """Was: 173 columns."""
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, *BUILTINS)
    assert rc == 0
    assert max(len(ln) for ln in out.splitlines()) <= 100
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, "--kernel", "all",
                     "--backend", "vdpa_sim:iova_range=(0x100000,0xffffffffffff)")
    assert max(len(ln) for ln in out.splitlines()) <= 100
    rc, wide, _ = run(capsys, "matrix", "--guest-size", SMALL, "--wide", *BUILTINS)
    assert max(len(ln) for ln in wide.splitlines()) > 100
    head = [ln for ln in wide.splitlines() if ln.startswith("kernel ")][0]
    for col in ("errors userspace hits", "stop/start: unpin / re-pin / msgs",
                "after release", "skipping saves"):
        assert col in head


def test_kernel_is_a_column(capsys):
    """Issue 14: ``--kernel 6.12,7.2|all``; was: no such option (exit 2)."""
    rc, doc = matrix_json(capsys, "--kernel", "all", "--backend", "mlx5",
                          "--scenario", "stop_start")
    assert rc == 0 and doc["kernels"] == list(iotlb.KERNELS)
    assert {c["kernel"] for c in doc["cells"]} == set(iotlb.KERNELS)
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, "--kernel",
                     ",".join(iotlb.KERNELS), "--backend", "platform_iommu")
    header = [ln for ln in out.splitlines() if ln.startswith("kernel ")][0]
    assert header.split()[:2] == ["kernel", "backend"]
    for k in iotlb.KERNELS:
        assert sum(ln.startswith(f"{k} ") for ln in out.splitlines()) == 2
    rc, doc = matrix_json(capsys, "--backend", "platform_iommu", "--scenario", "boot")
    assert doc["kernels"] == [iotlb.KERNELS[-1]]          # default: the newest alone
    rc, out, err = run(capsys, "matrix", "--kernel", "5.4")
    assert rc == 2 and "unknown kernel profile '5.4'" in err


def test_policy_option(capsys):
    """``--policy``: a clear error while this build has no policy variants, rows
    ``<kernel>+<policy>`` once ``iotlb.kernels.POLICIES`` exists."""
    policies = getattr(iotlb.kernels, "POLICIES", None)
    if not policies:
        rc, out, err = run(capsys, "matrix", "--policy", "all")
        assert rc == 2 and "no policies known" in err
        return
    name = next(iter(policies))
    rc, doc = matrix_json(capsys, "--policy", name, "--backend", "vdpa_sim",
                          "--scenario", "stop_start")
    kernels = {c["kernel"] for c in doc["cells"]}
    assert {iotlb.KERNELS[-1], f"{iotlb.KERNELS[-1]}+{name}"} <= kernels
    rc, out, err = run(capsys, "matrix", "--policy", "no-such-policy")
    assert rc == 2 and "unknown policy" in err


def test_states_what_qemu_does(capsys):
    """Issues 15/16: which rows a real QEMU 10.2 produces; was: not said."""
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, "--backend", "mlx5",
                     "--scenario", "stop_start")
    flat = " ".join(out.split())
    assert "QEMU 10.2 never acks IOTLB_PERSIST: it gets the \"not acked\" rows" in flat
    assert "\"acked\" rows are what a PERSIST-aware VMM would get" in flat
    assert "kernel 7.2" in out.splitlines()[0]
    rc, doc = matrix_json(capsys, "--backend", "mlx5", "--scenario", "stop_start")
    assert doc["qemu"]["acks_persist"] is False and doc["qemu"]["version"] == "10.2"
    assert {(c["persist"], c["vmm"]) for c in doc["cells"]} == {
        ("not acked", "QEMU 10.2"), ("acked", "PERSIST-aware VMM (hypothetical)")}


def test_saving_of_skipping_is_shown(capsys):
    """Was: only in the JSON, as ``skip_cost``."""
    rc, doc = matrix_json(capsys, "--backend", "mlx5:umem_uid_0=1")
    acked = [c for c in doc["cells"] if c["persist"] == "acked"][0]
    full, skip = acked["stop_start_cost"], acked["skip_cost"]
    assert acked["skip"] == "safe"
    assert acked["skip_saving"]["pinned"] == full["pinned"] - skip["pinned"] > 0
    assert acked["skip_saving"]["messages"] == full["messages"] - skip["messages"] > 0
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, "--backend", "mlx5:umem_uid_0=1")
    row = [ln for ln in out.splitlines() if ln.startswith("7.2 ") and "  acked" in ln][0]
    s = acked["skip_saving"]
    assert f"{s['pinned']:,} / {s['messages']:,}" in row


def test_table_and_json_use_one_vocabulary(capsys):
    """Was: ``keeps maps``/``nothing`` in the table, ``maps``/``empty`` in the JSON."""
    rc, doc = matrix_json(capsys, "--scenario", "stop_start", *BUILTINS)
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, "--scenario", "stop_start",
                     "--wide", *BUILTINS)
    rows = [ln for ln in out.splitlines() if ln.startswith("7.2 ")]
    cells = [c for c in doc["cells"] if c["persist"] != "not offered"]
    assert len(rows) == len(doc["cells"])
    col = [ln for ln in out.splitlines() if ln.startswith("kernel ")][0].index(
        "after SET_STATUS(0)")
    for row, cell in zip([r for r in rows if "not offered" not in r], cells):
        assert row[col:].startswith(cell["after_set_status_0"] + "  ")
    assert "keeps maps" not in out and "nothing  " not in out


def test_iotlb_debug_prints_the_plugins_traceback(capsys, monkeypatch):
    """Was: only ``ZeroDivisionError: integer division or modulo by zero`` in the
    cell, with or without IOTLB_DEBUG."""
    rc, out, err = run(capsys, "matrix", "--guest-size", SMALL, "--backend", "t16_crashy",
                       "--scenario", "boot", env={"IOTLB_DEBUG": "1"},
                       monkeypatch=monkeypatch)
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert "in set_map" in err and "return 1 // 0" in err and "ZeroDivisionError" in err
    rc, out, err = run(capsys, "matrix", "--guest-size", SMALL, "--backend", "t16_crashy",
                       "--scenario", "boot", env={}, monkeypatch=monkeypatch)
    assert rc == 1 and "Traceback" not in err
    assert "boot: crashed" in out and "ZeroDivisionError" in out


def test_plugin_declares_its_matrix_variants(capsys):
    """Was: only the hard-coded ``VARIANTS`` dict of the built-ins."""
    rc, doc = matrix_json(capsys, "--backend", "t16_variants", "--scenario", "boot")
    assert [c["backend"] for c in doc["cells"]] == [
        "variants (pa)", "variants (pa)", "variants (va)", "variants (va)"]
    assert doc["cells"][0]["options"] == {"use_va": False}
    rc, out, _ = run(capsys, "backends")
    assert any("t16_variants" in ln and "variants (pa), variants (va)" in ln
               for ln in out.splitlines())


# ============================================================ small things
def test_record_to_a_file_name_with_several_traces_is_an_error(capsys, tmp_path):
    """Was: ``--record x.jsonl`` silently created a directory named ``x.jsonl``."""
    out = tmp_path / "x.jsonl"
    rc, _, err = run(capsys, "matrix", "--guest-size", SMALL, "--backend",
                     "platform_iommu", "--scenario", "boot", "--record", out)
    assert rc == 2 and "traces need a directory" in err and "x.jsonl" in err
    assert not out.exists()
    rc, _, err = run(capsys, "matrix", "--guest-size", SMALL, "--backend",
                     "platform_iommu", "--scenario", "boot", "--record", tmp_path / "d")
    assert rc == 0 and len(list((tmp_path / "d").iterdir())) == 2


@pytest.mark.parametrize("spec, needle", [
    ("mlx5:umem_uid_0=abc", "umem_uid_0='abc' is not a boolean"),
    ("vdpa_sim:use_va=maybe", "use_va must be a bool, got str"),
    ("vdpa_sim:nas=two", "nas='two' is not an integer"),
])
def test_backend_option_of_the_wrong_type_is_rejected(capsys, spec, needle):
    """Was: ``umem_uid_0=abc`` taken as true."""
    rc, out, err = run(capsys, "matrix", "--backend", spec)
    assert rc == 2 and needle in err and out == ""


def test_boolean_options_still_parse(capsys):
    rc, doc = matrix_json(capsys, "--backend", "mlx5:umem_uid_0=no", "--scenario", "boot")
    assert rc == 0 and doc["cells"][0]["options"] == {"umem_uid_0": False}


def test_guest_size_message_is_exact(capsys):
    """Was: ``must be at least 2M, got 4K`` for 4097 bytes."""
    rc, _, err = run(capsys, "matrix", "--guest-size", "4097")
    assert rc == 2
    assert "at least 2M" in err and "4,097 bytes" in err and "got 4K" not in err


@pytest.mark.parametrize("args, needle", [
    (["--repeat", "-1"], "--repeat: must be a positive integer"),
    (["--repeat=0"], "--repeat: must be a positive integer"),
    (["--budget", "-1"], "--budget: must be a positive number"),
    (["--budget", "nan"], "--budget: must be a positive number"),
])
def test_bench_rejects_nonpositive_repeat_and_budget(capsys, args, needle):
    """Was: accepted."""
    rc, out, err = run(capsys, "bench", *args)
    assert rc == 2 and needle in err


def test_policy_rows(capsys):
    """``--policy``: rows ``7.2+<policy>``, keyed ``7.2+P1`` in the narrow table, and
    what the policy changes against its kernel's row.  ``no-release-reset-map`` (the
    kernel before reset_map at release) leaves mlx5's user MR after release when
    PERSIST is acked: the release check fails there, and only there (exit 1)."""
    from iotlb import kernels

    assert "no-release-reset-map" in kernels.POLICIES
    rc, doc = matrix_json(capsys, "--policy", "no-release-reset-map",
                          "--backend", "mlx5:umem_uid_0=1")
    assert rc == 1 and doc["ok"] is False
    assert [c["kernel"] for c in doc["cells"]] == [
        "7.2", "7.2", "7.2+no-release-reset-map", "7.2+no-release-reset-map"]
    assert all("policy_changes" in c for c in doc["cells"] if "+" in c["kernel"])
    failed = [(c["kernel"], c["persist"]) for c in doc["cells"] if not c["ok"]]
    assert ("7.2+no-release-reset-map", "acked") in failed
    assert all("+" in k for k, _ in failed)
    rc, out, _ = run(capsys, "matrix", "--guest-size", SMALL, "--policy",
                     "no-release-reset-map", "--backend", "mlx5:umem_uid_0=1")
    assert sum(ln.startswith("7.2+P1 ") and "mlx5" in ln for ln in out.splitlines()) == 2
    assert "7.2+P1 = 7.2+no-release-reset-map: " in out
    assert "what each policy changes" in out
    assert max(len(ln) for ln in out.splitlines()) <= 100


def test_plugin_errors_recorded_by_the_model_fail_the_checks():
    """Forward-compatible: once the device model records the exceptions of parent ops
    whose result the kernel ignores (as ``plugin_errors`` on the result), the shared
    checks fail the scenario with them."""
    r = run_scenario("boot", "vdpa_sim", guest=GuestLayout(8 << 20))
    assert scenario_failures(r) == []
    r.plugin_errors = ["VdpaSimSetMap.set_map raised ZeroDivisionError: division by zero"]
    (f,) = scenario_failures(r)
    assert f.check == "crash" and "ZeroDivisionError" in f.found
