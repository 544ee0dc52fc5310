"""Plug-ins found by name: a class registered under its `name`, in a module of the same name.

Workloads (`dlio_ext.workloads.<name>`) and backends (`dlio_ext.storage.<name>`) are each one
module, or one package, holding a class decorated with its table's `register`. Looking a name up
imports that module and nothing else, so adding one is adding a file; only an unknown name
imports them all, to list what is known. A leaf module: it imports nothing of dlio_ext but errors.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
from typing import Any, Generic, TypeVar

from dlio_ext.errors import UsageError

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """The classes of one package, by name; `key` is the config key that names one."""

    def __init__(self, package: str, key: str, noun: str):
        self.package, self.key, self.noun = package, key, noun
        self.classes: dict[str, C] = {}

    def register(self, cls: C) -> C:
        """Class decorator: make `cls` known by its `name`."""
        self.classes[cls.name] = cls
        return cls

    def known(self) -> list[str]:
        """Every name (imports every module of the package: for error messages only; a module
        whose optional client library is not installed is left out)."""
        pkg: Any = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{self.package}.{mod.name}")
        return sorted(self.classes)

    def get(self, name: str) -> C:
        """The class registered as `name`, importing only its own module (or package)."""
        if name not in self.classes and isinstance(name, str) and name.isidentifier():
            if importlib.util.find_spec(f"{self.package}.{name}") is not None:
                importlib.import_module(f"{self.package}.{name}")
        if name not in self.classes:
            raise UsageError(f"{self.key}={name!r} is unknown; known {self.noun}: {', '.join(self.known())}")
        return self.classes[name]
