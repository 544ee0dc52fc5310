"""kv_cache: model math, prefix keying, the LRU tier, an exactly hand-computed trace, chunk
verification, and real runs through the CLI under the real mpirun (2 and 4 ranks, posix and
SeaweedFS)."""

from __future__ import annotations

import csv
import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import KV_SMALL, run_cli

from dlio_ext.errors import UsageError
from dlio_ext.metrics.histogram import Histogram
from dlio_ext.report import figures
from dlio_ext.run.harness import load_config as load
from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage.base import NotFound, StoreGone, Unreachable, VerifyError
from dlio_ext.storage.buffers import ALIGN
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads import kv_cache as kv
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.kv_cache import KVCache
from dlio_ext.workloads.kv_cache.tiers import MemoryTier, StorageTier
from dlio_ext.workloads.kv_cache.trace import Request, Segment, Trace, TraceSpec, chunk_keys, key_root
from dlio_ext.workloads.phases import OpKind, OpRecord, PhaseRunner, _still_due, run_open_loop
from dlio_ext.world import SoloWorld

MiB = 1 << 20

# --- model math -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "per_token"),
    [("llama3_8b", 131_072), ("llama3_70b", 327_680), ("llama3_405b", 516_096), ("deepseek_v3", 70_272)],
)
def test_bytes_per_token(model, per_token):
    cfg = kv.Config(model=model)
    assert kv.model_of(cfg).bytes_per_token == per_token
    s = kv.sizes_of(cfg)
    assert s.chunk_real == 256 * per_token and s.chunk_stored == s.chunk_real  # all are 4 KiB multiples


def test_custom_model_and_scale():
    cfg = kv.Config(model="custom", layers=40, kv_heads=8, head_dim=128, dtype="fp8")
    assert kv.model_of(cfg).bytes_per_token == 2 * 40 * 8 * 128 * 1
    mla = kv.Config(model="custom", layers=61, kv_heads=1, head_dim=576, mla=True)
    assert kv.model_of(mla).bytes_per_token == 70_272 == kv.MODELS["deepseek_v3"].bytes_per_token
    assert kv.sizes_of(kv.Config(model="llama3_8b")).chunk_real == 32 * MiB
    # scale shrinks bytes (to a 4 KiB multiple), not the CPU tier's chunk count
    small = kv.sizes_of(kv.Config(model="llama3_8b", scale=1 / 256, cpu_tier_bytes=4 << 30))
    assert small.chunk_stored == 128 << 10 and small.cpu_chunks == 128 and small.cpu_stored == 16 * MiB
    odd = kv.sizes_of(kv.Config(model="deepseek_v3", scale=1 / 128))
    assert odd.chunk_stored == 143_360 and odd.chunk_stored % ALIGN == 0


def test_bad_config_values():
    assert "model=" in kv.Config(model="llama4").validate()
    assert "layers" in kv.Config(model="custom").validate()
    assert "scale" in kv.Config(scale=2).validate()
    assert "duration_s" in kv.Config(requests_per_user=0).validate()
    assert "write_policy" in kv.Config(write_policy="later").validate()
    assert "max_context_tokens" in kv.Config(max_context_tokens=100).validate()
    assert kv.Config().validate() is None


@pytest.mark.parametrize(
    ("preset", "model", "users", "cpu_bytes"),
    [
        ("llama3_8b_200u", "llama3_8b", 200, 0),
        ("llama3_8b_100u_cpu4g", "llama3_8b", 100, 4 << 30),
        ("llama3_70b_70u", "llama3_70b", 70, 0),
        ("deepseek_v3", "deepseek_v3", 100, 0),
        ("custom", "custom", 4, 0),
    ],
)
def test_presets_mirror_mlperf_and_validate(preset, model, users, cpu_bytes):
    cfg = load([f"workload=kv_cache/{preset}"]).workload
    assert isinstance(cfg, kv.Config)
    assert (cfg.preset, cfg.model, cfg.users, cfg.cpu_tier_bytes) == (preset, model, users, cpu_bytes)
    assert cfg.scale < 1  # laptop default; workload.scale=1 gives real sizes
    assert load([f"workload=kv_cache/{preset}", "workload.scale=1"]).workload.scale == 1.0


def test_unknown_key_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="workload.model="):
        load(["workload=kv_cache/custom", "workload.model=llama4"])
    d = run_cli("run", "workload=kv_cache/custom", "workload.usres=3", f"run.results_dir={tmp_path}")
    assert d.code == 2 and len(d.err.strip().splitlines()) == 1 and "usres" in d.err


# --- the trace and its keys ----------------------------------------------------------------------

SPEC = TraceSpec(users=4, requests_per_user=6, system_prompts=3, documents=5, document_probability=0.5)


def _requests(spec: TraceSpec, seed: int, ranks: int = 2) -> list[Request]:
    t = Trace(spec, seed)
    return [r for rank in range(ranks) for u in range(spec.users) for r in t.user_requests(rank, u)]


def test_same_seed_same_requests():
    a, b = _requests(SPEC, 7), _requests(SPEC, 7)
    assert a == b and len(a) == 2 * 4 * 6
    assert _requests(SPEC, 8) != a
    root = key_root("m", 256)
    assert [chunk_keys(r.segments, 256, root) for r in a] == [chunk_keys(r.segments, 256, root) for r in b]
    # contexts grow turn by turn within a conversation; closed loop has no arrival times
    for prev, cur in zip(a, a[1:], strict=False):
        if (cur.rank, cur.user, cur.conversation) == (prev.rank, prev.user, prev.conversation):
            assert cur.turn == prev.turn + 1 and cur.segments[: len(prev.segments)] == prev.segments
            assert cur.context_tokens > prev.context_tokens + prev.answer_tokens
    assert all(r.arrival_s is None for r in a)
    poisson = TraceSpec(users=4, requests_per_user=50, arrival_rate=20.0)
    p1 = _requests(poisson, 3, ranks=1)
    assert p1 == _requests(poisson, 3, ranks=1)
    for u in range(4):
        times = [r.arrival_s for r in p1 if r.user == u]
        assert all(t is not None for t in times) and times == sorted(times)
        # 50 arrivals of a 5/s process: about 10 s
        assert 5 < times[-1] < 20


def test_zipf_popularity_is_skewed_and_shared():
    spec = TraceSpec(users=50, requests_per_user=1, system_prompts=8, documents=0)
    reqs = _requests(spec, 1, ranks=4)
    counts = [0] * 8
    t = Trace(spec, 1)
    for r in reqs:
        counts[[s.uid for s in t.system].index(r.segments[0].uid)] += 1
    assert counts[0] == max(counts) and counts[0] > 3 * counts[7]
    # the most popular prompt is used on every rank
    assert {r.rank for r in reqs if r.segments[0].uid == t.system[0].uid} == {0, 1, 2, 3}


def test_prefix_keys_shared_across_users_and_ranks():
    root = key_root("llama3_8b", 4)
    system, doc = Segment(11, 9, "system"), Segment(22, 8, "document")
    a = [system, doc, Segment(101, 6, "user")]  # rank 0, user 0
    b = [system, doc, Segment(202, 6, "user")]  # rank 1, user 3: same prefix, own message
    ka, kb = chunk_keys(a, 4, root), chunk_keys(b, 4, root)
    assert len(ka) == len(kb) == 5  # 23 tokens: 5 full chunks, a 3-token tail
    assert ka[:4] == kb[:4]  # chunks 0-3 hold only system + document tokens
    assert ka[4] != kb[4]  # chunk 4 holds the last document token and the first user tokens
    # the same tokens after another prefix are another chunk (a chain, not a bag of chunks)
    assert chunk_keys([doc], 4, root)[0] not in ka
    # another model's KV of the same tokens is other data
    assert chunk_keys(a, 4, key_root("llama3_70b", 4)) != ka
    # through the trace: the same system prompt gives the same leading keys on different ranks
    spec = TraceSpec(
        users=6,
        requests_per_user=1,
        system_prompts=1,
        system_prompt_tokens=(600, 600),
        documents=0,
        user_tokens=(200, 300),
    )
    reqs = _requests(spec, 5, ranks=2)
    keys = [chunk_keys(r.segments, 256, root) for r in reqs]
    assert len({k[0] for k in keys}) == 1 and len({k[1] for k in keys}) == 1  # 512 shared tokens
    assert len({k[2] for k in keys}) == len(keys)  # chunk 2 mixes in each user's message


# --- tiers ---------------------------------------------------------------------------------------


def test_memory_tier_lru_respects_capacity():
    t = MemoryTier(300)
    for k in "abc":
        assert t.write(k, None, 100) == []
    t.read("a")
    assert t.write("d", None, 100) == ["b"]  # a was refreshed: b is the least recently used
    assert t.keys() == ["c", "a", "d"] and t.used == 300
    assert t.write("big", None, 250) == ["c", "a", "d"]  # evicts until it fits
    assert t.used == 250 <= t.capacity
    assert t.write("huge", None, 301) == [] and not t.lookup("huge")  # larger than the tier: not kept
    with pytest.raises(NotFound):
        t.read("a")
    rng = random.Random(1)
    for _ in range(2000):
        t.write(f"k{rng.randrange(50)}", None, rng.randrange(1, 120))
        assert t.used <= t.capacity
    s = t.stats()
    assert s["peak_bytes"] <= 300 and s["evictions"] > 0 and s["used_bytes"] == t.used


TINY = dict(model="custom", layers=1, kv_heads=1, head_dim=8, dtype="fp16", chunk_tokens=4, max_inflight=2)


def _server(root: Path, rank: int = 0, **over) -> kv.Server:
    cfg = kv.Config(**(TINY | over))
    assert cfg.validate() is None
    storage = StorageTier(PosixBackend(str(root)), "run/kvcache", tag=f"r{rank}")
    return kv.Server(cfg, rank, storage, seed=42)


def _req(user: int, *segments: Segment) -> Request:
    return Request(0, user, 0, 0, 0, None, tuple(segments), 0)


def test_hand_computed_trace_hit_rates_are_exact(tmp_path):
    # 32 B/token x 4 tokens = 128 B chunks (stored in 4 KiB); CPU tier: 384 B = 3 chunks
    srv = _server(tmp_path, cpu_tier_bytes=3 * 128)
    assert srv.sizes.cpu_chunks == 3 and srv.storage.publish == "rename"
    st = kv.Stats(1.0)
    S, U1, A1, U1b, U2 = (Segment(1, 8, "system"), Segment(2, 5, "user"), Segment(3, 3, "answer"),
                          Segment(4, 4, "user"), Segment(5, 6, "user"))  # fmt: skip
    r1, r2, r3 = _req(0, S, U1), _req(1, S, U2), _req(0, S, U1, A1, U1b)
    k1, k2, k3 = srv.keys_for(r1), srv.keys_for(r2), srv.keys_for(r3)
    assert (len(k1), len(k2), len(k3)) == (3, 3, 5) and k1[:2] == k2[:2] == k3[:2] and k3[2] == k1[2]
    # r1: nothing cached; 13 tokens recomputed; writes c0 c1 c2a; memory [c0 c1 c2a]
    assert srv.serve(r1, k1, st)["hits"] == 0
    # r2: c0 c1 from memory, c2b missing; memory [c0 c1 c2b] (c2a evicted)
    assert srv.serve(r2, k2, st)["hits"] == 2
    # r3: c0 c1 from memory, c2a from storage (promoted), c3 missing; then c3 c4 written
    out = srv.serve(r3, k3, st)
    assert out["hits"] == 3 and out["recomputed_tokens"] == 8
    c = st.c
    assert (c["requests"], c["context_tokens"], c["full_chunks"]) == (3, 47, 11)
    assert (c["hit_memory"], c["hit_storage"], c["hit_write_queue"]) == (4, 1, 0)
    assert c["recomputed_tokens"] == 47 - 5 * 4 == 27
    assert (c["reads"], c["lookup_misses"], c["writes"], c["verified"]) == (1, 3, 6, 1)
    assert (c["skipped_known"], c["skipped_in_flight"], c["cross_rank_reads"]) == (0, 0, 0)
    assert c["read_bytes"] == 4096 and c["write_bytes"] == 6 * 4096
    assert srv.memory is not None and srv.memory.keys() == [k3[2].hex(), k3[3].hex(), k3[4].hex()]
    assert srv.memory.stats()["evictions"] == 4
    # token hit rate 20/47, chunk hit rate 5/11: what summarize reports from these counters
    assert (c["hit_memory"] + c["hit_storage"]) * 4 / c["context_tokens"] == pytest.approx(20 / 47)
    files = sorted(p.name for p in (tmp_path / "run" / "kvcache").rglob("*") if p.is_file())
    assert files == sorted({k.hex() for k in k1 + k2 + k3}) and len(files) == 6  # no temporaries left


def test_chunk_written_on_rank0_is_read_and_verified_on_rank1(tmp_path):
    r0, r1 = _server(tmp_path, rank=0), _server(tmp_path, rank=1)
    s0, s1 = kv.Stats(1.0), kv.Stats(1.0)
    req = _req(0, Segment(1, 12, "system"), Segment(9, 3, "user"))
    keys = r0.keys_for(req)
    assert keys == r1.keys_for(req) and len(keys) == 3
    r0.serve(req, keys, s0)
    assert s0.c["writes"] == 3 and s0.c["hit_storage"] == 0
    out = r1.serve(req, keys, s1)
    assert out["hits"] == 3 and s1.c["hit_storage"] == 3 and s1.c["cross_rank_reads"] == 3
    assert s1.c["verified"] == 3 and s1.c["writes"] == 0 and s1.errors == {"read": {}, "write": {}}
    # rank 1 now knows them: it does not write them again
    r1.serve(req, keys, s1)
    assert s1.c["writes"] == 0 and s1.c["hit_storage"] == 6


def test_verification_catches_corrupt_and_misplaced_chunks(tmp_path):
    w = _server(tmp_path, rank=0, model="llama3_8b", scale=1 / 16)  # 4 tokens x 128 KiB / 16
    r = _server(tmp_path, rank=1, model="llama3_8b", scale=1 / 16)
    assert w.nbytes == 32 << 10
    req = _req(0, Segment(1, 12, "system"))
    keys = w.keys_for(req)
    w.serve(req, keys, kv.Stats(1.0))
    paths = [tmp_path / w.storage.path(k.hex()) for k in keys]
    raw = bytearray(paths[1].read_bytes())
    raw[20_000] ^= 0x01  # one bit in the body of chunk 1
    paths[1].write_bytes(raw)
    paths[2].write_bytes(paths[0].read_bytes())  # chunk 0's bytes under chunk 2's name
    st = kv.Stats(1.0)
    for i, k in enumerate(keys):
        ok = r.read_chunk(k.hex(), k, st)
        assert ok is (i == 0)
    assert st.errors["read"] == {"corrupt": 2} and "differ" in st.first_error["read"]
    assert st.c["verified"] == 1
    # the pool's buffers are back to the template after a failed check
    for _ in range(r.cfg.max_inflight):
        buf = r.buffers.get()
        assert bytes(buf) == bytes(r.content.template)


def test_a_shared_namespace_at_another_scale_is_other_chunks_not_corrupt_ones(tmp_path):
    """A namespace kept from a run at another scale holds chunks of another size under the same
    tokens: a reader sees other data (misses), not corrupt chunks of its own."""
    w = _server(tmp_path, rank=0, model="llama3_8b", scale=1 / 32)
    r = _server(tmp_path, rank=1, model="llama3_8b", scale=1 / 16)
    assert (w.nbytes, r.nbytes) == (16 << 10, 32 << 10)
    req = _req(0, Segment(1, 12, "system"))
    w.serve(req, w.keys_for(req), kv.Stats(1.0))
    st = kv.Stats(1.0)
    assert r.serve(req, r.keys_for(req), st)["hits"] == 0
    assert st.errors == {"read": {}, "write": {}} and st.c["writes"] == 3
    # at the writer's scale the same tokens are the same chunks
    again = kv.Stats(1.0)
    assert (
        _server(tmp_path, rank=2, model="llama3_8b", scale=1 / 32).serve(req, w.keys_for(req), again)["hits"]
        == 3
    )
    assert again.c["verified"] == 3


def test_chunk_content_differs_in_every_block(tmp_path):
    c = kv.ChunkContent(3, 64 << 10, PosixBackend(str(tmp_path)).alloc)
    a, b = c.new_buffer(), c.new_buffer()
    ka, kb = b"A" * 16, b"B" * 16
    c.fill(ka, a)
    c.fill(kb, b)
    blocks = lambda buf: [bytes(buf[i : i + ALIGN]) for i in range(0, len(buf), ALIGN)]  # noqa: E731
    assert not set(blocks(a)) & set(blocks(b)) and len(set(blocks(a))) == 16
    assert bytes(a[:8]) == ka[:8]  # block 0 opens with the key's first word (block b: b x GOLDEN xor it)
    c.check(ka, a, len(a), "a")
    c.check(kb, b, len(b), "b")
    assert bytes(a) == bytes(b) == bytes(c.template)  # a check leaves the template behind
    c.fill(ka, a)
    with pytest.raises(
        VerifyError, match=r"^a: block at offset 0 belongs to another chunk \(its stamp differs\)"
    ):
        c.check(kb, a, len(a), "a")
    c.fill(ka, a)
    with pytest.raises(VerifyError, match="read 100 bytes"):
        c.check(ka, a, 100, "a")
    assert bytes(a) == bytes(c.template)
    c.fill(ka, a)
    a[5000] ^= 1  # one bit of block 1's body
    with pytest.raises(VerifyError, match="^a: content differs at offset 5000$"):
        c.check(ka, a, len(a), "a")
    assert bytes(a) == bytes(c.template)


def test_sample_log_folds_exactly_like_histogram_record():
    rng = np.random.default_rng(0)
    secs = np.concatenate([rng.lognormal(-8, 2, 20_000), [0.0, 1e-7, 1e-6, 2.5e-6, 1.0, 3600.0]])
    log, ref = kv.SampleLog(interval=0.5), Histogram()
    old = kv.SampleLog.FOLD
    kv.SampleLog.FOLD = 4096  # several folds on the way
    try:
        for i, s in enumerate(secs.tolist()):
            log.add(10.0 + i * 1e-4 + s, s)
            ref.record(s)
        log.fold()
    finally:
        kv.SampleLog.FOLD = old
    assert log.hist.counts == ref.counts and log.hist.n == ref.n
    assert log.hist.min_us == ref.min_us and log.hist.max_us == ref.max_us
    assert log.hist.total_us == pytest.approx(ref.total_us, rel=1e-9)
    assert log.counts.sum() == len(secs)


def test_timeseries_auto_interval_merges_bins(tmp_path):
    # 1000 bins of 0.1 s (100 s) from two ranks: merged 5 to 1, 200 points of 0.5 s
    per_rank = [
        {"series": {"interval_s": 0.1, "read_chunks": [2] * 1000, "write_chunks": [1] * 990, "requests": [1]}}
        for _ in range(2)
    ]
    out = kv.timeseries(tmp_path, per_rank, chunk_bytes=10**6, chunk_tokens=256, auto=True)
    assert out == {"interval_s": 0.5, "csv": "timeseries.csv"}
    assert not (tmp_path / "timeseries.png").exists()  # the workload writes data; report/ draws
    # the figure, drawn by report.figures from the CSV and the summary that names it
    section = {
        "preset": "custom",
        "model": {"name": "llama3_8b"},
        "servers": {"users_per_rank": 4},
        "chunk": {"scale": 1.0},
        "timeseries": out,
    }
    summary = {"workload": "kv_cache", "ranks": 2, "kv_cache": section}
    assert figures(tmp_path, summary) == {"timeseries": "timeseries.png"}
    rows = _series(tmp_path)
    assert len(rows) == 200 and float(rows[1]["t_start_s"]) == 0.5
    # 2 ranks x 2 chunks x 5 bins of 1 MB in 0.5 s = 0.04 GB/s; requests: 2 in the first 0.5 s
    assert float(rows[0]["read_GBps"]) == pytest.approx(0.04) and float(rows[0]["requests_per_s"]) == 4.0
    assert float(rows[-1]["write_GBps"]) == 0.0 and float(rows[-3]["write_GBps"]) == pytest.approx(0.02)
    assert float(rows[0]["storage_read_tokens_per_s"]) == 2 * 2 * 5 * 256 / 0.5
    # a series that was not written (a full results disk) draws nothing and says so in the summary
    assert figures(tmp_path, summary | {"kv_cache": section | {"timeseries": {"interval_s": 0.5}}}) == {}


# --- the serving phase through the phase runner: what was planned ------------------------------------


def test_still_due_counts_what_a_stopped_source_had_planned():
    def rest(*ats):
        return iter([(a, None) for a in ats])

    inf = math.inf
    # timed arrivals: those before the deadline, the one in hand included
    assert _still_due(0.5, rest(1.0, 2.0), begin=0.0, deadline=1.5) == 2
    assert _still_due(2.0, rest(), begin=0.0, deadline=1.5) == 0
    assert _still_due(0.5, rest(1.0, 2.0), begin=0.0, deadline=inf) == 3
    # closed loop: the next request is due now; the ones after it only when the schedule ends
    # without a deadline (then it was planned whole)
    assert _still_due(None, rest(None, None), begin=0.0, deadline=inf) == 3
    assert _still_due(None, rest(None, None), begin=0.0, deadline=time.perf_counter() + 60) == 1
    assert _still_due(None, rest(None), begin=0.0, deadline=time.perf_counter() - 1) == 0


class FakeDeadStore(PosixBackend):
    """Stops answering after `answers` puts: every later op waits a little (a connection timeout)
    and fails as unreachable. A real server killed mid-run is tests/test_dead_store.py's; this
    one stops at a known moment, in-process, so the planned counts can be checked exactly."""

    answers = 6
    wait_s = 0.02
    lock = threading.Lock()  # write-back writers put at once: exactly `answers` get through

    def _dead(self, key: str) -> None:
        time.sleep(self.wait_s)
        raise Unreachable(f"{key}: injected, the store stopped answering", key)

    def put(self, key: str, data: memoryview | bytes) -> None:
        with self.lock:
            left = self.answers
            self.answers = left - 1
        if left <= 0:
            self._dead(key)
        super().put(key, data)

    def get(self, key: str, into: memoryview) -> int:
        if self.answers <= 0:
            self._dead(key)
        return super().get(key, into)


def _context(tmp_path: Path, backend: PosixBackend, **over) -> Context:
    cfg = kv.Config(**(TINY | over))
    assert cfg.validate() is None
    world = SoloWorld()
    log = logging.getLogger("test_kv_cache")
    return Context(world, backend, PhaseRunner(world, 0, backend), cfg, tmp_path, "run", 42, log)


@pytest.mark.parametrize("write_policy", ["sync", "write_back"])
def test_store_gone_mid_phase_leaves_the_phase_unfinished(tmp_path, write_policy):
    backend = FakeDeadStore(str(tmp_path / "data"))
    backend.liveness.timeout_s = 0.3
    ctx = _context(tmp_path, backend, users=2, requests_per_user=40, write_policy=write_policy)
    with pytest.raises(StoreGone, match="no operation succeeded during kv_cache"):
        KVCache(ctx).run()
    phases = {p.name: p for p in ctx.runner.results}
    assert list(phases) == ["request", "read", "write", "lookup_miss"]
    req, write = phases["request"], phases["write"]
    # the whole closed-loop trace was planned; what the store's end cut off is missing, and the
    # harness's check (ops + errors < planned_ops) calls the phase unfinished
    assert req.planned_ops == 2 * 40 and 0 < req.ops < req.planned_ops and req.errors == 0
    assert write.errors > 0 and write.error_kinds.get("unreachable") == write.errors
    assert write.ops == FakeDeadStore.answers
    assert req.ops + req.errors < req.planned_ops
    # the request under way when the store went had hundreds of 4-token chunks to store: those
    # not yet tried were dropped, planned but not done (the write phase is unfinished too)
    assert write.planned_ops > write.ops + write.errors


class FakeBuggyStore(PosixBackend):
    """Its put raises what no backend may (a bug, not a StorageError) from the second put on."""

    answers = 1
    lock = threading.Lock()

    def put(self, key: str, data: memoryview | bytes) -> None:
        with self.lock:
            left = self.answers
            self.answers = left - 1
        if left <= 0:
            raise RuntimeError("injected: a bug in the backend")
        super().put(key, data)


def test_a_crashed_write_back_writer_ends_the_run_instead_of_hanging_it(tmp_path):
    """The one writer dies on its second chunk while the queue (one slot) is full: the users that
    wait to queue their chunks, and the end of the phase that queues the writers' end, must not
    wait forever, and the users stop (not at the end of their ten minutes): the bug is raised."""
    backend = FakeBuggyStore(str(tmp_path / "data"))
    ctx = _context(
        tmp_path, backend, users=2, requests_per_user=0, duration_s=600, write_policy="write_back",
        writer_threads=1, write_queue_chunks=1,
    )  # fmt: skip
    raised: list[BaseException] = []

    def run() -> None:
        try:
            KVCache(ctx).run()
        except BaseException as exc:
            raised.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), "the serving phase hangs on a full write-back queue with no writer"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert "injected: a bug in the backend" in str(raised[0])


def test_a_source_that_raises_stops_the_other_sources(tmp_path):
    """A bug in one source's request ends the open-loop phase: the other sources, whose schedules
    have no end and no deadline, stop too, and the bug is raised."""
    runner = PhaseRunner(SoloWorld(), 0, PosixBackend(str(tmp_path)))
    records = [OpRecord(1.0, ("request", "queue"), ("requests",), ()) for _ in range(2)]

    def serve(s: int, _request: object) -> None:
        time.sleep(0.001)
        if s == 0 and records[0].c["requests"] == 3:
            raise RuntimeError("injected: a bug in a request")
        records[s].c["requests"] += 1

    def forever() -> Iterator[tuple[None, None]]:
        while True:
            yield None, None

    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_open_loop(
                runner,
                "request",
                [forever(), forever()],
                serve,
                records,
                [OpKind("request", "request", "requests")],
            )
        except BaseException as exc:
            raised.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), "a source went on after another one raised"
    assert len(raised) == 1 and "injected: a bug in a request" in str(raised[0])


def test_publish_put_where_a_put_is_seen_half_written_is_refused_with_verify(tmp_path):
    """On a file system a put is visible while it is written: a reader on another rank (or
    thread) reads a chunk half written and would report a healthy store corrupt."""
    backend = PosixBackend(str(tmp_path / "data"))
    with pytest.raises(UsageError, match=r"workload\.publish=put .*corrupt.*publish=auto.*verify=false"):
        KVCache(_context(tmp_path, backend, publish="put")).run()
    # without verification a torn read is only a read: allowed (MLPerf's harness writes in place)
    phases = {p.name: p for p in KVCache(_context(tmp_path, backend, publish="put", verify=False)).run()}
    assert phases["write"].ops > 0 and phases["write"].errors == 0


def test_a_finished_duration_run_is_not_flagged(tmp_path):
    """With a duration, a request due after it is not the phase's: a run the deadline ended has
    done all it planned, closed loop or Poisson."""
    backend = PosixBackend(str(tmp_path / "data"))
    for arrival in (0.0, 200.0):
        ctx = _context(tmp_path, backend, users=2, requests_per_user=0, duration_s=0.5, arrival_rate=arrival)
        wl = KVCache(ctx)
        phases = {p.name: p for p in wl.run()}
        req = phases["request"]
        assert req.ops > 0 and req.planned_ops == req.ops == wl.metrics["requests_started"]
        for p in phases.values():
            assert p.planned_ops == p.ops + p.errors, p.name
        assert req.end <= 0.5 + 5.0  # stopped by the deadline, not by the trace (it has no end)


# --- runs through the CLI --------------------------------------------------------------------------

SMALL = [*KV_SMALL, "run.progress_interval=0"]


def _check(s: dict, ranks: int, requests: int) -> dict:
    assert s["valid"] is True and s["errors"] == 0, s["invalid_reasons"]
    assert s["workload"] == "kv_cache" and s["ranks"] == ranks
    k = s["kv_cache"]
    assert k["requests"]["count"] == requests and len(k["per_rank"]) == ranks
    assert set(s["phases"]) == {"request", "read", "write", "lookup_miss"}
    assert k["read"]["chunks"] == s["phases"]["read"]["ops"] == k["integrity"]["chunks_verified"]
    assert k["write"]["chunks"] == k["writes"]["chunks_written"]
    assert k["writes"]["unique_chunks"] + k["writes"]["duplicate_writes"] == k["writes"]["chunks_written"]
    t, h = k["tokens"], k["hit_rate"]["tokens"]
    assert t["hit_memory"] + t["hit_write_queue"] + t["hit_storage"] + t["recomputed"] == t["context"]
    assert h["total"] == pytest.approx(h["memory"] + h["write_queue"] + h["storage"], abs=1e-5)
    for name in ("read", "write"):
        lat = k[name]["latency_ms"]
        assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"] + 1e-3
        assert k[name]["max_rank_p95_ms"] == max(p["p95"] for p in k[name]["per_rank_latency_ms"])
    assert k["ttft_ms"]["count"] == requests and k["ttft_ms"]["p50"] <= k["ttft_ms"]["p99"]
    assert k["storage_tokens_per_s"]["total"] > 0 and k["requests"]["per_s"] > 0
    ts = k["timeseries"]
    assert ts["csv"] == "timeseries.csv" and "error" not in ts, ts
    assert s["figures"] == {"timeseries": "timeseries.png"}
    # every phase did what it planned: the harness's unfinished-phase check has nothing to flag
    assert s["phases"]["request"]["planned_ops"] == s["phases"]["request"]["ops"] == requests
    for p in s["phases"].values():
        assert p["planned_ops"] == p["ops"] + p["errors"], p
    return k


def _series(run: Path) -> list[dict[str, str]]:
    assert (run / "timeseries.png").stat().st_size > 1000
    return list(csv.DictReader((run / "timeseries.csv").open()))


#: one request a rank, one system prompt of 1000 tokens (3 full chunks) + a 100-token message: 4
#: full chunks; rank 1 starts 1.5 s late and finds rank 0's 3 prompt chunks stored
LATE_READER = [
    *SMALL,
    "workload.users=1",
    "workload.requests_per_user=1",
    "workload.system_prompts=1",
    "workload.system_prompt_tokens=[1000,1000]",
    "workload.documents=0",
    "workload.user_tokens=[100,100]",
    "workload.turns=[1,1]",
    "workload.rank_stagger_s=1.5",
    "workload.cleanup=false",
]


def test_two_ranks_posix_a_late_server_reads_what_the_first_wrote(tmp_path):
    d = run_cli("run", *LATE_READER, f"run.results_dir={tmp_path}", np=2)
    assert d.code == 0, d.err
    k = _check(d.summary(), 2, 2)
    assert k["cross_rank_reads"] == 3 and k["read"]["chunks"] == 3
    assert [p["cross_rank_reads"] for p in k["per_rank"]] == [0, 3]
    assert k["writes"]["chunks_written"] == 5 and k["writes"]["duplicate_writes"] == 0
    assert k["lookup_miss"]["count"] == 2  # rank 0 at chunk 0, rank 1 at chunk 3
    assert k["tokens"]["hit_storage"] == 768 and k["tokens"]["context"] == 2200
    chunks = [p for p in (d.results / "data").rglob("*") if p.is_file()]
    assert len(chunks) == 5 and all(p.stat().st_size == k["chunk"]["bytes_stored"] for p in chunks)
    assert sum(float(r["storage_read_tokens_per_s"]) for r in _series(d.results)) > 0


def test_four_ranks_posix_direct_poisson_write_back_cpu_tier(tmp_path):
    d = run_cli(
        "run",
        *SMALL,
        "storage.direct=true",
        "workload.users=3",
        "workload.requests_per_user=4",
        "workload.arrival_rate=30",
        "workload.write_policy=write_back",
        "workload.writer_threads=2",
        "workload.cpu_tier_bytes=402653184",  # 32 real chunks of 12 MiB
        "workload.timeseries_interval_s=0.25",
        f"run.results_dir={tmp_path}",
        np=4,
    )
    assert d.code == 0, d.err
    s = d.summary()
    k = _check(s, 4, 4 * 3 * 4)
    assert s["storage"]["direct"] is True and k["tiers"]["write_policy"] == "write_back"
    assert k["tiers"]["memory"]["capacity_chunks"] == 32
    assert k["tiers"]["memory"]["peak_bytes_max_rank"] <= 32 * k["chunk"]["bytes_stored"]
    assert k["hit_rate"]["tokens"]["memory"] > 0 and k["hit_rate"]["tokens"]["storage"] > 0
    assert k["servers"]["arrival"].startswith("Poisson")
    assert not [p for p in (d.results / "data").rglob("*") if p.is_file()], "cleanup deletes every chunk"
    rows = _series(d.results)
    assert [float(r["t_start_s"]) for r in rows] == [i * 0.25 for i in range(len(rows))]


@pytest.mark.parametrize(("client", "ranks"), [("obstore", 2), ("boto3", 4)])
def test_runs_on_seaweedfs(tmp_path, s3_server: ServerInfo, s3_admin, client, ranks):
    prefix = f"kv-{client}-{ranks}"
    d = run_cli(
        "run",
        *SMALL,
        "storage=s3",
        f"storage.client={client}",
        f"storage.prefix={prefix}",
        "workload.users=2",
        "workload.requests_per_user=3",
        "workload.cleanup=false",
        f"run.results_dir={tmp_path}",
        np=ranks,
        env=server_env(s3_server),
    )
    assert d.code == 0, d.err
    s = d.summary()
    k = _check(s, ranks, ranks * 2 * 3)
    assert k["tiers"]["storage"]["publish"] == "put" and s["storage"]["client"] == client
    # one namespace: every chunk any rank wrote is one object, at the stored chunk size
    pages = s3_admin.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=prefix + "/")
    objs = [o for p in pages for o in p.get("Contents", [])]
    assert len(objs) == k["writes"]["unique_chunks"] > 0
    assert all(o["Size"] == k["chunk"]["bytes_stored"] and "/kvcache/" in o["Key"] for o in objs)
    assert k["read"]["chunks"] > 0 and k["integrity"]["corrupt"] == 0
    assert math.isclose(k["footprint_bytes"], len(objs) * k["chunk"]["bytes_stored"])
