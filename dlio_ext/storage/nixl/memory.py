"""storage.medium=memory: a tier of registered memory spread over the ranks.

Data plane: every rank registers a pool of `pool_bytes` once, at open; the pools' metadata and
base addresses are exchanged by one MPI allgather (collective: the harness opens the backend on
every rank at the same point). A put is one one-sided WRITE from the caller's (registered or
staged) buffer into the owner's pool, a get or get_range one READ out of it.

Control plane: a key's owner is fixed by its hash (crc32 % ranks). The owner alone allocates in
its pool and holds the index of its keys, so no two ranks ever hand out the same bytes. Other ranks
reach it with small JSON requests sent as NIXL notifications; whichever thread of the owner is
polling NIXL answers (a control thread per rank, or a thread of the owner waiting for an answer
itself), so an owner busy in its workload, or blocked in an MPI barrier, still serves its peers.
A notification that is not ours, or an answer that cannot be sent (its asker left), is skipped and
the rest of what arrived with it is served.
- put: "reserve" n bytes (or NoSpace: the owner's pool has no room; nothing is overwritten or
  evicted), WRITE, then "commit" the key to those bytes; the reply comes after the index holds
  it, so once put returns every rank finds the key. A key written again points at new bytes; its
  old bytes are freed at commit (concurrent writers of one key: the last commit wins, whole).
- get/get_range: "lookup" pins the key's bytes, READ, then "unpin" (no reply awaited). Bytes a
  reader has pinned are freed only after it unpins, so an overwrite or delete racing a read never
  hands the reader someone else's data.
- stat: lookup without a pin; delete: drop from the index (freed once unpinned); list: every
  rank's keys under the prefix, sorted, merged.
The pool is volatile RAM: nothing is durable, and a rank that leaves takes its keys with it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import (
    CacheControl,
    Durability,
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
#: how long the control thread keeps polling without sleeping after a request (see _serve)
HOT_S = 0.005
#: how long a rank waits for an owner's answer before it counts the owner as unreachable
ANSWER_TIMEOUT_S = 60.0


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
    """What one rank owns: the allocation of its pool and the index of its keys."""

    def __init__(self, pool_bytes: int):
        self.extents = Extents(pool_bytes)
        self.keys: dict[str, Entry] = {}
        self.pinned: dict[int, Entry] = {}  # offset -> entry with readers in flight
        self.lock = threading.Lock()

    def _release(self, e: Entry) -> None:
        e.live = False
        if e.pins == 0:
            self.extents.give(e.offset, e.size)

    def handle(self, op: str, args: list[Any]) -> Any:
        with self.lock:
            if op == "reserve":
                return [self.extents.take(args[0]), self.extents.free_bytes]
            if op == "commit":
                key, off, size = args
                old = self.keys.get(key)
                self.keys[key] = Entry(off, size, time.time())
                if old is not None:
                    self._release(old)
                return None
            if op == "abandon":
                self.extents.give(args[0], args[1])
                return None
            if op == "lookup":
                e = self.keys.get(args[0])
                if e is None:
                    return None
                if args[1]:
                    e.pins += 1
                    self.pinned[e.offset] = e
                return [e.offset, e.size, e.mtime]
            if op == "unpin":
                e = self.pinned.get(args[0])
                if e is not None:
                    e.pins -= 1
                    if e.pins == 0:
                        del self.pinned[e.offset]
                        if not e.live:
                            self.extents.give(e.offset, e.size)
                return None
            if op == "delete":
                e = self.keys.pop(args[0], None)
                if e is not None:
                    self._release(e)
                return e is not None
            if op == "list":
                prefix, after = args
                keys = sorted(k for k in self.keys if k.startswith(prefix) and k > after)
                return [keys[:LIST_PAGE], len(keys) > LIST_PAGE]
        raise ValueError(f"unknown control request {op!r}")


#: requests that get no answer (the sender does not wait)
ONE_WAY = frozenset({"unpin", "abandon"})


class _Call:
    __slots__ = ("done", "value", "failure")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.failure: str | None = None


class MemoryMedium(MediumDefaults):
    """The memory tier as seen from one rank (see the module's docstring)."""

    def __init__(self, settings: NixlSettings, world: SoloWorld, agent: Agent, pool: memoryview):
        self.settings, self.world, self.agent, self.pool = settings, world, agent, pool
        self.rank, self.ranks = world.rank, world.size
        self.shard = Shard(settings.pool_bytes)
        self.names: list[str] = [agent.name] * self.ranks
        self.bases: list[int] = [address(pool)] * self.ranks
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
        #: writers' registered staging, handed back at close/abort and reused (registered once)
        self._spares: list[memoryview] = []
        self._spares_lock = threading.Lock()

    @classmethod
    def open(cls, settings: NixlSettings, world: SoloWorld) -> MemoryMedium:
        """Collective: every rank registers its pool, then one allgather hands everyone the others'
        metadata. A rank that failed alone makes every rank raise (none is left in the gather)."""
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
            medium = cls(settings, world, agent, pool)
            mine = (agent.name, agent.agent.get_agent_metadata(), address(pool))
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
            for r, (_, (name, md, base)) in enumerate(everyone):
                medium.names[r], medium.bases[r] = name, base
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

    def _pump(self) -> bool:
        """Take every notification that arrived and act on it: answer requests, hand answers to
        the calls waiting for them. One thread at a time; True if anything arrived."""
        if not self._pump_lock.acquire(blocking=False):
            return False
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
        """The control thread: answers peers while this rank's workload does anything else. It
        polls often right after traffic and backs off to 1 ms when idle, so an idle tier costs
        little CPU on a shared machine."""
        last = time.perf_counter()
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
            # longer the tier stays idle, up to 1 ms.
            quiet = now - last
            if quiet >= HOT_S:
                time.sleep(min(quiet / 10, 1e-3))

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
        deadline = time.perf_counter() + ANSWER_TIMEOUT_S
        spins = 0
        # counted under a lock: one lost increment (threads of a rank asking at once) would leave
        # the count at -1 once they are done, and the control thread, seeing it non-zero, would
        # never serve peers again
        with self._waiting_lock:
            self._waiting += 1
        try:
            while not call.done:
                if not self._pump():
                    spins += 1
                    if spins > 50:
                        time.sleep(20e-6)  # let the control thread (holding the pump) run
                if time.perf_counter() > deadline:
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

    def _move(self, op: str, mv: memoryview, owner: int, offset: int, key: str) -> None:
        """WRITE all of `mv` to, or READ it from, `owner`'s pool at `offset`; done when it returns."""
        n = len(mv)
        start = address(mv) if n else 0
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

    def store(self, key: str, mv: memoryview) -> None:
        """put's body: reserve, WRITE, commit (see the module's docstring)."""
        n = len(mv)
        owner = self.owner(key)
        offset, free = self._ask(owner, "reserve", n)
        if offset is None:
            raise NoSpace(
                f"{key}: the nixl memory tier is full: rank {owner}'s pool has {free} of "
                f"{self.settings.pool_bytes} bytes free, no {Extents.span(n)}-byte run for this object "
                "(raise storage.pool_bytes or run more ranks)",
                key,
            )
        try:
            if n:
                self._move("WRITE", mv, owner, offset, key)
        except BaseException:
            self._ask(owner, "abandon", offset, n)  # the bytes were never the key's: free them
            raise
        self._ask(owner, "commit", key, offset, n)

    def put(self, key: str, data: memoryview | bytes) -> None:
        self.store(key, memoryview(data).cast("B"))

    def _read(self, key: str, offset: int, into: memoryview, whole: bool) -> int:
        if offset < 0:  # the READ would start in the bytes before the key's: another key's data
            raise StorageError(f"{key}: offset {offset} is negative", key)
        owner = self.owner(key)
        found = self._ask(owner, "lookup", key, True)
        if found is None:
            raise NotFound(f"no such key in the nixl memory tier: {key}", key)
        base, size, _ = found
        try:
            if whole and size > len(into):
                raise StorageError(f"{key}: {size} bytes do not fit a {len(into)}-byte buffer", key)
            take = max(0, min(len(into), size - offset))
            if take:
                self._move("READ", into[:take], owner, base + offset, key)
            return take
        finally:
            self._ask(owner, "unpin", base)

    def get(self, key: str, into: memoryview) -> int:
        return self._read(key, 0, into, whole=True)

    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        return self._read(key, offset, into, whole=False)

    def writer(self, key: str) -> Writer:
        return _TierWriter(self, key)

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
        return f"the nixl memory tier ({self.ranks} rank(s) x {self.settings.pool_bytes} bytes)"

    def room(self) -> tuple[str, str]:
        return self.where(), "raise storage.pool_bytes or run more ranks"

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


def open(settings: NixlSettings, run_dir: str | None, world: SoloWorld) -> MemoryMedium:  # noqa: A001
    """The memory medium (collective: see MemoryMedium.open); it keeps nothing in `run_dir`."""
    return MemoryMedium.open(settings, world)
