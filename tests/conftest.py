"""Shared fixtures, by section. Add new ones under a section of their own.

- CLI: run `python -m dlio_ext.cli ...` as a subprocess.
- Local S3 server: one real SeaweedFS for the whole session, always stopped at the end.
- A second real S3 server: moto in server mode, for the session, stopped by its own pid.
- S3 storage configs: `storage` dicts for `open_backend`, one prefix per test, for either client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import MOTO_BUCKET, MOTO_KEY, MOTO_SECRET, Done, run_cli

from dlio_ext.s3server import ServerInfo, server_env, start_server, stop_server
from dlio_ext.storage import Backend, open_backend
from dlio_ext.storage.s3 import S3Settings, boto3_client

# --- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> Callable[..., Done]:
    """`cli("s3-server", "status", cwd=..., env=...)` -> Done(code, out, err)."""
    return run_cli


# --- local S3 server (SeaweedFS) ------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> ServerInfo:
    """One authenticated SeaweedFS for the session; stopped at the end whatever happened."""
    d: Path = tmp_path_factory.mktemp("s3-server")
    # registered before starting, so a server that fails half-way through start-up is stopped too
    request.addfinalizer(lambda: stop_server(d))
    return start_server(d)


@pytest.fixture(scope="session")
def s3_admin(s3_server: ServerInfo) -> Any:
    """A plain boto3 client on the session server, for looking behind a backend's back (built as
    the backend builds its own: one attempt a request, no CRC checksums)."""
    return boto3_client(S3Settings.from_config({"type": "s3", "prefix": ""}, server_env(s3_server)))


# --- a second S3 server (moto) -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`moto_server` on a loopback port, with the bucket MOTO_BUCKET (keys MOTO_KEY/MOTO_SECRET,
    which moto does not check); stopped (by its own pid) at the end. Yields its endpoint."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        pytest.skip("moto server mode not installed: pip install 'moto[server]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        cfg = {"endpoint": endpoint, "bucket": MOTO_BUCKET, "prefix": "", "access_key": MOTO_KEY,
               "secret_key": MOTO_SECRET}  # fmt: skip
        client = boto3_client(S3Settings.from_config(cfg, env={}))
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=MOTO_BUCKET)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {log}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# --- S3 storage configs ---------------------------------------------------------------------

S3_CLIENTS = ("obstore", "boto3")


def unique_prefix(tag: str = "t") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_cfg_for(s3_server: ServerInfo) -> Callable[..., dict[str, Any]]:
    """Factory: `s3_cfg_for("boto3", part_size=..., ...)` -> a storage config on the session
    server, under a fresh prefix unless one is given. Credentials are passed in the config, so
    the environment of the test run does not matter."""

    def make(client: str = "obstore", **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "type": "s3",
            "client": client,
            "endpoint": s3_server.endpoint,
            "bucket": s3_server.bucket,
            "prefix": unique_prefix(),
            "region": s3_server.region,
            "path_style": True,
            "access_key": s3_server.access_key,
            "secret_key": s3_server.secret_key,
            "part_size": 5 << 20,
            "concurrency": 4,
            "checksum": "when_required",
            "retries": 2,
            "backoff_base": 0.01,
            "backoff_max": 0.05,
            "connect_timeout": 2.0,
            "read_timeout": 30.0,
        }
        cfg.update(overrides)
        return cfg

    return make


@pytest.fixture(params=S3_CLIENTS)
def s3_client(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once per S3 client."""
    return str(request.param)


@pytest.fixture
def s3_cfg(s3_cfg_for: Callable[..., dict[str, Any]], s3_client: str) -> dict[str, Any]:
    return s3_cfg_for(s3_client)


@pytest.fixture
def s3_backend(s3_cfg: dict[str, Any]) -> Iterator[Backend]:
    backend = open_backend(s3_cfg)
    try:
        yield backend
    finally:
        backend.close()
