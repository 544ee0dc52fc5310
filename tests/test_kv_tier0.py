"""kv_cache with a tier-0 (tier0=nixl: registered memory over the ranks, read one-sidedly through
UCX) between each server's CPU tier and the shared storage: a chunk one rank placed is read by
another from the tier-0, every byte verified; a tier-0 smaller than the working set evicts what
each rank placed, least recently used first, and storage serves what it let go of (posix, S3);
every look-up is accounted for; a tier-0 the run cannot use is refused in one line.
Real parts: mpirun with 2 and 4 ranks, NIXL/UCX over shared memory, SeaweedFS; one fake, to make
a tier full on cue for the eviction order."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from helpers import KV_SMALL, run_cli
from test_kv_cache import LATE_READER

from dlio_ext.metrics import results
from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage.base import NoSpace
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads import kv_cache as kv
from dlio_ext.workloads.kv_cache import KVCache
from dlio_ext.workloads.kv_cache.tiers import StorageTier, Tier0

SMALL = [*KV_SMALL, "run.progress_interval=0"]
CHUNK = 98304  # KV_SMALL's stored chunk (96 KiB)


def _valid(s: dict[str, Any], ranks: int) -> dict[str, Any]:
    """The run is valid, its summary meets the schema, and every look-up is accounted for, tier by
    tier: what the tier-0 did not serve went on to storage."""
    assert s["valid"] is True and s["errors"] == 0, s["invalid_reasons"]
    assert s["ranks"] == ranks
    assert results.validate(s, KVCache.summary_schema()) == []
    k = s["kv_cache"]
    look, t0 = k["lookups"], k["tiers"]["tier0"]
    parts = ("memory", "write_queue", "tier0", "storage", "missed", "failed")
    assert sum(look[p] for p in parts) == look["chunks"] > 0, look
    # the chunks that reached the tier-0 (not hits of this rank's CPU tier or write queue): every
    # one a hit, a miss or a read error
    reached = look["chunks"] - look["memory"] - look["write_queue"]
    assert t0["lookups"] == t0["hits"] + t0["misses"] + t0["read_errors"] == reached
    # ... and those it did not serve reached storage: a hit, a lookup miss or a failure there
    assert t0["misses"] + t0["read_errors"] == look["storage"] + k["lookup_miss"]["count"] + look["failed"]
    assert t0["hits"] == look["tier0"] == s["phases"]["tier0_read"]["ops"] == t0["read"]["chunks"]
    assert t0["misses"] == s["phases"]["tier0_miss"]["ops"]
    # every chunk read, from either tier, was verified, and nothing was corrupt
    v = k["integrity"]
    assert v["by_tier"] == {"storage": k["read"]["chunks"], "tier0": t0["hits"]}
    assert v["chunks_verified"] == k["read"]["chunks"] + t0["hits"] and v["corrupt"] == 0
    assert t0["read"]["bytes"] == t0["hits"] * k["chunk"]["bytes_stored"]
    # per-tier hit rates add up to the total
    h = k["hit_rate"]["chunks"]
    assert h["total"] == pytest.approx(h["memory"] + h["write_queue"] + h["tier0"] + h["storage"], abs=1e-5)
    # the tier-0 really was NIXL's memory tier, moved by UCX
    assert s["tier0"]["medium"] == "memory" and s["tier0"]["nixl_plugins"]["read"] == ["UCX"]
    assert s["tier0"]["use"] == KVCache.tier0_use
    return k


def test_a_chunk_one_rank_placed_is_read_by_another_from_the_tier0(tmp_path: Path) -> None:
    # rank 1 starts late and finds rank 0's 3 prompt chunks in the tier-0 (see LATE_READER)
    d = run_cli(
        "run", *LATE_READER, "tier0=nixl", "tier0.pool_bytes=16777216", f"run.results_dir={tmp_path}", np=2
    )
    assert d.code == 0, d.err[-3000:]
    s = d.summary()
    k = _valid(s, 2)
    t0 = k["tiers"]["tier0"]
    # rank 1's 3 shared chunks came from the tier-0, placed there by rank 0: none from storage
    assert t0["hits"] == 3 and t0["cross_rank_reads"] == 3 and k["read"]["chunks"] == 0
    assert k["tokens"]["hit_tier0"] == 768 and k["tokens"]["hit_storage"] == 0
    assert k["integrity"]["by_tier"]["tier0"] == 3
    # written through: the tier-0 took all 5 distinct chunks, and so did storage
    assert t0["placed"] == 5 and k["writes"]["chunks_written"] == 5 and t0["evicted_chunks"] == 0
    chunks = [p for p in (d.results / "data").rglob("*") if p.is_file()]
    assert len(chunks) == 5 and all(p.stat().st_size == CHUNK for p in chunks)
    # a peer's memory served what lived there; the rest was this rank's own pool
    assert 0 <= t0["peer_memory_reads"] <= 3
    # the time series has the tier-0's reads apart from storage's
    rows = list(csv.DictReader((d.results / "timeseries.csv").open()))
    assert sum(float(r["tier0_read_GBps"]) for r in rows) > 0
    assert sum(float(r["read_GBps"]) for r in rows) == 0


@pytest.mark.parametrize(("storage", "ranks"), [("posix", 4), ("s3", 2)])
def test_a_tier0_smaller_than_the_working_set_evicts_and_storage_serves_the_rest(
    tmp_path: Path, request: pytest.FixtureRequest, storage: str, ranks: int
) -> None:
    """8 chunks a rank's pool, far fewer than the run stores: the tier-0 refuses puts, each rank
    evicts what it placed, and chunks it let go of are read, verified, from storage."""
    env = None
    extra = [f"storage.root={tmp_path / 'data'}"]
    if storage == "s3":
        s3: ServerInfo = request.getfixturevalue("s3_server")
        env, extra = server_env(s3), ["storage=s3", f"storage.prefix=kvt0-{ranks}"]
    d = run_cli(
        "run",
        *SMALL,
        *extra,
        "workload.users=3",
        "workload.requests_per_user=4",
        "tier0=nixl",
        f"tier0.pool_bytes={8 * CHUNK}",
        "workload.write_policy=" + ("write_back" if storage == "posix" else "sync"),
        f"run.results_dir={tmp_path / 'results'}",
        np=ranks,
        env=env,
    )
    assert d.code == 0, d.err[-3000:]
    s = d.summary()
    k = _valid(s, ranks)
    t0 = k["tiers"]["tier0"]
    assert t0["capacity_chunks"] == 8 * ranks and t0["per_rank_capacity_bytes"] is None
    # it filled up and the ranks made room by evicting their own chunks (no delete failed)
    assert t0["evicted_when_full"] > 0 and t0["evicted_chunks"] >= t0["evicted_when_full"]
    assert t0["evicted_bytes"] == t0["evicted_chunks"] * CHUNK and t0["evict_failed"] == 0
    # every new chunk went to storage as well: what the tier-0 no longer held was found there
    assert k["writes"]["chunks_written"] > 8 * ranks
    assert k["read"]["chunks"] > 0 and k["lookups"]["storage"] == k["read"]["chunks"]
    assert t0["misses_after_eviction"] > 0 and t0["hits"] > 0
    # storage hits were placed in the tier-0 again (they are hot); placements add up
    assert 0 < t0["promotions"] <= k["read"]["chunks"]
    assert t0["placed"] + t0["not_placed_full"] >= k["writes"]["unique_chunks"]
    assert s["phases"]["tier0_write"]["ops"] == t0["placed"] and s["phases"]["tier0_write"]["errors"] == 0
    assert s["storage"]["backend"] == storage


def test_a_posix_tier0_keeps_within_tier0_bytes(tmp_path: Path) -> None:
    """A posix tier-0 (a flash directory) bounded by workload.tier0_bytes: each placement beyond
    the bound evicts the least recently used chunk first, so the directory never holds more."""
    bound = 6  # chunks
    d = run_cli(
        "run",
        *SMALL,
        "workload.users=3",
        "workload.requests_per_user=4",
        "workload.cleanup=false",
        "tier0=posix",
        f"workload.tier0_bytes={bound * 12582912}",  # real bytes: 6 chunks of 12 MiB
        f"run.results_dir={tmp_path}",
    )
    assert d.code == 0, d.err[-3000:]
    s = d.summary()
    assert s["valid"] and results.validate(s, KVCache.summary_schema()) == []
    t0 = s["kv_cache"]["tiers"]["tier0"]
    assert t0["backend"] == "posix" and t0["capacity_chunks"] == bound
    assert t0["per_rank_capacity_bytes"] == bound * CHUNK and t0["peak_bytes_sum_of_ranks"] <= bound * CHUNK
    # the bound evicted (never a refused put), and storage served what went
    assert t0["evicted_chunks"] > 0 and t0["evicted_when_full"] == 0 and t0["not_placed_full"] == 0
    assert s["kv_cache"]["read"]["chunks"] > 0
    assert t0["cleanup"]["skipped"] is True
    left = [p for p in (d.results / "tier0").rglob("*") if p.is_file()]
    assert 0 < len(left) <= bound and all(p.stat().st_size == CHUNK for p in left)


def test_a_tier0_the_run_cannot_use_is_refused_in_one_line(tmp_path: Path) -> None:
    # a pool of 3 chunks, with 4 in flight per rank
    d = run_cli(
        "run",
        *SMALL,
        "tier0=nixl",
        f"tier0.pool_bytes={3 * CHUNK}",
        f"run.results_dir={tmp_path}",
    )
    assert d.code == 2, (d.code, d.err)
    lines = [ln for ln in d.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "fewer than workload.max_inflight=4" in lines[0], d.err
    assert "tier0.pool_bytes" in lines[0] and "Traceback" not in d.err
    # a bound for a tier-0 the run does not name (found once the run has started, as the
    # storage tier's bound is: one error line after the start line)
    d = run_cli("run", *SMALL, "workload.tier0_bytes=1000000000", f"run.results_dir={tmp_path}")
    assert d.code == 2, (d.code, d.err)
    errors = [ln for ln in d.err.splitlines() if "dlio-ext: error" in ln]
    assert len(errors) == 1 and "names no tier-0" in errors[0] and "Traceback" not in d.err, d.err


# --- the eviction order, on cue -------------------------------------------------------------------


class FakeFullPools(PosixBackend):
    """A tier of two 'pools' (a key's home: its last hex digit's parity) of `slots` chunks
    each: a put into a full pool raises NoSpace, as the nixl memory tier does."""

    slots = 2

    def home(self, key: str) -> int | None:
        return int(key[-1], 16) % 2

    def put(self, key: str, data: memoryview | bytes) -> None:
        mine = [p for p in Path(self.root).rglob("*") if p.is_file() and self.home(p.name) == self.home(key)]
        if len(mine) >= self.slots:
            raise NoSpace(f"{key}: pool {self.home(key)} is full", key)
        super().put(key, data)


def test_a_full_tier0_evicts_the_placing_ranks_least_recently_used_chunk_in_that_pool(tmp_path: Path):
    (tmp_path / "tier0").mkdir()
    b = FakeFullPools(str(tmp_path / "tier0"))
    cfg = kv.Config(model="custom", layers=1, kv_heads=1, head_dim=128, scale=1, max_inflight=1)
    storage = StorageTier(PosixBackend(str(tmp_path / "storage")), "ns/kvcache")
    r0 = kv.Server(cfg, 0, storage, seed=7, tier0=Tier0(b, "ns/kvcache", tag="r0"))
    r1 = kv.Server(cfg, 1, storage, seed=7, tier0=Tier0(b, "ns/kvcache", tag="r1"))
    s0, s1 = kv.Stats(1.0, tier0=True), kv.Stats(1.0, tier0=True)
    key = [i.to_bytes(16, "big") for i in range(8)]  # hex ends in the digit: pool = i % 2
    for i in (0, 1, 2):  # pool 0: chunks 0 and 2 (full); pool 1: chunk 1
        assert r0.write_chunk(key[i].hex(), key[i], s0, tier0=True)
    assert r0._load(key[0].hex(), key[0], s0)  # a hit from the tier-0 refreshes chunk 0
    assert s0.c["hit_tier0"] == 1 and s0.c["tier0_verified"] == 1
    # chunk 4 goes to pool 0: chunk 2 (the least recently used there) is evicted, not chunk 1,
    # older but in the other pool, nor chunk 0
    assert r0.write_chunk(key[4].hex(), key[4], s0, tier0=True)
    t = r0.tier0
    assert t is not None and t.owned() == [key[1].hex(), key[0].hex(), key[4].hex()]
    assert t.stats()["evicted_when_full"] == 1 and t.stats()["evictions"] == 1
    # rank 1 finds pool 0 full of rank 0's chunks, none of its own to give up: not placed, no
    # error, and the chunk is on storage all the same
    assert r1.write_chunk(key[6].hex(), key[6], s1, tier0=True)
    assert s1.c["tier0_not_placed"] == 1 and s1.errors == {
        "read": {},
        "write": {},
        "tier0_read": {},
        "tier0_write": {},
    }
    assert (tmp_path / "storage" / storage.path(key[6].hex())).is_file()
    # rank 0 misses chunk 2 in the tier-0 (it knew it was there: a miss after eviction) and reads
    # it from storage, verified
    assert r0._load(key[2].hex(), key[2], s0)
    assert s0.c["tier0_evicted_misses"] == 1 and s0.c["hit_storage"] == 1 and s0.c["verified"] == 1
