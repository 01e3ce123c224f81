"""Maintenance tasks fired by beat: keep requests moving, abort orphaned uploads, delete
expired packages, checkpoint the audit chain to storage, apply the suppression list again
(when `suppression_cron` is set), check the alert conditions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from compliance import checkpoints, maintenance, suppression
from compliance.alerts import channels
from compliance.alerts.check import AlertContext
from compliance.alerts.check import check as check_now
from compliance.db import utcnow
from compliance.errors import StateError
from compliance.retention import runs
from compliance.retention import sweep as retention_sweep
from compliance.retention.report import PolicyReport
from tasks import runtime
from tasks.app import app
from tasks.dispatch import CeleryDispatcher

log = logging.getLogger("gdpr.maintenance")
SUPPRESSION_ACTOR = "suppression"  # who the audit trail says queued a scheduled reapply


@app.task(name="gdpr.maintenance.sweep", acks_late=True)
def sweep() -> dict[str, int]:
    base = runtime.control()  # no source needed: a broken manifest must not stop the sweep
    dispatcher = CeleryDispatcher(app)
    now = utcnow()
    result = maintenance.sweep(base.db, base.settings, dispatcher, now)
    store = runs.Store(base.db, base.keyring, base.settings.retention_lease_seconds)
    idle = max(base.settings.retention_lease_seconds, base.settings.redispatch_after_seconds)
    lost = retention_sweep.lost_parts(store, dispatcher, now, idle)
    abort_orphaned_uploads(base, now)  # each abort is logged
    return {
        "released": len(result.released),
        "redispatched": len(result.redispatched),
        "resumed": len(result.resumed),
        "expired_holds": len(result.expired_holds),
        "retention_parts": len(lost),
    }


def abort_orphaned_uploads(base: runtime.Control, now: datetime) -> int:
    """Abort the S3 multipart uploads no live run owns (its parts hold personal data);
    an unreachable S3 leaves them on record for the next sweep."""
    from exporters.storage import open_storage
    from exporters.uploads import abort_orphaned_uploads as abort_orphans

    report = abort_orphans(base.db, open_storage(base.settings), base.settings, now)
    return len(report.aborted) + len(report.unrecorded)


@app.task(name="gdpr.maintenance.purge_packages", acks_late=True)
def purge_packages() -> int:
    from exporters.cleanup import purge_expired_packages
    from exporters.storage import open_storage

    base = runtime.control()
    storage = open_storage(base.settings)
    return int(purge_expired_packages(base.db, storage, utcnow()))


@app.task(name="gdpr.maintenance.audit_checkpoint", acks_late=True)
def checkpoint_audit() -> dict[str, object]:
    """The audit chain's head, signed to object storage (nothing new if already there),
    and posted to the alert channels when it is new."""
    from exporters.storage import open_storage

    base = runtime.control()
    now = utcnow()
    with base.db.session() as session:
        written = checkpoints.write(session, open_storage(base.settings), base.keyring, now)
    if written is None:
        return {"written": False}
    if written.created:  # a second copy, in the alert channels
        checkpoints.announce(written.checkpoint, channels.configured(base.settings), now)
    return {"written": written.created, **checkpoints.summary(written.checkpoint)}


@app.task(name="gdpr.suppression.reapply", acks_late=True)
def reapply_suppression() -> dict[str, int]:
    """`gdpr suppression reapply` on beat's schedule: each erased subject found again in
    the sources gets a pre-approved erasure (and its receipt when it completes); a subject
    whose data also names someone else is left for a person (logged, and in the audit)."""
    current = runtime.worker()
    ctx = suppression.ReapplyContext(
        settings=current.settings,
        db=current.db,
        keyring=current.keyring,
        sources=current.sources,
        dispatcher=CeleryDispatcher(app),
        operator=SUPPRESSION_ACTOR,
        now=utcnow(),
    )
    try:
        result = suppression.reapply(ctx)
    except StateError:  # a reapply is running already (an operator's, or a late one)
        log.info("dsr.suppression.skipped")
        return {"skipped": 1}
    return {"checked": result.checked, **{o.value: result.count(o) for o in suppression.Outcome}}


@app.task(name="gdpr.alerts.check", acks_late=True)
def check_alerts() -> dict[str, int]:
    """`gdpr alerts check` on beat's schedule: raise, clear, digest, deliver."""
    base = runtime.control()  # the sources are needed for retention only (`_retention`)
    ctx = AlertContext(
        settings=base.settings,
        db=base.db,
        channels=channels.configured(base.settings),
        now=utcnow(),
        retention=_retention,
    )
    result = check_now(ctx)
    return {
        "raised": len(result.raised),
        "cleared": len(result.cleared),
        "open": len(result.open),
        "sent": len(result.sent),
        "failed": len(result.failed),
    }


def _retention() -> Sequence[PolicyReport]:
    from compliance.retention.report import report

    return report(runtime.sweep_context())
