"""The one place a boto3 S3 client is built: for the backend's boto3 driver, the compat suite,
the benchmark baselines and the tests, from S3Settings, so they all address, sign and verify
TLS the same way (`S3Settings.tls_verify`)."""

from __future__ import annotations

from typing import Any

from dlio_ext.storage.s3.settings import S3Settings


def boto3_client(
    s: S3Settings,
    *,
    pool: int = 10,
    checksum: str | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> Any:
    """A boto3 S3 client for the store `s` names, making one attempt a request (whoever uses it
    retries, and counts, on its own, or wants the raw answer). `pool`: connections kept for
    threaded transfers (a one-thread loop needs 1); `checksum` (when_required | when_supported,
    default the settings'): whether boto3 adds CRC checksums and validates them; timeouts
    default to the settings'."""
    import boto3
    from botocore.config import Config

    checksum = checksum or s.checksum
    config = Config(
        region_name=s.region,
        connect_timeout=s.connect_timeout if connect_timeout is None else connect_timeout,
        read_timeout=s.read_timeout if read_timeout is None else read_timeout,
        retries={"total_max_attempts": 1},
        # requests are SigV4 either way; without saying so, presigned URLs would be SigV2
        signature_version="s3v4",
        s3={"addressing_style": "path" if s.path_style else "virtual"},
        request_checksum_calculation=checksum,
        response_checksum_validation=checksum,
        max_pool_connections=pool,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s.endpoint,
        region_name=s.region,
        aws_access_key_id=s.access_key.reveal() if s.access_key else None,
        aws_secret_access_key=s.secret_key.reveal() if s.secret_key else None,
        verify=s.tls_verify,
        config=config,
    )
