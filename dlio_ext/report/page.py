"""One run as one self-contained HTML page: CSS inline, figures embedded as PNG data, no script,
nothing fetched. What ran and on what, validity and every reason, the phases, latency
distributions from the kept histograms, each rank's time and the stragglers, the workload's own
view, the figures the run drew. The page is a function of the run directory alone: drawn twice,
it is the same page."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from itertools import islice
from typing import Any

import numpy as np

from dlio_ext import __version__
from dlio_ext.metrics.histogram import Histogram
from dlio_ext.report import plots, views
from dlio_ext.report.markup import Html, blocks, join, note, num, pairs, png, pre, section, table, tag
from dlio_ext.report.rundir import Run

#: phases a latency figure draws (more would be an unreadable legend)
PER_FIGURE = 8
#: ranks listed one a row up to RANK_ROWS; beyond, the WORST_ROWS furthest from their phases' medians
RANK_ROWS = 64
WORST_ROWS = 20

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1300px;padding:0 16px 40px;color:#222}
h1{font-size:22px;margin:18px 0 6px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:28px}
h3{font-size:15px;margin:18px 0 6px}h4{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px}
th,td{border:1px solid #ddd;padding:2px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}td.none{color:#999}
table.kv td:first-child{color:#555;white-space:nowrap}table.kv thead{display:none}
.status{display:inline-block;padding:3px 10px;border-radius:4px;font-weight:bold;color:#fff}
.valid{background:#2e7d32}.invalid{background:#c62828}.incomplete{background:#ef6c00}
.bad{color:#b71c1c}.warn{color:#8d6e00}.note{color:#555}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px;max-height:420px}
code{background:#f3f3f3;padding:1px 4px;word-break:break-all}
figure{margin:8px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:12px;color:#666}
nav a{margin-right:12px}.grid{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
"""

PHASE_HEAD = (
    "phase", "ops", "planned", "bytes", "seconds", "GB/s", "ops/s", "p50 us", "p99 us", "max us",
    "straggler", "errors", "errors by kind", "device bytes", "cache fraction",
)  # fmt: skip
LAT_HEAD = ("phase", "count", "min", "p50", "p90", "p95", "p99", "p99.9", "max", "mean")


def render(run: Run) -> str:
    s = run.summary
    title = f"dlio-ext report: {run.workload}" + (f" on {s['storage'].get('backend')}" if s else "")
    parts: list[Any] = [tag("h1", title), _status(run), _glance(run)]
    anchors = [("validity", "validity")]
    body: list[Any] = [_validity(run)]
    if s:
        anchors += [
            ("phases", "phases"),
            ("latency", "latency"),
            ("ranks", "ranks"),
            ("workload", run.workload),
        ]
        body += [
            _phases(s),
            _latency(s),
            _ranks(run),
            section("workload", f"{run.workload}: its own view", _view(run)),
        ]
        body.append(_figures(run))
    elif run.ranks:
        anchors.append(("ranks", "ranks"))
        body.append(_ranks(run))
    anchors.append(("what", "what ran"))
    body.append(_what(run))
    if run.log_tail:
        anchors.append(("log", "run.log"))
        body.append(section("log", "run.log (its end)", pre("\n".join(run.log_tail))))
    nav = tag("nav", join(tag("a", label, href=f"#{a}") for a, label in anchors))
    foot = note(f"drawn by dlio-ext {__version__} `report` from the run directory alone")
    return (
        "<!DOCTYPE html>\n"
        + tag(
            "html",
            tag("head", Html('<meta charset="utf-8">'), tag("title", title), tag("style", Html(CSS))),
            tag("body", *parts, nav, *body, foot),
            lang="en",
        )
        + "\n"
    )


def _view(run: Run) -> Html:
    """The workload's view; a section it cannot read (damaged, of another shape) is named with
    the error instead: the rest of the page never depends on it."""
    try:
        return views.view(run)
    except Exception as exc:  # a view reads a section written by another version or damaged
        return note(
            f"this view could not be drawn from the {run.workload} section: {type(exc).__name__}: {exc}",
            "bad",
        )


def _status(run: Run) -> Html:
    if run.summary is None or run.incomplete:
        return tag("span", "INCOMPLETE", class_="status incomplete", id="status")
    if run.summary["valid"]:
        return tag("span", "VALID", class_="status valid", id="status")
    return tag("span", "INVALID", class_="status invalid", id="status")


def _glance(run: Run) -> Html:
    """What ran and on what, in a few lines at the top (the whole of it is in "what ran")."""
    s = run.summary
    if s is None:
        return note(f"run directory {run.path.name}: no summary.json")
    st = s["storage"]
    items = [
        (
            "ran",
            f"{s['workload']} with {s['ranks']} rank(s) on {s['hosts']} host(s), {s['started_utc']} to {s['finished_utc']}",
        ),
        ("storage", f"{st.get('backend')}; its data: {s['cleanup'].get('where')}"),
        ("durability", st.get("durability")),
        ("cache control", st.get("cache_control")),
    ]
    if s.get("tier0"):
        items.append(("tier-0", f"{s['tier0'].get('backend')}: {s['tier0'].get('durability')}"))
    return pairs(items, cls="kv glance")


def _validity(run: Run) -> Html:
    s, out = run.summary, []
    if run.incomplete:
        out.append(note(f"this run did not finish: the directory holds {run.path.name}/INCOMPLETE", "bad"))
        out.append(pre(run.incomplete))
    if s is None:
        out.append(
            note("no summary.json: the run stopped before writing its results; what it left is below", "bad")
        )
    else:
        if s["valid"]:
            out.append(
                note("valid: every phase did the work it planned, without errors or a broken claim", "note")
            )
        else:
            out.append(note(f"invalid, for {len(s['invalid_reasons'])} reason(s):", "bad"))
        out.append(tag("ul", join(tag("li", r, class_="bad") for r in s["invalid_reasons"]), id="reasons"))
        for key in ("store_gone", "data_status"):
            if s.get(key):
                out.append(note(f"{key}: {s[key]}", "bad"))
        if s["warnings"]:
            out.append(tag("h3", "warnings"))
            out.append(tag("ul", join(tag("li", w, class_="warn") for w in s["warnings"]), id="warnings"))
    for p in run.problems:
        out.append(note(p, "warn"))
    return section("validity", "validity", *out)


def _what(run: Run) -> Html:
    s, out = run.summary, []
    if s:
        hosts = (run.host or {}).get("hosts")
        out.append(
            pairs(
                [("workload", s["workload"]), ("ranks", s["ranks"]), ("hosts", f"{s['hosts']}" + (f": {', '.join(map(str, hosts))}" if hosts else "")),
                 ("started (UTC)", s["started_utc"]), ("finished (UTC)", s["finished_utc"]),
                 ("dlio-ext", s["dlio_ext_version"]), ("errors", s["errors"])]
            )
        )  # fmt: skip
        out.append(tag("p", "command: ", tag("code", s["command"])))
        out.append(tag("h3", "storage (durability, cache control)"))
        out.append(pairs(s["storage"]))
        if s.get("tier0"):
            out.append(tag("h3", "tier-0"))
            out.append(pairs(s["tier0"]))
        counters = s["counters"] | ({"tier0": s["tier0_counters"]} if s.get("tier0_counters") else {})
        out.append(blocks([("counters", counters), ("cleanup", s["cleanup"])]))
    if run.host:
        out.append(blocks([("host (rank 0's)", {k: v for k, v in run.host.items() if k != "hosts"})]))
    if run.config_text is not None:
        out.append(
            tag(
                "details",
                tag("summary", "config.yaml (the resolved config, credentials redacted)"),
                pre(run.config_text),
            )
        )
    return section("what", "what ran, and on what", *out)


def _phases(s: dict[str, Any]) -> Html:
    rows = []
    for name, p in s["phases"].items():
        lat = p["latency_us"]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(p["error_kinds"].items(), key=lambda kv: -kv[1]))
        rows.append(
            [tag("td", name, class_="name"), num(p["ops"]), num(p["planned_ops"]), num(p["bytes"]), num(p["seconds"], ".4f"),
             num(p["GBps"], ".3f"), num(p["ops_per_s"], ",.1f"), num(lat["p50"], ",.1f"), num(lat["p99"], ",.1f"),
             num(lat["max"], ",.1f"), num(p["straggler_ratio"], ".2f"), num(p["errors"]), kinds, num(p.get("device_bytes")),
             num(p.get("cache_fraction"), ".3f")]
        )  # fmt: skip
    out: list[Any] = [table(PHASE_HEAD, rows, id_="phases")]
    out.append(note("GB/s and ops/s: all ranks' totals over the span from the first rank's start to the last rank's end; "
                    "latency: all ranks' merged histogram; straggler: slowest rank's time / median rank's time; "
                    "device bytes and cache fraction: what the kernel counted (docs/results.md)"))  # fmt: skip
    failing = [(n, p) for n, p in s["phases"].items() if p["errors"]]
    if failing:
        out.append(tag("h3", "errors"))
        out.append(
            table(
                ("phase", "errors", "by kind", "first error"),
                ([n, num(p["errors"]), ", ".join(f"{k} {v}" for k, v in p["error_kinds"].items()), p.get("first_error", "")] for n, p in failing),
                id_="errors",
            )
        )  # fmt: skip
    return section("phases", "phases", *out)


def _latency(s: dict[str, Any]) -> Html:
    hists = {name: Histogram.decode(p["hist"]) for name, p in s["phases"].items()}
    rows = []
    for name, h in hists.items():
        q = h.summary()
        rows.append(
            [
                name,
                num(q["count"]),
                *(num(q[k], ",.1f") for k in ("min", "p50", "p90", "p95", "p99", "p999", "max", "mean")),
            ]
        )
    out: list[Any] = [
        table(LAT_HEAD, rows, id_="latency-table"),
        note("microseconds, from each phase's merged histogram (within 0.8 %)"),
    ]
    drawn = [(n, h) for n, h in hists.items() if h.n]
    size = -(-len(drawn) // -(-len(drawn) // PER_FIGURE)) if drawn else 1  # even groups of at most PER_FIGURE
    for i in range(0, len(drawn), size):
        group = dict(drawn[i : i + size])
        label = f"latency distributions: {', '.join(group)}"
        out.append(png(plots.latency(group, label), label))
    return section("latency", "latency distributions", *out)


def _ranks(run: Run) -> Html:
    if not run.ranks:
        return section("ranks", "ranks", note("no rank files in the directory"))
    names = list(run.ranks[0].phases)
    expected = (run.summary or {}).get("ranks")
    out: list[Any] = []
    if expected is not None and expected != len(run.ranks):
        out.append(note(f"{len(run.ranks)} rank file(s) for a run of {expected} rank(s)", "warn"))
    secs = np.array([[r.phases[n].seconds if n in r.phases else 0.0 for n in names] for r in run.ranks])
    rank_ids = [r.rank for r in run.ranks]
    if names:
        out.append(png(plots.rank_ratios(names, rank_ids, secs), "each rank's time over its phase's median"))
    rows = []
    for j, name in enumerate(names):
        col = secs[:, j]
        med = statistics.median(col.tolist())
        slow = int(np.argmax(col))
        rows.append(
            [name, num(med, ".4f"), num(float(col.min()), ".4f"), num(rank_ids[slow]), run.ranks[slow].host,
             num(float(col[slow]), ".4f"), num(round(float(col[slow]) / med, 4) if med else 0.0, ".2f")]
        )  # fmt: skip
    out.append(tag("h3", "stragglers"))
    out.append(
        table(
            ("phase", "median rank s", "fastest s", "slowest rank", "its host", "its s", "slowest / median"),
            rows,
            id_="stragglers",
        )
    )
    out.append(tag("h3", "per rank"))
    out.append(_rank_rows(run, names, secs))
    return section("ranks", "per-rank times and stragglers", *out)


def _rank_rows(run: Run, names: Sequence[str], secs: np.ndarray) -> Html:
    """One row a rank (the WORST_ROWS furthest from their phases' medians when there are more than RANK_ROWS)."""
    med = np.median(secs, axis=0) if len(secs) else np.zeros(len(names))
    ratio = np.divide(secs, med, out=np.ones_like(secs), where=med > 0)
    worst = ratio.max(axis=1) if names else np.ones(len(run.ranks))
    few = len(run.ranks) <= RANK_ROWS
    order = range(len(run.ranks)) if few else np.argsort(-worst, kind="stable")
    rows = []
    for i in islice(order, RANK_ROWS if few else WORST_ROWS):
        r = run.ranks[int(i)]
        j = int(np.argmax(ratio[int(i)])) if names else 0
        rows.append(
            [num(r.rank), r.host, num(r.wall_seconds, ".3f"), num(sum(p.errors for p in r.phases.values())),
             names[j] if names else "-", num(float(worst[int(i)]), ".2f")]
        )  # fmt: skip
    out = [
        table(
            ("rank", "host", "wall s", "errors", "its slowest phase", "its time / that phase's median"),
            rows,
            id_="per-rank",
        )
    ]
    if not few:
        out.append(
            note(
                f"the {WORST_ROWS} of {len(run.ranks)} ranks furthest from their phases' medians; every rank is in its rank-NNNNN.json"
            )
        )
    return join(out)


def _figures(run: Run) -> Html:
    assert run.summary is not None
    out: list[Any] = []
    for name, file in views.figure_names(run.summary):
        path = run.file(file)
        if name == "error":
            out.append(note(f"a figure could not be drawn when the run ended: {file}", "warn"))
        elif path is not None and path.suffix == ".png":
            out.append(png(path.read_bytes(), f"{name} ({file}, drawn when the run ended)"))
        else:
            out.append(note(f"{name}: {file} is not in the run directory", "warn"))
    if not out:
        out.append(note("the run drew no figures of its own"))
    return section("figures", "figures the run drew (timeline, time series)", *out)
