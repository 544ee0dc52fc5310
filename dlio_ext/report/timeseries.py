"""Throughput over time, drawn from the timeseries.csv a run left (one row per interval, a
`t_start_s` column then rates per second summed over ranks; interval i covers [i x interval,
(i + 1) x interval) seconds from the moment all ranks left the start barrier) and its summary:
a PNG (matplotlib, Agg: no display)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot(
    path: Path,
    interval_s: float,
    panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]],
    title: str = "",
) -> None:
    """One panel per (y label, {series name: values}), sharing the time axis; steps, not lines:
    a value holds for its whole interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(panels), 1, figsize=(11, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    for ax, (ylabel, series) in zip(axes[:, 0], panels, strict=True):
        for name, values in series.items():
            xs = [i * interval_s for i in range(len(values) + 1)]
            ys = [*values, values[-1]] if len(values) else [0.0]
            ax.step(xs[: len(ys)], ys, where="post", label=name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if len(series) > 1:
            ax.legend(loc="upper right", fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel(f"seconds since the start barrier ({interval_s:g} s intervals)")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def read_csv(path: Path) -> dict[str, list[float]]:
    """A time-series CSV's columns by name, `t_start_s` included."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    return {name: [float(r[i]) for r in body] for i, name in enumerate(head)}


def draw(run_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """kv_cache: GB/s read and written and requests/s over time, from the CSV and interval its
    summary names; {"timeseries": png name}, or {} when the run wrote no series."""
    k = summary.get("kv_cache", {})
    entry = k.get("timeseries", {})
    if "csv" not in entry:
        return {}
    cols = read_csv(run_dir / entry["csv"])
    png = run_dir / (Path(entry["csv"]).stem + ".png")
    plot(
        png,
        entry["interval_s"],
        [
            ("GB/s", {"read": cols["read_GBps"], "write": cols["write_GBps"]}),
            ("requests/s", {"requests": cols["requests_per_s"]}),
        ],
        title=f"kv_cache {k['preset']} ({k['model']['name']}, {summary['ranks']} rank(s) x "
        f"{k['servers']['users_per_rank']} users, scale {k['chunk']['scale']:g})",
    )
    return {"timeseries": png.name}
