"""What an S3Backend is configured with: the `storage` group's keys, checked once, with their
environment fallbacks; credentials wrapped so they print as <redacted>."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.settings import Settings, convert, redact_url, setting
from dlio_ext.validate import key_prefix

MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
CLIENTS = ("obstore", "boto3")
CHECKSUMS = ("when_required", "when_supported")
#: the health check (and obstore's upload sweep) must answer fast even when the configured
#: timeouts are generous
CHECK_CONNECT_TIMEOUT = 2.0
CHECK_READ_TIMEOUT = 10.0
CHECK_RETRIES = 2


class Secret:
    """A credential that never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


def _bool(name: str, value: Any) -> bool:
    return convert(name, value, bool)


def _number(name: str, value: Any, kind: type[int] | type[float], low: float, strict: bool = False) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"storage.{name}={value!r} must be {'an integer' if kind is int else 'a number'}"
        ) from None
    if number < low or (strict and number == low):
        raise UsageError(f"storage.{name}={value!r} must be {'>' if strict else '>='} {low:g}")
    return number


@dataclass(frozen=True)
class S3Settings(Settings):
    """Everything an S3Backend is configured with; credentials stay wrapped."""

    bucket: str = setting(env="DLIO_EXT_S3_BUCKET")
    client: str = "obstore"
    endpoint: str | None = setting(None, env="AWS_ENDPOINT_URL")
    prefix: str = "dlio-ext"
    region: str = setting("us-east-1", env="AWS_REGION")
    path_style: bool = True
    access_key: Secret | None = setting(None, env="AWS_ACCESS_KEY_ID", secret=True)
    secret_key: Secret | None = setting(None, env="AWS_SECRET_ACCESS_KEY", secret=True)
    verify: bool = True
    ca_bundle: str | None = None
    part_size: int = 16 * MIB
    concurrency: int = 8
    checksum: str = "when_required"
    retries: int = 5
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    #: bytes this run may store in the bucket (a quota, or what is left of it); 0 = unknown
    quota_bytes: int = 0

    @property
    def tls_verify(self) -> bool | str:
        """The one TLS rule every client built from these settings follows: verify=false checks
        no certificate (ca_bundle is then unused), else the ca_bundle's roots when one is given,
        else the system's (boto3 takes this value as its `verify`)."""
        if not self.verify:
            return False
        return self.ca_bundle or True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> S3Settings:
        """Read a `storage` group (workload_configs/storage/s3.yaml); unset values come from `env`."""
        env = os.environ if env is None else env
        unknown = sorted(str(k) for k in cfg if k not in CONFIG_KEYS)
        if unknown:
            raise UsageError(
                f"storage.{unknown[0]} is not an s3 setting; known: {', '.join(CONFIG_KEYS[1:])}"
            )

        def given(key: str) -> Any:
            value = cfg.get(key)
            return None if value is None or value == "" else value

        client = str(given("client") or "obstore")
        if client not in CLIENTS:
            raise UsageError(f"storage.client={client!r} is not supported; use obstore or boto3")
        endpoint = given("endpoint") or env.get("AWS_ENDPOINT_URL") or None
        if endpoint is not None:
            endpoint = str(endpoint).rstrip("/")
            if not endpoint.startswith(("http://", "https://")):
                raise UsageError(
                    f"storage.endpoint={redact_url(endpoint)!r} must start with http:// or https://"
                )
        bucket = given("bucket") or env.get("DLIO_EXT_S3_BUCKET")
        if not bucket:
            raise UsageError("no S3 bucket: set storage.bucket or DLIO_EXT_S3_BUCKET")
        prefix = cfg.get("prefix", "dlio-ext")
        prefix = "" if prefix is None else str(prefix).strip("/")
        # every key lives under the prefix: '..' or an empty part would make keys other clients
        # resolve elsewhere (obstore refuses them outright)
        if problem := key_prefix("prefix", prefix, allow_empty=True):
            raise UsageError(f"storage.{problem}")
        access = given("access_key") or env.get("AWS_ACCESS_KEY_ID") or None
        secret = given("secret_key") or env.get("AWS_SECRET_ACCESS_KEY") or None
        if bool(access) != bool(secret):
            missing = (
                "storage.secret_key or AWS_SECRET_ACCESS_KEY"
                if access
                else "storage.access_key or AWS_ACCESS_KEY_ID"
            )
            raise UsageError(f"S3 credentials are half set: set {missing} as well")
        ca_bundle = given("ca_bundle")
        if ca_bundle is not None and not os.path.isfile(str(ca_bundle)):
            raise UsageError(f"storage.ca_bundle={ca_bundle!r} is not a readable PEM file")
        part_size = _number("part_size", cfg.get("part_size", 16 * MIB), int, 0)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise UsageError(
                f"storage.part_size={part_size} is outside S3's multipart limits; use 5 MiB (5242880) to 5 GiB"
            )
        checksum = str(given("checksum") or "when_required")
        if checksum not in CHECKSUMS:
            raise UsageError(
                f"storage.checksum={checksum!r} is not supported; use when_required or when_supported"
            )
        backoff_base = _number("backoff_base", cfg.get("backoff_base", 0.1), float, 0)
        backoff_max = _number("backoff_max", cfg.get("backoff_max", 5.0), float, 0)
        return cls(
            bucket=str(bucket),
            client=client,
            endpoint=endpoint,
            prefix=prefix,
            region=str(given("region") or env.get("AWS_REGION") or "us-east-1"),
            path_style=_bool("path_style", cfg.get("path_style", True)),
            access_key=Secret(str(access)) if access else None,
            secret_key=Secret(str(secret)) if secret else None,
            verify=_bool("verify", cfg.get("verify", True)),
            ca_bundle=str(ca_bundle) if ca_bundle is not None else None,
            part_size=part_size,
            concurrency=_number("concurrency", cfg.get("concurrency", 8), int, 1),
            checksum=checksum,
            retries=_number("retries", cfg.get("retries", 5), int, 0),
            backoff_base=backoff_base,
            backoff_max=max(backoff_max, backoff_base),
            connect_timeout=_number(
                "connect_timeout", cfg.get("connect_timeout", 5.0), float, 0, strict=True
            ),
            read_timeout=_number("read_timeout", cfg.get("read_timeout", 60.0), float, 0, strict=True),
            quota_bytes=_number("quota_bytes", cfg.get("quota_bytes", 0), int, 0),
        )


#: the keys of a `storage` group for s3 (workload_configs/storage/s3.yaml)
CONFIG_KEYS = ("type", *(f.name for f in fields(S3Settings)))
