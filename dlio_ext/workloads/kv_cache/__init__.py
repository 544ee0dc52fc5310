"""kv_cache: LLM inference servers offloading and re-reading KV-cache chunks through a shared tier.

Every MPI rank is one inference server with `users` concurrent users (see `trace` for the
requests they send). For each request the server finds the longest cached prefix of its
context, chunk by chunk, in its CPU-memory tier, then in the tier-0 if the run names one
(`tier0=nixl`: registered memory over the ranks, read one-sidedly), then in the shared storage
tier; the first chunk found nowhere ends the prefix. It loads those chunks, simulates the prefill of the rest
(`prefill_compute_s_per_token`, 0 by default) and stores the new full chunks: to the memory tier
and to storage, synchronously (`write_policy=sync`) or through a bounded write-back queue
drained by background writers (`write_back`). All ranks share one storage namespace, so a chunk
one server wrote is a hit for every other server.

The package, along its seams:
- `config`: the keys, the models (bytes per token), chunk and tier sizes, the preflight's figures;
- `trace`: the users' requests and the chunk keys they touch; `tiers`: the memory, tier-0 and
  storage tiers;
- `chunks`: a chunk's bytes as a function of its key, and their verification;
- `server`: one rank's server (its tiers, buffers and requests); `stats`: what its threads count
  and time, the phases they make, the time series;
- `workload`: the registered `KVCache` (its serving phase through the phase runner's open-loop
  arrivals, cleanup, rank metrics); `summary`: rank 0's section of summary.json.
"""

from dlio_ext.workloads.kv_cache.chunks import ChunkContent
from dlio_ext.workloads.kv_cache.config import (
    DTYPES,
    MODELS,
    Config,
    Model,
    Sizes,
    TierBound,
    footprint,
    memory,
    model_of,
    sizes_of,
    tier0_bound,
    tier_bound,
    trace_spec,
)
from dlio_ext.workloads.kv_cache.server import Server
from dlio_ext.workloads.kv_cache.stats import COUNTERS, LOGS, Stats, timeseries
from dlio_ext.workloads.kv_cache.workload import KVCache
from dlio_ext.workloads.phases import SampleLog

__all__ = [
    "COUNTERS",
    "DTYPES",
    "LOGS",
    "MODELS",
    "ChunkContent",
    "Config",
    "KVCache",
    "Model",
    "SampleLog",
    "Server",
    "Sizes",
    "Stats",
    "TierBound",
    "footprint",
    "memory",
    "model_of",
    "sizes_of",
    "tier0_bound",
    "tier_bound",
    "timeseries",
    "trace_spec",
]
