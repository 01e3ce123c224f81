"""Retention alerts: a policy late beyond its grace window, or whose last run failed, raises
one alert per policy, cleared by the sweep that catches up; no alert ever carries an
identity of the data, not even of the subjects the sweep hands to erasure."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from compliance.alerts import channels
from compliance.alerts.check import AlertContext, CheckResult, check
from compliance.models import RetentionRun
from compliance.retention import sweep
from compliance.retention.report import report
from tests.compliance.retention.conftest import Harness
from tests.sample_app import retention as app
from tests.support.webhook_server import WebhookServer

LATE = ["app.activity", "app.sessions", "app.users"]


def _check(harness: Harness, settings: object, hours: float = 0) -> CheckResult:
    ctx = AlertContext(
        settings=settings,  # type: ignore[arg-type]
        db=harness.db,
        channels=channels.configured(settings),  # type: ignore[arg-type]
        now=harness.now + timedelta(hours=hours),
        retention=lambda: report(harness.ctx()),
    )
    return check(ctx)


def _failed_run(harness: Harness, policy: str) -> None:
    with harness.db.session() as session:
        session.add(
            RetentionRun(
                policy=policy,
                kind="rows",
                cutoff=harness.now - timedelta(days=30),
                status="failed",
                trigger="beat",
                actor="retention",
                counts={},
                started_at=harness.now - timedelta(hours=1),
                finished_at=harness.now - timedelta(hours=1),
                error="SourceUnavailableError",
            )
        )


def test_late_and_failing_policies_raise_once_and_clear_and_no_alert_names_a_subject(
    harness: Harness, smtp_server: tuple[str, int, Path]
) -> None:
    host, port, maildir = smtp_server
    to = f"dpo-{uuid.uuid4().hex[:10]}@example.com"
    with WebhookServer() as hook:
        settings = harness.settings.with_overrides(
            mail_url=f"smtp://{host}:{port}",
            alert_email_to=to,
            alert_webhook_url=hook.url,
            alert_due_soon_days=40,  # the erasures the sweep submits become "due soon"
            alert_digest_hour=0,
        )
        _failed_run(harness, "app.sessions")
        first = _check(harness, settings)
        titles = sorted(n.title for n in first.raised)
        assert titles == sorted(
            [f"retention policy {p} is overdue" for p in LATE]
            + ["retention policy app.sessions: its last run 1 failed"]
        )
        assert first.digest is not None and "Alerts raised: 4" in first.digest.body
        assert _check(harness, settings, hours=1).raised == []

        ctx = harness.ctx()
        for entry in ctx.catalog:
            sweep.run_inline(ctx, entry.policy.name)
        after = _check(harness, settings, hours=2)
        cleared = sorted(n.title for n in after.cleared)
        assert cleared == [
            "cleared: retention policy app.activity is overdue",
            "cleared: retention policy app.sessions is overdue",
            "cleared: retention policy app.sessions: its last run 1 failed",
        ]
        handed_over = [n.title for n in after.raised if "due within 40 days" in n.title]
        assert len(handed_over) == len(app.CLOSED_LONG_AGO)
        texts = list(hook.texts)
    mails = [p.read_text(errors="replace") for p in maildir.glob("*.eml") if to in p.read_text()]
    assert len(texts) == len(mails) == 4 + 1 + 3 + len(after.raised)
    for text in texts + mails:
        for user in range(1, app.USERS + 1):
            assert app.email(user) not in text
        assert "example.com" not in text.replace(to, "")


def test_when_the_sources_do_not_load_retention_alerts_stay_raised(
    harness: Harness,
) -> None:
    settings = harness.settings
    raised = _check(harness, settings)
    assert len(raised.raised) == len(LATE)

    def broken() -> list[object]:
        from compliance.errors import SourceUnavailableError

        raise SourceUnavailableError("sources.app: connection refused")

    ctx = AlertContext(settings, harness.db, [], harness.now, retention=broken)  # type: ignore[arg-type]
    result = check(ctx)
    assert result.cleared == [] and len(result.open) == len(LATE)
    assert result.problems == ["retention: cannot read the report: sources.app: connection refused"]
