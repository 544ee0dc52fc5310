"""Checkpoints through a tier-0 (tier0=nixl: registered memory over the ranks, moved by UCX):
the stall is the tier-0 write, the drain to storage runs behind it, restores come from a peer's
memory while the tier-0 holds the checkpoint and from storage otherwise, every byte verified
both ways; and what a run that loses a rank or its durable store says about durability.
Real parts: mpirun with 2 and 4 ranks, NIXL/UCX over shared memory, SeaweedFS."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import LiveRun, run_cli, tmpfs

from dlio_ext.metrics import results
from dlio_ext.s3server import ServerInfo, server_env, start_server, stop_server
from dlio_ext.workloads.checkpoint_burst import CheckpointBurst

pytest.importorskip("nixl_cu12")

#: a small custom checkpoint: 4 MiB a rank, streamed in 1 MiB chunks, a 64 MiB memory tier a rank
BURST = [
    "workload=checkpoint_burst/custom",
    "workload.bytes_per_rank=4194304",
    "workload.chunk_size=1048576",
    "workload.buffer_pool_bytes=4194304",
    "workload.compute_seconds=0.1",
]
SMALL = [*BURST, "tier0=nixl", "tier0.pool_bytes=67108864"]


def _tier0(s: dict[str, Any]) -> dict[str, Any]:
    return s["checkpoint_burst"]["tier0"]


def test_restores_come_from_the_tier0_while_it_holds_the_checkpoint_and_from_storage_after(
    tmp_path: Path,
) -> None:
    d = run_cli(
        "run",
        *SMALL,
        "workload.checkpoints=3",
        "workload.restores=3",
        "workload.tier0_keep=1",
        "storage.fsync=file",
        f"run.dir={tmp_path / 'run'}",
        np=2,
    )
    assert d.code == 0, d.err[-3000:]
    s = d.summary()
    assert s["valid"], s["invalid_reasons"]
    t = _tier0(s)
    # the tier-0 keeps the newest checkpoint: restores 0 and 1 (checkpoints 0, 1) come from
    # storage, restore 2 (checkpoint 2) from a peer rank's memory
    assert t["restores"] == {"restore_0": "durable", "restore_1": "durable", "restore_2": "tier0"}
    served = {p["phase"]: p["served_from"] for p in s["checkpoint_burst"]["restore"]["per_checkpoint"]}
    assert served == t["restores"]
    shard, files = 2 * 4194304, s["phases"]["stall_0"]["ops"]
    assert files >= 2  # every file of both ranks' shards
    for j in range(3):
        p = s["phases"][f"restore_{j}"]
        assert p["ops"] == files and p["errors"] == 0 and p["bytes"] == shard  # every file, every byte
    assert s["checkpoint_burst"]["integrity"] == {
        **s["checkpoint_burst"]["integrity"],
        "verified": True,
        "corrupt": 0,
    }
    # a durable restore was cold and read the device; the tier-0 one claims nothing of the kind
    assert s["phases"]["restore_0"]["cold"]["claimed"] and s["phases"]["restore_0"]["cache_fraction"] < 0.5
    assert "cold" not in s["phases"]["restore_2"] and s["phases"]["restore_2"]["device_bytes"] is None
    # every burst: a stall, then a drain to storage (fsynced: durable), both measured
    assert t["not_durable"] == []
    for row in t["per_checkpoint"]:
        k = row["checkpoint"]
        assert row["durable"] and row["durable_s"] is not None
        assert 0 < row["stall_s"] <= row["durable_s"], row  # durable comes after the stall
        assert row["drain_GBps"] > 0
        assert s["phases"][f"stall_{k}"]["bytes"] == shard and s["phases"][f"drain_{k}"]["bytes"] == shard
        assert s["phases"][f"drain_{k}"]["extra"]["fsync_calls"] == files  # every drained file fsynced
    assert set(t["goodput"]) == {"at_stall", "at_durable"}
    assert t["goodput"]["at_stall"]["checkpoint_s"] <= t["goodput"]["at_durable"]["checkpoint_s"]
    # the stall went to the memory tier, not to the disk; the drain reached it
    assert s["tier0"]["medium"] == "memory" and s["tier0"]["nixl_plugins"]["write"] == ["UCX"]
    assert s["storage"]["backend"] == "posix"
    # the data really is on storage after the drain: the run cleaned up, and said what it kept
    assert s["cleanup"]["failed"] == 0
    assert results.validate(s, CheckpointBurst.summary_schema()) == []


@pytest.mark.parametrize(("where", "expect"), [("tier0", "tier0"), ("durable", "durable")])
def test_restore_from_is_obeyed_on_four_ranks(tmp_path: Path, where: str, expect: str) -> None:
    d = run_cli(
        "run",
        *SMALL,
        "workload.checkpoints=2",
        "workload.restores=2",
        "workload.tier0_keep=2",
        f"workload.restore_from={where}",
        f"run.dir={tmp_path / 'run'}",
        np=4,
    )
    assert d.code == 0, d.err[-3000:]
    s = d.summary()
    assert s["valid"], s["invalid_reasons"]
    assert set(_tier0(s)["restores"].values()) == {expect}
    for j in range(2):
        p = s["phases"][f"restore_{j}"]
        assert p["ops"] == s["phases"]["stall_0"]["ops"] and p["errors"] == 0 and p["bytes"] == 4 * 4194304
    assert s["checkpoint_burst"]["integrity"]["corrupt"] == 0
    # each rank restored another rank's shard (from its memory, one-sidedly, on the tier-0)
    assert s["checkpoint_burst"]["restore_rank_shift"] == 1


def test_tier0_and_storage_in_one_place_is_refused(tmp_path: Path) -> None:
    same = tmp_path / "same"
    d = run_cli(
        "run",
        "workload=checkpoint_burst/llama3_8b",
        f"storage.root={same}",
        "tier0=posix",
        f"tier0.root={same}",
        f"run.results_dir={tmp_path / 'results'}",
    )
    assert d.code == 2, (d.code, d.err)
    lines = [ln for ln in d.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "tier0 and storage are the same place" in lines[0], d.err
    assert "Traceback" not in d.err
    assert not any(same.rglob("*")), list(same.rglob("*"))  # nothing written there


def test_a_posix_tier0_works_as_flash_in_front_of_storage(tmp_path: Path) -> None:
    d = run_cli(
        "run",
        *BURST,
        "tier0=posix",
        f"tier0.root={tmp_path / 'flash'}",
        "workload.checkpoints=2",
        "workload.restores=2",
        "workload.tier0_keep=2",
        f"run.dir={tmp_path / 'run'}",
        np=2,
    )
    assert d.code == 0, d.err[-3000:]
    s = d.summary()
    assert s["valid"], s["invalid_reasons"]
    assert set(_tier0(s)["restores"].values()) == {"tier0"} and _tier0(s)["not_durable"] == []
    assert s["tier0"]["backend"] == "posix" and s["tier0"]["root"] == str(tmp_path / "flash")


# --- faults: a durable store gone mid-drain, a rank lost mid-drain -----------------------------------


#: slow drains (1 MB/s a rank) so a fault lands while checkpoint 0 is being drained
SLOW_DRAIN = ["workload.checkpoints=2", "workload.restores=1", "workload.drain_mbps=1"]
SLOW = [*SMALL, *SLOW_DRAIN]


def test_a_rank_killed_mid_drain_says_which_checkpoint_was_not_durable(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run = LiveRun(["run", *SLOW, f"run.dir={run_dir}"], np=2)
    run.wait_for(r"checkpoint 1/2 to the tier-0 written by rank 0")
    os.kill(run.rank_pid(1), signal.SIGKILL)
    done = run.finish()
    assert done.code != 0
    marker = (run_dir / "INCOMPLETE").read_text()
    # nothing drained fully on both ranks: checkpoint 0 is named, with each rank's state
    assert "checkpoints durable on every rank: none" in marker, marker
    assert "checkpoint 0 NOT durable (rank 0: drain unfinished" in marker, marker
    assert "rank 1: drain unfinished" in marker or "rank 1: not drained yet" in marker, marker
    assert "its only copy in the nixl memory tier" in marker, marker
    assert "summary.json" not in {p.name for p in run_dir.iterdir()}  # nothing claims the run finished


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    d = tmp_path_factory.mktemp("tier0-s3")
    try:
        yield start_server(d)
    finally:
        stop_server(d)


def test_a_durable_store_gone_mid_drain_leaves_the_checkpoints_not_durable(
    tmp_path: Path, own_server: ServerInfo
) -> None:
    info = own_server
    run = LiveRun(
        [
            "run",
            *SLOW,
            "storage=s3",
            "storage.prefix=tier0-gone",
            "run.store_timeout_s=3",
            f"run.dir={tmp_path / 'run'}",
        ],
        np=2,
        env=server_env(info),
    )
    run.wait_for(r"checkpoint 1/2 to the tier-0 written by rank 0")
    os.kill(info.pid, signal.SIGKILL)
    done = run.finish()
    assert done.code == 1, done.err[-3000:]
    s = done.summary()
    assert s["valid"] is False and s["store_gone"].startswith("the store is gone")
    status = s["data_status"]
    assert "checkpoints durable on every rank: none" in status, status
    assert "checkpoint 0 NOT durable" in status and "checkpoint 1 NOT durable" in status, status
    assert f"dlio-ext: {status}" in done.err
    assert info.secret_key not in done.err + done.out + str(s)


def test_a_tier0_that_asked_for_rdma_and_got_none_makes_the_run_invalid(tmp_path: Path) -> None:
    d = run_cli(
        "run",
        *SMALL,
        "workload.checkpoints=1",
        "workload.restores=1",
        "tier0.require_rdma=true",
        f"run.dir={tmp_path / 'run'}",
        np=2,
    )
    assert d.code == 1, d.err[-3000:]
    s = d.summary()
    reasons = [r for r in s["invalid_reasons"] if r.startswith("tier-0: ")]
    assert s["valid"] is False and len(reasons) == 1 and "rdma" in reasons[0].lower(), s["invalid_reasons"]
    assert s["tier0"]["require_rdma"] is True and s["tier0"]["rdma"] is False
    # the storage behind it asked for nothing of the kind: its own reasons are not the tier-0's
    assert all(r.startswith("tier-0: ") for r in s["invalid_reasons"])


def _wipe(root: Path) -> list[str]:
    """A wiped tier-0: every file there is zeroed in place (its size kept, as a flash device
    secure-erased under a live file system would read) and the first one removed."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        with open(p, "r+b") as fh:
            fh.write(b"\0" * p.stat().st_size)
    files[0].unlink()
    return [str(p) for p in files]


def test_a_tier0_wiped_mid_drain_never_makes_a_checkpoint_durable(tmp_path: Path) -> None:
    """The tier-0 (posix 'flash') loses its contents while checkpoint 0 drains: the drain checks
    each chunk it copies against what was written, so no wiped byte reaches the durable store as
    a durable checkpoint, and the run says which checkpoint is not durable and why."""
    flash, run_dir = tmp_path / "flash", tmp_path / "run"
    slow = [*BURST, *SLOW_DRAIN]  # over a posix tier-0
    run = LiveRun(
        ["run", *slow, "tier0=posix", f"tier0.root={flash}", "workload.checkpoints=1", f"run.dir={run_dir}"],
        np=2,
    )
    run.wait_for(r"checkpoint 1/1 to the tier-0 written by rank 0")
    wiped = _wipe(flash)
    assert wiped
    done = run.finish()
    assert done.code != 0, done.err[-3000:]
    s = done.summary()
    t = _tier0(s)
    assert t["not_durable"] == [0], t
    reason = t["per_checkpoint"][0]["reason"]
    assert "(from the tier-0): block at offset 0 holds zeros" in reason or "not found" in reason.lower(), (
        reason
    )
    assert s["errors"] > 0 and not s["valid"], s["invalid_reasons"]
    assert "tier-0: stall p50" in done.err and "no checkpoint durable" in done.err, done.err[-3000:]
    assert "drain FAILED on rank" in done.err, done.err[-3000:]
    # nothing of checkpoint 0 stays on the durable store looking whole: a file whose drain failed
    # was aborted (absent); one drained before the wipe is whole and checks out
    on_store = [p for p in (run_dir / "data").rglob("*") if p.is_file()]
    for p in on_store:
        assert p.read_bytes()[:8] != b"\0" * 8, p
    # and the cleanup removed what of it reached the store (a checkpoint that is not one)
    assert on_store == [] and s["cleanup"] == {**s["cleanup"], "failed": 0, "left_behind": []}


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A real 24 MiB tmpfs as the durable store: a disk that fills up."""
    return tmpfs(tmp_path, request, "24m", "disk")


def _fill(d: Path) -> None:
    """Take every free byte of the file system under `d` (another tenant's data)."""
    block = b"\0" * (1 << 20)
    # unbuffered: the write that finds no space raises here, and closing has nothing to flush
    with (d / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(block)


def test_a_durable_store_full_mid_drain_names_the_checkpoints_and_leaves_none_of_them(
    tmp_path: Path, small_disk: Path
) -> None:
    """The durable store fills up (another tenant) while checkpoints drain from a posix tier-0:
    every drain that hits the full disk fails with the kernel's "no space", those checkpoints are
    named not durable, the run is invalid, and nothing of them is left on the store after the
    run's cleanup (the files a failed drain got down are deleted too, none listed as left)."""
    run_dir = tmp_path / "run"
    run = LiveRun(
        [
            "run",
            *BURST,
            "tier0=posix",
            f"tier0.root={tmp_path / 'flash'}",
            f"storage.root={small_disk / 'data'}",
            "workload.checkpoints=3",
            "workload.keep_checkpoints=1",
            "workload.restores=1",
            "workload.drain_mbps=2",
            f"run.dir={run_dir}",
        ],
        np=2,
    )
    run.wait_for(r"checkpoint 1/3 to the tier-0 written by rank 0")
    _fill(small_disk)
    done = run.finish()
    assert done.code == 1, done.err[-3000:]
    s = done.summary()
    t = _tier0(s)
    assert t["not_durable"] and not s["valid"], t
    assert "no space left on device" in done.err and "drain FAILED on rank" in done.err, done.err[-3000:]
    assert s["counters"]["errors_by_kind"].get("no_space", 0) > 0, s["counters"]
    left = [p for p in (small_disk / "data").rglob("*") if p.is_file()]
    assert left == [] and s["cleanup"]["left_behind"] == [], left
