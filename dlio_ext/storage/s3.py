"""Any S3-compatible object store, through obstore (the measured default) or boto3 (the reference).

Both clients run with their own retries switched off and share one retry loop here, so a retry
is counted the same way whichever client measured it (`Counters.retry`), and a final failure is
raised as the same `StorageError` subclass with a message we build ourselves: operation, key,
HTTP status and S3 error code, never an SDK message (which can echo request headers).

Credentials live only inside the clients and in `_Secret` wrappers; they appear in no message,
repr or `describe()` output.

What the two clients can and cannot do differently:
- boto3 uploads multipart objects part by part through our loop, so each part is retried alone.
  obstore hides its upload ids: a multipart `put` is retried as a whole, and a streaming
  `writer` larger than one part cannot be retried at all (obstore holds its parts). After any
  failed obstore multipart upload the pending upload is looked up and aborted with a boto3 side
  client, since obstore's own `put` leaves it behind when a part fails.
- Both writers copy the caller's chunks into part-sized staging buffers of their own (a pool
  reused across streams): boto3's because its parts go out on other threads, obstore's because
  its writer keeps zero-copy references until a part is uploaded. No verb holds a caller's
  buffer after it returns (base.py, "Buffer ownership").
- obstore lists with '/' as the only delimiter, and a delimited listing is collected before it
  is yielded (obstore has no paged variant); boto3 streams every page, for any delimiter.
- checksum=when_supported makes boto3 send CRC32 and validate response checksums; obstore has
  no CRC32, so it sends SHA-256 (`checksum_algorithm`) and validates nothing on download.

A `get` asks for the first part_size bytes (a ranged GET, whose Content-Range tells the object's
size); an object larger than that has its other parts fetched in parallel, up to `concurrency`
at once, straight into slices of the caller's buffer, each part retried alone and pinned to the
first answer's ETag (If-Match). Both clients, except boto3 with checksum=when_supported: a ranged
answer has no whole-object checksum, so there a GET stays one plain request.
"""

from __future__ import annotations

import abc
import contextlib
import heapq
import http.client
import io
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import (
    AccessDenied,
    Backend,
    CacheControl,
    Durability,
    Leftovers,
    NotFound,
    ObjectInfo,
    StorageError,
    Throttled,
    Unreachable,
    Unsupported,
    Writer,
    register,
)
from dlio_ext.storage.settings import Settings, convert, redact_url, setting
from dlio_ext.validate import key_prefix

T = TypeVar("T")

MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
DELETE_BATCH = 1000
CLIENTS = ("obstore", "boto3")
CHECKSUMS = ("when_required", "when_supported")
#: the health check must answer fast even when the configured timeouts are generous
CHECK_CONNECT_TIMEOUT = 2.0
CHECK_READ_TIMEOUT = 10.0
CHECK_RETRIES = 2

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_THROTTLE_STATUS = frozenset({429, 503})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)
#: one byte to read into once a body is complete: the read that returns 0 is where botocore
#: checks Content-Length and the response checksum. Nothing is ever written into it.
_EOF_PROBE = bytearray(1)


class _Secret:
    """A credential that never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


_redact_url = redact_url


def _as_view(data: memoryview | bytes | bytearray) -> memoryview:
    mv = memoryview(data)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


#: how long a backend waits, after a call that handed obstore a buffer, for obstore to let go of
#: it (measured: it has already, or within milliseconds of an aborted upload)
RELEASE_WAIT_S = 30.0


def _let_go(view: memoryview, wait: float = 0.0) -> bool:
    """Release `view`, a view made only to hand to a client; False if the client still holds
    it after `wait` seconds. A zero-copy client (obstore) takes a buffer export of the view it is
    given, and `memoryview.release` refuses while any export is alive: an exact signal."""
    deadline, pause = time.monotonic() + wait, 0.0005
    while True:
        try:
            view.release()
            return True
        except BufferError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, 0.05)


# configuration ------------------------------------------------------------------------------


def _bool(name: str, value: Any) -> bool:
    return convert(name, value, bool)


def _number(name: str, value: Any, kind: type[int] | type[float], low: float, strict: bool = False) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"storage.{name}={value!r} must be {'an integer' if kind is int else 'a number'}"
        ) from None
    if number < low or (strict and number == low):
        raise UsageError(f"storage.{name}={value!r} must be {'>' if strict else '>='} {low:g}")
    return number


@dataclass(frozen=True)
class S3Settings(Settings):
    """Everything an S3Backend is configured with; credentials stay wrapped."""

    bucket: str = setting(env="DLIO_EXT_S3_BUCKET")
    client: str = "obstore"
    endpoint: str | None = setting(None, env="AWS_ENDPOINT_URL")
    prefix: str = "dlio-ext"
    region: str = setting("us-east-1", env="AWS_REGION")
    path_style: bool = True
    access_key: _Secret | None = setting(None, env="AWS_ACCESS_KEY_ID", secret=True)
    secret_key: _Secret | None = setting(None, env="AWS_SECRET_ACCESS_KEY", secret=True)
    verify: bool = True
    ca_bundle: str | None = None
    part_size: int = 16 * MIB
    concurrency: int = 8
    checksum: str = "when_required"
    retries: int = 5
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    #: bytes this run may store in the bucket (a quota, or what is left of it); 0 = unknown
    quota_bytes: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> S3Settings:
        """Read a `storage` group (workload_configs/storage/s3.yaml); unset values come from `env`."""
        env = os.environ if env is None else env
        unknown = sorted(str(k) for k in cfg if k not in CONFIG_KEYS)
        if unknown:
            raise UsageError(
                f"storage.{unknown[0]} is not an s3 setting; known: {', '.join(CONFIG_KEYS[1:])}"
            )

        def given(key: str) -> Any:
            value = cfg.get(key)
            return None if value is None or value == "" else value

        client = str(given("client") or "obstore")
        if client not in CLIENTS:
            raise UsageError(f"storage.client={client!r} is not supported; use obstore or boto3")
        endpoint = given("endpoint") or env.get("AWS_ENDPOINT_URL") or None
        if endpoint is not None:
            endpoint = str(endpoint).rstrip("/")
            if not endpoint.startswith(("http://", "https://")):
                raise UsageError(
                    f"storage.endpoint={_redact_url(endpoint)!r} must start with http:// or https://"
                )
        bucket = given("bucket") or env.get("DLIO_EXT_S3_BUCKET")
        if not bucket:
            raise UsageError("no S3 bucket: set storage.bucket or DLIO_EXT_S3_BUCKET")
        prefix = cfg.get("prefix", "dlio-ext")
        prefix = "" if prefix is None else str(prefix).strip("/")
        # every key lives under the prefix: '..' or an empty part would make keys other clients
        # resolve elsewhere (obstore refuses them outright)
        if problem := key_prefix("prefix", prefix, allow_empty=True):
            raise UsageError(f"storage.{problem}")
        access = given("access_key") or env.get("AWS_ACCESS_KEY_ID") or None
        secret = given("secret_key") or env.get("AWS_SECRET_ACCESS_KEY") or None
        if bool(access) != bool(secret):
            missing = (
                "storage.secret_key or AWS_SECRET_ACCESS_KEY"
                if access
                else "storage.access_key or AWS_ACCESS_KEY_ID"
            )
            raise UsageError(f"S3 credentials are half set: set {missing} as well")
        ca_bundle = given("ca_bundle")
        if ca_bundle is not None and not os.path.isfile(str(ca_bundle)):
            raise UsageError(f"storage.ca_bundle={ca_bundle!r} is not a readable PEM file")
        part_size = _number("part_size", cfg.get("part_size", 16 * MIB), int, 0)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise UsageError(
                f"storage.part_size={part_size} is outside S3's multipart limits; use 5 MiB (5242880) to 5 GiB"
            )
        checksum = str(given("checksum") or "when_required")
        if checksum not in CHECKSUMS:
            raise UsageError(
                f"storage.checksum={checksum!r} is not supported; use when_required or when_supported"
            )
        backoff_base = _number("backoff_base", cfg.get("backoff_base", 0.1), float, 0)
        backoff_max = _number("backoff_max", cfg.get("backoff_max", 5.0), float, 0)
        return cls(
            bucket=str(bucket),
            client=client,
            endpoint=endpoint,
            prefix=prefix,
            region=str(given("region") or env.get("AWS_REGION") or "us-east-1"),
            path_style=_bool("path_style", cfg.get("path_style", True)),
            access_key=_Secret(str(access)) if access else None,
            secret_key=_Secret(str(secret)) if secret else None,
            verify=_bool("verify", cfg.get("verify", True)),
            ca_bundle=str(ca_bundle) if ca_bundle is not None else None,
            part_size=part_size,
            concurrency=_number("concurrency", cfg.get("concurrency", 8), int, 1),
            checksum=checksum,
            retries=_number("retries", cfg.get("retries", 5), int, 0),
            backoff_base=backoff_base,
            backoff_max=max(backoff_max, backoff_base),
            connect_timeout=_number(
                "connect_timeout", cfg.get("connect_timeout", 5.0), float, 0, strict=True
            ),
            read_timeout=_number("read_timeout", cfg.get("read_timeout", 60.0), float, 0, strict=True),
            quota_bytes=_number("quota_bytes", cfg.get("quota_bytes", 0), int, 0),
        )


#: the keys of a `storage` group for s3 (workload_configs/storage/s3.yaml)
CONFIG_KEYS = ("type", *(f.name for f in fields(S3Settings)))


def _info(key: str, size: Any, modified: Any, etag: str | None) -> ObjectInfo:
    """A HEAD answer as ObjectInfo, whichever client gave it: mtime in epoch seconds, ETag unquoted."""
    return ObjectInfo(
        key=key,
        size=int(size),
        mtime=modified.timestamp() if modified else None,
        etag=etag.strip('"') if etag else None,
    )


# failures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """What went wrong with one request, reduced to what decides retrying and reporting."""

    status: int | None = None  # HTTP status, when the server answered
    code: str | None = None  # S3 error code, when the answer had one
    #: refused | dns | connect | timeout | send (could not send, no detail) | io | tls | checksum |
    #: credentials | other
    transport: str | None = None

    @property
    def throttled(self) -> bool:
        return self.status in _THROTTLE_STATUS

    @property
    def retryable(self) -> bool:
        if self.status is not None:
            return self.status in _RETRYABLE_STATUS
        return self.transport in _UNREACHABLE or self.transport in ("send", "io", "checksum")


#: transports that mean the server could not be reached at all (kind `unreachable`)
_UNREACHABLE = ("refused", "dns", "connect", "timeout")


class _BodyError(Exception):
    """Internal: a response body we read ourselves broke off or timed out (retryable)."""

    def __init__(self, transport: str, done: int = 0, want: int = 0):
        super().__init__(f"{transport} error reading a response body ({done} of {want} bytes)")
        self.transport = transport


class _GaveUp(Exception):
    """Internal: the retry loop is out of attempts (or the failure is not worth retrying)."""

    def __init__(self, failure: _Failure, attempts: int):
        super().__init__(failure)
        self.failure = failure
        self.attempts = attempts


_CODE_CHARS = re.compile(r"^[A-Za-z][A-Za-z0-9.]{0,63}$")


def _clean_code(code: object) -> str | None:
    """Keep an S3 error code only if it looks like one (HEAD answers carry the status instead)."""
    text = str(code) if code is not None else ""
    return text if _CODE_CHARS.match(text) else None


def _classify_boto3(exc: BaseException) -> _Failure | None:
    from botocore import exceptions as bx

    if isinstance(exc, _BodyError):
        return _Failure(transport=exc.transport)
    if isinstance(exc, bx.ClientError):
        response: Mapping[str, Any] = getattr(exc, "response", {}) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return _Failure(
            status=int(status) if status else None, code=_clean_code(response.get("Error", {}).get("Code"))
        )
    if isinstance(exc, bx.SSLError):
        return _Failure(transport="tls")
    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return _Failure(transport="timeout")
    if isinstance(exc, bx.ConnectionError):
        # urllib3's error under botocore's says why: NameResolutionError, or errno 111 refused
        cause = getattr(exc, "kwargs", {}).get("error") or exc.__context__
        if "NameResolution" in type(cause).__name__ or "Failed to resolve" in str(cause):
            return _Failure(transport="dns")
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return _Failure(transport="refused")
        return _Failure(transport="connect")
    if isinstance(exc, (bx.HTTPClientError, bx.IncompleteReadError)):
        return _Failure(transport="io")
    if isinstance(exc, bx.FlexibleChecksumError):
        return _Failure(transport="checksum")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return _Failure(transport="credentials")
    return None


_OBS_STATUS = re.compile(r"(?:status code|status): (\d{3})\b")
_OBS_CODE = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>")
_OBS_TIMEOUT = re.compile(r"timed ?out|kind: timeout\b")


def _classify_obstore(exc: BaseException) -> _Failure | None:
    """obstore raises a few exception classes and puts the rest into its message; read both."""
    from obstore import exceptions as ox

    if isinstance(exc, _BodyError):
        return _Failure(transport=exc.transport)
    if not isinstance(exc, (ox.BaseError, OSError)):
        return None
    text = str(exc)
    code_match = _OBS_CODE.search(text)
    code = code_match.group(1) if code_match else None
    status_match = _OBS_STATUS.search(text)
    if status_match:
        return _Failure(status=int(status_match.group(1)), code=code)
    if isinstance(exc, FileNotFoundError):
        return _Failure(status=404, code=code or "NoSuchKey")
    if isinstance(exc, ox.PermissionDeniedError):
        return _Failure(status=403, code=code)
    if isinstance(exc, ox.UnauthenticatedError):
        return _Failure(status=401, code=code)
    low = text.lower()
    if "certificate" in low or "tls handshake" in low or "invalidcertificate" in low:
        return _Failure(transport="tls")
    # before timeouts: every obstore message carries "retry_timeout: 180s", so a bare "timeout"
    # says nothing (it once made a refused connection read as "timed out")
    if "connectionrefused" in low or "connection refused" in low:
        return _Failure(transport="refused")
    if "dns error" in low or "failed to lookup address" in low:
        return _Failure(transport="dns")
    if _OBS_TIMEOUT.search(low):
        return _Failure(transport="timeout")
    if "kind: connect" in low or "tcp connect" in low:
        return _Failure(transport="connect")
    if "error sending request" in low and "debug source" not in low:
        # obstore's writer drops the detail: refused, reset or never connected look the same
        return _Failure(transport="send")
    if "http error" in low or "error sending request" in low or "connection" in low or "body" in low:
        return _Failure(transport="io")
    if "credential" in low:
        return _Failure(transport="credentials")
    return _Failure(transport="other")


# boto3 --------------------------------------------------------------------------------------


class _ViewReader(io.RawIOBase):
    """A seekable file over a memoryview: botocore takes bytes or files, not views, and copying
    every payload into bytes would allocate on the hot path. `read` hands out views, which
    urllib3 sends and hashlib digests as they are."""

    def __init__(self, view: memoryview):
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def read(self, size: int | None = -1) -> memoryview:  # type: ignore[override]
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        out = self._view[self._pos : end]
        self._pos = end
        return out

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _read_body(body: Any, into: memoryview) -> int:
    """Fill `into` (exactly the response's Content-Length) from the HTTP stream; returns its size.

    A plain body is read with http.client's own `readinto`, which receives straight into the
    caller's buffer: urllib3 2.x `readinto` is a read() into fresh bytes and a copy, which costs
    about as much CPU as the transfer itself at 64 MiB. A body that validates a checksum, or one
    whose internals look different (other urllib3/botocore versions), takes the public path."""
    fp = _raw_fp(body)
    if fp is None:
        return _read_body_public(body, into)
    raw = body._raw_stream
    done, want = 0, len(into)
    try:
        while done < want:
            got = fp.readinto(into[done:])
            if not got:
                break
            done += got
        if done < want:
            raise _BodyError("io", done, want)
        # http.client closes its side once Content-Length bytes are in; if it has not, anything
        # further is more than the server announced
        if not fp.isclosed() and fp.readinto(_EOF_PROBE):
            raise StorageError("the server sent more bytes than its Content-Length")
    except BaseException as exc:
        _drop_connection(raw)
        if isinstance(exc, TimeoutError):
            raise _BodyError("timeout", done, want) from None
        if isinstance(exc, (OSError, http.client.HTTPException)):
            raise _BodyError("io", done, want) from None
        raise
    raw.release_conn()  # fully read: the connection goes back to the pool for the next request
    return done


def _raw_fp(body: Any) -> Any:
    """The http.client response under a plain botocore body, or None to use the public path."""
    from botocore.response import StreamingBody

    if type(body) is not StreamingBody:  # e.g. StreamingChecksumBody: its reads validate
        return None
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if (
        not isinstance(fp, http.client.HTTPResponse)
        or getattr(raw, "_decoder", None) is not None
        or getattr(raw, "_fp_bytes_read", 0)
        or not callable(getattr(raw, "release_conn", None))
    ):
        return None
    return fp


def _drop_connection(raw: Any) -> None:
    """Close a half-read response's connection, and give its slot back to the pool (urllib3
    reconnects a closed pooled connection on its next use, as after its own read errors)."""
    try:
        raw.close()
        raw.release_conn()
    except Exception:
        pass


def _discard(body: Any) -> None:
    """Give up on a body before reading it."""
    if _raw_fp(body) is not None:
        _drop_connection(body._raw_stream)
    else:
        body.close()


def _read_body_public(body: Any, into: memoryview) -> int:
    done, want = 0, len(into)
    while done < want:
        got = body.readinto(into[done:])
        if not got:
            break
        done += got
    if done == want and body.readinto(_EOF_PROBE):
        body.close()
        raise StorageError("the server sent more bytes than its Content-Length")
    return done


def _total_size(content_range: str | None, length: int) -> int:
    """The object's size from a Content-Range ("bytes 0-99/1000"); a 200 answer has none."""
    if content_range:
        total = content_range.rpartition("/")[2].strip()
        if total.isdigit():
            return int(total)
    return length


class _Boto3Driver:
    """Single attempts of each request with boto3; the backend retries and translates."""

    classify = staticmethod(_classify_boto3)

    def __init__(self, s: S3Settings, connect_timeout: float, read_timeout: float, pool: int):
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=s.region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path" if s.path_style else "virtual"},
            request_checksum_calculation=s.checksum,
            response_checksum_validation=s.checksum,
            max_pool_connections=pool,
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=s.endpoint,
            region_name=s.region,
            aws_access_key_id=s.access_key.reveal() if s.access_key else None,
            aws_secret_access_key=s.secret_key.reveal() if s.secret_key else None,
            verify=s.ca_bundle if s.ca_bundle else s.verify,
            config=config,
        )
        self.bucket = s.bucket
        self.base = f"{s.prefix}/" if s.prefix else ""
        # a ranged answer carries no whole-object checksum: with checksum=when_supported a GET
        # stays one plain request, so botocore can validate it
        self.ranged = s.checksum != "when_supported"

    def probe(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: memoryview) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.base + key, Body=_ViewReader(data))

    def get_into(self, key: str, into: memoryview) -> int:
        resp = self.client.get_object(Bucket=self.bucket, Key=self.base + key)
        body, size = resp["Body"], int(resp["ContentLength"])
        if size > len(into):
            _discard(body)
            raise StorageError(f"get {key!r}: {size} bytes do not fit a {len(into)}-byte buffer", key)
        return _read_body(body, into[:size])

    def get_first(
        self, key: str, into: memoryview, part: int, on_size: Callable[[int, str | None], None]
    ) -> int:
        """GET the object's first `part` bytes into `into`, learning its size from Content-Range;
        `on_size(size, etag)` runs before the body is read when there is more to fetch."""
        from botocore.exceptions import ClientError

        if not self.ranged:
            return self.get_into(key, into)
        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=self.base + key, Range=f"bytes=0-{part - 1}"
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                return self.get_into(key, into)  # an empty object has no first byte to range over
            raise
        body, n = resp["Body"], int(resp["ContentLength"])
        total = _total_size(resp.get("ContentRange"), n)
        if total > len(into) or n > total:
            _discard(body)
            if n > total:
                raise StorageError(f"get {key!r}: the server's Content-Range does not match its body", key)
            raise StorageError(f"get {key!r}: {total} bytes do not fit a {len(into)}-byte buffer", key)
        if total > n:
            on_size(total, resp.get("ETag"))
        _read_body(body, into[:n])
        return total

    def get_part(self, key: str, offset: int, into: memoryview, etag: str | None) -> None:
        """One range of an object whose size is known; If-Match: the same version as the first."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.base + key,
            "Range": f"bytes={offset}-{offset + len(into) - 1}",
        }
        if etag:
            args["IfMatch"] = etag
        resp = self.client.get_object(**args)
        body, n = resp["Body"], int(resp["ContentLength"])
        if n != len(into):
            _discard(body)
            raise StorageError(f"get {key!r}: the object changed while it was read", key)
        _read_body(body, into)

    def get_range_into(self, key: str, offset: int, into: memoryview) -> int:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=self.base + key, Range=f"bytes={offset}-{offset + len(into) - 1}"
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                return 0  # the range starts at or past the end: nothing to read, not a failure
            raise
        body, size = resp["Body"], int(resp["ContentLength"])
        return _read_body(body, into[: min(size, len(into))])

    def head(self, key: str) -> ObjectInfo:
        resp = self.client.head_object(Bucket=self.bucket, Key=self.base + key)
        return _info(key, resp["ContentLength"], resp.get("LastModified"), resp.get("ETag"))

    def list_page(
        self, prefix: str, delimiter: str | None, token: str | None
    ) -> tuple[list[str], list[str], str | None]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.base + prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = token
        resp = self.client.list_objects_v2(**args)
        cut = len(self.base)
        keys = [item["Key"][cut:] for item in resp.get("Contents", ())]
        prefixes = [item["Prefix"][cut:] for item in resp.get("CommonPrefixes", ())]
        next_token = resp.get("NextContinuationToken")
        if resp.get("IsTruncated") and not next_token:
            raise StorageError(
                f"list {prefix!r}: the server says the listing is truncated but gives no token"
            )
        return keys, prefixes, next_token if resp.get("IsTruncated") else None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.base + key)

    def delete_batch(self, keys: list[str]) -> list[tuple[str, str | None]]:
        resp = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": self.base + k} for k in keys], "Quiet": True}
        )
        cut = len(self.base)
        return [(e.get("Key", "")[cut:], _clean_code(e.get("Code"))) for e in resp.get("Errors", ())]

    def copy(self, src: str, dst: str) -> None:
        self.client.copy_object(
            Bucket=self.bucket,
            Key=self.base + dst,
            CopySource={"Bucket": self.bucket, "Key": self.base + src},
        )

    def create_upload(self, key: str) -> str:
        return str(self.client.create_multipart_upload(Bucket=self.bucket, Key=self.base + key)["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: memoryview) -> dict[str, Any]:
        resp = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.base + key,
            UploadId=upload_id,
            PartNumber=number,
            Body=_ViewReader(data),
        )
        # with checksum=when_supported the completion must repeat each part's checksum
        part = {k: v for k, v in resp.items() if k.startswith("Checksum") and k != "ChecksumType"}
        part.update(PartNumber=number, ETag=resp["ETag"])
        return part

    def complete_upload(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.base + key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.base + key, UploadId=upload_id)

    def pending_uploads(self, key: str) -> list[str]:
        full = self.base + key
        resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
        return [u["UploadId"] for u in resp.get("Uploads", ()) if u.get("Key") == full]

    def close(self) -> None:
        self.client.close()


# obstore ------------------------------------------------------------------------------------


class _ObstoreDriver:
    """Single attempts of each request with obstore; the backend retries and translates."""

    classify = staticmethod(_classify_obstore)

    def __init__(self, s: S3Settings, connect_timeout: float, read_timeout: float):
        from obstore.store import S3Store

        self.settings = s
        config: dict[str, Any] = {"region": s.region, "virtual_hosted_style_request": not s.path_style}
        if s.endpoint:
            endpoint = s.endpoint
            if not s.path_style:
                # obstore wants the bucket inside a virtual-hosted endpoint
                parts = urlsplit(endpoint)
                endpoint = urlunsplit(parts._replace(netloc=f"{s.bucket}.{parts.netloc}"))
            # AWS_ENDPOINT_URL_S3 in the environment would otherwise win over the configured one
            config["endpoint"] = config["aws_endpoint_url_s3"] = endpoint
        if s.access_key and s.secret_key:
            config["access_key_id"] = s.access_key.reveal()
            config["secret_access_key"] = s.secret_key.reveal()
        if s.checksum == "when_supported":
            config["checksum_algorithm"] = "sha256"
        options: dict[str, Any] = {
            "connect_timeout": timedelta(seconds=connect_timeout),
            "read_timeout": timedelta(seconds=read_timeout),
            # obstore's whole-request limit (30 s by default) would cut large transfers short;
            # stalls are caught by read_timeout, as with boto3
            "timeout": timedelta(days=1),
            "allow_http": bool(s.endpoint and s.endpoint.startswith("http://")),
            "allow_invalid_certificates": not s.verify,
        }
        if s.ca_bundle:
            with open(s.ca_bundle, encoding="ascii") as fh:
                options["root_certificate"] = fh.read()
        self.store = S3Store(
            s.bucket,
            prefix=s.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options=options,  # type: ignore[arg-type]
            retry_config={"max_retries": 0},
        )
        self._janitor: _Boto3Driver | None = None
        self._janitor_lock = threading.Lock()
        #: where a sweep that could not run lists the key (the backend's, set by it)
        self.leftovers: Leftovers | None = None

    def probe(self) -> None:
        import obstore as obs

        # one ListObjectsV2 page under a name nobody uses: tells missing bucket from bad keys
        next(iter(obs.list(self.store, ".dlio-ext-check", chunk_size=1)), None)

    def put(self, key: str, data: memoryview) -> None:
        import obstore as obs

        obs.put(self.store, key, data, use_multipart=False)

    def put_multipart(self, key: str, data: memoryview) -> None:
        import obstore as obs

        s = self.settings
        try:
            obs.put(
                self.store,
                key,
                data,
                use_multipart=True,
                chunk_size=s.part_size,
                max_concurrency=s.concurrency,
            )
        except Exception:
            self.sweep_uploads(key)
            raise

    def get_into(self, key: str, into: memoryview) -> int:
        import obstore as obs

        result = obs.get(self.store, key)
        size = int(result.meta["size"])
        if size > len(into):
            raise StorageError(f"get {key!r}: {size} bytes do not fit a {len(into)}-byte buffer", key)
        return _stream_into(result, into[:size], key)

    def get_first(
        self, key: str, into: memoryview, part: int, on_size: Callable[[int, str | None], None]
    ) -> int:
        """GET the object's first `part` bytes into `into`, learning its size from Content-Range;
        `on_size(size, etag)` runs before the body is read when there is more to fetch."""
        import obstore as obs

        try:
            result = obs.get(self.store, key, options={"range": (0, part)})
        except Exception as exc:
            failure = _classify_obstore(exc)
            if failure is not None and failure.status == 416:
                return self.get_into(key, into)  # an empty object has no first byte to range over
            raise
        total = int(result.meta["size"])
        start, end = result.range
        if total > len(into):
            raise StorageError(f"get {key!r}: {total} bytes do not fit a {len(into)}-byte buffer", key)
        if start != 0 or end > total:
            raise StorageError(f"get {key!r}: the server's Content-Range does not match the request", key)
        if total > end:
            on_size(total, result.meta.get("e_tag"))
        _stream_into(result, into[:end], key)
        return total

    def get_part(self, key: str, offset: int, into: memoryview, etag: str | None) -> None:
        """One range of an object whose size is known; If-Match: the same version as the first."""
        import obstore as obs

        options: dict[str, Any] = {"range": (offset, offset + len(into))}
        if etag:
            options["if_match"] = etag
        result = obs.get(self.store, key, options=options)  # type: ignore[arg-type]
        if tuple(result.range) != (offset, offset + len(into)):
            raise StorageError(f"get {key!r}: the object changed while it was read", key)
        _stream_into(result, into, key)

    def get_range_into(self, key: str, offset: int, into: memoryview) -> int:
        import obstore as obs

        try:
            result = obs.get(self.store, key, options={"range": (offset, offset + len(into))})
        except Exception as exc:
            failure = _classify_obstore(exc)
            if failure is not None and failure.status == 416:
                return 0  # the range starts at or past the end: nothing to read, not a failure
            raise
        start, end = result.range
        return _stream_into(result, into[: max(0, end - start)], key)

    def head(self, key: str) -> ObjectInfo:
        import obstore as obs

        meta = obs.head(self.store, key)
        return _info(key, meta["size"], meta.get("last_modified"), meta.get("e_tag"))

    def list_stream(self, directory: str, offset: str | None) -> Iterator[Any]:
        import obstore as obs

        return iter(obs.list(self.store, directory or None, offset=offset, chunk_size=1000))

    def list_delimited(self, directory: str) -> tuple[list[str], list[str]]:
        import obstore as obs

        result = obs.list_with_delimiter(self.store, directory or None)
        return [m["path"] for m in result["objects"]], [f"{p}/" for p in result["common_prefixes"]]

    def delete(self, key: str) -> None:
        import obstore as obs

        obs.delete(self.store, key)

    def delete_batch(self, keys: list[str]) -> list[tuple[str, str | None]]:
        import obstore as obs

        # obstore raises on the first per-key error; the backend then deletes key by key to count
        obs.delete(self.store, keys)
        return []

    def copy(self, src: str, dst: str) -> None:
        import obstore as obs

        obs.copy(self.store, src, dst)

    def open_writer(self, key: str) -> Any:
        import obstore as obs

        s = self.settings
        return obs.open_writer(self.store, key, buffer_size=s.part_size, max_concurrency=s.concurrency)

    def sweep_uploads(self, key: str) -> None:
        """Abort what a failed obstore multipart upload left behind (obstore keeps the upload
        id to itself). Best effort: if the server cannot be reached, neither can it be cleaned."""
        try:
            with self._janitor_lock:
                if self._janitor is None:
                    s = self.settings
                    self._janitor = _Boto3Driver(
                        s, min(s.connect_timeout, CHECK_CONNECT_TIMEOUT), s.read_timeout, 4
                    )
            for upload_id in self._janitor.pending_uploads(key):
                self._janitor.abort_upload(key, upload_id)
        except Exception:
            # not raised (the failure that led here is the one to report), but never silent
            if self.leftovers is not None:
                self.leftovers.add([f"{key} (a multipart upload may be pending)"])

    def close(self) -> None:
        if self._janitor is not None:
            self._janitor.close()


def _stream_into(result: Any, into: memoryview, key: str) -> int:
    """Copy an obstore response body into `into`, which it must fill exactly, chunk by chunk:
    `GetResult.bytes()` would gather the whole body into fresh memory first (new pages, faulted
    in on every GET) and cost a second full copy."""
    done, want = 0, len(into)
    for chunk in result.stream(min_chunk_size=MIB):
        n = len(chunk)
        if done + n > want:
            raise StorageError(f"get {key!r}: the server sent more bytes than its Content-Length", key)
        into[done : done + n] = chunk
        done += n
    if done < want:
        raise _BodyError("io", done, want)
    return done


_Driver = _Boto3Driver | _ObstoreDriver


def _make_driver(s: S3Settings, connect_timeout: float, read_timeout: float) -> _Driver:
    if s.client == "boto3":
        # io depth x parts in flight; a pool that is too small drops connections with a warning
        return _Boto3Driver(s, connect_timeout, read_timeout, pool=max(32, s.concurrency * 8))
    return _ObstoreDriver(s, connect_timeout, read_timeout)


# the backend --------------------------------------------------------------------------------


class _PartPool:
    """Part-sized staging buffers reused across writers: a checkpoint streams many objects, and a
    fresh part_size bytearray per part would put allocation on the hot path."""

    def __init__(self, size: int, keep: int):
        self.size, self.keep = size, keep
        self._free: list[memoryview] = []
        self._lock = threading.Lock()

    def get(self) -> memoryview:
        with self._lock:
            if self._free:
                return self._free.pop()
        return memoryview(bytearray(self.size))

    def put(self, buf: memoryview) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)


@register
class S3Backend(Backend):
    """Objects under `prefix` in one bucket. Thread-safe: one client serves every thread."""

    name = "s3"
    Settings = S3Settings
    capabilities = {"mkdir": "emulated", "rmdir": "emulated", "rename": "emulated"}

    def __init__(self, settings: S3Settings):
        super().__init__()
        self.settings = settings
        self._driver: _Driver = _make_driver(settings, settings.connect_timeout, settings.read_timeout)
        self._classify: Callable[[BaseException], _Failure | None] = self._driver.classify
        if isinstance(self._driver, _ObstoreDriver):
            self._driver.leftovers = self.leftovers
        self._check_driver: _Driver | None = None
        self._pool = _PartPool(settings.part_size, keep=2 * (settings.concurrency + 1))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> S3Backend:
        return cls(S3Settings.from_config(cfg))

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"S3Backend(client={s.client!r}, endpoint={_redact_url(s.endpoint)!r}, "
            f"bucket={s.bucket!r}, prefix={s.prefix!r})"
        )

    # retry loop ----------------------------------------------------------------------------
    def _may_retry(self, failure: _Failure, attempt: int, budget: int) -> bool:
        """Sleep before the next attempt if there is one (full jitter); count it.

        A store that has given no successful answer for run.store_timeout_s is not retried: the
        op fails at once, and no sleep runs past that deadline."""
        if not failure.retryable:
            return False
        live = self.liveness
        now = time.perf_counter()
        live.trouble(now)
        if attempt >= budget or live.expired(now):
            return False
        self.counters.retry(throttled=failure.throttled)
        s = self.settings
        pause = random.uniform(0.0, min(s.backoff_max, s.backoff_base * (2**attempt)))
        deadline = live.deadline()
        if deadline is not None:
            pause = min(pause, max(deadline - now, 0.0))
        time.sleep(pause)
        return True

    def _attempts(self, fn: Callable[..., T], args: tuple[Any, ...], budget: int) -> T:
        attempt = 0
        while True:
            try:
                out = fn(*args)
                self.liveness.ok()
                return out
            except StorageError:
                raise
            except Exception as exc:
                failure = self._classify(exc)
                if failure is None:
                    raise
                if self._may_retry(failure, attempt, budget):
                    attempt += 1
                    continue
                raise _GaveUp(failure, attempt + 1) from None

    def _call(self, op: str, key: str | None, fn: Callable[..., T], *args: Any) -> T:
        """Run one request with our retries; a final failure is counted and translated."""
        try:
            return self._attempts(fn, args, self.settings.retries)
        except StorageError as exc:
            self.counters.error(exc.kind)
            raise
        except _GaveUp as gave_up:
            self._raise(op, key, gave_up.failure, gave_up.attempts)

    def _error(self, op: str, key: str | None, f: _Failure, attempts: int) -> StorageError:
        where = f"{op} {key!r}" if key is not None else op
        if f.transport == "send":
            f = _Failure(transport=self._probe() or "io")
        endpoint = _redact_url(self.settings.endpoint) or "the S3 endpoint"
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        if f.status is None:
            if f.transport in _UNREACHABLE:
                return Unreachable(f"{where}: {self._unreachable(f.transport)} ({tries})", key)
            if f.transport == "tls":
                return StorageError(
                    f"{where}: TLS with {endpoint} failed; check storage.verify and storage.ca_bundle", key
                )
            if f.transport == "credentials":
                return AccessDenied(
                    f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", key
                )
            if f.transport == "checksum":
                return StorageError(f"{where}: response checksum mismatch {tries}", key)
            return StorageError(f"{where}: transfer failed ({f.transport} error {tries})", key)
        detail = f"HTTP {f.status}{f' {f.code}' if f.code else ''}"
        if f.code == "NoSuchBucket":
            return StorageError(f"{where}: bucket {self.settings.bucket} does not exist ({detail})", key)
        if f.status == 404:
            return NotFound(f"{where}: no such key ({detail})", key)
        if f.status in (401, 403) or f.code in _DENIED_CODES:
            return AccessDenied(f"{where}: access denied ({detail}); check the S3 credentials", key)
        if f.throttled:
            return Throttled(f"{where}: throttled ({detail}) {tries}", key)
        if f.retryable:
            return StorageError(f"{where}: server error ({detail}) {tries}", key)
        return StorageError(f"{where}: {detail}", key)

    def _host_port(self) -> str:
        """host:port of the endpoint, for messages (no user:password@, which urlsplit drops)."""
        s = self.settings
        parts = urlsplit(s.endpoint or f"https://s3.{s.region}.amazonaws.com")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or "?"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _probe(self) -> str | None:
        """Why a request could not be sent, when the client did not say: one TCP connect to the
        endpoint now (refused on a dead local server in microseconds). None: it accepts."""
        s = self.settings
        parts = urlsplit(s.endpoint or f"https://s3.{s.region}.amazonaws.com")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection(
                (parts.hostname or "", port), timeout=min(1.0, s.connect_timeout)
            ).close()
        except ConnectionRefusedError:
            return "refused"
        except socket.gaierror:
            return "dns"
        except TimeoutError:
            return "timeout"
        except OSError:
            return "connect"
        return None

    def _unreachable(self, transport: str | None) -> str:
        hp = self._host_port()
        if transport == "refused":
            return f"connection refused by {hp} (is the server running?)"
        if transport == "dns":
            return f"cannot resolve {hp.rpartition(':')[0]} (DNS lookup failed)"
        if transport == "timeout":
            s = self.settings
            return (
                f"{hp} timed out (no connection within {s.connect_timeout:g} s or no answer within "
                f"{s.read_timeout:g} s)"
            )
        return f"cannot connect to {hp}"

    def _raise(self, op: str, key: str | None, f: _Failure, attempts: int) -> NoReturn:
        err = self._error(op, key, f, attempts)
        self.counters.error(err.kind)
        raise err from None  # the SDK's exception stays out of tracebacks: it may echo headers

    def _parts_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                # threads start on demand; the cap leaves room for several streams (io depth)
                self._executor = ThreadPoolExecutor(
                    max_workers=min(512, self.settings.concurrency * 16), thread_name_prefix="dlio-s3-part"
                )
            return self._executor

    # data verbs ----------------------------------------------------------------------------
    def put(self, key: str, data: memoryview | bytes) -> None:
        mv = _as_view(data)
        if isinstance(self._driver, _ObstoreDriver):
            self._obstore_put(key, self._driver, mv)
        elif len(mv) <= self.settings.part_size:
            self._call("put", key, self._driver.put, key, mv)
        else:
            self._multipart_put(key, mv)

    def _obstore_put(self, key: str, driver: _ObstoreDriver, mv: memoryview) -> None:
        """obstore sends the caller's buffer without copying; its `put` lets go of it as it returns
        or raises (measured, multipart included). Checked anyway, on a view of our own: the
        caller may overwrite its buffer as soon as we return (base.py, "Buffer ownership")."""
        hand = mv[:]
        try:
            if len(hand) <= self.settings.part_size:
                self._call("put", key, driver.put, key, hand)
            else:
                self._call("put", key, driver.put_multipart, key, hand)
        finally:
            held = not _let_go(hand, RELEASE_WAIT_S)
        if held:
            self.counters.error(StorageError.kind)
            raise StorageError(
                f"put {key!r}: obstore still held the caller's buffer {RELEASE_WAIT_S:g} s after the call",
                key,
            )

    def _multipart_put(self, key: str, mv: memoryview) -> None:
        size, step = len(mv), self.settings.part_size
        if -(-size // step) > MAX_PARTS:
            self.counters.error(StorageError.kind)
            raise StorageError(
                f"put {key!r}: {size} bytes need more than {MAX_PARTS} parts; raise storage.part_size"
            )
        upload = _Multipart(self, key)
        try:
            for offset in range(0, size, step):
                upload.submit(mv[offset : offset + step])
            upload.complete()
        except BaseException:
            upload.abort()
            raise

    def get(self, key: str, into: memoryview) -> int:
        """One ranged GET of the first part_size bytes tells the object's size; a larger object's
        other parts are then fetched in parallel (`concurrency` in flight) into the caller's
        buffer, each retried alone. A small object costs one request, as a plain GET would."""
        view = _as_view(into)
        rest = _RangedGet(self, key, view)
        try:
            size = self._call(
                "get", key, self._driver.get_first, key, view, self.settings.part_size, rest.start
            )
        except BaseException:
            rest.stop()
            raise
        try:
            rest.finish()
        except StorageError as exc:
            self.counters.error(exc.kind)
            raise
        except _GaveUp as gave_up:
            self._raise("get", key, gave_up.failure, gave_up.attempts)
        return size

    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        view = _as_view(into)
        if not len(view):
            return 0
        return self._call("get_range", key, self._driver.get_range_into, key, offset, view)

    def writer(self, key: str) -> Writer:
        if isinstance(self._driver, _ObstoreDriver):
            return _ObstoreWriter(self, self._driver, key)
        return _Boto3Writer(self, key)

    # metadata verbs ------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        return self._call("stat", key, self._driver.head, key)

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        delimiter = delimiter or None
        if isinstance(self._driver, _ObstoreDriver):
            return self._list_obstore(self._driver, prefix, delimiter)
        return self._list_boto3(self._driver, prefix, delimiter)

    def _list_boto3(self, driver: _Boto3Driver, prefix: str, delimiter: str | None) -> Iterator[str]:
        token: str | None = None
        while True:
            keys, prefixes, token = self._call("list", prefix, driver.list_page, prefix, delimiter, token)
            yield from heapq.merge(keys, prefixes) if prefixes else keys
            if token is None:
                return

    def _list_obstore(self, driver: _ObstoreDriver, prefix: str, delimiter: str | None) -> Iterator[str]:
        # obstore lists whole path segments ("a/b" means "a/b/..."); S3 prefixes are plain
        # strings, so list the parent segment and keep what starts with the prefix
        directory, _, stem = prefix.rpartition("/")
        if delimiter is not None:
            if delimiter != "/":
                self.counters.error(Unsupported.kind)
                raise Unsupported(
                    f"list {prefix!r}: obstore lists with delimiter '/' only; use storage.client=boto3"
                )
            keys, prefixes = self._call("list", prefix, driver.list_delimited, directory)
            yield from (entry for entry in sorted(keys + prefixes) if entry.startswith(prefix))
            return
        # start right before the prefix's range instead of at the top of the parent segment
        offset = _just_before(prefix) if stem else None
        attempt = 0
        while True:
            try:
                for chunk in driver.list_stream(directory, offset):
                    for meta in chunk:
                        path = meta["path"]
                        if not path.startswith(prefix):
                            if path > prefix:
                                return  # listings are sorted: past the prefix's range
                            continue
                        offset = path
                        yield path
                    attempt = 0
                return
            except Exception as exc:
                failure = driver.classify(exc)
                if failure is None:
                    raise
                # a broken listing resumes after the last key it yielded, never ends quietly
                if self._may_retry(failure, attempt, self.settings.retries):
                    attempt += 1
                    continue
                self._raise("list", prefix, failure, attempt + 1)

    def delete(self, key: str) -> None:
        self._call("delete", key, self._driver.delete, key)

    def delete_many(self, keys: Iterable[str]) -> int:
        failed: list[tuple[str, str]] = []
        deleted = 0
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                deleted += self._delete_batch(batch, failed)
                batch = []
        if batch:
            deleted += self._delete_batch(batch, failed)
        if failed:
            key, why = failed[0]
            raise StorageError(
                f"delete_many: {len(failed)} of {deleted + len(failed)} keys were not deleted "
                f"(first {key!r}: {why})",
                key,
            )
        return deleted

    def _delete_batch(self, batch: list[str], failed: list[tuple[str, str]]) -> int:
        try:
            errors = self._attempts(self._driver.delete_batch, (batch,), self.settings.retries)
        except _GaveUp as gave_up:
            if gave_up.failure.status is None or gave_up.failure.retryable:
                self._raise("delete_many", None, gave_up.failure, gave_up.attempts)
            # obstore stops at the first refused key: go key by key to count them all
            refused = 0
            for key in batch:
                try:
                    self._call("delete", key, self._driver.delete, key)
                except StorageError as exc:
                    failed.append((key, exc.kind))
                    refused += 1
            return len(batch) - refused
        for key, code in errors:
            kind = AccessDenied.kind if code in _DENIED_CODES else StorageError.kind
            self.counters.error(kind)
            failed.append((key, code or "error"))
        return len(batch) - len(errors)

    def mkdir(self, key: str) -> None:
        """S3 has no directories: a key's prefix exists as soon as the key does."""

    def rmdir(self, key: str) -> None:
        """S3 has no directories: nothing to remove once the keys under it are gone."""

    def rename(self, src: str, dst: str) -> None:
        # S3 has no rename: server-side copy (CopyObject, up to 5 GiB), then delete the source
        self._call("rename", src, self._driver.copy, src, dst)
        self._call("rename", src, self._driver.delete, src)

    # lifecycle -----------------------------------------------------------------------------
    def check(self) -> None:
        s = self.settings
        endpoint = _redact_url(s.endpoint) or f"S3 in {s.region}"
        with self._lock:
            if self._check_driver is None:
                self._check_driver = _make_driver(
                    s, min(s.connect_timeout, CHECK_CONNECT_TIMEOUT), min(s.read_timeout, CHECK_READ_TIMEOUT)
                )
            driver = self._check_driver
        try:
            self._attempts(driver.probe, (), min(s.retries, CHECK_RETRIES))
            return
        except _GaveUp as gave_up:
            f, attempts = gave_up.failure, gave_up.attempts
        err: StorageError
        if f.status == 404 or f.code == "NoSuchBucket":
            err = StorageError(
                f"bucket {s.bucket} does not exist at {endpoint}; create it or set storage.bucket"
            )
        elif f.status in (401, 403) or f.code in _DENIED_CODES or f.transport == "credentials":
            err = AccessDenied(
                f"access denied to bucket {s.bucket} at {endpoint} ({f.code or f.status or 'no credentials'}); "
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or storage.access_key/storage.secret_key)"
            )
        elif f.transport in _UNREACHABLE:
            err = Unreachable(
                f"cannot reach {endpoint}: {self._unreachable(f.transport)}; check storage.endpoint "
                "(or AWS_ENDPOINT_URL) and that the server is running (a local one: dlio-ext s3-server start)"
            )
        else:
            err = self._error("check", None, f, attempts)
        self.counters.error(err.kind)
        raise err

    def free_bytes(self) -> int | None:
        return self.settings.quota_bytes or None  # S3 tells no free space; only a known quota

    def cache_control(self) -> CacheControl:
        return CacheControl("remote", False, "object store: server cache not controlled")

    def durability(self) -> Durability:
        return Durability("object store: a completed PUT or multipart upload is the commit", "medium")

    def where(self) -> str:
        s = self.settings
        where = f"s3://{s.bucket}/{s.prefix + '/' if s.prefix else ''}"
        return f"{where} at {_redact_url(s.endpoint) or f'S3 in {s.region}'}"

    def room(self) -> tuple[str, str]:
        s = self.settings
        return f"s3://{s.bucket}/{s.prefix} (storage.quota_bytes)", "raise storage.quota_bytes"

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        for driver in (self._driver, self._check_driver):
            if driver is not None:
                driver.close()


_SAFE_STEP = re.compile(r"[0-9A-Za-z]")


def _just_before(prefix: str) -> str | None:
    """A start-after bound sorting right before every key that starts with `prefix`, or None.

    Only for an alphanumeric last character: obstore may percent-encode others in a path,
    which would move the bound and silently skip keys."""
    last = prefix[-1]
    if not _SAFE_STEP.match(last) or last == "0" or last == "A" or last == "a":
        return None
    return prefix[:-1] + chr(ord(last) - 1) + "\U0010ffff"


class _RangedGet:
    """The parts of one object after its first: `concurrency` ranges in flight, counting the
    caller's thread, which joins in once its first part is read. Each range is retried alone;
    the first range that fails for good stops the rest, and the GET raises (and counts) it once."""

    def __init__(self, backend: S3Backend, key: str, view: memoryview):
        self.b, self.key, self.view = backend, key, view
        self.pending: list[tuple[int, int]] = []  # (start, end) still to fetch, last first
        self.helpers: list[Future[None]] = []
        self.failure: BaseException | None = None
        self.etag: str | None = None
        self.started = False
        self.lock = threading.Lock()

    def start(self, total: int, etag: str | None) -> None:
        """Called by the first range once its headers are in: the object is `total` bytes."""
        with self.lock:
            if self.started:  # the first range was retried: its parts are on their way already
                return
            self.started, self.etag = True, etag
            step = self.b.settings.part_size
            self.pending = [(off, min(off + step, total)) for off in range(step, total, step)][::-1]
            helpers = min(self.b.settings.concurrency - 1, len(self.pending))
        if helpers > 0:
            executor = self.b._parts_executor()
            for _ in range(helpers):  # one by one: if a submit fails, stop() still waits for the rest
                self.helpers.append(executor.submit(self._work))

    def _work(self) -> None:
        driver, budget = self.b._driver, self.b.settings.retries
        while True:
            with self.lock:
                if self.failure is not None or not self.pending:
                    return
                start, end = self.pending.pop()
            try:
                self.b._attempts(driver.get_part, (self.key, start, self.view[start:end], self.etag), budget)
            except BaseException as exc:
                with self.lock:
                    if self.failure is None:
                        self.failure = exc
                return

    def finish(self) -> None:
        self._work()
        wait(self.helpers)
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """The first range failed: fetch nothing more, and let no helper write after we return."""
        with self.lock:
            self.pending.clear()
        wait(self.helpers)


class _Multipart:
    """One boto3 multipart upload: at most `concurrency` parts in flight, each retried alone."""

    def __init__(self, backend: S3Backend, key: str):
        assert isinstance(backend._driver, _Boto3Driver)
        self.b, self.d, self.key = backend, backend._driver, key
        self.upload_id: str = backend._call("put", key, self.d.create_upload, key)
        self.parts: dict[int, dict[str, Any]] = {}
        self.inflight: set[Future[tuple[int, dict[str, Any]]]] = set()
        self.next_number = 1

    def submit(self, view: memoryview, release: Callable[[], None] | None = None) -> None:
        if self.next_number > MAX_PARTS:
            self.b.counters.error(StorageError.kind)
            raise StorageError(
                f"put {self.key!r}: more than {MAX_PARTS} parts; raise storage.part_size", self.key
            )
        self._drain(self.b.settings.concurrency - 1)
        number, self.next_number = self.next_number, self.next_number + 1
        self.inflight.add(self.b._parts_executor().submit(self._upload, number, view, release))

    def _upload(
        self, number: int, view: memoryview, release: Callable[[], None] | None
    ) -> tuple[int, dict[str, Any]]:
        try:
            return number, self.b._call(
                "put", self.key, self.d.upload_part, self.key, self.upload_id, number, view
            )
        finally:
            if release is not None:
                release()

    def _drain(self, keep: int) -> None:
        while len(self.inflight) > keep:
            done, _ = wait(self.inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                self.inflight.discard(fut)
                number, part = fut.result()
                self.parts[number] = part

    def complete(self) -> None:
        self._drain(0)
        parts = [self.parts[n] for n in sorted(self.parts)]
        self.b._call("put", self.key, self.d.complete_upload, self.key, self.upload_id, parts)

    def abort(self) -> None:
        """Leave nothing behind: let running parts end, then AbortMultipartUpload."""
        for fut in self.inflight:
            fut.cancel()
        wait(self.inflight)
        self.inflight.clear()
        # a failed abort is counted and its upload listed as left behind; the error that caused
        # the abort is the one worth raising
        try:
            self.b._call("abort", self.key, self.d.abort_upload, self.key, self.upload_id)
        except StorageError:
            self.b.leftovers.add([f"{self.key} (multipart upload {self.upload_id})"])


class _StagingWriter(Writer):
    """Copies the caller's chunks into part-sized buffers of the backend's pool, so the caller may
    reuse a chunk as soon as `write` returns; a full part is shipped (`_ship`) only once more data
    arrives, so an object of one part stays a plain PUT at close."""

    b: S3Backend
    key: str
    step: int
    buf: memoryview | None
    fill: int
    done: bool

    def write(self, chunk: memoryview | bytes) -> None:
        if self.done or self.buf is None:
            raise StorageError(f"write {self.key!r}: the writer is closed", self.key)
        mv = _as_view(chunk)
        pos, n = 0, len(mv)
        try:
            while pos < n:
                if self.fill == self.step:
                    self._ship()
                take = min(self.step - self.fill, n - pos)
                self.buf[self.fill : self.fill + take] = mv[pos : pos + take]
                self.fill += take
                pos += take
        except BaseException:
            self.abort()
            raise

    @abc.abstractmethod
    def _ship(self) -> None:
        """Send the staged part and start a fresh staging buffer."""


class _Boto3Writer(_StagingWriter):
    """Stages chunks into pooled part buffers (the caller may reuse its chunk at once); an object
    that fits one part goes as a single PUT at close, a larger one as a multipart upload."""

    def __init__(self, backend: S3Backend, key: str):
        self.b, self.key = backend, key
        self.step = backend.settings.part_size
        self.buf: memoryview | None = backend._pool.get()
        self.fill = 0
        self.upload: _Multipart | None = None
        self.done = False

    def _ship(self) -> None:
        assert self.buf is not None
        if self.upload is None:
            self.upload = _Multipart(self.b, self.key)
        buf, fill, pool = self.buf, self.fill, self.b._pool
        self.buf = None  # owned by the part upload now; it goes back to the pool when sent
        self.upload.submit(buf[:fill], release=lambda: pool.put(buf))
        self.buf, self.fill = pool.get(), 0

    def close(self) -> None:
        if self.done:
            return
        try:
            if self.upload is None:
                assert self.buf is not None
                self.b._call("put", self.key, self.b._driver.put, self.key, self.buf[: self.fill])
            else:
                if self.fill:
                    self._ship()
                self.upload.complete()
        except BaseException:
            self.abort()
            raise
        self.done = True
        self._release()

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        if self.upload is not None:
            self.upload.abort()
        self._release()

    def _release(self) -> None:
        if self.buf is not None:
            self.b._pool.put(self.buf)
            self.buf = None


class _ObstoreWriter(_StagingWriter):
    """Stages chunks into part-sized buffers of the backend's pool and hands obstore whole parts.

    obstore's writer does not copy: it keeps a reference to every buffer it is given until the
    part holding it is uploaded (measured with obstore 0.12: up to `concurrency` parts after a
    write returns, and a part's first chunks until the part is full or the stream closes), so
    the caller's chunks never reach it (base.py, "Buffer ownership"). A staging buffer goes back
    to the pool only once obstore has let go of it, which releasing the view it was handed tells
    exactly. obstore's `write` blocks while `concurrency` parts are uploading, so a stream lends
    out at most concurrency + 1 buffers; a client that kept them until close would make the pool
    allocate one buffer a part instead: memory grows, nothing waits.

    An object that fits one part is one PUT at close, retried like any put. A larger one streams
    through obstore's multipart writer, which is not retried: obstore keeps the parts and the
    upload id to itself, so a failed request fails the stream; it is aborted and swept, counted
    and raised.
    """

    def __init__(self, backend: S3Backend, driver: _ObstoreDriver, key: str):
        self.b, self.d, self.key = backend, driver, key
        self.step = backend.settings.part_size
        self.buf: memoryview | None = backend._pool.get()
        self.fill = 0
        self.w: Any = None  # obstore's writer, opened when a second part begins
        #: staging buffers obstore may still hold: (the view it was handed, the pool buffer)
        self.lent: list[tuple[memoryview, memoryview]] = []
        self.done = False

    def _hand(self) -> None:
        """Give obstore the staged part; the buffer is lent until obstore lets go of it."""
        assert self.buf is not None
        if self.w is None:
            self.w = self.d.open_writer(self.key)
        hand = self.buf[: self.fill]
        self.lent.append((hand, self.buf))
        self.buf, self.fill = None, 0
        try:
            self.w.write(hand)
        except Exception as exc:
            self._fail("write", exc)

    def _ship(self) -> None:
        self._hand()
        self._reclaim()
        self.buf = self.b._pool.get()  # a new one when none is free: the pool grows, never waits

    def _reclaim(self) -> None:
        held = []
        for hand, buf in self.lent:
            if _let_go(hand):
                self.b._pool.put(buf)
                # obstore let go of a part it uploaded: the store answers, though the stream has
                # not closed yet (a long one would otherwise look like no progress at all)
                self.b.liveness.ok()
            else:
                held.append((hand, buf))
        self.lent = held

    def close(self) -> None:
        if self.done:
            return
        try:
            if self.w is None:
                assert self.buf is not None
                self.b._obstore_put(self.key, self.d, self.buf[: self.fill])
            else:
                if self.fill:
                    self._hand()
                try:
                    self.w.close()
                except Exception as exc:
                    self._fail("close", exc)
        except BaseException:
            self.abort()
            raise
        self.done = True
        self._release()

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        if self.w is not None:
            # obstore's WritableFile aborts (AbortMultipartUpload) when left with an exception; if
            # it already failed or closed, the sweep below still runs
            with contextlib.suppress(Exception):
                self.w.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self.d.sweep_uploads(self.key)
        self._release()

    def _release(self) -> None:
        """Staging buffers back to the pool. One obstore still holds (an aborted upload's parts,
        let go of within milliseconds) is left to it and dropped from here: never reused."""
        if self.buf is not None:
            self.b._pool.put(self.buf)
            self.buf = None
        self._reclaim()
        self.lent = []

    def _fail(self, op: str, exc: Exception) -> NoReturn:
        failure = self.d.classify(exc)
        self.abort()
        if failure is None:
            raise exc
        self.b._raise(op, self.key, failure, 1)
