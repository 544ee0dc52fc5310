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
from dlio_ext.workloads.checkpoint_burst.tier0 import Drainer, DrainLog, account
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
        #: checkpoints whose drain to the durable store failed: never restored from, but what of
        #: them reached the store is deleted (or listed as left) with the rest at cleanup
        self.partial: list[int] = []
        self._metadata: dict[int, bytes] = {}
        #: rank 0's log for the burst lines; None on the other ranks
        self.log: Any = ctx.log if ctx.rank == 0 else None
        #: the tier-0 in front of the durable store (tier0=...), its drain and this rank's account
        self.tier0: Backend | None = ctx.tier0
        self.drainer: Drainer | None = None
        self.drain_log: DrainLog | None = None
        #: checkpoints whose files of this rank the tier-0 holds whole, oldest first
        self.in_tier0: list[int] = []
        #: (restore index, checkpoint, where it was served from), in order
        self.served: list[tuple[int, int, str]] = []

    # set-up ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """The plan, the content pool and the read buffers, before any clock."""
        ctx, cfg, b, tier0 = self.ctx, self.cfg, self.b, self.tier0
        baseline = _rss_now()
        self.plan = plan = Plan(cfg, ctx)
        self.me = me = plan.roles[ctx.rank]
        # with a tier-0 the stall's bytes go there: its buffers (registered, for RDMA) serve both
        alloc = tier0.alloc if tier0 is not None else b.alloc
        self.content = Content(ctx.seed, cfg.chunk_size, cfg.buffer_pool_bytes, cfg.io_threads, alloc)
        self.engine = Engine(b, self.content, cfg.verify, cfg.write_behind)
        self.t0_engine = (
            Engine(tier0, self.content, cfg.verify, cfg.write_behind) if tier0 is not None else None
        )
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
        # read_ahead + 1 read buffers per I/O thread: one being verified while the next chunks land
        # in the others
        self.rbufs = [
            [alloc(cfg.chunk_size) for _ in range(cfg.read_ahead + 1)] for _ in range(cfg.io_threads)
        ]
        if tier0 is not None:
            # a drain exists to make checkpoints durable: its writes are (fsync per file on posix),
            # unless the user chose storage.fsync
            b.ask_durable("checkpoint_burst's tier-0 drain")
            self.drain_log = DrainLog(ctx.run_dir, ctx.rank)
            self.drainer = Drainer(
                tier0,
                b,
                [alloc(cfg.chunk_size)],
                cfg.drain_mbps,
                self.drain_log,
                self.content if cfg.verify else None,
            )
        self.dcp = cfg.layout == "dcp"
        #: this rank writes DCP's .metadata (rank 0, once a checkpoint's data is down)
        self.writes_metadata = self.dcp and ctx.rank == 0

    def status(self) -> str:
        """Which checkpoints are durable, for a run that ends now (rank 0, from every rank's
        DrainLog); '' without a tier-0."""
        if self.tier0 is None or self.ctx.rank != 0 or self.drain_log is None:
            return ""
        return account(self.ctx.run_dir, self.ctx.size, self.tier0.where())

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

    def write_metadata(self, ckpt: int, kind: str, backend: Backend | None = None) -> FileEvent:
        data = self.dcp_metadata(ckpt)
        ev = FileEvent(kind, ckpt, ".metadata", len(data), time.perf_counter())
        try:
            (backend or self.b).put(self.plan.metadata_key(ckpt), data)
            ev.opened = ev.first_byte = time.perf_counter()
            ev.ok = True
        except StorageError as exc:
            ev.failed(exc)
        ev.end = time.perf_counter()
        return ev

    def read_metadata(
        self, ckpt: int, expect: Sequence[PlannedFile], backend: Backend | None = None
    ) -> tuple[FileEvent, dict[str, Any]]:
        """DCP's .metadata of a checkpoint, read and checked against the files it must describe:
        (its event, the document; {} when it failed)."""
        b, key = backend or self.b, self.plan.metadata_key(ckpt)
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
        if self.tier0 is not None:
            results = self._tier0_sync()
        else:
            results = self._sync() if cfg.mode == "sync" else self._async()
        retained = [k for k in self.written if k not in self.deleted]
        results += self._restores(retained)
        self.info["served"] = [list(t) for t in self.served]
        ctx.world.barrier()
        self.info["peak_rss_bytes"] = _peak_rss()
        self.info["checkpoints_on_storage_at_end"] = len(retained)
        if cfg.cleanup:
            self._cleanup(retained)
            self._leave_tier0(0)
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

    def _sources(self, retained: list[int]) -> list[tuple[int, str]]:
        """(checkpoint, where it is restored from) for every restore. Without a tier-0: the
        durable store's retained checkpoints in turn. With one (restore_from=auto): the tier-0
        when every rank holds that checkpoint there whole, else the durable store when every rank
        drained it; a checkpoint in neither is never offered."""
        cfg = self.cfg
        if self.tier0 is None:
            return [(retained[j % len(retained)], "durable") for j in range(cfg.restores)] if retained else []
        held = self.ctx.world.allgather(list(self.in_tier0))
        in_tier0 = set.intersection(*(set(h) for h in held)) if held else set()
        on_durable = set(retained) if cfg.restore_from != "tier0" else set()
        if cfg.restore_from == "durable":
            in_tier0 = set()
        offered = sorted(in_tier0 | on_durable)
        out = []
        for j in range(cfg.restores if offered else 0):
            k = offered[j % len(offered)]
            out.append((k, "tier0" if k in in_tier0 else "durable"))
        return out

    def _restores(self, retained: list[int]) -> list[PhaseResult]:
        ctx, cfg, cold = self.ctx, self.cfg, self.cold
        assert cold is not None
        results: list[PhaseResult] = []
        sources = self._sources(retained)
        if cfg.restores and not sources and self.log:
            self.log.warning("no restore: no checkpoint is whole on the tier-0 or durable on storage")
        for j, (k, source) in enumerate(sources):
            from_tier0 = source == "tier0"
            b = self.tier0 if from_tier0 and self.tier0 is not None else self.b
            engine = self.t0_engine if from_tier0 and self.t0_engine is not None else self.engine
            files = self.plan.files(self.src_role, k)
            keys = [f.key for f in files] + ([self.plan.metadata_key(k)] if self.dcp else [])
            ctx.world.barrier()  # every write (and persist) is done before caches are dropped
            if not from_tier0:  # memory has no slower medium to be cold against
                cold.prepare(keys)
            phase = FilePhase.begin(
                ctx.runner,
                f"restore_{j}",
                len(files) + self.dcp,
                io=None if from_tier0 else "read",  # the kernel meter watches the durable store's device
                cold=None if from_tier0 else cold.claimed,
                fsync=b.fsync_counters,
                where=WHERE,
                liveness=b.liveness,
            )
            burst = Burst("restore", k, phase)
            self.bursts.append(burst)
            self.served.append((j, k, source))
            doc: dict[str, Any] = {}
            if self.dcp:
                ev, doc = self.read_metadata(k, files, b)
                phase.add(ev)
            want = {n: e.get("xxh3_chunked") for n, e in doc.get("files", {}).items()} if cfg.verify else {}

            def restore(
                i: int,
                t: int,
                k: int = k,
                files: list[PlannedFile] = files,
                want: dict[str, Any] = want,
                engine: Engine = engine,
            ) -> FileEvent:
                ev = engine.read_file(files[i], k, self.rbufs[t])
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
                what = f"restore {j + 1}/{cfg.restores}" + (" (from the tier-0)" if from_tier0 else "")
                _log_burst(self.log, what, "read", res)
        return results

    def _cleanup(self, retained: list[int]) -> None:
        ctx, b = self.ctx, self.b
        for k in [*retained, *self.partial]:
            self.delete_checkpoint(k)
        ctx.world.barrier()
        if ctx.rank == 0 and b.capabilities.get("mkdir") == "native":
            prefix = self.plan.prefix
            made = sorted({*self.written, *self.partial})
            dirs = [f"{prefix}/{cl.checkpoint_dir(1, k + 1)}" for k in made] + [prefix, ctx.run_id]
            for d in dirs:
                with contextlib.suppress(StorageError):  # not empty (another run's files) or gone: left
                    b.rmdir(d)

    def _tier0_sync(self) -> list[PhaseResult]:
        """Each burst to the tier-0 (the stall, between two barriers), then drained to the durable
        store in the background while training computes; the drains run in order, one rank's
        at a time, and end before the restores."""
        ctx, cfg, n_ck = self.ctx, self.cfg, self.cfg.checkpoints
        tier0, b, drainer, dlog = self.tier0, self.b, self.drainer, self.drain_log
        assert tier0 is not None and drainer is not None and dlog is not None and self.t0_engine is not None
        t0_engine = self.t0_engine
        drainer.start()
        pairs: list[tuple[Burst, Burst]] = []
        results: list[PhaseResult] = []
        try:
            for k in range(n_ck):
                files = self.plan.files(self.me, k)
                to_drain = list(files)
                if self.writes_metadata:
                    data = self.dcp_metadata(k)
                    to_drain.append(
                        PlannedFile(self.plan.metadata_key(k), ".metadata", len(data), -1, -1, "metadata")
                    )
                stall_phase = FilePhase.begin(
                    ctx.runner,
                    f"stall_{k}",
                    len(to_drain),
                    io=None,  # the kernel meter watches the durable store's device, not the tier-0
                    fsync=tier0.fsync_counters,
                    where=f"{WHERE} (tier-0)",
                    liveness=tier0.liveness,
                )
                stall = Burst("stall", k, stall_phase)
                self.bursts.append(stall)
                # room first: checkpoints beyond tier0_keep still held (their drain was slower
                # than the training step) leave once drained: a wait training sees, in the stall
                self._leave_tier0(cfg.tier0_keep, wait=True)
                stall_phase.run(
                    len(files),
                    lambda i, _t, k=k, files=files: t0_engine.write_file(files[i], k),
                    cfg.io_threads,
                )
                if self.writes_metadata:
                    stall_phase.add(self.write_metadata(k, "write", tier0))
                whole = all(e.ok for e in stall_phase.events) and len(stall_phase.events) == len(to_drain)
                if whole:
                    self.in_tier0.append(k)
                    dlog.in_tier0 = list(self.in_tier0)
                    dlog.save()
                # the closing barrier: training resumes when the slowest rank's shard is in the tier-0
                with self.leftovers_if_gone(k):
                    stall.result = res = stall_phase.finish()
                results.append(res)
                drain_phase = FilePhase.begin(
                    ctx.runner,
                    f"drain_{k}",
                    len(to_drain),
                    io="write",
                    fsync=b.fsync_counters,
                    where=f"{WHERE} (drain)",
                    start=stall_phase.t0,
                )
                drain = Burst("drain", k, drain_phase)
                self.bursts.append(drain)
                pairs.append((stall, drain))
                if whole:
                    drainer.submit(k, to_drain, drain_phase)
                else:  # what never reached the tier-0 cannot be drained: every file counts as failed
                    self._undrainable(k, to_drain, drain_phase)
                # the new checkpoint is whole in the tier-0: the one it replaces leaves, if drained
                self._leave_tier0(cfg.tier0_keep, wait=False)
                if self.log:
                    _log_burst(self.log, f"checkpoint {k + 1}/{n_ck} to the tier-0", "written", res)
                if k < n_ck - 1 and cfg.compute_seconds > 0:
                    time.sleep(cfg.compute_seconds)
        finally:
            for _, drain in pairs:
                if drain.ckpt in drainer.done:
                    drainer.done[drain.ckpt].wait()
            drainer.finish()
        for _, drain in pairs:
            drain.result = drain.phase.result()
            results.append(drain.result)
            if drainer.ok.get(drain.ckpt):
                self.written.append(drain.ckpt)
            else:
                self.partial.append(drain.ckpt)
        self.info["drained"] = list(dlog.drained)
        self.info["drain_failed"] = {str(k): v for k, v in dlog.failed.items()}
        self.info["in_tier0_at_end"] = list(self.in_tier0)
        if self.log:
            for _, drain in pairs:
                if drain.result is not None:
                    _log_burst(
                        self.log, f"checkpoint {drain.ckpt + 1}/{n_ck} drain", "made durable", drain.result
                    )
        with self.leftovers_if_gone(n_ck - 1):
            ctx.runner.stop_if_gone()
        self._keep_within_limit()
        return results

    def _undrainable(self, ckpt: int, files: Sequence[PlannedFile], phase: FilePhase) -> None:
        assert self.drain_log is not None
        phase.measure()
        for f in files:
            ev = FileEvent("drain", ckpt, f.name, f.nbytes, time.perf_counter())
            ev.error, ev.error_kind = (
                f"{f.key}: not drained: the tier-0 write of checkpoint {ckpt} failed",
                "error",
            )
            ev.end = ev.start
            phase.add(ev)
        phase.stop(collective=False)
        self.drain_log.failed[ckpt] = "its tier-0 write failed: nothing to drain"
        self.drain_log.save()
        assert self.tier0 is not None
        for key in self.ckpt_keys(ckpt):  # what did reach the tier-0 of a checkpoint never whole
            with contextlib.suppress(StorageError):
                self.tier0.delete(key)

    def _leave_tier0(self, keep: int, wait: bool = True) -> None:
        """This rank's oldest checkpoints leave the tier-0 until it holds `keep`, each once its
        drain is over: waiting for it, or (wait=False) only those already drained. A failed
        drain leaves it too: the tier-0 copy was then the only one, and the account says so."""
        tier0, drainer = self.tier0, self.drainer
        if tier0 is None or drainer is None:
            return
        while len(self.in_tier0) > keep:
            k = self.in_tier0[0]
            if k in drainer.done:
                if not wait and not drainer.done[k].is_set():
                    return
                drainer.done[k].wait()
            self.in_tier0.pop(0)
            for key in self.ckpt_keys(k):
                with contextlib.suppress(StorageError):  # gone already (a wiped tier): nothing to free
                    tier0.delete(key)
            if self.drain_log is not None:
                self.drain_log.in_tier0 = list(self.in_tier0)
                self.drain_log.save()

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
