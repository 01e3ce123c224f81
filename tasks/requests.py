"""Request tasks: run one request by id."""

from __future__ import annotations

import random
import uuid

from celery import Task

from compliance.errors import RetryableError
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
    """Run a queued request, or (with `claim`) the next chunk of one this worker runs."""
    try:
        return runtime.run(uuid.UUID(request_id), claim).value
    except RetryableError as exc:  # released to the queue: the retry claims it afresh
        countdown = backoff(self.request.retries)
        raise self.retry(args=(request_id,), exc=exc, countdown=countdown) from exc
