"""One NIXL agent for a backend: the environment NIXL and UCX need before they load, the import
guard, registered memory, a transfer driven to DONE, and what UCX says carried the transfers.

Facts this relies on (probed on this kind of machine, /work/wt/notes/nixl.md):
- a transfer reads or fills its buffers until it is DONE, not until `transfer()` returns, so every
  verb polls to DONE (or an exception) before it returns: base.py's buffer contract;
- only registered memory moves; a caller's buffer outside every registration is staged;
- NIXL names only its plugin (`query_xfer_backend`: "UCX"), never the UCX transport: that comes
  from UCX's own protocol report (UCX_PROTO_INFO), written to a log file per process and parsed.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import logging
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import Counters, StorageError, Unreachable
from dlio_ext.storage.buffers import address, aligned_buffer

INSTALL = "storage=nixl needs NIXL: pip install --no-deps nixl-cu12"
#: UCX transports that move data by RDMA (UCX's names: rc_verbs, rc_mlx5, dc_mlx5, ud_verbs, ...)
RDMA = re.compile(r"^(rc|dc|ud)(_|$)|^(ib|gga|srd)")
#: a transport/device pair in UCX_PROTO_INFO's config column: tcp/lo, cma/memory, rc_mlx5/mlx5_0:1
_TL = re.compile(r"([a-z][a-z0-9_]*)/([A-Za-z0-9_:.\-]+)")
_RANGE = re.compile(r"^\d+(\.\.(\d+|inf))?$")

#: descriptor lists kept for reuse (see Agent._descs)
DESC_CACHE = 4096

_nixl: ModuleType | None = None
_lock = threading.Lock()


def load_nixl(log_file: str) -> ModuleType:
    """The NIXL module, its environment set first; one UsageError line when it is not installed.

    Environment (read when NIXL and its UCX load, so it is set before the import):
    - NIXL_LOG_LEVEL=FATAL: at WARN/ERROR the C++ core prints a stderr line for every failed call
      even when Python catches the exception; we turn those into our own one-line errors.
    - UCX_MODULES=^ib only when this host has no /sys/class/infiniband: UCX's ib module then loads
      a bundled libnl whose exit handler segfaults (rc 139 replaces every exit code, a usage
      error's 2 included). On an RDMA host the module is needed, and the crash is not seen there.
    - UCX_PROTO_INFO=y into `log_file` (UCX reads both when its library loads): how we learn which
      transport carried data.
    Set with setdefault: a user's own choice wins. Later calls return the module loaded first."""
    global _nixl
    with _lock:
        if _nixl is not None:
            return _nixl
        os.environ.setdefault("NIXL_LOG_LEVEL", "FATAL")
        if not os.path.exists("/sys/class/infiniband"):
            os.environ.setdefault("UCX_MODULES", "^ib")
        os.environ.setdefault("UCX_PROTO_INFO", "y")
        os.environ.setdefault("UCX_LOG_FILE", log_file)
        # UCX aborts the process (SIGABRT, no message) when it cannot open its log file
        os.makedirs(os.path.dirname(os.environ["UCX_LOG_FILE"]) or ".", exist_ok=True)
        try:
            import nixl_cu12 as nixl  # the PyPI wheel's name; `import nixl` needs the CUDA meta package
        except ImportError:
            raise UsageError(INSTALL) from None
        # its Python logger writes INFO lines to stdout, which carries our results table
        logging.getLogger("nixl").setLevel(logging.WARNING)
        _nixl = nixl
        return nixl


def ib_note() -> str:
    """What describe() says about UCX's ib module (see load_nixl)."""
    if os.environ.get("UCX_MODULES") == "^ib" and not os.path.exists("/sys/class/infiniband"):
        return "ib module off (no /sys/class/infiniband on this host)"
    return f"UCX_MODULES={os.environ.get('UCX_MODULES', '<default>')}"


def error(exc: BaseException, what: str, key: str | None = None) -> StorageError:
    """A NIXL exception as a StorageError in our words (NIXL's text names no secret, but it is not
    a sentence a user can act on)."""
    name = type(exc).__name__
    if "Disconnect" in name:
        return Unreachable(f"{what}: the peer is gone ({name})", key)
    return StorageError(f"{what}: NIXL {name}", key)


class Agent:
    """A NIXL agent with its registered memory; thread-safe (NIXL's strict sync mode) because a
    control thread serves peers while the workload's threads transfer."""

    def __init__(self, name: str, backends: dict[str, dict[str, str]]):
        self.nixl = load_nixl(log_file_for(None, 0))  # loaded already by the backend, as a rule
        cfg = self.nixl.nixl_agent_config(
            # NIXL's own progress thread made a notification round trip 8 ms instead of 20 us here
            # (2 ranks, cma + tcp/lo): the threads that call NIXL progress it themselves, and the
            # control thread polls it (memory.py)
            enable_prog_thread=False,
            backends=[],
            capture_telemetry=False,
            sync_mode=self.nixl.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT,
        )
        self.name = name
        self.agent: Any = self.nixl.nixl_agent(name, cfg)
        for plugin, params in backends.items():
            try:
                self.agent.create_backend(plugin, params)
            except Exception as exc:
                raise UsageError(
                    f"storage=nixl: NIXL could not create its {plugin} backend ({type(exc).__name__})"
                ) from None
        self.registration_seconds = 0.0
        self.registrations = 0
        self._starts: list[int] = []  # sorted region starts
        self._regions: list[tuple[int, int, Any, memoryview]] = []  # (start, end, handle, buffer)
        self._reg_lock = threading.Lock()
        #: NIXL plugins that served transfers (query_xfer_backend), by verb
        self.plugins: dict[str, set[str]] = {}
        self._desc_cache: dict[tuple[Any, ...], Any] = {}
        #: the backend's tallies, once its medium is handed them (Medium.share)
        self.counters: Counters | None = None

    # registered memory ---------------------------------------------------------------------
    def register(self, buf: memoryview) -> None:
        """Register `buf` (kept for the agent's life), timing it apart from transfers."""
        start = address(buf)
        t0 = time.perf_counter()
        handle = self.agent.register_memory([(start, len(buf), 0, "")], "DRAM")
        dt = time.perf_counter() - t0
        with self._reg_lock:
            self.registration_seconds += dt
            self.registrations += 1
            i = bisect.bisect(self._starts, start)
            self._starts.insert(i, start)
            self._regions.insert(i, (start, start + len(buf), handle, buf))

    def alloc(self, nbytes: int) -> memoryview:
        """A page-aligned buffer, registered once and reused by the caller for the run."""
        buf = aligned_buffer(nbytes)
        # register the whole mapping: the caller may slice anywhere inside it
        self.register(buf)
        return buf

    def registered(self, start: int, n: int) -> bool:
        """Whether [start, start+n) lies inside one registration (so it can move without staging)."""
        with self._reg_lock:
            i = bisect.bisect(self._starts, start) - 1
            return i >= 0 and start + n <= self._regions[i][1]

    # transfers -----------------------------------------------------------------------------
    def xfer(self, op: str, local: tuple[int, int], peer: str, remote: tuple[int, int], what: str) -> None:
        """One WRITE or READ between a registered local range and a peer's registered range
        (addr, length), polled to DONE before returning: the buffers are the transfer's until then."""
        self.move(op, [local], peer, [(remote[0], remote[1], 0)], "DRAM", what)

    def move(
        self,
        op: str,
        local: list[tuple[int, int]],
        peer: str,
        remote: list[tuple[int, int, int]],
        mem: str,
        what: str,
    ) -> None:
        """One WRITE or READ between registered local ranges (addr, length) and `peer`'s `mem`
        ranges (addr, length, devId): DRAM of another agent, or this agent's own FILE (addr = file
        offset, devId = fd) or OBJ segments (addr = object offset, devId = the key's handle), with
        `peer` = this agent's name. Polled to DONE before returning: the buffers are the
        transfer's until then."""
        ag = self.agent
        try:
            h = ag.initialize_xfer(op, self._descs(local, "DRAM"), self._descs(remote, mem), peer)
        except Exception as exc:
            raise error(exc, what) from None
        self._finish(op, h, what)

    def _descs(self, ranges: list[tuple[int, int]] | list[tuple[int, int, int]], mem: str) -> Any:
        """NIXL's descriptor list for `ranges`, built once per distinct list: a workload moves the
        same buffers again and again, and building one costs microseconds of a 4 KiB transfer."""
        key = (mem, *ranges)
        got = self._desc_cache.get(key)
        if got is None:
            if len(self._desc_cache) >= DESC_CACHE:
                self._desc_cache.clear()  # a bound, not a policy
            got = self._desc_cache[key] = self.agent.get_xfer_descs(
                [r if len(r) == 3 else (r[0], r[1], 0) for r in ranges], mem
            )
        return got

    def prep(self, peer: str | None, ranges: Any) -> Any:
        """A prepped descriptor list of registered DRAM ranges (an Nx3 array of addr, length, 0):
        this agent's own (peer None) or `peer`'s; transfers then name descriptors by index
        (`move_prepped`)."""
        try:
            return self.agent.prep_xfer_dlist(peer if peer is not None else "NIXL_INIT_AGENT", ranges, "DRAM")
        except Exception as exc:
            raise error(exc, f"preparing descriptors for {peer or 'this rank'}") from None

    def move_prepped(
        self,
        op: str,
        local: Any,
        local_idx: list[int],
        remote: Any,
        remote_idx: list[int],
        what: str,
        notif: bytes = b"",
    ) -> None:
        """`move` between descriptors of two prepped lists, chosen by index: no descriptor is
        built or checked per transfer (NIXL did that once, in `prep`). A non-empty `notif` reaches
        the peer once the transfer is done."""
        try:
            h = self.agent.make_prepped_xfer(op, local, local_idx, remote, remote_idx, notif)
        except Exception as exc:
            raise error(exc, what) from None
        self._finish(op, h, what)

    def _finish(self, op: str, h: Any, what: str) -> None:
        """Post `h` and poll it to DONE (or an exception), then release it; the seconds in the
        post and in the wait go to the backend's Counters (three clock reads: NIXL's own
        telemetry costs more, see docs/nixl.md)."""
        ag = self.agent
        try:
            t0 = time.perf_counter()
            state = ag.transfer(h)
            t1 = time.perf_counter()
            while state == "PROC":
                state = ag.check_xfer_state(h)
            if state != "DONE":
                raise StorageError(f"{what}: NIXL transfer ended {state}")
            if self.counters is not None:
                self.counters.transfer(t1 - t0, time.perf_counter() - t1)
            seen = self.plugins.setdefault(op, set())
            if not seen:  # one query per verb is enough: every transfer of a verb takes one path
                seen.add(str(ag.query_xfer_backend(h)))
        except StorageError:
            raise
        except Exception as exc:
            raise error(exc, what) from None
        finally:
            h.release()

    def close(self) -> None:
        for _, _, handle, _ in self._regions:
            # best effort: the agent itself goes next and takes its regions with it, and no
            # transfer can still hold one (every verb waited for DONE)
            with contextlib.suppress(Exception):
                self.agent.deregister_memory(handle)
        self._regions.clear()
        self._starts.clear()
        self.agent = None


# what UCX said -----------------------------------------------------------------------------
def log_file_for(run_dir: str | None, rank: int) -> str:
    """Where NIXL's UCX writes its log, protocol report included, in this process: the run's
    directory (kept as evidence), else the temporary directory. Never stdout: it carries results."""
    return str(Path(run_dir or tempfile.gettempdir()) / f"nixl-ucx-rank{rank}.%p.log")


def ucx_log_paths() -> list[str]:
    """This process's UCX log file(s), from UCX_LOG_FILE's pattern (%p pid, %h host)."""
    pattern = os.environ.get("UCX_LOG_FILE")
    if not pattern:
        return []
    return [pattern.replace("%p", str(os.getpid())).replace("%h", socket.gethostname())]


def transports(lines: list[str]) -> dict[str, set[str]]:
    """{"write": {"tcp/lo", ...}, "read": {...}}: the transports UCX_PROTO_INFO's tables name for
    remote memory writes and reads (the lines that carry data; "active message" tables carry
    notifications and are left out)."""
    out: dict[str, set[str]] = {}
    verb: str | None = None
    for line in lines:
        if "remote memory write" in line:
            verb = "write"
        elif "remote memory read" in line:
            verb = "read"
        elif re.search(r"\|\s*(active message|tagged|stream|atomic|rkey|keepalive)", line):
            verb = None
        elif verb is not None and line.count("|") >= 4:
            cells = [c.strip() for c in line.split("|")]
            if _RANGE.match(cells[1]):  # a row "| 0..inf | zero-copy | cma/memory |"
                out.setdefault(verb, set()).update(f"{t}/{d}" for t, d in _TL.findall(cells[-2]))
    return out


def read_transports() -> dict[str, set[str]]:
    # UCX writes its log through a buffered C stream: what it selected last may not be in the file
    # yet. fflush(NULL) flushes every C output stream of this process.
    ctypes.CDLL(None).fflush(None)
    lines: list[str] = []
    for path in ucx_log_paths():
        try:
            lines += Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
    return transports(lines)


def is_rdma(transport: str) -> bool:
    return bool(RDMA.search(transport.split("/", 1)[0]))
