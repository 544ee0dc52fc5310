"""checkpoint_burst: every rank writes its LLM checkpoint shard at the same instant, then restores
another rank's shard cold. Measured as a storage engineer would trust it.

What DLIO's checkpoint numbers get wrong, and what this does instead:
- time: every rank is timed; a burst lasts from the first rank's first byte to the last rank's
  last close (fsync included); per-rank p50/p99/max, the straggler ratio (max/median), time to
  first byte, create/open and fsync times are reported apart;
- durability: fsync happens when storage.fsync asks for it (counted and timed by the backend),
  O_DIRECT when storage.direct is set;
- restores are cold (O_DIRECT, else dropped page cache, else posix_fadvise DONTNEED per file;
  summary.json says which was really used) and read another rank's shard (rank shift);
- integrity: every 4 KiB block of every shard carries a 64-bit word derived from (seed,
  checkpoint, writer rank, file, block) and the rest of each chunk comes from a pool of random
  buffers whose xxh3-64 digests are known, so a restoring rank verifies every byte it reads with
  one hash pass and no manifest; any difference is a `corrupt` error and the run is invalid;
- memory: shards stream through a fixed pool of reusable aligned buffers (buffer_pool_bytes), so
  a rank's RSS does not grow with its shard. Async mode is the exception it has to be: a
  snapshot needs host memory to land in (host_buffer_bytes; 0 = the whole shard).

Sizes and names come from checkpoint_layout (DLIO main's arithmetic, MLPerf's models). `scale`
shrinks every file for small machines; `subset` runs a few ranks of a large layout.
"""

from __future__ import annotations

import json
import math
import queue
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import xxhash

from dlio_ext.config.schema import first_problem, key_prefix, one_of, positive
from dlio_ext.errors import UsageError
from dlio_ext.metrics.histogram import Histogram
from dlio_ext.storage.base import (
    Backend,
    Liveness,
    NotFound,
    StorageError,
    StoreGone,
    Unreachable,
    VerifyError,
    kind_text,
)
from dlio_ext.storage.buffers import ALIGN, aligned_buffer, fill_random
from dlio_ext.workloads import checkpoint_layout as cl
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseResult, PhaseRunner, run_threads

PRESETS = (*cl.PRESETS, "custom")
WORDS_PER_BLOCK = ALIGN // 8
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MASK64 = (1 << 64) - 1


@dataclass
class Config:
    name: str = "checkpoint_burst"
    preset: str = "llama3_8b"
    # custom model (preset=custom): dimensions, parallel layout, ZeRO stage, bytes per element
    num_layers: int = 0
    hidden_size: int = 0
    ffn_hidden_size: int = 0
    num_attention_heads: int = 0
    num_kv_heads: int = 0
    vocab_size: int = 0
    tp: int = 1
    pp: int = 1
    dp: int = 0  # 0: the number of ranks / (tp * pp)
    zero_stage: int = 3
    model_dtype_bytes: int = 2
    optimizer_dtype_bytes: int = 4
    # custom without a model: every rank writes this many bytes (before scale)
    bytes_per_rank: int = 0
    subset: bool = True
    subset_ranks: list[int] = field(default_factory=list)
    scale: float = 0.002
    layout: str = "deepspeed"
    dcp_files_per_rank: int = 1
    checkpoints: int = 10
    restores: int = 10
    compute_seconds: float = 1.0
    mode: str = "sync"
    host_buffer_bytes: int = 0
    restore_rank_shift: int = -1
    cold_restore: str = "auto"
    chunk_size: int = 16 << 20
    buffer_pool_bytes: int = 64 << 20
    io_threads: int = 1
    verify: bool = True
    keep_checkpoints: int = 0
    cleanup: bool = True
    folder: str = "checkpoints"
    mtbf_hours: float = 0.0
    accelerator_mttf_hours: float = 50000.0

    def validate(self) -> str | None:
        custom_model = self.preset == "custom" and self.num_layers > 0
        dims = (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "num_kv_heads",
            "vocab_size",
        )
        missing = [d for d in dims if getattr(self, d) <= 0] if custom_model else []
        if self.preset == "custom" and self.num_layers <= 0 and self.bytes_per_rank <= 0:
            missing = ["num_layers"]
        problems = [
            one_of("preset", self.preset, PRESETS),
            one_of("layout", self.layout, cl.LAYOUTS),
            one_of("mode", self.mode, ("sync", "async")),
            one_of("cold_restore", self.cold_restore, ("auto", "drop_caches", "fadvise", "none")),
            one_of("zero_stage", self.zero_stage, (0, 1, 2, 3)),
            f"{missing[0]}={getattr(self, missing[0])}: preset=custom needs the model's dimensions "
            f"({', '.join(dims)}, all > 0) or num_layers=0 and bytes_per_rank > 0"
            if missing
            else None,
            positive("bytes_per_rank", self.bytes_per_rank, allow_zero=True),
            positive("tp", self.tp),
            positive("pp", self.pp),
            positive("dp", self.dp, allow_zero=True),
            positive("model_dtype_bytes", self.model_dtype_bytes),
            positive("optimizer_dtype_bytes", self.optimizer_dtype_bytes),
            f"scale={self.scale} must be > 0 and <= 1 (1 writes the real shard sizes)"
            if not 0 < self.scale <= 1
            else None,
            positive("dcp_files_per_rank", self.dcp_files_per_rank),
            positive("checkpoints", self.checkpoints),
            positive("restores", self.restores, allow_zero=True),
            positive("compute_seconds", self.compute_seconds, allow_zero=True),
            positive("host_buffer_bytes", self.host_buffer_bytes, allow_zero=True),
            positive("io_threads", self.io_threads),
            positive("keep_checkpoints", self.keep_checkpoints, allow_zero=True),
            positive("mtbf_hours", self.mtbf_hours, allow_zero=True),
            positive("accelerator_mttf_hours", self.accelerator_mttf_hours),
            f"chunk_size={self.chunk_size} must be a positive multiple of {ALIGN}"
            if self.chunk_size <= 0 or self.chunk_size % ALIGN
            else None,
            f"buffer_pool_bytes={self.buffer_pool_bytes} must hold at least one chunk per I/O thread "
            f"(io_threads x chunk_size = {self.io_threads * self.chunk_size})"
            if self.buffer_pool_bytes < self.io_threads * self.chunk_size
            else None,
            "restore_rank_shift must be >= 0, or -1 for automatic" if self.restore_rank_shift < -1 else None,
            f"subset_ranks={self.subset_ranks} must be distinct ranks >= 0"
            if any(r < 0 for r in self.subset_ranks) or len(set(self.subset_ranks)) != len(self.subset_ranks)
            else None,
            key_prefix("folder", self.folder),
        ]
        if custom_model and self.zero_stage == 3 and self.pp > 1:
            problems.append("zero_stage=3 with pp > 1 is not a layout DeepSpeed or DLIO supports; use pp=1")
        return first_problem(*problems)


# --- content: every byte predictable by the restoring rank, no block repeated ----------------------


def _mix64(*values: int) -> int:
    """splitmix64 over a few integers: the per-file key of the block words."""
    x = 0x6A09E667F3BCC908
    for v in values:
        x = (x ^ (v & MASK64)) & MASK64
        x = (x + 0x9E3779B97F4A7C15) & MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        x = z ^ (z >> 31)
    return x


def block_words(key: int, first_block: int, n: int) -> np.ndarray:
    """The words stamped into blocks first_block..first_block+n-1 of a file: distinct per block."""
    idx = np.arange(first_block, first_block + n, dtype=np.uint64)
    return (idx * GOLDEN) ^ np.uint64(key)


def word_slots(buf: memoryview, length: int) -> np.ndarray:
    """A writable view of the first 8 bytes of every 4 KiB block of buf[:length] (full words only)."""
    return np.frombuffer(buf, dtype=np.uint64, count=length // 8)[::WORDS_PER_BLOCK]


class Content:
    """The pool of reusable aligned buffers a rank streams its shards from, filled once.

    The same seed gives every rank the same pool, so a reader knows the body of any chunk; each
    chunk's block words (see `block_words`) are written into the buffer just before it is sent,
    and the digest of the body (with the pool's own words) is computed once per length.

    A buffer is stamped only by the thread that owns it (`pick`), and only once the backend call
    that sent its previous chunk has returned: backends borrow a buffer for the call only
    (dlio_ext/storage/base.py, "Buffer ownership"). Nothing else ever writes to the pool."""

    def __init__(self, seed: int, chunk: int, pool_bytes: int, threads: int):
        self.chunk, self.threads = chunk, threads
        n = max(threads, pool_bytes // chunk)
        self.bufs = [aligned_buffer(chunk) for _ in range(n)]
        for i, b in enumerate(self.bufs):
            fill_random(b, seed * 1_000_003 + 7919 + i)
        self.orig = [word_slots(b, chunk).copy() for b in self.bufs]
        self._digest: dict[tuple[int, int], int] = {}
        self.seed = seed

    @property
    def nbytes(self) -> int:
        return len(self.bufs) * self.chunk

    def pick(self, writer: int, file_index: int, chunk_index: int) -> int:
        """Which pool buffer carries a chunk; thread t of a writer owns buffers t, t+T, t+2T, ..."""
        per = len(self.bufs) // self.threads
        t = file_index % self.threads
        return t + self.threads * ((writer * 131 + file_index * 31 + chunk_index) % per)

    def body_digest(self, p: int, length: int) -> int:
        """xxh3-64 of pool buffer p's first `length` bytes as filled, with its own block words.

        Read-only: the buffer may carry another chunk's stamps right now, or be in a backend's
        hands. Only the stamp words ever change, so they come from `orig` and the bytes between
        them from the buffer, fed to one streaming hash (the same digest as hashing the filled
        buffer whole, about 3 ms for 16 MiB, once per buffer and length)."""
        key = (p, length)
        d = self._digest.get(key)
        if d is None:
            buf, words = self.bufs[p], self.orig[p].tobytes()
            h = xxhash.xxh3_64()
            for j, off in enumerate(range(0, length, ALIGN)):
                end = min(off + ALIGN, length)
                h.update(words[8 * j : 8 * j + min(8, end - off)])
                if off + 8 < end:
                    h.update(buf[off + 8 : end])
            d = self._digest[key] = h.intdigest()
        return d

    def settle_tail(self, buf: memoryview, p: int, n: int) -> None:
        """A chunk that ends 1-7 bytes into a block has no room for that block's stamp: those
        bytes are pool buffer p's own, never what a longer chunk stamped there before (which
        would depend on this process's history, and fail another rank's check)."""
        off = n // ALIGN * ALIGN
        if off < n < off + 8:
            j = off // ALIGN
            buf[off:n] = self.orig[p][j : j + 1].tobytes()[: n - off]

    def file_key(self, ckpt: int, writer: int, file_index: int) -> int:
        return _mix64(self.seed, ckpt, writer, file_index)


class FileHash:
    """A shard's content hash, xxh3-64 over each chunk's block words and body digest: every byte
    of the file enters it, and the reader computes it from what it read, in the same single pass."""

    def __init__(self) -> None:
        self.h = xxhash.xxh3_64()

    def update(self, words: np.ndarray, body: int) -> None:
        self.h.update(words.tobytes())
        self.h.update(body.to_bytes(8, "little"))

    def hexdigest(self) -> str:
        return self.h.hexdigest()


# --- what each rank writes and reads --------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    key: str
    name: str
    nbytes: int
    index: int  # the file's position in its writer's list (part of its content key)
    writer: int  # the layout rank that writes it
    kind: str


@dataclass
class FileEvent:
    """One file written or read: absolute perf_counter times, for the timeline and the metrics."""

    kind: str
    ckpt: int
    name: str
    nbytes: int
    start: float
    opened: float = 0.0
    first_byte: float = 0.0
    end: float = 0.0
    close_s: float = 0.0
    ok: bool = False
    error: str | None = None
    error_kind: str | None = None
    digest: str = ""


class Engine:
    """Streams planned files through a backend, chunk by chunk, from the content pool."""

    def __init__(self, backend: Backend, content: Content, verify: bool = True):
        self.b, self.content, self.verify = backend, content, verify
        self.chunk = content.chunk

    # write ----------------------------------------------------------------------------------------
    def write_file(self, f: PlannedFile, ckpt: int, kind: str = "write") -> FileEvent:
        ev = FileEvent(kind, ckpt, f.name, f.nbytes, time.perf_counter())
        c = self.content
        fkey = c.file_key(ckpt, f.writer, f.index)
        fh = FileHash()
        per_block = self.chunk // ALIGN
        try:
            w = self.b.writer(f.key)
            ev.opened = time.perf_counter()
            closing = False
            try:
                off, i = 0, 0
                while off < f.nbytes:
                    n = min(self.chunk, f.nbytes - off)
                    p = c.pick(f.writer, f.index, i)
                    buf = c.bufs[p]
                    slots = word_slots(buf, n)
                    words = block_words(fkey, i * per_block, len(slots))
                    slots[:] = words
                    c.settle_tail(buf, p, n)
                    # borrowed for the call only: once write returns, buf is ours to restamp
                    w.write(buf[:n])
                    if i == 0:
                        ev.first_byte = time.perf_counter()
                    fh.update(words, c.body_digest(p, n))
                    off += n
                    i += 1
                t = time.perf_counter()
                closing = True
                w.close()
                ev.close_s = time.perf_counter() - t
            except BaseException:
                if not closing:  # a failed close has already released (or aborted) the file
                    _abort(w)
                raise
            ev.ok = True
            ev.digest = fh.hexdigest()
        except StorageError as exc:
            ev.error, ev.error_kind = str(exc), exc.kind
        ev.end = time.perf_counter()
        return ev

    # read -----------------------------------------------------------------------------------------
    def read_file(self, f: PlannedFile, ckpt: int, rbufs: memoryview | Sequence[memoryview]) -> FileEvent:
        """Read and verify one file. With two buffers the next chunk is fetched (on a helper
        thread; the backend's read releases the GIL) while this one is verified, so checking every
        byte costs no storage time."""
        ev = FileEvent("restore", ckpt, f.name, f.nbytes, time.perf_counter())
        bufs = [rbufs] if isinstance(rbufs, memoryview) else list(rbufs)
        chunks = [(off, min(self.chunk, f.nbytes - off)) for off in range(0, f.nbytes, self.chunk)]
        ahead = len(bufs) > 1 and len(chunks) > 1
        pool = ThreadPoolExecutor(max_workers=1) if ahead else None
        fut: Future[int] | None = None

        def fetch(i: int) -> int:
            off, n = chunks[i]
            return self.b.get_range(f.key, off, bufs[i % len(bufs)][:n])

        try:
            size = self.b.stat(f.key).size
            ev.opened = time.perf_counter()
            if size != f.nbytes:
                raise VerifyError(f"{f.key}: {size} bytes on storage, {f.nbytes} written", f.key)
            fh = FileHash()
            if pool is not None and chunks:
                fut = pool.submit(fetch, 0)
            for i, (off, n) in enumerate(chunks):
                if fut is not None:
                    got = fut.result()
                    fut = pool.submit(fetch, i + 1) if pool is not None and i + 1 < len(chunks) else None
                else:
                    got = fetch(i)
                if i == 0:
                    ev.first_byte = time.perf_counter()
                if got != n:
                    raise VerifyError(f"{f.key}: short read at offset {off} ({got} of {n} bytes)", f.key)
                if self.verify:
                    fh.update(*self._verify(f, ckpt, i, off, n, bufs[i % len(bufs)]))
            ev.ok = True
            ev.digest = fh.hexdigest() if self.verify else ""
        except StorageError as exc:
            ev.error, ev.error_kind = str(exc), exc.kind
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # no read may still be landing in a buffer we hand back
        ev.end = time.perf_counter()
        return ev

    def _verify(
        self, f: PlannedFile, ckpt: int, i: int, off: int, n: int, buf: memoryview
    ) -> tuple[np.ndarray, int]:
        """Check chunk i of a file: its block stamps, then its body against the pool's digest."""
        c = self.content
        p = c.pick(f.writer, f.index, i)
        slots = word_slots(buf, n)
        words = block_words(c.file_key(ckpt, f.writer, f.index), i * (self.chunk // ALIGN), len(slots))
        if not np.array_equal(slots, words):
            bad = int(np.flatnonzero(slots != words)[0])
            raise VerifyError(
                f"{f.key}: block at offset {off + bad * ALIGN} belongs to another file, checkpoint or rank "
                "(its stamp differs)",
                f.key,
            )
        seen = slots.copy()
        slots[:] = c.orig[p][: len(slots)]
        body = xxhash.xxh3_64_intdigest(buf[:n])
        if body != c.body_digest(p, n):
            a = np.frombuffer(buf, dtype=np.uint8, count=n)
            b = np.frombuffer(c.bufs[p], dtype=np.uint8, count=n)
            diff = np.flatnonzero(a != b)
            # the pool buffer may carry another chunk's stamps; the bytes between them are the truth
            where = next((int(d) for d in diff if int(d) % ALIGN >= 8), int(diff[0]) if len(diff) else 0)
            raise VerifyError(f"{f.key}: content differs at offset {off + where}", f.key)
        return seen, body

    def expected_digest(self, f: PlannedFile, ckpt: int) -> str:
        """The content hash a file of this plan must have (what the writer wrote), without I/O."""
        c, fh = self.content, FileHash()
        fkey = c.file_key(ckpt, f.writer, f.index)
        per_block = self.chunk // ALIGN
        off, i = 0, 0
        while off < f.nbytes:
            n = min(self.chunk, f.nbytes - off)
            nslots = len(range(0, n // 8, WORDS_PER_BLOCK))
            fh.update(
                block_words(fkey, i * per_block, nslots), c.body_digest(c.pick(f.writer, f.index, i), n)
            )
            off += n
            i += 1
        return fh.hexdigest()


# --- cold restores --------------------------------------------------------------------------------


class ColdRestore:
    """Makes the next restore read from storage, not from this host's memory, and says how.

    The backend knows what its medium can do (Backend.cache_control): O_DIRECT needs nothing;
    a buffered file system is made cold by one rank per host dropping the caches (policy
    auto/drop_caches; root only, refused in most containers) or, where that fails, by every rank
    evicting the files it is about to read; then the backend says how much stayed resident. An
    object store's server cache is not ours to control. The kernel's counters of the restore
    phase say whether it worked (metrics.results.cold_check)."""

    def __init__(self, ctx: Context, policy: str):
        self.ctx, self.policy = ctx, policy
        self.control = ctx.backend.cache_control()
        self.leader = ctx.world.host_leader()
        self.hosts = len(set(ctx.world.hosts()))
        self.ranks_on_host = ctx.world.ranks_on_host()
        self.method = "not needed (no restores)"
        self.notes: list[str] = []
        self.resident_pages = 0
        self.pages = 0

    @property
    def claimed(self) -> str | None:
        """The method to record on a restore phase; None when caches were deliberately kept."""
        return None if self.policy == "none" else self.method

    def prepare(self, keys: Sequence[str]) -> None:
        world, b = self.ctx.world, self.ctx.backend
        if self.policy == "none":
            self.method = "none (warm: caches deliberately kept)"
            return
        if self.control.method == "remote":
            self.method = "remote (server cache not controlled)"
            return
        if not self.control.evicts:
            self.method = self.control.method
            return
        dropped = False
        if self.policy in ("auto", "drop_caches"):
            why = b.drop_caches() if self.leader else None
            verdicts = world.allgather(why)
            dropped = all(v is None for v in verdicts)
            if not dropped:
                reason = next(v for v in verdicts if v is not None)
                note = f"drop_caches refused ({reason}); fell back to {self.control.method}"
                if note not in self.notes:
                    self.notes.append(note)
        if dropped:
            self.method = "drop_caches"
        else:
            self.method = self.control.method
            b.evict(keys)
        r, n = b.resident(keys)
        self.resident_pages += r
        self.pages += n
        world.barrier()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.pages:
            out["resident_after_eviction"] = round(self.resident_pages / self.pages, 6)
        if self.notes:
            out["notes"] = self.notes
        return out


# --- running a burst ------------------------------------------------------------------------------


@dataclass
class Burst:
    """One rank's part of one burst (a checkpoint write, its async stall or persist, a restore)."""

    phase: str
    kind: str
    ckpt: int
    t0: float
    events: list[FileEvent] = field(default_factory=list)
    start: float | None = None  # first activity (absolute); stall bursts set it explicitly
    end: float | None = None
    fsync_calls: int = 0
    fsync_s: float = 0.0
    planned: int = 0
    nbytes: int = 0  # stall bursts: bytes copied
    io: str | None = None
    cold: str | None = None  # how a restore was made cold (ColdRestore.claimed)
    kernel: dict[str, Any] | None = None  # PhaseRunner.kernel_stop over the burst

    def result(self) -> PhaseResult:
        res = PhaseResult(name=self.phase, planned_ops=self.planned)
        hist = Histogram()
        starts = [e.start for e in self.events]
        ends = [e.end for e in self.events]
        for e in self.events:
            if e.ok:
                res.ops += 1
                res.bytes += e.nbytes
                hist.record(e.end - e.start)
            else:
                res.errors += 1
                kind = e.error_kind or "error"
                res.error_kinds[kind] = res.error_kinds.get(kind, 0) + 1
                if res.first_error is None:
                    res.first_error = e.error
        if self.kind == "stall":
            res.ops, res.bytes = (1, self.nbytes) if self.end is not None else (0, 0)
            if self.end is not None and self.start is not None:
                hist.record(self.end - self.start)
        first = self.start if self.start is not None else (min(starts) if starts else None)
        last = self.end if self.end is not None else (max(ends) if ends else None)
        res.start = (first - self.t0) if first is not None else 0.0
        res.end = (last - self.t0) if last is not None else 0.0
        res.hist = hist
        res.io, res.cold, res.kernel = self.io, self.cold, self.kernel
        res.extra = {
            "files": len(self.events),
            "fsync_calls": self.fsync_calls,
            "fsync_s": round(self.fsync_s, 6),
        }
        return res

    def record(self) -> dict[str, Any]:
        r = self.result()
        ok = [e for e in self.events if e.ok or e.first_byte]
        first_bytes = [e.first_byte for e in ok if e.first_byte]
        return {
            "phase": self.phase,
            "kind": self.kind,
            "ckpt": self.ckpt,
            "seconds": r.seconds,
            "start": r.start,
            "end": r.end,
            "bytes": r.bytes,
            "files": len(self.events),
            "errors": r.errors,
            "ttfb_s": (min(first_bytes) - self.t0) if first_bytes else None,
            "open_s": sum(max(e.opened - e.start, 0.0) for e in self.events if e.opened),
            "close_s": sum(e.close_s for e in self.events),
            "fsync_s": self.fsync_s,
            "fsync_calls": self.fsync_calls,
        }


def _log_burst(log: Any, what: str, done: str, res: PhaseResult) -> None:
    """Rank 0's line for a burst: a burst with a failed file is never called written (or read)."""
    if not res.errors:
        log.info("%s %s by rank 0 in %.3f s", what, done, res.seconds)
        return
    kinds = ", ".join(f"{kind_text(k)} {n}" for k, n in res.error_kinds.items())
    log.warning(
        "%s FAILED on rank 0: %d of %d file(s) failed (%s); first: %s",
        what,
        res.errors,
        res.errors + res.ops,
        kinds,
        res.first_error,
    )


def _abort(w: Any) -> None:
    try:
        w.abort()
    except Exception:  # the error that made us abort is the one worth reporting
        pass


def _run_files(
    files: Sequence[PlannedFile],
    fn: Callable[[PlannedFile, int], FileEvent],
    threads: int,
    live: Liveness | None = None,
) -> list[FileEvent]:
    """Run fn over files on `threads` threads; thread t takes files t, t+T, ... (fixed, so a
    writer thread only ever touches the pool buffers it owns). Each file's outcome counts towards
    the store's liveness: once it is gone, no further file is started."""
    out: list[list[FileEvent]] = [[] for _ in range(max(threads, 1))]

    def work(t: int, mine: Sequence[PlannedFile]) -> None:
        for f in mine:
            if live is not None and live.gone is not None:
                return
            ev = fn(f, t)
            out[t].append(ev)
            if live is not None:
                _note(live, ev)

    if threads <= 1 or len(files) <= 1:
        work(0, files)
        return out[0]
    run_threads(lambda t: work(t, files[t::threads]), threads)
    return sorted((e for lst in out for e in lst), key=lambda e: e.start)


def _note(live: Liveness, ev: FileEvent) -> None:
    """A file's outcome, told to the store's liveness."""
    if ev.ok:
        live.ok(ev.end)
        return
    err = StorageError(ev.error or f"{ev.kind} {ev.name} failed")
    err.kind = ev.error_kind or StorageError.kind
    live.outcome(err, "checkpoint_burst", ev.end)


class _Persister(threading.Thread):
    """Async mode's background writer: drains snapshot chunks from host slots to storage, in order."""

    def __init__(self, engine: Engine, free: queue.Queue, backend: Backend, runner: PhaseRunner):
        super().__init__(daemon=True, name="checkpoint-persist")
        self.engine, self.free, self.b, self.runner = engine, free, backend, runner
        self.q: queue.Queue = queue.Queue()
        self.bursts: dict[int, Burst] = {}
        self.done: dict[int, threading.Event] = {}

    def run(self) -> None:
        cur: dict[str, Any] = {}
        while True:
            item = self.q.get()
            if item is None:
                return
            if item[0] == "begin":
                _, ckpt, burst = item
                self.bursts[ckpt] = burst
                c0 = self.b.fsync_counters()
                # the whole process's counters: they include the stall's copies, which move no I/O
                cur = {"burst": burst, "c0": c0, "mark": self.runner.kernel_start()}
                continue
            if item[0] == "end":
                _, ckpt = item
                burst = cur["burst"]
                c1 = self.b.fsync_counters()
                burst.fsync_calls, burst.fsync_s = c1[0] - cur["c0"][0], c1[1] - cur["c0"][1]
                burst.kernel = self.runner.kernel_stop(cur["mark"], collective=False)
                self.done[ckpt].set()
                continue
            _, f, ckpt, i, nchunks, slot, n, words, body = item
            burst = cur["burst"]
            try:
                if i == 0:
                    ev = FileEvent("persist", ckpt, f.name, f.nbytes, time.perf_counter())
                    cur["ev"], cur["fh"] = ev, FileHash()
                    try:
                        if self.b.liveness.gone is not None:  # no file is started on a gone store
                            raise Unreachable(f"{f.key}: not persisted, the store is gone", f.key)
                        cur["w"] = self.b.writer(f.key)
                        ev.opened = time.perf_counter()
                    except StorageError as exc:
                        cur["w"] = None
                        ev.error, ev.error_kind = str(exc), exc.kind
                ev, w = cur["ev"], cur["w"]
                if w is not None:
                    closing = False
                    try:
                        w.write(slot[:n])
                        if i == 0:
                            ev.first_byte = time.perf_counter()
                        cur["fh"].update(words, body)
                        if i == nchunks - 1:
                            t = time.perf_counter()
                            closing = True
                            w.close()
                            ev.close_s = time.perf_counter() - t
                            ev.ok, ev.digest = True, cur["fh"].hexdigest()
                    except StorageError as exc:
                        if not closing:
                            _abort(w)
                        cur["w"] = None
                        ev.error, ev.error_kind = str(exc), exc.kind
                if i == nchunks - 1:
                    ev.end = time.perf_counter()
                    burst.events.append(ev)
                    _note(self.b.liveness, ev)
            finally:
                # the backend let go of the slot when its write returned (or raised): the
                # snapshot may refill it now
                self.free.put(slot)


# --- the workload ---------------------------------------------------------------------------------


def build_layout(cfg: Config, ranks: int) -> cl.ModelLayout | cl.BytesLayout:
    if cfg.preset == "custom" and cfg.num_layers <= 0:
        return cl.BytesLayout(cfg.bytes_per_rank, ranks)
    dtypes = cl.Dtypes(cfg.model_dtype_bytes, cfg.optimizer_dtype_bytes)
    if cfg.preset == "custom":
        model = cl.Model(
            cfg.num_layers,
            cfg.hidden_size,
            cfg.ffn_hidden_size,
            cfg.num_attention_heads,
            cfg.num_kv_heads,
            cfg.vocab_size,
        )
        dp = cfg.dp or max(1, ranks // (cfg.tp * cfg.pp))
        return cl.ModelLayout(model, cl.Parallel(cfg.tp, cfg.pp, dp, cfg.zero_stage), dtypes)
    p = cl.PRESETS[cfg.preset]
    return cl.ModelLayout(p.model, p.parallel, dtypes)


class Plan:
    """Which layout rank each process plays, and the files of any rank's checkpoint."""

    def __init__(self, cfg: Config, ctx: Context):
        self.cfg = cfg
        self.layout = build_layout(cfg, ctx.size)
        n = self.layout.ranks
        if cfg.subset_ranks:
            if len(cfg.subset_ranks) != ctx.size:
                raise UsageError(
                    f"workload.subset_ranks lists {len(cfg.subset_ranks)} ranks but the run has {ctx.size}; "
                    "give one layout rank per process"
                )
            bad = [r for r in cfg.subset_ranks if r >= n]
            if bad:
                raise UsageError(f"workload.subset_ranks={bad} is outside the {n}-rank layout (0..{n - 1})")
            self.roles = list(cfg.subset_ranks)
        elif cfg.subset:
            if ctx.size > n:
                raise UsageError(
                    f"{ctx.size} ranks cannot run a subset of the {n}-rank {cfg.preset} layout; use at most {n}"
                )
            self.roles = cl.subset_ranks(n, ctx.size)
        else:
            if ctx.size != n:
                raise UsageError(
                    f"workload.subset=false runs the whole {n}-rank {cfg.preset} layout, but the run has "
                    f"{ctx.size} ranks; start {n} ranks or set workload.subset=true"
                )
            self.roles = list(range(n))
        self.prefix = f"{ctx.run_id}/{cfg.folder}"

    def files(self, layout_rank: int, ckpt: int) -> list[PlannedFile]:
        d = f"{self.prefix}/{cl.checkpoint_dir(1, ckpt + 1)}"
        out = []
        for i, sf in enumerate(self.layout.files(layout_rank, self.cfg.layout, self.cfg.dcp_files_per_rank)):
            out.append(
                PlannedFile(
                    f"{d}/{sf.name}", sf.name, cl.scaled(sf.nbytes, self.cfg.scale), i, layout_rank, sf.kind
                )
            )
        return out

    def metadata_key(self, ckpt: int) -> str:
        return f"{self.prefix}/{cl.checkpoint_dir(1, ckpt + 1)}/.metadata"


def _plan_for(cfg: Config, ranks: int) -> Plan | None:
    """The run's plan, without a run: None when the layout refuses the ranks (run says why)."""
    try:
        return Plan(cfg, cast(Context, SimpleNamespace(size=ranks, run_id="")))
    except UsageError:
        return None


def footprint(cfg: Config, ranks: int) -> tuple[int, str]:
    """Bytes stored at once (the preflight check): a checkpoint of every rank, times the
    checkpoints kept (keep_checkpoints + 1 while the next one is written; all of them otherwise)."""
    plan = _plan_for(cfg, ranks)
    if plan is None:
        return 0, "no layout"
    per = sum(f.nbytes for role in plan.roles for f in plan.files(role, 0))
    kept = cfg.checkpoints
    if cfg.keep_checkpoints and cfg.mode == "sync":
        kept = min(cfg.checkpoints, cfg.keep_checkpoints + 1)
    return (
        per * kept,
        f"{per} bytes a checkpoint at workload.scale={cfg.scale:g} x {kept} kept: workload.checkpoints, "
        "workload.keep_checkpoints",
    )


def memory(cfg: Config, ranks: int) -> tuple[int, str]:
    """Bytes a rank allocates before the clock: the buffer pool, two read buffers per I/O thread,
    and in async mode the host ring (host_buffer_bytes; 0 = the whole shard)."""
    need = cfg.buffer_pool_bytes + 2 * cfg.io_threads * cfg.chunk_size
    what = (
        f"workload.buffer_pool_bytes={cfg.buffer_pool_bytes} + 2 x workload.io_threads={cfg.io_threads} "
        f"x workload.chunk_size={cfg.chunk_size}"
    )
    if cfg.mode == "async":
        plan = _plan_for(cfg, ranks)
        shard = max((sum(f.nbytes for f in plan.files(r, 0)) for r in plan.roles), default=0) if plan else 0
        need += cfg.host_buffer_bytes or shard
        what += f" + workload.host_buffer_bytes={cfg.host_buffer_bytes or shard}" + (
            "" if cfg.host_buffer_bytes else " (0: the whole shard)"
        )
    return need, what


def _rss_now() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil is a declared dependency; this only guards odd platforms
        return 0


def _peak_rss() -> int:
    """This process image's peak RSS. VmHWM, not getrusage's ru_maxrss: on Linux the latter also
    keeps the peak of the process that forked us before exec (a launcher, or pytest), which is
    not ours to count."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class _State:
    """What a rank keeps for rank_metrics: its bursts, its timeline, how restores were made cold."""

    def __init__(self) -> None:
        self.bursts: list[Burst] = []
        self.T0 = 0.0
        self.info: dict[str, Any] = {}
        self.cold: ColdRestore | None = None


def _run_phases(ctx: Context, st: _State) -> list[PhaseResult]:
    cfg: Config = ctx.config
    b = ctx.backend
    baseline = _rss_now()
    plan = Plan(cfg, ctx)
    me = plan.roles[ctx.rank]
    content = Content(ctx.seed, cfg.chunk_size, cfg.buffer_pool_bytes, cfg.io_threads)
    engine = Engine(b, content, cfg.verify)
    cold = ColdRestore(ctx, cfg.cold_restore)
    st.cold = cold
    shift = cfg.restore_rank_shift
    if shift < 0:
        shift = (cold.ranks_on_host if cold.hosts > 1 else 1) if ctx.size > 1 else 0
    src_rank = (ctx.rank + shift) % ctx.size
    src_role = plan.roles[src_rank]
    my_bytes = sum(f.nbytes for f in plan.files(me, 0))
    st.info = {
        "layout_rank": me,
        "restore_from_rank": src_rank,
        "restore_from_layout_rank": src_role,
        "restore_rank_shift": shift,
        "shard_bytes": my_bytes,
        "files_per_checkpoint": len(plan.files(me, 0)),
        "baseline_rss_bytes": baseline,
        "pool_bytes": content.nbytes,
    }
    # two read buffers per I/O thread: one being verified while the next chunk lands in the other
    rbufs = [[aligned_buffer(cfg.chunk_size), aligned_buffer(cfg.chunk_size)] for _ in range(cfg.io_threads)]
    metadata: dict[int, bytes] = {}

    def dcp_metadata(ckpt: int) -> bytes:
        """What rank 0 writes as DCP's .metadata: every file of this run's ranks, size and hash."""
        if ckpt not in metadata:
            doc = {
                "format": "dlio-ext checkpoint_burst (torch DCP layout; JSON, not DCP's pickle)",
                "checkpoint": ckpt,
                "scale": cfg.scale,
                "files": {
                    pf.name: {"bytes": pf.nbytes, "xxh3_chunked": engine.expected_digest(pf, ckpt)}
                    for role in plan.roles
                    for pf in plan.files(role, ckpt)
                },
            }
            metadata[ckpt] = json.dumps(doc, sort_keys=True).encode()
        return metadata[ckpt]

    def write_metadata(ckpt: int, kind: str) -> FileEvent:
        data = dcp_metadata(ckpt)
        ev = FileEvent(kind, ckpt, ".metadata", len(data), time.perf_counter())
        try:
            b.put(plan.metadata_key(ckpt), data)
            ev.opened = ev.first_byte = time.perf_counter()
            ev.ok = True
        except StorageError as exc:
            ev.error, ev.error_kind = str(exc), exc.kind
        ev.end = time.perf_counter()
        return ev

    def read_metadata(ckpt: int, expect: Sequence[PlannedFile]) -> FileEvent:
        key = plan.metadata_key(ckpt)
        ev = FileEvent("restore", ckpt, ".metadata", 0, time.perf_counter())
        try:
            size = b.stat(key).size
            ev.opened = time.perf_counter()
            buf = bytearray(size)
            got = b.get(key, memoryview(buf))
            ev.first_byte = time.perf_counter()
            ev.nbytes = got
            doc = json.loads(bytes(buf[:got]))
            for pf in expect:
                entry = doc.get("files", {}).get(pf.name)
                if entry is None or entry.get("bytes") != pf.nbytes:
                    raise VerifyError(
                        f"{key}: does not describe {pf.name} ({pf.nbytes} bytes) as written", key
                    )
            ev.ok = True
            ev.digest = xxhash.xxh3_64_hexdigest(bytes(buf[:got]))
            ev.__dict__["doc"] = doc
        except (StorageError, ValueError) as exc:
            ev.error = str(exc)
            ev.error_kind = exc.kind if isinstance(exc, StorageError) else "corrupt"
        ev.end = time.perf_counter()
        return ev

    written: list[int] = []
    deleted: list[int] = []
    live = b.liveness

    def ckpt_keys(ckpt: int) -> list[str]:
        """What this rank writes for one checkpoint (rank 0 also DCP's .metadata)."""
        keys = [pf.key for pf in plan.files(me, ckpt)]
        return keys + ([plan.metadata_key(ckpt)] if cfg.layout == "dcp" and ctx.rank == 0 else [])

    def delete_checkpoint(ckpt: int) -> None:
        keys = ckpt_keys(ckpt)
        if live.gone is not None:  # nothing can be deleted: list it rather than wait on it
            b.leftovers.add(keys)
        else:
            for n, key in enumerate(keys):
                try:
                    b.delete(key)
                    live.ok()
                except NotFound:  # never written (its write failed): nothing to delete
                    continue
                except StorageError as exc:
                    b.leftovers.add([key])
                    if live.outcome(exc, "checkpoint cleanup"):  # gone meanwhile: list the rest
                        b.leftovers.add(keys[n + 1 :])
                        break
        deleted.append(ckpt)

    def stop_if_gone(upto: int) -> None:
        """Collective: if any rank found the store gone, every rank lists what it may have left
        (checkpoints 0..upto not deleted) and raises the same StoreGone, keeping the results."""
        reason = ctx.runner.store_gone()
        if reason is None:
            return
        b.leftovers.add(key for k in range(upto + 1) if k not in deleted for key in ckpt_keys(k))
        ctx.runner.keep(results)
        raise StoreGone(reason)

    durable = b.durability().policy
    if ctx.rank == 0 and durable.startswith("none"):
        ctx.log.warning(
            "warning: checkpoint writes are not made durable: %s; set storage.fsync=file, as MLPerf requires",
            durable,
        )
    ctx.world.barrier()
    st.T0 = time.perf_counter()
    results: list[PhaseResult] = []
    n_ck = cfg.checkpoints
    log = ctx.log if ctx.rank == 0 else None

    if cfg.mode == "sync":
        for k in range(n_ck):
            files = plan.files(me, k)
            if cfg.layout == "dcp" and ctx.rank == 0:
                dcp_metadata(k)  # built before the clock starts
            ctx.world.barrier()
            mark = ctx.runner.kernel_start()
            burst = Burst(f"write_{k}", "write", k, time.perf_counter(), planned=len(files), io="write")
            c0 = b.fsync_counters()
            burst.events = _run_files(files, lambda f, _t, k=k: engine.write_file(f, k), cfg.io_threads, live)
            if cfg.layout == "dcp" and ctx.rank == 0:
                burst.events.append(write_metadata(k, "write"))
                burst.planned += 1
            c1 = b.fsync_counters()
            burst.fsync_calls, burst.fsync_s = c1[0] - c0[0], c1[1] - c0[1]
            # and a barrier: training resumes when the slowest rank has finished its shard
            burst.kernel = ctx.runner.kernel_stop(mark)
            st.bursts.append(burst)
            res = burst.result()
            results.append(res)
            written.append(k)
            stop_if_gone(k)
            if log:
                _log_burst(log, f"checkpoint {k + 1}/{n_ck}", "written", res)
            if cfg.keep_checkpoints and len(written) - len(deleted) > cfg.keep_checkpoints:
                delete_checkpoint(written[len(deleted)])
            if k < n_ck - 1 and cfg.compute_seconds > 0:
                time.sleep(cfg.compute_seconds)
    else:
        results.extend(_run_async(ctx, cfg, plan, me, engine, content, st, dcp_metadata, write_metadata, log))
        written.extend(range(n_ck))
        stop_if_gone(n_ck - 1)
        if cfg.keep_checkpoints:
            while len(written) - len(deleted) > cfg.keep_checkpoints:
                delete_checkpoint(written[len(deleted)])

    retained = [k for k in written if k not in deleted]
    for j in range(cfg.restores):
        k = retained[j % len(retained)]
        files = plan.files(src_role, k)
        keys = [f.key for f in files] + ([plan.metadata_key(k)] if cfg.layout == "dcp" else [])
        ctx.world.barrier()  # every write (and persist) is done before caches are dropped
        cold.prepare(keys)
        ctx.world.barrier()
        mark = ctx.runner.kernel_start()
        burst = Burst(
            f"restore_{j}",
            "restore",
            k,
            time.perf_counter(),
            planned=len(files),
            io="read",
            cold=cold.claimed,
        )
        c0 = b.fsync_counters()
        if cfg.layout == "dcp":
            burst.events.append(read_metadata(k, files))
            burst.planned += 1
        burst.events.extend(
            _run_files(files, lambda f, t, k=k: engine.read_file(f, k, rbufs[t]), cfg.io_threads, live)
        )
        c1 = b.fsync_counters()
        burst.fsync_calls, burst.fsync_s = c1[0] - c0[0], c1[1] - c0[1]
        burst.kernel = ctx.runner.kernel_stop(mark)
        if cfg.layout == "dcp" and burst.events and burst.events[0].ok:
            doc = burst.events[0].__dict__.get("doc", {})
            for ev in burst.events[1:]:
                want = doc.get("files", {}).get(ev.name, {}).get("xxh3_chunked")
                if ev.ok and cfg.verify and want and want != ev.digest:
                    ev.ok, ev.error_kind = False, "corrupt"
                    ev.error = f"{ev.name}: content hash {ev.digest} differs from .metadata's {want}"
        st.bursts.append(burst)
        results.append(burst.result())
        if log:
            _log_burst(log, f"restore {j + 1}/{cfg.restores}", "read", results[-1])
        stop_if_gone(max(written, default=-1))

    ctx.world.barrier()
    st.info["peak_rss_bytes"] = _peak_rss()
    st.info["checkpoints_on_storage_at_end"] = len(retained)
    if cfg.cleanup:
        for k in retained:
            delete_checkpoint(k)
        ctx.world.barrier()
        if ctx.rank == 0 and callable(getattr(b, "rmdir", None)) and b.capabilities.get("mkdir") == "native":
            for k in written:
                try:
                    b.rmdir(f"{plan.prefix}/{cl.checkpoint_dir(1, k + 1)}")
                except StorageError:
                    pass
            for d in (plan.prefix, ctx.run_id):
                try:
                    b.rmdir(d)
                except StorageError:
                    pass
    return results


def _run_async(
    ctx: Context,
    cfg: Config,
    plan: Plan,
    me: int,
    engine: Engine,
    content: Content,
    st: _State,
    dcp_metadata: Callable[[int], bytes],
    write_metadata: Callable[[int, str], FileEvent],
    log: Any,
) -> list[PhaseResult]:
    """Snapshot (blocking: host-memory copies into a ring of slots) then persist in the background.

    The ring holds host_buffer_bytes (0: the whole shard, as real async checkpointing needs);
    a smaller ring turns into backpressure: the snapshot waits for the persist to free slots,
    and that wait is part of the stall."""
    chunk = cfg.chunk_size
    shard = max(sum(f.nbytes for f in plan.files(me, 0)), 1)
    nslots = max(
        1, (cfg.host_buffer_bytes or shard) // chunk + (1 if (cfg.host_buffer_bytes or shard) % chunk else 0)
    )
    slots = [aligned_buffer(chunk) for _ in range(nslots)]
    st.info["host_buffer_bytes"] = nslots * chunk
    free: queue.Queue = queue.Queue()
    for s in slots:
        free.put(s)
    per_block = chunk // ALIGN
    pers = _Persister(engine, free, ctx.backend, ctx.runner)
    pers.start()
    stalls: list[Burst] = []
    persists: list[Burst] = []
    for k in range(cfg.checkpoints):
        files = plan.files(me, k)
        if cfg.layout == "dcp" and ctx.rank == 0:
            dcp_metadata(k)
        ctx.world.barrier()
        t0 = time.perf_counter()
        stall = Burst(f"stall_{k}", "stall", k, t0, planned=1, start=t0)
        persist = Burst(f"persist_{k}", "persist", k, t0, planned=len(files), io="write")
        pers.done[k] = threading.Event()
        pers.q.put(("begin", k, persist))
        copied = 0
        for f in files:
            fkey = content.file_key(k, f.writer, f.index)
            nchunks = max(1, math.ceil(f.nbytes / chunk))
            for i in range(nchunks):
                n = min(chunk, f.nbytes - i * chunk)
                p = content.pick(f.writer, f.index, i)
                slot = free.get()  # backpressure: wait for the persist to free a slot
                slot[:n] = content.bufs[p][:n]
                sl = word_slots(slot, n)
                words = block_words(fkey, i * per_block, len(sl))
                sl[:] = words
                content.settle_tail(slot, p, n)
                pers.q.put(("chunk", f, k, i, nchunks, slot, n, words, content.body_digest(p, n)))
                copied += n
        stall.end = time.perf_counter()
        stall.nbytes = copied
        pers.q.put(("end", k))
        stalls.append(stall)
        persists.append(persist)
        st.bursts.extend([stall, persist])
        if log:
            log.info(
                "checkpoint %d/%d: rank 0 stalled %.3f s (persist continues)",
                k + 1,
                cfg.checkpoints,
                stall.end - t0,
            )
        if k < cfg.checkpoints - 1 and cfg.compute_seconds > 0:
            time.sleep(cfg.compute_seconds)
    for k in range(cfg.checkpoints):
        pers.done[k].wait()
    pers.q.put(None)
    pers.join()
    if cfg.layout == "dcp" and ctx.rank == 0:
        for k, persist in enumerate(persists):  # DCP commits .metadata once the data is down
            persist.events.append(write_metadata(k, "persist"))
            persist.planned += 1
    del slots
    out: list[PhaseResult] = []
    for stall, persist in zip(stalls, persists, strict=True):
        out.extend([stall.result(), persist.result()])
    return out


def _rank_metrics(ctx: Context, st: _State) -> dict[str, Any]:
    events = []
    for burst in st.bursts:
        for e in burst.events:
            events.append(
                [
                    e.kind,
                    e.ckpt,
                    e.name,
                    e.nbytes,
                    round(e.start - st.T0, 6),
                    round((e.opened or e.start) - st.T0, 6),
                    round((e.first_byte or e.end) - st.T0, 6),
                    round(e.end - st.T0, 6),
                    round(e.close_s, 6),
                    e.ok,
                    e.digest,
                ]
            )
        if burst.kind == "stall" and burst.start is not None and burst.end is not None:
            events.append(
                ["snapshot", burst.ckpt, "(host copy)", burst.nbytes, round(burst.start - st.T0, 6),
                 round(burst.start - st.T0, 6), round(burst.start - st.T0, 6), round(burst.end - st.T0, 6),
                 0.0, True, ""]
            )  # fmt: skip
    return {
        **st.info,
        "host": socket.gethostname(),
        "bursts": [bu.record() for bu in st.bursts],
        "events": events,
        "cold_restore": st.cold.describe() if st.cold else {},
    }


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


def _summarize(
    ctx: Context, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]
) -> dict[str, Any]:
    cfg: Config = ctx.config
    if not per_rank or not per_rank[0]:
        return {}
    layout = build_layout(cfg, ctx.size)
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

    write_kind = "write" if cfg.mode == "sync" else "persist"
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
        "storage_fsync": getattr(ctx.backend, "fsync_policy", None),
        "storage_direct": getattr(ctx.backend, "direct", None),
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
    if cfg.mode == "async":
        stalls = series("stall")
        out["stall"] = {"per_checkpoint": stalls, "overall": _overall(stalls, records("stall"))}
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
    # goodput: checkpoint cost is what training waits for (the burst, or the async stall)
    stall_src = out["stall"]["overall"] if cfg.mode == "async" else out["write"]["overall"]
    delta = stall_src.get("burst_seconds", {}).get("mean", 0.0) if stall_src else 0.0
    restart = out["restore"]["overall"].get("burst_seconds", {}).get("mean", 0.0) if restores else 0.0
    layout_ranks = layout.ranks
    mtbf_h = cfg.mtbf_hours or cfg.accelerator_mttf_hours / layout_ranks
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
    # the per-rank timeline
    try:
        from dlio_ext.report import timeline

        rows = [
            (m_.get("layout_rank", i), i, ev) for i, m_ in enumerate(per_rank) for ev in m_.get("events", [])
        ]
        csv_path = ctx.run_dir / "timeline.csv"
        timeline.write_csv(csv_path, rows)
        png = ctx.run_dir / "timeline.png"
        timeline.plot(
            png, rows, title=f"checkpoint_burst {cfg.preset} ({cfg.mode}, {cfg.layout}, scale {cfg.scale:g})"
        )
        out["timeline"] = {"csv": csv_path.name, "png": png.name}
    except Exception as exc:  # a plot must never lose a run's numbers
        out["timeline"] = {"error": f"{type(exc).__name__}: {exc}"}
    w, r = out["write"]["overall"], out["restore"]["overall"]
    if w:
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


@register
class CheckpointBurst(Workload):
    """Every rank writes its checkpoint shard at once, then restores one (see the module)."""

    name = "checkpoint_burst"
    Config = Config

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.state = _State()

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return footprint(cfg, ranks)

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return memory(cfg, ranks)

    def run(self) -> list[PhaseResult]:
        return _run_phases(self.ctx, self.state)

    def rank_metrics(self) -> dict[str, Any]:
        return _rank_metrics(self.ctx, self.state)

    def summarize(self, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return _summarize(self.ctx, phases, per_rank)
