"""Typed schemas of the `run` and `storage` sections; workloads declare their own `Config`.

`validate()` returns None or "key=value is wrong because ...; use ..." (the caller adds the
section name), so every range check reads the same to a user.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, make_dataclass
from typing import Any, get_type_hints

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

    def validate(self) -> str | None:
        return first_problem(
            positive("progress_interval", self.progress_interval, allow_zero=True),
            f"max_cache_fraction={self.max_cache_fraction} must be within [0, 1]"
            if not 0 <= self.max_cache_fraction <= 1
            else None,
            positive("store_timeout_s", self.store_timeout_s),
        )


@dataclass
class PosixSchema:
    type: str = "posix"
    root: str | None = None
    direct: bool = False
    fsync: str | None = None  # null: "none", unless the workload asks for durability
    chunk_size: int = 8 << 20

    def validate(self) -> str | None:
        return first_problem(
            one_of("fsync", self.fsync, ("none", "file", "file_and_dir")) if self.fsync is not None else None,
            positive("chunk_size", self.chunk_size),
        )


#: s3 keys that, left null, come from the environment (AWS_ENDPOINT_URL, DLIO_EXT_S3_BUCKET,
#: AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
S3_FROM_ENV = ("endpoint", "bucket", "region", "access_key", "secret_key")


def _s3_schema() -> type:
    """The s3 section's keys and types for Hydra, from the backend's own settings (one list).

    A string may be null (unset: taken from the environment, or the default); `validate` hands
    the values to S3Settings.from_config, where the ranges, the environment fallbacks and the
    redaction of URLs live (it is also used without Hydra: the DLIO adapter, s3-compat); a bad
    value raises its one-line UsageError from there, already naming storage.<key>."""
    from dlio_ext.storage.s3 import S3Settings

    hints = get_type_hints(S3Settings)
    keys: list[tuple[str, Any, Any]] = [("type", str, "s3")]
    for f in fields(S3Settings):
        kind = hints[f.name] if hints[f.name] in (bool, int, float) else str | None
        default = None if f.name in S3_FROM_ENV or f.default is MISSING else f.default
        keys.append((f.name, kind, default))

    def validate(self: Any) -> str | None:
        S3Settings.from_config(asdict(self))
        # every key lives under the prefix: '..' or an empty part would make keys other clients
        # resolve elsewhere (obstore refuses them outright); outer slashes are trimmed as before
        return key_prefix("prefix", str(self.prefix or "").strip("/"), allow_empty=True)

    return make_dataclass("S3Schema", keys, namespace={"validate": validate})


S3Schema = _s3_schema()


RUN_SCHEMA = RunSchema
STORAGE_SCHEMAS: dict[str, type] = {"posix": PosixSchema, "s3": S3Schema}
