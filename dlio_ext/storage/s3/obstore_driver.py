"""The obstore driver: a Rust client, the measured default.

obstore hides its upload ids: a multipart `put` is retried as a whole, and a streaming writer
larger than one part cannot be retried at all (obstore holds its parts). After any failed
multipart upload the pending upload is looked up and aborted with a boto3 side client, since
obstore's own `put` leaves it behind when a part fails. obstore sends the caller's buffer without
copying and keeps zero-copy references in its writer, so a put checks that it has let go, and
the writer stages chunks into buffers of its own (base.py, "Buffer ownership"). It lists with '/'
as the only delimiter, and a delimited listing is collected before it is yielded (obstore has no
paged variant). It has no CRC32: checksum=when_supported sends SHA-256 (`checksum_algorithm`)
and validates nothing on download.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from dlio_ext.storage.base import Leftovers, ObjectInfo, StorageError, Unsupported, Writer
from dlio_ext.storage.s3.boto3_driver import Boto3Driver
from dlio_ext.storage.s3.driver import RELEASE_WAIT_S, let_go, object_info, too_big
from dlio_ext.storage.s3.errors import BodyError, Failure
from dlio_ext.storage.s3.settings import CHECK_CONNECT_TIMEOUT, MIB, S3Settings
from dlio_ext.storage.s3.writers import ObstoreWriter

if TYPE_CHECKING:
    from dlio_ext.storage.s3.calls import Calls

_OBS_STATUS = re.compile(r"(?:status code|status): (\d{3})\b")
_OBS_CODE = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>")
_OBS_TIMEOUT = re.compile(r"timed ?out|kind: timeout\b")


def classify(exc: BaseException) -> Failure | None:
    """obstore raises a few exception classes and puts the rest into its message; read both."""
    from obstore import exceptions as ox

    if isinstance(exc, BodyError):
        return Failure(transport=exc.transport)
    if not isinstance(exc, (ox.BaseError, OSError)):
        return None
    text = str(exc)
    code_match = _OBS_CODE.search(text)
    code = code_match.group(1) if code_match else None
    status_match = _OBS_STATUS.search(text)
    if status_match:
        return Failure(status=int(status_match.group(1)), code=code)
    if isinstance(exc, FileNotFoundError):
        return Failure(status=404, code=code or "NoSuchKey")
    if isinstance(exc, ox.PermissionDeniedError):
        return Failure(status=403, code=code)
    if isinstance(exc, ox.UnauthenticatedError):
        return Failure(status=401, code=code)
    low = text.lower()
    if "certificate" in low or "tls handshake" in low or "invalidcertificate" in low:
        return Failure(transport="tls")
    # before timeouts: every obstore message carries "retry_timeout: 180s", so a bare "timeout"
    # says nothing (it once made a refused connection read as "timed out")
    if "connectionrefused" in low or "connection refused" in low:
        return Failure(transport="refused")
    if "dns error" in low or "failed to lookup address" in low:
        return Failure(transport="dns")
    if _OBS_TIMEOUT.search(low):
        return Failure(transport="timeout")
    if "kind: connect" in low or "tcp connect" in low:
        return Failure(transport="connect")
    if "error sending request" in low and "debug source" not in low:
        # obstore's writer drops the detail: refused, reset or never connected look the same
        return Failure(transport="send")
    if "http error" in low or "error sending request" in low or "connection" in low or "body" in low:
        return Failure(transport="io")
    if "credential" in low:
        return Failure(transport="credentials")
    return Failure(transport="other")


class ObstoreDriver:
    """Single attempts of each request with obstore; the backend retries and translates."""

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
            "allow_invalid_certificates": s.tls_verify is False,
        }
        if isinstance(s.tls_verify, str):  # a CA bundle's path
            with open(s.tls_verify, encoding="ascii") as fh:
                options["root_certificate"] = fh.read()
        self.store = S3Store(
            s.bucket,
            prefix=s.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options=options,  # type: ignore[arg-type]
            retry_config={"max_retries": 0},
        )
        self._janitor: Boto3Driver | None = None
        self._janitor_lock = threading.Lock()

    def classify(self, exc: BaseException) -> Failure | None:
        return classify(exc)

    def probe(self) -> None:
        import obstore as obs

        # one ListObjectsV2 page under a name nobody uses: tells missing bucket from bad keys
        next(iter(obs.list(self.store, ".dlio-ext-check", chunk_size=1)), None)

    def put_object(self, key: str, data: memoryview) -> None:
        import obstore as obs

        obs.put(self.store, key, data, use_multipart=False)

    def put_multipart(self, key: str, data: memoryview, leftovers: Leftovers) -> None:
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
            self.sweep_uploads(key, leftovers)
            raise

    def get_into(self, key: str, into: memoryview) -> int:
        import obstore as obs

        result = obs.get(self.store, key)
        size = int(result.meta["size"])
        if size > len(into):
            raise too_big(key, size, into)
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
            failure = classify(exc)
            if failure is not None and failure.status == 416:
                return self.get_into(key, into)  # an empty object has no first byte to range over
            raise
        total = int(result.meta["size"])
        start, end = result.range
        if total > len(into):
            raise too_big(key, total, into)
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
            failure = classify(exc)
            if failure is not None and failure.status == 416:
                return 0  # the range starts at or past the end: nothing to read, not a failure
            raise
        start, end = result.range
        return _stream_into(result, into[: max(0, end - start)], key)

    def head(self, key: str) -> ObjectInfo:
        import obstore as obs

        meta = obs.head(self.store, key)
        return object_info(key, meta["size"], meta.get("last_modified"), meta.get("e_tag"))

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

    def sweep_uploads(self, key: str, leftovers: Leftovers) -> None:
        """Abort what a failed obstore multipart upload left behind (obstore keeps the upload
        id to itself). Best effort: if the server cannot be reached, neither can it be cleaned."""
        try:
            with self._janitor_lock:
                if self._janitor is None:
                    s = self.settings
                    self._janitor = Boto3Driver(
                        s, min(s.connect_timeout, CHECK_CONNECT_TIMEOUT), s.read_timeout, pool=4
                    )
            for upload_id in self._janitor.pending_uploads(key):
                self._janitor.abort_upload(key, upload_id)
        except Exception:
            # not raised (the failure that led here is the one to report), but never silent
            leftovers.add([f"{key} (a multipart upload may be pending)"])

    # whole verbs ---------------------------------------------------------------------------
    def put(self, calls: Calls, key: str, data: memoryview) -> None:
        """obstore sends the caller's buffer without copying; its `put` lets go of it as it returns
        or raises (measured, multipart included). Checked anyway, on a view of our own: the
        caller may overwrite its buffer as soon as we return (base.py, "Buffer ownership")."""
        hand = data[:]
        try:
            if len(hand) <= self.settings.part_size:
                calls.call("put", key, self.put_object, key, hand)
            else:
                calls.call("put", key, self.put_multipart, key, hand, calls.leftovers)
        finally:
            held = not let_go(hand, RELEASE_WAIT_S)
        if held:
            calls.refuse(
                StorageError(
                    f"put {key!r}: obstore still held the caller's buffer {RELEASE_WAIT_S:g} s after the call",
                    key,
                )
            )

    def writer(self, calls: Calls, key: str) -> Writer:
        return ObstoreWriter(calls, self, key)

    def list(self, calls: Calls, prefix: str, delimiter: str | None) -> Iterator[str]:
        # obstore lists whole path segments ("a/b" means "a/b/..."); S3 prefixes are plain
        # strings, so list the parent segment and keep what starts with the prefix
        directory, _, stem = prefix.rpartition("/")
        if delimiter is not None:
            if delimiter != "/":
                calls.refuse(
                    Unsupported(
                        f"list {prefix!r}: obstore lists with delimiter '/' only; use storage.client=boto3"
                    )
                )
            keys, prefixes = calls.call("list", prefix, self.list_delimited, directory)
            yield from (entry for entry in sorted(keys + prefixes) if entry.startswith(prefix))
            return
        # start right before the prefix's range instead of at the top of the parent segment
        offset = _just_before(prefix) if stem else None
        attempt = 0
        while True:
            try:
                for chunk in self.list_stream(directory, offset):
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
                failure = classify(exc)
                if failure is None:
                    raise
                # a broken listing resumes after the last key it yielded, never ends quietly
                if calls.may_retry(failure, attempt, self.settings.retries):
                    attempt += 1
                    continue
                calls.fail("list", prefix, failure, attempt + 1)

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
        raise BodyError("io", done, want)
    return done


_SAFE_STEP = re.compile(r"[0-9A-Za-z]")


def _just_before(prefix: str) -> str | None:
    """A start-after bound sorting right before every key that starts with `prefix`, or None.

    Only for an alphanumeric last character: obstore may percent-encode others in a path,
    which would move the bound and silently skip keys."""
    last = prefix[-1]
    if not _SAFE_STEP.match(last) or last == "0" or last == "A" or last == "a":
        return None
    return prefix[:-1] + chr(ord(last) - 1) + "\U0010ffff"
