"""An alerting harness: a control database on one backend, the local SMTP server and a
local webhook server as the two channels, and helpers that make each condition hold."""

from __future__ import annotations

import email
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from compliance import audit
from compliance.alerts import channels, refusals
from compliance.alerts.channels import Channel
from compliance.alerts.check import AlertContext, CheckResult, check
from compliance.config import Settings
from compliance.db import Database
from compliance.models import DsrRequest, DsrStep
from tests.support.webhook_server import WebhookServer

NOW = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)  # before the digest hour (8)


@dataclass
class Alerting:
    settings: Settings
    db: Database
    hook: WebhookServer
    maildir: Path
    to: str  # the on-call address: only this test's mails carry it

    def channels(self) -> list[Channel]:
        return channels.configured(self.settings)

    def check(self, now: datetime = NOW, *, dry_run: bool = False, **kw: Any) -> CheckResult:
        ctx = AlertContext(self.settings, self.db, kw.pop("chans", self.channels()), now, **kw)
        return check(ctx, dry_run=dry_run)

    def mails(self, expect: int = 0, timeout: float = 10.0) -> list[EmailMessage]:
        """This test's alert mails; waits until at least `expect` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = []
            for path in sorted(self.maildir.glob("*.eml")):
                data = path.read_bytes()
                if self.to.encode() in data:
                    message = email.message_from_bytes(data, policy=default_policy)
                    assert isinstance(message, EmailMessage)
                    found.append(message)
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def subjects(self, expect: int = 0) -> list[str]:
        return sorted(" ".join(str(m["Subject"]).split()) for m in self.mails(expect))

    # --- making conditions hold --------------------------------------------------------

    def refused_operator_actions(self, count: int, at: datetime = NOW) -> None:
        with self.db.session() as session:
            for n in range(count):
                action = "operator.refused" if n % 2 else "operator.otp.failed"
                audit.record(session, actor="mallory", action=action, now=at, details={})

    def request(self, due_at: datetime, status: str = "running") -> uuid.UUID:
        rid = uuid.uuid4()
        with self.db.session() as session:
            session.add(
                DsrRequest(
                    id=rid,
                    kind="erasure",
                    status=status,
                    subject="ps_" + secrets.token_hex(16),
                    submitted_by="alice",
                    submitted_at=due_at - timedelta(days=30),
                    due_at=due_at,
                    updated_at=due_at - timedelta(days=30),
                )
            )
        return rid

    def failed_steps(self, count: int, at: datetime = NOW) -> uuid.UUID:
        rid = self.request(at + timedelta(days=20), status="failed")
        with self.db.session() as session:
            for n in range(count):
                session.add(
                    DsrStep(
                        request_id=rid,
                        source=f"src{n}",
                        action="erase",
                        status="failed",
                        error="boom",
                        started_at=at,
                        finished_at=at,
                    )
                )
        return rid

    def finish(self, rid: uuid.UUID) -> None:
        with self.db.session() as session:
            request = session.get(DsrRequest, rid)
            assert request is not None
            request.status = "completed"

    def token_refusals(self, client: str, count: int, at: datetime = NOW) -> None:
        with self.db.session() as session:
            for _ in range(count):
                refusals.record(session, client, at)


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def alerting(
    db: Database, settings: Settings, hook: WebhookServer, smtp_server: tuple[str, int, Path]
) -> Alerting:
    host, port, maildir = smtp_server
    to = f"oncall-{uuid.uuid4().hex[:10]}@example.com"
    configured = settings.with_overrides(
        mail_url=f"smtp://{host}:{port}", alert_email_to=to, alert_webhook_url=hook.url
    )
    return Alerting(configured, db, hook, maildir, to)
