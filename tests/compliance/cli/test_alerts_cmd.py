"""`gdpr alerts check | test`: what an on-call engineer types and sees, and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from tests.compliance.alerts.conftest import NOW, Alerting, alerting, hook

__all__ = ["alerting", "hook"]

Gdpr = Callable[..., Result]


def runner(settings: Settings, db: Database) -> Gdpr:
    def invoke(*args: str) -> Result:
        app = App()
        app._cache.update(settings=settings, db=db, dispatcher=RecordingDispatcher())
        app.now = lambda: NOW  # type: ignore[method-assign]
        app.close = lambda: None  # type: ignore[method-assign]
        return CliRunner().invoke(cli, list(args), obj=app)

    return invoke


@pytest.fixture
def gdpr(alerting: Alerting) -> Gdpr:
    return runner(alerting.settings, alerting.db)


def test_check_raises_sends_and_then_has_nothing_new(gdpr: Gdpr, alerting: Alerting) -> None:
    alerting.failed_steps(10)
    first = gdpr("alerts", "check")
    assert first.exit_code == 0, first.output
    assert "raise: 10 request steps failed in the last hour" in first.stdout
    assert "sent by webhook: 10 request steps failed in the last hour" in first.stdout
    assert "sent by email: 10 request steps failed in the last hour" in first.stdout
    again = gdpr("alerts", "check", "--json")
    data = json.loads(again.stdout)
    assert (data["raised"], data["sent"]) == ([], [])
    assert data["open"] == ["10 request steps failed in the last hour"]


def test_a_dry_run_says_what_would_go_and_sends_nothing(gdpr: Gdpr, alerting: Alerting) -> None:
    alerting.request(NOW - timedelta(days=2))
    result = gdpr("alerts", "check", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would raise: erasure request" in result.stdout
    assert "would send by webhook:" in result.stdout
    assert alerting.hook.texts == [] and alerting.mails() == []
    assert json.loads(gdpr("alerts", "check", "--json").stdout)["raised"] != []


def test_a_failing_channel_makes_check_exit_1_and_keeps_the_alert(
    gdpr: Gdpr, alerting: Alerting
) -> None:
    alerting.failed_steps(10)
    alerting.hook.fail(503)
    result = gdpr("alerts", "check")
    assert result.exit_code == 1
    line = "error: webhook: answered HTTP 503 (kept for the next check)"
    assert line in result.stderr.splitlines()
    assert len(alerting.mails(1)) == 1


def test_without_channels_check_still_evaluates_and_says_so(
    db: Database, settings: Settings
) -> None:
    result = runner(settings, db)("alerts", "check")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("no alert channel is configured: set GDPR_ALERT_EMAIL_TO")
    assert "raised now: 0" in result.stdout


def test_test_sends_one_alert_to_each_channel(gdpr: Gdpr, alerting: Alerting) -> None:
    result = gdpr("alerts", "test")
    assert result.exit_code == 0, result.output
    assert result.stdout == "email: sent\nwebhook: sent\n"
    assert alerting.hook.texts == ["*test alert*\nA test of this alert channel; nothing is wrong."]
    assert alerting.subjects(1) == ["[gdpr] test alert"]


def test_test_exits_1_naming_the_channel_that_failed(gdpr: Gdpr, alerting: Alerting) -> None:
    alerting.hook.fail(404)
    result = gdpr("alerts", "test")
    assert result.exit_code == 1
    assert "webhook: FAILED: webhook: answered HTTP 404" in result.stdout
    assert result.stderr == "error: the webhook channel failed\n"
    assert len(alerting.mails(1)) == 1  # the email still went


def test_a_malformed_recipient_is_one_line_and_exit_5(db: Database, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, alert_email_to="oncall@example.com, not-an-address")
    result = runner(settings, db)("alerts", "test")
    assert result.exit_code == 5
    assert result.stderr == (
        "error: setting 'alert_email_to': address 2 is not a valid email address;"
        " list addresses separated by commas\n"
    )
