"""What a workload is, after warp's `Benchmark`: a class with a typed `Config`, registered by name.

The harness builds one instance per rank with a `Context`, calls `prepare` (untimed), `run` (its
timed phases, every one through the phase runner), `rank_metrics` (this rank's own figures, sent
to rank 0) and, on rank 0, `summarize` (the workload's section of summary.json). `footprint` and
`memory` let the preflight check refuse a run that cannot fit before anything is written.

A new workload is one module (or package) under `dlio_ext/workloads/` whose name is the
workload's name, holding a `@register`ed subclass, and the schema of its summary section beside
it (`summary_schema`); nothing else is edited to add it.
"""

from __future__ import annotations

import abc
import inspect
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol

from dlio_ext.registry import Registry
from dlio_ext.storage.base import Backend
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseResult


class WorkloadConfig(Protocol):
    """A workload's `Config`: a dataclass of its keys with defaults; `validate` returns None or
    "key=value is wrong because ...; use ..." (the caller adds "workload.")."""

    name: str

    def validate(self) -> str | None: ...


class Workload(abc.ABC):
    """One workload on one rank. State lives in the instance, never in the context."""

    #: the name users give as workload.name (and the module's name under dlio_ext/workloads/)
    name: ClassVar[str]
    #: the dataclass of its keys (see WorkloadConfig)
    Config: ClassVar[type]
    #: what it does with a tier-0 (`tier0=...`, handed in as ctx.tier0); "" = it takes none, and a
    #: run that names one is refused
    tier0_use: ClassVar[str] = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @classmethod
    def footprint(cls, cfg: Any, ranks: int) -> tuple[int, str]:
        """(bytes the run stores at its peak over all ranks, which keys set that) for the
        preflight check against the storage's free space; (0, "") when it stores nothing big."""
        return 0, ""

    @classmethod
    def memory(cls, cfg: Any, ranks: int) -> tuple[int, str]:
        """(bytes one rank allocates before its first phase, which keys set that)."""
        return 0, ""

    @classmethod
    def summary_schema(cls) -> dict[str, Any] | None:
        """The JSON Schema of the workload's section of summary.json (what `summarize` returns
        under its name), None when it writes none. By default the file shipped beside the code:
        `<module>.schema.json` next to a module `workloads/<name>.py`, `summary.schema.json` in
        a package `workloads/<name>/`. Its `$ref`s may name the summary's common `$defs`
        (metrics.results.schema composes the two)."""
        code = Path(inspect.getfile(cls))
        beside = [code.with_suffix(".schema.json")]
        if code.parent.name == cls.name:
            beside.append(code.with_name("summary.schema.json"))
        found = next((p for p in beside if p.is_file()), None)
        return None if found is None else json.loads(found.read_text())

    @classmethod
    def check_tier0(cls, cfg: Any, tier0: Backend, ranks: int) -> None:
        """Refuse (UsageError, one line) a tier-0 this run cannot use: too small, or a mode that
        has no place for it. Called on rank 0 before anything is written."""
        return None

    def prepare(self) -> None:
        """Untimed set-up before the first phase (nothing here is measured)."""
        return None

    def status(self) -> str:
        """What a run ended now (a signal, a rank lost) must say about the data it wrote beyond
        where it is: e.g. which checkpoints were durable. "" when there is nothing to add. Called
        from the signal thread: it must only read state, never wait."""
        return ""

    @abc.abstractmethod
    def run(self) -> list[PhaseResult]:
        """Every timed phase, in order, each through `ctx.runner`; the same phases on every rank."""

    def rank_metrics(self) -> dict[str, Any]:
        """This rank's own figures beyond its phases (JSON-able), gathered by rank 0."""
        return {}

    def summarize(self, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """Rank 0: the workload's own sections of summary.json from the merged phases and every
        rank's `rank_metrics`."""
        return {}


#: every workload, by name (module `dlio_ext.workloads.<name>`, imported when first named)
WORKLOADS: Registry[type[Workload]] = Registry("dlio_ext.workloads", "workload.name", "workloads")
register = WORKLOADS.register
known = WORKLOADS.known
workload_class = WORKLOADS.get
