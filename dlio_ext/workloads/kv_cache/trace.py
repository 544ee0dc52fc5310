"""Deterministic LLM-serving request traces for the KV-cache workload, and the chunk keys they touch.

A trace is a pure function of its `TraceSpec`, the run seed, the rank and the user: the same seed
gives every rank the same request sequence on every run, whatever the timing.

What a request looks like. Each user holds multi-turn conversations. A conversation starts with a
system prompt, drawn from a pool shared by every user on every rank with Zipf popularity, then,
with some probability, a document (a second shared pool, also Zipf). Every turn appends the
user's message; the answer is appended after the turn, so the next turn's context is the last
one plus answer plus new message: contexts grow until `max_context_tokens` ends the
conversation. Arrivals are closed-loop (the next turn right after the last one completed) or
Poisson at a given rate per rank (spread evenly over users; a turn never starts before its
predecessor has completed, the wait is the request's queueing delay).

Tokens are not generated: a request is a list of `Segment`s, each naming a token sequence by a
64-bit identity. Two equal identities are equal tokens, so a chunk's key is a hash chain over the
(identity, start, end) pieces it covers, seeded with the model's identity, exactly as LMCache
and vLLM chain a hash of the token ids: equal prefixes give equal chunk keys, on any user and any
rank, and a prefix that diverges gives new keys from the first chunk that differs onwards.
Only full chunks have keys; the partial tail of a context is always recomputed (vLLM stores full
blocks only).
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import xxhash

KEY_BYTES = 16  # xxh3-128 digests


def _uid(seed: int, *parts: object) -> int:
    """A 64-bit identity for a token sequence (or a random stream), stable across processes."""
    return xxhash.xxh3_64_intdigest("/".join(map(str, (seed, *parts))).encode())


@dataclass(frozen=True)
class Segment:
    """A run of tokens: `uid` names its content (same uid, same tokens); `kind` is for reports."""

    uid: int
    tokens: int
    kind: str  # system | document | user | answer


@dataclass(frozen=True)
class Request:
    rank: int
    user: int
    index: int  # this user's n-th request
    conversation: int  # this user's n-th conversation
    turn: int  # turn within the conversation, from 0
    arrival_s: float | None  # offset from the start of the run (Poisson); None = closed loop
    segments: tuple[Segment, ...]  # the whole context the server prefills
    answer_tokens: int  # generated, then part of the next turn's context

    @property
    def context_tokens(self) -> int:
        return sum(s.tokens for s in self.segments)


@dataclass(frozen=True)
class TraceSpec:
    users: int = 1
    requests_per_user: int = 4  # 0 = unbounded (a duration ends the run)
    arrival_rate: float = 0.0  # requests/s per rank, Poisson; 0 = closed loop
    system_prompts: int = 8
    system_prompt_tokens: tuple[int, int] = (512, 2048)
    documents: int = 64
    document_tokens: tuple[int, int] = (2048, 16384)
    document_probability: float = 0.5
    zipf_s: float = 1.1
    turns: tuple[int, int] = (1, 8)
    user_tokens: tuple[int, int] = (64, 512)
    answer_tokens: tuple[int, int] = (128, 1024)
    max_context_tokens: int = 32768


class _Zipf:
    """Index i in [0, n) with probability proportional to 1 / (i + 1) ** s."""

    def __init__(self, n: int, s: float):
        self.cum = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))
        self.pop = range(n)

    def __call__(self, rng: random.Random) -> int:
        return rng.choices(self.pop, cum_weights=self.cum)[0]


class Trace:
    """The request streams of every user of every rank; `user_requests` is all a rank needs."""

    def __init__(self, spec: TraceSpec, seed: int):
        self.spec, self.seed = spec, seed
        pools = random.Random(_uid(seed, "pools"))
        lo, hi = spec.system_prompt_tokens
        self.system = [
            Segment(_uid(seed, "system", i), pools.randint(lo, hi), "system")
            for i in range(spec.system_prompts)
        ]
        lo, hi = spec.document_tokens
        self.documents = [
            Segment(_uid(seed, "document", i), pools.randint(lo, hi), "document")
            for i in range(spec.documents)
        ]
        self._pick_system = _Zipf(len(self.system), spec.zipf_s)
        self._pick_document = _Zipf(len(self.documents), spec.zipf_s) if self.documents else None

    def user_requests(self, rank: int, user: int) -> Iterator[Request]:
        s = self.spec
        rng = random.Random(_uid(self.seed, "user", rank, user))
        arrivals = random.Random(_uid(self.seed, "arrivals", rank, user))
        per_user_rate = s.arrival_rate / s.users if s.arrival_rate > 0 else 0.0
        clock = 0.0
        index = 0
        for conversation in itertools.count():
            context: list[Segment] = [self.system[self._pick_system(rng)]] if self.system else []
            if self._pick_document is not None and rng.random() < s.document_probability:
                context.append(self.documents[self._pick_document(rng)])
            tokens = sum(seg.tokens for seg in context)
            for turn in range(rng.randint(*s.turns)):
                msg = Segment(
                    _uid(self.seed, "msg", rank, user, conversation, turn),
                    rng.randint(*s.user_tokens),
                    "user",
                )
                answer = rng.randint(*s.answer_tokens)
                if tokens + msg.tokens > s.max_context_tokens:
                    break
                if s.requests_per_user and index >= s.requests_per_user:
                    return
                arrival = None
                if per_user_rate:
                    clock += arrivals.expovariate(per_user_rate)
                    arrival = clock
                context.append(msg)
                tokens += msg.tokens
                yield Request(rank, user, index, conversation, turn, arrival, tuple(context), answer)
                index += 1
                context.append(
                    Segment(_uid(self.seed, "ans", rank, user, conversation, turn), answer, "answer")
                )
                tokens += answer


def key_root(model_identity: str, chunk_tokens: int) -> bytes:
    """The hash chain's seed: KV of the same tokens under another model or chunking is other data."""
    return xxhash.xxh3_128_digest(f"kv/{model_identity}/{chunk_tokens}".encode())


def chunk_keys(segments: Sequence[Segment], chunk_tokens: int, root: bytes) -> list[bytes]:
    """The 16-byte keys of the full chunks of a context: key_k = xxh3_128(key_{k-1} + pieces_k),
    pieces_k being the (uid, start, end) runs of tokens chunk k covers."""
    keys: list[bytes] = []
    prev = root
    pieces: list[int] = []
    fill = 0
    for seg in segments:
        pos = 0
        while pos < seg.tokens:
            take = min(chunk_tokens - fill, seg.tokens - pos)
            pieces += (seg.uid, pos, pos + take)
            pos += take
            fill += take
            if fill == chunk_tokens:
                prev = xxhash.xxh3_128_digest(prev + struct.pack(f"<{len(pieces)}Q", *pieces))
                keys.append(prev)
                pieces = []
                fill = 0
    return keys
