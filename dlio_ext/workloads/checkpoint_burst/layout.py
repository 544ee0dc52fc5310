"""Checkpoint shard sizes and file names: which bytes every rank of an LLM training job writes.

The arithmetic is DLIO main's (dlio_benchmark/checkpointing/base_checkpointing.py, the engine
MLPerf Storage v2 checkpointing runs), applied to the models and parallel layouts MLPerf Storage
declares (Rules.md, "Table 2 LLM models"; configs/dlio/workload/llama3_*.yaml):

  parameters  P = 2·V·h + L·(2h + h·(h + 2·d_kv) + h² + 3·h·f) + h
              (untied embedding and LM head, per layer two norms, Q/K/V with grouped-query
              attention d_kv = (h / heads)·kv_heads, the output projection, a gated MLP) + final norm
  model state fp16 weights, per rank: the rank's pipeline-stage layers, each tensor divided by TP
              (norms are replicated over TP) and, under ZeRO-3, by DP
  optimizer   fp32 master weights + Adam m + v: 3·(P // (TP·PP·DP)) + 3·5h elements per rank
              (ZeRO >= 1 shards it over every rank; ZeRO-0 over the model-parallel ranks only)

so about 14 bytes per parameter in total. Every integer division is DLIO's, so the totals are
the bytes DLIO writes, and they match MLPerf's stated checkpoint sizes (GiB): 8B 104.70 (105),
70B 911.21 (912), 405B 5,292.25 (5,292), 1T 15,426.6 = 15.07 TiB (MLPerf: "~15-18 TiB").

Why 70B is 911 and not 920: MLPerf's llama3-70b config declares num_attention_heads=128 (Meta's
model has 64), so DLIO's head size is 8192/128 = 64 and the K and V projections come out half
their real width (d_kv = 64·8 = 512, not 1024): 0.67 G fewer parameters, 9.4 GB less. With the
real 64 heads the same arithmetic gives 919.96 GiB. The presets keep MLPerf's 128 so the
bytes written are the bytes MLPerf writes; `custom` takes any dimensions.

1T is not a released model: MLPerf's llama3-1t config is 128 layers, hidden 25,872, FFN 98,304,
192 heads (head size 134 after DLIO's integer division), 32 KV heads, vocabulary 128,256, TP 8 ×
PP 64 × DP 2, ZeRO-1: 1.18 T parameters, 15.07 TiB. (DLIO's older llama_1t.yaml used 32 heads
and 32 KV heads, full multi-head attention: 16.88 TiB; MLPerf's table still prints "18 TB".)

Layouts (directory per checkpoint: global_epoch{e}_step{s}/):
  deepspeed  DLIO main's names. ZeRO-3 (and 0): zero_pp_rank_{dp}_mp_rank_{mp}_model_states.pt;
             ZeRO-1/2: data-parallel rank 0 only, layer_{i}-model_{mp}_model_states.pt per layer
             when PP > 1, else model_{mp}_model_states.pt; every rank:
             zero_pp_rank_{dp}_mp_rank_{mp}_optim_states.pt. ZeRO-0: only the first TP·PP ranks.
  dcp        torch.distributed.checkpoint's FileSystemWriter: __{rank}_{k}.distcp (k < files per
             rank; the rank's model and optimizer bytes, as above) and one .metadata (rank 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALIGN = 4096
LAYOUTS = ("deepspeed", "dcp")
GiB = 1 << 30


@dataclass(frozen=True)
class Model:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int

    def parameters(self) -> int:
        h, f, v, layers = self.hidden_size, self.ffn_hidden_size, self.vocab_size, self.num_layers
        if layers <= 0:
            return 0
        d_kv = (h // self.num_attention_heads) * self.num_kv_heads
        per_layer = h + h * (h + 2 * d_kv) + h * h + h + 2 * f * h + f * h
        return 2 * v * h + per_layer * layers + h


@dataclass(frozen=True)
class Parallel:
    tp: int
    pp: int
    dp: int
    zero_stage: int

    @property
    def mp(self) -> int:
        return self.tp * self.pp

    @property
    def ranks(self) -> int:
        return self.tp * self.pp * self.dp

    def coords(self, rank: int) -> tuple[int, int, int, int]:
        """(tp_rank, pp_rank, dp_rank, mp_rank) of a global rank, in DLIO/Megatron order."""
        return rank % self.tp, (rank // self.tp) % self.pp, rank // self.mp, rank % self.mp


@dataclass(frozen=True)
class Preset:
    model: Model
    parallel: Parallel
    #: the total MLPerf Storage states for this preset, in GiB (its "GB" are GiB), or None
    mlperf_gib: float | None
    source: str


PRESETS: dict[str, Preset] = {
    "llama3_8b": Preset(
        Model(32, 4096, 14336, 32, 8, 128256),
        Parallel(1, 1, 8, 3),
        105.0,
        "MLPerf Storage Rules.md Table 2; configs/dlio/workload/llama3_8b.yaml",
    ),
    "llama3_70b": Preset(
        # num_attention_heads=128 as MLPerf declares it (Meta's Llama 3 70B has 64): see above
        Model(80, 8192, 28672, 128, 8, 128256),
        Parallel(8, 1, 8, 3),
        912.0,
        "MLPerf Storage Rules.md Table 2; configs/dlio/workload/llama3_70b.yaml",
    ),
    "llama3_405b": Preset(
        Model(126, 16384, 53248, 128, 8, 128256),
        Parallel(8, 32, 2, 1),
        5292.0,
        "MLPerf Storage Rules.md Table 2 (5.29 TB); configs/dlio/workload/llama3_405b.yaml",
    ),
    "llama3_1t": Preset(
        Model(128, 25872, 98304, 192, 32, 128256),
        Parallel(8, 64, 2, 1),
        None,  # MLPerf: "18 TB" in its table, 15-18 TiB across DLIO versions; this config: 15,427 GiB
        "MLPerf Storage Rules.md Table 2; configs/dlio/workload/llama3_1t.yaml",
    ),
}


@dataclass(frozen=True)
class ShardFile:
    """One file of one rank's checkpoint: its name inside the checkpoint directory and size."""

    name: str
    nbytes: int
    kind: str  # model | layer | optim | data | metadata


@dataclass(frozen=True)
class Dtypes:
    model: int = 2  # fp16/bf16 weights
    optimizer: int = 4  # fp32 master weights and Adam moments


class ModelLayout:
    """The per-rank shards of a model trained with a (TP, PP, DP, ZeRO) layout, as DLIO writes them."""

    def __init__(self, model: Model, parallel: Parallel, dtypes: Dtypes = Dtypes()):
        if parallel.zero_stage == 3 and parallel.pp > 1:
            # DLIO main asserts PP == 1 when it loads ZeRO-3 states; DeepSpeed has no ZeRO-3 + PP
            raise ValueError(
                "ZeRO-3 with pipeline parallelism > 1 is not a layout DeepSpeed or DLIO supports"
            )
        if model.num_layers and model.num_attention_heads > model.hidden_size:
            raise ValueError("num_attention_heads must not exceed hidden_size")
        self.model, self.par, self.dtypes = model, parallel, dtypes
        self.params = model.parameters()

    @property
    def ranks(self) -> int:
        return self.par.ranks

    # DLIO main's per-layer tensors (elements) -------------------------------------------------
    def layer_elements(self, index: int) -> int:
        m, p = self.model, self.par
        h, f, v, layers = m.hidden_size, m.ffn_hidden_size, m.vocab_size, m.num_layers
        sf = p.dp if p.zero_stage >= 3 else 1
        d_kv = (h // m.num_attention_heads) * m.num_kv_heads
        if index in (0, layers + 1):
            return h * v // p.tp // sf  # embedding, LM head
        if index == layers + 2:
            return h // sf  # final norm
        return (
            h // sf  # input norm
            + h * (h + 2 * d_kv) // p.tp // sf  # Q, K, V
            + h * h // p.tp // sf  # output projection
            + h // sf  # post-attention norm
            + h * 2 * f // p.tp // sf  # gate and up projections
            + h * f // p.tp // sf  # down projection
        )

    def layer_range(self, pp_rank: int) -> tuple[int, int]:
        """Inclusive layer indices of a pipeline stage: 0 is the embedding, L+1 and L+2 the head."""
        layers, pp = self.model.num_layers, self.par.pp
        per, rem = divmod(layers, pp)
        if pp_rank < rem:
            start = pp_rank * (per + 1) + 1
            end = start + per
        else:
            start = rem * (per + 1) + (pp_rank - rem) * per + 1
            end = start + per - 1
        if pp_rank == pp - 1:
            end = layers + 2
        if pp_rank == 0:
            start = 0
        return start, end

    def optimizer_elements(self) -> int:
        p, h = self.par, self.model.hidden_size
        per_rank = self.params // (p.dp * p.mp) if p.zero_stage > 0 else self.params // p.mp
        return 3 * per_rank + 3 * 5 * h if per_rank > 0 else 0

    def writes(self, rank: int) -> bool:
        """ZeRO-0: only the first TP·PP ranks hold state worth saving (DLIO's rank_to_checkpoint)."""
        return self.par.zero_stage != 0 or rank < self.par.mp

    # files --------------------------------------------------------------------------------------
    def model_files(self, rank: int) -> list[ShardFile]:
        if not self.writes(rank) or self.model.num_layers <= 0:
            return []
        _, pp_rank, dp_rank, mp_rank = self.par.coords(rank)
        start, end = self.layer_range(pp_rank)
        b = self.dtypes.model
        if self.par.zero_stage in (1, 2):
            if dp_rank != 0:
                return []
            if self.par.pp > 1:
                return [
                    ShardFile(
                        f"layer_{i}-model_{mp_rank}_model_states.pt", self.layer_elements(i) * b, "layer"
                    )
                    for i in range(start, end + 1)
                ]
            size = sum(self.layer_elements(i) for i in range(start, end + 1)) * b
            return [ShardFile(f"model_{mp_rank}_model_states.pt", size, "model")]
        size = sum(self.layer_elements(i) for i in range(start, end + 1)) * b
        return [ShardFile(f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank}_model_states.pt", size, "model")]

    def optim_files(self, rank: int) -> list[ShardFile]:
        if not self.writes(rank):
            return []
        n = self.optimizer_elements()
        if not n:
            return []
        _, _, dp_rank, mp_rank = self.par.coords(rank)
        name = f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank}_optim_states.pt"
        return [ShardFile(name, n * self.dtypes.optimizer, "optim")]

    def rank_bytes(self, rank: int) -> int:
        return sum(f.nbytes for f in self.model_files(rank) + self.optim_files(rank))

    def total_bytes(self) -> int:
        return sum(self.rank_bytes(r) for r in range(self.ranks))

    def files(self, rank: int, layout: str, files_per_rank: int = 1) -> list[ShardFile]:
        if layout == "deepspeed":
            return self.model_files(rank) + self.optim_files(rank)
        return dcp_files(rank, self.rank_bytes(rank), files_per_rank)


class BytesLayout:
    """`custom` without a model: every rank writes the same number of bytes, split like a model
    (2 bytes of weights to 12 of optimizer state, fp16 + fp32 Adam)."""

    def __init__(self, bytes_per_rank: int, ranks: int):
        self.per_rank, self._ranks = bytes_per_rank, ranks
        self.params = 0

    @property
    def ranks(self) -> int:
        return self._ranks

    def rank_bytes(self, rank: int) -> int:
        return self.per_rank

    def total_bytes(self) -> int:
        return self.per_rank * self._ranks

    def files(self, rank: int, layout: str, files_per_rank: int = 1) -> list[ShardFile]:
        if layout == "dcp":
            return dcp_files(rank, self.per_rank, files_per_rank)
        model = self.per_rank // 7
        out = [ShardFile(f"zero_pp_rank_{rank}_mp_rank_0_model_states.pt", model, "model")] if model else []
        return out + [
            ShardFile(f"zero_pp_rank_{rank}_mp_rank_0_optim_states.pt", self.per_rank - model, "optim")
        ]


def dcp_files(rank: int, nbytes: int, files_per_rank: int) -> list[ShardFile]:
    if nbytes <= 0:
        return []
    k = max(1, min(files_per_rank, nbytes))
    base, extra = divmod(nbytes, k)
    return [ShardFile(f"__{rank}_{i}.distcp", base + (1 if i < extra else 0), "data") for i in range(k)]


def checkpoint_dir(epoch: int, step: int) -> str:
    return f"global_epoch{epoch}_step{step}"


def scaled(nbytes: int, scale: float) -> int:
    """A file's size at `scale`: exact at 1, else rounded up to whole 4 KiB blocks (at least one)."""
    if scale >= 1.0 or nbytes == 0:
        return nbytes
    return max(ALIGN, math.ceil(nbytes * scale / ALIGN) * ALIGN)


def subset_ranks(layout_ranks: int, ranks: int) -> list[int]:
    """Which layout ranks `ranks` processes play: spread evenly, so a subset of a pipeline-parallel
    layout covers first, middle and last stages and both data-parallel halves."""
    if ranks > layout_ranks:
        raise ValueError(f"{ranks} ranks cannot run a subset of a {layout_ranks}-rank layout")
    stride = layout_ranks // ranks
    return [r * stride for r in range(ranks)]


def describe(layout: ModelLayout | BytesLayout) -> dict[str, object]:
    total = layout.total_bytes()
    sizes = [layout.rank_bytes(r) for r in range(layout.ranks)]
    out: dict[str, object] = {
        "layout_ranks": layout.ranks,
        "total_bytes": total,
        "total_GiB": round(total / GiB, 3),
        "rank_bytes_min": min(sizes) if sizes else 0,
        "rank_bytes_max": max(sizes) if sizes else 0,
    }
    if isinstance(layout, ModelLayout):
        out["parameters"] = layout.params
        out["bytes_per_parameter"] = round(total / layout.params, 4) if layout.params else 0.0
    return out
