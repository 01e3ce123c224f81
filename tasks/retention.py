"""Retention tasks: beat starts every policy's run nightly; each part runs in chunks."""

from __future__ import annotations

import logging

from celery import Task

from compliance.errors import LeaseHeldError, RetryableError
from compliance.retention import sweep
from tasks import runtime
from tasks.app import app
from tasks.dispatch import RUN_RETENTION_PART, CeleryDispatcher
from tasks.requests import backoff

log = logging.getLogger("gdpr.retention")


@app.task(name="gdpr.retention.sweep", acks_late=True)
def sweep_all() -> dict[str, int]:
    """Start (or resume) a run of every policy and fan its parts out to the workers."""
    ctx = runtime.sweep_context()
    dispatcher = CeleryDispatcher(app)
    started = skipped = 0
    for entry in ctx.catalog:
        try:
            run = sweep.start(ctx, entry.policy.name, trigger="beat")
        except LeaseHeldError:  # another run of this policy is going on
            skipped += 1
            continue
        for part_id in run.parts:
            dispatcher.dispatch_retention_part(part_id)
        started += 1
    return {"started": started, "skipped": skipped}


@app.task(name=RUN_RETENTION_PART, bind=True, acks_late=True, max_retries=20)
def run_part(self: Task, part_id: int) -> str:  # type: ignore[type-arg]
    """One chunk of one part; the next chunk is queued until the part is done."""
    ctx = runtime.sweep_context()
    try:
        outcome = sweep.work_part(ctx, part_id)
    except RetryableError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc
    if outcome == sweep.PartOutcome.MORE:
        CeleryDispatcher(app).dispatch_retention_part(part_id)
    return outcome.value
