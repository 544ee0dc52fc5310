"""Workloads: one module each, exposing `Config` (a dataclass with `validate()`) and `run(ctx)`.

A workload gets a `Context` (world, backend, phase runner, its config) and returns its phases;
it never knows which backend it talks to.
"""

from __future__ import annotations

import importlib
from types import ModuleType

WORKLOADS = {
    "kv_cache": "dlio_ext.workloads.kv_cache",
    "storage_sweep": "dlio_ext.workloads.storage_sweep",
    "checkpoint_burst": "dlio_ext.workloads.checkpoint_burst",
    "metadata": "dlio_ext.workloads.metadata",
}


def registry() -> dict[str, ModuleType]:
    return {name: importlib.import_module(mod) for name, mod in WORKLOADS.items()}
