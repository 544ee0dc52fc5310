#!/usr/bin/env python3
"""Scaling sweep of the metadata workload: rate against ranks, for several item counts.

    .venv/bin/python scripts/metadata_sweep.py --ranks 1,2,4 --items 500,2000 \\
        [--preset easy] [--out DIR] [--mpirun-args "--hostfile hosts"] [-- key=value ...]

Every point is one real `dlio-ext run workload=metadata/<preset>` under `mpirun -np <ranks>`, with
its own results directory and validity; anything after `--` is passed to every run (e.g.
`storage=s3`, `workload.phases=[...]`, `storage.root=/mnt/fs/bench`). The number of ranks is fixed
when mpirun starts, so a sweep over ranks has to launch one job per point: this script does only
that, and reads each point's summary.json (rates as the workload defines them: items over the
slowest rank's time).

Writes into DIR (default results/metadata_sweep/<UTC time>/): sweep.json (every point, with its
command and run directory), sweep.csv (one row per point and phase) and rate_vs_ranks.png (one
panel per phase, one line per item count; failed or invalid points are left out of the lines and
listed in the table, never drawn as zero).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchlib
from benchlib import OMPI_ENV, ROOT


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4")
    return values


def run_point(a: argparse.Namespace, ranks: int, items: int, out: Path) -> dict[str, Any]:
    # not benchlib.mpirun: this runs on clusters too (--mpirun-args), so --allow-run-as-root only
    # where it is needed, and the user's mpirun arguments go in as given
    mpirun = benchlib.mpirun_exe(missing=SystemExit)
    cmd = [mpirun, "--oversubscribe", "-np", str(ranks), *shlex.split(a.mpirun_args)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [*benchlib.dlio_ext_module(), "run", f"workload=metadata/{a.preset}"]
    cmd += [f"workload.items_per_rank={items}", f"run.results_dir={out / 'runs'}", "run.progress_interval=0"]
    cmd += a.overrides
    point: dict[str, Any] = {"ranks": ranks, "items_per_rank": items, "command": shlex.join(cmd)}
    print(f"== {ranks} rank(s), {items:,} items/rank", file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ | OMPI_ENV)
    log = out / "logs" / f"np{ranks}-n{items}.log"
    log.write_text(f"$ {point['command']}\n--- exit {p.returncode}\n{p.stdout}\n--- stderr\n{p.stderr}")
    point["log"] = str(log)
    run_dir = benchlib.results_dir(p.stdout)
    if p.returncode or run_dir is None:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
        point.update(ok=False, why=f"exit {p.returncode}: {tail[0]}")
        return point
    s = json.loads((run_dir / "summary.json").read_text())
    md = s["metadata"]
    point.update(
        ok=bool(s["valid"]),
        why="; ".join(s["invalid_reasons"]),
        run_dir=str(run_dir),
        geomean=md["geomean"]["rate"],
        phases={
            name: {k: q[k] for k in ("rate", "items", "seconds", "rank_rates", "latency_us", "support")}
            for name, q in md["phases"].items()
            if q["support"] != "unsupported"
        },
        unsupported=md["unsupported"],
    )
    return point


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [p for p in points if p["ok"]]
    phases = list(dict.fromkeys(name for p in good for name in p["phases"]))
    if not phases:
        return
    cols = min(3, len(phases))
    rows = -(-len(phases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, phase in zip(axes.flat, phases, strict=False):
        for items in sorted({p["items_per_rank"] for p in good}):
            pts = sorted(
                (p["ranks"], p["phases"][phase]["rate"]) for p in good if p["items_per_rank"] == items
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{items:,} items/rank")
        ax.set_title(phase)
        ax.set_xlabel("ranks")
        ax.set_ylabel("items/s (total / slowest rank)")
        ax.set_xticks(sorted({p["ranks"] for p in good}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(phases) :]:
        ax.axis("off")
    fig.suptitle("dlio-ext metadata: rate against ranks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, overrides = args[:cut], args[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=_ints, default=[1, 2, 4], help="comma-separated rank counts (1,2,4)")
    ap.add_argument("--items", type=_ints, default=[500, 2000], help="comma-separated items per rank")
    ap.add_argument("--preset", default="easy", help="workload_configs/workload/metadata/<preset>.yaml")
    ap.add_argument("--out", default=None, help="sweep directory (default results/metadata_sweep/<time>)")
    ap.add_argument("--mpirun-args", default="", help="extra mpirun arguments, e.g. '--hostfile hosts'")
    a = ap.parse_args(args)
    a.overrides = overrides
    if not (ROOT / "workload_configs" / "workload" / "metadata" / f"{a.preset}.yaml").is_file():
        ap.error(f"--preset {a.preset!r} is not a file in workload_configs/workload/metadata/")
    out = Path(a.out) if a.out else ROOT / "results" / "metadata_sweep" / benchlib.utc_stamp()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    points = [run_point(a, r, n, out) for n in a.items for r in a.ranks]
    (out / "sweep.json").write_text(json.dumps({"args": vars(a), "points": points}, indent=2) + "\n")
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ranks", "items_per_rank", "valid", "phase", "rate", "items", "seconds", "rank_rate_min",
                    "rank_rate_max", "p50_us", "p99_us", "geomean"])  # fmt: skip
        for p in points:
            for name, q in p.get("phases", {}).items():
                lat, rr = q["latency_us"], q["rank_rates"]
                w.writerow([p["ranks"], p["items_per_rank"], p["ok"], name, q["rate"], q["items"], q["seconds"],
                            rr["min"], rr["max"], lat["p50"], lat["p99"], p["geomean"]])  # fmt: skip
    plot(points, out / "rate_vs_ranks.png")
    phases = list(dict.fromkeys(name for p in points for name in p.get("phases", {})))
    print("| ranks | items/rank | " + " | ".join(phases) + " | geomean | valid |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in phases) + " | ---: | :---: |")
    for p in points:
        rates = [f"{p['phases'][n]['rate']:,.0f}" if n in p.get("phases", {}) else "-" for n in phases]
        valid = "yes" if p["ok"] else f"**no** ({p.get('why', '')})"
        geo = f"{p['geomean']:,.0f}" if "geomean" in p else "-"
        print(f"| {p['ranks']} | {p['items_per_rank']:,} | " + " | ".join(rates) + f" | {geo} | {valid} |")
    print(f"\nsweep: {out} (sweep.json, sweep.csv, rate_vs_ranks.png)")
    return 0 if all(p["ok"] for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
