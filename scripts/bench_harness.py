#!/usr/bin/env python3
"""Does rank 0's reduction stay flat per rank from 2 to 1,024 ranks? (issue #14, item 3)

    .venv/bin/python scripts/bench_harness.py [--ranks 2,16,128,1024] [--reps N] [--out DIR]

Runs one real 4-rank checkpoint burst (as scripts/bench_report.py does), synthesises run
directories of each rank count from its rank files, then times, in a fresh process each, what
rank 0 does with every rank's results: read the rank files and merge every phase over the ranks
(`metrics.results.reanalyse`, the same merge_phase the harness runs on the gathered results,
histograms included). Reports the median seconds and the peak RSS per rank count, and the
seconds per rank, which is what must stay flat; also the size of the rank files and summary a
rank adds. Prints a Markdown table with the machine's load and the command; writes it to
results/bench-harness/<UTC time>/table.md.

What it does not cover yet: the workload's own summarize (per-rank metrics, e.g. the checkpoint
timeline) and a 16-rank run's start-up cost (both named by issue #14).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_report import real_run, synthesise
from benchlib import ROOT, command_line, load_line, say, utc_stamp

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="2,16,128,1024")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench-harness" / utc_stamp())
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.ranks.split(",")]
    work: Path = args.out
    work.mkdir(parents=True, exist_ok=True)
    load0, t0 = os.getloadavg(), time.monotonic()
    rows = []
    try:
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
    base = rows[0][1] / rows[0][0]
    table = [
        "| ranks | merge of every phase (median) | per rank | per rank vs the smallest | peak RSS | rank files |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, secs, rss, nbytes in rows:
        table.append(
            f"| {n:,} | {secs:.3f} s | {secs / n * 1e3:.3f} ms | {secs / n / base:.2f}x | {rss:.0f} MiB | "
            f"{nbytes / 1e6:.1f} MB ({nbytes / n / 1e3:.1f} kB a rank) |"
        )
    foot = [
        "",
        load_line(load0, time.monotonic() - t0, f"{args.reps} merges a rank count, each a fresh interpreter"),
        f"command: {command_line(argv)}",
    ]
    text = "\n".join(table + foot)
    print(text)
    (work / "table.md").write_text(text + "\n")
    print(f"results: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
