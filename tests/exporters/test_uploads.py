"""Multipart uploads are on record before their first part, and none outlives its run:
a killed worker's or a cut-off upload is aborted by the sweep; a live one is left alone."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import func, select, update

from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import SourceUnavailableError, StorageUnavailableError
from compliance.execution import RunContext
from compliance.identities import Identities
from compliance.keyring import load_keyring
from compliance.models import AuditEvent, DsrRequest, MultipartUpload, RequestKind
from compliance.sources.base import (
    Action,
    Disposition,
    EraseResult,
    ExportItem,
    FileItem,
    LocationPlan,
    Residue,
    SourcePlan,
)
from exporters.job import package_key, run_export
from exporters.s3 import PART_SIZE, S3Storage
from exporters.storage import UploadOutcome, open_storage
from exporters.uploads import (
    UNRECORDED_AFTER,
    AbortReport,
    UploadLog,
    abort_orphaned_uploads,
    abort_uploads_of,
    lifecycle_rule_present,
)
from tests.compliance.helpers import NOW, ada, submit_request

pytestmark = pytest.mark.fault  # part of the fault suite

MIB = 1024 * 1024


# --- helpers ----------------------------------------------------------------------------


@dataclass
class VaultSource:
    """One big incompressible file; with `hang`, the file never ends (a stuck run)."""

    name: str = "vault"
    kind: str = "test"
    size: int = 2 * PART_SIZE + 4 * MIB
    hang: bool = False

    def identity_types(self) -> frozenset[str]:
        return frozenset({"email"})

    def resolve(self, identities: Identities) -> Identities:
        return identities

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        return SourcePlan(self.name, self.kind, (LocationPlan("files", Disposition.EXPORT, 1),))

    def export(self, identities: Identities) -> Iterator[ExportItem]:
        yield FileItem(self.name, "big.bin", self._chunks, self.size)

    def _chunks(self) -> Iterator[bytes]:
        for _ in range(self.size // MIB):
            yield os.urandom(MIB)
        while self.hang:
            time.sleep(1)

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        return EraseResult(done=True)

    def verify(self, identities: Identities) -> list[Residue]:
        return []

    def close(self) -> None:
        pass


def export_until_killed(settings: Settings, request_id: uuid.UUID) -> None:
    """A worker process: runs the real export of a package that never ends."""
    db = Database.connect(settings)
    with db.session() as session:
        subject = session.get_one(DsrRequest, request_id).subject
    ctx = RunContext(
        settings=settings,
        db=db,
        keyring=load_keyring(settings),
        sources=[VaultSource(hang=True)],
        request_id=request_id,
        subject=subject,
        identities=ada(),
        claim=1,
    )
    run_export(ctx)


def running_export(
    db: Database,
    settings: Settings,
    *,
    lease_until: datetime | None,
    updated_at: datetime = NOW,
    status: str = "running",
    attempts: int = 1,
) -> uuid.UUID:
    """An export request claimed by a run (claim 1 unless `attempts` says otherwise)."""
    request = submit_request(db, settings, RequestKind.EXPORT)
    with db.session() as session:
        session.execute(
            update(DsrRequest)
            .where(DsrRequest.id == request.id)
            .values(
                status=status, attempts=attempts, lease_until=lease_until, updated_at=updated_at
            )
        )
    return request.id


def recorded_upload(db: Database, client: Any, bucket: str, request_id: uuid.UUID) -> str:
    """An upload of the request's package with one part sent, recorded under claim 1."""
    key = f"packages/{package_key(request_id)}"
    upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"header, wrapped key"
    )
    UploadLog(db, request_id, claim=1, clock=lambda: NOW).started(bucket, key, upload_id)
    return upload_id


def incomplete(client: Any, bucket: str) -> list[str]:
    return [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def upload_rows(db: Database) -> list[MultipartUpload]:
    with db.session() as session:
        return list(session.scalars(select(MultipartUpload).order_by(MultipartUpload.id)))


def wait_for_first_part(db: Database, client: Any, bucket: str, timeout: float = 60) -> str:
    """The upload id of the first recorded upload, once S3 holds one of its parts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in upload_rows(db):
            reply = client.list_parts(Bucket=bucket, Key=row.object_key, UploadId=row.upload_id)
            if reply.get("Parts"):
                return row.upload_id
        time.sleep(0.1)
    raise AssertionError("no part of a recorded upload reached S3 in time")


def body(size: int, after_first_part: Any = None) -> Iterator[bytes]:
    """`size` random bytes in 1 MiB chunks; `after_first_part()` runs once two parts are
    formed and the first has reached S3 (mid-upload)."""
    sent = 0
    while sent < size:
        if sent == 2 * PART_SIZE and after_first_part is not None:
            after_first_part()
        yield os.urandom(MIB)
        sent += MIB


class Proxy:
    """A TCP proxy in front of the S3 server: `cut()` drops every connection and stops
    listening; `start()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while not self._stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self.target)
                self._open += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def s3(settings: Settings, s3_settings: Settings, s3_endpoint: str) -> Settings:
    """The control database under test, storage on the local S3 server (prefix packages)."""
    return settings.with_overrides(storage_url=s3_settings.storage_url, s3_endpoint_url=s3_endpoint)


@pytest.fixture
def client(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[Proxy]:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    running = Proxy((host, int(port)))
    running.start()
    yield running
    running.cut()


# --- the four faults and non-faults -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.s3
def test_a_killed_workers_upload_is_on_record_and_aborted_once_its_lease_expires(
    db: Database, s3: Settings, client: Any, s3_bucket: str
) -> None:
    request_id = running_export(db, s3, lease_until=utcnow() + timedelta(seconds=30))
    worker = multiprocessing.get_context("spawn").Process(
        target=export_until_killed, args=(s3, request_id)
    )
    worker.start()
    try:
        upload_id = wait_for_first_part(db, client, s3_bucket)
    finally:
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
    assert worker.exitcode == -signal.SIGKILL
    assert incomplete(client, s3_bucket) == [upload_id]
    [row] = upload_rows(db)
    assert (row.request_id, row.claim, row.finished_at) == (request_id, 1, None)

    storage = open_storage(s3)
    assert abort_orphaned_uploads(db, storage, s3, utcnow()).aborted == ()  # lease still runs
    later = utcnow() + timedelta(seconds=s3.lease_seconds + 1)
    assert abort_orphaned_uploads(db, storage, s3, later).aborted == (row.id,)
    assert incomplete(client, s3_bucket) == []
    [row] = upload_rows(db)
    assert (row.outcome, row.finished_at) == (UploadOutcome.ABORTED, later)
    with db.session() as session:
        audited = select(func.count()).where(AuditEvent.action == "export.upload.aborted")
        assert session.scalar(audited) == 1


@pytest.mark.slow
@pytest.mark.s3
def test_an_upload_cut_off_from_s3_stays_on_record_until_a_sweep_reaches_s3(
    db: Database, s3: Settings, client: Any, s3_bucket: str, proxy: Proxy
) -> None:
    request_id = running_export(db, s3, lease_until=NOW + timedelta(seconds=30))
    via_proxy = s3.with_overrides(s3_endpoint_url=proxy.url)
    storage = open_storage(via_proxy)

    def cut_off() -> None:
        wait_for_first_part(db, client, s3_bucket)
        proxy.cut()

    recorder = UploadLog(db, request_id, claim=1, clock=lambda: NOW)
    with pytest.raises(StorageUnavailableError, match="S3 unreachable"):
        storage.upload(package_key(request_id), body(3 * PART_SIZE, cut_off), recorder)
    [row] = upload_rows(db)
    assert row.finished_at is None  # the abort could not reach S3 either
    assert incomplete(client, s3_bucket) == [row.upload_id]

    later = NOW + timedelta(hours=1)
    still_down = abort_orphaned_uploads(db, storage, via_proxy, later)
    assert still_down.aborted == ()
    assert "S3 unreachable" in still_down.error
    assert upload_rows(db)[0].finished_at is None

    proxy.start()
    assert abort_orphaned_uploads(db, storage, via_proxy, later).aborted == (row.id,)
    assert incomplete(client, s3_bucket) == []
    assert upload_rows(db)[0].outcome == UploadOutcome.ABORTED


@pytest.mark.s3
def test_a_completed_upload_is_marked_completed_and_never_aborted(
    db: Database, s3: Settings, client: Any, s3_bucket: str
) -> None:
    request_id = running_export(db, s3, lease_until=NOW + timedelta(seconds=30))
    ctx = RunContext(
        settings=s3,
        db=db,
        keyring=load_keyring(s3),
        sources=[VaultSource()],
        request_id=request_id,
        subject="ps_test",
        identities=ada(),
        clock=lambda: NOW,
        claim=1,
    )
    summary = run_export(ctx)
    [row] = upload_rows(db)
    assert (row.outcome, row.finished_at, row.claim) == (UploadOutcome.COMPLETED, NOW, 1)
    assert row.object_key == f"packages/{summary['object_key']}"

    with db.session() as session:  # the run is over: nothing owns the upload any more
        session.execute(
            update(DsrRequest)
            .where(DsrRequest.id == request_id)
            .values(status="completed", lease_until=None)
        )
    report = abort_orphaned_uploads(db, open_storage(s3), s3, NOW + timedelta(days=30))
    assert report == AbortReport()
    assert open_storage(s3).size(summary["object_key"]) == summary["size"]
    assert upload_rows(db)[0].outcome == UploadOutcome.COMPLETED


@pytest.mark.s3
def test_the_upload_of_a_live_run_is_left_alone_and_completes(
    db: Database, s3: Settings, client: Any, s3_bucket: str
) -> None:
    request_id = running_export(db, s3, lease_until=NOW + timedelta(seconds=30))
    storage = open_storage(s3)
    reports = []

    def sweep_mid_upload() -> None:
        wait_for_first_part(db, client, s3_bucket)
        reports.append(abort_orphaned_uploads(db, storage, s3, NOW + timedelta(seconds=10)))

    recorder = UploadLog(db, request_id, claim=1, clock=lambda: NOW)
    size = storage.upload(package_key(request_id), body(3 * PART_SIZE, sweep_mid_upload), recorder)
    assert size == 3 * PART_SIZE
    assert [(r.aborted, r.unrecorded, r.error) for r in reports] == [((), (), "")]
    assert upload_rows(db)[0].outcome == UploadOutcome.COMPLETED
    assert incomplete(client, s3_bucket) == []


# --- who owns an upload ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "run",
    [
        {"status": "queued", "lease_until": None},  # released: no run at all
        {"status": "failed", "lease_until": None},
        {"attempts": 2, "lease_until": NOW + timedelta(minutes=1)},  # taken over
        {"lease_until": NOW - timedelta(seconds=1)},  # its lease ran out
        {"lease_until": None, "updated_at": NOW - timedelta(hours=1)},  # no lease, silent
    ],
    ids=["released", "failed", "taken-over", "lease-expired", "silent-without-lease"],
)
@pytest.mark.s3
def test_an_upload_no_live_run_owns_is_aborted(
    db: Database, s3: Settings, client: Any, s3_bucket: str, run: dict[str, Any]
) -> None:
    request_id = running_export(db, s3, **run)
    recorded_upload(db, client, s3_bucket, request_id)
    report = abort_orphaned_uploads(db, open_storage(s3), s3, NOW)
    assert report.aborted == (upload_rows(db)[0].id,)
    assert incomplete(client, s3_bucket) == []


@pytest.mark.parametrize(
    "run",
    [
        {"lease_until": NOW + timedelta(seconds=1)},
        {"lease_until": None, "updated_at": NOW - timedelta(seconds=5)},  # older rows
    ],
    ids=["lease-alive", "recent-heartbeat-without-lease"],
)
@pytest.mark.s3
def test_an_upload_its_run_still_owns_is_left_alone(
    db: Database, s3: Settings, client: Any, s3_bucket: str, run: dict[str, Any]
) -> None:
    request_id = running_export(db, s3, **run)
    upload_id = recorded_upload(db, client, s3_bucket, request_id)
    assert abort_orphaned_uploads(db, open_storage(s3), s3, NOW) == AbortReport()
    assert incomplete(client, s3_bucket) == [upload_id]
    assert upload_rows(db)[0].finished_at is None


@pytest.mark.s3
def test_an_upload_the_sweep_aborted_under_its_run_fails_the_upload_retryably(
    db: Database, s3: Settings, client: Any, s3_bucket: str
) -> None:
    request_id = running_export(db, s3, lease_until=NOW + timedelta(seconds=30))
    storage = open_storage(s3)

    def lease_runs_out() -> None:
        wait_for_first_part(db, client, s3_bucket)
        abort_orphaned_uploads(db, storage, s3, NOW + timedelta(minutes=1))

    recorder = UploadLog(db, request_id, claim=1, clock=lambda: NOW)
    with pytest.raises(StorageUnavailableError):  # S3: NoSuchUpload; the local server: 500
        storage.upload(package_key(request_id), body(3 * PART_SIZE, lease_runs_out), recorder)
    assert upload_rows(db)[0].outcome == UploadOutcome.ABORTED
    assert incomplete(client, s3_bucket) == []


@pytest.mark.s3
def test_an_upload_already_gone_from_s3_counts_as_aborted(
    db: Database, s3: Settings, client: Any, s3_bucket: str
) -> None:
    request_id = running_export(db, s3, status="failed", lease_until=None)
    upload_id = recorded_upload(db, client, s3_bucket, request_id)
    key = upload_rows(db)[0].object_key
    client.abort_multipart_upload(Bucket=s3_bucket, Key=key, UploadId=upload_id)
    report = abort_orphaned_uploads(db, open_storage(s3), s3, NOW)
    assert report.aborted == (upload_rows(db)[0].id,)
    assert upload_rows(db)[0].outcome == UploadOutcome.ABORTED


@pytest.mark.s3
def test_an_upload_that_cannot_be_recorded_is_aborted_before_any_part_is_sent(
    s3_settings: Settings, client: Any, s3_bucket: str
) -> None:
    sent: list[str] = []

    class DownRecorder:
        def started(self, bucket: str, s3_key: str, upload_id: str) -> None:
            reply = client.list_parts(Bucket=bucket, Key=s3_key, UploadId=upload_id)
            sent.extend(reply.get("Parts", []))
            raise SourceUnavailableError("control database unavailable: OperationalError")

        def alive(self) -> None:
            raise AssertionError("no part may be sent")

        def finished(self, upload_id: str, outcome: UploadOutcome) -> None:
            pass

    with pytest.raises(SourceUnavailableError):
        open_storage(s3_settings).upload("exports/x.zip.enc", body(3 * PART_SIZE), DownRecorder())
    assert sent == []
    assert incomplete(client, s3_bucket) == []


# --- uploads nothing recorded -------------------------------------------------------------


@pytest.mark.s3
def test_an_unrecorded_upload_is_aborted_once_older_than_an_hour_and_only_under_the_prefix(
    db: Database, s3: Settings, client: Any, s3_bucket: str
) -> None:
    ours = client.create_multipart_upload(Bucket=s3_bucket, Key="packages/exports/old.zip.enc")
    theirs = client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/upload.bin")
    started = client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"][0]["Initiated"]
    storage = open_storage(s3)

    young = abort_orphaned_uploads(db, storage, s3, started + UNRECORDED_AFTER / 2)
    assert young.unrecorded == ()
    old = abort_orphaned_uploads(db, storage, s3, started + UNRECORDED_AFTER * 2)
    assert old.unrecorded == (ours["UploadId"],)
    assert incomplete(client, s3_bucket) == [theirs["UploadId"]]
    assert upload_rows(db) == []


# --- erasure ----------------------------------------------------------------------------


@pytest.mark.s3
def test_erasing_a_subject_aborts_the_uploads_of_their_exports_live_or_not(
    db: Database, s3: Settings, client: Any, s3_bucket: str
) -> None:
    theirs = running_export(db, s3, lease_until=NOW + timedelta(minutes=5))
    recorded_upload(db, client, s3_bucket, theirs)
    key = f"packages/{package_key(theirs)}"
    client.create_multipart_upload(Bucket=s3_bucket, Key=key)  # unrecorded, just started
    other = running_export(db, s3, lease_until=NOW + timedelta(minutes=5))
    kept = recorded_upload(db, client, s3_bucket, other)

    report = abort_uploads_of(db, open_storage(s3), [theirs], NOW)
    assert report.aborted == (upload_rows(db)[0].id,)
    assert len(report.unrecorded) == 1
    assert incomplete(client, s3_bucket) == [kept]
    assert [r.outcome for r in upload_rows(db)] == [UploadOutcome.ABORTED, None]


# --- lifecycle rule and the folder backend ---------------------------------------------------


def abort_rule(prefix: str, days: int = 1) -> dict[str, Any]:
    return {
        "ID": "abort-incomplete-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": prefix},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
    }


@pytest.mark.s3
def test_the_lifecycle_rule_is_found_only_when_it_covers_the_storage_prefix(
    s3_settings: Settings, client: Any, s3_bucket: str
) -> None:
    storage = open_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    assert not lifecycle_rule_present(storage)
    rules = {"Rules": [abort_rule("other/")]}
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration=rules)
    assert not lifecycle_rule_present(storage)
    rules = {"Rules": [abort_rule("other/"), abort_rule("packages/", days=2)]}
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration=rules)
    assert lifecycle_rule_present(storage)
    assert storage.abort_rule_days() == 2
    rules = {"Rules": [abort_rule("")]}
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration=rules)
    assert storage.abort_rule_days() == 1


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_the_folder_backend_ignores_the_recorder_and_has_nothing_to_sweep(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    folder = settings.with_overrides(storage_url=(tmp_path / "objects").as_uri())
    storage = open_storage(folder)
    request_id = running_export(db, folder, status="failed", lease_until=None)
    recorder = UploadLog(db, request_id, claim=1, clock=lambda: NOW)
    assert storage.upload("exports/x.zip.enc", body(3 * PART_SIZE), recorder) == 3 * PART_SIZE
    assert upload_rows(db) == []
    assert abort_orphaned_uploads(db, storage, folder, NOW) == AbortReport()
    assert abort_uploads_of(db, storage, [request_id], NOW) == AbortReport()
    assert not lifecycle_rule_present(storage)
