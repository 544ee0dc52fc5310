"""Merging per-rank phase results and writing a run's results directory.

summary.json is the stable, versioned contract (`schema`); per-rank JSON, phases.csv,
config.yaml (secrets redacted) and host.json sit beside it.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from dlio_ext.metrics.histogram import Histogram

SCHEMA = "dlio-ext/summary/1"
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")


def merge_phase(per_rank: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One phase over all ranks: totals, the span from first start to last end, merged latency."""
    active = [r for r in per_rank if r["ops"] or r["errors"]]
    ops = sum(r["ops"] for r in per_rank)
    nbytes = sum(r["bytes"] for r in per_rank)
    errors = sum(r["errors"] for r in per_rank)
    kinds: dict[str, int] = {}
    for r in per_rank:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    first_start = min((r["start"] for r in active), default=0.0)
    last_end = max((r["end"] for r in active), default=0.0)
    seconds = max(last_end - first_start, 0.0)
    rank_secs = sorted(max(r["end"] - r["start"], 0.0) for r in per_rank)
    median = statistics.median(rank_secs) if rank_secs else 0.0
    hist = Histogram.merged(Histogram.from_state(r["hist"]) for r in per_rank)
    lat = hist.summary()
    out: dict[str, Any] = {
        "ops": ops,
        "planned_ops": sum(r["planned_ops"] for r in per_rank),
        "bytes": nbytes,
        "errors": errors,
        "error_kinds": kinds,
        "seconds": round(seconds, 9),
        "ops_per_s": round(ops / seconds, 3) if seconds else 0.0,
        "GBps": round(nbytes / seconds / 1e9, 6) if seconds else 0.0,
        "latency_us": {k: lat[k] for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean")},
        "rank_seconds": {
            "min": round(rank_secs[0], 9) if rank_secs else 0.0,
            "p50": round(median, 9),
            "max": round(rank_secs[-1], 9) if rank_secs else 0.0,
        },
        # elbencho's columns: when the first rank finished, and when the last did
        "first_done_s": round(min((r["end"] for r in active), default=0.0) - first_start, 6),
        "last_done_s": round(seconds, 9),
        "straggler_ratio": round(rank_secs[-1] / median, 4) if median else 0.0,
    }
    firsts = [r["first_error"] for r in per_rank if r.get("first_error")]
    if firsts:
        out["first_error"] = firsts[0]
    extras = [r["extra"] for r in per_rank if r.get("extra")]
    if extras:
        out["extra"] = _sum_extras(extras)
    return out


#: numeric extras whose merge over ranks is the largest value, not the sum: a time on the phase's
#: clock, or a value all ranks agreed on (the stonewall's, see PhaseRunner.run)
MAX_EXTRAS = frozenset({"stonewall_seconds", "stonewall_target"})


def _sum_extras(extras: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in extras:
        for k, v in e.items():
            if k in MAX_EXTRAS and isinstance(v, int | float):
                out[k] = max(out.get(k, v), v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out


def host_info() -> dict[str, Any]:
    versions = {}
    for pkg in ("dlio-ext", "numpy", "boto3", "obstore", "mpi4py", "hydra-core", "dlio-benchmark"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except Exception:  # psutil is optional for this record only
        mem = None
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "packages": versions,
    }


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename, so a reader never sees a half-written file."""
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_yaml(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    os.replace(tmp, path)


def write_phases_csv(path: Path, phases: dict[str, dict[str, Any]]) -> None:
    cols = ["phase", "ops", "bytes", "errors", "seconds", "ops_per_s", "GBps"]
    cols += [f"lat_{k}_us" for k in LATENCY_KEYS]
    cols += ["rank_s_min", "rank_s_p50", "rank_s_max", "straggler_ratio"]
    tmp = path.with_suffix(".csv.partial")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for name, p in phases.items():
            w.writerow(
                [name, p["ops"], p["bytes"], p["errors"], p["seconds"], p["ops_per_s"], p["GBps"]]
                + [p["latency_us"][k] for k in LATENCY_KEYS]
                + [p["rank_seconds"][k] for k in ("min", "p50", "max")]
                + [p["straggler_ratio"]]
            )
    os.replace(tmp, path)
