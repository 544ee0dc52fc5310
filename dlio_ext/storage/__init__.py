"""Storage backends: one file each, chosen by the `storage.type` config key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlio_ext.storage.base import Backend, NotFound, ObjectInfo, StorageError, Unsupported, Writer

__all__ = ["Backend", "NotFound", "ObjectInfo", "StorageError", "Unsupported", "Writer", "open_backend"]


def open_backend(cfg: Mapping[str, Any], run_dir: str | None = None) -> Backend:
    """Build the backend a `storage` config group describes (see workload_configs/storage/)."""
    kind = cfg["type"]
    if kind == "posix":
        from dlio_ext.storage.posix import PosixBackend

        root = cfg.get("root") or (f"{run_dir}/data" if run_dir else None)
        if not root:
            raise StorageError("storage.root is not set; give storage.root=/path/on/the/file/system")
        return PosixBackend(
            root=str(root),
            direct=bool(cfg.get("direct", False)),
            # None: the user did not choose (a workload may then ask for fsync, see ask_durable)
            fsync=None if cfg.get("fsync") is None else str(cfg["fsync"]),
            chunk_size=int(cfg.get("chunk_size", 8 << 20)),
        )
    if kind == "s3":
        from dlio_ext.storage.s3 import S3Backend

        return S3Backend.from_config(cfg)
    raise StorageError(f"storage.type={kind!r} is unknown; use posix or s3")
