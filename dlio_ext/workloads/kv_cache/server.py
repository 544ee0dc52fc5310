"""One rank's inference server: its tiers, its chunk buffers, what it knows is stored, and how
it serves a request (the longest cached prefix loaded, the rest prefilled, the new chunks stored).

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

from dlio_ext.storage.base import NotFound, StorageError, VerifyError
from dlio_ext.workloads.kv_cache.chunks import ChunkContent
from dlio_ext.workloads.kv_cache.config import Config, Model, model_of, sizes_of
from dlio_ext.workloads.kv_cache.stats import Stats
from dlio_ext.workloads.kv_cache.tiers import MemoryTier, StorageTier
from dlio_ext.workloads.kv_cache.trace import Request, chunk_keys, key_root


class Server:
    """One rank's inference server: its tiers, its chunk buffers, what it knows is stored."""

    def __init__(self, cfg: Config, rank: int, storage: StorageTier, seed: int, model: Model | None = None):
        self.cfg = cfg
        self.model = model or model_of(cfg)
        self.sizes = sizes_of(cfg, self.model)
        self.chunk_tokens = cfg.chunk_tokens
        self.nbytes = self.sizes.chunk_stored
        self.rank = rank
        self.root = key_root(self.model.identity, cfg.chunk_tokens)
        self.content = ChunkContent(seed, self.nbytes, storage.backend.alloc)
        self.buffers: queue.LifoQueue[memoryview] = queue.LifoQueue()
        for _ in range(cfg.max_inflight):
            buf = self.content.new_buffer()
            self.buffers.put(buf)
        self.memory = MemoryTier(self.sizes.cpu_stored) if self.sizes.cpu_chunks else None
        self.storage = storage
        #: whether the store still answers (the backend's, shared with its retry loop)
        self.live = storage.backend.liveness
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
        # cold reads as MLPerf's harness makes them: the chunk's file evicted before each read
        self.cold = cfg.cold

    # reading -----------------------------------------------------------------------------------
    def read_chunk(self, k: str, key: bytes, st: Stats) -> bool | None:
        """One storage read, timed, then verified: True = loaded, None = not there, False = failed."""
        buf = self.buffers.get()
        try:
            perf = time.perf_counter
            # cold: the chunk evicted first, and another reader of it on this host (who would
            # share this read's cache fill) kept out until the read ends; untimed, as the wait
            # for a chunk buffer is
            with self.storage.backend.cold_read(self.storage.path(k)) if self.cold else nullcontext():
                t0 = perf()
                try:
                    got = self.storage.read(k, buf)
                except NotFound:
                    t1 = perf()
                    st.logs["miss"].add(t1, t1 - t0)
                    st.c["lookup_misses"] += 1
                    return None
                except StorageError as exc:
                    st.error("read", exc)
                    self.live.outcome(exc, "kv_cache", perf())
                    return False
                t1 = perf()
                self.live.ok(t1)
            if self.cfg.verify:
                try:
                    self.content.check(key, buf, got, k)
                except VerifyError as exc:
                    st.error("read", VerifyError(f"chunk {exc}", k))
                    return False
                st.c["verified"] += 1
            st.logs["read"].add(t1, t1 - t0)
            st.c["reads"] += 1
            st.c["read_bytes"] += got
            return True
        finally:
            self.buffers.put(buf)

    def _load(self, k: str, key: bytes, st: Stats) -> bool:
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
        got = self.read_chunk(k, key, st) if self.storage.lookup(k) else None
        if not got:
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
        return True

    # writing -----------------------------------------------------------------------------------
    def write_chunk(self, k: str, key: bytes, st: Stats) -> bool:
        """Fill a buffer with chunk `key` and store it, timed; bookkeeping whatever happens."""
        buf = self.buffers.get()
        ok = False
        try:
            if self.live.gone is not None:
                st.c["writes_dropped"] += 1  # planned before the store was found gone: not worth a request
                return False
            self.content.fill(key, buf)
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
                self.pending.pop(k, None)
                if ok:
                    self.present.add(k)
                    self.mine.add(k)
                    self.writes_done += 1
        return ok

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
        with self.lock:
            if k in self.present:
                st.c["skipped_known"] += 1
                return
            if k in self.in_flight:
                st.c["skipped_in_flight"] += 1
                return
            self.in_flight.add(k)
            if self.write_queue is not None:
                self.pending[k] = key
        if self.memory is not None:
            self.memory.write(k, None, self.nbytes)
        if self.write_queue is None:
            self.write_chunk(k, key, st)
            return
        t = time.perf_counter()
        self.write_queue.put((k, key))  # blocks while the queue is full: back-pressure
        st.backpressure_s += time.perf_counter() - t

    def writer(self, st: Stats) -> None:
        assert self.write_queue is not None
        while True:
            item = self.write_queue.get()
            if item is None:
                return
            self.write_chunk(item[0], item[1], st)

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
        for k, key in zip(hexes, keys, strict=True):
            if not self._load(k, key, st):
                break
            hits += 1
        t_loaded = perf()
        recompute = req.context_tokens - hits * self.chunk_tokens
        if self.cfg.prefill_compute_s_per_token:
            time.sleep(recompute * self.cfg.prefill_compute_s_per_token)
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
