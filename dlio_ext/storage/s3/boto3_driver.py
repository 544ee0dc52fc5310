"""The boto3 driver: the reference behaviour of the AWS SDK.

It uploads multipart objects part by part through our retry loop, so each part is retried
alone, and streams every page of a listing, for any delimiter. With checksum=when_supported
boto3 sends CRC32 and validates response checksums; a ranged answer has no whole-object
checksum, so there a GET stays one plain request.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import io
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dlio_ext.storage.base import ObjectInfo, StorageError, Writer
from dlio_ext.storage.s3.clients import boto3_client
from dlio_ext.storage.s3.driver import object_info, too_big
from dlio_ext.storage.s3.errors import BodyError, Failure, clean_code
from dlio_ext.storage.s3.settings import MAX_PARTS, S3Settings
from dlio_ext.storage.s3.writers import Boto3Writer, Multipart

if TYPE_CHECKING:
    from dlio_ext.storage.s3.calls import Calls

#: one byte to read into once a body is complete: the read that returns 0 is where botocore
#: checks Content-Length and the response checksum. Nothing is ever written into it.
_EOF_PROBE = bytearray(1)
#: bodies up to this size go to botocore as a bytearray (a copy). botocore turns bytes into a
#: BytesIO, and sends any file-like body with "Expect: 100-continue", waiting for the server's
#: go-ahead before the body: one more exchange a PUT, and a Python file's reads. For a 4 KiB PUT
#: that is 8 % of the client's instructions, and the server's interim answer; a bytearray goes
#: out with its headers at once. A larger body is streamed from the caller's view, uncopied.
COPY_BODY_UP_TO = 1 << 20


def classify(exc: BaseException) -> Failure | None:
    from botocore import exceptions as bx

    if isinstance(exc, BodyError):
        return Failure(transport=exc.transport)
    if isinstance(exc, bx.ClientError):
        response: Mapping[str, Any] = getattr(exc, "response", {}) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return Failure(
            status=int(status) if status else None, code=clean_code(response.get("Error", {}).get("Code"))
        )
    if isinstance(exc, bx.SSLError):
        return Failure(transport="tls")
    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return Failure(transport="timeout")
    if isinstance(exc, bx.ConnectionError):
        # urllib3's error under botocore's says why: NameResolutionError, or errno 111 refused
        cause = getattr(exc, "kwargs", {}).get("error") or exc.__context__
        if "NameResolution" in type(cause).__name__ or "Failed to resolve" in str(cause):
            return Failure(transport="dns")
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return Failure(transport="refused")
        return Failure(transport="connect")
    if isinstance(exc, (bx.HTTPClientError, bx.IncompleteReadError)):
        return Failure(transport="io")
    if isinstance(exc, bx.FlexibleChecksumError):
        return Failure(transport="checksum")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return Failure(transport="credentials")
    return None


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
            raise BodyError("io", done, want)
        # http.client closes its side once Content-Length bytes are in; if it has not, anything
        # further is more than the server announced
        if not fp.isclosed() and fp.readinto(_EOF_PROBE):
            raise StorageError("the server sent more bytes than its Content-Length")
    except BaseException as exc:
        _drop_connection(raw)
        if isinstance(exc, TimeoutError):
            raise BodyError("timeout", done, want) from None
        if isinstance(exc, (OSError, http.client.HTTPException)):
            raise BodyError("io", done, want) from None
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
    # best effort on a connection already in trouble: a failure here leaves urllib3 to drop it
    with contextlib.suppress(Exception):
        raw.close()
        raw.release_conn()


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


class Boto3Driver:
    """Single attempts of each request with boto3; the backend retries and translates."""

    def __init__(self, s: S3Settings, connect_timeout: float, read_timeout: float, pool: int | None = None):
        # io depth x parts in flight; a pool that is too small drops connections with a warning
        self.client = boto3_client(
            s,
            pool=max(32, s.concurrency * 8) if pool is None else pool,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            fast_dates=True,
        )
        self.settings = s
        self.bucket = s.bucket
        self.base = f"{s.prefix}/" if s.prefix else ""
        # a ranged answer carries no whole-object checksum: with checksum=when_supported a GET
        # stays one plain request, so botocore can validate it
        self.ranged = s.checksum != "when_supported"

    def classify(self, exc: BaseException) -> Failure | None:
        return classify(exc)

    def probe(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def put_object(self, key: str, data: memoryview) -> None:
        body = bytearray(data) if len(data) <= COPY_BODY_UP_TO else _ViewReader(data)
        self.client.put_object(Bucket=self.bucket, Key=self.base + key, Body=body)

    def get_into(self, key: str, into: memoryview) -> int:
        resp = self.client.get_object(Bucket=self.bucket, Key=self.base + key)
        body, size = resp["Body"], int(resp["ContentLength"])
        if size > len(into):
            _discard(body)
            raise too_big(key, size, into)
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
            raise too_big(key, total, into)
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
        return object_info(key, resp["ContentLength"], resp.get("LastModified"), resp.get("ETag"))

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
        return [(e.get("Key", "")[cut:], clean_code(e.get("Code"))) for e in resp.get("Errors", ())]

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

    # whole verbs ---------------------------------------------------------------------------
    def put(self, calls: Calls, key: str, data: memoryview) -> None:
        """One PUT up to a part; a larger object goes up as a multipart upload, each part retried
        alone (boto3 reads the caller's buffer only until the last part is sent)."""
        size, step = len(data), self.settings.part_size
        if size <= step:
            calls.call("put", key, self.put_object, key, data)
            return
        if -(-size // step) > MAX_PARTS:
            calls.refuse(
                StorageError(
                    f"put {key!r}: {size} bytes need more than {MAX_PARTS} parts; raise storage.part_size"
                )
            )
        upload = Multipart(calls, self, key)
        try:
            for offset in range(0, size, step):
                upload.submit(data[offset : offset + step])
            upload.complete()
        except BaseException:
            upload.abort()
            raise

    def writer(self, calls: Calls, key: str) -> Writer:
        return Boto3Writer(calls, self, key)

    def list(self, calls: Calls, prefix: str, delimiter: str | None) -> Iterator[str]:
        token: str | None = None
        while True:
            keys, prefixes, token = calls.call("list", prefix, self.list_page, prefix, delimiter, token)
            yield from heapq.merge(keys, prefixes) if prefixes else keys
            if token is None:
                return

    def close(self) -> None:
        self.client.close()
