"""The one place a boto3 S3 client is built: for the backend's boto3 driver, the compat suite,
the benchmark baselines and the tests, from S3Settings, so they all address, sign and verify
TLS the same way (`S3Settings.tls_verify`)."""

from __future__ import annotations

import contextlib
import email.utils
import re
from datetime import datetime
from typing import Any

from dlio_ext.storage.s3.settings import S3Settings

#: the HTTP-date every S3 store sends (RFC 9110's IMF-fixdate), the only form `http_date` reads itself
IMF_FIXDATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


def http_date(value: Any) -> datetime:
    """botocore's timestamp parser, except that an IMF-fixdate ("Sun, 29 Nov 2026 15:53:14 GMT",
    what Last-Modified carries) is read by the stdlib's RFC 5322 parser: ~3 us against ~50 us
    for dateutil's format-guessing one, for the same datetime with botocore's own UTC tzinfo.
    Anything else (ISO 8601 in XML answers, the obsolete HTTP-date forms, epoch numbers) goes to
    botocore's parser."""
    from botocore.utils import parse_timestamp
    from dateutil.tz import tzutc

    if isinstance(value, str) and IMF_FIXDATE.fullmatch(value):
        # a day or month out of range falls through: botocore's parser then says what is wrong
        with contextlib.suppress(ValueError):
            return email.utils.parsedate_to_datetime(value).replace(tzinfo=tzutc())
    parsed: datetime = parse_timestamp(value)
    return parsed


def boto3_client(
    s: S3Settings,
    *,
    pool: int = 10,
    checksum: str | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    fast_dates: bool = False,
) -> Any:
    """A boto3 S3 client for the store `s` names, making one attempt a request (whoever uses it
    retries, and counts, on its own, or wants the raw answer). `pool`: connections kept for
    threaded transfers (a one-thread loop needs 1); `checksum` (when_required | when_supported,
    default the settings'): whether boto3 adds CRC checksums and validates them; timeouts
    default to the settings'. `fast_dates`: parse response timestamps with `http_date` (the
    backend's driver, for which dateutil was a tenth of a 4 KiB GET's CPU); off, the client is
    the stock one a user's code gets (the baselines, the compat suite)."""
    import boto3
    import botocore.session
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
    session = botocore.session.get_session()
    if fast_dates:
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=http_date)
    return boto3.session.Session(botocore_session=session).client(
        "s3",
        endpoint_url=s.endpoint,
        region_name=s.region,
        aws_access_key_id=s.access_key.reveal() if s.access_key else None,
        aws_secret_access_key=s.secret_key.reveal() if s.secret_key else None,
        verify=s.tls_verify,
        config=config,
    )
