"""A run's per-rank timeline: when every file of every checkpoint started, opened, delivered its
first byte and ended, as CSV and as a PNG (matplotlib, Agg: no display needed).

Times are seconds from the moment all ranks left the workload's first barrier, each rank on its
own monotonic clock (ranks leave a barrier within microseconds of each other on one host; across
hosts, allow for the barrier's latency).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: an event as a workload records it (see checkpoint_burst.rank_metrics)
EVENT_FIELDS = (
    "kind",
    "checkpoint",
    "file",
    "bytes",
    "start_s",
    "opened_s",
    "first_byte_s",
    "end_s",
    "close_s",
    "ok",
    "content_hash",
)
COLUMNS = ("layout_rank", "rank", *EVENT_FIELDS, "seconds", "MBps")
COLOURS = {"write": "#1f77b4", "persist": "#1f77b4", "snapshot": "#ff7f0e", "restore": "#2ca02c"}

Row = tuple[int, int, Sequence[Any]]  # (layout rank, rank, event)


def write_csv(path: Path, rows: Iterable[Row]) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for layout_rank, rank, ev in sorted(rows, key=lambda r: (r[2][4], r[1])):
            secs = max(float(ev[7]) - float(ev[4]), 0.0)
            mbps = round(float(ev[3]) / secs / 1e6, 3) if secs > 0 else 0.0
            w.writerow([layout_rank, rank, *ev, round(secs, 6), mbps])
    os.replace(tmp, path)


def plot(path: Path, rows: Sequence[Row], title: str = "") -> None:
    """One line per rank; a bar per file (colour: write/persist, restore; red: failed), its darker
    head the time to first byte; async snapshots (the stall) as a thin bar under the persist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ranks = sorted({r for _, r, _ in rows})
    labels = {r: lr for lr, r, _ in rows}
    height = max(2.5, min(0.35 * len(ranks) + 1.5, 40))
    fig, ax = plt.subplots(figsize=(12, height))
    for y, rank in enumerate(ranks):
        by_colour: dict[str, list[tuple[float, float]]] = {}
        heads: list[tuple[float, float]] = []
        for _, r, ev in rows:
            if r != rank:
                continue
            kind, start, first, end, ok = ev[0], float(ev[4]), float(ev[6]), float(ev[7]), bool(ev[9])
            colour = COLOURS.get(kind, "#7f7f7f") if ok else "#d62728"
            by_colour.setdefault(colour, []).append((start, max(end - start, 1e-6)))
            if kind != "snapshot" and first > start:
                heads.append((start, first - start))
        for colour, spans in by_colour.items():
            if colour == COLOURS["snapshot"]:
                continue
            ax.broken_barh(spans, (y - 0.35, 0.7), facecolors=colour, edgecolors="white", linewidth=0.3)
        if heads:
            ax.broken_barh(heads, (y - 0.35, 0.7), facecolors="black", alpha=0.35)
        if COLOURS["snapshot"] in by_colour:  # async: the stall, drawn over the persist it overlaps
            ax.broken_barh(by_colour[COLOURS["snapshot"]], (y + 0.05, 0.3), facecolors=COLOURS["snapshot"])
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([f"{r} (L{labels[r]})" for r in ranks], fontsize=7 if len(ranks) > 32 else 9)
    ax.set_ylabel("rank (layout rank)")
    ax.set_xlabel("seconds since the first barrier")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    kinds = sorted({ev[0] for _, _, ev in rows})
    legend = [Patch(color=COLOURS.get(k, "#7f7f7f"), label=k) for k in kinds]
    legend += [
        Patch(color="black", alpha=0.35, label="to first byte"),
        Patch(color="#d62728", label="failed"),
    ]
    fig.legend(handles=legend, loc="lower center", fontsize=8, ncol=len(legend), frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
