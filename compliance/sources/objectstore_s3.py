"""The S3 edge of the objectstore connector: a client with bounded timeouts, the few
bucket operations it needs, and the translation of boto3 errors into ours.

Error messages name the source, the bucket and the operation, never an object key:
keys hold identities (``avatars/42/...``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

from compliance.errors import SourceRefusedError, StorageUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MAX_DELETE = 1000  # the S3 limit for one DeleteObjects call
CHUNK_BYTES = 64 * 1024
_REFUSED = {
    "AccessDenied": "access to bucket {bucket!r} was denied; grant s3:ListBucket(Versions), "
    "s3:GetObject and s3:DeleteObject(Version) to the worker's credentials",
    "AllAccessDisabled": "access to bucket {bucket!r} is disabled; check the account",
    "InvalidAccessKeyId": "the S3 access key is not known; fix the worker's AWS credentials",
    "SignatureDoesNotMatch": "the S3 secret key is wrong; fix the worker's AWS credentials",
    "NoSuchBucket": "bucket {bucket!r} does not exist; create it or fix sources.{name}.bucket",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
    "RequestLimitExceeded",
}

ObjectId = dict[str, str]  # {"Key": ..., "VersionId": ...} as DeleteObjects wants it
Page = tuple[list["Stored"], Any]  # one listing page and the marker of the next (None: last)


@dataclass(frozen=True)
class Stored:
    """One object, version or delete marker, and when it was written. Holds a key."""

    id: ObjectId
    modified: datetime

    @property
    def key(self) -> str:
        return self.id["Key"]


@dataclass(frozen=True)
class ObjectStoreConfig:
    bucket: str
    endpoint_url: str  # "" means AWS
    region: str
    versioned: bool | None  # None: ask the bucket
    connect_timeout: float = 5
    read_timeout: float = 30
    max_attempts: int = 3


def make_client(config: ObjectStoreConfig) -> S3Client:
    """An S3 client with bounded timeouts and botocore's standard retry mode."""
    options: dict[str, Any] = {
        "connect_timeout": config.connect_timeout,
        "read_timeout": config.read_timeout,
        "retries": {"max_attempts": config.max_attempts, "mode": "standard"},
    }
    if config.endpoint_url:
        options["s3"] = {"addressing_style": "path"}
    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint_url or None,
        region_name=config.region,
        config=Config(**options),
    )


class Bucket:
    """The bucket operations the connector uses, with errors translated."""

    def __init__(self, source: str, config: ObjectStoreConfig, client: Any) -> None:
        self.source = source
        self.config = config
        self.client: S3Client = client
        self._versioned = config.versioned

    def objects(self, prefix: str) -> Iterator[Mapping[str, Any]]:
        """Current objects under `prefix`, all pages."""
        with self.errors("list objects"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.bucket, Prefix=prefix
            )
            for page in pages:
                yield from page.get("Contents", [])

    def versions(self, prefix: str) -> Iterator[ObjectId]:
        """Every version and delete marker under `prefix`, all pages."""
        marker: tuple[str, str] | None = None
        while True:
            ids, more, marker = self._list_versions(prefix, MAX_DELETE, marker)
            yield from ids
            if not more or marker is None:
                return

    def deletable(self, prefix: str) -> Iterator[ObjectId]:
        """What erasure must remove: every version if versioned, else every object."""
        if self.is_versioned():
            return self.versions(prefix)
        return ({"Key": o["Key"]} for o in self.objects(prefix))

    def stored(self, prefix: str) -> Iterator[Stored]:
        """Everything under `prefix` with its LastModified: every version and delete marker
        if versioned, else every object. Lists one page ahead, so deleting what was yielded
        never removes the entry the next page's marker names."""
        fetch: Callable[[str, Any], Page]
        fetch = self._version_page if self.is_versioned() else self._object_page
        entries, marker = fetch(prefix, None)
        while True:
            ahead = fetch(prefix, marker) if marker is not None else None
            yield from entries
            if ahead is None:
                return
            entries, marker = ahead

    def first_page(self, prefix: str, limit: int) -> tuple[list[ObjectId], bool]:
        """Up to `limit` identifiers to delete under `prefix`, and whether more remain."""
        if self.is_versioned():
            ids, more, _ = self._list_versions(prefix, limit, None)
            return ids, more
        with self.errors("list objects"):
            page = self.client.list_objects_v2(
                Bucket=self.config.bucket, Prefix=prefix, MaxKeys=limit
            )
        return [{"Key": o["Key"]} for o in page.get("Contents", [])], bool(page.get("IsTruncated"))

    def delete(self, ids: list[ObjectId]) -> None:
        """Delete in `DeleteObjects` calls of at most 1000 identifiers."""
        for start in range(0, len(ids), MAX_DELETE):
            batch = ids[start : start + MAX_DELETE]
            with self.errors("delete objects"):
                answer = self.client.delete_objects(
                    Bucket=self.config.bucket,
                    Delete={"Objects": batch, "Quiet": True},  # type: ignore[typeddict-item]
                )
            failed = answer.get("Errors", [])
            if failed:
                code = failed[0].get("Code", "")
                raise self._error(code, 0, f"{len(failed)} of {len(batch)} deletions failed")

    def stream(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks of 64 KiB; never the whole object in memory."""
        with self.errors("read object"):
            body = self.client.get_object(Bucket=self.config.bucket, Key=key)["Body"]
            try:
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()

    def is_versioned(self) -> bool:
        if self._versioned is None:
            with self.errors("read bucket versioning"):
                status = self.client.get_bucket_versioning(Bucket=self.config.bucket)
            self._versioned = status.get("Status") in ("Enabled", "Suspended")
        return self._versioned

    def _list_versions(
        self, prefix: str, limit: int, marker: tuple[str, str] | None
    ) -> tuple[list[ObjectId], bool, tuple[str, str] | None]:
        entries, nxt = self._version_entries(prefix, limit, marker)
        return [_version_id(e) for e in entries], nxt is not None, nxt

    def _version_entries(
        self, prefix: str, limit: int, marker: tuple[str, str] | None
    ) -> tuple[list[Mapping[str, Any]], tuple[str, str] | None]:
        args: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix, "MaxKeys": limit}
        if marker:
            args["KeyMarker"], args["VersionIdMarker"] = marker
        with self.errors("list object versions"):
            page = self.client.list_object_versions(**args)
        entries: list[Mapping[str, Any]] = [
            *page.get("Versions", []),
            *page.get("DeleteMarkers", []),
        ]
        more = bool(page.get("IsTruncated"))
        nxt = (page["NextKeyMarker"], page.get("NextVersionIdMarker", "")) if more else None
        return entries, nxt

    def _version_page(self, prefix: str, marker: tuple[str, str] | None) -> Page:
        entries, nxt = self._version_entries(prefix, MAX_DELETE, marker)
        return [Stored(_version_id(e), e["LastModified"]) for e in entries], nxt

    def _object_page(self, prefix: str, token: str | None) -> Page:
        args: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix}
        if token:
            args["ContinuationToken"] = token
        with self.errors("list objects"):
            page = self.client.list_objects_v2(**args)
        found = [Stored({"Key": o["Key"]}, o["LastModified"]) for o in page.get("Contents", [])]
        return found, page.get("NextContinuationToken") if page.get("IsTruncated") else None

    @contextmanager
    def errors(self, operation: str) -> Iterator[None]:
        """Translate boto3 errors: transient -> retryable, refusals -> terminal."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            raise self._error(code, status, f"cannot {operation} ({code or status})") from exc
        except (NoCredentialsError, ParamValidationError) as exc:
            raise SourceRefusedError(
                f"sources.{self.source}: cannot {operation}: {type(exc).__name__}; "
                "configure AWS credentials for the worker"
            ) from exc
        except BotoCoreError as exc:
            raise StorageUnavailableError(
                f"sources.{self.source}: cannot {operation} at {self.endpoint}: "
                f"{type(exc).__name__}; retry later"
            ) from exc

    @property
    def endpoint(self) -> str:
        return self.config.endpoint_url or "AWS S3"

    def _error(
        self, code: str, status: int, what: str
    ) -> SourceRefusedError | StorageUnavailableError:
        where = f"sources.{self.source}"
        if code in _REFUSED:
            hint = _REFUSED[code].format(bucket=self.config.bucket, name=self.source)
            return SourceRefusedError(f"{where}: {what}: {hint}")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailableError(f"{where}: {what} at {self.endpoint}; retry later")
        return SourceRefusedError(
            f"{where}: {what}; check bucket {self.config.bucket!r} and the worker's access"
        )


def _version_id(entry: Mapping[str, Any]) -> ObjectId:
    return {"Key": entry["Key"], "VersionId": entry.get("VersionId", "null")}
