"""POSIX files, buffered or O_DIRECT, with an explicit fsync policy.

Every fsync that is asked for is issued and timed on its own (`Counters.fsync_seconds`), so a
workload can report it apart from the data transfer: DLIO's checkpoints skip it silently.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import ClassVar, cast

from dlio_ext.storage import native
from dlio_ext.storage.base import (
    AccessDenied,
    Backend,
    Bare,
    CacheControl,
    DeviceError,
    Durability,
    NoSpace,
    NotFound,
    ObjectInfo,
    ReadOnly,
    StorageError,
    Unsupported,
    Writer,
    register,
)
from dlio_ext.storage.buffers import ALIGN, aligned_buffer, is_aligned, round_up
from dlio_ext.storage.settings import Settings, setting

FSYNC_POLICIES = ("none", "file", "file_and_dir")
_DIRECT = getattr(os, "O_DIRECT", 0)
#: ops a runner thread takes at once in a tight loop: a cached stat is ~3 us, 128 of them ~0.4 ms
BARE_CHUNK = 128
#: a writer's helper threads for `submit`: its caller bounds the writes in flight (the checkpoint
#: engine's write_behind); threads are started only as writes overlap
WRITE_BEHIND_THREADS = 16


#: errno -> the kind a failed op is counted under, so the console can say "no space left on device"
_KINDS: dict[int, type[StorageError]] = {
    errno.ENOENT: NotFound,
    errno.EACCES: AccessDenied,
    errno.EPERM: AccessDenied,
    errno.EROFS: ReadOnly,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
    errno.EIO: DeviceError,
}


def _translate(exc: OSError, key: str) -> StorageError:
    cls = _KINDS.get(exc.errno or 0, StorageError)
    if cls is NotFound:
        return NotFound(f"no such file: {key}", key)
    return cls(f"{key}: {exc.strerror or exc}", key)


@dataclass(frozen=True)
class PosixSettings(Settings):
    """The keys of workload_configs/storage/posix.yaml."""

    #: the directory under test; unset: <run dir>/data, so a run writes nothing outside its own
    root: str | None = None
    direct: bool = False
    #: None: the user did not choose ("none", unless a workload asks for durability)
    fsync: str | None = setting(None, choices=FSYNC_POLICIES)
    chunk_size: int = setting(8 << 20, low=0, strict=True)


@register
class PosixBackend(Backend):
    name = "posix"
    Settings = PosixSettings
    #: a writer's `submit` writes chunks at their offsets on helper threads (a subclass whose
    #: `_write_all` is not safe from several threads at once says False: it writes at once)
    overlapping_writes: ClassVar[bool] = True

    def __init__(
        self,
        root: str,
        direct: bool = False,
        fsync: str | None = "none",
        chunk_size: int = 8 << 20,
        compiled: bool = True,
    ):
        """`fsync=None`: the user did not choose; "none" unless a workload asks for durability.
        `compiled=False` keeps `get` on the Python calls (a benchmark's A/B; DLIO_EXT_NATIVE=0
        does it for a run)."""
        super().__init__()
        if fsync is not None and fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}")
        self.root = Path(root)
        self.settings = PosixSettings(str(self.root), direct, fsync, round_up(chunk_size))
        # key -> path is on every op's path: a string concat, not os.path.join over a Path
        self._prefix = os.path.join(str(self.root), "")
        self.direct = direct
        self.fsync_policy = fsync or "none"
        self.fsync_source = "default" if fsync is None else "user"
        self.chunk_size = round_up(chunk_size)
        self._local = threading.local()
        self._compiled = compiled

    @classmethod
    def from_settings(cls, settings: PosixSettings, run_dir: str | None = None) -> PosixBackend:
        root = settings.root or (f"{run_dir}/data" if run_dir else None)
        if not root:
            raise StorageError("storage.root is not set; give storage.root=/path/on/the/file/system")
        return cls(root, settings.direct, settings.fsync, settings.chunk_size)

    # helpers -------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        if ".." in key or key.startswith("/"):  # a substring test keeps the common key cheap
            self._inside(key)
        return self._prefix + key

    def _inside(self, key: str) -> None:
        """Refuse a key that would resolve outside the root (workloads check their prefixes
        first; this is the second line of defence)."""
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"key {key!r} would resolve outside storage root {self.root}; refused", key)

    def _bounce(self, nbytes: int) -> memoryview:
        """A per-thread aligned staging buffer for callers whose buffer O_DIRECT cannot take."""
        buf = getattr(self._local, "bounce", None)
        if buf is None or len(buf) < nbytes:
            buf = aligned_buffer(round_up(max(nbytes, self.chunk_size)))
            self._local.bounce = buf
        return buf

    def _fsync(self, fd: int) -> None:
        t0 = time.perf_counter()
        os.fsync(fd)
        self.counters.fsync(time.perf_counter() - t0)

    def _fsync_dir(self, key: str) -> None:
        fd = os.open(os.path.dirname(self.path(key)) or ".", os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _open_write(self, key: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (_DIRECT if self.direct else 0)
        path = self.path(key)
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return os.open(path, flags, 0o644)

    def _write_all(self, fd: int, data: memoryview, offset: int) -> int:
        """Write `data` at `offset`; under O_DIRECT a short tail is padded, then truncated."""
        n = len(data)
        if not self.direct:
            done = 0
            while done < n:
                done += os.pwrite(fd, data[done:], offset + done)
            return n
        body = n // ALIGN * ALIGN
        done = 0
        if body and is_aligned(data):
            while done < body:
                done += os.pwrite(fd, data[done:body], offset + done)
        else:
            while done < body:
                step = min(body - done, self.chunk_size)
                bounce = self._bounce(step)
                bounce[:step] = data[done : done + step]
                os.pwrite(fd, bounce[:step], offset + done)
                done += step
        tail = n - body
        if tail:
            bounce = self._bounce(ALIGN)
            bounce[:tail] = data[body:]
            bounce[tail:ALIGN] = bytes(ALIGN - tail)
            os.pwrite(fd, bounce[:ALIGN], offset + body)
            os.ftruncate(fd, offset + n)
        return n

    def _read_into(self, fd: int, into: memoryview, offset: int) -> int:
        want = len(into)
        if not self.direct:
            done = 0
            while done < want:
                got = os.preadv(fd, [into[done:]], offset + done)
                if got == 0:
                    break
                done += got
            return done
        if offset % ALIGN:
            raise ValueError("O_DIRECT reads start at a multiple of 4096 bytes")
        target = into if (is_aligned(into) and want % ALIGN == 0) else None
        done = 0
        if target is not None:
            while done < want:
                got = os.preadv(fd, [target[done:]], offset + done)
                if got == 0:
                    break
                done += got
            return done
        while done < want:
            step = min(round_up(want - done), self.chunk_size)
            bounce = self._bounce(step)
            got = os.preadv(fd, [bounce[:step]], offset + done)
            if got == 0:
                break
            take = min(got, want - done)
            into[done : done + take] = bounce[:take]
            done += take
            if got < step:
                break
        return done

    # verbs ---------------------------------------------------------------------------------
    def put(self, key: str, data: memoryview | bytes) -> None:
        mv = memoryview(data).cast("B")
        try:
            fd = self._open_write(key)
        except OSError as exc:
            raise _translate(exc, key) from exc
        try:
            self._write_all(fd, mv, 0)
            if self.fsync_policy != "none":
                self._fsync(fd)
        except OSError as exc:
            raise _translate(exc, key) from exc
        finally:
            os.close(fd)
        if self.fsync_policy == "file_and_dir":
            self._fsync_dir(key)

    def _open_read(self, key: str) -> int:
        try:
            return os.open(self.path(key), os.O_RDONLY | (_DIRECT if self.direct else 0))
        except OSError as exc:
            raise _translate(exc, key) from exc

    def _reader(self) -> native.Reader | None:
        """This thread's compiled `get` (storage.native; built on first use), None where it
        cannot be built or is off (DLIO_EXT_NATIVE=0)."""
        reader = getattr(self._local, "reader", False)
        if reader is False:
            lib = native.library() if self._compiled else None
            reader = self._local.reader = None if lib is None else native.Reader(lib, self.direct)
        return reader

    def get(self, key: str, into: memoryview) -> int:
        reader = self._reader()
        if reader is not None and (not self.direct or (len(into) % ALIGN == 0 and is_aligned(into))):
            # the same calls as below, in one compiled call: the per-chunk cost of a small read
            # under many reader threads is the GIL, taken once here instead of four times
            res = reader.read(os.fsencode(self.path(key)), into)
            if res.kind == native.DONE:
                return res.moved
            if res.kind == native.FAILED:
                raise _translate(OSError(res.err, os.strerror(res.err)), key)
            raise StorageError(f"{key}: {res.value} bytes do not fit a {len(into)}-byte buffer", key)
        fd = self._open_read(key)
        try:
            size = os.fstat(fd).st_size
            if size > len(into):
                raise StorageError(f"{key}: {size} bytes do not fit a {len(into)}-byte buffer", key)
            # under O_DIRECT a caller's aligned buffer takes the padded span; EOF stops at `size`
            span = min(len(into), round_up(size)) if self.direct else size
            return self._read_into(fd, into[:span], 0)
        except OSError as exc:
            raise _translate(exc, key) from exc
        finally:
            os.close(fd)

    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        fd = self._open_read(key)
        try:
            if self.direct and offset % ALIGN:
                # O_DIRECT reads whole blocks: fetch the covering span, hand back the slice asked for
                start = offset // ALIGN * ALIGN
                span = round_up(offset + len(into)) - start
                bounce = self._bounce(span)
                got = self._read_into(fd, bounce[:span], start)
                take = max(0, min(len(into), got - (offset - start)))
                into[:take] = bounce[offset - start : offset - start + take]
                return take
            return self._read_into(fd, into, offset)
        except OSError as exc:
            raise _translate(exc, key) from exc
        finally:
            os.close(fd)

    def writer(self, key: str) -> Writer:
        try:
            return _PosixWriter(self, key, self._open_write(key))
        except OSError as exc:
            raise _translate(exc, key) from exc

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self.path(key))
        except OSError as exc:
            raise _translate(exc, key) from exc
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        base, _, stem = prefix.rpartition("/")
        top = self.path(base) if base else str(self.root)
        try:
            entries = sorted(os.scandir(top), key=lambda e: e.name)
        except OSError as exc:
            raise _translate(exc, base or ".") from exc
        rel = f"{base}/" if base else ""
        for entry in entries:
            if not entry.name.startswith(stem):
                continue
            key = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                if delimiter == "/":
                    yield key + "/"
                else:
                    yield from self.list(key + "/", None)
            else:
                yield key

    def delete(self, key: str) -> None:
        try:
            os.unlink(self.path(key))
        except OSError as exc:
            raise _translate(exc, key) from exc

    def mkdir(self, key: str) -> None:
        try:
            os.makedirs(self.path(key), exist_ok=True)
        except OSError as exc:
            raise _translate(exc, key) from exc

    def rmdir(self, key: str) -> None:
        try:
            os.rmdir(self.path(key))
        except OSError as exc:
            raise _translate(exc, key) from exc

    def rename(self, src: str, dst: str) -> None:
        try:
            os.rename(self.path(src), self.path(dst))
        except OSError as exc:
            raise _translate(exc, src) from exc

    # tight loops --------------------------------------------------------------------------
    def resolve(self, key: str) -> str:
        return self.path(key)

    def _bare_error(self, exc: BaseException, path: str) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        return _translate(cast(OSError, exc), path[len(self._prefix) :])

    def bare(self, verb: str, buf: memoryview | None = None) -> Bare:
        """The system call itself on a resolved path; a small function where one call is not enough."""
        calls: dict[str, Callable[[str], object]] = {
            "stat": os.stat,
            "delete": os.unlink,
            "mkdir": os.mkdir,
            "rmdir": os.rmdir,
        }
        if verb in calls:
            call = calls[verb]
        elif verb in ("put", "get", "get_head") and not self.direct and self.fsync_policy != "file_and_dir":
            assert buf is not None
            call = self._bare_put(buf) if verb == "put" else self._bare_get(buf, whole=verb == "get")
        else:
            # O_DIRECT's padding and a directory fsync: the full verbs, on keys cut from the paths
            inner, cut = super().bare(verb, buf).call, len(self._prefix)

            def call(path: str) -> object:
                return inner(path[cut:])

        return Bare(
            call,
            (OSError, StorageError),
            self._bare_error,
            BARE_CHUNK,
            attrgetter("st_size"),
            self._native(verb, buf),
        )

    def bare_loops(self) -> str:
        if self.direct or self.fsync_policy != "none":
            return "O_DIRECT and fsync policies take the full verbs"
        return native.status()

    def _native(self, verb: str, buf: memoryview | None) -> native.NativeVerb | None:
        """The compiled loop of `verb` (storage.native), where it makes the same calls as the
        Python verb: not under O_DIRECT or an fsync policy (their padding and counters are the
        full verbs'), not mkdir/rmdir (tree set-up), and not where it cannot be built."""
        if (
            verb not in ("stat", "delete", "put", "get", "get_head")
            or self.direct
            or self.fsync_policy != "none"
        ):
            return None
        lib = native.library()
        if lib is None:
            return None
        return native.NativeVerb(lib, verb, buf, whole=verb != "get_head")

    def _bare_put(self, buf: memoryview) -> Callable[[str], int]:
        mv = memoryview(buf).cast("B")
        n = len(mv)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        open_, pwrite, close = os.open, os.pwrite, os.close
        fsync = self._fsync if self.fsync_policy == "file" else None

        def put(path: str) -> int:
            try:
                fd = open_(path, flags, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = open_(path, flags, 0o644)
            try:
                if n and pwrite(fd, mv, 0) < n:
                    self._write_all(fd, mv, 0)  # a short write: rare, so written again whole
                if fsync is not None:
                    fsync(fd)
            finally:
                close(fd)
            return n

        return put

    def _bare_get(self, buf: memoryview, whole: bool) -> Callable[[str], int]:
        cap, cut = len(buf), len(self._prefix)
        views = [buf]
        open_, fstat, preadv, close, rd = os.open, os.fstat, os.preadv, os.close, os.O_RDONLY

        def get(path: str) -> int:
            fd = open_(path, rd)
            try:
                size = fstat(fd).st_size
                if size > cap:
                    key = path[cut:]
                    raise StorageError(f"{key}: {size} bytes do not fit a {cap}-byte buffer", key)
                got = preadv(fd, views, 0)
                return got if got >= size else self._read_into(fd, buf[:size], 0)
            finally:
                close(fd)

        def head(path: str) -> int:
            fd = open_(path, rd)
            try:
                return self._read_into(fd, buf, 0)
            finally:
                close(fd)

        return get if whole else head

    # caches and durability -------------------------------------------------------------------
    def local_root(self) -> str:
        return str(self.root)

    def cache_control(self) -> CacheControl:
        if self.direct:
            return CacheControl("O_DIRECT", False, "O_DIRECT: every read bypasses the page cache")
        return CacheControl(
            "fadvise_dontneed",
            True,
            "buffered: a read is cold after its file is flushed and evicted (posix_fadvise DONTNEED); "
            "a reader of the same file in between can warm it again (cold_read takes turns on this host)",
        )

    def evict(self, keys: Iterable[str]) -> None:
        if self.direct:
            return
        for key in keys:
            try:
                fd = os.open(self._prefix + key, os.O_RDONLY)
            except OSError:
                continue  # the read will report the missing file
            try:
                # a file system that refuses either leaves the pages resident: not an error here,
                # since what stays resident is measured (`resident`, the kernel's cache_fraction)
                with contextlib.suppress(OSError):
                    os.fdatasync(fd)  # dirty pages cannot be evicted: flush first (untimed)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def cold_read(self, key: str) -> Iterator[None]:
        if self.direct:
            yield
            return
        path = self._prefix + key
        # cold readers of one file on this host (any thread, any rank) take turns, so none reads
        # what another's read has just brought into the cache; readers on other hosts have caches
        # of their own and need no turn
        with _host_turns().turn(path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                yield  # the read will report the missing file
                return
            try:
                with contextlib.suppress(OSError):  # what stays resident is measured, not assumed
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                yield
            finally:
                os.close(fd)

    def drop_caches(self) -> str | None:
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as fh:
                fh.write("1\n")
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def resident(self, keys: Iterable[str]) -> tuple[int, int]:
        r = n = 0
        for key in keys:
            a, b = _resident_pages(self._prefix + key)
            r, n = r + a, n + b
        return r, n

    def durability(self) -> Durability:
        if self.fsync_policy != "none":
            policy = f"fsync per file ({self.fsync_policy})" + (", O_DIRECT" if self.direct else "")
        elif self.direct:
            policy = "O_DIRECT without fsync: past the page cache, the device's volatile cache not flushed"
        else:
            policy = "none: writes may end in the page cache (storage.fsync=none)"
        return Durability(policy, self.fsync_source)

    def ask_durable(self, source: str) -> Durability:
        if self.fsync_source != "user" and self.fsync_policy == "none":
            self.fsync_policy, self.fsync_source = "file", source
        return self.durability()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AccessDenied(f"cannot create storage root {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK):
            raise AccessDenied(f"storage root {self.root} is not writable; choose another storage.root")
        if self.direct:
            probe = self.root / f".dlio_ext_odirect_probe.{os.getpid()}"
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | _DIRECT, 0o600)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise Unsupported(
                        f"the file system at {self.root} refuses O_DIRECT; set storage.direct=false "
                        "or choose a storage.root on a disk file system"
                    ) from exc
                raise _translate(exc, str(probe)) from exc
            try:
                buf = aligned_buffer(ALIGN)
                os.pwrite(fd, buf, 0)
            except OSError as exc:
                raise Unsupported(f"O_DIRECT write refused at {self.root}: {exc.strerror}") from exc
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)

    def free_bytes(self) -> int | None:
        """What an unprivileged writer may still store under the root (statvfs f_bavail)."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def describe(self) -> dict[str, object]:
        # the policy in force: the user's, or the one a workload asked for (see ask_durable)
        # which `get` ran: one compiled call, or the Python calls (and why)
        return super().describe() | {
            "fsync": self.fsync_policy,
            "fsync_source": self.fsync_source,
            "get_calls": native.status() if self._compiled else "python (asked for)",
        }

    def where(self) -> str:
        return str(self.root)

    def room(self) -> tuple[str, str]:
        return f"storage.root={self.root}", "choose another storage.root"


class _HostTurns:
    """A turn per file for the cold readers of one host: threads wait on an in-process lock, other
    processes on a byte-range lock of one file in /dev/shm (memory, local to the host), both
    picked by a hash of the path (65,536 stripes: two files rarely share one).

    Not an flock on the data file itself: on a cluster file system (GPFS, CephFS, Lustre -o flock)
    that lock is cluster-wide, turning every cold read into a round trip and a queue across hosts;
    on NFS (a read-only fd) or Lustre -o noflock it is refused. Where /dev/shm cannot be opened,
    only the threads of a process take turns, and the kernel's cache_fraction says what that cost.
    """

    STRIPES = 1 << 16
    PATH = "/dev/shm/dlio-ext-cold-reads.lock"

    def __init__(self) -> None:
        self.locks: dict[int, threading.Lock] = {}
        self.guard = threading.Lock()
        try:
            self.fd: int | None = os.open(self.PATH, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            self.fd = None

    @contextlib.contextmanager
    def turn(self, path: str) -> Iterator[None]:
        stripe = zlib.crc32(path.encode()) % self.STRIPES
        with self.guard:
            lock = self.locks.setdefault(stripe, threading.Lock())
        with lock:  # one thread of this process a stripe: byte-range locks are per process
            held = False
            # a /dev/shm that refuses record locks leaves only this process's threads taking turns
            if self.fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, stripe)
                    held = True
            try:
                yield
            finally:
                if held:
                    fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, stripe)


_turns: _HostTurns | None = None
_turns_lock = threading.Lock()


def _host_turns() -> _HostTurns:
    global _turns
    with _turns_lock:
        if _turns is None:
            _turns = _HostTurns()
        return _turns


_libc: ctypes.CDLL | None = None


def _resident_pages(path: str) -> tuple[int, int]:
    """(resident pages, pages) of a file in the page cache, by mincore(2); (0, 0) if unknown."""
    global _libc
    try:
        size = os.path.getsize(path)
        if size == 0:
            return 0, 0
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        import numpy as np  # only for the mapping's address (a read-only mmap has no ctypes view)

        arr = np.frombuffer(mm, dtype=np.uint8)
        try:
            rc = _libc.mincore(ctypes.c_void_p(arr.ctypes.data), ctypes.c_size_t(size), vec)
        finally:
            del arr
            mm.close()
        if rc != 0:
            return 0, 0
        return sum(v & 1 for v in vec), pages
    except (OSError, ValueError, AttributeError):
        return 0, 0


class _PosixWriter(Writer):
    """Streams chunks at increasing offsets; under O_DIRECT, unaligned pieces are staged.
    `submit` writes a chunk at its offset on a helper thread (pwrite releases the GIL), so a
    writer keeps as many writes queued at the device as its caller lets it."""

    def __init__(self, backend: PosixBackend, key: str, fd: int):
        self.b, self.key, self.fd = backend, key, fd
        self.offset = 0
        self.pending = 0  # bytes staged in the bounce buffer (O_DIRECT only)
        self.stage = aligned_buffer(backend.chunk_size) if backend.direct else None
        self.pool: ThreadPoolExecutor | None = None
        self.inflight: deque[Future[None]] = deque()

    def submit(self, chunk: memoryview | bytes) -> Future[None]:
        mv = memoryview(chunk).cast("B")
        if not self.b.overlapping_writes:
            return super().submit(mv)
        if self.pending or (self.stage is not None and (len(mv) % ALIGN or not is_aligned(mv))):
            # staged (O_DIRECT's unaligned pieces): in order, after every write in flight
            self._settle()
            return super().submit(mv)
        if self.pool is None:
            self.pool = ThreadPoolExecutor(WRITE_BEHIND_THREADS, thread_name_prefix="posix-write")
        while self.inflight and self.inflight[0].done():
            self.inflight.popleft()
        fut = self.pool.submit(self._write_at, mv, self.offset)
        self.offset += len(mv)
        self.inflight.append(fut)
        return fut

    def _write_at(self, mv: memoryview, offset: int) -> None:
        try:
            self.b._write_all(self.fd, mv, offset)
        except OSError as exc:
            raise _translate(exc, self.key) from exc

    def _settle(self) -> None:
        """Wait for every write in flight; raise the first one's error (after all are done)."""
        first: BaseException | None = None
        while self.inflight:
            exc = self.inflight.popleft().exception()
            first = first or exc
        if first is not None:
            raise first

    def write(self, chunk: memoryview | bytes) -> None:
        mv = memoryview(chunk).cast("B")
        try:
            if self.stage is None:
                self.offset += self.b._write_all(self.fd, mv, self.offset)
                return
            if not self.pending and len(mv) % ALIGN == 0 and is_aligned(mv):
                self.offset += self.b._write_all(self.fd, mv, self.offset)
                return
            pos = 0
            while pos < len(mv):
                take = min(len(self.stage) - self.pending, len(mv) - pos)
                self.stage[self.pending : self.pending + take] = mv[pos : pos + take]
                self.pending += take
                pos += take
                if self.pending == len(self.stage):
                    self._flush()
        except OSError as exc:
            raise _translate(exc, self.key) from exc

    def _flush(self) -> None:
        if self.pending and self.stage is not None:
            self.offset += self.b._write_all(self.fd, self.stage[: self.pending], self.offset)
            self.pending = 0

    def close(self) -> None:
        try:
            self._settle()
            self._flush()
            if self.b.fsync_policy != "none":
                self.b._fsync(self.fd)
        except OSError as exc:
            raise _translate(exc, self.key) from exc
        finally:
            self._stop()
            os.close(self.fd)
        if self.b.fsync_policy == "file_and_dir":
            self.b._fsync_dir(self.key)

    def _stop(self) -> None:
        """No write in flight, no helper thread left (before the fd goes)."""
        with contextlib.suppress(StorageError):  # abort drops the stream: its errors are moot
            self._settle()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def abort(self) -> None:
        self._stop()
        os.close(self.fd)
        try:
            os.unlink(self.b.path(self.key))
        except FileNotFoundError:  # nothing of it is left
            pass
        except OSError:
            self.b.leftovers.add([self.key])
