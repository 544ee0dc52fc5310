"""Bare verbs (a backend's cheapest form of a verb, for tight loops) and the chunked phase runner.

The metadata workload times its phases through these, so they must do exactly what the full
verbs do, on every backend (posix buffered, posix with fsync, posix O_DIRECT through the full
verbs, S3 on SeaweedFS through the full verbs), with errors that name the key, not a path; and
the runner must count, time and stop chunks the way it does single ops.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path
from typing import Any

import pytest

from dlio_ext.storage.base import Backend, NotFound, StorageError, VerifyError
from dlio_ext.storage.buffers import aligned_buffer
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads.phases import PhaseRunner, bare_loop, per_op
from dlio_ext.world import SoloWorld


def _call(backend: Backend, verb: str, key: str, buf: memoryview | None = None) -> Any:
    """One bare call as a tight loop makes it: on the resolved key, errors turned as it turns them."""
    b = backend.bare(verb, buf)
    target = backend.resolve(key)
    try:
        return b.call(target)
    except b.catch as exc:
        raise b.error(exc, target) from exc


def _round_trip(backend: Backend) -> None:
    data = aligned_buffer(4096)
    data[:] = os.urandom(4096)
    assert _call(backend, "put", "bare/sub/f1", data[:3901]) == 3901
    assert _call(backend, "put", "bare/sub/f2", data) == 4096

    into = aligned_buffer(8192)
    assert _call(backend, "get", "bare/sub/f1", into) == 3901
    assert into[:3901] == data[:3901]
    head = aligned_buffer(4096)
    assert _call(backend, "get_head", "bare/sub/f2", head[:100]) == 100
    assert head[:100] == data[:100]
    with pytest.raises(StorageError, match="do not fit"):
        _call(backend, "get", "bare/sub/f2", aligned_buffer(4096)[:1000])

    st = backend.bare("stat")
    assert st.size(_call(backend, "stat", "bare/sub/f1")) == 3901
    assert backend.stat("bare/sub/f2").size == 4096  # the full verb sees what the bare one wrote

    _call(backend, "delete", "bare/sub/f1")
    for verb, buf in (("stat", None), ("get", into), ("delete", None)):
        if verb == "delete" and backend.name == "s3":
            continue  # DeleteObject of a missing key succeeds on S3 (idempotent)
        with pytest.raises(NotFound) as err:
            _call(backend, verb, "bare/sub/f1", buf)
        assert "bare/sub/f1" in str(err.value) and err.value.key == "bare/sub/f1"
    _call(backend, "delete", "bare/sub/f2")


@pytest.mark.parametrize("mode", ["buffered", "fsync", "fsync_dir", "direct"])
def test_posix_bare_verbs_do_what_the_full_ones_do(tmp_path: Path, mode: str) -> None:
    fsync = {"fsync": "file", "fsync_dir": "file_and_dir"}.get(mode, "none")
    backend = PosixBackend(str(tmp_path), direct=mode == "direct", fsync=fsync)
    try:
        backend.check()
    except StorageError as exc:
        pytest.skip(f"O_DIRECT not available here: {exc}")
    _round_trip(backend)
    # every bare put is fsynced (and timed) as the policy says: the file, then its directory
    assert backend.counters.fsync_calls == {"fsync": 2, "fsync_dir": 4}.get(mode, 0)
    # errors name the key relative to the root, never the absolute path
    with pytest.raises(NotFound) as err:
        _call(backend, "stat", "nope/x")
    assert str(tmp_path) not in str(err.value) and "nope/x" in str(err.value)


def test_posix_bare_directories_are_one_level(tmp_path: Path) -> None:
    backend = PosixBackend(str(tmp_path))
    _call(backend, "mkdir", "a")
    _call(backend, "mkdir", "a/b")
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(StorageError, match="exists"):
        _call(backend, "mkdir", "a/b")  # a create of what exists is an error, as for mdtest
    with pytest.raises(NotFound):
        _call(backend, "mkdir", "x/y")  # one level: the parent must exist
    _call(backend, "rmdir", "a/b")
    assert not (tmp_path / "a" / "b").exists()


def test_s3_bare_verbs_do_what_the_full_ones_do(s3_backend: Backend) -> None:
    assert s3_backend.bare("stat").chunk == 1, "a network op is handed out one at a time"
    _round_trip(s3_backend)


# --- the chunked runner ------------------------------------------------------------------------


def test_bare_loop_counts_times_and_fails_per_op(tmp_path: Path) -> None:
    backend = PosixBackend(str(tmp_path))
    keys = [f"f{i}" for i in range(300)]
    for k in keys:
        (tmp_path / k).write_bytes(b"x" * (7 if k == "f5" else 3))
    os.unlink(tmp_path / "f200")
    targets = [backend.resolve(k) for k in keys]
    stat = backend.bare("stat")
    runner = PhaseRunner(SoloWorld(), 0)

    res = runner.run_chunks("stat", 300, bare_loop(targets, lambda _s: stat), 128, 2)
    assert (res.ops, res.errors, res.error_kinds) == (299, 1, {"not_found": 1})
    assert "f200" in str(res.first_error)
    assert res.hist.n == 299, "one latency per op that succeeded, none for the failure"
    # the lean loop's latencies run end to end: they add up to no more than the phase
    assert res.hist.total_us / 1e6 <= res.seconds * 2 + 1e-3  # two threads

    def size_is_3(i: int, _st: Any, info: Any) -> None:
        if stat.size(info) != 3:
            raise VerifyError(f"{targets[i]}: {stat.size(info)} bytes")

    res = runner.run_chunks("check", 300, bare_loop(targets, lambda _s: stat, check=size_is_3), 128, 1)
    assert (res.ops, res.errors) == (298, 2) and res.error_kinds == {"not_found": 1, "corrupt": 1}
    assert res.hist.n == 298

    buf = aligned_buffer(16)
    get = backend.bare("get", buf)
    seen: list[int] = []
    res = runner.run_chunks(
        "get",
        100,
        bare_loop(targets, lambda _s: get, before=lambda i, _s: seen.append(i), moves=True),
        7,
        1,
    )
    assert res.ops == 100 and res.bytes == 99 * 3 + 7 and seen == list(range(100))


def test_per_op_keeps_failures_out_of_latencies() -> None:
    def op(i: int, _s: Any) -> int:
        if i % 10 == 3:
            raise NotFound(f"item {i}", str(i))
        return 2

    res = PhaseRunner(SoloWorld(), 0).run_chunks("p", 100, per_op(op), 8, 2)
    assert (res.ops, res.errors, res.bytes, res.hist.n) == (90, 10, 180, 90)
    lat: array = array("d")
    failures: list = []
    assert per_op(op)(0, 5, None, lat, failures) == 8 and len(lat) == 4 and failures[0][0] == 3
