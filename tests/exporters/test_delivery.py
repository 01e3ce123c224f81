from __future__ import annotations

import email
import http.client
import re
import socket
import time
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import MailUnavailableError
from compliance.execution import RunContext
from compliance.identities import Identities, parse_identity, pseudonym
from compliance.keyring import load_keyring
from compliance.models import AuditEvent, DownloadLink, DsrIdentity, DsrStep
from exporters import links
from exporters.delivery import deliver_export, notify_erasure
from tests.conftest import DownloadSite

LINK = re.compile(r"https?://\S+/d/[A-Za-z0-9_-]+")


def _context(
    settings: Settings, db: Database, request_id: uuid.UUID, *identities: tuple[str, str]
) -> RunContext:
    """A run of the request whose contact is its first email identity (as submitted)."""
    keyring = load_keyring(settings)
    given = [parse_identity(t, v) for t, v in identities]
    emails = [i for i in given if i.type == "email"]
    subject = pseudonym(keyring.pseudonym_key, emails[0]) if emails else "ps_subject"
    return RunContext(
        settings=settings,
        db=db,
        keyring=keyring,
        sources=(),
        request_id=request_id,
        subject=subject,
        identities=Identities.of(given),
    )


def _outbox(settings: Settings, tmp_path: Path) -> Settings:
    return settings.with_overrides(mail_url=(tmp_path / "outbox").as_uri())


def _messages(tmp_path: Path) -> list[EmailMessage]:
    found = []
    for path in sorted((tmp_path / "outbox").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _actions(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def _live(db: Database, request_id: uuid.UUID) -> list[DownloadLink]:
    with db.session() as session:
        return links.live_links(session, request_id, utcnow())


def test_the_link_is_mailed_once_and_a_rerun_sends_nothing(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    request_id = make_export_request()
    ctx = _context(_outbox(settings, tmp_path), db, request_id, ("email", "Ada@Example.com"))
    first = deliver_export(ctx)
    second = deliver_export(ctx)
    assert first["delivery"] == "mailed" and first["recipients"] == 1
    assert second["delivery"] == "already done"
    assert "export.link_mailed" not in _actions(db)  # it rides along with the next save
    ctx.steps.save()  # as the run's final transition does
    (message,) = _messages(tmp_path)
    assert message["To"] == "ada@example.com"
    (url,) = LINK.findall(_text(message))
    token = url.rsplit("/", 1)[1]
    assert url.startswith(settings.download_base_url)
    with db.session() as session:
        assert links.check(session, token, utcnow()).request_id == request_id
    assert len(_live(db, request_id)) == 1
    assert "export.link_mailed" in _actions(db)
    assert token not in str(first) and "ada@example.com" not in str(first)


@pytest.mark.smtp
def test_the_link_reaches_the_real_smtp_server(
    db: Database,
    settings: Settings,
    make_export_request: Callable[..., uuid.UUID],
    smtp_server: tuple[str, int, Path],
) -> None:
    host, port, maildir = smtp_server
    to = f"subject-{uuid.uuid4().hex[:10]}@example.com"
    smtp = settings.with_overrides(mail_url=f"smtp://{host}:{port}")
    deliver_export(_context(smtp, db, make_export_request(), ("email", to)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hits = [p for p in maildir.glob("*.eml") if to.encode() in p.read_bytes()]
        if hits:
            break
        time.sleep(0.05)
    assert len(hits) == 1
    assert LINK.search(hits[0].read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_mail_outage_fails_the_step_and_a_retry_sends_a_fresh_link(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    request_id = make_export_request()
    down = settings.with_overrides(mail_url=f"smtp://127.0.0.1:{_free_port()}")
    with pytest.raises(MailUnavailableError):
        deliver_export(_context(down, db, request_id, ("email", "ada@example.com")))
    with db.session() as session:
        step = session.scalars(select(DsrStep).where(DsrStep.request_id == request_id)).one()
        assert step.status == "failed" and "cannot deliver mail" in (step.error or "")
    ctx = _context(_outbox(settings, tmp_path), db, request_id, ("email", "ada@example.com"))
    assert deliver_export(ctx)["delivery"] == "mailed"
    (message,) = _messages(tmp_path)
    (live,) = _live(db, request_id)
    token = LINK.findall(_text(message))[0].rsplit("/", 1)[1]
    assert live.token_hash == links.hash_token(token)  # the unsent first link was revoked


def test_without_an_email_identity_the_operator_is_asked_to_hand_the_link_over(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    request_id = make_export_request()
    ctx = _context(_outbox(settings, tmp_path), db, request_id, ("user_id", "42"))
    result = deliver_export(ctx)
    ctx.steps.save()  # as the run's final transition does
    assert result["delivery"] == "operator handover"
    assert result["next"] == f"gdpr link reissue {request_id}"
    assert not (tmp_path / "outbox").exists()
    assert _live(db, request_id) == []
    assert "export.handover_required" in _actions(db)
    assert deliver_export(ctx)["delivery"] == "already done"


def test_emails_discovered_at_the_sources_get_nothing(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    request_id = make_export_request()
    ctx = _context(
        _outbox(settings, tmp_path),
        db,
        request_id,
        ("email", "given@example.com"),
        ("email", "found@example.com"),
    )
    found = pseudonym(ctx.keyring.pseudonym_key, parse_identity("email", "found@example.com"))
    with db.session() as session:
        session.add(
            DsrIdentity(request_id=request_id, type="email", value_hmac=found, discovered=True)
        )
    deliver_export(ctx)
    (message,) = _messages(tmp_path)
    assert message["To"] == "given@example.com"


def test_only_the_contact_is_written_to_never_another_given_address(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    request_id = make_export_request()
    ctx = _context(
        _outbox(settings, tmp_path),
        db,
        request_id,
        ("email", "stranger@example.com"),
        ("email", "ada@example.com"),
        ("user_id", "1"),
    )
    assert deliver_export(ctx)["recipients"] == 1
    (message,) = _messages(tmp_path)
    assert message["To"] == "stranger@example.com"  # the contact, not the first by sort
    assert "ada@example.com" not in message.as_string()


def test_a_request_whose_subject_is_no_given_address_hands_the_link_over(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    from dataclasses import replace

    request_id = make_export_request()
    ctx = _context(_outbox(settings, tmp_path), db, request_id, ("email", "ada@example.com"))
    result = deliver_export(replace(ctx, subject="ps_" + "0" * 32))
    assert result["delivery"] == "operator handover" and result["reason"] == "no contact email"
    assert not (tmp_path / "outbox").exists()


class _Reject:
    async def handle_RCPT(self, *args: Any) -> str:  # noqa: N802
        return "550 5.1.1 mailbox unavailable"


def test_a_permanently_rejected_address_hands_over_instead_of_failing(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID]
) -> None:
    from aiosmtpd.controller import Controller

    port = _free_port()
    controller = Controller(_Reject(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        rejecting = settings.with_overrides(mail_url=f"smtp://127.0.0.1:{port}")
        result = deliver_export(
            _context(rejecting, db, make_export_request(), ("email", "gone@example.com"))
        )
    finally:
        controller.stop()
    assert result["delivery"] == "operator handover" and result["reason"] == "mail rejected"


def test_a_dry_run_delivers_nothing(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    request_id = make_export_request()
    ctx = _context(_outbox(settings, tmp_path), db, request_id, ("email", "ada@example.com"))
    from dataclasses import replace

    assert deliver_export(replace(ctx, dry_run=True))["delivery"] == "skipped"
    assert _live(db, request_id) == [] and not (tmp_path / "outbox").exists()


def test_the_erasure_receipt_is_mailed_once(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> None:
    request_id = make_export_request(kind="erasure", with_package=False)
    ctx = _context(_outbox(settings, tmp_path), db, request_id, ("email", "ada@example.com"))
    receipt = {"sources": {"app": {"locations": [{"location": "users", "deleted": 1}]}}}
    notify_erasure(ctx, receipt)
    notify_erasure(ctx, receipt)
    ctx.steps.save()  # as the run's final transition does
    (message,) = _messages(tmp_path)
    assert message["Subject"] == "Your personal data has been erased"
    assert "- Users: 1 deleted" in _text(message)
    assert str(request_id) in _text(message)
    assert _actions(db).count("erasure.receipt_mailed") == 1


def test_the_mailed_link_downloads_the_export_end_to_end(
    download_site: DownloadSite, tmp_path: Path
) -> None:
    site = download_site
    assert site.request_id is not None
    settings = _outbox(site.settings, tmp_path).with_overrides(
        base_url=site.server.url  # type: ignore[attr-defined]
    )
    deliver_export(_context(settings, site.db, site.request_id, ("email", "ada@example.com")))
    (url,) = LINK.findall(_text(_messages(tmp_path)[0]))
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request("POST", parts.path, body=b"")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == site.zip_bytes
    conn.close()
    old = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    old.request("GET", f"/d/{site.token}")  # the fixture's link was revoked by the reissue
    assert old.getresponse().status == 404
    old.close()


# --- an erasure of the sample application, mailed ---------------------------------------------


def _numbers(text: str) -> dict[str, int]:
    """What the email says was deleted, anonymised and kept: per line and in total."""
    said = text.split("What we did:", 1)[1].split("In total:", 1)
    lines = [line for line in said[0].splitlines() if line.startswith("- ")]
    anonymized = [int(n) for line in lines for n in re.findall(r"removed, (\d+) kept", line)]
    plain = [re.sub(r"removed, \d+ kept", "", line) for line in lines]
    per_line = {
        "deleted": sum(int(n) for line in lines for n in re.findall(r"(\d+) deleted", line)),
        "anonymized": sum(anonymized),
        "retained": sum(int(n) for line in plain for n in re.findall(r"(\d+) kept", line)),
    }
    total = re.match(
        r" (\d+) records? deleted(?:, (\d+) kept with your details removed)?(?:, (\d+) kept as)?",
        said[1],
    )
    assert total is not None
    in_total = dict(zip(per_line, (int(n or 0) for n in total.groups()), strict=True))
    assert per_line == in_total
    return in_total


def _mail_settings(
    settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Settings, Path]:
    """PostgreSQL runs mail the real SMTP server, SQLite runs the outbox folder; with
    the folder the messages land in."""
    if settings.database_url.startswith("postgresql"):
        host, port, maildir = request.getfixturevalue("smtp_server")
        return settings.with_overrides(mail_url=f"smtp://{host}:{port}"), maildir
    return _outbox(settings, tmp_path), tmp_path / "outbox"


def _delivered(maildir: Path, needle: str) -> list[EmailMessage]:
    time.sleep(0.5)  # the SMTP sink writes each message as it arrives
    found = []
    for path in maildir.glob("*.eml"):
        if needle.encode() in path.read_bytes():
            message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
            assert isinstance(message, EmailMessage)
            found.append(message)
    return found


def test_an_erasure_naming_two_addresses_mails_its_receipt_to_the_contact_only(
    db: Database, settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Ada's address is the contact; the other address matched nothing anywhere and gets
    nothing. The mail speaks in the manifest's words and its numbers are the receipt's."""
    from compliance.dispatch import RecordingDispatcher
    from compliance.erasure import run_erasure
    from compliance.models import DsrRequest, RequestKind
    from compliance.requests import Submission, submit
    from compliance.sealed import load_identities
    from tests.compliance.sources.sqlsample import load
    from tests.sample_app.fixtures import sample_databases

    mailing, maildir = _mail_settings(settings, request, tmp_path)
    backend = "postgres" if settings.database_url.startswith("postgresql") else "sqlite"
    tag = uuid.uuid4().hex[:8]
    ada = parse_identity("email", "ada@example.com")
    nobody = parse_identity("email", f"nobody-{tag}@example.com")
    keyring = load_keyring(mailing)
    with sample_databases(backend, tmp_path) as dbs:
        registry = load(dbs, tmp_path)
        try:
            submitted = submit(
                db,
                mailing,
                keyring,
                Submission(RequestKind.ERASURE, Identities.of([nobody, ada]), contact=ada),
                sources=registry.sources,
                operator="alice",
                now=utcnow(),
                dispatcher=RecordingDispatcher(),
            )
            with db.session() as session:
                subject = session.get_one(DsrRequest, submitted.id).subject
            ctx = RunContext(
                settings=mailing,
                db=db,
                keyring=keyring,
                sources=registry.sources,
                request_id=submitted.id,
                subject=subject,
                identities=load_identities(db, keyring, submitted.id),
            )
            receipt = run_erasure(ctx)
            notify_erasure(ctx, receipt)
        finally:
            registry.close()
    assert _delivered(maildir, nobody.value) == []
    (message,) = _delivered(maildir, str(submitted.id))
    assert message["To"] == "ada@example.com"
    text = _text(message)
    assert _numbers(text) == {k: receipt[k] for k in ("deleted", "anonymized", "retained")}
    assert "- Your account: 1 deleted" in text
    assert "- Saved payment cards: 1 deleted" in text
    for dotted in ("payments.order_id", "users.referred_by", "invoices.user_id", "_"):
        assert dotted not in text.split("What we did:", 1)[1].split("If you have")[0]
