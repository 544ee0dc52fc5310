#!/usr/bin/env python3
"""Is the metadata workload its own bottleneck? dlio-ext against bare loops of the same calls.

    .venv/bin/python scripts/bench_metadata.py [--reps N] [--ranks R] [--items N] [--only posix|s3]

One run on one machine, dlio-ext and its baseline interleaved (who goes first alternates), so a
noisy neighbour hits both alike; the table shows medians over the repetitions.

1. posix file create / stat / read / remove, on a RAM file system by default (/dev/shm: the
   cheapest system calls, so the strictest test of the harness's own cost, and none of the shared
   disk's journal stalls, which swing creates 10x between runs here; --data picks another
   directory): the real CLI under mpirun (`workload=metadata/easy`
   with 3,901-byte files, stride 1, verified reads; rates from summary.json: items over the
   slowest rank's time) against this script's own bare loop of the same system calls under the
   same mpirun with the same ranks (os.open+pwrite+close / os.stat / os.open+fstat+preadv+close /
   os.unlink on precomputed paths of the same shape as dlio-ext's, neighbour's files, no checks),
   rate defined the same way.
   Target: dlio-ext >= 0.8 x the bare loop.
2. S3 0-byte PUT and HEAD against a local SeaweedFS (started here, stopped in a `finally`):
   dlio-ext with its defaults (obstore) and io_depth > 1 on R ranks, against a single-threaded
   boto3 put_object / head_object loop. Target: >= 2 x.

Prints a Markdown table and writes it, with every sample and the exact commands, to
results/bench_metadata/<UTC time>/bench.json. Missed targets are reported, not hidden: the exit
code is 0 unless a dlio-ext run failed or was invalid (2).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib
from benchlib import OMPI_ENV, ROOT, median_or_none, median_ratio, say

POSIX_PHASES = ("file_create", "file_stat", "file_read", "file_remove")
S3_PHASES = {"file_create": "0-byte PUT", "file_stat": "HEAD"}


@dataclass
class Row:
    name: str
    baseline_label: str
    target: float
    project: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return median_ratio(self.project, self.baseline)

    @property
    def paired_ratio(self) -> float | None:
        """Median of the per-repetition ratios: robust to load drifting over the run."""
        pairs = [p / b for p, b in zip(self.project, self.baseline, strict=False) if b]
        return statistics.median(pairs) if pairs else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "project_median": median_or_none(self.project),
            "baseline_median": median_or_none(self.baseline),
            "ratio": self.ratio,
            "paired_ratio": self.paired_ratio,
        }


def mpirun(ranks: int) -> list[str]:
    # no mpirun, no benchmark: both sides of the posix rows need it, so stop rather than go on
    return benchlib.mpirun(ranks, missing=SystemExit)


def run_dlio(
    args: list[str], ranks: int, out: Path, log: Path, commands: list[str], env: dict[str, str]
) -> dict:
    cmd = [*benchlib.dlio_ext_module(), "run", *args, f"run.results_dir={out}", "run.progress_interval=0"]
    cmd = mpirun(ranks) + cmd if ranks > 1 else cmd
    shown = shlex.join(cmd)
    if not commands or commands[-1] != shown:
        commands.append(shown)
    p = subprocess.run(
        cmd, capture_output=True, text=True, env=os.environ | OMPI_ENV | env, cwd=ROOT, timeout=900
    )
    log.write_text(f"$ {shown}\n--- exit {p.returncode}\n{p.stdout}\n--- stderr\n{p.stderr}")
    run_dir = benchlib.results_dir(p.stdout)
    if p.returncode or run_dir is None:
        raise RuntimeError(f"dlio-ext exited {p.returncode} (log: {log})")
    summary = json.loads((run_dir / "summary.json").read_text())
    if not summary["valid"]:
        raise RuntimeError(f"dlio-ext run invalid: {summary['invalid_reasons']} (log: {log})")
    return summary


# --------------------------------------------------------------------------------------------
# 1. posix: the bare loop, run by every rank under mpirun (`--posix-baseline`)


def posix_baseline_rank(root: str, items: int, size: int) -> None:
    """One rank of the bare loop; rank 0 prints {phase: items/s} (total over the slowest rank)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    mine = f"{root}/r{rank}"
    other = (rank + 1) % ranks
    os.makedirs(mine, exist_ok=True)
    own = [f"{mine}/f.{rank}.{i}" for i in range(items)]
    theirs = [f"{root}/r{other}/f.{other}.{i}" for i in range(items)]
    payload = memoryview(bytearray(os.urandom(size)))
    buf = memoryview(bytearray(size))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    o_open, o_close, o_pwrite, o_stat, o_fstat, o_preadv, o_unlink = (
        os.open,
        os.close,
        os.pwrite,
        os.stat,
        os.fstat,
        os.preadv,
        os.unlink,
    )

    def create() -> None:
        for p in own:
            fd = o_open(p, flags, 0o644)
            if size:
                o_pwrite(fd, payload, 0)
            o_close(fd)

    def stat() -> None:
        for p in theirs:
            o_stat(p)

    def read() -> None:
        for p in theirs:
            fd = o_open(p, os.O_RDONLY)
            o_fstat(fd)
            o_preadv(fd, [buf], 0)
            o_close(fd)

    def remove() -> None:
        for p in theirs:
            o_unlink(p)

    rates = {}
    for name, fn in (
        ("file_create", create),
        ("file_stat", stat),
        ("file_read", read),
        ("file_remove", remove),
    ):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        mine_s = time.perf_counter() - t0
        slowest = comm.allreduce(mine_s, op=MPI.MAX)
        rates[name] = items * ranks / slowest
    comm.Barrier()
    if rank == 0:
        print(json.dumps(rates), flush=True)


def posix_baseline(root: Path, ranks: int, items: int, size: int, log: Path) -> dict[str, float]:
    cmd = mpirun(ranks) + [sys.executable, __file__, "--posix-baseline", str(root), str(items), str(size)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | OMPI_ENV, timeout=900)
    log.write_text(f"$ {shlex.join(cmd)}\n--- exit {p.returncode}\n{p.stdout}\n--- stderr\n{p.stderr}")
    if p.returncode:
        raise RuntimeError(f"baseline failed (log: {log})")
    return json.loads(p.stdout.strip().splitlines()[-1])


def fs_type(path: Path) -> str:
    """The file system type of the mount holding `path` (from /proc/mounts), or '?'."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, typ, *_ = line.split()
            if str(path).startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best):
                best, kind = mnt, typ
    except OSError:
        pass
    return kind


def default_data(out: Path) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"dlio-ext-bench-md-{os.getpid()}"
    return out / "data"


def bench_posix(a: argparse.Namespace, out: Path, rows: list[Row], commands: list[str]) -> None:
    data = Path(a.data) if a.data else default_data(out)
    data.mkdir(parents=True, exist_ok=True)
    what = f"{a.ranks} ranks x {a.items:,} files of {a.bytes:,} B, unique dirs, stride 1, {fs_type(data.resolve())}"
    labels = {
        "file_create": "create",
        "file_stat": "stat",
        "file_read": "open+read+close",
        "file_remove": "remove",
    }
    base_label = f"bare Python loop, same syscalls, {a.ranks} ranks"
    # The target is the harness's own cost: dlio-ext doing the same calls (verify=false: no size check
    # on stat, no stamp and hash check on read). The default, verify=true, is measured beside it.
    mine = {p: Row(f"posix file {labels[p]} ({what})", base_label, 0.8) for p in POSIX_PHASES}
    checked = {
        p: Row(f"posix file {labels[p]}, verify=true (the default)", base_label, 0.0)
        for p in ("file_stat", "file_read")
    }
    rows += mine.values()
    rows += checked.values()
    for rep in range(a.reps):

        def project(rep: int = rep) -> None:
            for verify, into in ((False, mine), (True, checked)):
                try:
                    s = run_dlio(
                        [
                            "workload=metadata/easy",
                            "storage=posix",
                            f"storage.root={data}/dlio-{rep}-{verify}",
                            f"workload.items_per_rank={a.items}",
                            f"workload.write_bytes={a.bytes}",
                            f"workload.phases=[{','.join(POSIX_PHASES)}]",
                            f"workload.verify={str(verify).lower()}",
                        ],
                        a.ranks,
                        out / "runs",
                        out / f"logs/posix-dlio-{rep}-verify-{verify}.log",
                        commands,
                        {},
                    )
                    for p, row in into.items():
                        row.project.append(s["metadata"]["phases"][p]["rate"])
                except RuntimeError as exc:
                    for r in into.values():
                        r.failures.append(str(exc))
                    say(f"  dlio-ext failed: {exc}")

        def baseline(rep: int = rep) -> None:
            # the same path shape as dlio-ext's (storage root / run id / md1 / r<rank> / f.<rank>.<i>):
            # every component is a lookup, and the harness's cost is what is compared, not its layout
            root = data / f"bare-{rep}-paths" / "metadata-00000000T000000Z-000000" / "md1"
            rates = posix_baseline(root, a.ranks, a.items, a.bytes, out / f"logs/posix-bare-{rep}.log")
            for p in POSIX_PHASES:
                mine[p].baseline.append(rates[p])
            for p, row in checked.items():
                row.baseline.append(rates[p])

        for step in (project, baseline) if rep % 2 == 0 else (baseline, project):
            # the other side's dirty pages are written back before, not during, this side's run
            os.sync()
            step()
        shutil.rmtree(data, ignore_errors=True)
        say(
            f"posix {rep + 1}/{a.reps}: "
            + ", ".join(f"{p} {_last(mine[p].project)} vs {_last(mine[p].baseline)}" for p in POSIX_PHASES)
        )


def _last(xs: list[float]) -> str:
    return f"{xs[-1]:,.0f}" if xs else "-"


# --------------------------------------------------------------------------------------------
# 2. S3 against a local SeaweedFS


def boto3_baseline(env: dict[str, str], prefix: str, n: int) -> dict[str, float]:
    c = benchlib.boto3_client(env, pool=1)
    bucket = env["DLIO_EXT_S3_BUCKET"]
    keys = [f"{prefix}/f.{i}" for i in range(n)]
    c.head_bucket(Bucket=bucket)  # connection up before the clock, as dlio-ext's check does
    t0 = time.perf_counter()
    for k in keys:
        c.put_object(Bucket=bucket, Key=k, Body=b"")
    put = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for k in keys:
        c.head_object(Bucket=bucket, Key=k)
    head = n / (time.perf_counter() - t0)
    benchlib.delete_keys(c, bucket, keys)
    c.close()
    return {"file_create": put, "file_stat": head}


def bench_s3(a: argparse.Namespace, out: Path, rows: list[Row], commands: list[str]) -> None:
    from dlio_ext.s3server import server_env, start_server, stop_server

    what = f"{a.ranks} ranks x io_depth {a.s3_depth}, {a.s3_items:,} keys/rank, obstore"
    mine = {
        p: Row(f"S3 {label} ops/s ({what})", "boto3, one thread, same total keys", 2.0)
        for p, label in S3_PHASES.items()
    }
    rows += mine.values()
    server_dir = Path(tempfile.mkdtemp(prefix="dlio-ext-bench-md-s3."))
    try:
        env = server_env(start_server(server_dir))
        for rep in range(a.reps):

            def project(rep: int = rep) -> None:
                try:
                    s = run_dlio(
                        [
                            "workload=metadata/easy",
                            "storage=s3",
                            f"storage.prefix=bench-md-{rep}",
                            f"workload.items_per_rank={a.s3_items}",
                            f"workload.io_depth={a.s3_depth}",
                            "workload.phases=[file_create,file_stat,file_remove]",
                            "workload.delete_batch=1000",
                        ],
                        a.ranks,
                        out / "runs",
                        out / f"logs/s3-dlio-{rep}.log",
                        commands,
                        env,
                    )
                    for p in S3_PHASES:
                        mine[p].project.append(s["metadata"]["phases"][p]["rate"])
                except RuntimeError as exc:
                    for r in mine.values():
                        r.failures.append(str(exc))
                    say(f"  dlio-ext failed: {exc}")

            def baseline(rep: int = rep) -> None:
                rates = boto3_baseline(env, f"bench-md-bare-{rep}", a.s3_items * a.ranks)
                for p in S3_PHASES:
                    mine[p].baseline.append(rates[p])

            for step in (project, baseline) if rep % 2 == 0 else (baseline, project):
                step()
            say(
                f"s3 {rep + 1}/{a.reps}: "
                + ", ".join(
                    f"{S3_PHASES[p]} {_last(mine[p].project)} vs {_last(mine[p].baseline)}" for p in S3_PHASES
                )
            )
    finally:
        stop_server(server_dir)
        shutil.rmtree(server_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    out = [
        "| measurement | dlio-ext (items/s) | baseline (items/s) | ratio | target | met? |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        p, b, q = median_or_none(r.project), median_or_none(r.baseline), r.ratio
        met = "-" if q is None or not r.target else ("yes" if q >= r.target else "**no**")
        target = f">= {r.target:g}" if r.target else "-"
        out.append(
            f"| {r.name} | {f'{p:,.0f}' if p else 'failed'} | {f'{b:,.0f}' if b else '-'} ({r.baseline_label}) "
            f"| {f'{q:.2f}' if q else '-'} | {target} | {met} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=9, help="repetitions (medians; a phase here lasts ~0.1 s)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--items", type=int, default=20000, help="posix files per rank")
    ap.add_argument("--bytes", type=int, default=3901, help="posix file size")
    ap.add_argument("--s3-items", type=int, default=400, help="S3 keys per rank")
    ap.add_argument("--s3-depth", type=int, default=8, help="dlio-ext io_depth on S3")
    ap.add_argument("--data", default=None, help="posix directory under test (default: under /dev/shm)")
    ap.add_argument("--only", choices=("posix", "s3"), default=None)
    a = ap.parse_args()
    out = ROOT / "results" / "bench_metadata" / benchlib.utc_stamp()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    commands: list[str] = []
    t0 = time.perf_counter()
    if a.only in (None, "posix"):
        bench_posix(a, out, rows, commands)
    if a.only in (None, "s3"):
        bench_s3(a, out, rows, commands)
    text = table(rows)
    print(text)
    print(
        f"\n{a.reps} repetitions, medians; {time.perf_counter() - t0:,.0f} s on {os.uname().nodename} "
        f"({os.cpu_count()} CPUs); commands and samples: {out / 'bench.json'}"
    )
    (out / "bench.json").write_text(
        json.dumps(
            {
                "args": vars(a),
                "table": text,
                "rows": [r.as_dict() for r in rows],
                "dlio_ext_commands": commands,
            },
            indent=2,
        )
    )
    return 2 if any(r.failures for r in rows) else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--posix-baseline":
        posix_baseline_rank(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
