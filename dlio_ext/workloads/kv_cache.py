"""kv_cache: LLM inference servers offloading and re-reading KV-cache chunks through a shared tier.

Every MPI rank is one inference server with `users` concurrent users (see kv_trace for the
requests they send). For each request the server finds the longest cached prefix of its
context, chunk by chunk, in its CPU-memory tier, then in the shared storage tier; the first
chunk found nowhere ends the prefix. It loads those chunks, simulates the prefill of the rest
(`prefill_compute_s_per_token`, 0 by default) and stores the new full chunks: to the memory tier
and to storage, synchronously (`write_policy=sync`) or through a bounded write-back queue
drained by background writers (`write_back`). All ranks share one storage namespace, so a chunk
one server wrote is a hit for every other server.

Concurrency: one thread per user, blocking I/O. os.preadv/pwrite and obstore release the GIL
while the bytes move, so `max_inflight` transfers per rank are really in flight; the Python
work between two transfers (a few microseconds of bookkeeping) is what serialises, and it is
kept off the timed span. `max_inflight` is also the number of chunk buffers a rank owns: a
transfer takes one (waiting for a free one is queueing, not storage latency). An event loop
would save threads but not time: the transfers would still need threads to leave the GIL.

Measuring: a transfer is timed from just before the backend call to just after it; its latency
and end time go into per-thread sample logs (two array appends), folded in bulk into the
mergeable histograms and the throughput time series. Chunk content is a function of the chunk's
key (a template shared by all ranks plus a 16-byte key header and a 64-bit stamp per 4 KiB
block), so any rank verifies any chunk it reads: stamps first, then an xxh3 of the whole chunk.
Verification runs after the clock stops.
"""

from __future__ import annotations

import contextlib
import math
import queue
import struct
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from dlio_ext.config.schema import first_problem, key_prefix, one_of, positive
from dlio_ext.errors import UsageError
from dlio_ext.metrics.histogram import Histogram
from dlio_ext.storage.base import NotFound, StorageError, StoreGone, VerifyError
from dlio_ext.storage.buffers import ALIGN, aligned_buffer, fill_random, round_up
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.kv_tiers import MemoryTier, StorageTier
from dlio_ext.workloads.kv_trace import Request, Trace, TraceSpec, chunk_keys, key_root
from dlio_ext.workloads.phases import PhaseResult

# --- models ---------------------------------------------------------------------------------------

DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "bf16"
    #: multi-head latent attention: one latent vector per layer and token, no separate K and V
    mla: bool = False
    source: str = ""

    @property
    def dtype_bytes(self) -> int:
        return DTYPES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        return (1 if self.mla else 2) * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def identity(self) -> str:
        return f"{self.name}/{self.layers}x{self.kv_heads}x{self.head_dim}/{self.dtype}/{'mla' if self.mla else 'kv'}"


MODELS = {
    "llama3_8b": Model(
        "llama3_8b", 32, 8, 128, source="Llama-3-8B: 32 layers, 8 KV heads (GQA), head_dim 128"
    ),
    "llama3_70b": Model(
        "llama3_70b", 80, 8, 128, source="Llama-3-70B: 80 layers, 8 KV heads (GQA), head_dim 128"
    ),
    "llama3_405b": Model(
        "llama3_405b", 126, 8, 128, source="Llama-3.1-405B: 126 layers, 8 KV heads (GQA), head_dim 128"
    ),
    "deepseek_v3": Model(
        "deepseek_v3",
        61,
        1,
        512 + 64,
        mla=True,
        source="DeepSeek-V3 MLA: 61 layers x (512 latent + 64 decoupled RoPE), cached once (no K/V pair)",
    ),
}
WRITE_POLICIES = ("sync", "write_back")
PUBLISH = ("auto", "rename", "put")
#: fsync: every chunk durable when its write returns (MLPerf's np.save + fsync), unless the user set
#: storage.fsync; storage: whatever the storage config says
DURABILITY = ("fsync", "storage")
AUTO_BIN_S = 0.1  # timeseries_interval_s=0: count in 0.1 s bins, then merge bins (1-2-5 steps)
AUTO_POINTS = 300  # until the series has at most this many points


# --- configuration --------------------------------------------------------------------------------


def _pair(name: str, v: Sequence[int], low: int = 0) -> str | None:
    if len(v) != 2 or v[0] > v[1] or v[0] < low:
        return f"{name}={list(v)} must be [min, max] with {low} <= min <= max"
    return None


@dataclass
class Config:
    name: str = "kv_cache"
    preset: str = "custom"
    # model: llama3_8b | llama3_70b | llama3_405b | deepseek_v3 | custom (the next five keys)
    model: str = "llama3_8b"
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    dtype: str = "bf16"
    mla: bool = False
    chunk_tokens: int = 256
    # bytes scale: stored chunk = real chunk x scale (rounded up to 4 KiB); the trace is unchanged
    scale: float = 1.0
    # servers and users
    users: int = 4
    requests_per_user: int = 4
    duration_s: float = 0.0
    arrival_rate: float = 0.0
    rank_stagger_s: float = 0.0
    max_inflight: int = 16
    # the trace
    system_prompts: int = 8
    system_prompt_tokens: list[int] = field(default_factory=lambda: [512, 2048])
    documents: int = 64
    document_tokens: list[int] = field(default_factory=lambda: [2048, 16384])
    document_probability: float = 0.5
    zipf_s: float = 1.1
    turns: list[int] = field(default_factory=lambda: [1, 8])
    user_tokens: list[int] = field(default_factory=lambda: [64, 512])
    answer_tokens: list[int] = field(default_factory=lambda: [128, 1024])
    max_context_tokens: int = 32768
    # tiers
    cpu_tier_bytes: int = 0
    # the shared storage tier, real bytes (scaled like cpu_tier_bytes), all ranks together;
    # 0 = auto: half the storage's free space at start (unbounded where it is unknown)
    storage_tier_bytes: int = 0
    write_policy: str = "sync"
    writer_threads: int = 4
    write_queue_chunks: int = 64
    publish: str = "auto"
    # compute and the TTFT estimate
    prefill_compute_s_per_token: float = 0.0
    prefill_tokens_per_s: float = 10000.0
    # cold reads and durable writes (the presets that mirror MLPerf set both)
    cold: bool = False
    durability: str = "storage"
    # measuring
    verify: bool = True
    timeseries_interval_s: float = 0.0  # 0 = auto: 0.1 s bins, merged to at most 300 points
    namespace: str = ""
    cleanup: bool = True

    def validate(self) -> str | None:
        custom = self.model == "custom"
        longest = self.system_prompt_tokens[-1:] + self.document_tokens[-1:] + self.user_tokens[-1:]
        return first_problem(
            one_of("model", self.model, (*MODELS, "custom")),
            one_of("dtype", self.dtype, tuple(DTYPES)),
            positive("layers", self.layers) if custom else None,
            positive("kv_heads", self.kv_heads) if custom else None,
            positive("head_dim", self.head_dim) if custom else None,
            positive("chunk_tokens", self.chunk_tokens),
            f"scale={self.scale} must be > 0 and <= 1" if not 0 < self.scale <= 1 else None,
            positive("users", self.users),
            positive("requests_per_user", self.requests_per_user, allow_zero=True),
            positive("duration_s", self.duration_s, allow_zero=True),
            "requests_per_user=0 needs a duration_s > 0 (the run would not end)"
            if not self.requests_per_user and not self.duration_s
            else None,
            positive("arrival_rate", self.arrival_rate, allow_zero=True),
            positive("rank_stagger_s", self.rank_stagger_s, allow_zero=True),
            positive("max_inflight", self.max_inflight),
            positive("system_prompts", self.system_prompts),
            _pair("system_prompt_tokens", self.system_prompt_tokens, 1),
            positive("documents", self.documents, allow_zero=True),
            _pair("document_tokens", self.document_tokens, 1),
            f"document_probability={self.document_probability} must be within [0, 1]"
            if not 0 <= self.document_probability <= 1
            else None,
            positive("zipf_s", self.zipf_s, allow_zero=True),
            _pair("turns", self.turns, 1),
            _pair("user_tokens", self.user_tokens, 1),
            _pair("answer_tokens", self.answer_tokens, 0),
            f"max_context_tokens={self.max_context_tokens} must hold the longest system prompt, document "
            f"and user message ({sum(longest)} tokens)"
            if self.max_context_tokens < sum(longest)
            else None,
            positive("cpu_tier_bytes", self.cpu_tier_bytes, allow_zero=True),
            positive("storage_tier_bytes", self.storage_tier_bytes, allow_zero=True),
            one_of("write_policy", self.write_policy, WRITE_POLICIES),
            positive("writer_threads", self.writer_threads),
            positive("write_queue_chunks", self.write_queue_chunks),
            one_of("publish", self.publish, PUBLISH),
            one_of("durability", self.durability, DURABILITY),
            positive("prefill_compute_s_per_token", self.prefill_compute_s_per_token, allow_zero=True),
            positive("prefill_tokens_per_s", self.prefill_tokens_per_s),
            positive("timeseries_interval_s", self.timeseries_interval_s, allow_zero=True),
            key_prefix("namespace", self.namespace, allow_empty=True),
        )


def model_of(cfg: Config) -> Model:
    if cfg.model == "custom":
        return Model(
            "custom", cfg.layers, cfg.kv_heads, cfg.head_dim, cfg.dtype, cfg.mla, "workload.* dimensions"
        )
    return MODELS[cfg.model]


@dataclass(frozen=True)
class Sizes:
    bytes_per_token: int
    chunk_real: int  # chunk_tokens x bytes per token
    chunk_stored: int  # x scale, rounded up to 4 KiB (O_DIRECT's unit)
    cpu_chunks: int  # how many chunks the CPU tier holds, the same at any scale
    cpu_stored: int


def sizes_of(cfg: Config, model: Model | None = None) -> Sizes:
    m = model or model_of(cfg)
    real = cfg.chunk_tokens * m.bytes_per_token
    stored = max(ALIGN, round_up(math.ceil(real * cfg.scale)))
    cpu_chunks = cfg.cpu_tier_bytes // real
    return Sizes(m.bytes_per_token, real, stored, cpu_chunks, cpu_chunks * stored)


AUTO_TIER_FRACTION = 0.5  # storage_tier_bytes=0: this share of the free space at start


@dataclass(frozen=True)
class TierBound:
    """The storage tier's bound as a run applies it: the whole tier and one rank's share."""

    chunks: int | None  # the whole tier, in chunks; None = unbounded
    per_rank_chunks: int | None
    per_rank_bytes: int | None  # stored bytes
    source: str
    chunk_stored: int

    @property
    def stored_bytes(self) -> int | None:
        return None if self.chunks is None else self.chunks * self.chunk_stored


def tier_bound(cfg: Config, ranks: int, free: int | None, sz: Sizes | None = None) -> TierBound:
    """`storage_tier_bytes` (real bytes: the same number of chunks at any scale), or half the free
    space at start (stored bytes) when 0, split evenly between the ranks (each evicts its own)."""
    sz = sz or sizes_of(cfg)
    if cfg.storage_tier_bytes:
        chunks = cfg.storage_tier_bytes // sz.chunk_real
        source = f"storage_tier_bytes={cfg.storage_tier_bytes}"
    elif free is not None:
        chunks = int(free * AUTO_TIER_FRACTION) // sz.chunk_stored
        source = f"auto: {AUTO_TIER_FRACTION:.0%} of the {free} bytes free at start"
    else:
        return TierBound(None, None, None, "unbounded: the storage reports no free space", sz.chunk_stored)
    per = chunks // ranks
    return TierBound(chunks, per, per * sz.chunk_stored, source, sz.chunk_stored)


def footprint(cfg: Config, ranks: int) -> tuple[int, str]:
    """The most the run stores at once: the tier's bound, or what its trace can write if less.
    With storage_tier_bytes=0 the tier sizes itself to the free space: nothing to check."""
    if not cfg.storage_tier_bytes:
        return 0, "storage_tier_bytes=0 (auto: half the free space)"
    sz = sizes_of(cfg)
    bound = tier_bound(cfg, ranks, None, sz).stored_bytes or 0
    what = f"workload.storage_tier_bytes={cfg.storage_tier_bytes} at workload.scale={cfg.scale:g}"
    if cfg.duration_s or not cfg.requests_per_user:
        return bound, what
    # every request stores at most its full chunks
    trace = ranks * cfg.users * cfg.requests_per_user * (cfg.max_context_tokens // cfg.chunk_tokens)
    if trace * sz.chunk_stored < bound:
        return trace * sz.chunk_stored, f"{what}; the trace's requests fill less of it"
    return bound, what


def memory(cfg: Config, ranks: int) -> tuple[int, str]:
    """Bytes a rank allocates before its clock starts: its chunk buffers and the template."""
    stored = sizes_of(cfg).chunk_stored
    return (
        (cfg.max_inflight + 1) * stored,
        f"workload.max_inflight={cfg.max_inflight} x {stored}-byte chunks (workload.scale={cfg.scale:g})",
    )


def trace_spec(cfg: Config) -> TraceSpec:
    return TraceSpec(
        users=cfg.users,
        requests_per_user=cfg.requests_per_user,
        arrival_rate=cfg.arrival_rate,
        system_prompts=cfg.system_prompts,
        system_prompt_tokens=(cfg.system_prompt_tokens[0], cfg.system_prompt_tokens[1]),
        documents=cfg.documents,
        document_tokens=(cfg.document_tokens[0], cfg.document_tokens[1]),
        document_probability=cfg.document_probability,
        zipf_s=cfg.zipf_s,
        turns=(cfg.turns[0], cfg.turns[1]),
        user_tokens=(cfg.user_tokens[0], cfg.user_tokens[1]),
        answer_tokens=(cfg.answer_tokens[0], cfg.answer_tokens[1]),
        max_context_tokens=cfg.max_context_tokens,
    )


# --- chunk content --------------------------------------------------------------------------------

_U64 = np.uint64
_WORDS_PER_BLOCK = ALIGN // 8
_KEY = struct.Struct("<QQ")  # a chunk key as two 64-bit words


class ChunkContent:
    """A chunk's bytes as a function of its 16-byte key: one random template (from the run seed,
    the same on every rank), the key in the first 16 bytes, and a 64-bit stamp of (key, block) at
    the start of every further 4 KiB block, so no two chunks share a block (dedup cannot shrink
    them) and a chunk read under the wrong key fails verification."""

    def __init__(self, seed: int, nbytes: int):
        if nbytes % ALIGN:
            raise ValueError("a chunk is a whole number of 4 KiB blocks")
        self.nbytes = nbytes
        self.template = aligned_buffer(nbytes)
        fill_random(self.template, seed * 1_000_003 + 0x4B56)
        blocks = nbytes // ALIGN
        self.slots = np.concatenate(
            [np.array([0, 1], np.int64), np.arange(1, blocks, dtype=np.int64) * _WORDS_PER_BLOCK]
        )
        self._blocks = np.arange(1, blocks, dtype=_U64)
        self._body_slots = self.slots[2:].copy()
        self.template_words = np.frombuffer(self.template, _U64)[self.slots].copy()
        self.template_digest = xxhash.xxh3_64_intdigest(self.template)

    def stamps(self, key: bytes) -> np.ndarray:
        """The words at `slots`: the key, then key_lo + block x (key_hi | 1) (mod 2**64) per block:
        distinct within a chunk and, for random 128-bit keys, across chunks."""
        h1, h2 = _KEY.unpack(key)
        out = np.empty(len(self.slots), _U64)
        out[0], out[1] = h1, h2
        body = out[2:]
        np.multiply(self._blocks, _U64(h2 | 1), out=body)
        body += _U64(h1)
        return out

    def new_buffer(self) -> memoryview:
        buf = aligned_buffer(self.nbytes)
        buf[:] = self.template
        return buf

    def fill(self, key: bytes, buf: memoryview) -> None:
        """Make `buf` (a buffer from `new_buffer`) hold the chunk `key`: only the stamps change."""
        np.frombuffer(buf, _U64)[self.slots] = self.stamps(key)

    def check(self, key: bytes, buf: memoryview, got: int) -> str | None:
        """None if `buf` holds chunk `key`, else what is wrong. Leaves `buf` as the template.

        Runs after every verified read, holding the GIL that the other readers wait for: a few
        whole-array numpy steps and byte compares (np.array_equal alone costs 5 us)."""
        if got != self.nbytes:
            buf[:] = self.template
            return f"read {got} bytes, a chunk has {self.nbytes}"
        words = np.frombuffer(buf, _U64)
        h1, h2 = _KEY.unpack(key)
        body = self._blocks * _U64(h2 | 1)
        body += _U64(h1)
        stamps_ok = buf[:16] == key and words[self._body_slots].tobytes() == body.tobytes()
        words[self.slots] = self.template_words
        body_ok = xxhash.xxh3_64_intdigest(buf) == self.template_digest
        if stamps_ok and body_ok:
            return None
        buf[:] = self.template
        return "its stamps name another chunk" if not stamps_ok else "its bytes differ from what was written"


# --- recording --------------------------------------------------------------------------------------


class SampleLog:
    """One thread's timed operations: `add(end, seconds)` appends both floats to a list (a few
    hundred nanoseconds, no allocation: the floats exist already); every FOLD samples, and at the
    end, they are folded in bulk (numpy) into a Histogram, bucket for bucket what
    Histogram.record would give, and into per-interval counts for the time series."""

    FOLD = 4096
    __slots__ = ("buf", "hist", "counts", "first", "last", "t0", "interval")

    def __init__(self, interval: float = 1.0):
        self.buf: list[float] = []  # end, seconds, end, seconds, ...
        self.hist = Histogram()
        self.counts = np.zeros(0, np.int64)
        self.first = math.inf  # earliest start, absolute
        self.last = -math.inf  # latest end, absolute
        self.t0 = 0.0
        self.interval = interval

    def add(self, end: float, seconds: float) -> None:
        buf = self.buf
        buf.append(end)
        buf.append(seconds)
        if len(buf) >= 2 * self.FOLD:
            self.fold()

    def fold(self) -> None:
        if not self.buf:
            return
        pairs = np.array(self.buf, np.float64).reshape(-1, 2)
        self.buf.clear()
        ends, secs = pairs[:, 0], pairs[:, 1]
        self.hist.record_many(secs)
        self.first = min(self.first, float((ends - secs).min()))
        self.last = max(self.last, float(ends.max()))
        slot = np.maximum((ends - self.t0) // self.interval, 0).astype(np.int64)
        per = np.bincount(slot)
        if len(per) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(per) - len(self.counts), np.int64)])
        self.counts[: len(per)] += per

    @classmethod
    def merged(cls, logs: Sequence[SampleLog], interval: float) -> SampleLog:
        out = cls(interval)
        for log in logs:
            log.fold()
            out.hist.merge(log.hist)
            out.first = min(out.first, log.first)
            out.last = max(out.last, log.last)
            if len(log.counts) > len(out.counts):
                out.counts = np.concatenate(
                    [out.counts, np.zeros(len(log.counts) - len(out.counts), np.int64)]
                )
            out.counts[: len(log.counts)] += log.counts
        return out


LOGS = ("read", "write", "miss", "request", "ttft", "load", "queue")
COUNTERS = (
    "requests",
    "context_tokens",
    "full_chunks",
    "hit_memory",
    "hit_write_queue",
    "hit_storage",
    "recomputed_tokens",
    "reads",
    "read_bytes",
    "writes",
    "write_bytes",
    "lookup_misses",
    "skipped_known",
    "skipped_in_flight",
    "cross_rank_reads",
    "verified",
    "evicted_misses",
)


class Stats:
    """What one thread (a user or a write-back writer) counts; no locks, merged at the end."""

    def __init__(self, interval: float):
        self.c = dict.fromkeys(COUNTERS, 0)
        self.logs = {name: SampleLog(interval) for name in LOGS}
        self.errors: dict[str, dict[str, int]] = {"read": {}, "write": {}}
        self.first_error: dict[str, str] = {}
        self.backpressure_s = 0.0

    def set_t0(self, t0: float) -> None:
        for log in self.logs.values():
            log.t0 = t0

    def error(self, op: str, exc: StorageError) -> None:
        kinds = self.errors[op]
        kinds[exc.kind] = kinds.get(exc.kind, 0) + 1
        self.first_error.setdefault(op, str(exc))


# --- the server -------------------------------------------------------------------------------------


class Server:
    """One rank's inference server: its tiers, its chunk buffers, what it knows is stored."""

    def __init__(self, cfg: Config, rank: int, storage: StorageTier, seed: int, model: Model | None = None):
        self.cfg = cfg
        self.model = model or model_of(cfg)
        self.sizes = sizes_of(cfg, self.model)
        self.chunk_tokens = cfg.chunk_tokens
        self.nbytes = self.sizes.chunk_stored
        self.rank = rank
        self.root = key_root(self.model.identity, cfg.chunk_tokens)
        self.content = ChunkContent(seed, self.nbytes)
        self.buffers: queue.LifoQueue[memoryview] = queue.LifoQueue()
        for _ in range(cfg.max_inflight):
            buf = self.content.new_buffer()
            self.buffers.put(buf)
        self.memory = MemoryTier(self.sizes.cpu_stored) if self.sizes.cpu_chunks else None
        self.storage = storage
        #: whether the store still answers (the backend's, shared with its retry loop)
        self.live = storage.backend.liveness
        self.present: set[str] = set()  # known to be in storage: written or read by this rank
        #: chunks this rank stored, a chunk stored again (evicted, or found missing) counted again
        self.writes_done = 0
        self.mine: set[str] = set()  # written by this rank, not evicted
        self.evicted: set[str] = set()  # written by this rank, then evicted by it
        self.in_flight: set[str] = set()
        self.pending: dict[str, bytes] = {}  # write-back: queued, not yet stored
        self.lock = threading.Lock()
        self.write_queue: queue.Queue[tuple[str, bytes] | None] | None = (
            queue.Queue(cfg.write_queue_chunks) if cfg.write_policy == "write_back" else None
        )
        # cold reads as MLPerf's harness makes them: the chunk's file evicted before each read
        self.cold = cfg.cold

    # reading -----------------------------------------------------------------------------------
    def read_chunk(self, k: str, key: bytes, st: Stats) -> bool | None:
        """One storage read, timed, then verified: True = loaded, None = not there, False = failed."""
        buf = self.buffers.get()
        try:
            perf = time.perf_counter
            # cold: the chunk evicted first, and another reader of it on this host (who would
            # share this read's cache fill) kept out until the read ends; untimed, as the wait
            # for a chunk buffer is
            with self.storage.backend.cold_read(self.storage.path(k)) if self.cold else nullcontext():
                t0 = perf()
                try:
                    got = self.storage.read(k, buf)
                except NotFound:
                    t1 = perf()
                    st.logs["miss"].add(t1, t1 - t0)
                    st.c["lookup_misses"] += 1
                    return None
                except StorageError as exc:
                    st.error("read", exc)
                    self.live.outcome(exc, "kv_cache", perf())
                    return False
                t1 = perf()
                self.live.ok(t1)
            if self.cfg.verify:
                problem = self.content.check(key, buf, got)
                if problem is not None:
                    st.error("read", VerifyError(f"chunk {k}: {problem}", k))
                    return False
                st.c["verified"] += 1
            st.logs["read"].add(t1, t1 - t0)
            st.c["reads"] += 1
            st.c["read_bytes"] += got
            return True
        finally:
            self.buffers.put(buf)

    def _load(self, k: str, key: bytes, st: Stats) -> bool:
        mem = self.memory
        if mem is not None and mem.lookup(k):
            try:
                mem.read(k, None)
                st.c["hit_memory"] += 1
                return True
            except NotFound:  # evicted since the lookup
                pass
        if self.write_queue is not None and k in self.pending:
            st.c["hit_write_queue"] += 1
            return True
        got = self.read_chunk(k, key, st) if self.storage.lookup(k) else None
        if not got:
            if got is None and (k in self.present or k in self.evicted):
                st.c["evicted_misses"] += 1  # stored once, evicted since (by its owner): store again
                self.present.discard(k)
            return False
        st.c["hit_storage"] += 1
        if k not in self.mine:
            st.c["cross_rank_reads"] += 1
        else:
            self.storage.touch(k)
        self.present.add(k)
        if mem is not None:
            mem.write(k, None, self.nbytes)
        return True

    # writing -----------------------------------------------------------------------------------
    def write_chunk(self, k: str, key: bytes, st: Stats) -> bool:
        """Fill a buffer with chunk `key` and store it, timed; bookkeeping whatever happens."""
        buf = self.buffers.get()
        ok = False
        try:
            if self.live.gone is not None:
                return False  # queued before the store was found gone: not worth a request
            self.content.fill(key, buf)
            perf = time.perf_counter
            t0 = 0.0
            failed: StorageError | None = None
            try:
                self._make_room(k)  # untimed: the write's latency is the write's alone
                t0 = perf()
                self.storage.write(k, buf, self.nbytes)
                ok = True
            except StorageError as exc:
                st.error("write", exc)
                failed = exc
            t1 = perf()
            self.live.outcome(failed, "kv_cache", t1)
            if ok:
                st.logs["write"].add(t1, t1 - t0)
                st.c["writes"] += 1
                st.c["write_bytes"] += self.nbytes
        finally:
            self.buffers.put(buf)
            with self.lock:
                self.in_flight.discard(k)
                self.pending.pop(k, None)
                if ok:
                    self.present.add(k)
                    self.mine.add(k)
                    self.writes_done += 1
        return ok

    def _make_room(self, k: str) -> None:
        """Evict this rank's least recently used chunks until `k` fits its share of the tier."""
        evicted = self.storage.make_room(k, self.nbytes)
        if evicted:
            with self.lock:
                for v in evicted:
                    self.mine.discard(v)
                    self.present.discard(v)
                    self.evicted.add(v)

    def _store(self, k: str, key: bytes, st: Stats) -> None:
        with self.lock:
            if k in self.present:
                st.c["skipped_known"] += 1
                return
            if k in self.in_flight:
                st.c["skipped_in_flight"] += 1
                return
            self.in_flight.add(k)
            if self.write_queue is not None:
                self.pending[k] = key
        if self.memory is not None:
            self.memory.write(k, None, self.nbytes)
        if self.write_queue is None:
            self.write_chunk(k, key, st)
            return
        t = time.perf_counter()
        self.write_queue.put((k, key))  # blocks while the queue is full: back-pressure
        st.backpressure_s += time.perf_counter() - t

    def writer(self, st: Stats) -> None:
        assert self.write_queue is not None
        while True:
            item = self.write_queue.get()
            if item is None:
                return
            self.write_chunk(item[0], item[1], st)

    # a request -------------------------------------------------------------------------------------
    def serve(self, req: Request, keys: Sequence[bytes], st: Stats) -> dict[str, float]:
        """Load the longest cached prefix, prefill the rest, store the new chunks."""
        perf = time.perf_counter
        t_start = perf()
        hexes = [key.hex() for key in keys]
        hits = 0
        for k, key in zip(hexes, keys, strict=True):
            if not self._load(k, key, st):
                break
            hits += 1
        t_loaded = perf()
        recompute = req.context_tokens - hits * self.chunk_tokens
        if self.cfg.prefill_compute_s_per_token:
            time.sleep(recompute * self.cfg.prefill_compute_s_per_token)
        for k, key in zip(hexes[hits:], keys[hits:], strict=True):
            self._store(k, key, st)
        t_end = perf()
        load_s = t_loaded - t_start
        ttft = load_s + recompute / self.cfg.prefill_tokens_per_s
        c = st.c
        c["requests"] += 1
        c["context_tokens"] += req.context_tokens
        c["full_chunks"] += len(keys)
        c["recomputed_tokens"] += recompute
        st.logs["request"].add(t_end, t_end - t_start)
        st.logs["ttft"].add(t_end, ttft)
        st.logs["load"].add(t_end, load_s)
        return {"hits": hits, "load_s": load_s, "recomputed_tokens": recompute, "ttft_s": ttft}

    def keys_for(self, req: Request) -> list[bytes]:
        return chunk_keys(req.segments, self.chunk_tokens, self.root)


# --- the run ------------------------------------------------------------------------------------------


class _State:
    """What a rank keeps for rank_metrics."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}
        self.duplicates: dict[str, int] | None = None


def _phase(
    name: str, log: SampleLog, t0: float, ops: int, nbytes: int, errors: dict[str, int], first: str | None
) -> PhaseResult:
    n_err = sum(errors.values())
    res = PhaseResult(
        name=name, ops=ops, bytes=nbytes, errors=n_err, error_kinds=dict(errors), first_error=first
    )
    res.planned_ops = ops + n_err
    res.hist = log.hist
    if log.hist.n:
        res.start = max(log.first - t0, 0.0)
        res.end = max(log.last - t0, res.start)
    return res


def _merge_kinds(dicts: Sequence[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _run_phases(ctx: Context, wl: KVCache) -> list[PhaseResult]:
    cfg: Config = ctx.config
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
    if cfg.durability == "fsync":
        durable = ctx.backend.ask_durable("preset" if cfg.preset != "custom" else "workload")
    else:
        durable = ctx.backend.durability()
    storage = StorageTier(
        ctx.backend, prefix, cfg.publish, tag=f"r{rank}", capacity_bytes=bound.per_rank_bytes
    )
    server = Server(cfg, rank, storage, ctx.seed, model)
    trace = Trace(trace_spec(cfg), ctx.seed)
    interval = cfg.timeseries_interval_s or AUTO_BIN_S
    if rank == 0:
        ctx.log.info(
            "kv_cache %s: %s, %d B/token, chunk %d tokens = %d B real, %d B stored (scale %g); %d rank(s) x %d "
            "user(s), %d chunk buffer(s) per rank (%.1f MiB); CPU tier %d chunk(s); storage tier %s chunk(s) "
            "(%s); writes %s via %s",
            cfg.preset, model.name, sz.bytes_per_token, cfg.chunk_tokens, sz.chunk_real, sz.chunk_stored,
            cfg.scale, size, cfg.users, cfg.max_inflight, cfg.max_inflight * sz.chunk_stored / 2**20,
            sz.cpu_chunks, bound.chunks if bound.chunks is not None else "unbounded", bound.source,
            cfg.write_policy, storage.publish,
        )  # fmt: skip

    user_stats = [Stats(interval) for _ in range(cfg.users)]
    writer_stats = [
        Stats(interval) for _ in range(cfg.writer_threads if server.write_queue is not None else 0)
    ]
    go = threading.Event()
    clock = {"t0": 0.0}
    fatal: list[BaseException] = []
    started = [0] * cfg.users

    def user(u: int) -> None:
        st = user_stats[u]
        try:
            go.wait()
            t0 = clock["t0"]
            begin = t0 + rank * cfg.rank_stagger_s
            deadline = t0 + cfg.duration_s if cfg.duration_s else math.inf
            perf = time.perf_counter
            for req in trace.user_requests(rank, u):
                if server.live.gone is not None:
                    break  # the store is gone: the ranks agree below and the run stops
                keys = server.keys_for(req)
                now = perf()
                arrive = begin + req.arrival_s if req.arrival_s is not None else max(now, begin)
                if arrive >= deadline or now >= deadline:
                    break
                if arrive > now:
                    time.sleep(arrive - now)
                start = perf()
                st.logs["queue"].add(start, max(start - arrive, 0.0))
                started[u] += 1
                server.serve(req, keys, st)
        except BaseException as exc:  # a bug, not a storage error: stop the run loudly
            fatal.append(exc)

    def writer(w: int) -> None:
        try:
            server.writer(writer_stats[w])
        except BaseException as exc:
            fatal.append(exc)

    users = [
        threading.Thread(target=user, args=(u,), name=f"kv-user-{u}", daemon=True) for u in range(cfg.users)
    ]
    writers = [
        threading.Thread(target=writer, args=(w,), name=f"kv-writer-{w}", daemon=True)
        for w in range(len(writer_stats))
    ]
    for th in users + writers:
        th.start()
    ctx.world.barrier()
    mark = ctx.runner.kernel_start()  # one window: reads and writes overlap, the kernel splits them
    t0 = time.perf_counter()
    clock["t0"] = t0
    for st in user_stats + writer_stats:
        st.set_t0(t0)
    go.set()
    for th in users:
        th.join()
    if server.write_queue is not None:
        for _ in writers:
            server.write_queue.put(None)
        for th in writers:
            th.join()
    t_end = time.perf_counter()
    kernel = ctx.runner.kernel_stop(mark)
    if fatal:
        raise fatal[0]
    ctx.world.barrier()
    gone = ctx.runner.store_gone()  # collective: the same verdict on every rank

    # duplicate writes across ranks: rank 0 sees every rank's written keys
    written = sorted(int(k[:16], 16) for k in server.mine | server.evicted)  # evicted or not
    every = ctx.world.gather((written, server.writes_done))
    state = _State()
    if every is not None:
        # a rank may store a chunk twice (it was evicted, or a read found it missing while
        # another rank overwrote it): every store counts, the unique keys once
        total = sum(n for _w, n in every)
        unique = len(set().union(*(set(w) for w, _n in every)))
        state.duplicates = {
            "chunks_written": total,
            "unique_chunks": unique,
            "duplicate_writes": total - unique,
        }

    cleanup = _cleanup(ctx, storage, server) if cfg.cleanup else {"deleted": 0, "failed": 0, "skipped": True}

    all_stats = user_stats + writer_stats
    logs = {name: SampleLog.merged([s.logs[name] for s in all_stats], interval) for name in LOGS}
    counters = {k: sum(s.c[k] for s in all_stats) for k in COUNTERS}
    read_err = _merge_kinds([s.errors["read"] for s in all_stats])
    write_err = _merge_kinds([s.errors["write"] for s in all_stats])
    first_read = next((s.first_error["read"] for s in all_stats if "read" in s.first_error), None)
    first_write = next((s.first_error["write"] for s in all_stats if "write" in s.first_error), None)
    phases = [
        _phase("request", logs["request"], t0, counters["requests"], 0, {}, None),
        _phase("read", logs["read"], t0, counters["reads"], counters["read_bytes"], read_err, first_read),
        _phase(
            "write", logs["write"], t0, counters["writes"], counters["write_bytes"], write_err, first_write
        ),
        _phase("lookup_miss", logs["miss"], t0, counters["lookup_misses"], 0, {}, None),
    ]
    read, write = phases[1], phases[2]
    read.io, write.io = "read", "write"
    read.cold = ctx.backend.cache_control().method if cfg.cold else None
    if kernel is not None:
        write.kernel = kernel
        read.kernel = kernel | {"fsync_calls": 0, "fsync_seconds": 0.0}  # every fsync is a write's
    planned = cfg.users * cfg.requests_per_user if cfg.requests_per_user else None
    first = min(lg.first for lg in logs.values())
    state.metrics = {
        "rank": rank,
        "counters": counters,
        "requests_started": sum(started),
        "requests_planned": planned,
        "span_s": [round(max(first - t0, 0.0) if math.isfinite(first) else 0.0, 6), round(t_end - t0, 6)],
        "backpressure_s": round(sum(s.backpressure_s for s in all_stats), 6),
        "hists": {
            name: logs[name].hist.to_state()
            for name in ("read", "write", "miss", "ttft", "load", "queue", "request")
        },
        "series": {
            "interval_s": interval,
            "read_chunks": logs["read"].counts.tolist(),
            "write_chunks": logs["write"].counts.tolist(),
            "requests": logs["request"].counts.tolist(),
        },
        "publish": storage.publish,
        "durability": {"policy": durable.policy, "source": durable.source},
        "memory_tier": server.memory.stats() if server.memory is not None else None,
        "storage_tier": storage.stats() | {"bound_chunks": bound.chunks, "bound_source": bound.source},
        "chunks_known": len(server.present),
        "cleanup": cleanup,
    }
    wl.state = state
    if gone is not None:
        ctx.runner.keep(phases)
        raise StoreGone(gone)
    return phases


def _cleanup(ctx: Context, storage: StorageTier, server: Server) -> dict[str, Any]:
    """Untimed: every rank deletes what it wrote (a chunk two ranks wrote is deleted once; the
    other delete finds nothing, which is fine); then rank 0 removes the fan-out directories."""
    paths = [storage.path(k) for k in sorted(server.mine)]
    deleted = failed = 0
    if ctx.backend.liveness.gone is not None:
        # a gone store cannot delete anything: say what is left rather than wait on it
        ctx.backend.leftovers.add(paths)
        ctx.world.barrier()
        return {"deleted": 0, "failed": len(paths), "skipped": "the store is gone"}
    try:
        deleted = ctx.backend.delete_many(paths)
    except StorageError:
        deleted = 0
        live = ctx.backend.liveness
        for n, p in enumerate(paths):
            try:
                ctx.backend.delete(p)
                deleted += 1
                live.ok()
            except NotFound:
                pass
            except StorageError as exc:
                failed += 1
                ctx.backend.leftovers.add([p])
                if live.outcome(exc, "kv_cache cleanup"):  # gone meanwhile: list the rest, do not wait
                    rest = paths[n + 1 :]
                    failed += len(rest)
                    ctx.backend.leftovers.add(rest)
                    break
    ctx.world.barrier()
    if ctx.rank == 0 and ctx.backend.capabilities.get("rmdir") == "native":
        # a directory that still holds something (another run's chunks, a failed rename) stays
        with contextlib.suppress(StorageError):
            for d in list(ctx.backend.list(storage.prefix + "/", delimiter="/")):
                if d.endswith("/"):
                    ctx.backend.rmdir(d.rstrip("/"))
            ctx.backend.rmdir(storage.prefix)
            parent = storage.prefix.rpartition("/")[0]
            if parent:
                ctx.backend.rmdir(parent)
    if failed:
        ctx.log.warning("rank %d: %d chunk(s) could not be deleted", ctx.rank, failed)
    return {"deleted": deleted, "failed": failed}


def _rank_metrics(st: _State | None) -> dict[str, Any]:
    if st is None:
        return {}
    out = dict(st.metrics)
    if st.duplicates is not None:
        out["duplicates"] = st.duplicates
    return out


# --- rank 0: the summary ------------------------------------------------------------------------------

PCTS = ("p50", "p95", "p99", "p999")


def _ms(h: Histogram) -> dict[str, float]:
    s = h.summary()
    out = {k: round(s[k] / 1000, 4) for k in PCTS}
    out |= {"mean": round(s["mean"] / 1000, 4), "max": round(s["max"] / 1000, 4), "count": s["count"]}
    return out


def _rate(part: float, whole: float) -> float:
    return round(part / whole, 6) if whole else 0.0


def _summarize(
    ctx: Context, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]
) -> dict[str, Any]:
    cfg: Config = ctx.config
    if not per_rank or not per_rank[0]:
        return {}
    model = model_of(cfg)
    sz = sizes_of(cfg, model)
    c = {k: sum(m["counters"][k] for m in per_rank) for k in COUNTERS}
    hists = {
        name: [Histogram.from_state(m["hists"][name]) for m in per_rank]
        for name in ("read", "write", "miss", "ttft", "load", "queue", "request")
    }
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

    hit_chunks = c["hit_memory"] + c["hit_write_queue"] + c["hit_storage"]
    hit_tokens = hit_chunks * C
    tokens_read = c["hit_storage"] * C
    tokens_written = c["writes"] * C
    read, write = io("read"), io("write")
    dup = next((m["duplicates"] for m in per_rank if m.get("duplicates")), {})
    mem = [m["memory_tier"] for m in per_rank if m.get("memory_tier")]
    tier = [m["storage_tier"] for m in per_rank]
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
            "hit_storage": tokens_read,
            "recomputed": c["recomputed_tokens"],
        },
        "hit_rate": {
            "tokens": {
                "memory": _rate(c["hit_memory"] * C, c["context_tokens"]),
                "write_queue": _rate(c["hit_write_queue"] * C, c["context_tokens"]),
                "storage": _rate(tokens_read, c["context_tokens"]),
                "total": _rate(hit_tokens, c["context_tokens"]),
            },
            "chunks": {
                "memory": _rate(c["hit_memory"], c["full_chunks"]),
                "write_queue": _rate(c["hit_write_queue"], c["full_chunks"]),
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
            "chunks_verified": c["verified"],
            "corrupt": phases.get("read", {}).get("error_kinds", {}).get("corrupt", 0),
            "scheme": "a random template shared by all ranks; bytes 0-15 = the chunk key; a 64-bit "
            "stamp of (key, block) opening every further 4 KiB block; xxh3-64 over the whole chunk",
        },
        "per_rank": [
            {
                "rank": m["rank"],
                "requests": m["counters"]["requests"],
                "hit_rate_tokens": _rate(
                    (
                        m["counters"]["hit_memory"]
                        + m["counters"]["hit_write_queue"]
                        + m["counters"]["hit_storage"]
                    )
                    * C,
                    m["counters"]["context_tokens"],
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
        ],
    }
    out["timeseries"] = _timeseries(ctx, per_rank, sz.chunk_stored, C)
    ctx.log.info(
        "kv_cache: %d requests (%.1f/s), token hit rate %.3f (memory %.3f, storage %.3f); read %.3f GB/s p95 %.2f ms "
        "(max rank %.2f); write %.3f GB/s p95 %.2f ms; TTFT p50 %.1f ms p99 %.1f ms",
        c["requests"], out["requests"]["per_s"], out["hit_rate"]["tokens"]["total"],
        out["hit_rate"]["tokens"]["memory"], out["hit_rate"]["tokens"]["storage"], read["GBps"],
        read["latency_ms"]["p95"], read["max_rank_p95_ms"], write["GBps"], write["latency_ms"]["p95"],
        out["ttft_ms"]["p50"], out["ttft_ms"]["p99"],
    )  # fmt: skip
    return {"kv_cache": out}


def _timeseries(
    ctx: Context, per_rank: list[dict[str, Any]], chunk_bytes: int, chunk_tokens: int
) -> dict[str, Any]:
    interval = per_rank[0]["series"]["interval_s"]
    cfg: Config = ctx.config

    def total(name: str) -> np.ndarray:
        n = max((len(m["series"][name]) for m in per_rank), default=0)
        acc = np.zeros(n, np.int64)
        for m in per_rank:
            s = m["series"][name]
            acc[: len(s)] += np.asarray(s, np.int64)
        return acc

    reads, writes, reqs = total("read_chunks"), total("write_chunks"), total("requests")
    n = max(len(reads), len(writes), len(reqs))
    pad = [np.pad(a, (0, n - len(a))) for a in (reads, writes, reqs)]
    reads, writes, reqs = pad
    if not cfg.timeseries_interval_s and n > AUTO_POINTS:  # auto: merge bins, 1-2-5 steps
        factor = next(f for f in (m * 10**e for e in range(9) for m in (1, 2, 5)) if n / f <= AUTO_POINTS)
        n = -(-n // factor) * factor
        reads, writes, reqs = (np.pad(a, (0, n - len(a))).reshape(-1, factor).sum(axis=1) for a in pad)
        interval *= factor
    cols = {
        "read_GBps": (reads * chunk_bytes / interval / 1e9).tolist(),
        "write_GBps": (writes * chunk_bytes / interval / 1e9).tolist(),
        "requests_per_s": (reqs / interval).tolist(),
        "storage_read_tokens_per_s": (reads * chunk_tokens / interval).tolist(),
        "storage_write_tokens_per_s": (writes * chunk_tokens / interval).tolist(),
    }
    try:
        from dlio_ext.report import timeseries

        csv_path = ctx.run_dir / "timeseries.csv"
        png_path = ctx.run_dir / "timeseries.png"
        timeseries.write_csv(csv_path, interval, cols)
        timeseries.plot(
            png_path,
            interval,
            [
                ("GB/s", {"read": cols["read_GBps"], "write": cols["write_GBps"]}),
                ("requests/s", {"requests": cols["requests_per_s"]}),
            ],
            title=f"kv_cache {cfg.preset} ({model_of(cfg).name}, {ctx.size} rank(s) x {cfg.users} users, scale {cfg.scale:g})",
        )
        return {"interval_s": interval, "csv": csv_path.name, "png": png_path.name}
    except Exception as exc:  # a plot must never lose a run's numbers
        return {"interval_s": interval, "error": f"{type(exc).__name__}: {exc}"}


__all__ = [
    "MODELS",
    "ChunkContent",
    "Config",
    "Model",
    "SampleLog",
    "Server",
    "Stats",
    "model_of",
    "KVCache",
    "sizes_of",
]


@register
class KVCache(Workload):
    """LLM inference KV-cache offload: a server per rank, a trace of users, tiers (see the module)."""

    name = "kv_cache"
    Config = Config

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.state: _State | None = None

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return footprint(cfg, ranks)

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return memory(cfg, ranks)

    def run(self) -> list[PhaseResult]:
        return _run_phases(self.ctx, self)

    def rank_metrics(self) -> dict[str, Any]:
        return _rank_metrics(self.state)

    def summarize(self, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return _summarize(self.ctx, phases, per_rank)
