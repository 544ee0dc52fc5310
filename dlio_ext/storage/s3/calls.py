"""The backend's side of every request, whichever client sends it: one retry loop (so a retry
is counted the same way whichever client measured it), the store's liveness, and what verbs of
many requests share (the part threads, the staging buffers).

Both clients run with their own retries switched off; a driver makes single attempts and
`Calls` retries them, counts them in the backend's `Counters`, tells the backend's `Liveness`,
and raises the final failure as the same `StorageError` subclass for either client.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from dlio_ext.storage.base import Backend, Counters, Leftovers, Liveness, StorageError
from dlio_ext.storage.s3.errors import Failure, GaveUp, error_for
from dlio_ext.storage.s3.settings import S3Settings

T = TypeVar("T")


class PartPool:
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


class Calls:
    """Runs a driver's single attempts with our retries for one backend (`owner`: its counters,
    liveness and leftovers); `classify` is the driver's, turning its SDK's exceptions into
    Failures (None: not a request failure, raised as it is)."""

    def __init__(
        self, settings: S3Settings, owner: Backend, classify: Callable[[BaseException], Failure | None]
    ):
        self.settings = settings
        self.owner = owner
        self.classify = classify
        # the backend's tallies, made once by Backend.__init__
        self.counters: Counters = owner.counters
        self.leftovers: Leftovers = owner.leftovers
        self.pool = PartPool(settings.part_size, keep=2 * (settings.concurrency + 1))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def liveness(self) -> Liveness:
        """The backend's, looked up each time: whoever runs the ops may hand it a new one."""
        return self.owner.liveness

    def may_retry(self, failure: Failure, attempt: int, budget: int) -> bool:
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

    def attempts(self, fn: Callable[..., T], args: tuple[Any, ...], budget: int) -> T:
        """`fn(*args)` with up to `budget` retries; raises GaveUp when out of them."""
        attempt = 0
        while True:
            try:
                out = fn(*args)
                self.liveness.ok()
                return out
            except StorageError:
                raise
            except Exception as exc:
                failure = self.classify(exc)
                if failure is None:
                    raise
                if self.may_retry(failure, attempt, budget):
                    attempt += 1
                    continue
                raise GaveUp(failure, attempt + 1) from None

    def call(self, op: str, key: str | None, fn: Callable[..., T], *args: Any) -> T:
        """Run one request with our retries; a final failure is counted and translated."""
        try:
            return self.attempts(fn, args, self.settings.retries)
        except StorageError as exc:
            self.counters.error(exc.kind)
            raise
        except GaveUp as gave_up:
            self.fail(op, key, gave_up.failure, gave_up.attempts)

    def fail(self, op: str, key: str | None, f: Failure, attempts: int) -> NoReturn:
        """Count and raise the StorageError for a request that failed for good."""
        err = error_for(self.settings, op, key, f, attempts)
        self.counters.error(err.kind)
        raise err from None  # the SDK's exception stays out of tracebacks: it may echo headers

    def refuse(self, err: StorageError) -> NoReturn:
        """Count and raise an error found before (or without) any request."""
        self.counters.error(err.kind)
        raise err

    def executor(self) -> ThreadPoolExecutor:
        """The threads parts of objects go out on (uploads and ranged reads)."""
        with self._lock:
            if self._executor is None:
                # threads start on demand; the cap leaves room for several streams (io depth)
                self._executor = ThreadPoolExecutor(
                    max_workers=min(512, self.settings.concurrency * 16), thread_name_prefix="dlio-s3-part"
                )
            return self._executor

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
