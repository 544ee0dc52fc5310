"""DLIO 2.0.0's own training loop (real dlio_benchmark, real mpirun, 2 ranks) checkpointing
through dlio-ext's burst engine: DLIO's file names and sizes, every file fsynced, every byte
verifiable, and the honest per-burst report next to DLIO's outputs."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli

from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads.checkpoint_burst import Content, Engine, PlannedFile

RANKS = 2
EPOCHS = 2
MODEL, LAYER = 1 << 20, 300_000  # bytes of DLIO's int8 model tensor and of its one layer tensor
CLASS = "dlio_ext.dlio.checkpointing.BurstCheckpointing"

TRAINING = [
    "workload=default",
    "++workload.workflow.generate_data=True",
    "++workload.workflow.train=True",
    "++workload.workflow.evaluation=False",
    "++workload.workflow.checkpoint=True",
    "++workload.dataset.num_files_train=4",
    "++workload.dataset.num_files_eval=0",
    "++workload.dataset.num_subfolders_train=0",
    "++workload.dataset.num_subfolders_eval=0",
    "++workload.dataset.record_length=4096",
    "++workload.dataset.data_folder=data",
    f"++workload.train.epochs={EPOCHS}",
    "++workload.train.computation_time=0",
    "++workload.reader.batch_size=1",
    "++workload.reader.read_threads=1",
    "++workload.checkpoint.checkpoint_folder=ckpt",
    f"++workload.checkpoint.model_size={MODEL}",
    f"++workload.checkpoint.layer_parameters=[{LAYER}]",
    "++workload.checkpoint.num_layers=1",
    "++workload.checkpoint.type=all_ranks",
    f"++workload.checkpoint.checkpoint_mechanism_classname={CLASS}",
]


def test_dlio_training_checkpoints_through_the_burst_engine(tmp_path: Path):
    out = tmp_path / "out"
    d = run_cli("dlio", *TRAINING, f"++workload.output.folder={out}", np=RANKS, cwd=tmp_path, timeout=600)
    assert d.code == 0, f"{d.out[-3000:]}\n{d.err[-3000:]}"
    assert "custom checkpointing mechanism class BurstCheckpointing" in (out / "dlio.log").read_text()

    # DLIO 2.0.0's names: <kind>-<epoch>-<step>-<rank>.pt, one checkpoint per epoch, every rank
    ckpt = tmp_path / "ckpt"
    files = {p.name: p.stat().st_size for p in ckpt.iterdir()}
    steps = 4 // RANKS
    want = {}
    for e in range(1, EPOCHS + 1):
        for r in range(RANKS):
            want[f"model-{e}-{steps}-{r}.pt"] = MODEL
            want[f"layer-0-{e}-{steps}-{r}.pt"] = LAYER
    assert files == want

    # the bytes are the engine's (not torch.save's zip), and they verify
    engine = Engine(PosixBackend(str(ckpt)), Content(123, 16 << 20, 64 << 20, 1))
    buf = memoryview(bytearray(16 << 20))
    for e in range(1, EPOCHS + 1):
        for r in range(RANKS):
            for i, (name, size) in enumerate(
                [(f"model-{e}-{steps}-{r}.pt", MODEL), (f"layer-0-{e}-{steps}-{r}.pt", LAYER)]
            ):
                assert not (ckpt / name).read_bytes().startswith(b"PK")
                ev = engine.read_file(PlannedFile(name, name, size, i, r, "dlio"), e - 1, buf)
                assert ev.ok, ev.error

    report = json.loads((out / "dlio_ext_checkpoint.json").read_text())
    assert report["storage"]["fsync"] == "file" and report["checkpoint_type"] == "all_ranks"
    assert len(report["checkpoints"]) == EPOCHS
    for c in report["checkpoints"]:
        assert c["ranks_writing"] == RANKS and c["files"] == 2 * RANKS
        assert c["bytes"] == RANKS * (MODEL + LAYER)
        assert c["fsync_calls"] == 2 * RANKS and c["fsync_s"] > 0  # DLIO itself never fsyncs
        assert c["burst_seconds"] > 0 and c["burst_seconds"] >= c["rank_seconds"]["max"] - 1e-6
        assert c["straggler_ratio"] >= 1.0
    # DLIO's own bookkeeping still ran around our writes (rank 0's times, as DLIO keeps them)
    stats = json.loads((out / "per_epoch_stats.json").read_text())
    assert all("ckpt1" in stats[str(e)] for e in range(1, EPOCHS + 1))
