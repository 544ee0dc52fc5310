"""The storage interface every workload talks to, and the errors it raises.

A few verbs shared by files and objects, after IOR's aiori table: a workload never knows which
backend it has, a backend never knows who calls it. Buffers are the caller's: `put` takes any
bytes-like object, `get` fills a preallocated writable buffer, so the hot path allocates nothing.

Buffer ownership. A verb borrows the caller's buffer for the call only: `put`, `get`,
`get_range` and `Writer.write` may read (or, for the reads, fill) it while they run; once they
return or raise, the backend holds no reference to it and never reads or writes it again. The
caller may then overwrite, stamp, hash, reuse or free it at once; that is how workloads stream
from a small pool of reused buffers. Consequences for a backend:
- a client that keeps a reference after the call (a zero-copy async client: obstore's multipart
  writer keeps each chunk until its part is uploaded; NIXL keeps registered memory until a
  transfer completes) is given buffers the backend owns (staged copies, reused only once the
  client has let go of them) or the backend waits for the client to release the caller's buffer
  before it returns;
- a read that fails must not leave a background part still landing in `into`: helpers are
  stopped and waited for before the error is raised;
- a write that fails (or is aborted) leaves the caller's buffer alone just the same.
No verb keeps a reference past its return. The one holder by design is `bare(verb, buf)`: the
Bare it returns keeps `buf` for its lifetime, and each `call` borrows it for that call only, so
the caller may change it between calls (a fresh stamp before every put).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal, NamedTuple, cast

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


def _as_is(exc: BaseException, _target: Any) -> StorageError:
    return cast(StorageError, exc)  # a default bare call raises nothing else


class Bare(NamedTuple):
    """One verb stripped for a tight loop over many keys: `call(target)` does it on one key.

    A cached stat or unlink on a file system costs two or three microseconds, about what a
    generic call path through Python costs on top of it, so a metadata phase would time its
    harness as much as its storage. A backend hands back its cheapest form of a verb instead (for
    posix the system call itself on a path resolved before the clock starts), the exceptions it
    lets through, and how to turn those into a StorageError.
    """

    call: Callable[[Any], Any]
    #: what `call` may raise; `error(exc, target)` turns any of it into a StorageError
    catch: type[BaseException] | tuple[type[BaseException], ...]
    error: Callable[[BaseException, Any], StorageError]
    #: ops worth handing a runner thread at once: many when an op takes microseconds, one when
    #: it takes a network round trip (finer stonewall and load balance cost nothing there)
    chunk: int = 1
    #: the size, from what a "stat" call returns
    size: Callable[[Any], int] = attrgetter("size")


#: verbs `Backend.bare` strips; "put" and "get"/"get_head" take the buffer and return bytes moved
BARE_VERBS = ("stat", "delete", "mkdir", "rmdir", "put", "get", "get_head")


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
    def write(self, chunk: memoryview | bytes) -> None:
        """Append `chunk`. It is borrowed for this call only: when write returns (or raises) the
        backend has copied or sent what it needs and never touches `chunk` again, so the caller
        may overwrite it at once. A backend that streams later (multipart parts, async clients)
        stages into buffers of its own."""

    @abc.abstractmethod
    def close(self) -> None:
        """Commit what was written. Takes no buffer; buffers the writer staged into are its own."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the stream; nothing of it stays on storage. Never touches a caller's buffer: a
        part still in flight reads only the writer's own staging."""

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
    def put(self, key: str, data: memoryview | bytes) -> None:
        """Store all of `data` under `key`. `data` is borrowed for this call only: when put
        returns or raises, no part of it is still being sent and no reference to it is kept."""

    @abc.abstractmethod
    def get(self, key: str, into: memoryview) -> int:
        """Read the whole object into `into`; returns its size. Raises if it does not fit.

        `into` is borrowed for this call only: when get returns or raises, nothing more lands in
        it (parts fetched in parallel have all finished or been stopped)."""

    @abc.abstractmethod
    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        """Read up to len(into) bytes from `offset`; returns how many were read.

        `into` is borrowed for this call only, as for `get`."""

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

    # tight loops
    def resolve(self, key: str) -> Any:
        """What `bare` calls take for `key`; resolved before the clock starts."""
        return key

    def bare(self, verb: str, buf: memoryview | None = None) -> Bare:
        """`verb` for a tight loop over `resolve`d keys (see `Bare`).

        "put" writes all of `buf`, "get" reads a whole object into `buf` (raising if it does not
        fit), "get_head" reads its first len(buf) bytes; the three return the bytes moved.
        "mkdir" makes one level, its parent existing. This default goes through the ordinary verbs;
        a backend whose ops take microseconds overrides it with something leaner.
        The Bare keeps `buf` while it lives; each `call` borrows it for that call only.
        """
        if verb == "put":
            assert buf is not None
            put, n = self.put, len(buf)

            def call(key: str) -> int:
                put(key, buf)
                return n

        elif verb == "get":
            assert buf is not None
            get = self.get

            def call(key: str) -> int:
                return get(key, buf)

        elif verb == "get_head":
            assert buf is not None
            get_range = self.get_range

            def call(key: str) -> int:
                return get_range(key, 0, buf)

        elif verb in BARE_VERBS:
            call = getattr(self, verb)
        else:
            raise ValueError(f"no bare form of {verb!r}; one of {BARE_VERBS}")
        return Bare(call, StorageError, _as_is)

    # lifecycle
    def check(self) -> None:
        """Fail fast with a clear StorageError if the medium cannot be used as configured."""
        return None

    def describe(self) -> dict[str, object]:
        """The configuration worth recording in results (never credentials)."""
        return {"backend": self.name}

    def close(self) -> None:
        return None
