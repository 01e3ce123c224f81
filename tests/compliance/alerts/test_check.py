"""Alerts: each condition raises one alert by email and by webhook, does not repeat while it
holds, and sends one "cleared" when it stops; a failing channel never holds up the other
and catches up on the next check; two checks at once send each alert once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, select

from compliance.alerts.channels import EmailChannel, WebhookChannel
from compliance.alerts.check import AlertContext, CheckResult, check
from compliance.db import Database
from compliance.models import AlertDelivery, TokenRefusal
from tests.compliance.alerts.conftest import NOW, Alerting

CLIENT = "cl_" + "ab" * 12
LATER = NOW + timedelta(minutes=61)  # before 08:00, the digest hour


def make_everything_hold(alerting: Alerting) -> dict[str, object]:
    alerting.refused_operator_actions(5)
    steps = alerting.failed_steps(10)
    overdue = alerting.request(NOW - timedelta(days=1))
    soon = alerting.request(NOW + timedelta(days=3))
    alerting.request(NOW + timedelta(days=6))  # outside the five days: no alert
    alerting.token_refusals(CLIENT, 100)
    return {"steps": steps, "overdue": overdue, "soon": soon}


def test_each_condition_raises_once_does_not_repeat_and_clears(alerting: Alerting) -> None:
    made = make_everything_hold(alerting)
    first = alerting.check()
    titles = sorted(n.title for n in first.raised)
    assert titles == sorted(
        [
            "5 refused operator actions or wrong one-time codes in the last hour",
            "10 request steps failed in the last hour",
            f"erasure request {made['overdue']} is overdue (due 2026-12-02 06:00 UTC)",
            f"erasure request {made['soon']} is due within 5 days (2026-12-06 06:00 UTC)",
            f"client {CLIENT} had 100 download tokens refused in 15 minutes",
        ]
    )
    assert len(alerting.hook.texts) == 5 and not first.failed
    assert alerting.subjects(5) == sorted(f"[gdpr] {t}" for t in titles)

    again = alerting.check(NOW + timedelta(minutes=5))
    assert (again.raised, again.cleared, again.sent) == ([], [], [])
    assert len(alerting.hook.texts) == 5 and len(alerting.mails()) == 5
    assert sorted(again.open) == titles

    alerting.finish(made["overdue"])  # type: ignore[arg-type]
    alerting.finish(made["soon"])  # type: ignore[arg-type]
    cleared = alerting.check(LATER)  # the hour's counts and the 15 minutes have passed
    assert sorted(n.title for n in cleared.cleared) == [f"cleared: {t}" for t in titles]
    assert cleared.open == [] and len(alerting.hook.texts) == 10
    assert len(alerting.mails(10)) == 10
    assert alerting.check(LATER + timedelta(minutes=5)).sent == []


def test_a_condition_below_its_threshold_raises_nothing(alerting: Alerting) -> None:
    alerting.refused_operator_actions(4)
    alerting.failed_steps(9)
    alerting.token_refusals(CLIENT, 99)
    alerting.refused_operator_actions(3, at=NOW - timedelta(minutes=61))  # too old to count
    assert alerting.check().raised == []


def test_a_condition_that_returns_after_clearing_raises_again(alerting: Alerting) -> None:
    alerting.token_refusals(CLIENT, 100)
    assert len(alerting.check().raised) == 1
    assert len(alerting.check(LATER).cleared) == 1
    alerting.token_refusals(CLIENT, 100, at=LATER)
    assert len(alerting.check(LATER + timedelta(minutes=1)).raised) == 1
    assert len(alerting.hook.texts) == 3


def test_a_failing_webhook_does_not_stop_the_email_and_is_retried_next_check(
    alerting: Alerting,
) -> None:
    alerting.failed_steps(10)
    alerting.hook.fail(500)
    first = alerting.check()
    assert first.failed == [("webhook", "webhook: answered HTTP 500")]
    assert [c for c, _ in first.sent] == ["email"]
    assert len(alerting.mails(1)) == 1 and alerting.hook.texts == []
    alerting.hook.heal()
    second = alerting.check(NOW + timedelta(minutes=5))
    assert second.sent == [("webhook", "10 request steps failed in the last hour")]
    assert len(alerting.hook.texts) == 1 and len(alerting.mails()) == 1  # no second mail


def test_an_unreachable_smtp_server_does_not_stop_the_webhook(alerting: Alerting) -> None:
    alerting.failed_steps(10)
    dead = alerting.settings.with_overrides(mail_url="smtp://127.0.0.1:9")
    broken = [EmailChannel(dead, (alerting.to,)), WebhookChannel(alerting.hook.url)]
    result = alerting.check(chans=broken)
    assert [c for c, _ in result.failed] == ["email"]
    assert "cannot deliver mail via smtp://127.0.0.1:9" in result.failed[0][1]
    assert len(alerting.hook.texts) == 1
    healed = alerting.check(NOW + timedelta(minutes=5))  # the configured, working channels
    assert healed.sent == [("email", "10 request steps failed in the last hour")]


def test_a_slow_webhook_times_out_and_the_email_still_goes(alerting: Alerting) -> None:
    alerting.failed_steps(10)
    alerting.hook.slow(3.0)
    chans = [WebhookChannel(alerting.hook.url, timeout=0.5), *alerting.channels()[:1]]
    started = time.monotonic()
    result = alerting.check(chans=chans)
    assert time.monotonic() - started < 2.5
    assert result.failed == [("webhook", "webhook: not reached (TimeoutError)")]
    assert [c for c, _ in result.sent] == ["email"]


def test_two_checks_at_once_send_each_alert_once(alerting: Alerting) -> None:
    make_everything_hold(alerting)
    start = threading.Barrier(2)
    results: list[CheckResult] = []

    def run() -> None:
        start.wait()
        results.append(alerting.check())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2
    assert sum(len(r.raised) for r in results) == 5
    assert len(alerting.hook.texts) == 5 and len(alerting.mails(5)) == 5
    time.sleep(0.3)  # a duplicate mail would have arrived by now
    assert len(alerting.mails()) == 5


def test_the_digest_goes_once_a_day_from_its_hour_with_the_deadline_counts(
    alerting: Alerting,
) -> None:
    alerting.request(NOW - timedelta(days=1))
    alerting.request(NOW + timedelta(days=2))
    alerting.request(NOW + timedelta(days=4))
    assert alerting.check().digest is None  # 06:00, before the digest hour
    morning = NOW.replace(hour=8, minute=3)
    found = alerting.check(morning).digest
    assert found is not None and found.title == "daily digest 2026-12-03"
    assert "Requests overdue: 1\nRequests due within 5 days: 2\nAlerts raised: 3" in found.body
    assert alerting.check(morning + timedelta(hours=3)).digest is None
    texts = [t for t in alerting.hook.texts if "daily digest" in t]
    assert len(texts) == 1
    assert alerting.check(morning + timedelta(days=1)).digest is not None


def test_a_dry_run_shows_what_would_go_and_writes_and_sends_nothing(alerting: Alerting) -> None:
    alerting.failed_steps(10)
    result = alerting.check(dry_run=True)
    assert [n.title for n in result.raised] == ["10 request steps failed in the last hour"]
    assert sorted(c for c, _ in result.sent) == ["email", "webhook"]
    assert alerting.hook.texts == [] and alerting.mails() == []
    with alerting.db.session() as session:
        assert session.scalar(select(func.count(AlertDelivery.id))) == 0
    assert len(alerting.check().raised) == 1  # the real check still raises it


def test_with_no_channel_the_check_still_evaluates_and_remembers(alerting: Alerting) -> None:
    alerting.failed_steps(10)
    result = alerting.check(chans=[])
    assert result.channels == [] and len(result.raised) == 1 and result.sent == []
    assert alerting.check(chans=[]).raised == []  # raised already: no repeat


def test_an_operator_login_may_run_the_check_on_the_alert_tables(
    alerting: Alerting, as_operator: Callable[[str], Database]
) -> None:
    alerting.failed_steps(10)
    alerting.token_refusals(CLIENT, 100)
    chans = [WebhookChannel(alerting.hook.url)]
    days_later = NOW + timedelta(days=2)  # 06:00 again: before the digest hour
    ctx = AlertContext(alerting.settings, as_operator("alice"), chans, days_later)
    first = check(AlertContext(alerting.settings, as_operator("alice"), chans, NOW))
    assert len(first.raised) == 2 and len(alerting.hook.texts) == 2
    assert len(check(ctx).cleared) == 2
    with alerting.db.session() as session:  # pruned by alice's check: a day old
        assert session.scalar(select(func.count(TokenRefusal.id))) == 0
