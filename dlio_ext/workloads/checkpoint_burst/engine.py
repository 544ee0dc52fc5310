"""Streams planned files through a backend, chunk by chunk, from the content pool; reads them back
and verifies every byte. One call a file, its outcome in a FileEvent (never raised)."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from dlio_ext.storage.base import Backend, StorageError, VerifyError
from dlio_ext.workloads.checkpoint_burst.content import Content
from dlio_ext.workloads.checkpoint_burst.plan import PlannedFile
from dlio_ext.workloads.content import StreamHash
from dlio_ext.workloads.phases import FileEvent


class Engine:
    """Streams planned files through a backend, chunk by chunk, from the content pool."""

    def __init__(self, backend: Backend, content: Content, verify: bool = True, write_behind: int = 1):
        self.b, self.content, self.verify = backend, content, verify
        self.chunk = content.chunk
        #: a file's chunks in flight at once (Writer.submit); each holds its pool buffer until its
        #: write is done, so the pool's bodies of one I/O thread bound it too
        self.write_behind = max(1, write_behind)

    # write ----------------------------------------------------------------------------------------
    def write_file(self, f: PlannedFile, ckpt: int, kind: str = "write") -> FileEvent:
        ev = FileEvent(kind, ckpt, f.name, f.nbytes, time.perf_counter())
        c = self.content
        fkey = c.file_key(ckpt, f.writer, f.index)
        fh = StreamHash()
        # (write done, pool body it holds, chunk index), oldest first
        inflight: deque[tuple[Future[None], int, int]] = deque()

        def landed() -> None:
            """Wait for the oldest write in flight (its error raises); its body is free again."""
            fut, _, i = inflight.popleft()
            fut.result()
            if i == 0:
                ev.first_byte = time.perf_counter()

        try:
            w = self.b.sized_writer(f.key, f.nbytes)  # a file's size is known: a medium may place it at once
            ev.opened = time.perf_counter()
            closing = False
            try:
                off, i = 0, 0
                while off < f.nbytes:
                    n = min(self.chunk, f.nbytes - off)
                    p = c.body(f.writer, f.index, i)
                    # lent to the backend until its write is done: never restamped before
                    while inflight and (
                        len(inflight) >= self.write_behind or any(q == p for _, q, _ in inflight)
                    ):
                        landed()
                    buf = c.bufs[p]
                    words = c.stamp(buf, fkey, i, n, p)
                    inflight.append((w.submit(buf[:n]), p, i))
                    fh.update(words, c.digest(p, n))
                    off += n
                    i += 1
                while inflight:
                    landed()
                t = time.perf_counter()
                closing = True
                w.close()
                ev.close_s = time.perf_counter() - t
            except BaseException:
                if not closing:  # a failed close has already released (or aborted) the file
                    abort(w)  # waits for the writes still in flight: the pool is ours again after
                raise
            ev.ok = True
            ev.digest = fh.hexdigest()
        except StorageError as exc:
            ev.failed(exc)
        ev.end = time.perf_counter()
        return ev

    # read -----------------------------------------------------------------------------------------
    def read_file(self, f: PlannedFile, ckpt: int, rbufs: memoryview | Sequence[memoryview]) -> FileEvent:
        """Read and verify one file. With k + 1 buffers the next k chunks are fetched (on k helper
        threads; the backend's read releases the GIL) while this one is verified, so checking every
        byte costs no storage time and one reader keeps k reads queued at the device. Chunk i
        lands in buffer i mod (k + 1): never one being verified or still being read into."""
        ev = FileEvent("restore", ckpt, f.name, f.nbytes, time.perf_counter())
        bufs = [rbufs] if isinstance(rbufs, memoryview) else list(rbufs)
        chunks = [(off, min(self.chunk, f.nbytes - off)) for off in range(0, f.nbytes, self.chunk)]
        depth = min(len(bufs) - 1, len(chunks) - 1)
        pool = ThreadPoolExecutor(max_workers=depth) if depth > 0 else None
        futs: deque[Future[int]] = deque()

        def fetch(i: int) -> int:
            off, n = chunks[i]
            return self.b.get_range(f.key, off, bufs[i % len(bufs)][:n])

        try:
            size = self.b.stat(f.key).size
            ev.opened = time.perf_counter()
            if size != f.nbytes:
                raise VerifyError(f"{f.key}: {size} bytes on storage, {f.nbytes} written", f.key)
            fh = StreamHash()
            c, fkey = self.content, self.content.file_key(ckpt, f.writer, f.index)
            if pool is not None:
                futs.extend(pool.submit(fetch, i) for i in range(depth))
            for i, (off, n) in enumerate(chunks):
                if pool is not None:
                    got = futs.popleft().result()
                    if i + depth < len(chunks):  # into the buffer verified last: done with
                        futs.append(pool.submit(fetch, i + depth))
                else:
                    got = fetch(i)
                if i == 0:
                    ev.first_byte = time.perf_counter()
                if got != n:
                    raise VerifyError(f"{f.key}: short read at offset {off} ({got} of {n} bytes)", f.key)
                if self.verify:
                    # the block stamps, then the body against the pool's digest
                    fh.update(*c.verify(bufs[i % len(bufs)], fkey, i, n, c.body(f.writer, f.index, i), f.key))
            ev.ok = True
            ev.digest = fh.hexdigest() if self.verify else ""
        except StorageError as exc:
            ev.failed(exc)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # no read may still be landing in a buffer we hand back
        ev.end = time.perf_counter()
        return ev

    def expected_digest(self, f: PlannedFile, ckpt: int) -> str:
        """The content hash a file of this plan must have (what the writer wrote), without I/O."""
        c = self.content
        return c.expected(
            c.file_key(ckpt, f.writer, f.index), f.nbytes, lambda i: c.body(f.writer, f.index, i)
        )


def abort(w: Any) -> None:
    """Abort a writer after a failure, keeping that failure the one reported."""
    with contextlib.suppress(Exception):  # the error that made us abort is the one worth reporting
        w.abort()
