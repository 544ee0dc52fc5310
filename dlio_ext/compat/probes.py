"""The S3 compatibility catalogue: one small function per behaviour, registered with `@probe`.

A probe sends real requests through `Ctx` and either returns what it observed (outcome `pass`)
or raises `Differs` (the store answered, but not as AWS documents), `Unsupported` (the store says
it does not implement it, or cannot be asked) or `ClientLacks` (this client cannot send it).
Anything else it raises is an `error`. Every object and upload a probe makes goes through `Ctx`,
which remembers it so that the runner can remove it after the probe, whatever happened.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
import time
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
MANY = 1001  # one key more than a ListObjectsV2 page
CONSISTENCY_ROUNDS = 20


class Differs(Exception):
    """The store answered, not as AWS documents; the message says what it did."""


class Unsupported(Exception):
    """The store does not implement this (or the suite may not try it here)."""


class ClientLacks(Exception):
    """This client cannot send the request (a missing optional package)."""


@dataclass(frozen=True)
class Probe:
    id: str
    group: str
    aws: str  # what AWS documents
    why: str  # what a difference means for an AI workload
    fn: Callable[[Ctx], str]


REGISTRY: dict[str, Probe] = {}
GROUPS = (
    "integrity",
    "conditional",
    "multipart",
    "range",
    "listing",
    "keys",
    "delete",
    "presign",
    "object",
    "consistency",
)


def probe(id: str, aws: str, why: str) -> Callable[[Callable[[Ctx], str]], Callable[[Ctx], str]]:
    group = id.split(".", 1)[0]
    assert group in GROUPS and id not in REGISTRY, id

    def register(fn: Callable[[Ctx], str]) -> Callable[[Ctx], str]:
        REGISTRY[id] = Probe(id, group, aws, why, fn)
        return fn

    return register


# the context a probe works in -------------------------------------------------------------------


class Ctx:
    """One target: a bucket, a prefix this run owns, boto3 clients, and a record of what was made."""

    def __init__(self, client: Any, crc_client: Any, bucket: str, prefix: str):
        self.s3 = client  # retries off, checksums only when required
        self.crc = crc_client  # the same, but the SDK's default checksums on (when_supported)
        self.bucket = bucket
        self.prefix = prefix  # ends with '/'
        self.made: set[str] = set()
        self.uploads: set[tuple[str, str]] = set()
        self.buckets: set[str] = set()
        self.kept: set[str] = set()
        self.shared: dict[str, Any] = {}

    def key(self, name: str) -> str:
        return self.prefix + name

    def put(self, name: str, body: bytes = b"x", client: Any = None, **kw: Any) -> dict[str, Any]:
        key = self.key(name)
        self.made.add(key)
        return (client or self.s3).put_object(Bucket=self.bucket, Key=key, Body=body, **kw)

    def get(self, name: str, **kw: Any) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self.key(name), **kw)["Body"].read()

    def head(self, name: str, **kw: Any) -> dict[str, Any]:
        return self.s3.head_object(Bucket=self.bucket, Key=self.key(name), **kw)

    def create_upload(self, name: str, client: Any = None, **kw: Any) -> str:
        key = self.key(name)
        self.made.add(key)
        uid = (client or self.s3).create_multipart_upload(Bucket=self.bucket, Key=key, **kw)["UploadId"]
        self.uploads.add((key, uid))
        return str(uid)

    def upload_part(self, name: str, uid: str, n: int, body: bytes, client: Any = None, **kw: Any) -> str:
        out = (client or self.s3).upload_part(
            Bucket=self.bucket, Key=self.key(name), UploadId=uid, PartNumber=n, Body=body, **kw
        )
        return str(out["ETag"])

    def complete(
        self, name: str, uid: str, parts: list[dict[str, Any]], client: Any = None
    ) -> dict[str, Any]:
        out = (client or self.s3).complete_multipart_upload(
            Bucket=self.bucket, Key=self.key(name), UploadId=uid, MultipartUpload={"Parts": parts}
        )
        self.uploads.discard((self.key(name), uid))
        return out

    def list(self, **kw: Any) -> dict[str, Any]:
        kw.setdefault("Prefix", self.prefix)
        return self.s3.list_objects_v2(Bucket=self.bucket, **kw)

    def many(self) -> list[str]:
        """MANY keys under `many/`, made once per run (listing and batch delete share them)."""
        if "many" not in self.shared:
            names = [f"many/{i:05d}" for i in range(MANY)]
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda n: self.put(n, b""), names))
            keys = [self.key(n) for n in names]
            self.made.difference_update(keys)
            self.kept.update(keys)  # removed at the end of the run, not after the probe
            self.shared["many"] = keys
        return list(self.shared["many"])


# helpers ----------------------------------------------------------------------------------------


def answer(exc: BaseException) -> tuple[int | None, str | None]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        raise exc
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status, response.get("Error", {}).get("Code")


def expect_error(call: Callable[[], Any], status: int, *codes: str) -> str:
    """The call must fail with this status (and one of these codes, when given)."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        got_status, got_code = answer(exc)
        seen = f"HTTP {got_status} {got_code or ''}".strip()
        if got_status == status and (not codes or got_code in codes):
            return seen
        if got_status == 501 or got_code == "NotImplemented":
            raise Unsupported(seen) from None
        raise Differs(f"{seen}, AWS answers {status} {'/'.join(codes)}".strip()) from None
    raise Differs(f"accepted, AWS answers {status} {'/'.join(codes)}".strip())


def status_of(call: Callable[[], Any]) -> tuple[int | None, str | None, Any]:
    """(HTTP status, error code or None, response or None) of one call."""
    from botocore.exceptions import ClientError

    try:
        out = call()
    except ClientError as exc:
        return (*answer(exc), None)
    return out["ResponseMetadata"]["HTTPStatusCode"], None, out


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def crt_checksum(algorithm: str, data: bytes) -> str:
    """`data`'s CRC32C or CRC64NVME, base64 as S3 sends it, computed by awscrt (the library the
    SDK uses for them). The probe sends it as the header itself: dlio-ext keeps botocore off its
    CRT code paths (`BOTO_DISABLE_CRT`, dlio_ext/__init__.py), so botocore would not compute it."""
    if importlib.util.find_spec("awscrt") is None:
        raise ClientLacks("client lacks awscrt")
    from awscrt import checksums

    if algorithm == "CRC32C":
        return b64(checksums.crc32c(data).to_bytes(4, "big"))
    return b64(checksums.crc64nvme(data).to_bytes(8, "big"))


def same(expected: bytes, got: bytes, what: str = "body") -> None:
    if got != expected:
        raise Differs(f"{what} differs: {len(got)} bytes back, {len(expected)} sent")


# integrity --------------------------------------------------------------------------------------

DATA = bytes(range(256)) * 41  # 10,496 bytes


def _checksum_round_trip(ctx: Ctx, algorithm: str, client: Any = None, value: str | None = None) -> str:
    """PUT with `algorithm`'s checksum (botocore computes it, or `value` is sent as given), then
    check that PutObject and HeadObject(ChecksumMode=ENABLED) return it, and `value` if given."""
    name = f"cs/{algorithm.lower()}"
    field = f"Checksum{algorithm}"
    given = {field: value} if value else {}
    out = ctx.put(name, DATA, client=client, ChecksumAlgorithm=algorithm, **given)
    sent = out.get(field)
    if not sent:
        raise Differs(f"PutObject answer carries no {field}")
    if value and sent != value:
        raise Differs(f"PutObject echoes {field}={sent!r}, not the {value!r} sent")
    head = ctx.head(name, ChecksumMode="ENABLED")
    if head.get(field) != sent:
        raise Differs(f"HeadObject(ChecksumMode=ENABLED) returns {field}={head.get(field)!r}")
    return f"{field} stored and returned" + (f" ({value}, as awscrt computes it)" if value else "")


@probe(
    "integrity.crc32-default",
    "boto3 >= 1.36 sends CRC32 by default (when_supported); S3 stores it and returns it on HEAD/GET",
    "stores that drop the checksum give no end-to-end check of checkpoint and shard bytes",
)
def crc32_default(ctx: Ctx) -> str:
    name = "cs/default"
    out = ctx.put(name, DATA, client=ctx.crc)
    if not out.get("ChecksumCRC32"):
        raise Differs("the SDK's default CRC32 is not echoed by PutObject")
    got = ctx.crc.get_object(Bucket=ctx.bucket, Key=ctx.key(name), ChecksumMode="ENABLED")
    same(DATA, got["Body"].read())
    if got.get("ChecksumCRC32") != crc32_b64(DATA):
        raise Differs(f"GetObject returns ChecksumCRC32={got.get('ChecksumCRC32')!r}")
    return "CRC32 stored, returned and validated by the SDK"


@probe(
    "integrity.crc32c",
    "x-amz-checksum-crc32c is stored and returned (the SDK computes it with awscrt)",
    "CRC32C is the checksum of choice for large shards; without it clients fall back or fail",
)
def crc32c(ctx: Ctx) -> str:
    return _checksum_round_trip(ctx, "CRC32C", value=crt_checksum("CRC32C", DATA))


@probe(
    "integrity.crc64nvme",
    "x-amz-checksum-crc64nvme is stored and returned (AWS's new default full-object checksum)",
    "newer SDKs default to CRC64NVME; a store that rejects it breaks uploads after an SDK upgrade",
)
def crc64nvme(ctx: Ctx) -> str:
    return _checksum_round_trip(ctx, "CRC64NVME", value=crt_checksum("CRC64NVME", DATA))


@probe(
    "integrity.sha256",
    "x-amz-checksum-sha256 is stored and returned",
    "SHA-256 is what obstore sends; a store that ignores it gives its users no integrity check",
)
def sha256(ctx: Ctx) -> str:
    return _checksum_round_trip(ctx, "SHA256")


@probe(
    "integrity.sha1",
    "x-amz-checksum-sha1 is stored and returned",
    "tools that pick SHA-1 for dataset manifests lose their check on such a store",
)
def sha1(ctx: Ctx) -> str:
    return _checksum_round_trip(ctx, "SHA1")


@probe(
    "integrity.wrong-crc32",
    "a PUT whose x-amz-checksum-crc32 does not match the body is refused: 400 BadDigest",
    "a store that accepts a wrong checksum stores corrupted checkpoints without a word",
)
def wrong_crc32(ctx: Ctx) -> str:
    seen = expect_error(
        lambda: ctx.put("cs/wrong-crc32", DATA, ChecksumCRC32=crc32_b64(b"other")), 400, "BadDigest"
    )
    if status_of(lambda: ctx.head("cs/wrong-crc32"))[0] != 404:
        raise Differs(f"{seen}, but the object was stored anyway")
    return seen


@probe(
    "integrity.wrong-crc32c",
    "a PUT whose x-amz-checksum-crc32c does not match the body is refused: 400 BadDigest",
    "a store that keeps CRC32C without checking it hands the checksum back on a corrupted shard",
)
def wrong_crc32c(ctx: Ctx) -> str:
    wrong = crt_checksum("CRC32C", b"other")
    seen = expect_error(
        lambda: ctx.put("cs/wrong-crc32c", DATA, ChecksumAlgorithm="CRC32C", ChecksumCRC32C=wrong),
        400,
        "BadDigest",
    )
    if status_of(lambda: ctx.head("cs/wrong-crc32c"))[0] != 404:
        raise Differs(f"{seen}, but the object was stored anyway")
    return seen


@probe(
    "integrity.wrong-md5",
    "a PUT whose Content-MD5 does not match the body is refused: 400 BadDigest",
    "Content-MD5 is the oldest integrity check; ignoring it lets corrupted uploads through",
)
def wrong_md5(ctx: Ctx) -> str:
    wrong = b64(hashlib.md5(b"other").digest())
    return expect_error(lambda: ctx.put("cs/wrong-md5", DATA, ContentMD5=wrong), 400, "BadDigest")


@probe(
    "integrity.right-md5",
    "a PUT with the right Content-MD5 is stored; the ETag of a single PUT is the MD5 of the body",
    "ETag-as-MD5 is how many sync tools and loaders decide whether a shard changed",
)
def right_md5(ctx: Ctx) -> str:
    md5 = hashlib.md5(DATA)
    out = ctx.put("cs/md5", DATA, ContentMD5=b64(md5.digest()))
    if out["ETag"].strip('"') != md5.hexdigest():
        raise Differs(f"ETag {out['ETag']} is not the MD5 of the body")
    return "stored; ETag is the body's MD5"


def _signed_raw(ctx: Ctx, method: str, key: str, headers: dict[str, str], body: bytes, trailer: bool) -> Any:
    """Send one SigV4-signed request by hand (for what boto3 will not send over http)."""
    import urllib3
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    client = ctx.s3
    url = f"{client.meta.endpoint_url}/{ctx.bucket}/{urllib.request.quote(key, safe='/~')}"
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    if trailer:
        request.context["checksum"] = {"request_algorithm": {"in": "trailer"}}
    creds = client._request_signer._credentials.get_frozen_credentials()
    S3SigV4Auth(creds, "s3", client.meta.region_name).add_auth(request)
    prepared = request.prepare()
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))
    try:
        return http.request(method, prepared.url, body=body, headers=dict(prepared.headers))
    finally:
        http.clear()


@probe(
    "integrity.aws-chunked-trailer",
    "Content-Encoding: aws-chunked with STREAMING-UNSIGNED-PAYLOAD-TRAILER and a trailing "
    "x-amz-checksum-crc32 is decoded, verified and stored (what SDKs send over https)",
    "SDKs stream uploads this way by default; a store that mis-decodes it stores framing bytes "
    "inside the object",
)
def aws_chunked(ctx: Ctx) -> str:
    data = DATA[:3000]
    name = "cs/chunked"
    ctx.made.add(ctx.key(name))
    crc = crc32_b64(data)
    body = f"{len(data):x}\r\n".encode() + data + f"\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n".encode()
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "Content-Length": str(len(body)),
    }
    resp = _signed_raw(ctx, "PUT", ctx.key(name), headers, body, trailer=True)
    if resp.status == 501:
        raise Unsupported("HTTP 501 to an aws-chunked upload")
    if resp.status != 200:
        raise Differs(f"HTTP {resp.status} to an aws-chunked upload with a trailer")
    same(data, ctx.get(name), "decoded body")
    got = ctx.head(name, ChecksumMode="ENABLED").get("ChecksumCRC32")
    if got != crc:
        raise Differs(f"decoded, but the trailing CRC32 is not stored (HEAD gives {got!r})")
    return "decoded, stored and trailing CRC32 kept"


@probe(
    "integrity.aws-chunked-bad-trailer",
    "an aws-chunked upload whose trailing checksum does not match is refused: 400 BadDigest",
    "a store that skips the trailer check accepts torn streaming uploads as good",
)
def aws_chunked_bad(ctx: Ctx) -> str:
    data = DATA[:3000]
    name = "cs/chunked-bad"
    ctx.made.add(ctx.key(name))
    bad = crc32_b64(b"other")
    body = f"{len(data):x}\r\n".encode() + data + f"\r\n0\r\nx-amz-checksum-crc32:{bad}\r\n\r\n".encode()
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "Content-Length": str(len(body)),
    }
    resp = _signed_raw(ctx, "PUT", ctx.key(name), headers, body, trailer=True)
    found = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", resp.data or b"")
    seen = f"HTTP {resp.status} {found.group(1).decode() if found else ''}".strip()
    if seen == "HTTP 400 BadDigest":
        return seen
    if resp.status == 501:
        raise Unsupported(f"{seen} to an aws-chunked upload")
    raise Differs(f"{seen}, AWS answers 400 BadDigest")


# conditional requests ---------------------------------------------------------------------------


def _etag(ctx: Ctx, name: str, body: bytes = b"v1") -> str:
    return str(ctx.put(name, body)["ETag"])


@probe(
    "conditional.put-if-none-match-new",
    "PUT with If-None-Match: * on a new key succeeds (200)",
    "create-only writes are how ranks claim a checkpoint step or a lease without a lock service",
)
def put_inm_new(ctx: Ctx) -> str:
    name = "cond/inm-new"
    ctx.made.add(ctx.key(name))
    st, code, _ = status_of(lambda: ctx.put(name, b"v1", IfNoneMatch="*"))
    if st == 501:
        raise Unsupported(f"HTTP 501 {code}")
    if st != 200:
        raise Differs(f"HTTP {st} {code}")
    return "HTTP 200"


@probe(
    "conditional.put-if-none-match-existing",
    "PUT with If-None-Match: * on an existing key is refused: 412 PreconditionFailed",
    "if ignored, two ranks 'claiming' the same checkpoint both win and one silently overwrites the other",
)
def put_inm_existing(ctx: Ctx) -> str:
    name = "cond/inm-old"
    _etag(ctx, name)
    seen = expect_error(lambda: ctx.put(name, b"v2", IfNoneMatch="*"), 412, "PreconditionFailed")
    return seen


def _kept(ctx: Ctx, name: str, body: bytes, seen: str) -> str:
    if ctx.get(name) != body:
        raise Differs(f"{seen}, but the object changed anyway")
    return seen


@probe(
    "conditional.put-if-match-right",
    "PUT with If-Match: <current ETag> replaces the object (200)",
    "compare-and-swap on a manifest (latest checkpoint pointer) needs If-Match on PUT",
)
def put_im_right(ctx: Ctx) -> str:
    name = "cond/im-right"
    etag = _etag(ctx, name)
    st, code, _ = status_of(lambda: ctx.put(name, b"v2", IfMatch=etag))
    if st != 200:
        raise Differs(f"HTTP {st} {code}")
    same(b"v2", ctx.get(name))
    return "HTTP 200, replaced"


@probe(
    "conditional.put-if-match-wrong",
    "PUT with If-Match: <stale ETag> is refused: 412 PreconditionFailed",
    "if ignored, a stale writer overwrites a newer 'latest checkpoint' pointer",
)
def put_im_wrong(ctx: Ctx) -> str:
    name = "cond/im-wrong"
    _etag(ctx, name)
    seen = expect_error(lambda: ctx.put(name, b"v2", IfMatch='"0123456789abcdef0123456789abcdef"'), 412)
    return _kept(ctx, name, b"v1", seen)


@probe(
    "conditional.get-if-match-wrong",
    "GET with If-Match: <other ETag> is refused: 412 PreconditionFailed",
    "readers pin a shard version with If-Match so they never mix two versions of a file",
)
def get_im_wrong(ctx: Ctx) -> str:
    name = "cond/get-im"
    _etag(ctx, name)
    return expect_error(lambda: ctx.get(name, IfMatch='"0123456789abcdef0123456789abcdef"'), 412)


@probe(
    "conditional.get-if-match-right",
    "GET with If-Match: <current ETag> returns the object (200)",
    "version-pinned reads (resumable downloads of shards) depend on it",
)
def get_im_right(ctx: Ctx) -> str:
    name = "cond/get-im-ok"
    etag = _etag(ctx, name)
    same(b"v1", ctx.get(name, IfMatch=etag))
    return "HTTP 200"


@probe(
    "conditional.get-if-none-match-current",
    "GET with If-None-Match: <current ETag> answers 304 Not Modified",
    "caches of dataset shards revalidate with If-None-Match; without 304 every epoch re-downloads",
)
def get_inm_current(ctx: Ctx) -> str:
    name = "cond/get-inm"
    etag = _etag(ctx, name)
    return expect_error(lambda: ctx.get(name, IfNoneMatch=etag), 304)


@probe(
    "conditional.delete-if-match-wrong",
    "DELETE with If-Match: <stale ETag> is refused: 412 PreconditionFailed (conditional deletes, 2024-25)",
    "garbage collection of old checkpoints must not delete one a rank has just rewritten",
)
def delete_im_wrong(ctx: Ctx) -> str:
    name = "cond/del-im"
    _etag(ctx, name)
    seen = expect_error(
        lambda: ctx.s3.delete_object(
            Bucket=ctx.bucket, Key=ctx.key(name), IfMatch='"0123456789abcdef0123456789abcdef"'
        ),
        412,
    )
    if status_of(lambda: ctx.head(name))[0] != 200:
        raise Differs(f"{seen}, but the object was deleted")
    return seen


@probe(
    "conditional.delete-if-match-right",
    "DELETE with If-Match: <current ETag> deletes the object (204)",
    "safe checkpoint rotation deletes only the version it inspected",
)
def delete_im_right(ctx: Ctx) -> str:
    name = "cond/del-im-ok"
    etag = _etag(ctx, name)
    st, code, _ = status_of(lambda: ctx.s3.delete_object(Bucket=ctx.bucket, Key=ctx.key(name), IfMatch=etag))
    if st != 204:
        raise Differs(f"HTTP {st} {code}")
    if status_of(lambda: ctx.head(name))[0] != 404:
        raise Differs("HTTP 204, but the object is still there")
    return "HTTP 204, deleted"


@probe(
    "conditional.copy-if-match-wrong",
    "CopyObject with x-amz-copy-source-if-match: <other ETag> is refused: 412 PreconditionFailed",
    "promoting a checkpoint by copy must copy exactly the version that was validated",
)
def copy_im_wrong(ctx: Ctx) -> str:
    name = "cond/copy-src"
    _etag(ctx, name)
    ctx.made.add(ctx.key("cond/copy-dst"))
    return expect_error(
        lambda: ctx.s3.copy_object(
            Bucket=ctx.bucket,
            Key=ctx.key("cond/copy-dst"),
            CopySource={"Bucket": ctx.bucket, "Key": ctx.key(name)},
            CopySourceIfMatch='"0123456789abcdef0123456789abcdef"',
        ),
        412,
    )


@probe(
    "conditional.copy-if-none-match-current",
    "CopyObject with x-amz-copy-source-if-none-match: <current ETag> is refused: 412",
    "copy-if-changed (incremental dataset mirroring) copies everything when this is ignored",
)
def copy_inm_current(ctx: Ctx) -> str:
    name = "cond/copy-src2"
    etag = _etag(ctx, name)
    ctx.made.add(ctx.key("cond/copy-dst2"))
    return expect_error(
        lambda: ctx.s3.copy_object(
            Bucket=ctx.bucket,
            Key=ctx.key("cond/copy-dst2"),
            CopySource={"Bucket": ctx.bucket, "Key": ctx.key(name)},
            CopySourceIfNoneMatch=etag,
        ),
        412,
    )


# multipart --------------------------------------------------------------------------------------

PART = bytes(range(256)) * (5 * MIB // 256)  # exactly 5 MiB


@probe(
    "multipart.round-trip",
    "a 2-part upload (5 MiB + tail) completes; the ETag ends in '-2'; the bytes read back",
    "every checkpoint shard above the part size is a multipart upload",
)
def mpu_round_trip(ctx: Ctx) -> str:
    name = "mpu/ok"
    uid = ctx.create_upload(name)
    parts = [
        {"PartNumber": 1, "ETag": ctx.upload_part(name, uid, 1, PART)},
        {"PartNumber": 2, "ETag": ctx.upload_part(name, uid, 2, b"tail")},
    ]
    etag = ctx.complete(name, uid, parts)["ETag"]
    got = ctx.get(name)
    same(PART + b"tail", got)
    if not etag.strip('"').endswith("-2"):
        raise Differs(f"bytes intact, but ETag {etag} does not end in -2")
    return "completed, ETag '-2', bytes intact"


@probe(
    "multipart.min-part-size",
    "completing with a non-last part under 5 MiB is refused: 400 EntityTooSmall",
    "a store that takes tiny parts hides a writer bug that real S3 will reject in production",
)
def mpu_min_part(ctx: Ctx) -> str:
    name = "mpu/small"
    uid = ctx.create_upload(name)
    parts = [{"PartNumber": n, "ETag": ctx.upload_part(name, uid, n, b"x" * 1024)} for n in (1, 2)]
    return expect_error(lambda: ctx.complete(name, uid, parts), 400, "EntityTooSmall")


@probe(
    "multipart.part-10001",
    "UploadPart with PartNumber=10001 is refused: 400 InvalidArgument (parts are 1..10,000)",
    "the 10,000-part limit caps object size at part_size x 10,000; a store without it hides the cap",
)
def mpu_part_10001(ctx: Ctx) -> str:
    name = "mpu/10001"
    uid = ctx.create_upload(name)
    return expect_error(lambda: ctx.upload_part(name, uid, 10001, b"x"), 400, "InvalidArgument")


@probe(
    "multipart.complete-wrong-etag",
    "completing with a part ETag that was never uploaded is refused: 400 InvalidPart",
    "the part ETag check is what stops a retried, half-written part from entering a checkpoint",
)
def mpu_wrong_etag(ctx: Ctx) -> str:
    name = "mpu/wrong-etag"
    uid = ctx.create_upload(name)
    ctx.upload_part(name, uid, 1, b"x")
    parts = [{"PartNumber": 1, "ETag": '"0123456789abcdef0123456789abcdef"'}]
    return expect_error(lambda: ctx.complete(name, uid, parts), 400, "InvalidPart")


@probe(
    "multipart.part-order",
    "completing with parts listed out of ascending order is refused: 400 InvalidPartOrder",
    "parallel uploaders must sort parts; a lenient store hides the bug",
)
def mpu_order(ctx: Ctx) -> str:
    name = "mpu/order"
    uid = ctx.create_upload(name)
    e1 = ctx.upload_part(name, uid, 1, PART)
    e2 = ctx.upload_part(name, uid, 2, PART)  # both full-size: only the order is wrong
    parts = [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]
    return expect_error(lambda: ctx.complete(name, uid, parts), 400, "InvalidPartOrder")


@probe(
    "multipart.abort",
    "after AbortMultipartUpload the upload is gone: ListParts answers 404 NoSuchUpload",
    "aborted checkpoint uploads that linger keep their parts (and their cost) forever",
)
def mpu_abort(ctx: Ctx) -> str:
    name = "mpu/abort"
    uid = ctx.create_upload(name)
    ctx.upload_part(name, uid, 1, b"x")
    ctx.s3.abort_multipart_upload(Bucket=ctx.bucket, Key=ctx.key(name), UploadId=uid)
    ctx.uploads.discard((ctx.key(name), uid))
    return expect_error(
        lambda: ctx.s3.list_parts(Bucket=ctx.bucket, Key=ctx.key(name), UploadId=uid), 404, "NoSuchUpload"
    )


@probe(
    "multipart.list-uploads",
    "ListMultipartUploads with a prefix shows an in-progress upload; ListParts shows its parts",
    "cleaning up after crashed writers needs to find their pending uploads",
)
def mpu_list(ctx: Ctx) -> str:
    name = "mpu/pending"
    uid = ctx.create_upload(name)
    ctx.upload_part(name, uid, 1, b"abc")
    uploads = ctx.s3.list_multipart_uploads(Bucket=ctx.bucket, Prefix=ctx.key("mpu/")).get("Uploads", [])
    if (ctx.key(name), uid) not in {(u["Key"], u["UploadId"]) for u in uploads}:
        raise Differs(f"ListMultipartUploads does not show the upload ({len(uploads)} listed)")
    parts = ctx.s3.list_parts(Bucket=ctx.bucket, Key=ctx.key(name), UploadId=uid).get("Parts", [])
    if [(p["PartNumber"], p["Size"]) for p in parts] != [(1, 3)]:
        raise Differs(f"ListParts shows {[(p['PartNumber'], p['Size']) for p in parts]}")
    return "upload and its part listed"


@probe(
    "multipart.checksum-crc32",
    "a multipart upload created with ChecksumAlgorithm=CRC32 returns a composite CRC32 ('...-2')",
    "multipart checkpoints have no end-to-end check when per-part checksums are dropped",
)
def mpu_checksum(ctx: Ctx) -> str:
    name = "mpu/crc32"
    uid = ctx.create_upload(name, ChecksumAlgorithm="CRC32")
    parts = []
    for n, body in ((1, PART), (2, b"tail")):
        out = ctx.s3.upload_part(
            Bucket=ctx.bucket, Key=ctx.key(name), UploadId=uid, PartNumber=n, Body=body,
            ChecksumAlgorithm="CRC32",
        )  # fmt: skip
        parts.append({"PartNumber": n, "ETag": out["ETag"], "ChecksumCRC32": crc32_b64(body)})
    ctx.complete(name, uid, parts)
    got = ctx.head(name, ChecksumMode="ENABLED").get("ChecksumCRC32")
    if not got:
        raise Differs("completed, but no CRC32 is returned for the object")
    if not got.endswith("-2"):
        raise Differs(f"completed, CRC32 {got!r} is not a composite '-2' checksum")
    return f"composite CRC32 {got}"


# ranged GET -------------------------------------------------------------------------------------

HUNDRED = bytes(range(100))


def _ranged(ctx: Ctx, rng: str) -> tuple[int, str, bytes]:
    name = "range/obj"
    if ctx.key(name) not in ctx.made:
        ctx.put(name, HUNDRED)
    out = ctx.s3.get_object(Bucket=ctx.bucket, Key=ctx.key(name), Range=rng)
    return out["ResponseMetadata"]["HTTPStatusCode"], str(out.get("ContentRange")), out["Body"].read()


def _range_probe(ctx: Ctx, rng: str, content_range: str, body: bytes) -> str:
    st, got_range, got = _ranged(ctx, rng)
    if (st, got_range, got) != (206, content_range, body):
        raise Differs(f"HTTP {st}, Content-Range {got_range}, {len(got)} bytes")
    return f"206 {content_range}"


@probe(
    "range.closed",
    "Range: bytes=10-19 answers 206 with Content-Range: bytes 10-19/100 and 10 bytes",
    "record-level reads from packed shards (TFRecord, webdataset tar members) are ranged GETs",
)
def range_closed(ctx: Ctx) -> str:
    return _range_probe(ctx, "bytes=10-19", "bytes 10-19/100", HUNDRED[10:20])


@probe(
    "range.suffix",
    "Range: bytes=-10 answers 206 with the last 10 bytes (bytes 90-99/100)",
    "readers of footers (Parquet, safetensors index at the end) use suffix ranges",
)
def range_suffix(ctx: Ctx) -> str:
    return _range_probe(ctx, "bytes=-10", "bytes 90-99/100", HUNDRED[90:])


@probe(
    "range.open-ended",
    "Range: bytes=90- answers 206 with bytes 90-99/100",
    "resumed downloads of shards ask for 'the rest from offset N'",
)
def range_open(ctx: Ctx) -> str:
    return _range_probe(ctx, "bytes=90-", "bytes 90-99/100", HUNDRED[90:])


@probe(
    "range.past-end-clipped",
    "Range: bytes=90-200 on 100 bytes answers 206, clipped to bytes 90-99/100",
    "readers that over-ask for the last record need the clipped answer, not an error",
)
def range_clipped(ctx: Ctx) -> str:
    return _range_probe(ctx, "bytes=90-200", "bytes 90-99/100", HUNDRED[90:])


@probe(
    "range.unsatisfiable",
    "Range: bytes=200-300 on 100 bytes answers 416 InvalidRange",
    "a store that answers 200 with the whole object to a bad range makes readers parse garbage",
)
def range_416(ctx: Ctx) -> str:
    return expect_error(lambda: _ranged(ctx, "bytes=200-300"), 416, "InvalidRange")


# listing ----------------------------------------------------------------------------------------


@probe(
    "listing.v2-pagination",
    "ListObjectsV2 answers at most 1,000 keys a page, IsTruncated and a NextContinuationToken "
    "that continues exactly after them",
    "dataset indexers that miss pagination see only the first 1,000 shards",
)
def list_pages(ctx: Ctx) -> str:
    keys = ctx.many()
    first = ctx.list(Prefix=ctx.key("many/"))
    got = [o["Key"] for o in first.get("Contents", [])]
    if len(got) != 1000 or not first.get("IsTruncated"):
        raise Differs(f"first page: {len(got)} keys, IsTruncated={first.get('IsTruncated')}")
    second = ctx.list(Prefix=ctx.key("many/"), ContinuationToken=first["NextContinuationToken"])
    got += [o["Key"] for o in second.get("Contents", [])]
    if got != keys or second.get("IsTruncated"):
        raise Differs(f"{len(got)} keys over two pages for {len(keys)} written")
    return "1000 + 1 keys over two pages, in order"


@probe(
    "listing.max-keys-0",
    "ListObjectsV2 with MaxKeys=0 answers 200 with no keys (KeyCount 0)",
    "'does this prefix exist' checks with MaxKeys=0 break on stores that return keys or fail",
)
def list_max0(ctx: Ctx) -> str:
    ctx.put("max0/a")
    st, code, out = status_of(lambda: ctx.list(Prefix=ctx.key("max0/"), MaxKeys=0))
    if st != 200:
        raise Differs(f"HTTP {st} {code}")
    n = len(out.get("Contents", []))
    if n or out.get("KeyCount", 0):
        raise Differs(f"{n} keys returned (KeyCount {out.get('KeyCount')})")
    return f"no keys, IsTruncated={out.get('IsTruncated')}"


@probe(
    "listing.max-keys-small",
    "ListObjectsV2 with MaxKeys=2 over 3 keys answers 2 keys and IsTruncated=true",
    "small pages are how listers bound memory; ignored MaxKeys means unbounded responses",
)
def list_max2(ctx: Ctx) -> str:
    for n in ("a", "b", "c"):
        ctx.put(f"max2/{n}")
    out = ctx.list(Prefix=ctx.key("max2/"), MaxKeys=2)
    n = len(out.get("Contents", []))
    if n != 2 or not out.get("IsTruncated"):
        raise Differs(f"{n} keys, IsTruncated={out.get('IsTruncated')}")
    return "2 keys, truncated"


@probe(
    "listing.start-after",
    "ListObjectsV2 StartAfter=<key> lists only the keys after it",
    "resuming a listing of millions of shards after a crash uses StartAfter",
)
def list_start_after(ctx: Ctx) -> str:
    for n in ("a", "b", "c"):
        ctx.put(f"after/{n}")
    out = ctx.list(Prefix=ctx.key("after/"), StartAfter=ctx.key("after/a"))
    got = [o["Key"][len(ctx.prefix) :] for o in out.get("Contents", [])]
    if got != ["after/b", "after/c"]:
        raise Differs(f"listed {got}")
    return "only the later keys"


@probe(
    "listing.delimiter",
    "Delimiter='/' groups keys into CommonPrefixes and lists the direct children only",
    "directory-style dataset layouts (class folders, step-N/ checkpoints) are listed this way",
)
def list_delim(ctx: Ctx) -> str:
    for n in ("d/x", "d/sub/y", "d/sub/z", "d/other/w"):
        ctx.put(n)
    out = ctx.list(Prefix=ctx.key("d/"), Delimiter="/")
    keys = [o["Key"][len(ctx.prefix) :] for o in out.get("Contents", [])]
    prefixes = [p["Prefix"][len(ctx.prefix) :] for p in out.get("CommonPrefixes", [])]
    if keys != ["d/x"] or prefixes != ["d/other/", "d/sub/"]:
        raise Differs(f"keys {keys}, common prefixes {prefixes}")
    return "1 key, 2 common prefixes"


@probe(
    "listing.other-delimiter",
    "a delimiter other than '/' ('-') groups keys the same way",
    "some datasets encode hierarchy with '-' or '_'; POSIX-backed stores only know '/'",
)
def list_delim_dash(ctx: Ctx) -> str:
    for n in ("dash/a-1", "dash/a-2", "dash/b"):
        ctx.put(n)
    out = ctx.list(Prefix=ctx.key("dash/"), Delimiter="-")
    keys = [o["Key"][len(ctx.prefix) :] for o in out.get("Contents", [])]
    prefixes = [p["Prefix"][len(ctx.prefix) :] for p in out.get("CommonPrefixes", [])]
    if keys != ["dash/b"] or prefixes != ["dash/a-"]:
        raise Differs(f"keys {keys}, common prefixes {prefixes}")
    return "grouped on '-'"


ORDER = ["A", "B", "a", "a-b", "a/b", "a0", "b", "~", "é", "日本"]  # sorted by UTF-8 bytes


@probe(
    "listing.order",
    "keys are listed in ascending UTF-8 byte order (A < a < a-b < a/b < a0 < ~ < é)",
    "sharded loaders that merge listings or resume by key assume S3's byte order",
)
def list_order(ctx: Ctx) -> str:
    for n in ORDER:
        ctx.put(f"order/{n}")
    got = [o["Key"][len(ctx.key("order/")) :] for o in ctx.list(Prefix=ctx.key("order/")).get("Contents", [])]
    if got != ORDER:
        raise Differs(f"order {got}")
    return "UTF-8 byte order"


@probe(
    "listing.v1-marker",
    "ListObjects (v1) with MaxKeys=2 is truncated, and Marker=<last key> continues after it",
    "older loaders and tools (s3fs, some Spark readers) still page with v1 markers",
)
def list_v1(ctx: Ctx) -> str:
    for n in ("a", "b", "c"):
        ctx.put(f"v1/{n}")
    first = ctx.s3.list_objects(Bucket=ctx.bucket, Prefix=ctx.key("v1/"), MaxKeys=2)
    got = [o["Key"] for o in first.get("Contents", [])]
    if len(got) != 2 or not first.get("IsTruncated"):
        raise Differs(f"first page {len(got)} keys, IsTruncated={first.get('IsTruncated')}")
    second = ctx.s3.list_objects(Bucket=ctx.bucket, Prefix=ctx.key("v1/"), MaxKeys=2, Marker=got[-1])
    got += [o["Key"] for o in second.get("Contents", [])]
    if got != [ctx.key(f"v1/{n}") for n in "abc"]:
        raise Differs(f"{len(got)} keys over two pages")
    return "two pages via Marker"


@probe(
    "listing.empty-prefix",
    "listing a prefix that holds nothing answers 200 with no keys",
    "'is this output directory free' checks must not fail on an empty prefix",
)
def list_empty(ctx: Ctx) -> str:
    out = ctx.list(Prefix=ctx.key("nothing-here/"))
    if out.get("Contents"):
        raise Differs(f"{len(out['Contents'])} keys under an empty prefix")
    return "no keys"


# keys -------------------------------------------------------------------------------------------


def _key_round_trip(ctx: Ctx, full: str) -> str:
    body = full.encode()
    ctx.made.add(full)
    ctx.s3.put_object(Bucket=ctx.bucket, Key=full, Body=body)
    got = ctx.s3.get_object(Bucket=ctx.bucket, Key=full)["Body"].read()
    same(body, got)
    listed = ctx.s3.list_objects_v2(Bucket=ctx.bucket, Prefix=full).get("Contents", [])
    if full not in [o["Key"] for o in listed]:
        raise Differs(f"stored, but listed as {[o['Key'] for o in listed][:3]}")
    return "stored, read and listed under the same key"


def _key_probe(id: str, name: str, aws: str, why: str) -> None:
    probe(id, aws, why)(lambda ctx: _key_round_trip(ctx, ctx.key(name)))


_key_probe(
    "keys.unicode",
    "données/ü-日本-🙂.bin",
    "any UTF-8 key round-trips byte for byte",
    "multilingual datasets keep native file names; a store that mangles them loses samples",
)
_key_probe(
    "keys.space-plus-percent",
    "a b+c%20d&e=f.txt",
    "space, '+', '%', '&', '=' in keys round-trip (no form decoding of '+')",
    "file names with spaces or '+' from scraped corpora must not turn into other keys",
)
_key_probe(
    "keys.double-slash",
    "a//b",
    "'a//b' is a key of its own, distinct from 'a/b'",
    "path-joining bugs produce '//'; POSIX-backed stores collapse it and two shards collide",
)
_key_probe(
    "keys.dot-segments",
    "x/./y/../z",
    "'./' and '../' are literal characters in a key",
    "HTTP stacks that normalise dot segments write a different key than the one asked for",
)
_key_probe(
    "keys.trailing-slash",
    "dir-marker/",
    "a key ending in '/' with a body is an ordinary object",
    "folder markers written by tools become directories on POSIX-backed stores and lose their body",
)


@probe(
    "keys.leading-slash",
    "a key starting with '/' is its own key (kept under this run's random name)",
    "loaders that build keys as '/' + path write to a different place on stores that strip it",
)
def key_leading(ctx: Ctx) -> str:
    return _key_round_trip(ctx, "/" + ctx.key("lead"))


def _long_key(ctx: Ctx, size: int) -> str:
    """A key of `size` UTF-8 bytes under the run's prefix, in segments of 100 bytes."""
    head = ctx.key("long/")
    body = "/".join(["s" * 99] * 11)
    return head + body[: size - len(head.encode())]


@probe(
    "keys.max-length",
    "a key of exactly 1,024 UTF-8 bytes (in 100-byte segments) is accepted",
    "deep, descriptive shard paths reach the limit; a lower store limit fails those writes",
)
def key_1024(ctx: Ctx) -> str:
    return _key_round_trip(ctx, _long_key(ctx, 1024))


@probe(
    "keys.long-segment",
    "one path segment of 300 bytes is fine: S3 limits the whole key (1,024 bytes), not segments",
    "stores backed by a file system cap a segment at 255 bytes; hashed or descriptive names fail",
)
def key_long_segment(ctx: Ctx) -> str:
    return _key_round_trip(ctx, ctx.key("seg-" + "s" * 296))


@probe(
    "keys.too-long",
    "a key of 1,025 bytes is refused: 400 KeyTooLongError",
    "a store that accepts longer keys lets a dataset be written that real S3 cannot hold",
)
def key_1025(ctx: Ctx) -> str:
    full = _long_key(ctx, 1025)
    ctx.made.add(full)
    return expect_error(
        lambda: ctx.s3.put_object(Bucket=ctx.bucket, Key=full, Body=b"x"), 400, "KeyTooLongError"
    )


# deletes ----------------------------------------------------------------------------------------


@probe(
    "delete.missing-key",
    "DeleteObject of a key that does not exist answers 204 (idempotent)",
    "cleanup after a failed run re-deletes; a 404 there aborts the cleanup",
)
def delete_missing(ctx: Ctx) -> str:
    st, code, _ = status_of(lambda: ctx.s3.delete_object(Bucket=ctx.bucket, Key=ctx.key("never-was")))
    if st != 204:
        raise Differs(f"HTTP {st} {code}")
    return "HTTP 204"


@probe(
    "delete.batch-1000",
    "DeleteObjects with 1,000 keys deletes them all and reports each one as Deleted",
    "checkpoint rotation and dataset cleanup delete in 1,000-key batches",
)
def delete_batch(ctx: Ctx) -> str:
    keys = ctx.many()[:1000]
    out = ctx.s3.delete_objects(Bucket=ctx.bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    deleted = {d["Key"] for d in out.get("Deleted", [])}
    if out.get("Errors") or deleted != set(keys):
        raise Differs(f"{len(deleted)} reported deleted, {len(out.get('Errors', []))} errors")
    left = ctx.list(Prefix=ctx.key("many/")).get("KeyCount", 0)
    if left != 1:
        raise Differs(f"reported deleted, but {left} keys remain (1 expected)")
    return "1000 deleted"


@probe(
    "delete.batch-1001",
    "DeleteObjects with 1,001 keys is refused: 400 MalformedXML",
    "a store without the limit hides a batching bug that fails against AWS",
)
def delete_1001(ctx: Ctx) -> str:
    keys = [{"Key": ctx.key(f"none/{i}")} for i in range(1001)]
    return expect_error(
        lambda: ctx.s3.delete_objects(Bucket=ctx.bucket, Delete={"Objects": keys}), 400, "MalformedXML"
    )


@probe(
    "delete.quiet",
    "DeleteObjects with Quiet=true deletes and lists no Deleted entries (only errors)",
    "large cleanups use quiet mode to keep responses small",
)
def delete_quiet(ctx: Ctx) -> str:
    names = [f"quiet/{i}" for i in range(5)]
    for n in names:
        ctx.put(n)
    out = ctx.s3.delete_objects(
        Bucket=ctx.bucket, Delete={"Objects": [{"Key": ctx.key(n)} for n in names], "Quiet": True}
    )
    if ctx.list(Prefix=ctx.key("quiet/")).get("KeyCount", 0):
        raise Differs("keys remain after a quiet delete")
    if out.get("Deleted"):
        raise Differs(f"deleted, but {len(out['Deleted'])} Deleted entries listed in quiet mode")
    return "deleted, nothing listed"


@probe(
    "delete.non-empty-bucket",
    "DeleteBucket on a bucket holding an object is refused: 409 BucketNotEmpty "
    "(in a bucket the suite creates itself)",
    "a store that drops non-empty buckets can lose a whole dataset to a cleanup script",
)
def delete_bucket_nonempty(ctx: Ctx) -> str:
    from botocore.exceptions import ClientError

    name = "dlio-ext-compat-" + ctx.prefix.rstrip("/").rsplit("-", 1)[-1][:12].lower()
    try:
        ctx.s3.create_bucket(Bucket=name)
    except ClientError as exc:
        st, code = answer(exc)
        raise Unsupported(f"cannot create a bucket of its own (HTTP {st} {code})") from None
    ctx.buckets.add(name)
    ctx.s3.put_object(Bucket=name, Key="x", Body=b"x")
    try:
        seen = expect_error(lambda: ctx.s3.delete_bucket(Bucket=name), 409, "BucketNotEmpty")
    except Differs as exc:
        st, code, _ = status_of(lambda: ctx.s3.head_object(Bucket=name, Key="x"))
        fate = "the object survived" if st == 200 else f"the bucket and its object are gone (HEAD: {st})"
        raise Differs(f"{exc}; {fate}") from None
    return seen


# presigned URLs ---------------------------------------------------------------------------------


def _fetch(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    import urllib3

    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))
    try:
        resp = http.request(method, url, body=body)
        return resp.status, resp.data
    finally:
        http.clear()


@probe(
    "presign.get",
    "a SigV4 presigned GET URL returns the object without other credentials",
    "data loaders on workers without credentials read shards through presigned URLs",
)
def presign_get(ctx: Ctx) -> str:
    ctx.put("presign/get", b"presigned")
    url = ctx.s3.generate_presigned_url(
        "get_object", Params={"Bucket": ctx.bucket, "Key": ctx.key("presign/get")}, ExpiresIn=300
    )
    st, body = _fetch(url)
    if st != 200 or body != b"presigned":
        raise Differs(f"HTTP {st}, {len(body)} bytes")
    return "HTTP 200"


@probe(
    "presign.put",
    "a SigV4 presigned PUT URL stores the body",
    "uploads from sandboxed jobs (evaluation results, samples) go through presigned PUTs",
)
def presign_put(ctx: Ctx) -> str:
    ctx.made.add(ctx.key("presign/put"))
    url = ctx.s3.generate_presigned_url(
        "put_object", Params={"Bucket": ctx.bucket, "Key": ctx.key("presign/put")}, ExpiresIn=300
    )
    st, _ = _fetch(url, "PUT", b"uploaded")
    if st != 200:
        raise Differs(f"HTTP {st}")
    same(b"uploaded", ctx.get("presign/put"))
    return "HTTP 200, stored"


@probe(
    "presign.expired",
    "a presigned URL used after it expired is refused: 403",
    "a store that ignores expiry leaves shared dataset links open forever",
)
def presign_expired(ctx: Ctx) -> str:
    ctx.put("presign/exp", b"x")
    url = ctx.s3.generate_presigned_url(
        "get_object", Params={"Bucket": ctx.bucket, "Key": ctx.key("presign/exp")}, ExpiresIn=1
    )
    time.sleep(2.1)
    st, _ = _fetch(url)
    if st != 403:
        raise Differs(f"HTTP {st} after expiry, AWS answers 403")
    return "HTTP 403"


@probe(
    "presign.tampered",
    "a presigned URL whose signature was altered is refused: 403",
    "a store that does not check presigned signatures is open to anyone with a URL shape",
)
def presign_tampered(ctx: Ctx) -> str:
    ctx.put("presign/tamper", b"x")
    url = ctx.s3.generate_presigned_url(
        "get_object", Params={"Bucket": ctx.bucket, "Key": ctx.key("presign/tamper")}, ExpiresIn=300
    )
    head, _, sig = url.rpartition("X-Amz-Signature=")
    st, _ = _fetch(head + "X-Amz-Signature=" + ("0" if sig[:1] != "0" else "1") + sig[1:])
    if st != 403:
        raise Differs(f"HTTP {st} for a tampered signature, AWS answers 403")
    return "HTTP 403"


# single objects ---------------------------------------------------------------------------------


@probe(
    "object.head-missing",
    "HeadObject of a missing key answers 404 (no body, so no error code)",
    "existence checks before resuming from a checkpoint rely on a clean 404",
)
def head_missing(ctx: Ctx) -> str:
    return expect_error(lambda: ctx.head("missing"), 404)


@probe(
    "object.get-missing",
    "GetObject of a missing key answers 404 NoSuchKey",
    "loaders tell 'shard missing' (skip, fail) from 'store down' (retry) by this code",
)
def get_missing(ctx: Ctx) -> str:
    return expect_error(lambda: ctx.get("missing"), 404, "NoSuchKey")


@probe(
    "object.get-object-attributes",
    "GetObjectAttributes returns ETag and ObjectSize (and the checksum when one was stored)",
    "manifest builders fetch sizes and checksums of many shards without downloading them",
)
def attributes(ctx: Ctx) -> str:
    ctx.put("attr/o", DATA, ChecksumAlgorithm="SHA256")
    st, code, out = status_of(
        lambda: ctx.s3.get_object_attributes(
            Bucket=ctx.bucket, Key=ctx.key("attr/o"), ObjectAttributes=["ETag", "ObjectSize", "Checksum"]
        )
    )
    if st == 501 or code == "NotImplemented":
        raise Unsupported(f"HTTP {st} {code}")
    if st != 200:
        raise Differs(f"HTTP {st} {code}")
    if out.get("ObjectSize") != len(DATA) or not out.get("ETag"):
        raise Differs(f"ObjectSize={out.get('ObjectSize')}, ETag={out.get('ETag')!r}")
    if not (out.get("Checksum") or {}).get("ChecksumSHA256"):
        raise Differs("ETag and size returned, but not the stored SHA-256")
    return "ETag, size and SHA-256"


@probe(
    "object.copy",
    "CopyObject within a bucket copies the bytes and keeps the ETag of a single-part object",
    "promoting a checkpoint (copy to 'latest/') must not re-upload or alter it",
)
def copy_basic(ctx: Ctx) -> str:
    etag = ctx.put("copy/src", DATA)["ETag"]
    ctx.made.add(ctx.key("copy/dst"))
    out = ctx.s3.copy_object(
        Bucket=ctx.bucket,
        Key=ctx.key("copy/dst"),
        CopySource={"Bucket": ctx.bucket, "Key": ctx.key("copy/src")},
    )
    same(DATA, ctx.get("copy/dst"))
    got = str(out.get("CopyObjectResult", {}).get("ETag"))
    if got.strip('"') != etag.strip('"'):
        raise Differs(f"bytes copied, but CopyObjectResult ETag {got} is not the source's {etag}")
    if got != etag:
        raise Differs(f"bytes copied, CopyObjectResult ETag {got} is not quoted (AWS: {etag})")
    head = ctx.head("copy/dst")["ETag"]
    if head != etag:
        raise Differs(f"copied, but the copy's HEAD ETag is {head}")
    return "copied, same ETag"


@probe(
    "object.user-metadata",
    "x-amz-meta-* user metadata and Content-Type round-trip through HEAD",
    "dataset tools keep sample counts or dtypes in user metadata",
)
def user_metadata(ctx: Ctx) -> str:
    ctx.put("meta/o", b"x", Metadata={"samples": "1024", "dtype": "float16"}, ContentType="application/x-tar")
    head = ctx.head("meta/o")
    if head.get("Metadata") != {"samples": "1024", "dtype": "float16"}:
        raise Differs(f"metadata back as {head.get('Metadata')}")
    if head.get("ContentType") != "application/x-tar":
        raise Differs(f"Content-Type back as {head.get('ContentType')}")
    return "metadata and Content-Type kept"


@probe(
    "object.empty",
    "a zero-byte object is stored; GET returns 0 bytes and the ETag is the MD5 of nothing",
    "empty marker files (_SUCCESS, done) signal finished checkpoints",
)
def empty_object(ctx: Ctx) -> str:
    out = ctx.put("empty/o", b"")
    same(b"", ctx.get("empty/o"))
    if out["ETag"].strip('"') != hashlib.md5(b"").hexdigest():
        raise Differs(f"ETag {out['ETag']}")
    if ctx.head("empty/o")["ContentLength"] != 0:
        raise Differs("HEAD reports a non-zero length")
    return "0 bytes, MD5 ETag"


# consistency ------------------------------------------------------------------------------------


@probe(
    "consistency.read-after-write",
    f"strong read-after-write: a GET right after a PUT returns the new object ({CONSISTENCY_ROUNDS} rounds)",
    "a rank that reads a checkpoint another rank just wrote must see it",
)
def raw_consistency(ctx: Ctx) -> str:
    for i in range(CONSISTENCY_ROUNDS):
        body = f"raw-{i}".encode()
        ctx.put(f"cons/raw-{i}", body)
        if ctx.get(f"cons/raw-{i}") != body:
            raise Differs(f"round {i}: stale or missing right after PUT")
    return f"{CONSISTENCY_ROUNDS}/{CONSISTENCY_ROUNDS} fresh"


@probe(
    "consistency.overwrite-then-read",
    f"after an overwrite, GET and HEAD return the new version at once ({CONSISTENCY_ROUNDS} rounds)",
    "'latest' pointers are overwritten each step; a stale read resumes from an old checkpoint",
)
def overwrite_consistency(ctx: Ctx) -> str:
    for i in range(CONSISTENCY_ROUNDS):
        body = f"version-{i}".encode()
        etag = ctx.put("cons/latest", body)["ETag"]
        if ctx.get("cons/latest") != body or ctx.head("cons/latest")["ETag"] != etag:
            raise Differs(f"round {i}: old version read after overwrite")
    return f"{CONSISTENCY_ROUNDS}/{CONSISTENCY_ROUNDS} fresh"


@probe(
    "consistency.list-after-write",
    f"a new key is listed right after its PUT ({CONSISTENCY_ROUNDS} rounds)",
    "job coordinators list a prefix to see which ranks finished their shard",
)
def list_consistency(ctx: Ctx) -> str:
    for i in range(CONSISTENCY_ROUNDS):
        ctx.put(f"cons/list/{i:03d}")
        keys = [o["Key"] for o in ctx.list(Prefix=ctx.key("cons/list/")).get("Contents", [])]
        if ctx.key(f"cons/list/{i:03d}") not in keys:
            raise Differs(f"round {i}: new key not listed")
    return f"{CONSISTENCY_ROUNDS}/{CONSISTENCY_ROUNDS} listed"


@probe(
    "consistency.delete-then-read",
    f"after DeleteObject, HEAD answers 404 and the key is no longer listed ({CONSISTENCY_ROUNDS} rounds)",
    "a deleted stale checkpoint that still reads back gets resumed from",
)
def delete_consistency(ctx: Ctx) -> str:
    for i in range(CONSISTENCY_ROUNDS):
        name = f"cons/del/{i:03d}"
        ctx.put(name)
        ctx.s3.delete_object(Bucket=ctx.bucket, Key=ctx.key(name))
        if status_of(lambda n=name: ctx.head(n))[0] != 404:
            raise Differs(f"round {i}: HEAD still finds the deleted key")
        if ctx.list(Prefix=ctx.key(name)).get("KeyCount", 0):
            raise Differs(f"round {i}: the deleted key is still listed")
    return f"{CONSISTENCY_ROUNDS}/{CONSISTENCY_ROUNDS} gone"
