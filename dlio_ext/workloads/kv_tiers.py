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
`StorageTier` is the shared tier over any `Backend`: one namespace for all ranks. A later RDMA
tier (NIXL/UCX one-sided reads of a remote memory pool, Mooncake-style) is one more class with
`holds_data = True`: the request loop never asks which tier it has.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

from dlio_ext.storage.base import Backend, NotFound


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
    """

    name = "storage"
    holds_data = True

    def __init__(self, backend: Backend, prefix: str, publish: str = "auto", tag: str = "0"):
        if publish == "auto":
            publish = "rename" if backend.capabilities.get("rename") == "native" else "put"
        if publish not in ("rename", "put"):
            raise ValueError(f"publish={publish!r}: use auto, rename or put")
        self.backend = backend
        self.prefix = prefix.strip("/")
        self.publish = publish
        self.tag = tag
        self._seq = 0
        self._lock = threading.Lock()

    def path(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}"

    def lookup(self, key: str) -> bool:
        return True

    def read(self, key: str, into: memoryview | None) -> int:
        assert into is not None
        return self.backend.get(self.path(key), into)

    def write(self, key: str, data: memoryview | None, nbytes: int) -> list[str]:
        assert data is not None
        final = self.path(key)
        if self.publish == "put":
            self.backend.put(final, data[:nbytes])
            return []
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
            except Exception:
                pass
            raise
        return []

    def delete(self, key: str) -> None:
        self.backend.delete(self.path(key))

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend.name, "prefix": self.prefix, "publish": self.publish}
