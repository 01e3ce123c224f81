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
    return RunContext(
        settings=settings,
        db=db,
        keyring=load_keyring(settings),
        sources=(),
        request_id=request_id,
        subject="ps_subject",
        identities=Identities.of(parse_identity(t, v) for t, v in identities),
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
    (message,) = _messages(tmp_path)
    assert message["Subject"] == "Your personal data has been erased"
    assert "app / users: 1 deleted" in _text(message)
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
