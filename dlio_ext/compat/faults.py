"""`dlio-ext s3-faults`: a storage_sweep through faults in front of, or done to, a real store.

dlio-ext s3-faults [--scenario proxy|restart|wrong-credentials|all] [--endpoint URL | --local | --server-dir D]
                   [--bucket B] [--prefix P] [--slowdown 0.1] [--reset 0.05]
                   [--latency 0.2 --latency-ms 50] [--seed 1] [--client boto3|obstore] [--out DIR]
                   [--outage 1 --restart-retries 30 --restart-backoff-base 0.1 --restart-backoff-max 1]

Scenarios (default all; docs/s3-compat.md): `proxy` (below); `restart`: the store, a SeaweedFS
this tool started, is stopped a quarter into the writes and restarted on the same ports, data and
keys (s3server.restart_server) while the sweep retries through a pass-through proxy that records
every request, which gives the outage, the requests failed in it, the time to recover and the
exact writes acknowledged before the stop; `wrong-credentials`: the sweep with a wrong secret must
exit 2 with one line and write nothing.

Proxy scenario:

The proxy listens on 127.0.0.1 only. After the first --spare requests (the sweep's start-up
check, which does not retry as much as the data path), each request is, at random (seeded): answered 503 SlowDown
without reaching the store; cut with a TCP reset, before it reaches the store or after the store
applied it (the ambiguous case a client must survive by retrying idempotently); delayed; or
forwarded untouched; with --corrupt, a GET answer may get a flipped byte in transit (to show the
sweep's verification catches it). The Host header is forwarded as sent, so SigV4 signatures still verify.

Built on Python's http.server and http.client: no dependency, and a whole request is buffered
before it is forwarded, which is all a small sweep on loopback needs (not a production proxy).

The sweep (write, then verified reads through the faults) runs as a subprocess; afterwards the
store is asked directly, bypassing the proxy, whether every write the sweep counted as done is
there. The report: faults injected by kind, the client's retries, failed operations, and whether
all acknowledged writes were intact (read back and verified by the sweep's stamp and hash).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dlio_ext.compat.runner import guard, make_client, make_target, scrub
from dlio_ext.errors import UsageError
from dlio_ext.s3server import DEFAULT_BUCKET, restart_server, server_status, start_server, stop_server
from dlio_ext.storage.base import VerifyError
from dlio_ext.storage.s3 import redact_url

_RULE_CODES = {503: "SlowDown", 500: "InternalError", 429: "TooManyRequests", 400: "InvalidRequest"}
KINDS = ("slowdown", "reset_before", "reset_after", "latency", "corrupt")
_SLOWDOWN = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class FaultProxy:
    """A loopback HTTP proxy in front of `upstream` that injects faults into a fraction of requests."""

    def __init__(
        self,
        upstream: str,
        slowdown: float = 0.0,
        reset: float = 0.0,
        latency: float = 0.0,
        latency_ms: float = 50.0,
        seed: int = 1,
        spare: int = 0,
        corrupt: float = 0.0,
        rule: Callable[[int, str, str], int | None] | None = None,
    ):
        """`rule(n, method, path)`, when given, sees the n-th request (from 0) and returns an HTTP
        status to fail it with (an S3 error body of the matching code), or None to go on."""
        if sum((slowdown, reset, latency, corrupt)) > 1 or min(slowdown, reset, latency, corrupt) < 0:
            raise UsageError("fault fractions must be >= 0 and add up to at most 1")
        self.upstream = urlsplit(upstream)
        self.rates = (slowdown, reset / 2, reset / 2, latency, corrupt)
        self.latency_s = latency_ms / 1000
        self.spare = spare  # the first `spare` requests pass untouched
        self.requests = 0
        self.injected = dict.fromkeys(KINDS, 0)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        #: every forwarded request: (monotonic time of the answer, method, path, status or None
        #: when the store could not be reached)
        self.timeline: list[tuple[float, str, str, int | None]] = []
        self.rule = rule
        self.ruled_seen = 0  # requests `rule` has seen, and how many it failed
        self.ruled_failed = 0
        self.trigger_at = 0  # > 0: set `triggered` when this many requests have come in
        self.triggered = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status = proxy._ruled(self.command, self.path)
                if status is not None:
                    code = _RULE_CODES.get(status, "Fault")
                    self._reply(
                        status,
                        [("Content-Type", "application/xml")],
                        f"<Error><Code>{code}</Code></Error>".encode(),
                    )
                    return
                fault = proxy._draw()
                if fault == "slowdown":
                    self._reply(503, [("Content-Type", "application/xml")], _SLOWDOWN)
                    return
                if fault == "reset_before":
                    self._reset()
                    return
                if fault == "latency":
                    time.sleep(proxy.latency_s)
                try:
                    status, headers, data, size = proxy._forward(self.command, self.path, self.headers, body)
                except (OSError, http.client.HTTPException):  # the store is down: so is the connection
                    proxy._note(self.command, self.path, None)
                    self._reset()
                    return
                proxy._note(self.command, self.path, status)
                if fault == "reset_after":  # the store applied it; the client never hears so
                    self._reset()
                    return
                if fault == "corrupt":
                    if self.command == "GET" and status in (200, 206) and data:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]  # one flipped byte in transit
                    else:  # nothing to corrupt: not a fault after all
                        proxy._uncount(fault)
                self._reply(status, headers, data, size)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _reply(
                self, status: int, headers: list[tuple[str, str]], body: bytes, size: int = -1
            ) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if size < 0 else size))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _ruled(self, method: str, path: str) -> int | None:
        if self.rule is None:
            return None
        with self._lock:
            n = self.ruled_seen
            self.ruled_seen += 1
        status = self.rule(n, method, path)
        if status is not None:
            with self._lock:
                self.ruled_failed += 1
        return status

    def _note(self, method: str, path: str, status: int | None) -> None:
        with self._lock:
            self.timeline.append((time.monotonic(), method, path, status))

    def _draw(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.requests == self.trigger_at:
                self.triggered.set()
            if self.requests <= self.spare:
                return None
            x = self._rng.random()
            for kind, rate in zip(KINDS, self.rates, strict=True):
                if x < rate:
                    self.injected[kind] += 1
                    return kind
                x -= rate
        return None

    def _uncount(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] -= 1

    def _forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, int]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() != "expect"}
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            # a HEAD answer has no body but tells the object's size in Content-Length
            size = int(resp.getheader("Content-Length") or 0) if method == "HEAD" else len(data)
            skip = {"content-length", "transfer-encoding", "connection"}
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in skip], data, size
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "injected": dict(self.injected)}

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _child_env(
    endpoint: str, target: Any, env: Mapping[str, str], secret: str | None = None
) -> dict[str, str]:
    s = target.settings
    child_env = dict(env)
    child_env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=s.access_key.reveal() if s.access_key else "",
        AWS_SECRET_ACCESS_KEY=secret if secret is not None else s.secret_key.reveal() if s.secret_key else "",
        DLIO_EXT_S3_BUCKET=s.bucket,
        AWS_REGION=s.region,
    )
    return child_env


def _sweep_cmd(
    phases: str,
    args: argparse.Namespace,
    prefix: str,
    out: Path,
    retry: tuple[int, float, float],
    objects: int,
) -> list[str]:
    retries, base, cap = retry
    return [
        sys.executable, "-m", "dlio_ext.cli", "run", "workload=storage_sweep", "storage=s3",
        f"storage.client={args.client}", f"storage.prefix={prefix}", f"storage.retries={retries}",
        f"storage.backoff_base={base}", f"storage.backoff_max={cap}", f"run.seed={args.seed}",
        f"workload.objects_per_rank={objects}", f"workload.object_size={args.object_size}",
        f"workload.io_depth={args.io_depth}", f"workload.phases=[{phases}]", "workload.verify=true",
        "workload.read_shift=0", f"run.results_dir={out / 'sweep'}",
        # a planned outage is not a dead store: the sweep must outlast it to show the recovery
        f"run.store_timeout_s={max(20.0, getattr(args, 'outage', 0.0) + 30.0)}",
    ]  # fmt: skip


def _sweep(
    endpoint: str,
    phases: str,
    target: Any,
    args: argparse.Namespace,
    prefix: str,
    out: Path,
    env: Mapping[str, str],
    retry: tuple[int, float, float] | None = None,
    objects: int | None = None,
) -> dict[str, Any]:
    """One storage_sweep subprocess on `endpoint` (the proxy, or the store itself); its summary."""
    cmd = _sweep_cmd(phases, args, prefix, out, retry or (args.retries, 0.01, 0.2), objects or args.objects)
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=_child_env(endpoint, target, env), timeout=args.timeout
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("results: ")]
    if not lines:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        raise UsageError(
            f"the storage_sweep did not finish (exit {done.returncode}): {scrub(last, target.secrets)}"
        )
    summary = json.loads((Path(lines[-1].removeprefix("results: ")) / "summary.json").read_text())
    summary["exit_code"] = done.returncode
    return summary


def _ops(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per phase: successful ops, failed ops and the failures by kind."""
    return {
        p: {"ops": r.get("ops", 0), "errors": r.get("errors", 0), "error_kinds": r.get("error_kinds", {})}
        for p, r in summary.get("phases", {}).items()
    }


def _remove(client: Any, bucket: str, prefix: str) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def _read_back_keys(client: Any, bucket: str, prefix: str, seed: int, size: int) -> dict[str, bool]:
    """Every object under prefix, read directly: whether it is intact (as storage_sweep checks)."""
    from dlio_ext.storage.buffers import aligned_buffer
    from dlio_ext.workloads.content import HeadStamped
    from dlio_ext.workloads.storage_sweep import object_content, object_of

    contents: dict[int, HeadStamped] = {}
    verdicts: dict[str, bool] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for key in [o["Key"] for page in pages for o in page.get("Contents", [])]:
        found = object_of(key)
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if found is None:
            verdicts[key] = False
            continue
        rank, index = found
        if rank not in contents:
            contents[rank] = object_content(seed, rank, size, aligned_buffer)
        verdicts[key] = contents[rank].intact(data, rank, index)
    return verdicts


def _read_back(client: Any, bucket: str, prefix: str, seed: int, size: int) -> dict[str, Any]:
    """Read every object under prefix directly; how many are intact (as storage_sweep checks)."""
    verdicts = _read_back_keys(client, bucket, prefix, seed, size)
    intact = sum(verdicts.values())
    return {"objects": len(verdicts), "intact": intact, "corrupt": len(verdicts) - intact}


def run_faults(target: Any, args: argparse.Namespace, out: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Sweep through the faults, then read everything back from the store directly and verify it."""
    base = f"{target.user_prefix}/" if target.user_prefix else ""
    prefix = f"{base}dlio-ext-faults-{secrets.token_hex(6)}"
    bucket, upstream = target.settings.bucket, str(target.settings.endpoint)
    client = make_client(target)
    guard(client, target)  # the same refusal as s3-compat: a shared bucket needs --prefix
    rates = (args.slowdown, args.reset, args.latency, args.latency_ms)
    proxy = FaultProxy(upstream, *rates, seed=args.seed, spare=args.spare, corrupt=args.corrupt)
    try:
        with proxy:
            summary = _sweep(
                proxy.endpoint, "write,read_sequential,read_random", target, args, prefix, out, env
            )
        faulted = _ops(summary)
        # every object the store holds, read straight from it (not through the faults) and
        # checked against what the sweep wrote: its stamp (rank, index), its size, its body hash
        direct = _read_back(client, bucket, prefix + "/", args.seed, args.object_size)
    finally:
        _remove(client, bucket, prefix + "/")
    acknowledged = faulted["write"]["ops"]
    corrupt_reads = sum(
        faulted[p]["error_kinds"].get(VerifyError.kind, 0) for p in ("read_sequential", "read_random")
    )
    return {
        "endpoint": redact_url(upstream),
        "bucket": bucket,
        "prefix": prefix,
        "client": args.client,
        "retries_allowed": args.retries,
        "fault_rates": {"slowdown": args.slowdown, "reset": args.reset, "latency": args.latency},
        "proxy": proxy.stats(),
        "counters": summary.get("counters", {}),
        "sweep_valid": summary.get("valid"),
        "through_faults": faulted,
        "read_back_directly": direct,
        "acknowledged_writes": acknowledged,
        "stored_objects": direct["objects"],
        "corrupt_reads": corrupt_reads,  # reads through the faults that the sweep's verify caught
        "corrupt_in_store": direct["corrupt"],
        # every acknowledged write is in the store, and everything there is what was written
        "intact": direct["corrupt"] == 0 and direct["intact"] >= acknowledged,
    }


run_proxy = run_faults


def _key_of(path: str, bucket: str) -> str:
    """The object key of a path-style request path (/bucket/key?query)."""
    return unquote(urlsplit(path).path).removeprefix(f"/{bucket}/")


def _restart_timeline(
    timeline: list[tuple[float, str, str, int | None]], t_stop: float, t_restart: float
) -> dict[str, Any]:
    """What the requests through the proxy saw around the outage (times relative to the stop)."""

    def ok(status: int | None) -> bool:
        return status is not None and status < 500

    failed = [e for e in timeline if t_stop <= e[0] and not ok(e[3])]
    after = [e[0] for e in timeline if e[0] >= t_restart and ok(e[3])]
    first_ok = min(after) if after else None
    first_fail = min(e[0] for e in failed) if failed else None
    return {
        "requests_failed_in_outage": len(failed),
        "first_failure_s": round(first_fail - t_stop, 3) if first_fail is not None else None,
        # the first request the store answered after its restart began, from that moment (the
        # store's own readiness check took restart_s of it)
        "time_to_recover_s": round(first_ok - t_restart, 3) if first_ok is not None else None,
        # what the client saw: from its first failed request to its first good one again
        "client_outage_s": round(first_ok - first_fail, 3)
        if first_ok is not None and first_fail is not None
        else None,
        "requests_after_restart": sum(1 for e in timeline if e[0] >= t_restart),
    }


def run_restart(
    server_dir: Path, target: Any, args: argparse.Namespace, out: Path, env: Mapping[str, str]
) -> dict[str, Any]:
    """A sweep through a pass-through proxy while the store it reaches is stopped and restarted on
    the same ports, data and keys; then every write acknowledged before the stop is read back."""
    base = f"{target.user_prefix}/" if target.user_prefix else ""
    prefix = f"{base}dlio-ext-faults-restart-{secrets.token_hex(6)}"
    bucket, upstream = target.settings.bucket, str(target.settings.endpoint)
    client = make_client(target)
    guard(client, target)
    objects = args.restart_objects
    # every request is delayed a little, so that the sweep is still running when the store goes
    proxy = FaultProxy(upstream, latency=1.0, latency_ms=args.restart_latency_ms, seed=args.seed)
    proxy.trigger_at = 1 + max(1, objects // 4)  # a quarter into the writes
    marks: dict[str, float] = {}
    problem: list[str] = []

    finished = threading.Event()

    def outage() -> None:
        if not proxy.triggered.wait(args.timeout) or finished.is_set():
            return
        marks["stop"] = time.monotonic()
        try:
            stop_server(server_dir)
            marks["stopped"] = time.monotonic()
            time.sleep(args.outage)
            marks["restart"] = time.monotonic()
            restart_server(server_dir)
            marks["up"] = time.monotonic()
        except UsageError as exc:
            problem.append(str(exc))

    retry = (args.restart_retries, args.restart_backoff_base, args.restart_backoff_max)
    controller = threading.Thread(target=outage, daemon=True)
    started = time.monotonic()
    try:
        with proxy:
            controller.start()
            try:
                summary = _sweep(
                    proxy.endpoint, "write,read_sequential,read_random", target, args, prefix, out, env,
                    retry=retry, objects=objects,
                )  # fmt: skip
            finally:
                finished.set()  # a sweep shorter than the trigger: no outage, and no wait
                proxy.triggered.set()
                controller.join()
        if problem:
            raise UsageError(f"restart: SeaweedFS did not come back: {problem[0]}")
        seconds = time.monotonic() - started
        # the writes the store acknowledged (200 to a PUT) before it was stopped, by key
        t_stop = marks.get("stop", float("inf"))
        acked_before = {
            _key_of(path, bucket)
            for t, method, path, status in proxy.timeline
            if method == "PUT" and status == 200 and t < t_stop
        }
        verdicts = _read_back_keys(client, bucket, prefix + "/", args.seed, args.object_size)
    finally:
        with contextlib.suppress(Exception):
            _remove(client, bucket, prefix + "/")
    faulted = _ops(summary)
    acknowledged = faulted["write"]["ops"]
    intact = sum(verdicts.values())
    lost_before = sorted(k for k in acked_before if not verdicts.get(k))
    counters = summary.get("counters", {})
    report: dict[str, Any] = {
        "prefix": prefix,
        "outage_hit_run": "stop" in marks,
        "stopped_after_requests": proxy.trigger_at,
        "retries_allowed": args.restart_retries,
        "backoff": {"base_s": args.restart_backoff_base, "max_s": args.restart_backoff_max},
        "retries": counters.get("retries", 0),
        "throttles": counters.get("throttles", 0),
        "failed_operations": counters.get("errors", 0),
        "errors_by_kind": counters.get("errors_by_kind", {}),
        "sweep_seconds": round(seconds, 3),
        "sweep_valid": summary.get("valid"),
        "sweep_exit_code": summary.get("exit_code"),
        "invalid_reasons": summary.get("invalid_reasons", []),
        "through_restart": faulted,
        "acknowledged_writes": acknowledged,
        "acknowledged_before_stop": len(acked_before),
        "acknowledged_before_stop_intact": len(acked_before) - len(lost_before),
        "lost_before_stop": lost_before[:20],
        "stored_objects": len(verdicts),
        "read_back_directly": {"objects": len(verdicts), "intact": intact, "corrupt": len(verdicts) - intact},
        "proxy_requests": proxy.stats()["requests"],
    }
    if "stop" in marks:
        report.update(
            stop_s=round(marks["stopped"] - marks["stop"], 3),
            down_s=args.outage,
            restart_s=round(marks["up"] - marks["restart"], 3),
            outage_s=round(marks["up"] - marks["stop"], 3),
            **_restart_timeline(proxy.timeline, marks["stop"], marks["restart"]),
        )
    # a sweep that says valid must have done every op; and nothing acknowledged may be missing
    report["consistent"] = not (report["sweep_valid"] and report["failed_operations"])
    report["intact"] = (
        not lost_before and report["read_back_directly"]["corrupt"] == 0 and intact >= acknowledged
    )
    return report


def run_wrong_credentials(
    target: Any, args: argparse.Namespace, out: Path, env: Mapping[str, str]
) -> dict[str, Any]:
    """The sweep with a wrong secret: it must stop at once with one line (exit 2) and write nothing."""
    base = f"{target.user_prefix}/" if target.user_prefix else ""
    prefix = f"{base}dlio-ext-faults-badkey-{secrets.token_hex(6)}"
    s = target.settings
    right = s.secret_key.reveal() if s.secret_key else ""
    wrong = (right[::-1] + "x") if right else "dlio-ext-wrong-secret"
    hidden = [*target.secrets, wrong]
    client = make_client(target)
    cmd = _sweep_cmd("write,read_sequential", args, prefix, out, (args.retries, 0.01, 0.2), args.objects)
    started = time.monotonic()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=_child_env(str(s.endpoint), target, env, wrong),
        timeout=args.timeout,
    )  # fmt: skip
    seconds = time.monotonic() - started
    listed = client.list_objects_v2(Bucket=s.bucket, Prefix=prefix + "/")
    written = listed.get("KeyCount", 0)
    if written:
        _remove(client, s.bucket, prefix + "/")
    err_lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    leaked = any(x and (x in done.stdout or x in done.stderr) for x in hidden)
    return {
        "prefix": prefix,
        "exit_code": done.returncode,
        "seconds": round(seconds, 3),
        "error": scrub(err_lines[-1], hidden) if err_lines else "",
        "error_lines": len(err_lines),
        "objects_written": written,
        "secret_in_output": leaked,
        # refused before any data moved, with one line and the bad-input exit status
        "failed_fast": done.returncode == 2 and written == 0 and len(err_lines) == 1 and not leaked,
    }


def _local_server(out: Path, bucket: str | None) -> tuple[Path, Any]:
    d = (out / "s3-server").resolve()
    return d, start_server(d, bucket or DEFAULT_BUCKET)


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# s3-faults", "", f"endpoint: `{report['endpoint']}`, bucket `{report['bucket']}`", ""]
    for name, r in report["scenarios"].items():
        lines += [f"## {name}", "", "| | |", "|---|---|"]
        for k, v in r.items():
            if not isinstance(v, dict | list):
                lines.append(f"| {k} | {v} |")
        lines.append("")
    for name, why in report["skipped"].items():
        lines += [f"## {name}", "", f"skipped: {why}", ""]
    lines.append(f"**all acknowledged writes intact: {report['ok']}**")
    return "\n".join(lines) + "\n"


SCENARIOS = ("proxy", "restart", "wrong-credentials")


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="dlio-ext s3-faults",
        description="A storage_sweep through S3 faults: injected by a proxy (503 SlowDown, resets, "
        "latency), a restart of the store mid-run, and wrong credentials.",
        epilog="Without an endpoint (no --endpoint, no AWS_ENDPOINT_URL) or with --local, s3-faults starts "
        "its own SeaweedFS in OUT/s3-server and stops it at the end; the restart scenario needs that "
        "server (a store given with an endpoint is never restarted: `all` then skips restart). "
        "Exit 0 when every acknowledged write was intact afterwards and wrong credentials failed fast; "
        "1 when a write was lost or corrupted, a corrupted read got through, or wrong credentials were not "
        "refused; 2 for bad input.",
    )
    parser.add_argument(
        "--scenario",
        choices=(*SCENARIOS, "all"),
        default="all",
        help="which faults (default: all; all skips restart on a store given by endpoint)",
    )
    parser.add_argument("--endpoint", help="the real store (default: AWS_ENDPOINT_URL)")
    parser.add_argument(
        "--local", action="store_true", help="ignore AWS_ENDPOINT_URL: start a SeaweedFS of our own"
    )
    parser.add_argument(
        "--server-dir",
        help="the store is the SeaweedFS of `dlio-ext s3-server start --dir D` (its endpoint and keys); "
        "the restart scenario restarts it (same ports, data, keys) and leaves it running",
    )
    parser.add_argument("--bucket", help="bucket (default: DLIO_EXT_S3_BUCKET)")
    parser.add_argument("--prefix", help="a prefix of your own under which the sweep writes")
    parser.add_argument("--slowdown", type=float, default=0.1, help="fraction answered 503 SlowDown")
    parser.add_argument("--reset", type=float, default=0.05, help="fraction cut by a TCP reset")
    parser.add_argument("--latency", type=float, default=0.1, help="fraction delayed by --latency-ms")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--corrupt", type=float, default=0.0, help="fraction of GET answers with a byte flipped in transit"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spare", type=int, default=1, help="first requests left untouched (the sweep's start-up check)"
    )
    parser.add_argument("--client", choices=("boto3", "obstore"), default="boto3")
    parser.add_argument("--retries", type=int, default=8, help="the backend's retries per operation")
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--object-size", type=int, default=64 << 10)
    parser.add_argument("--io-depth", type=int, default=4)
    restart = parser.add_argument_group("restart scenario")
    restart.add_argument("--outage", type=float, default=1.0, help="seconds the store stays down (default 1)")
    restart.add_argument("--restart-objects", type=int, default=160, help="objects of the restart sweep")
    restart.add_argument(
        "--restart-latency-ms",
        type=float,
        default=20.0,
        help="delay on every request, so the sweep outlasts the stop",
    )
    restart.add_argument("--restart-retries", type=int, default=30, help="retries per operation (default 30)")
    restart.add_argument("--restart-backoff-base", type=float, default=0.1)
    restart.add_argument("--restart-backoff-max", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--out", default="results/s3-faults", help="directory for s3-faults.json/.md and the sweep's results"
    )
    args = parser.parse_args(list(argv))
    wanted = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if args.server_dir and (args.local or args.endpoint):
        raise UsageError("--server-dir names the store; drop --local/--endpoint")
    own = not args.server_dir and (args.local or not (args.endpoint or env.get("AWS_ENDPOINT_URL")))
    if "restart" in wanted and not own and not args.server_dir and args.scenario == "restart":
        raise UsageError(
            "the restart scenario stops and restarts the store, so it runs only on a SeaweedFS that "
            "s3-faults starts itself: drop --endpoint/AWS_ENDPOINT_URL or add --local"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server_dir: Path | None = None
    skipped: dict[str, str] = {}
    scenarios: dict[str, Any] = {}
    try:
        if args.server_dir:
            info = server_status(args.server_dir)
            if info is None:
                raise UsageError(
                    f"--server-dir {args.server_dir}: no SeaweedFS of dlio-ext s3-server runs there"
                )
            server_dir = Path(info.dir)
            target = make_target(
                "faults", info.endpoint, args.bucket or info.bucket, args.prefix, {}, info.region,
                info.access_key, info.secret_key,
            )  # fmt: skip
        elif own:
            server_dir, info = _local_server(out, args.bucket)
            target = make_target(
                "faults", info.endpoint, info.bucket, args.prefix, {}, info.region,
                info.access_key, info.secret_key,
            )  # fmt: skip
        else:
            target = make_target("faults", args.endpoint, args.bucket, args.prefix, env)
            if not target.settings.endpoint or urlsplit(target.settings.endpoint).scheme != "http":
                raise UsageError(
                    "s3-faults proxies plain http endpoints only (a local server); give --endpoint http://..."
                )
            if "restart" in wanted:
                wanted.remove("restart")
                skipped["restart"] = (
                    "the store was given by endpoint; s3-faults restarts only its own (--local)"
                )
        for name in wanted:
            if name == "proxy":
                scenarios[name] = run_proxy(target, args, out, env)
            elif name == "restart":
                assert server_dir is not None
                scenarios[name] = run_restart(server_dir, target, args, out, env)
            else:
                scenarios["wrong_credentials"] = run_wrong_credentials(target, args, out, env)
    finally:
        if server_dir is not None and own:  # a server given by --server-dir is the user's
            stop_server(server_dir)
    ok = all(r.get("intact", True) for r in scenarios.values())
    report = {
        "endpoint": redact_url(str(target.settings.endpoint)),
        "bucket": target.settings.bucket,
        "own_server": own,
        "scenarios": scenarios,
        "skipped": skipped,
        "ok": ok,
    }
    (out / "s3-faults.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "s3-faults.md").write_text(_markdown(report))
    failed = not ok
    if "proxy" in scenarios:
        failed |= _print_proxy(scenarios["proxy"])
    if "restart" in scenarios:
        failed |= _print_restart(scenarios["restart"])
    if "wrong_credentials" in scenarios:
        failed |= _print_wrong_credentials(scenarios["wrong_credentials"])
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}")
    print(f"wrote {out / 's3-faults.json'} and {out / 's3-faults.md'}", file=sys.stderr)
    return 1 if failed else 0


def _print_proxy(report: dict[str, Any]) -> bool:
    inj = report["proxy"]["injected"]
    print(
        f"proxy: {report['proxy']['requests']} requests, injected {inj['slowdown']} SlowDown, "
        f"{inj['reset_before'] + inj['reset_after']} resets ({inj['reset_after']} after the store applied them), "
        f"{inj['latency']} delays, {inj['corrupt']} corrupted answers"
    )
    c = report["counters"]
    print(
        f"proxy: client {c.get('retries', 0)} retries ({c.get('throttles', 0)} throttled), "
        f"{c.get('errors', 0)} failed operations"
    )
    print(
        f"proxy: writes acknowledged {report['acknowledged_writes']}, stored {report['stored_objects']}; "
        f"read back directly {report['read_back_directly']['intact']} intact; "
        f"acknowledged writes intact: {report['intact']}; corrupt reads caught in transit: {report['corrupt_reads']}"
    )
    return not report["intact"] or bool(report["corrupt_reads"])


def _print_restart(r: dict[str, Any]) -> bool:
    if not r["outage_hit_run"]:
        print("restart: the sweep finished before the store was stopped; raise --restart-objects")
    else:
        print(
            f"restart: store stopped after {r['stopped_after_requests']} requests, down {r['outage_s']} s "
            f"(stop {r['stop_s']} s, wait {r['down_s']} s, start {r['restart_s']} s); "
            f"{r['requests_failed_in_outage']} requests failed in the outage; first success "
            f"{r['time_to_recover_s']} s after the restart began (client saw {r['client_outage_s']} s of failures)"
        )
    print(
        f"restart: client {r['retries']} retries ({r['throttles']} throttled), {r['failed_operations']} "
        f"failed operations; run valid: {r['sweep_valid']} (exit {r['sweep_exit_code']})"
    )
    print(
        f"restart: writes acknowledged {r['acknowledged_writes']} ({r['acknowledged_before_stop']} before the "
        f"stop, {r['acknowledged_before_stop_intact']} of those intact), stored {r['stored_objects']}, "
        f"read back directly {r['read_back_directly']['intact']} intact; acknowledged writes intact: {r['intact']}"
    )
    if not r["intact"]:
        print(
            f"restart: DATA LOST: {len(r['lost_before_stop'])} write(s) acknowledged before the stop missing "
            f"or wrong, {r['read_back_directly']['corrupt']} corrupt object(s), "
            f"{r['read_back_directly']['intact']} intact of {r['acknowledged_writes']} acknowledged"
        )
    if not r["consistent"]:
        print("restart: INCONSISTENT: the run says valid but operations failed")
    return not r["intact"] or not r["consistent"]


def _print_wrong_credentials(r: dict[str, Any]) -> bool:
    verdict = "failed fast" if r["failed_fast"] else "NOT REFUSED AS IT SHOULD BE"
    print(
        f"wrong-credentials: {verdict}: exit {r['exit_code']} in {r['seconds']} s, "
        f"{r['objects_written']} objects written: {r['error']}"
    )
    return not r["failed_fast"]
