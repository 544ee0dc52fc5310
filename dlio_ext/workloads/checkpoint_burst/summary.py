"""What a rank reports of its bursts (`rank_metrics`) and what rank 0 makes of every rank's
(`summarize`): per-checkpoint and overall burst figures, goodput, memory, integrity, and the
per-rank timeline as CSV (the figure is drawn from it by report.timeline)."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlio_ext.workloads.checkpoint_burst import layout as cl
from dlio_ext.workloads.checkpoint_burst.config import Config
from dlio_ext.workloads.checkpoint_burst.plan import build_layout
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import FilePhase, PhaseResult

#: the timeline's file in the run directory (summary["checkpoint_burst"]["timeline"]["csv"])
TIMELINE = "timeline.csv"
#: an event as `rank_metrics` records it: seconds from the first barrier (Bursts.T0)
EVENT_FIELDS = (
    "kind",
    "checkpoint",
    "file",
    "bytes",
    "start_s",
    "opened_s",
    "first_byte_s",
    "end_s",
    "close_s",
    "ok",
    "content_hash",
)
COLUMNS = ("layout_rank", "rank", *EVENT_FIELDS, "seconds", "MBps")

Row = tuple[int, int, Sequence[Any]]  # (layout rank, rank, event)


@dataclass
class Burst:
    """One rank's part of one burst (a checkpoint write, its async stall or persist, a restore)."""

    kind: str  # write, stall, persist, restore
    ckpt: int
    phase: FilePhase
    result: PhaseResult | None = None  # once the phase is over

    def record(self) -> dict[str, Any]:
        """This rank's figures of the burst, for the summary's distributions over ranks."""
        r, events = self.result, self.phase.events
        assert r is not None
        first_bytes = [e.first_byte for e in events if e.first_byte]
        return {
            "phase": r.name,
            "kind": self.kind,
            "ckpt": self.ckpt,
            "seconds": r.seconds,
            "start": r.start,
            "end": r.end,
            "bytes": r.bytes,
            "files": len(events),
            "errors": r.errors,
            "ttfb_s": (min(first_bytes) - self.phase.t0) if first_bytes else None,
            "open_s": sum(max(e.opened - e.start, 0.0) for e in events if e.opened),
            "close_s": sum(e.close_s for e in events),
            "fsync_s": self.phase.fsync_s,
            "fsync_calls": self.phase.fsync_calls,
        }


def events(bursts: Iterable[Burst], t0: float) -> list[list[Any]]:
    """Every file of every burst (EVENT_FIELDS), seconds from `t0`; an async stall as one
    "snapshot" event (the host copy)."""
    out: list[list[Any]] = []
    for burst in bursts:
        for e in burst.phase.events:
            out.append(
                [
                    e.kind,
                    e.ckpt,
                    e.name,
                    e.nbytes,
                    round(e.start - t0, 6),
                    round((e.opened or e.start) - t0, 6),
                    round((e.first_byte or e.end) - t0, 6),
                    round(e.end - t0, 6),
                    round(e.close_s, 6),
                    e.ok,
                    e.digest,
                ]
            )
        region = burst.phase.region
        if burst.kind == "stall" and region is not None:
            s, e_, nbytes = region
            out.append(
                ["snapshot", burst.ckpt, "(host copy)", nbytes, round(s - t0, 6), round(s - t0, 6),
                 round(s - t0, 6), round(e_ - t0, 6), 0.0, True, ""]
            )  # fmt: skip
    return out


def rank_metrics(
    info: dict[str, Any], bursts: Sequence[Burst], t0: float, cold: dict[str, Any]
) -> dict[str, Any]:
    return {
        **info,
        "host": socket.gethostname(),
        "bursts": [bu.record() for bu in bursts],
        "events": events(bursts, t0),
        "cold_restore": cold,
    }


def write_timeline(path: Path, rows: Iterable[Row]) -> None:
    """The timeline CSV (COLUMNS), in order of start; written whole or not at all."""
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for layout_rank, rank, ev in sorted(rows, key=lambda r: (r[2][4], r[1])):
            secs = max(float(ev[7]) - float(ev[4]), 0.0)
            mbps = round(float(ev[3]) / secs / 1e6, 3) if secs > 0 else 0.0
            w.writerow([layout_rank, rank, *ev, round(secs, 6), mbps])
    os.replace(tmp, path)


# --- rank 0: the summary --------------------------------------------------------------------------


def _dist(values: Sequence[float]) -> dict[str, float]:
    v = sorted(x for x in values if x is not None)
    if not v:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "min": 0.0, "mean": 0.0}

    def pct(q: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    return {
        "min": round(v[0], 6),
        "p50": round(statistics.median(v), 6),
        "p99": round(pct(0.99), 6),
        "max": round(v[-1], 6),
        "mean": round(statistics.fmean(v), 6),
    }


def _burst_summary(phase: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [r["seconds"] for r in records]
    d = _dist(secs)
    return {
        "burst_seconds": phase["seconds"],
        "bytes": phase["bytes"],
        "GBps": phase["GBps"],
        "rank_seconds": {k: d[k] for k in ("p50", "p99", "max")},
        "straggler_ratio": round(d["max"] / d["p50"], 4) if d["p50"] else 0.0,
        "ttfb_s": {k: v for k, v in _dist([r["ttfb_s"] for r in records]).items() if k in ("p50", "max")},
        "open_s": {k: v for k, v in _dist([r["open_s"] for r in records]).items() if k in ("p50", "max")},
        "close_s": {k: v for k, v in _dist([r["close_s"] for r in records]).items() if k in ("p50", "max")},
        "fsync_s": {k: v for k, v in _dist([r["fsync_s"] for r in records]).items() if k in ("p50", "max")},
        "fsync_calls": sum(r["fsync_calls"] for r in records),
        "errors": phase["errors"],
    }


def _overall(per: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    if not per:
        return {}
    spans = [p["burst_seconds"] for p in per]
    total_bytes = sum(p["bytes"] for p in per)
    total_s = sum(spans)
    d = _dist([r["seconds"] for r in records])
    stragglers = [p["straggler_ratio"] for p in per]
    return {
        "count": len(per),
        "burst_seconds": _dist(spans),
        "bytes": total_bytes,
        "GBps": round(total_bytes / total_s / 1e9, 6) if total_s else 0.0,
        "rank_seconds": {k: d[k] for k in ("p50", "p99", "max")},
        "straggler_ratio": {"mean": round(statistics.fmean(stragglers), 4), "max": max(stragglers)},
        "ttfb_s": {
            k: v for k, v in _dist([r["ttfb_s"] for r in records]).items() if k in ("p50", "p99", "max")
        },
        "open_s": {
            k: v for k, v in _dist([r["open_s"] for r in records]).items() if k in ("p50", "p99", "max")
        },
        "fsync_s": {
            k: v for k, v in _dist([r["fsync_s"] for r in records]).items() if k in ("p50", "p99", "max")
        },
        "fsync_calls": sum(r["fsync_calls"] for r in records),
        "errors": sum(p["errors"] for p in per),
    }


def goodput(checkpoint_s: float, restart_s: float, mtbf_s: float) -> dict[str, float]:
    """Young's and Daly's optimal checkpoint interval and the fraction of time spent on useful work
    at Daly's interval (Daly 2006: wall/solve = (M/tau)·e^(R/M)·(e^((tau+delta)/M) - 1))."""
    d, r, m = max(checkpoint_s, 0.0), max(restart_s, 0.0), mtbf_s
    if d <= 1e-9:
        eff = math.exp(-r / m)
        return {"checkpoint_s": d, "restart_s": r, "mtbf_s": m, "young_interval_s": 0.0, "daly_interval_s": 0.0,
                "goodput": round(eff, 6), "lost_fraction": round(1 - eff, 6)}  # fmt: skip
    young = math.sqrt(2 * d * m)
    if d < 2 * m:
        x = d / (2 * m)
        daly = math.sqrt(2 * d * m) * (1 + math.sqrt(x) / 3 + x / 9) - d
    else:
        daly = m
    tau = max(daly, 1e-9)
    try:
        eff = tau / (m * math.exp(r / m) * math.expm1((tau + d) / m))
    except OverflowError:
        eff = 0.0
    return {
        "checkpoint_s": round(d, 6),
        "restart_s": round(r, 6),
        "mtbf_s": round(m, 3),
        "young_interval_s": round(young, 3),
        "daly_interval_s": round(daly, 3),
        "goodput": round(eff, 6),
        "lost_fraction": round(1 - eff, 6),
    }


def tier0_section(
    ctx: Context,
    out: dict[str, Any],
    by_phase: dict[str, list[dict[str, Any]]],
    per_rank: list[dict[str, Any]],
    restart_s: float,
    mtbf_h: float,
) -> dict[str, Any]:
    """Per burst through a tier-0: the stall, the time until durable (the burst's start to the
    last rank's last drained file; None when not every rank drained it), the drain's GB/s, and
    goodput at both costs; which restores the tier-0 served; which checkpoints are not durable."""
    assert ctx.tier0 is not None
    cfg: Config = ctx.config
    stalls = {p["checkpoint"]: p for p in out["stall"]["per_checkpoint"]}
    drains = {p["checkpoint"]: p for p in out["write"]["per_checkpoint"]}
    drained_by = [set(m.get("drained", [])) for m in per_rank]
    failed = {
        k: f"rank {r}: {why}" for r, m in enumerate(per_rank) for k, why in m.get("drain_failed", {}).items()
    }
    rows, not_durable = [], []
    for k in sorted(stalls):
        durable = all(k in d for d in drained_by)
        recs = by_phase.get(f"drain_{k}", [])
        row: dict[str, Any] = {
            "checkpoint": k,
            "stall_s": stalls[k]["burst_seconds"],
            "durable": durable,
            "durable_s": round(max(r["end"] for r in recs), 6) if durable and recs else None,
            "drain_GBps": drains[k]["GBps"] if k in drains else 0.0,
            "drain_seconds": drains[k]["burst_seconds"] if k in drains else 0.0,
        }
        if not durable:
            row["reason"] = failed.get(str(k)) or "not every rank drained it"
            not_durable.append(k)
        rows.append(row)
    durable_s = [r["durable_s"] for r in rows if r["durable_s"] is not None]
    stall_mean = statistics.fmean(r["stall_s"] for r in rows) if rows else 0.0
    durable_mean = statistics.fmean(durable_s) if durable_s else 0.0
    restores = {}
    for m in per_rank[:1]:  # every rank restores the same checkpoint from the same tier in a phase
        for j, _k, source in m.get("served", []):
            restores[f"restore_{j}"] = source
    return {
        "keep": cfg.tier0_keep,
        "restore_from": cfg.restore_from,
        "drain_mbps_cap": cfg.drain_mbps,
        "durability": ctx.tier0.durability().policy,
        "per_checkpoint": rows,
        "stall_s": _dist([r["stall_s"] for r in rows]),
        "durable_s": _dist(durable_s),
        "drain_GBps": out["write"]["overall"].get("GBps", 0.0),
        "not_durable": not_durable,
        "restores": restores,
        "goodput": {
            "at_stall": goodput(stall_mean, restart_s, mtbf_h * 3600),
            "at_durable": goodput(durable_mean, restart_s, mtbf_h * 3600),
        },
        "definitions": {
            "stall_s": "the tier-0 write: the first rank's first file to the last rank's last (training waits for this)",
            "durable_s": "the burst's start to the last rank's last file drained to storage; None when not durable",
            "drain_GBps": "bytes drained / the drain's span (first drained file's start to the last one's end)",
            "goodput": "Young/Daly at the stall (what training pays) and at the time until durable (what a "
            "checkpoint written straight to storage would make it pay)",
        },
    }


def summarize(
    ctx: Context, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]
) -> dict[str, Any]:
    cfg: Config = ctx.config
    layout = build_layout(cfg, ctx.size)
    storage = ctx.backend.describe()  # what the medium was asked for, where it has such settings
    model: dict[str, Any] = {"preset": cfg.preset, **cl.describe(layout)}
    if isinstance(layout, cl.ModelLayout):
        m, p = layout.model, layout.par
        model.update(
            {
                "num_layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "ffn_hidden_size": m.ffn_hidden_size,
                "num_attention_heads": m.num_attention_heads,
                "num_kv_heads": m.num_kv_heads,
                "vocab_size": m.vocab_size,
                "tp": p.tp,
                "pp": p.pp,
                "dp": p.dp,
                "zero_stage": p.zero_stage,
                "model_dtype_bytes": layout.dtypes.model,
                "optimizer_dtype_bytes": layout.dtypes.optimizer,
            }
        )
    if cfg.preset in cl.PRESETS:
        model["mlperf_stated_GiB"] = cl.PRESETS[cfg.preset].mlperf_gib
        model["source"] = cl.PRESETS[cfg.preset].source

    by_phase: dict[str, list[dict[str, Any]]] = {}
    for m_ in per_rank:
        for r in m_.get("bursts", []):
            by_phase.setdefault(r["phase"], []).append(r)

    def series(kind: str) -> list[dict[str, Any]]:
        out = []
        for name, recs in by_phase.items():
            if recs[0]["kind"] == kind and name in phases:
                out.append(
                    {"phase": name, "checkpoint": recs[0]["ckpt"], **_burst_summary(phases[name], recs)}
                )
        return out

    def records(kind: str) -> list[dict[str, Any]]:
        return [r for recs in by_phase.values() for r in recs if r["kind"] == kind]

    tiered = ctx.tier0 is not None
    # "write" is always what reached the durable store: the burst, async's persist, or the drain
    write_kind = "drain" if tiered else "write" if cfg.mode == "sync" else "persist"
    writes, restores = series(write_kind), series("restore")
    out: dict[str, Any] = {
        "model": model,
        "mode": cfg.mode,
        "layout": cfg.layout,
        "subset": bool(cfg.subset or cfg.subset_ranks),
        "layout_ranks_run": [m_.get("layout_rank") for m_ in per_rank],
        "scale": cfg.scale,
        "scale_note": "every file is its real size x scale, rounded up to 4 KiB"
        if cfg.scale < 1
        else "real sizes",
        "shard_bytes_per_rank": {str(m_.get("layout_rank")): m_.get("shard_bytes") for m_ in per_rank},
        "bytes_per_checkpoint": sum(m_.get("shard_bytes", 0) for m_ in per_rank),
        "chunk_size": cfg.chunk_size,
        "buffer_pool_bytes": per_rank[0].get("pool_bytes"),
        "storage_fsync": storage.get("fsync"),
        "storage_direct": storage.get("direct"),
        "durability": ctx.backend.durability().policy,
        "restore_rank_shift": per_rank[0].get("restore_rank_shift"),
        "cold_restore": per_rank[0].get("cold_restore", {}),
        "definitions": {
            "burst_seconds": "last rank's last file end - first rank's first file start (common barrier)",
            "GBps": "bytes of all ranks / burst_seconds (overall: all bursts' bytes / their summed seconds)",
            "rank_seconds": "each rank's own first start to last end; p50/p99/max over ranks",
            "straggler_ratio": "max / median of rank_seconds",
            "ttfb_s": "from the burst's start to the rank's first chunk written / received",
            "open_s": "write: creating/opening the files (writer()); restore: stat/HEAD before the first read",
            "close_s": "write: close, including fsync or the multipart completion",
            "fsync_s": "time inside fsync(2), counted by the backend",
        },
        "write": {"per_checkpoint": writes, "overall": _overall(writes, records(write_kind))},
        "restore": {"per_checkpoint": restores, "overall": _overall(restores, records("restore"))},
    }
    methods = {json.dumps(m_.get("cold_restore", {}).get("method")) for m_ in per_rank}
    if len(methods) > 1:
        out["cold_restore"] = {"method": "mixed", "per_rank": [m_.get("cold_restore") for m_ in per_rank]}
    if cfg.mode == "async" or tiered:
        stalls = series("stall")
        out["stall"] = {"per_checkpoint": stalls, "overall": _overall(stalls, records("stall"))}
    if cfg.mode == "async":
        out["host_buffer_bytes"] = per_rank[0].get("host_buffer_bytes")
        out["async_note"] = (
            "stall: copy of the shard into host buffers (blocking training); persist: those buffers "
            "to storage in the background. host_buffer_bytes=0 holds the whole shard in host RAM, "
            "as real async checkpointing must; a smaller ring makes the stall wait for the persist."
        )
    peaks = [m_.get("peak_rss_bytes", 0) for m_ in per_rank]
    out["memory"] = {
        "peak_rss_bytes": {"max": max(peaks), "per_rank": peaks},
        "baseline_rss_bytes": [m_.get("baseline_rss_bytes", 0) for m_ in per_rank],
        "largest_shard_bytes": max(m_.get("shard_bytes", 0) for m_ in per_rank),
    }
    corrupt = sum(p.get("error_kinds", {}).get("corrupt", 0) for p in phases.values())
    out["integrity"] = {
        "verified": cfg.verify,
        "scheme": "per 4 KiB block: a 64-bit stamp of (seed, checkpoint, writer rank, file, block); "
        "per chunk: xxh3-64 of the body; per file: xxh3-64 over both",
        "corrupt": corrupt,
    }
    # goodput: checkpoint cost is what training waits for (the burst, or the async or tier-0 stall)
    stall_src = out["stall"]["overall"] if "stall" in out else out["write"]["overall"]
    delta = stall_src.get("burst_seconds", {}).get("mean", 0.0) if stall_src else 0.0
    restart = out["restore"]["overall"].get("burst_seconds", {}).get("mean", 0.0) if restores else 0.0
    layout_ranks = layout.ranks
    mtbf_h = cfg.mtbf_hours or cfg.accelerator_mttf_hours / layout_ranks
    if tiered:
        out["tier0"] = tier0_section(ctx, out, by_phase, per_rank, restart, mtbf_h)
        for entry in out["restore"]["per_checkpoint"]:
            entry["served_from"] = out["tier0"]["restores"].get(entry["phase"], "durable")
    out["goodput"] = {
        "mtbf_hours": round(mtbf_h, 4),
        "mtbf_source": "workload.mtbf_hours"
        if cfg.mtbf_hours
        else f"accelerator_mttf_hours {cfg.accelerator_mttf_hours:g} / {layout_ranks} accelerators",
        "as_measured": goodput(delta, restart, mtbf_h * 3600),
        "full_size_estimate": goodput(delta / cfg.scale, restart / cfg.scale, mtbf_h * 3600),
        "note": "as_measured uses this run's mean stall and restore at its scale; full_size_estimate "
        "divides them by scale (assumes time grows with bytes at the measured bandwidth) for the "
        "ranks that ran, not for a full cluster on other storage",
    }
    # the per-rank timeline, as data: report.timeline draws it
    rows = [(m_.get("layout_rank", i), i, ev) for i, m_ in enumerate(per_rank) for ev in m_.get("events", [])]
    try:
        write_timeline(ctx.run_dir / TIMELINE, rows)
        out["timeline"] = {"csv": TIMELINE}
    except OSError as exc:  # a full disk must not cost the run its summary
        out["timeline"] = {"error": f"{type(exc).__name__}: {exc}"}
    w, r = out["write"]["overall"], out["restore"]["overall"]
    if tiered:
        t = out["tier0"]
        any_durable = len(t["not_durable"]) < len(t["per_checkpoint"])
        ctx.log.info(
            "tier-0: stall p50 %.3f s, %s, drain %.3f GB/s; not durable: %s",
            t["stall_s"]["p50"],
            f"durable after p50 {t['durable_s']['p50']:.3f} s" if any_durable else "no checkpoint durable",
            t["drain_GBps"], ", ".join(map(str, t["not_durable"])) or "none",
        )  # fmt: skip
    elif w:
        ctx.log.info(
            "checkpoint write: %.3f GB/s over %d bursts, burst p50 %.3f s, straggler max %.2f",
            w["GBps"], w["count"], w["burst_seconds"]["p50"], w["straggler_ratio"]["max"],
        )  # fmt: skip
    if r:
        ctx.log.info(
            "restore (%s): %.3f GB/s, burst p50 %.3f s", out["cold_restore"].get("method"), r["GBps"],
            r["burst_seconds"]["p50"],
        )  # fmt: skip
    return {"checkpoint_burst": out}
