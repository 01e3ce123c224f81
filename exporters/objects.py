"""What every object-storage backend shares: the `ObjectStorage` interface, key rules,
and how a backend that uploads in parts reports its uploads (`UploadRecorder`).

`exporters.storage` (the folder backend, `open_storage`) and `exporters.s3` both build on
this module, so neither imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from compliance.errors import ValidationError

READ_CHUNK = 1024 * 1024
MAX_KEY = 900


class UploadOutcome(StrEnum):
    """How a multipart upload ended (``multipart_upload.outcome``)."""

    COMPLETED = "completed"
    ABORTED = "aborted"


class UploadRecorder(Protocol):
    """Keeps track of the multipart uploads of one run (`exporters.uploads.UploadLog`)."""

    def started(self, bucket: str, s3_key: str, upload_id: str) -> None:
        """Record the upload durably; called before its first part is sent. If this
        raises, the upload is aborted and the error propagates."""
        ...

    def alive(self) -> None:
        """Called as parts complete: the upload is making progress (renew the run's
        lease). If this raises, the upload is aborted and the error propagates."""
        ...

    def finished(self, upload_id: str, outcome: UploadOutcome) -> None:
        """The upload completed, or was aborted (so its parts are gone)."""
        ...


class NoRecorder:
    """The default recorder: keeps no record (uploads outside a request's run: tests, bench)."""

    def started(self, bucket: str, s3_key: str, upload_id: str) -> None:
        pass

    def alive(self) -> None:
        pass

    def finished(self, upload_id: str, outcome: UploadOutcome) -> None:
        pass


NO_RECORDER = NoRecorder()


@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload the storage lists as neither completed nor aborted."""

    bucket: str
    s3_key: str  # the full key in the bucket, prefix included
    upload_id: str
    initiated: datetime


class ObjectStorage(Protocol):
    """Where encrypted packages live. Keys are relative paths such as ``exports/<id>.zip.enc``."""

    def upload(
        self, key: str, chunks: Iterable[bytes], recorder: UploadRecorder = NO_RECORDER
    ) -> int:
        """Store the stream under `key` atomically; returns the number of bytes written.
        A multipart upload, if the backend makes one, is reported to `recorder`."""
        ...

    def download(self, key: str) -> Iterator[bytes]:
        """Stream the object in chunks; `NotFoundError` (raised on the call) if missing."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def keys(self, prefix: str) -> Iterator[str]:
        """The keys that start with `prefix` (a folder such as ``audit-checkpoints/``), in
        no particular order, read page by page."""
        ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the storage root or confuse a backend."""
    parts = key.split("/")
    if (
        not key
        or len(key) > MAX_KEY
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in {"", ".", ".."} for part in parts)
    ):
        raise ValidationError(
            "object key must be a relative path without '..', '.', '//' or backslashes"
        )
    return key
