"""Before anything is written: will the run fit the storage, and its buffers the memory?

Each workload class says what it needs (`footprint(cfg, ranks)`: the most bytes it stores at
once, all ranks together; `memory(cfg, ranks)`: the bytes one rank allocates before its clock
starts), each with the keys that drive the number. A run that cannot fit is refused in one
line that names those keys, what is needed, what is there and where, before any byte is stored:
a run that dies of ENOSPC an hour in, or is killed by the OOM killer, has measured nothing.
Rank 0 checks (the harness broadcasts its verdict); memory is checked on rank 0's host, for the
ranks that share it.
"""

from __future__ import annotations

from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import Backend
from dlio_ext.workloads.base import Workload

#: room kept free beyond the estimate: file-system overhead (blocks, directories), logs
DISK_MARGIN = 0.05
DISK_MARGIN_MIN = 1 << 20
#: share of the available memory a run's preallocated buffers may take
MEMORY_FRACTION = 0.8


def size(n: float) -> str:
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} B"


def available_memory() -> int | None:
    """What the kernel says can be allocated without swapping (MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil is a declared dependency; this only guards odd platforms
        return None


def check(
    workload: type[Workload], cfg: Any, backend: Backend, ranks: int, local_ranks: int, disk: bool = True
) -> None:
    """Raise UsageError when the run cannot fit; `local_ranks` share this host's memory. `disk`
    false (run.preflight=false) leaves the storage to fill up, on purpose."""
    per_rank, what = workload.memory(cfg, ranks)
    if per_rank:
        need, avail = per_rank * local_ranks, available_memory()
        if avail is not None and need > avail * MEMORY_FRACTION:
            raise UsageError(
                f"{what} allocate {size(per_rank)} per rank before the run starts ({local_ranks} rank(s) on "
                f"this host: {size(need)}), more than {MEMORY_FRACTION:.0%} of the {size(avail)} of memory "
                "available; lower them"
            )
    need, what = workload.footprint(cfg, ranks)
    if disk and need:
        free = backend.free_bytes() if need else None
        if free is not None and need + max(need * DISK_MARGIN, DISK_MARGIN_MIN) > free:
            where, fix = backend.room()
            raise UsageError(
                f"the run would store {size(need)} at once ({what}), but {where} has {size(free)} free; "
                f"lower them, or {fix}"
            )
