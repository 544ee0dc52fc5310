"""storage.medium=file: files through NIXL's POSIX plugin (not built yet: this module holds its place)."""

from __future__ import annotations

from dlio_ext.errors import UsageError
from dlio_ext.storage.nixl.settings import NixlSettings
from dlio_ext.world import SoloWorld


def open(settings: NixlSettings, run_dir: str | None, world: SoloWorld) -> object:  # noqa: A001
    """The FileMedium of these settings (a medium.Medium)."""
    raise UsageError("storage.medium=file is not available yet; use storage.medium=memory")
