"""Any S3-compatible object store, through obstore (the measured default) or boto3 (the reference).

One module a seam:
- `settings`: S3Settings (the `storage` group's keys, checked, with environment fallbacks;
  credentials wrapped), CONFIG_KEYS, `redact_url`;
- `errors`: a request's failure reduced to status / S3 code / transport, and the StorageError it
  becomes (our words, never an SDK message, which can echo request headers);
- `driver`: the `Driver` protocol every client is driven through; `obstore_driver` and
  `boto3_driver` implement it (what each client does its own way is said there);
- `calls`: the one retry loop both clients share (their own retries are off), the store's
  liveness, the part threads and staging buffers;
- `writers`: the streaming writers (both stage the caller's chunks into buffers of their own, so
  no verb holds a caller's buffer after it returns: base.py, "Buffer ownership") and boto3's
  multipart upload;
- `backend`: S3Backend, the verbs of base.Backend over a driver;
- `clients`: the one factory of boto3 clients (backend, compat suite, benchmarks, tests).

Credentials live only inside the clients and in `Secret` wrappers; they appear in no message,
repr or `describe()` output.
"""

from __future__ import annotations

from dlio_ext.storage.s3.backend import S3Backend
from dlio_ext.storage.s3.clients import boto3_client
from dlio_ext.storage.s3.settings import CONFIG_KEYS, S3Settings, redact_url

__all__ = ["CONFIG_KEYS", "S3Backend", "S3Settings", "boto3_client", "redact_url"]
