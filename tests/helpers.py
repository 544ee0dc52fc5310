"""Running the real CLI (optionally under the real mpirun) from tests."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: the keys and bucket of the session's moto S3 server (conftest's `moto_server`)
MOTO_KEY, MOTO_SECRET = "MOTOKEY" + uuid.uuid4().hex[:10].upper(), "moto-secret-" + uuid.uuid4().hex
MOTO_BUCKET = "compat"

#: a KV-cache run small enough for a test: 96 KiB chunks, a handful of shared prefixes
KV_SMALL = [
    "workload=kv_cache/custom",
    "workload.scale=0.0078125",  # 96 KiB chunks
    "workload.system_prompts=2",
    "workload.documents=4",
    "workload.document_tokens=[600,1500]",
    "workload.turns=[1,3]",
    "workload.max_inflight=4",
]


def mpirun() -> str:
    here = Path(PY).parent / "mpirun"
    found = str(here) if here.exists() else shutil.which("mpirun")
    assert found, "mpirun not found: run scripts/setup.sh"
    return found


def private_tmpdir() -> str:
    """A fresh TMPDIR for one mpirun. Open MPI keeps its session directory and PMIx rendezvous
    pipes under TMPDIR, named by mpirun's pid; a killed mpirun leaves them behind, and a later
    mpirun that gets the same pid (pids wrap in a long test run) fails to start ("The PMIx
    server's listener thread failed to start"). A short path: a Unix socket path has 108 bytes."""
    d = tempfile.mkdtemp(prefix="mpi", dir="/tmp")
    atexit.register(shutil.rmtree, d, True)
    return d


def mpi_cmd(np: int, cmd: list[str]) -> tuple[list[str], dict[str, str]]:
    """`cmd` under the real mpirun with `np` ranks, and the environment it needs."""
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "TMPDIR": private_tmpdir()}
    return [mpirun(), "--oversubscribe", "--allow-run-as-root", "-np", str(np), *cmd], env


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def results(self) -> Path:
        lines = [ln for ln in self.out.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("results: "), f"no results line:\n{self.out}\n{self.err}"
        return Path(lines[-1].removeprefix("results: "))

    def summary(self) -> dict:
        return json.loads((self.results / "summary.json").read_text())


def run_cli(
    *args: str,
    np: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> Done:
    cmd = [PY, "-m", "dlio_ext.cli", *args]
    # the S3 settings a developer's shell may export would change what a run is told
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))}
    full_env["PYTHONPATH"] = str(ROOT)
    if np is not None:
        cmd, mpi_env = mpi_cmd(np, cmd)
        full_env.update(mpi_env)
    full_env.update(env or {})
    p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout)
    return Done(p.returncode, p.stdout, p.stderr)


class LiveRun:
    """The CLI (under mpirun when np > 1) with its output read as it comes: wait for a line,
    inject a fault, then finish and read every line to the end of the pipes."""

    def __init__(self, args: list[str], np: int = 1, env: dict[str, str] | None = None):
        cmd = [PY, "-m", "dlio_ext.cli", *args]
        full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))}
        full["PYTHONPATH"] = str(ROOT)
        if np > 1:
            cmd, mpi_env = mpi_cmd(np, cmd)
            full.update(mpi_env)
        full.update(env or {})
        self.p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, cwd=ROOT
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=lambda s=stream, i=into: i.extend(s), daemon=True)
            for stream, into in ((self.p.stdout, self.out), (self.p.stderr, self.err))
        ]
        for r in self.readers:
            r.start()

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        """Until a stderr line matches; a run that ends first, or the timeout, fails the test."""
        rx, deadline = re.compile(pattern), time.monotonic() + timeout
        while time.monotonic() < deadline and self.p.poll() is None:
            if any(rx.search(line) for line in list(self.err)):
                return
            time.sleep(0.05)
        if any(rx.search(line) for line in list(self.err)):
            return
        self.p.kill()
        pytest.fail(f"no line matching {pattern!r}:\n{''.join(self.err)[-3000:]}")

    def finish(self, timeout: float = 180) -> Done:
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            pytest.fail(f"still running after {timeout} s:\n{''.join(self.err)[-3000:]}")
        for r in self.readers:  # every line the process wrote, to the end of its pipes
            r.join(30)
        return Done(self.p.returncode, "".join(self.out), "".join(self.err))

    def rank_pid(self, rank: int) -> int:
        """The pid of MPI rank `rank` (a descendant of mpirun with that rank in its environment)."""
        import psutil

        for child in psutil.Process(self.p.pid).children(recursive=True):
            try:
                if child.environ().get("OMPI_COMM_WORLD_RANK") == str(rank):
                    return child.pid
            except psutil.Error:
                continue
        raise AssertionError(f"no rank {rank} under mpirun {self.p.pid}")


def tmpfs(tmp_path: Path, request: pytest.FixtureRequest, size: str, name: str = "tmpfs") -> Path:
    """A real tmpfs of `size` (a disk that fills up) at tmp_path/name, unmounted whatever happens;
    the test is skipped where mounting needs a root this process is not."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / name
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mnt)], check=False))
    return mnt
