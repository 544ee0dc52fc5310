"""storage_sweep through the real CLI: one rank, and 2 and 4 ranks under the real mpirun."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import run_cli

from dlio_ext.metrics.results import SCHEMA, validate

PHASE_KEYS = {"ops", "bytes", "seconds", "ops_per_s", "GBps", "latency_us", "rank_seconds", "errors"}


def check_summary(s: dict, ranks: int, n: int, size: int, phases: list[str]) -> None:
    assert s["schema"] == SCHEMA
    assert validate(s) == []
    assert s["workload"] == "storage_sweep"
    assert s["ranks"] == ranks
    assert s["valid"] is True and s["errors"] == 0
    assert list(s["phases"]) == phases
    for name, p in s["phases"].items():
        assert PHASE_KEYS <= set(p), name
        assert set(p["latency_us"]) >= {"p50", "p90", "p99", "p999", "max"}
        assert set(p["rank_seconds"]) == {"min", "p50", "max"}
        assert p["ops"] == ranks * n, name
        assert p["seconds"] > 0
        assert (
            p["rank_seconds"]["min"]
            <= p["rank_seconds"]["p50"]
            <= p["rank_seconds"]["max"]
            <= p["seconds"] + 1e-6
        )
        assert p["latency_us"]["p50"] <= p["latency_us"]["p99"] <= p["latency_us"]["max"]
        assert p["ops_per_s"] == pytest.approx(p["ops"] / p["seconds"], rel=1e-3)
        if name.startswith(("write", "read")):
            assert p["bytes"] == ranks * n * size
            assert p["GBps"] == pytest.approx(p["bytes"] / p["seconds"] / 1e9, rel=1e-3)


@pytest.mark.parametrize("direct", [False, True])
def test_single_rank_posix(tmp_path, direct):
    n, size = 12, 3 * 4096 + 100  # not a multiple of the block: O_DIRECT must pad and truncate
    d = run_cli(
        "run",
        "storage=posix",
        f"storage.direct={str(direct).lower()}",
        f"run.results_dir={tmp_path}",
        f"workload.objects_per_rank={n}",
        f"workload.object_size={size}",
        "workload.phases=[write,read_sequential,read_random,stat,delete]",
    )
    assert d.code == 0, d.err
    s = d.summary()
    check_summary(s, 1, n, size, ["write", "read_sequential", "read_random", "stat", "delete"])
    assert s["storage"]["direct"] is direct
    run = d.results
    for name in ("summary.json", "rank-00000.json", "phases.csv", "config.yaml", "host.json", "run.log"):
        assert (run / name).is_file(), name
    assert not (run / "INCOMPLETE").exists()
    rows = list(csv.DictReader((run / "phases.csv").open()))
    assert [r["phase"] for r in rows] == list(s["phases"])
    assert not any((run / "data").rglob("obj*")), "delete phase must remove every object"


@pytest.mark.parametrize("ranks", [2, 4])
def test_mpirun_ranks_read_their_neighbours_objects(tmp_path, ranks):
    n, size = 8, 64 * 1024
    d = run_cli(
        "run",
        "storage=posix",
        f"run.results_dir={tmp_path}",
        f"workload.objects_per_rank={n}",
        f"workload.object_size={size}",
        "workload.io_depth=2",
        "workload.phases=[write,read_random]",
        np=ranks,
    )
    assert d.code == 0, d.err
    s = d.summary()
    check_summary(s, ranks, n, size, ["write", "read_random"])
    per_rank = [json.loads((d.results / f"rank-{r:05d}.json").read_text()) for r in range(ranks)]
    assert [r["rank"] for r in per_rank] == list(range(ranks))
    assert sum(r["phases"]["write"]["ops"] for r in per_rank) == ranks * n
    # objects of every rank are on storage (no delete phase), each exactly `size` bytes
    files = sorted((d.results / "data").rglob("obj*"))
    assert len(files) == ranks * n and all(f.stat().st_size == size for f in files)
    assert d.out.strip().splitlines()[-1].startswith("results: ")


def test_corrupted_object_fails_the_run(tmp_path):
    """A byte flipped between write and read is caught by verification and invalidates the run."""
    import os

    from dlio_ext.storage.posix import PosixBackend
    from dlio_ext.workloads import storage_sweep
    from dlio_ext.workloads.context import Context
    from dlio_ext.workloads.phases import PhaseRunner
    from dlio_ext.world import SoloWorld

    class CorruptingPosix(PosixBackend):
        """Real posix backend; flips one stored byte after object 3 is written (fault injection)."""

        def put(self, key, data):
            super().put(key, data)
            if key.endswith("obj000003"):
                with open(self.path(key), "r+b") as f:
                    f.seek(100)
                    b = f.read(1)
                    f.seek(100)
                    f.write(bytes([b[0] ^ 0xFF]))

    cfg = storage_sweep.Config(
        objects_per_rank=6, object_size=8192, phases=["write", "read_sequential"], read_shift=0
    )
    ctx = Context(
        world=SoloWorld(),
        backend=CorruptingPosix(str(tmp_path)),
        runner=PhaseRunner(SoloWorld(), 0),
        config=cfg,
        run_dir=tmp_path,
        run_id="t",
        seed=1,
        log=__import__("logging").getLogger("t"),
    )
    write, read = storage_sweep.StorageSweep(ctx).run()
    assert write.errors == 0 and write.ops == 6
    assert read.errors == 1 and read.error_kinds == {"corrupt": 1} and read.ops == 5
    assert read.first_error.endswith("obj000003: content differs at offset 100"), read.first_error
    assert os.path.exists(tmp_path / "t/sweep/r00000/obj000003")


def test_redaction_hides_credentials_not_token_counts() -> None:
    from dlio_ext.config import REDACTED, redact, redact_args

    doc = redact(
        {
            "storage": {
                "secret_key": "s3cr3t",
                "access_key": "AKIA",
                "session_token": "tok",
                "password": "pw",
            },
            "workload": {"chunk_tokens": 256, "max_context_tokens": 8192, "document_tokens": 0},
        }
    )
    assert set(doc["storage"].values()) == {REDACTED}
    # counts of tokens are the workload's shape, not secrets: a redacted config could not be re-run
    assert doc["workload"] == {"chunk_tokens": 256, "max_context_tokens": 8192, "document_tokens": 0}
    assert redact_args(["storage.secret_key=s3cr3t", "workload.chunk_tokens=256"]) == [
        f"storage.secret_key={REDACTED}",
        "workload.chunk_tokens=256",
    ]
