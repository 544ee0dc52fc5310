"""`dlio-ext s3-faults`: a storage_sweep through a fault-injecting proxy in front of a real store.

dlio-ext s3-faults [--endpoint URL] [--bucket B] [--prefix P] [--slowdown 0.1] [--reset 0.05]
                   [--latency 0.2 --latency-ms 50] [--seed 1] [--client boto3|obstore] [--out DIR]

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
import http.client
import json
import os
import random
import re
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dlio_ext.compat.runner import guard, make_client, make_target, scrub
from dlio_ext.errors import UsageError
from dlio_ext.storage.s3 import _redact_url
from dlio_ext.workloads.phases import VerifyError

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
    ):
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
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._draw()
                if fault == "slowdown":
                    self._reply(503, [("Content-Type", "application/xml")], _SLOWDOWN)
                    return
                if fault == "reset_before":
                    self._reset()
                    return
                if fault == "latency":
                    time.sleep(proxy.latency_s)
                status, headers, data, size = proxy._forward(self.command, self.path, self.headers, body)
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

    def _draw(self) -> str | None:
        with self._lock:
            self.requests += 1
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


def _sweep(
    endpoint: str,
    phases: str,
    target: Any,
    args: argparse.Namespace,
    prefix: str,
    out: Path,
    env: Mapping[str, str],
) -> dict[str, Any]:
    """One storage_sweep subprocess on `endpoint` (the proxy, or the store itself); its summary."""
    s = target.settings
    child_env = dict(env)
    child_env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=s.access_key.reveal() if s.access_key else "",
        AWS_SECRET_ACCESS_KEY=s.secret_key.reveal() if s.secret_key else "",
        DLIO_EXT_S3_BUCKET=s.bucket,
        AWS_REGION=s.region,
    )
    cmd = [
        sys.executable, "-m", "dlio_ext.cli", "run", "workload=storage_sweep", "storage=s3",
        f"storage.client={args.client}", f"storage.prefix={prefix}", f"storage.retries={args.retries}",
        "storage.backoff_base=0.01", "storage.backoff_max=0.2", f"run.seed={args.seed}",
        f"workload.objects_per_rank={args.objects}", f"workload.object_size={args.object_size}",
        f"workload.io_depth={args.io_depth}", f"workload.phases=[{phases}]", "workload.verify=true",
        "workload.read_shift=0", f"run.results_dir={out / 'sweep'}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=args.timeout)
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


_SWEEP_KEY = re.compile(r"/sweep/r(\d+)/obj(\d+)$")


def _read_back(client: Any, bucket: str, prefix: str, seed: int, size: int) -> dict[str, Any]:
    """Read every object under prefix directly; how many are intact (as storage_sweep checks)."""
    import xxhash

    from dlio_ext.workloads.storage_sweep import STAMP, _Content, _stamp

    hashes: dict[int, int] = {}
    intact = corrupt = objects = 0
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for key in [o["Key"] for page in pages for o in page.get("Contents", [])]:
        objects += 1
        found = _SWEEP_KEY.search(key)
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if found is None:
            corrupt += 1
            continue
        rank, index = int(found.group(1)), int(found.group(2))
        if rank not in hashes:
            hashes[rank] = _Content(seed, rank, size).body_hash
        ok = (
            len(data) == size
            and data[: min(STAMP, size)] == _stamp(rank, index)[: min(STAMP, size)]
            and (size <= STAMP or xxhash.xxh3_64_intdigest(data[STAMP:]) == hashes[rank])
        )
        intact += ok
        corrupt += not ok
    return {"objects": objects, "intact": intact, "corrupt": corrupt}


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
        "endpoint": _redact_url(upstream),
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


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="dlio-ext s3-faults", description="A storage_sweep through injected S3 faults."
    )
    parser.add_argument("--endpoint", help="the real store (default: AWS_ENDPOINT_URL)")
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
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--out", default="results/s3-faults", help="directory for s3-faults.json and the sweep's results"
    )
    args = parser.parse_args(list(argv))
    target = make_target("faults", args.endpoint, args.bucket, args.prefix, env)
    if not target.settings.endpoint or urlsplit(target.settings.endpoint).scheme != "http":
        raise UsageError(
            "s3-faults proxies plain http endpoints only (a local server); give --endpoint http://..."
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run_faults(target, args, out, env)
    (out / "s3-faults.json").write_text(json.dumps(report, indent=2) + "\n")
    inj = report["proxy"]["injected"]
    print(
        f"s3-faults: {report['proxy']['requests']} requests, injected {inj['slowdown']} SlowDown, "
        f"{inj['reset_before'] + inj['reset_after']} resets ({inj['reset_after']} after the store applied them), "
        f"{inj['latency']} delays, {inj['corrupt']} corrupted answers"
    )
    c = report["counters"]
    print(
        f"client: {c.get('retries', 0)} retries ({c.get('throttles', 0)} throttled), {c.get('errors', 0)} failed operations"
    )
    print(
        f"writes acknowledged {report['acknowledged_writes']}, stored {report['stored_objects']}; "
        f"read back directly {report['read_back_directly']['intact']} intact; "
        f"acknowledged writes intact: {report['intact']}; corrupt reads caught in transit: {report['corrupt_reads']}"
    )
    print(f"wrote {out / 's3-faults.json'}", file=sys.stderr)
    return 0 if report["intact"] and not report["corrupt_reads"] else 1
