"""One alerts check: evaluate the conditions, raise what newly holds, clear what stopped,
take the day's digest when its hour has come, then deliver every pending notice.

    check(ctx)                -> CheckResult (beat's task and `gdpr alerts check`)
    check(ctx, dry_run=True)  -> what would be raised, cleared and sent; writes nothing
    send_test(channels, now)  -> per channel, None or why it failed (`gdpr alerts test`)

The transitions are one transaction (keys in order, so two checks lock rows alike);
each delivery is claimed, sent outside any transaction, then marked. One channel failing
leaves its deliveries pending and never stops the other's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from compliance.alerts import conditions, refusals, state
from compliance.alerts.channels import Channel
from compliance.alerts.conditions import Evaluation, Finding, Retention
from compliance.alerts.state import Notice
from compliance.config import Settings
from compliance.db import Database
from compliance.defaults import ALERT_GIVE_UP_HOURS
from compliance.errors import ComplianceError
from compliance.models import AlertDelivery

log = logging.getLogger("gdpr.alerts")

HELP = 'What it means and what to do: ops/README.md, "What each alert means".'


@dataclass(frozen=True)
class AlertContext:
    settings: Settings
    db: Database
    channels: Sequence[Channel]
    now: datetime
    retention: Retention | None = None  # the retention report; None: not evaluated here


@dataclass
class CheckResult:
    raised: list[Notice] = field(default_factory=list)
    cleared: list[Notice] = field(default_factory=list)
    digest: Notice | None = None
    open: list[str] = field(default_factory=list)  # titles of the alerts raised after the check
    sent: list[tuple[str, str]] = field(default_factory=list)  # (channel, title)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (channel, why)
    problems: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "channels": self.channels,
            "raised": [n.title for n in self.raised],
            "cleared": [n.title for n in self.cleared],
            "digest": self.digest.title if self.digest else None,
            "open": self.open,
            "sent": [{"channel": c, "title": t} for c, t in self.sent],
            "failed": [{"channel": c, "error": e} for c, e in self.failed],
            "problems": self.problems,
        }


def check(ctx: AlertContext, *, dry_run: bool = False) -> CheckResult:
    result = CheckResult(channels=[c.name for c in ctx.channels], dry_run=dry_run)
    retention = conditions.read_retention(ctx.retention)  # its own sessions: read it first
    with ctx.db.session() as session:
        found = conditions.evaluate(session, ctx.settings, ctx.now, retention)
        result.problems = list(found.problems)
        _transitions(session, ctx, found, result, write=not dry_run)
        result.open = _open_titles(session, found, result, dry_run)
        if dry_run:
            result.sent = [(d.channel, d.title) for d in state.pending(session)]
            result.sent += [(c.name, n.title) for n in _new(result) for c in ctx.channels]
            return result
        refusals.prune(session, ctx.now)
        state.abandon_old(session, ctx.now, timedelta(hours=ALERT_GIVE_UP_HOURS))
    deliver(ctx, result)
    return result


def _new(result: CheckResult) -> list[Notice]:
    return [*result.raised, *result.cleared, *([result.digest] if result.digest else [])]


def _transitions(
    session: Session, ctx: AlertContext, found: Evaluation, result: CheckResult, *, write: bool
) -> None:
    now, channels = ctx.now, [c.name for c in ctx.channels]
    holding = {f.key: f for f in found.findings}
    raised = {a.key: a for a in state.raised(session)}
    for key in sorted(holding.keys() - raised.keys()):
        finding = holding[key]
        notice = _raised_notice(finding)
        if not write or state.raise_alert(
            session, key, finding.condition, finding.subject, finding.title, now
        ):
            result.raised.append(notice)
            if write:
                state.enqueue(session, notice, channels, now)
    for key in sorted(raised.keys() - holding.keys()):
        alert = raised[key]
        if alert.condition not in found.checked:
            continue  # unknown this time: it stays raised
        notice = Notice(
            key, state.CLEARED, f"cleared: {alert.title}", "The condition no longer holds."
        )
        if not write or state.clear_alert(session, key, now):
            result.cleared.append(notice)
            if write:
                state.enqueue(session, notice, channels, now)
    _digest(session, ctx, holding, raised, result, write=write)


def _raised_notice(finding: Finding) -> Notice:
    return Notice(finding.key, state.RAISED, finding.title, f"{finding.detail}\n{HELP}")


def _digest(
    session: Session,
    ctx: AlertContext,
    holding: dict[str, Finding],
    raised: dict[str, Any],
    result: CheckResult,
    *,
    write: bool,
) -> None:
    local = ctx.now.astimezone(ZoneInfo(ctx.settings.timezone))
    if local.hour < ctx.settings.alert_digest_hour:
        return
    day = local.date().isoformat()
    if state.digest_sent(session, day) or (write and not state.claim_digest(session, day, ctx.now)):
        return
    deadlines = conditions.count_deadlines(session, ctx.settings, ctx.now)
    titles = sorted(f.title for f in holding.values())
    lines = [
        f"Requests overdue: {deadlines.overdue}",
        f"Requests due within {ctx.settings.alert_due_soon_days} days: {deadlines.due_soon}",
        f"Alerts raised: {len(titles)}",
        *(f"- {t}" for t in titles),
        *(f"Not checked: {p}" for p in result.problems),
    ]
    notice = Notice(f"digest:{day}", state.DIGEST, f"daily digest {day}", "\n".join(lines))
    result.digest = notice
    if write:
        state.enqueue(session, notice, [c.name for c in ctx.channels], ctx.now)


def _open_titles(
    session: Session, found: Evaluation, result: CheckResult, dry_run: bool
) -> list[str]:
    if not dry_run:
        return [a.title for a in state.raised(session)]
    cleared = {n.key for n in result.cleared}
    titles = [a.title for a in state.raised(session) if a.key not in cleared]
    return titles + [n.title for n in result.raised]


def deliver(ctx: AlertContext, result: CheckResult) -> None:
    """Send every pending delivery whose channel is configured, each claimed first."""
    by_name = {c.name: c for c in ctx.channels}
    with ctx.db.session() as session:
        waiting = [d for d in state.pending(session) if d.channel in by_name]
    down: set[str] = set()  # a channel that failed once this check is not tried again
    for delivery in waiting:
        if delivery.channel in down:
            continue
        error = _deliver_one(ctx, by_name[delivery.channel], delivery)
        if error is None:
            result.sent.append((delivery.channel, delivery.title))
        elif error:
            down.add(delivery.channel)
            result.failed.append((delivery.channel, error))


def _deliver_one(ctx: AlertContext, channel: Channel, delivery: AlertDelivery) -> str | None:
    """None: sent; "": another check holds it; else why it failed."""
    with ctx.db.session() as session:
        if not state.claim(session, delivery.id, ctx.now):
            return ""
    try:
        channel.send(delivery.title, delivery.body, ctx.now)
    except ComplianceError as exc:
        log.warning(
            "alerts.delivery.failed", extra={"channel": channel.name, "kind": delivery.kind}
        )
        with ctx.db.session() as session:
            state.failed(session, delivery.id, str(exc))
        return str(exc)
    with ctx.db.session() as session:
        state.sent(session, delivery.id, ctx.now)
    log.info("alerts.delivery.sent", extra={"channel": channel.name, "kind": delivery.kind})
    return None


def send_test(channels: Sequence[Channel], now: datetime) -> list[tuple[str, str | None]]:
    """One test alert to every channel: per channel, None (sent) or why it failed."""
    outcome: list[tuple[str, str | None]] = []
    for channel in channels:
        try:
            channel.send("test alert", "A test of this alert channel; nothing is wrong.", now)
        except ComplianceError as exc:
            outcome.append((channel.name, str(exc)))
        else:
            outcome.append((channel.name, None))
    return outcome
