"""`gdpr retention report`: the evidence of storage limitation (Art. 5(1)(e), 5(2)).

Per policy: the oldest item still present against its limit, how many items are past the
limit (and of those, how many a legal hold keeps), since when, and the last run. A policy
is *late* when items not under a hold have been past their limit for longer than the
grace window (a nightly sweep that ran on time leaves nothing older than a day or so).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from compliance.models import RetentionRun
from compliance.retention import runs
from compliance.retention.held import HoldView
from compliance.retention.sweep import SweepContext


@dataclass(frozen=True)
class PolicyReport:
    policy: str
    kind: str
    what: str
    limit_days: int
    oldest: datetime | None
    overdue: int
    held: int
    overdue_since: datetime | None  # when the oldest item passed its limit
    late: bool  # unheld items past the limit for longer than the grace window
    last_run: RetentionRun | None
    age_days: float = 0.0  # of the oldest item

    def to_dict(self) -> dict[str, Any]:
        last = self.last_run
        return {
            "policy": self.policy,
            "kind": self.kind,
            "what": self.what,
            "limit_days": self.limit_days,
            "oldest": _iso(self.oldest),
            "oldest_age_days": None if self.oldest is None else round(self.age_days, 1),
            "overdue": self.overdue,
            "held": self.held,
            "overdue_since": _iso(self.overdue_since),
            "late": self.late,
            "last_run": None
            if last is None
            else {
                "id": last.id,
                "status": last.status,
                "finished_at": _iso(last.finished_at),
                "deleted": int((last.counts or {}).get("deleted", 0)),
            },
        }


def report(ctx: SweepContext) -> list[PolicyReport]:
    now = ctx.clock()
    view = HoldView.load(ctx.db, ctx.sources, now)
    grace = timedelta(days=ctx.settings.retention_report_grace_days)
    found = []
    for entry in ctx.catalog:
        policy = entry.policy
        status = entry.source.retention_status(policy, now, view.held(policy))
        since = None
        if status.overdue and status.oldest is not None:
            since = status.oldest + timedelta(days=policy.days)
        late = status.overdue > status.held and since is not None and since < now - grace
        found.append(
            PolicyReport(
                policy=policy.name,
                kind=policy.kind.value,
                what=policy.describe(),
                limit_days=policy.days,
                oldest=status.oldest,
                overdue=status.overdue,
                held=status.held,
                overdue_since=since,
                late=late,
                last_run=runs.last_run(ctx.store, policy.name),
                age_days=0.0
                if status.oldest is None
                else (now - status.oldest).total_seconds() / 86400,
            )
        )
    return found


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
