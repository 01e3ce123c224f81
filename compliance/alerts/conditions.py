"""What is wrong now: each condition reads the control database (or the retention report)
and returns findings, one per subject of the condition.

A finding's key is ``<condition>:<subject>``: ``failed_steps:all``,
``request_overdue:<request id>``, ``retention_late:<policy>``,
``download_refusals:<client pseudonym>``. Titles and details hold ids, counts and policy
names only, never an identity. A condition that cannot be evaluated (the sources do not
load, so retention is unknown) is left out of `Evaluation.checked`: its raised alerts stay
raised instead of clearing on a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from compliance.alerts import refusals
from compliance.config import Settings
from compliance.errors import ComplianceError
from compliance.lifecycle import OPEN
from compliance.models import AuditEvent, DsrRequest, DsrStep, StepStatus
from compliance.operators import REFUSED
from compliance.otp import FAILED as OTP_FAILED
from compliance.retention.report import PolicyReport
from compliance.retention.runs import FAILED as RUN_FAILED

OPERATOR_REFUSALS = "operator_refusals"
FAILED_STEPS = "failed_steps"
REQUEST_OVERDUE = "request_overdue"
REQUEST_DUE_SOON = "request_due_soon"
RETENTION_LATE = "retention_late"
RETENTION_FAILED = "retention_failed"
DOWNLOAD_REFUSALS = "download_refusals"
ALL = "all"
HOUR = timedelta(hours=1)
SHOWN_IDS = 5  # request ids named in a failed-steps alert
Retention = Callable[[], Sequence[PolicyReport]]


@dataclass(frozen=True)
class Finding:
    """One condition that holds for one subject, with its PII-free words."""

    condition: str
    subject: str
    title: str
    detail: str

    @property
    def key(self) -> str:
        return f"{self.condition}:{self.subject}"


@dataclass(frozen=True)
class Evaluation:
    findings: tuple[Finding, ...]
    checked: frozenset[str]  # conditions evaluated; the others are unknown this time
    problems: tuple[str, ...] = ()  # why a condition could not be evaluated


@dataclass(frozen=True)
class Deadlines:
    overdue: int
    due_soon: int


@dataclass(frozen=True)
class RetentionReading:
    """The retention report, read before the check's transaction (it opens its own), or
    why it could not be read."""

    reports: Sequence[PolicyReport] | None
    problem: str | None = None


def read_retention(retention: Retention | None) -> RetentionReading:
    if retention is None:
        return RetentionReading(None, "retention: not checked (no sources in this process)")
    try:
        return RetentionReading(retention())
    except ComplianceError as exc:
        return RetentionReading(None, f"retention: cannot read the report: {exc}")


def evaluate(
    session: Session, settings: Settings, now: datetime, retention: RetentionReading
) -> Evaluation:
    """Every condition, now; retention's from the report read already."""
    found = [
        *operator_refusals(session, settings, now),
        *failed_steps(session, settings, now),
        *deadlines(session, settings, now),
        *download_refusals(session, settings, now),
    ]
    checked = {OPERATOR_REFUSALS, FAILED_STEPS, REQUEST_OVERDUE, REQUEST_DUE_SOON}
    checked.add(DOWNLOAD_REFUSALS)
    if retention.reports is not None:
        found += retention_findings(retention.reports)
        checked |= {RETENTION_LATE, RETENTION_FAILED}
    problems = (retention.problem,) if retention.problem else ()
    return Evaluation(tuple(found), frozenset(checked), problems)


def operator_refusals(session: Session, settings: Settings, now: datetime) -> list[Finding]:
    """Refused operator actions and wrong one-time codes in the last hour."""
    rows = session.execute(
        select(AuditEvent.action, func.count(AuditEvent.seq))
        .where(AuditEvent.action.in_([REFUSED, OTP_FAILED]), AuditEvent.at >= now - HOUR)
        .group_by(AuditEvent.action)
    ).all()
    counts = {action: int(n) for action, n in rows}
    total = sum(counts.values())
    limit = settings.alert_refusals_per_hour
    if total < limit:
        return []
    title = f"{total} refused operator actions or wrong one-time codes in the last hour"
    detail = (
        f"{counts.get(REFUSED, 0)} {REFUSED}, {counts.get(OTP_FAILED, 0)} {OTP_FAILED}"
        f" (threshold {limit}); `gdpr audit` events name the operators"
    )
    return [Finding(OPERATOR_REFUSALS, ALL, title, detail)]


def failed_steps(session: Session, settings: Settings, now: datetime) -> list[Finding]:
    """Request steps that failed in the last hour (`dsr_step`, status failed)."""
    rows = session.execute(
        select(DsrStep.request_id).where(
            DsrStep.status == StepStatus.FAILED.value, DsrStep.finished_at >= now - HOUR
        )
    ).all()
    limit = settings.alert_failed_steps_per_hour
    if len(rows) < limit:
        return []
    ids = sorted({str(row[0]) for row in rows})
    shown = ", ".join(ids[:SHOWN_IDS]) + (
        f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    )
    title = f"{len(rows)} request steps failed in the last hour"
    detail = f"threshold {limit}; in {len(ids)} request(s): {shown}"
    return [Finding(FAILED_STEPS, ALL, title, detail)]


def _open_due_before(session: Session, until: datetime) -> list[tuple[str, str, datetime]]:
    rows = session.execute(
        select(DsrRequest.id, DsrRequest.kind, DsrRequest.due_at)
        .where(DsrRequest.status.in_([s.value for s in OPEN]), DsrRequest.due_at < until)
        .order_by(DsrRequest.due_at)
    ).all()
    return [(str(rid), kind, due) for rid, kind, due in rows]


def deadlines(session: Session, settings: Settings, now: datetime) -> list[Finding]:
    """Open requests past their Art. 12(3) deadline, and those due within the warning days."""
    soon = now + timedelta(days=settings.alert_due_soon_days)
    found = []
    for rid, kind, due in _open_due_before(session, soon):
        when = due.strftime("%Y-%m-%d %H:%M UTC")
        if due < now:
            title = f"{kind} request {rid} is overdue (due {when})"
            found.append(Finding(REQUEST_OVERDUE, rid, title, _DEADLINE_HELP.format(rid=rid)))
        else:
            title = (
                f"{kind} request {rid} is due within {settings.alert_due_soon_days} days ({when})"
            )
            found.append(Finding(REQUEST_DUE_SOON, rid, title, _DEADLINE_HELP.format(rid=rid)))
    return found


_DEADLINE_HELP = "Art. 12(3): finish it or extend it with a reason; `gdpr request show {rid}`"


def count_deadlines(session: Session, settings: Settings, now: datetime) -> Deadlines:
    """How many open requests are overdue, and how many due within the warning days."""
    found = deadlines(session, settings, now)
    overdue = sum(1 for f in found if f.condition == REQUEST_OVERDUE)
    return Deadlines(overdue, len(found) - overdue)


def retention_findings(reports: Sequence[PolicyReport]) -> list[Finding]:
    """Policies late beyond the grace window, and policies whose last run failed."""
    found = []
    for r in reports:
        if r.late:
            title = f"retention policy {r.policy} is overdue"
            since = r.overdue_since.strftime("%Y-%m-%d") if r.overdue_since else "-"
            detail = (
                f"{r.overdue} item(s) past {r.limit_days} days ({r.held} held), since {since};"
                " `gdpr retention report`"
            )
            found.append(Finding(RETENTION_LATE, r.policy, title, detail))
        if r.last_run is not None and r.last_run.status == RUN_FAILED:
            title = f"retention policy {r.policy}: its last run {r.last_run.id} failed"
            detail = "`gdpr retention history --policy " + r.policy + "` shows the error"
            found.append(Finding(RETENTION_FAILED, r.policy, title, detail))
    return found


def download_refusals(session: Session, settings: Settings, now: datetime) -> list[Finding]:
    """Clients (by pseudonym) with many refused download tokens in the window."""
    minutes = settings.alert_token_window_minutes
    since = now - timedelta(minutes=minutes)
    busy = refusals.busy_clients(session, since, settings.alert_token_refusals)
    return [
        Finding(
            DOWNLOAD_REFUSALS,
            client,
            f"client {client} had {count} download tokens refused in {minutes} minutes",
            f"threshold {settings.alert_token_refusals}; someone may be guessing links",
        )
        for client, count in sorted(busy.items())
    ]
