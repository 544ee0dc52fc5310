"""The one interface an S3 client is driven through, and the helpers both drivers share.

A driver makes single attempts of each request (its client's own retries are switched off) and
says what its SDK's exceptions mean (`classify`); the backend's `Calls` retries and translates.
The verbs the two clients do their own way (a whole put, a streaming writer, a listing) take
that `Calls`, so the backend never asks which client it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from dlio_ext.storage.base import ObjectInfo, StorageError, Writer

if TYPE_CHECKING:
    from dlio_ext.storage.s3.calls import Calls
    from dlio_ext.storage.s3.errors import Failure

#: how long a backend waits, after a call that handed obstore a buffer, for obstore to let go of
#: it (measured: it has already, or within milliseconds of an aborted upload)
RELEASE_WAIT_S = 30.0


class Driver(Protocol):
    """One S3 client. Keys are relative to the settings' prefix; the driver adds it."""

    def classify(self, exc: BaseException) -> Failure | None:
        """What a request's exception means; None: it is no request failure (raised as is)."""

    # single attempts: `Calls` retries them
    def probe(self) -> None:
        """One cheap request that tells a missing bucket from bad credentials or no server."""

    def get_first(
        self, key: str, into: memoryview, part: int, on_size: Callable[[int, str | None], None]
    ) -> int:
        """GET the object's first `part` bytes into `into`, learning its size from Content-Range;
        `on_size(size, etag)` runs before the body is read when there is more to fetch. Returns
        the object's size (raises if it does not fit `into`)."""

    def get_part(self, key: str, offset: int, into: memoryview, etag: str | None) -> None:
        """One range of an object whose size is known; If-Match: the same version as the first."""

    def get_range_into(self, key: str, offset: int, into: memoryview) -> int:
        """Up to len(into) bytes from `offset`; 0 when the range starts at or past the end."""

    def head(self, key: str) -> ObjectInfo: ...

    def delete(self, key: str) -> None: ...

    def delete_batch(self, keys: list[str]) -> list[tuple[str, str | None]]:
        """Delete up to 1,000 keys in one request; returns (key, S3 error code) of those refused."""

    def copy(self, src: str, dst: str) -> None: ...

    # whole verbs, each client its own way, retried through `calls`
    def put(self, calls: Calls, key: str, data: memoryview) -> None:
        """Store all of `data` (borrowed for this call only: base.py, "Buffer ownership")."""

    def writer(self, calls: Calls, key: str) -> Writer: ...

    def list(self, calls: Calls, prefix: str, delimiter: str | None) -> Iterator[str]:
        """Stream keys (and common prefixes) under `prefix`, in order; resumes or raises on a
        failure, never ends early."""

    def close(self) -> None: ...


def as_view(data: memoryview | bytes | bytearray) -> memoryview:
    """A flat byte view of any bytes-like object (no copy)."""
    mv = memoryview(data)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def let_go(view: memoryview, wait: float = 0.0) -> bool:
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


def object_info(key: str, size: Any, modified: Any, etag: str | None) -> ObjectInfo:
    """A HEAD answer as ObjectInfo, whichever client gave it: mtime in epoch seconds, ETag unquoted."""
    return ObjectInfo(
        key=key,
        size=int(size),
        mtime=modified.timestamp() if modified else None,
        etag=etag.strip('"') if etag else None,
    )


def too_big(key: str, size: int, into: memoryview) -> StorageError:
    return StorageError(f"get {key!r}: {size} bytes do not fit a {len(into)}-byte buffer", key)
