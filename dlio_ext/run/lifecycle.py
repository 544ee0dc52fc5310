"""How a run ends: every rank together, within seconds, with one line saying why and where its data is.

- An error every rank reaches alike (bad input, a verdict rank 0 broadcast through `on_rank0`, a
  workload's `UsageError`) ends each rank on its own, exit 2.
- Anything else on any one rank (an OSError while writing results on a full disk, a bug) would
  leave the other ranks waiting in a collective forever: that rank says what happened in one
  line, writes the reason into the run's INCOMPLETE marker, and aborts the communicator.
- SIGINT/SIGTERM end the run with 130/143 and a line saying where its data was left. The signals
  are taken by a thread of their own (`sigwait`), so they are acted on even while the main thread
  is blocked inside an MPI collective or a system call, where a Python handler would never run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import StorageError

INCOMPLETE = "INCOMPLETE"
LOCK = ".dlio-ext.lock"
#: exit statuses: 0 valid, 1 invalid run, 2 bad input, 3 a rank failed; 128 + signal when interrupted
FAILED = 3
SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: `extra=` for a log record that goes to the run's log files, never to the console
FILE_ONLY = {"console": False}


def console_filter(record: logging.LogRecord) -> bool:
    return getattr(record, "console", True)


def mark_incomplete(run_dir: Path | None, reason: str) -> None:
    """Say in the run directory why its results are partial; never raises (the disk may be full)."""
    if run_dir is None:
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"this run did not finish ({stamp}): {reason}\n"
    path = run_dir / INCOMPLETE
    # a full or read-only results disk cannot take the marker; the console line says it instead
    with contextlib.suppress(OSError):
        # a reason already there is the cause (a rank failed); what follows (the launcher's
        # SIGTERM to the others) is added below it, never written over it
        before = path.read_text() if path.exists() else ""
        path.write_text(before + line if before.startswith("this run did not finish") else line)


def one_line(exc: BaseException) -> str:
    """An exception as one line a person can act on: an OSError names its errno text and path."""
    if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror.lower()}{where}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, UsageError | StorageError) else text


class RunDirLock:
    """An exclusive lock on a run directory for the life of the run (rank 0 holds it).

    A second run given the same `run.dir` while the first is under way refuses in one line instead
    of overwriting the first one's summary; the lock goes with the process, however it ends."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise UsageError(
                    f"run.dir={self.path.parent} is in use by another run ({holder}); give each run its own run.dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Ending:
    """What a rank knows about its run when it has to end early: where results and data are."""

    def __init__(self, world: Any = None, log: logging.Logger | None = None):
        if world is None:
            from dlio_ext.world import SoloWorld

            world = SoloWorld()
        self.world = world
        self.log = log
        self.run_dir: Path | None = None
        #: where the run's data lives ("under /mnt/x", "in s3://bucket/prefix"), once the backend is open
        self.data_where: Callable[[], str] | None = None
        #: the phase under way, if the runner says
        self.phase: Callable[[], str | None] = lambda: None
        #: what the workload must say about its data beyond where it is (Workload.status)
        self.status: Callable[[], str] = lambda: ""
        #: set once this rank's results are safe: a late signal then only ends the process
        self.finished = False
        self._ending = threading.Lock()

    def _where(self) -> str:
        parts = []
        phase = self.phase()
        if phase:
            parts.append(f"during phase {phase}")
        if self.data_where is not None:
            with contextlib.suppress(Exception):  # describing the backend must not stop the ending
                parts.append(f"its data is left in {self.data_where()}")
        with contextlib.suppress(Exception):  # a workload's account must not stop the ending
            status = self.status()
            if status:
                parts.append(status)
        if self.run_dir is not None:
            parts.append(f"partial results in {self.run_dir}")
        return "; ".join(parts)

    def fail(self, exc: BaseException) -> int:
        """A failure this rank alone may have: say it, mark the run, and end every rank."""
        line = one_line(exc)
        rank = self.world.rank
        if self.log is not None:
            # the traceback is for the log file; the console gets the one line below
            self.log.error("rank %d failed: %s\n%s", rank, line, traceback.format_exc(), extra=FILE_ONLY)
        where = self._where()
        mark_incomplete(self.run_dir, f"rank {rank} failed: {line}" + (f" ({where})" if where else ""))
        detail = f" (details in {self.run_dir})" if self.run_dir is not None else ""
        print(f"dlio-ext: error: rank {rank}: {line}{detail}", file=sys.stderr, flush=True)
        if self.world.size > 1:
            self.world.abort(FAILED)  # the other ranks may be inside a collective: end them too
        return FAILED

    def interrupted(self, signum: int) -> None:
        """SIGINT/SIGTERM: the reason into INCOMPLETE, one line, exit 128 + signal, now."""
        if not self._ending.acquire(blocking=False):
            return
        if self.finished:
            os._exit(128 + signum)
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and self.world.size > 1:
            name += " (a launcher sends it when the job is cancelled or another rank died)"
        where = self._where()
        if self.world.rank == 0:
            line = f"interrupted by {name}" + (f" {where}" if where else "")
            mark_incomplete(self.run_dir, line)
            if self.log is not None:
                self.log.error("%s", line, extra=FILE_ONLY)
            print(f"dlio-ext: {line}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        if self.world.size > 1:
            # a signal to this rank alone (a node-level kill) must not leave the others waiting in
            # a collective; should the abort itself hang, the timer ends this process anyway
            threading.Timer(5.0, os._exit, args=(128 + signum,)).start()
            self.world.abort(128 + signum)
        # worker threads may be inside a system call and MPI inside a collective: leave at once
        os._exit(128 + signum)


#: the run a signal ends; the harness fills it in as it learns where results and data are
current = Ending()
_watching = False


def take_signals() -> None:
    """Route SIGINT/SIGTERM to a watcher thread that ends `current`.

    Call it first, before numpy (OpenBLAS starts a thread pool on import), MPI or any worker
    thread exists: threads inherit the blocked mask, so the kernel hands a process-directed
    signal to the one thread waiting for it, whatever the others are blocked in. A thread made
    earlier with the signals open would take them with the default action: death, no message."""
    global _watching
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    if _watching:
        return
    _watching = True

    def watch() -> None:
        signum = signal.sigwait(SIGNALS)
        current.interrupted(signum)

    threading.Thread(target=watch, name="dlio-ext-signals", daemon=True).start()


def release_signals() -> None:
    """Give the signals back to the main thread (after the run, or for code that forks)."""
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
