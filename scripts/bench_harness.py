#!/usr/bin/env python3
"""Does rank 0's reduction stay flat per rank from 2 to 1,024 ranks, and what does a 16-rank run's
start-up cost? (issue #14, item 3)

    .venv/bin/python scripts/bench_harness.py [--ranks 2,16,128,1024] [--reps N] [--startup 16]
        [--only merge|summarize|startup] [--ref GIT_REF] [--out DIR]

Runs one real 4-rank checkpoint burst (as scripts/bench_report.py does), synthesises run
directories of each rank count from its rank files, then times, in a fresh process each, what
rank 0 does with every rank's results: read the rank files and merge every phase over the ranks
(`metrics.results.reanalyse`, the same merge_phase the harness runs on the gathered results,
histograms included). Reports the median seconds and the peak RSS per rank count, and the
seconds per rank, which is what must stay flat; also the size of the rank files and summary a
rank adds. Prints a Markdown table with the machine's load and the command; writes it to
results/bench-harness/<UTC time>/table.md.

`--startup N` (default 16 ranks; 0 skips it) also measures a whole N-rank `dlio-ext run` whose
workload does almost nothing (metadata, one empty file a rank), against the floor of any MPI
Python job (`python -c "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"` under the same
mpirun), interleaved, medians: the wall seconds and the CPU seconds of every process (mpirun
and its descendants, from the kernel's rusage), so the start-up a rank costs beyond MPI's own is
read off per rank in CPU, which a loaded machine inflates far less than wall time. A third row
runs the same dlio-ext run with OpenBLAS's default thread count (what it cost before the CLI
asked for one thread), and a per-process breakdown of the harness's imports follows.

Then each workload's own summarize (its sections of summary.json from every rank's metrics) at the
same rank counts, from real 4-rank runs of checkpoint_burst, kv_cache and metadata (SUMMARIZE).
`--only merge|summarize|startup` runs one section; `--ref REF` adds the start-up of another git ref.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_report import SOURCE_ARGS, real_run, synthesise
from benchlib import OMPI_ENV, ROOT, command_line, dlio_ext_module, load_line, mpirun, say, utc_stamp

#: run in a fresh interpreter: the merge of one run directory, its seconds and peak RSS
MERGE = """
import json, resource, sys, time
from pathlib import Path
from dlio_ext.metrics import results
t0 = time.perf_counter()
phases = results.reanalyse(Path(sys.argv[1]))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "phases": len(phases), "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def one_merge(run_dir: Path) -> dict[str, float]:
    env = dict(os.environ) | {"PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", MERGE, str(run_dir)], capture_output=True, text=True, env=env, timeout=900
    )
    if p.returncode != 0:
        raise RuntimeError(f"merge of {run_dir}: exit {p.returncode}: {p.stderr.strip()[-600:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


#: in a fresh interpreter: a workload's own summarize (rank 0's sections of summary.json from every
#: rank's metrics) over N ranks, synthesised from a real 4-rank run's rank files: its seconds and
#: peak RSS. The world says N ranks (rank 0 of N: what rank 0 sees); nothing else is made up.
SUMMARIZE = """
import copy, json, logging, resource, sys, tempfile, time
from pathlib import Path
from dlio_ext.metrics import results
from dlio_ext.run.harness import load_config
from dlio_ext.storage import open_backend
from dlio_ext.workloads.base import workload_class
from dlio_ext.workloads.context import Context
from dlio_ext.world import SoloWorld

src, n, argv = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])

class RankZeroOf(SoloWorld):
    size = n

cfg = load_config(argv)
real = [json.loads((src / f"rank-{r:05d}.json").read_text())["metrics"] for r in range(4)]
per_rank = [copy.deepcopy(real[r % 4]) for r in range(n)]
phases = results.reanalyse(src)
with tempfile.TemporaryDirectory() as d:
    backend = open_backend({"type": "posix", "root": d + "/data"}, d)
    ctx = Context(RankZeroOf(), backend, None, cfg.workload, Path(d), "synth", 1, logging.getLogger("synth"))
    wl = workload_class(cfg.workload_name)(ctx)
    t0 = time.perf_counter()
    out = wl.summarize(phases, per_rank)
    dt = time.perf_counter() - t0
    size = len(json.dumps(out, default=str))
print(json.dumps({"seconds": dt, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "bytes": size}))
"""

#: the workloads whose summarize is measured, with the arguments of their real 4-rank runs
SUMMARIZED = {
    "checkpoint_burst": SOURCE_ARGS,
    "kv_cache": ["workload=kv_cache/custom", "workload.scale=0.02", "workload.requests_per_user=3"],
    "metadata": ["workload=metadata/easy", "workload.items_per_rank=200"],
}


def summarize_rows(work: Path, counts: list[int], reps: int) -> list[str]:
    """Each workload's summarize at each rank count (see SUMMARIZE): a Markdown table's lines."""
    env = dict(os.environ) | OMPI_ENV | {"PYTHONPATH": str(ROOT)}
    lines = [
        "| workload | ranks | summarize (median) | per rank | per rank vs the smallest | peak RSS | its sections |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, argv in SUMMARIZED.items():
        run_dir = work / f"summarize-{name}"
        p = subprocess.run(
            [*mpirun(4), *dlio_ext_module(), "run", *argv, f"run.dir={run_dir}", "run.progress_interval=0"],
            capture_output=True, text=True, env=env, timeout=900,
        )  # fmt: skip
        if p.returncode:
            raise RuntimeError(f"the 4-rank {name} run: exit {p.returncode}: {p.stderr.strip()[-600:]}")
        base = None
        for n in counts:
            got = []
            for _ in range(reps):
                q = subprocess.run(
                    [sys.executable, "-c", SUMMARIZE, str(run_dir), str(n), json.dumps(argv)],
                    capture_output=True, text=True, env=env, timeout=900,
                )  # fmt: skip
                if q.returncode:
                    raise RuntimeError(f"{name} summarize at {n} ranks: {q.stderr.strip()[-600:]}")
                got.append(json.loads(q.stdout.strip().splitlines()[-1]))
            secs = statistics.median(g["seconds"] for g in got)
            rss = max(g["rss_kib"] for g in got) / 1024
            base = base or secs / n
            lines.append(
                f"| {name} | {n:,} | {secs:.3f} s | {secs / n * 1e3:.3f} ms | {secs / n / base:.2f}x | "
                f"{rss:.0f} MiB | {got[0]['bytes'] / 1e6:.2f} MB |"
            )
            say(f"{name} summarize, {n} ranks: {secs:.3f} s, {rss:.0f} MiB", "harness")
    return lines


FLOOR = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of every descendant reaped) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])}...: exit {p.returncode}: {p.stderr.strip()[-600:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def checkout(work: Path, ref: str) -> Path:
    """A detached worktree of `ref` under `work` (the code a row compares against)."""
    where = work / f"ref-{ref.replace('/', '_')}"
    p = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
        capture_output=True,
        text=True,
    )
    if p.returncode:
        raise RuntimeError(f"git worktree add {ref}: {p.stderr.strip()[-300:]}")
    return where


def startup(work: Path, ranks: int, reps: int, ref: str | None = None) -> list[str]:
    """The start-up rows (see the module's docstring): a Markdown table's lines. With `ref`, the
    same run of the code at that git ref too, interleaved (what a change to start-up bought)."""
    env = dict(os.environ) | OMPI_ENV | {"PYTHONPATH": str(ROOT)}
    env.pop("OPENBLAS_NUM_THREADS", None)
    run = [
        *mpirun(ranks),
        *dlio_ext_module(),
        "run",
        "workload=metadata/easy",
        "workload.items_per_rank=1",
        "workload.phases=[file_create]",
    ]
    steps = {
        "MPI floor (python + mpi4py, a barrier)": ([*mpirun(ranks), sys.executable, "-c", FLOOR], env),
        "dlio-ext run (1 empty file a rank)": (run, env),
        "dlio-ext run, OpenBLAS's default threads": (
            run,
            env | {"OPENBLAS_NUM_THREADS": str(os.cpu_count())},
        ),
    }
    old = None
    if ref:
        old = checkout(work, ref)
        steps[f"dlio-ext run at {ref}"] = (run, env | {"PYTHONPATH": str(old)})
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    names = list(steps)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            cmd, e = steps[name]
            if "dlio-ext" in name:
                cmd = [*cmd, f"run.results_dir={work / 'startup-runs'}"]
            got[name].append(timed(cmd, e))
        say(
            f"start-up round {rep + 1}/{reps}: "
            + ", ".join(f"{k.split(' (')[0]} {v[-1][0]:.2f} s" for k, v in got.items()),
            "harness",
        )
    if old is not None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    floor_cpu = statistics.median(c for _, c in got[names[0]])
    lines = [
        f"| {ranks}-rank job (median of {reps}) | wall | CPU, all processes | CPU a rank | a rank beyond the floor |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, xs in got.items():
        wall = statistics.median(w for w, _ in xs)
        cpu = statistics.median(c for _, c in xs)
        lines.append(
            f"| {name} | {wall:.2f} s | {cpu:.2f} s | {cpu / ranks * 1e3:.0f} ms | {(cpu - floor_cpu) / ranks * 1e3:+.0f} ms |"
        )
    lines += [
        "",
        "Per process, CPU seconds of an import (median of 5 fresh interpreters, OPENBLAS_NUM_THREADS=1):",
        "",
    ]
    lines += ["| import | CPU |", "| --- | --- |"]
    for what in (
        "pass",
        "import numpy",
        "import mpi4py.MPI",
        "import omegaconf, hydra",
        "import dlio_ext.run.harness",
    ):
        cpu = statistics.median(
            timed([sys.executable, "-c", what], env | {"OPENBLAS_NUM_THREADS": "1"})[1] for _ in range(5)
        )
        lines.append(f"| `{what}` | {cpu * 1e3:.0f} ms |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="2,16,128,1024")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--startup", type=int, default=16, help="ranks of the start-up rows (0: skip them)")
    ap.add_argument("--only", choices=("merge", "summarize", "startup"), help="run only this section")
    ap.add_argument("--ref", help="git ref whose start-up is measured beside this checkout's")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench-harness" / utc_stamp())
    args = ap.parse_args(argv)
    all_counts = [int(x) for x in args.ranks.split(",")]
    counts = all_counts if args.only in (None, "merge") else []
    work: Path = args.out
    work.mkdir(parents=True, exist_ok=True)
    load0, t0 = os.getloadavg(), time.monotonic()
    rows = []
    extra: list[str] = []
    try:
        if args.only in (None, "summarize"):
            extra += ["", *summarize_rows(work, all_counts, args.reps)]
        if args.startup and args.only in (None, "startup"):
            extra += ["", *startup(work, args.startup, args.reps, args.ref)]
        if counts:
            say("a real 4-rank checkpoint run", "harness")
            src = real_run(work)
        for n in counts:
            d = Path(tempfile.mkdtemp(dir=work, prefix=f"run{n}-"))
            d.rmdir()
            nbytes = synthesise(src, d, n)
            samples = [one_merge(d) for _ in range(args.reps)]
            secs = statistics.median(s["seconds"] for s in samples)
            rss = max(s["rss_kib"] for s in samples) / 1024
            rows.append((n, secs, rss, nbytes))
            say(f"{n} ranks: {secs:.3f} s, {secs / n * 1e3:.3f} ms a rank, {rss:.0f} MiB", "harness")
    except RuntimeError as exc:
        print(f"bench_harness: {exc}", file=sys.stderr)
        return 2
    base = rows[0][1] / rows[0][0] if rows else 1.0
    table = (
        [
            "| ranks | merge of every phase (median) | per rank | per rank vs the smallest | peak RSS | rank files |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        if rows
        else []
    )
    for n, secs, rss, nbytes in rows:
        table.append(
            f"| {n:,} | {secs:.3f} s | {secs / n * 1e3:.3f} ms | {secs / n / base:.2f}x | {rss:.0f} MiB | "
            f"{nbytes / 1e6:.1f} MB ({nbytes / n / 1e3:.1f} kB a rank) |"
        )
    foot = [
        "",
        load_line(
            load0,
            time.monotonic() - t0,
            f"{args.reps} rounds" + (", each merge a fresh interpreter" if rows else ", interleaved"),
        ),
        f"command: {command_line(argv)}",
    ]
    text = "\n".join(table + (extra if table else extra[1:]) + foot)
    print(text)
    (work / "table.md").write_text(text + "\n")
    print(f"results: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
