"""The figures of a report page, each a PNG in memory (matplotlib, Agg: no display; nothing
written next to the run): latency distributions from the kept histograms, each rank's time
against its phase's median, a checkpoint run's bursts on one clock, grouped bars."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlio_ext.metrics.histogram import NBUCKETS, SUB, Histogram

#: histogram buckets merged into one drawn bin: 128 a power of two -> 8
COARSE = 16
KIND_COLOURS = {"write": "#1f77b4", "stall": "#ff7f0e", "drain": "#9467bd", "persist": "#1f77b4"}
KIND_COLOURS |= {"snapshot": "#ff7f0e", "restore": "#2ca02c"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return buf.getvalue()


def _edges() -> np.ndarray:
    """Lower edges (us) of the drawn bins, and the top of the last: each power of two in 8."""
    per = SUB // COARSE
    g = np.arange(NBUCKETS // COARSE + 1)
    return 2.0 ** (g // per) * (1 + (g % per) / per)


def latency(hists: Mapping[str, Histogram], title: str) -> bytes:
    """Per phase: the share of ops in each latency bin (left) and the share slower than each
    latency (right, log-log: the tail)."""
    plt = _pyplot()
    edges = _edges()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, h in hists.items():
        if not h.n:
            continue
        counts = np.asarray(h.counts, dtype=np.float64).reshape(-1, COARSE).sum(axis=1)
        nz = np.flatnonzero(counts)
        lo, hi = nz[0], nz[-1] + 1
        share = counts[lo:hi] / h.n
        line = left.step(edges[lo : hi + 1], [*share, share[-1]], where="post", label=name)[0]
        slower = 1.0 - np.cumsum(counts[lo:hi]) / h.n
        keep = slower > 0
        right.step(edges[lo + 1 : hi + 1][keep], slower[keep], where="post", color=line.get_color())
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("latency (us)")
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel("share of ops")
    right.set_yscale("log")
    right.set_ylabel("share of ops slower")
    left.legend(fontsize=7, frameon=False, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def rank_ratios(phases: Sequence[str], ranks: Sequence[int], seconds: np.ndarray) -> bytes:
    """Each rank's time in each phase over the phase's median time over ranks (1: the median
    rank; a straggler is red): `seconds` is ranks x phases."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    med = np.median(seconds, axis=0)
    ratio = np.divide(seconds, med, out=np.ones_like(seconds), where=med > 0)
    top = max(2.0, float(ratio.max()))
    height = min(3.0 + 0.25 * len(ranks), 9.0)
    fig, ax = plt.subplots(figsize=(min(3 + 0.45 * len(phases), 14), height))
    im = ax.imshow(
        ratio,
        aspect="auto",
        interpolation="nearest",
        cmap="RdYlGn_r",
        norm=TwoSlopeNorm(vcenter=1.0, vmin=min(0.5, float(ratio.min())), vmax=top),
    )
    ax.set_xticks(range(len(phases)))
    ax.set_xticklabels(phases, rotation=60, ha="right", fontsize=7)
    if len(ranks) <= 32:
        ax.set_yticks(range(len(ranks)))
        ax.set_yticklabels([str(r) for r in ranks], fontsize=7)
        if ratio.size <= 160:
            for (y, x), v in np.ndenumerate(ratio):
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=6)
    ax.set_ylabel("rank")
    fig.colorbar(im, ax=ax, label="rank's time / phase median")
    ax.set_title("time of each rank in each phase, over the phase's median", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def spans(rows: Sequence[tuple[str, str, float, float]], title: str) -> bytes:
    """One bar a (label, kind, start, end), on one clock, top to bottom in the given order."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(12, min(1.5 + 0.3 * len(rows), 12)))
    for y, (_, kind, start, end) in enumerate(rows):
        ax.broken_barh(
            [(start, max(end - start, 1e-6))], (y - 0.4, 0.8), facecolors=KIND_COLOURS.get(kind, "#7f7f7f")
        )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first barrier")
    ax.grid(axis="x", alpha=0.3)
    kinds = sorted({r[1] for r in rows})
    ax.legend(
        handles=[Patch(color=KIND_COLOURS.get(k, "#7f7f7f"), label=k) for k in kinds],
        fontsize=8,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str, title: str) -> bytes:
    """Grouped bars: one group a label, one bar a series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(3 + 0.5 * len(labels) * len(series), 13), 3.8))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(
        labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center", fontsize=7
    )
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
