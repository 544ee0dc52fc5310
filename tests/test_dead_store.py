"""A store that is gone: a refused connection says so, a dead server ends the run in bounded time on
every rank, invalid with the reason and with what was left where; the local server keeps to --dir.

Real parts: SeaweedFS started here on its own directory (not the session server, which other tests
share) and killed with SIGKILL mid-run; the real CLI under the real mpirun."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import S3_CLIENTS
from helpers import KV_SMALL, Done, LiveRun

from dlio_ext.s3server import ServerInfo, restart_server, server_env, start_server, stop_server
from dlio_ext.storage import open_backend
from dlio_ext.storage.base import StorageError, Unreachable
from dlio_ext.storage.s3 import S3Backend, S3Settings, boto3_client

SECRET = "SECRETdeadstore0123456789abcdefghijklmn"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _backend(client: str, endpoint: str, **overrides: Any) -> S3Backend:
    cfg: dict[str, Any] = {
        "type": "s3",
        "client": client,
        "endpoint": endpoint,
        "bucket": "b",
        "access_key": "AKIADEADSTORE",
        "secret_key": SECRET,
        "retries": 1,
        "backoff_base": 0.01,
        "backoff_max": 0.02,
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
    }
    cfg.update(overrides)
    b = open_backend(cfg)
    assert isinstance(b, S3Backend)
    return b


# --- classification, both clients ----------------------------------------------------------


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_refused_connection_is_reported_as_refused(client: str) -> None:
    port = _closed_port()
    b = _backend(client, f"http://127.0.0.1:{port}")
    try:
        for call in (
            lambda: b.put("k", b"x"),
            lambda: b.stat("k"),
            lambda: b.get("k", memoryview(bytearray(8))),
        ):
            with pytest.raises(Unreachable) as err:
                call()
            text = str(err.value)
            assert err.value.kind == "unreachable"
            assert f"connection refused by 127.0.0.1:{port}" in text, text
            assert "timed out" not in text and SECRET not in text
        assert b.counters.errors_by_kind == {"unreachable": 3}
        # a streaming writer too (obstore's says only "error sending request": the backend asks)
        w = b.writer("big")
        with pytest.raises(Unreachable, match=f"connection refused by 127.0.0.1:{port}"):
            w.write(b"x" * (1 << 20))
            w.close()
    finally:
        b.close()


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_dns_failure_and_timeout_are_told_apart(client: str) -> None:
    # a name that cannot resolve (.invalid is reserved for that)
    b = _backend(client, "http://no-such-host.invalid:9000")
    try:
        with pytest.raises(Unreachable, match=r"cannot resolve no-such-host\.invalid \(DNS lookup failed\)"):
            b.put("k", b"x")
    finally:
        b.close()
    # a server that accepts connections and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    b = _backend(client, f"http://127.0.0.1:{port}", read_timeout=0.5, retries=0)
    try:
        with pytest.raises(Unreachable) as err:
            b.put("k", b"x")
        assert f"127.0.0.1:{port} timed out" in str(err.value) and "refused" not in str(err.value)
    finally:
        b.close()
        silent.close()


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_retries_stop_at_the_liveness_deadline(client: str) -> None:
    """With retries to spare and long backoffs, a gone store still fails an op by the deadline."""
    b = _backend(client, f"http://127.0.0.1:{_closed_port()}", retries=50, backoff_base=1.0, backoff_max=3.0)
    b.liveness.timeout_s = 1.0
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="connection refused"):
            b.put("k", b"x")
        first = time.monotonic() - t0
        # past the deadline: the next op is tried once, not retried
        with pytest.raises(StorageError, match="after 1 attempt"):
            b.put("k2", b"x")
        assert first < 1.0 + 1.5, first  # the deadline, plus one attempt and scheduling slack
        assert b.liveness.expired()
    finally:
        b.close()


# --- a dead server mid-run -----------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ServerInfo]]:
    d = tmp_path_factory.mktemp("dead-s3")
    try:
        yield d, start_server(d)
    finally:
        stop_server(d)


@pytest.mark.parametrize(("np", "client"), [(1, "obstore"), (2, "boto3")])
def test_killed_server_ends_the_sweep_on_every_rank(
    tmp_path: Path, own_server: tuple[Path, ServerInfo], np: int, client: str
) -> None:
    d, info = own_server
    run = LiveRun(
        [
            "run",
            "storage=s3",
            f"storage.client={client}",
            "storage.prefix=dead",
            f"run.results_dir={tmp_path}",
            "run.progress_interval=0.3",
            "workload.objects_per_rank=4000",
            "workload.object_size=65536",
            "workload.io_depth=2",
        ],
        np,
        server_env(info),
    )
    # some objects written (a published count > 0), then the server dies mid-phase
    run.wait_for(r"\[write\] rank 0: [1-9]\d*/", timeout=120)
    os.kill(info.pid, signal.SIGKILL)
    killed = time.monotonic()
    done = run.finish(timeout=120)
    took = time.monotonic() - killed
    assert took < 120, took  # the bound; the default 20 s timeout makes it ~25 s
    assert done.code == 1, done.err[-3000:]

    s = done.summary()
    assert s["valid"] is False and s["ranks"] == np
    reason = s["invalid_reasons"][0]
    assert reason.startswith("the store is gone: no operation succeeded during phase write"), reason
    assert "connection refused by 127.0.0.1:" in reason and s["store_gone"] == reason
    assert SECRET not in str(s) and info.secret_key not in done.err + done.out + str(s)
    write = s["phases"]["write"]
    assert 0 < write["ops"] < np * 4000
    assert write["error_kinds"].get("unreachable", 0) >= 1
    assert s["counters"]["errors_by_kind"].get("unreachable", 0) >= 1
    assert "read_sequential" not in s["phases"]  # no phase ran after the store was declared gone
    # while it failed, the progress line said so, with no ETA
    failing = [ln for ln in done.err.splitlines() if "the store is failing: no successful op for" in ln]
    assert failing and all("ETA" not in ln and "failed" in ln for ln in failing)
    # the console says so in one line, and what was left where
    assert sum("dlio-ext: run stopped: the store is gone" in ln for ln in done.err.splitlines()) == 1
    cleanup = s["cleanup"]
    assert cleanup["failed"] == write["ops"]  # every object written is still there, and counted
    assert f"s3://{info.bucket}/dead/ at {info.endpoint}" == cleanup["where"]
    assert 0 < len(cleanup["left_behind"]) <= 20
    assert f"cleanup left {cleanup['failed']} item(s) behind in {cleanup['where']}" in done.err

    # the keys it lists really are there, once the server is back
    restart_server(d)
    s3 = boto3_client(S3Settings.from_config({"type": "s3", "prefix": ""}, server_env(info)))
    for key in cleanup["left_behind"][:5]:
        assert s3.head_object(Bucket=info.bucket, Key=f"dead/{key}")["ContentLength"] == 65536


KV = [
    *KV_SMALL,
    "workload.users=2",
    "workload.requests_per_user=100000",
    "workload.duration_s=600",
]
BURST = [
    "workload=checkpoint_burst/custom",
    "workload.bytes_per_rank=8388608",
    "workload.chunk_size=1048576",
    "workload.buffer_pool_bytes=4194304",
    "workload.checkpoints=200",
    "workload.restores=1",
    "workload.compute_seconds=0.2",
]


@pytest.mark.parametrize(
    ("workload", "args", "started"),
    [
        ("kv_cache", KV, r"kv_cache .* rank\(s\)"),
        ("checkpoint_burst", BURST, r"checkpoint 2/200 written by rank 0"),
    ],
)
def test_killed_server_ends_self_timed_workloads(
    tmp_path: Path, own_server: tuple[Path, ServerInfo], workload: str, args: list[str], started: str
) -> None:
    """kv_cache and checkpoint_burst time their ops themselves: they too stop, on both ranks."""
    _d, info = own_server
    run = LiveRun(
        ["run", *args, "storage=s3", f"storage.prefix={workload}", f"run.results_dir={tmp_path}"],
        2,
        server_env(info),
    )
    run.wait_for(started, timeout=120)
    time.sleep(1.0)  # some data down
    os.kill(info.pid, signal.SIGKILL)
    killed = time.monotonic()
    done = run.finish(timeout=120)
    assert time.monotonic() - killed < 120
    assert done.code == 1, done.err[-3000:]
    s = done.summary()
    assert s["valid"] is False and s["ranks"] == 2
    assert s["store_gone"].startswith(f"the store is gone: no operation succeeded during {workload}"), s[
        "store_gone"
    ]
    assert "unreachable" in s["store_gone"] and "connection refused by 127.0.0.1:" in s["store_gone"]
    assert s["phases"], "the phases measured before the store went are kept"
    if workload == "kv_cache":
        # a closed-loop user with a duration had its next request due when the store went: planned,
        # never served, so the harness calls the request phase unfinished
        req = s["phases"]["request"]
        assert req["ops"] < req["planned_ops"], req
        assert any(r.startswith("phase(s) not finished: request") for r in s["invalid_reasons"]), s[
            "invalid_reasons"
        ]
    assert s["counters"]["errors_by_kind"].get("unreachable", 0) >= 1
    cleanup = s["cleanup"]
    assert cleanup["failed"] > 0 and cleanup["left_behind"], cleanup
    assert cleanup["where"] == f"s3://{info.bucket}/{workload}/ at {info.endpoint}"
    assert "dlio-ext: run stopped: the store is gone" in done.err
    assert f"cleanup left {cleanup['failed']} item(s) behind" in done.err


# --- the local server keeps to its directory -----------------------------------------------


@pytest.mark.parametrize("bad", ["/proc/nope", "a-file"])
def test_s3_server_bad_dir_is_one_line(tmp_path: Path, cli: Callable[..., Done], bad: str) -> None:
    if bad == "a-file":
        bad = str(tmp_path / "a-file")
        Path(bad).write_text("")
    d = cli("s3-server", "start", "--dir", bad, timeout=60)
    assert d.code == 2 and d.out == ""
    lines = d.err.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and "Traceback" not in d.err, d.err


def _weedish(names: set[str]) -> set[str]:
    return {n for n in names if "weed" in n.lower() or "seaweed" in n.lower()}


def test_s3_server_writes_nothing_outside_its_dir(tmp_path: Path, cli: Callable[..., Done]) -> None:
    """Logs, temporary files and local sockets in --dir; weed's gRPC sockets, whose /tmp path is
    compiled in, are the one exception while it runs, and gone once it is stopped."""
    tmps = {Path(tempfile.gettempdir()), Path("/tmp")}
    before = {t: set(os.listdir(t)) for t in tmps}
    d = tmp_path / "srv"
    pid, ports = 0, set()
    try:
        started = cli("s3-server", "start", "--dir", str(d), timeout=60)
        assert started.code == 0, started.err
        pid = int((d / "server.pid").read_text())
        ports = {int(p) for p in json.loads((d / "server.json").read_text())["ports"].values()}
        assert list((d / "logs").glob("weed*INFO*")), sorted(os.listdir(d))
        for t in tmps:
            # another test's server may start meanwhile: only entries naming our ports or pid count
            ours = {n for n in _weedish(set(os.listdir(t)) - before[t]) if _names(n, pid, ports)}
            assert all(re.fullmatch(r"seaweedfs-[a-z0-9]+-grpc-\d+\.sock", n) for n in ours), (t, ours)
        assert cli("s3-server", "stop", "--dir", str(d)).code == 0
    finally:
        stop_server(d)
    for t in tmps:
        left = {n for n in _weedish(set(os.listdir(t)) - before[t]) if _names(n, pid, ports)}
        assert not left, (t, left)


def _names(entry: str, pid: int, ports: set[int]) -> bool:
    return any(re.search(rf"\b{x}\b", entry) for x in (pid, *ports))
