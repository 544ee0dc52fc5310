"""The bad-input catalogue: each case gives one line naming what is wrong, exit 2, no traceback,
and writes nothing outside the run's own results directory."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from helpers import run_cli


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


CASES = {
    # id: (arguments, words the one line must contain)
    "unknown-key": (["workload.objekt_size=5"], ["objekt_size"]),
    "unknown-top-key": (["colour=red"], ["colour"]),
    "not-key-value": (["storage_sweep"], ["key=value"]),
    "wrong-type": (["workload.object_size=big"], ["object_size", "integer"]),
    "negative-size": (["workload.object_size=-4096"], ["object_size", "> 0"]),
    "zero-objects": (["workload.objects_per_rank=0"], ["objects_per_rank"]),
    "unknown-workload": (["workload=nosuch"], ["nosuch", "storage_sweep"]),
    "unknown-storage": (["storage=nfs"], ["nfs", "posix", "s3"]),
    "bad-fsync": (["storage.fsync=always"], ["fsync", "file_and_dir"]),
    "unknown-phase": (["workload.phases=[write,fly]"], ["fly", "read_random"]),
    "bool-wanted": (["storage.direct=maybe"], ["direct"]),
    "cache-fraction-range": (["run.max_cache_fraction=1.5"], ["max_cache_fraction", "[0, 1]"]),
    "kv-durability": (["workload=kv_cache/custom", "workload.durability=always"], ["durability", "fsync"]),
    "store-timeout-zero": (["run.store_timeout_s=0"], ["store_timeout_s", "> 0"]),
    "s3-part-size": (["storage=s3", "storage.bucket=b", "storage.part_size=1024"], ["part_size", "5 MiB"]),
    "s3-endpoint-scheme": (
        ["storage=s3", "storage.bucket=b", "storage.endpoint=localhost:9000"],
        ["endpoint", "http"],
    ),
    "s3-bad-client": (["storage=s3", "storage.bucket=b", "storage.client=curl"], ["client", "obstore"]),
    # a URL that carries credentials is named without them
    "s3-endpoint-with-password": (
        ["storage=s3", "storage.bucket=b", "storage.endpoint=ftp://me:not-a-secret-zzz@host:9000"],
        ["endpoint", "http", "host:9000"],
    ),
    "s3-no-bucket": (["storage=s3", "storage.bucket=null"], ["bucket", "DLIO_EXT_S3_BUCKET"]),
    "s3-half-credentials": (
        ["storage=s3", "storage.bucket=b", "storage.access_key=AKIAFAKE"],
        ["secret_key", "AWS_SECRET_ACCESS_KEY"],
    ),
    "s3-timeout-zero": (
        ["storage=s3", "storage.bucket=b", "storage.read_timeout=0"],
        ["read_timeout", "> 0"],
    ),
    "io-depth-cap": (["workload.io_depth=5000"], ["io_depth=5000", "1024"]),
    "metadata-io-depth-cap": (
        ["workload=metadata/easy", "workload.io_depth=2048"],
        ["io_depth=2048", "1024"],
    ),
    # bigger than any machine's memory: refused before a buffer is allocated
    "io-depth-memory": (
        ["workload.io_depth=1024", "workload.object_size=1073741824"],
        ["workload.io_depth=1024", "workload.object_size=1073741824", "memory available"],
    ),
    "kv-namespace-parent": (
        ["workload=kv_cache/custom", "workload.namespace=../../x"],
        ["namespace", "'../../x'"],
    ),
    "kv-namespace-absolute": (["workload=kv_cache/custom", "workload.namespace=/x"], ["namespace", "'/x'"]),
    "kv-namespace-on-s3": (
        ["workload=kv_cache/custom", "workload.namespace=a/../../x", "storage=s3", "storage.bucket=b"],
        ["namespace", "'a/../../x'"],
    ),
    "kv-storage-tier-negative": (
        ["workload=kv_cache/custom", "workload.storage_tier_bytes=-1"],
        ["storage_tier_bytes=-1", ">= 0"],
    ),
    "checkpoint-folder-parent": (
        ["workload=checkpoint_burst/llama3_8b", "workload.folder=../up"],
        ["folder", "'../up'"],
    ),
    # a tier-0 only where a workload takes one, and one that can work
    "tier0-not-taken": (
        ["workload=metadata/easy", "tier0=nixl"],
        ["metadata", "tier0=nixl", "checkpoint_burst"],
    ),
    "tier0-unknown": (["workload=checkpoint_burst/llama3_8b", "tier0=dram"], ["tier0", "'dram'", "nixl"]),
    "tier0-key-without-tier0": (
        ["workload=checkpoint_burst/llama3_8b", "++tier0.root=x"],
        ["tier0.root", "tier0=<"],
    ),
    "tier0-async": (
        ["workload=checkpoint_burst/llama3_8b", "workload.mode=async", "tier0=nixl"],
        ["mode=async", "tier-0", "sync"],
    ),
    "tier0-too-small": (
        ["workload=checkpoint_burst/llama3_8b", "tier0=nixl", "tier0.pool_bytes=1048576"],
        ["tier-0", "1048576", "tier0_keep=1", "tier0.pool_bytes"],
    ),
    "tier0-restore-bad": (
        ["workload=checkpoint_burst/llama3_8b", "workload.restore_from=peer"],
        ["restore_from", "tier0", "durable"],
    ),
    "s3-prefix-parent": (["storage=s3", "storage.bucket=b", "storage.prefix=a/../b"], ["prefix", "'a/../b'"]),
    "s3-quota-negative": (
        ["storage=s3", "storage.bucket=b", "storage.quota_bytes=-5"],
        ["quota_bytes", ">= 0"],
    ),
    "s3-unreachable": (
        [
            "storage=s3",
            "storage.bucket=b",
            "storage.endpoint=http://127.0.0.1:9",
            "storage.access_key=AKIAFAKE",
            "storage.secret_key=not-a-secret-zzz",
        ],
        ["127.0.0.1:9"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_exit_2(tmp_path, case):
    args, words = CASES[case]
    work = tmp_path / "cwd"
    work.mkdir()
    results = tmp_path / "results"
    before = _snapshot(tmp_path)
    d = run_cli("run", *args, f"run.results_dir={results}", cwd=work, timeout=120)
    assert d.code == 2, (d.code, d.out, d.err)
    lines = [ln for ln in d.err.splitlines() if ln.strip()]
    assert len(lines) == 1, d.err
    assert lines[0].startswith("dlio-ext: error: ")
    assert "Traceback" not in d.err + d.out
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "not-a-secret-zzz" not in d.err + d.out
    # nothing outside the run's own directory (results/<run>/) was created
    created = _snapshot(tmp_path) - before
    assert all(c.startswith("results") for c in created), created


def test_unwritable_results_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    d = run_cli("run", f"run.results_dir={blocker}/sub", cwd=tmp_path)
    assert d.code == 2
    assert d.err.count("\n") == 1 and "results directory" in d.err and "run.results_dir" in d.err


def test_unwritable_storage_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    d = run_cli("run", f"storage.root={blocker}/data", f"run.results_dir={tmp_path}/r", cwd=tmp_path)
    assert d.code == 2
    assert d.err.count("\n") == 1 and "storage root" in d.err


def test_bad_input_under_mpirun_prints_one_line(tmp_path):
    d = run_cli("run", "workload.object_size=-1", f"run.results_dir={tmp_path}", np=2)
    assert d.code != 0
    assert [ln for ln in d.err.splitlines() if "dlio-ext: error" in ln] == [
        "dlio-ext: error: workload.object_size=-1 must be > 0"
    ]


def test_odirect_refused_by_fake_fs(tmp_path, monkeypatch, capsys):
    """No file system on this machine refuses O_DIRECT (tmpfs takes it since Linux 6.6), so the
    refusal is injected: a fake os.open that fails O_DIRECT opens with EINVAL, as FUSE or old tmpfs do."""
    import dlio_ext.storage.posix as posix
    from dlio_ext.cli import main

    real_open = posix.os.open

    def fake_no_direct_open(path, flags, *args):
        if flags & posix._DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(posix.os, "open", fake_no_direct_open)
    code = main(
        ["run", "storage.direct=true", f"storage.root={tmp_path}/data", f"run.results_dir={tmp_path}/r"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "refuses O_DIRECT" in err and "storage.direct=false" in err
    assert not list((tmp_path / "data").iterdir())


def test_run_help_lists_every_workload_preset():
    d = run_cli("run", "--help")
    assert d.code == 0
    for name in ("storage_sweep", "checkpoint_burst/llama3_405b", "metadata/hard", "kv_cache/deepseek_v3"):
        assert name in d.out
