"""What the benchmark scripts in this folder have in common, kept in one place so that a fix to
how mpirun is found or how dd is timed reaches every benchmark at once.

The scripts run as `.venv/bin/python scripts/<name>.py`, so this folder is sys.path[0] and they
`import benchlib`. Importing it also puts the checkout's root on sys.path: the scripts measure the
dlio_ext in this checkout, installed or not.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Open MPI refuses to start as root without both; benchmarks often run as root in containers.
OMPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def say(msg: str, tag: str = "bench") -> None:
    """A progress line on stderr, timestamped so a slow step shows in the log; stdout is kept for
    the report."""
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def utc_stamp() -> str:
    """UTC time as the results directories are named, so that they sort by when they ran."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def command_line(argv: Sequence[str] | None) -> str:
    """The command that ran this script, as it can be pasted again from the current directory:
    recorded with the results so that a number can be reproduced."""
    exe = Path(sys.executable)
    shown = exe.relative_to(Path.cwd()).as_posix() if exe.is_relative_to(Path.cwd()) else str(exe)
    return shlex.join([shown, *(sys.argv if argv is None else [sys.argv[0], *argv])])


def load_line(load_start: Sequence[float], elapsed: float, repeated: str) -> str:
    """The machine's size and load over a run, for the line under a results table: a number is
    read against how busy the machine was."""
    return (
        f"machine: {os.cpu_count()} CPUs, 1-min load average {load_start[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; {elapsed:.0f} s in all; {repeated}"
    )


def median_or_none(xs: Sequence[float]) -> float | None:
    """A row whose every run failed has no samples; it shows as failed, not as a crash."""
    return statistics.median(xs) if xs else None


def median_ratio(project: Sequence[float], baseline: Sequence[float]) -> float | None:
    """A row's headline ratio (bench_checkpoint alone takes the median of per-round ratios):
    dlio-ext's median over its baseline's. None when a side has no samples (or a zero baseline),
    so a row is never judged on half its data."""
    p, b = median_or_none(project), median_or_none(baseline)
    return p / b if p is not None and b else None


# --- MPI and dlio-ext ------------------------------------------------------------------------------


def mpirun_exe(missing: type[BaseException] = RuntimeError) -> str:
    """The mpirun scripts/setup.sh installs into the venv (it matches the venv's mpi4py), else
    one on PATH. `missing` is what is raised without one: RuntimeError where a script records a
    failed run and goes on, SystemExit where it cannot go on."""
    here = Path(sys.executable).parent / "mpirun"
    found = str(here) if here.exists() else shutil.which("mpirun")
    if not found:
        raise missing("mpirun not found: run scripts/setup.sh")
    return found


def mpirun(ranks: int, missing: type[BaseException] = RuntimeError) -> list[str]:
    """mpirun's prefix for `ranks` ranks on this one machine: more ranks than cores is allowed
    (the benchmarks oversubscribe small machines), and so is root (containers)."""
    return [mpirun_exe(missing), "--oversubscribe", "--allow-run-as-root", "-np", str(ranks)]


def dlio_ext_module() -> list[str]:
    """`dlio-ext` run by this interpreter as a module: the checkout's dlio_ext, with or without
    the console script installed."""
    return [sys.executable, "-m", "dlio_ext.cli"]


def results_dir(stdout: str) -> Path | None:
    """The run directory a `dlio-ext run` names in its last `results: <dir>` line, or None if it
    printed none (it failed before it had one)."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("results: ")]
    return Path(lines[-1].removeprefix("results: ")) if lines else None


def host_info() -> dict[str, Any]:
    """dlio-ext's own host description for the results, or {}: a benchmark's numbers are still
    worth writing when it cannot be had."""
    try:
        from dlio_ext.metrics.results import host_info as info

        return info()
    except Exception:
        return {}


# --- dd --------------------------------------------------------------------------------------------

_DD_RE = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.MULTILINE)


def run_dd(cmds: Sequence[Sequence[str]]) -> float:
    """Run the dd commands at once; GB/s = all bytes / the slowest dd's own transfer time.

    dd's own clock excludes process start-up, so this favours the baseline slightly. LC_ALL=C keeps
    dd's summary line in the English the pattern expects."""
    env = dict(os.environ) | {"LC_ALL": "C"}
    running = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        for c in cmds
    ]
    total, slowest = 0, 0.0
    for c, p in zip(cmds, running, strict=True):
        _, err = p.communicate(timeout=600)
        m = _DD_RE.search(err or "")
        if p.returncode != 0 or not m:
            raise RuntimeError(f"{shlex.join(c)} failed ({p.returncode}): {(err or '').strip()[-300:]}")
        total += int(m.group(1))
        slowest = max(slowest, float(m.group(2)))
    return total / slowest / 1e9


# --- S3 with boto3 ---------------------------------------------------------------------------------


def boto3_client(env: dict[str, str], pool: int = 32) -> Any:
    """A boto3 S3 client for the store `env` names (as dlio_ext.s3server.server_env gives it), built
    as dlio-ext builds its own (dlio_ext.storage.s3.boto3_client), so it is a fair baseline: the
    same addressing and TLS, no CRC work dlio-ext does not do either (checksum=when_required, as
    its default), and no retries that would hide a failed request in the time. `pool`:
    connections for threaded transfers; a one-thread loop needs 1."""
    from dlio_ext.storage.s3 import S3Settings
    from dlio_ext.storage.s3 import boto3_client as client

    return client(S3Settings.from_config({"type": "s3", "prefix": ""}, env), pool=pool)


def delete_keys(client: Any, bucket: str, keys: Sequence[str]) -> None:
    """Delete with as few requests as S3 allows (1,000 keys each): cleanup, off the clock."""
    for i in range(0, len(keys), 1000):
        client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
        )
