"""The production dispatcher: enqueue by task name, with the request id as the only argument."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from celery import Celery

RUN_REQUEST = "gdpr.request.run"


@dataclass(frozen=True)
class CeleryDispatcher:
    app: Celery

    def dispatch_request(self, request_id: uuid.UUID) -> None:
        self.app.send_task(RUN_REQUEST, args=[str(request_id)], queue="requests")
