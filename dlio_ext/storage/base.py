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
No verb keeps a reference past its return. Two holders by design: `bare(verb, buf)`: the Bare it
returns keeps `buf` for its lifetime, and each `call` borrows it for that call only, so the caller
may change it between calls (a fresh stamp before every put); and `Writer.submit(chunk)`
(write-behind): `chunk` is lent until the future it returns is done, so the caller keeps that
many buffers and touches each only once its write is done; `close` and `abort` wait for every
write in flight.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

from dlio_ext.registry import Registry

if TYPE_CHECKING:
    from dlio_ext.storage.native import NativeVerb
    from dlio_ext.storage.settings import Settings

Support = Literal["native", "emulated", "unsupported"]


class StorageError(Exception):
    """An operation failed after retries; `kind` classifies it for counting and reports."""

    kind = "error"
    #: what the kind means, for a person reading the console ("no space left on device")
    text = "failed"

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class NotFound(StorageError):
    kind = "not_found"
    text = "not found"


class AccessDenied(StorageError):
    kind = "access_denied"
    text = "permission denied"


class NoSpace(StorageError):
    kind = "no_space"
    text = "no space left on device"


class ReadOnly(StorageError):
    kind = "read_only"
    text = "read-only file system"


class DeviceError(StorageError):
    kind = "io_error"
    text = "I/O error from the device"


class Unreachable(StorageError):
    kind = "unreachable"
    text = "store unreachable"


class Throttled(StorageError):
    kind = "throttled"
    text = "throttled by the store"


class VerifyError(StorageError):
    """Bytes read back differ from the bytes written (found by the reader's content check)."""

    kind = "corrupt"
    text = "content differs from what was written"


class Unsupported(StorageError):
    kind = "unsupported"
    text = "not supported by the medium"


def kind_text(kind: str) -> str:
    """The words for an error kind, for console lines and invalid reasons."""
    for cls in _kinds():
        if cls.kind == kind:
            return cls.text
    return kind.replace("_", " ")


def _kinds() -> list[type[StorageError]]:
    out, todo = [], [StorageError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


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
    #: the same verb as a compiled loop over many targets (storage.native), or None; a loop that
    #: uses it handles in Python, with `call` and `error`, each op the compiled loop stops at
    native: NativeVerb | None = None


#: verbs `Backend.bare` strips; "put" and "get"/"get_head" take the buffer and return bytes moved
BARE_VERBS = ("stat", "delete", "mkdir", "rmdir", "put", "get", "get_head")


@dataclass
class Counters:
    """Per-backend tallies of what went wrong (and was retried) and of the fsyncs issued, with
    the seconds spent in them; thread-safe for io-depth > 1. Every counter a backend keeps lives
    here, so results read one object whatever the medium."""

    retries: int = 0
    throttles: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    fsync_calls: int = 0
    fsync_seconds: float = 0.0
    #: transfers a medium posts and then waits for (NIXL): seconds inside the post call, and from
    #: its return to DONE (a transport that copies while posting, like cma, spends it posting)
    transfers: int = 0
    post_seconds: float = 0.0
    wait_seconds: float = 0.0
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

    def fsync(self, seconds: float) -> None:
        with self._lock:
            self.fsync_calls += 1
            self.fsync_seconds += seconds

    def transfer(self, post_s: float, wait_s: float) -> None:
        with self._lock:
            self.transfers += 1
            self.post_seconds += post_s
            self.wait_seconds += wait_s

    def transfer_times(self) -> tuple[int, float, float]:
        """(transfers, seconds posting, seconds waiting) so far, read together."""
        with self._lock:
            return self.transfers, self.post_seconds, self.wait_seconds

    def fsyncs(self) -> tuple[int, float]:
        """(fsync calls, seconds in them) so far, read together."""
        with self._lock:
            return self.fsync_calls, self.fsync_seconds

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {
                "retries": self.retries,
                "throttles": self.throttles,
                "errors": self.errors,
                "errors_by_kind": dict(self.errors_by_kind),
                "fsync_calls": self.fsync_calls,
                "fsync_seconds": self.fsync_seconds,
            } | (  # only a medium that posts transfers has these
                {
                    "transfers": self.transfers,
                    "post_seconds": self.post_seconds,
                    "wait_seconds": self.wait_seconds,
                }
                if self.transfers
                else {}
            )


@dataclass(frozen=True)
class CacheControl:
    """What a backend can do so that the next read of a key comes from the medium, not a cache.

    `method` names how reads are made cold ("O_DIRECT": always; "fadvise_dontneed": `evict`
    before reading; "remote": nothing on this host can), `evicts` says whether `evict` does
    anything, and `note` says what "cold" means on this medium, in the summary's words."""

    method: str
    evicts: bool
    note: str


@dataclass(frozen=True)
class Durability:
    """What a finished write guarantees (`policy`) and who chose it (`source`: "user" for an
    explicit storage setting, "preset"/"workload" when a workload asked, "default", "medium")."""

    policy: str
    source: str


#: kinds of failure that are an answer from a live store (it looked, and said no), not a sign
#: that it is gone
ANSWER_KINDS = frozenset({"not_found", "access_denied", "unsupported", "corrupt", "throttled"})


class StoreGone(Exception):
    """The store gave no successful answer for `run.store_timeout_s`: every rank stops the run.

    Not a StorageError: no op loop may count it as one more failed op and carry on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Liveness:
    """Whether the store still answers, shared by a backend's retry loop and whoever runs ops.

    The clock starts at the first failure after a success (a pause between phases is no
    failure); once failures have gone on for `timeout_s` with no successful op, the store counts
    as gone: the retry loop stops retrying and op loops stop taking ops (`gone` holds the reason).
    Every method is a few attribute stores under the GIL, cheap enough to call once an op.
    """

    def __init__(self, timeout_s: float | None = None):
        self.timeout_s = timeout_s
        self.last_ok = time.perf_counter()
        self.failing_since: float | None = None  # first failure since the last success
        self.last_failure = 0.0
        self.errors = 0  # ops failed since the last success
        self.kinds: dict[str, int] = {}  # ... by kind
        self.first_error: StorageError | None = None
        self.last_error: StorageError | None = None
        self.gone: str | None = None

    def ok(self, now: float | None = None) -> None:
        self.last_ok = time.perf_counter() if now is None else now
        if self.failing_since is not None:
            self.failing_since, self.errors, self.first_error, self.kinds = None, 0, None, {}

    def trouble(self, now: float | None = None) -> None:
        """An attempt failed (it may still be retried).

        A gap longer than the timeout since the last failure, with no op at all in between (a
        pause for compute, a cleanup, a sparse arrival rate), is no failing time: the clock
        starts again. A dead store being worked on fails far more often than that."""
        now = time.perf_counter() if now is None else now
        if self.failing_since is None or (
            self.timeout_s is not None and now - self.last_failure > self.timeout_s
        ):
            self.failing_since = now
        self.last_failure = now

    def failed(self, exc: StorageError, now: float | None = None) -> None:
        """An op failed for good; an answer (not found, denied, corrupt) says the store is there."""
        if exc.kind in ANSWER_KINDS:
            return
        self.trouble(now)
        self.errors += 1
        self.kinds[exc.kind] = self.kinds.get(exc.kind, 0) + 1
        if self.first_error is None:
            self.first_error = exc
        self.last_error = exc

    def expired(self, now: float | None = None) -> bool:
        since = self.failing_since
        if since is None or self.timeout_s is None:
            return False
        return (time.perf_counter() if now is None else now) - since >= self.timeout_s

    def outcome(self, exc: StorageError | None, where: str, now: float | None = None) -> bool:
        """One op's result (None: it succeeded), for loops that time ops outside the phase
        runner; True once the store counts as gone (the caller stops taking ops)."""
        if exc is None:
            self.ok(now)
        else:
            now = time.perf_counter() if now is None else now
            self.failed(exc, now)
            if self.expired(now):
                self.declare(where, now)
        return self.gone is not None

    def deadline(self) -> float | None:
        """When the store will count as gone if nothing succeeds before (perf_counter time)."""
        since = self.failing_since
        return None if since is None or self.timeout_s is None else since + self.timeout_s

    def declare(self, where: str, now: float | None = None) -> str:
        """Mark the store gone (the first declaration wins); returns the reason."""
        if self.gone is None:
            t = time.perf_counter() if now is None else now
            first, last = self.first_error, self.last_error
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items(), key=lambda kv: -kv[1]))
            self.gone = (
                f"the store is gone: no operation succeeded during {where} for "
                f"{t - (self.failing_since or t):.0f} s (run.store_timeout_s={self.timeout_s:g}), "
                f"{self.errors} op(s) failed ({kinds or 'error'})"
                + (f"; first error: {first}" if first is not None else "")
                + (f"; last: {last}" if last is not None and last is not first else "")
            )
        return self.gone


class Leftovers:
    """What a cleanup (or an abort) could not remove: counted, and the first keys kept to list."""

    KEEP = 20

    def __init__(self) -> None:
        self.failed = 0
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def add(self, keys: Iterable[str]) -> None:
        with self._lock:
            for k in keys:
                self.failed += 1
                if len(self.keys) < self.KEEP:
                    self.keys.append(k)

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {"failed": self.failed, "left_behind": list(self.keys)}


class Writer(abc.ABC):
    """Streams one large file/object in chunks; `close` commits, `abort` leaves nothing behind."""

    @abc.abstractmethod
    def write(self, chunk: memoryview | bytes) -> None:
        """Append `chunk`. It is borrowed for this call only: when write returns (or raises) the
        backend has copied or sent what it needs and never touches `chunk` again, so the caller
        may overwrite it at once. A backend that streams later (multipart parts, async clients)
        stages into buffers of its own."""

    def submit(self, chunk: memoryview | bytes) -> Future[None]:
        """Append `chunk`, perhaps still in flight when this returns (write-behind): `chunk` is
        lent until the returned future is done, and the caller must not touch it before; the
        future's `result()` raises the write's StorageError. Chunks land in the order submitted;
        `close` waits for every one still in flight, `abort` too (then drops the stream). This
        default writes at once and returns a done future: a writer that can overlap writes
        (posix's positional writes) overrides it."""
        done: Future[None] = Future()
        try:
            self.write(chunk)
            done.set_result(None)
        except StorageError as exc:
            done.set_exception(exc)
        return done

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


#: the verbs a backend may leave out, and what the base class then does: "unsupported" (it
#: raises Unsupported, or does nothing), "emulated" (it goes through other verbs). A verb a
#: backend class defines is "native" unless the class declares otherwise in `capabilities`.
OPTIONAL_VERBS: dict[str, Support] = {
    "delete_many": "emulated",
    "sized_writer": "emulated",
    "mkdir": "unsupported",
    "rmdir": "unsupported",
    "rename": "unsupported",
    "bare": "emulated",
    "evict": "unsupported",
    "resident": "unsupported",
    "drop_caches": "unsupported",
}
#: the verbs every backend implements
REQUIRED_VERBS = ("put", "get", "get_range", "writer", "stat", "list", "delete")


class Backend(abc.ABC):
    """One storage medium. Keys are '/'-separated and relative to the backend's root or prefix.

    A backend is one module `dlio_ext/storage/<name>.py` (or a package) holding a `@register`ed
    subclass that declares its `name` and its `Settings` dataclass (see storage.settings) and
    builds itself from them (`from_settings`); nothing else is edited to add one."""

    #: the name users give as storage.type (and the module's name under dlio_ext/storage/)
    name: ClassVar[str] = "base"
    #: the dataclass of its `storage` keys, a storage.settings.Settings
    Settings: ClassVar[type[Settings]]
    #: every verb in REQUIRED_VERBS and OPTIONAL_VERBS -> native | emulated | unsupported. A
    #: class declares only the exceptions to the rule (a verb it defines by emulating it, e.g. a
    #: rename that copies); the whole table is derived when the class is made.
    capabilities: ClassVar[dict[str, Support]] = {}
    #: the validated settings the backend was built with
    settings: Settings

    #: what this very class declared in `capabilities`, before the table was derived
    _declared: ClassVar[dict[str, Support]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._declared = dict(cls.__dict__.get("capabilities", {}))
        table: dict[str, Support] = dict.fromkeys(REQUIRED_VERBS, "native") | OPTIONAL_VERBS
        unknown = sorted(set(cls._declared) - set(table))
        if unknown:
            raise TypeError(f"{cls.__name__}.capabilities names no verb: {', '.join(unknown)}")
        # from the base down to this class, so what a class nearer to this one says wins: a verb
        # it defines is native, unless it declares otherwise
        for klass in reversed(cls.__mro__):
            if klass is Backend or not issubclass(klass, Backend):
                continue
            table.update((verb, "native") for verb in table if verb in klass.__dict__)
            table.update(klass._declared if "_declared" in klass.__dict__ else {})
        cls.capabilities = table

    @classmethod
    def from_settings(cls, settings: Any, run_dir: str | None = None) -> Backend:
        """The backend its validated settings describe; `run_dir` (the run's directory, if
        any) is where a backend may put data that no setting places."""
        # the default for a backend whose __init__ takes its settings (and needs no run_dir)
        return cls(settings)  # type: ignore[call-arg]

    def supports(self, verb: str) -> Support:
        """native, emulated or unsupported: what this medium does for `verb`."""
        try:
            return self.capabilities[verb]
        except KeyError:
            raise ValueError(f"no verb {verb!r}; one of {', '.join(self.capabilities)}") from None

    def __init__(self) -> None:
        self.counters = Counters()
        #: set by the harness (run.store_timeout_s); without it the store is never given up on
        self.liveness = Liveness()
        #: what could not be deleted when the run cleaned up (or a writer aborted)
        self.leftovers = Leftovers()

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

    def sized_writer(self, key: str, size: int) -> Writer:
        """A writer for an object of `size` bytes, exactly what the caller will write (a close
        after fewer or a write past it raises StorageError). A medium that can use the size
        overrides this (the nixl memory tier places the object at once and writes each chunk
        straight to its place); the others stream as `writer` does."""
        return self.writer(key)

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

        elif verb in ("stat", "delete", "mkdir", "rmdir"):
            call = {"stat": self.stat, "delete": self.delete, "mkdir": self.mkdir, "rmdir": self.rmdir}[verb]
        else:
            raise ValueError(f"no bare form of {verb!r}; one of {BARE_VERBS}")
        return Bare(call, StorageError, _as_is)

    def bare_loops(self) -> str:
        """Why `bare` verbs have no compiled loop (`Bare.native`) here, for the results."""
        return f"{self.name} has no compiled verbs"

    # memory
    def alloc(self, nbytes: int) -> memoryview:
        """A writable buffer of `nbytes` this backend can do I/O from at full speed: page aligned
        (O_DIRECT needs it), its pages faulted in before any clock starts; a backend that needs
        registered memory (RDMA, GPUDirect) registers it here. Workloads allocate every I/O
        buffer through this, before their phases start, and keep it for the run."""
        # imported here: numpy starts its threads on import, and the cli imports this module
        # before it takes the signals (see run.lifecycle.take_signals)
        from dlio_ext.storage.buffers import aligned_buffer

        return aligned_buffer(nbytes)

    def home(self, key: str) -> int | None:
        """The rank whose memory holds `key` (a tier spread over the ranks), or None where every
        rank reaches the data alike (a file system, an object store). A workload that means to
        cross between ranks (rank r reads what lives at rank t) names its keys by it."""
        return None

    # caches and durability: what the medium can do, never which workload asks
    def local_root(self) -> str | None:
        """The local directory holding the data (to find its block device), or None if remote."""
        return None

    def cache_control(self) -> CacheControl:
        return CacheControl("none", False, "this medium offers no cache control")

    def evict(self, keys: Iterable[str]) -> None:
        """Make the next read of each key come from the medium (untimed; missing keys are skipped)."""
        return None

    @contextlib.contextmanager
    def cold_read(self, key: str) -> Iterator[None]:
        """Around one read of `key` that must come from the medium: evicts it on entry and, where
        the medium allows, keeps this host's other cold readers of `key` out until the read is
        done (two readers at once would share one cache fill). Untimed: enter before the clock."""
        self.evict((key,))
        yield

    def drop_caches(self) -> str | None:
        """Drop this host's whole page cache (asked for explicitly; root only): None on success,
        else why not."""
        return f"{self.name} keeps no data in this host's page cache"

    def resident(self, keys: Iterable[str]) -> tuple[int, int]:
        """(pages still in this host's page cache, pages) of the keys' data; (0, 0) if unknown."""
        return 0, 0

    def fsync_counters(self) -> tuple[int, float]:
        """fsync calls issued so far and the seconds spent in them (0 where writes need none): a
        read of `counters`, where a backend tallies every fsync it issues."""
        return self.counters.fsyncs()

    def durability(self) -> Durability:
        return Durability("not controlled by dlio-ext", "medium")

    def ask_durable(self, source: str) -> Durability:
        """A workload asks that every write be durable when it returns (MLPerf fsyncs each one),
        without knowing the medium. An explicit user setting of the backend wins; `source` names
        who asked ("preset", "workload"). Returns what now holds. Ask before the first write: a
        `bare` verb already built keeps the policy it was built with."""
        return self.durability()

    # lifecycle
    def check(self) -> None:
        """Fail fast with a clear StorageError if the medium cannot be used as configured."""
        return None

    def free_bytes(self) -> int | None:
        """Bytes a run may still store here (a file system's free space, a configured quota), or
        None when the medium does not say: the preflight check then has nothing to compare with."""
        return None

    def describe(self) -> dict[str, object]:
        """What results record of the storage (never credentials): the backend, its settings
        (redacted), what a completed write guarantees and what "cold" means for a read here."""
        durable, cache = self.durability(), self.cache_control()
        return {
            "backend": self.name,
            **self.settings.redacted(),
            "durability": durable.policy,
            "durability_source": durable.source,
            "cache_control": cache.method,
            "cache_note": cache.note,
        }

    def invalid_reasons(self) -> list[str]:
        """Why the run is invalid because of what the medium did (read on rank 0 after `close`;
        e.g. nixl's require_rdma when no RDMA transport carried the data): one sentence each."""
        return []

    def where(self) -> str:
        """Where this backend's data lives, in one phrase for a user (never credentials)."""
        return self.name

    def room(self) -> tuple[str, str]:
        """(what `free_bytes` counts, in the words of the settings; how a user makes more room),
        for the preflight check's message."""
        return self.where(), f"free space at {self.where()}"

    def close(self) -> None:
        return None


# the table of backends ---------------------------------------------------------------------

#: every backend, by name (module `dlio_ext.storage.<name>`, imported when first named)
BACKENDS: Registry[type[Backend]] = Registry("dlio_ext.storage", "storage.type", "backends")
register = BACKENDS.register
known = BACKENDS.known
backend_class = BACKENDS.get
