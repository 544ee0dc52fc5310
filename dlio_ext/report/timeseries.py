"""Throughput over time: a CSV with one row per interval and a PNG (matplotlib, Agg: no display).

Interval i covers [i x interval, (i + 1) x interval) seconds from the moment all ranks left the
workload's start barrier; an operation counts in the interval in which it ended. Columns are
rates (per second), summed over ranks.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def write_csv(path: Path, interval_s: float, columns: Mapping[str, Sequence[float]]) -> None:
    """`t_start_s` then one column per series; shorter series are padded with zeros."""
    n = max((len(v) for v in columns.values()), default=0)
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_start_s", *columns])
        for i in range(n):
            w.writerow(
                [
                    round(i * interval_s, 6),
                    *(round(float(v[i]), 6) if i < len(v) else 0.0 for v in columns.values()),
                ]
            )
    os.replace(tmp, path)


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
