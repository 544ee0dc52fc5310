"""PosixBackend.get as one compiled call (storage/native fl_read): the KV cache reads every chunk
through it. It must return the same bytes and raise the same errors as the Python calls it
replaces, buffered and under O_DIRECT, and step aside where it cannot serve (an unaligned buffer
under O_DIRECT, no compiler). Real files throughout; nothing is faked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import KV_SMALL, run_cli

from dlio_ext.storage import native
from dlio_ext.storage.buffers import aligned_buffer
from dlio_ext.storage.posix import PosixBackend

needs_cc = pytest.mark.skipif(native.library() is None, reason=f"no compiled loops here: {native.status()}")
SIZES = [0, 1, 4095, 4096, 5000, 128 << 10]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts compiled reads (the real call is made)."""
    seen: list[str] = []
    real = native.Reader.read

    def read(self: native.Reader, path: bytes, buf: memoryview) -> native.Result:
        seen.append(os.fsdecode(path))
        return real(self, path, buf)

    monkeypatch.setattr(native.Reader, "read", read)
    yield seen


def _outcome(backend: PosixBackend, key: str, buf: memoryview) -> tuple[object, ...]:
    buf[:] = b"\xee" * len(buf)
    try:
        n = backend.get(key, buf)
    except Exception as exc:  # the comparison is of whatever either path raises
        return (type(exc), str(exc))
    return (n, bytes(buf[:n]))


def _python(backend: PosixBackend) -> PosixBackend:
    """The same root and settings on the Python calls."""
    return PosixBackend(str(backend.root), backend.direct, compiled=False)


@needs_cc
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_compiled_get_reads_and_fails_exactly_as_the_python_calls(
    tmp_path: Path, direct: bool, calls: list[str]
) -> None:
    backend = PosixBackend(str(tmp_path), direct)
    keys = []
    for size in SIZES:
        keys.append(f"d/f{size}")
        backend.put(keys[-1], os.urandom(size))
    (tmp_path / "d" / "sub").mkdir()
    bufs = {
        "roomy": aligned_buffer(256 << 10),
        "exact": aligned_buffer(128 << 10),
        "small": aligned_buffer(4096),
    }
    python = _python(backend)
    for name, buf in bufs.items():
        for key in [*keys, "d/missing", "d/sub"]:
            c, p = _outcome(backend, key, buf), _outcome(python, key, buf)
            assert c == p, (name, key)
    assert len(calls) == len(bufs) * (len(keys) + 2)  # every one of them ran compiled
    roomy = bufs["roomy"]
    assert _outcome(backend, "d/f5000", roomy) == (5000, Path(tmp_path, "d/f5000").read_bytes())
    assert _outcome(backend, "d/missing", roomy)[1] == "no such file: d/missing"
    assert (
        _outcome(backend, "d/f131072", bufs["small"])[1]
        == "d/f131072: 131072 bytes do not fit a 4096-byte buffer"
    )
    # a directory: read(2) says EISDIR; open(2) refuses O_DIRECT on it first (EINVAL)
    assert (
        _outcome(backend, "d/sub", roomy)[1] == f"d/sub: {'Invalid argument' if direct else 'Is a directory'}"
    )


@needs_cc
def test_an_unaligned_buffer_under_o_direct_takes_the_python_calls(tmp_path: Path, calls: list[str]) -> None:
    backend = PosixBackend(str(tmp_path), direct=True)
    data = os.urandom(10_000)
    backend.put("f", data)
    odd = memoryview(bytearray(20_000))[1:]
    assert backend.get("f", odd) == 10_000 and bytes(odd[:10_000]) == data
    assert calls == []
    assert backend.get("f", aligned_buffer(16384)) == 10_000 and len(calls) == 1


def test_a_kv_run_reads_its_chunks_compiled_and_says_so(tmp_path: Path) -> None:
    """The summary's storage description names the read path that ran; DLIO_EXT_NATIVE=0 takes
    the Python calls. Both verify every chunk they read, under O_DIRECT, on 2 ranks."""
    for tag, env, want in (
        ("compiled", {}, native.status()),
        ("python", {"DLIO_EXT_NATIVE": "0"}, "off (DLIO_EXT_NATIVE=0)"),
    ):
        d = run_cli(
            "run",
            *KV_SMALL,
            "storage=posix",
            "storage.direct=true",
            f"storage.root={tmp_path}/{tag}",
            f"run.results_dir={tmp_path}/results-{tag}",
            np=2,
            env=env,
        )
        assert d.code == 0, d.err
        s = d.summary()
        assert s["storage"]["get_calls"] == want
        k = s["kv_cache"]
        assert s["valid"] is True and s["errors"] == 0
        assert k["read"]["chunks"] > 0 and k["read"]["chunks"] == k["integrity"]["chunks_verified"]
