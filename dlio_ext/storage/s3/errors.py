"""What went wrong with a request, whichever client sent it, and the StorageError it becomes.

Each driver reduces its SDK's exceptions to a `Failure` (`Driver.classify`); everything after
that is shared: whether to retry, whether it was throttling, and the message, which we build
ourselves from the operation, key, HTTP status and S3 error code, never from an SDK message
(which can echo request headers).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from dlio_ext.storage.base import AccessDenied, NotFound, StorageError, Throttled, Unreachable
from dlio_ext.storage.s3.settings import S3Settings, redact_url

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
THROTTLE_STATUS = frozenset({429, 503})
DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"})
#: transports that mean the server could not be reached at all (kind `unreachable`)
UNREACHABLE = ("refused", "dns", "connect", "timeout")


@dataclass(frozen=True)
class Failure:
    """What went wrong with one request, reduced to what decides retrying and reporting."""

    status: int | None = None  # HTTP status, when the server answered
    code: str | None = None  # S3 error code, when the answer had one
    #: refused | dns | connect | timeout | send (could not send, no detail) | io | tls | checksum |
    #: credentials | other
    transport: str | None = None

    @property
    def throttled(self) -> bool:
        return self.status in THROTTLE_STATUS

    @property
    def retryable(self) -> bool:
        if self.status is not None:
            return self.status in RETRYABLE_STATUS
        return self.transport in UNREACHABLE or self.transport in ("send", "io", "checksum")

    @property
    def denied(self) -> bool:
        return self.status in (401, 403) or self.code in DENIED_CODES


class BodyError(Exception):
    """A response body we read ourselves broke off or timed out (retryable)."""

    def __init__(self, transport: str, done: int = 0, want: int = 0):
        super().__init__(f"{transport} error reading a response body ({done} of {want} bytes)")
        self.transport = transport


class GaveUp(Exception):
    """The retry loop is out of attempts (or the failure is not worth retrying)."""

    def __init__(self, failure: Failure, attempts: int):
        super().__init__(failure)
        self.failure = failure
        self.attempts = attempts


_CODE_CHARS = re.compile(r"^[A-Za-z][A-Za-z0-9.]{0,63}$")


def clean_code(code: object) -> str | None:
    """Keep an S3 error code only if it looks like one (HEAD answers carry the status instead)."""
    text = str(code) if code is not None else ""
    return text if _CODE_CHARS.match(text) else None


def error_for(s: S3Settings, op: str, key: str | None, f: Failure, attempts: int) -> StorageError:
    """The StorageError a request that failed for good raises, in our words."""
    where = f"{op} {key!r}" if key is not None else op
    if f.transport == "send":
        f = Failure(transport=probe_endpoint(s) or "io")
    endpoint = redact_url(s.endpoint) or "the S3 endpoint"
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    if f.status is None:
        if f.transport in UNREACHABLE:
            return Unreachable(f"{where}: {unreachable(s, f.transport)} ({tries})", key)
        if f.transport == "tls":
            return StorageError(
                f"{where}: TLS with {endpoint} failed; check storage.verify and storage.ca_bundle", key
            )
        if f.transport == "credentials":
            return AccessDenied(
                f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", key
            )
        if f.transport == "checksum":
            return StorageError(f"{where}: response checksum mismatch {tries}", key)
        return StorageError(f"{where}: transfer failed ({f.transport} error {tries})", key)
    detail = f"HTTP {f.status}{f' {f.code}' if f.code else ''}"
    if f.code == "NoSuchBucket":
        return StorageError(f"{where}: bucket {s.bucket} does not exist ({detail})", key)
    if f.status == 404:
        return NotFound(f"{where}: no such key ({detail})", key)
    if f.denied:
        return AccessDenied(f"{where}: access denied ({detail}); check the S3 credentials", key)
    if f.throttled:
        return Throttled(f"{where}: throttled ({detail}) {tries}", key)
    if f.retryable:
        return StorageError(f"{where}: server error ({detail}) {tries}", key)
    return StorageError(f"{where}: {detail}", key)


def _host_port(s: S3Settings) -> tuple[str, int]:
    parts = urlsplit(s.endpoint or f"https://s3.{s.region}.amazonaws.com")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def host_port(s: S3Settings) -> str:
    """host:port of the endpoint, for messages (no user:password@, which urlsplit drops)."""
    host, port = _host_port(s)
    host = host or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_endpoint(s: S3Settings) -> str | None:
    """Why a request could not be sent, when the client did not say: one TCP connect to the
    endpoint now (refused on a dead local server in microseconds). None: it accepts."""
    try:
        socket.create_connection(_host_port(s), timeout=min(1.0, s.connect_timeout)).close()
    except ConnectionRefusedError:
        return "refused"
    except socket.gaierror:
        return "dns"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "connect"
    return None


def unreachable(s: S3Settings, transport: str | None) -> str:
    """Why the endpoint cannot be reached, in words, for a transport in UNREACHABLE."""
    hp = host_port(s)
    if transport == "refused":
        return f"connection refused by {hp} (is the server running?)"
    if transport == "dns":
        return f"cannot resolve {hp.rpartition(':')[0]} (DNS lookup failed)"
    if transport == "timeout":
        return (
            f"{hp} timed out (no connection within {s.connect_timeout:g} s or no answer within "
            f"{s.read_timeout:g} s)"
        )
    return f"cannot connect to {hp}"
