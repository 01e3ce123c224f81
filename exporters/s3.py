"""The S3 backend of `ObjectStorage` (AWS, MinIO or any S3-compatible endpoint).

Large bodies go up as a multipart upload (parts of at least 8 MiB, a few in flight at a
time so memory stays bounded, each with a CRC32 checksum), aborted on any failure: the
object appears only when the upload completes. The upload is reported to an
`UploadRecorder` before its first part is sent (its parts hold the package header, with
the wrapped data key), so one that a killed worker or an unreachable S3 leaves behind is
aborted later by `exporters.uploads`. boto3 errors are translated here, at the edge.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from compliance.config import Settings
from compliance.errors import (
    ComplianceError,
    NotFoundError,
    StorageAccessError,
    StorageUnavailableError,
)
from exporters.objects import (
    NO_RECORDER,
    READ_CHUNK,
    IncompleteUpload,
    UploadOutcome,
    UploadRecorder,
    check_key,
)

log = logging.getLogger("gdpr.exporters.s3")

PART_SIZE = 8 * 1024 * 1024
IN_FLIGHT = 8
# As boto3's own managed upload: every part carries a CRC32 that S3 checks on arrival, and
# the object keeps a composite checksum over them. Without it S3 (and the local test
# server) computes a full-object checksum itself, re-reading the whole object at completion.
CHECKSUM = "CRC32"
_MISSING = {"NoSuchKey", "404", "NotFound"}
_RETRYABLE = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
}


@dataclass(frozen=True)
class S3Storage:
    """Objects under ``s3://bucket/prefix``."""

    client: Any = field(repr=False)
    bucket: str
    prefix: str = ""
    sse: str = ""
    sse_kms_key: str = ""
    part_size: int = PART_SIZE
    in_flight: int = IN_FLIGHT

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        url = urlsplit(settings.storage)
        return cls(
            client=s3_client(settings),
            bucket=url.netloc,
            prefix=url.path.strip("/"),
            sse=settings.s3_sse,
            sse_kms_key=settings.kms_key_id if settings.s3_sse == "aws:kms" else "",
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _sse_args(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.sse} if self.sse else {}
        if self.sse_kms_key:
            args["SSEKMSKeyId"] = self.sse_kms_key
        return args

    def upload(
        self, key: str, chunks: Iterable[bytes], recorder: UploadRecorder = NO_RECORDER
    ) -> int:
        full = self._key(key)
        parts = _parts(chunks, self.part_size)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:
            with translated(key):
                self.client.put_object(Bucket=self.bucket, Key=full, Body=first, **self._sse_args())
            return len(first)
        return self._multipart(key, full, _chain(first, second, parts), recorder)

    def _multipart(
        self, key: str, full: str, parts: Iterator[bytes], recorder: UploadRecorder
    ) -> int:
        with translated(key):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ChecksumAlgorithm=CHECKSUM, **self._sse_args()
            )["UploadId"]
        try:
            recorder.started(self.bucket, full, upload_id)
            with translated(key):
                done, size = self._send_parts(full, upload_id, parts, recorder)
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                )
        except BaseException:
            self._abort_after_failure(key, full, upload_id, recorder)
            raise
        recorder.finished(upload_id, UploadOutcome.COMPLETED)
        return size

    def _abort_after_failure(
        self, key: str, full: str, upload_id: str, recorder: UploadRecorder
    ) -> None:
        """Abort a failed upload. If S3 cannot be reached, its record stays open and the
        sweep aborts it later; if the record cannot be closed, the sweep closes it."""
        try:
            self.abort_upload(self.bucket, full, upload_id)
        except ComplianceError as exc:
            log.warning("dsr.export.upload_abort_failed", extra={"key": key, "error": str(exc)})
            return
        try:
            recorder.finished(upload_id, UploadOutcome.ABORTED)
        except Exception as exc:  # the original error matters more; the sweep tidies up
            log.warning("dsr.export.upload_unrecorded", extra={"key": key, "error": repr(exc)})

    def abort_upload(self, bucket: str, s3_key: str, upload_id: str) -> None:
        """Abort a multipart upload, freeing its parts; one that is already gone (aborted,
        or completed) is not an error. `s3_key` is the full key, prefix included."""
        with translated(s3_key):
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=s3_key, UploadId=upload_id)
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":
                    raise

    def incomplete_uploads(self) -> list[IncompleteUpload]:
        """Every multipart upload under the storage prefix that is neither completed nor
        aborted, whoever started it."""
        args = {"Bucket": self.bucket}
        if self.prefix:
            args["Prefix"] = f"{self.prefix}/"
        found = []
        with translated(self.prefix or self.bucket):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(**args):
                found += [
                    IncompleteUpload(
                        bucket=self.bucket,
                        s3_key=item["Key"],
                        upload_id=item["UploadId"],
                        initiated=item["Initiated"].astimezone(UTC),
                    )
                    for item in page.get("Uploads", [])
                ]
        return found

    def abort_rule_days(self) -> int | None:
        """After how many days the bucket's lifecycle configuration aborts incomplete
        multipart uploads under the storage prefix; None when no enabled rule does."""
        with translated(self.prefix or self.bucket):
            try:
                reply = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) != "NoSuchLifecycleConfiguration":
                    raise
                return None
        root = f"{self.prefix}/" if self.prefix else ""
        days = [
            int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
            for rule in reply.get("Rules", [])
            if rule.get("Status") == "Enabled"
            and "AbortIncompleteMultipartUpload" in rule
            and _rule_covers(rule, root)
        ]
        return min(days, default=None)

    def _send_parts(
        self, full: str, upload_id: str, parts: Iterator[bytes], recorder: UploadRecorder
    ) -> tuple[list[dict[str, Any]], int]:
        done: list[dict[str, Any]] = []
        pending: deque[Future[dict[str, Any]]] = deque()
        size = 0
        with ThreadPoolExecutor(self.in_flight, thread_name_prefix="s3-part") as pool:
            try:
                for number, body in enumerate(parts, start=1):
                    size += len(body)
                    pending.append(pool.submit(self._put_part, full, upload_id, number, body))
                    while len(pending) >= self.in_flight:
                        done.append(pending.popleft().result())
                        recorder.alive()
                while pending:
                    done.append(pending.popleft().result())
                    recorder.alive()
            finally:
                for future in pending:
                    future.cancel()
        return done, size

    def _put_part(self, full: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        reply = self.client.upload_part(
            Bucket=self.bucket,
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm=CHECKSUM,
        )
        return {
            "PartNumber": number,
            "ETag": reply["ETag"],
            "ChecksumCRC32": reply["ChecksumCRC32"],
        }

    def download(self, key: str) -> Iterator[bytes]:
        with translated(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        return _stream(body, key)

    def delete(self, key: str) -> None:
        with translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        with translated(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def keys(self, prefix: str) -> Iterator[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root + prefix
        )
        with translated(prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"]).removeprefix(root)


def s3_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 4, "mode": "standard"},
        max_pool_connections=IN_FLIGHT + 4,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        config=config,
    )


def _parts(chunks: Iterable[bytes], part_size: int) -> Iterator[bytes]:
    """Regroup a stream into parts of at least `part_size` bytes (the last may be shorter)."""
    held: list[bytes] = []
    count = 0
    for chunk in chunks:
        held.append(chunk)
        count += len(chunk)
        if count >= part_size:
            yield b"".join(held)
            held, count = [], 0
    if held or count == 0:
        yield b"".join(held)


def _chain(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield second
    yield from rest


def _stream(body: Any, key: str) -> Iterator[bytes]:
    with contextlib.closing(body), translated(key):
        yield from body.iter_chunks(READ_CHUNK)


@contextlib.contextmanager
def translated(key: str) -> Iterator[None]:
    """Turn boto3 errors into retryable or terminal errors with an actionable message."""
    try:
        yield
    except NoCredentialsError as exc:
        raise StorageAccessError("no S3 credentials found; set AWS_ACCESS_KEY_ID etc.") from exc
    except ClientError as exc:
        raise _from_client_error(exc, key) from exc
    except BotoCoreError as exc:
        raise StorageUnavailableError(
            f"S3 unreachable ({type(exc).__name__}); check GDPR_S3_ENDPOINT_URL and the network"
        ) from exc


def _rule_covers(rule: dict[str, Any], root: str) -> bool:
    """Whether a lifecycle rule applies to every object under `root` (a prefix-only filter,
    or none; a rule that also filters on size or tags covers only some)."""
    where = rule.get("Filter", {"Prefix": rule.get("Prefix", "")})
    if "And" in where:
        where = where["And"]
    if set(where) - {"Prefix"}:
        return False
    return root.startswith(str(where.get("Prefix", "")))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _from_client_error(exc: ClientError, key: str) -> Exception:
    code = _code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _MISSING:
        return NotFoundError(f"object '{key}' does not exist in storage")
    if code == "NoSuchUpload":  # aborted meanwhile: a sweep found its run gone, or an erasure
        return StorageUnavailableError("the multipart upload was aborted meanwhile; retry")
    if code in _RETRYABLE or status >= 500:
        return StorageUnavailableError(f"S3 temporarily failed ({code or status}); retry later")
    if code == "NoSuchBucket":
        return StorageAccessError("the S3 bucket does not exist; create it or fix GDPR_STORAGE_URL")
    if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return StorageAccessError(f"S3 denied access ({code}); check credentials and policy")
    return StorageAccessError(f"S3 refused the request ({code or status}) for '{key}'")
