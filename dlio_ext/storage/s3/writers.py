"""Streaming writers and boto3's multipart upload.

Both writers copy the caller's chunks into part-sized staging buffers of their own (the
`PartPool` of the backend's `Calls`, reused across streams): boto3's because its parts go out on
other threads, obstore's because its writer keeps zero-copy references until a part is
uploaded. No writer holds a caller's buffer after `write` returns (base.py, "Buffer ownership").
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any, NoReturn

from dlio_ext.storage.base import StorageError, Writer
from dlio_ext.storage.s3.calls import Calls
from dlio_ext.storage.s3.driver import as_view, let_go
from dlio_ext.storage.s3.settings import MAX_PARTS

if TYPE_CHECKING:
    from dlio_ext.storage.s3.boto3_driver import Boto3Driver
    from dlio_ext.storage.s3.obstore_driver import ObstoreDriver


class Multipart:
    """One boto3 multipart upload: at most `concurrency` parts in flight, each retried alone."""

    def __init__(self, calls: Calls, driver: Boto3Driver, key: str):
        self.c, self.d, self.key = calls, driver, key
        self.upload_id: str = calls.call("put", key, driver.create_upload, key)
        self.parts: dict[int, dict[str, Any]] = {}
        self.inflight: set[Future[tuple[int, dict[str, Any]]]] = set()
        self.next_number = 1

    def submit(self, view: memoryview, release: Callable[[], None] | None = None) -> None:
        if self.next_number > MAX_PARTS:
            self.c.counters.error(StorageError.kind)
            raise StorageError(
                f"put {self.key!r}: more than {MAX_PARTS} parts; raise storage.part_size", self.key
            )
        self._drain(self.c.settings.concurrency - 1)
        number, self.next_number = self.next_number, self.next_number + 1
        self.inflight.add(self.c.executor().submit(self._upload, number, view, release))

    def _upload(
        self, number: int, view: memoryview, release: Callable[[], None] | None
    ) -> tuple[int, dict[str, Any]]:
        try:
            return number, self.c.call(
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
        self.c.call("put", self.key, self.d.complete_upload, self.key, self.upload_id, parts)

    def abort(self) -> None:
        """Leave nothing behind: let running parts end, then AbortMultipartUpload."""
        for fut in self.inflight:
            fut.cancel()
        wait(self.inflight)
        self.inflight.clear()
        # a failed abort is counted and its upload listed as left behind; the error that caused
        # the abort is the one worth raising
        try:
            self.c.call("abort", self.key, self.d.abort_upload, self.key, self.upload_id)
        except StorageError:
            self.c.leftovers.add([f"{self.key} (multipart upload {self.upload_id})"])


class _StagingWriter(Writer):
    """Copies the caller's chunks into part-sized buffers of the backend's pool, so the caller may
    reuse a chunk as soon as `write` returns; a full part is shipped (`_ship`) only once more data
    arrives, so an object of one part stays a plain PUT at close."""

    def __init__(self, calls: Calls, key: str):
        self.c, self.key = calls, key
        self.step = calls.settings.part_size
        self.buf: memoryview | None = calls.pool.get()
        self.fill = 0
        self.done = False

    def write(self, chunk: memoryview | bytes) -> None:
        if self.done or self.buf is None:
            raise StorageError(f"write {self.key!r}: the writer is closed", self.key)
        mv = as_view(chunk)
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

    def close(self) -> None:
        if self.done:
            return
        try:
            self._commit()
        except BaseException:
            self.abort()
            raise
        self.done = True
        self._release()

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self._drop()
        self._release()

    def _release(self) -> None:
        """The staging buffer back to the pool."""
        if self.buf is not None:
            self.c.pool.put(self.buf)
            self.buf = None

    @abc.abstractmethod
    def _ship(self) -> None:
        """Send the staged part and start a fresh staging buffer."""

    @abc.abstractmethod
    def _commit(self) -> None:
        """Send what is staged and commit the object (one PUT if no part was shipped yet)."""

    @abc.abstractmethod
    def _drop(self) -> None:
        """Abandon the upload under way, if any: nothing of it stays on the store."""


class Boto3Writer(_StagingWriter):
    """Stages chunks into pooled part buffers (the caller may reuse its chunk at once); an object
    that fits one part goes as a single PUT at close, a larger one as a multipart upload."""

    def __init__(self, calls: Calls, driver: Boto3Driver, key: str):
        super().__init__(calls, key)
        self.d = driver
        self.upload: Multipart | None = None

    def _ship(self) -> None:
        assert self.buf is not None
        if self.upload is None:
            self.upload = Multipart(self.c, self.d, self.key)
        buf, fill, pool = self.buf, self.fill, self.c.pool
        self.buf = None  # owned by the part upload now; it goes back to the pool when sent
        self.upload.submit(buf[:fill], release=lambda: pool.put(buf))
        self.buf, self.fill = pool.get(), 0

    def _commit(self) -> None:
        if self.upload is None:
            assert self.buf is not None
            self.c.call("put", self.key, self.d.put_object, self.key, self.buf[: self.fill])
        else:
            if self.fill:
                self._ship()
            self.upload.complete()

    def _drop(self) -> None:
        if self.upload is not None:
            self.upload.abort()


class ObstoreWriter(_StagingWriter):
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

    def __init__(self, calls: Calls, driver: ObstoreDriver, key: str):
        super().__init__(calls, key)
        self.d = driver
        self.w: Any = None  # obstore's writer, opened when a second part begins
        #: staging buffers obstore may still hold: (the view it was handed, the pool buffer)
        self.lent: list[tuple[memoryview, memoryview]] = []

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
        self.buf = self.c.pool.get()  # a new one when none is free: the pool grows, never waits

    def _reclaim(self) -> None:
        held = []
        for hand, buf in self.lent:
            if let_go(hand):
                self.c.pool.put(buf)
                # obstore let go of a part it uploaded: the store answers, though the stream has
                # not closed yet (a long one would otherwise look like no progress at all)
                self.c.liveness.ok()
            else:
                held.append((hand, buf))
        self.lent = held

    def _commit(self) -> None:
        if self.w is None:
            assert self.buf is not None
            self.d.put(self.c, self.key, self.buf[: self.fill])
        else:
            if self.fill:
                self._hand()
            try:
                self.w.close()
            except Exception as exc:
                self._fail("close", exc)

    def _drop(self) -> None:
        if self.w is not None:
            # obstore's WritableFile aborts (AbortMultipartUpload) when left with an exception; if
            # it already failed or closed, the sweep below still runs
            with contextlib.suppress(Exception):
                self.w.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self.d.sweep_uploads(self.key, self.c.leftovers)

    def _release(self) -> None:
        """Staging buffers back to the pool. One obstore still holds (an aborted upload's parts,
        let go of within milliseconds) is left to it and dropped from here: never reused."""
        super()._release()
        self._reclaim()
        self.lent = []

    def _fail(self, op: str, exc: Exception) -> NoReturn:
        failure = self.d.classify(exc)
        self.abort()
        if failure is None:
            raise exc
        self.c.fail(op, self.key, failure, 1)
