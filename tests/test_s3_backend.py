"""The S3 backend against a real SeaweedFS (session fixture), once per client (obstore, boto3).

Only `Fake503Proxy` is fake: it injects the faults a real server cannot be made to produce on
demand (503 SlowDown, 500s, a listing that breaks half-way) in front of the real server.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.utils import parse_timestamp
from conftest import S3_CLIENTS

from dlio_ext.compat.faults import FaultProxy
from dlio_ext.errors import UsageError
from dlio_ext.s3server import ServerInfo
from dlio_ext.storage import open_backend
from dlio_ext.storage.base import (
    AccessDenied,
    Backend,
    NotFound,
    StorageError,
    Throttled,
    Unreachable,
)
from dlio_ext.storage.s3 import S3Backend, S3Settings, boto3_client
from dlio_ext.storage.s3.boto3_driver import COPY_BODY_UP_TO
from dlio_ext.storage.s3.clients import http_date

MIB = 1 << 20
#: an object store issues no fsync: its counters stay at zero
NO_FSYNC = {"fsync_calls": 0, "fsync_seconds": 0.0}
CfgFor = Callable[..., dict[str, Any]]


def _payload(n: int, seed: int = 0) -> bytearray:
    return bytearray(os.urandom(n)) if seed == 0 else bytearray((i * seed) % 251 for i in range(n))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backend_for(s3_cfg_for: CfgFor) -> Iterator[Callable[..., S3Backend]]:
    """Open backends from configs, closing them all at the end of the test."""
    opened: list[Backend] = []

    def make(client: str, **overrides: Any) -> S3Backend:
        backend = open_backend(s3_cfg_for(client, **overrides))
        assert isinstance(backend, S3Backend)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


# --- data verbs -----------------------------------------------------------------------------


def test_put_get_range_stat_delete(s3_backend: Backend) -> None:
    data = _payload(1000)
    s3_backend.put("dir/obj", memoryview(data))

    into = memoryview(bytearray(4096))
    assert s3_backend.get("dir/obj", into) == 1000
    assert into[:1000] == data

    part = memoryview(bytearray(100))
    assert s3_backend.get_range("dir/obj", 450, part) == 100
    assert part == data[450:550]
    assert s3_backend.get_range("dir/obj", 950, part) == 50  # crosses the end: what there is
    assert part[:50] == data[950:]
    assert s3_backend.get_range("dir/obj", 1000, part) == 0  # at the end: nothing, no error
    assert s3_backend.get_range("dir/obj", 5000, part) == 0  # past the end: nothing, no error

    info = s3_backend.stat("dir/obj")
    assert (info.key, info.size) == ("dir/obj", 1000)
    assert info.etag and '"' not in info.etag
    assert info.mtime is not None and abs(info.mtime - time.time()) < 300

    with pytest.raises(StorageError, match="do not fit"):
        s3_backend.get("dir/obj", memoryview(bytearray(999)))

    s3_backend.delete("dir/obj")
    with pytest.raises(NotFound):
        s3_backend.stat("dir/obj")
    assert s3_backend.counters.errors == 2  # the buffer too small, then the stat of a deleted key


def test_missing_key_is_not_found_and_counted(s3_backend: Backend) -> None:
    buf = memoryview(bytearray(10))
    for call in (lambda: s3_backend.get("nope", buf), lambda: s3_backend.stat("nope")):
        with pytest.raises(NotFound) as err:
            call()
        assert "'nope'" in str(err.value) and "404" in str(err.value)
    with pytest.raises(NotFound):
        s3_backend.get_range("nope", 0, buf)
    assert s3_backend.counters.errors_by_kind == {"not_found": 3}
    assert s3_backend.counters.retries == 0  # a 404 is never retried


def test_multipart_put_and_writer_are_byte_exact(s3_backend: Backend) -> None:
    data = _payload(12 * MIB + 12345)
    view = memoryview(data)

    s3_backend.put("big/put", view)  # > part_size (5 MiB): multipart, 3 parts
    back = memoryview(bytearray(len(data) + 10))
    assert s3_backend.get("big/put", back) == len(data)
    assert back[: len(data)] == data
    assert str(s3_backend.stat("big/put").etag).endswith("-3")

    with s3_backend.writer("big/stream") as w:
        step = 700 * 1024 + 3  # chunks that never line up with parts
        for off in range(0, len(data), step):
            w.write(view[off : off + step])
    back[:] = bytes(len(back))
    assert s3_backend.get("big/stream", back) == len(data)
    assert back[: len(data)] == data
    assert str(s3_backend.stat("big/stream").etag).endswith("-3")

    with s3_backend.writer("small/stream") as w:  # fits one part: a plain PUT at close
        w.write(view[:1000])
        w.write(view[1000:5000])
    assert s3_backend.stat("small/stream").size == 5000
    assert "-" not in str(s3_backend.stat("small/stream").etag)

    with s3_backend.writer("empty/stream"):
        pass
    assert s3_backend.stat("empty/stream").size == 0
    assert s3_backend.counters.errors == 0


def test_writer_abort_leaves_no_object_and_no_upload(
    s3_backend: Backend, s3_cfg: dict[str, Any], s3_admin: Any, s3_server: ServerInfo
) -> None:
    chunk = memoryview(_payload(MIB, seed=7))
    w = s3_backend.writer("gone/a")
    for _ in range(11):  # two parts on their way
        w.write(chunk)
    w.abort()

    with pytest.raises(RuntimeError), s3_backend.writer("gone/b") as w2:
        for _ in range(11):
            w2.write(chunk)
        raise RuntimeError("the caller fails half-way")

    for key in ("gone/a", "gone/b"):
        with pytest.raises(NotFound):
            s3_backend.stat(key)
        full = f"{s3_cfg['prefix']}/{key}"
        uploads = s3_admin.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=full).get("Uploads", [])
        assert uploads == [], uploads


def test_concurrent_threads_share_one_backend(s3_backend: Backend) -> None:
    blobs = [_payload(4096 + i, seed=i + 1) for i in range(8)]

    def work(i: int) -> None:
        buf = memoryview(bytearray(8192))
        for round_ in range(10):
            key = f"thr/{i}/{round_}"
            s3_backend.put(key, blobs[i])
            assert s3_backend.get(key, buf) == len(blobs[i])
            assert buf[: len(blobs[i])] == blobs[i]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert sum(1 for _ in s3_backend.list("thr/")) == 80


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_checksum_when_supported_round_trips(backend_for: Callable[..., S3Backend], client: str) -> None:
    # boto3 sends CRC32 (and validates it on GET); obstore sends SHA-256. SeaweedFS takes both.
    b = backend_for(client, checksum="when_supported")
    for key, size in (("cs/small", 1000), ("cs/multi", 11 * MIB)):
        data = _payload(size)
        b.put(key, data)
        back = memoryview(bytearray(size))
        assert b.get(key, back) == size and back == data
        # a ranged GET carries no whole-object checksum to validate against
        assert b.get_range(key, 100, back[:500]) == 500 and back[:500] == data[100:600]
    with b.writer("cs/stream") as w:
        w.write(data)
    assert b.stat("cs/stream").size == len(data)


# --- listing --------------------------------------------------------------------------------

MANY = 1005  # more than one ListObjectsV2 page (1,000)


@pytest.fixture(scope="module")
def many_keys(s3_server: ServerInfo) -> Iterator[tuple[str, list[str]]]:
    """1,005 keys under one shared prefix, written with 16 threads; removed with delete_many."""
    prefix = f"many-{uuid.uuid4().hex[:8]}"
    cfg = {
        "type": "s3",
        "client": "obstore",
        "endpoint": s3_server.endpoint,
        "bucket": s3_server.bucket,
        "prefix": prefix,
        "access_key": s3_server.access_key,
        "secret_key": s3_server.secret_key,
    }
    backend = open_backend(cfg)
    keys = sorted(f"k/{i:05d}" for i in range(MANY))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: backend.put(k, b"x"), keys))
    yield prefix, keys
    assert backend.delete_many(iter(keys)) == MANY  # two DeleteObjects batches
    assert list(backend.list("")) == []
    backend.close()


def test_list_paginates_exactly(
    many_keys: tuple[str, list[str]], backend_for: Callable[..., S3Backend], s3_client: str
) -> None:
    prefix, keys = many_keys
    b = backend_for(s3_client, prefix=prefix)
    assert list(b.list("")) == keys
    assert list(b.list("k/")) == keys
    assert list(b.list("k/001")) == keys[100:200]  # a plain-string prefix, not only a "directory"
    assert list(b.list("k/01000")) == ["k/01000"]
    assert list(b.list("k/0", delimiter="/")) == keys
    assert list(b.list("", delimiter="/")) == ["k/"]
    assert list(b.list("nothing-here/")) == []
    assert b.counters.errors == 0


def test_list_with_delimiter(s3_backend: Backend) -> None:
    for key in ("a/1", "a/2", "b/x/1", "b/x/2", "b/y", "c", "ca/1"):
        s3_backend.put(key, b"1")
    assert list(s3_backend.list("", delimiter="/")) == ["a/", "b/", "c", "ca/"]
    assert list(s3_backend.list("b/", delimiter="/")) == ["b/x/", "b/y"]
    assert list(s3_backend.list("c", delimiter="/")) == ["c", "ca/"]
    assert list(s3_backend.list("b/")) == ["b/x/1", "b/x/2", "b/y"]
    assert list(s3_backend.list("c")) == ["c", "ca/1"]


# --- faults ---------------------------------------------------------------------------------


class Fake503Proxy(FaultProxy):
    """FAKE: the fault proxy of `dlio-ext s3-faults` in front of the real SeaweedFS, driven by a rule,
    used only to inject faults that a real server cannot be made to produce on demand (503 SlowDown,
    500, a listing failing on a later page). `rule(n, method, target)` sees the n-th request (from 0)
    and returns a status to fail it with, or None to forward it unchanged (signatures still verify)."""

    def __init__(self, upstream: str, rule: Callable[[int, str, str], int | None]):
        super().__init__(upstream, rule=rule)

    @property
    def seen(self) -> int:
        return self.ruled_seen

    @seen.setter
    def seen(self, value: int) -> None:
        self.ruled_seen = value

    @property
    def failed(self) -> int:
        return self.ruled_failed


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_retries_are_counted_then_succeed(
    backend_for: Callable[..., S3Backend], s3_server: ServerInfo, client: str
) -> None:
    # the first two requests are throttled, the next one fails with 500, then all pass through
    with Fake503Proxy(s3_server.endpoint, lambda n, m, t: {0: 503, 1: 429, 2: 500}.get(n)) as proxy:
        b = backend_for(client, endpoint=proxy.endpoint, retries=3)
        b.put("r/obj", b"hello")  # 503, 429, 500, then stored
        buf = memoryview(bytearray(16))
        assert b.get("r/obj", buf) == 5 and buf[:5] == b"hello"
    assert proxy.failed == 3
    assert b.counters.as_dict() == {
        "retries": 3,
        "throttles": 2,
        "errors": 0,
        "errors_by_kind": {},
        **NO_FSYNC,
    }


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_throttling_past_the_budget_raises_throttled(
    backend_for: Callable[..., S3Backend], s3_server: ServerInfo, client: str
) -> None:
    with Fake503Proxy(s3_server.endpoint, lambda n, m, t: 503) as proxy:
        b = backend_for(client, endpoint=proxy.endpoint, retries=2)
        with pytest.raises(Throttled, match="503 SlowDown"):
            b.put("r/obj", b"hello")
        with pytest.raises(StorageError, match="400"):  # 4xx other than 429: never retried
            proxy.rule = lambda n, m, t: 400
            b.get("r/obj", memoryview(bytearray(8)))  # a HEAD would make botocore probe the region
    assert proxy.failed == 3 + 1
    assert b.counters.as_dict() == {
        "retries": 2,
        "throttles": 2,
        "errors": 2,
        "errors_by_kind": {"throttled": 1, "error": 1},
        **NO_FSYNC,
    }


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_list_failing_midway_raises_and_a_blip_is_retried(
    many_keys: tuple[str, list[str]],
    backend_for: Callable[..., S3Backend],
    s3_server: ServerInfo,
    client: str,
) -> None:
    prefix, keys = many_keys
    lists: list[int] = []

    def every_later_list_fails(n: int, method: str, target: str) -> int | None:
        if "list-type=2" not in target:
            return None
        lists.append(n)
        return 500 if len(lists) > 1 else None

    with Fake503Proxy(s3_server.endpoint, every_later_list_fails) as proxy:
        lists.clear()
        b = backend_for(client, prefix=prefix, endpoint=proxy.endpoint, retries=2)
        got: list[str] = []
        with pytest.raises(StorageError, match="list"):
            for key in b.list("k/"):
                got.append(key)
        assert got == keys[: len(got)] and 0 < len(got) < len(keys)  # a prefix, then an error
        assert b.counters.errors == 1 and b.counters.retries == 2

    def second_list_fails_once(n: int, method: str, target: str) -> int | None:
        if "list-type=2" not in target:
            return None
        lists.append(n)
        return 500 if len(lists) == 2 else None

    with Fake503Proxy(s3_server.endpoint, second_list_fails_once) as proxy:
        lists.clear()
        b = backend_for(client, prefix=prefix, endpoint=proxy.endpoint, retries=2)
        assert list(b.list("k/")) == keys  # resumed: nothing lost, nothing twice
        assert b.counters.retries == 1 and b.counters.errors == 0


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_failing_part_leaves_no_upload_behind(
    backend_for: Callable[..., S3Backend], s3_server: ServerInfo, s3_admin: Any, client: str
) -> None:
    def part_two_fails(n: int, method: str, target: str) -> int | None:
        return 500 if method == "PUT" and "partNumber=2&" in target + "&" else None

    data = memoryview(_payload(11 * MIB, seed=3))
    with Fake503Proxy(s3_server.endpoint, part_two_fails) as proxy:
        b = backend_for(client, endpoint=proxy.endpoint, retries=1)
        with pytest.raises(StorageError, match="500"):
            b.put("fail/put", data)
        with pytest.raises(StorageError, match="500"):
            with b.writer("fail/stream") as w:
                for off in range(0, len(data), MIB):
                    w.write(data[off : off + MIB])
    assert proxy.failed >= 2
    for key in ("fail/put", "fail/stream"):
        full = f"{b.settings.prefix}/{key}"
        assert s3_admin.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=full).get("Uploads", []) == []
        with pytest.raises(NotFound):
            b.stat(key)


# --- credentials, bucket, endpoint ----------------------------------------------------------


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_wrong_credentials_are_access_denied_without_leaking(
    backend_for: Callable[..., S3Backend], s3_server: ServerInfo, client: str
) -> None:
    wrong = "WRONG-secret-4f1b9c2e7d-not-the-real-one"
    b = backend_for(client, secret_key=wrong)
    with pytest.raises(AccessDenied) as on_check:
        b.check()
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in str(on_check.value)
    with pytest.raises(AccessDenied) as on_put:
        b.put("x", b"1")
    assert "403" in str(on_put.value)
    shown = [str(on_check.value), str(on_put.value), repr(b), repr(b.settings), str(b.describe())]
    for text in shown:
        assert wrong not in text and s3_server.access_key not in text, text
    assert on_check.value.__cause__ is None and on_put.value.__suppress_context__


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_missing_bucket_fails_check(backend_for: Callable[..., S3Backend], client: str) -> None:
    b = backend_for(client, bucket="no-such-bucket-dlio-ext")
    with pytest.raises(StorageError, match="bucket no-such-bucket-dlio-ext does not exist"):
        b.check()


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_unreachable_endpoint_fails_fast(backend_for: Callable[..., S3Backend], client: str) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    b = backend_for(client, endpoint=endpoint, retries=3)
    t0 = time.monotonic()
    with pytest.raises(Unreachable, match=f"cannot reach {endpoint}"):
        b.check()
    with pytest.raises(Unreachable, match="after 4 attempts"):
        b.put("x", b"1")
    assert time.monotonic() - t0 < 5
    assert b.counters.retries == 2 + 3  # the check's short budget, then the put's


def test_good_check_passes(s3_backend: Backend) -> None:
    s3_backend.check()
    assert s3_backend.counters.errors == 0


# --- directory-ish verbs, config, description ----------------------------------------------


def test_rename_is_emulated_and_works(s3_backend: Backend) -> None:
    assert s3_backend.capabilities["rename"] == "emulated"
    assert s3_backend.capabilities["mkdir"] == "emulated"
    s3_backend.mkdir("d")  # a no-op on S3
    s3_backend.put("d/src", b"payload")
    s3_backend.rename("d/src", "d/dst")
    assert list(s3_backend.list("d/")) == ["d/dst"]
    buf = memoryview(bytearray(16))
    assert s3_backend.get("d/dst", buf) == 7 and buf[:7] == b"payload"
    with pytest.raises(NotFound):
        s3_backend.rename("d/src", "d/again")
    s3_backend.rmdir("d")


def test_describe_has_settings_and_no_credentials(s3_backend: Backend, s3_server: ServerInfo) -> None:
    import dataclasses

    from dlio_ext.storage.s3 import S3Settings

    d = s3_backend.describe()
    medium = {"durability", "durability_source", "cache_control", "cache_note"}
    secrets = {"access_key", "secret_key"}  # left out, names and all
    assert set(d) == {"backend", *(f.name for f in dataclasses.fields(S3Settings)), *medium} - secrets
    # the keys results have always had are all there
    old = {
        "endpoint",
        "bucket",
        "prefix",
        "region",
        "client",
        "path_style",
        "part_size",
        "concurrency",
        "checksum",
    }
    assert old <= set(d)
    assert d["endpoint"] == s3_server.endpoint and d["part_size"] == 5 << 20
    assert d["durability_source"] == "medium" and d["cache_control"] == "remote"
    assert s3_server.secret_key not in repr(s3_backend) + str(d)
    assert s3_server.access_key not in repr(s3_backend) + str(d)


def test_each_driver_has_every_verb_of_the_protocol() -> None:
    """The backend calls a driver only through `Driver`; a verb one client lacks would show only
    when a run reached it."""
    import inspect

    from dlio_ext.storage.s3.backend import DRIVERS
    from dlio_ext.storage.s3.driver import Driver

    verbs = {
        name: inspect.signature(fn)
        for name, fn in vars(Driver).items()
        if inspect.isfunction(fn) and not name.startswith("_")
    }
    assert {"put", "writer", "list", "get_first", "get_part", "classify", "close"} <= set(verbs)
    assert set(DRIVERS) == {"obstore", "boto3"}
    for cls in DRIVERS.values():
        for name, sig in verbs.items():
            mine = inspect.signature(vars(cls)[name])
            assert list(mine.parameters) == list(sig.parameters), (cls.__name__, name)


def test_one_tls_rule_for_every_client(tmp_path: Path) -> None:
    """verify=false checks no certificate, whatever ca_bundle says; else the bundle, else the
    system's roots: the backend's boto3 driver, its obstore driver and every boto3 client built
    elsewhere (compat, benchmarks, tests) from the same settings agree."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a TLS handshake\n")
    for given, want in (
        ({}, True),
        ({"ca_bundle": str(ca)}, str(ca)),
        ({"verify": False, "ca_bundle": str(ca)}, False),
        ({"verify": "false"}, False),
    ):
        cfg = {"type": "s3", "bucket": "b", "endpoint": "https://127.0.0.1:1", **given}
        s = S3Settings.from_config(cfg, env={})
        assert s.tls_verify == want
        assert boto3_client(s)._endpoint.http_session._verify == want
        b = S3Backend.from_config({**cfg, "client": "boto3"})
        assert b._driver.client._endpoint.http_session._verify == want  # type: ignore[attr-defined]
        b.close()
        if "ca_bundle" not in given:  # obstore would parse the (fake) bundle at once
            b = S3Backend.from_config({**cfg, "client": "obstore"})
            options = b._driver.store.client_options  # type: ignore[attr-defined]
            assert options["allow_invalid_certificates"] == ("false" if want else "true")
            b.close()


def test_config_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("DLIO_EXT_S3_BUCKET", "from-env")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    monkeypatch.delenv("AWS_REGION", raising=False)
    b = S3Backend.from_config({"type": "s3", "client": "boto3"})
    d = b.describe()
    assert (d["endpoint"], d["bucket"], d["region"], d["prefix"]) == (
        "http://127.0.0.1:1",
        "from-env",
        "us-east-1",
        "dlio-ext",
    )
    assert "secret-from-env" not in repr(b.settings)
    b.close()

    monkeypatch.delenv("DLIO_EXT_S3_BUCKET")
    with pytest.raises(UsageError, match="storage.bucket or DLIO_EXT_S3_BUCKET"):
        S3Backend.from_config({"type": "s3"})
    for bad, words in (
        ({"part_size": 1024}, "5 MiB"),
        ({"client": "curl"}, "obstore or boto3"),
        ({"endpoint": "localhost:9000"}, "http://"),
        ({"colour": "red"}, "storage.colour"),
        ({"concurrency": 0}, "concurrency"),
    ):
        with pytest.raises(UsageError, match=words):
            S3Backend.from_config({"type": "s3", "bucket": "b", **bad})


# --- large GETs: one ranged request first, then the other parts in parallel ----------------


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_large_get_in_parallel_ranges_is_byte_exact(
    backend_for: Callable[..., S3Backend], s3_cfg_for: CfgFor, s3_server: ServerInfo, client: str
) -> None:
    data = _payload(23 * MIB + 7)  # 5 MiB parts: a first range, then 4 more (the last one short)
    size = len(data)
    cfg = s3_cfg_for(client)
    writer = backend_for(client, prefix=cfg["prefix"])
    writer.put("big", data)
    writer.put("empty", b"")

    with Fake503Proxy(s3_server.endpoint, lambda n, m, t: None) as proxy:
        b = backend_for(client, prefix=cfg["prefix"], endpoint=proxy.endpoint, concurrency=3)
        back = memoryview(bytearray(size + 100))
        back[size:] = b"\xee" * 100
        assert b.get("big", back) == size
        assert back[:size] == data and back[size:] == b"\xee" * 100  # nothing past the object
        assert proxy.seen == 5  # one GET per part, no HEAD

        proxy.seen = 0
        assert b.get("empty", back) == 0  # no first byte to range over: a plain GET follows
        assert proxy.seen == 2

    # ranges at and past the end of a large object still read nothing, without an error
    b = backend_for(client, prefix=cfg["prefix"], concurrency=3)
    part = memoryview(bytearray(MIB))
    assert b.get_range("big", size, part) == 0
    assert b.get_range("big", size + 10 * MIB, part) == 0
    assert b.get_range("big", size - 100, part) == 100 and part[:100] == data[-100:]
    assert b.get_range("big", 7 * MIB + 3, part) == MIB and part == data[7 * MIB + 3 : 8 * MIB + 3]

    # an object bigger than the buffer raises, one byte short or many, and is counted once
    for short in (size - 1, 6 * MIB, 100):
        with pytest.raises(StorageError, match="do not fit"):
            b.get("big", memoryview(bytearray(short)))
    assert b.counters.as_dict() == {
        "retries": 0,
        "throttles": 0,
        "errors": 3,
        "errors_by_kind": {"error": 3},
        **NO_FSYNC,
    }


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_failing_range_is_retried_alone_and_counted_once(
    backend_for: Callable[..., S3Backend], s3_cfg_for: CfgFor, s3_server: ServerInfo, client: str
) -> None:
    data = _payload(17 * MIB, seed=5)  # 4 parts of 5 MiB
    cfg = s3_cfg_for(client)
    backend_for(client, prefix=cfg["prefix"]).put("big", data)
    back = memoryview(bytearray(len(data)))

    # the third GET (one of the parallel parts) is throttled once: only it is sent again
    with Fake503Proxy(s3_server.endpoint, lambda n, m, t: 503 if n == 2 else None) as proxy:
        b = backend_for(client, prefix=cfg["prefix"], endpoint=proxy.endpoint, concurrency=4, retries=2)
        assert b.get("big", back) == len(data) and back == data
        assert (proxy.seen, proxy.failed) == (5, 1)
        assert b.counters.as_dict() == {
            "retries": 1,
            "throttles": 1,
            "errors": 0,
            "errors_by_kind": {},
            **NO_FSYNC,
        }

    # every part after the first fails for good: the GET raises, counts one error, and stops
    # (concurrency=1: the parts follow one another in the caller's thread)
    with Fake503Proxy(s3_server.endpoint, lambda n, m, t: 500 if n >= 1 else None) as proxy:
        b = backend_for(client, prefix=cfg["prefix"], endpoint=proxy.endpoint, concurrency=1, retries=1)
        with pytest.raises(StorageError, match="get 'big': server error \\(HTTP 500"):
            b.get("big", back)
        assert (proxy.seen, proxy.failed) == (3, 2)  # the first part, then the second twice
        assert b.counters.as_dict() == {
            "retries": 1,
            "throttles": 0,
            "errors": 1,
            "errors_by_kind": {"error": 1},
            **NO_FSYNC,
        }


def test_boto3_gets_reuse_pooled_connections(backend_for: Callable[..., S3Backend]) -> None:
    b = backend_for("boto3", concurrency=3)
    data = _payload(12 * MIB, seed=9)
    b.put("big", data)
    b.put("small", data[:1000])
    back = memoryview(bytearray(len(data)))
    for _ in range(100):  # 3x the pool: a connection not given back would show as a new one
        assert b.get("small", back) == 1000
    for _ in range(5):
        assert b.get("big", back) == len(data)
    assert back == data
    manager = b._driver.client._endpoint.http_session._manager  # type: ignore[union-attr]
    pools = [manager.pools[k] for k in manager.pools.keys()]
    assert sum(p.num_requests for p in pools) >= 100 + 5 * 3 + 2
    assert sum(p.num_connections for p in pools) <= 3  # the parts in flight at once, no more


def test_boto3_small_puts_go_as_bytes_without_expect_continue(backend_for: Callable[..., S3Backend]) -> None:
    # botocore waits for "100 Continue" before a file-like body: a small PUT is sent as bytes in
    # one exchange, a large one still streams from the caller's view (uncopied)
    b = backend_for("boto3", part_size=5 * MIB)
    expects: list[bool] = []
    b._driver.client.meta.events.register(  # type: ignore[union-attr]
        "before-send.s3.PutObject", lambda request, **_: expects.append("Expect" in request.headers)
    )
    small, large = _payload(4096), _payload(COPY_BODY_UP_TO + 1, seed=7)
    b.put("small", small)
    b.put("edge", large[:COPY_BODY_UP_TO])
    b.put("large", large)
    with b.writer("streamed") as w:  # a writer's one-part object is a PutObject as well
        w.write(small)
    assert expects == [False, False, True, False]
    for key, data in (
        ("small", small),
        ("edge", large[:COPY_BODY_UP_TO]),
        ("large", large),
        ("streamed", small),
    ):
        back = memoryview(bytearray(len(data)))
        assert b.get(key, back) == len(data) and back == data


def test_boto3_driver_reads_timestamps_as_botocore_does(
    backend_for: Callable[..., S3Backend], s3_admin: Any
) -> None:
    # the driver's client reads HTTP-dates with the stdlib (clients.http_date), not dateutil:
    # the same datetimes, with the same tzinfo, as a stock client gets
    b = backend_for("boto3")
    b.put("dated", b"x")
    full = f"{b.settings.prefix}/dated"
    ours = b._driver.client.head_object(Bucket=b.settings.bucket, Key=full)["LastModified"]  # type: ignore[union-attr]
    stock = s3_admin.head_object(Bucket=b.settings.bucket, Key=full)["LastModified"]
    assert ours == stock and type(ours.tzinfo) is type(stock.tzinfo) and ours.utcoffset() == timedelta(0)
    assert b.stat("dated").mtime == stock.timestamp()
    # a listing's timestamps are ISO 8601 in XML: botocore's parser still reads them
    listed = b._driver.client.list_objects_v2(Bucket=b.settings.bucket, Prefix=full)  # type: ignore[union-attr]
    assert listed["Contents"][0]["LastModified"] == stock
    for value in (
        "Sun, 29 Nov 2026 15:53:14 GMT",
        "2026-11-29T15:53:14.000Z",
        "Sun, 29 Nov 2026 16:53:14 +0100",
        "Sunday, 29-Nov-26 15:53:14 GMT",  # RFC 850, the obsolete form: botocore's parser reads it
    ):
        parsed, expected = http_date(value), parse_timestamp(value)
        assert parsed == expected and type(parsed.tzinfo) is type(expected.tzinfo)
    for bad in ("Sun, 99 Nov 2026 15:53:14 GMT", "Someday, 99 Nov 2026 15:53:14 GMT", "no date GMT"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)
        with pytest.raises(ValueError):
            http_date(bad)


class _TruncatingServer:
    """FAKE: answers every GET with a Content-Length of 1000 and then only 500 bytes, as a server
    dying mid-body would; counts the requests."""

    def __init__(self) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                ranged = "Range" in self.headers
                self.send_response(206 if ranged else 200)
                if ranged:
                    self.send_header("Content-Range", "bytes 0-999/1000")
                self.send_header("Content-Length", "1000")
                self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
                self.send_header("Last-Modified", "Mon, 23 Nov 2026 10:00:00 GMT")
                self.end_headers()
                self.wfile.write(b"t" * 500)
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _TruncatingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_truncated_body_is_retried_then_raises(backend_for: Callable[..., S3Backend], client: str) -> None:
    with _TruncatingServer() as server:
        b = backend_for(client, endpoint=server.endpoint, retries=1, backoff_base=0.01)
        buf = memoryview(bytearray(2000))
        with pytest.raises(StorageError, match="transfer failed \\(io error after 2 attempts\\)"):
            b.get("obj", buf)
        assert server.requests == 2
        assert b.counters.as_dict() == {
            "retries": 1,
            "throttles": 0,
            "errors": 1,
            "errors_by_kind": {"error": 1},
            **NO_FSYNC,
        }
