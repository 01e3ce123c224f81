"""Request tasks: run one request by id."""

from __future__ import annotations

import random
import uuid

from celery import Task

from compliance.errors import RetryableError
from compliance.logs import bound_request
from compliance.worker import Outcome
from tasks import runtime
from tasks.app import app
from tasks.dispatch import RUN_REQUEST

BACKOFF_BASE_SECONDS = 5
BACKOFF_CAP_SECONDS = 600


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**retries))


@app.task(name=RUN_REQUEST, bind=True, acks_late=True, max_retries=20)
def run_request(self: Task, request_id: str, claim: int | None = None) -> str:  # type: ignore[type-arg]
    """Run a queued request, or (with `claim`) the next chunk of one this worker runs.
    A request another run holds a live lease on is tried again when the lease would
    have run out (its worker may be gone: then this message takes it over)."""
    countdown = backoff(self.request.retries)
    parsed = uuid.UUID(request_id)
    try:
        with bound_request(parsed):  # every line logged meanwhile carries the id
            outcome = runtime.run(parsed, claim, retry_in=countdown)
    except RetryableError as exc:  # released to the queue: the retry claims it afresh
        raise self.retry(args=(request_id,), exc=exc, countdown=countdown) from exc
    if outcome == Outcome.BUSY:
        wait = runtime.control().settings.lease_seconds + 1
        raise self.retry(args=(request_id,), countdown=wait, max_retries=None)
    return outcome.value
