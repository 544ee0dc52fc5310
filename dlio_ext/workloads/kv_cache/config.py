"""kv_cache's keys, its models (bytes per token) and the sizes they give: a chunk as the model
makes it and as it is stored, the CPU tier in chunks, the storage tier's bound per rank, and what
the preflight checks (`footprint`, `memory`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import Backend
from dlio_ext.storage.buffers import ALIGN, round_up
from dlio_ext.validate import first_problem, key_prefix, one_of, positive
from dlio_ext.workloads.kv_cache.trace import TraceSpec

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
    # the tier-0 (tier0=...), real bytes (scaled like cpu_tier_bytes), all ranks together, each
    # rank keeping what it placed within its share; 0 = no bound of the run's own: the tier-0 is
    # filled until it refuses a put, then the placing rank evicts its least recently used chunk
    tier0_bytes: int = 0
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
            positive("tier0_bytes", self.tier0_bytes, allow_zero=True),
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


def tier0_bound(cfg: Config, ranks: int, free: int | None, sz: Sizes | None = None) -> TierBound:
    """The tier-0's room as a run uses it: `tier0_bytes` (real bytes, a bound each rank keeps
    within its share, as the storage tier's), else what the tier-0 said it holds at the start
    (all of it: it is the run's; per_rank_bytes None, as nothing but the tier-0 itself bounds it)."""
    sz = sz or sizes_of(cfg)
    if cfg.tier0_bytes:
        chunks = cfg.tier0_bytes // sz.chunk_real
        per = chunks // ranks
        return TierBound(
            chunks, per, per * sz.chunk_stored, f"tier0_bytes={cfg.tier0_bytes}", sz.chunk_stored
        )
    if free is None:
        return TierBound(None, None, None, "the tier-0's own: it reports no size", sz.chunk_stored)
    chunks = free // sz.chunk_stored
    return TierBound(
        chunks,
        chunks // ranks,
        None,
        f"the tier-0's own: {free} bytes at start, filled until it refuses a put",
        sz.chunk_stored,
    )


def check_tier0(cfg: Config, tier0: Backend, ranks: int) -> None:
    """Refuse a tier-0 without room for max_inflight chunks per rank (the storage tier's rule:
    fewer would fill it with writes in flight alone), before anything is written."""
    sz = sizes_of(cfg)
    room = tier0_bound(cfg, ranks, None if cfg.tier0_bytes else tier0.free_bytes(), sz)
    if room.per_rank_chunks is None or room.per_rank_chunks >= cfg.max_inflight:
        return
    if cfg.tier0_bytes:
        fix = f"give at least workload.tier0_bytes={ranks * cfg.max_inflight * sz.chunk_real}"
    else:
        _where, how = tier0.room()
        fix = f"{how.replace('storage.', 'tier0.')} (at least {ranks * cfg.max_inflight * sz.chunk_stored} bytes in all)"
    raise UsageError(
        f"the tier-0 ({tier0.where()}; {room.source}) holds {room.per_rank_chunks} chunk(s) of "
        f"{sz.chunk_stored} bytes per rank, fewer than workload.max_inflight={cfg.max_inflight} in flight: "
        f"{fix}, or lower workload.max_inflight or workload.scale"
    )


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
