"""`dlio-ext s3-server start|status|stop` through the real CLI, on a real SeaweedFS."""

from __future__ import annotations

import shlex
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Done

from dlio_ext.errors import UsageError
from dlio_ext.s3server import find_weed, stop_server
from dlio_ext.storage.s3 import S3Settings, boto3_client


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie waiting for a parent that is not us."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _client(env: dict[str, str], secret: str | None = None) -> Any:
    return boto3_client(S3Settings.from_config({"type": "s3", "prefix": "", "secret_key": secret}, env))


def test_start_status_stop_through_the_cli(tmp_path: Path, cli: Callable[..., Done]) -> None:
    from botocore.exceptions import ClientError

    d = tmp_path / ".s3-server"  # the default directory, under the working directory
    try:
        started = cli("s3-server", "start", cwd=tmp_path, timeout=60)
        assert started.code == 0, started.err
        lines = started.out.splitlines()
        assert len(lines) == 1 and lines[0].startswith("export AWS_ENDPOINT_URL=http://127.0.0.1:")
        env = dict(word.split("=", 1) for word in shlex.split(lines[0])[1:])
        assert set(env) == {
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "DLIO_EXT_S3_BUCKET",
        }
        assert env["DLIO_EXT_S3_BUCKET"] == "dlio-ext" and env["AWS_REGION"] == "us-east-1"

        env_file = d / "env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert env_file.read_text().strip() == lines[0]
        pid = int((d / "server.pid").read_text())
        assert not _gone(pid)
        assert (d / "weed.log").exists()

        status = cli("s3-server", "status", "--dir", str(d))
        assert status.code == 0 and f"pid {pid}" in status.out and env["AWS_ENDPOINT_URL"] in status.out
        again = cli("s3-server", "start", "--dir", str(d))
        assert again.code == 0 and again.out == started.out and "already running" in again.err

        # auth is enforced: the right keys work, a wrong secret and no signature get 403
        good = _client(env)
        good.put_object(Bucket="dlio-ext", Key="probe", Body=b"1")
        with pytest.raises(ClientError) as denied:
            _client(env, secret="not-" + env["AWS_SECRET_ACCESS_KEY"]).get_object(
                Bucket="dlio-ext", Key="probe"
            )
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{env['AWS_ENDPOINT_URL']}/dlio-ext/probe", timeout=5)
        assert anonymous.value.code == 403

        stopped = cli("s3-server", "stop", "--dir", str(d))
        assert stopped.code == 0 and f"stopped SeaweedFS pid {pid}" in stopped.err
        assert _gone(pid)
        assert not (d / "server.pid").exists()
        after = cli("s3-server", "status", "--dir", str(d))
        assert after.code == 1 and "stopped" in after.out
        assert cli("s3-server", "stop", "--dir", str(d)).code == 0  # stopping twice is fine
    finally:
        stop_server(d)


def test_cli_refuses_unknown_action(cli: Callable[..., Done]) -> None:
    d = cli("s3-server", "restart")
    assert d.code == 2 and "invalid choice" in d.err


def test_missing_weed_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="SeaweedFS not found; run scripts/setup.sh"):
        find_weed()
