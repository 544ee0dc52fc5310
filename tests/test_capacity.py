"""Capacity: the KV storage tier holds its bound by evicting; the preflight check refuses a run
the storage or the memory cannot hold, before anything is written; user-given key prefixes stay
under their root (checked in the config, and again by the posix backend)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_cli, tmpfs

from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage.base import NotFound, StorageError
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads import kv_cache as kv
from dlio_ext.workloads.kv_cache.tiers import StorageTier

# kv_cache/custom: 12 MiB real chunks; at scale 0.02 one is stored as 248 KiB
CHUNK_REAL = 256 * 2 * 24 * 4 * 128 * 2
KV_SMALL = ["workload=kv_cache/custom", "workload.scale=0.02", "workload.max_inflight=4"]


def _file_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:  # evicted while we walked
                pass
    return total


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "dlio-ext: error" in ln]
    assert len(lines) >= 1 and "Traceback" not in err, err
    assert len(set(lines)) == 1, lines  # every rank that speaks says the same line
    return lines[0]


@pytest.fixture
def small_tmpfs(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A 16 MiB file system that really fills up."""
    return tmpfs(tmp_path, request, "16m")


def _used(mnt: Path) -> int:
    """The file system's used bytes, in one atomic look: a tmpfs counts file data pages only
    (a walk over the files would add up files that never existed at the same moment)."""
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# --- the KV storage tier --------------------------------------------------------------------------


def test_kv_tier_holds_its_bound_under_mpirun(tmp_path: Path, request: pytest.FixtureRequest):
    """2 ranks, a tier of 16 chunks: the file system never holds more than 16 named chunks,
    during the run (sampled every millisecond, plus the evicted chunks open by readers) or after it."""
    root = tmpfs(tmp_path, request, "64m")
    bound_chunks = 16
    samples: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            samples.append(_used(root))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        d = run_cli(
            "run",
            *KV_SMALL,
            "storage=posix",
            f"storage.root={root}",
            f"run.results_dir={tmp_path}/r",
            f"workload.storage_tier_bytes={bound_chunks * CHUNK_REAL}",
            "workload.requests_per_user=6",
            "workload.cleanup=false",
            np=2,
        )
    finally:
        done.set()
        watcher.join()
    assert d.code == 0, d.err
    s = d.summary()
    k = s["kv_cache"]
    st = k["tiers"]["storage"]
    stored = k["chunk"]["bytes_stored"]
    bound = bound_chunks * stored
    assert s["valid"] and k["integrity"]["corrupt"] == 0 and s["errors"] == 0
    assert st["capacity_chunks"] == bound_chunks and st["capacity_bytes_stored"] == bound
    assert st["per_rank_capacity_bytes"] == bound // 2
    # far more was written than the tier holds, so it evicted, and said how much
    assert k["write"]["bytes"] > 4 * bound
    assert st["evicted_chunks"] > 0 and st["evicted_bytes"] == st["evicted_chunks"] * stored
    assert st["evict_failed"] == 0
    # what stays: written - evicted, per rank; never more than the bound
    left = _file_bytes(root)
    assert left == _used(root)  # the tmpfs counts file data only: the samples measure the chunks
    owned = k["write"]["bytes"] - st["evicted_bytes"]  # a chunk both ranks wrote is one file, or none
    assert left <= bound and left <= owned and (k["writes"]["duplicate_writes"] or left == owned)
    # named chunks never pass the bound; an evicted chunk a reader still has open keeps its
    # pages until the read ends (POSIX), at most ranks x max_inflight chunks for a moment
    reading = 2 * 4 * stored
    assert len(samples) > 100 and bound // 2 <= max(samples) <= bound + reading, (max(samples), bound)
    assert st["peak_bytes_sum_of_ranks"] <= bound
    # a chunk once stored and evicted since is looked up again: a miss, counted as such
    assert st["misses_after_eviction"] > 0
    assert k["lookup_miss"]["count"] >= st["misses_after_eviction"]
    assert st["hit_rate_chunks_lost"] == pytest.approx(
        st["misses_after_eviction"] / k["hit_rate"]["full_chunks_looked_up"], abs=1e-6
    )


def test_kv_tier_holds_its_bound_on_s3(tmp_path: Path, s3_server: ServerInfo, s3_admin):
    prefix = "kv-bound"
    d = run_cli(
        "run",
        *KV_SMALL,
        "storage=s3",
        f"storage.prefix={prefix}",
        f"run.results_dir={tmp_path}",
        f"workload.storage_tier_bytes={16 * CHUNK_REAL}",
        "workload.cleanup=false",
        np=2,
        env=server_env(s3_server),
    )
    assert d.code == 0, d.err
    k = d.summary()["kv_cache"]
    st = k["tiers"]["storage"]
    assert d.summary()["valid"] and k["integrity"]["corrupt"] == 0
    assert st["evicted_chunks"] > 0 and st["evict_failed"] == 0
    pages = s3_admin.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=prefix + "/")
    objs = [o for p in pages for o in p.get("Contents", [])]
    assert 0 < len(objs) <= 16 and sum(o["Size"] for o in objs) <= st["capacity_bytes_stored"]
    # what each rank still owns; a chunk two ranks both wrote is one object (or gone if either evicted it)
    owned = (k["write"]["bytes"] - st["evicted_bytes"]) // k["chunk"]["bytes_stored"]
    assert len(objs) <= owned and (k["writes"]["duplicate_writes"] or len(objs) == owned)


def test_kv_auto_bound_keeps_a_small_file_system_from_filling(tmp_path: Path, small_tmpfs: Path):
    """The issue's ENOSPC in miniature: the trace writes ~3x the 16 MiB file system; with
    storage_tier_bytes=0 the tier takes half the free space and evicts, and the run is valid."""
    d = run_cli(
        "run",
        *KV_SMALL,
        "storage=posix",
        f"storage.root={small_tmpfs}",
        f"run.results_dir={tmp_path}/r",
        "workload.requests_per_user=6",
        "workload.cleanup=false",
    )
    assert d.code == 0, d.err
    s = d.summary()
    k = s["kv_cache"]
    st = k["tiers"]["storage"]
    assert s["valid"] and s["errors"] == 0
    assert st["capacity_source"].startswith("auto: 50% of the")
    assert k["write"]["bytes"] > 16 << 20  # more than the whole file system
    assert 0 < st["capacity_bytes_stored"] <= 8 << 20
    assert st["evicted_chunks"] > 0
    assert _file_bytes(small_tmpfs) <= st["capacity_bytes_stored"]


def _server(backend: PosixBackend, rank: int, capacity_chunks: int | None) -> kv.Server:
    cfg = kv.Config(model="custom", layers=1, kv_heads=1, head_dim=128, scale=1, max_inflight=1)
    nbytes = kv.sizes_of(cfg).chunk_stored
    cap = None if capacity_chunks is None else capacity_chunks * nbytes
    tier = StorageTier(backend, "ns/kvcache", "auto", tag=f"r{rank}", capacity_bytes=cap)
    return kv.Server(cfg, rank, tier, seed=7)


def _key(i: int) -> bytes:
    return i.to_bytes(16, "little")


def test_eviction_is_lru_per_owner_and_another_ranks_read_is_a_miss(tmp_path: Path):
    backend = PosixBackend(str(tmp_path))
    owner, reader = _server(backend, 0, 2), _server(backend, 1, None)
    so, sr = kv.Stats(1.0), kv.Stats(1.0)
    k1, k2, k3 = _key(1), _key(2), _key(3)
    for k in (k1, k2):
        assert owner.write_chunk(k.hex(), k, so)
    assert reader._load(k1.hex(), k1, sr)  # the reader now knows chunk 1 is stored
    assert owner._load(k1.hex(), k1, so)  # the owner's own hit: chunk 1 becomes most recent
    assert owner.write_chunk(k3.hex(), k3, so)  # room for chunk 3: chunk 2 goes, not chunk 1
    assert not (tmp_path / owner.storage.path(k2.hex())).exists()
    assert (tmp_path / owner.storage.path(k1.hex())).exists()
    assert owner.storage.stats()["evictions"] == 1 and owner.storage.stats()["chunks"] == 2
    assert k2.hex() not in owner.mine and k2.hex() in owner.evicted
    # the owner needs chunk 2 again: a miss after eviction, then stored again
    assert not owner._load(k2.hex(), k2, so)
    assert so.c["evicted_misses"] == 1 and so.errors["read"] == {}
    # storing chunk 2 again evicts chunk 1, now the least recently used (the reader's read of
    # it did not refresh it: the owner cannot see it); the reader's next look-up is a miss
    assert owner.write_chunk(k2.hex(), k2, so)
    assert not (tmp_path / owner.storage.path(k1.hex())).exists()
    assert not reader._load(k1.hex(), k1, sr)
    assert sr.c["evicted_misses"] == 1 and sr.c["lookup_misses"] == 1
    assert sr.errors["read"] == {} and k1.hex() not in reader.present  # it will store it itself
    files = [p for p in (tmp_path / "ns").rglob("*") if p.is_file()]
    assert len(files) == 2 and _file_bytes(tmp_path) == 2 * owner.nbytes


class FakeInterleaving(PosixBackend):
    """Runs `during` inside the next put of `key`: another thread's writes landing while this
    write is in flight, at the one moment that matters (threads would hit it only by chance)."""

    key = ""
    during: Callable[[], None] | None = None

    def put(self, key: str, data: memoryview | bytes) -> None:
        if self.during is not None and key.endswith(self.key):
            during, self.during = self.during, None
            during()
        super().put(key, data)


def test_a_chunk_rewritten_by_its_owner_is_not_evicted_while_in_flight(tmp_path: Path):
    """A rank writes a chunk it owns again (another rank that wrote it too evicted the shared
    copy): while that write is in flight, its other writes must not evict it and count it twice."""
    b = FakeInterleaving(str(tmp_path))
    n = 4096
    tier = StorageTier(b, "t", "auto", capacity_bytes=4 * n)
    data = memoryview(bytearray(n))
    keys = [f"{i:032x}" for i in range(9)]
    for k in keys[1:5]:
        tier.write(k, data, n)

    def others() -> None:
        for k in keys[5:9]:
            tier.write(k, data, n)  # each evicts the oldest chunk it owns: never chunk 1

    b.key, b.during = keys[1], others
    tier.write(keys[1], data, n)  # the rewrite of chunk 1, the others' writes in its middle
    assert b.during is None
    assert tier.stats()["used_bytes"] == 4 * n and tier.stats()["peak_bytes"] <= 4 * n
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [keys[i] for i in (1, 6, 7, 8)]


class FakeDeleteFails(PosixBackend):
    """A delete refused by the medium: as root no permission bit makes unlink fail, so injected."""

    def delete(self, key: str) -> None:
        raise StorageError(f"{key}: injected failure", key)


def test_failed_eviction_fails_the_write_and_keeps_the_bound(tmp_path: Path):
    backend = FakeDeleteFails(str(tmp_path))
    owner = _server(backend, 0, 1)
    st = kv.Stats(1.0)
    assert owner.write_chunk(_key(1).hex(), _key(1), st)
    assert not owner.write_chunk(_key(2).hex(), _key(2), st)  # no room could be made: not written
    assert st.errors["write"] == {"error": 1} and "injected" in st.first_error["write"]
    stats = owner.storage.stats()
    assert stats["evict_failed"] == 1 and stats["chunks"] == 1 and stats["used_bytes"] == owner.nbytes
    assert _file_bytes(tmp_path) == owner.nbytes


def test_tier_smaller_than_the_chunks_in_flight_is_refused(tmp_path: Path):
    d = run_cli(
        "run",
        *KV_SMALL,
        f"storage.root={tmp_path}/data",
        f"run.results_dir={tmp_path}/r",
        f"workload.storage_tier_bytes={6 * CHUNK_REAL}",  # 3 chunks per rank, 4 in flight
        np=2,
    )
    assert d.code == 2
    line = _one_line(d.err)
    assert "storage_tier_bytes" in line and "max_inflight=4" in line and str(8 * CHUNK_REAL) in line
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))


# --- preflight: the storage --------------------------------------------------------------------------

TOO_BIG = {
    # workload: (arguments that need more than 16 MiB, a key the line must name)
    "storage_sweep": (["workload.objects_per_rank=16", "workload.object_size=1048576"], "objects_per_rank"),
    "checkpoint_burst": (
        [
            "workload=checkpoint_burst/custom",
            "workload.bytes_per_rank=8388608",
            "workload.scale=1",
            "workload.checkpoints=3",
            "workload.restores=0",
            "workload.compute_seconds=0",
        ],
        "workload.checkpoints",
    ),
    "metadata": (
        ["workload=metadata/easy", "workload.write_bytes=65536", "workload.items_per_rank=200"],
        "write_bytes",
    ),
    "kv_cache": ([*KV_SMALL, f"workload.storage_tier_bytes={400 * CHUNK_REAL}"], "storage_tier_bytes"),
}


@pytest.mark.parametrize("workload", sorted(TOO_BIG))
def test_preflight_refuses_a_run_the_file_system_cannot_hold(tmp_path: Path, small_tmpfs: Path, workload):
    args, key = TOO_BIG[workload]
    t0 = time.monotonic()
    d = run_cli(
        "run", *args, f"storage.root={small_tmpfs}", f"run.results_dir={tmp_path}/r", np=2, timeout=120
    )
    assert d.code == 2, (d.code, d.out, d.err)
    line = _one_line(d.err)
    assert f"storage.root={small_tmpfs}" in line and "free" in line and key in line, line
    assert "choose another storage.root" in line
    assert list(small_tmpfs.iterdir()) == []  # nothing written under the root
    assert time.monotonic() - t0 < 60
    incomplete = next((tmp_path / "r").iterdir()) / "INCOMPLETE"
    assert "did not start" in incomplete.read_text()


def test_preflight_lets_a_run_that_fits_through(tmp_path: Path, small_tmpfs: Path):
    d = run_cli(
        "run",
        "workload.objects_per_rank=4",
        "workload.object_size=1048576",
        f"storage.root={small_tmpfs}",
        f"run.results_dir={tmp_path}/r",
        np=2,
    )
    assert d.code == 0, d.err
    assert d.summary()["valid"]


def test_preflight_refuses_an_s3_run_over_its_quota(tmp_path: Path, s3_server: ServerInfo, s3_admin):
    prefix = "quota-test"
    d = run_cli(
        "run",
        "storage=s3",
        f"storage.prefix={prefix}",
        "storage.quota_bytes=4000000",
        f"run.results_dir={tmp_path}",
        "workload.objects_per_rank=4",
        "workload.object_size=1048576",
        np=2,
        env=server_env(s3_server),
    )
    assert d.code == 2, (d.out, d.err)
    line = _one_line(d.err)
    assert "storage.quota_bytes" in line and "4 MB free" in line and "8.39 MB" in line, line
    assert s3_admin.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix).get("KeyCount", 0) == 0
    # within the quota the same run goes through
    ok = run_cli(
        "run",
        "storage=s3",
        f"storage.prefix={prefix}",
        "storage.quota_bytes=40000000",
        f"run.results_dir={tmp_path}",
        "workload.objects_per_rank=4",
        "workload.object_size=1048576",
        np=2,
        env=server_env(s3_server),
    )
    assert ok.code == 0, ok.err


# --- preflight: memory ----------------------------------------------------------------------------------


def test_huge_io_depth_times_object_size_is_refused_before_allocating(tmp_path: Path):
    t0 = time.monotonic()
    d = run_cli(
        "run",
        "workload.io_depth=1024",
        "workload.object_size=1073741824",  # 1 TiB of buffers per rank
        f"storage.root={tmp_path}/data",
        f"run.results_dir={tmp_path}/r",
        np=2,
        timeout=120,
    )
    assert d.code == 2
    line = _one_line(d.err)
    assert "workload.io_depth=1024" in line and "workload.object_size=1073741824" in line
    assert "2 rank(s) on this host" in line and "memory available" in line
    assert time.monotonic() - t0 < 60
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))


def test_checkpoint_pool_is_checked_against_memory(tmp_path: Path):
    d = run_cli(
        "run",
        "workload=checkpoint_burst/llama3_8b",
        "workload.buffer_pool_bytes=2199023255552",  # 2 TiB
        f"storage.root={tmp_path}/data",
        f"run.results_dir={tmp_path}/r",
    )
    assert d.code == 2
    assert "workload.buffer_pool_bytes=2199023255552" in _one_line(d.err)


# --- paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["../../x", "/abs/x", "a//b", "a/./b"])
def test_kv_namespace_outside_the_root_is_refused_on_posix(tmp_path: Path, namespace: str):
    root = tmp_path / "a" / "b" / "root"
    d = run_cli(
        "run",
        *KV_SMALL,
        f"storage.root={root}",
        f"run.results_dir={tmp_path}/a/b/r",
        f"workload.namespace={namespace}",
        np=2,
    )
    assert d.code == 2
    line = _one_line(d.err)
    assert "namespace" in line and repr(namespace) in line
    # no file anywhere but in the run's own results
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert all(str(f).startswith("a/b/r/") for f in files), files


@pytest.mark.parametrize("namespace", ["../../x", "/abs/x"])
def test_kv_namespace_outside_the_prefix_is_refused_on_s3(
    tmp_path, s3_server: ServerInfo, s3_admin, namespace
):
    d = run_cli(
        "run",
        *KV_SMALL,
        "storage=s3",
        "storage.prefix=ns-test/inner",
        f"run.results_dir={tmp_path}",
        f"workload.namespace={namespace}",
        env=server_env(s3_server),
    )
    assert d.code == 2 and "Traceback" not in d.err
    assert "namespace" in _one_line(d.err)
    assert s3_admin.list_objects_v2(Bucket=s3_server.bucket, Prefix="ns-test").get("KeyCount", 0) == 0


def test_posix_backend_refuses_keys_outside_its_root(tmp_path: Path):
    root = tmp_path / "root"
    b = PosixBackend(str(root))
    b.check()
    for key in ("../escape", "a/../../escape", "/etc/escape"):
        with pytest.raises(StorageError, match="outside storage root") as info:
            b.put(key, b"x")
        assert info.value.key == key
        with pytest.raises(StorageError, match="outside storage root"):
            b.resolve(key)
    with pytest.raises(StorageError, match="outside storage root"):
        b.rename("ok", "../escape")
    assert [p.name for p in tmp_path.iterdir()] == ["root"]
    # a name that merely contains two dots is an ordinary key
    b.put("a..b/c..", b"yz")
    assert b.get("a..b/c..", memoryview(bytearray(2))) == 2
    with pytest.raises(NotFound):
        b.stat("a..c")
