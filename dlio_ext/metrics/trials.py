"""Repeated trials of one configuration (`run.trials=N`): the median and spread of every phase's
headline figures, from the trials' own summaries.

MLPerf Storage asks for several trials because one run is not a measurement on a shared system
(its KV-cache discovery runs varied by more than 100 %). The spread is the range over trials as a
share of the median; `compare` calls a difference between two sets of trials noise when it is
within that spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

SCHEMA = "dlio-ext/trials/1"
TRIALS_FILE = "trials.json"

#: per phase, the figures a trial set summarises: (name, how to read it from a merged phase)
FIGURES: dict[str, Any] = {
    "GBps": lambda p: p["GBps"],
    "ops_per_s": lambda p: p["ops_per_s"],
    "p50_us": lambda p: p["latency_us"]["p50"],
    "p99_us": lambda p: p["latency_us"]["p99"],
    "seconds": lambda p: p["seconds"],
    "straggler_ratio": lambda p: p["straggler_ratio"],
}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """The values, their median, min, max and the range as a share of the median (%)."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "values": [round(v, 6) for v in values],
        "median": round(med, 6),
        "min": round(lo, 6),
        "max": round(hi, 6),
        "spread_pct": round((hi - lo) / med * 100, 2) if med else 0.0,
    }


def aggregate(summaries: Sequence[dict[str, Any]], dirs: Sequence[str]) -> dict[str, Any]:
    """One document over the trials: each trial's directory and validity, and per phase (the
    phases every trial has) the spread of each figure."""
    first = summaries[0]
    reasons = [f"trial {i + 1}: {r}" for i, s in enumerate(summaries) for r in s.get("invalid_reasons", [])]
    names = [n for n in first.get("phases", {}) if all(n in s.get("phases", {}) for s in summaries)]
    phases = {
        n: {fig: spread([get(s["phases"][n]) for s in summaries]) for fig, get in FIGURES.items()}
        for n in names
    }
    return {
        "schema": SCHEMA,
        "workload": first.get("workload"),
        "workload_config": first.get("workload_config"),
        "storage": first.get("storage"),
        "ranks": first.get("ranks"),
        "command": first.get("command"),
        "trials": len(summaries),
        "runs": list(dirs),
        "valid": not reasons and all(s.get("valid") for s in summaries),
        "invalid_reasons": reasons,
        "phases": phases,
        "definitions": {
            "median": "the median over trials of the phase's figure in each trial's summary",
            "spread_pct": "(max - min) / median x 100, over the trials",
        },
    }
