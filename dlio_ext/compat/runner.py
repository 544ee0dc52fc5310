"""Run the catalogue against one target: guard the bucket, time and classify each probe, clean up.

Everything a run writes lives under `<--prefix>/dlio-ext-compat-<random>/` (plus the same name
with a leading '/', for the leading-slash probe, and at most one bucket of the same name). After
each probe the objects, uploads and buckets it recorded are removed; at the end the run's prefix
is swept and checked empty, and what the sweep still found is reported as `leftovers`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from dlio_ext.compat.probes import REGISTRY, ClientLacks, Ctx, Differs, Probe, Unsupported, answer
from dlio_ext.errors import UsageError
from dlio_ext.storage.s3 import S3Settings, boto3_client, redact_url

OUTCOMES = ("pass", "differs", "unsupported", "error")
RUN_TAG = "dlio-ext-compat-"


@dataclass(frozen=True)
class Target:
    name: str
    settings: S3Settings
    user_prefix: str  # '' when the suite may use the bucket's root (it must then be empty)

    @property
    def secrets(self) -> list[str]:
        s = self.settings
        return [x.reveal() for x in (s.access_key, s.secret_key) if x is not None]


def make_target(
    name: str | None,
    endpoint: str | None,
    bucket: str | None,
    prefix: str | None,
    env: Mapping[str, str],
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    path_style: bool = True,
) -> Target:
    cfg = {
        "type": "s3",
        "client": "boto3",
        "endpoint": endpoint,
        "bucket": bucket,
        "prefix": prefix or "",
        "region": region,
        "access_key": access_key,
        "secret_key": secret_key,
        "path_style": path_style,
    }
    settings = S3Settings.from_config(cfg, env)
    label = name or (urlsplit(settings.endpoint).netloc.rpartition("@")[2] if settings.endpoint else "aws")
    return Target(label, settings, settings.prefix)


def make_client(target: Target, checksum: str = "when_required") -> Any:
    """A boto3 client on the target, one attempt a request: a probe wants the raw answer."""
    return boto3_client(target.settings, pool=20, checksum=checksum, connect_timeout=5, read_timeout=30)


def scrub(text: str, hidden: Iterable[str]) -> str:
    """One line, no credential in it, at most 300 characters."""
    for secret in hidden:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = re.sub(r"(Credential|Signature|AccessKeyId)=[^&\s]+", r"\1=<redacted>", text)
    return " ".join(text.split())[:300]


def guard(client: Any, target: Target) -> None:
    """Refuse a bucket that holds other objects unless a prefix of our own was given."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = target.settings.bucket
    try:
        out = client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code")
        raise UsageError(f"{target.name}: cannot list bucket {bucket!r} (HTTP {status} {code})") from None
    except BotoCoreError as exc:
        raise UsageError(
            f"{target.name}: {redact_url(target.settings.endpoint)} unreachable ({type(exc).__name__})"
        ) from None
    if not target.user_prefix and out.get("Contents"):
        raise UsageError(
            f"{target.name}: bucket {bucket!r} holds other objects; give a prefix of your own with --prefix"
        )


def _delete_keys(client: Any, bucket: str, keys: Iterable[str]) -> None:
    batch = sorted(set(keys))
    for i in range(0, len(batch), 1000):
        client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch[i : i + 1000]], "Quiet": True}
        )


def _cleanup(ctx: Ctx) -> None:
    """Remove what one probe recorded; errors propagate to be reported with the probe."""
    s3 = ctx.s3
    uploads, ctx.uploads = sorted(ctx.uploads), set()
    keys, ctx.made = set(ctx.made), set()
    for key, uid in uploads:
        s3.abort_multipart_upload(Bucket=ctx.bucket, Key=key, UploadId=uid)
    if keys:
        _delete_keys(s3, ctx.bucket, keys)
    buckets, ctx.buckets = sorted(ctx.buckets), set()
    for bucket in buckets:
        try:
            inside = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
            if inside:
                _delete_keys(s3, bucket, inside)
            s3.delete_bucket(Bucket=bucket)
        except ClientError as exc:
            if answer(exc)[1] != "NoSuchBucket":  # gone already (a store that dropped it)
                raise


def _under(client: Any, bucket: str, prefix: str) -> tuple[list[str], list[tuple[str, str]]]:
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    uploads = [
        (u["Key"], u["UploadId"])
        for u in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    ]
    return keys, uploads


def _sweep(client: Any, bucket: str, prefixes: list[str]) -> list[str]:
    """Remove whatever is left under the run's prefixes; return what was found."""
    found: list[str] = []
    for prefix in prefixes:
        keys, uploads = _under(client, bucket, prefix)
        found += keys + [f"{k} (upload)" for k, _ in uploads]
        for key, uid in uploads:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
        if keys:
            _delete_keys(client, bucket, keys)
    return found


def _run_one(p: Probe, ctx: Ctx, hidden: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        outcome, observed = "pass", p.fn(ctx)
    except Differs as exc:
        outcome, observed = "differs", str(exc)
    except Unsupported as exc:
        outcome, observed = "unsupported", str(exc)
    except ClientLacks as exc:
        outcome, observed = "error", str(exc)
    except ClientError as exc:  # the store refused a step AWS accepts
        status, code = answer(exc)
        unsupported = status == 501 or code == "NotImplemented"
        outcome = "unsupported" if unsupported else "differs"
        observed = f"{exc.operation_name} refused: HTTP {status} {code}"
    except Exception as exc:  # a probe that broke, or a store that broke it: report, go on
        outcome, observed = "error", f"{type(exc).__name__}: {exc}"
    cleanup = ""
    try:
        _cleanup(ctx)
    except Exception as exc:
        cleanup = scrub(f"cleanup failed: {type(exc).__name__}: {exc}", hidden)
    return {
        "id": p.id,
        "group": p.group,
        "outcome": outcome,
        "observed": scrub(observed, hidden),
        "aws": p.aws,
        "why": p.why,
        "seconds": round(time.perf_counter() - t0, 3),
        **({"cleanup": cleanup} if cleanup else {}),
    }


def run_target(target: Target, probes: list[Probe] | None = None) -> dict[str, Any]:
    """Run probes (default: the whole catalogue) against one target; the report of that target."""
    probes = list(REGISTRY.values()) if probes is None else probes
    client = make_client(target)
    guard(client, target)
    base = f"{target.user_prefix}/" if target.user_prefix else ""
    prefix = f"{base}{RUN_TAG}{secrets.token_hex(6)}/"
    bucket = target.settings.bucket
    ctx = Ctx(client, make_client(target, "when_supported"), bucket, prefix)
    hidden = target.secrets
    t0 = time.perf_counter()
    results = [_run_one(p, ctx, hidden) for p in probes]
    _delete_keys(client, bucket, ctx.kept)
    leftovers = _sweep(client, bucket, [prefix, "/" + prefix])
    remaining = sum(
        len(k) + len(u) for k, u in (_under(client, bucket, prefix), _under(client, bucket, "/" + prefix))
    )
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    return {
        "name": target.name,
        "endpoint": redact_url(target.settings.endpoint) or "aws",
        "bucket": bucket,
        "prefix": prefix,
        "seconds": round(time.perf_counter() - t0, 2),
        "counts": counts,
        "leftovers": [scrub(k, hidden) for k in leftovers],
        "empty_after": remaining == 0,
        "results": results,
    }


def select(only: list[str] | None = None, groups: list[str] | None = None) -> list[Probe]:
    """Probes by id prefix (`--only`) and group (`--group`); all when neither is given."""
    chosen = [
        p
        for p in REGISTRY.values()
        if (not groups or p.group in groups) and (not only or any(p.id.startswith(o) for o in only))
    ]
    if not chosen:
        raise UsageError("no probe matches --only/--group; see dlio-ext s3-compat --list")
    return chosen
