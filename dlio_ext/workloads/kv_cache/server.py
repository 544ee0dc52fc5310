"""One rank's inference server: its tiers, its chunk buffers, what it knows is stored, and how
it serves a request (the longest cached prefix loaded, the rest prefilled, the new chunks stored).

Tiers, fastest first: the CPU-memory tier (this rank's), the tier-0 when the run names one (shared:
any rank reads what any rank placed, e.g. one-sidedly from a peer's registered memory), then the
shared storage. A new chunk goes to the memory tier, to the tier-0 in the request (write-through:
once the request is done every server finds it there) and to storage (sync: in the request too;
write_back: through the queue), so the tier-0 is never a chunk's only copy. A chunk found on
storage is placed in the tier-0 again after the prefix is loaded (off the load time: it is hot).

Concurrency: one thread per user, blocking I/O. os.preadv/pwrite and obstore release the GIL
while the bytes move, so `max_inflight` transfers per rank are really in flight; the Python
work between two transfers (a few microseconds of bookkeeping) is what serialises, and it is
kept off the timed span. `max_inflight` is also the number of chunk buffers a rank owns (from
the backend's `alloc`): a transfer takes one (waiting for a free one is queueing, not storage
latency). An event loop would save threads but not time: the transfers would still need threads
to leave the GIL.

Measuring: a transfer is timed from just before the backend call to just after it; its latency
and end time go into the thread's `Stats` (two list appends), folded by the phase runner into
the mergeable histograms and the throughput time series. Verification runs after the clock stops.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

from dlio_ext.storage.base import NoSpace, NotFound, StorageError, VerifyError
from dlio_ext.workloads.content import Alloc
from dlio_ext.workloads.kv_cache.chunks import ChunkContent
from dlio_ext.workloads.kv_cache.config import Config, Model, model_of, sizes_of
from dlio_ext.workloads.kv_cache.stats import Stats
from dlio_ext.workloads.kv_cache.tiers import MemoryTier, StorageTier, Tier0
from dlio_ext.workloads.kv_cache.trace import Request, chunk_keys, key_root


@dataclass(frozen=True)
class Route:
    """Where one shared tier's reads and writes are recorded: a thread's logs, its counters and
    the op its errors count under (also the name of the phase they make)."""

    read: str
    miss: str
    reads: str
    read_bytes: str
    misses: str
    verified: str
    write: str
    writes: str
    write_bytes: str


STORAGE = Route(
    "read", "miss", "reads", "read_bytes", "lookup_misses", "verified", "write", "writes", "write_bytes"
)
TIER0 = Route(
    "tier0_read",
    "tier0_miss",
    "tier0_reads",
    "tier0_read_bytes",
    "tier0_misses",
    "tier0_verified",
    "tier0_write",
    "tier0_writes",
    "tier0_write_bytes",
)


class Server:
    """One rank's inference server: its tiers, its chunk buffers, what it knows is stored."""

    def __init__(
        self,
        cfg: Config,
        rank: int,
        storage: StorageTier,
        seed: int,
        model: Model | None = None,
        tier0: Tier0 | None = None,
        alloc: Alloc | None = None,
    ):
        self.cfg = cfg
        self.model = model or model_of(cfg)
        self.sizes = sizes_of(cfg, self.model)
        self.chunk_tokens = cfg.chunk_tokens
        self.nbytes = self.sizes.chunk_stored
        self.rank = rank
        # the same tokens are other data under another model or chunking, and other bytes at
        # another stored size (scale) or chunk format: a kept namespace (workload.namespace) from
        # such a run holds other keys, so its chunks are misses here, never corrupt chunks
        self.root = key_root(f"{self.model.identity}/{self.nbytes}/{ChunkContent.FORMAT}", cfg.chunk_tokens)
        # the chunk buffers come from the tier-0 when there is one (registered memory moves without
        # a staging copy; posix and s3 write from any page-aligned buffer), else from storage
        self.content = ChunkContent(seed, self.nbytes, alloc or storage.backend.alloc)
        self.buffers: queue.LifoQueue[memoryview] = queue.LifoQueue()
        for _ in range(cfg.max_inflight):
            buf = self.content.new_buffer()
            self.buffers.put(buf)
        self.memory = MemoryTier(self.sizes.cpu_stored) if self.sizes.cpu_chunks else None
        self.storage = storage
        self.tier0 = tier0
        #: whether the store still answers (the backend's, shared with its retry loop)
        self.live = storage.backend.liveness
        #: known to be in the tier-0: placed or read there by this rank (a miss of one of these
        #: is a miss after eviction, by whichever rank placed it)
        self.in_tier0: set[str] = set()
        self.evicted0: set[str] = set()  # placed in the tier-0 by this rank, then evicted by it
        self.present: set[str] = set()  # known to be in storage: written or read by this rank
        #: chunks this rank stored, a chunk stored again (evicted, or found missing) counted again
        self.writes_done = 0
        self.mine: set[str] = set()  # written by this rank, not evicted
        self.evicted: set[str] = set()  # written by this rank, then evicted by it
        self.in_flight: set[str] = set()
        self.pending: dict[str, bytes] = {}  # write-back: queued, not yet stored
        self.lock = threading.Lock()
        self.write_queue: queue.Queue[tuple[str, bytes] | None] | None = (
            queue.Queue(cfg.write_queue_chunks) if cfg.write_policy == "write_back" else None
        )
        #: what a write-back writer raised (a bug): the users raise it too, so the phase ends
        self.writer_failed: BaseException | None = None
        # cold reads as MLPerf's harness makes them: the chunk's file evicted before each read
        self.cold = cfg.cold

    # reading -----------------------------------------------------------------------------------
    def read_chunk(self, k: str, key: bytes, st: Stats) -> bool | None:
        """One storage read, timed, then verified: True = loaded, None = not there, False = failed."""
        return self._read(self.storage, STORAGE, k, key, st)

    def _read(self, tier: StorageTier, to: Route, k: str, key: bytes, st: Stats) -> bool | None:
        """One read of a shared tier (storage or the tier-0), timed, then verified: True = loaded,
        None = not there, False = failed (counted under `to.read`)."""
        buf = self.buffers.get()
        live = tier.backend.liveness
        try:
            perf = time.perf_counter
            # cold (storage only): the chunk evicted first, and another reader of it on this host
            # (who would share this read's cache fill) kept out until the read ends; untimed, as
            # the wait for a chunk buffer is
            cold = self.cold and tier is self.storage
            with tier.backend.cold_read(tier.path(k)) if cold else nullcontext():
                t0 = perf()
                try:
                    got = tier.read(k, buf)
                except NotFound:
                    t1 = perf()
                    st.logs[to.miss].add(t1, t1 - t0)
                    st.c[to.misses] += 1
                    return None
                except StorageError as exc:
                    st.error(to.read, exc)
                    live.outcome(exc, "kv_cache", perf())
                    return False
                t1 = perf()
                live.ok(t1)
            if self.cfg.verify:
                try:
                    self.content.check(key, buf, got, k)
                except VerifyError as exc:
                    st.error(to.read, VerifyError(f"chunk {exc}" + (" (tier-0)" if to is TIER0 else ""), k))
                    return False
                st.c[to.verified] += 1
            st.logs[to.read].add(t1, t1 - t0)
            st.c[to.reads] += 1
            st.c[to.read_bytes] += got
            return True
        finally:
            self.buffers.put(buf)

    def _from_tier0(self, k: str, key: bytes, st: Stats) -> bool:
        """Look `k` up in the tier-0 (if any, and still answering); True = loaded from it."""
        t0 = self.tier0
        if t0 is None or t0.backend.liveness.gone is not None:
            return False
        got = self._read(t0, TIER0, k, key, st)
        if not got:
            if got is None and (k in self.in_tier0 or k in self.evicted0):
                st.c["tier0_evicted_misses"] += 1  # placed once, evicted since (by its placer)
                self.evicted0.discard(k)
            self.in_tier0.discard(k)
            return False  # a failed read is an error of the tier-0, and storage may have it
        st.c["hit_tier0"] += 1
        if t0.owns(k):
            t0.touch(k)
        else:
            st.c["tier0_cross_rank_reads"] += 1
        home = t0.backend.home(t0.path(k))
        if home is not None and home != self.rank:
            st.c["tier0_peer_reads"] += 1  # its bytes came out of another rank's memory
        self.in_tier0.add(k)
        return True

    def _load(self, k: str, key: bytes, st: Stats, promote: list[tuple[str, bytes]] | None = None) -> bool:
        """Find chunk `k` in the first tier that has it; a storage hit the tier-0 lacks is added
        to `promote` (placed there once the prefix is loaded)."""
        st.c["lookups"] += 1
        mem = self.memory
        if mem is not None and mem.lookup(k):
            try:
                mem.read(k, None)
                st.c["hit_memory"] += 1
                return True
            except NotFound:  # evicted since the lookup
                pass
        if self.write_queue is not None and k in self.pending:
            st.c["hit_write_queue"] += 1
            return True
        if self._from_tier0(k, key, st):
            if mem is not None:
                mem.write(k, None, self.nbytes)
            return True
        got = self.read_chunk(k, key, st) if self.storage.lookup(k) else None
        if not got:
            st.c["missed" if got is None else "failed"] += 1
            if got is None and (k in self.present or k in self.evicted):
                st.c["evicted_misses"] += 1  # stored once, evicted since (by its owner): store again
                self.present.discard(k)
            return False
        st.c["hit_storage"] += 1
        if k not in self.mine:
            st.c["cross_rank_reads"] += 1
        else:
            self.storage.touch(k)
        self.present.add(k)
        if mem is not None:
            mem.write(k, None, self.nbytes)
        if promote is not None and self.tier0 is not None and k not in self.in_tier0:
            promote.append((k, key))
        return True

    # writing -----------------------------------------------------------------------------------
    def write_chunk(self, k: str, key: bytes, st: Stats, tier0: bool = False, storage: bool = True) -> bool:
        """Fill a buffer with chunk `key` and store it, timed: to the tier-0 first if `tier0`
        (write-through), then to storage if `storage`; bookkeeping whatever happens. True when
        every write asked for is done (a chunk the full tier-0 could not take counts as done)."""
        buf = self.buffers.get()
        ok = False
        try:
            if self.live.gone is not None:
                # planned before the store was found gone: not worth a request
                st.c["writes_dropped"] += storage
                return False
            self.content.fill(key, buf)
            if tier0:
                self._place(k, buf, st)
            if not storage:
                return True
            perf = time.perf_counter
            t0 = 0.0
            failed: StorageError | None = None
            try:
                self._make_room(k)  # untimed: the write's latency is the write's alone
                t0 = perf()
                self.storage.write(k, buf, self.nbytes)
                ok = True
            except StorageError as exc:
                st.error("write", exc)
                failed = exc
            t1 = perf()
            self.live.outcome(failed, "kv_cache", t1)
            if ok:
                st.logs["write"].add(t1, t1 - t0)
                st.c["writes"] += 1
                st.c["write_bytes"] += self.nbytes
        finally:
            self.buffers.put(buf)
            with self.lock:
                self.in_flight.discard(k)
                if storage:
                    self.pending.pop(k, None)
                    if ok:
                        self.present.add(k)
                        self.mine.add(k)
                        self.writes_done += 1
        return ok

    def _place(self, k: str, buf: memoryview, st: Stats) -> bool:
        """Put chunk `k` (filled in `buf`) into the tier-0, timed; the evictions a full tier-0
        forced run inside (the put waits for them, as an offload engine's would). A tier-0 that
        still has no room is counted, not an error: the chunk is on storage."""
        t0 = self.tier0
        assert t0 is not None
        live = t0.backend.liveness
        if live.gone is not None:
            return False
        perf = time.perf_counter
        start = perf()
        try:
            evicted = t0.write(k, buf, self.nbytes)
        except NoSpace:
            st.c["tier0_not_placed"] += 1
            live.ok()
            return False
        except StorageError as exc:
            st.error("tier0_write", exc)
            live.outcome(exc, "kv_cache tier-0", perf())
            return False
        end = perf()
        live.ok(end)
        st.logs["tier0_write"].add(end, end - start)
        st.c["tier0_writes"] += 1
        st.c["tier0_write_bytes"] += self.nbytes
        with self.lock:
            self.in_tier0.add(k)
            self.in_tier0.difference_update(evicted)
            self.evicted0.update(evicted)
        return True

    def promote(self, k: str, key: bytes, st: Stats) -> None:
        """Place chunk `k`, just read from storage, in the tier-0 again."""
        with self.lock:
            if k in self.in_flight or k in self.in_tier0:  # another user placed it meanwhile
                return
            self.in_flight.add(k)
        if self.write_chunk(k, key, st, tier0=True, storage=False) and k in self.in_tier0:
            st.c["tier0_promotions"] += 1

    def _make_room(self, k: str) -> None:
        """Evict this rank's least recently used chunks until `k` fits its share of the tier."""
        evicted = self.storage.make_room(k, self.nbytes)
        if evicted:
            with self.lock:
                for v in evicted:
                    self.mine.discard(v)
                    self.present.discard(v)
                    self.evicted.add(v)

    def _store(self, k: str, key: bytes, st: Stats) -> None:
        if self.writer_failed is not None:
            raise self.writer_failed
        t0 = self.tier0
        with self.lock:
            to_storage = k not in self.present
            to_tier0 = t0 is not None and k not in self.in_tier0 and t0.backend.liveness.gone is None
            if not to_storage and not to_tier0:
                st.c["skipped_known"] += 1
                return
            if k in self.in_flight:
                st.c["skipped_in_flight"] += 1
                return
            self.in_flight.add(k)
            if self.write_queue is not None and to_storage:
                self.pending[k] = key
        if self.memory is not None:
            self.memory.write(k, None, self.nbytes)
        if self.write_queue is None or not to_storage:
            self.write_chunk(k, key, st, tier0=to_tier0, storage=to_storage)
            return
        if to_tier0:  # write-through to the tier-0 now, write-back to storage through the queue
            buf = self.buffers.get()
            try:
                self.content.fill(key, buf)
                self._place(k, buf, st)
            finally:
                self.buffers.put(buf)
        t = time.perf_counter()
        self.write_queue.put((k, key))  # blocks while the queue is full: back-pressure
        st.backpressure_s += time.perf_counter() - t

    def writer(self, st: Stats) -> None:
        q = self.write_queue
        assert q is not None
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                self.write_chunk(item[0], item[1], st)
        except BaseException as exc:
            # a bug, not a storage error (those are counted): the next user that stores a chunk
            # raises it too, which ends the phase. Until then this writer keeps taking chunks,
            # unwritten, up to its end: the users waiting on a full queue (and the phase's end,
            # queueing that end) would otherwise wait forever
            self.writer_failed = exc
            while (item := q.get()) is not None:
                with self.lock:
                    self.in_flight.discard(item[0])
                    self.pending.pop(item[0], None)
            raise

    def end_writers(self, writers: int) -> None:
        """Make `writers` threads running `writer` return once the queue is drained."""
        assert self.write_queue is not None
        for _ in range(writers):
            self.write_queue.put(None)

    # a request -------------------------------------------------------------------------------------
    def serve(self, req: Request, keys: Sequence[bytes], st: Stats) -> dict[str, float]:
        """Load the longest cached prefix, prefill the rest, store the new chunks."""
        perf = time.perf_counter
        t_start = perf()
        hexes = [key.hex() for key in keys]
        hits = 0
        promote: list[tuple[str, bytes]] = []
        for k, key in zip(hexes, keys, strict=True):
            if not self._load(k, key, st, promote):
                break
            hits += 1
        t_loaded = perf()
        recompute = req.context_tokens - hits * self.chunk_tokens
        if self.cfg.prefill_compute_s_per_token:
            time.sleep(recompute * self.cfg.prefill_compute_s_per_token)
        for k, key in promote:
            self.promote(k, key, st)
        for k, key in zip(hexes[hits:], keys[hits:], strict=True):
            self._store(k, key, st)
        t_end = perf()
        load_s = t_loaded - t_start
        ttft = load_s + recompute / self.cfg.prefill_tokens_per_s
        c = st.c
        c["requests"] += 1
        c["context_tokens"] += req.context_tokens
        c["full_chunks"] += len(keys)
        c["recomputed_tokens"] += recompute
        st.logs["request"].add(t_end, t_end - t_start)
        st.logs["ttft"].add(t_end, ttft)
        st.logs["load"].add(t_end, load_s)
        return {"hits": hits, "load_s": load_s, "recomputed_tokens": recompute, "ttft_s": ttft}

    def keys_for(self, req: Request) -> list[bytes]:
        return chunk_keys(req.segments, self.chunk_tokens, self.root)
