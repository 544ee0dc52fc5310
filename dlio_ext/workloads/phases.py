"""The shared phase runner: barrier, then every rank runs its ops, timed per op and per rank.

All ranks leave the barrier at (nearly) the same instant and measure from there with a
monotonic clock, so per-rank start/end offsets are comparable across nodes without trusting
their wall clocks: a phase lasts from the first rank's first op to the last rank's last op.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlio_ext.metrics import kernel
from dlio_ext.metrics.histogram import Histogram
from dlio_ext.storage.base import Backend, Bare, Liveness, StorageError, StoreGone
from dlio_ext.world import SoloWorld

#: op(index, thread_state) -> bytes moved; raises StorageError (counted) on failure
Op = Callable[[int, Any], int]
#: chunk(start, stop, thread_state, latencies, failures) -> bytes moved: runs ops start..stop-1 in
#: order, appends each successful op's latency in seconds to `latencies` and each failed op's
#: (index, StorageError) to `failures`; raises nothing for a failed op
Chunk = Callable[[int, int, Any, array, list], int]


#: op latencies a thread keeps (8 bytes each, 1 MiB) before binning them into its histogram at once;
#: a phase of fewer ops a thread bins after its last op, outside the phase's time
LATENCY_BATCH = 1 << 17


@dataclass
class PhaseResult:
    """One rank's view of one phase; rank 0 merges these (metrics.results)."""

    name: str
    ops: int = 0
    bytes: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    start: float = 0.0
    end: float = 0.0
    planned_ops: int = 0
    hist: Histogram = field(default_factory=Histogram)
    extra: dict[str, Any] = field(default_factory=dict)
    #: "read" or "write": which way the phase's counted bytes move (what the kernel's counters are
    #: compared with); None for phases that move no data
    io: str | None = None
    #: how the phase made its reads cold (a CacheControl method, "drop_caches"), None if it claims
    #: nothing: a claim is checked against the kernel's counters (metrics.results.cold_check)
    cold: str | None = None
    #: what the kernel counted during the phase on this rank (KernelMeter.stop)
    kernel: dict[str, Any] | None = None

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 0.0)

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ops": self.ops,
            "bytes": self.bytes,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "first_error": self.first_error,
            "start": self.start,
            "end": self.end,
            "planned_ops": self.planned_ops,
            "hist": self.hist.to_state(),
            "extra": self.extra,
            "io": self.io,
            "cold": self.cold,
            "kernel": self.kernel,
        }


@dataclass(frozen=True)
class KernelMark:
    proc: kernel.ProcIO | None
    disk: kernel.DiskIO | None
    fsync: tuple[int, float]


class KernelMeter:
    """Snapshots of the kernel's own counters around a phase, cheap enough for every phase (two
    small /proc reads at each end, none per op): this process's /proc/self/io on every rank, and
    the diskstats of the device under the backend's local root on one rank per host (the lowest:
    its device counts every rank of the host), plus the backend's fsync counters.

    Built once per run on every rank (it gathers the host names: a collective call)."""

    def __init__(self, world: SoloWorld, backend: Backend | None):
        self.backend = backend
        self.host = world.hostname
        self.sampler = world.host_leader()
        root = backend.local_root() if backend is not None else None
        if backend is None:
            self.device = kernel.Device(None, "no backend")
        elif root is None:
            self.device = kernel.Device(None, backend.cache_control().note)
        else:
            while not os.path.exists(root) and os.path.dirname(root) != root:
                root = os.path.dirname(root)  # not created on this host yet: its parent's device
            self.device = kernel.find_device(root)

    def _disk(self) -> kernel.DiskIO | None:
        if self.sampler and self.device.name is not None:
            return kernel.read_diskstats(self.device.name)
        return None

    def start(self) -> KernelMark:
        fsync = self.backend.fsync_counters() if self.backend is not None else (0, 0.0)
        return KernelMark(kernel.read_proc_io(), self._disk(), fsync)

    def stop(self, mark: KernelMark, wait: Callable[[], None] | None = None) -> dict[str, Any]:
        """This rank's deltas since `mark`, as PhaseResult.kernel holds them. `wait` (a barrier)
        runs between this process's counters and the device's, so the device's count covers
        the slowest rank of the host too."""
        proc = kernel.read_proc_io()
        fsync = self.backend.fsync_counters() if self.backend is not None else (0, 0.0)
        if wait is not None:
            wait()
        disk = self._disk()
        dp = proc - mark.proc if proc is not None and mark.proc is not None else None
        dd = disk - mark.disk if disk is not None and mark.disk is not None else None
        return {
            "host": self.host,
            "proc_self_io": vars(dp) if dp is not None else None,
            "diskstats": vars(dd) if dd is not None else None,
            "device": self.device.name,
            "no_device": self.device.why,
            "memory": self.device.memory,
            "fstype": self.device.fstype,
            "fsync_calls": fsync[0] - mark.fsync[0],
            "fsync_seconds": round(fsync[1] - mark.fsync[1], 9),
            # a background phase (no barrier): the device was read at this rank's own end
            "own_span": wait is None,
        }


class _Progress:
    """Rank 0's live line: ops done, rate, ETA; only for phases that last a while.

    While the store is failing (`live`), an ETA means nothing: the line says how many ops failed
    and how long since the last success instead, and when the run will give up."""

    def __init__(
        self,
        name: str,
        total: int,
        interval: float,
        done: Callable[[], tuple[int, int, int]],
        live: Liveness | None = None,
    ):
        self.name, self.total, self.interval, self.done, self.live = name, total, interval, done, live
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.perf_counter()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            ops, nbytes, errors = self.done()
            now = time.perf_counter()
            dt = now - self.t0
            rate = ops / dt if dt else 0.0
            pct = 100.0 * ops / self.total if self.total else 100.0
            head = f"[{self.name}] rank 0: {ops}/{self.total} ops ({pct:.0f}%)"
            live = self.live
            if live is not None and live.failing_since is not None:
                deadline = live.deadline()
                line = (
                    f"{head}, {errors} failed; the store is failing: no successful op for "
                    f"{now - max(live.last_ok, self.t0):,.0f} s"
                    + (f", giving up in {max(deadline - now, 0):,.0f} s" if deadline is not None else "")
                )
            else:
                eta = (self.total - ops) / rate if rate else float("inf")
                line = (
                    f"{head}, {rate:,.0f} ops/s, {nbytes / dt / 1e6 if dt else 0:,.1f} MB/s, ETA {eta:,.0f} s"
                    + (f", {errors} failed" if errors else "")
                )
            print(line, file=sys.stderr, flush=True)

    def __enter__(self) -> _Progress:
        if self.interval > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


class PhaseRunner:
    def __init__(
        self,
        world: SoloWorld,
        progress_interval: float = 2.0,
        backend: Backend | None = None,
        liveness: Liveness | None = None,
    ):
        """With a `backend`, every phase also records what the kernel counted (KernelMeter);
        building the runner is then a collective call."""
        self.world = world
        self.progress_interval = progress_interval if world.rank == 0 else 0.0
        #: the phase under way, for a run that has to say where it stopped
        self.current: str | None = None
        self.backend = backend
        self.meter = KernelMeter(world, backend) if backend is not None else None
        #: the backend's: whether the store still answers (see `Liveness`)
        if liveness is None:
            liveness = backend.liveness if backend is not None else Liveness()
        self.liveness = liveness
        #: every phase this runner measured (and those `keep` was handed), in order: what
        #: survives when the run stops early
        self.results: list[PhaseResult] = []

    def kernel_start(self) -> KernelMark | None:
        """For a phase timed outside `run_chunks`: call right before its start barrier, and
        `kernel_stop` (which is the end barrier) when the rank's part is done, as run_chunks does."""
        return self.meter.start() if self.meter is not None else None

    def kernel_stop(self, mark: KernelMark | None, collective: bool = True) -> dict[str, Any] | None:
        """PhaseResult.kernel for the span since `mark` (None without a backend).

        Collective (the default): every rank calls it when its part of the phase is done, and it
        ends the phase with a barrier, taken after this process's counters and before the
        device's. A background thread cannot join a barrier: `collective=False` then reads the
        device at this rank's own end (the sampling rank's span, not the slowest rank's)."""
        wait = self.world.barrier if collective else None
        if self.meter is None or mark is None:
            if wait is not None:
                wait()
            return None
        return self.meter.stop(mark, wait)

    def keep(self, results: Sequence[PhaseResult]) -> None:
        """Remember phases a workload timed itself, so a run that stops early still reports them."""
        self.results.extend(results)

    def store_gone(self) -> str | None:
        """Collective (every rank calls it at the same point): the reason the store counts as
        gone if any rank declared it so, the same text on every rank, else None."""
        reasons = self.world.allgather(self.liveness.gone)
        reason = next((r for r in reasons if r is not None), None)
        if reason is not None and self.liveness.gone is None:
            self.liveness.gone = reason  # this rank too now skips what needs a live store
        return reason

    def stop_if_gone(self) -> None:
        """Collective: every rank raises the same StoreGone if any rank declared the store gone."""
        reason = self.store_gone()
        if reason is not None:
            raise StoreGone(reason)

    def run(
        self,
        name: str,
        n_ops: int,
        op: Op,
        io_depth: int = 1,
        thread_state: Callable[[int], Any] | None = None,
        deadline_s: float | None = None,
        catch_up: bool = False,
        *,
        io: str | None = None,
        cold: bool = False,
    ) -> PhaseResult:
        """`run_chunks` with one op at a time: `op(i, state)` for i in 0..n_ops-1."""
        return self.run_chunks(
            name, n_ops, per_op(op), 1, io_depth, thread_state, deadline_s, catch_up, io=io, cold=cold
        )

    def run_chunks(
        self,
        name: str,
        n_ops: int,
        chunk_op: Chunk,
        chunk: int = 1,
        io_depth: int = 1,
        thread_state: Callable[[int], Any] | None = None,
        deadline_s: float | None = None,
        catch_up: bool = False,
        *,
        io: str | None = None,
        cold: bool = False,
    ) -> PhaseResult:
        """Run ops 0..n_ops-1 on `io_depth` threads, `chunk` at a time; every rank enters and leaves together.

        `io` ("read"/"write") says which way the counted bytes move; `cold` claims the reads come
        from the medium (the caller evicted what it will read): both are checked against what the
        kernel counted between the barriers (see KernelMeter).

        `thread_state(t)` builds what thread t reuses across its ops (its buffers), before the
        clock starts. A thread takes the next `chunk` indices and hands them to `chunk_op` (see
        `Chunk`). With `deadline_s`, no chunk is taken once the deadline has passed; the ops
        issued are always a prefix 0..k-1 (a chunk taken is a chunk run).

        A failed op counts towards the store's liveness: once this rank has seen failures and no
        successful op for run.store_timeout_s, its threads take no further chunk; after the
        phase's end barrier the ranks agree, and if any rank found the store gone, every rank
        raises the same StoreGone (the phase's result is kept in `results` first).

        `catch_up` (with `deadline_s`) is mdtest's stonewall wear-out: when the deadline stops a
        rank, the ranks agree on the highest k any of them reached (allreduce max) and every rank
        goes on to that k, on the same clock. `extra` then records `stonewall_items` (this rank's
        k), `stonewall_seconds` (when its last op before the stop ended), `wearout_items` (ops it
        did after the agreement), `stonewall_target` (the agreed k) and `stonewalled` (whether the
        agreed k is short of n_ops: the phase then counts as finished at the agreed k).
        """
        chunk = max(1, chunk)
        states = [thread_state(t) if thread_state else None for t in range(io_depth)]
        hists = [Histogram() for _ in range(io_depth)]
        res = PhaseResult(name=name, planned_ops=n_ops, io=io)
        if cold:
            res.cold = self.backend.cache_control().method if self.backend is not None else "claimed"
        lock = threading.Lock()
        tally = {"ops": 0, "bytes": 0}
        firsts: list[float] = []
        lasts: list[float] = []
        stop_at: float | None = None  # absolute deadline; None in the catch-up round
        live = self.liveness

        def worker(t: int, starts: Iterator[int], hi: int) -> None:
            # paid once a chunk: per op, only what chunk_op does
            hist, state = hists[t], states[t]
            perf = time.perf_counter
            lat = array("d")
            failures: list[tuple[int, StorageError]] = []
            stop = stop_at
            first = last = None
            ops = nbytes = pub_ops = pub_bytes = 0
            for lo in starts:
                if live.gone is not None:  # another thread (or phase) found the store gone
                    break
                s = perf()
                if first is None:
                    first = s
                moved = chunk_op(lo, min(lo + chunk, hi), state, lat, failures)
                last = perf()
                done = min(lo + chunk, hi) - lo
                if failures:
                    done -= len(failures)
                    with lock:
                        for _i, exc in failures:
                            res.errors += 1
                            res.error_kinds[exc.kind] = res.error_kinds.get(exc.kind, 0) + 1
                            if res.first_error is None:
                                res.first_error = str(exc)
                            live.failed(exc, last)
                    failures.clear()
                    if done:
                        live.ok(last)
                    elif live.expired(last):
                        live.declare(f"phase {name}", last)
                        break
                elif live.failing_since is not None:
                    live.ok(last)
                else:
                    live.last_ok = last
                ops += done
                nbytes += moved
                if ops - pub_ops >= 64:  # progress is read from another thread: publish in batches
                    with lock:
                        tally["ops"] += ops - pub_ops
                        tally["bytes"] += nbytes - pub_bytes
                    pub_ops, pub_bytes = ops, nbytes
                    if len(lat) >= LATENCY_BATCH:
                        hist.record_many(lat)
                        del lat[:]
                # checked after a chunk, before the next is taken: none is taken and dropped
                if stop is not None and last >= stop:
                    break
            hist.record_many(lat)
            with lock:
                tally["ops"] += ops - pub_ops
                tally["bytes"] += nbytes - pub_bytes
                res.ops += ops
                res.bytes += nbytes
                if first is not None:
                    firsts.append(first)
                    lasts.append(last if last is not None else first)

        def round_(lo: int, hi: int) -> None:
            # one iterator shared by the threads (its next() is atomic under the GIL)
            starts = iter(range(lo, hi, chunk))
            run_threads(lambda t: worker(t, starts, hi), io_depth)

        self.current = name
        # the device's counters before the barrier: after it, another rank of this host may have
        # done I/O before a loaded sampling rank reads them, and the phase would miss it
        mark = self.kernel_start()
        self.world.barrier()
        t0 = time.perf_counter()
        if deadline_s is not None:
            stop_at = t0 + deadline_s
        progress = _Progress(
            name, n_ops, self.progress_interval, lambda: (tally["ops"], tally["bytes"], res.errors), live
        )
        with progress:
            round_(0, n_ops)
            if catch_up and deadline_s is not None:
                reached = min(res.ops + res.errors, n_ops)
                stopped = (max(lasts) - t0) if lasts else 0.0
                target = int(self.world.allreduce_max(reached))
                stop_at = None
                round_(reached, target)
                res.extra.update(
                    stonewall_items=reached,
                    stonewall_seconds=stopped,
                    wearout_items=res.ops + res.errors - reached,
                    stonewall_target=target,
                    stonewalled=target < n_ops,
                )
        res.start = (min(firsts) - t0) if firsts else 0.0
        res.end = (max(lasts) - t0) if lasts else 0.0
        res.hist = Histogram.merged(hists)
        res.kernel = self.kernel_stop(mark)  # and the closing barrier
        self.current = None
        self.results.append(res)
        self.stop_if_gone()
        return res


def run_threads(fn: Callable[[int], None], n: int) -> None:
    """fn(0) .. fn(n-1), each on a thread of its own (inline when n is 1); waits for all.

    A thread that raises (anything but a counted StorageError is a bug) must end the run from
    the main thread, every rank in one line, not vanish with its thread: the first is re-raised."""
    if n <= 1:
        fn(0)
        return
    crashed: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            fn(t)
        except BaseException as exc:
            crashed.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if crashed:
        raise crashed[0]


def per_op(op: Op) -> Chunk:
    """A chunk op calling `op(i, state)` for each index, timing each call on its own."""

    def run(start: int, stop: int, state: Any, lat: array, failures: list) -> int:
        perf, keep = time.perf_counter, lat.append
        moved = 0
        for i in range(start, stop):
            s = perf()
            try:
                moved += op(i, state)
            except StorageError as exc:
                failures.append((i, exc))
                continue
            keep(perf() - s)
        return moved

    return run


def bare_loop(
    targets: Sequence[Any],
    bare_of: Callable[[Any], Bare],
    *,
    before: Callable[[int, Any], None] | None = None,
    check: Callable[[int, Any, Any], None] | None = None,
    moves: bool = False,
    native: bool = False,
) -> Chunk:
    """A chunk op calling a backend's bare verb (`bare_of(thread state)`) on `targets[i]`.

    With nothing around the call, one clock read an op: an op's latency runs from the end of the
    one before it (or the start of its chunk) to its own end, so it includes the loop's own
    ~0.1 us between ops and the latencies of a chunk add up to its time exactly. `before(i,
    state)` (e.g. a stamp into the buffer) and `check(i, state, result)` (a verification; it
    raises StorageError) run outside the op's latency, at the cost of a second clock read.
    `moves` sums what the calls return as bytes moved.

    `native` (the caller's backend has compiled verbs, and the verbs `bare_of` gives were told
    what `before` stamps and `check` checks: `NativeVerb.checking`): the targets are laid out for
    the compiled loop now, before any clock, and a thread whose Bare has a `native` verb runs its
    chunks there; each op the compiled loop stops at is handled here (see `_native_chunk`).
    """
    python = _python_loop(targets, bare_of, before, check, moves)
    if native and isinstance(targets, list):
        return _native_chunk(targets, bare_of, check, python)
    return python


def _python_loop(
    targets: Sequence[Any],
    bare_of: Callable[[Any], Bare],
    before: Callable[[int, Any], None] | None,
    check: Callable[[int, Any, Any], None] | None,
    moves: bool,
) -> Chunk:
    if before is None and check is None and not moves:

        def lean(start: int, stop: int, state: Any, lat: array, failures: list) -> int:
            call, catch, error = bare_of(state)[:3]
            perf, keep = time.perf_counter, lat.append
            prev = perf()
            for i in range(start, stop):
                try:
                    call(targets[i])
                except catch as exc:
                    failures.append((i, error(exc, targets[i])))
                    prev = perf()
                    continue
                now = perf()
                keep(now - prev)
                prev = now
            return 0

        return lean

    def hooked(start: int, stop: int, state: Any, lat: array, failures: list) -> int:
        call, catch, error = bare_of(state)[:3]
        perf, keep = time.perf_counter, lat.append
        moved = 0
        for i in range(start, stop):
            if before is not None:
                before(i, state)
            s = perf()
            try:
                got = call(targets[i])
            except catch as exc:
                failures.append((i, error(exc, targets[i])))
                continue
            keep(perf() - s)
            if check is not None:
                try:
                    check(i, state, got)
                except StorageError as exc:
                    del lat[-1]  # a failed op has no latency
                    failures.append((i, exc))
                    continue
            if moves:
                moved += got
        return moved

    return hooked


def _native_chunk(
    targets: list[Any],
    bare_of: Callable[[Any], Bare],
    check: Callable[[int, Any, Any], None] | None,
    python: Chunk,
) -> Chunk:
    """`bare_loop` on the compiled verbs: ops run in C until one stops the loop, which is
    handled here, then C goes on from the next. A failed system call becomes the StorageError
    the Python verb would raise (`Bare.error` of an OSError with its errno); a failed check is
    explained by `check` itself, on the data the op left in the thread's buffer (the same
    VerifyError); a create whose directory is missing, or a file too large for the buffer, is
    done again by the Python loop (it makes the directory and retries; it raises the error)."""
    from dlio_ext.storage import native as nat  # numpy-backed layout of the targets

    paths = nat.Paths(targets)

    def compiled(start: int, stop: int, state: Any, lat: array, failures: list) -> int:
        bare = bare_of(state)
        verb = bare.native
        if verb is None:
            return python(start, stop, state, lat, failures)
        moved, i = 0, start
        while i < stop:
            r = verb.run(paths, i, stop, lat)
            moved += r.moved
            if r.kind == nat.DONE:
                break
            j = r.index
            if r.kind == nat.FAILED:
                exc = OSError(r.err, os.strerror(r.err), targets[j])
                failures.append((j, bare.error(exc, targets[j])))
            elif r.kind == nat.MISMATCH and check is not None:
                got: Any = (
                    r.value if verb.verb != "stat" else os.stat_result((0,) * 6 + (r.value,) + (0,) * 3)
                )
                try:
                    check(j, state, got)
                except StorageError as exc:
                    failures.append((j, exc))
                else:
                    raise RuntimeError(f"{targets[j]}: the compiled check failed where the Python one passed")
            else:  # MISSING_DIR, TOO_BIG: the Python verb's own retry or error
                moved += python(j, j + 1, state, lat, failures)
            i = j + 1
        return moved

    return compiled


# --- open-loop phases (KV server) ------------------------------------------------------------------
#
# A serving phase is open-loop: each source (one user of an inference server) sends requests on
# its own schedule, whether or not its earlier ones were quick, and one request does several kinds
# of op (reads, writes, look-ups that miss), each a phase of its own over the same window. A thread
# records into its own `OpRecord` (a timed op costs two list appends, `SampleLog.add`; no lock);
# `run_open_loop` starts the threads, holds the barriers and the clock, feeds the schedules, and
# once every thread is done folds the records into PhaseResults (ops, bytes, error tallies,
# planned ops, latency histograms) and per-interval op counts (the time series).


class SampleLog:
    """One thread's timed operations: `add(end, seconds)` appends both floats to a list (a few
    hundred nanoseconds, no allocation: the floats exist already); every FOLD samples, and at the
    end, they are folded in bulk (numpy) into a Histogram, bucket for bucket what
    Histogram.record would give, and into per-interval counts for the time series."""

    FOLD = 4096
    __slots__ = ("buf", "hist", "counts", "first", "last", "t0", "interval")

    def __init__(self, interval: float = 1.0):
        self.buf: list[float] = []  # end, seconds, end, seconds, ...
        self.hist = Histogram()
        self.counts = np.zeros(0, np.int64)
        self.first = math.inf  # earliest start, absolute
        self.last = -math.inf  # latest end, absolute
        self.t0 = 0.0
        self.interval = interval

    def add(self, end: float, seconds: float) -> None:
        buf = self.buf
        buf.append(end)
        buf.append(seconds)
        if len(buf) >= 2 * self.FOLD:
            self.fold()

    def fold(self) -> None:
        if not self.buf:
            return
        pairs = np.array(self.buf, np.float64).reshape(-1, 2)
        self.buf.clear()
        ends, secs = pairs[:, 0], pairs[:, 1]
        self.hist.record_many(secs)
        self.first = min(self.first, float((ends - secs).min()))
        self.last = max(self.last, float(ends.max()))
        slot = np.maximum((ends - self.t0) // self.interval, 0).astype(np.int64)
        per = np.bincount(slot)
        if len(per) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(per) - len(self.counts), np.int64)])
        self.counts[: len(per)] += per

    @classmethod
    def merged(cls, logs: Sequence[SampleLog], interval: float) -> SampleLog:
        out = cls(interval)
        for log in logs:
            log.fold()
            out.hist.merge(log.hist)
            out.first = min(out.first, log.first)
            out.last = max(out.last, log.last)
            if len(log.counts) > len(out.counts):
                out.counts = np.concatenate(
                    [out.counts, np.zeros(len(log.counts) - len(out.counts), np.int64)]
                )
            out.counts[: len(log.counts)] += log.counts
        return out


class OpRecord:
    """One thread's record of an open-loop phase: a SampleLog per timed kind of op (`logs`),
    counters (`c`) and its failed ops (`errors`: op -> error kind -> count; `first_error`: op ->
    message). Written by its own thread alone: no locks, merged after the phase."""

    def __init__(
        self, interval: float, logs: Sequence[str], counters: Sequence[str], failing: Sequence[str]
    ) -> None:
        self.interval = interval
        self.c = dict.fromkeys(counters, 0)
        self.logs = {name: SampleLog(interval) for name in logs}
        self.errors: dict[str, dict[str, int]] = {op: {} for op in failing}
        self.first_error: dict[str, str] = {}

    def set_t0(self, t0: float) -> None:
        for log in self.logs.values():
            log.t0 = t0

    def error(self, op: str, exc: StorageError) -> None:
        kinds = self.errors[op]
        kinds[exc.kind] = kinds.get(exc.kind, 0) + 1
        self.first_error.setdefault(op, str(exc))


@dataclass(frozen=True)
class OpKind:
    """Which parts of the OpRecords make one phase of an open-loop run."""

    phase: str
    log: str  # the SampleLog of its latencies and ends
    ops: str  # the counter of ops done
    bytes: str | None = None  # the counter of bytes they moved
    errors: str | None = None  # its key in OpRecord.errors
    #: the counter of ops given up untried once the store was found gone (a queued write): they
    #: were planned, so the phase shows as unfinished
    dropped: str | None = None
    io: str | None = None  # as PhaseResult.io
    cold: bool = False  # claims cold reads, as run_chunks' `cold`


@dataclass
class OpenLoop:
    """One rank's open-loop run: its phases, and what a workload reports beyond them."""

    phases: list[PhaseResult]
    logs: dict[str, SampleLog]  # every thread's, merged
    counters: dict[str, int]  # summed over the threads
    t0: float  # perf_counter when the ranks left the start barrier
    seconds: float  # from t0 until this rank's last thread was done
    started: int  # requests started
    planned: int  # requests due before the phase ended: started, or not served because it stopped early


#: (when a request arrives, in seconds from its source's start, or None: as soon as the source's
#: previous request is done (closed loop); the request, as `serve` takes it)
Arrival = tuple[float | None, Any]


def run_open_loop(
    runner: PhaseRunner,
    name: str,
    schedules: Sequence[Iterator[Arrival]],
    serve: Callable[[int, Any], None],
    records: Sequence[OpRecord],
    kinds: Sequence[OpKind],
    *,
    deadline_s: float | None = None,
    offset_s: float = 0.0,
    background: Sequence[Callable[[], None]] = (),
    end_background: Callable[[], None] | None = None,
    queue_log: str = "queue",
) -> OpenLoop:
    """One open-loop phase on every rank (collective): barrier, the sources run, barrier.

    Source s runs on a thread of its own: it takes its next arrival from `schedules[s]`, waits
    until it is due (`offset_s` + its time after the start barrier; a closed-loop one at once),
    logs the wait in `records[s].logs[queue_log]` (the request's queueing delay, untimed in its
    latency) and calls `serve(s, request)`, which records its ops in `records[s]`. A source stops
    at the end of its schedule, at `deadline_s` (a request due at or after it is not this phase's),
    once the store is gone, or once a thread of the phase has raised (a bug). `background`
    functions run on threads of their own for the whole phase (write-back writers, recording in
    `records[len(schedules):]`); `end_background` is called when the last source is done and must
    make them return, even after one of them raised (a source may wait on a background thread).

    Each of `kinds` becomes a PhaseResult, in order. The one named `name` is the request phase:
    its planned ops are the requests due before the phase ended, so a phase the store stopped
    early shows as unfinished (see `_still_due`); the others plan what they tried plus what they
    dropped (`OpKind.dropped`). All share one kernel window: a phase with an `io` carries it, and
    where a write phase exists the fsyncs are its own (a read phase's count is zero).

    After the closing barrier: a thread that raised (a bug, not a StorageError) is re-raised on
    its rank; if any rank found the store gone, the phases are kept in `runner.results` and every
    rank raises the same StoreGone, as `PhaseRunner.run_chunks` does."""
    live = runner.liveness
    go = threading.Event()
    clock = [0.0]
    fatal: list[BaseException] = []
    started = [0] * len(schedules)
    unrun = [0] * len(schedules)

    def source(s: int) -> None:
        try:
            go.wait()
            t0 = clock[0]
            begin = t0 + offset_s
            deadline = t0 + deadline_s if deadline_s else math.inf
            qlog, schedule = records[s].logs[queue_log], schedules[s]
            perf, sleep = time.perf_counter, time.sleep
            for at, request in schedule:
                if live.gone is not None:  # the ranks agree after the closing barrier
                    unrun[s] = _still_due(at, schedule, begin, deadline)
                    break
                if fatal:  # another thread hit a bug: it is raised as soon as the threads are done
                    break
                now = perf()
                arrive = begin + at if at is not None else max(now, begin)
                if arrive >= deadline or now >= deadline:
                    break
                if arrive > now:
                    sleep(arrive - now)
                start = perf()
                qlog.add(start, max(start - arrive, 0.0))
                started[s] += 1
                serve(s, request)
        except BaseException as exc:  # a bug, not a storage error: stop the run loudly
            fatal.append(exc)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                fatal.append(exc)

        return run

    threads = [
        threading.Thread(target=source, args=(s,), name=f"{name}-source-{s}", daemon=True)
        for s in range(len(schedules))
    ]
    helpers = [
        threading.Thread(target=guarded(fn), name=f"{name}-background-{b}", daemon=True)
        for b, fn in enumerate(background)
    ]
    for th in threads + helpers:
        th.start()
    runner.current = name
    mark = runner.kernel_start()  # before the barrier, as run_chunks does
    runner.world.barrier()
    t0 = time.perf_counter()
    clock[0] = t0
    for rec in records:
        rec.set_t0(t0)
    go.set()
    for th in threads:
        th.join()
    if end_background is not None:
        end_background()
    for th in helpers:
        th.join()
    seconds = time.perf_counter() - t0
    window = runner.kernel_stop(mark)  # and the closing barrier
    runner.current = None
    if fatal:
        raise fatal[0]

    interval = records[0].interval
    logs = {n: SampleLog.merged([r.logs[n] for r in records], interval) for n in records[0].logs}
    counters = {k: sum(r.c[k] for r in records) for k in records[0].c}
    planned = sum(started) + sum(unrun)
    writes = any(k.io == "write" for k in kinds)
    phases = []
    for kind in kinds:
        errors: dict[str, int] = {}
        first = None
        if kind.errors is not None:
            for r in records:
                for k, v in r.errors[kind.errors].items():
                    errors[k] = errors.get(k, 0) + v
            first = next((r.first_error[kind.errors] for r in records if kind.errors in r.first_error), None)
        res = PhaseResult(
            name=kind.phase,
            ops=counters[kind.ops],
            bytes=counters[kind.bytes] if kind.bytes is not None else 0,
            errors=sum(errors.values()),
            error_kinds=errors,
            first_error=first,
            io=kind.io,
        )
        if kind.phase == name:
            res.planned_ops = planned
        else:
            res.planned_ops = res.ops + res.errors + (counters[kind.dropped] if kind.dropped else 0)
        log = logs[kind.log]
        res.hist = log.hist
        if log.hist.n:
            res.start = max(log.first - t0, 0.0)
            res.end = max(log.last - t0, res.start)
        if kind.cold:
            res.cold = runner.backend.cache_control().method if runner.backend is not None else "claimed"
        if window is not None and kind.io is not None:
            res.kernel = (
                window | {"fsync_calls": 0, "fsync_seconds": 0.0} if kind.io == "read" and writes else window
            )
        phases.append(res)
    runner.results.extend(phases)
    runner.stop_if_gone()
    return OpenLoop(phases, logs, counters, t0, seconds, sum(started), planned)


def _still_due(at: float | None, rest: Iterator[Arrival], begin: float, deadline: float) -> int:
    """How many requests of a source stopped early (the store gone) were due before its phase
    would have ended, from the one in hand (`at`) on: a timed one if it arrives before the
    deadline; a closed-loop one is due now (its predecessor is done), and those after it count
    only without a deadline (then the whole schedule was planned: it ends)."""
    n = 0
    now = time.perf_counter()
    while True:
        if at is None:
            if now >= deadline:
                break
            n += 1
            if deadline != math.inf:
                break
        elif begin + at < deadline:
            n += 1
        else:
            break
        nxt = next(rest, None)
        if nxt is None:
            break
        at = nxt[0]
    return n


# --- file-granular phases (checkpoint bursts) ------------------------------------------------------


@dataclass
class FileEvent:
    """One op of a file-granular phase: one whole file written or read on one rank. Times are
    absolute perf_counter readings: `opened` once the file was created (a write) or stat'ed (a
    read), `first_byte` once its first chunk moved, `end` when it was done; `close_s` is the time
    in close (fsync or the multipart completion included). A failure is told here (`ok` False,
    `error`, `error_kind`), never raised. `ckpt` and `digest` (the content hash) are the
    caller's."""

    kind: str
    ckpt: int
    name: str
    nbytes: int
    start: float
    opened: float = 0.0
    first_byte: float = 0.0
    end: float = 0.0
    close_s: float = 0.0
    ok: bool = False
    error: str | None = None
    error_kind: str | None = None
    digest: str = ""

    def failed(self, exc: StorageError) -> None:
        self.error, self.error_kind = str(exc), exc.kind


#: file(i, thread) -> the FileEvent of file i, done on I/O thread `thread`
FileOp = Callable[[int, int], FileEvent]


def _tell(live: Liveness, ev: FileEvent, where: str) -> None:
    """A file's outcome, told to the store's liveness (`where`: what was running, for the reason
    given if the store counts as gone)."""
    if ev.ok:
        live.ok(ev.end)
        return
    err = StorageError(ev.error or f"{ev.kind} {ev.name} failed")
    err.kind = ev.error_kind or StorageError.kind
    live.outcome(err, where, ev.end)


class FilePhase:
    """One rank's part of a phase whose ops are whole files (a checkpoint burst, an async
    persist, a restore), begun by `begin`: its ops are FileEvents, counted and timed
    from this rank's clock `t0` (absolute perf_counter, taken as the phase began).

    A file's latency is its end - start; the phase runs from this rank's first file start to its
    last file end. Per file, only what the caller's op does: the tallies are made once, in
    `result`. `fsync` (the backend's fsync_counters) gives the phase's fsync calls and seconds in
    `extra`, next to `files`."""

    def __init__(
        self,
        runner: PhaseRunner,
        name: str,
        t0: float,
        planned: int,
        io: str | None,
        cold: str | None,
        fsync: Callable[[], tuple[int, float]] | None,
        where: str | None = None,
        liveness: Liveness | None = None,
    ):
        self.runner, self.name, self.t0, self.planned = runner, name, t0, planned
        #: the liveness of the store this phase's files go to (default: the runner's backend's)
        self.liveness = liveness if liveness is not None else runner.liveness
        #: what the store-gone reason says was running
        self.where = where or f"phase {name}"
        self.io, self.cold, self._fsync = io, cold, fsync
        self.events: list[FileEvent] = []
        self.fsync_calls, self.fsync_s = 0, 0.0
        self.kernel: dict[str, Any] | None = None
        self._c0: tuple[int, float] | None = None
        self._mark: KernelMark | None = None
        #: async's stall: (start, end, bytes) of the one op that is not a file (see `span`)
        self.region: tuple[float, float, int] | None = None

    def measure(self, mark: KernelMark | None = None) -> None:
        """Start the kernel's and the fsync counters, on the thread doing the phase's I/O when
        it starts (`begin` does it for a phase that starts at its barrier, with the kernel's
        `mark` taken before that barrier)."""
        self._mark = self.runner.kernel_start() if mark is None else mark
        self._c0 = self._fsync() if self._fsync is not None else None

    def run(self, n: int, op: FileOp, threads: int = 1) -> None:
        """Files 0..n-1 on `threads` threads; thread t takes files t, t+T, ... (fixed, so a writer
        thread only ever touches the buffers it owns). Each file's outcome counts towards the
        store's liveness: once the store is gone, no further file is started."""
        live = self.liveness
        out: list[list[FileEvent]] = [[] for _ in range(max(threads, 1))]

        def work(t: int, mine: range) -> None:
            for i in mine:
                if live.gone is not None:
                    return
                ev = op(i, t)
                out[t].append(ev)
                _tell(live, ev, self.where)

        if threads <= 1 or n <= 1:
            work(0, range(n))
        else:
            run_threads(lambda t: work(t, range(t, n, threads)), threads)
        self.events.extend(sorted((e for lst in out for e in lst), key=lambda e: e.start))

    def add(self, ev: FileEvent) -> None:
        """One file done outside `run` (a file written once the others are down, or by a
        background thread), told to the store's liveness like the others."""
        self.events.append(ev)
        _tell(self.liveness, ev, self.where)

    def span(self, start: float, end: float, nbytes: int) -> None:
        """A phase whose one op is a stretch of this rank's own time (async's stall: the copy of
        the shard into host memory), not files."""
        self.region = (start, end, nbytes)

    def stop(self, collective: bool = True) -> None:
        """The counters' deltas since `measure`; collective: the phase's closing barrier (see
        PhaseRunner.kernel_stop: a background thread stops with collective=False)."""
        if self._fsync is not None and self._c0 is not None:
            c1 = self._fsync()
            self.fsync_calls, self.fsync_s = c1[0] - self._c0[0], c1[1] - self._c0[1]
        self.kernel = self.runner.kernel_stop(self._mark, collective)

    def result(self) -> PhaseResult:
        """This rank's PhaseResult of the phase, kept by the runner (a run that stops early still
        reports it)."""
        res = PhaseResult(name=self.name, planned_ops=self.planned, io=self.io, cold=self.cold)
        lat = array("d")
        for e in self.events:
            if e.ok:
                res.ops += 1
                res.bytes += e.nbytes
                lat.append(e.end - e.start)
            else:
                res.errors += 1
                kind = e.error_kind or "error"
                res.error_kinds[kind] = res.error_kinds.get(kind, 0) + 1
                if res.first_error is None:
                    res.first_error = e.error
        starts = [e.start for e in self.events]
        ends = [e.end for e in self.events]
        if self.region is not None:
            s, e_, nbytes = self.region
            res.ops, res.bytes = res.ops + 1, res.bytes + nbytes
            lat.append(e_ - s)
            starts.append(s)
            ends.append(e_)
        res.start = (min(starts) - self.t0) if starts else 0.0
        res.end = (max(ends) - self.t0) if ends else 0.0
        res.hist.record_many(lat)
        res.kernel = self.kernel
        res.extra = {
            "files": len(self.events),
            "fsync_calls": self.fsync_calls,
            "fsync_s": round(self.fsync_s, 6),
        }
        self.runner.results.append(res)
        if self.runner.current == self.name:
            self.runner.current = None
        return res

    @classmethod
    def begin(
        cls,
        runner: PhaseRunner,
        name: str,
        planned: int,
        *,
        io: str | None = None,
        cold: str | None = None,
        fsync: Callable[[], tuple[int, float]] | None = None,
        start: float | None = None,
        where: str | None = None,
        liveness: Liveness | None = None,
    ) -> FilePhase:
        """Begin a phase of `planned` files on `runner`. Collective: every rank enters, leaves a
        barrier, and starts its clock and counters. With `start` (an absolute perf_counter time):
        a phase that begins together with another one, already past its barrier (async's
        persist, with its stall); it then calls `measure` itself, on the thread doing its I/O.
        `cold` is how the caller made the reads cold (a CacheControl method, "drop_caches"),
        checked against the kernel's counters as `run_chunks`' claim is; `where` names what runs
        in the store-gone reason (default "phase <name>"); `liveness`, the store its files go
        to when that is not the runner's backend (a tier-0). End it with `finish`
        (in the background: `stop(collective=False)`, then `result`)."""
        runner.current = name
        if start is not None:
            return cls(runner, name, start, planned, io, cold, fsync, where, liveness)
        mark = runner.kernel_start()  # before the barrier, as run_chunks does
        runner.world.barrier()
        phase = cls(runner, name, time.perf_counter(), planned, io, cold, fsync, where, liveness)
        phase.measure(mark)
        return phase

    def finish(self) -> PhaseResult:
        """Collective: end the phase on every rank (its closing barrier, taken once this rank's
        files are done: the slowest rank ends it), keep its result, and raise the same StoreGone
        on every rank if any rank found the store gone."""
        self.stop()
        res = self.result()
        self.runner.stop_if_gone()
        return res
