"""The shared phase runner: barrier, then every rank runs its ops, timed per op and per rank.

All ranks leave the barrier at (nearly) the same instant and measure from there with a
monotonic clock, so per-rank start/end offsets are comparable across nodes without trusting
their wall clocks: a phase lasts from the first rank's first op to the last rank's last op.
"""

from __future__ import annotations

import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlio_ext.metrics.histogram import Histogram
from dlio_ext.metrics.world import SoloWorld
from dlio_ext.storage.base import StorageError

#: op(index, thread_state) -> bytes moved; raises StorageError (counted) on failure
Op = Callable[[int, Any], int]


class VerifyError(StorageError):
    """Bytes read back differ from the bytes written."""

    kind = "corrupt"


#: op latencies a thread keeps (8 bytes each) before binning them into its histogram at once
LATENCY_BATCH = 1 << 14


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
        }


class _Progress:
    """Rank 0's live line: ops done, rate, ETA; only for phases that last a while."""

    def __init__(self, name: str, total: int, interval: float, done: Callable[[], tuple[int, int]]):
        self.name, self.total, self.interval, self.done = name, total, interval, done
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.perf_counter()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            ops, nbytes = self.done()
            dt = time.perf_counter() - self.t0
            rate = ops / dt if dt else 0.0
            eta = (self.total - ops) / rate if rate else float("inf")
            pct = 100.0 * ops / self.total if self.total else 100.0
            print(
                f"[{self.name}] rank 0: {ops}/{self.total} ops ({pct:.0f}%), {rate:,.0f} ops/s, "
                f"{nbytes / dt / 1e6 if dt else 0:,.1f} MB/s, ETA {eta:,.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> _Progress:
        if self.interval > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


class PhaseRunner:
    def __init__(self, world: SoloWorld, progress_interval: float = 2.0):
        self.world = world
        self.progress_interval = progress_interval if world.rank == 0 else 0.0

    def run(
        self,
        name: str,
        n_ops: int,
        op: Op,
        io_depth: int = 1,
        thread_state: Callable[[int], Any] | None = None,
        deadline_s: float | None = None,
        catch_up: bool = False,
    ) -> PhaseResult:
        """Run ops 0..n_ops-1 on `io_depth` threads; every rank enters and leaves together.

        `thread_state(t)` builds what thread t reuses across its ops (its buffers), before the
        clock starts. With `deadline_s`, ops stop being issued once the deadline has passed; the
        ops issued are always a prefix 0..k-1 (an index taken is an index run).

        `catch_up` (with `deadline_s`) is mdtest's stonewall wear-out: when the deadline stops a
        rank, the ranks agree on the highest k any of them reached (allreduce max) and every rank
        goes on to that k, on the same clock. `extra` then records `stonewall_items` (this rank's
        k), `stonewall_seconds` (when its last op before the stop ended), `wearout_items` (ops it
        did after the agreement), `stonewall_target` (the agreed k) and `stonewalled` (whether the
        agreed k is short of n_ops: the phase then counts as finished at the agreed k).
        """
        states = [thread_state(t) if thread_state else None for t in range(io_depth)]
        hists = [Histogram() for _ in range(io_depth)]
        # one index iterator shared by the threads (its next() is atomic under the GIL)
        indices = iter(range(n_ops))
        res = PhaseResult(name=name, planned_ops=n_ops)
        lock = threading.Lock()
        tally = {"ops": 0, "bytes": 0}
        firsts: list[float] = []
        lasts: list[float] = []
        stop_at: float | None = None  # absolute deadline; None in the catch-up round

        def worker(t: int) -> None:
            # the hot loop: every line here is paid on every op, so it stays this lean
            hist, state = hists[t], states[t]
            perf = time.perf_counter
            lat = array("d")
            keep = lat.append
            stop = stop_at
            first = last = None
            ops = nbytes = published = 0
            for i in indices:
                s = perf()
                if first is None:
                    first = s
                try:
                    moved = op(i, state)
                except StorageError as exc:
                    last = perf()
                    with lock:
                        res.errors += 1
                        res.error_kinds[exc.kind] = res.error_kinds.get(exc.kind, 0) + 1
                        if res.first_error is None:
                            res.first_error = str(exc)
                    if stop is not None and last >= stop:
                        break
                    continue
                last = perf()
                keep(last - s)
                ops += 1
                nbytes += moved
                if not ops & 63:  # progress is read from another thread: publish in batches
                    with lock:
                        tally["ops"] += 64
                        tally["bytes"] += nbytes - published
                    published = nbytes
                    if len(lat) >= LATENCY_BATCH:
                        hist.record_many(lat)
                        del lat[:]
                # checked after an op, before the next index is taken: none is taken and dropped
                if stop is not None and last >= stop:
                    break
            hist.record_many(lat)
            with lock:
                tally["ops"] += ops & 63
                tally["bytes"] += nbytes - published
                res.ops += ops
                res.bytes += nbytes
                if first is not None:
                    firsts.append(first)
                    lasts.append(last if last is not None else first)

        def round_() -> None:
            if io_depth == 1:
                worker(0)
            else:
                threads = [threading.Thread(target=worker, args=(t,)) for t in range(io_depth)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()

        self.world.barrier()
        t0 = time.perf_counter()
        if deadline_s is not None:
            stop_at = t0 + deadline_s
        with _Progress(name, n_ops, self.progress_interval, lambda: (tally["ops"], tally["bytes"])):
            round_()
            if catch_up and deadline_s is not None:
                reached = min(res.ops + res.errors, n_ops)
                stopped = (max(lasts) - t0) if lasts else 0.0
                target = int(self.world.allreduce_max(reached))
                indices, stop_at = iter(range(reached, target)), None
                round_()
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
        self.world.barrier()
        return res
