"""NixlBackend: storage=nixl, the verbs of base.Backend delegated to one medium (memory, file,
obj), plus what every medium shares: the facts describe() reports, gathered over the ranks at
close, and the `require_rdma` verdict."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from dlio_ext.storage.base import Backend, CacheControl, Durability, ObjectInfo, Writer, register
from dlio_ext.storage.nixl.agent import ib_note, is_rdma, load_nixl, log_file_for
from dlio_ext.storage.nixl.medium import Medium, Report
from dlio_ext.storage.nixl.settings import NixlSettings
from dlio_ext.world import SoloWorld, get_world


def merge(reports: list[Report]) -> dict[str, Any]:
    """Every rank's facts as one: the union of plugins and transports by verb, registrations summed."""
    plugins: dict[str, set[str]] = {}
    transports: dict[str, set[str]] = {}
    for r in reports:
        for verb, names in r["plugins"].items():
            plugins.setdefault(verb, set()).update(names)
        for verb, names in r["transports"].items():
            transports.setdefault(verb, set()).update(names)
    return {
        "nixl_plugins": {v: sorted(n) for v, n in sorted(plugins.items())},
        "ucx_transports": {v: sorted(n) for v, n in sorted(transports.items())},
        "registration_seconds": sum(r["registration_seconds"] for r in reports),
        "registrations": sum(r["registrations"] for r in reports),
    }


@register
class NixlBackend(Backend):
    name = "nixl"
    Settings = NixlSettings

    def __init__(self, settings: NixlSettings, medium: Medium, world: SoloWorld):
        super().__init__()
        self.settings = settings
        self.medium = medium
        self.world = world
        medium.share(self.counters, self.liveness)
        self._facts: dict[str, Any] | None = None  # every rank's, once gathered at close

    @classmethod
    def from_settings(cls, settings: NixlSettings, run_dir: str | None = None) -> NixlBackend:
        """Collective for medium=memory (the pools' metadata is exchanged by MPI allgather): the
        harness opens the backend on every rank at the same point."""
        world = get_world()
        # first of all: the one-line error when NIXL is missing, and the environment UCX reads
        load_nixl(log_file_for(run_dir, world.rank))
        module = importlib.import_module(f"dlio_ext.storage.nixl.{settings.medium}")
        return cls(settings, module.open(settings, run_dir, world), world)

    # verbs: the medium's ---------------------------------------------------------------------
    def alloc(self, nbytes: int) -> memoryview:
        return self.medium.alloc(nbytes)

    def put(self, key: str, data: memoryview | bytes) -> None:
        self.medium.put(key, data)

    def get(self, key: str, into: memoryview) -> int:
        return self.medium.get(key, into)

    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        return self.medium.get_range(key, offset, into)

    def writer(self, key: str) -> Writer:
        return self.medium.writer(key)

    def sized_writer(self, key: str, size: int) -> Writer:
        # the memory medium places the object at once; file and obj stream as writer does
        return self.medium.sized_writer(key, size)

    def stat(self, key: str) -> ObjectInfo:
        return self.medium.stat(key)

    def list(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        return self.medium.list(prefix, delimiter)

    def delete(self, key: str) -> None:
        self.medium.delete(key)

    def durability(self) -> Durability:
        return self.medium.durability()

    def home(self, key: str) -> int | None:
        return self.medium.home(key)

    def ask_durable(self, source: str) -> Durability:
        return self.medium.ask_durable(source)

    def check(self) -> None:
        self.medium.check()

    def local_root(self) -> str | None:
        return self.medium.local_root()

    def evict(self, keys: Iterable[str]) -> None:
        self.medium.evict(keys)

    def cold_read(self, key: str) -> contextlib.AbstractContextManager[None]:
        return self.medium.cold_read(key)

    def cache_control(self) -> CacheControl:
        return self.medium.cache_control()

    def free_bytes(self) -> int | None:
        return self.medium.free_bytes()

    def where(self) -> str:
        return self.medium.where()

    def room(self) -> tuple[str, str]:
        return self.medium.room()

    # what served the transfers -----------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """Plugins and UCX transports that served transfers, registration cost: every rank's
        once gathered at close, this rank's before."""
        return self._facts if self._facts is not None else merge([self.medium.report()])

    def rdma(self) -> bool:
        """Whether an RDMA transport carried any data (per UCX's own report)."""
        return any(is_rdma(t) for names in self.facts()["ucx_transports"].values() for t in names)

    def describe(self) -> dict[str, object]:
        facts = self.facts()
        return {
            **super().describe(),
            **self.medium.notes(),
            **facts,
            "rdma": self.rdma(),
            "transport_source": "UCX_PROTO_INFO (what UCX selected), not the configuration",
            "ucx_modules": ib_note(),
        }

    def invalid_reasons(self) -> list[str]:
        if not self.settings.require_rdma or self.rdma():
            return []
        used = self.facts()["ucx_transports"]
        seen = "; ".join(f"{v}: {', '.join(n)}" for v, n in used.items()) or "none reported"
        return [f"storage.require_rdma=true but no RDMA transport carried the transfers (UCX used {seen})"]

    def close(self) -> None:
        """Collective: every rank's facts are gathered (which also keeps every pool alive until
        every rank is done with the tier), then the medium lets go of its memory."""
        if self._facts is not None:
            return
        if sys.exc_info()[0] is not None:
            # closed while an error unwinds this rank alone (the harness's `finally`): the others
            # may sit in another collective, and the harness is about to abort them all; a gather
            # here could hang before it does
            self._facts = merge([self.medium.report()])
        else:
            self._facts = merge(self.world.allgather(self.medium.report()))
        self.medium.close()
