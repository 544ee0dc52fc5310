"""storage.medium=memory: a tier of registered memory spread over the ranks.

Data plane: every rank registers a pool of `pool_bytes` once, at open, and a small control region
(one stamp word per bucket of keys, and one ring of commit records per writer rank); the regions'
metadata and base addresses are exchanged by one MPI allgather (collective: the harness opens the
backend on every rank at the same point). A put is one one-sided WRITE from the caller's
(registered or staged) buffer into the owner's pool, a get or get_range one READ out of it.

A key's owner is fixed by its hash (crc32 % ranks) and holds the exact index of its keys. The
common verbs need no answer from it:
- put: the writer places the bytes itself, in a run of the owner's pool the owner granted it
  earlier (asked for only when the writer's runs are used up: one round trip per GRANT_MAX bytes
  of small objects, one per put of a large one; NoSpace when the owner has no such run: nothing
  is overwritten or evicted). Then one WRITE carries the bytes, and once it is DONE a second
  (prepped descriptors) writes the commit record (key, offset, size, time) into this writer's
  ring in the owner's control region and a fresh stamp into the key's bucket word (the owner never
  applies a record before its bytes are whole). Once put returns, the record is in
  the owner's memory: the owner applies every record that landed before it answers any request,
  so stat, list, delete and lookups from every rank see the key. Concurrent writers of one key:
  the later put (by its writer's clock) wins, whole; the loser's bytes are freed.
- get/get_range of a key this rank has looked up before: one READ at the remembered place, then a
  READ of the key's bucket word. The owner writes a fresh stamp there before it frees or replaces
  any key of the bucket, and a writer writes one with its record, so an unchanged stamp proves the
  bytes read were the key's latest and were not freed meanwhile (no stamp is written twice). A
  changed stamp (an overwrite, a delete, or only another key of the bucket) costs a "lookup"
  round trip, then the same READ and check; should that fail too, the lookup pins the bytes, so a
  racing overwrite or delete cannot hand them to a later put until the reader unpins.
- stat, list, delete: one request to the owner(s), served after the owner applied what landed.
Requests and answers are small JSON messages sent as NIXL notifications; whichever thread of the
owner is polling NIXL answers (a control thread per rank, or a thread of the owner waiting for an
answer itself), so an owner busy in its workload, or blocked in an MPI barrier, still serves. A
notification that is not ours, or an answer that cannot be sent (its asker left), is skipped and
the rest of what arrived with it is served. Keys whose name does not fit a record
(KEY_MAX bytes) are committed by a request instead.
The pool is volatile RAM: nothing is durable, and a rank that leaves takes its keys with it.
"""

from __future__ import annotations

import bisect
import ctypes
import heapq
import itertools
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import (
    CacheControl,
    Counters,
    Durability,
    Liveness,
    NoSpace,
    NotFound,
    ObjectInfo,
    StorageError,
    Unreachable,
    Writer,
)
from dlio_ext.storage.buffers import address, round_up
from dlio_ext.storage.nixl.agent import Agent, error, read_transports
from dlio_ext.storage.nixl.medium import MediumDefaults, Report
from dlio_ext.storage.nixl.settings import NixlSettings
from dlio_ext.world import SoloWorld

#: pool allocations are rounded to this (a cache line: neighbours never share one)
GRAIN = 64
#: a caller's buffer outside every registration moves through a registered staging buffer of at
#: most this many bytes per transfer
STAGE_MAX = 64 << 20
#: keys a list reply carries at once (a notification is one UCX active message)
LIST_PAGE = 512
#: how long the control thread keeps polling without sleeping after a request (see _serve): long
#: enough for back-to-back requests (a list's pages, a stat loop), short enough that it does not
#: take a core from the transfers on a shared host (the common verbs send no requests at all)
HOT_S = 0.001
#: the longest nap of an idle control thread (TCP_NAP_S when the tier runs over tcp: see _serve)
IDLE_NAP_S = 1e-3
TCP_NAP_S = 1e-4
#: an idle control thread naps quiet / BACKOFF (up to its longest nap): a writer of 64 MiB objects
#: asks for room every ~7 ms, and at quiet / 10 that grant waited out a 0.7 ms nap (0.77 ms median
#: round trip against 35 us when hot); at quiet / 50 the nap is 0.14 ms there, and an idle tier
#: still reaches 1 ms naps after 50 ms (about 200 more wake-ups a burst of traffic, ~2 ms of CPU)
BACKOFF = 50
#: the notification that keeps an owner's control thread polling over tcp (see _nudge)
NUDGE = b"~"
#: how long a rank waiting for an answer polls without sleeping
SPIN_S = 0.001
#: how long a rank waits for an owner's answer before it counts the owner as unreachable
ANSWER_TIMEOUT_S = 60.0
#: the most a writer is granted at once in an owner's pool for its small objects (a larger object
#: is granted exactly its size)
GRANT_MAX = 1 << 20
#: stamp words in each rank's control region; keys share one by hash (a change to one key of a
#: bucket costs a cached reader of another a lookup, never a wrong answer)
BUCKETS = 1 << 14
#: a commit record: seq + 1, offset, size, mtime, key length, crc32; then the key (UTF-8)
RECORD = struct.Struct("<QQQdII")
SLOT = 256
KEY_MAX = SLOT - RECORD.size
#: the most control region a rank gives all writers' rings together
RINGS_MAX = 4 << 20
#: placements a rank remembers from its lookups (past this it forgets them all and starts over)
SEEN_MAX = 1 << 16
WORD = struct.Struct("<Q")


#: the share of this host's available memory the pools of its ranks may take together
MEMORY_FRACTION = 0.8
#: what launchers say about the ranks sharing this host
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def _fits(pool_bytes: int) -> None:
    """Refuse pools this host cannot hold, before any is allocated: each pool's pages are faulted
    in at open, so too large a pool_bytes would get ranks killed by the OOM killer, not a message."""
    local = next((int(os.environ[v]) for v in _LOCAL_SIZE_VARS if os.environ.get(v, "").isdigit()), 1)
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # psutil is a declared dependency; this only guards odd platforms
        return
    if pool_bytes * local > avail * MEMORY_FRACTION:
        raise UsageError(
            f"storage.pool_bytes={pool_bytes} x {local} rank(s) on this host is more than "
            f"{MEMORY_FRACTION:.0%} of the {avail} bytes of memory available; lower storage.pool_bytes"
        )


def _addr(mv: memoryview) -> int:
    """`address(mv)` in a fifth of its time for a writable buffer (ctypes, no numpy array): it is
    paid on every put and get."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(mv))
    except TypeError:  # read-only (the caller's bytes)
        return address(mv)


class Layout:
    """Where things are in a rank's control region: BUCKETS stamp words, then a ring of commit
    records per writer rank (the same layout on every rank)."""

    def __init__(self, ranks: int):
        self.ring = max(16, min(1024, RINGS_MAX // (SLOT * max(ranks, 1))))  # records per ring
        self.rings_at = BUCKETS * WORD.size
        self.size = self.rings_at + ranks * self.ring * SLOT

    @staticmethod
    def bucket(key: str) -> int:
        """The byte offset of `key`'s stamp word (a hash apart from the owner's)."""
        return (zlib.adler32(key.encode()) % BUCKETS) * WORD.size

    def slot(self, writer: int, seq: int) -> int:
        return self.rings_at + (writer * self.ring + seq % self.ring) * SLOT

    def descs(self, base: int, writer: int) -> Any:
        """The descriptors `writer` moves to and from the region at `base`, as an Nx3 array: every
        stamp word (index = the word's number), then `writer`'s ring slots (BUCKETS + slot)."""
        import numpy as np

        words = np.arange(BUCKETS, dtype=np.int64) * WORD.size + base
        slots = np.arange(self.ring, dtype=np.int64) * SLOT + base + self.slot(writer, 0)
        out = np.zeros((BUCKETS + self.ring, 3), dtype=np.int64)
        out[:BUCKETS, 0], out[:BUCKETS, 1] = words, WORD.size
        out[BUCKETS:, 0], out[BUCKETS:, 1] = slots, SLOT
        return out


def _mix(x: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit integers, so distinct inputs give distinct
    stamps, with both halves of a word changing (a torn 8-byte read cannot pass for a stamp)."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class Stamps:
    """Stamps no rank ever hands out twice: (count << 16 | rank), mixed."""

    def __init__(self, rank: int):
        self.rank = rank
        self._count = itertools.count(1)

    def next(self) -> int:
        return _mix(next(self._count) << 16 | self.rank)


class Extents:
    """First-fit allocation over [0, size) in GRAIN units, free neighbours merged."""

    def __init__(self, size: int):
        self.size = size
        self.free: list[tuple[int, int]] = [(0, size)] if size else []  # (offset, length) by offset
        self.free_bytes = size

    @staticmethod
    def span(n: int) -> int:
        return round_up(max(n, 1), GRAIN)

    def take(self, n: int) -> int | None:
        need = self.span(n)
        for i, (off, length) in enumerate(self.free):
            if length >= need:
                if length == need:
                    del self.free[i]
                else:
                    self.free[i] = (off + need, length - need)
                self.free_bytes -= need
                return off
        return None

    def give(self, off: int, n: int) -> None:
        length = self.span(n)
        self.free_bytes += length
        i = bisect.bisect(self.free, (off, 0))
        if i < len(self.free) and off + length == self.free[i][0]:  # merge with the next
            length += self.free.pop(i)[1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == off:  # ... and the previous
            off, length = self.free[i - 1][0], self.free[i - 1][1] + length
            self.free[i - 1] = (off, length)
        else:
            self.free.insert(i, (off, length))


@dataclass
class Entry:
    offset: int
    size: int
    mtime: float
    pins: int = 0
    live: bool = True


class Shard:
    """What one rank owns: the allocation of its pool, the index of its keys, and its control
    region (stamp words it rewrites before any key of a bucket changes, rings it applies)."""

    def __init__(self, pool_bytes: int, rank: int, ranks: int, ctrl: memoryview):
        self.extents = Extents(pool_bytes)
        self.keys: dict[str, Entry] = {}
        self.pinned: dict[int, Entry] = {}  # offset -> entry with readers in flight
        self.lock = threading.Lock()
        self.rank, self.ranks, self.ctrl = rank, ranks, ctrl
        self.layout = Layout(ranks)
        self.stamps = Stamps(rank)
        #: per writer rank: the sequence number of the next record its ring will hold
        self.applied = [0] * ranks
        #: requests handled (this rank's own included): what the verbs that need none avoid
        self.served = 0
        #: the most granted to one writer at once (small pools: an eighth of a writer's share)
        self.grant = min(GRANT_MAX, max(GRAIN, round_up(pool_bytes // (8 * max(ranks, 1)), GRAIN)))

    def stamp(self, key: str) -> int:
        return WORD.unpack_from(self.ctrl, self.layout.bucket(key))[0]

    def _restamp(self, key: str) -> None:
        """Before any change to `key` is visible: readers that remembered the old stamp re-ask."""
        WORD.pack_into(self.ctrl, self.layout.bucket(key), self.stamps.next())

    def _release(self, e: Entry) -> None:
        e.live = False
        if e.pins == 0:
            self.extents.give(e.offset, e.size)

    def apply(self, key: str, off: int, size: int, mtime: float) -> None:
        """A put's commit: the later mtime wins (records from different writers land in no
        particular order); the loser's bytes are freed."""
        self._restamp(key)
        old = self.keys.get(key)
        if old is not None and old.mtime > mtime:
            self.extents.give(off, size)
            return
        self.keys[key] = Entry(off, size, mtime)
        if old is not None:
            self._release(old)

    def drain(self) -> None:
        """Apply every commit record that landed in the writers' rings, in each ring's order (a
        writer writes its records one at a time, each after its bytes are DONE). A record whose
        crc does not match is still being written: it is applied at the next drain."""
        ctrl, lay = self.ctrl, self.layout
        for w in range(self.ranks):
            while True:
                seq = self.applied[w]
                at = lay.slot(w, seq)
                mark, off, size, mtime, klen, crc = RECORD.unpack_from(ctrl, at)
                if mark != seq + 1 or klen > KEY_MAX:
                    break
                key = bytes(ctrl[at + RECORD.size : at + RECORD.size + klen])
                if zlib.crc32(key, zlib.crc32(ctrl[at : at + RECORD.size - 4])) != crc:
                    break
                self.applied[w] = seq + 1
                self.apply(key.decode(), off, size, mtime)

    def handle(self, op: str, args: list[Any]) -> Any:
        with self.lock:
            self.served += 1
            if op == "unpin":
                e = self.pinned.get(args[0])
                if e is not None:
                    e.pins -= 1
                    if e.pins == 0:
                        del self.pinned[e.offset]
                        if not e.live:
                            self.extents.give(e.offset, e.size)
                return None
            # whatever a writer committed before this request was sent is in its ring by now
            self.drain()
            if op == "grant":
                # [writer, n, runs the writer hands back]: a run of at least n bytes, up to `grant`
                writer, n, back = args
                for off, length in back:
                    self.extents.give(off, length)
                need = Extents.span(n)
                size = max(need, self.grant)
                off = self.extents.take(size)
                if off is None and size > need:
                    size, off = need, self.extents.take(need)
                return [off, size if off is not None else 0, self.extents.free_bytes, self.applied[writer]]
            if op == "reserve":  # the owner's own puts
                return [self.extents.take(args[0]), self.extents.free_bytes]
            if op == "commit":  # a key too long for a record, or the owner's own put
                self.apply(*args)
                return None
            if op == "drain":
                return self.applied[args[0]]
            if op == "lookup":
                e = self.keys.get(args[0])
                if e is None:
                    return None
                if args[1]:
                    e.pins += 1
                    self.pinned[e.offset] = e
                return [e.offset, e.size, e.mtime, self.stamp(args[0])]
            if op == "delete":
                e = self.keys.pop(args[0], None)
                if e is not None:
                    self._restamp(args[0])
                    self._release(e)
                return e is not None
            if op == "list":
                prefix, after = args
                keys = sorted(k for k in self.keys if k.startswith(prefix) and k > after)
                return [keys[:LIST_PAGE], len(keys) > LIST_PAGE]
        raise ValueError(f"unknown control request {op!r}")


#: requests that get no answer (the sender does not wait)
ONE_WAY = frozenset({"unpin"})


class _Call:
    __slots__ = ("done", "value", "failure")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.failure: str | None = None


class _Peer:
    """What this rank keeps about writing into one owner's pool: the runs it was granted there
    and its ring of commit records."""

    def __init__(self) -> None:
        self.runs = Extents(0)
        self.runs_lock = threading.Lock()
        self.written = 0  # records written to its ring
        self.applied = 0  # of which the owner said it applied
        self.ring_lock = threading.Lock()


class MemoryMedium(MediumDefaults):
    """The memory tier as seen from one rank (see the module's docstring)."""

    def __init__(
        self, settings: NixlSettings, world: SoloWorld, agent: Agent, pool: memoryview, ctrl: memoryview
    ):
        self.settings, self.world, self.agent, self.pool, self.ctrl = settings, world, agent, pool, ctrl
        self.rank, self.ranks = world.rank, world.size
        self.shard = Shard(settings.pool_bytes, self.rank, self.ranks, ctrl)
        self.layout = self.shard.layout
        self.names: list[str] = [agent.name] * self.ranks
        self.bases: list[int] = [address(pool)] * self.ranks
        self.ctrls: list[int] = [address(ctrl)] * self.ranks
        self.peers = [_Peer() for _ in range(self.ranks)]
        self._far_lists: list[Any] = [None] * self.ranks
        self._far_lock = threading.Lock()
        #: key -> (offset, size, stamp) this rank's lookups found (see _read)
        self.seen: dict[str, tuple[int, int, int]] = {}
        self._nudging: bytes | None = None  # see _nudge
        self._tries = 0
        self._stamps = Stamps(self.rank)
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        #: threads of this rank now waiting in _ask (they poll NIXL themselves)
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._pump_lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self._server: threading.Thread | None = None
        #: the first error the control thread met (it carries on serving)
        self.serve_error: str | None = None
        #: CPU seconds the control thread used (measured when it stops)
        self.serve_cpu_seconds = 0.0
        #: writers' registered staging, handed back at close/abort and reused (registered once)
        self._spares: list[memoryview] = []
        self._spares_lock = threading.Lock()

    @classmethod
    def open(cls, settings: NixlSettings, world: SoloWorld) -> MemoryMedium:
        """Collective: every rank registers its pool and control region, then one allgather hands
        everyone the others' metadata. A rank that failed alone makes every rank raise (none is left
        in the gather)."""
        problem, mine, medium = None, None, None
        try:
            # read by NIXL's UCX when it creates its context; Open MPI's UCX (if any) read its
            # environment at MPI_Init already, so MPI's own transport is not changed by these
            if settings.transports:
                os.environ["UCX_TLS"] = settings.transports
            if settings.net_devices:
                os.environ["UCX_NET_DEVICES"] = settings.net_devices
            _fits(settings.pool_bytes)
            agent = Agent(f"dlio-ext-r{world.rank}-{os.getpid()}", {"UCX": {}})
            pool = agent.alloc(settings.pool_bytes)
            ctrl = agent.alloc(Layout(world.size).size)
            medium = cls(settings, world, agent, pool, ctrl)
            mine = (agent.name, agent.agent.get_agent_metadata(), address(pool), address(ctrl))
        except Exception as exc:  # every rank must reach the gather below, whatever failed here
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        everyone = world.allgather((problem, mine))
        failed = [(r, p) for r, (p, _) in enumerate(everyone) if p is not None]
        if failed:
            if medium is not None:
                medium.agent.close()
            rank, line = failed[0]
            raise UsageError(line if len(failed) == world.size else f"rank {rank}: {line}")
        assert medium is not None
        try:
            for r, (_, (name, md, base, ctrl_base)) in enumerate(everyone):
                medium.names[r], medium.bases[r], medium.ctrls[r] = name, base, ctrl_base
                if r != world.rank:
                    medium.agent.agent.add_remote_agent(md)
        except Exception as exc:
            raise error(exc, "storage=nixl: loading a peer's NIXL metadata") from None
        medium._server = threading.Thread(target=medium._serve, name="nixl-control", daemon=True)
        medium._server.start()
        return medium

    # control plane -------------------------------------------------------------------------
    def owner(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.ranks

    def home(self, key: str) -> int | None:
        return self.owner(key)

    def _pump(self) -> bool | None:
        """Take every notification that arrived and act on it: answer requests, hand answers to
        the calls waiting for them. One thread at a time; True if anything arrived, None if
        another thread is polling."""
        if not self._pump_lock.acquire(blocking=False):
            return None
        try:
            notifs = self.agent.agent.get_new_notifs()
            for peer, msgs in notifs.items():
                for raw in msgs:
                    try:
                        self._dispatch(peer, raw)
                    except Exception as exc:
                        # an answer that could not be sent (its asker is gone): that asker's own
                        # call reports it. The poller carries on: the rest of this batch (other
                        # ranks' requests, unpins, answers to our own calls) would be lost with it,
                        # and the poller may be this rank's thread inside an unrelated verb.
                        self.serve_error = (
                            self.serve_error or f"answering {peer}: {type(exc).__name__}: {exc}"
                        )
            return bool(notifs)
        finally:
            self._pump_lock.release()

    def _dispatch(self, peer: str, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return  # not one of ours (a notification some other NIXL user sent this agent)
        if not isinstance(msg, list) or len(msg) != 4 or msg[0] not in ("a", "q"):
            return  # JSON, but not one of ours either
        if msg[0] == "a":
            call = self._calls.get(msg[1])
            if call is not None:
                call.value, call.failure, call.done = msg[2], msg[3], True
            return
        _, rid, op, args = msg
        try:
            value, failure = self.shard.handle(op, args), None
        except Exception as exc:  # a malformed request: the asker gets the reason, we carry on
            value, failure = None, f"{type(exc).__name__}: {exc}"
        if op not in ONE_WAY:
            self.agent.agent.send_notif(peer, json.dumps(["a", rid, value, failure]).encode())

    def _serve(self) -> None:
        """The control thread: answers peers while this rank's workload does anything else, and
        applies the commit records writers left (so the space their overwrites free comes back
        without a request). It polls often right after traffic and backs off to 1 ms when idle,
        so an idle tier costs little CPU on a shared machine."""
        last = time.perf_counter()
        cpu0 = time.thread_time()
        # over tcp, peers' one-sided transfers into this rank's pool complete only as this thread
        # makes UCX progress: it naps at most TCP_NAP_S there
        nap = TCP_NAP_S if "tcp" in (self.settings.transports or "").split(",") else IDLE_NAP_S
        while not self._stop.is_set():
            if self._waiting:
                # a thread of this rank waits for an answer and polls meanwhile, serving peers as
                # it goes: a second poller would only take the GIL and the CPU from it
                time.sleep(200e-6)
                continue
            try:
                busy = self._pump()
            except Exception as exc:
                # NIXL could not hand over notifications (_pump survives any one message's
                # failure): keep serving, the next poll may succeed
                self.serve_error = self.serve_error or f"{type(exc).__name__}: {exc}"
                busy = False
            now = time.perf_counter()
            if busy:
                last = now
            # for HOT_S after traffic it polls without sleeping: requests come back to back, and
            # on a loaded host any sleep, even sleep(0), gives the CPU away for a time slice (a
            # round trip measured 150 us with sleep(0), 26 us without). Then it sleeps the
            # longer the tier stays idle, up to 1 ms, applying records between naps.
            quiet = now - last
            if quiet >= HOT_S:
                with self.shard.lock:
                    self.shard.drain()
                time.sleep(min(quiet / BACKOFF, nap))
        self.serve_cpu_seconds = time.thread_time() - cpu0

    def _ask(self, owner: int, op: str, *args: Any) -> Any:
        """One request to `owner`'s shard and its answer (served in-process for this rank's own)."""
        if owner == self.rank:
            return self.shard.handle(op, list(args))
        rid = next(self._ids)
        call = _Call()
        if op not in ONE_WAY:
            self._calls[rid] = call
        try:
            self.agent.agent.send_notif(self.names[owner], json.dumps(["q", rid, op, list(args)]).encode())
        except Exception as exc:
            self._calls.pop(rid, None)
            raise error(exc, f"storage=nixl: asking rank {owner} ({op})") from None
        if op in ONE_WAY:
            return None
        start = time.perf_counter()
        deadline = start + ANSWER_TIMEOUT_S
        # counted under a lock: one lost increment (threads of a rank asking at once) would leave
        # the count at -1 once they are done, and the control thread, seeing it non-zero, would
        # never serve peers again
        with self._waiting_lock:
            self._waiting += 1
        try:
            while not call.done:
                polled = self._pump()
                now = time.perf_counter()
                # an answer takes tens of us: poll without sleeping (a sleep on a loaded host
                # costs a time slice, and an owner that sees a gap after its answer naps too:
                # round trips then stay slow). Sleep when the control thread holds the poll (let
                # it run), or once the wait is long (an owner busy elsewhere: spare the core).
                if polled is None or now - start > SPIN_S:
                    time.sleep(20e-6)
                if now > deadline:
                    raise Unreachable(
                        f"rank {owner} did not answer a {op} request within {ANSWER_TIMEOUT_S:g} s"
                    )
        finally:
            with self._waiting_lock:
                self._waiting -= 1
            self._calls.pop(rid, None)
        if call.failure:
            raise StorageError(f"rank {owner} refused a {op} request: {call.failure}")
        return call.value

    # data plane ----------------------------------------------------------------------------
    def share(self, counters: Counters, liveness: Liveness) -> None:
        self.agent.counters = counters  # the transfers' post and wait seconds

    def alloc(self, nbytes: int) -> memoryview:
        return self.agent.alloc(nbytes)

    def take_buffer(self, n: int) -> memoryview:
        """A registered buffer of at least `n` bytes for a writer: a spare one, or a new one."""
        with self._spares_lock:
            for i, buf in enumerate(self._spares):
                if len(buf) >= n:
                    return self._spares.pop(i)
        return self.agent.alloc(max(n, 1 << 20))

    def give_buffer(self, buf: memoryview) -> None:
        with self._spares_lock:
            self._spares.append(buf)

    def _stage(self, n: int) -> memoryview:
        """This thread's registered staging buffer, at least `n` bytes (n <= STAGE_MAX)."""
        buf = getattr(self._local, "stage", None)
        if buf is None or len(buf) < n:
            buf = self._local.stage = self.agent.alloc(max(n, 1 << 20))
        return buf

    def _scratch(self) -> tuple[memoryview, Any]:
        """This thread's registered scratch page and its prepped descriptors: 0 = a record (at
        offset 0), 1 = a stamp to write (at SLOT), 2 = a stamp read (at SLOT + 8)."""
        got = getattr(self._local, "scratch", None)
        if got is None:
            import numpy as np

            buf = self.agent.alloc(4096)
            at = address(buf)
            descs = np.array([[at, SLOT, 0], [at + SLOT, 8, 0], [at + SLOT + 8, 8, 0]], dtype=np.int64)
            got = self._local.scratch = (buf, self.agent.prep(None, descs))
        return got

    def _far(self, owner: int) -> Any:
        """`owner`'s control region as a prepped list (Layout.descs), made on first use."""
        got = self._far_lists[owner]
        if got is not None:
            return got
        with self._far_lock:
            got = self._far_lists[owner]
            if got is None:
                descs = self.layout.descs(self.ctrls[owner], self.rank)
                got = self._far_lists[owner] = self.agent.prep(self.names[owner], descs)
            return got

    def _move(self, op: str, mv: memoryview, owner: int, offset: int, key: str) -> None:
        """WRITE all of `mv` to, or READ it from, `owner`'s pool at `offset`; done when it returns."""
        n = len(mv)
        start = _addr(mv) if n else 0
        remote = self.bases[owner] + offset
        what = f"{key}: {op} with rank {owner}"
        if self.agent.registered(start, n):
            self.agent.xfer(op, (start, n), self.names[owner], (remote, n), what)
            return
        done = 0
        while done < n:  # through registered staging, STAGE_MAX at a time
            step = min(n - done, STAGE_MAX)
            stage = self._stage(step)
            if op == "WRITE":
                stage[:step] = mv[done : done + step]
            self.agent.xfer(op, (address(stage), step), self.names[owner], (remote + done, step), what)
            if op == "READ":
                mv[done : done + step] = stage[:step]
            done += step

    def _no_space(self, key: str, owner: int, n: int, free: int) -> NoSpace:
        return NoSpace(
            f"{key}: the nixl memory tier is full: rank {owner}'s pool has {free} of "
            f"{self.settings.pool_bytes} bytes free, no {Extents.span(n)}-byte run for this object "
            "(raise storage.pool_bytes or run more ranks)",
            key,
        )

    def _place(self, owner: int, n: int, key: str) -> int:
        """Where in `owner`'s pool this rank writes n bytes: in a run it was granted there, else
        in a new run (handing back what is left of the old ones, so the owner can merge them)."""
        p = self.peers[owner]
        with p.runs_lock:
            off = p.runs.take(n)
            if off is not None:
                return off
            back, p.runs = p.runs.free, Extents(0)
        off, size, free, applied = self._ask(owner, "grant", self.rank, n, back)
        p.applied = max(p.applied, applied)
        if off is None:
            raise self._no_space(key, owner, n, free)
        need = Extents.span(n)
        if size > need:
            with p.runs_lock:
                p.runs.give(off + need, size - need)
        return off

    def _commit(self, owner: int, key: str, offset: int, n: int, mtime: float) -> None:
        """Write the commit record into this rank's ring in `owner`'s control region (its bytes
        are DONE already), or send it as a request when the key does not fit a record."""
        raw = key.encode()
        if len(raw) > KEY_MAX:
            self._ask(owner, "commit", key, offset, n, mtime)
            return
        p = self.peers[owner]
        buf, near = self._scratch()
        # one record at a time per owner: the owner applies a ring in order and stops at a record
        # not there yet, so a later record must never land before an earlier one
        with p.ring_lock:
            if p.written - p.applied >= self.layout.ring:
                p.applied = self._ask(owner, "drain", self.rank)
                if p.written - p.applied >= self.layout.ring:
                    raise StorageError(
                        f"{key}: rank {owner} applies no commit records (its ring is full)", key
                    )
            seq = p.written
            head = RECORD.pack(seq + 1, offset, n, mtime, len(raw), 0)[:-4]
            crc = zlib.crc32(raw, zlib.crc32(head))
            # and a fresh stamp in the key's bucket: from now on, readers that remembered where
            # the key was re-ask (the owner applies the record later, restamping before it frees)
            size = RECORD.size + len(raw)
            buf[:size] = head + crc.to_bytes(4, "little") + raw
            WORD.pack_into(buf, SLOT, self._stamps.next())
            with p.runs_lock:
                # this put used up its room at the owner, so the next one asks for a grant: wake
                # the owner now (it naps when idle), so that request finds it polling. A 64 MiB
                # put's grant waited 0.7 ms for the owner without this, ~35 us with it
                ahead = NUDGE if p.runs.free_bytes < n else self._nudge()
            self.agent.move_prepped(
                "WRITE",
                near,
                [0, 1],
                self._far(owner),
                [BUCKETS + seq % self.layout.ring, self.layout.bucket(key) // WORD.size],
                f"{key}: commit record to rank {owner}",
                ahead,
            )
            p.written = seq + 1

    def store(self, key: str, mv: memoryview) -> None:
        """put's body: place, WRITE (bytes and a fresh stamp), commit (see the module's docstring)."""
        n = len(mv)
        owner = self.owner(key)
        offset = self.reserve(owner, n, key)
        try:
            if n:
                self._move("WRITE", mv, owner, offset, key)
        except BaseException:
            self.unreserve(owner, offset, n)  # the bytes were never the key's: free them
            raise
        self.publish(owner, key, offset, n)

    def reserve(self, owner: int, n: int, key: str) -> int:
        """Room for n bytes of `key` in `owner`'s pool: this rank's own pool and index when it owns
        the key (no message), else a run the owner granted this rank."""
        self.seen.pop(key, None)
        if owner != self.rank:
            return self._place(owner, n, key)
        offset, free = self.shard.handle("reserve", [n])
        if offset is None:
            raise self._no_space(key, self.rank, n, free)
        return offset

    def unreserve(self, owner: int, offset: int, n: int) -> None:
        """Give back room `reserve` found that never became a key's."""
        if owner == self.rank:
            with self.shard.lock:
                self.shard.extents.give(offset, n)
            return
        p = self.peers[owner]
        with p.runs_lock:  # this rank may use them again
            p.runs.give(offset, n)

    def publish(self, owner: int, key: str, offset: int, n: int) -> None:
        """Commit `key` to the n bytes at `offset` (DONE already): every rank finds it from now on."""
        if owner == self.rank:
            self.shard.handle("commit", [key, offset, n, time.time()])
        else:
            self._commit(owner, key, offset, n, time.time())

    def put(self, key: str, data: memoryview | bytes) -> None:
        self.store(key, memoryview(data).cast("B"))

    def _nudge(self) -> bytes:
        """What rides on a put's or a get's last transfer to the owner: nothing, unless UCX
        carries data over tcp. There a one-sided transfer completes only when the target's UCX
        makes progress, which its control thread gives in naps of up to 1 ms once it sees no
        notification for HOT_S: a put would take 2 ms. A notification (not JSON: ignored) keeps
        that thread polling while ops keep coming. Decided once, after the first transfers, from
        what UCX reported (read_transports), or from storage.transports."""
        if self._nudging is None:
            said = {t.split("/")[0] for names in read_transports().values() for t in names}
            asked = set((self.settings.transports or "").split(","))
            self._tries += 1
            if not said and not self.settings.transports and self._tries < 3:
                return NUDGE  # UCX reported nothing yet: nudge, to be safe, and look again
            # (still nothing after 3 looks: UCX_PROTO_INFO is off; no nudge, the RDMA case)
            self._nudging = NUDGE if "tcp" in said | asked else b""
        return self._nudging

    def _stamp_now(self, owner: int, key: str) -> int:
        """The stamp word of `key`'s bucket at `owner`, read one-sidedly."""
        buf, near = self._scratch()
        self.agent.move_prepped(
            "READ",
            near,
            [2],
            self._far(owner),
            [self.layout.bucket(key) // WORD.size],
            f"{key}: stamp from rank {owner}",
            self._nudge(),
        )
        return WORD.unpack_from(buf, SLOT + 8)[0]

    def _take(self, key: str, owner: int, base: int, size: int, offset: int, into: memoryview) -> int:
        take = max(0, min(len(into), size - offset))
        if take:
            self._move("READ", into[:take], owner, base + offset, key)
        return take

    def _remember(self, key: str, place: tuple[int, int, int]) -> None:
        if len(self.seen) >= SEEN_MAX:
            self.seen.clear()  # a bound, not a policy: forgotten places cost one lookup each
        self.seen[key] = place

    def _read(self, key: str, offset: int, into: memoryview, whole: bool) -> int:
        if offset < 0:  # the READ would start in the bytes before the key's: another key's data
            raise StorageError(f"{key}: offset {offset} is negative", key)
        owner = self.owner(key)
        if owner != self.rank:
            # the bytes where this rank last found the key, then its bucket's stamp: unchanged,
            # the bytes were the key's latest all along (see the module's docstring)
            hit = self.seen.get(key)
            if hit is not None and not (whole and hit[1] > len(into)):
                take = self._take(key, owner, hit[0], hit[1], offset, into)
                if self._stamp_now(owner, key) == hit[2]:
                    return take
            self.seen.pop(key, None)
            found = self._ask(owner, "lookup", key, False)
            if found is None:
                raise NotFound(f"no such key in the nixl memory tier: {key}", key)
            base, size, _, stamp = found
            if whole and size > len(into):
                raise StorageError(f"{key}: {size} bytes do not fit a {len(into)}-byte buffer", key)
            take = self._take(key, owner, base, size, offset, into)
            if self._stamp_now(owner, key) == stamp:
                self._remember(key, (base, size, stamp))
                return take
        # the key changes under this reader (or is this rank's own): pin its bytes while reading
        found = self._ask(owner, "lookup", key, True)
        if found is None:
            raise NotFound(f"no such key in the nixl memory tier: {key}", key)
        base, size, _, stamp = found
        try:
            if whole and size > len(into):
                raise StorageError(f"{key}: {size} bytes do not fit a {len(into)}-byte buffer", key)
            return self._take(key, owner, base, size, offset, into)
        finally:
            self._ask(owner, "unpin", base)

    def get(self, key: str, into: memoryview) -> int:
        return self._read(key, 0, into, whole=True)

    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        return self._read(key, offset, into, whole=False)

    def writer(self, key: str) -> Writer:
        return _TierWriter(self, key)

    def sized_writer(self, key: str, size: int) -> Writer:
        return _PlacedWriter(self, key, size)

    def stat(self, key: str) -> ObjectInfo:
        found = self._ask(self.owner(key), "lookup", key, False)
        if found is None:
            raise NotFound(f"no such key in the nixl memory tier: {key}", key)
        return ObjectInfo(key, found[1], found[2])

    def _keys(self, rank: int, prefix: str) -> Iterator[str]:
        after = ""
        while True:
            keys, more = self._ask(rank, "list", prefix, after)
            yield from keys
            if not more:
                return
            after = keys[-1]

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        merged = heapq.merge(*(self._keys(r, prefix) for r in range(self.ranks)))
        if not delimiter:
            yield from merged
            return
        last = None
        for key in merged:
            cut = key.find(delimiter, len(prefix))
            out = key if cut < 0 else key[: cut + len(delimiter)]
            if out != last:
                yield out
                last = out

    def delete(self, key: str) -> None:
        self.seen.pop(key, None)
        if not self._ask(self.owner(key), "delete", key):
            raise NotFound(f"no such key in the nixl memory tier: {key}", key)

    # what the medium is --------------------------------------------------------------------
    def durability(self) -> Durability:
        return Durability("volatile: the registered RAM of the tier's ranks", "medium")

    def cache_control(self) -> CacheControl:
        return CacheControl(
            "none", False, "the data is in the tier's memory: there is no slower medium to read from"
        )

    def free_bytes(self) -> int | None:
        return self.settings.pool_bytes * self.ranks

    def where(self) -> str:
        # read in "its data is left in ..." when a run ends early: the tier is the ranks' own
        # memory, so say that nothing of it outlives them
        return (
            f"the nixl memory tier ({self.ranks} rank(s) x {self.settings.pool_bytes} bytes of the "
            "ranks' own memory: its contents are lost when the ranks exit)"
        )

    def room(self) -> tuple[str, str]:
        return f"the nixl memory tier ({self.ranks} rank(s) x {self.settings.pool_bytes} bytes)", (
            "raise storage.pool_bytes or run more ranks"
        )

    def report(self) -> Report:
        return {
            "plugins": {op.lower(): sorted(p) for op, p in self.agent.plugins.items()},
            "transports": {verb: sorted(t) for verb, t in read_transports().items()},
            "registration_seconds": self.agent.registration_seconds,
            "registrations": self.agent.registrations,
        }

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.join()
        with self._pump_lock:
            self.agent.close()


class _TierWriter(Writer):
    """Streams into registered staging of its own (so a caller's chunk is free once write
    returns), then stores the whole object at close: the tier learns the size only then."""

    def __init__(self, medium: MemoryMedium, key: str):
        self.m, self.key = medium, key
        self.buf: memoryview | None = None
        self.n = 0

    def write(self, chunk: memoryview | bytes) -> None:
        mv = memoryview(chunk).cast("B")
        need = self.n + len(mv)
        if self.buf is None or need > len(self.buf):
            grown = self.m.take_buffer(max(need, 2 * (len(self.buf) if self.buf is not None else 0)))
            if self.buf is not None:
                grown[: self.n] = self.buf[: self.n]
                self.m.give_buffer(self.buf)
            self.buf = grown
        self.buf[self.n : need] = mv
        self.n = need

    def close(self) -> None:
        buf, self.buf = self.buf, None
        try:
            self.m.store(self.key, buf[: self.n] if buf is not None else memoryview(b""))
        finally:
            if buf is not None:
                self.m.give_buffer(buf)

    def abort(self) -> None:
        # nothing reached the tier: it is written only at close
        buf, self.buf = self.buf, None
        if buf is not None:
            self.m.give_buffer(buf)


class _PlacedWriter(Writer):
    """A writer told the object's size: the room is reserved at open, each chunk goes straight
    to its place (one WRITE from the caller's registered buffer; borrowed for the call only),
    and the key is committed, whole, at close. Until then no rank finds it: a reader never sees
    half an object."""

    def __init__(self, medium: MemoryMedium, key: str, size: int):
        self.m, self.key, self.size = medium, key, size
        self.owner = medium.owner(key)
        self.offset: int | None = medium.reserve(self.owner, size, key)
        self.n = 0

    def write(self, chunk: memoryview | bytes) -> None:
        mv = memoryview(chunk).cast("B")
        if self.offset is None:
            raise StorageError(f"{self.key}: write after close or abort", self.key)
        if self.n + len(mv) > self.size:
            raise StorageError(
                f"{self.key}: {self.n + len(mv)} bytes written to a writer opened for {self.size}", self.key
            )
        if len(mv):
            self.m._move("WRITE", mv, self.owner, self.offset + self.n, self.key)
        self.n += len(mv)

    def close(self) -> None:
        offset, self.offset = self.offset, None
        if offset is None:
            return
        if self.n != self.size:
            self.m.unreserve(self.owner, offset, self.size)
            raise StorageError(
                f"{self.key}: closed after {self.n} of the {self.size} bytes it was opened for", self.key
            )
        self.m.publish(self.owner, self.key, offset, self.size)

    def abort(self) -> None:
        offset, self.offset = self.offset, None
        if offset is not None:  # nothing was committed: the room goes back
            self.m.unreserve(self.owner, offset, self.size)


def open(settings: NixlSettings, run_dir: str | None, world: SoloWorld) -> MemoryMedium:  # noqa: A001
    """The memory medium (collective: see MemoryMedium.open); it keeps nothing in `run_dir`."""
    return MemoryMedium.open(settings, world)
