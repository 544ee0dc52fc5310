"""Storage backends: one module each, chosen by the `storage.type` config key.

The table of backends lives in storage.base (`register`, `backend_class`): `backend_class(name)`
imports `dlio_ext.storage.<name>` and nothing else, so a new backend is one new file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlio_ext.storage.base import (
    Backend,
    NotFound,
    ObjectInfo,
    StorageError,
    Unsupported,
    Writer,
    backend_class,
)

__all__ = [
    "Backend",
    "NotFound",
    "ObjectInfo",
    "StorageError",
    "Unsupported",
    "Writer",
    "backend_class",
    "open_backend",
    "storage_schema",
]


def open_backend(cfg: Mapping[str, Any], run_dir: str | None = None) -> Backend:
    """Build the backend a `storage` config group describes (see workload_configs/storage/);
    bad settings raise one UsageError line."""
    cls = backend_class(str(cfg.get("type")))
    return cls.from_settings(cls.Settings.from_config(cfg), run_dir)


def storage_schema(name: str) -> type:
    """The typed schema config.load validates a `storage` group of type `name` against."""
    cls = backend_class(name)
    return cls.Settings.schema(cls.name)
