"""Typed schemas of the `run` and `storage` sections; workloads declare their own `Config`.

`validate()` returns None or "key=value is wrong because ...; use ..." (the caller adds the
section name), so every range check reads the same to a user.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, make_dataclass
from typing import Any, get_type_hints


def positive(name: str, value: float, *, allow_zero: bool = False) -> str | None:
    if value < 0 or (value == 0 and not allow_zero):
        return f"{name}={value} must be {'>= 0' if allow_zero else '> 0'}"
    return None


def one_of(name: str, value: object, allowed: tuple[object, ...]) -> str | None:
    if value not in allowed:
        return f"{name}={value!r} is not allowed; use one of: {', '.join(map(str, allowed))}"
    return None


#: threads (and buffers) a phase may keep in flight per rank: far beyond what any store rewards
MAX_IO_DEPTH = 1024


def io_depth(name: str, value: int) -> str | None:
    if not 0 < value <= MAX_IO_DEPTH:
        return f"{name}={value} must be within 1..{MAX_IO_DEPTH} (threads and buffers per rank)"
    return None


def key_prefix(name: str, value: str, *, allow_empty: bool = False) -> str | None:
    """A user-given path or key prefix must stay under the storage root or bucket prefix."""
    if not value:
        return None if allow_empty else f"{name} is empty; give a relative key prefix such as 'x/y'"
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in value:
        return (
            f"{name}={value!r} must be a relative key prefix such as 'x/y' (no leading '/', "
            "no '.', '..' or empty part): it must stay under storage.root or the bucket prefix"
        )
    return None


def first_problem(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)


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
