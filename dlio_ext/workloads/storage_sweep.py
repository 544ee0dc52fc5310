"""storage_sweep: every rank writes N objects of size S at once, then reads them back.

The first workload: it proves the harness and gives a backend's raw numbers. Reads take the
objects of rank (r + read_shift) so no rank reads back what it just wrote (client caches),
in sequential and in random order. Every object carries its writer rank and index in its first
16 bytes and a known body, so a read is verified by the stamp and an xxh3 of the body.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any

import xxhash

from dlio_ext.config.schema import first_problem, io_depth, positive
from dlio_ext.storage.base import VerifyError
from dlio_ext.storage.buffers import aligned_buffer, fill_random
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseResult

PHASES = ("write", "read_sequential", "read_random", "stat", "delete")
STAMP = 16


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


def footprint(cfg: Config, ranks: int) -> tuple[int, str]:
    """Bytes stored at once (the preflight check): every object of every rank, before the delete."""
    if "write" not in cfg.phases:
        return 0, "no write phase"
    return (
        cfg.objects_per_rank * cfg.object_size * ranks,
        f"workload.objects_per_rank={cfg.objects_per_rank} x workload.object_size={cfg.object_size} x {ranks} rank(s)",
    )


def memory(cfg: Config, ranks: int) -> tuple[int, str]:
    """Bytes a rank allocates before the clock: a buffer per thread, its own and its source's body."""
    return (
        cfg.io_depth + 2
    ) * cfg.object_size, f"workload.io_depth={cfg.io_depth} x workload.object_size={cfg.object_size}"


def _stamp(rank: int, index: int) -> bytes:
    return struct.pack("<QQ", rank, index)


class _Content:
    """A rank's object body, generated once; objects differ only in their 16-byte stamp."""

    def __init__(self, seed: int, rank: int, size: int):
        self.size = size
        self.template = aligned_buffer(size)
        fill_random(self.template, seed * 1_000_003 + rank)
        self.body_hash = xxhash.xxh3_64_intdigest(self.template[STAMP:]) if size > STAMP else 0


def _run_phases(ctx: Context) -> list[PhaseResult]:
    cfg: Config = ctx.config
    b, rank, size = ctx.backend, ctx.rank, ctx.size
    n, s = cfg.objects_per_rank, cfg.object_size
    src_rank = (rank + cfg.read_shift) % size
    mine = _Content(ctx.seed, rank, s)
    theirs = mine if src_rank == rank else _Content(ctx.seed, src_rank, s)
    stamp_len = min(STAMP, s)

    def key(r: int, i: int) -> str:
        return f"{ctx.run_id}/sweep/r{r:05d}/obj{i:06d}"

    def write_state(_t: int) -> memoryview:
        buf = aligned_buffer(s)
        buf[:] = mine.template
        return buf

    # which of this rank's objects exist (a list item store is atomic under the GIL): what a
    # delete phase that failed, or never ran because the run stopped, leaves behind
    stored = [False] * n

    def write(i: int, buf: memoryview) -> int:
        buf[:stamp_len] = _stamp(rank, i)[:stamp_len]
        b.put(key(rank, i), buf)
        stored[i] = True
        return s

    def read_state(_t: int) -> memoryview:
        return aligned_buffer(s)  # pages faulted in before the clock starts

    def read_fn(order: list[int]):
        def read(i: int, buf: memoryview) -> int:
            idx = order[i]
            got = b.get(key(src_rank, idx), buf)
            if cfg.verify:
                k = key(src_rank, idx)
                if got != s:
                    raise VerifyError(f"{k}: read {got} bytes, wrote {s}", k)
                if bytes(buf[:stamp_len]) != _stamp(src_rank, idx)[:stamp_len] or (
                    s > STAMP and xxhash.xxh3_64_intdigest(buf[STAMP:s]) != theirs.body_hash
                ):
                    raise VerifyError(f"{k}: content differs from what was written", k)
            return got

        return read

    def stat(i: int, _state: Any) -> int:
        info = b.stat(key(src_rank, i))
        if info.size != s:
            raise VerifyError(f"{key(src_rank, i)}: stat says {info.size} bytes, wrote {s}")
        return 0

    def delete(i: int, _state: Any) -> int:
        b.delete(key(rank, i))
        stored[i] = False
        return 0

    rng = random.Random(ctx.seed * 7919 + rank)
    shuffled = list(range(n))
    rng.shuffle(shuffled)
    results: list[PhaseResult] = []
    try:
        for phase in cfg.phases:
            if phase.startswith("read_") and cfg.cold:
                # after the last phase's closing barrier: every write is done; untimed
                b.evict(key(src_rank, i) for i in range(n))
            if phase == "write":
                res = ctx.runner.run(phase, n, write, cfg.io_depth, write_state, io="write")
            elif phase == "read_sequential":
                res = ctx.runner.run(
                    phase, n, read_fn(list(range(n))), cfg.io_depth, read_state, io="read", cold=cfg.cold
                )
            elif phase == "read_random":
                res = ctx.runner.run(
                    phase, n, read_fn(shuffled), cfg.io_depth, read_state, io="read", cold=cfg.cold
                )
            elif phase == "stat":
                res = ctx.runner.run(phase, n, stat, cfg.io_depth)
            else:
                res = ctx.runner.run(phase, n, delete, cfg.io_depth)
            results.append(res)
    finally:
        # without a delete phase the objects are kept on purpose; with one, what is still
        # there (a delete failed, or the run stopped before it) is left behind, and said so
        if "delete" in cfg.phases:
            b.leftovers.add(key(rank, i) for i in range(n) if stored[i])
    return results


@register
class StorageSweep(Workload):
    """Write, read (sequential and random), stat and delete objects of one size."""

    name = "storage_sweep"
    Config = Config

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return footprint(cfg, ranks)

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return memory(cfg, ranks)

    def run(self) -> list[PhaseResult]:
        return _run_phases(self.ctx)
