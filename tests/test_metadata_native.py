"""The compiled loops of the posix bare verbs (storage/native, fastloop.c) under the metadata
workload: they must make the same calls, count and time the same ops, catch the same wrong bytes
and raise the same errors as the Python loops, and step aside (not fail) without a compiler.

Real files throughout; 2-rank runs under the real mpirun. The fakes only inject faults
(`Vanishing...`, `Corrupting...` from test_metadata) or count calls (`spy_runs`)."""

from __future__ import annotations

import os
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import pytest
from helpers import PY, ROOT
from test_metadata import _corrupting, _run_in_process, _vanishing, run_md

from dlio_ext.storage import native
from dlio_ext.storage.base import NotFound, StorageError, VerifyError
from dlio_ext.storage.buffers import aligned_buffer
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads.content import HeadStamped
from dlio_ext.workloads.phases import bare_loop

needs_cc = pytest.mark.skipif(native.library() is None, reason=f"no compiled loops here: {native.status()}")
PHASES = "workload.phases=[file_create,file_stat,file_read,file_remove]"


@pytest.fixture
def spy_runs(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts NativeVerb.run calls per verb (the real call is made): which phases ran compiled."""
    calls: dict[str, int] = {}
    real = native.NativeVerb.run

    def run(self: native.NativeVerb, *a: Any) -> Any:
        calls[self.verb] = calls.get(self.verb, 0) + 1
        return real(self, *a)

    monkeypatch.setattr(native.NativeVerb, "run", run)
    return calls


@needs_cc
def test_two_ranks_run_every_file_phase_compiled_with_exact_counts(tmp_path: Path) -> None:
    items, size = 300, 3901
    shape = [f"workload.items_per_rank={items}", f"workload.write_bytes={size}", PHASES]
    s = run_md(
        tmp_path, "workload=metadata/easy", "storage=posix", f"storage.root={tmp_path}/data", *shape, np=2
    )
    assert s["valid"] is True and s["errors"] == 0
    md = s["metadata"]
    assert md["loops"] == "compiled" and md["ranks"] == 2
    for phase in ("file_create", "file_stat", "file_read", "file_remove"):
        p = s["phases"][phase]
        assert p["ops"] == 2 * items and p["errors"] == 0, phase
        assert md["phases"][phase]["items"] == 2 * items and md["phases"][phase]["rate"] > 0, phase
        lat = md["phases"][phase]["latency_us"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"], (phase, lat)
    assert s["phases"]["file_create"]["bytes"] == s["phases"]["file_read"]["bytes"] == 2 * items * size
    assert not list((tmp_path / "data").rglob("f.*")), "file_remove left files behind"


def _in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Any, phases: str, size: int) -> dict:
    """One rank, 10 items of `size` bytes, in this process (so a fault can be put in front)."""
    args = ["workload=metadata/easy", "storage=posix", "workload.items_per_rank=10"]
    return _run_in_process(tmp_path, monkeypatch, fault, [*args, f"workload.write_bytes={size}", phases])


@needs_cc
def test_a_corrupted_file_is_caught_by_the_compiled_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy_runs: dict[str, int]
) -> None:
    """Item 3 has a flipped byte, item 5 another item's stamp (test_metadata's CorruptingPosix)."""
    s = _in_process(
        tmp_path, monkeypatch, _corrupting, "workload.phases=[file_create,file_read,file_remove]", 3901
    )
    assert spy_runs.get("get", 0) >= 3, spy_runs  # resumed after each of the two bad files
    p = s["phases"]["file_read"]
    assert s["valid"] is False and p["errors"] == 2 and p["error_kinds"] == {"corrupt": 2} and p["ops"] == 8
    assert p["first_error"].endswith("/f.0.3: content differs at offset 2000"), p["first_error"]
    assert s["phases"]["file_remove"]["ops"] == 10 and spy_runs.get("delete", 0) >= 1


@needs_cc
def test_a_vanished_file_fails_each_compiled_phase_with_the_python_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy_runs: dict[str, int]
) -> None:
    s = _in_process(tmp_path, monkeypatch, _vanishing, PHASES, 100)
    assert {"stat", "get", "delete"} <= set(spy_runs), spy_runs
    assert s["valid"] is False and s["errors"] == 3
    for phase in ("file_stat", "file_read", "file_remove"):
        p = s["phases"][phase]
        assert p["errors"] == 1 and p["error_kinds"] == {NotFound.kind: 1} and p["ops"] == 9, phase
        # the key, not the path: the message the Python verb gives
        assert p["first_error"].startswith("no such file: metadata-") and p["first_error"].endswith("/f.0.3")


def test_without_a_compiler_the_python_loops_run_and_say_why(tmp_path: Path) -> None:
    s = run_md(
        tmp_path,
        "workload=metadata/easy",
        "storage=posix",
        "workload.items_per_rank=50",
        "workload.write_bytes=100",
        PHASES,
        np=2,
        env={"CC": str(tmp_path / "no-such-cc")},
    )
    assert s["valid"] is True and s["errors"] == 0
    assert (
        s["metadata"]["loops"]
        == f"python (not available: no C compiler ({tmp_path / 'no-such-cc'}) to build the compiled loops)"
    )
    assert all(s["phases"][p]["ops"] == 100 for p in ("file_create", "file_stat", "file_read", "file_remove"))


def test_a_failed_build_says_what_failed(tmp_path: Path) -> None:
    """A compiler that fails (here: `false`) is one line naming the command, no traceback."""
    code = "from dlio_ext.storage import native; print(native.status())"
    env = os.environ | {"CC": "false", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert out.startswith("not available: ") and "false -O2 -shared -fPIC" in out and "failed" in out, out


# --- the verbs themselves, against the Python loop on the same files --------------------------


def _both(backend: PosixBackend, targets: list[str], verb: str, buf: memoryview | None, **hooks: Any) -> Any:
    """(moved, latencies, failures) of one chunk over `targets`, compiled and Python."""
    out = []
    for compiled in (True, False):
        bare = backend.bare(verb, buf)
        if not compiled:
            bare = bare._replace(native=None)
        elif bare.native is not None and "checking" in hooks:
            bare.native.checking(**hooks["checking"])
        state = type("FakeThread", (), {"buf": buf, "bare": bare})()
        loop = bare_loop(
            targets,
            lambda st: st.bare,
            before=hooks.get("before"),
            check=hooks.get("check"),
            moves=hooks.get("moves", False),
            native=compiled,
        )
        lat, failures = array("d"), []
        moved = loop(0, len(targets), state, lat, failures)
        out.append((moved, lat, [(i, type(e), str(e)) for i, e in failures]))
    return out


@needs_cc
def test_compiled_verbs_fail_and_succeed_exactly_as_the_python_ones(tmp_path: Path) -> None:
    backend = PosixBackend(str(tmp_path))
    content = HeadStamped(7, 3901, aligned_buffer, salt=17)
    keys = [f"d/f.0.{i}" for i in range(6)]
    targets = [backend.resolve(k) for k in keys]
    buf = content.buffer()
    # create: a missing directory is made by the Python verb, then the loop goes on
    (moved, lat, fails), _ = _both(
        backend,
        targets,
        "put",
        buf,
        before=content.stamper(0),
        moves=True,
        checking={"stamp": content.native_stamp(0)},
    )
    assert moved == 6 * 3901 and len(lat) == 6 and fails == []
    for i, t in enumerate(targets):
        data = Path(t).read_bytes()
        content.check(data, len(data), 0, i, t)  # each file holds its own stamp
    os.unlink(targets[2])
    with open(targets[4], "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    # stat, with its size check: the missing file is the same NotFound, latencies for the rest
    size = backend.bare("stat").size
    w = 3901

    def stat_check(i: int, _st: Any, info: Any) -> None:
        if size(info) != w:
            raise VerifyError(f"{targets[i]}: stat says {size(info)} bytes, {w} were written")

    c, p = _both(backend, targets, "stat", None, check=stat_check, checking={"size": w})
    assert c[2] == p[2] == [(2, NotFound, f"no such file: {keys[2]}")] and len(c[1]) == len(p[1]) == 5
    # a size that differs is the check's own message
    with open(targets[5], "ab") as f:
        f.write(b"x")
    c, p = _both(backend, targets, "stat", None, check=stat_check, checking={"size": w})
    assert c[2] == p[2] and c[2][1] == (
        5,
        VerifyError,
        f"{targets[5]}: stat says 3902 bytes, 3901 were written",
    )
    os.truncate(targets[5], 3901)
    # read: the missing file, the flipped byte at its offset; the others read and check clean
    check = content.checker(0, None, targets)
    expect = content.native_expect(0, None)
    c, p = _both(backend, targets, "get", buf, check=check, moves=True, checking={"expect": expect})
    assert c[2] == p[2] and [i for i, *_ in c[2]] == [2, 4], c[2]
    assert c[2][1][2].endswith("content differs at offset 100") and c[0] == p[0] == 4 * 3901
    # a file larger than the buffer: the Python verb's error
    small = buf[:1000]
    c, p = _both(backend, targets[:1], "get", small)
    assert (
        c[2] == p[2]
        and c[2][0][1] is StorageError
        and "3901 bytes do not fit a 1000-byte buffer" in c[2][0][2]
    )
    # remove: the missing one is NotFound; the compiled pass removed the rest
    c, _ = _both(backend, targets, "delete", None)
    assert c[2] == [(2, NotFound, f"no such file: {keys[2]}")] and len(c[1]) == 5
    assert not any(os.path.exists(t) for t in targets)


def test_the_library_is_built_once_per_source_and_loaded(tmp_path: Path) -> None:
    if native._compiler() is None:
        pytest.skip("no C compiler")
    first = native.build(tmp_path)
    again = native.build(tmp_path)
    assert first == again and first.parent == tmp_path and first.stat().st_size > 0
    code = f"import ctypes; lib = ctypes.CDLL({str(first)!r}); print(bool(lib.fl_stat and lib.fl_get))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"
    )


def test_a_build_directory_others_can_write_is_not_used(tmp_path: Path) -> None:
    """A library from a directory another user could write would run their code: refused."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="is not this user's alone"):
        native.build(shared)
    assert not list(shared.iterdir())
