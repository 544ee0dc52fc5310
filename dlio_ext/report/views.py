"""Each workload's own part of a report page, drawn from its summary section (and, for a
checkpoint run, its timeline.csv): checkpoint_burst's bursts, tier-0 and restore sources;
kv_cache's hit rates per tier and TTFT; metadata's phases. A section no view knows is shown as
its keys and values. Sections are read defensively: a view shows what its section holds."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dlio_ext.report import plots
from dlio_ext.report.markup import Html, blocks, flat, join, note, num, pairs, png, table, tag
from dlio_ext.report.rundir import Run

View = Callable[[Run], Html]


def _d(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _l(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _scalars(d: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in d.items() if not isinstance(v, dict | list)]


# --- checkpoint_burst --------------------------------------------------------------------------

BURST_HEAD = (
    "phase", "checkpoint", "burst s", "bytes", "GB/s", "rank s p50", "rank s max", "straggler",
    "to first byte s p50", "fsync s max", "errors",
)  # fmt: skip


def _burst_row(b: dict[str, Any]) -> list[Any]:
    rs, tt, fs = _d(b.get("rank_seconds")), _d(b.get("ttfb_s")), _d(b.get("fsync_s"))
    return [
        b.get("phase"), num(b.get("checkpoint")), num(b.get("burst_seconds"), ".4f"), num(b.get("bytes")),
        num(b.get("GBps"), ".3f"), num(rs.get("p50"), ".4f"), num(rs.get("max"), ".4f"),
        num(b.get("straggler_ratio"), ".2f"), num(tt.get("p50"), ".4f"), num(fs.get("max"), ".4f"),
        num(b.get("errors")),
    ]  # fmt: skip


def _burst_spans(path: Path) -> list[tuple[str, str, float, float]]:
    """Each burst (kind, checkpoint) from its first file's start to its last file's end over all
    ranks, on the workload's clock (timeline.csv), in the order they began."""
    spans: dict[tuple[str, str], list[float]] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            key = (r["kind"], r["checkpoint"])
            s, e = float(r["start_s"]), float(r["end_s"])
            if key in spans:
                spans[key][0] = min(spans[key][0], s)
                spans[key][1] = max(spans[key][1], e)
            else:
                spans[key] = [s, e]
    rows = [(f"{k} {c}", k, s, e) for (k, c), (s, e) in spans.items()]
    return sorted(rows, key=lambda r: r[2])


def checkpoint_burst(run: Run) -> Html:
    sec = run.section()
    out: list[Any] = []
    model = _d(sec.get("model"))
    out.append(
        pairs(
            [("model", model.get("preset")), ("mode", sec.get("mode")), ("layout", sec.get("layout")),
             ("scale", sec.get("scale_note") or sec.get("scale")), ("bytes per checkpoint", sec.get("bytes_per_checkpoint")),
             ("durability", sec.get("durability")), ("cold restore", _d(sec.get("cold_restore")).get("method"))]
        )
    )  # fmt: skip
    timeline = run.file(str(_d(sec.get("timeline")).get("csv") or ""))
    if timeline is not None:
        rows = _burst_spans(timeline)
        if rows:
            out.append(
                png(
                    plots.spans(rows, "bursts: first file's start to last file's end, all ranks"),
                    "burst timeline (kinds as timeline.csv names them; with a tier-0, write is the tier-0 write: "
                    "the stall)",
                )
            )
    for key, part in sec.items():
        per = _l(_d(part).get("per_checkpoint"))
        if not per or key == "tier0":
            continue
        head = BURST_HEAD + (("served from",) if any("served_from" in _d(b) for b in per) else ())
        rows = [
            _burst_row(_d(b)) + ([_d(b).get("served_from")] if len(head) > len(BURST_HEAD) else [])
            for b in per
        ]
        overall = _d(_d(part).get("overall"))
        out.append(tag("h3", f"{key} bursts"))
        out.append(table(head, rows, cls="bursts", id_=f"bursts-{key}"))
        if overall:
            out.append(
                note(
                    f"{key} overall: {overall.get('count')} burst(s), {overall.get('bytes')} bytes at {overall.get('GBps')} GB/s"
                )
            )
    tier0 = _d(sec.get("tier0"))
    if tier0:
        out.append(tag("h3", "tier-0: stall, time until durable, drain"))
        rows = [
            [num(t.get("checkpoint")), num(t.get("stall_s"), ".4f"), t.get("durable"), num(t.get("durable_s"), ".4f"),
             num(t.get("drain_GBps"), ".3f"), num(t.get("drain_seconds"), ".4f")]
            for t in map(_d, _l(tier0.get("per_checkpoint")))
        ]  # fmt: skip
        out.append(
            table(
                ("checkpoint", "stall s", "durable", "durable s", "drain GB/s", "drain s"),
                rows,
                id_="tier0-bursts",
            )
        )
        served = _d(tier0.get("restores"))
        if served:
            out.append(table(("restore", "served from"), served.items(), id_="restore-sources"))
        not_durable = _l(tier0.get("not_durable"))
        out.append(
            note(
                f"checkpoints not durable: {', '.join(map(str, not_durable)) or 'none'}",
                "bad" if not_durable else "note",
            )
        )
        out.append(pairs(_scalars(tier0)))
        for name, g in _d(tier0.get("goodput")).items():
            out.append(tag("h4", f"goodput {name}"))
            out.append(pairs(_d(g)))
    goodput = _d(sec.get("goodput"))
    if goodput:
        out.append(tag("h3", "goodput (Young/Daly)"))
        out.append(pairs(_scalars(goodput)))
        out.append(
            table(
                ("estimate", "checkpoint s", "restart s", "MTBF s", "Young interval s", "goodput"),
                [[k, num(v.get("checkpoint_s")), num(v.get("restart_s")), num(v.get("mtbf_s")),
                  num(v.get("young_interval_s")), num(v.get("goodput"), ".6f")]
                 for k, v in ((k, _d(v)) for k, v in goodput.items() if isinstance(v, dict))],
            )
        )  # fmt: skip
    out.append(blocks((k, _d(sec.get(k))) for k in ("memory", "integrity")))
    return join(out)


# --- kv_cache ----------------------------------------------------------------------------------

LAT_KEYS = ("p50", "p95", "p99", "p999", "max", "mean", "count")


def kv_cache(run: Run) -> Html:
    sec = run.section()
    out: list[Any] = []
    model, servers = _d(sec.get("model")), _d(sec.get("servers"))
    out.append(
        pairs(
            [("preset", sec.get("preset")), ("model", model.get("name")), ("bytes per token", model.get("bytes_per_token")),
             ("servers", f"{servers.get('ranks')} rank(s) x {servers.get('users_per_rank')} users, {servers.get('arrival')}"),
             ("chunk", _d(sec.get("chunk")).get("scale_note")), ("durability", _d(sec.get("durability")).get("policy"))]
        )
    )  # fmt: skip
    hit = _d(sec.get("hit_rate"))
    tiers = [t for t in ("memory", "write_queue", "tier0", "storage", "total") if t in _d(hit.get("tokens"))]
    if tiers:
        out.append(tag("h3", "hit rate per tier"))
        rows = [
            [what, *(num(_d(hit.get(what)).get(t), ".3f") for t in tiers)]
            for what in ("tokens", "chunks")
            if what in hit
        ]
        out.append(table(("of", *tiers), rows, id_="hit-rates"))
        series = {
            what: [float(_d(hit.get(what)).get(t) or 0.0) for t in tiers]
            for what in ("tokens", "chunks")
            if what in hit
        }
        out.append(
            png(plots.bars(tiers, series, "hit rate", "KV-cache hit rate per tier"), "hit rate per tier")
        )
    lat_rows = []
    for name, key in (("TTFT (estimated)", "ttft_ms"), ("request", ("requests", "latency_ms")), ("load", "load_ms"),
                      ("queue", ("requests", "queue_ms")), ("read chunk", ("read", "latency_ms")),
                      ("write chunk", ("write", "latency_ms")), ("lookup miss", ("lookup_miss", "latency_ms"))):  # fmt: skip
        d = _d(sec.get(key)) if isinstance(key, str) else _d(_d(sec.get(key[0])).get(key[1]))
        if d:
            lat_rows.append([name, *(num(d.get(k), ".4g") for k in LAT_KEYS)])
    if lat_rows:
        out.append(tag("h3", "latency (ms)"))
        out.append(table(("of", *LAT_KEYS), lat_rows, id_="kv-latency"))
    io_rows = [
        [what, num(d.get("chunks")), num(d.get("bytes")), num(d.get("GBps"), ".3f"), num(d.get("max_rank_p95_ms"), ".4g"), num(d.get("errors"))]
        for what, d in ((w, _d(sec.get(w))) for w in ("read", "write")) if d
    ]  # fmt: skip
    if io_rows:
        out.append(tag("h3", "storage tier"))
        out.append(table(("", "chunks", "bytes", "GB/s", "max rank p95 ms", "errors"), io_rows, id_="kv-io"))
    keys = ("tokens", "storage_tokens_per_s", "mlperf_v3_style", "writes", "cold_reads", "integrity")
    out.append(blocks((k, _d(sec.get(k))) for k in keys))
    per_rank = [_d(r) for r in _l(sec.get("per_rank"))]
    if per_rank:
        out.append(tag("h3", "per rank"))
        keys = list(per_rank[0])
        out.append(table(keys, ([num(r.get(k)) for k in keys] for r in per_rank[:64])))
        if len(per_rank) > 64:
            out.append(
                note(f"the first 64 of {len(per_rank)} ranks (all are in summary.json kv_cache.per_rank)")
            )
    for line in _l(sec.get("notes")):
        out.append(note(line))
    return join(out)


# --- metadata ----------------------------------------------------------------------------------

MD_HEAD = ("phase", "support", "verb", "items", "ops", "errors", "seconds", "rate /s",
           "rank rate min", "rank rate max", "p50 us", "p99 us", "max us", "retries", "throttles")  # fmt: skip


def metadata(run: Run) -> Html:
    sec = run.section()
    phases = {k: _d(v) for k, v in _d(sec.get("phases")).items()}
    out: list[Any] = [pairs(_scalars(sec))]
    rows = []
    for name, p in phases.items():
        lat, rr = _d(p.get("latency_us")), _d(p.get("rank_rates"))
        rows.append(
            [name, p.get("support"), p.get("verb"), num(p.get("items")), num(p.get("ops")), num(p.get("errors")),
             num(p.get("seconds"), ".4f"), num(p.get("rate"), ",.0f"), num(rr.get("min"), ",.0f"), num(rr.get("max"), ",.0f"),
             num(lat.get("p50"), ".1f"), num(lat.get("p99"), ".1f"), num(lat.get("max"), ".1f"), num(p.get("retries")),
             num(p.get("throttles"))]
        )  # fmt: skip
    if rows:
        out.append(table(MD_HEAD, rows, id_="metadata-phases"))
        names = list(phases)
        out.append(
            png(
                plots.bars(names, {"items/s": [float(p.get("rate") or 0.0) for p in phases.values()]}, "items / s",
                           "metadata rate per phase (items / slowest rank's time)"),
                "metadata rates",
            )
        )  # fmt: skip
    return join(out)


def generic(run: Run) -> Html:
    sec = run.section()
    if not sec:
        return note(f"{run.workload} writes no section of its own: its phases above are its figures")
    return pairs(flat(sec))


VIEWS: dict[str, View] = {"checkpoint_burst": checkpoint_burst, "kv_cache": kv_cache, "metadata": metadata}


def view(run: Run) -> Html:
    return VIEWS.get(run.workload, generic)(run)


def figure_names(summary: Mapping[str, Any]) -> Sequence[tuple[str, str]]:
    """The figures the run drew next to its results (summary["figures"]: name -> file)."""
    return [(str(k), str(v)) for k, v in _d(summary.get("figures")).items()]
