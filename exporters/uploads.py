"""No multipart upload outlives the run that made it.

An incomplete S3 multipart upload keeps the parts sent so far, and the first holds the
package header with the wrapped data key: decryptable personal data that package expiry
and erasure never see (they deal in objects, and an incomplete upload is none). So:

- `UploadLog`, the `UploadRecorder` the export job gives `storage.upload`, commits a
  `multipart_upload` row before the first part is sent, keeps the run's lease alive while
  parts complete, and closes the row as ``completed`` or ``aborted``.
- `abort_orphaned_uploads` (the maintenance sweep) aborts every recorded upload that no
  live run owns: its request is no longer running, runs under another claim, or its lease
  expired. It also aborts what S3 lists under the storage prefix that nothing recorded,
  once older than `UNRECORDED_AFTER` (uploads from before this record existed).
- `abort_uploads_of` aborts every upload of some requests, live or not: an erasure
  calls it for the subject's exports.

When S3 cannot be reached an upload's row stays open and the next sweep tries again: an
upload is never forgotten. A lifecycle rule on the bucket is the backstop
(``ops/README.md``); `lifecycle_rule_present` checks for it. Logs and audit events carry
request ids and row ids only (object keys are ``exports/<request_id>.zip.enc``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from compliance import audit
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import StorageAccessError, StorageUnavailableError
from compliance.models import DsrRequest, MultipartUpload, RequestStatus
from compliance.worker import lease_expired
from exporters.storage import IncompleteUpload, ObjectStorage, UploadOutcome

log = logging.getLogger("gdpr.exporters.uploads")
BATCH = 100
ACTOR = "maintenance"
UNRECORDED_AFTER = timedelta(hours=1)  # an unrecorded upload this old has no live run


@runtime_checkable
class MultipartStorage(Protocol):
    """A storage backend that makes multipart uploads (`exporters.s3.S3Storage`)."""

    def abort_upload(self, bucket: str, s3_key: str, upload_id: str) -> None: ...

    def incomplete_uploads(self) -> list[IncompleteUpload]: ...

    def abort_rule_days(self) -> int | None: ...


@dataclass(frozen=True)
class UploadLog:
    """Records one run's multipart uploads in the control database (`UploadRecorder`).

    `claim` is the run's claim (``dsr_request.attempts``); None takes the request's
    current one. `beat` renews the run's lease while parts complete (`StepLog.beat`).
    """

    db: Database
    request_id: uuid.UUID
    claim: int | None = None
    clock: Callable[[], datetime] = utcnow
    beat: Callable[[], None] | None = None

    def started(self, bucket: str, s3_key: str, upload_id: str) -> None:
        with self.db.session() as session:
            claim = self.claim
            if claim is None:
                claim = session.scalars(
                    select(DsrRequest.attempts).where(DsrRequest.id == self.request_id)
                ).one()
            row = MultipartUpload(
                request_id=self.request_id,
                bucket=bucket,
                object_key=s3_key,
                upload_id=upload_id,
                claim=claim,
                started_at=self.clock(),
            )
            session.add(row)
            session.flush()
        extra = {"request_id": str(self.request_id), "upload": row.id}
        log.info("dsr.export.upload_started", extra=extra)

    def alive(self) -> None:
        if self.beat is not None:
            self.beat()

    def finished(self, upload_id: str, outcome: UploadOutcome) -> None:
        with self.db.session() as session:
            _close(
                session,
                and_(
                    MultipartUpload.request_id == self.request_id,
                    MultipartUpload.upload_id == upload_id,
                ),
                outcome,
                self.clock(),
            )


@dataclass(frozen=True)
class AbortReport:
    """What a sweep aborted: rows of `multipart_upload`, and S3 upload ids no row recorded.
    `error` says why it stopped early (S3 unreachable or refusing): the rest waits."""

    aborted: tuple[int, ...] = ()
    unrecorded: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class _Open:
    id: int
    request_id: uuid.UUID
    bucket: str
    s3_key: str
    upload_id: str


def abort_orphaned_uploads(
    db: Database, storage: ObjectStorage, settings: Settings, now: datetime, batch: int = BATCH
) -> AbortReport:
    """Abort the uploads no live run owns (see the module docstring). Never raises for
    storage errors: it stops, leaves what is left open for the next sweep, and says so."""
    if not isinstance(storage, MultipartStorage):
        return AbortReport()  # a folder makes no multipart uploads
    aborted: list[int] = []
    unrecorded: list[str] = []
    try:
        for row in _open_rows(db, _orphaned(now, settings.lease_seconds), batch):
            aborted += _abort_recorded(db, storage, row, now, reason="orphaned")
        for upload in _unrecorded(db, storage.incomplete_uploads()):
            if upload.initiated <= now - UNRECORDED_AFTER:
                unrecorded += _abort_listed(storage, upload)
    except (StorageUnavailableError, StorageAccessError) as exc:
        log.warning("dsr.export.upload_sweep_stopped", extra={"error": str(exc)})
        return AbortReport(tuple(aborted), tuple(unrecorded), str(exc))
    return AbortReport(tuple(aborted), tuple(unrecorded))


def abort_uploads_of(
    db: Database, storage: ObjectStorage, request_ids: Collection[uuid.UUID], now: datetime
) -> AbortReport:
    """Abort every incomplete upload of these requests' packages, live or not: those on
    record, and those S3 lists under their keys that nothing recorded, however young.

    For an erasure: call it with the subject's export requests. Each abort is committed
    as it is done; a storage error then propagates (`StorageUnavailableError` is
    retryable), and what is left stays open, for a retry or the maintenance sweep.
    """
    if not request_ids or not isinstance(storage, MultipartStorage):
        return AbortReport()
    wanted = set(request_ids)
    aborted: list[int] = []
    recorded = MultipartUpload.request_id.in_(wanted)
    for row in _open_rows(db, recorded, BATCH):
        aborted += _abort_recorded(db, storage, row, now, reason="erased")
    unrecorded: list[str] = []
    for upload in _unrecorded(db, storage.incomplete_uploads()):
        if request_of(upload.s3_key) in wanted:
            unrecorded += _abort_listed(storage, upload)
    return AbortReport(tuple(aborted), tuple(unrecorded))


def lifecycle_rule_present(storage: ObjectStorage) -> bool:
    """Whether the bucket aborts incomplete multipart uploads under the storage prefix by
    itself (an ``AbortIncompleteMultipartUpload`` lifecycle rule, see ``ops/README.md``).
    False for a backend that makes no multipart uploads. Raises storage errors (a policy
    without ``s3:GetLifecycleConfiguration`` is `StorageAccessError`)."""
    return isinstance(storage, MultipartStorage) and storage.abort_rule_days() is not None


def request_of(s3_key: str) -> uuid.UUID | None:
    """The request a package key names (``.../exports/<request_id>.zip.enc``), if any."""
    try:
        return uuid.UUID(s3_key.rsplit("/", 1)[-1].split(".", 1)[0])
    except ValueError:
        return None


def _orphaned(now: datetime, lease_seconds: float) -> ColumnElement[bool]:
    """An upload's request is no longer running, runs under another claim (a takeover),
    or its lease expired (rows without a lease: no heartbeat for a lease's length)."""
    return or_(
        DsrRequest.status != RequestStatus.RUNNING,
        DsrRequest.attempts != MultipartUpload.claim,
        lease_expired(now, lease_seconds),
    )


def _open_rows(db: Database, where: ColumnElement[bool], batch: int) -> Iterator[_Open]:
    """Unfinished uploads matching `where`, in id order, a batch per transaction."""
    after = 0
    while True:
        with db.session() as session:
            rows = session.execute(
                select(
                    MultipartUpload.id,
                    MultipartUpload.request_id,
                    MultipartUpload.bucket,
                    MultipartUpload.object_key,
                    MultipartUpload.upload_id,
                )
                .join(DsrRequest, DsrRequest.id == MultipartUpload.request_id)
                .where(MultipartUpload.finished_at.is_(None), MultipartUpload.id > after, where)
                .order_by(MultipartUpload.id)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield _Open(row.id, row.request_id, row.bucket, row.object_key, row.upload_id)
            after = row.id


def _abort_recorded(
    db: Database, storage: MultipartStorage, row: _Open, now: datetime, *, reason: str
) -> list[int]:
    """Abort one recorded upload (gone already counts), then close its row once."""
    storage.abort_upload(row.bucket, row.s3_key, row.upload_id)
    with db.session() as session:
        if not _close(session, MultipartUpload.id == row.id, UploadOutcome.ABORTED, now):
            return []  # its run, or another sweep, closed it meanwhile
        audit.record(
            session,
            actor=ACTOR,
            action="export.upload.aborted",
            now=now,
            request_id=row.request_id,
            details={"upload": row.id, "reason": reason},
        )
    log.info(
        "dsr.export.upload_aborted",
        extra={"request_id": str(row.request_id), "upload": row.id, "reason": reason},
    )
    return [row.id]


def _unrecorded(db: Database, listed: list[IncompleteUpload]) -> list[IncompleteUpload]:
    """The listed uploads no open row accounts for (an open row's upload is the first
    pass's to decide: live, or left for the next sweep). S3 is listed first, so an upload
    recorded in between has an open row here and is left alone."""
    with db.session() as session:
        open_ids = set(
            session.scalars(
                select(MultipartUpload.upload_id).where(MultipartUpload.finished_at.is_(None))
            )
        )
    return [upload for upload in listed if upload.upload_id not in open_ids]


def _abort_listed(storage: MultipartStorage, upload: IncompleteUpload) -> list[str]:
    storage.abort_upload(upload.bucket, upload.s3_key, upload.upload_id)
    request_id = request_of(upload.s3_key)
    log.warning(
        "dsr.export.unrecorded_upload_aborted",
        extra={"request_id": str(request_id or "?"), "s3_upload": upload.upload_id},
    )
    return [upload.upload_id]


def _close(
    session: Session, where: ColumnElement[bool], outcome: UploadOutcome, now: datetime
) -> bool:
    """Close the open upload row(s) matching `where`; False if none was open."""
    result = session.execute(
        update(MultipartUpload)
        .where(where, MultipartUpload.finished_at.is_(None))
        .values(finished_at=now, outcome=outcome.value)
    )
    return bool(getattr(result, "rowcount", 0))
