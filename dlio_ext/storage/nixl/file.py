"""storage=nixl, storage.medium=file: files under `root`, their bytes moved by NIXL's POSIX plugin.

The medium is the posix backend with another data path: every byte a put, get, get_range or
streamed write moves is a DRAM<->FILE transfer of the plugin (its Linux AIO queue), posted and
polled to DONE before the verb returns. We open, fsync and close the files ourselves (NIXL's "fd
mode": the plugin offers no fsync, and a path registration gives no descriptor back), and the verbs
NIXL has no call for (stat, list, delete, cache eviction) are the posix
backend's system calls on the same root, with its error kinds, its refusal of keys that escape
the root and its fsync policy, each fsync counted in the backend's Counters.

O_DIRECT (storage.direct=true): the plugin fails a transfer at an unaligned offset, length or
address, and a read that ends short (past the end of a file), with the same bare NIXL_ERR_BACKEND.
So every transfer is made aligned before it is posted, and checked: a caller's unaligned or
unregistered buffer goes through a registered staging buffer, a write's last partial block is
padded with zeros and the file then truncated to its size, and the last partial block of a file
(which the plugin would read short) is read with preadv on the same O_DIRECT descriptor: the one
part of the data path NIXL does not carry, and none at all for sizes that are multiples of 4 KiB.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import Counters, DeviceError, Liveness, NoSpace, StorageError
from dlio_ext.storage.buffers import ALIGN, address, round_up
from dlio_ext.storage.nixl.agent import Agent
from dlio_ext.storage.nixl.medium import Report, round_trip
from dlio_ext.storage.nixl.settings import NixlSettings
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.world import SoloWorld

#: staging bytes a thread keeps registered for buffers NIXL cannot take as they are
STAGE = 8 << 20


class FileMedium(PosixBackend):
    """PosixBackend whose two I/O primitives (`_write_all`, `_read_into`) and staging buffer
    (`_bounce`) go through NIXL; every other verb is the posix backend's own."""

    def __init__(self, agent: Agent, root: str, direct: bool = False, fsync: str | None = None):
        # compiled=False: a get reads through _read_into (NIXL), not the compiled system calls
        super().__init__(root, direct, fsync, STAGE, compiled=False)
        self.agent = agent
        self._stages = threading.local()
        self._lock = threading.Lock()
        #: FILE registrations (one a file a verb: NIXL's fd mode) and the seconds they took
        self.file_registrations = 0
        self.file_registration_seconds = 0.0
        #: bytes read with preadv past NIXL: the last partial 4 KiB block of files under O_DIRECT
        self.tail_bytes = 0

    # the data path -------------------------------------------------------------------------
    def _bounce(self, nbytes: int) -> memoryview:
        """This thread's staging buffer, registered with NIXL once (grown, never shrunk)."""
        buf = getattr(self._stages, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = self.agent.alloc(round_up(max(nbytes, self.chunk_size)))
            self._stages.buf = buf
        return buf

    def _page(self) -> memoryview:
        """This thread's registered 4 KiB page for a file's partial last block: apart from the
        staging buffer, which may be the very buffer a read lands in (posix's get_range)."""
        page = getattr(self._stages, "page", None)
        if page is None:
            page = self._stages.page = self.agent.alloc(ALIGN)
        return page

    def _takes(self, view: memoryview) -> bool:
        """Whether NIXL can move `view` as it is: registered, and aligned under O_DIRECT."""
        start, n = address(view), len(view)
        if self.direct and (start % ALIGN or n % ALIGN):
            return False
        return self.agent.registered(start, n)

    @contextmanager
    def _file(self, fd: int) -> Iterator[None]:
        """`fd` registered with the POSIX plugin for the transfers inside (fd mode)."""
        t0 = time.perf_counter()
        try:
            reg = self.agent.agent.register_memory([(0, 0, fd, "")], "FILE")
        except Exception as exc:
            raise DeviceError(f"NIXL's POSIX plugin refused the file ({type(exc).__name__})") from None
        dt = time.perf_counter() - t0
        with self._lock:
            self.file_registrations += 1
            self.file_registration_seconds += dt
        try:
            yield
        finally:
            self.agent.agent.deregister_memory(reg)

    def _move(self, op: str, fd: int, view: memoryview, offset: int) -> None:
        """One transfer between `view` (registered) and the file at `offset`, to DONE."""
        n = len(view)
        if self.direct and (offset % ALIGN or n % ALIGN or address(view) % ALIGN):
            # never reached by the verbs (they align first): a bug, said plainly, not NIXL's bare error
            raise StorageError(
                f"O_DIRECT {op} of {n} bytes at file offset {offset} (buffer address "
                f"{address(view) % ALIGN} past a 4096 boundary) is not 4096-byte aligned"
            )
        try:
            where = f"{op} of {n} bytes at offset {offset}"
            self.agent.move(op, [(address(view), n)], self.agent.name, [(offset, n, fd)], "FILE", where)
        except StorageError as exc:
            raise self._failed(op, fd, exc) from None

    def _failed(self, op: str, fd: int, exc: StorageError) -> StorageError:
        """What a failed transfer was, as far as the OS can tell (the plugin says only
        NIXL_ERR_BACKEND): a full file system is NoSpace, anything else the device's error."""
        key = self._key_of(fd)
        if op == "WRITE":
            free = self.free_bytes()
            if free is not None and free < ALIGN:
                return NoSpace(f"{key}: no space left on device ({exc})", key)
        return DeviceError(f"{key}: NIXL's POSIX plugin failed: {exc}", key)

    def _key_of(self, fd: int) -> str:
        """The key of an open file, for a message (failures only: a readlink of /proc)."""
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f"fd {fd}"
        return path[len(self._prefix) :] if path.startswith(self._prefix) else path

    def _write_all(self, fd: int, data: memoryview, offset: int) -> int:
        """Write `data` at `offset` through NIXL; under O_DIRECT a short tail is padded, then the
        file truncated (`offset` is aligned there: the verbs write from 0 or a flushed stage)."""
        n = len(data)
        if not n:
            return 0
        body = n - n % ALIGN if self.direct else n
        with self._file(fd):
            if body and self._takes(data[:body]):
                self._move("WRITE", fd, data[:body], offset)
            else:
                done = 0
                while done < body:
                    step = min(body - done, self.chunk_size)
                    stage = self._bounce(step)
                    stage[:step] = data[done : done + step]
                    self._move("WRITE", fd, stage[:step], offset + done)
                    done += step
            if body < n:
                tail, page = n - body, self._page()
                page[:tail] = data[body:]
                page[tail:ALIGN] = bytes(ALIGN - tail)
                self._move("WRITE", fd, page[:ALIGN], offset + body)
                os.ftruncate(fd, offset + n)
        return n

    def _read_into(self, fd: int, into: memoryview, offset: int) -> int:
        """Read up to len(into) bytes from `offset` through NIXL; returns how many. Never asks
        the plugin for bytes past the end of the file (it fails such a read)."""
        size = os.fstat(fd).st_size
        want = max(0, min(len(into), size - offset))
        if not want:
            return 0
        end = offset + want
        if not self.direct:
            with self._file(fd):
                self._read_span(fd, into, offset, end, offset, end)
            return want
        start = offset - offset % ALIGN
        # the blocks the plugin may read whole: up to the one holding `end`, or the file's last full one
        whole = min(round_up(end), size - size % ALIGN)
        if whole > start:
            with self._file(fd):
                self._read_span(fd, into, offset, end, start, whole)
        if whole < end:
            # the file's last partial block: a short read, which the plugin fails; the OS returns it
            page = self._page()
            got = os.preadv(fd, [page], whole)
            lo = max(whole, offset)
            if whole + got < end:
                raise DeviceError(f"the file shrank while it was read ({whole + got} of {end} bytes)")
            into[lo - offset : end - offset] = page[lo - whole : end - whole]
            with self._lock:
                self.tail_bytes += end - lo
        return want

    def _read_span(self, fd: int, into: memoryview, offset: int, end: int, lo: int, hi: int) -> None:
        """File bytes [lo, hi) (lo <= offset, hi within the file) delivering [offset, end) into
        `into` (whose byte 0 is the file's `offset`): straight into `into` when NIXL can take it,
        else through the staging buffer, a chunk at a time."""
        if lo == offset and hi - lo <= len(into) and self._takes(into[: hi - lo]):
            self._move("READ", fd, into[: hi - lo], lo)
            return
        pos = lo
        while pos < hi:
            step = min(hi - pos, self.chunk_size)
            stage = self._bounce(step)
            self._move("READ", fd, stage[:step], pos)
            a, b = max(pos, offset), min(pos + step, end)
            if b > a:
                into[a - offset : b - offset] = stage[a - pos : b - pos]
            pos += step

    def check(self) -> None:
        """The posix checks (root writable, O_DIRECT taken), then one 4 KiB round trip through
        the plugin, so a plugin that cannot move data fails here, not in the first phase."""
        super().check()
        # the probe is about the plugin moving bytes, not durability: no fsync counted for it
        policy, self.fsync_policy = self.fsync_policy, "none"
        try:
            round_trip(self, f".dlio_ext_nixl_probe.{os.getpid()}", f"NIXL's POSIX plugin at {self.root}")
        finally:
            self.fsync_policy = policy

    # the Medium protocol beyond the posix verbs ---------------------------------------------
    def alloc(self, nbytes: int) -> memoryview:
        return self.agent.alloc(nbytes)

    def share(self, counters: Counters, liveness: Liveness) -> None:
        self.counters, self.liveness = counters, liveness
        self.agent.counters = counters

    def notes(self) -> dict[str, object]:
        with self._lock:
            regs, secs, tail = self.file_registrations, self.file_registration_seconds, self.tail_bytes
        return {
            # the policy in force: the user's, or the one a workload asked for (see ask_durable)
            "fsync": self.fsync_policy,
            "fsync_source": self.fsync_source,
            "data_path": "NIXL POSIX plugin, DRAM<->FILE in fd mode: every byte of put, get, "
            "get_range and streamed writes (but the O_DIRECT tail below)",
            "os_verbs": "open, close, fsync, stat, list, delete and cache eviction are system "
            "calls (NIXL has no such verbs)",
            # one FILE registration a verb, inside the op's time: rank 0's, when describe() runs
            "file_registrations_rank0": regs,
            "file_registration_seconds_rank0": secs,
            "direct_tail_bytes_by_preadv_rank0": tail,
        }

    def report(self) -> Report:
        return {
            "plugins": {op.lower(): sorted(p) for op, p in self.agent.plugins.items()},
            "transports": {},  # no UCX: the POSIX plugin moves DRAM<->FILE in this process
            "registration_seconds": self.agent.registration_seconds,
            "registrations": self.agent.registrations,
        }

    def close(self) -> None:
        self.agent.close()


def open(settings: NixlSettings, run_dir: str | None, world: SoloWorld) -> FileMedium:  # noqa: A001
    """The file medium: files under storage.root (default <run dir>/data), one POSIX agent a rank."""
    root = settings.root or (f"{run_dir}/data" if run_dir else None)
    if not root:
        raise UsageError("storage.root is not set; give storage.root=/path/on/the/file/system")
    agent = Agent(f"file-rank{world.rank}-{os.getpid()}", {"POSIX": {}})
    return FileMedium(agent, root, settings.direct, settings.fsync)
