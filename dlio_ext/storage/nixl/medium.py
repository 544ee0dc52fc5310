"""What NixlBackend asks of a medium: the verbs of base.Backend plus the facts describe() reports.

One class per medium, each in its own module (memory.py, file.py, obj.py), each built by its
module's `open(settings, run_dir, world)`. The backend holds no medium's logic: it delegates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypedDict

from dlio_ext.storage.base import CacheControl, Durability, ObjectInfo, Writer


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

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...

    def durability(self) -> Durability: ...

    def cache_control(self) -> CacheControl: ...

    def free_bytes(self) -> int | None: ...

    def where(self) -> str: ...

    def room(self) -> tuple[str, str]: ...

    def report(self) -> Report:
        """This rank's facts so far: plugins and UCX transports that served transfers,
        registration count and seconds. Local: the backend gathers them over the ranks."""
        ...

    def close(self) -> None:
        """Release what the medium holds. Called on every rank once every rank is done with it."""
        ...
