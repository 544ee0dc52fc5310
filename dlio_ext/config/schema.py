"""Typed schema of the `run` section (the range checks live in dlio_ext.validate).

Workloads declare their own `Config`; backends their `Settings` (storage.settings), from which
the `storage` section's schema is derived: this module knows neither.

`validate()` returns None or "key=value is wrong because ...; use ..." (the caller adds the
section name), so every range check reads the same to a user.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlio_ext.validate import (  # noqa: F401  (re-exported: the run schema and older callers)
    MAX_IO_DEPTH,
    first_problem,
    io_depth,
    key_prefix,
    one_of,
    positive,
)


@dataclass
class RunSchema:
    results_dir: str = "results"
    dir: str | None = None
    seed: int = 1234
    progress_interval: float = 2.0
    preflight: bool = True
    max_cache_fraction: float = 0.05
    store_timeout_s: float = 20.0
    trials: int = 1

    def validate(self) -> str | None:
        return first_problem(
            positive("trials", self.trials),
            positive("progress_interval", self.progress_interval, allow_zero=True),
            f"max_cache_fraction={self.max_cache_fraction} must be within [0, 1]"
            if not 0 <= self.max_cache_fraction <= 1
            else None,
            positive("store_timeout_s", self.store_timeout_s),
        )


RUN_SCHEMA = RunSchema
