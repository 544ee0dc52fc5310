"""Cold restores: the next restore reads from storage, not from this host's memory, and the
summary says how that was made so."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlio_ext.workloads.context import Context


class ColdRestore:
    """Makes the next restore read from storage, not from this host's memory, and says how.

    The backend knows what its medium can do (Backend.cache_control): O_DIRECT needs nothing;
    a buffered file system is made cold by one rank per host dropping the caches (policy
    auto/drop_caches; root only, refused in most containers) or, where that fails, by every rank
    evicting the files it is about to read; then the backend says how much stayed resident. An
    object store's server cache is not ours to control. The kernel's counters of the restore
    phase say whether it worked (metrics.results.cold_check)."""

    def __init__(self, ctx: Context, policy: str):
        self.ctx, self.policy = ctx, policy
        self.control = ctx.backend.cache_control()
        self.leader = ctx.world.host_leader()
        self.hosts = len(set(ctx.world.hosts()))
        self.ranks_on_host = ctx.world.ranks_on_host()
        self.method = "not needed (no restores)"
        self.notes: list[str] = []
        self.resident_pages = 0
        self.pages = 0

    @property
    def claimed(self) -> str | None:
        """The method to record on a restore phase; None when caches were deliberately kept."""
        return None if self.policy == "none" else self.method

    def prepare(self, keys: Sequence[str]) -> None:
        world, b = self.ctx.world, self.ctx.backend
        if self.policy == "none":
            self.method = "none (warm: caches deliberately kept)"
            return
        if self.control.method == "remote":
            self.method = "remote (server cache not controlled)"
            return
        if not self.control.evicts:
            self.method = self.control.method
            return
        dropped = False
        if self.policy in ("auto", "drop_caches"):
            why = b.drop_caches() if self.leader else None
            verdicts = world.allgather(why)
            dropped = all(v is None for v in verdicts)
            if not dropped:
                reason = next(v for v in verdicts if v is not None)
                note = f"drop_caches refused ({reason}); fell back to {self.control.method}"
                if note not in self.notes:
                    self.notes.append(note)
        if dropped:
            self.method = "drop_caches"
        else:
            self.method = self.control.method
            b.evict(keys)
        r, n = b.resident(keys)
        self.resident_pages += r
        self.pages += n
        world.barrier()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.pages:
            out["resident_after_eviction"] = round(self.resident_pages / self.pages, 6)
        if self.notes:
            out["notes"] = self.notes
        return out
