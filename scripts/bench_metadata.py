#!/usr/bin/env python3
"""Is the metadata workload near the limit? dlio-ext against C mdtest (hpc/ior) of the same shape.

    .venv/bin/python scripts/bench_metadata.py [--reps N] [--ranks R] [--items N] [--only posix|s3]
                                               [--ior-src DIR]

One run on one machine, dlio-ext and its baselines interleaved (who goes first alternates), so a
noisy neighbour hits both alike; the table shows medians over the repetitions.

1. posix file create / stat / read / remove, on a RAM file system by default (/dev/shm: the
   cheapest system calls, so the strictest test of the harness's own cost, and none of the shared
   disk's journal stalls, which swing creates 10x between runs here; --data picks another
   directory): the real CLI under mpirun (`workload=metadata/easy` with 3,901-byte files, stride 1;
   rates from summary.json: items over the slowest rank's time) against C mdtest built from
   hpc/ior by this script, under the same mpirun with the same ranks, items, size and stride
   (`mdtest -F -u -N 1 -n <items> -w 3901 -e 3901 -P --print-all-procs`; rates from its per-rank
   phase times, defined as dlio-ext's: all items over the slowest rank's time to its last op).
   Target: dlio-ext with verification on (the default) >= 0.8 x mdtest. Beside it, for what it
   tells: dlio-ext with `verify=false` (mdtest checks nothing it reads), and the bare compiled loop
   (dlio-ext's own storage/native verbs called on all of a phase's paths at once, under the same
   mpirun, with no harness and no checks: the same system calls with nothing around them, a
   stricter floor than mdtest, which adds an lseek to every create and read and formats each path).
   mdtest is built once per source into .cache/mdtest/<source id>/ (autotools and the venv's
   mpicc; scripts/setup.sh installs autoconf, automake and libtool) from `--ior-src`: an hpc/ior
   checkout or git directory (default: the snapshot at /work/.mirror/hpc+ior when there is one).
   Without a source, or when the build fails, those rows say "not measured" and why; the others run.
2. S3 0-byte PUT and HEAD against a local SeaweedFS (started here, stopped in a `finally`):
   dlio-ext with its defaults (obstore) and io_depth > 1 on R ranks, against a single-threaded
   boto3 put_object / head_object loop. Target: >= 2 x.

Prints a Markdown table and writes it, with every sample and the exact commands, to
results/bench_metadata/<UTC time>/bench.json. Missed targets are reported, not hidden: the exit
code is 0 unless a dlio-ext run failed or was invalid (2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
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
    #: why the baseline was not measured (no mdtest source, a failed build), shown in its place
    missing: str | None = None

    @property
    def ratio(self) -> float | None:
        return median_ratio(self.project, self.baseline)

    #: per-repetition ratios, of the repetitions where both sides have a sample (`pair`)
    pairs: list[float] = field(default_factory=list)

    def pair(self, seen: tuple[int, int]) -> None:
        """Close a repetition: `seen` is (len(project), len(baseline)) from before it."""
        if len(self.project) > seen[0] and len(self.baseline) > seen[1] and self.baseline[-1]:
            self.pairs.append(self.project[-1] / self.baseline[-1])

    @property
    def paired_ratio(self) -> float | None:
        """Median of the per-repetition ratios: robust to load drifting over the run."""
        if self.pairs:
            return statistics.median(self.pairs)
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
# 1. posix: the bare compiled loop, run by every rank under mpirun (`--posix-baseline`)


def posix_baseline_rank(root: str, items: int, size: int) -> None:
    """One rank of the bare loop: dlio-ext's own compiled verbs (storage/native, the same system
    calls) over all of a phase's paths in one call, with no harness around them and no checks;
    rank 0 prints {phase: items/s} (total over the slowest rank)."""
    from array import array

    from mpi4py import MPI

    from dlio_ext.storage import native

    lib = native.library()
    if lib is None:
        raise SystemExit(f"no compiled loops: {native.status()}")
    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    mine = f"{root}/r{rank}"
    other = (rank + 1) % ranks
    os.makedirs(mine, exist_ok=True)
    own = native.Paths([f"{mine}/f.{rank}.{i}" for i in range(items)])
    theirs = native.Paths([f"{root}/r{other}/f.{other}.{i}" for i in range(items)])
    buf = memoryview(bytearray(os.urandom(size) or b"\0"))[:size]
    lat = array("d")
    rates = {}
    for name, verb, paths in (
        ("file_create", "put", own),
        ("file_stat", "stat", theirs),
        ("file_read", "get", theirs),
        ("file_remove", "delete", theirs),
    ):
        loop = native.NativeVerb(lib, verb, buf if verb in ("put", "get") else None)
        comm.Barrier()
        t0 = time.perf_counter()
        r = loop.run(paths, 0, items, lat)
        mine_s = time.perf_counter() - t0
        if r.kind != native.DONE:
            raise SystemExit(f"{name}: op {r.index} stopped the loop (kind {r.kind}, errno {r.err})")
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


# --------------------------------------------------------------------------------------------
# 1. posix: C mdtest, built here from hpc/ior

#: where an hpc/ior snapshot is looked for when --ior-src is not given (a bare git directory)
DEFAULT_IOR_SRC = (Path("/work/.mirror/hpc+ior/repo"), Path("/work/.mirror/hpc+ior"))
MDTEST_CACHE = ROOT / ".cache" / "mdtest"
#: mdtest's SUMMARY lines (ops/sec: max, min, mean, std dev), for the phases dlio-ext times too
MDTEST_PHASES = {
    "File creation": "file_create",
    "File stat": "file_stat",
    "File read": "file_read",
    "File removal": "file_remove",
}
_MDTEST_LINE = re.compile(
    r"^\s*(File creation|File stat|File read|File removal)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)"
)


def _is_git_dir(p: Path) -> bool:
    return (p / "HEAD").is_file() and (p / "objects").is_dir()


def _ior_source(given: str | None) -> Path | None:
    """The hpc/ior source to build: --ior-src, else the default snapshot if it is there."""
    if given:
        return Path(given).resolve()
    return next((p for p in DEFAULT_IOR_SRC if _is_git_dir(p) or (p / "src" / "mdtest.c").is_file()), None)


def _source_id(src: Path) -> str:
    """A name for one version of the source: its git commit, else a hash of its mdtest.c and
    configure.ac (a plain directory)."""
    git_dir = src if _is_git_dir(src) else src / ".git"
    if git_dir.exists():
        p = subprocess.run(
            ["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if p.returncode == 0:
            return p.stdout.strip()[:12]
    h = hashlib.sha256()
    for name in ("src/mdtest.c", "configure.ac"):
        h.update((src / name).read_bytes())
    return "dir-" + h.hexdigest()[:12]


def build_mdtest(given: str | None, log: Path) -> tuple[Path | None, str]:
    """(mdtest binary, what was built) or (None, why it is not measured). Built once per source
    version into .cache/mdtest/<id>/ with ./bootstrap, ./configure CC=<the venv's mpicc>, make:
    the same MPI as dlio-ext's mpi4py. Never raises: a missing baseline is a row, not a crash."""
    src = _ior_source(given)
    if src is None:
        return None, "not measured: give --ior-src (an hpc/ior checkout or git directory)"
    if not (_is_git_dir(src) or (src / "src" / "mdtest.c").is_file()):
        return None, f"not measured: --ior-src {src} is neither an hpc/ior checkout nor its git directory"
    mpicc = Path(sys.executable).parent / "mpicc"
    cc = str(mpicc) if mpicc.exists() else shutil.which("mpicc")
    tools = [t for t in ("autoreconf", "automake", "libtoolize", "make") if shutil.which(t) is None]
    if cc is None or tools:
        missing = ", ".join(tools + ([] if cc else ["mpicc"]))
        return None, f"not measured: {missing} missing to build mdtest (run scripts/setup.sh)"
    try:
        sid = _source_id(src)
    except OSError as exc:
        return None, f"not measured: cannot read --ior-src {src}: {exc.strerror}"
    home = MDTEST_CACHE / sid
    binary = home / "mdtest"
    what = f"mdtest from hpc/ior {sid} ({src}), CC={cc}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, what
    MDTEST_CACHE.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="build.", dir=MDTEST_CACHE))
    say(f"building {what} (once, about a minute)")
    steps: list[list[str]] = [
        ["./bootstrap"],
        ["./configure", f"CC={cc}"],
        ["make", f"-j{os.cpu_count() or 1}"],
    ]
    try:
        with log.open("w") as out:
            if _is_git_dir(src):
                archive = subprocess.run(
                    ["git", "--git-dir", str(src), "archive", "HEAD"], stdout=subprocess.PIPE, stderr=out
                )
                if archive.returncode:
                    return None, f"not measured: git archive of {src} failed (log: {log})"
                subprocess.run(["tar", "-x", "-C", str(build)], input=archive.stdout, check=True)
            else:
                shutil.copytree(src, build, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
            for step in steps:
                out.write(f"$ {shlex.join(step)}\n")
                out.flush()
                p = subprocess.run(step, cwd=build, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
                if p.returncode:
                    return None, f"not measured: mdtest build failed at `{shlex.join(step)}` (log: {log})"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "src" / "mdtest", binary)
        return binary, what
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"not measured: mdtest build failed: {exc} (log: {log})"
    finally:
        shutil.rmtree(build, ignore_errors=True)


def mdtest_command(binary: Path, ranks: int, items: int, size: int, stride: int, where: Path) -> list[str]:
    """mdtest of dlio-ext's shape: files only (-F), a directory per rank (-u), every phase after
    the create on rank r + stride's items (-N), `items` per rank (-n), `size` bytes written and
    read back (-w, -e); every rank's own phase times printed (-P --print-all-procs)."""
    return mpirun(ranks) + [
        str(binary),
        "-F",
        "-u",
        "-N",
        str(stride),
        "-n",
        str(items),
        "-w",
        str(size),
        "-e",
        str(size),
        "-P",
        "--print-all-procs",
        "-d",
        str(where),
    ]


def parse_mdtest(text: str, items: int) -> dict[str, float]:
    """{phase: ops/s} with dlio-ext's definition: all ranks' `items` over the slowest rank's time
    from the opening barrier to its last op, from mdtest's per-process times (before its closing
    barrier, which its SUMMARY rates include: about 1 % here). Without them, the SUMMARY rates."""
    rates: dict[str, float] = {}
    timed = text.partition("Per process result (time):")[2]
    for line in timed.splitlines():
        name, _, values = line.strip().removeprefix("Test ").rpartition(" ")
        if name in MDTEST_PHASES and values:
            times = [float(v) for v in values.split(",")]
            if max(times) > 0:
                rates[MDTEST_PHASES[name]] = items * len(times) / max(times)
    if not rates:
        for line in text.splitlines():
            m = _MDTEST_LINE.match(line)
            if m:
                rates[MDTEST_PHASES[m.group(1)]] = float(m.group(4))
    missing = [p for p in MDTEST_PHASES.values() if p not in rates]
    if missing:
        raise RuntimeError(f"mdtest printed no rate for {', '.join(missing)}")
    return rates


def run_mdtest(cmd: list[str], items: int, where: Path, log: Path) -> dict[str, float]:
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | OMPI_ENV, timeout=900)
    log.write_text(f"$ {shlex.join(cmd)}\n--- exit {p.returncode}\n{p.stdout}\n--- stderr\n{p.stderr}")
    if p.returncode:
        raise RuntimeError(f"mdtest exited {p.returncode} (log: {log})")
    try:
        return parse_mdtest(p.stdout, items)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} (log: {log})") from None


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


def bench_posix(
    a: argparse.Namespace, out: Path, rows: list[Row], commands: list[str], baselines: list[str]
) -> None:
    data = Path(a.data) if a.data else default_data(out)
    data.mkdir(parents=True, exist_ok=True)
    what = f"{a.ranks} ranks x {a.items:,} files of {a.bytes:,} B, unique dirs, stride 1, {fs_type(data.resolve())}"
    labels = {
        "file_create": "create",
        "file_stat": "stat",
        "file_read": "open+read+close",
        "file_remove": "remove",
    }
    binary, built = build_mdtest(a.ior_src, out / "logs" / "mdtest-build.log")
    say(built if binary is None else f"baseline: {built}")
    md_label = f"C mdtest -F -u -N 1 -n {a.items} -w {a.bytes} -e {a.bytes} -P, {a.ranks} ranks"
    missing = None if binary is not None else built

    def row(name: str, target: float) -> Row:
        return Row(name, md_label, target, missing=missing)

    # the target: dlio-ext as it runs by default (verify=true: every stat's size, every read's
    # stamp and hash checked) against mdtest, which checks nothing
    mine = {p: row(f"posix file {labels[p]} ({what})", 0.8) for p in POSIX_PHASES}
    # for what they tell: dlio-ext without its checks, and the system calls with nothing around them
    unchecked = {p: row(f"posix file {labels[p]}, verify=false", 0.0) for p in ("file_stat", "file_read")}
    bare = {
        p: row(f"posix file {labels[p]}, bare compiled loop, no harness, no checks", 0.0)
        for p in POSIX_PHASES
    }
    mdrows = [*mine.values(), *unchecked.values(), *bare.values()]
    rows += mdrows
    for rep in range(a.reps):

        def project(rep: int = rep) -> None:
            for verify, into in ((True, mine), (False, unchecked)):
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
                    for p, r in into.items():
                        r.project.append(s["metadata"]["phases"][p]["rate"])
                except RuntimeError as exc:
                    for r in into.values():
                        r.failures.append(str(exc))
                    say(f"  dlio-ext failed: {exc}")

        def baseline(rep: int = rep) -> None:
            if binary is not None:
                where = data / f"mdtest-{rep}"
                cmd = mdtest_command(binary, a.ranks, a.items, a.bytes, 1, where)
                if not baselines:
                    baselines.append(shlex.join(cmd))
                try:
                    rates = run_mdtest(cmd, a.items, where, out / f"logs/posix-mdtest-{rep}.log")
                except RuntimeError as exc:
                    # a baseline that failed is a hole in its samples, said once a round
                    say(f"  mdtest failed: {exc}")
                else:
                    for p in POSIX_PHASES:
                        mine[p].baseline.append(rates[p])
                        bare[p].baseline.append(rates[p])
                    for p, r in unchecked.items():
                        r.baseline.append(rates[p])
            # the same path shape as dlio-ext's (storage root / run id / md1 / r<rank> / f.<rank>.<i>):
            # every component is a lookup
            root = data / f"bare-{rep}-paths" / "metadata-00000000T000000Z-000000" / "md1"
            try:
                floor = posix_baseline(root, a.ranks, a.items, a.bytes, out / f"logs/posix-bare-{rep}.log")
            except RuntimeError as exc:
                say(f"  bare compiled loop failed: {exc}")
            else:
                for p in POSIX_PHASES:
                    bare[p].project.append(floor[p])

        seen = {id(r): (len(r.project), len(r.baseline)) for r in mdrows}
        for step in (project, baseline) if rep % 2 == 0 else (baseline, project):
            # the other side's dirty pages are written back before, not during, this side's run
            os.sync()
            step()
        for r in mdrows:
            r.pair(seen[id(r)])
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True, exist_ok=True)
        say(
            f"posix {rep + 1}/{a.reps}: "
            + ", ".join(f"{p} {_last(mine[p].project)} vs {_last(mine[p].baseline)}" for p in POSIX_PHASES)
        )
    shutil.rmtree(data, ignore_errors=True)


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
    """The Markdown table; a row's ratio is the median of its per-repetition ratios (the range
    in brackets) where it has them, else the ratio of its medians."""
    out = [
        "| measurement | measured (items/s) | baseline (items/s) | ratio | target | met? |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        p, b = median_or_none(r.project), median_or_none(r.baseline)
        q = r.paired_ratio if r.pairs else r.ratio
        met = "-" if q is None or not r.target else ("yes" if q >= r.target else "**no**")
        target = f">= {r.target:g}" if r.target else "-"
        base = r.missing if r.missing else f"{f'{b:,.0f}' if b else '-'} ({r.baseline_label})"
        shown = f"{q:.2f}" if q else "-"
        if r.pairs and len(r.pairs) > 1:
            shown += f" ({min(r.pairs):.2f}-{max(r.pairs):.2f})"
        out.append(
            f"| {r.name} | {f'{p:,.0f}' if p else 'failed'} | {base} "
            f"| {shown} | {target} | {'not measured' if r.missing and r.target else met} |"
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
    ap.add_argument(
        "--ior-src",
        default=None,
        help="hpc/ior checkout or git directory to build mdtest from "
        "(default: the snapshot at /work/.mirror/hpc+ior when there is one)",
    )
    a = ap.parse_args()
    out = ROOT / "results" / "bench_metadata" / benchlib.utc_stamp()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    commands: list[str] = []
    baselines: list[str] = []
    load = os.getloadavg()
    t0 = time.perf_counter()
    if a.only in (None, "posix"):
        bench_posix(a, out, rows, commands, baselines)
    if a.only in (None, "s3"):
        bench_s3(a, out, rows, commands)
    text = table(rows)
    print(text)
    print(f"\n$ {benchlib.command_line(None)}")
    for cmd in [*commands[:1], *baselines]:
        print(f"  runs, interleaved: {cmd}")
    print(
        benchlib.load_line(load, time.perf_counter() - t0, f"{a.reps} repetitions, medians")
        + f"; commands and samples: {out / 'bench.json'}"
    )
    (out / "bench.json").write_text(
        json.dumps(
            {
                "args": vars(a),
                "table": text,
                "rows": [r.as_dict() for r in rows],
                "dlio_ext_commands": commands,
                "baseline_commands": baselines,
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
