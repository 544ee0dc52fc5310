"""A set of trials (`run.trials=N`) as one page: each phase's median and spread over the trials
(trials.json), validity and every reason, and a link to each trial's own page (report.html in
its directory, drawn first by `dlio-ext report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlio_ext import __version__
from dlio_ext.errors import UsageError
from dlio_ext.metrics import trials
from dlio_ext.report.markup import Html, note, num, pairs, section, table, tag
from dlio_ext.report.page import CSS

FIGURES = (
    ("GBps", "GB/s", ".3f"),
    ("ops_per_s", "ops/s", ""),
    ("p50_us", "p50 us", ""),
    ("p99_us", "p99 us", ""),
)


def load(path: Path) -> dict[str, Any] | None:
    """trials.json of a trial set in `path`, None when `path` is not one; UsageError when it is
    one this version cannot read."""
    f = path / trials.TRIALS_FILE
    if not f.is_file() or (path / "summary.json").is_file():
        return None
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{f}: cannot be read ({exc})") from None
    if doc.get("schema") != trials.SCHEMA:
        raise UsageError(
            f"{f}: schema {doc.get('schema')!r}, not {trials.SCHEMA!r} (made by another version)"
        )
    return doc


def render(doc: dict[str, Any], pages: dict[str, str]) -> str:
    """The set's page; `pages` maps each trial's directory name to its page, relative."""
    valid = bool(doc.get("valid"))
    head = ["phase"] + [f"{label} {what}" for _, label, _ in FIGURES for what in ("median", "spread %")]
    rows = []
    for name, p in doc.get("phases", {}).items():
        row: list[Any] = [name]
        for key, _, spec in FIGURES:
            row += [num(p[key]["median"], spec), num(p[key]["spread_pct"], ".1f")]
        rows.append(row)
    links = [
        tag(
            "li",
            tag("a", d, href=pages[d]) if d in pages else d,
            " (no page: its run directory is incomplete)" if d not in pages else "",
        )
        for d in doc.get("runs", [])
    ]
    body = [
        tag("h1", f"dlio-ext report: {doc.get('trials')} trials of {doc.get('workload')}"),
        tag("span", "VALID" if valid else "INVALID", class_="status " + ("valid" if valid else "invalid")),
        pairs(
            [
                ("command", doc.get("command")),
                ("ranks", doc.get("ranks")),
                ("storage", (doc.get("storage") or {}).get("backend")),
            ]
        ),
        section(
            "validity",
            "validity",
            note("every trial valid" if valid else "not every trial is valid")
            if valid
            else tag("ul", *(tag("li", r, class_="bad") for r in doc.get("invalid_reasons", []))),
        ),
        section(
            "phases",
            "phases over the trials",
            table(head, rows),
            note(doc.get("definitions", {}).get("spread_pct", "")),
        ),
        section("trials", "each trial's page", tag("ul", *links)),
        note(f"drawn by dlio-ext {__version__} `report` from the trial set's directory alone"),
    ]
    page_head = tag(
        "head", Html('<meta charset="utf-8">'), tag("title", "dlio-ext trials"), tag("style", Html(CSS))
    )
    return "<!DOCTYPE html>\n" + tag("html", page_head, tag("body", *body), lang="en") + "\n"
