"""An erasure revokes the subject's export links and deletes their packages; nobody
else's export is touched, a re-run changes nothing, and the receipt (and its mail) say so.

The world of these tests is real: the sample shop and CRM (SQLite), the control database
(SQLite and PostgreSQL), the package storage (a folder, and the local S3 server), the
worker running the real runners, and the download service over a socket.
"""

from __future__ import annotations

import email
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from compliance import holds
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.dispatch import RecordingDispatcher
from compliance.errors import StorageUnavailableError
from compliance.execution import RunContext
from compliance.identities import Identities, parse_identity
from compliance.keyring import Keyring, load_keyring
from compliance.models import (
    AuditEvent,
    DownloadLink,
    DsrIdentity,
    DsrRequest,
    DsrStep,
    ExportPackage,
    RequestKind,
    StepStatus,
)
from compliance.requests import Submission, submit
from compliance.sealed import load_identities
from compliance.sources.base import DataSource
from compliance.worker import Outcome, Worker, execute
from exporters import links
from exporters.revoke import EXPORTS_SOURCE, REVOKE_ACTION, revoke_subject_exports
from exporters.storage import ObjectStorage, open_storage
from exporters.web import create_app
from exporters.web_server import start_in_thread
from tasks import runtime
from tests.compliance.helpers import FakeSource
from tests.compliance.sources.sqlsample import load
from tests.exporters.test_web import call
from tests.sample_app.fixtures import sample_databases

pytestmark = pytest.mark.fault  # part of the fault suite

LINK = re.compile(r"https?://\S+/d/([A-Za-z0-9_-]+)")
ADA_EMAIL = ("email", "ada@example.com")
ADA_USER = ("user_id", "1")
BOB_EMAIL = ("email", "bob@example.com")
LINE = "The download links of your earlier data exports no longer work"


@dataclass
class Shop:
    """The sample application, its worker and the download service, on one storage."""

    settings: Settings
    db: Database
    keyring: Keyring
    storage: ObjectStorage
    worker: Worker
    url: str
    outbox: Path

    def submit(self, kind: RequestKind, *identities: tuple[str, str], **options: Any) -> uuid.UUID:
        given = Identities.of(parse_identity(t, v) for t, v in identities)
        request = submit(
            self.db,
            self.settings,
            self.keyring,
            Submission(kind, given, pre_approved=True, **options),
            sources=self.worker.sources,
            operator="alice",
            now=utcnow(),
            dispatcher=RecordingDispatcher(),
        )
        return request.id

    def run(self, request_id: uuid.UUID, worker: Worker | None = None) -> Outcome:
        return execute(worker or self.worker, request_id)

    def download(self, token: str) -> tuple[int, str, bytes]:
        page = call(f"{self.url}/d/{token}")
        reply = call(f"{self.url}/d/{token}", "POST")
        assert page.status == reply.status
        return reply.status, page.text, reply.body

    def mails(self) -> list[EmailMessage]:
        found = []
        for path in sorted(self.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
            message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found

    def receipt(self, request_id: uuid.UUID) -> tuple[str, dict[str, Any]]:
        with self.db.session() as session:
            request = session.get_one(DsrRequest, request_id)
            return request.status, dict(request.receipt or {})

    def package(self, request_id: uuid.UUID) -> ExportPackage:
        with self.db.session() as session:
            return session.scalars(
                select(ExportPackage).where(ExportPackage.request_id == request_id)
            ).one()

    def actions(self, action: str) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).where(AuditEvent.action == action)) or 0)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Package storage: a local folder, then a fresh bucket on the local S3 server."""
    if request.param == "file":
        return {"storage_url": (tmp_path / "objects").as_uri()}
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return {"storage_url": f"s3://{bucket}/gdpr", "s3_endpoint_url": endpoint}


@pytest.fixture
def shop(
    db: Database, settings: Settings, storage_url: dict[str, str], tmp_path: Path
) -> Iterator[Shop]:
    folder = tmp_path / "sample"
    folder.mkdir()
    with sample_databases("sqlite", folder) as dbs:
        registry = load(dbs, folder)
        current = settings.with_overrides(
            mail_url=(tmp_path / "outbox").as_uri(), rate_limit_per_minute=1000, **storage_url
        )
        keyring = load_keyring(current)
        storage = open_storage(current)
        worker = Worker(
            settings=current,
            db=db,
            keyring=keyring,
            sources=registry.sources,
            runners={
                RequestKind.EXPORT: runtime.run_export,
                RequestKind.ERASURE: runtime.run_erasure,
            },
        )
        server = start_in_thread(create_app(current, db, storage, keyring))
        try:
            yield Shop(current, db, keyring, storage, worker, server.url, tmp_path / "outbox")
        finally:
            server.stop()
            registry.close()


def export_with_mailed_link(shop: Shop, *identities: tuple[str, str]) -> tuple[uuid.UUID, str]:
    """A completed export whose link the subject got by mail."""
    before = len(shop.mails())
    request_id = shop.submit(RequestKind.EXPORT, *identities)
    assert shop.run(request_id) == Outcome.COMPLETED
    (mail,) = shop.mails()[before:]
    body = mail.get_body(("plain",))
    assert body is not None
    match = LINK.search(str(body.get_content()))
    assert match is not None
    return request_id, match.group(1)


def export_handed_over(
    shop: Shop, *identities: tuple[str, str], worker: Worker | None = None
) -> tuple[uuid.UUID, str]:
    """A completed export with no email identity: an operator issues its link."""
    request_id = shop.submit(RequestKind.EXPORT, *identities)
    assert shop.run(request_id, worker) == Outcome.COMPLETED
    with shop.db.session() as session:
        return request_id, links.issue_link(session, request_id, shop.settings, utcnow(), "bob")


def assert_serves_a_zip(shop: Shop, token: str) -> None:
    status, page, body = shop.download(token)
    assert status == 200 and ">Download</button>" in page
    assert body.startswith(b"PK\x03\x04")


def assert_not_found(shop: Shop, token: str) -> None:
    """The same page and status as a token nobody ever issued."""
    status, page, _ = shop.download(token)
    unknown_status, unknown_page, _ = shop.download(links.new_token())
    assert (status, page) == (unknown_status, unknown_page)
    assert status == 404 and "This download link is not valid" in page


def erasure_text(shop: Shop) -> str:
    (mail,) = [m for m in shop.mails() if "erased" in str(m["Subject"])]
    text, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text is not None and html is not None
    assert LINE in str(html.get_content())
    return str(text.get_content())


# --- end to end ------------------------------------------------------------------------------


def test_an_erasure_by_email_revokes_the_links_and_deletes_the_packages_of_the_subject(
    shop: Shop,
) -> None:
    by_email, mailed = export_with_mailed_link(shop, ADA_EMAIL)
    by_user_id, handed = export_handed_over(shop, ADA_USER)
    bob, bobs = export_with_mailed_link(shop, BOB_EMAIL)
    for token in (mailed, handed, bobs):
        assert_serves_a_zip(shop, token)
    keys = {rid: shop.package(rid).object_key for rid in (by_email, by_user_id, bob)}
    assert all(shop.storage.exists(key) for key in keys.values())

    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    assert shop.run(erasure) == Outcome.COMPLETED

    status, receipt = shop.receipt(erasure)
    assert status == "completed"
    assert receipt["exports"] == {"links_revoked": 2, "packages_deleted": 2}
    for token in (mailed, handed):
        assert_not_found(shop, token)
    for request_id in (by_email, by_user_id):
        assert not shop.storage.exists(keys[request_id])
        assert shop.package(request_id).deleted_at is not None
    assert_serves_a_zip(shop, bobs)
    assert shop.storage.exists(keys[bob]) and shop.package(bob).deleted_at is None
    assert LINE in erasure_text(shop)
    assert shop.actions("export.package.deleted") == 2


def test_an_export_by_user_id_is_found_through_the_identities_the_erasure_discovered(
    shop: Shop,
) -> None:
    """The export's own records know only the user id (its source linked nothing); the
    erasure by email finds it because the shop linked the email to that user id."""
    blind = replace(shop.worker, sources=(FakeSource("app", answers=("user_id",)),))
    export, token = export_handed_over(shop, ADA_USER, worker=blind)
    with shop.db.session() as session:
        known = session.scalars(select(DsrIdentity.type).where(DsrIdentity.request_id == export))
        assert list(known) == ["user_id"]
    assert_serves_a_zip(shop, token)

    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    assert shop.run(erasure) == Outcome.COMPLETED

    assert shop.receipt(erasure)[1]["exports"] == {"links_revoked": 1, "packages_deleted": 1}
    assert_not_found(shop, token)
    assert not shop.storage.exists(shop.package(export).object_key)


def test_rerunning_the_revocation_of_a_completed_erasure_changes_and_counts_nothing(
    shop: Shop,
) -> None:
    _, token = export_with_mailed_link(shop, ADA_EMAIL)
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    assert shop.run(erasure) == Outcome.COMPLETED
    events = shop.actions("link.revoked"), shop.actions("export.package.deleted")

    again = revoke_subject_exports(context(shop, erasure), shop.storage)

    assert again == {"links_revoked": 1, "packages_deleted": 1}
    assert (shop.actions("link.revoked"), shop.actions("export.package.deleted")) == events
    assert_not_found(shop, token)


def test_a_storage_outage_retries_and_the_retry_counts_each_package_once(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = export_with_mailed_link(shop, ADA_EMAIL)
    second, _ = export_handed_over(shop, ADA_USER)
    flaky = Flaky(shop.storage, fail_on=shop.package(second).object_key)
    monkeypatch.setattr("exporters.storage.open_storage", lambda settings: flaky)
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)

    with pytest.raises(StorageUnavailableError):
        shop.run(erasure)

    assert shop.receipt(erasure)[0] == "queued"  # released, to be retried
    assert not shop.storage.exists(shop.package(first).object_key)
    assert shop.storage.exists(shop.package(second).object_key)
    assert not [m for m in shop.mails() if "erased" in str(m["Subject"])]  # not mailed yet
    step = revoke_step(shop, erasure)
    assert step.status == StepStatus.FAILED
    assert step.counts == {"links_revoked": 2, "packages_deleted": 1}

    monkeypatch.setattr("exporters.storage.open_storage", lambda settings: shop.storage)
    assert shop.run(erasure) == Outcome.COMPLETED

    assert shop.receipt(erasure)[1]["exports"] == {"links_revoked": 2, "packages_deleted": 2}
    assert not shop.storage.exists(shop.package(second).object_key)
    assert shop.actions("export.package.deleted") == 2
    assert shop.actions("link.revoked") == 2
    assert revoke_step(shop, erasure).status == StepStatus.DONE


def test_a_package_already_gone_from_storage_is_still_marked_and_its_link_revoked(
    shop: Shop,
) -> None:
    export, token = export_with_mailed_link(shop, ADA_EMAIL)
    shop.storage.delete(shop.package(export).object_key)
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    assert shop.run(erasure) == Outcome.COMPLETED
    assert shop.receipt(erasure)[1]["exports"] == {"links_revoked": 1, "packages_deleted": 1}
    assert shop.package(export).deleted_at is not None
    assert_not_found(shop, token)


def test_a_copy_a_key_rotation_uploaded_during_the_deletion_is_deleted_too(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    export, _ = export_with_mailed_link(shop, ADA_EMAIL)
    key = shop.package(export).object_key
    earlier = b"".join(shop.storage.download(key))
    storage = shop.storage
    uploaded: list[str] = []

    class RotatedMeanwhile:
        """A rotation that read the package earlier uploads its copy just after the
        erasure's first delete (`exporters.rewrap`)."""

        def __getattr__(self, name: str) -> object:
            return getattr(storage, name)

        def delete(self, name: str) -> None:
            storage.delete(name)
            if name == key and not uploaded:
                storage.upload(name, [earlier])
                uploaded.append(name)

    monkeypatch.setattr("exporters.storage.open_storage", lambda settings: RotatedMeanwhile())
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    assert shop.run(erasure) == Outcome.COMPLETED
    assert uploaded == [key]
    assert not storage.exists(key)


def test_a_dry_run_erasure_leaves_the_exports_alone(shop: Shop) -> None:
    export, token = export_with_mailed_link(shop, ADA_EMAIL)
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL, dry_run=True)
    assert shop.run(erasure) == Outcome.COMPLETED
    assert "exports" not in shop.receipt(erasure)[1]
    assert find_revoke_step(shop, erasure) is None
    assert shop.storage.exists(shop.package(export).object_key)
    assert_serves_a_zip(shop, token)


def test_an_erasure_on_hold_still_revokes_links_and_deletes_packages(shop: Shop) -> None:
    """The hold keeps the subject's CRM records; the export is the subject's own copy."""
    export, token = export_with_mailed_link(shop, ADA_EMAIL)
    holds.add(
        shop.db,
        holds.HoldScope(identities=Identities.of([parse_identity(*ADA_EMAIL)]), source="crm"),
        pseudonym_key=shop.keyring.pseudonym_key,
        known_sources=[s.name for s in shop.worker.sources],
        reason="litigation",
        basis="Art. 17(3)(e) GDPR",
        until=None,
        operator="bob",
        now=utcnow(),
    )
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)

    assert shop.run(erasure) == Outcome.HELD

    status, receipt = shop.receipt(erasure)
    assert status == "on_hold" and receipt["held"]
    assert receipt["exports"] == {"links_revoked": 1, "packages_deleted": 1}
    assert_not_found(shop, token)
    assert not shop.storage.exists(shop.package(export).object_key)
    assert LINE in erasure_text(shop)
    assert revoke_step(shop, erasure).status != StepStatus.DONE  # looked at again at the end


# --- the revocation on its own ---------------------------------------------------------------


def test_a_revocation_that_is_not_final_finds_only_what_is_new_on_its_next_call(
    shop: Shop,
) -> None:
    """(An erasure on hold: its completing run looks again for exports made meanwhile.)"""
    export_with_mailed_link(shop, ADA_EMAIL)
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    ctx = context(shop, erasure)
    assert revoke_subject_exports(ctx, shop.storage, final=False) == {
        "links_revoked": 1,
        "packages_deleted": 1,
    }
    assert revoke_subject_exports(ctx, shop.storage, final=False) == {
        "links_revoked": 1,
        "packages_deleted": 1,
    }
    later, token = export_handed_over(shop, ADA_USER)

    assert revoke_subject_exports(ctx, shop.storage) == {"links_revoked": 2, "packages_deleted": 2}

    assert_not_found(shop, token)
    assert not shop.storage.exists(shop.package(later).object_key)
    ctx.steps.save()  # the done mark goes with the run's next write (receipt mail, completion)
    assert revoke_step(shop, erasure).status == StepStatus.DONE
    assert shop.actions("export.package.deleted") == 2


def test_links_revoked_before_the_erasure_are_not_counted_as_its_own(shop: Shop) -> None:
    export, _ = export_with_mailed_link(shop, ADA_EMAIL)
    with shop.db.session() as session:
        links.revoke(session, export, utcnow(), actor="bob")
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    assert revoke_subject_exports(context(shop, erasure), shop.storage) == {
        "links_revoked": 0,
        "packages_deleted": 1,
    }
    with shop.db.session() as session:
        (link,) = session.scalars(select(DownloadLink).where(DownloadLink.request_id == export))
        assert link.revoked_at is not None


def test_the_erasure_mail_mentions_exports_only_when_some_were_removed(shop: Shop) -> None:
    erasure = shop.submit(RequestKind.ERASURE, ADA_EMAIL)
    assert shop.run(erasure) == Outcome.COMPLETED
    assert shop.receipt(erasure)[1]["exports"] == {"links_revoked": 0, "packages_deleted": 0}
    (mail,) = shop.mails()
    assert LINE not in str(mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Flaky:
    """The real storage, but deleting one key fails as if the storage were down."""

    inner: ObjectStorage
    fail_on: str

    def delete(self, key: str) -> None:
        if key == self.fail_on:
            raise StorageUnavailableError("storage answered 503; retry later")
        self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def context(shop: Shop, request_id: uuid.UUID, sources: tuple[DataSource, ...] = ()) -> RunContext:
    with shop.db.session() as session:
        subject = session.get_one(DsrRequest, request_id).subject
    return RunContext(
        settings=shop.settings,
        db=shop.db,
        keyring=shop.keyring,
        sources=sources,
        request_id=request_id,
        subject=subject,
        identities=load_identities(shop.db, shop.keyring, request_id),
    )


def revoke_step(shop: Shop, request_id: uuid.UUID) -> DsrStep:
    step = find_revoke_step(shop, request_id)
    assert step is not None
    return step


def find_revoke_step(shop: Shop, request_id: uuid.UUID) -> DsrStep | None:
    with shop.db.session() as session:
        return session.scalars(
            select(DsrStep).where(
                DsrStep.request_id == request_id,
                DsrStep.source == EXPORTS_SOURCE,
                DsrStep.action == REVOKE_ACTION,
            )
        ).one_or_none()
