"""What a server counts and times, and the time series it leaves: `Stats` is one thread's record
(the phase runner's OpRecord with the server's counters), `kinds` say which of its parts make the
phases request/read/write/lookup_miss (and tier0_read/tier0_write/tier0_miss), and `timeseries` turns every rank's per-interval counts
into timeseries.csv (the figure is drawn from it in dlio_ext/report/timeseries.py; a run with a
tier-0 adds a tier0_read_GBps column).

Interval i covers [i x interval, (i + 1) x interval) seconds from the moment all ranks left the
start barrier; an operation counts in the interval in which it ended. Columns are rates (per
second), summed over ranks."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlio_ext.workloads.kv_cache.config import AUTO_POINTS
from dlio_ext.workloads.phases import OpKind, OpRecord

LOGS = (
    "read",
    "write",
    "miss",
    "request",
    "ttft",
    "load",
    "queue",
    "tier0_read",
    "tier0_write",
    "tier0_miss",
)
#: the latency histograms a rank sends to rank 0 (summary.json's latency_ms entries): every log
HISTS = LOGS
COUNTERS = (
    "requests",
    "context_tokens",
    "full_chunks",
    "hit_memory",
    "hit_write_queue",
    "hit_storage",
    "recomputed_tokens",
    "reads",
    "read_bytes",
    "writes",
    "write_bytes",
    "writes_dropped",
    "lookup_misses",
    "skipped_known",
    "skipped_in_flight",
    "cross_rank_reads",
    "verified",
    "evicted_misses",
    # every chunk looked up ends in one tier's hit, in `missed` (found nowhere) or `failed` (a
    # storage read error ended the prefix): hit_memory + hit_write_queue + hit_tier0 + hit_storage
    # + missed + failed = lookups
    "lookups",
    "missed",
    "failed",
    # the tier-0 (see tiers.Tier0)
    "hit_tier0",
    "tier0_reads",
    "tier0_read_bytes",
    "tier0_misses",
    "tier0_verified",
    "tier0_writes",
    "tier0_write_bytes",
    "tier0_promotions",
    "tier0_not_placed",
    "tier0_cross_rank_reads",
    "tier0_peer_reads",
    "tier0_evicted_misses",
)


class Stats(OpRecord):
    """What one thread (a user or a write-back writer) counts; no locks, merged at the end."""

    def __init__(self, interval: float, tier0: bool = False):
        failing = ("read", "write", "tier0_read", "tier0_write") if tier0 else ("read", "write")
        super().__init__(interval, LOGS, COUNTERS, failing)
        self.backpressure_s = 0.0


def kinds(cold: bool, tier0: bool = False) -> list[OpKind]:
    """The phases of a serving run, in the order summary.json lists them. The tier-0's have no
    `io`: the kernel's counters watch the storage's device, not the tier-0's memory."""
    storage = [
        OpKind("request", "request", "requests"),
        OpKind("read", "read", "reads", "read_bytes", errors="read", io="read", cold=cold),
        OpKind(
            "write", "write", "writes", "write_bytes", errors="write", dropped="writes_dropped", io="write"
        ),
        OpKind("lookup_miss", "miss", "lookup_misses"),
    ]
    if not tier0:
        return storage
    return [
        *storage,
        OpKind("tier0_read", "tier0_read", "tier0_reads", "tier0_read_bytes", errors="tier0_read"),
        OpKind("tier0_write", "tier0_write", "tier0_writes", "tier0_write_bytes", errors="tier0_write"),
        OpKind("tier0_miss", "tier0_miss", "tier0_misses"),
    ]


# --- the time series ----------------------------------------------------------------------------------


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


def timeseries(
    run_dir: Path, per_rank: list[dict[str, Any]], chunk_bytes: int, chunk_tokens: int, auto: bool
) -> dict[str, Any]:
    """Sum the ranks' per-interval counts, merge bins (1-2-5 steps) to at most AUTO_POINTS points
    when the interval is `auto`, and write timeseries.csv; summary.json's `timeseries` entry."""
    interval = per_rank[0]["series"]["interval_s"]

    def total(name: str) -> np.ndarray:
        n = max((len(m["series"][name]) for m in per_rank), default=0)
        acc = np.zeros(n, np.int64)
        for m in per_rank:
            s = m["series"][name]
            acc[: len(s)] += np.asarray(s, np.int64)
        return acc

    # the tier-0's reads, when the run had one (its column is left out otherwise)
    names = ["read_chunks", "write_chunks", "requests"]
    names += [t for t in ("tier0_read_chunks",) if t in per_rank[0]["series"]]
    series = [total(name) for name in names]
    n = max(len(a) for a in series)
    pad = [np.pad(a, (0, n - len(a))) for a in series]
    if auto and n > AUTO_POINTS:
        factor = next(f for f in (m * 10**e for e in range(9) for m in (1, 2, 5)) if n / f <= AUTO_POINTS)
        n = -(-n // factor) * factor
        pad = [np.pad(a, (0, n - len(a))).reshape(-1, factor).sum(axis=1) for a in pad]
        interval *= factor
    reads, writes, reqs = pad[:3]
    cols = {
        "read_GBps": (reads * chunk_bytes / interval / 1e9).tolist(),
        "write_GBps": (writes * chunk_bytes / interval / 1e9).tolist(),
        "requests_per_s": (reqs / interval).tolist(),
        "storage_read_tokens_per_s": (reads * chunk_tokens / interval).tolist(),
        "storage_write_tokens_per_s": (writes * chunk_tokens / interval).tolist(),
    }
    if len(pad) > 3:
        cols["tier0_read_GBps"] = (pad[3] * chunk_bytes / interval / 1e9).tolist()
    path = run_dir / "timeseries.csv"
    try:
        write_csv(path, interval, cols)
    except OSError as exc:  # a full results disk must not lose the summary's numbers
        return {"interval_s": interval, "error": f"{type(exc).__name__}: {exc}"}
    return {"interval_s": interval, "csv": path.name}
