"""How runs end when something goes wrong: signals, a failing rank, a full disk, a read-only mount,
two runs on one directory. Real mpirun, real tmpfs and bind mounts (the tests run as root)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PY, ROOT, mpi_cmd, run_cli

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PYTHONPATH": str(ROOT),
}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that fills up."""
    d = tmp_path / "small"
    d.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d))
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _start(args: list[str], np: int | None, tmp_path: Path) -> subprocess.Popen:
    cmd = [PY, "-m", "dlio_ext.cli", "run", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))} | ENV
    if np:
        cmd, mpi_env = mpi_cmd(np, cmd)
        env |= mpi_env
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "out").open("w"),
        stderr=(tmp_path / "err").open("w"),
    )


def _wait_for(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.1)


def _long_sweep(tmp_path: Path) -> list[str]:
    return [
        f"run.dir={tmp_path / 'run'}",
        f"storage.root={tmp_path / 'data'}",
        "workload.objects_per_rank=400000",
        "workload.object_size=4096",
        "run.progress_interval=0.5",
    ]


def _in_write_phase(tmp_path: Path) -> bool:
    return "[write]" in (tmp_path / "err").read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_a_run_with_128_plus_signal_and_says_where_its_data_is(tmp_path, sig):
    p = _start(_long_sweep(tmp_path), None, tmp_path)
    try:
        _wait_for(lambda: _in_write_phase(tmp_path))
        p.send_signal(sig)
        code = p.wait(timeout=30)
    finally:
        p.kill()
    err = (tmp_path / "err").read_text()
    assert code == 128 + sig, err
    name = signal.Signals(sig).name
    lines = [ln for ln in err.splitlines() if ln.startswith("dlio-ext:")]
    assert len(lines) == 1, err
    assert f"interrupted by {name} during phase write" in lines[0]
    assert f"its data is left in {tmp_path / 'data'}" in lines[0]
    assert "Traceback" not in err
    reason = (tmp_path / "run" / "INCOMPLETE").read_text()
    assert f"interrupted by {name} during phase write" in reason
    assert not (tmp_path / "run" / "summary.json").exists()


def test_sigterm_to_mpirun_ends_every_rank_and_marks_the_run(tmp_path):
    p = _start(_long_sweep(tmp_path), 2, tmp_path)
    t0 = time.monotonic()
    try:
        _wait_for(lambda: _in_write_phase(tmp_path))
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=30)
    finally:
        p.kill()
    assert time.monotonic() - t0 < 30
    # Open MPI's launcher answers the signal itself (exit 1, output cut); the ranks leave the reason
    assert code != 0
    reason = (tmp_path / "run" / "INCOMPLETE").read_text()
    assert "interrupted by SIGTERM" in reason and str(tmp_path / "data") in reason
    assert not (tmp_path / "run" / "summary.json").exists()


@needs_root
def test_rank0_results_dir_on_a_full_disk_ends_the_job_at_once(small_fs, tmp_path):
    with (small_fs / "fill").open("wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * (1 << 16))
    t0 = time.monotonic()
    d = run_cli(
        "run", f"run.results_dir={small_fs / 'res'}", f"storage.root={tmp_path / 'data'}", np=2, timeout=60
    )
    assert time.monotonic() - t0 < 30
    assert d.code == 2, d.err
    lines = [ln for ln in d.err.splitlines() if ln.startswith("dlio-ext:")]
    assert len(lines) == 1 and "No space left on device" in lines[0], d.err
    assert "Traceback" not in d.err
    assert not (tmp_path / "data").exists()


@needs_root
def test_rank0_failing_after_the_run_ends_the_job_with_one_line(small_fs, tmp_path):
    """The results disk fills up mid-run (a real tmpfs): rank 0 cannot write the results; every rank
    still ends within seconds, the failure is one line, and the run stays marked INCOMPLETE."""
    p = _start(
        [
            f"run.dir={small_fs / 'run'}",
            f"storage.root={tmp_path / 'data'}",
            "workload.objects_per_rank=60000",
            "workload.object_size=4096",
            "workload.phases=[write]",
            "run.progress_interval=0.5",
        ],
        2,
        tmp_path,
    )
    try:
        _wait_for(lambda: _in_write_phase(tmp_path))
        with (small_fs / "fill").open("wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
        t0 = time.monotonic()
        code = p.wait(timeout=120)
    finally:
        p.kill()
    err = (tmp_path / "err").read_text()
    assert time.monotonic() - t0 < 60
    assert code not in (0, 1), err  # not a valid run, not an invalid one: a failed one
    lines = [ln for ln in err.splitlines() if ln.startswith("dlio-ext:")]
    assert len(lines) == 1 and "no space left on device" in lines[0], err
    assert "Traceback" not in err
    assert (small_fs / "run" / "INCOMPLETE").exists()
    assert not (small_fs / "run" / "summary.json").exists()


def test_two_runs_on_one_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    first = _start(
        [f"run.dir={run_dir}", f"storage.root={tmp_path / 'data1'}"]
        + ["workload.objects_per_rank=100000", "workload.object_size=4096", "run.progress_interval=0.5"],
        None,
        tmp_path,
    )
    try:
        _wait_for(lambda: _in_write_phase(tmp_path))
        second = run_cli("run", f"run.dir={run_dir}", f"storage.root={tmp_path / 'data2'}")
        assert second.code == 2
        lines = [ln for ln in second.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "is in use by another run" in lines[0], second.err
        assert not (tmp_path / "data2").exists()
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
    # and once it is done, its results are not overwritten either
    third = run_cli("run", f"run.dir={run_dir}", f"storage.root={tmp_path / 'data3'}")
    assert third.code == 2 and "already holds a run's results" in third.err
    assert (run_dir / "summary.json").is_file()


@needs_root
@pytest.mark.parametrize("workload", ["storage_sweep", "checkpoint_burst/llama3_8b"])
def test_disk_full_is_named(small_fs, tmp_path, workload):
    args = ["run", f"workload={workload}", f"run.results_dir={tmp_path}", f"storage.root={small_fs}"]
    args += ["run.preflight=false"]  # the point is to fill the disk
    if workload == "storage_sweep":
        args += ["workload.objects_per_rank=64", "workload.object_size=131072", "workload.phases=[write]"]
    else:
        args += ["workload.checkpoints=1", "workload.restores=0", "workload.compute_seconds=0"]
    d = run_cli(*args, np=2)
    assert d.code == 1, d.err
    s = d.summary()
    assert s["valid"] is False
    kinds = s["counters"]["errors_by_kind"]
    assert kinds.get("no_space", 0) > 0, s["counters"]
    assert s["counters"]["errors"] == s["errors"] == sum(p["errors"] for p in s["phases"].values())
    assert any("no space left on device" in r for r in s["invalid_reasons"])
    out = d.out + d.err
    assert f"no space left on device: {kinds['no_space']} of " in out
    assert f"(data in {small_fs})" in out
    assert " written by rank 0" not in out  # a failed checkpoint is never called written


def test_a_config_error_on_one_rank_only_ends_every_rank(tmp_path):
    """The S3 bucket exported on one rank's host only (mpirun forwards no variable by itself):
    the rank that lacks it must not leave the others waiting in a collective."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))} | ENV
    cli = [PY, "-m", "dlio_ext.cli", "run", "storage=s3", f"run.results_dir={tmp_path / 'res'}"]
    cmd, mpi_env = mpi_cmd(1, ["env", "DLIO_EXT_S3_BUCKET=b"])
    env |= mpi_env
    cmd += ["AWS_ENDPOINT_URL=http://127.0.0.1:9", *cli, ":", "-np", "1"]
    cmd += ["env", "AWS_ENDPOINT_URL=http://127.0.0.1:9", *cli]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("dlio-ext:")]
    assert lines == ["dlio-ext: error: rank 1: no S3 bucket: set storage.bucket or DLIO_EXT_S3_BUCKET"], (
        p.stderr
    )
    assert not (tmp_path / "res").exists()


@needs_root
def test_read_only_storage_root_is_refused_before_the_run(small_fs, tmp_path):
    _mount("-o", "remount,ro", str(small_fs))
    d = run_cli("run", f"run.results_dir={tmp_path}", f"storage.root={small_fs / 'data'}", np=2, timeout=120)
    assert d.code == 2, d.err
    lines = [ln for ln in d.err.splitlines() if ln.startswith("dlio-ext:")]
    assert len(lines) == 1 and "read-only file system" in lines[0].lower(), d.err
    assert "Traceback" not in d.err
    run = next(tmp_path.glob("storage_sweep-*"))
    assert "did not start" in (run / "INCOMPLETE").read_text()
