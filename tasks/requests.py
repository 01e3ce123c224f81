"""Request tasks: run one request by id."""

from __future__ import annotations

import random
import uuid

from celery import Task

from compliance.errors import RetryableError
from compliance.worker import execute
from tasks import runtime
from tasks.app import app
from tasks.dispatch import RUN_REQUEST

BACKOFF_BASE_SECONDS = 5
BACKOFF_CAP_SECONDS = 600


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**retries))


@app.task(name=RUN_REQUEST, bind=True, acks_late=True, max_retries=20)
def run_request(self: Task, request_id: str) -> str:  # type: ignore[type-arg]
    try:
        return execute(runtime.worker(), uuid.UUID(request_id)).value
    except RetryableError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc
