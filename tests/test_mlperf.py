"""`dlio-ext mlperf`: real runs written into MLPerf Storage v3's results layout, with the rule check.

A checkpoint_burst run under the real mpirun with the 8B model's 8 ranks, made to meet every
rule this machine allows (fsync per file, 10 writes then 10 cold restores, results on another
file system than the data; not the real 13 GiB a rank, nor 5 s between checkpoints), and one
that breaks rules (1 rank, no fsync, 3 checkpoints, warm restores, results beside the data); a
real kv_cache run of an Option's preset. The export is read back the way mlpstorage's
checker reads it (mlpstorage_py/submission_checker: loader.py, checks/checkpointing_checks.py,
checks/directory_checks.py, checks/helpers.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT, Done, run_cli

GiB = 1 << 30
SMALL_8B = ["workload=checkpoint_burst/llama3_8b", "workload.scale=0.0001", "workload.compute_seconds=0"]
#: what this machine cannot meet: 13 GiB a rank, 5 s between checkpoints (CLOSED's parameters)
UNREACHABLE = {"4.6.3"}
#: the checker's df header (checks/helpers.py DF_HEADER_RE)
DF_HEADER = re.compile(r"^Filesystem\s+\S+\s+Used\s+Avail\w*\s+Use%\s+Mounted on", re.MULTILINE)


@pytest.fixture(scope="module")
def other_fs() -> Iterator[Path]:
    """A directory on another file system than the pytest tmp dirs (tmpfs /dev/shm): results go
    there, data stays on the disk, where the kernel can confirm cold reads."""
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("no second file system (/dev/shm) for the results")
    d = Path(tempfile.mkdtemp(prefix="dlio-ext-mlperf-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory, other_fs: Path) -> Path:
    data = tmp_path_factory.mktemp("ckpt-data")
    done = run_cli(
        "run",
        *SMALL_8B,
        "storage=posix",
        f"storage.root={data}",
        "storage.fsync=file",
        f"run.results_dir={other_fs / 'runs'}",
        np=8,
        timeout=600,
    )
    assert done.code == 0, done.err[-3000:]
    assert done.summary()["valid"]
    return done.results


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ckpt-bad")
    done = run_cli(
        "run",
        *SMALL_8B,
        "workload.checkpoints=3",
        "workload.restores=3",
        "workload.cold_restore=none",
        "storage=posix",
        f"storage.root={base / 'data'}",
        "storage.fsync=none",
        f"run.results_dir={base / 'runs'}",
    )
    assert done.code == 0, done.err[-3000:]
    assert done.summary()["valid"]  # a valid dlio-ext run that MLPerf would not take
    return done.results


def export(run: Path, results: Path, *extra: str) -> Done:
    return run_cli(
        "mlperf", str(run), "--results", str(results), "--org", "Acme", "--system", "box-1", *extra
    )


def verdicts(out: str) -> dict[tuple[str, str], list[bool]]:
    """(rule id, name) -> met, from the command's rule lines."""
    got: dict[tuple[str, str], list[bool]] = {}
    for m in re.finditer(r"^  (met   |breaks) (\S+)\s+(\w+): ", out, re.MULTILINE):
        got.setdefault((m[2], m[3]), []).append(m[1] == "met   ")
    return got


@pytest.fixture(scope="module")
def good_export(good_run: Path, other_fs: Path) -> tuple[Done, Path]:
    results = other_fs / "submission"
    done = export(good_run, results)
    assert done.code == 0, done.err
    return done, results


# --- the rule check ------------------------------------------------------------------------------


def test_a_run_made_to_meet_the_rules_breaks_only_what_this_machine_cannot_meet(
    good_export: tuple[Done, Path],
) -> None:
    done, _ = good_export
    v = verdicts(done.out)
    assert set(v) == {
        ("dlio-ext", "runValid"),
        ("4.3.3", "checkpointModelConfigurationReq"),
        ("4.6.1", "checkpointClosedMpiProcesses"),
        ("4.6.2", "checkpointClosedAcceleratorsPerHost"),
        ("4.6.3", "checkpointClosedCheckpointParameters"),
        ("4.3.2", "checkpointFsyncVerification"),
        ("4.7.1", "checkpointInvocationStructure"),
        ("4.7.1", "checkpointCacheFlushValidation"),
        ("4.3.1", "checkpointDataSizeRatio"),
        ("4.4.2", "checkpointFilesystemCheck"),
    }
    broken = {rid for (rid, _), met in v.items() if not all(met)}
    assert broken == UNREACHABLE, done.out
    assert (
        "met    4.6.1     checkpointClosedMpiProcesses: 8 ranks; CLOSED llama3-8b runs 8 processes"
        in done.out
    )
    assert "8 ranks per host (8 on 1); CLOSED needs more than 4" in done.out
    assert "workload.scale=0.0001 (real sizes: 1); workload.compute_seconds=0.0" in done.out
    assert re.search(r"storage.fsync=file: (\d+) fsyncs for \1 checkpoint files written", done.out)
    assert "10 checkpoints written, 10 read, all complete" in done.out
    assert re.search(r"cold restores \(drop_caches|fadvise\)", done.out)
    assert "1 rule(s) broken: written under open, never closed" in done.out
    assert re.search(
        r"^OPEN: .*/open/Acme/results/box-1/checkpointing/llama3-8b/\d{8}_\d{6}$", done.out, re.M
    )


def test_a_run_meeting_every_rule_is_written_under_closed(good_run: Path, other_fs: Path) -> None:
    """The pass path of the check. No run on this machine can meet 4.6.3 (13 GiB a rank, 5 s
    between checkpoints), so this copy of the real 8-rank run has those two recorded settings
    changed, and nothing else; every other rule is judged from what the run really did."""
    run = other_fs / "meets-every-rule" / good_run.name
    shutil.copytree(good_run, run)
    path = run / "summary.json"
    s = json.loads(path.read_text())
    s["workload_config"]["scale"] = 1.0
    s["workload_config"]["compute_seconds"] = 5.0
    path.write_text(json.dumps(s))
    done = export(run, other_fs / "closed-ok", "--division", "closed")
    assert done.code == 0, done.out + done.err
    v = verdicts(done.out)
    assert v and all(all(met) for met in v.values()), done.out
    assert re.search(r"/closed/Acme/results/box-1/checkpointing/llama3-8b/\d{8}_\d{6}$", done.out, re.M), (
        done.out
    )
    assert not (other_fs / "closed-ok" / "open").exists()


def test_closed_is_refused_naming_each_broken_rule(good_run: Path, other_fs: Path) -> None:
    done = export(good_run, other_fs / "closed-try", "--division", "closed")
    assert done.code == 1, done.out + done.err
    lines = done.err.strip().splitlines()
    assert "refusing --division closed" in lines[0] and "breaks 1 MLPerf Storage v3 rule(s)" in lines[0]
    assert {ln.split()[1] for ln in lines[1:]} == UNREACHABLE
    assert all(ln.startswith("  breaks ") for ln in lines[1:])
    assert not (other_fs / "closed-try").exists()


def test_a_run_that_breaks_rules_is_named_rule_by_rule(bad_run: Path, tmp_path: Path) -> None:
    done = export(bad_run, tmp_path / "sub")
    assert done.code == 0, done.err
    v = verdicts(done.out)
    broken = {(rid, name) for (rid, name), met in v.items() if not all(met)}
    assert {
        ("4.6.1", "checkpointClosedMpiProcesses"),
        ("4.6.2", "checkpointClosedAcceleratorsPerHost"),
        ("4.3.2", "checkpointFsyncVerification"),
        ("4.7.1", "checkpointInvocationStructure"),
        ("4.3.1", "checkpointDataSizeRatio"),
        ("4.4.2", "checkpointFilesystemCheck"),
    } <= broken
    assert v[("dlio-ext", "runValid")] == [True] and v[("4.7.1", "checkpointCacheFlushValidation")] == [True]
    assert "1 ranks; CLOSED llama3-8b runs 8 processes" in done.out
    assert "storage.fsync=none: 0 fsyncs for 6 checkpoint files written" in done.out
    assert "3 checkpoints written, 3 read; CLOSED runs 10 writes then 10 reads" in done.out
    assert re.search(
        r"restores \(none \(warm.*\): up to 100.0% of a read phase came from the page cache", done.out
    )
    assert "are on one file system" in done.out
    leaf = Path(done.out.strip().splitlines()[-1].removeprefix("OPEN: "))
    assert "/open/" in str(leaf) and leaf.is_dir()
    meta = json.loads(next(leaf.glob("*_metadata.json")).read_text())
    assert meta["verification"] == "open" and meta["combined_params"]["checkpoint"]["fsync"] is False
    assert not (tmp_path / "sub" / "closed").exists()


# --- the layout and what the checker reads ----------------------------------------------------


def test_export_layout_holds_the_files_and_keys_the_checker_reads(
    good_export: tuple[Done, Path], good_run: Path
) -> None:
    done, results = good_export
    model_dir = results / "open" / "Acme" / "results" / "box-1" / "checkpointing" / "llama3-8b"
    (leaf,) = [p for p in model_dir.iterdir() if p.is_dir()]
    assert re.fullmatch(r"\d{8}_\d{6}", leaf.name)  # Rules.md 2.1.23
    assert (model_dir / "results.json").is_file()  # 2.1.22
    names = {p.name for p in leaf.iterdir()}
    for pattern in (  # 2.1.25 (submission_checker/constants.py CHECKPOINT_REQUIRED_FILES)
        r"checkpointing_run\.stdout\.log",
        r"checkpointing_run\.stderr\.log",
        r".*output\.json",
        r".*per_epoch_stats\.json",
        r".*summary\.json",
        r"dlio\.log",
    ):
        assert any(re.match(pattern, n) for n in names), pattern
    assert {p.name for p in (leaf / "dlio_config").iterdir()} == {
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    }
    (meta_name,) = [n for n in names if "metadata" in n]  # loader.find_metadata_path: one file
    assert meta_name == f"checkpointing_{leaf.name}_metadata.json"

    run = json.loads((good_run / "summary.json").read_text())
    summary = json.loads((leaf / "summary.json").read_text())
    meta = json.loads((leaf / meta_name).read_text())
    # what CheckpointingCheck reads from metadata
    args = meta["args"]
    assert meta["verification"] == "open" and "8b" in args["model"] and args["num_processes"] == 8
    assert (args["num_checkpoints_write"], args["num_checkpoints_read"]) == (10, 10)
    assert meta["combined_params"]["checkpoint"]["fsync"] is True
    assert args["checkpoint_folder"] == run["storage"]["root"] and args["results_dir"] == str(results)
    assert meta["params_dict"]["checkpoint.mode"] == "default"  # all 8 of the layout's ranks ran
    # ... and what reportgen needs for a complete record (rules/models.py ResultFilesExtractor)
    assert {"benchmark_type", "run_datetime", "num_processes", "parameters"} <= set(meta)
    assert meta["run_datetime"] == leaf.name
    # what it reads from summary.json: DLIO's keys, the figures from the run
    cb = run["checkpoint_burst"]
    assert summary["num_accelerators"] == 8 and summary["num_hosts"] == 1
    assert summary["host_memory_GB"] and summary["host_memory_GB"][0] > 0
    assert summary["metric"]["checkpoint_size_GB"] == cb["bytes_per_checkpoint"] / GiB
    writes = [c["bytes"] / GiB / c["burst_seconds"] for c in cb["write"]["per_checkpoint"]]
    assert summary["metric"]["save_checkpoint_io_mean_GB_per_second"] == pytest.approx(
        statistics.fmean(writes)
    )
    assert len(json.loads((leaf / "per_epoch_stats.json").read_text())["1"]) == 20
    start, end = datetime.fromisoformat(summary["start"]), datetime.fromisoformat(summary["end"])
    assert start.tzinfo is None and 0 < (end - start).total_seconds() < 600
    # 4.4.2: the df block the checker parses maps the data and the results to different mounts
    log = (leaf / "checkpointing_run.stdout.log").read_text()
    header = DF_HEADER.search(log)
    assert header, log
    rows = log[log.index("\n", header.end()) + 1 :].split("\n\n")[0].splitlines()
    mounts = [r.rsplit(None, 5)[-1] for r in rows]

    def mount(path: str) -> str:
        real = os.path.realpath(path)
        return max((m for m in mounts if real == m or real.startswith(m.rstrip("/") + "/")), key=len)

    assert mount(args["checkpoint_folder"]) != mount(args["results_dir"])
    # the run itself, untouched, beside the export
    assert json.loads((leaf / "dlio_ext" / "summary.json").read_text()) == run


def test_a_model_directory_takes_one_run(good_run: Path, good_export: tuple[Done, Path]) -> None:
    _, results = good_export
    again = export(good_run, results)
    assert again.code == 2 and again.out == ""
    (line,) = again.err.strip().splitlines()
    assert line.startswith("dlio-ext: error: ") and "already holds" in line and "MLPerf takes one run" in line


def test_bad_input_is_one_line(good_run: Path, tmp_path: Path) -> None:
    not_json = tmp_path / "not-json"
    not_json.mkdir()
    (not_json / "summary.json").write_text("{")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "summary.json").write_text(json.dumps({"workload": "storage_sweep", "phases": {}}))

    def argv(
        run: Path, results: Path | None = None, *extra: str, org: str = "A", system: str = "s"
    ) -> list[str]:
        return [
            str(run),
            "--results",
            str(results or tmp_path / "r"),
            "--org",
            org,
            "--system",
            system,
            *extra,
        ]

    cases = {
        "no such run directory": argv(tmp_path / "nothing"),
        "no summary.json": argv(tmp_path),
        "cannot read it as JSON": argv(not_json),
        "a storage_sweep run": argv(sweep),
        "--org 'a/b'": argv(good_run, org="a/b"),
        "--system '..'": argv(good_run, system=".."),
        "invalid choice": argv(good_run, None, "--division", "x"),
        "required: --org": [str(good_run), "--results", str(tmp_path / "r"), "--system", "s"],
        "inside the run directory": argv(good_run, good_run / "x"),
        "cannot write there": argv(good_run, Path("/proc/dlio-ext-mlperf")),
    }
    for fragment, argv in cases.items():
        done = run_cli("mlperf", *argv)
        lines = done.err.strip().splitlines()
        assert done.code == 2 and len(lines) == 1 and "Traceback" not in done.err, (fragment, done.err)
        assert lines[0].startswith("dlio-ext: error: ") and fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "r").exists()


# --- KV cache ------------------------------------------------------------------------------------


def test_kv_cache_run_goes_to_kv_cache_layout_with_its_rules(tmp_path: Path, other_fs: Path) -> None:
    run = run_cli(
        "run",
        "workload=kv_cache/llama3_8b_200u",
        "workload.users=2",
        "workload.requests_per_user=2",
        "workload.scale=0.0078125",
        "storage=posix",
        f"storage.root={tmp_path / 'kv'}",
        f"run.results_dir={other_fs / 'kv-runs'}",
    )
    assert run.code == 0, run.err[-3000:]
    done = export(run.results, other_fs / "kv-submission")
    assert done.code == 0, done.err
    v = verdicts(done.out)
    broken = {rid for (rid, _), met in v.items() if not all(met)}
    assert broken == {"6.3.1.1", "6.3.2.1"}, done.out
    assert v[("6.4.2", "kvcachePosixIoModel")] == [True, True]  # fsynced writes, cold reads
    assert "workload.users=2 (200)" in done.out and "3 trials of every Option" in done.out
    leaf = Path(done.out.strip().splitlines()[-1].removeprefix("OPEN: "))
    assert leaf.parent == other_fs / "kv-submission/open/Acme/results/box-1/kv_cache/llama3.1-8b/run"
    meta = json.loads((leaf / f"kv_cache_{leaf.name}_metadata.json").read_text())
    assert meta["benchmark_type"] == "kv_cache" and meta["parameters"]["option"] == 1
    agg = json.loads((leaf / "kvcache_run_summary.json").read_text())["options"]["1"]
    kv = run.summary()["kv_cache"]
    assert agg["aggregated_device_read_p95_ms"] == kv["read"]["max_rank_p95_ms"] > 0
    assert agg["aggregated_read_bandwidth_gbps"] == pytest.approx(
        kv["read"]["bytes"] / GiB / kv["read"]["seconds"]
    )


# --- the system description template -------------------------------------------------------------


def _has(doc: dict[str, Any], keys: dict[str, type]) -> None:
    for key, kind in keys.items():
        assert isinstance(doc.get(key), kind), (key, doc.get(key))


def test_system_template_follows_the_v3_schema() -> None:
    """docs/mlperf-system.yaml has every required key of mlpstorage's schema_validator.py with a
    value of its type and meets its cross-field rules (remap time, rack units, networking)."""
    doc = yaml.safe_load((ROOT / "docs" / "mlperf-system.yaml").read_text())
    assert set(doc) == {"system_under_test"}
    sut = doc["system_under_test"]
    assert set(sut) <= {
        "solution",
        "deployment",
        "product_nodes",
        "product_switches",
        "total_rack_units",
        "rack_power_supplies",
        "clients",
    }
    sol = sut["solution"]
    _has(
        sol, {"submission_name": str, "friendly_description": str, "architecture": dict, "capabilities": dict}
    )
    arch, caps = sol["architecture"], sol["capabilities"]
    assert arch["storage_location"] in ("remote", "local", "remote_and_local")
    assert arch["benchmark_API"] in ("file", "object") and arch["product_API"] in ("file", "object", "block")
    assert (arch["client_footprint"] == "n/a") == (arch["client_installation"] == "n/a")
    _has(
        caps,
        {
            "multi_host": bool,
            "simultaneous_write": bool,
            "simultaneous_read": bool,
            "remap_time_in_seconds": int,
        },
    )
    assert (caps["remap_time_in_seconds"] == 0) == (caps["simultaneous_write"] and caps["simultaneous_read"])
    assert sut["deployment"] in ("onprem", "cloud")
    for node in sut["product_nodes"] + sut["clients"]:
        _has(node, {"friendly_description": str, "quantity": int, "chassis": dict, "operating_system": dict})
        _has(
            node["chassis"],
            {
                "model_name": str,
                "cpu_model": str,
                "cpu_qty": int,
                "cpu_cores": int,
                "memory_capacity": int,
                "rack_units": int,
                "power": dict,
            },
        )
        assert node["networking"]  # remote storage: every node lists its networking
        for port in node["networking"]:
            assert port["type"] in ("ethernet", "infiniband", "other") and port["speed"] >= 1
        power = node["chassis"]["power"]
        assert power["min_psus_active"] <= sum(p["unit_count"] for p in power["psus_configured"])
        _has(node["operating_system"], {"name": str, "version": str})
    rus = sum(n["chassis"]["rack_units"] * n["quantity"] for n in sut["product_nodes"])
    assert sut["total_rack_units"] == rus + sum(
        s["rack_units"] * s["unit_count"] for s in sut.get("product_switches") or []
    )
