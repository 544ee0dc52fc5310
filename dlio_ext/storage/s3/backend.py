"""The S3 backend: the verbs of base.Backend over one driver (obstore or boto3, chosen by
`storage.client`), called only through the `Driver` protocol, with the retries and liveness of
`Calls`.

A `get` asks for the first part_size bytes (a ranged GET, whose Content-Range tells the object's
size); an object larger than that has its other parts fetched in parallel, up to `concurrency`
at once, straight into slices of the caller's buffer, each part retried alone and pinned to the
first answer's ETag (If-Match). Both clients, except boto3 with checksum=when_supported: a ranged
answer has no whole-object checksum, so there a GET stays one plain request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, wait
from typing import Any

from dlio_ext.storage.base import (
    AccessDenied,
    Backend,
    CacheControl,
    Durability,
    ObjectInfo,
    StorageError,
    Unreachable,
    Writer,
    register,
)
from dlio_ext.storage.s3.boto3_driver import Boto3Driver
from dlio_ext.storage.s3.calls import Calls
from dlio_ext.storage.s3.driver import Driver, as_view
from dlio_ext.storage.s3.errors import DENIED_CODES, UNREACHABLE, GaveUp, error_for, unreachable
from dlio_ext.storage.s3.obstore_driver import ObstoreDriver
from dlio_ext.storage.s3.settings import (
    CHECK_CONNECT_TIMEOUT,
    CHECK_READ_TIMEOUT,
    CHECK_RETRIES,
    S3Settings,
    redact_url,
)

DELETE_BATCH = 1000

#: the drivers by `storage.client`: each built from (settings, connect_timeout, read_timeout)
DRIVERS: dict[str, Callable[[S3Settings, float, float], Driver]] = {
    "obstore": ObstoreDriver,
    "boto3": Boto3Driver,
}


@register
class S3Backend(Backend):
    """Objects under `prefix` in one bucket. Thread-safe: one client serves every thread."""

    name = "s3"
    Settings = S3Settings
    capabilities = {"mkdir": "emulated", "rmdir": "emulated", "rename": "emulated"}

    def __init__(self, settings: S3Settings):
        super().__init__()
        self.settings = settings
        self._driver: Driver = DRIVERS[settings.client](
            settings, settings.connect_timeout, settings.read_timeout
        )
        self._calls = Calls(settings, self, self._driver.classify)
        self._check_driver: Driver | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> S3Backend:
        return cls(S3Settings.from_config(cfg))

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"S3Backend(client={s.client!r}, endpoint={redact_url(s.endpoint)!r}, "
            f"bucket={s.bucket!r}, prefix={s.prefix!r})"
        )

    # data verbs ----------------------------------------------------------------------------
    def put(self, key: str, data: memoryview | bytes) -> None:
        self._driver.put(self._calls, key, as_view(data))

    def get(self, key: str, into: memoryview) -> int:
        """One ranged GET of the first part_size bytes tells the object's size; a larger object's
        other parts are then fetched in parallel (`concurrency` in flight) into the caller's
        buffer, each retried alone. A small object costs one request, as a plain GET would."""
        view = as_view(into)
        rest = _RangedGet(self._calls, self._driver, key, view)
        try:
            size = self._calls.call(
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
        except GaveUp as gave_up:
            self._calls.fail("get", key, gave_up.failure, gave_up.attempts)
        return size

    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        view = as_view(into)
        if not len(view):
            return 0
        return self._calls.call("get_range", key, self._driver.get_range_into, key, offset, view)

    def writer(self, key: str) -> Writer:
        return self._driver.writer(self._calls, key)

    # metadata verbs ------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        return self._calls.call("stat", key, self._driver.head, key)

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        return self._driver.list(self._calls, prefix, delimiter or None)

    def delete(self, key: str) -> None:
        self._calls.call("delete", key, self._driver.delete, key)

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
            errors = self._calls.attempts(self._driver.delete_batch, (batch,), self.settings.retries)
        except GaveUp as gave_up:
            if gave_up.failure.status is None or gave_up.failure.retryable:
                self._calls.fail("delete_many", None, gave_up.failure, gave_up.attempts)
            # obstore stops at the first refused key: go key by key to count them all
            refused = 0
            for key in batch:
                try:
                    self._calls.call("delete", key, self._driver.delete, key)
                except StorageError as exc:
                    failed.append((key, exc.kind))
                    refused += 1
            return len(batch) - refused
        for key, code in errors:
            kind = AccessDenied.kind if code in DENIED_CODES else StorageError.kind
            self.counters.error(kind)
            failed.append((key, code or "error"))
        return len(batch) - len(errors)

    def mkdir(self, key: str) -> None:
        """S3 has no directories: a key's prefix exists as soon as the key does."""

    def rmdir(self, key: str) -> None:
        """S3 has no directories: nothing to remove once the keys under it are gone."""

    def rename(self, src: str, dst: str) -> None:
        # S3 has no rename: server-side copy (CopyObject, up to 5 GiB), then delete the source
        self._calls.call("rename", src, self._driver.copy, src, dst)
        self._calls.call("rename", src, self._driver.delete, src)

    # lifecycle -----------------------------------------------------------------------------
    def check(self) -> None:
        s = self.settings
        endpoint = redact_url(s.endpoint) or f"S3 in {s.region}"
        with self._lock:
            if self._check_driver is None:
                self._check_driver = DRIVERS[s.client](
                    s, min(s.connect_timeout, CHECK_CONNECT_TIMEOUT), min(s.read_timeout, CHECK_READ_TIMEOUT)
                )
            driver = self._check_driver
        try:
            self._calls.attempts(driver.probe, (), min(s.retries, CHECK_RETRIES))
            return
        except GaveUp as gave_up:
            f, attempts = gave_up.failure, gave_up.attempts
        err: StorageError
        if f.status == 404 or f.code == "NoSuchBucket":
            err = StorageError(
                f"bucket {s.bucket} does not exist at {endpoint}; create it or set storage.bucket"
            )
        elif f.denied or f.transport == "credentials":
            err = AccessDenied(
                f"access denied to bucket {s.bucket} at {endpoint} ({f.code or f.status or 'no credentials'}); "
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or storage.access_key/storage.secret_key)"
            )
        elif f.transport in UNREACHABLE:
            err = Unreachable(
                f"cannot reach {endpoint}: {unreachable(s, f.transport)}; check storage.endpoint "
                "(or AWS_ENDPOINT_URL) and that the server is running (a local one: dlio-ext s3-server start)"
            )
        else:
            err = error_for(s, "check", None, f, attempts)
        self._calls.refuse(err)

    def free_bytes(self) -> int | None:
        return self.settings.quota_bytes or None  # S3 tells no free space; only a known quota

    def cache_control(self) -> CacheControl:
        return CacheControl("remote", False, "object store: server cache not controlled")

    def durability(self) -> Durability:
        return Durability("object store: a completed PUT or multipart upload is the commit", "medium")

    def where(self) -> str:
        s = self.settings
        where = f"s3://{s.bucket}/{s.prefix + '/' if s.prefix else ''}"
        return f"{where} at {redact_url(s.endpoint) or f'S3 in {s.region}'}"

    def room(self) -> tuple[str, str]:
        s = self.settings
        return f"s3://{s.bucket}/{s.prefix} (storage.quota_bytes)", "raise storage.quota_bytes"

    def close(self) -> None:
        self._calls.close()
        for driver in (self._driver, self._check_driver):
            if driver is not None:
                driver.close()


class _RangedGet:
    """The parts of one object after its first: `concurrency` ranges in flight, counting the
    caller's thread, which joins in once its first part is read. Each range is retried alone;
    the first range that fails for good stops the rest, and the GET raises (and counts) it once."""

    def __init__(self, calls: Calls, driver: Driver, key: str, view: memoryview):
        self.c, self.d, self.key, self.view = calls, driver, key, view
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
            step = self.c.settings.part_size
            self.pending = [(off, min(off + step, total)) for off in range(step, total, step)][::-1]
            helpers = min(self.c.settings.concurrency - 1, len(self.pending))
        if helpers > 0:
            executor = self.c.executor()
            for _ in range(helpers):  # one by one: if a submit fails, stop() still waits for the rest
                self.helpers.append(executor.submit(self._work))

    def _work(self) -> None:
        driver, budget = self.d, self.c.settings.retries
        while True:
            with self.lock:
                if self.failure is not None or not self.pending:
                    return
                start, end = self.pending.pop()
            try:
                self.c.attempts(driver.get_part, (self.key, start, self.view[start:end], self.etag), budget)
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
