"""A run's terminal summary: what ran, whether it is valid and why not, one line a phase, and the
workload's headline figures. Plain text; the page (report.page) holds the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlio_ext.report.rundir import Run

COLUMNS = (
    f"{'phase':<20}{'ops':>10}{'GB/s':>10}{'ops/s':>12}{'p50 us':>11}{'p99 us':>11}{'max us':>11}"
    f"{'straggler':>10}{'errors':>8}{'cache':>7}"
)


def summary(run: Run) -> list[str]:
    s = run.summary
    lines: list[str] = []
    if s is None:
        lines.append(f"{run.path}: INCOMPLETE, no summary.json ({len(run.ranks)} rank file(s))")
    else:
        lines.append(
            f"{s['workload']} on {s['storage'].get('backend')}: {s['ranks']} rank(s) on {s['hosts']} host(s), "
            f"{s['started_utc']} to {s['finished_utc']}"
        )
        lines.append(f"storage durability: {s['storage'].get('durability', '-')}")
        lines.append(COLUMNS)
        for name, p in s["phases"].items():
            lat, cf = p["latency_us"], p.get("cache_fraction")
            lines.append(
                f"{name:<20}{p['ops']:>10,}{p['GBps']:>10.3f}{p['ops_per_s']:>12,.0f}{lat['p50']:>11,.0f}"
                f"{lat['p99']:>11,.0f}{lat['max']:>11,.0f}{p['straggler_ratio']:>10.2f}{p['errors']:>8}"
                f"{'-' if cf is None else f'{cf:.0%}':>7}"
            )
        lines += headlines(run)
        lines += [f"warning: {w}" for w in s["warnings"]]
        lines.append("valid: yes" if s["valid"] else f"INVALID: {'; '.join(s['invalid_reasons'])}")
    if run.incomplete:
        lines.append(f"INCOMPLETE: {' '.join(run.incomplete.split())}")
    lines += run.problems
    return lines


def headlines(run: Run) -> list[str]:
    """The workload's headline figures; a section they cannot be read from says so in a line."""
    try:
        return HEADLINES.get(run.workload, lambda _: [])(run.section())
    except Exception as exc:  # a section of another shape or damaged: the phases above still hold
        return [f"{run.workload} section unreadable: {type(exc).__name__}: {exc}"]


def _checkpoint(sec: dict[str, Any]) -> list[str]:
    out = []
    for key in ("write", "stall", "restore"):
        o = (sec.get(key) or {}).get("overall") or {}
        if o:
            out.append(f"{key}: {o.get('count')} burst(s), {o.get('GBps')} GB/s overall")
    t = sec.get("tier0") or {}
    if t:
        st = t.get("stall_s") or {}
        out.append(
            f"tier-0: stall p50 {st.get('p50')} s, drain {t.get('drain_GBps')} GB/s, restores served from "
            f"{', '.join(f'{k} {v}' for k, v in (t.get('restores') or {}).items())}; not durable: "
            f"{', '.join(map(str, t.get('not_durable') or [])) or 'none'}"
        )
    return out


def _kv(sec: dict[str, Any]) -> list[str]:
    hit = (sec.get("hit_rate") or {}).get("tokens") or {}
    ttft = sec.get("ttft_ms") or {}
    return [
        f"hit rate (tokens): {', '.join(f'{k} {v:.1%}' for k, v in hit.items() if isinstance(v, int | float))}",
        f"TTFT ms: p50 {ttft.get('p50')}, p95 {ttft.get('p95')}, max {ttft.get('max')}",
    ]


def _metadata(sec: dict[str, Any]) -> list[str]:
    phases = sec.get("phases") or {}
    return [f"metadata: {len(phases)} phase(s); rate = {sec.get('rate_definition')}"]


HEADLINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "checkpoint_burst": _checkpoint,
    "kv_cache": _kv,
    "metadata": _metadata,
}
