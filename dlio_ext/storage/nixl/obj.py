"""storage.medium=obj: S3 objects through NIXL's OBJ plugin (not built yet: this module holds its place)."""

from __future__ import annotations

from dlio_ext.errors import UsageError
from dlio_ext.storage.nixl.settings import NixlSettings
from dlio_ext.world import SoloWorld


def open(settings: NixlSettings, run_dir: str | None, world: SoloWorld) -> object:  # noqa: A001
    """The ObjMedium of these settings (a medium.Medium)."""
    raise UsageError("storage.medium=obj is not available yet; use storage.medium=memory")
