"""The registered workload: one rank's server set up, its serving phase run through the phase
runner (open-loop arrivals, see `phases.run_open_loop`), what it wrote deleted, its figures sent
to rank 0 and summarized there."""

from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import Backend, NotFound, StorageError, StoreGone
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.kv_cache import summary
from dlio_ext.workloads.kv_cache.config import (
    AUTO_BIN_S,
    Config,
    Sizes,
    TierBound,
    check_tier0,
    footprint,
    memory,
    model_of,
    sizes_of,
    tier0_bound,
    tier_bound,
    trace_spec,
)
from dlio_ext.workloads.kv_cache.server import Server
from dlio_ext.workloads.kv_cache.stats import HISTS, Stats, kinds
from dlio_ext.workloads.kv_cache.tiers import StorageTier, Tier0
from dlio_ext.workloads.kv_cache.trace import Request, Trace
from dlio_ext.workloads.phases import Arrival, PhaseResult, run_open_loop


@register
class KVCache(Workload):
    """LLM inference KV-cache offload: a server per rank, a trace of users, tiers (see the package)."""

    name = "kv_cache"
    Config = Config
    tier0_use = (
        "a shared cache between each server's CPU tier and storage: new chunks are written through to it "
        "(and to storage), chunks are read from it before storage (one-sidedly from a peer's memory on "
        "tier0=nixl), each rank evicts the least recently used chunks it placed when it is full"
    )

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.cfg: Config = ctx.config
        #: this rank's figures for rank_metrics, set by run
        self.metrics: dict[str, Any] = {}
        #: rank 0: chunks stored, unique and written twice, over all ranks
        self.duplicates: dict[str, int] | None = None

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return footprint(cfg, ranks)

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return memory(cfg, ranks)

    @classmethod
    def check_tier0(cls, cfg: Config, tier0: Backend, ranks: int) -> None:
        check_tier0(cfg, tier0, ranks)

    def run(self) -> list[PhaseResult]:
        ctx, cfg = self.ctx, self.cfg
        model = model_of(cfg)
        sz = sizes_of(cfg, model)
        rank, size = ctx.rank, ctx.size
        prefix = f"{cfg.namespace or ctx.run_id}/kvcache"
        # every rank must apply the same bound: rank 0's view of the free space decides
        free = ctx.world.bcast(ctx.backend.free_bytes() if rank == 0 and not cfg.storage_tier_bytes else None)
        bound = tier_bound(cfg, size, free, sz)
        if bound.per_rank_chunks is not None and bound.per_rank_chunks < cfg.max_inflight:
            raise UsageError(
                f"workload.storage_tier_bytes: the storage tier ({bound.source}) holds {bound.per_rank_chunks} "
                f"chunk(s) per rank, fewer than workload.max_inflight={cfg.max_inflight} in flight; "
                + (
                    f"give at least workload.storage_tier_bytes={size * cfg.max_inflight * sz.chunk_real}"
                    if cfg.storage_tier_bytes
                    else "lower workload.scale or max_inflight, or choose a storage with more free space"
                )
            )
        if cfg.publish == "put" and cfg.verify and ctx.backend.capabilities.get("rename") == "native":
            # a file: a put is visible while it is written, so a reader would see part of a chunk
            # another rank (or thread) is writing, and call a healthy store corrupt
            raise UsageError(
                f"workload.publish=put on {ctx.backend.name}: a chunk is visible while it is written, so "
                "verified reads of chunks other ranks are writing would be reported corrupt; use "
                "workload.publish=auto (write, then rename) or workload.verify=false"
            )
        if cfg.durability == "fsync":
            durable = ctx.backend.ask_durable("preset" if cfg.preset != "custom" else "workload")
        else:
            durable = ctx.backend.durability()
        storage = StorageTier(
            ctx.backend, prefix, cfg.publish, tag=f"r{rank}", capacity_bytes=bound.per_rank_bytes
        )
        tier0, room0 = self._tier0(prefix, sz)
        server = Server(
            cfg,
            rank,
            storage,
            ctx.seed,
            model,
            tier0=tier0,
            alloc=ctx.tier0.alloc if ctx.tier0 is not None else None,
        )
        trace = Trace(trace_spec(cfg), ctx.seed)
        interval = cfg.timeseries_interval_s or AUTO_BIN_S
        if rank == 0:
            ctx.log.info(
                "kv_cache %s: %s, %d B/token, chunk %d tokens = %d B real, %d B stored (scale %g); %d rank(s) x %d "
                "user(s), %d chunk buffer(s) per rank (%.1f MiB); CPU tier %d chunk(s); %sstorage tier %s chunk(s) "
                "(%s); writes %s via %s",
                cfg.preset, model.name, sz.bytes_per_token, cfg.chunk_tokens, sz.chunk_real, sz.chunk_stored,
                cfg.scale, size, cfg.users, cfg.max_inflight, cfg.max_inflight * sz.chunk_stored / 2**20,
                sz.cpu_chunks,
                f"tier-0 {tier0.backend.where()} ({room0.source}); " if room0 is not None else "",
                bound.chunks if bound.chunks is not None else "unbounded", bound.source,
                cfg.write_policy, storage.publish,
            )  # fmt: skip

        has0 = tier0 is not None
        user_stats = [Stats(interval, has0) for _ in range(cfg.users)]
        writer_stats = [
            Stats(interval, has0) for _ in range(cfg.writer_threads if server.write_queue is not None else 0)
        ]

        def schedule(u: int) -> Any:
            # a request's chunk keys are hashed here, before its arrival is awaited: off its clock
            for req in trace.user_requests(rank, u):
                arrival: Arrival = (req.arrival_s, (req, server.keys_for(req)))
                yield arrival

        def serve(u: int, request: tuple[Request, list[bytes]]) -> None:
            server.serve(request[0], request[1], user_stats[u])

        try:
            # one window: reads and writes overlap, the kernel's counters split them by direction
            loop = run_open_loop(
                ctx.runner,
                "request",
                [schedule(u) for u in range(cfg.users)],
                serve,
                user_stats + writer_stats,
                kinds(cfg.cold, has0),
                deadline_s=cfg.duration_s or None,
                offset_s=rank * cfg.rank_stagger_s,
                background=[partial(server.writer, st) for st in writer_stats],
                end_background=partial(server.end_writers, len(writer_stats)) if writer_stats else None,
            )
        except StoreGone:
            # every rank raises it at the same point: what the ranks wrote is listed, not waited on
            self._cleanup(storage, sorted(server.mine))
            if tier0 is not None:
                self._cleanup(tier0, tier0.owned())
            raise

        # duplicate writes across ranks: rank 0 sees every rank's written keys
        written = sorted(int(k[:16], 16) for k in server.mine | server.evicted)  # evicted or not
        every = ctx.world.gather((written, server.writes_done))
        if every is not None:
            # a rank may store a chunk twice (it was evicted, or a read found it missing while
            # another rank overwrote it): every store counts, the unique keys once
            total = sum(n for _w, n in every)
            unique = len(set().union(*(set(w) for w, _n in every)))
            self.duplicates = {
                "chunks_written": total,
                "unique_chunks": unique,
                "duplicate_writes": total - unique,
            }
        skipped = {"deleted": 0, "failed": 0, "skipped": True}
        cleanup = self._cleanup(storage, sorted(server.mine)) if cfg.cleanup else skipped
        cleanup0 = (
            (self._cleanup(tier0, tier0.owned()) if cfg.cleanup else skipped) if tier0 is not None else None
        )
        all_stats = user_stats + writer_stats
        logs, t0 = loop.logs, loop.t0
        first = min(lg.first for lg in logs.values())
        self.metrics = {
            "rank": rank,
            "counters": loop.counters,
            "requests_started": loop.started,
            "requests_planned": cfg.users * cfg.requests_per_user if cfg.requests_per_user else None,
            "span_s": [
                round(max(first - t0, 0.0) if math.isfinite(first) else 0.0, 6),
                round(loop.seconds, 6),
            ],
            "backpressure_s": round(sum(s.backpressure_s for s in all_stats), 6),
            "hists": {name: logs[name].hist.to_state() for name in HISTS},
            "series": {
                "interval_s": interval,
                "read_chunks": logs["read"].counts.tolist(),
                "write_chunks": logs["write"].counts.tolist(),
                "requests": logs["request"].counts.tolist(),
            }
            | ({"tier0_read_chunks": logs["tier0_read"].counts.tolist()} if tier0 is not None else {}),
            "publish": storage.publish,
            "durability": {"policy": durable.policy, "source": durable.source},
            "memory_tier": server.memory.stats() if server.memory is not None else None,
            "storage_tier": storage.stats() | {"bound_chunks": bound.chunks, "bound_source": bound.source},
            "tier0": None
            if tier0 is None or room0 is None
            else tier0.stats()
            | {"bound_chunks": room0.chunks, "bound_source": room0.source, "cleanup": cleanup0},
            "chunks_known": len(server.present),
            "cleanup": cleanup,
        }
        return loop.phases

    def _tier0(self, prefix: str, sz: Sizes) -> tuple[Tier0 | None, TierBound | None]:
        """The run's tier-0 as this rank's Tier0 and its room (None without one)."""
        ctx, cfg = self.ctx, self.cfg
        if ctx.tier0 is None:
            if cfg.tier0_bytes:
                raise UsageError(
                    f"workload.tier0_bytes={cfg.tier0_bytes} is set but the run names no tier-0: add "
                    "tier0=nixl (or posix, s3), or drop workload.tier0_bytes"
                )
            return None, None
        # every rank must apply the same room: rank 0's view decides (check_tier0 refused too little)
        free = ctx.world.bcast(ctx.tier0.free_bytes() if ctx.rank == 0 and not cfg.tier0_bytes else None)
        room = tier0_bound(cfg, ctx.size, free, sz)
        return Tier0(ctx.tier0, prefix, tag=f"r{ctx.rank}", capacity_bytes=room.per_rank_bytes), room

    def _cleanup(self, tier: StorageTier, keys: list[str]) -> dict[str, Any]:
        """Untimed: every rank deletes what it wrote to `tier` (a chunk two ranks wrote is deleted
        once; the other delete finds nothing, which is fine); then rank 0 removes the fan-out
        directories."""
        ctx, backend = self.ctx, tier.backend
        paths = [tier.path(k) for k in keys]
        deleted = failed = 0
        if backend.liveness.gone is not None:
            # a gone store cannot delete anything: say what is left rather than wait on it
            backend.leftovers.add(paths)
            ctx.world.barrier()
            return {"deleted": 0, "failed": len(paths), "skipped": "the store is gone"}
        try:
            deleted = backend.delete_many(paths)
        except StorageError:
            deleted, failed = self._delete_each(backend, paths)
        ctx.world.barrier()
        if ctx.rank == 0 and backend.capabilities.get("rmdir") == "native":
            self._rmdirs(backend, tier.prefix)
        if failed:
            ctx.log.warning("rank %d: %d chunk(s) could not be deleted from %s", ctx.rank, failed, tier.name)
        return {"deleted": deleted, "failed": failed}

    @staticmethod
    def _delete_each(backend: Backend, paths: list[str]) -> tuple[int, int]:
        """One delete at a time (after a batch failed): (deleted, failed); what failed is listed
        as a leftover, and once the store is gone, the rest too."""
        deleted = failed = 0
        live = backend.liveness
        for n, p in enumerate(paths):
            try:
                backend.delete(p)
                deleted += 1
                live.ok()
            except NotFound:  # gone already (evicted, or deleted by its writer): nothing left
                live.ok()
            except StorageError as exc:
                failed += 1
                backend.leftovers.add([p])
                if live.outcome(exc, "kv_cache cleanup"):  # gone meanwhile: list the rest, do not wait
                    rest = paths[n + 1 :]
                    failed += len(rest)
                    backend.leftovers.add(rest)
                    break
        return deleted, failed

    @staticmethod
    def _rmdirs(backend: Backend, prefix: str) -> None:
        # a directory that still holds something (another run's chunks, a failed rename) stays
        with contextlib.suppress(StorageError):
            for d in list(backend.list(prefix + "/", delimiter="/")):
                if d.endswith("/"):
                    backend.rmdir(d.rstrip("/"))
            backend.rmdir(prefix)
            parent = prefix.rpartition("/")[0]
            if parent:
                backend.rmdir(parent)

    def rank_metrics(self) -> dict[str, Any]:
        if not self.metrics:
            return {}
        out = dict(self.metrics)
        if self.duplicates is not None:
            out["duplicates"] = self.duplicates
        return out

    def summarize(self, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return summary.summarize(self.ctx, phases, per_rank)
