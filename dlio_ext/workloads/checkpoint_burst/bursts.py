"""One rank's run: the checkpoint bursts (sync: every rank writes its shard between two barriers;
async: a blocking snapshot into host memory, then a persist in the background), the cold
restores of another rank's shard, and the cleanup. Every timed phase is a FilePhase of the
runner (dlio_ext/workloads/phases.py): its barrier, clock, error tallies and kernel counters
are the runner's."""

from __future__ import annotations

import contextlib
import json
import math
import queue
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import xxhash

from dlio_ext.storage.base import (
    Backend,
    NotFound,
    StorageError,
    StoreGone,
    Unreachable,
    VerifyError,
    kind_text,
)
from dlio_ext.workloads.checkpoint_burst import layout as cl
from dlio_ext.workloads.checkpoint_burst.cold import ColdRestore
from dlio_ext.workloads.checkpoint_burst.config import Config
from dlio_ext.workloads.checkpoint_burst.content import Content
from dlio_ext.workloads.checkpoint_burst.engine import Engine, abort
from dlio_ext.workloads.checkpoint_burst.plan import Plan, PlannedFile
from dlio_ext.workloads.checkpoint_burst.summary import Burst
from dlio_ext.workloads.content import StreamHash
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import FileEvent, FilePhase, PhaseResult

#: what a store-gone reason says was running
WHERE = "checkpoint_burst"


def _log_burst(log: Any, what: str, done: str, res: PhaseResult) -> None:
    """Rank 0's line for a burst: a burst with a failed file is never called written (or read)."""
    if not res.errors:
        log.info("%s %s by rank 0 in %.3f s", what, done, res.seconds)
        return
    kinds = ", ".join(f"{kind_text(k)} {n}" for k, n in res.error_kinds.items())
    log.warning(
        "%s FAILED on rank 0: %d of %d file(s) failed (%s); first: %s",
        what,
        res.errors,
        res.errors + res.ops,
        kinds,
        res.first_error,
    )


def _rss_now() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil is a declared dependency; this only guards odd platforms
        return 0


def _peak_rss() -> int:
    """This process image's peak RSS. VmHWM, not getrusage's ru_maxrss: on Linux the latter also
    keeps the peak of the process that forked us before exec (a launcher, or pytest), which is
    not ours to count."""
    # no /proc (not Linux, a locked-down container): getrusage's figure, with the caveat above
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class _Persister(threading.Thread):
    """Async mode's background writer: drains snapshot chunks from host slots to storage, in
    order, into the persist phase of their checkpoint (begun by the snapshot, measured here)."""

    def __init__(self, free: queue.Queue, backend: Backend):
        super().__init__(daemon=True, name="checkpoint-persist")
        self.free, self.b = free, backend
        self.q: queue.Queue = queue.Queue()
        self.done: dict[int, threading.Event] = {}

    def run(self) -> None:
        cur: dict[str, Any] = {}
        while True:
            item = self.q.get()
            if item is None:
                return
            if item[0] == "begin":
                _, phase = item
                # the whole process's counters: they include the stall's copies, which move no I/O
                phase.measure()
                cur = {"phase": phase}
                continue
            if item[0] == "end":
                _, ckpt = item
                cur["phase"].stop(collective=False)
                self.done[ckpt].set()
                continue
            _, f, ckpt, i, nchunks, slot, n, words, body = item
            phase: FilePhase = cur["phase"]
            try:
                if i == 0:
                    ev = FileEvent("persist", ckpt, f.name, f.nbytes, time.perf_counter())
                    cur["ev"], cur["fh"] = ev, StreamHash()
                    try:
                        if phase.runner.liveness.gone is not None:  # no file is started on a gone store
                            raise Unreachable(f"{f.key}: not persisted, the store is gone", f.key)
                        cur["w"] = self.b.writer(f.key)
                        ev.opened = time.perf_counter()
                    except StorageError as exc:
                        cur["w"] = None
                        ev.failed(exc)
                ev, w = cur["ev"], cur["w"]
                if w is not None:
                    closing = False
                    try:
                        w.write(slot[:n])
                        if i == 0:
                            ev.first_byte = time.perf_counter()
                        cur["fh"].update(words, body)
                        if i == nchunks - 1:
                            t = time.perf_counter()
                            closing = True
                            w.close()
                            ev.close_s = time.perf_counter() - t
                            ev.ok, ev.digest = True, cur["fh"].hexdigest()
                    except StorageError as exc:
                        if not closing:
                            abort(w)
                        cur["w"] = None
                        ev.failed(exc)
                if i == nchunks - 1:
                    ev.end = time.perf_counter()
                    phase.add(ev)
            finally:
                # the backend let go of the slot when its write returned (or raised): the
                # snapshot may refill it now
                self.free.put(slot)


class Bursts:
    """One rank's checkpoints and restores, and what it keeps of them for its rank metrics."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.cfg: Config = ctx.config
        self.b = ctx.backend
        #: every burst of this rank, in order
        self.bursts: list[Burst] = []
        #: the clock all event times are measured from: when every rank left the first barrier
        self.T0 = 0.0
        self.info: dict[str, Any] = {}
        self.cold: ColdRestore | None = None
        self.written: list[int] = []
        self.deleted: list[int] = []
        self._metadata: dict[int, bytes] = {}
        #: rank 0's log for the burst lines; None on the other ranks
        self.log: Any = ctx.log if ctx.rank == 0 else None

    # set-up ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """The plan, the content pool and the read buffers, before any clock."""
        ctx, cfg, b = self.ctx, self.cfg, self.b
        baseline = _rss_now()
        self.plan = plan = Plan(cfg, ctx)
        self.me = me = plan.roles[ctx.rank]
        self.content = Content(ctx.seed, cfg.chunk_size, cfg.buffer_pool_bytes, cfg.io_threads, b.alloc)
        self.engine = Engine(b, self.content, cfg.verify)
        self.cold = cold = ColdRestore(ctx, cfg.cold_restore)
        shift = cfg.restore_rank_shift
        if shift < 0:
            shift = (cold.ranks_on_host if cold.hosts > 1 else 1) if ctx.size > 1 else 0
        src_rank = (ctx.rank + shift) % ctx.size
        self.src_role = plan.roles[src_rank]
        self.info = {
            "layout_rank": me,
            "restore_from_rank": src_rank,
            "restore_from_layout_rank": self.src_role,
            "restore_rank_shift": shift,
            "shard_bytes": sum(f.nbytes for f in plan.files(me, 0)),
            "files_per_checkpoint": len(plan.files(me, 0)),
            "baseline_rss_bytes": baseline,
            "pool_bytes": self.content.nbytes,
        }
        # two read buffers per I/O thread: one being verified while the next chunk lands in the other
        self.rbufs = [[b.alloc(cfg.chunk_size), b.alloc(cfg.chunk_size)] for _ in range(cfg.io_threads)]
        self.dcp = cfg.layout == "dcp"
        #: this rank writes DCP's .metadata (rank 0, once a checkpoint's data is down)
        self.writes_metadata = self.dcp and ctx.rank == 0

    # DCP's .metadata --------------------------------------------------------------------------------
    def dcp_metadata(self, ckpt: int) -> bytes:
        """What rank 0 writes as DCP's .metadata: every file of this run's ranks, size and hash."""
        if ckpt not in self._metadata:
            plan = self.plan
            doc = {
                "format": "dlio-ext checkpoint_burst (torch DCP layout; JSON, not DCP's pickle)",
                "checkpoint": ckpt,
                "scale": self.cfg.scale,
                "files": {
                    pf.name: {"bytes": pf.nbytes, "xxh3_chunked": self.engine.expected_digest(pf, ckpt)}
                    for role in plan.roles
                    for pf in plan.files(role, ckpt)
                },
            }
            self._metadata[ckpt] = json.dumps(doc, sort_keys=True).encode()
        return self._metadata[ckpt]

    def write_metadata(self, ckpt: int, kind: str) -> FileEvent:
        data = self.dcp_metadata(ckpt)
        ev = FileEvent(kind, ckpt, ".metadata", len(data), time.perf_counter())
        try:
            self.b.put(self.plan.metadata_key(ckpt), data)
            ev.opened = ev.first_byte = time.perf_counter()
            ev.ok = True
        except StorageError as exc:
            ev.failed(exc)
        ev.end = time.perf_counter()
        return ev

    def read_metadata(self, ckpt: int, expect: Sequence[PlannedFile]) -> tuple[FileEvent, dict[str, Any]]:
        """DCP's .metadata of a checkpoint, read and checked against the files it must describe:
        (its event, the document; {} when it failed)."""
        b, key = self.b, self.plan.metadata_key(ckpt)
        ev = FileEvent("restore", ckpt, ".metadata", 0, time.perf_counter())
        doc: dict[str, Any] = {}
        try:
            size = b.stat(key).size
            ev.opened = time.perf_counter()
            buf = bytearray(size)  # a few KiB whose size only the stat tells: not a pool buffer
            got = b.get(key, memoryview(buf))
            ev.first_byte = time.perf_counter()
            ev.nbytes = got
            doc = json.loads(bytes(buf[:got]))
            for pf in expect:
                entry = doc.get("files", {}).get(pf.name)
                if entry is None or entry.get("bytes") != pf.nbytes:
                    raise VerifyError(
                        f"{key}: does not describe {pf.name} ({pf.nbytes} bytes) as written", key
                    )
            ev.ok = True
            ev.digest = xxhash.xxh3_64_hexdigest(bytes(buf[:got]))
        except (StorageError, ValueError) as exc:
            doc = {}
            ev.error = str(exc)
            ev.error_kind = exc.kind if isinstance(exc, StorageError) else "corrupt"
        ev.end = time.perf_counter()
        return ev, doc

    # deleting ---------------------------------------------------------------------------------------
    def ckpt_keys(self, ckpt: int) -> list[str]:
        """What this rank writes for one checkpoint (rank 0 also DCP's .metadata)."""
        keys = [pf.key for pf in self.plan.files(self.me, ckpt)]
        return keys + ([self.plan.metadata_key(ckpt)] if self.writes_metadata else [])

    def delete_checkpoint(self, ckpt: int) -> None:
        b, live, keys = self.b, self.ctx.runner.liveness, self.ckpt_keys(ckpt)
        if live.gone is not None:  # nothing can be deleted: list it rather than wait on it
            b.leftovers.add(keys)
        else:
            for n, key in enumerate(keys):
                try:
                    b.delete(key)
                    live.ok()
                except NotFound:  # never written (its write failed): nothing to delete
                    continue
                except StorageError as exc:
                    b.leftovers.add([key])
                    if live.outcome(exc, "checkpoint cleanup"):  # gone meanwhile: list the rest
                        b.leftovers.add(keys[n + 1 :])
                        break
        self.deleted.append(ckpt)

    @contextlib.contextmanager
    def leftovers_if_gone(self, upto: int) -> Iterator[None]:
        """Around a collective end of phase: when the store is gone (the runner raises the same
        StoreGone on every rank), every rank first lists what it may have left (checkpoints
        0..upto not deleted)."""
        try:
            yield
        except StoreGone:
            self.b.leftovers.add(
                key for k in range(upto + 1) if k not in self.deleted for key in self.ckpt_keys(k)
            )
            raise

    # the run --------------------------------------------------------------------------------------
    def run(self) -> list[PhaseResult]:
        ctx, cfg = self.ctx, self.cfg
        durable = self.b.durability().policy
        if ctx.rank == 0 and durable.startswith("none"):
            ctx.log.warning(
                "warning: checkpoint writes are not made durable: %s; set storage.fsync=file, as MLPerf requires",
                durable,
            )
        ctx.world.barrier()
        self.T0 = time.perf_counter()
        results = self._sync() if cfg.mode == "sync" else self._async()
        retained = [k for k in self.written if k not in self.deleted]
        results += self._restores(retained)
        ctx.world.barrier()
        self.info["peak_rss_bytes"] = _peak_rss()
        self.info["checkpoints_on_storage_at_end"] = len(retained)
        if cfg.cleanup:
            self._cleanup(retained)
        return results

    def _keep_within_limit(self) -> None:
        keep = self.cfg.keep_checkpoints
        while keep and len(self.written) - len(self.deleted) > keep:
            self.delete_checkpoint(self.written[len(self.deleted)])

    def _sync(self) -> list[PhaseResult]:
        ctx, cfg, b, n_ck = self.ctx, self.cfg, self.b, self.cfg.checkpoints
        results: list[PhaseResult] = []
        for k in range(n_ck):
            files = self.plan.files(self.me, k)
            if self.writes_metadata:
                self.dcp_metadata(k)  # built before the clock starts
            phase = FilePhase.begin(
                ctx.runner,
                f"write_{k}",
                len(files) + self.writes_metadata,
                io="write",
                fsync=b.fsync_counters,
                where=WHERE,
            )
            burst = Burst("write", k, phase)
            self.bursts.append(burst)
            phase.run(
                len(files),
                lambda i, _t, k=k, files=files: self.engine.write_file(files[i], k),
                cfg.io_threads,
            )
            if self.writes_metadata:
                phase.add(self.write_metadata(k, "write"))
            self.written.append(k)
            # the closing barrier: training resumes when the slowest rank has finished its shard
            with self.leftovers_if_gone(k):
                burst.result = res = phase.finish()
            results.append(res)
            if self.log:
                _log_burst(self.log, f"checkpoint {k + 1}/{n_ck}", "written", res)
            self._keep_within_limit()
            if k < n_ck - 1 and cfg.compute_seconds > 0:
                time.sleep(cfg.compute_seconds)
        return results

    def _restores(self, retained: list[int]) -> list[PhaseResult]:
        ctx, cfg, b, cold = self.ctx, self.cfg, self.b, self.cold
        assert cold is not None
        results: list[PhaseResult] = []
        for j in range(cfg.restores):
            k = retained[j % len(retained)]
            files = self.plan.files(self.src_role, k)
            keys = [f.key for f in files] + ([self.plan.metadata_key(k)] if self.dcp else [])
            ctx.world.barrier()  # every write (and persist) is done before caches are dropped
            cold.prepare(keys)
            phase = FilePhase.begin(
                ctx.runner,
                f"restore_{j}",
                len(files) + self.dcp,
                io="read",
                cold=cold.claimed,
                fsync=b.fsync_counters,
                where=WHERE,
            )
            burst = Burst("restore", k, phase)
            self.bursts.append(burst)
            doc: dict[str, Any] = {}
            if self.dcp:
                ev, doc = self.read_metadata(k, files)
                phase.add(ev)
            want = {n: e.get("xxh3_chunked") for n, e in doc.get("files", {}).items()} if cfg.verify else {}

            def restore(
                i: int, t: int, k: int = k, files: list[PlannedFile] = files, want: dict[str, Any] = want
            ) -> FileEvent:
                ev = self.engine.read_file(files[i], k, self.rbufs[t])
                expected = want.get(ev.name)
                if ev.ok and expected and expected != ev.digest:
                    ev.ok, ev.error_kind = False, "corrupt"
                    ev.error = f"{ev.name}: content hash {ev.digest} differs from .metadata's {expected}"
                return ev

            phase.run(len(files), restore, cfg.io_threads)
            with self.leftovers_if_gone(max(self.written, default=-1)):
                burst.result = res = phase.finish()
            results.append(res)
            if self.log:
                _log_burst(self.log, f"restore {j + 1}/{cfg.restores}", "read", res)
        return results

    def _cleanup(self, retained: list[int]) -> None:
        ctx, b = self.ctx, self.b
        for k in retained:
            self.delete_checkpoint(k)
        ctx.world.barrier()
        if ctx.rank == 0 and b.capabilities.get("mkdir") == "native":
            prefix = self.plan.prefix
            dirs = [f"{prefix}/{cl.checkpoint_dir(1, k + 1)}" for k in self.written] + [prefix, ctx.run_id]
            for d in dirs:
                with contextlib.suppress(StorageError):  # not empty (another run's files) or gone: left
                    b.rmdir(d)

    def _async(self) -> list[PhaseResult]:
        """Snapshot (blocking: host-memory copies into a ring of slots) then persist in the
        background.

        The ring holds host_buffer_bytes (0: the whole shard, as real async checkpointing needs);
        a smaller ring turns into backpressure: the snapshot waits for the persist to free slots,
        and that wait is part of the stall."""
        ctx, cfg, b, content, me = self.ctx, self.cfg, self.b, self.content, self.me
        chunk, n_ck = cfg.chunk_size, cfg.checkpoints
        shard = max(sum(f.nbytes for f in self.plan.files(me, 0)), 1)
        ring = cfg.host_buffer_bytes or shard
        nslots = max(1, ring // chunk + (1 if ring % chunk else 0))
        slots = [b.alloc(chunk) for _ in range(nslots)]
        self.info["host_buffer_bytes"] = nslots * chunk
        free: queue.Queue = queue.Queue()
        for s in slots:
            free.put(s)
        pers = _Persister(free, b)
        pers.start()
        pairs: list[tuple[Burst, Burst]] = []
        for k in range(n_ck):
            files = self.plan.files(me, k)
            if self.writes_metadata:
                self.dcp_metadata(k)
            stall_phase = FilePhase.begin(ctx.runner, f"stall_{k}", 1, where=WHERE)
            t0 = stall_phase.t0
            persist_phase = FilePhase.begin(
                ctx.runner,
                f"persist_{k}",
                len(files) + self.writes_metadata,
                io="write",
                fsync=b.fsync_counters,
                where=WHERE,
                start=t0,
            )
            stall, persist = Burst("stall", k, stall_phase), Burst("persist", k, persist_phase)
            pers.done[k] = threading.Event()
            pers.q.put(("begin", persist_phase))
            copied = 0
            for f in files:
                fkey = content.file_key(k, f.writer, f.index)
                nchunks = max(1, math.ceil(f.nbytes / chunk))
                for i in range(nchunks):
                    n = min(chunk, f.nbytes - i * chunk)
                    p = content.body(f.writer, f.index, i)
                    slot = free.get()  # backpressure: wait for the persist to free a slot
                    slot[:n] = content.bufs[p][:n]
                    words = content.stamp(slot, fkey, i, n, p)
                    pers.q.put(("chunk", f, k, i, nchunks, slot, n, words, content.digest(p, n)))
                    copied += n
            end = time.perf_counter()
            stall_phase.span(t0, end, copied)
            pers.q.put(("end", k))
            pairs.append((stall, persist))
            self.bursts.extend([stall, persist])
            if self.log:
                self.log.info(
                    "checkpoint %d/%d: rank 0 stalled %.3f s (persist continues)", k + 1, n_ck, end - t0
                )
            if k < n_ck - 1 and cfg.compute_seconds > 0:
                time.sleep(cfg.compute_seconds)
        for k in range(n_ck):
            pers.done[k].wait()
        pers.q.put(None)
        pers.join()
        if self.writes_metadata:
            for _, persist in pairs:  # DCP commits .metadata once the data is down
                persist.phase.add(self.write_metadata(persist.ckpt, "persist"))
        del slots
        results: list[PhaseResult] = []
        for stall, persist in pairs:
            stall.result = stall.phase.result()
            persist.result = persist.phase.result()
            results += [stall.result, persist.result]
        self.written.extend(range(n_ck))
        with self.leftovers_if_gone(n_ck - 1):
            ctx.runner.stop_if_gone()
        self._keep_within_limit()
        return results
