"""How the domain hands work to the workers, without importing Celery.

Production wires `Dispatcher` to Celery (tasks/dispatch.py) by task name; unit tests use
`RecordingDispatcher`. Dispatch happens only after the transaction that queued the request
committed; if dispatch fails, the maintenance sweep re-dispatches queued requests.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("gdpr.dispatch")


class Dispatcher(Protocol):
    def dispatch_request(self, request_id: uuid.UUID) -> None:
        """Enqueue the run of one queued request. Messages carry the id only."""
        ...


@dataclass
class RecordingDispatcher:
    """Records dispatched ids instead of sending them (unit tests)."""

    dispatched: list[uuid.UUID] = field(default_factory=list)

    def dispatch_request(self, request_id: uuid.UUID) -> None:
        self.dispatched.append(request_id)


def dispatch_quietly(dispatcher: Dispatcher, request_id: uuid.UUID) -> bool:
    """Dispatch; on broker trouble log and return False (the maintenance sweep retries)."""
    try:
        dispatcher.dispatch_request(request_id)
    except Exception as exc:  # any broker error: the request is safe in the database
        log.warning(
            "dsr.dispatch.deferred",
            extra={"request_id": str(request_id), "error": type(exc).__name__},
        )
        return False
    return True
