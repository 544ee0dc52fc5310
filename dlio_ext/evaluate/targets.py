"""The stores to evaluate (`--targets`) and the suite to run on each (`--suite`): read, checked whole
before anything runs, so that bad input is one line and exit 2 with nothing started.

A targets file (workload_configs/evaluate/stores.example.yaml):

    targets:
      - name: vendor-a                      # S3: endpoint and bucket
        endpoint: https://s3.vendor-a.example
        bucket: bench
        region: us-east-1                   # optional
        prefix: evaluate                    # optional; every key the suite writes lives under it
        access_key_env: VENDOR_A_KEY        # the NAMES of the variables holding the keys
        secret_key_env: VENDOR_A_SECRET     # (default AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
        local_dir: /tmp/s3                  # optional: a SeaweedFS of `dlio-ext s3-server start --dir`,
                                            # which s3-faults may restart
        storage: {client: obstore}          # optional: more storage.<key>=<value> for every run
        prices: {usd_per_tb_month: 20, capacity_tb: 500, gpus: 1024, usd_per_gpu_hour: 2.5}
      - name: nvme                          # POSIX: a root directory
        root: /mnt/nvme/bench
        storage: {direct: true, fsync: file}

Keys themselves never appear in a file, a command line or a result: a run gets them through its
environment, from the named variables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dlio_ext.errors import UsageError

TARGET_KEYS = (
    "name",
    "endpoint",
    "bucket",
    "region",
    "prefix",
    "path_style",
    "access_key_env",
    "secret_key_env",
    "local_dir",
    "root",
    "storage",
    "prices",
)
#: what each price means (docs/evaluate.md); every one is optional, a figure needs only its own
PRICE_KEYS: dict[str, str] = {
    "usd_per_tb_month": "$ per TB (1e12 bytes) of capacity per month",
    "capacity_tb": "usable capacity, TB (1e12 bytes)",
    "fixed_usd_per_month": "fixed $ per month (support, licences, lease)",
    "power_w": "power drawn, W",
    "usd_per_kwh": "$ per kWh",
    "rack_units": "rack units taken",
    "usd_per_rack_unit_month": "$ per rack unit per month",
    "gpus": "GPUs that wait on this store's checkpoints",
    "usd_per_gpu_hour": "$ per GPU-hour",
    "mtbf_hours": "mean time between failures of the whole job, hours (default 50,000 h / gpus)",
}
#: storage keys a target may not set through `storage:` (the suite owns them, or they are secrets)
_OWNED = {"type", "endpoint", "bucket", "region", "prefix", "root", "path_style", "access_key", "secret_key"}
DEFAULT_PREFIX = "dlio-ext-evaluate"


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "s3" or "posix"
    endpoint: str = ""
    bucket: str = ""
    region: str = ""
    prefix: str = ""
    path_style: bool = True
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    local_dir: str = ""
    root: str = ""
    storage: dict[str, Any] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)

    def run_args(self, sub: str) -> list[str]:
        """The storage arguments of a `dlio-ext run` on this target, its data under `sub`."""
        if self.kind == "posix":
            args = ["storage=posix", f"storage.root={Path(self.root) / sub}"]
        else:
            args = [
                "storage=s3",
                f"storage.endpoint={self.endpoint}",
                f"storage.bucket={self.bucket}",
                f"storage.prefix={self.prefix}/{sub}",
                f"storage.path_style={str(self.path_style).lower()}",
            ]
            args += [f"storage.region={self.region}"] if self.region else []
        return args + [f"storage.{k}={_arg(v)}" for k, v in self.storage.items()]

    def credentials(self, env: Mapping[str, str]) -> dict[str, str]:
        """The environment a child process needs for this target's keys (empty for POSIX)."""
        if self.kind == "posix":
            return {}
        out = {
            "AWS_ACCESS_KEY_ID": env[self.access_key_env],
            "AWS_SECRET_ACCESS_KEY": env[self.secret_key_env],
        }
        return out | ({"AWS_REGION": self.region} if self.region else {})

    def secrets(self, env: Mapping[str, str]) -> list[str]:
        """The key values, to hide from anything written (empty for POSIX)."""
        if self.kind == "posix":
            return []
        return [v for v in (env.get(self.access_key_env), env.get(self.secret_key_env)) if v]

    def describe(self) -> dict[str, Any]:
        """What the scorecard records: where, never the keys (only the names of their variables)."""
        from dlio_ext.storage.settings import redact_url

        if self.kind == "posix":
            where: dict[str, Any] = {"root": self.root}
        else:
            where = {
                "endpoint": redact_url(self.endpoint),
                "bucket": self.bucket,
                "prefix": self.prefix,
                "credentials_from": [self.access_key_env, self.secret_key_env],
            }
            where |= {"region": self.region} if self.region else {}
            where |= {"local_dir": self.local_dir} if self.local_dir else {}
        return {"name": self.name, "kind": self.kind, **where, "storage": dict(self.storage)}


def _arg(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def read_yaml(path: str, flag: str) -> Any:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        return yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({type(exc).__name__})") from None


def _prices(where: str, raw: Any) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: prices must be a mapping of {', '.join(PRICE_KEYS)}")
    out: dict[str, float] = {}
    for k, v in raw.items():
        if k not in PRICE_KEYS:
            raise UsageError(f"{where}: unknown price {k!r}; known: {', '.join(PRICE_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise UsageError(f"{where}: prices.{k} must be a number >= 0, not {v!r}")
        if k in ("gpus", "capacity_tb", "mtbf_hours") and v <= 0:
            raise UsageError(f"{where}: prices.{k} must be > 0")
        out[str(k)] = float(v)
    return out


def _text(where: str, entry: dict[str, Any], key: str, required: bool = False) -> str:
    v = entry.get(key)
    if v is None or v == "":
        if required:
            raise UsageError(f"{where}: {key} is required")
        return ""
    if not isinstance(v, str | int | float) or isinstance(v, bool):
        raise UsageError(f"{where}: {key} must be a string, not {type(v).__name__}")
    return str(v)


def _target(where: str, entry: Any) -> Target:
    if not isinstance(entry, dict):
        raise UsageError(f"{where} is not a mapping")
    unknown = sorted(set(map(str, entry)) - set(TARGET_KEYS))
    if unknown:
        raise UsageError(f"{where} has unknown key {unknown[0]!r}; known: {', '.join(TARGET_KEYS)}")
    name = _text(where, entry, "name", required=True)
    where = f"{where} ({name})"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"{where}: name may hold letters, digits, '-', '_' and '.' only")
    storage = entry.get("storage") or {}
    if not isinstance(storage, dict):
        raise UsageError(f"{where}: storage must be a mapping of storage.<key>: value")
    owned = sorted(set(map(str, storage)) & _OWNED)
    if owned:
        raise UsageError(
            f"{where}: storage.{owned[0]} is not set through storage: (use the target's own keys; "
            "credentials only by the names of their variables)"
        )
    prices = _prices(where, entry.get("prices"))
    root, endpoint = _text(where, entry, "root"), _text(where, entry, "endpoint")
    if bool(root) == bool(endpoint):
        raise UsageError(f"{where}: give either endpoint (an S3 store) or root (a POSIX directory)")
    if root:
        extra = sorted(k for k in ("bucket", "region", "prefix", "access_key_env", "secret_key_env",
                                   "local_dir", "path_style") if k in entry)  # fmt: skip
        if extra:
            raise UsageError(f"{where}: {extra[0]} is for S3 targets; a POSIX target has a root")
        return Target(name, "posix", root=root, storage=storage, prices=prices)
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"{where}: endpoint must start with http:// or https://")
    if "@" in urlsplit(endpoint).netloc:  # it would be written into every run's command line
        raise UsageError(
            f"{where}: endpoint holds credentials; name their variables in access_key_env/secret_key_env"
        )
    path_style = entry.get("path_style", True)
    if not isinstance(path_style, bool):
        raise UsageError(f"{where}: path_style must be true or false")
    prefix = _text(where, entry, "prefix").strip("/") or DEFAULT_PREFIX
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UsageError(
            f"{where}: prefix {prefix!r} must be a relative key prefix without '.', '..' or '//'"
        )
    return Target(
        name,
        "s3",
        endpoint=endpoint.rstrip("/"),
        bucket=_text(where, entry, "bucket", required=True),
        region=_text(where, entry, "region"),
        prefix=prefix,
        path_style=path_style,
        access_key_env=_text(where, entry, "access_key_env") or "AWS_ACCESS_KEY_ID",
        secret_key_env=_text(where, entry, "secret_key_env") or "AWS_SECRET_ACCESS_KEY",
        local_dir=_text(where, entry, "local_dir"),
        storage=storage,
        prices=prices,
    )


def load_targets(path: str) -> list[Target]:
    """The targets of a file, each checked alone (keys, kinds, prices); `check` does the rest."""
    doc = read_yaml(path, "--targets")
    entries = doc.get("targets") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"--targets {path}: expected a non-empty list under 'targets:'")
    if isinstance(doc, dict) and set(doc) - {"targets"}:
        raise UsageError(
            f"--targets {path}: unknown key {sorted(set(doc) - {'targets'})[0]!r}; known: targets"
        )
    targets = [_target(f"--targets {path}: target {n}", e) for n, e in enumerate(entries, 1)]
    names = [t.name for t in targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"--targets {path}: two targets are named {dup[0]!r}; give each a name of its own")
    return targets


def check_target(t: Target, env: Mapping[str, str]) -> None:
    """What can be checked before a run: the credential variables are set, the local server runs
    on this endpoint, the store answers and holds the bucket; a POSIX root is a writable directory."""
    if t.kind == "posix":
        root = Path(t.root)
        if not root.is_dir():
            raise UsageError(f"target {t.name}: root {t.root} is not a directory; create it first")
        if not os.access(root, os.W_OK | os.X_OK):
            raise UsageError(f"target {t.name}: root {t.root} is not writable")
        return
    for var in (t.access_key_env, t.secret_key_env):
        if not env.get(var):
            raise UsageError(f"target {t.name}: environment variable {var} is not set (it holds a key)")
    if t.local_dir:
        from dlio_ext.s3server import server_status

        info = server_status(t.local_dir)
        if info is None:
            raise UsageError(
                f"target {t.name}: no SeaweedFS runs in local_dir {t.local_dir}; "
                "start it with dlio-ext s3-server start --dir ..."
            )
        if info.endpoint.rstrip("/") != t.endpoint:
            raise UsageError(
                f"target {t.name}: the SeaweedFS in local_dir {t.local_dir} serves {info.endpoint}, "
                f"not the target's endpoint {t.endpoint}"
            )
    _reachable(t, env)


def _reachable(t: Target, env: Mapping[str, str]) -> None:
    """One HEAD of the bucket, one attempt, short timeouts: an answer other than 200 is bad input."""
    from botocore.exceptions import BotoCoreError, ClientError

    from dlio_ext.compat.runner import make_client, make_target
    from dlio_ext.storage.settings import redact_url

    creds = t.credentials(env)
    target = make_target(
        t.name, t.endpoint, t.bucket, t.prefix, {}, t.region or None,
        creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"], t.path_style,
    )  # fmt: skip
    client = make_client(target)
    try:
        client.head_bucket(Bucket=t.bucket)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        why = {403: "the keys were refused", 404: "no such bucket"}.get(status, f"HTTP {status}")
        raise UsageError(f"target {t.name}: bucket {t.bucket!r} at {redact_url(t.endpoint)}: {why}") from None
    except BotoCoreError as exc:
        raise UsageError(
            f"target {t.name}: endpoint {redact_url(t.endpoint)} unreachable ({type(exc).__name__})"
        ) from None
