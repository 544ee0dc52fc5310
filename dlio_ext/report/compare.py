"""`dlio-ext compare RUN RUN ...`: runs side by side, phase by phase, as text, JSON and HTML.

A run is a run directory (its summary.json) or a set of trials (`run.trials=N`: its trials.json,
whose figures are medians with a spread). The first run is the baseline: every other run's
figures carry their change from it in %. Runs that are invalid, or not comparable (another
workload, other phases), are refused in one line unless `--force`, and then marked. Between two
sets of trials a change within the larger of their ranges is called noise; with a single run the
noise is unknown, and the table says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlio_ext.errors import OneLineParser, UsageError
from dlio_ext.metrics import trials
from dlio_ext.report.markup import Html, section, table, tag
from dlio_ext.report.page import CSS

#: the figures compared, in order, and whether more is better
FIGURES: dict[str, bool] = {
    "GBps": True,
    "ops_per_s": True,
    "p50_us": False,
    "p99_us": False,
    "straggler_ratio": False,
}


@dataclass
class Run:
    path: Path
    workload: str
    valid: bool
    reasons: list[str]
    trials: int
    #: phase -> figure -> (median, min, max); min = max = the value for a single run
    phases: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def load(path: Path) -> Run:
    """A run directory or a set of trials; one UsageError line when it is neither."""
    tri, summ = path / trials.TRIALS_FILE, path / "summary.json"
    try:
        if tri.is_file():
            doc = json.loads(tri.read_text())
            if doc.get("schema") != trials.SCHEMA:
                raise UsageError(f"{tri}: not a dlio-ext trials file (schema {doc.get('schema')!r})")
            phases = {
                n: {f: (p[f]["median"], p[f]["min"], p[f]["max"]) for f in FIGURES}
                for n, p in doc["phases"].items()
            }
            return Run(path, doc["workload"], doc["valid"], doc["invalid_reasons"], doc["trials"], phases)
        doc = json.loads(summ.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{path}: not a run directory (no summary.json or trials.json); give a run's results directory"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: its results cannot be read ({exc})") from None
    if not str(doc.get("schema", "")).startswith("dlio-ext/summary/"):
        raise UsageError(f"{summ}: not a dlio-ext summary (schema {doc.get('schema')!r})")
    phases = {}
    for n, p in doc.get("phases", {}).items():
        vals = {f: get(p) for f, get in trials.FIGURES.items() if f in FIGURES}
        phases[n] = {f: (v, v, v) for f, v in vals.items()}
    return Run(path, doc["workload"], bool(doc["valid"]), list(doc.get("invalid_reasons", [])), 1, phases)


def _change(base: float, v: float) -> float | None:
    return round((v - base) / base * 100, 2) if base else None


def _noise(a: tuple[float, float, float], b: tuple[float, float, float], na: int, nb: int) -> str:
    """'noise' when the medians differ by less than the larger range of two trial sets."""
    if na < 2 or nb < 2:
        return "unknown (one trial)"
    width = max(a[2] - a[1], b[2] - b[1])
    return "noise" if abs(b[0] - a[0]) <= width else "beyond noise"


def compare(runs: Sequence[Run], force: bool = False) -> dict[str, Any]:
    """The comparison as data (what --json writes); refuses what cannot be compared."""
    if len(runs) < 2:
        raise UsageError("compare needs two or more runs: dlio-ext compare RUN RUN [...]")
    base = runs[0]
    marks: dict[str, list[str]] = {r.name: [] for r in runs}
    for r in runs:
        if not r.valid:
            why = "; ".join(r.reasons) or "invalid"
            if not force:
                raise UsageError(f"{r.path} is an invalid run ({why}); --force compares it anyway, marked")
            marks[r.name].append(f"invalid: {why}")
        if r.workload != base.workload or set(r.phases) != set(base.phases):
            what = (
                f"workload {r.workload} vs {base.workload}"
                if r.workload != base.workload
                else f"phases {sorted(r.phases)} vs {sorted(base.phases)}"
            )
            if not force:
                raise UsageError(
                    f"{r.path} is not comparable with {base.path} ({what}); --force compares it anyway, marked"
                )
            marks[r.name].append(f"not comparable: {what}")
    phases: dict[str, list[dict[str, Any]]] = {}
    for name in base.phases:
        rows = []
        for r in runs:
            if name not in r.phases:
                continue
            row: dict[str, Any] = {"run": r.name, "trials": r.trials}
            for f in FIGURES:
                v = r.phases[name][f]
                row[f] = {"value": v[0], "min": v[1], "max": v[2]}
                if r is not base:
                    b = base.phases[name][f]
                    row[f]["change_pct"] = _change(b[0], v[0])
                    row[f]["noise"] = _noise(b, v, base.trials, r.trials)
            rows.append(row)
        phases[name] = rows
    return {
        "baseline": base.name,
        "runs": [
            {"run": r.name, "path": str(r.path), "trials": r.trials, "marks": marks[r.name]} for r in runs
        ],
        "workload": base.workload,
        "phases": phases,
        "figures": {f: ("higher is better" if up else "lower is better") for f, up in FIGURES.items()},
    }


def _cell(row: dict[str, Any], f: str) -> str:
    c = row[f]
    v = f"{c['value']:,.3f}" if f in ("GBps", "straggler_ratio") else f"{c['value']:,.0f}"
    if "change_pct" in c and c["change_pct"] is not None:
        v += f" ({c['change_pct']:+.1f}%{', noise' if c['noise'] == 'noise' else ''})"
    return v


def text(model: dict[str, Any]) -> str:
    out = [f"baseline: {model['baseline']}; change in % against it; 'noise': within the trials' spread"]
    for r in model["runs"]:
        marks = f"  [{'; '.join(r['marks'])}]" if r["marks"] else ""
        out.append(f"  {r['run']}: {r['trials']} trial(s){marks}")
    heads = {
        "GBps": "GB/s",
        "ops_per_s": "ops/s",
        "p50_us": "p50 us",
        "p99_us": "p99 us",
        "straggler_ratio": "straggler",
    }
    for name, rows in model["phases"].items():
        out.append("")
        out.append(f"phase {name}")
        width = max(len(r["run"]) for r in rows) + 2
        out.append(f"{'run':<{width}}" + "".join(f"{heads[f]:>26}" for f in FIGURES))
        for row in rows:
            out.append(f"{row['run']:<{width}}" + "".join(f"{_cell(row, f):>26}" for f in FIGURES))
    return "\n".join(out)


def page(model: dict[str, Any]) -> str:
    """A self-contained HTML page of the comparison, built with the run report's markup (every
    value from a run escaped) and its style."""
    runs = [
        tag(
            "li",
            f"{r['run']}: {r['trials']} trial(s) ({r['path']})",
            *([" ", tag("span", f"[{'; '.join(r['marks'])}]", class_="bad")] if r["marks"] else []),
        )
        for r in model["runs"]
    ]
    body = [
        tag("h1", f"dlio-ext compare: {model['workload']}"),
        tag(
            "p",
            f"baseline: {model['baseline']}; changes in % against it; 'noise' = within the trials' spread",
        ),
        tag("ul", *runs),
    ]
    for name, rows in model["phases"].items():
        body.append(
            section(
                f"phase-{name}",
                f"phase {name}",
                table(["run", *FIGURES], ([row["run"], *(_cell(row, f) for f in FIGURES)] for row in rows)),
            )
        )
    head = tag(
        "head", Html('<meta charset="utf-8">'), tag("title", "dlio-ext compare"), tag("style", Html(CSS))
    )
    return "<!doctype html>" + tag("html", head, tag("body", *body))


def main(argv: Sequence[str]) -> int:
    ap = OneLineParser(prog="dlio-ext compare", description=__doc__.split("\n")[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="run directories or trial sets; the first is the baseline"
    )
    ap.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    ap.add_argument("--html", type=Path, help="also write it as a self-contained HTML page here")
    ap.add_argument("--force", action="store_true", help="compare invalid or mismatched runs too, marked")
    args = ap.parse_args(list(argv))
    model = compare([load(p) for p in args.runs], force=args.force)
    print(text(model))
    try:
        if args.json:
            args.json.write_text(json.dumps(model, indent=1) + "\n")
            print(f"json: {args.json}")
        if args.html:
            args.html.write_text(page(model))
            print(f"html: {args.html}")
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return 0
