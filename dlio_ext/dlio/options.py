"""What the adapter reads from DLIO's composed `workload` config, checked before DLIO starts.

dlio-ext's own keys live under `workload.storage.storage_options` (DLIO's main branch uses that
group for its S3 settings too, so configs written for either read alike). DLIO 2.0.0's LoadConfig
reads only the keys it knows, so the extra group passes through it untouched; users add it with
Hydra's `++` because DLIO's YAML files do not declare it.

This module imports nothing from dlio_benchmark: it works on plain mappings, so the checks run
(and fail with one line) before DLIO's heavy imports matter.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.storage.s3 import CONFIG_KEYS as S3_CONFIG_KEYS

#: keys for storage_type=local_fs; giving any of them routes DLIO's data through our posix backend
POSIX_KEYS = {"direct": bool, "fsync": str, "chunk_size": int}
#: keys for storage_type=s3: the S3 backend's settings, less the ones DLIO's config or the
#: environment gives (bucket and prefix come from storage_root; credentials from AWS_*). The
#: backend validates their values, so its rules and messages stay in one place.
S3_KEYS = frozenset(S3_CONFIG_KEYS) - {"type", "bucket", "prefix", "access_key", "secret_key"}
#: DLIO main's spellings, accepted so its S3 configs carry over
ALIASES = {"endpoint_url": "endpoint", "s3_force_path_style": "path_style"}
#: refused on the command line: Hydra copies every override into <run dir>/.hydra/overrides.yaml
SECRET_KEYS = {"access_key", "secret_key", "access_key_id", "secret_access_key", "session_token"}
FSYNC_POLICIES = ("none", "file", "file_and_dir")

SUPPORTED_FORMATS = ("npz",)
SUPPORTED_LOADERS = ("pytorch", "tensorflow")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class AdapterSpec:
    """Where DLIO's data lives and how to reach it; picklable, so DataLoader workers get it too.

    DLIO hands file names around as paths and runs `os.path.abspath` over them
    (ConfigArguments.build_sample_map_iter), so object keys travel as absolute pseudo-paths
    under `uri_root` ("/<bucket>[/<prefix>]") and are mapped back with `key()`.
    """

    kind: str  # "s3" | "posix"
    uri_root: str  # "/<bucket>[/<prefix>]" for s3; the absolute storage_root for posix
    backend_cfg: dict[str, Any]  # a `storage` config for dlio_ext.storage.open_backend; no secrets
    tally_path: str | None = None  # set once the run's output folder is known
    read_slots: int = 1  # reader slots per dataset in the tally (read_threads + 1)

    def key(self, uri: str) -> str:
        """The backend key for a path DLIO produced (absolute, or relative to the cwd)."""
        rel = posixpath.relpath(os.path.abspath(uri), self.uri_root)
        if self.kind == "s3" and (rel == ".." or rel.startswith("../")):
            raise UsageError(f"{uri} lies outside the bucket root {self.uri_root}")
        return "" if rel == "." else rel

    def uri(self, key: str) -> str:
        return posixpath.join(self.uri_root, key) if key else self.uri_root

    def root_key(self, path: str) -> str:
        """The key for a DLIO path meant relative to the storage root (checkpoint_folder).

        DLIO 2.0.0 puts checkpoints relative to the working directory, not storage_root; on our
        backends they live with the data, under the root (the bucket, or storage_root)."""
        norm = posixpath.normpath(str(path))
        if self.kind == "posix" and norm.startswith("/"):
            return self.key(norm)
        norm = norm.lstrip("/")
        return "" if norm == "." else norm


def _section(cfg: Mapping[str, Any], *names: str) -> Mapping[str, Any]:
    for name in names:
        sec = cfg.get(name)
        if sec is not None:
            return sec
    return {}


def _coerce(group: str, key: str, value: Any, want: type) -> Any:
    if want is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{group}.{key} must be true or false, not {value!r}")
    if want is int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise UsageError(f"{group}.{key} must be an integer > 0, not {value!r}")
    if want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        raise UsageError(f"{group}.{key} must be a number >= 0, not {value!r}")
    if value is None or isinstance(value, str):
        return value
    raise UsageError(f"{group}.{key} must be a string, not {value!r}")


def parse(workload: Mapping[str, Any], env: Mapping[str, str] | None = None) -> AdapterSpec | None:
    """The adapter's plan for this workload, or None where DLIO runs untouched.

    Raises UsageError (one line) for anything the adapter cannot honour."""
    env = os.environ if env is None else env
    storage = _section(workload, "storage")
    stype = str(storage.get("storage_type", "local_fs"))
    group = "workload.storage.storage_options"
    raw = dict(storage.get("storage_options") or {})
    for alias, name in ALIASES.items():
        if alias in raw:
            raw[name] = raw.pop(alias)
    secrets = sorted(SECRET_KEYS & raw.keys())
    if secrets:
        raise UsageError(
            f"{group}.{secrets[0]}: credentials are not taken from the command line (Hydra writes every "
            "override into .hydra/overrides.yaml); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )

    if stype == "s3":
        allowed: set[str] | frozenset[str] = S3_KEYS
    elif stype == "local_fs":
        if not raw:
            return None  # plain DLIO: its FileStorage and its own readers and writers
        allowed = set(POSIX_KEYS)
    else:
        if raw:
            raise UsageError(f"{group} is only understood with storage_type local_fs or s3, not {stype}")
        return None
    unknown = sorted(set(raw) - allowed)
    if unknown:
        hint = " (the prefix is part of storage_root=<bucket>/<prefix>)" if unknown[0] == "prefix" else ""
        raise UsageError(
            f"{group}.{unknown[0]} is not a {stype} option; known: {', '.join(sorted(allowed))}{hint}"
        )
    # posix values are checked here (the backend would take bool("maybe") as true); s3 values
    # by the S3 backend itself in phase A
    opts = raw if stype == "s3" else {k: _coerce(group, k, v, POSIX_KEYS[k]) for k, v in raw.items()}

    _check_workload(workload, stype)
    root = storage.get("storage_root")
    if stype == "s3":
        return _s3_spec(root, opts, env)
    if opts.get("fsync", "none") not in FSYNC_POLICIES:
        raise UsageError(f"{group}.fsync must be one of {', '.join(FSYNC_POLICIES)}, not {opts['fsync']!r}")
    absroot = os.path.abspath(str(root or "./"))
    return AdapterSpec(kind="posix", uri_root=absroot, backend_cfg={"type": "posix", "root": absroot, **opts})


def _check_workload(workload: Mapping[str, Any], stype: str) -> None:
    dataset = _section(workload, "dataset")
    reader = _section(workload, "data_reader", "reader")
    fmt = str(dataset.get("format", "tfrecord"))  # DLIO 2.0.0's default when the YAML has none
    if fmt not in SUPPORTED_FORMATS:
        raise UsageError(
            f"dataset format {fmt!r} is not supported on dlio-ext's {stype} backend; "
            f"supported: {', '.join(SUPPORTED_FORMATS)} (set ++workload.dataset.format=npz)"
        )
    loader = str(reader.get("data_loader", "tensorflow"))
    if loader not in SUPPORTED_LOADERS:
        raise UsageError(
            f"data_loader {loader!r} cannot read through dlio-ext's {stype} backend; "
            f"use one of: {', '.join(SUPPORTED_LOADERS)}"
        )
    if reader.get("reader_classname"):
        raise UsageError(
            "reader.reader_classname is set, but dlio-ext installs its own reader for "
            f"storage_type={stype} with storage_options; drop one of the two"
        )
    if stype == "s3" and fork_unsafe(workload) and reader.get("multiprocessing_context") == "fork":
        raise UsageError(
            "reader.multiprocessing_context=fork hangs the DataLoader workers with the obstore client "
            "(its tokio runtime does not survive fork); use spawn or forkserver, or "
            "++workload.storage.storage_options.client=boto3"
        )
    ckpt = _section(workload, "checkpoint")
    custom = str(ckpt.get("checkpoint_mechanism_classname") or "")
    if stype == "s3" and custom and not custom.startswith("dlio_ext."):
        # a foreign mechanism writes to local paths: on s3 that would quietly be the local disk
        raise UsageError(
            f"checkpoint.checkpoint_mechanism_classname={custom} cannot write to s3; drop it "
            "(dlio-ext's own mechanisms, dlio_ext.dlio.*, write through the backend)"
        )


def fork_unsafe(workload: Mapping[str, Any]) -> bool:
    """Whether DLIO would fork DataLoader workers from a process that already runs obstore.

    obstore (Rust, tokio) is not fork-safe: a forked child that touches it waits forever on a
    runtime whose threads stayed in the parent. torch DataLoader workers fork by default; tf.data
    uses threads, and read_threads=0 reads in the rank process itself."""
    storage = _section(workload, "storage")
    reader = _section(workload, "data_reader", "reader")
    client = (storage.get("storage_options") or {}).get("client") or "obstore"
    return (
        str(storage.get("storage_type")) == "s3"
        and client == "obstore"
        and str(reader.get("data_loader", "tensorflow")) == "pytorch"
        and int(reader.get("read_threads", 1) or 0) > 0
    )


def _s3_spec(root: Any, opts: dict[str, Any], env: Mapping[str, str]) -> AdapterSpec:
    given = str(root).strip() if root not in (None, "", "./", ".") else ""
    spec_root = given or env.get("DLIO_EXT_S3_BUCKET", "")
    if not spec_root:
        raise UsageError(
            "storage_type=s3 needs a bucket: ++workload.storage.storage_root=<bucket>[/<prefix>] "
            "(or set DLIO_EXT_S3_BUCKET)"
        )
    if spec_root.startswith("s3://"):
        spec_root = spec_root[len("s3://") :]
    bucket, _, prefix = spec_root.strip("/").partition("/")
    if not _BUCKET.match(bucket):
        raise UsageError(
            f"workload.storage.storage_root={given or spec_root!r}: {bucket!r} is not a valid bucket name "
            "(3-63 characters of a-z, 0-9, '.', '-')"
        )
    prefix = posixpath.normpath(prefix) if prefix else ""
    if prefix in (".", "/"):
        prefix = ""
    cfg: dict[str, Any] = {"type": "s3", "bucket": bucket, "prefix": prefix, **opts}
    return AdapterSpec(kind="s3", uri_root=posixpath.join("/", bucket, prefix).rstrip("/"), backend_cfg=cfg)


def check_paths(workload: Mapping[str, Any], spec: AdapterSpec) -> None:
    """On s3 every DLIO path must land inside the bucket root (no '..', no other absolute path)."""
    if spec.kind != "s3":
        return
    dataset = _section(workload, "dataset")
    ckpt = _section(workload, "checkpoint")
    for name, value in (
        ("dataset.data_folder", dataset.get("data_folder", "./data/")),
        ("checkpoint.checkpoint_folder", ckpt.get("checkpoint_folder", "./checkpoints/")),
    ):
        norm = posixpath.normpath(str(value))
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise UsageError(
                f"workload.{name}={value!r} must be a relative path inside the bucket on storage_type=s3"
            )


_KEY = re.compile(r"(?<![\w.])storage\.(root|bucket|[a-z_]+)\b")


def dlio_key_names(message: str) -> str:
    """Backend errors name dlio-ext's `storage.*` keys; say them as DLIO users write them."""

    def rename(m: re.Match[str]) -> str:
        if m.group(1) in ("root", "bucket"):
            return "workload.storage.storage_root"
        return f"workload.storage.storage_options.{m.group(1)}"

    # credentials are environment-only here: drop the config-key alternatives the backend offers
    message = re.sub(r"\s*\(or storage\.access_key/storage\.secret_key\)", "", message)
    message = re.sub(r"storage\.(access_key|secret_key) or ", "", message)
    return _KEY.sub(rename, message)
