"""transfer_sweep: nixlbench's sweep on any backend: block sizes x (WRITE, READ), a batch in flight.

For each block size, every rank writes `blocks` blocks into its target's keys, then reads them
back; each (op, size) is one phase through the phase runner. The target is the peer rank
(`pairwise`: r ^ 1, or r + 1 when r ^ 1 is past the last rank) or rank 0 (`many_to_one`: every
rank, rank 0 included, against rank 0's keys). `batch_size` blocks are in flight per rank (one
thread each, with its own registered buffer), and the blocks of a size cycle over `batch_size`
keys per rank, as nixlbench reuses its target buffers: block i goes to key i % batch_size.

"Rank t's keys" are names under `t{target}/`; on a store spread over the ranks' memory
(storage=nixl medium=memory) they are also chosen so that the backend says rank t holds them
(`Backend.home`), so a READ or WRITE there really crosses from rank r to rank t. On posix and s3
(`home` is None) the names only group the keys (the data lives in the shared store).

Every block carries its writer rank and key slot in its first 16 bytes and a body of the
writer's own (workloads/content.py: HeadStamped); a read is verified against what that rank
wrote. Keys are deleted after each size (untimed), so the store holds one size's blocks at a time.

The section reports, per phase, GB/s (1e9 bytes), p50/p99 latency (the runner's histogram) and
CPU seconds per GB (process time between the phase's barriers, every rank's summed). Post vs
transfer time is not reported: no Backend verb gives it (see `POST_VS_TRANSFER`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlio_ext.storage.base import StorageError
from dlio_ext.storage.buffers import ALIGN, round_up
from dlio_ext.validate import first_problem, io_depth, one_of, positive
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.content import HeadStamped
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseResult

OPS = ("write", "read")
PATTERNS = ("pairwise", "many_to_one")
KiB, MiB = 1 << 10, 1 << 20

#: what the post/wait split is, and why a backend may have none (said in the summary)
POST_VS_TRANSFER = (
    "per phase, over every rank: the transfers a medium posted and waited for (storage=nixl: each "
    "NIXL transfer), seconds inside the post call and from its return to DONE, timed by the "
    "backend around NIXL's calls (not NIXL's telemetry); a transport that copies while it posts "
    "(cma) spends its time posting, one that completes in the background (RDMA, tcp) waiting. "
    "Backends that post nothing (posix, s3) have no split. Registration is apart, in the storage "
    "section (registration_seconds)"
)


def powers_of_4(low: int, high: int) -> list[int]:
    """low, 4 x low, 16 x low, ... up to high (inclusive)."""
    out, size = [], low
    while size <= high:
        out.append(size)
        size *= 4
    return out


@dataclass
class Config:
    name: str = "transfer_sweep"
    #: explicit block sizes in bytes; empty: powers of 4 from min_block to max_block
    block_sizes: list[int] = field(default_factory=list)
    min_block: int = 4 * KiB
    max_block: int = 64 * MiB
    ops: list[str] = field(default_factory=lambda: ["write", "read"])
    pattern: str = "pairwise"
    batch_size: int = 1
    iterations: int = 256
    max_phase_bytes: int = 256 * MiB
    verify: bool = True

    def sizes(self) -> list[int]:
        return list(self.block_sizes) if self.block_sizes else powers_of_4(self.min_block, self.max_block)

    def validate(self) -> str | None:
        bad_ops = [o for o in self.ops if o not in OPS]
        bad_sizes = [s for s in self.block_sizes if s <= 0]
        return first_problem(
            f"block_sizes={bad_sizes} must all be > 0" if bad_sizes else None,
            positive("min_block", self.min_block),
            positive("max_block", self.max_block),
            None
            if self.block_sizes or self.min_block <= self.max_block
            else f"min_block={self.min_block} is above max_block={self.max_block}; give min_block <= max_block",
            f"ops={bad_ops} are unknown; use any of: {', '.join(OPS)}" if bad_ops else None,
            "ops is empty; name at least one of: " + ", ".join(OPS) if not self.ops else None,
            f"ops={self.ops} names an op twice; name each once"
            if len(set(self.ops)) < len(self.ops)
            else None,
            one_of("pattern", self.pattern, PATTERNS),
            io_depth("batch_size", self.batch_size),
            positive("iterations", self.iterations),
            positive("max_phase_bytes", self.max_phase_bytes),
        )


def blocks(cfg: Config, size: int) -> int:
    """Blocks each rank moves in one phase of `size`: `iterations`, fewer for big blocks (at most
    max_phase_bytes a rank, as nixlbench cuts its iterations for large blocks), at least one."""
    return max(1, min(cfg.iterations, cfg.max_phase_bytes // size))


def target_of(pattern: str, rank: int, ranks: int) -> int:
    """Whose keys `rank` writes and reads: its pair (r ^ 1; the last of an odd count pairs with
    r + 1, wrapping), or rank 0."""
    if pattern == "many_to_one":
        return 0
    peer = rank ^ 1
    return peer if peer < ranks else (rank + 1) % ranks


def placed_key(name: str, target: int, home: Callable[[str], int | None]) -> str:
    """`name` with the shortest "-p<n>" suffix that the backend places at rank `target`
    (`Backend.home`); `name` itself where no rank holds data. Untimed: about `ranks` tries a key."""
    if home(name) is None:
        return name
    n = 0
    while True:
        key = f"{name}-p{n}"
        if home(key) == target:
            return key
        n += 1


def label(size: int) -> str:
    """4KiB, 64MiB, 1000B: a phase name's size."""
    if size % MiB == 0:
        return f"{size // MiB}MiB"
    if size % KiB == 0:
        return f"{size // KiB}KiB"
    return f"{size}B"


def phase_name(op: str, size: int) -> str:
    return f"{op}_{label(size)}"


class Arena:
    """Slices of one buffer from the backend's allocator, handed out in turn and taken back all
    at once between sizes: a backend that registers memory registers it once, not per size."""

    def __init__(self, buf: memoryview):
        self.buf, self.used = buf, 0

    def take(self, n: int) -> memoryview:
        off = self.used
        if off + n > len(self.buf):
            raise MemoryError(f"arena of {len(self.buf)} bytes has no {n} bytes left")  # a bug
        self.used = off + round_up(n)  # every slice page-aligned (O_DIRECT)
        return self.buf[off : off + n]

    def reset(self) -> None:
        self.used = 0


@register
class TransferSweep(Workload):
    """WRITE then READ blocks of each size against a target rank's keys, a batch in flight."""

    name = "transfer_sweep"
    Config = Config

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.cfg: Config = ctx.config
        self.rank = ctx.rank
        self.target = target_of(self.cfg.pattern, ctx.rank, ctx.size)
        #: process seconds of each phase on this rank, by phase name
        self.cpu_s: dict[str, float] = {}
        #: phase -> (transfers, post seconds, wait seconds) this rank's backend counted in it
        self.posted: dict[str, tuple[int, float, float]] = {}

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        """One size's blocks at a time (each size's keys are deleted before the next)."""
        size = max(cfg.sizes())
        return (
            ranks * min(cfg.batch_size, blocks(cfg, size)) * size,
            f"workload.batch_size={cfg.batch_size} x the largest block ({size}) x {ranks} rank(s)",
        )

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        """The arena: the body and, per block in flight, a write and a read buffer of the largest size."""
        size = max(cfg.sizes())
        return (
            (1 + 2 * cfg.batch_size) * round_up(size, ALIGN),
            f"(1 + 2 x workload.batch_size={cfg.batch_size}) x the largest block ({size})",
        )

    def prepare(self) -> None:
        """The arena, from the backend's allocator, once (registered once where that matters)."""
        self.arena = Arena(self.ctx.backend.alloc(self.memory(self.cfg, self.ctx.size)[0]))

    def keys(self, size: int, slots: int) -> list[str]:
        """This rank's keys of one size, in the target's name space and (hash) placement."""
        base = f"{self.ctx.run_id}/xfer/t{self.target:05d}/w{self.rank:05d}/b{size}"
        return [placed_key(f"{base}/s{s:04d}", self.target, self.ctx.backend.home) for s in range(slots)]

    def run(self) -> list[PhaseResult]:
        results: list[PhaseResult] = []
        for size in self.cfg.sizes():
            results += self.size_phases(size)
        return results

    def size_phases(self, size: int) -> list[PhaseResult]:
        """The phases of one block size; its keys are deleted afterwards, untimed."""
        ctx, cfg = self.ctx, self.cfg
        n = blocks(cfg, size)
        slots = min(cfg.batch_size, n)
        keys = self.keys(size, slots)
        # untimed: the body is generated once a size, the buffers filled before any clock
        self.arena.reset()
        content = HeadStamped(ctx.seed, size, self.arena.take, salt=self.rank)
        wbufs = [content.buffer() for _ in range(cfg.batch_size)]
        rbufs = [self.arena.take(size) for _ in range(cfg.batch_size)]
        out: list[PhaseResult] = []
        try:
            if "write" in cfg.ops:
                out.append(self.timed("write", size, n, self.writer(content, keys), wbufs))
            else:  # reads alone still read what this rank wrote: the blocks are put untimed
                put = self.writer(content, keys)
                for s in range(slots):
                    put(s, wbufs[0])
            if "read" in cfg.ops:
                out.append(self.timed("read", size, n, self.reader(content, keys), rbufs))
        finally:
            self.remove(keys)
        return out

    def timed(
        self, op: str, size: int, n: int, fn: Callable[[int, memoryview], int], bufs: list[memoryview]
    ) -> PhaseResult:
        """One phase through the runner, its process time (every thread: NIXL's and UCX's
        progress included, and the wait at the closing barrier) kept for the section."""
        name = phase_name(op, size)
        counters = self.ctx.backend.counters
        before = counters.transfer_times()
        t0 = time.process_time()
        res = self.ctx.runner.run(name, n, fn, self.cfg.batch_size, lambda t: bufs[t], io=op)
        self.cpu_s[name] = time.process_time() - t0
        after = counters.transfer_times()
        self.posted[name] = (after[0] - before[0], after[1] - before[1], after[2] - before[2])
        return res

    # ops: closures over locals, the per-op path (no attribute lookups but the backend's verb)

    def writer(self, content: HeadStamped, keys: list[str]) -> Callable[[int, memoryview], int]:
        put, stamp, rank, slots, size = (
            self.ctx.backend.put,
            content.stamp,
            self.rank,
            len(keys),
            content.size,
        )

        def write(i: int, buf: memoryview) -> int:
            # block i and i + slots may be in flight at once (threads take the next index): both
            # carry slot s's exact bytes, so whichever lands last is what a read must find
            s = i % slots
            stamp(buf, rank, s)
            put(keys[s], buf)
            return size

        return write

    def reader(self, content: HeadStamped, keys: list[str]) -> Callable[[int, memoryview], int]:
        get, check, rank, slots, verify = (
            self.ctx.backend.get,
            content.check,
            self.rank,
            len(keys),
            self.cfg.verify,
        )

        def read(i: int, buf: memoryview) -> int:
            s = i % slots
            got = get(keys[s], buf)
            if verify:
                check(buf, got, rank, s, keys[s])
            return got

        return read

    def remove(self, keys: list[str]) -> None:
        """Delete this rank's keys of a size; what could not be deleted is left behind, and said so."""
        left = []
        for k in keys:
            try:
                self.ctx.backend.delete(k)
            except StorageError:
                left.append(k)
        self.ctx.backend.leftovers.add(left)

    def rank_metrics(self) -> dict[str, Any]:
        return {
            "cpu_s": {k: round(v, 6) for k, v in self.cpu_s.items()},
            "posted": {k: list(v) for k, v in self.posted.items()},
            "target": self.target,
        }

    def summarize(self, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.cfg
        rows = []
        for size in cfg.sizes():
            for op in OPS:
                name = phase_name(op, size)
                p = phases.get(name)
                if p is None:
                    continue
                cpu = sum(r["cpu_s"].get(name, 0.0) for r in per_rank)
                posted = [r.get("posted", {}).get(name, [0, 0.0, 0.0]) for r in per_rank]
                transfers = sum(x[0] for x in posted)
                post_s, wait_s = sum(x[1] for x in posted), sum(x[2] for x in posted)
                gb = p["bytes"] / 1e9
                rows.append(
                    {
                        "phase": name,
                        "op": op,
                        "block_size": size,
                        "blocks_per_rank": blocks(cfg, size),
                        "ops": p["ops"],
                        "errors": p["errors"],
                        "bytes": p["bytes"],
                        "seconds": p["seconds"],
                        "GBps": p["GBps"],
                        "latency_us": {"p50": p["latency_us"]["p50"], "p99": p["latency_us"]["p99"]},
                        "cpu_s": round(cpu, 6),
                        "cpu_s_per_GB": round(cpu / gb, 6) if gb else None,
                        "transfers": transfers,
                        "post_s": round(post_s, 6),
                        "wait_s": round(wait_s, 6),
                        "post_share": round(post_s / (post_s + wait_s), 4)
                        if transfers and post_s + wait_s
                        else None,
                    }
                )
        return {
            "transfer_sweep": {
                "pattern": cfg.pattern,
                "ranks": self.ctx.size,
                "targets": [r["target"] for r in per_rank],
                "batch_size": cfg.batch_size,
                "block_sizes": cfg.sizes(),
                "rate_definition": "GB/s = bytes every rank moved / the phase's span "
                "(first op's start to last op's end over the ranks), 1 GB = 1e9 bytes",
                "cpu_definition": "process seconds (every thread) between the phase's barriers, "
                "summed over the ranks, per 1e9 bytes moved",
                "phases": rows,
                "post_vs_transfer": {
                    "available": any(r["transfers"] for r in rows),
                    "note": POST_VS_TRANSFER,
                },
            }
        }
