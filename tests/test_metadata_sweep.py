"""The scaling sweep: one real mpirun job per (ranks, items) point, a table and a plot of rate
against ranks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def test_sweep_over_ranks_and_items(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/metadata_sweep.py"),
            "--ranks",
            "1,2",
            "--items",
            "50,120",
            "--out",
            str(out),
            "--",
            "workload.phases=[file_create,file_stat,file_remove]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    sweep = json.loads((out / "sweep.json").read_text())
    points = sweep["points"]
    assert sorted((pt["ranks"], pt["items_per_rank"]) for pt in points) == [
        (1, 50),
        (1, 120),
        (2, 50),
        (2, 120),
    ]
    for pt in points:
        assert pt["ok"], pt
        s = json.loads((Path(pt["run_dir"]) / "summary.json").read_text())
        assert s["ranks"] == pt["ranks"]
        assert s["phases"]["file_create"]["ops"] == pt["ranks"] * pt["items_per_rank"]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert {r["phase"] for r in rows} >= {"file_create", "file_stat", "file_remove"}
    assert all(float(r["rate"]) > 0 for r in rows)
    assert (out / "rate_vs_ranks.png").stat().st_size > 1000
