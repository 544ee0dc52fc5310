"""storage_sweep: every rank writes N objects of size S at once, then reads them back.

The first workload: it proves the harness and gives a backend's raw numbers. Reads take the
objects of rank (r + read_shift) so no rank reads back what it just wrote (client caches),
in sequential and in random order. Every object carries its writer rank and index in its first
16 bytes and a known body, so a read is verified by the stamp and an xxh3 of the body
(workloads/content.py: HeadStamped).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlio_ext.storage.base import VerifyError
from dlio_ext.validate import first_problem, io_depth, positive
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.content import Alloc, HeadStamped
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseResult

PHASES = ("write", "read_sequential", "read_random", "stat", "delete")


@dataclass
class Config:
    name: str = "storage_sweep"
    object_size: int = 1 << 20
    objects_per_rank: int = 32
    io_depth: int = 1
    phases: list[str] = field(default_factory=lambda: ["write", "read_sequential", "read_random", "delete"])
    read_shift: int = 1
    verify: bool = True
    cold: bool = False

    def validate(self) -> str | None:
        bad = [p for p in self.phases if p not in PHASES]
        return first_problem(
            positive("object_size", self.object_size),
            positive("objects_per_rank", self.objects_per_rank),
            io_depth("io_depth", self.io_depth),
            positive("read_shift", self.read_shift, allow_zero=True),
            f"phases={bad} are unknown; use any of: {', '.join(PHASES)}" if bad else None,
            "phases is empty; name at least one of: " + ", ".join(PHASES) if not self.phases else None,
        )


def object_key(run_id: str, rank: int, index: int) -> str:
    """Where object `index` of `rank` lives (s3-faults reads the sweep's objects back by it)."""
    return f"{run_id}/sweep/r{rank:05d}/obj{index:06d}"


_KEY = re.compile(r"/sweep/r(\d+)/obj(\d+)$")


def object_of(key: str) -> tuple[int, int] | None:
    """(writer rank, index) of a key made by `object_key`, None for any other key."""
    found = _KEY.search(key)
    return None if found is None else (int(found.group(1)), int(found.group(2)))


def object_content(seed: int, rank: int, size: int, alloc: Alloc) -> HeadStamped:
    """What `rank` writes: objects stamped (rank, index), a body of the rank's own (no dedup
    across ranks either)."""
    return HeadStamped(seed, size, alloc, salt=rank)


@register
class StorageSweep(Workload):
    """Write, read (sequential and random), stat and delete objects of one size."""

    name = "storage_sweep"
    Config = Config

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.cfg: Config = ctx.config
        self.rank = ctx.rank
        self.src_rank = (ctx.rank + self.cfg.read_shift) % ctx.size
        # which of this rank's objects exist (a list item store is atomic under the GIL): what a
        # delete phase that failed, or never ran because the run stopped, leaves behind
        self.stored = [False] * self.cfg.objects_per_rank

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        """Bytes stored at once (the preflight check): every object of every rank, before the delete."""
        if "write" not in cfg.phases:
            return 0, "no write phase"
        return (
            cfg.objects_per_rank * cfg.object_size * ranks,
            f"workload.objects_per_rank={cfg.objects_per_rank} x workload.object_size={cfg.object_size} "
            f"x {ranks} rank(s)",
        )

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        """Bytes a rank allocates before the clock: a buffer per thread, its own and its source's body."""
        return (
            cfg.io_depth + 2
        ) * cfg.object_size, f"workload.io_depth={cfg.io_depth} x workload.object_size={cfg.object_size}"

    def key(self, rank: int, index: int) -> str:
        return object_key(self.ctx.run_id, rank, index)

    def run(self) -> list[PhaseResult]:
        ctx, cfg = self.ctx, self.cfg
        n = cfg.objects_per_rank
        # untimed: the bodies are generated once, here, never per op
        self.mine = object_content(ctx.seed, self.rank, cfg.object_size, ctx.backend.alloc)
        self.theirs = (
            self.mine
            if self.src_rank == self.rank
            else object_content(ctx.seed, self.src_rank, cfg.object_size, ctx.backend.alloc)
        )
        shuffled = list(range(n))
        random.Random(ctx.seed * 7919 + self.rank).shuffle(shuffled)
        results: list[PhaseResult] = []
        try:
            for phase in cfg.phases:
                results.append(self.phase(phase, shuffled))
        finally:
            # without a delete phase the objects are kept on purpose; with one, what is still
            # there (a delete failed, or the run stopped before it) is left behind, and said so
            if "delete" in cfg.phases:
                ctx.backend.leftovers.add(self.key(self.rank, i) for i in range(n) if self.stored[i])
        return results

    def phase(self, phase: str, shuffled: list[int]) -> PhaseResult:
        """One phase through the runner, every op on its own thread's buffer."""
        cfg, runner, b = self.cfg, self.ctx.runner, self.ctx.backend
        n, depth = cfg.objects_per_rank, cfg.io_depth
        if phase.startswith("read_") and cfg.cold:
            # after the last phase's closing barrier: every write is done; untimed
            b.evict(self.key(self.src_rank, i) for i in range(n))
        if phase == "write":
            return runner.run(phase, n, self.writer(), depth, lambda _t: self.mine.buffer(), io="write")
        if phase.startswith("read_"):
            order = list(range(n)) if phase == "read_sequential" else shuffled
            # a buffer a thread, its pages faulted in before the clock starts
            read_state = lambda _t: b.alloc(cfg.object_size)  # noqa: E731
            return runner.run(phase, n, self.reader(order), depth, read_state, io="read", cold=cfg.cold)
        if phase == "stat":
            return runner.run(phase, n, self.stat, depth)
        return runner.run(phase, n, self.delete, depth)

    # ops: closures over locals, the per-op path (no attribute lookups but the backend's verb)

    def writer(self) -> Callable[[int, memoryview], int]:
        put, stamp, stored, key = self.ctx.backend.put, self.mine.stamp, self.stored, self.key
        rank, s = self.rank, self.cfg.object_size

        def write(i: int, buf: memoryview) -> int:
            stamp(buf, rank, i)
            put(key(rank, i), buf)
            stored[i] = True
            return s

        return write

    def reader(self, order: list[int]) -> Callable[[int, memoryview], int]:
        get, check, key = self.ctx.backend.get, self.theirs.check, self.key
        src, verify = self.src_rank, self.cfg.verify

        def read(i: int, buf: memoryview) -> int:
            idx = order[i]
            k = key(src, idx)
            got = get(k, buf)
            if verify:
                check(buf, got, src, idx, k)
            return got

        return read

    def stat(self, i: int, _state: Any) -> int:
        k, s = self.key(self.src_rank, i), self.cfg.object_size
        info = self.ctx.backend.stat(k)
        if info.size != s:
            raise VerifyError(f"{k}: stat says {info.size} bytes, wrote {s}", k)
        return 0

    def delete(self, i: int, _state: Any) -> int:
        self.ctx.backend.delete(self.key(self.rank, i))
        self.stored[i] = False
        return 0
