"""Figures and pages drawn from a run's results (summary.json and the data files the workload
wrote next to it): nothing here runs during a run's phases or knows a backend.

`figures` draws a workload's figures when its run ends (timeline, timeseries); `dlio-ext report`
(command: rundir reads the directory, page assembles the HTML from markup, plots and views, text
the terminal summary) renders a finished or stopped run at any time later."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlio_ext.report import timeline, timeseries

#: workload name -> draws that workload's figures from its run directory and summary, returning
#: {figure name: file name written}
DRAWERS: dict[str, Callable[[Path, dict[str, Any]], dict[str, str]]] = {
    "checkpoint_burst": timeline.draw,
    "kv_cache": timeseries.draw,
}


def figures(run_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """Draw every figure a run's results allow; a figure that fails is named with its error
    instead (a plot must never lose a run's numbers)."""
    draw = DRAWERS.get(str(summary.get("workload")))
    if draw is None:
        return {}
    try:
        return draw(run_dir, summary)
    except Exception as exc:  # matplotlib or a damaged data file: the numbers stay
        return {"error": f"{type(exc).__name__}: {exc}"}
