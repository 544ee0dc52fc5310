"""Rank 0: kv_cache's section of summary.json from the merged phases and every rank's metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlio_ext.metrics.histogram import Histogram
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.kv_cache.config import Config, model_of, sizes_of
from dlio_ext.workloads.kv_cache.stats import COUNTERS, HISTS, timeseries

PCTS = ("p50", "p95", "p99", "p999")
#: what a chunk found in a tier counts as, in the order the tiers are looked up
HITS = ("hit_memory", "hit_write_queue", "hit_tier0", "hit_storage")


def _ms(h: Histogram) -> dict[str, float]:
    s = h.summary()
    out = {k: round(s[k] / 1000, 4) for k in PCTS}
    out |= {"mean": round(s["mean"] / 1000, 4), "max": round(s["max"] / 1000, 4), "count": s["count"]}
    return out


def _rate(part: float, whole: float) -> float:
    return round(part / whole, 6) if whole else 0.0


def summarize(
    ctx: Context, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]
) -> dict[str, Any]:
    cfg: Config = ctx.config
    model = model_of(cfg)
    sz = sizes_of(cfg, model)
    c = {k: sum(m["counters"][k] for m in per_rank) for k in COUNTERS}
    hists = {name: [Histogram.from_state(m["hists"][name]) for m in per_rank] for name in HISTS}
    merged = {name: Histogram.merged(hs) for name, hs in hists.items()}
    span = max(m["span_s"][1] for m in per_rank) - min(m["span_s"][0] for m in per_rank)
    C = cfg.chunk_tokens

    def io(name: str) -> dict[str, Any]:
        per = [_ms(h) for h in hists[name]]
        p95 = [p["p95"] for p in per]
        ph = phases.get(name, {})
        return {
            "chunks": ph.get("ops", 0),
            "bytes": ph.get("bytes", 0),
            "GBps": ph.get("GBps", 0.0),
            "seconds": ph.get("seconds", 0.0),
            "errors": ph.get("errors", 0),
            "latency_ms": _ms(merged[name]),
            "per_rank_latency_ms": per,
            "max_rank_p95_ms": max(p95) if p95 else 0.0,
        }

    hit_chunks = sum(c[h] for h in HITS)
    hit_tokens = hit_chunks * C
    tokens_read = c["hit_storage"] * C
    tokens_written = c["writes"] * C
    read, write = io("read"), io("write")
    dup = next((m["duplicates"] for m in per_rank if m.get("duplicates")), {})
    mem = [m["memory_tier"] for m in per_rank if m.get("memory_tier")]
    tier = [m["storage_tier"] for m in per_rank]
    t0 = [m["tier0"] for m in per_rank if m.get("tier0")]
    arrival = "closed loop" if not cfg.arrival_rate else f"Poisson, {cfg.arrival_rate:g} requests/s per rank"
    out: dict[str, Any] = {
        "preset": cfg.preset,
        "model": {
            "name": model.name,
            "layers": model.layers,
            "kv_heads": model.kv_heads,
            "head_dim": model.head_dim,
            "dtype": model.dtype,
            "mla": model.mla,
            "bytes_per_token": model.bytes_per_token,
            "source": model.source,
        },
        "chunk": {
            "tokens": C,
            "bytes_real": sz.chunk_real,
            "bytes_stored": sz.chunk_stored,
            "scale": cfg.scale,
            "scale_note": "real sizes"
            if cfg.scale == 1
            else "stored chunk = real chunk x scale, rounded up to 4 KiB; the trace and hit rates are those of the real sizes",
        },
        "servers": {
            "ranks": ctx.size,
            "users_per_rank": cfg.users,
            "max_inflight": cfg.max_inflight,
            "arrival": arrival,
        },
        "tiers": {
            "memory": {
                "capacity_bytes_real": cfg.cpu_tier_bytes,
                "capacity_chunks": sz.cpu_chunks,
                "capacity_bytes_stored": sz.cpu_stored,
                "peak_bytes_max_rank": max((t["peak_bytes"] for t in mem), default=0),
                "evictions": sum(t["evictions"] for t in mem),
            },
            "storage": ctx.backend.describe()
            | {
                "publish": per_rank[0].get("publish"),
                "capacity_chunks": tier[0]["bound_chunks"],
                "capacity_bytes_stored": None
                if tier[0]["bound_chunks"] is None
                else tier[0]["bound_chunks"] * sz.chunk_stored,
                "capacity_source": tier[0]["bound_source"],
                "per_rank_capacity_bytes": tier[0]["capacity_bytes"],
                "eviction": "per rank: each rank evicts the least recently used of the chunks it "
                "wrote (its writes and its own hits refresh them) beyond its share of the capacity",
                "peak_bytes_sum_of_ranks": sum(t["peak_bytes"] for t in tier),
                "evicted_chunks": sum(t["evictions"] for t in tier),
                "evicted_bytes": sum(t["evicted_bytes"] for t in tier),
                "evict_failed": sum(t["evict_failed"] for t in tier),
                "misses_after_eviction": c["evicted_misses"],
                "hit_rate_chunks_lost": _rate(c["evicted_misses"], c["full_chunks"]),
            },
            "tier0": _tier0(
                ctx.tier0.name,
                t0,
                c,
                phases.get("tier0_read", {}).get("errors", 0),
                io,
                _ms(merged["tier0_miss"]),
                sz.chunk_stored,
            )
            if t0 and ctx.tier0 is not None
            else None,
            "write_policy": cfg.write_policy,
        },
        "durability": per_rank[0].get("durability"),
        "cold_reads": {
            "claimed": cfg.cold,
            "method": ctx.backend.cache_control().note if cfg.cold else "not claimed",
            "cache_fraction": phases.get("read", {}).get("cache_fraction"),
            "device_bytes": phases.get("read", {}).get("device_bytes"),
        },
        "requests": {
            "count": c["requests"],
            "started": sum(m["requests_started"] for m in per_rank),
            "planned": sum(m["requests_planned"] or 0 for m in per_rank) or None,
            "per_s": _rate(c["requests"], span),
            "span_s": round(span, 6),
            "latency_ms": _ms(merged["request"]),
            "queue_ms": _ms(merged["queue"]),
        },
        "tokens": {
            "context": c["context_tokens"],
            "hit_memory": c["hit_memory"] * C,
            "hit_write_queue": c["hit_write_queue"] * C,
            "hit_tier0": c["hit_tier0"] * C,
            "hit_storage": tokens_read,
            "recomputed": c["recomputed_tokens"],
        },
        # every chunk looked up, by where the look-up ended: the counts add up to `chunks`
        "lookups": {
            "chunks": c["lookups"],
            "memory": c["hit_memory"],
            "write_queue": c["hit_write_queue"],
            "tier0": c["hit_tier0"],
            "storage": c["hit_storage"],
            "missed": c["missed"],
            "failed": c["failed"],
        },
        "hit_rate": {
            "tokens": {
                "memory": _rate(c["hit_memory"] * C, c["context_tokens"]),
                "write_queue": _rate(c["hit_write_queue"] * C, c["context_tokens"]),
                "tier0": _rate(c["hit_tier0"] * C, c["context_tokens"]),
                "storage": _rate(tokens_read, c["context_tokens"]),
                "total": _rate(hit_tokens, c["context_tokens"]),
            },
            "chunks": {
                "memory": _rate(c["hit_memory"], c["full_chunks"]),
                "write_queue": _rate(c["hit_write_queue"], c["full_chunks"]),
                "tier0": _rate(c["hit_tier0"], c["full_chunks"]),
                "storage": _rate(c["hit_storage"], c["full_chunks"]),
                "total": _rate(hit_chunks, c["full_chunks"]),
            },
            "full_chunks_looked_up": c["full_chunks"],
        },
        "storage_tokens_per_s": {
            "read": _rate(tokens_read, span),
            "write": _rate(tokens_written, span),
            "total": _rate(tokens_read + tokens_written, span),
        },
        "read": read,
        "write": write,
        "lookup_miss": {"count": c["lookup_misses"], "latency_ms": _ms(merged["miss"])},
        "ttft_ms": _ms(merged["ttft"]) | {"prefill_tokens_per_s": cfg.prefill_tokens_per_s},
        "load_ms": _ms(merged["load"]),
        "writes": {
            "skipped_known": c["skipped_known"],
            "skipped_in_flight": c["skipped_in_flight"],
            "backpressure_s": round(sum(m.get("backpressure_s", 0.0) for m in per_rank), 6),
            **dup,
        },
        "cross_rank_reads": c["cross_rank_reads"],
        "footprint_bytes": dup.get("unique_chunks", 0) * sz.chunk_stored,
        "integrity": {
            "verified": cfg.verify,
            "chunks_verified": c["verified"] + c["tier0_verified"],
            "by_tier": {"storage": c["verified"], "tier0": c["tier0_verified"]},
            "corrupt": sum(
                phases.get(p, {}).get("error_kinds", {}).get("corrupt", 0) for p in ("read", "tier0_read")
            ),
            "scheme": "a random body shared by all ranks; every 4 KiB block opens with a 64-bit word of "
            "(the chunk key's first 64 bits, block); xxh3-64 over the whole chunk (content.BlockStamped)",
        },
        "per_rank": [
            {
                "rank": m["rank"],
                "requests": m["counters"]["requests"],
                "hit_rate_tokens": _rate(
                    sum(m["counters"][h] for h in HITS) * C, m["counters"]["context_tokens"]
                ),
                "cross_rank_reads": m["counters"]["cross_rank_reads"],
                "read_p95_ms": _ms(hists["read"][i])["p95"],
                "write_p95_ms": _ms(hists["write"][i])["p95"],
            }
            for i, m in enumerate(per_rank)
        ],
        "mlperf_v3_style": {
            "read_GBps": read["GBps"],
            "max_rank_p95_read_ms": read["max_rank_p95_ms"],
            "max_rank_p95_write_ms": write["max_rank_p95_ms"],
            "storage_tokens_per_s": _rate(tokens_read + tokens_written, span),
        },
        "notes": [
            "counters.errors_by_kind.not_found of an S3 run are lookup misses (a GET of a chunk no "
            "server has stored yet), reported here as lookup_miss; they are not failures",
            "ttft_ms estimates TTFT as load time (measured) + recomputed tokens / prefill_tokens_per_s",
        ]
        + (
            [
                "tier0_counters.errors_by_kind.not_found are tier-0 misses (tiers.tier0.misses), not failures; "
                "a tier-0 put refused for lack of room is made room for (tiers.tier0.evicted_when_full) or "
                "counted in tiers.tier0.not_placed_full"
            ]
            if t0
            else []
        ),
    }
    out["timeseries"] = timeseries(
        ctx.run_dir, per_rank, sz.chunk_stored, C, auto=not cfg.timeseries_interval_s
    )
    ctx.log.info(
        "kv_cache: %d requests (%.1f/s), token hit rate %.3f (memory %.3f, tier-0 %.3f, storage %.3f); read %.3f "
        "GB/s p95 %.2f ms (max rank %.2f); write %.3f GB/s p95 %.2f ms; TTFT p50 %.1f ms p99 %.1f ms",
        c["requests"], out["requests"]["per_s"], out["hit_rate"]["tokens"]["total"],
        out["hit_rate"]["tokens"]["memory"], out["hit_rate"]["tokens"]["tier0"],
        out["hit_rate"]["tokens"]["storage"], read["GBps"],
        read["latency_ms"]["p95"], read["max_rank_p95_ms"], write["GBps"], write["latency_ms"]["p95"],
        out["ttft_ms"]["p50"], out["ttft_ms"]["p99"],
    )  # fmt: skip
    return {"kv_cache": out}


def _tier0(
    backend: str,
    t0: list[dict[str, Any]],
    c: dict[str, int],
    read_errors: int,
    io: Callable[[str], dict[str, Any]],
    miss_ms: dict[str, float],
    chunk: int,
) -> dict[str, Any]:
    """tiers.tier0: what the tier-0 served, took and let go of, over all ranks. Its look-ups are
    the chunks that reached it: each a hit, a miss (on to storage) or a read error (on to storage)."""
    looked = c["hit_tier0"] + c["tier0_misses"] + read_errors
    first = t0[0]
    return {
        "backend": backend,
        "placement": "write-through: a new chunk is placed in the tier-0 in the request that made it, "
        "and written to storage too (sync: in the request; write_back: through the queue); a chunk "
        "found on storage is placed again once the prefix is loaded",
        "eviction": "per rank: when the tier-0 refuses a put (no space) or the rank's share of "
        "workload.tier0_bytes is used, the rank deletes the least recently used chunk it placed (where "
        "the new one goes: the same owner's pool on tier0=nixl) and tries again; a chunk still not "
        "placed is counted in not_placed_full and served from storage",
        "capacity_chunks": first["bound_chunks"],
        "capacity_bytes_stored": None if first["bound_chunks"] is None else first["bound_chunks"] * chunk,
        "capacity_source": first["bound_source"],
        "per_rank_capacity_bytes": first["capacity_bytes"],
        "lookups": looked,
        "hits": c["hit_tier0"],
        "misses": c["tier0_misses"],
        "read_errors": read_errors,
        "hit_rate": _rate(c["hit_tier0"], looked),
        "cross_rank_reads": c["tier0_cross_rank_reads"],
        "peer_memory_reads": c["tier0_peer_reads"],
        "misses_after_eviction": c["tier0_evicted_misses"],
        "read": io("tier0_read"),
        "write": io("tier0_write"),
        "miss_latency_ms": miss_ms,
        "placed": c["tier0_writes"],
        "promotions": c["tier0_promotions"],
        "not_placed_full": c["tier0_not_placed"],
        "evicted_chunks": sum(t["evictions"] for t in t0),
        "evicted_bytes": sum(t["evicted_bytes"] for t in t0),
        "evicted_when_full": sum(t["evicted_when_full"] for t in t0),
        "evict_failed": sum(t["evict_failed"] for t in t0),
        "peak_bytes_sum_of_ranks": sum(t["peak_bytes"] for t in t0),
        "chunks_verified": c["tier0_verified"],
        "cleanup": {
            "deleted": sum(t["cleanup"]["deleted"] for t in t0),
            "failed": sum(t["cleanup"]["failed"] for t in t0),
            "skipped": any(t["cleanup"].get("skipped") for t in t0),
        },
    }
