"""The production dispatcher: enqueue by task name, with the request id as the only argument."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from celery import Celery

RUN_REQUEST = "gdpr.request.run"
RUN_RETENTION_PART = "gdpr.retention.part"


@dataclass(frozen=True)
class CeleryDispatcher:
    app: Celery

    def dispatch_request(self, request_id: uuid.UUID) -> None:
        self.app.send_task(RUN_REQUEST, args=[str(request_id)], queue="requests")

    def dispatch_retention_part(self, part_id: int) -> None:
        self.app.send_task(RUN_RETENTION_PART, args=[part_id], queue="retention")
