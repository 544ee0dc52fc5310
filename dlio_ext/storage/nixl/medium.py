"""What NixlBackend asks of a medium: the verbs of base.Backend plus the facts describe() reports.

One class per medium, each in its own module (memory.py, file.py, obj.py), each built by its
module's `open(settings, run_dir, world)`. The backend holds no medium's logic: it delegates."""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Protocol, TypedDict

from dlio_ext.storage.base import (
    CacheControl,
    Counters,
    DeviceError,
    Durability,
    Liveness,
    ObjectInfo,
    StorageError,
    Writer,
)


class Report(TypedDict):
    """One rank's facts for describe(), plain so they cross an MPI gather."""

    #: verb ("write", "read") -> the NIXL plugins that served it (query_xfer_backend)
    plugins: dict[str, list[str]]
    #: verb -> UCX transport/device pairs UCX selected for it ("tcp/lo", "rc_mlx5/mlx5_0:1")
    transports: dict[str, list[str]]
    registration_seconds: float
    registrations: int


class Medium(Protocol):
    """A medium of storage=nixl. Every verb returns only once its transfers are DONE: a NIXL
    transfer reads or fills its buffers until then (base.py, "Buffer ownership")."""

    def alloc(self, nbytes: int) -> memoryview:
        """Registered memory, registered once here (timed apart from transfers) and reused."""
        ...

    def put(self, key: str, data: memoryview | bytes) -> None: ...

    def get(self, key: str, into: memoryview) -> int: ...

    def get_range(self, key: str, offset: int, into: memoryview) -> int: ...

    def writer(self, key: str) -> Writer: ...

    def sized_writer(self, key: str, size: int) -> Writer: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...

    def durability(self) -> Durability: ...

    def cache_control(self) -> CacheControl: ...

    def free_bytes(self) -> int | None: ...

    def where(self) -> str: ...

    def room(self) -> tuple[str, str]: ...

    # what a medium built on another backend's verbs (file: posix, obj: s3) does its own way;
    # MediumDefaults gives the answer of a medium without caches, fsyncs or a health check
    def check(self) -> None:
        """Fail fast with a clear StorageError if the medium cannot be used (base.Backend.check)."""
        ...

    def ask_durable(self, source: str) -> Durability: ...

    def local_root(self) -> str | None: ...

    def evict(self, keys: Iterable[str]) -> None: ...

    def cold_read(self, key: str) -> contextlib.AbstractContextManager[None]: ...

    def share(self, counters: Counters, liveness: Liveness) -> None:
        """Count in the backend's Counters and watch its Liveness (what results and the phase
        runner read), where the medium counts fsyncs, retries or errors itself."""
        ...

    def notes(self) -> dict[str, object]:
        """What describe() adds for this medium: how its verbs are served (which go through
        NIXL, which through the OS or an S3 client), in results' words."""
        ...

    def report(self) -> Report:
        """This rank's facts so far: plugins and UCX transports that served transfers,
        registration count and seconds. Local: the backend gathers them over the ranks."""
        ...

    def close(self) -> None:
        """Release what the medium holds. Called on every rank once every rank is done with it."""
        ...


class MediumDefaults(abc.ABC):
    """The answers of a medium that has no health check, no fsync policy, no page cache and no
    tallies of its own (base.Backend's defaults): a medium class inherits what it does not do.
    (The file and obj media inherit these from the posix and s3 backends they extend.)"""

    def check(self) -> None:
        return None

    @abc.abstractmethod
    def writer(self, key: str) -> Writer: ...

    def sized_writer(self, key: str, size: int) -> Writer:
        return self.writer(key)

    def ask_durable(self, source: str) -> Durability:
        return self.durability()

    @abc.abstractmethod
    def durability(self) -> Durability:
        """What a completed put means on this medium: each says its own."""

    def local_root(self) -> str | None:
        return None

    def evict(self, keys: Iterable[str]) -> None:
        return None

    @contextlib.contextmanager
    def cold_read(self, key: str) -> Iterator[None]:
        yield

    def share(self, counters: Counters, liveness: Liveness) -> None:
        return None

    def notes(self) -> dict[str, object]:
        return {}


def round_trip(medium: Medium, key: str, what: str) -> None:
    """One 4 KiB put and get of `key` through `medium` (registered memory both ways), compared,
    then deleted: for a check(), so a plugin that cannot move bytes fails before the first phase."""
    page, back = medium.alloc(4096), medium.alloc(4096)
    page[:] = os.urandom(4096)
    try:
        medium.put(key, page)
        if medium.get(key, back) != 4096 or bytes(back) != bytes(page):
            raise DeviceError(f"a 4 KiB round trip through {what} came back wrong")
    finally:
        with contextlib.suppress(StorageError):
            medium.delete(key)
