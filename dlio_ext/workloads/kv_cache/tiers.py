"""KV-cache tiers: where a chunk can be found, fastest first.

A `Tier` answers three questions about a chunk key, whatever it is made of:
- `lookup(key)`: is it worth reading here? Local knowledge only, never I/O: a memory tier knows
  exactly; a shared tier cannot know what other servers wrote, so it says yes and lets the read
  find out.
- `read(key, into)`: load it (into the caller's preallocated buffer if the tier `holds_data`);
  raises `NotFound` when absent: a miss costs what the medium makes a miss cost (a 404, an
  ENOENT), as it does in LMCache's remote backends.
- `write(key, data, nbytes)`: keep it; returns the keys it evicted to make room.

`MemoryTier` is a server's CPU-memory tier: an LRU bounded in bytes. It models capacity and
policy, not DRAM bandwidth (a hit moves no bytes: that is not what this benchmark measures).
`StorageTier` is the shared tier over any `Backend`: one namespace for all ranks. `Tier0` is the
same over the run's tier-0 (`tier0=nixl`: registered memory over the ranks, read one-sidedly,
Mooncake-style; or a posix / s3 tier-0) in front of it: a shared cache that evicts what this rank
placed when it is full, since the tier-0 itself never evicts.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Protocol

from dlio_ext.storage.base import Backend, NoSpace, NotFound


class Tier(Protocol):
    name: str
    #: reads and writes move bytes through the caller's buffer (timed, verified); False: bookkeeping only
    holds_data: bool

    def lookup(self, key: str) -> bool: ...

    def read(self, key: str, into: memoryview | None) -> int: ...

    def write(self, key: str, data: memoryview | None, nbytes: int) -> list[str]: ...


class MemoryTier:
    """LRU by bytes; thread-safe. A read refreshes a key; a write evicts the least recently used
    keys until the new one fits. A chunk larger than the whole capacity is not kept."""

    name = "memory"
    holds_data = False

    def __init__(self, capacity_bytes: int):
        self.capacity = int(capacity_bytes)
        self.used = 0
        self.peak = 0
        self.inserts = 0
        self.evictions = 0
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, key: str) -> bool:
        with self._lock:
            return key in self._lru

    def read(self, key: str, into: memoryview | None = None) -> int:
        with self._lock:
            try:
                self._lru.move_to_end(key)
            except KeyError:
                raise NotFound(f"{key}: not in the memory tier", key) from None
            return self._lru[key]

    def write(self, key: str, data: memoryview | None, nbytes: int) -> list[str]:
        if nbytes > self.capacity:
            return []
        evicted: list[str] = []
        with self._lock:
            old = self._lru.pop(key, None)
            if old is not None:
                self.used -= old
            else:
                self.inserts += 1
            self._lru[key] = nbytes
            self.used += nbytes
            while self.used > self.capacity:
                victim, size = self._lru.popitem(last=False)
                self.used -= size
                evicted.append(victim)
            self.evictions += len(evicted)
            self.peak = max(self.peak, self.used)
        return evicted

    def keys(self) -> list[str]:
        """Least recently used first."""
        with self._lock:
            return list(self._lru)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "capacity_bytes": self.capacity,
                "used_bytes": self.used,
                "peak_bytes": self.peak,
                "chunks": len(self._lru),
                "inserts": self.inserts,
                "evictions": self.evictions,
            }


class StorageTier:
    """The shared tier: chunk `key` lives at `<prefix>/<first two hex digits>/<key>` on the backend.

    Publishing: where the medium renames natively (a file system), a chunk is written under a
    private temporary name and renamed into place, so a reader on another rank sees either
    nothing (a miss) or the whole chunk, never a half-written file; where a PUT is atomic (S3),
    it is put in place. Two ranks writing the same chunk write the same bytes (a chunk's content
    is a function of its key), so the race is harmless: the last rename or PUT wins.

    Capacity (`capacity_bytes`, this rank's share of the tier; None = unbounded): every rank
    owns the chunks it wrote and evicts only those, least recently used first, so the ranks
    never talk about evictions and the named chunks are at most the sum of the shares.
    `make_room(key)` reserves a chunk's bytes before its write and deletes as many of this
    rank's oldest chunks as it takes (untimed: the caller runs it before its clock starts);
    `write` turns the reservation into an owned chunk, or releases it when the write fails.
    In-flight writes count against the share, so the named chunks (temporary names included)
    never pass the bound. An evicted or replaced chunk that a reader on some rank still has open
    keeps its space until that read ends (POSIX keeps an unlinked file whole for its readers), so
    the medium may hold up to ranks x max_inflight chunks more for the length of a read.
    LRU, not FIFO: the hot chunks of a serving trace are the shared prefixes (system prompts,
    popular documents) written first, which FIFO would evict first.
    "Used" is what the owner sees: its writes and its own storage hits (`touch`); another rank's
    reads of a chunk do not refresh it (that would take a message per read). A reader whose
    chunk was evicted by its owner meanwhile gets what any absent chunk gives: `NotFound`, a miss.
    """

    name = "storage"
    holds_data = True

    def __init__(
        self,
        backend: Backend,
        prefix: str,
        publish: str = "auto",
        tag: str = "0",
        capacity_bytes: int | None = None,
    ):
        if publish == "auto":
            publish = "rename" if backend.capabilities.get("rename") == "native" else "put"
        if publish not in ("rename", "put"):
            raise ValueError(f"publish={publish!r}: use auto, rename or put")
        self.backend = backend
        self.prefix = prefix.strip("/")
        self.publish = publish
        self.tag = tag
        self.capacity = capacity_bytes
        #: whether this rank keeps the list of the chunks it owns (a bound needs it, a tier-0 always)
        self.tracked = capacity_bytes is not None
        self._seq = 0
        self._lock = threading.Lock()
        self._owned: OrderedDict[str, int] = OrderedDict()  # written by this rank, LRU first
        self._reserved: dict[str, int] = {}  # make_room done, write not finished
        self.used = 0  # owned + reserved bytes
        self.peak = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self.evict_failed = 0

    def path(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}"

    def lookup(self, key: str) -> bool:
        return True

    def read(self, key: str, into: memoryview | None) -> int:
        assert into is not None
        return self.backend.get(self.path(key), into)

    def touch(self, key: str) -> None:
        """This rank used its own chunk `key` again: it becomes the most recently used."""
        if self.tracked:
            with self._lock:
                if key in self._owned:
                    self._owned.move_to_end(key)

    def make_room(self, key: str, nbytes: int) -> list[str]:
        """Reserve `nbytes` for `key` within the share, deleting this rank's least recently used
        chunks until it fits; returns the keys evicted. A failed delete puts its chunk back (it is
        still stored) and raises: the write must not go ahead over the bound."""
        if not self.tracked:
            return []
        victims: list[tuple[str, int]] = []
        with self._lock:
            if key in self._reserved:
                return []
            # written again (another rank that wrote it too may have evicted it): it becomes a
            # reservation like any other, so no thread of this rank evicts it while it is rewritten
            old = self._owned.pop(key, None)
            if old is not None:
                self.used -= old
            self._reserved[key] = nbytes
            self.used += nbytes
            while self.capacity is not None and self.used > self.capacity and self._owned:
                victim, size = self._owned.popitem(last=False)
                self.used -= size
                victims.append((victim, size))
            self.peak = max(self.peak, self.used)
        try:
            return self._drop(victims)
        except BaseException:
            with self._lock:
                self._release(key)
            raise

    def _drop(self, victims: list[tuple[str, int]]) -> list[str]:
        """Delete `victims` (already out of the owned list) from the medium; returns their keys.
        A failed delete puts it and the rest back (they are still stored) and raises."""
        done: list[str] = []
        try:
            for victim, _size in victims:
                # already gone (another rank that wrote it too evicted it): evicted all the same
                with contextlib.suppress(NotFound):
                    self.backend.delete(self.path(victim))
                done.append(victim)
        except BaseException:
            with self._lock:
                self.evict_failed += 1
                for victim, size in reversed(victims[len(done) :]):
                    self._owned[victim] = size
                    self._owned.move_to_end(victim, last=False)
                    self.used += size
            self._count(done, victims)
            raise
        self._count(done, victims)
        return done

    def _count(self, done: list[str], victims: list[tuple[str, int]]) -> None:
        with self._lock:
            self.evictions += len(done)
            self.evicted_bytes += sum(size for _, size in victims[: len(done)])

    def _release(self, key: str) -> None:
        size = self._reserved.pop(key, None)
        if size is not None:
            self.used -= size

    def _settle(self, key: str, nbytes: int, ok: bool) -> None:
        if not self.tracked:
            return
        with self._lock:
            if not ok:
                self._release(key)
            elif self._reserved.pop(key, None) is not None:
                self._owned[key] = nbytes  # its bytes were counted at make_room
            elif key not in self._owned:  # written without make_room: count it now
                self._owned[key] = nbytes
                self.used += nbytes
                self.peak = max(self.peak, self.used)

    def write(self, key: str, data: memoryview | None, nbytes: int) -> list[str]:
        assert data is not None
        evicted = self.make_room(key, nbytes)
        ok = False
        try:
            self._publish(key, data, nbytes)
            ok = True
        finally:
            self._settle(key, nbytes, ok)
        return evicted

    def _publish(self, key: str, data: memoryview, nbytes: int) -> None:
        final = self.path(key)
        if self.publish == "put":
            self.backend.put(final, data[:nbytes])
            return
        with self._lock:
            self._seq += 1
            seq = self._seq
        tmp = f"{self.prefix}/{key[:2]}/.tmp-{self.tag}-{seq}-{key}"
        self.backend.put(tmp, data[:nbytes])
        try:
            self.backend.rename(tmp, final)
        except BaseException:
            try:
                self.backend.delete(tmp)
            except Exception:  # the rename's error is the one to raise; the leftover is listed
                self.backend.leftovers.add([tmp])
            raise

    def delete(self, key: str) -> None:
        self.backend.delete(self.path(key))

    def stats(self) -> dict[str, int | None]:
        with self._lock:
            return {
                "capacity_bytes": self.capacity,
                "used_bytes": self.used,
                "peak_bytes": self.peak,
                "chunks": len(self._owned),
                "evictions": self.evictions,
                "evicted_bytes": self.evicted_bytes,
                "evict_failed": self.evict_failed,
            }

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend.name, "prefix": self.prefix, "publish": self.publish}


class Tier0(StorageTier):
    """The tier-0 (`ctx.tier0`) between the CPU tier and the shared storage: one namespace all
    ranks read, like the storage tier, with the same chunk paths and publishing.

    It is a cache, never the only copy: every chunk placed here is also written to storage (see
    `Server`), so what it lets go of is still found there. The tier-0 itself never evicts (the
    nixl memory tier refuses a put with `NoSpace` when the owner's pool is full), so this tier
    does, as LMCache's and Mooncake's offload engines do for their memory pools: each rank keeps
    the chunks it placed in LRU order (its placements and its own tier-0 hits refresh them) and,
    when a put finds the tier full, deletes its least recently used chunk that lives where the
    new one goes (`Backend.home`: the same owner's pool; anywhere on a tier with no owners) and
    tries again. A put that still finds no room once this rank has nothing left there to give up
    raises `NoSpace`: the chunk is not placed (counted by the caller) and is served from storage.
    `capacity_bytes` (workload.tier0_bytes) adds a bound of the run's own, as on the storage tier.
    No rank deletes another's chunk: a full pool holding only other ranks' chunks waits for them.
    """

    name = "tier0"

    def __init__(self, backend: Backend, prefix: str, tag: str = "0", capacity_bytes: int | None = None):
        super().__init__(backend, prefix, "auto", tag, capacity_bytes)
        self.tracked = True  # the NoSpace eviction needs the list even without a bound
        #: evictions a full tier-0 forced (a refused put), apart from the bound's
        self.evicted_when_full = 0

    def owns(self, key: str) -> bool:
        """Whether this rank placed `key` and has not evicted it (or is placing it now)."""
        with self._lock:
            return key in self._owned or key in self._reserved

    def owned(self) -> list[str]:
        with self._lock:
            return list(self._owned)

    def _victim(self, key: str) -> tuple[str, int] | None:
        """This rank's least recently used chunk that lives where `key` goes, out of the list."""
        home = self.backend.home(self.path(key))
        with self._lock:
            for v in self._owned:
                if home is None or self.backend.home(self.path(v)) == home:
                    size = self._owned.pop(v)
                    self.used -= size
                    return v, size
        return None

    def write(self, key: str, data: memoryview | None, nbytes: int) -> list[str]:
        assert data is not None
        evicted = self.make_room(key, nbytes)
        ok = False
        try:
            while True:
                try:
                    self._publish(key, data, nbytes)
                    ok = True
                    break
                except NoSpace:
                    victim = self._victim(key)
                    if victim is None:
                        raise
                    evicted += self._drop([victim])
                    with self._lock:
                        self.evicted_when_full += 1
        finally:
            self._settle(key, nbytes, ok)
        return evicted

    def stats(self) -> dict[str, int | None]:
        out = super().stats()
        with self._lock:
            out["evicted_when_full"] = self.evicted_when_full
        return out
