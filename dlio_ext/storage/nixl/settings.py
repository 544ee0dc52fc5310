"""The keys of workload_configs/storage/nixl.yaml, for every medium at once.

The obj keys are named as the s3 backend names them (same environment fallbacks), so one set of
exported variables serves `storage=s3` and `storage=nixl storage.medium=obj` alike."""

from __future__ import annotations

from dataclasses import dataclass

from dlio_ext.storage.posix import FSYNC_POLICIES
from dlio_ext.storage.settings import Settings, redact_url, setting
from dlio_ext.validate import key_prefix

MEDIA = ("memory", "file", "obj")
CHECKSUMS = ("when_required", "when_supported")


def _transports(name: str, value: str) -> str | None:
    # UCX refuses an empty list ("The TLs list is empty") with an error that names no key
    if not [t for t in value.split(",") if t.strip()]:
        return f"{name}={value!r} names no transport; leave it null for UCX's default or give e.g. tcp or rc,cuda_copy"
    return None


@dataclass(frozen=True)
class NixlSettings(Settings):
    """Everything a NixlBackend is configured with; secrets never leave it."""

    medium: str = setting("memory", choices=MEDIA)
    #: memory: bytes of registered memory each rank lends to the tier
    pool_bytes: int = setting(1 << 30, low=0, strict=True)
    #: UCX_TLS for NIXL's UCX (null: UCX's default; never an empty list)
    transports: str | None = setting(None, check=_transports)
    #: UCX_NET_DEVICES for NIXL's UCX (null: UCX's default, every device)
    net_devices: str | None = None
    #: a run whose transfers no RDMA transport carried is invalid
    require_rdma: bool = False
    # obj: as storage=s3 names them
    endpoint: str | None = setting(None, env="AWS_ENDPOINT_URL")
    bucket: str | None = setting(None, env="DLIO_EXT_S3_BUCKET")
    region: str = setting("us-east-1", env="AWS_REGION")
    access_key: str | None = setting(None, env="AWS_ACCESS_KEY_ID", secret=True)
    secret_key: str | None = setting(None, env="AWS_SECRET_ACCESS_KEY", secret=True)
    prefix: str = "dlio-ext"
    checksum: str = setting("when_required", choices=CHECKSUMS)
    # file
    #: the directory under test; unset: <run dir>/data
    root: str | None = None
    direct: bool = False
    #: None: the user did not choose ("none", unless a workload asks for durability), as for posix
    fsync: str | None = setting(None, choices=FSYNC_POLICIES)

    def check(self) -> str | None:
        if self.medium == "obj":
            if not self.bucket:
                return "bucket is not set for medium=obj; set storage.bucket or DLIO_EXT_S3_BUCKET"
            if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
                return f"endpoint={redact_url(self.endpoint)!r} must start with http:// or https://"
            if bool(self.access_key) != bool(self.secret_key):
                unset, env, given = (
                    ("secret_key", "AWS_SECRET_ACCESS_KEY", "access_key")
                    if self.access_key
                    else ("access_key", "AWS_ACCESS_KEY_ID", "secret_key")
                )
                return f"{unset} is not set while storage.{given} is; set storage.{unset} or {env}"
            prefix = self.prefix.strip("/")
            if problem := key_prefix("prefix", prefix, allow_empty=True):
                return problem
        return None
