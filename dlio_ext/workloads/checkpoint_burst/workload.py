"""The registered workload: one instance per rank, its state (the bursts it ran) in the instance."""

from __future__ import annotations

from typing import Any

from dlio_ext.storage.base import Backend
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.checkpoint_burst import plan as plan_
from dlio_ext.workloads.checkpoint_burst import summary
from dlio_ext.workloads.checkpoint_burst.bursts import Bursts
from dlio_ext.workloads.checkpoint_burst.config import Config
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseResult


@register
class CheckpointBurst(Workload):
    """Every rank writes its checkpoint shard at once, then restores one (see the package)."""

    name = "checkpoint_burst"
    Config = Config
    tier0_use = (
        "each checkpoint is written to the tier-0 (the stall), then drained to storage in the background; "
        "restores come from the tier-0 while it holds the checkpoint"
    )

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.bursts = Bursts(ctx)
        self._prepared = False

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return plan_.footprint(cfg, ranks)

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        return plan_.memory(cfg, ranks)

    @classmethod
    def check_tier0(cls, cfg: Config, tier0: Backend, ranks: int) -> None:
        plan_.check_tier0(cfg, tier0, ranks)

    def prepare(self) -> None:
        self.bursts.prepare()
        self._prepared = True

    def run(self) -> list[PhaseResult]:
        if not self._prepared:  # a caller without the harness (a test) may skip prepare
            self.prepare()
        return self.bursts.run()

    def status(self) -> str:
        return self.bursts.status()

    def rank_metrics(self) -> dict[str, Any]:
        st = self.bursts
        cold = st.cold.describe() if st.cold else {}
        return summary.rank_metrics(st.info, st.bursts, st.T0, cold)

    def summarize(self, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return summary.summarize(self.ctx, phases, per_rank)
