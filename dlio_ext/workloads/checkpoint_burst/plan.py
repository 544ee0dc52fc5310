"""What each rank writes and reads: which layout rank every process plays, the files (names,
sizes) of any rank's checkpoint, and what that stores and allocates (the preflight's figures)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import Backend
from dlio_ext.workloads.checkpoint_burst import layout as cl
from dlio_ext.workloads.checkpoint_burst.config import Config
from dlio_ext.workloads.context import Context


@dataclass(frozen=True)
class PlannedFile:
    key: str
    name: str
    nbytes: int
    index: int  # the file's position in its writer's list (part of its content key)
    writer: int  # the layout rank that writes it
    kind: str


def build_layout(cfg: Config, ranks: int) -> cl.ModelLayout | cl.BytesLayout:
    if cfg.preset == "custom" and cfg.num_layers <= 0:
        return cl.BytesLayout(cfg.bytes_per_rank, ranks)
    dtypes = cl.Dtypes(cfg.model_dtype_bytes, cfg.optimizer_dtype_bytes)
    if cfg.preset == "custom":
        model = cl.Model(
            cfg.num_layers,
            cfg.hidden_size,
            cfg.ffn_hidden_size,
            cfg.num_attention_heads,
            cfg.num_kv_heads,
            cfg.vocab_size,
        )
        dp = cfg.dp or max(1, ranks // (cfg.tp * cfg.pp))
        return cl.ModelLayout(model, cl.Parallel(cfg.tp, cfg.pp, dp, cfg.zero_stage), dtypes)
    p = cl.PRESETS[cfg.preset]
    return cl.ModelLayout(p.model, p.parallel, dtypes)


class Plan:
    """Which layout rank each process plays, and the files of any rank's checkpoint."""

    def __init__(self, cfg: Config, ctx: Context):
        self.cfg = cfg
        self.layout = build_layout(cfg, ctx.size)
        n = self.layout.ranks
        if cfg.subset_ranks:
            if len(cfg.subset_ranks) != ctx.size:
                raise UsageError(
                    f"workload.subset_ranks lists {len(cfg.subset_ranks)} ranks but the run has {ctx.size}; "
                    "give one layout rank per process"
                )
            bad = [r for r in cfg.subset_ranks if r >= n]
            if bad:
                raise UsageError(f"workload.subset_ranks={bad} is outside the {n}-rank layout (0..{n - 1})")
            self.roles = list(cfg.subset_ranks)
        elif cfg.subset:
            if ctx.size > n:
                raise UsageError(
                    f"{ctx.size} ranks cannot run a subset of the {n}-rank {cfg.preset} layout; use at most {n}"
                )
            self.roles = cl.subset_ranks(n, ctx.size)
        else:
            if ctx.size != n:
                raise UsageError(
                    f"workload.subset=false runs the whole {n}-rank {cfg.preset} layout, but the run has "
                    f"{ctx.size} ranks; start {n} ranks or set workload.subset=true"
                )
            self.roles = list(range(n))
        self.prefix = f"{ctx.run_id}/{cfg.folder}"

    def files(self, layout_rank: int, ckpt: int) -> list[PlannedFile]:
        d = f"{self.prefix}/{cl.checkpoint_dir(1, ckpt + 1)}"
        out = []
        for i, sf in enumerate(self.layout.files(layout_rank, self.cfg.layout, self.cfg.dcp_files_per_rank)):
            out.append(
                PlannedFile(
                    f"{d}/{sf.name}", sf.name, cl.scaled(sf.nbytes, self.cfg.scale), i, layout_rank, sf.kind
                )
            )
        return out

    def metadata_key(self, ckpt: int) -> str:
        return f"{self.prefix}/{cl.checkpoint_dir(1, ckpt + 1)}/.metadata"


def plan_for(cfg: Config, ranks: int) -> Plan | None:
    """The run's plan, without a run: None when the layout refuses the ranks (run says why)."""
    try:
        return Plan(cfg, cast(Context, SimpleNamespace(size=ranks, run_id="")))
    except UsageError:
        return None


def footprint(cfg: Config, ranks: int) -> tuple[int, str]:
    """Bytes stored at once (the preflight check): a checkpoint of every rank, times the
    checkpoints kept (keep_checkpoints + 1 while the next one is written; all of them otherwise)."""
    plan = plan_for(cfg, ranks)
    if plan is None:
        return 0, "no layout"
    per = sum(f.nbytes for role in plan.roles for f in plan.files(role, 0))
    kept = cfg.checkpoints
    if cfg.keep_checkpoints and cfg.mode == "sync":
        kept = min(cfg.checkpoints, cfg.keep_checkpoints + 1)
    return (
        per * kept,
        f"{per} bytes a checkpoint at workload.scale={cfg.scale:g} x {kept} kept: workload.checkpoints, "
        "workload.keep_checkpoints",
    )


def check_tier0(cfg: Config, tier0: Backend, ranks: int) -> None:
    """A tier-0 run that cannot work, refused before anything is written: async mode (its host
    snapshot is what a tier-0 replaces), or a tier-0 without room for tier0_keep checkpoints."""
    if cfg.mode != "sync":
        raise UsageError(
            f"workload.mode={cfg.mode} with a tier-0: the tier-0 write is the stall already; use workload.mode=sync"
        )
    plan = plan_for(cfg, ranks)
    per = sum(f.nbytes for role in plan.roles for f in plan.files(role, 0)) if plan is not None else 0
    # the newest tier0_keep stay while the next one is written: a failed write never costs the
    # tier-0 its last whole checkpoint
    held = min(cfg.tier0_keep + 1, cfg.checkpoints)
    need, free = per * held, tier0.free_bytes()
    if free is not None and need > free:
        where, fix = tier0.room()
        raise UsageError(
            f"the tier-0 ({where}) has room for {free} bytes but workload.tier0_keep={cfg.tier0_keep} "
            f"checkpoint(s) kept while the next is written ({held} of {per} bytes) need {need}: "
            f"{fix.replace('storage.', 'tier0.')}, or lower workload.tier0_keep or workload.scale"
        )


def memory(cfg: Config, ranks: int) -> tuple[int, str]:
    """Bytes a rank allocates before the clock: the buffer pool, read_ahead + 1 read buffers per
    I/O thread, and in async mode the host ring (host_buffer_bytes; 0 = the whole shard)."""
    need = cfg.buffer_pool_bytes + (cfg.read_ahead + 1) * cfg.io_threads * cfg.chunk_size
    what = (
        f"workload.buffer_pool_bytes={cfg.buffer_pool_bytes} + (workload.read_ahead={cfg.read_ahead} + 1) "
        f"x workload.io_threads={cfg.io_threads} x workload.chunk_size={cfg.chunk_size}"
    )
    if cfg.mode == "async":
        plan = plan_for(cfg, ranks)
        shard = max((sum(f.nbytes for f in plan.files(r, 0)) for r in plan.roles), default=0) if plan else 0
        need += cfg.host_buffer_bytes or shard
        what += f" + workload.host_buffer_bytes={cfg.host_buffer_bytes or shard}" + (
            "" if cfg.host_buffer_bytes else " (0: the whole shard)"
        )
    return need, what
