"""The scorecard: every target's figures side by side, read from what the suite's steps wrote,
each linked to the page of the run it came from; costs with their formulas. JSON and one
self-contained HTML page (no script, no network; every text from a run or a file is escaped).

Run figures are the median over the run's trials (each trial's summary.json), with the spread
((max - min) / median, %) beside it. Operational figures are measured: s3-faults' restart and
throttling scenarios, the retries and throttles the runs' own clients counted, s3-compat's probes.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlio_ext.evaluate.suite import Outcome, Suite
from dlio_ext.evaluate.targets import Target
from dlio_ext.evaluate.tco import cost_figures
from dlio_ext.metrics.trials import TRIALS_FILE
from dlio_ext.report.markup import Html, fmt, note, section, table, tag
from dlio_ext.report.page import CSS

SCHEMA = "dlio-ext/scorecard/1"
Getter = Callable[[dict[str, Any]], Any]
#: (section, id, label, unit, better, getter) of each figure a run item gives
Spec = tuple[str, str, str, str, str, Getter]


def _dig(*path: str) -> Getter:
    def get(doc: dict[str, Any]) -> Any:
        for p in path:
            if not isinstance(doc, dict) or p not in doc:
                return None
            doc = doc[p]
        return doc

    return get


def _sweep(item: str, what: str) -> list[Spec]:
    """A storage_sweep's phases: GB/s (large objects) or ops/s and p99 (small objects)."""
    out: list[Spec] = []
    for phase in ("write", "read_sequential", "read_random"):
        if what == "GBps":
            out.append(("performance", f"{item}.{phase}.GBps", f"{item} {phase} GB/s", "GB/s", "higher",
                        _dig("phases", phase, "GBps")))  # fmt: skip
        else:
            out.append(("performance", f"{item}.{phase}.ops_per_s", f"{item} {phase} ops/s", "ops/s", "higher",
                        _dig("phases", phase, "ops_per_s")))  # fmt: skip
            out.append(("performance", f"{item}.{phase}.p99_us", f"{item} {phase} p99 latency", "us", "lower",
                        _dig("phases", phase, "latency_us", "p99")))  # fmt: skip
    return out


_CB = ("checkpoint_burst",)
_KV = ("kv_cache",)
RUN_FIGURES: dict[str, list[Spec]] = {
    "checkpoint": [
        ("performance", "checkpoint.write_GBps", "checkpoint write (burst) GB/s", "GB/s", "higher",
         _dig(*_CB, "write", "overall", "GBps")),
        ("performance", "checkpoint.restore_GBps", "checkpoint restore GB/s", "GB/s", "higher",
         _dig(*_CB, "restore", "overall", "GBps")),
        ("performance", "checkpoint.burst_p50_s", "checkpoint burst p50", "s", "lower",
         _dig(*_CB, "write", "overall", "burst_seconds", "p50")),
        ("performance", "checkpoint.full_size_s", "checkpoint time at full size (burst / scale)", "s", "lower",
         _dig(*_CB, "goodput", "full_size_estimate", "checkpoint_s")),
        ("performance", "checkpoint.goodput", "goodput at Daly's interval (full size, the run's MTBF)", "", "higher",
         _dig(*_CB, "goodput", "full_size_estimate", "goodput")),
    ],
    "kv_cache": [
        ("performance", "kv_cache.read_GBps", "KV cache read GB/s", "GB/s", "higher", _dig(*_KV, "read", "GBps")),
        ("performance", "kv_cache.read_p95_ms", "KV cache read p95 (max over ranks)", "ms", "lower",
         _dig(*_KV, "mlperf_v3_style", "max_rank_p95_read_ms")),
        ("performance", "kv_cache.write_p95_ms", "KV cache write p95 (max over ranks)", "ms", "lower",
         _dig(*_KV, "mlperf_v3_style", "max_rank_p95_write_ms")),
        ("performance", "kv_cache.ttft_p95_ms", "KV cache TTFT p95", "ms", "lower", _dig(*_KV, "ttft_ms", "p95")),
        ("performance", "kv_cache.tokens_per_s", "KV cache storage tokens/s", "tokens/s", "higher",
         _dig(*_KV, "storage_tokens_per_s", "total")),
        ("performance", "kv_cache.hit_rate", "KV cache token hit rate", "", "higher",
         _dig(*_KV, "hit_rate", "tokens", "total")),
    ],
    "metadata": [
        ("performance", f"metadata.{p}", f"metadata {p} /s", "items/s", "higher", _dig("metadata", "phases", p, "rate"))
        for p in ("file_create", "file_stat", "file_read", "file_list", "list_storm", "file_rename",
                  "file_remove", "dir_create", "dir_stat", "dir_remove")
    ] + [("performance", "metadata.geomean", "metadata geometric mean /s", "items/s", "higher",
          _dig("metadata", "geomean", "rate"))],
    "small_objects": _sweep("small_objects", "ops"),
    "large_objects": _sweep("large_objects", "GBps"),
}  # fmt: skip
#: (id, label, unit, better, key in the scenario's report) of s3-faults' scenarios
FAULT_FIGURES: dict[str, list[tuple[str, str, str, str, str]]] = {
    "restart": [
        ("restart.time_to_recover_s", "restart: first success after the restart began", "s", "lower", "time_to_recover_s"),
        ("restart.client_outage_s", "restart: failures seen by the client", "s", "lower", "client_outage_s"),
        ("restart.requests_failed", "restart: requests failed in the outage", "", "lower", "requests_failed_in_outage"),
        ("restart.failed_operations", "restart: operations failed after retries", "", "lower", "failed_operations"),
        ("restart.intact", "restart: every acknowledged write intact", "", "yes", "intact"),
    ],
    "proxy": [
        ("throttling.failed_operations", "throttling: operations failed after retries", "", "lower", "failed_operations"),
        ("throttling.intact", "throttling: every acknowledged write intact", "", "yes", "intact"),
    ],
    "wrong-credentials": [
        ("wrong_credentials.failed_fast", "wrong keys refused at once, nothing written", "", "yes", "failed_fast"),
        ("wrong_credentials.seconds", "wrong keys: seconds until refused", "s", "lower", "seconds"),
    ],
}  # fmt: skip
SECTIONS = ("performance", "operations", "compatibility")


def trial_summaries(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(trial directory name, summary) of each trial of a run (one, named "", when run.trials=1)."""
    if (run_dir / TRIALS_FILE).is_file():
        runs = [str(r) for r in json.loads((run_dir / TRIALS_FILE).read_text()).get("runs", [])]
    else:
        runs = [""]
    return [
        (r, json.loads((run_dir / r / "summary.json").read_text()))
        for r in runs
        if (run_dir / r / "summary.json").is_file()
    ]


def _median(values: list[float]) -> dict[str, Any]:
    med = statistics.median(values)
    out: dict[str, Any] = {"value": round(med, 6), "trials": len(values)}
    if len(values) > 1:
        out["values"] = [round(v, 6) for v in values]
        out["spread_pct"] = round((max(values) - min(values)) / med * 100, 2) if med else 0.0
    return out


def _ops_and_counters(summaries: Iterable[dict[str, Any]]) -> tuple[float, float, float, float]:
    ops = retries = throttles = errors = 0.0
    for s in summaries:
        ops += sum(p.get("ops", 0) + p.get("errors", 0) for p in s.get("phases", {}).values())
        c = s.get("counters", {})
        retries += c.get("retries", 0)
        throttles += c.get("throttles", 0)
        errors += c.get("errors", 0)
    return ops, retries, throttles, errors


def _per_1k(ops: float, n: float, base: dict[str, Any], what: str) -> dict[str, Any]:
    return base | {"value": round(n / ops * 1000, 6) if ops else 0.0, "count": n, "ops": ops,
                   "formula": f"{what} / ops x 1000 (every phase's ops and failed ops, all trials)"}  # fmt: skip


def run_figures(o: Outcome) -> dict[str, dict[str, Any]]:
    named = trial_summaries(Path(o.dir)) if o.dir else []
    summaries = [s for _, s in named]
    figs: dict[str, dict[str, Any]] = {}
    if not summaries:
        return figs
    for sec, fid, label, unit, better, get in RUN_FIGURES[o.item]:
        got = [
            (n, v)
            for n, v in ((n, get(s)) for n, s in named)
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        values = [v for _, v in got]
        if values:
            med = statistics.median(values)
            figs[fid] = {
                # the trial nearest the median: its page is the one this figure links to
                "trial": min(got, key=lambda nv: abs(nv[1] - med))[0],
                "section": sec,
                "label": label,
                "unit": unit,
                "better": better,
                **_median(values),
            }
    ops, retries, throttles, errors = _ops_and_counters(summaries)
    base = {"section": "operations", "unit": "per 1,000 ops", "better": "lower"}
    figs[f"{o.item}.retries_per_1k"] = _per_1k(
        ops, retries, base | {"label": f"{o.item}: retries / 1,000 ops"}, "retries"
    )
    figs[f"{o.item}.throttles_per_1k"] = _per_1k(
        ops, throttles, base | {"label": f"{o.item}: throttled (503 SlowDown) / 1,000 ops"}, "throttles"
    )
    figs[f"{o.item}.errors_per_1k"] = _per_1k(
        ops, errors, base | {"label": f"{o.item}: failed ops / 1,000 ops"}, "errors"
    )
    figs[f"{o.item}.valid"] = {"section": "operations", "label": f"{o.item}: every trial valid", "unit": "",
                               "better": "yes", "value": all(s.get("valid") for s in summaries)}  # fmt: skip
    return figs


def fault_figures(o: Outcome) -> dict[str, dict[str, Any]]:
    scenario = o.item.split("/", 1)[1]
    path = Path(o.dir) / "s3-faults.json"
    if not path.is_file():
        return {}
    key = "wrong_credentials" if scenario == "wrong-credentials" else scenario
    report = json.loads(path.read_text()).get("scenarios", {}).get(key)
    if not isinstance(report, dict):
        return {}
    figs: dict[str, dict[str, Any]] = {}
    for fid, label, unit, better, k in FAULT_FIGURES[scenario]:
        v = report.get(k)
        if scenario == "proxy" and k == "failed_operations":
            v = report.get("counters", {}).get("errors")
        if v is not None:
            figs[fid] = {"section": "operations", "label": label, "unit": unit, "better": better, "value": v}
    if scenario == "proxy":
        figs.update(_throttled(report, Path(o.dir)))
    return figs


def _throttled(report: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    """Throughput and error rate of the sweep that ran through the injected 503s and resets."""
    base = {"section": "operations"}
    rates = report.get("fault_rates", {})
    injected = report.get("proxy", {}).get("injected", {})
    phases = report.get("through_faults", {})
    ops = sum(p.get("ops", 0) + p.get("errors", 0) for p in phases.values())
    failed = sum(p.get("errors", 0) for p in phases.values())
    c = report.get("counters", {})
    figs = {
        "throttling.injected": base | {"label": "throttling: requests answered 503 SlowDown (injected)",
                                       "unit": "", "better": "", "value": injected.get("slowdown", 0),
                                       "fault_rates": rates},
        "throttling.error_rate": base | {"label": "throttling: error rate (failed ops / ops)", "unit": "",
                                         "better": "lower", "value": round(failed / ops, 6) if ops else 0.0,
                                         "formula": "failed ops / (ops + failed ops) of the sweep through the faults"},
        "throttling.retries_per_1k": base | {"label": "throttling: retries / 1,000 ops", "unit": "per 1,000 ops",
                                             "better": "lower",
                                             "value": round(c.get("retries", 0) / ops * 1000, 6) if ops else 0.0},
    }  # fmt: skip
    sweeps = sorted((out / "sweep").glob("*/summary.json"))
    if len(sweeps) == 1:  # one s3-faults scenario a directory: its one sweep
        summary = json.loads(sweeps[0].read_text())
        for phase in ("write", "read_sequential"):
            gbps = summary.get("phases", {}).get(phase, {}).get("GBps")
            if gbps is not None:
                figs[f"throttling.{phase}_GBps"] = base | {
                    "label": f"throttling: {phase} GB/s through the faults", "unit": "GB/s", "better": "higher",
                    "value": gbps, "page": str(sweeps[0].parent / "report.html")}  # fmt: skip
    return figs


def compat_figures(o: Outcome) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    path = Path(o.dir) / "s3-compat.json"
    if not path.is_file():
        return {}, []
    targets = json.loads(path.read_text()).get("targets", [])
    if not targets:
        return {}, []
    t = targets[0]
    counts = t.get("counts", {})
    figs = {
        f"compat.{k}": {"section": "compatibility", "label": f"s3-compat probes: {k}", "unit": "probes",
                        "better": "higher" if k == "pass" else "lower", "value": counts.get(k, 0)}
        for k in ("pass", "differs", "unsupported", "error")
    }  # fmt: skip
    diffs = [
        {k: r.get(k) for k in ("id", "group", "outcome", "observed", "why")}
        for r in t.get("results", [])
        if r.get("outcome") != "pass"
    ]
    return figs, diffs


def measured_for_costs(figs: dict[str, dict[str, Any]]) -> dict[str, tuple[float, str]]:
    """The measured figures the cost formulas take, with where each was measured."""
    out: dict[str, tuple[float, str]] = {}
    for key, fid in (("read_GBps", "large_objects.read_sequential.GBps"), ("write_GBps", "large_objects.write.GBps"),
                     ("checkpoint_s", "checkpoint.full_size_s")):  # fmt: skip
        f = figs.get(fid)
        if f is not None:
            out[key] = (f["value"], f"{fid} (median of {f.get('trials', 1)} trial(s))")
    return out


def _link(o: Outcome, trial: str, out: Path, page: str = "") -> str:
    """The page of the trial (or of the sweep, for s3-faults' throughput) a figure was taken
    from, when it has one; else the step's own page."""
    own = Path(page) if page else Path(o.dir) / trial / "report.html"
    if (page or trial) and own.is_file():
        return str(own.relative_to(out))
    return o.report


def build(
    suite: Suite, targets: list[Target], outcomes: list[Outcome], out: Path, reports_note: str
) -> dict[str, Any]:
    per_target: dict[str, Any] = {}
    for t in targets:
        figs: dict[str, dict[str, Any]] = {}
        diffs: list[dict[str, Any]] = []
        for o in outcomes:
            if o.target != t.name or o.skipped or o.error:
                continue
            if o.item in RUN_FIGURES:
                made = run_figures(o)
            elif o.item == "s3_compat":
                made, diffs = compat_figures(o)
            else:
                made = fault_figures(o)
            for f in made.values():
                f["item"] = o.item
                f["link"] = _link(o, f.pop("trial", ""), out, f.pop("page", ""))
            figs.update(made)
        costs = cost_figures(t.prices, measured_for_costs(figs))
        per_target[t.name] = {
            "target": t.describe(),
            "figures": figs,
            "costs": costs,
            "compat_differences": diffs,
        }
    return {
        "schema": SCHEMA,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "suite": {
            "path": suite.path,
            "trials": suite.trials,
            "ranks": suite.ranks,
            "runs": suite.runs,
            "s3_compat": suite.s3_compat,
            "s3_faults": suite.s3_faults,
        },  # fmt: skip
        "reports": reports_note,
        "targets": per_target,
        "steps": [o.as_dict() for o in outcomes],
        "definitions": {
            "value": "run figures: the median over the run's trials; spread_pct = (max - min) / median x 100",
            "link": "the page of the run the figure comes from, relative to this file",
            "costs": "only from prices a target gives; each with its formula and inputs",
        },
    }


# HTML: the run report's markup (every value escaped on its way in) and style ------------------

#: the run report's style, and the marks of this page: the best of a row, a failed check
EXTRA_CSS = "td.best{background:#e6f4e6}td.fail{background:#fbe9e9}.small{color:#666;font-size:12px}"


def _best(values: dict[str, Any], better: str) -> set[str]:
    nums = {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if len(nums) < 2 or better not in ("higher", "lower") or len(set(nums.values())) == 1:
        return set()  # nothing to pick between
    pick = max(nums.values()) if better == "higher" else min(nums.values())
    return {k for k, v in nums.items() if v == pick}


def _cell(f: dict[str, Any] | None, best: bool) -> Html:
    if f is None:
        return tag("td", "-", class_="none")
    cls = "n best" if best else "n"
    if f.get("better") == "yes" and f.get("value") is False:
        cls = "n fail"
    spread = [" ", tag("span", f"\u00b1{f['spread_pct']}%", class_="small")] if "spread_pct" in f else []
    link = [" ", tag("a", "run", href=f["link"])] if f.get("link") else []
    return tag("td", fmt(f["value"]), *spread, *link, class_=cls, data_v=repr(f["value"]))


def _figures_table(card: dict[str, Any], names: list[str], section: str) -> Html | None:
    ids: list[str] = []
    for n in names:
        ids += [
            i for i, f in card["targets"][n]["figures"].items() if f["section"] == section and i not in ids
        ]
    if not ids:
        return None
    rows = []
    for i in ids:
        figs = {n: card["targets"][n]["figures"].get(i) for n in names}
        first = next(f for f in figs.values() if f is not None)
        best = _best({n: f["value"] for n, f in figs.items() if f is not None}, first.get("better", ""))
        label = tag("td", first["label"], *([Html("<br>"), tag("span", first["formula"], class_="small")]
                                             if "formula" in first else []))  # fmt: skip
        rows.append([label, first["unit"], *(_cell(figs[n], n in best) for n in names)])
    return table(["figure", "unit", *names], rows)


def render_html(card: dict[str, Any]) -> str:
    names = list(card["targets"])
    suite = card["suite"]
    body: list[Any] = [
        tag("h1", "dlio-ext scorecard"),
        note(
            f"{card['created_utc']}; suite {suite['path']}: {suite['trials']} trial(s) a run, {suite['ranks']} "
            f"rank(s). Figures: the median over trials (\u00b1 spread = (max - min) / median). "
            f"Links: {card['reports']}."
        ),
    ]
    where = []
    for key in ("kind", "endpoint", "bucket", "root", "credentials_from", "local_dir"):
        row = [card["targets"][n]["target"].get(key) for n in names]
        if any(v is not None for v in row):
            where.append([key, *(", ".join(v) if isinstance(v, list) else v or "-" for v in row)])
    body.append(section("targets", "Targets", table(["", *names], where)))
    for sec in SECTIONS:
        made = _figures_table(card, names, sec)
        if made is not None:
            body.append(section(sec, sec.capitalize(), made))
    body += [_costs(card, names), *_compat(card, names), _steps(card)]
    head = tag(
        "head",
        Html('<meta charset="utf-8">'),
        tag("title", "dlio-ext scorecard"),
        tag("style", Html(CSS + EXTRA_CSS)),
    )
    return "<!doctype html>" + tag("html", head, tag("body", *body)) + "\n"


def _costs(card: dict[str, Any], names: list[str]) -> Html:
    parts: list[Any] = []
    for n in names:
        costs = card["targets"][n]["costs"]
        if costs is None:
            parts.append(tag("p", tag("b", n), ": no prices given: nothing is priced."))
            continue
        rows: list[list[Any]] = [
            [fid, tag("td", f"{fmt(f['value'])} {f['unit']}", class_="n", data_v=repr(f["value"])),
             tag("td", tag("code", f["formula"])),
             tag("td", ", ".join(f"{k} = {fmt(v)}" for k, v in f["inputs"].items()), class_="small")]
            for fid, f in costs["figures"].items()
        ]  # fmt: skip
        rows += [
            [fid, tag("td", "not priced", class_="none"), why, ""] for fid, why in costs["not_priced"].items()
        ]
        parts += [tag("h3", n), table(["figure", "value", "formula", "inputs"], rows)]
    return section("cost", "Cost", *parts)


def _compat(card: dict[str, Any], names: list[str]) -> list[Html]:
    parts: list[Any] = []
    for n in names:
        diffs = card["targets"][n]["compat_differences"]
        if diffs:
            rows = [[tag("td", tag("code", d["id"])), d["outcome"], d["observed"], d["why"]] for d in diffs]
            parts += [tag("h3", n), table(["probe", "outcome", "observed", "why it matters"], rows)]
    if not parts:
        return []
    return [section("compat", "Compatibility differences that matter to AI workloads", *parts)]


def _steps(card: dict[str, Any]) -> Html:
    rows = []
    for s in card["steps"]:
        why = (
            f"skipped: {s['skipped']}" if s.get("skipped") else s.get("error", "") or s.get("report_note", "")
        )
        pages = s.get("pages") or ([s["report"]] if s.get("report") else [])
        links: list[Any] = []
        for p in pages:
            links += [Html("<br>")] if links else []
            links.append(tag("a", p, href=p))
        rows.append([s["target"], s["item"], s.get("exit_code"), s.get("seconds"), why, tag("td", *links)])
    return section("steps", "Steps", table(["target", "run", "exit", "seconds", "note", "page"], rows))


def write(card: dict[str, Any], out: Path) -> tuple[Path, Path]:
    j, h = out / "scorecard.json", out / "scorecard.html"
    j.write_text(json.dumps(card, indent=2) + "\n")
    h.write_text(render_html(card))
    return j, h
