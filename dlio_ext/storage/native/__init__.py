"""The posix backend's bare verbs as compiled loops (fastloop.c), for metadata storms.

A cached stat on tmpfs takes 2-4 us, and CPython's loop around it (the call, two clock reads, a
size check; for a read a stamp and a hash) about as much again: a per-op loop in Python times its
own harness as much as the file system. fastloop.c runs the same system calls over many paths at
once, with the GIL released, timing each op on the clock perf_counter reads and checking what the
Python checks check (a read's body byte for byte against the template), and stops at the first op
it cannot finish on its own: the caller handles that one in Python (the error, the retry) and goes
on. `phases.bare_loop` uses it where a backend's `Bare` has a `native` verb.

The library is compiled on first use with the system C compiler (`cc`, or $CC) into
dlio_ext/storage/native/_build/ (a temporary directory if that is read-only; scripts/setup.sh builds
it ahead), one file per version of the source, and loaded with ctypes. Without a compiler, or with
DLIO_EXT_NATIVE=0, `library()` says why and the Python loops run instead (`status()`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("fastloop.c")
BUILD = Path(__file__).with_name("_build")

#: why a loop stopped (fastloop.c's enum)
DONE, FAILED, MISMATCH, TOO_BIG, MISSING_DIR = range(5)


class Result(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("index", "kind", "err", "value", "ops", "moved")]


_P = ctypes.c_void_p
_I = ctypes.c_int64
_U = ctypes.c_uint64
_R = ctypes.POINTER(Result)
_SIGNATURES = {
    "fl_stat": [_P, _P, _I, _I, _P, _I, _R],
    "fl_unlink": [_P, _P, _I, _I, _P, _R],
    "fl_put": [_P, _P, _I, _I, _P, _P, _I, _I, _U, _R],
    "fl_get": [_P, _P, _I, _I, _P, _P, _I, _I, _I, _I, _U, _P, _P, _R],
    "fl_read": [ctypes.c_char_p, _P, _I, _I, _R],
}

_lib: ctypes.CDLL | None = None
_why = ""


def _compiler() -> str | None:
    """$CC if set (and only it), else cc."""
    return shutil.which(os.environ.get("CC") or "cc")


def _ours(home: Path) -> bool:
    """Whether only this user can put a library in `home` (one loaded from a shared /tmp
    directory another user could write would run their code)."""
    st = home.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def build(into: Path | None = None) -> Path:
    """Compile fastloop.c (once per version of it) and return the library's path; raises
    RuntimeError saying why it cannot. Safe when several ranks build at once: each writes a file
    of its own and renames it into place."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC') or 'cc'}) to build the compiled loops")
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + cc.encode()).hexdigest()[:16]
    homes = (
        [into]
        if into is not None
        else [BUILD, Path(tempfile.gettempdir()) / f"dlio-ext-native-{os.getuid()}"]
    )
    last = ""
    for home in homes:
        lib = home / f"fastloop-{tag}.so"
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _ours(home):
                last = f"{home} is not this user's alone"
                continue
            if lib.is_file():
                return lib
            fd, tmp = tempfile.mkstemp(prefix=".fastloop-", suffix=".so", dir=home)
            os.close(fd)
        except OSError as exc:
            last = f"{home}: {exc.strerror}"
            continue
        cmd = [cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            os.unlink(tmp)
            err = (p.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"{' '.join(cmd)} failed: {err}")
        os.replace(tmp, lib)
        return lib
    raise RuntimeError(f"no writable place to build the compiled metadata loops ({last})")


def library() -> ctypes.CDLL | None:
    """The loaded library, built on first use; None (and `status()` says why) where it cannot be."""
    global _lib, _why
    if _lib is not None or _why:
        return _lib
    if os.environ.get("DLIO_EXT_NATIVE", "1") == "0":
        _why = "off (DLIO_EXT_NATIVE=0)"
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as exc:
        _why = f"not available: {exc}"
        return None
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, None
    _lib = lib
    return lib


def status() -> str:
    """ "compiled", or why the bare verbs cannot loop in compiled code."""
    return "compiled" if library() is not None else _why


def _addr(buf: memoryview | array | bytes | np.ndarray | None) -> int | None:
    """The address of a buffer's first byte (None for none or an empty one)."""
    if buf is None or len(buf) == 0:
        return None
    if isinstance(buf, np.ndarray):
        return buf.ctypes.data
    if isinstance(buf, array):
        return buf.buffer_info()[0]
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class Reader:
    """PosixBackend.get as one compiled call (fl_read): open, fstat, read, close with the GIL
    released once. One a thread (its Result is reused); `read` returns the Result: DONE with
    `moved` the bytes read and `value` the file's size, TOO_BIG with `value` the size, FAILED
    with `err` an errno."""

    __slots__ = ("fn", "direct", "res", "_res")

    def __init__(self, lib: ctypes.CDLL, direct: bool):
        self.fn = lib.fl_read
        self.direct = 1 if direct else 0
        self.res = Result()
        self._res = ctypes.byref(self.res)

    def read(self, path: bytes, buf: memoryview) -> Result:
        self.fn(path, _addr(buf), len(buf), self.direct, self._res)
        return self.res


class Paths:
    """Targets laid out for the C loops, once, before any clock: one NUL-separated block and each
    path's offset in it. Holds `targets` too, for messages."""

    __slots__ = ("targets", "blob", "offsets", "_blob_addr", "_off_addr")

    def __init__(self, targets: Sequence[str]):
        self.targets = targets
        encoded = [os.fsencode(t) for t in targets]
        self.blob = b"\0".join(encoded) + b"\0"
        lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
        self.offsets = np.zeros(len(encoded), dtype=np.int64)
        if len(encoded) > 1:
            np.cumsum(lengths[:-1], out=self.offsets[1:])
        self._blob_addr = _addr(self.blob)
        self._off_addr = _addr(self.offsets)

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Stamp:
    """What a create writes into each file's head before it goes out: (a, op index), little
    endian, its first `length` bytes (workloads.content.HeadStamped)."""

    a: int
    length: int


@dataclass(frozen=True)
class Expect:
    """What a read must find: `n` bytes, opening with the stamp (a, order[i]) ((a, i) without an
    order; its first `head` bytes), then `template`'s bytes up to n."""

    n: int
    head: int
    a: int
    order: Sequence[int] | None
    template: memoryview


class NativeVerb:
    """One bare verb as a compiled loop, bound to a thread's buffer as `Bare.call` is.

    `run(paths, start, stop, lat)` runs ops start..stop-1, appends each done op's latency
    (seconds) to `lat`, and returns the fastloop Result: `index` is the op that stopped it
    (`stop` if none did), `kind` why (DONE, FAILED with `err` an errno, MISMATCH with `value`
    the size or bytes read, TOO_BIG with `value` the file's size, MISSING_DIR); `moved` the bytes
    of the ops done. The thread's buffer holds what the stopping op read."""

    def __init__(self, lib: ctypes.CDLL, verb: str, buf: memoryview | None, whole: bool = True):
        self.verb, self.whole = verb, whole
        self.fn = {"stat": lib.fl_stat, "delete": lib.fl_unlink, "put": lib.fl_put}.get(verb, lib.fl_get)
        self.buf = buf
        self.cap = len(buf) if buf is not None else 0
        self._buf = _addr(buf)
        self.res = Result()
        self._res = ctypes.byref(self.res)
        self.scratch = array("d", bytes(8 * 256))
        self.stamp: Stamp | None = None
        self.expect: Expect | None = None
        self.verify_size = -1
        self._order: np.ndarray | None = None
        self._args = self._verb_args()

    def checking(self, *, stamp: Stamp | None = None, expect: Expect | None = None, size: int = -1) -> None:
        """Set what every op stamps (put) or checks (get: `expect`; stat: `size`), before the clock."""
        self.stamp, self.expect, self.verify_size = stamp, expect, size
        self._order = None
        if expect is not None and expect.order is not None:
            self._order = np.asarray(expect.order, dtype=np.int64)
        self._args = self._verb_args()

    def _verb_args(self) -> tuple[int | None, ...]:
        """The arguments of this verb's C loop after (paths, start, stop, latencies)."""
        if self.verb == "stat":
            return (self.verify_size,)
        if self.verb == "delete":
            return ()
        if self.verb == "put":
            st = self.stamp
            return (self._buf, self.cap, st.length if st else 0, st.a if st else 0)
        e = self.expect
        return (
            self._buf,
            self.cap,
            1 if self.whole else 0,
            e.n if e else -1,
            e.head if e else 0,
            e.a if e else 0,
            _addr(self._order),
            _addr(e.template) if e else None,
        )

    def run(self, paths: Paths, start: int, stop: int, lat: array) -> Result:
        if len(self.scratch) < stop - start:
            self.scratch = array("d", bytes(8 * (stop - start)))
        out = self.scratch.buffer_info()[0]
        self.fn(paths._blob_addr, paths._off_addr, start, stop, out, *self._args, self._res)
        ops = self.res.ops
        if ops:
            lat.frombytes(memoryview(self.scratch).cast("B")[: 8 * ops])
        return self.res
