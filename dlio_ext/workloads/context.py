"""What a workload is handed: the ranks, the backend, the phase runner and its own config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlio_ext.storage.base import Backend
from dlio_ext.workloads.phases import PhaseRunner
from dlio_ext.world import SoloWorld


@dataclass
class Context:
    world: SoloWorld
    backend: Backend
    runner: PhaseRunner
    config: Any  # the workload's validated Config dataclass
    run_dir: Path
    run_id: str
    seed: int
    log: logging.Logger
    #: the tier-0 in front of `backend` (tier0=...), for the workloads that take one
    tier0: Backend | None = None

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def size(self) -> int:
        return self.world.size
