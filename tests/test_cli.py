"""The ``iotlb`` command through its real entry points: ``python -m iotlb`` and the
installed console script, in subprocesses (the engine choice, IOTLB_PUREPYTHON, is
inherited).  Golden matrix cells are transcribed from kernel-semantics §4.5."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
SMALL = "16M"


def _script():
    cand = Path(sys.executable).parent / "iotlb"
    if cand.exists():
        return str(cand)
    return shutil.which("iotlb")


SCRIPT = _script()
VIAS = ["module"] + (["script"] if SCRIPT else [])


def cli(*args, via="module", env=None, cwd=None, check=None):
    cmd = ([sys.executable, "-m", "iotlb"] if via == "module" else [SCRIPT]) + \
        [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.pop("IOTLB_DEBUG", None)
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full_env,
                          cwd=cwd)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout[-2000:],
                                          proc.stderr[-2000:])
    return proc


def one_line_error(proc, *needles):
    """Exit 2, exactly one stderr line starting with ``iotlb: error:``, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("iotlb: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ======================================================================= matrix
@pytest.fixture(scope="module")
def matrix_json():
    proc = cli("matrix", "--json", "--guest-size", SMALL, check=0)
    return json.loads(proc.stdout)


# (label, persist) -> what the device translates ASID 0 through after SET_STATUS(0)
GOLDEN_AFTER_RESET = {
    ("platform_iommu", "not acked"): "maps", ("platform_iommu", "acked"): "maps",
    ("vdpa_sim (dma_map)", "not acked"): "identity", ("vdpa_sim (dma_map)", "acked"): "maps",
    ("vdpa_sim (set_map)", "not acked"): "identity", ("vdpa_sim (set_map)", "acked"): "maps",
    ("mlx5 (umem_uid_0)", "not acked"): "identity (DMA MR)",
    ("mlx5 (umem_uid_0)", "acked"): "maps",
    ("mlx5 (no umem_uid_0)", "not acked"): "empty", ("mlx5 (no umem_uid_0)", "acked"): "maps",
}
GOLDEN_AFTER_RELEASE = {"platform_iommu": "empty", "vdpa_sim (dma_map)": "identity",
                        "vdpa_sim (set_map)": "identity",
                        "mlx5 (umem_uid_0)": "identity (DMA MR)",
                        "mlx5 (no umem_uid_0)": "empty"}


def test_matrix_json_golden_cells(matrix_json):
    cells = {(c["backend"], c["persist"]): c for c in matrix_json["cells"]}
    assert set(GOLDEN_AFTER_RESET) <= set(cells)
    assert matrix_json["ok"] is True and matrix_json["guest_size"] == 16 << 20
    for (label, persist), want in GOLDEN_AFTER_RESET.items():
        c = cells[(label, persist)]
        assert c["after_set_status_0"] == want, (label, persist)
        # skipping the unmap/re-map is safe exactly where the device kept its maps
        assert c["skip_safe"] is (want == "maps"), (label, persist)
        # "after SET_STATUS(0) ... vhost still holds the entries => re-sending the same
        # UPDATE gets -EEXIST (EFAULT at write)", in every column
        errs = {(e["errno"], e["cause"], e["what"]) for e in c["errors"]}
        assert errs == {("EFAULT", "EEXIST", "re-UPDATE w/o INVALIDATE")}
        assert c["after_release"] == GOLDEN_AFTER_RELEASE[label]
        assert c["failed"] == [] and c["invariants"] == []
        cost = c["stop_start_cost"]
        va = label.startswith("vdpa_sim")          # vdpa_sim defaults to use_va: no pins
        assert cost["unpinned"] == cost["pinned"] == (0 if va else cost["pinned"])
        assert va or cost["pinned"] > 0
        assert c["skip_cost"]["messages"] == 0


def test_matrix_text_table(via=VIAS[-1]):
    proc = cli("matrix", "--guest-size", SMALL, "--backend", "vdpa_sim",
               "--backend", "platform_iommu", via=via, check=0)
    out = proc.stdout
    assert proc.stderr == ""
    assert out.startswith("iotlb matrix: kernel 7.2; guest 16M")
    rows = [ln for ln in out.splitlines() if ln.startswith("7.2 ")]
    assert len(rows) == 6
    sim_not = [r for r in rows if "vdpa_sim (set_map)" in r and "not acked" in r][0]
    assert "identity" in sim_not and " UNSAFE " in sim_not
    assert "EEXIST on re-UPDATE w/o INVALIDATE (every row)" in out
    sim_acked = [r for r in rows if "vdpa_sim (dma_map)" in r and "  acked" in r][0]
    assert "  maps  " in sim_acked and " safe " in sim_acked
    plat = [r for r in rows if "platform_iommu" in r]
    assert all("  maps  " in r and "10 ok, 1 n/a" in r for r in plat)
    # aligned columns: every row and the header start the PERSIST column at the same place
    header = [ln for ln in out.splitlines() if ln.startswith("kernel  backend")][0]
    col = header.index("PERSIST")
    assert all(r[col - 2:col] == "  " and r[col] != " " for r in rows)


def test_matrix_markdown_and_one_scenario():
    proc = cli("matrix", "--markdown", "--guest-size", SMALL, "--backend", "mlx5",
               "--scenario", "stop_start", check=0)
    lines = proc.stdout.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0].startswith("| kernel | backend | PERSIST | after SET_STATUS(0)")
    assert table[1].startswith("|---|")
    assert len(table) == 2 + 4
    assert any("identity (DMA MR)" in ln and "not acked" in ln for ln in table)


def test_matrix_default_guest_is_4g():
    proc = cli("matrix", "--json", "--backend", "platform_iommu", "--scenario", "stop_start",
               check=0)
    doc = json.loads(proc.stdout)
    assert doc["guest_size"] == 4 << 30
    # 4G of RAM minus the 640K..1M hole, plus the ROMs (128K + 128K) and BIOS (256K)
    pages = (4 << 30) // 4096 - (0x60000 // 4096) + (512 << 10) // 4096
    for c in doc["cells"]:
        assert c["stop_start_cost"]["unpinned"] == c["stop_start_cost"]["pinned"] == pages
        assert c["stop_start_cost"]["messages"] == 2 * (6 + 2)


def test_matrix_one_variant_with_options(tmp_path):
    proc = cli("matrix", "--json", "--guest-size", SMALL, "--scenario", "stop_start",
               "--backend", "vdpa_sim:batch_mapping=0,use_va=false", check=0)
    cells = json.loads(proc.stdout)["cells"]
    assert [c["options"] for c in cells] == [{"batch_mapping": 0, "use_va": False}] * 2
    # PA mode: the cycle now unpins and re-pins the guest
    assert cells[0]["stop_start_cost"]["pinned"] > 0


@pytest.mark.parametrize("scenario", ["shadow_cvq", "persist_stop_start", "viommu"])
def test_record_then_replay_gives_the_same_final_state(tmp_path, scenario):
    out = tmp_path / "rec"
    proc = cli("matrix", "--json", "--guest-size", SMALL, "--backend", "mlx5:umem_uid_0=1",
               "--scenario", scenario, "--record", out, check=0)
    cells = json.loads(proc.stdout)["cells"]
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted(
        f"mlx5-umem-uid-0-1.{p}.{scenario}.jsonl" for p in ("acked", "not-acked"))
    for cell in cells:
        persist = cell["persist"].replace(" ", "-")
        f = out / f"mlx5-umem-uid-0-1.{persist}.{scenario}.jsonl"
        want = cell["scenarios"][scenario]["final"]
        again = tmp_path / f"again-{persist}.jsonl"
        rep = cli("replay", f, "--backend", "mlx5", "--option", "umem_uid_0=1", "--json",
                  "--record", again, check=0)
        got = json.loads(rep.stdout)
        assert got["implicit_setup"] is None          # the trace opens the device itself
        for asid, layers in want["asids"].items():
            assert got["final"]["asids"][asid]["vhost"] == layers["vhost"]
            assert got["final"]["asids"][asid]["device_map"] == layers["device"]
        assert got["final"]["pinned_pages"] == want["pinned_pages"]
        assert got["final"]["groups"] == want["groups"]
        assert got["invariants"] == {"ok": True, "error": None}
        # what replay sent is exactly what the scenario sent
        assert again.read_text() == f.read_text()


def test_record_single_trace_to_a_file_and_binary(tmp_path):
    one = tmp_path / "boot.jsonl"
    cli("matrix", "--guest-size", SMALL, "--backend", "platform_iommu",
        "--scenario", "boot", "--record", tmp_path / "two", check=0)
    # two cells (PERSIST not acked / acked) -> a directory; take one and re-record
    src = sorted((tmp_path / "two").iterdir())[0]
    binary = tmp_path / "boot.bin"
    proc = cli("replay", src, "--backend", "platform_iommu", "--record", binary, check=0)
    assert "ioctls dropped" in proc.stderr
    assert binary.stat().st_size % 72 == 0
    a = json.loads(cli("replay", src, "--backend", "platform_iommu", "--json", check=0).stdout)
    b = json.loads(cli("replay", binary, "--backend", "platform_iommu", "--json",
                       "--record", one, check=0).stdout)
    assert b["format"] == "binary" and b["implicit_setup"][0] == "open"
    assert a["final"]["asids"]["0"]["vhost"] == b["final"]["asids"]["0"]["vhost"]
    assert one.read_text().splitlines()[0] == '{"op": "open"}'


def test_record_many_traces_into_a_file_is_an_error(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("")
    proc = cli("matrix", "--guest-size", SMALL, "--backend", "platform_iommu",
               "--scenario", "boot", "--record", f)
    one_line_error(proc, "need a directory")


# ======================================================================= replay
@pytest.mark.parametrize("via", VIAS)
def test_replay_reports_failures_with_line_numbers(via):
    proc = cli("replay", DATA / "hand_written.jsonl", via=via, check=0)
    out = proc.stdout
    assert "18 operations (9 messages), 3 failed" in out
    assert f"{DATA / 'hand_written.jsonl'}:12: UPDATE asid 0" in out and "EFAULT (EEXIST)" in out
    assert f"{DATA / 'hand_written.jsonl'}:16: INVALIDATE asid 2" in out and "(EINVAL)" in out
    assert f"{DATA / 'hand_written.jsonl'}:17: write 8 bytes: EINVAL" in out
    assert "invariants: ok" in out
    assert "implicit setup" not in out
    table = out[out.index("ASID"):]
    assert "translates every vhost entry" in table
    assert "1->AS1" in out                          # SET_GROUP_ASID(1, 1) took effect


def test_replay_binary_with_byte_offsets():
    proc = cli("replay", DATA / "messages.bin", "--backend", "mlx5", check=0)
    out = proc.stdout
    assert "(binary) on mlx5" in out
    assert "implicit setup: open, SET_OWNER, SET_BACKEND_FEATURES(" in out
    assert f"{DATA / 'messages.bin'}: byte offset 144: write UPDATE" in out
    assert "EFAULT (EEXIST)" in out and "1 failed" in out
    assert "pinned pages: 1;" in out


def test_replay_json(tmp_path):
    doc = json.loads(cli("replay", DATA / "boot_vdpa_sim.jsonl", "--json", check=0).stdout)
    assert doc["failed"] == 0 and doc["bad_lines"] == 0 and doc["operations"] == 14
    assert doc["final"]["asids"]["0"]["device"] == "translates every vhost entry"
    assert doc["final"]["asids"]["1"]["vhost"] is None
    assert doc["invariants"]["ok"] is True


def test_replay_persist_flags():
    """The fixture is a PERSIST-not-acked stop/start that skips the re-map on the
    simulator: the CLEAN_MAP reset leaves identity; --persist acks PERSIST in its
    SET_BACKEND_FEATURES and the maps survive."""
    f = DATA / "persist_stop_start.jsonl"
    plain = json.loads(cli("replay", f, "--json", check=0).stdout)
    assert plain["final"]["asids"]["0"]["device"].startswith("identity: ")
    kept = json.loads(cli("replay", f, "--json", "--persist", check=0).stdout)
    assert kept["final"]["asids"]["0"]["device"] == "translates every vhost entry"
    off = json.loads(cli("replay", f, "--json", "--no-persist", check=0).stdout)
    assert off["final"] == plain["final"]
    # PA mode: same vhost entries, pins untouched by the reset either way
    assert kept["final"]["asids"]["0"]["vhost"] == plain["final"]["asids"]["0"]["vhost"]


def test_replay_on_a_backend_without_persist_warns(tmp_path):
    proc = cli("replay", DATA / "messages.bin", "--backend", "mlx5", "--persist", check=0)
    assert "warning" not in proc.stderr                    # mlx5 offers it
    b = tmp_path / "one.bin"
    b.write_bytes((DATA / "messages.bin").read_bytes()[:72])
    proc = cli("replay", b, "--backend", "vdpa_sim", "--persist", "--json", check=0)
    assert "IOTLB_PERSIST" in json.loads(proc.stdout)["implicit_setup"][2]


def test_replay_empty_trace(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    proc = cli("replay", f, check=0)
    assert "0 operations" in proc.stdout and "device closed" in proc.stdout


def test_replay_is_quiet_when_piped(tmp_path):
    f = tmp_path / "long.jsonl"
    lines = ['{"op": "open"}', '{"op": "set_owner"}']
    lines += [json.dumps({"op": "update", "iova": hex(0x1000 * (i + 1)), "size": 4096,
                          "uaddr": hex(0x7F0000000000 + 0x1000 * i)}) for i in range(3000)]
    f.write_text("\n".join(lines) + "\n")
    proc = cli("replay", f, "--backend", "platform_iommu", check=0)
    assert proc.stderr == ""
    # vhost_vdpa's max_iotlb_entries (2048) bounds the AS: the 2049th UPDATE is
    # ENOSPC in vhost_iotlb_add_range_ctx ("vhost_iotlb: bound map allocation in
    # add_range"), EFAULT at write()
    assert "3,002 operations" in proc.stdout and "2,048 entries" in proc.stdout


def test_keep_going_counts_bad_lines():
    proc = cli("replay", DATA / "bad_field.jsonl", "--keep-going")
    assert proc.returncode == 2
    assert "1 bad line skipped" in proc.stdout
    assert f"{DATA / 'bad_field.jsonl'}:3: op 'update' has no field 'prem'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 entry, 4K" in proc.stdout                 # line 4 was replayed
    doc = json.loads(cli("replay", DATA / "out_of_range.jsonl", "--keep-going",
                         "--json").stdout)
    assert [b["line"] for b in doc["bad"]] == [3, 4] and doc["bad_lines"] == 2
    assert "perm" in doc["bad"][0]["message"] and "asid" in doc["bad"][1]["message"]
    doc = json.loads(cli("replay", DATA / "truncated.bin", "--keep-going", "--json").stdout)
    assert doc["bad"] == [{"offset": 144, "message": "truncated record (40 of 72 bytes)"}]
    assert doc["messages"] == 2


# ======================================================================= error paths
@pytest.mark.parametrize("via", VIAS)
def test_missing_file(via, tmp_path):
    one_line_error(cli("replay", tmp_path / "nope.jsonl", via=via), "nope.jsonl",
                   "No such file or directory")


def test_bad_inputs(tmp_path):
    one_line_error(cli("replay", tmp_path), "is a directory")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n")
    one_line_error(cli("replay", junk), "junk.dat", "unknown trace format")
    one_line_error(cli("replay", DATA / "truncated.bin"),
                   "truncated.bin: byte offset 144: truncated record (40 of 72 bytes)")
    one_line_error(cli("replay", DATA / "bad_field.jsonl"), "bad_field.jsonl:3: ",
                   "no field 'prem'")
    one_line_error(cli("replay", DATA / "out_of_range.jsonl"), "out_of_range.jsonl:3: ",
                   "'perm' must be in 0..255, got 256")
    one_line_error(cli("replay", DATA / "invalid_json.jsonl"), "invalid_json.jsonl:2: ",
                   "invalid JSON")
    one_line_error(cli("replay", DATA / "messages.bin", "--format", "jsonl"),
                   "messages.bin:1: ")


def test_bad_arguments(tmp_path):
    f = DATA / "boot_vdpa_sim.jsonl"
    one_line_error(cli("replay", f, "--backend", "nope"), "unknown backend 'nope'", "vdpa_sim")
    one_line_error(cli("replay", f, "--option", "batch_mapping"), "expected key=value")
    one_line_error(cli("replay", f, "--option", "frobnicate=1"), "frobnicate")
    one_line_error(cli("replay", f, "--backend", "platform_iommu", "--option", "nas=2"),
                   "nas = ngroups = 1")
    one_line_error(cli("replay", f, "--record", tmp_path / "no" / "dir" / "x.jsonl"),
                   "does not exist")
    one_line_error(cli("matrix", "--scenario", "nope"), "unknown scenario 'nope'", "boot")
    one_line_error(cli("matrix", "--guest-size", "4X"), "--guest-size", "4X")
    one_line_error(cli("matrix", "--guest-size", "1M"), "at least 2M")
    one_line_error(cli("matrix", "--backend", "nope"), "unknown backend 'nope'")
    one_line_error(cli("matrix", "--backend", "mlx5:umem_uid_0"), "expected key=value")
    # usage errors: argparse's own message, exit 2, no traceback
    for args in ([], ["frob"], ["replay"], ["matrix", "--json", "--markdown"],
                 ["replay", f, "--format", "xml"]):
        proc = cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "usage:" in proc.stderr


# ======================================================================= others
@pytest.mark.parametrize("via", VIAS)
def test_scenarios_and_backends_listings(via):
    out = cli("scenarios", via=via, check=0).stdout
    for name in ("boot", "stop_start", "persist_stop_start", "hotplug", "hotunplug",
                 "shadow_cvq", "reset_reupdate", "release_reopen", "viommu"):
        assert f"{name}  --  " in out
    names = [s["name"] for s in json.loads(cli("scenarios", "--json", via=via, check=0).stdout)]
    assert names[0] == "boot" and len(names) == 11
    doc = json.loads(cli("backends", "--json", via=via, check=0).stdout)
    assert {"platform_iommu", "vdpa_sim", "mlx5"} <= set(doc["available"])
    assert doc["variants"]["vdpa_sim"] == ["vdpa_sim (set_map)", "vdpa_sim (dma_map)"]
    assert "--version" in cli("--help", via=via, check=0).stdout
    assert cli("--version", via=via, check=0).stdout.startswith("iotlb ")


def test_module_and_script_print_the_same():
    if not SCRIPT:
        pytest.skip("console script not installed")
    a = cli("matrix", "--guest-size", "8M", "--backend", "platform_iommu", check=0).stdout
    b = cli("matrix", "--guest-size", "8M", "--backend", "platform_iommu", via="script",
            check=0).stdout
    assert a == b


def test_bench_delegates():
    proc = cli("bench", "--help", check=0)
    assert "usage: iotlb bench" in proc.stdout
    code = ("import sys; sys.modules['iotlb.bench'] = None; from iotlb.cli import main; "
            "raise SystemExit(main(['bench']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    one_line_error(proc, "bench is not available")


def test_internal_error_is_one_line_exit_3():
    code = ("import iotlb.testing as t; t.contract_failures = lambda *a, **k: 1 / 0; "
            "from iotlb.cli import main; raise SystemExit(main(['matrix']))")
    env = {k: v for k, v in os.environ.items() if k != "IOTLB_DEBUG"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 3
    assert proc.stderr.startswith("iotlb: internal error: ZeroDivisionError")
    assert "Traceback" not in proc.stderr


# ======================================================================= plugins
PLUGIN = textwrap.dedent('''
    """Test plugins: a tidy one (no reset_map: PERSIST not offered) and a vandal that
    breaks the vhost IOTLB it is handed in set_map (an invariant violation)."""
    from iotlb_backends.vdpa_sim import VdpaSimSetMap

    class Tidy(VdpaSimSetMap):
        reset_map = None

    class Vandal(VdpaSimSetMap):
        def __init__(self, **kw):
            kw.setdefault("use_va", False)
            super().__init__(**kw)

        def set_map(self, asid, tlb):
            super().set_map(asid, tlb)
            tlb.unmap()
''')


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    (root / "iotlb_cli_test_plugins.py").write_text(PLUGIN)
    info = root / "iotlb_cli_test_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: iotlb-cli-test-plugins\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[iotlb.backends]\n"
        "tidy = iotlb_cli_test_plugins:Tidy\n"
        "vandal = iotlb_cli_test_plugins:Vandal\n"
        "broken = iotlb_cli_test_plugins_missing:Nothing\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(root),
                                                       os.environ.get("PYTHONPATH")]))}
    return env


def test_installed_plugins_appear_automatically(plugin_path):
    doc = json.loads(cli("backends", "--json", env=plugin_path, check=0).stdout)
    assert {"tidy", "vandal"} <= set(doc["available"]) and "broken" in doc["broken"]
    proc = cli("matrix", "--json", "--guest-size", SMALL, "--backend", "tidy",
               "--scenario", "stop_start", env=plugin_path, check=0)
    cells = json.loads(proc.stdout)["cells"]
    assert [(c["backend"], c["persist"]) for c in cells] == [
        ("tidy", "not acked"), ("tidy", "not offered")]
    assert cells[0]["after_set_status_0"] == "identity"
    text = cli("matrix", "--guest-size", SMALL, "--backend", "tidy", env=plugin_path,
               check=0).stdout
    assert any(ln.startswith("7.2     tidy") and "not offered" in ln
               for ln in text.splitlines())
    one_line_error(cli("replay", DATA / "messages.bin", "--backend", "broken",
                       env=plugin_path), "installed but broken")


def test_invariant_violation_exits_1(plugin_path):
    proc = cli("replay", DATA / "boot_vdpa_sim.jsonl", "--backend", "vandal",
               env=plugin_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "invariants: VIOLATED: " in proc.stdout
    doc = json.loads(cli("replay", DATA / "boot_vdpa_sim.jsonl", "--backend", "vandal",
                         "--json", env=plugin_path).stdout)
    assert doc["invariants"]["ok"] is False
    proc = cli("matrix", "--guest-size", SMALL, "--backend", "vandal", "--scenario", "boot",
               env=plugin_path)
    assert proc.returncode == 1
    assert "FAIL 1/1 [1]" in proc.stdout
    assert "boot: at 'DRIVER_OK': invariant violated: " in proc.stdout
    assert "Traceback" not in proc.stderr


# ======================================================================= chunked binary
def _refusals_trace(n=9000):
    """UPDATE page i / INVALIDATE page i-64, with refused records at chunk edges
    (4,096 records a chunk in cmd_replay): a duplicate UPDATE (EEXIST), a size-0
    UPDATE and an unknown type (EINVAL), and one as the very last record."""
    from iotlb.wire import VHOST_IOTLB_INVALIDATE as INV
    from iotlb.wire import VHOST_IOTLB_UPDATE as UPD
    from iotlb.wire import encode
    bad = {0: encode(UPD, 0, 0, 0), 4095: None, 4096: None, 8191: encode(99, 0, 4096, 0),
           n - 1: None}
    out = []
    for i in range(n):
        if i in bad:
            p = (i - 1) & ~1                   # an even page, still mapped
            out.append(bad[i] or encode(UPD, 0x1000 * p, 0x1000, 0x1000 * p, 3))
        elif i % 2:
            out.append(encode(INV, 0x1000 * max(i - 65, 0), 0x1000))
        else:
            out.append(encode(UPD, 0x1000 * i, 0x1000, 0x1000 * i, 3))
    return b"".join(out)


@pytest.mark.parametrize("backend", ["vdpa_sim", "platform_iommu", "mlx5"])
@pytest.mark.parametrize("tail", [b"", b"\x02" * 40])
def test_binary_replay_in_chunks_matches_per_record(tmp_path, backend, tail):
    # cmd_replay hands a binary trace to write_many() in chunks unless --record asks
    # for every op: both must report the same failures, counts and final state
    trace = tmp_path / "t.bin"
    trace.write_bytes(_refusals_trace() + tail)
    args = ["replay", trace, "--backend", backend, "--json", "--keep-going"]
    chunked = json.loads(cli(*args).stdout)
    per_op = json.loads(cli(*args, "--record", tmp_path / "r.bin").stdout)
    assert chunked == per_op
    # record 1: INVALIDATE before any AS exists (record 0 was refused) is EINVAL
    assert [(f["offset"] // 72, f["errno"], f["cause"]) for f in chunked["failures"]] == [
        (0, "EINVAL", None), (1, "EFAULT", "EINVAL"), (4095, "EFAULT", "EEXIST"),
        (4096, "EFAULT", "EEXIST"), (8191, "EFAULT", "EINVAL"), (8999, "EFAULT", "EEXIST")]
    assert chunked["messages"] == 9000
    assert chunked["bad"] == ([{"offset": 9000 * 72,
                                "message": "truncated record (40 of 72 bytes)"}]
                              if tail else [])


def test_replay_max_iotlb_entries(tmp_path):
    # vhost_vdpa's module parameter is --max-iotlb-entries; vdpa_sim's own limit (its
    # module parameter of the same name) is a backend --option: 3,000 live entries
    # need both raised
    from iotlb.wire import VHOST_IOTLB_UPDATE as UPD
    from iotlb.wire import encode
    trace = tmp_path / "fill.bin"
    trace.write_bytes(b"".join(encode(UPD, i << 12, 4096, i << 12, 3) for i in range(3000)))
    runs = {
        "default": [],
        "vhost only": ["--max-iotlb-entries", "4096"],
        "both": ["--max-iotlb-entries", "4096", "--option", "max_iotlb_entries=4096"],
        "sim only": ["--option", "max_iotlb_entries=4096"],
    }
    got = {}
    for name, extra in runs.items():
        doc = json.loads(cli("replay", trace, "--json", *extra, check=0).stdout)
        got[name] = (doc["max_iotlb_entries"], doc["failed"], doc["failed_by_errno"])
    assert got == {"default": (2048, 952, {"EFAULT": 952}),
                   "vhost only": (4096, 952, {"EFAULT": 952}),
                   "both": (4096, 0, {}),
                   "sim only": (2048, 952, {"EFAULT": 952})}
    out = cli("replay", trace, *runs["both"], check=0).stdout
    assert "vhost_vdpa max_iotlb_entries=4096" in out.splitlines()[0]
    assert "invalid int value" in cli("replay", trace, "--max-iotlb-entries", "x",
                                      check=2).stderr


def test_replay_keeps_no_per_run_dirty_record(tmp_path, monkeypatch, capsys):
    # a vIOMMU unpins a new writable run per INVALIDATE: the replay counts the pages
    # dirtied (set_page_dirty_lock in unpin_user_pages_dirty_lock) and keeps no
    # record per run, which would grow with the messages
    import iotlb.cli
    import iotlb.vdpa
    from iotlb.wire import VHOST_IOTLB_INVALIDATE as INV
    from iotlb.wire import VHOST_IOTLB_UPDATE as UPD
    from iotlb.wire import encode
    made = []

    class Spy(iotlb.vdpa.VhostVdpa):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(iotlb.vdpa, "VhostVdpa", Spy)
    trace = tmp_path / "churn.bin"
    # 300 pages, RW except every third RO; each unmapped 8 messages later
    trace.write_bytes(b"".join(
        encode(UPD, i << 12, 4096, i << 12, 1 if i % 3 == 0 else 3)
        + (encode(INV, (i - 8) << 12, 4096) if i >= 8 else b"") for i in range(300)))
    assert iotlb.cli.main(["replay", str(trace), "--backend", "platform_iommu",
                           "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (dev,) = made
    writable_unmapped = sum(1 for i in range(292) if i % 3)
    final = doc["final"]
    assert final["dirtied_pages"] == dev.dirtied_pages == writable_unmapped == 194
    assert final["pinned_pages"] == 8 and doc["failed"] == 0
    assert dev.usermem.record_dirty is False and dev.usermem.dirtied == {}
