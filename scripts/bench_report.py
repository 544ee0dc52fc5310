#!/usr/bin/env python3
"""How long do `dlio-ext report` of a 1,024-rank run and `compare` of 10 such runs take, and how
much memory? (issue #13)

    .venv/bin/python scripts/bench_report.py [--reps N] [--ranks R] [--out DIR]

Runs one real 4-rank checkpoint burst (mpirun, posix, a small custom shard, 2 checkpoints and 2
restores: its rank files carry every file's events), then synthesises an R-rank run directory
from it (default 1,024): rank r's file is real rank r % 4's, renamed r, on host r // 8, with each
phase's end stretched by a fixed per-rank factor (up to 1.3x: stragglers to find); the summary
says R ranks. Then times `dlio-ext report DIR --out FILE` as a fresh process N times (default 5):
wall time and the process's peak RSS (os.wait4's ru_maxrss, the report process alone), against
the targets < 10 s and < 500 MiB; likewise `dlio-ext compare` of 10 copies of that run (each
its own directory, compared as text, JSON and HTML). Prints a Markdown table with the machine's load and the
command; writes it to results/bench-report/<UTC time>/table.md. Exit 0 whether or not a target is
met (a miss is printed as one); 2 when a run failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    OMPI_ENV,
    ROOT,
    command_line,
    dlio_ext_module,
    load_line,
    mpirun,
    results_dir,
    say,
    utc_stamp,
)

TARGET_S = 10.0
TARGET_MIB = 500.0
SOURCE_RANKS = 4
#: how many runs `compare` is timed on
COMPARED = 10


#: the real run the synthesised ones come from: a small checkpoint burst, written and restored twice
SOURCE_ARGS = [
    "workload=checkpoint_burst/custom",
    "workload.bytes_per_rank=4194304",
    "workload.chunk_size=1048576",
    "workload.buffer_pool_bytes=4194304",
    "workload.compute_seconds=0",
    "workload.checkpoints=2",
    "workload.restores=2",
]


def real_run(work: Path) -> Path:
    cmd = [
        *mpirun(SOURCE_RANKS),
        *dlio_ext_module(),
        "run",
        *SOURCE_ARGS,
        "storage.fsync=file",
        f"storage.root={work / 'data'}",
        f"run.dir={work / 'run4'}",
        "run.progress_interval=0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))} | OMPI_ENV
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    out = results_dir(p.stdout)
    if p.returncode != 0 or out is None:
        raise RuntimeError(f"the 4-rank run: exit {p.returncode}: {p.stderr.strip()[-600:]}")
    shutil.rmtree(work / "data", ignore_errors=True)
    return out


def synthesise(src: Path, dst: Path, ranks: int) -> int:
    """An R-rank run directory from a real 4-rank one; the bytes of rank files written."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("rank-*.json", "report.html", "data"))
    real = [json.loads((src / f"rank-{r:05d}.json").read_text()) for r in range(SOURCE_RANKS)]
    written = 0
    for r in range(ranks):
        rec = copy.deepcopy(real[r % SOURCE_RANKS])
        rec["rank"], rec["host"] = r, f"node{r // 8:04d}"
        stretch = 1.0 + 0.3 * ((r * 7919) % 97) / 96  # deterministic, up to 1.3x
        for q in rec["phases"].values():
            q["end"] = q["start"] + (q["end"] - q["start"]) * stretch
        text = json.dumps(rec, indent=2)
        (dst / f"rank-{r:05d}.json").write_text(text)
        written += len(text)
    s = json.loads((src / "summary.json").read_text())
    s["ranks"], s["hosts"] = ranks, (ranks + 7) // 8
    (dst / "summary.json").write_text(json.dumps(s, indent=2))
    return written


def one_report(run_dir: Path, page: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one `dlio-ext report` process."""
    return one_cli(["report", str(run_dir), "--out", str(page)])


def one_cli(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one `dlio-ext` process."""
    env = dict(os.environ) | {"PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: wait4 never waits on a full pipe
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [*dlio_ext_module(), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise RuntimeError(
                f"{args[0]}: exit {code}: {err.read().decode(errors='replace').strip()[-600:]}"
            )
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench-report" / utc_stamp())
    args = ap.parse_args(argv)
    work: Path = args.out
    work.mkdir(parents=True, exist_ok=True)
    load0, t0 = os.getloadavg(), time.monotonic()
    try:
        say(f"a real {SOURCE_RANKS}-rank checkpoint run", "report")
        src = real_run(work)
        big = work / f"run{args.ranks}"
        nbytes = synthesise(src, big, args.ranks)
        say(f"{args.ranks} rank files ({nbytes / 1e6:.0f} MB) in {big}", "report")
        samples: list[tuple[float, float]] = []
        for i in range(args.reps):
            samples.append(one_report(big, work / "report.html"))
            say(f"report {i + 1}/{args.reps}: {samples[-1][0]:.2f} s, {samples[-1][1]:.0f} MiB", "report")
        runs = []
        for i in range(COMPARED):  # ten runs of that size: compare reads each one's summary
            d = work / "compare" / f"run-{i:02d}"
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(big / "summary.json", d / "summary.json")
            runs.append(str(d))
        cmp_args = [
            "compare",
            *runs,
            "--json",
            str(work / "compare.json"),
            "--html",
            str(work / "compare.html"),
        ]
        csamples = [one_cli(cmp_args) for _ in range(args.reps)]
        say(f"compare of {COMPARED}: " + ", ".join(f"{s:.2f} s" for s, _ in csamples), "report")
    except RuntimeError as exc:
        print(f"bench_report: {exc}", file=sys.stderr)
        return 2
    secs = statistics.median(s for s, _ in samples)
    peak = max(m for _, m in samples)
    page_mb = (work / "report.html").stat().st_size / 1e6
    rows = [
        "| measurement | result | target | met? |",
        "| --- | --- | --- | --- |",
        f"| `dlio-ext report` of a {args.ranks:,}-rank checkpoint run ({nbytes / 1e6:.0f} MB of rank files), "
        f"median of {args.reps} | {secs:.2f} s | < {TARGET_S:g} s | {'yes' if secs < TARGET_S else '**no**'} |",
        f"| its peak RSS (largest of {args.reps}) | {peak:.0f} MiB | < {TARGET_MIB:g} MiB | "
        f"{'yes' if peak < TARGET_MIB else '**no**'} |",
        f"| the page | {page_mb:.1f} MB | (reported) | - |",
        f"| `dlio-ext compare` of {COMPARED} such runs (text, JSON and HTML), median of {args.reps} | "
        f"{statistics.median(s for s, _ in csamples):.2f} s | < {TARGET_S:g} s | "
        f"{'yes' if statistics.median(s for s, _ in csamples) < TARGET_S else '**no**'} |",
        f"| its peak RSS (largest of {args.reps}) | {max(m for _, m in csamples):.0f} MiB | < {TARGET_MIB:g} MiB | "
        f"{'yes' if max(m for _, m in csamples) < TARGET_MIB else '**no**'} |",
    ]
    foot = [
        "",
        load_line(load0, time.monotonic() - t0, f"{args.reps} report processes, each a fresh interpreter"),
        f"command: {command_line(argv)}",
    ]
    table = "\n".join(rows + foot)
    print(table)
    print("samples (s, MiB): " + ", ".join(f"({s:.2f}, {m:.0f})" for s, m in samples))
    (work / "table.md").write_text(table + "\n")
    print(f"results: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
