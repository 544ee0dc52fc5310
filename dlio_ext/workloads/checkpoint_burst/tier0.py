"""Checkpoints through a tier-0: each burst is written to the tier-0 (the stall: training waits
only until the tier-0 holds the shard), then drained to the durable store in the background.

What is reported apart, per burst: the stall (the tier-0 write, max over ranks), the time until
the checkpoint is durable (from the burst's start to the last rank's last drained file), and the
drain's GB/s. A checkpoint is durable only when every rank drained every file of it; what a run
ends with otherwise (a rank lost, the durable store gone, a signal) is told from `DrainLog`s: each
rank keeps one in the run directory, replaced whole at every change, so rank 0 can say which
checkpoint was not durable even when another rank died mid-drain.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlio_ext.storage.base import Backend, StorageError, Unreachable, VerifyError
from dlio_ext.workloads.checkpoint_burst.content import Content
from dlio_ext.workloads.checkpoint_burst.engine import abort
from dlio_ext.workloads.checkpoint_burst.plan import PlannedFile
from dlio_ext.workloads.phases import FileEvent, FilePhase

#: where each rank's DrainLog lives, under the run directory
LOG_DIR = "tier0-drain"


class DrainLog:
    """One rank's account of its checkpoints: which the tier-0 holds whole, which are drained,
    which drain failed (and why), and the drain under way. Saved whole (write, then rename) at
    every change, so a reader never sees half of one."""

    def __init__(self, run_dir: Path, rank: int):
        self.path = run_dir / LOG_DIR / f"rank-{rank:05d}.json"
        self.rank = rank
        self.in_tier0: list[int] = []
        self.drained: list[int] = []
        self.failed: dict[int, str] = {}
        self.draining: dict[str, int] | None = None  # {"checkpoint", "files_done", "files"}
        self._lock = threading.Lock()
        self.saved = True
        self.save()

    def save(self) -> None:
        with self._lock:
            doc = {
                "rank": self.rank,
                "in_tier0": self.in_tier0,
                "drained": self.drained,
                "failed": {str(k): v for k, v in self.failed.items()},
                "draining": self.draining,
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".partial")
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, self.path)
            except OSError:  # a full results disk: the summary still says it; the ending cannot
                self.saved = False


def _ranges(ks: Sequence[int]) -> str:
    return ", ".join(str(k) for k in ks) if ks else "none"


def account(run_dir: Path, ranks: int, tier0_where: str) -> str:
    """Rank 0's statement of which checkpoints are durable, from every rank's DrainLog: a
    checkpoint is durable when every rank drained it. '' when no rank wrote to the tier-0."""
    logs: dict[int, dict[str, Any]] = {}
    for r in range(ranks):
        with contextlib.suppress(OSError, ValueError):
            logs[r] = json.loads((run_dir / LOG_DIR / f"rank-{r:05d}.json").read_text())
    seen = sorted({k for d in logs.values() for k in (*d["in_tier0"], *d["drained"], *map(int, d["failed"]))})
    if not seen:
        return ""
    durable = [k for k in seen if len(logs) == ranks and all(k in d["drained"] for d in logs.values())]
    missing = [k for k in seen if k not in durable]
    if not missing:
        return f"checkpoints durable on every rank: {_ranges(durable)}"
    why: list[str] = []
    for k in missing:
        parts = []
        for r in range(ranks):
            d = logs.get(r)
            if d is None:
                parts.append(f"rank {r}: no drain record")
            elif k in d["drained"]:
                continue
            elif str(k) in d["failed"]:
                parts.append(f"rank {r}: drain failed: {d['failed'][str(k)]}")
            elif d["draining"] and d["draining"]["checkpoint"] == k:
                parts.append(
                    f"rank {r}: drain unfinished ({d['draining']['files_done']} of {d['draining']['files']} files)"
                )
            else:
                parts.append(f"rank {r}: not drained yet")
        why.append(f"checkpoint {k} NOT durable ({'; '.join(parts)})")
    return (
        f"checkpoints durable on every rank: {_ranges(durable)}; "
        + "; ".join(why)
        + f"; a checkpoint not durable had its only copy in {tier0_where}"
    )


class Drainer(threading.Thread):
    """The background drain of one rank: each submitted checkpoint's files, in order, read from
    the tier-0 chunk by chunk into the drainer's own buffers and written to the durable store,
    into that checkpoint's drain phase (begun with the burst, measured here)."""

    def __init__(
        self,
        tier0: Backend,
        durable: Backend,
        bufs: Sequence[memoryview],
        mbps: float,
        log: DrainLog,
        content: Content | None,
    ):
        super().__init__(daemon=True, name="checkpoint-drain")
        self.tier0, self.durable, self.bufs, self.log = tier0, durable, list(bufs), log
        #: what the drain checks each chunk against before it may call a checkpoint durable
        #: (None: workload.verify=false, the bytes are copied unchecked)
        self.content = content
        self.rate = mbps * 1e6
        self.q: queue.Queue = queue.Queue()
        self.done: dict[int, threading.Event] = {}
        #: checkpoint -> every file drained
        self.ok: dict[int, bool] = {}

    def submit(self, ckpt: int, files: Sequence[PlannedFile], phase: FilePhase) -> None:
        self.done[ckpt] = threading.Event()
        self.q.put((ckpt, list(files), phase))

    def wait(self, ckpt: int) -> bool:
        """Block until checkpoint `ckpt`'s drain is over; whether every file of it is durable."""
        self.done[ckpt].wait()
        return self.ok[ckpt]

    def finish(self) -> None:
        self.q.put(None)
        self.join()

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            ckpt, files, phase = item
            phase.measure()
            log = self.log
            log.draining = {"checkpoint": ckpt, "files_done": 0, "files": len(files)}
            log.save()
            failures: list[str] = []
            for n, f in enumerate(files):
                if phase.liveness.gone is not None:  # no file is started on a gone store
                    ev = FileEvent("drain", ckpt, f.name, f.nbytes, time.perf_counter())
                    ev.failed(Unreachable(f"{f.key}: not drained, the durable store is gone", f.key))
                    ev.end = ev.start
                else:
                    ev = self.copy(f, ckpt)
                phase.add(ev)
                if not ev.ok:
                    failures.append(ev.error or f"{f.name} failed")
                log.draining = {"checkpoint": ckpt, "files_done": n + 1 - len(failures), "files": len(files)}
                log.save()  # a few hundred bytes a drained file: an ending names how far it got
            phase.stop(collective=False)
            self.ok[ckpt] = not failures
            log.draining = None
            if failures:
                log.failed[ckpt] = f"{len(failures)} of {len(files)} file(s) failed; first: {failures[0]}"
            else:
                log.drained.append(ckpt)
            log.save()
            self.done[ckpt].set()

    def copy(self, f: PlannedFile, ckpt: int) -> FileEvent:
        """One file from the tier-0 to the durable store, chunk by chunk through the drainer's
        buffer (each call owns it until it returns), each chunk checked against what the writer
        wrote once the durable store has it; a chunk that differs aborts the file."""
        ev = FileEvent("drain", ckpt, f.name, f.nbytes, time.perf_counter())
        buf = self.bufs[0]
        chunk = len(buf)
        c = self.content
        fkey = c.file_key(ckpt, f.writer, f.index) if c is not None else 0
        t_rate, moved = time.perf_counter(), 0
        try:
            w = self.durable.sized_writer(f.key, f.nbytes)
            ev.opened = time.perf_counter()
            closing = False
            try:
                for off in range(0, f.nbytes, chunk):
                    n = min(chunk, f.nbytes - off)
                    got = self.tier0.get_range(f.key, off, buf[:n])
                    if got != n:
                        raise VerifyError(
                            f"{f.key}: the tier-0 gave {got} of {n} bytes at offset {off}", f.key
                        )
                    w.write(buf[:n])
                    if c is not None:
                        # after the write returned (the backend is done with buf): a tier-0 that
                        # lost or altered a shard since it took it never yields a durable checkpoint
                        i = off // chunk
                        c.verify(buf, fkey, i, n, c.body(f.writer, f.index, i), f"{f.key} (from the tier-0)")
                    if off == 0:
                        ev.first_byte = time.perf_counter()
                    moved += n
                    if self.rate:  # hold the drain to its cap, averaged over the file
                        time.sleep(max(0.0, t_rate + moved / self.rate - time.perf_counter()))
                t = time.perf_counter()
                closing = True
                w.close()
                ev.close_s = time.perf_counter() - t
            except BaseException:
                if not closing:
                    abort(w)
                raise
            ev.ok = True
        except StorageError as exc:
            ev.failed(exc)
        ev.end = time.perf_counter()
        return ev
