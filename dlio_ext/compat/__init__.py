"""`dlio-ext s3-compat`: a catalogue of S3 behaviours probed against real endpoints.

dlio-ext s3-compat [--endpoint URL]... [--bucket B] [--prefix P] [--out DIR]
dlio-ext s3-compat --targets targets.yaml [--out DIR]
dlio-ext s3-compat --list [--markdown]

Endpoint, bucket and credentials come from the same places as the s3 backend's: flags, then
AWS_ENDPOINT_URL, DLIO_EXT_S3_BUCKET, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_REGION.
A targets file lists several stores, naming the environment variables that hold each one's keys:

    targets:
      - name: seaweedfs
        endpoint: http://127.0.0.1:8333
        bucket: data
        prefix: scratch            # optional
        access_key_env: SW_KEY     # default AWS_ACCESS_KEY_ID
        secret_key_env: SW_SECRET  # default AWS_SECRET_ACCESS_KEY
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlio_ext.compat.probes import REGISTRY
from dlio_ext.compat.report import catalogue_markdown, catalogue_text, table, write
from dlio_ext.compat.runner import Target, make_target, run_target, select
from dlio_ext.errors import UsageError

TARGET_KEYS = (
    "name",
    "endpoint",
    "bucket",
    "prefix",
    "region",
    "path_style",
    "access_key_env",
    "secret_key_env",
)


def _from_file(path: str, env: Mapping[str, str]) -> list[Target]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--targets {path}: cannot read it ({type(exc).__name__})") from None
    entries = doc.get("targets") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"--targets {path}: expected a non-empty list under 'targets:'")
    targets = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise UsageError(f"--targets {path}: entry {n} is not a mapping")
        unknown = sorted(set(map(str, entry)) - set(TARGET_KEYS))
        if unknown:
            raise UsageError(
                f"--targets {path}: entry {n} has unknown key {unknown[0]!r}; known: {', '.join(TARGET_KEYS)}"
            )
        key_var = str(entry.get("access_key_env") or "AWS_ACCESS_KEY_ID")
        secret_var = str(entry.get("secret_key_env") or "AWS_SECRET_ACCESS_KEY")
        targets.append(
            make_target(
                entry.get("name"),
                entry.get("endpoint"),
                entry.get("bucket"),
                entry.get("prefix"),
                env,
                region=entry.get("region"),
                access_key=env.get(key_var) or None,
                secret_key=env.get(secret_var) or None,
                path_style=entry.get("path_style", True),
            )
        )
    return targets


def run(
    targets: list[Target], only: list[str] | None = None, groups: list[str] | None = None
) -> dict[str, Any]:
    probes = select(only, groups)
    t0 = time.perf_counter()
    reports = [run_target(t, probes) for t in targets]
    return {
        "suite": "dlio-ext s3-compat",
        "probes": len(probes),
        "seconds": round(time.perf_counter() - t0, 2),
        "targets": reports,
    }


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="dlio-ext s3-compat", description="Probe S3 endpoints for AWS compatibility."
    )
    parser.add_argument("--endpoint", action="append", help="endpoint URL (repeat for side by side)")
    parser.add_argument("--bucket", help="bucket (default: DLIO_EXT_S3_BUCKET)")
    parser.add_argument("--prefix", help="a prefix of your own; required when the bucket holds other objects")
    parser.add_argument(
        "--targets", help="YAML file of targets (name, endpoint, bucket, credential env var names)"
    )
    parser.add_argument("--out", help="directory for s3-compat.json and s3-compat.md")
    parser.add_argument("--only", action="append", help="run probes whose id starts with this (repeatable)")
    parser.add_argument("--group", action="append", help="run this group only (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--markdown", action="store_true", help="with --list: the catalogue as Markdown")
    args = parser.parse_args(list(argv))
    if args.list:
        print(
            catalogue_markdown() if args.markdown else catalogue_text(), end="\n" if not args.markdown else ""
        )
        return 0
    if args.targets and (args.endpoint or args.bucket or args.prefix):
        raise UsageError(
            "--targets names endpoints, buckets and prefixes itself; drop --endpoint/--bucket/--prefix"
        )
    if args.targets:
        targets = _from_file(args.targets, env)
    else:
        endpoints = args.endpoint or [None]
        targets = [make_target(None, e, args.bucket, args.prefix, env) for e in endpoints]
    if len({t.name for t in targets}) != len(targets):
        raise UsageError("two targets share a name; give each a name of its own in --targets")
    report = run(targets, args.only, args.group)
    print(table(report))
    if args.out:
        for path in write(report, Path(args.out)):
            print(f"wrote {path}", file=sys.stderr)
    return 0


__all__ = ["REGISTRY", "main", "run"]
