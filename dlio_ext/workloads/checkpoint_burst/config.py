"""checkpoint_burst's keys: which model and layout, how many checkpoints and restores, how the
bytes stream (chunk, pool, threads), sync or async, and what a tier-0 in front of storage does. Presets are workload_configs/workload/
checkpoint_burst/*.yaml; the models behind them are layout.PRESETS."""

from __future__ import annotations

from dataclasses import dataclass, field

from dlio_ext.storage.buffers import ALIGN
from dlio_ext.validate import first_problem, key_prefix, one_of, positive
from dlio_ext.workloads.checkpoint_burst import layout as cl

PRESETS = (*cl.PRESETS, "custom")


@dataclass
class Config:
    name: str = "checkpoint_burst"
    preset: str = "llama3_8b"
    # custom model (preset=custom): dimensions, parallel layout, ZeRO stage, bytes per element
    num_layers: int = 0
    hidden_size: int = 0
    ffn_hidden_size: int = 0
    num_attention_heads: int = 0
    num_kv_heads: int = 0
    vocab_size: int = 0
    tp: int = 1
    pp: int = 1
    dp: int = 0  # 0: the number of ranks / (tp * pp)
    zero_stage: int = 3
    model_dtype_bytes: int = 2
    optimizer_dtype_bytes: int = 4
    # custom without a model: every rank writes this many bytes (before scale)
    bytes_per_rank: int = 0
    subset: bool = True
    subset_ranks: list[int] = field(default_factory=list)
    scale: float = 0.002
    layout: str = "deepspeed"
    dcp_files_per_rank: int = 1
    checkpoints: int = 10
    restores: int = 10
    compute_seconds: float = 1.0
    mode: str = "sync"
    host_buffer_bytes: int = 0
    restore_rank_shift: int = -1
    cold_restore: str = "auto"
    chunk_size: int = 16 << 20
    buffer_pool_bytes: int = 64 << 20
    io_threads: int = 1
    # chunks a restore's I/O thread has in flight while it verifies the one before (each a
    # chunk_size read buffer); threads of one file's reads, so one rank keeps several I/Os queued
    read_ahead: int = 4
    # chunks of a file each I/O thread has in flight while it stamps the next (each holds its pool
    # buffer until written, so at most buffer_pool_bytes / chunk_size / io_threads)
    write_behind: int = 4
    verify: bool = True
    keep_checkpoints: int = 0
    cleanup: bool = True
    folder: str = "checkpoints"
    mtbf_hours: float = 0.0
    accelerator_mttf_hours: float = 50000.0
    # with a tier-0 (tier0=...): the newest checkpoints it holds per rank (older ones leave it once
    # drained), where restores come from, and a cap on each rank's drain (MB/s, 0 = none)
    tier0_keep: int = 1
    restore_from: str = "auto"
    drain_mbps: float = 0.0

    def validate(self) -> str | None:
        custom_model = self.preset == "custom" and self.num_layers > 0
        dims = (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "num_kv_heads",
            "vocab_size",
        )
        missing = [d for d in dims if getattr(self, d) <= 0] if custom_model else []
        if self.preset == "custom" and self.num_layers <= 0 and self.bytes_per_rank <= 0:
            missing = ["num_layers"]
        problems = [
            one_of("preset", self.preset, PRESETS),
            one_of("layout", self.layout, cl.LAYOUTS),
            one_of("mode", self.mode, ("sync", "async")),
            one_of("cold_restore", self.cold_restore, ("auto", "drop_caches", "fadvise", "none")),
            one_of("zero_stage", self.zero_stage, (0, 1, 2, 3)),
            f"{missing[0]}={getattr(self, missing[0])}: preset=custom needs the model's dimensions "
            f"({', '.join(dims)}, all > 0) or num_layers=0 and bytes_per_rank > 0"
            if missing
            else None,
            positive("bytes_per_rank", self.bytes_per_rank, allow_zero=True),
            positive("tp", self.tp),
            positive("pp", self.pp),
            positive("dp", self.dp, allow_zero=True),
            positive("model_dtype_bytes", self.model_dtype_bytes),
            positive("optimizer_dtype_bytes", self.optimizer_dtype_bytes),
            f"scale={self.scale} must be > 0 and <= 1 (1 writes the real shard sizes)"
            if not 0 < self.scale <= 1
            else None,
            positive("dcp_files_per_rank", self.dcp_files_per_rank),
            positive("checkpoints", self.checkpoints),
            positive("restores", self.restores, allow_zero=True),
            positive("compute_seconds", self.compute_seconds, allow_zero=True),
            positive("host_buffer_bytes", self.host_buffer_bytes, allow_zero=True),
            positive("io_threads", self.io_threads),
            positive("read_ahead", self.read_ahead),
            positive("write_behind", self.write_behind),
            positive("keep_checkpoints", self.keep_checkpoints, allow_zero=True),
            positive("mtbf_hours", self.mtbf_hours, allow_zero=True),
            positive("accelerator_mttf_hours", self.accelerator_mttf_hours),
            positive("tier0_keep", self.tier0_keep),
            one_of("restore_from", self.restore_from, ("auto", "tier0", "durable")),
            positive("drain_mbps", self.drain_mbps, allow_zero=True),
            f"chunk_size={self.chunk_size} must be a positive multiple of {ALIGN}"
            if self.chunk_size <= 0 or self.chunk_size % ALIGN
            else None,
            f"buffer_pool_bytes={self.buffer_pool_bytes} must hold at least one chunk per I/O thread "
            f"(io_threads x chunk_size = {self.io_threads * self.chunk_size})"
            if self.buffer_pool_bytes < self.io_threads * self.chunk_size
            else None,
            "restore_rank_shift must be >= 0, or -1 for automatic" if self.restore_rank_shift < -1 else None,
            f"subset_ranks={self.subset_ranks} must be distinct ranks >= 0"
            if any(r < 0 for r in self.subset_ranks) or len(set(self.subset_ranks)) != len(self.subset_ranks)
            else None,
            key_prefix("folder", self.folder),
        ]
        if custom_model and self.zero_stage == 3 and self.pp > 1:
            problems.append("zero_stage=3 with pp > 1 is not a layout DeepSpeed or DLIO supports; use pp=1")
        return first_problem(*problems)
