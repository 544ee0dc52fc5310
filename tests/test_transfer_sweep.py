"""workload=transfer_sweep through the real CLI: posix with 1 and 2 ranks (mpirun), s3 against the
local SeaweedFS, nixl memory with 2 ranks pairwise and 4 ranks many_to_one; a bad key; the
summary's section against its schema. Small sizes: a few MiB a phase."""

from __future__ import annotations

import importlib.util
import logging
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import run_cli

from dlio_ext.metrics.results import merge_phase, validate
from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage.nixl.memory import MemoryMedium
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads.base import workload_class
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseRunner
from dlio_ext.workloads.transfer_sweep import Config, TransferSweep, placed_key, powers_of_4, target_of
from dlio_ext.world import SoloWorld

SECTION = workload_class("transfer_sweep").summary_schema()
#: 4 KiB, 64 KiB and 1 MiB blocks, at most 2 MiB a rank a phase
SMALL = [
    "workload=transfer_sweep",
    "workload.block_sizes=[4096,65536,1048576]",
    "workload.iterations=16",
    "workload.max_phase_bytes=2097152",
    "workload.batch_size=2",
    "run.progress_interval=0",
]
NIXL = pytest.mark.skipif(
    importlib.util.find_spec("nixl_cu12") is None,
    reason="nixl_cu12 is not installed (pip install --no-deps nixl-cu12): storage=nixl cannot run",
)


def _check(s: dict[str, Any], ranks: int, sizes: list[int], targets: list[int]) -> dict[str, Any]:
    """A valid run whose section validates and holds every (op, size) with exactly the blocks
    planned, every one moved and verified."""
    assert s["valid"], s["invalid_reasons"]
    assert validate(s, SECTION) == []
    sec = s["transfer_sweep"]
    assert sec["ranks"] == ranks and sec["targets"] == targets and sec["block_sizes"] == sizes
    assert [(r["op"], r["block_size"]) for r in sec["phases"]] == [
        (op, z) for z in sizes for op in ("write", "read")
    ]
    for row in sec["phases"]:
        n = row["blocks_per_rank"]
        assert n == max(1, min(16, 2097152 // row["block_size"]))
        assert row["ops"] == ranks * n and row["errors"] == 0, row
        assert row["bytes"] == ranks * n * row["block_size"]
        # the section's figures are the phase's own, and they are plausible
        p = s["phases"][row["phase"]]
        assert row["GBps"] == p["GBps"] > 0 and row["seconds"] == p["seconds"] > 0
        assert 0 < row["latency_us"]["p50"] <= row["latency_us"]["p99"] <= p["latency_us"]["max"]
        assert row["cpu_s"] > 0 and row["cpu_s_per_GB"] == pytest.approx(
            row["cpu_s"] / (row["bytes"] / 1e9), rel=1e-3
        )
    posted = any(row["transfers"] for row in sec["phases"])
    assert sec["post_vs_transfer"]["available"] is posted and "post call" in sec["post_vs_transfer"]["note"]
    for row in sec["phases"]:
        if not row["transfers"]:  # posix, s3: nothing posted, no split
            assert row["post_s"] == row["wait_s"] == 0 and row["post_share"] is None
            continue
        # storage=nixl: a put is two transfers (the bytes, the commit record), a get one or two
        assert row["transfers"] >= row["ops"], row
        assert row["post_s"] > 0 and row["post_share"] == pytest.approx(
            row["post_s"] / (row["post_s"] + row["wait_s"]), abs=1e-3
        )
        # both stay inside the phase: the transfer seconds of every rank's batch_size threads
        # (each may have one in flight) cannot exceed their time in it
        wall = s["phases"][row["phase"]]["rank_seconds"]["max"] * ranks * sec["batch_size"]
        assert row["post_s"] + row["wait_s"] <= wall, (row, wall)
    # every key was deleted after its size
    assert s["cleanup"]["failed"] == 0
    return sec


def test_posix_one_rank(tmp_path: Path):
    root = tmp_path / "data"
    d = run_cli("run", "storage=posix", f"storage.root={root}", *SMALL, f"run.results_dir={tmp_path}")
    assert d.code == 0, d.out + d.err
    _check(d.summary(), 1, [4096, 65536, 1048576], [0])
    assert not [p for p in root.rglob("*") if p.is_file()], "blocks left behind"


def test_posix_two_ranks_pairwise_default_sizes(tmp_path: Path):
    """min_block..max_block in powers of 4, two ranks under mpirun, each against the other's keys."""
    args = [a for a in SMALL if "block_sizes" not in a] + [
        "workload.min_block=4096",
        "workload.max_block=65536",
    ]
    d = run_cli(
        "run",
        "storage=posix",
        f"storage.root={tmp_path / 'data'}",
        *args,
        f"run.results_dir={tmp_path}",
        np=2,
    )
    assert d.code == 0, d.out + d.err
    _check(d.summary(), 2, [4096, 16384, 65536], [1, 0])


def test_s3(tmp_path: Path, s3_server: ServerInfo, s3_admin: Any):
    d = run_cli(
        "run",
        "storage=s3",
        "storage.prefix=xfer-sweep",
        *SMALL,
        "workload.pattern=many_to_one",
        f"run.results_dir={tmp_path}",
        env=server_env(s3_server),
    )
    assert d.code == 0, d.out + d.err
    s = d.summary()
    assert s["storage"]["backend"] == "s3"
    _check(s, 1, [4096, 65536, 1048576], [0])
    # the blocks were in the bucket, and are gone
    assert s3_admin.list_objects_v2(Bucket=s3_server.bucket, Prefix="xfer-sweep/").get("KeyCount") == 0


@NIXL
@pytest.mark.parametrize(
    ("ranks", "pattern", "targets"), [(2, "pairwise", [1, 0]), (4, "many_to_one", [0, 0, 0, 0])]
)
def test_nixl_memory(tmp_path: Path, ranks: int, pattern: str, targets: list[int]):
    d = run_cli(
        "run",
        "storage=nixl",
        "storage.pool_bytes=16777216",
        *SMALL,
        f"workload.pattern={pattern}",
        f"run.results_dir={tmp_path}",
        np=ranks,
    )
    assert d.code == 0, d.out + d.err
    s = d.summary()
    _check(s, ranks, [4096, 65536, 1048576], targets)
    # NIXL's UCX plugin carried both verbs (as NIXL itself reports, not the configuration)
    assert s["storage"]["nixl_plugins"].keys() >= {"read", "write"}, s["storage"]
    # and every phase has its post/wait split, counted around each NIXL transfer
    assert s["transfer_sweep"]["post_vs_transfer"]["available"] is True
    assert all(row["transfers"] > 0 for row in s["transfer_sweep"]["phases"])
    assert s["counters"]["transfers"] >= sum(row["transfers"] for row in s["transfer_sweep"]["phases"])


def test_bad_key_one_line_exit_2(tmp_path: Path):
    d = run_cli("run", "workload=transfer_sweep", "workload.pattern=ring", f"run.results_dir={tmp_path}")
    assert d.code == 2, (d.code, d.out, d.err)
    lines = [ln for ln in d.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in d.err + d.out, d.err
    assert "workload.pattern='ring'" in lines[0] and "many_to_one" in lines[0]


def test_a_wrong_section_fails_its_schema(tmp_path: Path):
    """The schema is strict: a row without its CPU figure, or a made-up op, is refused."""
    d = run_cli(
        "run", "storage=posix", f"storage.root={tmp_path / 'data'}", *SMALL, f"run.results_dir={tmp_path}"
    )
    assert d.code == 0, d.out + d.err
    s = d.summary()
    del s["transfer_sweep"]["phases"][0]["cpu_s_per_GB"]
    s["transfer_sweep"]["phases"][1]["op"] = "append"
    errors = validate(s, SECTION)
    assert any("'cpu_s_per_GB' is a required property" in e for e in errors), errors
    assert any("'append' is not one of" in e for e in errors), errors


def test_targets_and_placement():
    """Pairs and the hub; a key lands on its target rank by nixl memory's own placement."""
    assert [target_of("pairwise", r, 4) for r in range(4)] == [1, 0, 3, 2]
    assert [target_of("pairwise", r, 3) for r in range(3)] == [1, 0, 0]
    assert [target_of("many_to_one", r, 3) for r in range(3)] == [0, 0, 0]
    assert powers_of_4(4096, 64 << 20) == [
        4 << 10,
        16 << 10,
        64 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
        16 << 20,
        64 << 20,
    ]
    for ranks in (1, 2, 4, 7):
        for t in range(ranks):
            home = partial(MemoryMedium.owner, SimpleNamespace(ranks=ranks))  # type: ignore[arg-type]
            key = placed_key(f"run/xfer/t{t}/s0", t, home)
            assert home(key) == t
    assert placed_key("run/xfer/t1/s0", 1, lambda k: None) == "run/xfer/t1/s0"  # a shared store


class FakeFlippingPosix(PosixBackend):
    """Real files, but one key's body gets a bit flipped right after each put of it."""

    def put(self, key: str, data: memoryview | bytes) -> None:
        super().put(key, data)
        if "/b65536/s0001" in key:
            with open(self.path(key), "r+b") as f:
                f.seek(40_000)
                b = f.read(1)
                f.seek(40_000)
                f.write(bytes([b[0] ^ 0x01]))


def test_a_flipped_bit_is_a_corrupt_read(tmp_path: Path):
    """In-process on real files: the read of the damaged key (slot 1 of the 64 KiB blocks; one put
    per slot, so no rewrite races the flip) is a `corrupt` error naming the offset; every other
    read verifies."""
    cfg = Config(block_sizes=[4096, 65536], iterations=2, batch_size=2)
    assert cfg.validate() is None
    world = SoloWorld()
    backend = FakeFlippingPosix(str(tmp_path / "data"))
    ctx = Context(world, backend, PhaseRunner(world, 0), cfg, tmp_path, "t", 7, logging.getLogger("t"))
    wl = TransferSweep(ctx)
    wl.prepare()
    by = {p.name: p for p in wl.run()}
    assert list(by) == ["write_4KiB", "read_4KiB", "write_64KiB", "read_64KiB"]
    assert [by[n].errors for n in ("write_4KiB", "read_4KiB", "write_64KiB")] == [0, 0, 0]
    bad = by["read_64KiB"]
    assert (bad.ops, bad.errors, bad.error_kinds) == (1, 1, {"corrupt": 1})
    assert "content differs at offset 40000" in (bad.first_error or "")
    rows = wl.summarize({n: merge_phase([p.to_state()]) for n, p in by.items()}, [wl.rank_metrics()])
    assert [r["errors"] for r in rows["transfer_sweep"]["phases"]] == [0, 0, 0, 1]
