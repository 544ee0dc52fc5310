"""storage=nixl's file and obj media: real files through NIXL's POSIX plugin, the real SeaweedFS
(session fixture) through its OBJ plugin, the real CLI under the real mpirun. Nothing is faked."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import unique_prefix
from helpers import run_cli

from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage import open_backend
from dlio_ext.storage.base import Backend, NotFound, StorageError

MIB = 1 << 20
#: sizes around the 4 KiB block and the 8 MiB staging chunk: empty, tiny, aligned, unaligned
SIZES = (0, 1, 4096, 10_000, MIB + 3, 9 * MIB + 5)


def _data(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


#: what load_nixl puts in this process's environment (UCX_LOG_FILE: a log under /tmp, no run dir)
NIXL_ENV = ("NIXL_LOG_LEVEL", "UCX_MODULES", "UCX_PROTO_INFO", "UCX_LOG_FILE")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, Any]], Backend]]:
    """Open nixl backends from storage configs (check() run first), closing them all at the end.
    The environment NIXL was loaded with is taken back at the end: the CLI runs of later tests
    inherit os.environ, and would write their UCX logs to /tmp instead of their run directory."""
    for var in NIXL_ENV:  # monkeypatch restores what it set, absent variables included
        monkeypatch.setenv(var, os.environ.get(var, ""))
        if not os.environ[var]:
            monkeypatch.delenv(var)
    backends: list[Backend] = []

    def make(cfg: dict[str, Any]) -> Backend:
        b = open_backend({"type": "nixl", **cfg})
        backends.append(b)
        b.check()
        return b

    yield make
    for b in backends:
        b.close()


def _obj_cfg(s3: ServerInfo, **over: Any) -> dict[str, Any]:
    cfg = {
        "medium": "obj",
        "endpoint": s3.endpoint,
        "bucket": s3.bucket,
        "region": s3.region,
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "prefix": unique_prefix("nixl"),
    }
    return cfg | over


def _round_trips(b: Backend) -> None:
    """put/get/get_range of every size, from and into registered (alloc) and plain buffers."""
    for i, n in enumerate(SIZES):
        data = _data(n, i)
        key = f"d/obj{i}"
        if i % 2 or not n:
            b.put(key, data)  # a caller's plain bytes: staged into registered memory
        else:
            src = b.alloc(n)
            src[:] = data
            b.put(key, src)  # the backend's own memory: moved as it is
        assert b.stat(key).size == n
        into = b.alloc(n + 8192)
        assert b.get(key, into) == n and bytes(into[:n]) == data, (key, n)
        plain = bytearray(n + 1)
        assert b.get(key, memoryview(plain)) == n and bytes(plain[:n]) == data
        for off, want in ((0, 5000), (100, 5000), (4096, 4096), (max(0, n - 10), 5000), (n, 10), (n + 5, 10)):
            buf = b.alloc(want) if off % 3 else memoryview(bytearray(want))
            got = b.get_range(key, off, buf)
            expect = data[off : off + want]
            assert got == len(expect) and bytes(buf[:got]) == expect, (key, n, off, want, got)
    with pytest.raises(StorageError, match="do not fit"):
        b.get("d/obj4", b.alloc(100))


def _listing_and_delete(b: Backend) -> None:
    keys = sorted(f"d/obj{i}" for i in range(len(SIZES)))
    assert sorted(b.list("d/")) == keys
    for k in keys:
        b.delete(k)
    assert list(b.list("d/")) == []
    with pytest.raises(NotFound):
        b.stat(keys[0])
    with pytest.raises(NotFound):
        b.get(keys[0], b.alloc(10))


def _aborted(b: Backend, key: str) -> None:
    """A writer that fails half-way leaves nothing behind."""
    with pytest.raises(RuntimeError), b.writer(key) as w:
        w.write(_data(3 * MIB, 9))
        raise RuntimeError("the caller failed")
    with pytest.raises(NotFound):
        b.stat(key)


def _streamed(b: Backend, key: str) -> int:
    chunks = [_data(n, 50 + n) for n in (MIB, 4097, 3 * MIB, 100, 8 * MIB)]
    with b.writer(key) as w:
        for c in chunks:
            buf = bytearray(c)
            w.write(buf)
            buf[:] = bytes(len(buf))  # the writer let go of the chunk when write returned
    whole = b"".join(chunks)
    into = b.alloc(len(whole))
    assert b.get(key, into) == len(whole) and bytes(into) == whole
    return len(whole)


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_file_medium_verbs(tmp_path: Path, opened, direct: bool) -> None:
    root = tmp_path / "data"
    b = opened({"medium": "file", "root": str(root), "direct": direct})
    _round_trips(b)
    # the bytes really are in the files, at their sizes
    for i, n in enumerate(SIZES):
        assert (root / f"d/obj{i}").read_bytes() == _data(n, i)
    _listing_and_delete(b)
    _aborted(b, "s/aborted")
    streamed = _streamed(b, "s/stream")
    assert (root / "s/stream").stat().st_size == streamed == 12 * MIB + 4197
    # the data moved through NIXL's POSIX plugin, both ways
    facts = b.describe()
    assert facts["nixl_plugins"] == {"read": ["POSIX"], "write": ["POSIX"]}, facts


def test_file_medium_errors(tmp_path: Path, opened) -> None:
    root = tmp_path / "data"
    b = opened({"medium": "file", "root": str(root)})
    with pytest.raises(NotFound, match="no such file"):
        b.get("missing", b.alloc(10))
    with pytest.raises(NotFound):
        b.get_range("missing", 0, b.alloc(10))
    for bad in ("../escape", "/abs/path", "a/../../escape"):
        with pytest.raises(StorageError, match="outside storage root"):
            b.put(bad, b"x")
    assert not (tmp_path / "escape").exists()


def test_file_medium_fsyncs_are_counted(tmp_path: Path, opened) -> None:
    b = opened({"medium": "file", "root": str(tmp_path / "data"), "fsync": "file"})
    assert b.counters.fsync_calls == 0  # the check's probe round trip is no durable write
    for i in range(3):
        b.put(f"k{i}", b"y" * 5000)
    with b.writer("w") as w:
        w.write(b"z" * 10)
    assert b.counters.fsync_calls == 4 and b.counters.fsync_seconds > 0
    assert b.describe()["durability_source"] == "user"


def test_obj_medium_verbs(s3_server: ServerInfo, s3_admin, opened) -> None:
    cfg = _obj_cfg(s3_server)
    b = opened(cfg)
    _round_trips(b)
    # the objects really are in the bucket, under the prefix, byte for byte
    for i, n in enumerate(SIZES):
        body = s3_admin.get_object(Bucket=s3_server.bucket, Key=f"{cfg['prefix']}/d/obj{i}")["Body"].read()
        assert body == _data(n, i)
    _listing_and_delete(b)
    # the s3 retry loop under the medium counts in the backend's tallies (what results read)
    assert b.counters.errors_by_kind.get("not_found", 0) >= 2, b.counters
    _aborted(b, "s/aborted")
    _streamed(b, "s/stream")
    facts = b.describe()
    assert facts["nixl_plugins"] == {"read": ["OBJ"], "write": ["OBJ"]}, facts
    text = repr(facts)
    assert s3_server.secret_key not in text and s3_server.access_key not in text


def _sweep(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    return run_cli(
        "run",
        "storage=nixl",
        *args,
        f"run.results_dir={tmp_path}",
        "workload.objects_per_rank=6",
        "workload.object_size=1000003",  # not a multiple of 4 KiB: the O_DIRECT tail too
        "workload.io_depth=2",
        "workload.phases=[write,read_sequential,read_random,stat,delete]",
        np=2,
        env=env,
    )


def _valid_sweep(d, plugin: str) -> dict[str, Any]:
    assert d.code == 0, (d.out, d.err)
    s = d.summary()
    assert s["valid"] and s["ranks"] == 2, s.get("invalid_reasons")
    for phase in ("write", "read_sequential", "read_random", "stat", "delete"):
        p = s["phases"][phase]
        assert p["ops"] == 12 and p["errors"] == 0, (phase, p)
    # every object was read back whole and verified (storage_sweep's verify is on by default)
    assert s["phases"]["read_random"]["bytes"] == 12 * 1000003
    assert s["storage"]["nixl_plugins"] == {"read": [plugin], "write": [plugin]}, s["storage"]
    return s


@pytest.mark.parametrize("direct", ["false", "true"])
def test_sweep_on_file_medium(tmp_path: Path, direct: str) -> None:
    root = tmp_path / "files"
    d = _sweep(tmp_path, "storage.medium=file", f"storage.root={root}", f"storage.direct={direct}")
    s = _valid_sweep(d, "POSIX")
    assert s["storage"]["medium"] == "file" and s["storage"]["direct"] is (direct == "true")


def test_sweep_on_obj_medium_keeps_secrets(tmp_path: Path, s3_server: ServerInfo, s3_admin) -> None:
    prefix = unique_prefix("nixl-sweep")
    d = _sweep(tmp_path, "storage.medium=obj", f"storage.prefix={prefix}", env=server_env(s3_server))
    s = _valid_sweep(d, "OBJ")
    assert s["storage"]["medium"] == "obj"
    # the delete phase went through boto3: nothing is left under the prefix
    assert s3_admin.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix).get("KeyCount", 0) == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files) and any(p.name == "run.log" for p in files)
    for p in files:
        text = p.read_bytes()
        assert s3_server.secret_key.encode() not in text, p
        assert s3_server.access_key.encode() not in text, p
    assert s3_server.secret_key not in d.out + d.err


@pytest.mark.parametrize("case", ["endpoint", "bucket"])
def test_obj_wrong_endpoint_or_bucket_is_one_line(
    tmp_path: Path, s3_server: ServerInfo, s3_admin, case
) -> None:
    bucket = f"no-such-bucket-{os.getpid()}"
    arg = "storage.endpoint=http://127.0.0.1:1" if case == "endpoint" else f"storage.bucket={bucket}"
    d = run_cli(
        "run",
        "storage=nixl",
        "storage.medium=obj",
        arg,
        f"run.results_dir={tmp_path}",
        env=server_env(s3_server),
    )
    assert d.code == 2, (d.out, d.err)
    lines = [ln for ln in d.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlio-ext: error: "), d.err
    assert "Traceback" not in d.out + d.err
    if case == "endpoint":
        assert "127.0.0.1:1" in lines[0], lines[0]
    else:
        assert bucket in lines[0] and "does not exist" in lines[0], lines[0]
        # nothing was written: SeaweedFS would have made the bucket on a first PUT
        names = [x["Name"] for x in s3_admin.list_buckets()["Buckets"]]
        assert bucket not in names
    assert s3_server.secret_key not in d.out + d.err
    for p in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert s3_server.secret_key.encode() not in p.read_bytes(), p


def test_ucx_log_directory_is_made(tmp_path: Path) -> None:
    """UCX aborts its process (SIGABRT, no message) when it cannot open its log file: a run
    directory that does not exist yet is made, in a fresh process (UCX reads the path once)."""
    import subprocess
    import sys

    run_dir = tmp_path / "not" / "yet"
    code = (
        "from dlio_ext.storage import open_backend\n"
        f"b = open_backend({{'type': 'nixl', 'medium': 'memory', 'pool_bytes': 1 << 20}}, {str(run_dir)!r})\n"
        "b.put('k', b'x' * 4096); assert b.get('k', bytearray(4096)) == 4096; b.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in NIXL_ENV}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert list(run_dir.glob("nixl-ucx-rank*.log")), sorted(os.listdir(tmp_path))
