"""Typed schemas of the `run` and `storage` sections; workloads declare their own `Config`.

`validate()` returns None or "key=value is wrong because ...; use ..." (the caller adds the
section name), so every range check reads the same to a user.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


def positive(name: str, value: float, *, allow_zero: bool = False) -> str | None:
    if value < 0 or (value == 0 and not allow_zero):
        return f"{name}={value} must be {'>= 0' if allow_zero else '> 0'}"
    return None


def one_of(name: str, value: object, allowed: tuple[object, ...]) -> str | None:
    if value not in allowed:
        return f"{name}={value!r} is not allowed; use one of: {', '.join(map(str, allowed))}"
    return None


def first_problem(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)


@dataclass
class RunSchema:
    results_dir: str = "results"
    dir: str | None = None
    seed: int = 1234
    progress_interval: float = 2.0

    def validate(self) -> str | None:
        return positive("progress_interval", self.progress_interval, allow_zero=True)


@dataclass
class PosixSchema:
    type: str = "posix"
    root: str | None = None
    direct: bool = False
    fsync: str = "none"
    chunk_size: int = 8 << 20

    def validate(self) -> str | None:
        return first_problem(
            one_of("fsync", self.fsync, ("none", "file", "file_and_dir")),
            positive("chunk_size", self.chunk_size),
        )


@dataclass
class S3Schema:
    """The s3 section's keys and types, for Hydra; `validate` defers to the backend's settings."""

    type: str = "s3"
    client: str = "obstore"
    endpoint: str | None = None
    bucket: str | None = None
    prefix: str = "dlio-ext"
    region: str | None = None
    path_style: bool = True
    access_key: str | None = None
    secret_key: str | None = None
    verify: bool = True
    ca_bundle: str | None = None
    part_size: int = 16 << 20
    concurrency: int = 8
    checksum: str = "when_required"
    retries: int = 5
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    def validate(self) -> str | None:
        # the ranges, the environment fallbacks and the redaction of URLs live in one place, the
        # backend's own settings (also used without Hydra: the DLIO adapter, s3-compat); a bad
        # value raises its one-line UsageError from there, already naming storage.<key>
        from dlio_ext.storage.s3 import S3Settings

        S3Settings.from_config(asdict(self))
        return None


RUN_SCHEMA = RunSchema
STORAGE_SCHEMAS: dict[str, type] = {"posix": PosixSchema, "s3": S3Schema}
