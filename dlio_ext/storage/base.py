"""The storage interface every workload talks to, and the errors it raises.

A few verbs shared by files and objects, after IOR's aiori table: a workload never knows which
backend it has, a backend never knows who calls it. Buffers are the caller's: `put` takes any
bytes-like object, `get` fills a preallocated writable buffer, so the hot path allocates nothing.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Support = Literal["native", "emulated", "unsupported"]


class StorageError(Exception):
    """An operation failed after retries; `kind` classifies it for counting and reports."""

    kind = "error"

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class NotFound(StorageError):
    kind = "not_found"


class AccessDenied(StorageError):
    kind = "access_denied"


class Unreachable(StorageError):
    kind = "unreachable"


class Throttled(StorageError):
    kind = "throttled"


class Unsupported(StorageError):
    kind = "unsupported"


class ObjectInfo(NamedTuple):
    """What stat returns; a NamedTuple because it is built on every metadata op."""

    key: str
    size: int
    mtime: float | None = None
    etag: str | None = None


@dataclass
class Counters:
    """Per-backend tallies of what went wrong (and was retried); thread-safe for io-depth > 1."""

    retries: int = 0
    throttles: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def retry(self, throttled: bool) -> None:
        with self._lock:
            self.retries += 1
            if throttled:
                self.throttles += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors += 1
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {
                "retries": self.retries,
                "throttles": self.throttles,
                "errors": self.errors,
                "errors_by_kind": dict(self.errors_by_kind),
            }


class Writer(abc.ABC):
    """Streams one large file/object in chunks; `close` commits, `abort` leaves nothing behind."""

    @abc.abstractmethod
    def write(self, chunk: memoryview | bytes) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Backend(abc.ABC):
    """One storage medium. Keys are '/'-separated and relative to the backend's root or prefix."""

    name: str = "base"
    #: what the medium really does for directory-ish verbs
    capabilities: dict[str, Support] = {}

    def __init__(self) -> None:
        self.counters = Counters()

    # data verbs
    @abc.abstractmethod
    def put(self, key: str, data: memoryview | bytes) -> None: ...

    @abc.abstractmethod
    def get(self, key: str, into: memoryview) -> int:
        """Read the whole object into `into`; returns its size. Raises if it does not fit."""

    @abc.abstractmethod
    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        """Read up to len(into) bytes from `offset`; returns how many were read."""

    @abc.abstractmethod
    def writer(self, key: str) -> Writer: ...

    # metadata verbs
    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Stream the keys (and, with a delimiter, common prefixes ending in it) under `prefix`.

        A failure raises; it never ends the stream early as if the listing were complete."""

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Iterable[str]) -> int:
        n = 0
        for k in keys:
            self.delete(k)
            n += 1
        return n

    def mkdir(self, key: str) -> None:
        raise Unsupported(f"{self.name} has no directories", key)

    def rmdir(self, key: str) -> None:
        raise Unsupported(f"{self.name} has no directories", key)

    def rename(self, src: str, dst: str) -> None:
        raise Unsupported(f"{self.name} cannot rename", src)

    # lifecycle
    def check(self) -> None:
        """Fail fast with a clear StorageError if the medium cannot be used as configured."""
        return None

    def describe(self) -> dict[str, object]:
        """The configuration worth recording in results (never credentials)."""
        return {"backend": self.name}

    def close(self) -> None:
        return None
