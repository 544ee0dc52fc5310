"""Who owns a buffer, and until when (dlio_ext/storage/base.py, "Buffer ownership"): a verb borrows
the caller's buffer for the call only. Checked on every backend and client by what a caller would
do next: overwrite the buffer the moment a put or write returns, then read back what was stored;
and, for reads, watch the buffer after get/get_range return (or raise) for bytes still landing.

A backend that kept a zero-copy reference (obstore's writer does, until the part is uploaded) is
caught twice: the stored bytes are the garbage written after the call, and the view it was given
cannot be released (`memoryview.release` refuses while a client still holds an export of it).

The real parts: posix files (buffered and O_DIRECT), the session's SeaweedFS through both S3
clients, mpirun with 2 ranks. Only `FakeSlowPartsProxy` is fake: it delays and fails chosen GETs
in front of the real server, which no real server does on demand.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xxhash
from conftest import S3_CLIENTS
from helpers import run_cli, tmpfs

from dlio_ext.compat.faults import FaultProxy
from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage import open_backend, posix
from dlio_ext.storage.base import Backend, StorageError
from dlio_ext.storage.buffers import aligned_buffer
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads import checkpoint_burst as cb

MIB = 1 << 20
PART = 5 * MIB  # the part size of every S3 config in these tests (s3_cfg_for)
BACKENDS = (
    "posix",
    "posix_direct",
    "s3_obstore",
    "s3_boto3",
    "nixl",
    "nixl_file",
    "nixl_file_direct",
    "nixl_obj",
)
#: chunk sizes fed to one streaming writer: below, at and across the part size, odd lengths too
CHUNKS = (MIB, 3 * MIB, MIB, PART, 7 * MIB, 4097, 2 * MIB, 12 * MIB, 100, PART - 100)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = str(request.param)
    if kind.startswith("posix"):
        # a 1 MiB staging chunk: O_DIRECT stages unaligned pieces through it, often
        b: Backend = PosixBackend(str(tmp_path / "data"), direct=kind == "posix_direct", chunk_size=MIB)
    elif kind.startswith("nixl"):
        # nixl: the memory tier of this one process (its transfers loop back through UCX); its
        # file and obj media (NIXL's POSIX and OBJ plugins). What NIXL's loader sets in the
        # environment is undone after the test, so no later subprocess inherits it
        mp = request.getfixturevalue("monkeypatch")
        for var in ("NIXL_LOG_LEVEL", "UCX_MODULES", "UCX_PROTO_INFO", "UCX_LOG_FILE"):
            mp.setenv(var, os.environ.get(var, ""))
            if not os.environ[var]:
                mp.delenv(var)
        if kind == "nixl_obj":
            s3 = request.getfixturevalue("s3_cfg_for")("boto3")
            keys = ("endpoint", "bucket", "region", "access_key", "secret_key", "prefix")
            cfg = {"medium": "obj", **{k: s3[k] for k in keys}}
        elif kind.startswith("nixl_file"):
            cfg = {"medium": "file", "root": str(tmp_path / "data"), "direct": kind.endswith("direct")}
        else:
            cfg = {"pool_bytes": 128 * MIB}
        b = open_backend({"type": "nixl", **cfg}, str(tmp_path))
    else:
        b = open_backend(request.getfixturevalue("s3_cfg_for")(kind.removeprefix("s3_")))
    b.check()
    try:
        yield b
    finally:
        b.close()


def _content(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def _garbage(buf: memoryview) -> None:
    np.frombuffer(buf, dtype=np.uint8)[:] = 0xA5


def _released(view: memoryview) -> bool:
    """True if nobody holds an export of `view` any more (a zero-copy client would)."""
    try:
        view.release()
        return True
    except BufferError:
        return False


def _read_back(b: Backend, key: str, size: int) -> bytes:
    into = aligned_buffer(size + 8192)
    n = b.get(key, into)
    return bytes(into[:n])


@pytest.mark.parametrize("size", [4096, MIB + 7, PART, 12 * MIB + 4096])
def test_put_then_overwrite_stores_the_original(backend: Backend, size: int) -> None:
    buf = aligned_buffer(size)
    want = _content(size, size)
    buf[:] = want
    hand = buf[:]  # the view the backend is given: a client still holding it cannot be released
    backend.put("own/put", hand)
    _garbage(buf)
    assert _released(hand), "the backend still holds the buffer put was given"
    assert _read_back(backend, "own/put", size) == want


def test_writer_chunks_overwritten_after_each_write(backend: Backend) -> None:
    """One reused source buffer, overwritten with garbage as soon as each write returns (what the
    checkpoint engine does with its pool): the object must be exactly the chunks as they were."""
    want = _content(sum(CHUNKS), 11)
    src = aligned_buffer(max(CHUNKS))
    held: list[int] = []
    with backend.writer("own/stream") as w:
        off = 0
        for i, n in enumerate(CHUNKS):
            src[:n] = want[off : off + n]
            hand = src[:n]
            w.write(hand)
            _garbage(src)
            if not _released(hand):
                held.append(i)
            off += n
    got = _read_back(backend, "own/stream", len(want))
    starts = np.cumsum((0, *CHUNKS[:-1]))
    bad = [
        i for i, (o, n) in enumerate(zip(starts, CHUNKS, strict=True)) if got[o : o + n] != want[o : o + n]
    ]
    assert len(got) == len(want)
    assert not bad, f"chunks {bad} of {len(CHUNKS)} were stored as the garbage written after write() returned"
    assert not held, f"write() returned still holding chunks {held}"
    # one stream after another on the same backend: staging buffers come back clean
    with backend.writer("own/stream2") as w:
        for n in CHUNKS[:4]:
            src[:n] = want[:n]
            w.write(src[:n])
            _garbage(src)
    assert _read_back(backend, "own/stream2", sum(CHUNKS[:4])) == b"".join(want[:n] for n in CHUNKS[:4])


def test_submitted_chunks_are_lent_until_their_write_is_done(backend: Backend) -> None:
    """Writer.submit (write-behind): up to four chunks in flight from four source buffers, each
    overwritten with garbage only once its own write is done, as the checkpoint engine does with
    its pool. The object must be exactly the chunks as they were, in the order submitted."""
    want = _content(sum(CHUNKS), 13)
    srcs = [aligned_buffer(max(CHUNKS)) for _ in range(4)]
    inflight: list[tuple[Any, memoryview, memoryview]] = []
    held: list[int] = []

    def landed() -> None:
        fut, src, hand = inflight.pop(0)
        fut.result()
        _garbage(src)
        if not _released(hand):
            held.append(len(held))

    with backend.writer("own/behind") as w:
        off = 0
        for i, n in enumerate(CHUNKS):
            if len(inflight) == len(srcs):
                landed()
            src = srcs[i % len(srcs)]
            src[:n] = want[off : off + n]
            hand = src[:n]
            inflight.append((w.submit(hand), src, hand))
            off += n
        while inflight:
            landed()
    assert _read_back(backend, "own/behind", len(want)) == want
    assert not held, "a write was done but its chunk was still held"


def _still(buf: memoryview, settle: float = 0.3) -> bool:
    """The buffer holds the same bytes `settle` seconds later: nothing is still landing in it."""
    before = bytes(buf)
    time.sleep(settle)
    return bytes(buf) == before


def test_reads_leave_the_buffer_alone_once_returned(backend: Backend) -> None:
    size = 12 * MIB + 4096  # three parts on S3: a get fetches two of them on helper threads
    want = _content(size, 3)
    backend.put("own/read", want)
    into = aligned_buffer(size + 8192)
    np.frombuffer(into, dtype=np.uint8)[:] = 0x5A
    hand = into[:]
    assert backend.get("own/read", hand) == size
    assert _released(hand) and bytes(into[:size]) == want and _still(into)
    for offset, n in ((0, MIB), (PART - 100, 7 * MIB), (size - 4096, 8192)):
        into2 = aligned_buffer(n)
        hand = into2[:]
        got = backend.get_range("own/read", offset, hand)
        assert got == min(n, size - offset)
        assert _released(hand) and bytes(into2[:got]) == want[offset : offset + got] and _still(into2)
    # failures: a buffer too small, a missing key; nothing lands afterwards
    small = aligned_buffer(MIB)
    for call in (lambda: backend.get("own/read", small), lambda: backend.get_range("own/nope", 0, small)):
        with pytest.raises(StorageError):
            call()
        assert _still(small)


class FakeSlowPartsProxy(FaultProxy):
    """FAKE: the fault proxy of `dlio-ext s3-faults` in front of the real SeaweedFS. Of the GETs
    of one key, the first passes, the next is held `delay` seconds then passes, the ones after it
    fail with 400 (never retried): a ranged get that fails while a part is still on its way."""

    def __init__(self, upstream: str, key: str, delay: float):
        self.gets = 0
        self.delay = delay

        def rule(_n: int, method: str, path: str) -> int | None:
            if method != "GET" or key not in path:
                return None
            with self._lock:
                self.gets += 1
                nth = self.gets
            if nth == 2:
                time.sleep(self.delay)
            return 400 if nth >= 3 else None

        super().__init__(upstream, rule=rule)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_failed_ranged_get_leaves_nothing_landing(
    s3_server: ServerInfo, s3_cfg_for: Callable[..., dict[str, Any]], client: str
) -> None:
    cfg = s3_cfg_for(client)
    direct = open_backend(cfg)
    size = 3 * PART + 4096  # four parts: the first, then three on helpers
    direct.put("own/slow", _content(size, 5))
    with FakeSlowPartsProxy(s3_server.endpoint, "own/slow", delay=0.6) as proxy:
        b = open_backend(cfg | {"endpoint": proxy.endpoint})
        into = aligned_buffer(size)
        hand = into[:]
        t0 = time.perf_counter()
        with pytest.raises(StorageError):
            b.get("own/slow", hand)
        # the delayed part was read before get raised: nothing of it arrives later
        assert time.perf_counter() - t0 >= 0.5
        assert _released(hand) and _still(into, 1.0)
        b.close()
    assert proxy.gets >= 3
    direct.close()


def test_failed_restore_leaves_no_read_ahead_landing(
    s3_server: ServerInfo, s3_cfg_for: Callable[..., dict[str, Any]]
) -> None:
    """The checkpoint engine reads the next chunk while it verifies this one: a restore that fails
    on a chunk returns only once the read-ahead has landed, so its buffers are the caller's again."""
    cfg = s3_cfg_for("obstore")
    direct = open_backend(cfg)
    content = cb.Content(7, MIB, 4 * MIB, 1)
    f = cb.PlannedFile("own/ckpt", "ckpt", 4 * MIB, 0, 0, "model")
    assert cb.Engine(direct, content).write_file(f, 0).ok
    with FakeSlowPartsProxy(s3_server.endpoint, "own/ckpt", delay=0.6) as proxy:
        b = open_backend(cfg | {"endpoint": proxy.endpoint})
        bufs = [aligned_buffer(MIB), aligned_buffer(MIB)]
        # checkpoint 1 was never written: chunk 0's stamps are checkpoint 0's, while chunk 1 is
        # held in the proxy
        ev = cb.Engine(b, content).read_file(f, 1, bufs)
        assert not ev.ok and ev.error_kind == "corrupt" and "stamp differs" in str(ev.error)
        assert all(_still(buf, 1.0) for buf in bufs)
        b.close()
    assert proxy.gets >= 2
    direct.close()


# --- the checkpoint run of issue #10 ----------------------------------------------------------------

BUG_RUN = (
    "workload=checkpoint_burst/llama3_8b",
    "workload.scale=0.01",
    "workload.checkpoints=2",
    "workload.restores=2",
    "workload.compute_seconds=0",
    "storage=s3",
    "run.seed=4321",
)


def _stored_shards_verify(s3: ServerInfo, client: str, prefix: str, run_id: str, ranks: int) -> list[str]:
    """Read back every shard a run left on the store with the verifying engine (every 4 KiB block's
    stamp and every chunk's body), independently of what the run itself checked."""
    cfg = cb.Config(preset="llama3_8b", scale=0.01, checkpoints=2, restores=2)
    plan = cb.Plan(cfg, SimpleNamespace(size=ranks, run_id=run_id))  # type: ignore[arg-type]
    b = open_backend(
        {
            "type": "s3",
            "client": client,
            "endpoint": s3.endpoint,
            "bucket": s3.bucket,
            "prefix": prefix,
            "region": s3.region,
            "access_key": s3.access_key,
            "secret_key": s3.secret_key,
        }
    )
    engine = cb.Engine(b, cb.Content(4321, cfg.chunk_size, cfg.buffer_pool_bytes, cfg.io_threads))
    bufs = [aligned_buffer(cfg.chunk_size), aligned_buffer(cfg.chunk_size)]
    problems = []
    try:
        for role in plan.roles:
            for k in range(cfg.checkpoints):
                for f in plan.files(role, k):
                    ev = engine.read_file(f, k, bufs)
                    if not ev.ok:
                        problems.append(str(ev.error))
    finally:
        b.close()
    return problems


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_checkpoint_bug_run_is_valid(tmp_path: Path, s3_server: ServerInfo, client: str) -> None:
    """Issue #10 item 1, as reported: 2 ranks under mpirun, 2 checkpoints, 2 restores; valid. Run
    again without verification and without cleanup, then read every stored shard back with the
    verifying engine: the objects are what was meant, whether the run looked or not."""
    for verify in (True, False):
        prefix = f"own-{client}-{verify}-{tmp_path.name}"
        d = run_cli(
            "run",
            *BUG_RUN,
            f"storage.client={client}",
            f"storage.prefix={prefix}",
            f"run.results_dir={tmp_path / str(verify)}",
            f"workload.verify={str(verify).lower()}",
            f"workload.cleanup={str(verify).lower()}",
            np=2,
            env=server_env(s3_server),
        )
        s = d.summary()
        assert d.code == 0 and s["valid"], (s.get("invalid_reasons"), d.err[-2000:])
        assert all(s["phases"][f"restore_{j}"]["errors"] == 0 for j in range(2))
        if not verify:
            assert _stored_shards_verify(s3_server, client, prefix, d.results.name, 2) == []


def test_body_digest_never_writes_the_pool() -> None:
    """The digest of a pool buffer's body is computed while the buffer carries another chunk's
    stamps (and may be in a backend's hands): it must be right and leave every byte as it was."""
    content = cb.Content(9, MIB, 3 * MIB, 1)
    filled = [bytes(buf) for buf in content.bufs]  # as filled: the pool's own words
    for p, length in ((0, MIB), (1, MIB - 4096 + 5), (2, 4100), (2, 7)):
        buf = content.bufs[p]
        content.stamp(buf, 0xFEED, 0, MIB, p)  # a chunk's stamps
        before = bytes(buf)
        assert content.digest(p, length) == xxhash.xxh3_64_intdigest(filled[p][:length])
        assert bytes(buf) == before


def test_a_short_last_word_carries_no_stale_stamp(tmp_path: Path) -> None:
    """A file whose last chunk ends 3 bytes into a block, written from a pool a longer file has
    just stamped all over: another process (a fresh pool, as on another rank) verifies it."""
    b = PosixBackend(str(tmp_path))
    writer = cb.Engine(b, cb.Content(5, MIB, 2 * MIB, 1))
    long = cb.PlannedFile("long", "long", 4 * MIB, 0, 0, "model")
    short = cb.PlannedFile("short", "short", MIB + 10 * 4096 + 3, 1, 0, "optim")
    assert writer.write_file(long, 0).ok and writer.write_file(short, 0).ok
    reader = cb.Engine(b, cb.Content(5, MIB, 2 * MIB, 1))
    ev = reader.read_file(short, 0, [aligned_buffer(MIB), aligned_buffer(MIB)])
    assert ev.ok, ev.error
    assert ev.digest == reader.expected_digest(short, 0)


class FakeHoldUntilCloseWriter:
    """FAKE: a client writer that keeps every buffer it is given until close (a zero-copy client
    may; obstore 0.12 lets go part by part), then stores what it holds with a real PUT."""

    def __init__(self, store: Callable[[bytes], None]):
        # a PickleBuffer holds a buffer export of the view, as a Rust client's PyBuffer does
        self.held: list[pickle.PickleBuffer] = []
        self.store = store

    def write(self, view: memoryview) -> int:
        self.held.append(pickle.PickleBuffer(view))
        return len(view)

    def close(self) -> None:
        self.store(b"".join(bytes(h.raw()) for h in self.held))
        self.__exit__()

    def __exit__(self, *exc: object) -> None:
        for h in self.held:
            h.release()
        self.held.clear()


def test_a_client_holding_parts_until_close_makes_the_pool_grow_not_wait(
    s3_cfg_for: Callable[..., dict[str, Any]],
) -> None:
    b = open_backend(s3_cfg_for("obstore", concurrency=2))
    driver = b._driver  # type: ignore[attr-defined]
    driver.open_writer = lambda key: FakeHoldUntilCloseWriter(
        lambda data: driver.put_object(key, memoryview(data))
    )
    want = _content(9 * PART + 123, 17)  # ten parts, far more than concurrency + 2 buffers
    src = aligned_buffer(MIB)
    w = b.writer("own/held")
    for off in range(0, len(want), MIB):
        n = min(MIB, len(want) - off)
        src[:n] = want[off : off + n]
        w.write(src[:n])
        _garbage(src)
    assert len(w.lent) == 9  # type: ignore[attr-defined]
    w.close()
    assert not w.lent  # type: ignore[attr-defined]
    assert _read_back(b, "own/held", len(want)) == want
    b.close()


@pytest.fixture
def slow_checked_writes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """FAKE timing only: every posix positional write (the real one) is held 20 ms first, as a
    slow device would, so the engine's writes overlap; the chunk's bytes are hashed when the
    write starts and again when it is done. Counts writes in flight and chunks that changed."""
    seen: dict[str, Any] = {"now": 0, "max": 0, "changed": []}
    lock = threading.Lock()
    real = posix._PosixWriter._write_at

    def write_at(self: Any, mv: memoryview, offset: int) -> None:
        before = xxhash.xxh3_64_intdigest(mv)
        with lock:
            seen["now"] += 1
            seen["max"] = max(seen["max"], seen["now"])
        try:
            time.sleep(0.02)
            real(self, mv, offset)
        finally:
            with lock:
                seen["now"] -= 1
            if xxhash.xxh3_64_intdigest(mv) != before:
                seen["changed"].append(offset)

    monkeypatch.setattr(posix._PosixWriter, "_write_at", write_at)
    return seen


@pytest.mark.parametrize("depth", [4, 8])
def test_write_behind_never_restamps_a_buffer_in_flight(
    tmp_path: Path, slow_checked_writes: dict[str, Any], depth: int
) -> None:
    """The engine keeps `write_behind` chunks of a file in flight, each in its own pool buffer,
    and restamps a buffer only once its write is done: no chunk changes while it is written, and
    the file verifies whole. The pool (4 bodies) bounds the depth: 8 asked, 4 in flight."""
    b = PosixBackend(str(tmp_path), direct=True)
    content = cb.Content(5, MIB, 4 * MIB, 1)
    f = cb.PlannedFile("f", "f", 13 * MIB + 3 * 4096 + 5, 0, 0, "optim")
    ev = cb.Engine(b, content, write_behind=depth).write_file(f, 0)
    assert ev.ok, ev.error
    assert slow_checked_writes["changed"] == []
    assert slow_checked_writes["max"] == 4
    reader = cb.Engine(b, cb.Content(5, MIB, 4 * MIB, 1))
    back = reader.read_file(f, 0, [aligned_buffer(MIB) for _ in range(3)])
    assert back.ok, back.error
    assert back.digest == ev.digest == reader.expected_digest(f, 0)


def test_a_write_failing_in_flight_fails_the_file_and_leaves_nothing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A write that fails while others are in flight (a full disk: a real 4 MiB tmpfs) fails the
    file with the kernel's error once every write has landed; the half file is removed."""
    d = tmpfs(tmp_path, request, "4m")
    b = PosixBackend(str(d))
    f = cb.PlannedFile("full", "full", 8 * MIB, 0, 0, "optim")
    ev = cb.Engine(b, cb.Content(5, MIB, 4 * MIB, 1), write_behind=4).write_file(f, 0)
    assert not ev.ok and "No space left on device" in str(ev.error)
    assert not (d / "full").exists()
