"""checkpoint_burst: every rank writes its LLM checkpoint shard at the same instant, then restores
another rank's shard cold. Measured as a storage engineer would trust it.

What DLIO's checkpoint numbers get wrong, and what this does instead:
- time: every rank is timed; a burst lasts from the first rank's first byte to the last rank's
  last close (fsync included); per-rank p50/p99/max, the straggler ratio (max/median), time to
  first byte, create/open and fsync times are reported apart;
- durability: what a finished write means is the backend's (Backend.durability: fsync per file,
  O_DIRECT, an object store's completed upload), counted and timed by the backend;
- restores are cold (O_DIRECT, else dropped page cache, else posix_fadvise DONTNEED per file;
  summary.json says which was really used) and read another rank's shard (rank shift);
- integrity: every 4 KiB block of every shard carries a 64-bit word derived from (seed,
  checkpoint, writer rank, file, block) and the rest of each chunk comes from a pool of random
  buffers whose xxh3-64 digests are known, so a restoring rank verifies every byte it reads with
  one hash pass and no manifest; any difference is a `corrupt` error and the run is invalid;
- memory: shards stream through a fixed pool of reusable buffers (buffer_pool_bytes, from
  Backend.alloc), so a rank's RSS does not grow with its shard. Async mode is the exception it
  has to be: a snapshot needs host memory to land in (host_buffer_bytes; 0 = the whole shard).

Sizes and names come from `layout` (DLIO main's arithmetic, MLPerf's models). `scale`
shrinks every file for small machines; `subset` runs a few ranks of a large layout.

The package, along its seams: `config` (keys), `layout` (shard sizes and names of a model and
parallel layout), `plan` (who writes which files), `content` (the stamped pool: workloads/
content.py's block-stamped streams, one a file), `engine` (a file written, or read and verified),
`cold` (how a restore is made cold), `bursts` (the timed phases, each a FilePhase of the phase
runner), `summary` (rank metrics, summary.json's section, timeline.csv), `workload` (the
registered class). The names below are what other modules (dlio_ext.dlio.checkpointing) and tests
use.
"""

from __future__ import annotations

from dlio_ext.workloads.checkpoint_burst.config import PRESETS, Config
from dlio_ext.workloads.checkpoint_burst.content import Content
from dlio_ext.workloads.checkpoint_burst.engine import Engine
from dlio_ext.workloads.checkpoint_burst.plan import Plan, PlannedFile, build_layout, footprint, memory
from dlio_ext.workloads.checkpoint_burst.summary import goodput
from dlio_ext.workloads.checkpoint_burst.workload import CheckpointBurst
from dlio_ext.workloads.phases import FileEvent

__all__ = [
    "PRESETS",
    "CheckpointBurst",
    "Config",
    "Content",
    "Engine",
    "FileEvent",
    "Plan",
    "PlannedFile",
    "build_layout",
    "footprint",
    "goodput",
    "memory",
]
