"""The DLIO adapter: real dlio_benchmark 2.0.0 under the real mpirun, on the real local SeaweedFS
(through our S3 backend) and on posix with O_DIRECT; plus its one-line bad-input errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PY, ROOT, mpi_cmd

from dlio_ext.storage import native

RANKS = 2
FILES = 4
EPOCHS = 2
RECORD = 4096

# a tiny training workload: 4 one-sample npz files, 2 epochs, batch 1, no compute, one reader
# worker process per rank (so the counts below also cover DataLoader workers)
TINY = [
    "workload=default",
    "++workload.workflow.generate_data=True",
    "++workload.workflow.train=True",
    "++workload.workflow.evaluation=False",
    "++workload.workflow.checkpoint=False",
    f"++workload.dataset.num_files_train={FILES}",
    "++workload.dataset.num_files_eval=0",
    "++workload.dataset.num_subfolders_train=0",
    "++workload.dataset.num_subfolders_eval=0",
    f"++workload.dataset.record_length={RECORD}",
    "++workload.dataset.data_folder=data",
    f"++workload.train.epochs={EPOCHS}",
    "++workload.train.computation_time=0",
    "++workload.reader.batch_size=1",
    "++workload.reader.read_threads=1",
]
# DLIO checkpoints at the end of each epoch (rank 0): one model and one layer file, a few KiB
CHECKPOINT = [
    "++workload.workflow.checkpoint=True",
    "++workload.checkpoint.checkpoint_folder=ckpt",
    "++workload.checkpoint.model_size=4096",
    "++workload.checkpoint.layer_parameters=[2048]",
    "++workload.checkpoint.num_layers=1",
]


def dlio(
    *args: str, cwd: Path, np: int | None = RANKS, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    cmd = [PY, "-m", "dlio_ext.cli", "dlio", *args]
    full = dict(os.environ)
    full["PYTHONPATH"] = str(ROOT)
    if np is not None:
        cmd, mpi_env = mpi_cmd(np, cmd)
        full.update(mpi_env)
    full.pop("DLIO_EXT_S3_BUCKET", None)  # the no-bucket case must not find one in the environment
    full.update(env or {})
    # own session: a hung run is killed with all its ranks and DataLoader workers
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=full,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"timed out after {timeout}s\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ok(p: subprocess.CompletedProcess[str]) -> None:
    assert p.returncode == 0, (
        f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
    )


def check_dlio_outputs(out: Path) -> dict:
    """DLIO's own summary says 2 epochs of the expected steps ran on every rank."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == EPOCHS
    assert summary["num_files_train"] == FILES
    assert summary["num_accelerators"] == RANKS
    epochs = json.loads((out / "per_epoch_stats.json").read_text())
    assert sorted(epochs) == [str(e) for e in range(1, EPOCHS + 1)]
    steps = FILES // RANKS  # samples per file (1) * files / batch size (1) / ranks
    for rank in range(RANKS):
        per_rank = json.loads((out / f"{rank}_output.json").read_text())
        for e in range(1, EPOCHS + 1):
            assert sum(len(v) for v in per_rank[str(e)]["proc"].values()) == steps, (rank, e)
    return json.loads((out / "dlio_ext.json").read_text())


# --- S3: generate, train and checkpoint through our backend on the local SeaweedFS ----------


@pytest.fixture(scope="module")
def s3(s3_server) -> Iterator[tuple[dict[str, str], str]]:
    from dlio_ext.s3server import server_env

    env = server_env(s3_server)
    yield env, env["DLIO_EXT_S3_BUCKET"]


def _boto(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_REGION", "us-east-1"),
    )


def _objects(client, bucket: str, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["Size"]
    return out


def test_dlio_training_on_s3(tmp_path, s3):
    env, bucket = s3
    prefix = f"dlio-{tmp_path.name}"
    out = tmp_path / "out"
    p = dlio(
        *TINY,
        *CHECKPOINT,
        "++workload.storage.storage_type=s3",
        f"++workload.storage.storage_root={bucket}/{prefix}",
        f"++workload.output.folder={out}",
        cwd=tmp_path,
        env=env,
    )
    ok(p)
    assert p.stdout.strip().splitlines()[-1] == f"results: {out}"

    objects = _objects(_boto(env), bucket, prefix + "/")
    data = {k: v for k, v in objects.items() if k.startswith(f"{prefix}/data/")}
    assert sorted(data) == [f"{prefix}/data/train/img_{i}_of_{FILES}.npz" for i in range(FILES)]
    assert all(size > RECORD for size in data.values())
    ckpts = sorted(k for k in objects if k.startswith(f"{prefix}/ckpt/"))
    last_step = FILES // RANKS
    assert ckpts == sorted(
        f"{prefix}/ckpt/{kind}-{e}-{last_step}-0.pt"
        for e in range(1, EPOCHS + 1)
        for kind in ("model", "layer-0")
    )

    report = check_dlio_outputs(out)
    assert report["storage"]["backend"] == "s3"
    io = report["io"]
    # every training sample was a GET of its whole object, in the DataLoader workers, each epoch
    assert io["reads"] == EPOCHS * FILES
    assert io["read_bytes"] == EPOCHS * sum(data.values())
    assert [r["reads"] for r in report["per_rank"]] == [EPOCHS * FILES // RANKS] * RANKS
    # writes: the generated files plus the checkpoints
    assert io["writes"] == FILES + len(ckpts)
    assert io["write_bytes"] == sum(data.values()) + sum(objects[k] for k in ckpts)

    # nothing written outside the output folder; no local dataset or checkpoint directories
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(out)) == sorted(
        [
            ".hydra",
            "dlio.log",
            "dlio_ext.json",
            "per_epoch_stats.json",
            "summary.json",
            *(f"{r}_output.json" for r in range(RANKS)),
            *_trace_files(out),
        ]
    )
    secret = env["AWS_SECRET_ACCESS_KEY"]
    for f in out.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="replace"), f


def _trace_files(out: Path) -> list[str]:
    # pydftracer leaves an (empty) dft.log next to DLIO's outputs
    return [f.name for f in out.iterdir() if f.name.startswith("dft") or f.suffix == ".pfw"]


# --- POSIX with O_DIRECT ---------------------------------------------------------------------


def test_dlio_training_on_posix_odirect(tmp_path):
    root = tmp_path / "root"
    out = tmp_path / "out"
    p = dlio(
        *TINY,
        *CHECKPOINT,
        f"++workload.storage.storage_root={root}",
        "++workload.storage.storage_options.direct=True",
        f"++workload.output.folder={out}",
        cwd=tmp_path,
    )
    ok(p)
    files = sorted((root / "data" / "train").iterdir())
    assert [f.name for f in files] == [f"img_{i}_of_{FILES}.npz" for i in range(FILES)]
    ckpts = sorted((root / "ckpt").iterdir())
    assert len(ckpts) == 2 * EPOCHS
    report = check_dlio_outputs(out)
    assert report["storage"] == {
        "backend": "posix",
        "root": str(root),
        "direct": True,
        "fsync": "none",
        "chunk_size": 8 << 20,
        "durability": "O_DIRECT without fsync: past the page cache, the device's volatile cache not flushed",
        "durability_source": "default",
        "cache_control": "O_DIRECT",
        "cache_note": "O_DIRECT: every read bypasses the page cache",
        "fsync_source": "default",
        "get_calls": native.status(),
    }
    assert report["io"]["reads"] == EPOCHS * FILES
    assert report["io"]["read_bytes"] == EPOCHS * sum(f.stat().st_size for f in files)
    assert report["io"]["writes"] == FILES + len(ckpts)
    # the files are real npz files, readable by numpy without us
    import numpy as np

    with np.load(files[0]) as z:
        assert z["x"].shape == (64, 64, 1) and z["x"].dtype == np.uint8
    # DLIO's checkpoint folder, its "valid" dir, Hydra's dirs: all inside root/ or out/
    assert sorted(os.listdir(tmp_path)) == ["out", "root"]


# --- bad input: one line, exit 2, no traceback ---------------------------------------------

BAD = {
    "s3-no-bucket": (["++workload.storage.storage_type=s3"], ["storage_root", "bucket"]),
    "s3-bad-format": (
        [
            "++workload.storage.storage_type=s3",
            "++workload.storage.storage_root=some-bucket",
            "++workload.dataset.format=hdf5",
        ],
        ["'hdf5'", "npz"],
    ),
    "s3-dali": (
        [
            "++workload.storage.storage_type=s3",
            "++workload.storage.storage_root=some-bucket",
            "++workload.reader.data_loader=dali",
        ],
        ["dali", "pytorch"],
    ),
    "s3-credentials-on-argv": (
        [
            "++workload.storage.storage_type=s3",
            "++workload.storage.storage_root=some-bucket",
            "++workload.storage.storage_options.secret_key=not-a-secret-zzz",
        ],
        ["secret_key", "AWS_SECRET_ACCESS_KEY"],
    ),
    "s3-bad-bucket-name": (
        ["++workload.storage.storage_type=s3", "++workload.storage.storage_root=Bad_Bucket"],
        ["Bad_Bucket", "bucket name"],
    ),
    "s3-part-size-checked-by-backend": (
        [
            "++workload.storage.storage_type=s3",
            "++workload.storage.storage_root=some-bucket",
            "++workload.storage.storage_options.part_size=1024",
        ],
        ["workload.storage.storage_options.part_size", "5 MiB"],
    ),
    "s3-prefix-option": (
        [
            "++workload.storage.storage_type=s3",
            "++workload.storage.storage_root=some-bucket",
            "++workload.storage.storage_options.prefix=p",
        ],
        ["prefix", "storage_root=<bucket>/<prefix>"],
    ),
    "s3-obstore-fork": (
        [
            "++workload.storage.storage_type=s3",
            "++workload.storage.storage_root=some-bucket",
            "++workload.reader.multiprocessing_context=fork",
        ],
        ["fork", "spawn", "client=boto3"],
    ),
    "posix-unknown-option": (["++workload.storage.storage_options.direkt=True"], ["direkt", "direct"]),
    "posix-direct-not-bool": (
        ["++workload.storage.storage_options.direct=maybe"],
        ["direct", "true or false"],
    ),
    "posix-bad-fsync": (["++workload.storage.storage_options.fsync=always"], ["fsync", "file_and_dir"]),
    "unknown-storage-type": (["++workload.storage.storage_type=nfs"], ["nfs", "StorageType"]),
    "unknown-workload": (["workload=nosuch"], ["nosuch"]),
    "override-needs-plus": (["workload.nokey=1"], ["workload.nokey", "+workload.nokey=1"]),
    "multirun": (["-m", "workload=default"], ["multirun"]),
}


def _one_line(p: subprocess.CompletedProcess[str], words: list[str], mpi: bool = False) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    if mpi:  # mpirun adds its own banner about a non-zero exit; ours is one line from one rank
        lines = [ln for ln in lines if "dlio-ext" in ln]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("dlio-ext: error: ")
    assert "Traceback" not in p.stderr + p.stdout
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "not-a-secret-zzz" not in lines[0]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2(tmp_path, case):
    args, words = BAD[case]
    _one_line(dlio(*args, f"++workload.output.folder={tmp_path}/out", cwd=tmp_path, np=None), words)
    # nothing outside the run's output folder
    assert set(os.listdir(tmp_path)) <= {"out"}


def test_bad_input_under_mpirun_prints_one_line(tmp_path):
    p = dlio(
        "++workload.storage.storage_type=s3",
        "++workload.storage.storage_root=some-bucket",
        "++workload.dataset.format=png",
        f"++workload.output.folder={tmp_path}/out",
        cwd=tmp_path,
    )
    _one_line(p, ["'png'", "npz"], mpi=True)


def test_missing_bucket_one_line(tmp_path, s3):
    env, _ = s3
    p = dlio(
        "++workload.storage.storage_type=s3",
        "++workload.storage.storage_root=no-such-bucket-dlio",
        f"++workload.output.folder={tmp_path}/out",
        cwd=tmp_path,
        env=env,
    )
    _one_line(p, ["no-such-bucket-dlio"], mpi=True)


def test_no_dataset_one_line(tmp_path):
    p = dlio(
        *[a for a in TINY if "generate_data" not in a],
        "++workload.workflow.generate_data=False",
        f"++workload.storage.storage_root={tmp_path}/root",
        "++workload.storage.storage_options.direct=True",
        f"++workload.output.folder={tmp_path}/out",
        cwd=tmp_path,
        np=None,
    )
    assert p.returncode == 2, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("dlio-ext: error: ")]
    assert len(errors) == 1 and "generate_data=True" in errors[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr


# --- the pieces, without DLIO running ----------------------------------------------------------


def test_spec_maps_dlio_paths_to_keys_and_back(tmp_path, monkeypatch):
    from dlio_ext.dlio.options import parse

    spec = parse(
        {"storage": {"storage_type": "s3", "storage_root": "bkt/run1"}, "dataset": {"format": "npz"}}
    )
    assert spec is not None and spec.backend_cfg["bucket"] == "bkt" and spec.backend_cfg["prefix"] == "run1"
    uri = spec.uri("data/train/img_0_of_4.npz")
    assert uri == "/bkt/run1/data/train/img_0_of_4.npz"
    # DLIO runs os.path.abspath over every file name: the mapping must survive it
    assert spec.key(os.path.abspath(uri)) == "data/train/img_0_of_4.npz"
    assert spec.root_key("./ckpt/model-1-2-0.pt") == "ckpt/model-1-2-0.pt"

    monkeypatch.chdir(tmp_path)
    posix = parse(
        {
            "storage": {"storage_root": "root", "storage_options": {"direct": True}},
            "dataset": {"format": "npz"},
            "reader": {"data_loader": "pytorch"},
        }
    )
    assert posix is not None and posix.backend_cfg == {
        "type": "posix",
        "root": str(tmp_path / "root"),
        "direct": True,
    }
    assert posix.key("root/data/train/x.npz") == "data/train/x.npz"
    # plain local_fs without our options: DLIO untouched
    assert parse({"storage": {"storage_type": "local_fs"}, "dataset": {"format": "hdf5"}}) is None


def test_run_dir_follows_output_folder():
    from dlio_ext.dlio.runner import with_run_dir

    assert with_run_dir(["hydra.run.dir=x"], "T") == ["hydra.run.dir=x"]
    (extra,) = with_run_dir(["++workload.output.folder=o"], "T")[1:]
    assert extra == "hydra.run.dir='${oc.select:workload.output.folder,results/dlio-${workload.model}-T}'"


class _MemBackend:
    """Just enough of a Backend for ObjectStorage's listing logic."""

    name = "mem"

    def __init__(self, keys: list[str]):
        self.keys = sorted(keys)

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        seen = set()
        for k in self.keys:
            if not k.startswith(prefix):
                continue
            rest = k[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter)[0] + delimiter
                if common not in seen:
                    seen.add(common)
                    yield common
            else:
                yield k

    def stat(self, key: str):
        from dlio_ext.storage import NotFound, ObjectInfo

        if key not in self.keys:
            raise NotFound(key, key)
        return ObjectInfo(key, 1)


def test_object_storage_answers_dlio_metadata_calls(monkeypatch):
    from dlio_benchmark.common.enumerations import MetadataType

    import dlio_ext.dlio.storage as st
    from dlio_ext.dlio.options import AdapterSpec

    keys = ["d/train/0/a.npz", "d/train/0/b.NPZ", "d/train/1/c.npz", "d/train/1/deep/x.npz", "d/valid/v.npz"]
    spec = AdapterSpec(kind="s3", uri_root="/bkt", backend_cfg={})
    monkeypatch.setattr(st, "backend_for", lambda _spec: _MemBackend(keys))
    storage = object.__new__(st.ObjectStorage)  # skip DLIO's ConfigArguments singleton
    storage.spec = spec
    assert storage.walk_node("d/train") == ["0", "1"]
    assert storage.walk_node("./d/") == ["train", "valid"]
    assert storage.walk_node("d/nothing") == []
    assert storage.get_node("d/train/0") == MetadataType.DIRECTORY
    assert storage.get_node("d/valid/v.npz") == MetadataType.FILE
    assert storage.get_node("d/none") is None
    assert storage.walk_node("d/train/*/*.npz", use_pattern=True) == [
        "/bkt/d/train/0/a.npz",
        "/bkt/d/train/0/b.NPZ",
        "/bkt/d/train/1/c.npz",
    ]
    assert storage.get_uri("d/train/0/a.npz") == "/bkt/d/train/0/a.npz"
