"""An S3 bucket and prefix, through boto3 with its standard configuration (the default
credential chain, ``AWS_ENDPOINT_URL`` for LocalStack, MinIO or any S3-compatible store,
``AWS_REGION``/``AWS_PROFILE``), with retries in botocore's standard mode.

Every object is created with ``If-None-Match: *`` (never overwritten: a second writer gets
412 and :class:`ObjectExistsError`) and an SHA-256 checksum the store checks on receipt.
Files above ``MULTIPART_BYTES`` go up in parts, ``PART_THREADS`` at a time, so memory stays
bounded by that many parts.

Write options come as query parameters of the sink URL, so one URL says everything (see
:class:`S3Options`)::

    s3://bucket/prefix?sse=aws:kms&kms_key_id=alias/archive&storage_class=STANDARD_IA
        &object_lock=COMPLIANCE&retain=400d&legal_hold=on&tag=team=billing
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from celery_archive.errors import ConfigError, ObjectExistsError, ObjectNotFoundError, SinkError
from celery_archive.sinks.base import ObjectInfo, RangeReader
from celery_archive.sinks.s3_options import S3Options

if TYPE_CHECKING:
    from celery_archive.crypto import Encryption

MULTIPART_BYTES = 64 << 20
PART_BYTES = 8 << 20
PART_THREADS = 8
_READ_BUFFER = 8 << 20


def _retries() -> Any:
    """botocore's standard retry mode, 8 attempts in all, unless AWS_RETRY_MODE / AWS_MAX_ATTEMPTS
    say otherwise (an explicit Config would otherwise hide them). ``total_max_attempts`` counts
    the first request, as AWS_MAX_ATTEMPTS does (Config's ``max_attempts`` counts retries only)."""
    import os

    raw = os.environ.get("AWS_MAX_ATTEMPTS", "8")
    try:
        attempts = int(raw)
    except ValueError as exc:
        raise ConfigError(f"AWS_MAX_ATTEMPTS={raw!r} is not a number of attempts") from exc
    return {"mode": os.environ.get("AWS_RETRY_MODE", "standard"), "total_max_attempts": max(attempts, 1)}


class S3Sink:
    def __init__(self, bucket: str, prefix: str, client: Any = None, options: S3Options | None = None) -> None:
        if not bucket:
            raise ConfigError("s3:// URL without a bucket: use s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.options = options or S3Options()
        self.encryption: Encryption | None = None  # the URL's encrypt= (sinks/__init__.py)
        self._lock_checked = not self.options.locks
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client("s3", config=Config(retries=_retries()))
        self.client = client

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise SinkError(f"invalid object key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, key: str | None = None) -> SinkError:
        """A SinkError that names what to fix, for a botocore error (never a secret)."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, NoCredentialsError):
            return SinkError(f"no AWS credentials for {self.url}: set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role")
        if isinstance(exc, EndpointConnectionError):
            return SinkError(f"cannot reach the S3 endpoint for {self.url} ({exc.kwargs.get('endpoint_url')}): check AWS_ENDPOINT_URL and the network")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return SinkError(f"bucket {self.bucket} does not exist: create it (aws s3 mb s3://{self.bucket}) or fix --sink")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFoundError(f"{where} is not in the archive")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return SinkError(f"access denied to {where} ({code}): check the credentials and the bucket policy")
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"):
                region = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
                return SinkError(f"bucket {self.bucket} is in another region"
                                 + (f" ({region})" if region else "") + ": set AWS_REGION to the bucket's region")
            if code in ("BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"):
                return SinkError(f"S3 refused {where}: its bytes do not match the SHA-256 taken when the file was "
                                 "written (changed or corrupted on the way); nothing was stored, run again")
            if code == "InvalidRequest" and "Object Lock" in str(exc.response.get("Error", {}).get("Message", "")):
                return self._no_lock()
            if code == "KMS.NotFoundException" or code.startswith("KMS."):
                return SinkError(f"S3 could not use the KMS key for {where} ({code}): check kms_key_id= in --sink and the key policy")
            return SinkError(f"S3 request on {where} failed: {code or status}: {exc.response.get('Error', {}).get('Message', '')}")
        return SinkError(f"S3 request on {where} failed: {type(exc).__name__}")

    def _call(self, fn: Any, key: str | None = None, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ObjectExistsError(f"{self.url}/{key} already exists; archive objects are never overwritten") from exc
            raise self._error(exc, key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, key) from exc

    def _check_lock(self) -> None:
        """Before the first locked write: does the bucket have Object Lock at all?"""
        if self._lock_checked:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ObjectLockConfigurationNotFoundError":
                raise self._no_lock() from exc
            raise self._error(exc) from exc
        self._lock_checked = True

    def _no_lock(self) -> SinkError:
        return SinkError(f"bucket {self.bucket} does not have Object Lock enabled, but the sink asks for "
                         "object_lock/legal_hold: use a bucket created with Object Lock "
                         f"(aws s3api create-bucket --bucket NAME --object-lock-enabled-for-bucket) or drop those options")

    def _write_args(self, key: str, sha256: str | None) -> dict[str, Any]:
        self._check_lock()
        a = {"Bucket": self.bucket, "Key": self._key(key), "ChecksumAlgorithm": "SHA256", **self.options.args(key)}
        if sha256:  # the digest taken when the file was written: the store refuses other bytes
            a["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        return a

    def put(self, key: str, path: Path, sha256: str | None = None) -> ObjectInfo:
        try:
            size = path.stat().st_size
            f = open(path, "rb")
        except OSError as exc:
            raise SinkError(f"cannot read {path} to store it as {self.url}/{key}: {exc.strerror}") from exc
        with f:
            if size <= MULTIPART_BYTES:
                self._call(self.client.put_object, key, Body=f, IfNoneMatch="*", **self._write_args(key, sha256))
            else:
                self._multipart(key, f, size)
        return ObjectInfo(key, size)

    def _multipart(self, key: str, f: BinaryIO, size: int) -> None:
        # S3 has no whole-object SHA-256 for multipart uploads: each part carries its own
        # (checked by the store), and verify compares the whole file with the manifest.
        # PART_THREADS parts go up at once; memory stays bounded by PART_THREADS parts.
        from concurrent.futures import Future, ThreadPoolExecutor

        args = self._write_args(key, None)
        full = args["Key"]
        upload_id = self._call(self.client.create_multipart_upload, key, **args)["UploadId"]
        part_bytes = max(PART_BYTES, -(-size // 10_000))  # S3 allows 10,000 parts

        def send(n: int, chunk: bytes) -> dict[str, Any]:
            r = self._call(self.client.upload_part, key, Bucket=self.bucket, Key=full, UploadId=upload_id,
                           PartNumber=n, Body=chunk, ChecksumAlgorithm="SHA256")
            return {"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]}

        parts: list[dict[str, Any]] = []
        pending: list[Future[dict[str, Any]]] = []
        try:
            with ThreadPoolExecutor(PART_THREADS, thread_name_prefix="s3-part") as pool:
                n = 0
                while chunk := f.read(part_bytes):
                    n += 1
                    if len(pending) >= PART_THREADS:
                        parts.append(pending.pop(0).result())
                    pending.append(pool.submit(send, n, chunk))
                    del chunk
                parts.extend(fut.result() for fut in pending)
            self._call(self.client.complete_multipart_upload, key, Bucket=self.bucket, Key=full, UploadId=upload_id,
                       MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except BaseException:
            for fut in pending:
                fut.cancel()
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original failure matters more
                pass
            raise

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self._call(self.client.put_object, key, Body=data, IfNoneMatch="*", **self._write_args(key, None))
        return ObjectInfo(key, len(data))

    def stat(self, key: str) -> ObjectInfo:
        r = self._call(self.client.head_object, key, Bucket=self.bucket, Key=self._key(key))
        return ObjectInfo(key, int(r["ContentLength"]))

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""
        rng = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            r = self._call(self.client.get_object, key, Bucket=self.bucket, Key=self._key(key), Range=rng)
        except SinkError as exc:
            from botocore.exceptions import ClientError

            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # past the end: nothing there
            raise
        data: bytes = r["Body"].read()
        return data

    def open(self, key: str) -> BinaryIO:
        size = self.stat(key).size
        reader = RangeReader(size, lambda pos, n: self.read(key, pos, n))
        return io.BufferedReader(reader, buffer_size=_READ_BUFFER)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(base):], int(obj["Size"]))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from exc

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, key, Bucket=self.bucket, Key=self._key(key))

    def _versions(self, key: str, markers: bool = True) -> tuple[str, ...]:
        """Version ids of ``key`` (objects and delete markers; ``null`` in an unversioned bucket)."""
        from botocore.exceptions import BotoCoreError, ClientError

        full, out = self._key(key), ()
        try:
            for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full):
                out += tuple(v["VersionId"] for v in [*page.get("Versions", []), *(page.get("DeleteMarkers", []) if markers else [])] if v["Key"] == full)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc
        return out

    def erase(self, key: str) -> None:
        for version in self._versions(key):
            extra = {} if version in ("null", None) else {"VersionId": version}
            self._call(self.client.delete_object, key, Bucket=self.bucket, Key=self._key(key), **extra)

    def retention(self, key: str) -> str | None:
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc)
        for version in self._versions(key, markers=False):
            extra = {} if version in ("null", None) else {"VersionId": version}
            try:
                head = self._call(self.client.head_object, key, Bucket=self.bucket, Key=self._key(key), **extra)
            except ObjectNotFoundError:
                continue
            until = head.get("ObjectLockRetainUntilDate")
            if head.get("ObjectLockLegalHoldStatus") == "ON":
                return f"{key} is under an S3 legal hold"
            if until is not None and until > now:
                return f"{key} is retained by S3 Object Lock ({head.get('ObjectLockMode', 'retention')}) until {until.isoformat()}"
        return None

    def spool_root(self) -> Path | None:
        return None

    def sweep(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix that a run started and never finished (the
        store keeps, and bills, their parts until then)."""
        import datetime as dt

        from botocore.exceptions import BotoCoreError, ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        limit = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than)
        aborted = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base):
                for up in page.get("Uploads", []):
                    if up["Initiated"] < limit:
                        self._call(self.client.abort_multipart_upload, up["Key"][len(base):], Bucket=self.bucket,
                                   Key=up["Key"], UploadId=up["UploadId"])
                        aborted += 1
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from exc
        return aborted

