"""The two places where DLIO 2.0.0 has no plug-in hook, patched as narrowly as possible.

Readers and checkpoint mechanisms are registered through DLIO's own hooks (reader_classname,
checkpoint_mechanism_classname; see runner.py). Storage and data generators have none:
StorageFactory and GeneratorFactory are closed if/elif chains. Each patch wraps the factory
method, answers only when this run's AdapterSpec says so, and defers to DLIO otherwise.
"""

from __future__ import annotations

from typing import Any

from dlio_benchmark.common.enumerations import FormatType, StorageType
from dlio_benchmark.data_generator.generator_factory import GeneratorFactory
from dlio_benchmark.storage.storage_factory import StorageFactory
from dlio_benchmark.utils.config import ConfigArguments

from dlio_ext.dlio.options import SUPPORTED_FORMATS, AdapterSpec
from dlio_ext.errors import UsageError

_original: dict[str, Any] = {}


def current_spec() -> AdapterSpec | None:
    return getattr(ConfigArguments.get_instance(), "dlio_ext_spec", None)


def _get_storage(storage_type, namespace, framework=None):
    spec = current_spec()
    if spec is not None and spec.kind == "s3" and storage_type == StorageType.S3:
        from dlio_ext.dlio.storage import ObjectStorage

        return ObjectStorage(spec, namespace)
    # posix: DLIO's FileStorage keeps doing the metadata (mkdir/listdir/glob); only the data
    # path (generator, reader, checkpoints) goes through our backend
    if spec is not None and spec.kind == "posix" and storage_type == StorageType.LOCAL_FS:
        args = ConfigArguments.get_instance()
        if namespace == args.checkpoint_folder and namespace != args.storage_root:
            # BaseCheckpointing creates its folder here: make it where our checkpoints go
            namespace = spec.uri(spec.root_key(namespace))
    return _original["get_storage"](storage_type, namespace, framework)


def _get_generator(type):  # noqa: A002 - DLIO's signature
    spec = current_spec()
    if spec is None:
        return _original["get_generator"](type)
    if type != FormatType.NPZ:
        raise UsageError(
            f"cannot generate {type} data through dlio-ext's {spec.kind} backend; "
            f"supported: {', '.join(SUPPORTED_FORMATS)}"
        )
    from dlio_ext.dlio.generator import BackendNPZGenerator

    return BackendNPZGenerator(spec)


def install() -> None:
    """Idempotent; both factories are called through the class, so patching the class reaches
    every `from ... import StorageFactory` site in DLIO."""
    if _original:
        return
    _original["get_storage"] = StorageFactory.get_storage
    _original["get_generator"] = GeneratorFactory.get_generator
    StorageFactory.get_storage = staticmethod(_get_storage)
    GeneratorFactory.get_generator = staticmethod(_get_generator)
