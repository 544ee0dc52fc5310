"""A checkpoint run's per-rank timeline as a PNG (matplotlib, Agg: no display needed), drawn from
the timeline.csv the workload wrote and its summary: when every file of every checkpoint started,
delivered its first byte and ended, on every rank.

Times are seconds from the moment all ranks left the workload's first barrier, each rank on its
own monotonic clock (ranks leave a barrier within microseconds of each other on one host; across
hosts, allow for the barrier's latency).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {"write": "#1f77b4", "persist": "#1f77b4", "snapshot": "#ff7f0e", "restore": "#2ca02c"}
#: the figure's file in the run directory (its name is also in summary["figures"]["timeline"])
PNG = "timeline.png"

#: (layout rank, rank, event: kind, start_s, first_byte_s, end_s, ok), one a file (or snapshot)
Row = tuple[int, int, tuple[str, float, float, float, bool]]


def read_csv(path: Path) -> list[Row]:
    """The rows of a timeline.csv (the columns the figure needs, by name)."""
    with path.open(newline="") as f:
        return [
            (
                int(r["layout_rank"]),
                int(r["rank"]),
                (
                    r["kind"],
                    float(r["start_s"]),
                    float(r["first_byte_s"]),
                    float(r["end_s"]),
                    r["ok"] == "True",
                ),
            )
            for r in csv.DictReader(f)
        ]


def draw(run_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """report.DRAWERS["checkpoint_burst"]: the timeline figure of a run whose summary names its
    timeline.csv; {} when it names none (a run stopped before its summary)."""
    section = summary.get("checkpoint_burst") or {}
    name = (section.get("timeline") or {}).get("csv")
    if not name:
        return {}
    model = section.get("model") or {}
    title = (
        f"checkpoint_burst {model.get('preset')} ({section.get('mode')}, {section.get('layout')}, "
        f"scale {section.get('scale', 1):g})"
    )
    plot(run_dir / PNG, read_csv(run_dir / name), title=title)
    return {"timeline": PNG}


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
            kind, start, first, end, ok = ev
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
